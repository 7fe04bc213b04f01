//! The compressed protocol toward the database (`[backend] compress`): the server sees every
//! connection sluice opens compressed, and everything that travels on one (sluice's own
//! pipelined statements, clients' text and prepared commands, values over 16 MiB, LOAD DATA
//! LOCAL, change-user and reset, several result sets, the goodbye) works as on a plain one,
//! whatever the client speaks toward sluice. A test binary of its own: the goodbye test
//! reads the server's error log.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sha2::{Digest, Sha256};
use sluice::backend::{first_value, BackendConn, Flavor};
use sluice::config::{BackendSecret, BackendTarget, Config};

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A gateway whose database connections are compressed.
async fn start_compressed(test: &str, tweak: impl FnOnce(&mut Config)) -> TestGateway {
    start_with(test, |c| {
        c.backend.compress = true;
        tweak(c);
    })
    .await
}

/// Text that zlib shrinks only partly (hex digits of a pseudo-random sequence), `len` bytes.
fn noisy_text(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

async fn session_compression(conn: &mut mysql_async::Conn) -> String {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Compression'")
        .await
        .unwrap();
    row.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_sees_compressed_connections_only_when_asked() {
    for compress in [true, false] {
        let gw = start_with(&format!("bcomp_status_{compress}"), |c| {
            c.backend.compress = compress;
        })
        .await;
        let mut conn = gw.connect().await;
        let want = if compress { "ON" } else { "OFF" };
        assert_eq!(session_compression(&mut conn).await, want);
        conn.disconnect().await.unwrap();
        let metrics = gw.metrics().await;
        let compressed = metric_value(&metrics, "sluice_db_connections_compressed_total");
        let opened = metric_value(&metrics, "sluice_db_connections_opened_total");
        if compress {
            assert!(compressed >= 1.0 && compressed == opened, "{metrics}");
        } else {
            assert_eq!(compressed, 0.0, "{metrics}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_round_trips_over_a_compressed_database_connection() {
    let gw = start_compressed("bcomp_async", |c| c.pool.max_db_connections = 1).await;
    let mut direct = mysql_async::Conn::new(gw.direct_opts()).await.unwrap();
    direct
        .query_drop("CREATE OR REPLACE TABLE bcomp_blob (id INT PRIMARY KEY, b LONGBLOB)")
        .await
        .unwrap();
    let want_made: String = direct
        .query_first("SELECT SHA2(REPEAT('z', 17000000), 256)")
        .await
        .unwrap()
        .unwrap();
    let sent = noisy_text(17_000_000);
    for (id, zipped) in [(1, false), (2, true)] {
        let opts = gw.opts("app", "secret", Some(TEST_DB));
        let opts = if zipped {
            opts.compression(Some(mysql_async::Compression::fast()))
        } else {
            opts
        };
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        assert_eq!(session_compression(&mut conn).await, "ON");
        let n: Option<i64> = conn.query_first("SELECT 6 * 7").await.unwrap();
        assert_eq!(n, Some(42));
        // A statement over 16 MiB: its reply is numbered on from its last frame.
        let digest: Option<String> = conn
            .query_first(format!("SELECT SHA2('{sent}', 256)"))
            .await
            .unwrap();
        assert_eq!(digest, Some(sha256_hex(sent.as_bytes())));
        // A result over 16 MiB: several MySQL packets, several compressed ones.
        let made: Vec<u8> = conn
            .query_first("SELECT REPEAT('z', 17000000)")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sha256_hex(&made), want_made);
        // A parameter over 16 MiB, prepared, kept, and read back as text.
        let echoed: Option<String> = conn
            .exec_first("SELECT SHA2(?, 256)", (&sent,))
            .await
            .unwrap();
        assert_eq!(echoed, Some(sha256_hex(sent.as_bytes())));
        conn.exec_drop("INSERT INTO bcomp_blob VALUES (?, ?)", (id, &sent))
            .await
            .unwrap();
        let back: Vec<u8> = conn
            .query_first(format!("SELECT b FROM bcomp_blob WHERE id = {id}"))
            .await
            .unwrap()
            .unwrap();
        assert!(back == sent.as_bytes(), "the value came back changed");
        let md5_direct: Option<String> = direct
            .query_first(format!("SELECT MD5(b) FROM bcomp_blob WHERE id = {id}"))
            .await
            .unwrap();
        let md5_through: Option<String> = conn
            .query_first(format!("SELECT MD5(b) FROM bcomp_blob WHERE id = {id}"))
            .await
            .unwrap();
        assert_eq!(md5_through, md5_direct);
        // Several result sets for one statement.
        assert_eq!(
            two_results(&mut conn, "; DO 0").await,
            (vec![1], vec![(2, 3)])
        );
        // Reset and change-user, then the session still works.
        conn.query_drop("SET @kept = 1").await.unwrap();
        conn.reset().await.unwrap();
        let kept: Option<Option<i64>> = conn.query_first("SELECT @kept").await.unwrap();
        assert_eq!(kept, Some(None));
        change_user_to(&mut conn, "app", "secret").await;
        let n: Option<i64> = conn.exec_first("SELECT ? + 1", (6,)).await.unwrap();
        assert_eq!(n, Some(7));
        conn.disconnect().await.unwrap();
    }
    direct.query_drop("DROP TABLE bcomp_blob").await.unwrap();
    direct.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_different_sessions_take_turns_on_one_compressed_connection() {
    // One connection for both: each turn replays the other's sql_mode, sent in the same
    // write as the client's command.
    let gw = start_compressed("bcomp_turns", |c| c.pool.max_db_connections = 1).await;
    let mut a = gw.connect().await;
    let mut b = mysql_async::Conn::new(
        gw.opts("app", "secret", Some(TEST_DB))
            .compression(Some(mysql_async::Compression::fast())),
    )
    .await
    .unwrap();
    a.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    b.query_drop("SET SESSION sql_mode = 'NO_ENGINE_SUBSTITUTION'")
        .await
        .unwrap();
    for round in 0..5i64 {
        let (mode, n): (String, i64) = a
            .query_first(format!("SELECT @@sql_mode, {round}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((mode.as_str(), n), ("ANSI_QUOTES", round));
        let (mode, n): (String, i64) = b
            .exec_first("SELECT @@sql_mode, ?", (round,))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((mode.as_str(), n), ("NO_ENGINE_SUBSTITUTION", round));
    }
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

/// sluice's own protocol client on a compressed connection straight to MariaDB: its
/// pipelined statements, prepare, ping, reset, change-user, and noticing a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluices_own_commands_on_a_compressed_connection() {
    let user = create_backend_user("bcomp_raw").await;
    let target = BackendTarget {
        host: DB_HOST.into(),
        port: DB_PORT,
        user,
        secret: BackendSecret::Password("backend-pw".into()),
        database: Some(TEST_DB.into()),
        tls: sluice::tls::BackendTls::DISABLED,
        compress: true,
    };
    let mut conn = BackendConn::connect(&target, Flavor::INTERNAL, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(conn.compressed());
    let rows = conn
        .query_text("SHOW SESSION STATUS LIKE 'Compression'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows[0][1].as_deref(), Some("ON"));
    // Three statements in one write, the second one long: over the write batch, then over
    // a compressed packet (16 MiB - 1), whose rest follows in another, numbered 1.
    for len in [200_000, 17_000_000, 10] {
        let long = noisy_text(len);
        conn.queue_query("SET @bcomp = 41");
        conn.queue_query(&format!("SELECT @bcomp + 1, SHA2('{long}', 256)"));
        conn.queue_query("SELECT 'third'");
        conn.stream.flush().await.unwrap();
        conn.read_simple_reply().await.unwrap().unwrap();
        let rows = conn.read_text_rows().await.unwrap().unwrap();
        assert_eq!(first_value::<i64>(&rows), Some(42));
        assert_eq!(rows[0][1], Some(sha256_hex(long.as_bytes())));
        let rows = conn.read_text_rows().await.unwrap().unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("third"));
    }
    let prepared = conn.prepare(b"SELECT ? + 1, ?").await.unwrap().unwrap();
    assert_eq!(prepared.ok.params, 2);
    conn.ping().await.unwrap();
    conn.reset().await.unwrap();
    conn.change_user(&target).await.unwrap();
    let rows = conn
        .query_text("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(target.user.as_str()));
    assert!(!conn.closed_by_peer(), "idle and alive");
    // Dropped: the goodbye it sends is understood (no aborted connection in the log).
    let aborted_before = aborted_in_log(&target.user).await;
    let mut other = BackendConn::connect(&target, Flavor::INTERNAL, Duration::from_secs(5))
        .await
        .unwrap();
    other.ping().await.unwrap();
    let other_id = other.thread_id;
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = direct().await;
    let gone: Option<i64> = admin
        .query_first(format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {other_id}"
        ))
        .await
        .unwrap();
    assert_eq!(gone, Some(0));
    assert_eq!(
        aborted_in_log(&target.user).await,
        aborted_before,
        "a dropped compressed connection's goodbye was not understood"
    );
    // Killed from outside: found closed without a round trip.
    admin
        .query_drop(format!("KILL {}", conn.thread_id))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        closed = conn.closed_by_peer();
        if closed {
            break;
        }
    }
    assert!(closed, "a killed connection is seen closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_compressed_both_ways_matches_directly() {
    let gw = start_compressed("bcomp_cli", |_| {}).await;
    let mut admin = mysql_async::Conn::new(gw.direct_opts()).await.unwrap();
    admin
        .query_drop(
            "CREATE OR REPLACE PROCEDURE bcomp_two() \
             BEGIN SELECT 1 AS one; SELECT 'two' AS two, 2.5 AS half; END",
        )
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Over 16 MiB, so its file travels in more packets than a sequence id counts (256).
    let csv = dir.path().join("rows.csv");
    let words = noisy_text(80);
    std::fs::write(
        &csv,
        (1..=200_000)
            .map(|i| format!("{i},{words}{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let literal = noisy_text(17_000_000);
    let script = format!(
        "CREATE TEMPORARY TABLE bcomp_li (id INT PRIMARY KEY, word VARCHAR(100));\n\
         LOAD DATA LOCAL INFILE '{}' INTO TABLE bcomp_li FIELDS TERMINATED BY ',';\n\
         SELECT COUNT(*), SUM(id), SUM(CRC32(word)) FROM bcomp_li;\n\
         SELECT MD5('{literal}') AS sent;\n\
         SELECT MD5(REPEAT('ab', 3000000)) AS made, LENGTH(REPEAT('y', 17000000)) AS big;\n\
         CALL bcomp_two();\n",
        csv.display()
    );
    let run = |port: u16, user: String, password: String, compress: bool| {
        let mut args: Vec<String> = vec![
            "--protocol=tcp".into(),
            "-h127.0.0.1".into(),
            format!("-P{port}"),
            format!("--user={user}"),
            format!("--password={password}"),
            "--skip-ssl".into(),
            "--local-infile=1".into(),
            "--max-allowed-packet=64M".into(),
            "--batch".into(),
            TEST_DB.into(),
        ];
        if compress {
            args.push("--compress".into());
        }
        let script = script.clone();
        async move { run_client("mariadb", &args, Some(&script)).await }
    };
    let [(direct_port, direct_user, direct_pw), (port, user, pw)] = gw.both_ways();
    // Compressed toward sluice too (both directions), then plain toward sluice.
    for compress in [true, false] {
        let through = run(port, user.clone(), pw.clone(), compress).await;
        let stdout = String::from_utf8_lossy(&through.stdout).into_owned();
        assert!(
            through.status.success(),
            "--compress {compress}: {}\n{stdout}",
            String::from_utf8_lossy(&through.stderr)
        );
        let direct_out = run(
            direct_port,
            direct_user.clone(),
            direct_pw.clone(),
            compress,
        )
        .await;
        assert!(
            direct_out.status.success(),
            "{}",
            String::from_utf8_lossy(&direct_out.stderr)
        );
        assert_eq!(stdout, String::from_utf8_lossy(&direct_out.stdout));
        assert!(stdout.contains("200000\t20000100000\t"), "{stdout}");
        assert!(stdout.contains("two\thalf\ntwo\t2.5\n"), "{stdout}");
    }
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "sluice_client_compressed_sessions_total") >= 1.0);
    assert!(metric_value(&metrics, "sluice_db_connections_compressed_total") >= 1.0);
}

/// mysql2 with compression toward sluice too: both legs compressed, numbered each its own
/// way, across several result sets from one query and a result of many compressed packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_compressed_both_ways_reads_several_result_sets() {
    let gw = start_compressed("bcomp_mysql2", |_| {}).await;
    mysql2_compressed_check(&gw).await;
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "sluice_db_connections_compressed_total") >= 1.0);
    assert!(metric_value(&metrics, "sluice_client_compressed_sessions_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_compressed_database_connections_aborts_none() {
    let gw = start_compressed("bcomp_goodbye", |c| {
        c.pool.max_db_connections = 3;
        c.pool.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let Some(log_before) = aborted_in_log(&gw.backend_user).await else {
        panic!("the server's error log must be readable for this test");
    };
    gw.use_connections(3).await;
    // idle_timeout closes them (and whatever is left, the end of a drain).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.gateway.pool.close_idle();
    assert_eq!(db_connections_settle(&gw.backend_user, 0).await, 0);
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "sluice_db_connections_compressed_total") >= 3.0);
    // Give the server a moment to log what it would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        aborted_in_log(&gw.backend_user).await,
        Some(log_before),
        "the server logged aborted connections of {}: the goodbye was not understood",
        gw.backend_user
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_api_over_compressed_database_connections() {
    let gw = start_compressed("bcomp_http", common::data_api::data_api).await;
    let http = gw.http.expect("the Data API listens");
    for sql in [
        "SHOW SESSION STATUS LIKE 'Compression'",
        "SELECT 6 * 7 AS n, LENGTH(REPEAT('x', 300000)) AS len",
    ] {
        let (status, body) =
            common::data_api::exchange(http, &common::data_api::execute_request(sql))
                .await
                .expect("an answer");
        let text = body.to_string();
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("\"ON\"") || (text.contains("42") && text.contains("300000")),
            "{text}"
        );
    }
}
