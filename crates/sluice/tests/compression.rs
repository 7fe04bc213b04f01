//! The compressed protocol (`CLIENT_COMPRESS`) toward clients, judged by drivers no one here
//! wrote: mysql_async, the `mariadb` client and mysql2. Compressed and plain clients share
//! the same database connections (compression is per client, not per pooled connection).

mod common;

use common::*;
use mysql_async::prelude::*;
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn compressed(gw: &TestGateway) -> mysql_async::OptsBuilder {
    gw.opts("app", "secret", Some(TEST_DB))
        .compression(Some(mysql_async::Compression::fast()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_compressed_and_plain_clients_share_one_connection() {
    let gw = start_with("compress_async", |c| c.pool.max_db_connections = 1).await;
    let mut zipped = mysql_async::Conn::new(compressed(&gw)).await.unwrap();
    let mut plain = gw.connect().await;
    for round in 0..3 {
        let n: Option<i64> = zipped
            .query_first(format!("SELECT {round} + 1"))
            .await
            .unwrap();
        assert_eq!(n, Some(round + 1));
        // A result far above the 16 MiB packet and compressed-packet limits.
        let (len, digest): (u64, String) = zipped
            .query_first("SELECT LENGTH(REPEAT('z', 17000000)), SHA2(REPEAT('z', 17000000), 256)")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(len, 17_000_000);
        let big: Vec<u8> = zipped
            .query_first("SELECT REPEAT('z', 17000000)")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sha256_hex(&big), digest);
        // A parameter over 16 MiB, sent compressed.
        let sent = vec![b'q'; 17_000_000];
        let echoed: Option<String> = zipped
            .exec_first("SELECT SHA2(?, 256)", (&sent,))
            .await
            .unwrap();
        assert_eq!(echoed, Some(sha256_hex(&sent)));
        let p: Option<String> = plain.query_first("SELECT 'plain'").await.unwrap();
        assert_eq!(p.as_deref(), Some("plain"));
    }
    zipped.reset().await.unwrap();
    let n: Option<i64> = zipped.query_first("SELECT 7").await.unwrap();
    assert_eq!(n, Some(7));
    zipped.disconnect().await.unwrap();
    plain.disconnect().await.unwrap();
    assert_eq!(
        compressed_sessions(&gw).await,
        1.0,
        "only the compressed client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_compressed_reads_several_result_sets() {
    // mysql_async expects the packets after a result that has more behind it numbered from
    // the compressed packet they come in, as MariaDB's server numbers them.
    let gw = start("compress_results").await;
    let mut zipped = mysql_async::Conn::new(compressed(&gw)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(two_results(&mut zipped, "").await, (vec![1], vec![(2, 3)]));
        let mut results = zipped
            .query_iter("SELECT seq FROM seq_1_to_20000; SELECT 2 AS b, 3 AS c; DO 0; SELECT 'x'")
            .await
            .unwrap();
        let first: Vec<i64> = results.collect().await.unwrap();
        let second: Vec<(i64, i64)> = results.collect().await.unwrap();
        let done: Vec<i64> = results.collect().await.unwrap();
        let fourth: Vec<String> = results.collect().await.unwrap();
        drop(results);
        assert_eq!(first.len(), 20000);
        assert_eq!(
            (second, done, fourth),
            (vec![(2, 3)], vec![], vec!["x".to_owned()])
        );
        let n: Option<i64> = zipped.query_first("SELECT 5").await.unwrap();
        assert_eq!(n, Some(5));
    }
    zipped.disconnect().await.unwrap();
}

async fn compressed_sessions(gw: &TestGateway) -> f64 {
    metric_value(
        &gw.metrics().await,
        "sluice_client_compressed_sessions_total",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_compressed_matches_directly() {
    let gw = start("compress_cli").await;
    let literal = "q".repeat(17_000_000);
    let script = format!(
        "SELECT MD5('{literal}') AS sent;\n\
         SELECT MD5(REPEAT('ab', 3000000)) AS made;\n\
         SELECT COUNT(*) FROM information_schema.COLLATIONS;\n"
    );
    let run = |port: u16, user: &'static str, password: &'static str| {
        let args: Vec<String> = [
            "--protocol=tcp",
            "-h127.0.0.1",
            &format!("-P{port}"),
            &format!("--user={user}"),
            &format!("--password={password}"),
            "--skip-ssl",
            "--compress",
            "--max-allowed-packet=64M",
            "--batch",
            TEST_DB,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let script = script.clone();
        async move { run_client("mariadb", &args, Some(&script)).await }
    };
    let through = run(gw.addr.port(), "app", "secret").await;
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let direct_out = run(DB_PORT, "root", "").await;
    assert!(direct_out.status.success());
    let through = String::from_utf8_lossy(&through.stdout).into_owned();
    assert_eq!(through, String::from_utf8_lossy(&direct_out.stdout));
    assert!(through.starts_with("sent\n"), "{through}");
    assert_eq!(compressed_sessions(&gw).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_compressed_queries_prepared_statements_and_change_user() {
    let gw = start("compress_mysql2").await;
    mysql2_compressed_check(&gw).await;
    // Its first connection and the one its change-user test reconnects, if any: all
    // compressed.
    assert!(compressed_sessions(&gw).await >= 1.0);
}
