//! The admin listener's `/status`, the metrics an RDS Proxy user looks for, and the live
//! dashboard at `/` rendered by headless Chromium (installed by `scripts/ensure-deps`): the
//! page shows the numbers `/status` gives, and they move during a burst.

mod common;

use std::time::Duration;

use common::{http_ok_body, metric_value, server_code, start_with, status_json, TestGateway};
use mysql_async::prelude::*;
use serde_json::Value;

async fn admin_get(gateway: &TestGateway, path: &str) -> String {
    http_ok_body(gateway.admin, path).await
}

async fn status(gateway: &TestGateway) -> Value {
    status_json(gateway.admin).await
}

/// Polls `/status` until `ready` holds (or fails after 10 s).
async fn status_when(gateway: &TestGateway, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let status = status(gateway).await;
        if ready(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/status never got there: {}", status(gateway).await);
}

/// The page at `/` after Chromium has run its script for a few seconds of virtual time
/// (its polls are real requests to the gateway), as Chromium serialises the DOM.
async fn rendered_dashboard(gateway: &TestGateway) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--virtual-time-budget=3500",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{}/", gateway.admin))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs (scripts/ensure-deps installs it)");
    assert!(output.status.success(), "chromium failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The text of the element with `id` in serialised HTML.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_owned()
}

/// The dashboard's figures and the same ones from `/status`, side by side.
fn compare(dom: &str, status: &Value) {
    let expected = [
        ("budget", &status["budget"]["max_db_connections"]),
        ("remaining", &status["budget"]["remaining"]),
        ("open", &status["budget"]["open"]),
        ("server-max", &status["budget"]["server_max_connections"]),
        ("borrowed", &status["pool"]["borrowed"]),
        ("idle", &status["pool"]["idle"]),
        ("waiters", &status["pool"]["waiters"]),
        ("in-transaction", &status["pool"]["in_transaction"]),
        (
            "no-connections-left",
            &status["counters"]["no_connections_left"],
        ),
        ("clients-total", &status["clients"]["total"]),
    ];
    for (id, value) in expected {
        assert_eq!(text_of(dom, id), value.to_string(), "#{id} vs /status");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_live_status_and_follows_a_burst() {
    let gateway = start_with("dashboard", |config| {
        config.pool.max_db_connections = 3;
        config.pool.borrow_timeout = Duration::from_secs(30);
    })
    .await;
    let page = admin_get(&gateway, "/").await;
    assert!(page.contains("<canvas"), "the page draws on canvas");
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(!page.contains(external), "an external asset: {external}");
    }
    // The server's max_connections is read in the background on the first /status.
    let quiet = status_when(&gateway, |s| s["budget"]["server_max_connections"].is_u64()).await;
    let server_max = quiet["budget"]["server_max_connections"].as_u64().unwrap();
    let mut direct = common::direct().await;
    let actual: Option<u64> = direct
        .query_first("SELECT @@GLOBAL.max_connections")
        .await
        .unwrap();
    direct.disconnect().await.unwrap();
    assert_eq!(Some(server_max), actual);
    gateway.wait_idle().await;

    let dom = rendered_dashboard(&gateway).await;
    let polls: u32 = text_of(&dom, "polls").parse().unwrap();
    assert!(polls >= 2, "the page polled /status: {polls}");
    let before = status(&gateway).await;
    compare(&dom, &before);
    assert_eq!(text_of(&dom, "budget"), "3");
    assert_eq!(text_of(&dom, "borrowed"), "0");
    assert_eq!(text_of(&dom, "waiters"), "0");

    // A burst: three clients hold every connection in transactions, two more wait. All log
    // in first (a login borrows a connection to check its schema).
    let mut holders = Vec::new();
    for _ in 0..5 {
        holders.push(gateway.connect().await);
    }
    let latecomers = holders.split_off(3);
    for conn in &mut holders {
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop("SELECT 1").await.unwrap();
    }
    let mut waiting = Vec::new();
    for mut conn in latecomers {
        waiting.push(tokio::spawn(async move {
            conn.query_drop("BEGIN").await.unwrap();
            conn.query_drop("COMMIT").await.unwrap();
            conn.disconnect().await.unwrap();
        }));
    }
    let busy = status_when(&gateway, |s| s["pool"]["waiters"] == 2).await;
    let dom = rendered_dashboard(&gateway).await;
    let during = status(&gateway).await;
    assert_eq!(busy["pool"], during["pool"], "steady while the burst holds");
    compare(&dom, &during);
    assert_eq!(text_of(&dom, "borrowed"), "3");
    assert_eq!(text_of(&dom, "remaining"), "0");
    assert_eq!(text_of(&dom, "waiters"), "2");
    assert_eq!(text_of(&dom, "in-transaction"), "3");
    assert_eq!(text_of(&dom, "clients-total"), "5");
    assert_ne!(
        text_of(&dom, "borrowed"),
        before["pool"]["borrowed"].to_string()
    );
    assert!(
        dom.matches("class=\"state in_transaction\"").count() >= 3,
        "the clients table shows the transactions"
    );
    let users = dom.split("id=\"users\"").nth(1).unwrap();
    assert!(users.contains("<td>app</td>"), "a row for the user app");
    // The line: app holds three and has two waiting, as /status says.
    let lanes = dom.split("id=\"lanes\"").nth(1).unwrap();
    assert!(
        lanes.contains("<td class=\"left\">app</td><td>3</td><td class=\"warn\">2</td>"),
        "the line shows app holding 3 with 2 waiting: {}",
        &lanes[..lanes.len().min(600)]
    );

    for mut conn in holders {
        conn.query_drop("COMMIT").await.unwrap();
        conn.disconnect().await.unwrap();
    }
    for task in waiting {
        task.await.unwrap();
    }
    let after = status_when(&gateway, |s| s["clients"]["total"] == 0).await;
    assert_eq!(after["pool"]["waiters"], 0);
    assert_eq!(after["counters"]["no_connections_left"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_and_metrics_name_what_rds_proxy_users_watch() {
    let gateway = start_with("rds_names", |config| {
        config.pool.max_db_connections = 2;
        config.pool.borrow_timeout = Duration::from_millis(300);
    })
    .await;
    // One client pinned by a temporary table, one inside a transaction: the budget is spent.
    let mut pinned = gateway.connect().await;
    let mut in_transaction = gateway.connect().await;
    let mut refused = gateway.connect().await;
    pinned
        .query_drop("CREATE TEMPORARY TABLE dashboard_tmp (a INT)")
        .await
        .unwrap();
    in_transaction.query_drop("BEGIN").await.unwrap();
    in_transaction.query_drop("SELECT 1").await.unwrap();
    // A third finds no connection left.
    let err = refused.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040));

    // /metrics first: /status reads the server's max_connections in line for a connection.
    let metrics = gateway.metrics().await;
    for (sample, value) in [
        ("sluice_database_connections_remaining", 0.0),
        ("sluice_no_connections_left_total", 1.0),
        ("sluice_borrow_timeouts_total", 1.0),
        ("sluice_borrow_waiters", 0.0),
        ("sluice_db_connections{state=\"in_transaction\"}", 1.0),
        ("sluice_db_connections{state=\"pinned\"}", 1.0),
        ("sluice_db_connections{state=\"busy\"}", 2.0),
        ("sluice_user_client_connections{user=\"app\"}", 3.0),
    ] {
        assert_eq!(metric_value(&metrics, sample), value, "{sample}");
    }
    let waits = metric_value(&metrics, "sluice_borrow_wait_seconds_count");
    assert!(waits >= 3.0, "borrow waits observed: {waits}");
    let refused_wait = metric_value(&metrics, "sluice_borrow_wait_seconds_bucket{le=\"0.25\"}");
    assert!(refused_wait < waits, "the refused borrower waited 300 ms");
    for histogram in [
        "sluice_query_response_seconds_count{user=\"app\"}",
        "sluice_query_database_response_seconds_count{user=\"app\"}",
    ] {
        assert!(metric_value(&metrics, histogram) >= 3.0, "{histogram}");
    }
    // The end-to-end time of the refused statement includes its 300 ms wait.
    let slow = metric_value(
        &metrics,
        "sluice_query_response_seconds_count{user=\"app\"}",
    ) - metric_value(
        &metrics,
        "sluice_query_response_seconds_bucket{user=\"app\",le=\"0.25\"}",
    );
    assert!(slow >= 1.0, "the refused query took over 250 ms end to end");

    let status = status(&gateway).await;
    assert_eq!(status["budget"]["remaining"], 0);
    assert_eq!(status["pool"]["pinned"], 1);
    assert_eq!(status["pool"]["in_transaction"], 1);
    assert_eq!(status["counters"]["no_connections_left"], 1);
    let clients = status["clients"]["list"].as_array().unwrap();
    assert_eq!(status["clients"]["total"], 3);
    let by_state = |state: &str| {
        clients
            .iter()
            .filter(|c| c["state"] == state)
            .collect::<Vec<_>>()
    };
    let pins = by_state("pinned");
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0]["pin"], "temporary_table");
    assert_eq!(pins[0]["holds_connection"], true);
    assert_eq!(by_state("in_transaction").len(), 1);
    let idle = by_state("idle");
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0]["holds_connection"], false);
    assert_eq!(idle[0]["user"], "app");
    let app = status["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "app")
        .expect("a line for app");
    assert_eq!(app["clients"], 3);
    assert_eq!(app["borrowed"], 2);
    assert!(app["response"]["count"].as_u64().unwrap() >= 4);
    assert!(app["database"]["count"].as_u64().unwrap() >= 3);

    for conn in [pinned, in_transaction, refused] {
        conn.disconnect().await.unwrap();
    }
    let closed = status_when(&gateway, |s| s["clients"]["total"] == 0).await;
    assert!(
        closed["counters"]["client_connections_closed"]
            .as_u64()
            .unwrap()
            >= 3
    );
}
