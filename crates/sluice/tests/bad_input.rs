//! Malformed and hostile input: the affected client gets an error or is closed, every other
//! client carries on, no database connection leaks, and the process does not panic.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice_protocol::handshake::encode_login;
use sluice_protocol::packet::write_packet;
use sluice_protocol::CapabilityFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads whatever the server sends until it closes or goes quiet.
async fn read_reply(socket: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Connects and reads the greeting.
async fn greeted(gw: &TestGateway) -> TcpStream {
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    let mut header = [0u8; 4];
    socket.read_exact(&mut header).await.unwrap();
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut greeting = vec![0u8; len];
    socket.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting[0], 10, "protocol 10 greeting");
    socket
}

fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = seq;
    write_packet(&mut out, &mut seq, payload);
    out
}

/// The code of the ERR packet at the start of `reply`, if it is one.
fn err_code(reply: &[u8]) -> Option<u16> {
    (reply.len() > 7 && reply[4] == 0xff).then(|| u16::from_le_bytes([reply[5], reply[6]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_logins_get_errors_and_others_carry_on() {
    let gw = start("bad_login").await;
    let mut healthy = gw.connect().await;

    // Too short to be a login.
    let mut s = greeted(&gw).await;
    s.write_all(&framed(1, &[1, 2, 3])).await.unwrap();
    assert_eq!(err_code(&read_reply(&mut s).await), Some(1047));

    // A login that claims more fields than it has.
    let mut s = greeted(&gw).await;
    let mut login = vec![0u8; 32];
    login[..4].copy_from_slice(&0x0020_8200u32.to_le_bytes()); // 4.1, secure, lenenc auth
    login.extend_from_slice(b"app\0\xfa");
    s.write_all(&framed(1, &login)).await.unwrap();
    assert_eq!(err_code(&read_reply(&mut s).await), Some(1047));

    // A header announcing a 16 MiB frame, then silence and a hang-up.
    let mut s = greeted(&gw).await;
    s.write_all(&[0xff, 0xff, 0xff, 1, 0, 0]).await.unwrap();
    drop(s);

    // Random garbage instead of a login.
    let mut s = greeted(&gw).await;
    s.write_all(&[0x13; 200]).await.unwrap();
    let _ = read_reply(&mut s).await;

    // Connect and leave without a word.
    drop(greeted(&gw).await);

    let one: u8 = healthy.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    healthy.disconnect().await.unwrap();
    gw.wait_idle().await;
    assert_eq!(
        db_connections_of(&gw.backend_user).await,
        gw.gateway.pool.stats().total
    );
}

/// Logs in as `empty` (no password) over a raw socket and returns it after the OK.
async fn logged_in(gw: &TestGateway) -> TcpStream {
    let mut s = greeted(gw).await;
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_DEPRECATE_EOF;
    let login = encode_login(
        caps,
        sluice_protocol::MariadbCapabilities::empty(),
        45,
        "empty",
        &[],
        None,
        "mysql_native_password",
    );
    s.write_all(&framed(1, &login)).await.unwrap();
    let mut ok = [0u8; 11];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(ok[4], 0x00, "login OK: {ok:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_errors_and_the_session_survives() {
    let gw = start("bad_cmds").await;
    let mut s = logged_in(&gw).await;

    // Replication and unknown commands are refused by name.
    s.write_all(&framed(0, &[0x12, 0, 0, 0, 0])).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert_eq!(err_code(&reply), Some(1047));
    assert!(String::from_utf8_lossy(&reply).contains("COM_BINLOG_DUMP"));
    s.write_all(&framed(0, &[0xee])).await.unwrap();
    assert_eq!(err_code(&read_reply(&mut s).await), Some(1047));

    // A prepared-statement execute for a statement that does not exist: the server's error.
    s.write_all(&framed(0, &[0x17, 9, 9, 9, 9, 0, 1, 0, 0, 0]))
        .await
        .unwrap();
    assert_eq!(err_code(&read_reply(&mut s).await), Some(1243));

    // Still usable.
    s.write_all(&framed(0, b"\x03SELECT 1")).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert!(
        reply.len() > 10 && reply[4] == 1,
        "a one-column result set: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_are_refused_with_1153() {
    let gw = start_with("oversize", |c| c.max_packet_size = 1 << 20).await;
    let mut s = logged_in(&gw).await;
    let mut query = b"\x03SELECT '".to_vec();
    query.resize(2 << 20, b'a');
    s.write_all(&framed(0, &query)).await.unwrap();
    assert_eq!(err_code(&read_reply(&mut s).await), Some(1153));
    gw.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_result_leaks_nothing() {
    let gw = start_with("vanish", |c| c.pool.max_db_connections = 2).await;
    for _ in 0..3 {
        let mut s = logged_in(&gw).await;
        s.write_all(&framed(
            0,
            b"\x03SELECT REPEAT('x', 1000) FROM sluice_test.seq_1_to_200000",
        ))
        .await
        .unwrap();
        let mut some = [0u8; 1024];
        s.read_exact(&mut some).await.unwrap();
        drop(s);
    }
    gw.wait_idle().await;
    // Each half-read reply cost one connection, closed rather than reused mid-reply.
    let stats = gw.gateway.pool.stats();
    assert_eq!(
        db_connections_of(&gw.backend_user).await,
        stats.total,
        "{stats:?}"
    );
    let mut conn = gw.connect().await;
    let n: u32 = conn
        .query_first("SELECT COUNT(*) FROM seq_1_to_1000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1000);
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_clients_offering_caching_sha2_get_its_exchange_and_garbage_is_refused() {
    let gw = start("auth_switch").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.unwrap();
    let mut greeting = vec![0u8; usize::from(header[0]) | usize::from(header[1]) << 8];
    s.read_exact(&mut greeting).await.unwrap();
    let parsed = sluice_protocol::handshake::Greeting::parse(&greeting).unwrap();
    assert_eq!(parsed.auth_plugin, "mysql_native_password");

    // Log in as a MySQL 8 client would: a caching_sha2_password scramble first. It is
    // served with that plugin (no switch); nothing is cached yet, so full authentication.
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
    let nonce: [u8; 20] = parsed.nonce[..20].try_into().unwrap();
    let scramble = sluice_protocol::auth::scramble_sha256(&nonce, b"secret").unwrap();
    let login = encode_login(
        caps,
        sluice_protocol::MariadbCapabilities::empty(),
        45,
        "app",
        &scramble,
        None,
        "caching_sha2_password",
    );
    s.write_all(&framed(1, &login)).await.unwrap();
    let packet = async |s: &mut TcpStream| {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0u8; usize::from(head[0]) | usize::from(head[1]) << 8];
        s.read_exact(&mut payload).await.unwrap();
        (head[3], payload)
    };
    assert_eq!(
        packet(&mut s).await,
        (2, vec![0x01, 0x04]),
        "perform full authentication"
    );
    // Without TLS: ask for the RSA public key, then answer with bytes that are no ciphertext.
    s.write_all(&framed(3, &[0x02])).await.unwrap();
    let (seq, key) = packet(&mut s).await;
    assert_eq!((seq, key[0]), (4, 0x01));
    assert!(String::from_utf8_lossy(&key).contains("BEGIN PUBLIC KEY"));
    s.write_all(&framed(5, &[0xab; 256])).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert_eq!(reply[3], 6, "ERR is packet 6");
    assert_eq!(&reply[4..7], &[0xff, 0x15, 0x04], "1045: {reply:?}");
}

/// Random and mutated SQL, including invalid UTF-8, multi-byte text, unterminated quotes and
/// comments, and broken KILL and SET forms: every statement gets an answer (rows, OK or the
/// server's or sluice's error), the session task never dies, and the gauges come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sql_never_panics_a_session() {
    let gw = start_with("fuzz_sql", |c| c.pool.max_db_connections = 2).await;
    let pieces: [&[u8]; 40] = [
        b"SELECT ",
        b"SET ",
        b"@@",
        b"@@session.",
        b"@",
        b"KILL ",
        b"QUERY ",
        b"USER ",
        b"CONNECTION_ID()",
        b"LAST_INSERT_ID(",
        b"ROW_COUNT()",
        b"FOUND_ROWS()",
        b"'",
        b"\"",
        b"`",
        b"/*",
        b"*/",
        b"/*!",
        b"/*M!",
        b"-- ",
        b"#",
        b"\n",
        b";",
        b"(",
        b")",
        b",",
        b"=",
        b":=",
        b"autocommit",
        b"sql_mode",
        b"NAMES utf8mb4 ",
        b"CHARACTER SET ",
        b"EXECUTE IMMEDIATE ",
        b"PREPARE s FROM ",
        b"BEGIN NOT ATOMIC ",
        b"\\",
        b"1",
        "€ü".as_bytes(),
        b"SET STATEMENT x=1 FOR ",
        b"GET_LOCK(",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut client = raw_client(&gw).await;
    let (mut answered, mut reconnects) = (0, 0);
    for round in 0..1500 {
        let mut sql = Vec::new();
        for _ in 0..(next() % 10 + 1) {
            let pick = next();
            if pick.is_multiple_of(7) {
                sql.push((pick >> 8) as u8); // any byte at all
            } else {
                sql.extend_from_slice(pieces[(pick >> 3) as usize % pieces.len()]);
            }
        }
        let mut payload = vec![sluice_protocol::command::QUERY];
        payload.extend_from_slice(&sql);
        let mut seq = 0;
        client
            .stream
            .write_packet(&mut seq, &payload)
            .await
            .unwrap();
        // Read the whole reply: it must end, with rows, OK or ERR.
        let mut tracker = sluice_protocol::reply::ReplyTracker::new(
            sluice_protocol::reply::ReplyShape::Results,
            true,
        );
        let mut killed = false;
        loop {
            let packet = match client.stream.read_packet().await {
                Ok(packet) => packet,
                Err(e) => panic!(
                    "round {round}: connection lost ({e}) after {:?}",
                    String::from_utf8_lossy(&sql)
                ),
            };
            killed |= error_code(&packet.payload) == 1927;
            let header = sluice_protocol::packet::FrameHeader {
                payload_len: packet.payload.len(),
                seq: packet.seq,
            };
            match tracker.feed(header, &packet.payload).unwrap() {
                sluice_protocol::reply::Step::More => {}
                sluice_protocol::reply::Step::LocalInfile => {
                    panic!("round {round}: LOCAL INFILE from {sql:?}")
                }
                sluice_protocol::reply::Step::Done(_) => break,
            }
        }
        answered += 1;
        if killed {
            // KILL CONNECTION_ID() in some spelling: the session ends, as on the server.
            client = raw_client(&gw).await;
            reconnects += 1;
        }
    }
    assert_eq!(answered, 1500);
    // Others are served, and nothing leaked once everyone leaves.
    let mut other = gw.connect().await;
    let one: Option<i64> = other.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    other.disconnect().await.unwrap();
    drop(client);
    for _ in 0..100 {
        if gw.gateway.sessions.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.gateway.sessions.is_empty(), "registry entries leaked");
    let metrics = gw.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_client_connections"), 0.0);
    eprintln!("random SQL: {answered} statements answered, {reconnects} self-kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_executes_get_the_servers_errors_and_the_session_goes_on() {
    use sluice::backend::{BackendConn, Flavor};
    let gw = start("bad_execute").await;
    /// Prepares `sql` on `conn`, sends an execute of its id followed by `tail`, and returns
    /// the first packet of the answer (draining a result set).
    async fn answer(conn: &mut BackendConn, sql: &str, tail: &[u8]) -> Vec<u8> {
        let mut seq = 0;
        let mut prepare = vec![0x16u8];
        prepare.extend_from_slice(sql.as_bytes());
        conn.stream.write_packet(&mut seq, &prepare).await.unwrap();
        let ok = conn.stream.read_packet().await.unwrap().payload;
        let (columns, params) = (
            u16::from_le_bytes([ok[5], ok[6]]),
            u16::from_le_bytes([ok[7], ok[8]]),
        );
        for _ in 0..columns + params {
            conn.stream.read_packet().await.unwrap();
        }
        let mut execute = vec![0x17u8];
        execute.extend_from_slice(&ok[1..5]);
        execute.extend_from_slice(tail);
        let mut seq = 0;
        conn.stream.write_packet(&mut seq, &execute).await.unwrap();
        let reply = conn.stream.read_packet().await.unwrap().payload;
        if reply[0] != 0xff {
            // A result set: column count, definitions, rows, final OK/EOF.
            loop {
                let packet = conn.stream.read_packet().await.unwrap().payload;
                if packet[0] == 0xfe && packet.len() < 0xff_ffff {
                    break;
                }
            }
        }
        reply.to_vec()
    }
    let direct_target = direct_target();
    let mut direct = BackendConn::connect(&direct_target, Flavor::INTERNAL, Duration::from_secs(5))
        .await
        .unwrap();
    let mut through = raw_client(&gw).await;
    for (sql, tail) in [
        // Parameters missing for a statement that needs one.
        ("SELECT ?", &[0u8, 1, 0, 0, 0][..]),
        // Shorter than flags and iteration count.
        ("SELECT ?", &[0u8][..]),
    ] {
        let expected = answer(&mut direct, sql, tail).await;
        let got = answer(&mut through, sql, tail).await;
        assert_eq!(error_code(&got), error_code(&expected), "{sql} + {tail:?}");
        assert_ne!(error_code(&expected), 0);
        assert_eq!(got, expected, "same code, SQLSTATE and message");
    }
    // Both sessions go on.
    assert_eq!(
        answer(&mut through, "SELECT 1", &[0, 1, 0, 0, 0]).await,
        [1]
    );
}
