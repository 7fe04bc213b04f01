//! Attacks an outsider can make before logging in, and what sluice bounds them with:
//! silent and half-sent logins (`login_timeout`), floods of them (`max_pending_logins`, the
//! oldest dropped), oversized pre-authentication packets (64 KiB cap), seats taken only
//! once authenticated (`max_client_connections`), and password guessing (delays per address
//! and user). In each, a legitimate client still logs in and queries.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or `limit` passes); returns what arrived and whether the
/// socket was closed.
async fn drain(socket: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (seen, false),
        }
    }
}

/// The ERR packet codes among the packets in `bytes` (the greeting is skipped).
fn error_codes(bytes: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = rest[0] as usize | (rest[1] as usize) << 8 | (rest[2] as usize) << 16;
        let Some(payload) = rest.get(4..4 + len) else {
            break;
        };
        if payload.first() == Some(&0xff) && payload.len() >= 3 {
            codes.push(u16::from_le_bytes([payload[1], payload[2]]));
        }
        rest = &rest[4 + len..];
    }
    codes
}

/// A legitimate client logs in and runs a query; returns how long that took.
async fn legitimate_query(gw: &TestGateway) -> Duration {
    let started = Instant::now();
    let mut conn = gw.connect().await;
    let one: u8 = conn.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    conn.disconnect().await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_logins_time_out_without_taking_client_seats() {
    let gw = start_with("silent_logins", |c| {
        c.max_client_connections = 50;
        c.login_timeout = Duration::from_secs(1);
    })
    .await;
    // 60 sockets that never answer the greeting, 10 that send half a login packet.
    let mut attackers = Vec::new();
    for i in 0..70 {
        let mut socket = TcpStream::connect(gw.addr).await.unwrap();
        if i >= 60 {
            // A header announcing 100 bytes, then only 10 of them.
            socket.write_all(&[100, 0, 0, 1]).await.unwrap();
            socket.write_all(&[0u8; 10]).await.unwrap();
        }
        attackers.push(socket);
    }
    // More sockets than client seats are open, yet the legitimate client gets in at once:
    // seats are taken only by authenticated clients.
    let took = legitimate_query(&gw).await;
    assert!(took < Duration::from_secs(5), "login took {took:?}");
    // Each attacker is told why and closed once login_timeout has passed.
    for socket in &mut attackers {
        let (bytes, closed) = drain(socket, Duration::from_secs(5)).await;
        assert!(closed, "an unauthenticated socket outlived login_timeout");
        assert_eq!(error_codes(&bytes), [1159], "{bytes:?}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_login_aborts_total{reason=\"timeout\"}") >= 70.0,
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, "sluice_client_logins_pending"), 0.0);
    // Nobody was refused a seat: the attackers never had one.
    assert_eq!(
        metric_value(&metrics, "sluice_client_connections_refused_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_logins_drops_the_oldest_and_lets_a_real_client_in() {
    let gw = start_with("login_flood", |c| {
        c.max_pending_logins = 20;
        c.login_timeout = Duration::from_secs(60);
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..100 {
        attackers.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // The flood fills the pending set at once; the real client's login is the newest.
    let took = legitimate_query(&gw).await;
    assert!(took < Duration::from_secs(5), "login took {took:?}");
    // The 80 oldest were dropped with 1040 long before their login_timeout.
    let mut dropped = 0;
    for socket in &mut attackers[..80] {
        let (bytes, closed) = drain(socket, Duration::from_secs(5)).await;
        assert!(closed);
        assert_eq!(error_codes(&bytes), [1040], "{bytes:?}");
        dropped += 1;
    }
    assert_eq!(dropped, 80);
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_login_aborts_total{reason=\"evicted\"}") >= 80.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "sluice_client_logins_pending") <= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_before_login_are_refused_unread_and_memory_stays_flat() {
    let gw = start("big_logins").await;
    let rss_before = rss_kib("self");
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let mut socket = TcpStream::connect(gw.addr).await.unwrap();
        // A bare header announcing a 16 MiB frame, then a little of it.
        socket.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
        let _ = socket.write_all(&[b'x'; 1000]).await;
        attackers.push(socket);
    }
    for socket in &mut attackers {
        let (bytes, closed) = drain(socket, Duration::from_secs(5)).await;
        assert!(closed);
        assert_eq!(error_codes(&bytes), [1153], "{bytes:?}");
    }
    let grown_mib = rss_kib("self").saturating_sub(rss_before) / 1024;
    // 300 reservations of 16 MiB would be 4.8 GiB; sluice buffered nothing of them.
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_login_aborts_total{reason=\"too_large\"}"),
        300.0
    );
    legitimate_query(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_counted_once_authenticated() {
    let gw = start_with("seats", |c| c.max_client_connections = 2).await;
    let mut first = gw.connect().await;
    let second = gw.connect().await;
    let err = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("max_client_connections"), "{err}");
    first.query_drop("DO 1").await.unwrap();
    first.disconnect().await.unwrap();
    // The seat is free again once its client left.
    for _ in 0..50 {
        if metric_value(&gw.metrics().await, "sluice_client_connections") < 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = gw.connect().await;
    third.query_drop("DO 1").await.unwrap();
    third.disconnect().await.unwrap();
    second.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_delayed_per_address_and_user() {
    let delay = Duration::from_millis(400);
    let gw = start_with("throttle", |c| {
        c.failed_login_delay = delay;
        c.failed_login_delay_max = delay * 2;
    })
    .await;
    let attempt = |user: &'static str, password: &'static str| {
        let opts = gw.opts(user, password, None);
        async move {
            let started = Instant::now();
            let result = mysql_async::Conn::new(opts).await;
            (result, started.elapsed())
        }
    };
    // The first failure is answered at once; each later one waits, doubling up to the cap.
    let (first, _) = attempt("app", "wrong").await;
    assert_eq!(server_code(&first.unwrap_err()), Some(1045));
    let mut waits = Vec::new();
    for _ in 0..3 {
        let (result, took) = attempt("app", "wrong").await;
        assert_eq!(server_code(&result.unwrap_err()), Some(1045));
        waits.push(took);
    }
    assert!(waits[0] >= delay, "{waits:?}");
    assert!(waits[1] >= delay * 2 && waits[2] >= delay * 2, "{waits:?}");
    // Another user from the same address is not slowed down by app's failures.
    let (other, took) = attempt("empty", "wrong").await;
    assert_eq!(server_code(&other.unwrap_err()), Some(1045));
    assert!(took < delay * 2, "{took:?}");
    // The right password still gets in (after the delay), and clears the record.
    let (ok, took) = attempt("app", "secret").await;
    ok.unwrap().disconnect().await.unwrap();
    assert!(took >= delay * 2, "{took:?}");
    let (ok, _) = attempt("app", "secret").await;
    ok.unwrap().disconnect().await.unwrap();
    let (again, took) = attempt("app", "wrong").await;
    assert_eq!(server_code(&again.unwrap_err()), Some(1045));
    assert!(took < delay, "a success cleared the record: {took:?}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_auth_failures_total{reason=\"bad_password\"}"
        ),
        6.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_lose_their_database_connections() {
    let gw = start_with("slow_readers", |c| {
        c.pool.max_db_connections = 3;
        c.pool.borrow_timeout = Duration::from_secs(20);
        c.client_write_timeout = Duration::from_secs(1);
    })
    .await;
    // As many clients as the pool has connections ask for ~50 MB each and never read it.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut conn = raw_client(&gw).await;
        let mut seq = 0;
        conn.stream
            .write_packet(
                &mut seq,
                b"\x03SELECT REPEAT('x', 1000) FROM sluice_test.seq_1_to_50000",
            )
            .await
            .unwrap();
        stalled.push(conn);
    }
    // Wait until they hold every connection.
    for _ in 0..200 {
        if gw.gateway.pool.stats().busy == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.gateway.pool.stats().busy, 3);
    // A normal client is served once client_write_timeout cuts the stalled ones, well
    // before borrow_timeout would have failed it.
    let took = legitimate_query(&gw).await;
    assert!(took < Duration::from_secs(10), "waited {took:?}");
    gw.wait_idle().await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"discarded\"}"
        ),
        3.0,
        "the half-sent replies' connections were closed, not reused: {metrics}"
    );
    assert_eq!(
        db_connections_of(&gw.backend_user).await,
        gw.gateway.pool.stats().total
    );
    drop(stalled);
}

/// Reads the server greeting off a fresh socket.
async fn read_greeting(socket: &mut TcpStream) {
    let mut header = [0u8; 4];
    socket.read_exact(&mut header).await.unwrap();
    let len = header[0] as usize | (header[1] as usize) << 8 | (header[2] as usize) << 16;
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await.unwrap();
}

/// An SSLRequest packet (sequence id 1).
fn ssl_request() -> Vec<u8> {
    use sluice_protocol::CapabilityFlags;
    let login = sluice_protocol::handshake::encode_login(
        CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_SSL,
        sluice_protocol::MariadbCapabilities::empty(),
        45,
        "app",
        &[],
        None,
        "mysql_native_password",
    );
    let payload = &login[..sluice_protocol::handshake::SSL_REQUEST_LEN];
    let mut packet = vec![payload.len() as u8, 0, 0, 1];
    packet.extend_from_slice(payload);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_tls_handshakes_are_closed_without_holding_anything() {
    let certs = common::certs::make();
    let gw = start_with("tls_garbage", |c| {
        c.tls_cert = Some(certs.cert.clone());
        c.tls_key = Some(certs.key.clone());
        c.login_timeout = Duration::from_secs(1);
    })
    .await;
    // Garbage where a ClientHello belongs, one record header announcing more than a record
    // may hold, a ClientHello cut short and left hanging, and a socket closed right after
    // its SSLRequest.
    let garbage: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
    let oversized_record = vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 0, 0];
    let cut_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut hanging = Vec::new();
    for (i, tail) in [garbage, oversized_record, cut_hello, Vec::new()]
        .into_iter()
        .enumerate()
    {
        let mut socket = TcpStream::connect(gw.addr).await.unwrap();
        read_greeting(&mut socket).await;
        socket.write_all(&ssl_request()).await.unwrap();
        socket.write_all(&tail).await.unwrap();
        match i {
            2 => hanging.push(socket),
            3 => drop(socket),
            _ => {
                let (_, closed) = drain(&mut socket, Duration::from_secs(5)).await;
                assert!(closed, "case {i}: a bad handshake closes the socket");
            }
        }
    }
    // The hanging handshake is cut at login_timeout.
    for mut socket in hanging {
        let (_, closed) = drain(&mut socket, Duration::from_secs(5)).await;
        assert!(closed, "a half-sent ClientHello is cut at login_timeout");
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "sluice_tls_handshake_failures_total{listener=\"mysql\",reason=\"bad_handshake\"}"
        ) >= 2.0,
        "{metrics}"
    );
    // Nothing is left pending, and clients still get in.
    for _ in 0..100 {
        if metric_value(&gw.metrics().await, "sluice_client_logins_pending") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric_value(&gw.metrics().await, "sluice_client_logins_pending"),
        0.0
    );
    legitimate_query(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_request_without_tls_configured_gets_an_error() {
    let gw = start("tls_not_offered").await;
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    read_greeting(&mut socket).await;
    socket.write_all(&ssl_request()).await.unwrap();
    let (bytes, closed) = drain(&mut socket, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(error_codes(&bytes), vec![1047], "malformed-packet error");
    legitimate_query(&gw).await;
}
