//! The server's `max_prepared_stmt_count` counts the copies sluice keeps on its connections
//! for other clients; a client must never be refused for statements it no longer holds.
//! A test binary of its own: it lowers a global server variable (restored when it ends),
//! and test binaries do not run at the same time.

mod common;

use common::*;
use mysql_async::prelude::*;

/// Puts `max_prepared_stmt_count` back however the test ends.
struct Restore(u64);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h127.0.0.1",
                "-uroot",
                "--skip-ssl",
                "-e",
            ])
            .arg(format!("SET GLOBAL max_prepared_stmt_count = {}", self.0))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_kept_for_others_give_way_at_the_servers_limit() {
    const LIMIT: u64 = 10;
    let mut root = direct().await;
    let before: u64 = root
        .query_first("SELECT @@global.max_prepared_stmt_count")
        .await
        .unwrap()
        .unwrap();
    let _restore = Restore(before);
    root.query_drop(format!("SET GLOBAL max_prepared_stmt_count = {LIMIT}"))
        .await
        .unwrap();
    let gw = start_with("ps_limit", |c| c.pool.max_db_connections = 1).await;
    let mut conn = gw.connect().await;
    // Three times the server's limit of distinct statements, each closed after use: the
    // connection keeps copies (pool.max_prepared_statements is 256), which would reach the
    // limit by the eleventh.
    for i in 0..3 * LIMIT {
        let stmt = conn
            .prep(format!("SELECT {i} + ?"))
            .await
            .unwrap_or_else(|e| panic!("prepare {i}: {e}"));
        let sum: Option<u64> = conn.exec_first(&stmt, (1,)).await.unwrap();
        assert_eq!(sum, Some(i + 1));
        conn.close(stmt).await.unwrap();
    }
    conn.disconnect().await.unwrap();
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_statement_evictions_total") >= LIMIT as f64 - 1.0,
        "{metrics}"
    );
}
