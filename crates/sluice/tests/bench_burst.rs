//! `sluice bench burst` against the real MariaDB: a small burst in every mode, with the
//! report's figures checked against what the database itself saw, and two applications
//! sharing one budget.

mod common;

use common::*;
use mysql_async::prelude::*;
use sluice::bench::{run_burst, BurstOptions, Calls, Mode, ModeReport};

/// A burst small enough for a test: one wave of two invocations, sampled every 50 ms,
/// against the local MariaDB as root; each test sets what it is about.
fn small_burst() -> BurstOptions {
    BurstOptions {
        containers: 1,
        invocations: 2,
        waves: 1,
        zombie_ratio: 0.0,
        query: None,
        think_time_ms: 0,
        write_ratio: 0.0,
        modes: vec![Mode::Gateway],
        database: format!("mysql://root@{DB_HOST}:{DB_PORT}"),
        gateway: None,
        pool: 4,
        borrow_timeout_ms: 500,
        sample_ms: 50,
        apps: Vec::new(),
    }
}

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
        waves: 2,
        write_ratio: 0.2,
        modes: vec![Mode::Direct, Mode::Managed, Mode::Gateway],
        database: format!("mysql://sl_burst:burst-pw@{DB_HOST}:{DB_PORT}"),
        pool: 5,
        borrow_timeout_ms: 500,
        ..small_burst()
    };
    let report = run_burst(&options, false).await.unwrap();
    let total = 30 * 2 * 2;
    let [direct, managed, gateway] = &report.modes[..] else {
        panic!("three modes: {:?}", report.modes.len());
    };

    // Naive direct access: every container keeps its connection; both waves' are still open
    // at the end (60 < max_connections, so nothing failed).
    assert_eq!(direct.calls.ok, total, "{:?}", direct.calls.errors);
    assert_eq!(direct.final_db_connections, 60);
    assert!(direct.peak_db_connections >= 60);
    assert!(direct.connect_ms.max > 0.0);

    // serverless-mysql style: below 80 % utilisation it behaves like direct.
    assert_eq!(managed.calls.ok, total, "{:?}", managed.calls.errors);

    // Through sluice: never more database connections than the pool, whatever the clients do.
    assert!(
        gateway.peak_db_connections <= 5,
        "peak {}",
        gateway.peak_db_connections
    );
    assert!(gateway.samples.iter().all(|s| s.user_connections <= 5));
    assert_eq!(gateway.calls.ok + gateway.calls.error_count(), total);
    assert!(
        gateway.calls.ok >= 5 * 2,
        "the clients that got a connection ran every invocation"
    );
    // Session pooling: frozen containers keep their connection, so the rest wait out the
    // borrow timeout and get sluice's 1040.
    assert!(
        gateway.calls.errors.keys().all(|code| code == "1040"),
        "{:?}",
        gateway.calls.errors
    );

    // Success rates add up, one application's figures are the mode's, and the table and
    // page show every mode with its own connections panel.
    for mode in &report.modes {
        check_calls(&mode.calls, total);
        let [app] = &mode.apps[..] else {
            panic!("one application: {:?}", mode.apps)
        };
        assert_eq!((app.calls.attempted, app.calls.ok), (total, mode.calls.ok));
        check_panel(mode);
    }
    let table = report.table();
    let html = report.html();
    for name in ["direct", "managed", "gateway"] {
        assert!(table.contains(name) && html.contains(name));
        assert!(html.contains(&format!(
            r#"aria-label="{name}: database connections over time""#
        )));
    }
    assert!(table.contains("ok %") && table.contains("all p99"));
    assert_eq!(html.matches("<svg").count(), 3 + 1);
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        !json.contains("burst-pw"),
        "reports never carry the password"
    );

    // The tool leaves nothing behind.
    let left = db_connections_settle("sl_burst", 0).await;
    assert_eq!(left, 0, "connections left behind");
    admin.disconnect().await.unwrap();
}

/// Attempts are successes plus errors, the rate follows, and both latency views are ordered;
/// an attempt that failed is in "all" but never in "ok".
fn check_calls(c: &Calls, attempted: usize) {
    assert_eq!(c.attempted, attempted);
    assert_eq!(c.ok + c.error_count(), c.attempted, "{c:?}");
    let rate = c.ok as f64 * 100.0 / c.attempted as f64;
    assert!((c.success_pct - rate).abs() < 1e-9, "{c:?}");
    for l in [c.latency_ok_ms, c.latency_all_ms] {
        assert!(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max, "{l:?}");
    }
    if c.ok == c.attempted {
        assert_eq!(c.latency_ok_ms.max, c.latency_all_ms.max);
    }
}

/// A mode's panel has samples spanning its own run, not the longest mode's.
fn check_panel(mode: &ModeReport) {
    assert!(mode.samples.len() >= 2, "{:?}", mode.mode);
    let last = mode.samples.last().map(|s| s.t_ms).unwrap_or(0) as f64;
    assert!(
        last > 0.0 && last / 1e3 <= mode.wall_s + 1.0,
        "{last} ms vs {} s",
        mode.wall_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_share_one_budget() {
    let options = BurstOptions {
        containers: 0,
        modes: vec![Mode::Direct, Mode::Gateway, Mode::Quotas],
        pool: 4,
        borrow_timeout_ms: 300,
        apps: vec!["hot2:24".parse().unwrap(), "cold2:3:min=2".parse().unwrap()],
        ..small_burst()
    };
    let report = run_burst(&options, false).await.unwrap();
    assert_eq!(report.modes.len(), 3);
    for mode in &report.modes {
        let names: Vec<&str> = mode.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["hot2", "cold2"], "{:?}", mode.mode);
        check_calls(&mode.apps[0].calls, 24 * 2);
        check_calls(&mode.apps[1].calls, 3 * 2);
        check_calls(&mode.calls, 27 * 2);
        assert_eq!(
            mode.calls.ok,
            mode.apps.iter().map(|a| a.calls.ok).sum::<usize>()
        );
        check_panel(mode);
    }
    // Directly, 27 connections fit under max_connections: every call succeeds.
    assert_eq!(
        report.modes[0].calls.ok,
        27 * 2,
        "{:?}",
        report.modes[0].calls
    );
    // Through sluice the two applications' pools share the one budget of 4.
    for mode in &report.modes[1..] {
        assert!(
            mode.peak_db_connections <= 4,
            "{:?}: {:?}",
            mode.mode,
            mode.samples
        );
    }
    // With two connections reserved for it, the cold application's three containers never
    // wait behind the hot one's 24: every call succeeds.
    assert_eq!(
        report.modes[2].apps[1].calls.ok,
        3 * 2,
        "{:?}",
        report.modes[2].apps[1].calls
    );
    let table = report.table();
    assert!(table.contains("per application") && table.contains("cold2"));
    assert!(report.html().contains("Per application"));
    let mut admin = direct().await;
    for app in ["hot2", "cold2"] {
        let user = format!("sluice_bench_{app}");
        let left = db_connections_settle(&user, 0).await;
        assert_eq!(left, 0, "{user}'s connections left behind");
        let accounts: Option<u64> = admin
            .exec_first("SELECT COUNT(*) FROM mysql.user WHERE User = ?", (&user,))
            .await
            .unwrap();
        assert_eq!(
            accounts,
            Some(0),
            "the run dropped the database user {user}"
        );
    }
}
