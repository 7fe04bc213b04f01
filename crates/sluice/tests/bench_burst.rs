//! `sluice bench burst` against the real MariaDB: a small burst in every mode, with the
//! report's figures checked against what the database itself saw.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice::bench::{run_burst, BurstOptions, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_burst_in_every_mode() {
    // A dedicated database user, so the sampler counts only this burst's connections.
    let mut admin = direct().await;
    admin
        .query_drop("CREATE OR REPLACE USER 'sl_burst'@'%' IDENTIFIED BY 'burst-pw'")
        .await
        .unwrap();
    admin
        .query_drop("GRANT ALL ON *.* TO 'sl_burst'@'%'")
        .await
        .unwrap();
    let options = BurstOptions {
        containers: 30,
        invocations: 2,
        waves: 2,
        zombie_ratio: 0.0,
        query: None,
        think_time_ms: 0,
        write_ratio: 0.2,
        modes: vec![Mode::Direct, Mode::Managed, Mode::Gateway],
        database: format!("mysql://sl_burst:burst-pw@{DB_HOST}:{DB_PORT}"),
        gateway: None,
        pool: 5,
        borrow_timeout_ms: 500,
        sample_ms: 50,
    };
    let report = run_burst(&options, false).await.unwrap();
    let total = 30 * 2 * 2;
    let [direct, managed, gateway] = &report.modes[..] else {
        panic!("three modes: {:?}", report.modes.len());
    };

    // Naive direct access: every container keeps its connection; both waves' are still open
    // at the end (60 < max_connections, so nothing failed).
    assert_eq!(direct.ok, total, "{:?}", direct.errors);
    assert_eq!(direct.final_db_connections, 60);
    assert!(direct.peak_db_connections >= 60);
    assert!(direct.connect_ms.max > 0.0);

    // serverless-mysql style: below 80 % utilisation it behaves like direct.
    assert_eq!(managed.ok, total, "{:?}", managed.errors);

    // Through sluice: never more database connections than the pool, whatever the clients do.
    assert!(
        gateway.peak_db_connections <= 5,
        "peak {}",
        gateway.peak_db_connections
    );
    assert!(gateway.samples.iter().all(|s| s.user_connections <= 5));
    assert_eq!(gateway.ok + gateway.error_count(), total);
    assert!(
        gateway.ok >= 5 * 2,
        "the clients that got a connection ran every invocation"
    );
    // Session pooling: frozen containers keep their connection, so the rest wait out the
    // borrow timeout and get sluice's 1040.
    assert!(
        gateway.errors.keys().all(|code| code == "1040"),
        "{:?}",
        gateway.errors
    );

    // Each latency percentile is ordered, and the table and page show every mode.
    for mode in &report.modes {
        let l = mode.latency_ms;
        assert!(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max, "{l:?}");
    }
    let table = report.table();
    let html = report.html();
    for name in ["direct", "managed", "gateway"] {
        assert!(table.contains(name) && html.contains(name));
    }
    assert_eq!(html.matches("<svg").count(), 2);
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        !json.contains("burst-pw"),
        "reports never carry the password"
    );

    // The tool leaves nothing behind.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = db_connections_of("sl_burst").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "connections left behind");
    admin.disconnect().await.unwrap();
}
