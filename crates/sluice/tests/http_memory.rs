//! Memory per Data API request stays bounded however large its result, and a client that
//! stops reading loses its request after `http.write_timeout`, its database connection with
//! it. Alone in its own test binary, so other tests' allocations do not blur the RSS figures
//! (the gateway runs in this process).

mod common;

use std::time::{Duration, Instant};

use common::data_api::*;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Clients that ask for the large result and never read it.
const CLIENTS: usize = 8;
/// About 20 MB of JSON: 20,000 rows of a thousand characters.
const LARGE: &str = "SELECT seq, REPEAT('x', 1000) AS filler FROM seq_1_to_20000";
const ROWS: usize = 20_000;
/// What the filler alone takes, a lower bound of the result's size.
const RESULT_BYTES: u64 = ROWS as u64 * 1000;
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// This process's resident set, in bytes.
fn rss() -> u64 {
    rss_kib("self") * 1024
}

#[tokio::test]
async fn clients_that_stop_reading_cost_little_and_lose_their_connection() {
    let gw = start_with("http_memory", |c| {
        data_api(c);
        c.pool.max_db_connections = CLIENTS;
        c.http.max_result_size = 64 << 20;
        c.http.write_timeout = WRITE_TIMEOUT;
    })
    .await;
    let addr = gw.http.unwrap();
    let http = plain_client();
    let url = format!("http://{addr}/v1/execute");
    let run = |sql: &'static str| {
        http.post(&url)
            .bearer_auth(APP_KEY)
            .json(&json!({"sql": sql, "database": TEST_DB}))
            .send()
    };
    // A first request, so the pool and the runtime have made their one-time allocations.
    assert_eq!(run("SELECT 1").await.unwrap().status(), 200);
    let baseline = rss();

    let mut attackers = Vec::new();
    for _ in 0..CLIENTS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small window, so the gateway sees the stall soon after the kernel buffers fill.
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(execute_request(LARGE).as_bytes())
            .await
            .unwrap();
        attackers.push(stream);
    }
    let started = Instant::now();
    let mut peak = baseline;
    let sample = |peak: &mut u64| *peak = (*peak).max(rss());
    while gw.gateway.pool.stats().busy < CLIENTS {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "every non-reading client should get a connection: {:?}",
            gw.gateway.pool.stats()
        );
        sample(&mut peak);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while gw.gateway.pool.stats().busy > 0 {
        assert!(
            started.elapsed() < WRITE_TIMEOUT + Duration::from_secs(30),
            "connections of clients that stopped reading come back after http.write_timeout: {:?}",
            gw.gateway.pool.stats()
        );
        sample(&mut peak);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let growth = peak.saturating_sub(baseline);
    println!(
        "{CLIENTS} clients not reading a result of over {RESULT_BYTES} bytes: RSS +{} KiB at \
         peak; their connections back after {:?}",
        growth / 1024,
        started.elapsed()
    );
    assert!(
        growth < CLIENTS as u64 * RESULT_BYTES / 4,
        "RSS grew by {growth} bytes for {CLIENTS} results of over {RESULT_BYTES} bytes"
    );

    // Each of them was cut: whatever the kernel held, then the end of the stream.
    for mut stream in attackers {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut sink));
        assert!(
            read.await.is_ok(),
            "a non-reading client's connection is closed"
        );
        assert!(
            !sink.ends_with(b"0\r\n\r\n"),
            "the cut response does not end like a complete one"
        );
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_http_rejections_total{reason=\"write_timeout\"}"
        ),
        CLIENTS as f64
    );
    // The pool serves a normal client again, the whole large result.
    let response = run(LARGE).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["rows"].as_array().unwrap().len(), ROWS);
}
