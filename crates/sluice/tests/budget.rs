//! The connection budget follows the server: a share of its `max_connections`, re-read
//! periodically, leaving headroom; a smaller budget takes effect as connections come back.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

/// Held by each test: they read and change the server's global `max_connections`.
static SERVER_SETTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The server's global `max_connections`, put back when dropped (the test raises and lowers
/// it; other tests must find it as it was).
struct ServerMax(u64);

impl ServerMax {
    async fn set(value: u64) {
        let mut admin = direct().await;
        admin
            .query_drop(format!("SET GLOBAL max_connections = {value}"))
            .await
            .unwrap();
        admin.disconnect().await.unwrap();
    }
}

impl Drop for ServerMax {
    fn drop(&mut self) {
        let value = self.0;
        // A fresh thread with its own runtime: this may run while the test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(ServerMax::set(value));
        })
        .join();
    }
}

/// The server's `max_connections` now, read directly.
async fn server_max_connections() -> u64 {
    let mut admin = direct().await;
    let value: u64 = admin
        .query_first("SELECT @@GLOBAL.max_connections")
        .await
        .unwrap()
        .unwrap();
    admin.disconnect().await.unwrap();
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentage_budget_follows_the_server_s_max_connections() {
    let _setting = SERVER_SETTING.lock().await;
    let original = server_max_connections().await;
    let _restore = ServerMax(original);
    ServerMax::set(200).await;
    let gw = start_with("budget_pct", |c| {
        c.pool.max_db_connections = 100;
        c.pool.max_connections_percent = Some(10);
        c.pool.reserved_connections = 5;
        c.pool.budget_refresh = Duration::from_millis(100);
    })
    .await;
    assert_eq!(budget_becomes(&gw, 20).await, 20, "10 % of 200");
    assert_eq!(gw.gateway.server_limit.get(), Some(200));

    // Raised: the budget grows at once, and that many clients hold connections together.
    ServerMax::set(300).await;
    assert_eq!(budget_becomes(&gw, 30).await, 30, "10 % of 300");
    let mut holders = Vec::new();
    for _ in 0..30 {
        let mut conn = gw.connect().await;
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop("SELECT 1").await.unwrap();
        holders.push(conn);
    }
    assert_eq!(gw.gateway.pool.stats().total, 30);

    // Lowered while all 30 are lent: the budget is read on a pooled connection (never one
    // beside the cap), so it learns of 12 when the first comes back, and connections close
    // as they come back until no more than 12 are open.
    ServerMax::set(120).await;
    for mut conn in holders {
        conn.query_drop("COMMIT").await.unwrap();
        conn.disconnect().await.unwrap();
    }
    assert_eq!(budget_becomes(&gw, 12).await, 12, "10 % of 120");
    let open = db_connections_settle(&gw.backend_user, 12).await;
    assert!(
        open <= 12,
        "{open} database connections open on a budget of 12"
    );
    // And the smaller budget serves: 12 clients at once, a 13th waits its turn.
    let mut holders = Vec::new();
    for _ in 0..12 {
        let mut conn = gw.connect().await;
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop("SELECT 1").await.unwrap();
        holders.push(conn);
    }
    let stats = gw.gateway.pool.stats();
    assert_eq!((stats.total, stats.max), (12, 12), "{stats:?}");
    for mut conn in holders {
        conn.query_drop("COMMIT").await.unwrap();
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_above_what_the_server_allows_is_cut_to_leave_the_headroom() {
    let _setting = SERVER_SETTING.lock().await;
    let server_max = server_max_connections().await;
    let gw = start_with("budget_cap", |c| {
        c.pool.max_db_connections = 100_000;
        c.pool.reserved_connections = 7;
        c.pool.budget_refresh = Duration::from_millis(100);
    })
    .await;
    let want = server_max as usize - 7;
    assert_eq!(budget_becomes(&gw, want).await, want);
    let status = http_get(gw.admin, "/status").await;
    assert!(
        status.contains(&format!("\"server_max_connections\":{server_max}")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_borrows_until_resume_and_lent_ones_carry_on() {
    let gw = start_with("budget_pause", |c| {
        c.admin_token_sha256 = Some(sluice::config::api_key_sha256("op-token"));
        c.pool.borrow_timeout = Duration::from_secs(1);
    })
    .await;
    let mut in_transaction = gw.connect().await;
    // Connected before the pause (a driver's own start-up queries borrow too).
    let mut waiting = gw.connect().await;
    in_transaction.query_drop("BEGIN").await.unwrap();
    in_transaction.query_drop("SELECT 1").await.unwrap();

    assert_eq!(admin_post(gw.admin, "/pause", None).await.0, 401);
    assert_eq!(admin_post(gw.admin, "/pause", Some("guess")).await.0, 401);
    let (code, body) = admin_post(gw.admin, "/pause", Some("op-token")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"paused\":true"), "{body}");
    assert!(http_get(gw.admin, "/status")
        .await
        .contains("\"paused\":true"));

    // The transaction holds its connection and goes on.
    in_transaction.query_drop("SELECT 2").await.unwrap();
    in_transaction.query_drop("COMMIT").await.unwrap();
    // A new borrow waits; past borrow_timeout it is told why.
    let err = waiting.query_drop("SELECT 3").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("paused for maintenance"), "{err}");

    // Resumed while a borrower waits: it is served.
    let query = tokio::spawn(async move {
        let value: Option<i64> = waiting.query_first("SELECT 4").await.unwrap();
        value
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "served while paused");
    let (code, body) = admin_post(gw.admin, "/resume", Some("op-token")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"was_paused\":true"), "{body}");
    assert_eq!(query.await.unwrap(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_off_without_a_token() {
    let gw = start("budget_no_token").await;
    let (code, body) = admin_post(gw.admin, "/pause", Some("anything")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin_token_sha256"), "{body}");
    assert!(!gw.gateway.pool.is_paused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_statement_rate_is_refused_and_others_are_not() {
    let gw = start_with("budget_rate", |c| {
        c.users[0].max_statements_per_second = Some(20);
    })
    .await;
    let mut limited = gw.connect().await;
    let mut other = mysql_async::Conn::new(gw.opts("empty", "", Some(TEST_DB)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (mut served, mut refused) = (0u32, 0u32);
    for _ in 0..100 {
        match limited.query_drop("SELECT 1").await {
            Ok(()) => served += 1,
            Err(e) => {
                assert_eq!(server_code(&e), Some(1226), "{e}");
                assert!(e.to_string().contains("max_statements_per_second"), "{e}");
                refused += 1;
            }
        }
        other.query_drop("SELECT 1").await.unwrap();
    }
    // The bucket holds 20 and refills 20 a second.
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as u32;
    assert!(served <= allowed, "{served} served, {allowed} allowed");
    assert!(refused > 0, "none refused");
    // A prepared statement's executes count too; then the session goes on once it slows down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let value: Option<i64> = limited.exec_first("SELECT ?", (7,)).await.unwrap();
    assert_eq!(value, Some(7));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_user_rate_limited_total{user=\"app\"}"),
        f64::from(refused)
    );
    limited.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}
