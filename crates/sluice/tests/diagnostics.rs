//! Warnings and errors (the server's diagnostics area) through sluice, judged by MariaDB.
//!
//! The scenarios in `tests/clients/diagnostics.json` run with PyMySQL, mysql2 and
//! mysql_async (`common::scenarios`), directly against MariaDB and through sluice over a single pooled connection,
//! and must print the same: a client reads its own warnings and errors (`SHOW WARNINGS`,
//! `SHOW ERRORS`, `GET DIAGNOSTICS`, `@@warning_count`, text and binary protocol, `SIGNAL`),
//! and never another client's, though through sluice it runs on the very connection the other
//! just used. Then the same under load, and across the Data API.

mod common;

use std::time::Duration;

use common::data_api::{data_api, plain_client, APP_KEY};
use common::scenarios::{self, same_both_ways};
use common::*;
use mysql_async::prelude::*;
use serde_json::{json, Value as Json};

/// Held by the tests that run the scenarios: they share the table `diag_t`.
static SCENARIOS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The scenarios these tests run.
const SPEC: &str = "diagnostics.json";

/// A gateway whose clients all share one database connection.
async fn one_connection(test: &str) -> TestGateway {
    start_with(test, |c| {
        c.pool.max_db_connections = 1;
        c.pool.borrow_timeout = Duration::from_secs(5);
        data_api(c);
    })
    .await
}

/// The figures that matter, stated outright, whatever the driver.
fn assert_key_lines(output: &str) {
    for expected in [
        "own warning #1 a: (Warning, 1365, Division by 0)",
        "own error #3 a: (1, 1)",
        "signal #1 a: (Error, 1644, diag boom)",
        "another client's warning #1 b: ",
        "another client's warning #2 b: (0, 0)",
        "another client's error #1 b: ",
        "another client's signal #1 b: ",
    ] {
        assert!(
            output.lines().any(|line| line == expected),
            "missing {expected:?} in:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_reads_its_own_diagnostics_and_never_another_s() {
    let _table = SCENARIOS.lock().await;
    let gw = one_connection("diag_pymysql").await;
    let output = same_both_ways(&gw, "python3", "scenarios.py", SPEC).await;
    assert_key_lines(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_reads_its_own_diagnostics_and_never_another_s() {
    let _table = SCENARIOS.lock().await;
    let gw = one_connection("diag_mysql2").await;
    let output = same_both_ways(&gw, "node", "scenarios.js", SPEC).await;
    assert_key_lines(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_reads_its_own_diagnostics_and_never_another_s() {
    let _table = SCENARIOS.lock().await;
    let gw = one_connection("diag_async").await;
    let sluice = scenarios::mysql_async_both_ways(&gw, SPEC).await;
    assert_key_lines(&sluice);
    // Each scenario's b found the connection a had just used holding a's conditions.
    let emptied = metric_value(
        &gw.metrics().await,
        "sluice_session_adoptions_total{kind=\"diagnostics\"}",
    );
    assert!(emptied >= 3.0, "diagnostics emptied {emptied} times");
}

/// The report: with busy neighbours, `SELECT 1/0` then `SHOW WARNINGS` found nothing
/// now and then, because the second statement ran on another connection. And the neighbours
/// must never read its warnings, nor it theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_stay_with_their_client_under_load() {
    let gw = start_with("diag_load", |c| c.pool.max_db_connections = 4).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut neighbours = Vec::new();
    for n in 0..20 {
        let mut conn = gw.connect().await;
        let stop = stop.clone();
        neighbours.push(tokio::spawn(async move {
            let mut leaks = Vec::new();
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rounds += 1;
                // A warning of their own now and then, which they must find ...
                let own = rounds % 3 == 0;
                let sql = if own {
                    format!("SELECT CAST('neighbour-{n}' AS SIGNED)")
                } else {
                    "SELECT COUNT(*) FROM information_schema.schemata".to_owned()
                };
                let _: Vec<i64> = conn.query(sql).await.unwrap();
                let warnings: Vec<(String, u32, String)> =
                    conn.query("SHOW WARNINGS").await.unwrap();
                // ... and never anyone else's.
                let expected = if own { 1 } else { 0 };
                if warnings.len() != expected
                    || warnings
                        .iter()
                        .any(|w| !w.2.contains(&format!("neighbour-{n}'")))
                {
                    leaks.push(format!("neighbour {n} round {rounds}: {warnings:?}"));
                }
                // A statement without tables leaves the warnings where they are, and gives
                // the connection back with them.
                conn.query_drop("DO 1").await.unwrap();
            }
            conn.disconnect().await.unwrap();
            (leaks, rounds)
        }));
    }
    let mut conn = gw.connect().await;
    let mut missing = 0;
    for i in 0..200 {
        let _: Vec<Option<i64>> = conn.query("SELECT 1/0").await.unwrap();
        let warnings: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await.unwrap();
        if warnings != [("Warning".to_owned(), 1365, "Division by 0".to_owned())] {
            missing += 1;
            eprintln!("round {i}: {warnings:?}");
        }
        conn.query_drop("DO 1").await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for neighbour in neighbours {
        let (leaks, done) = neighbour.await.unwrap();
        assert!(leaks.is_empty(), "{leaks:?}");
        rounds += done;
    }
    assert_eq!(missing, 0, "SHOW WARNINGS missed the client's own warning");
    assert!(rounds > 20, "the neighbours were busy: {rounds} rounds");
    conn.disconnect().await.unwrap();
}

/// The Data API shares the pool: a request never reads a MySQL client's warnings, and a
/// MySQL client never reads a request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_api_and_mysql_clients_never_read_each_other_s_warnings() {
    let gw = one_connection("diag_http").await;
    let http = plain_client();
    let base = format!("http://{}", gw.http.unwrap());
    let execute = |sql: &str| {
        http.post(format!("{base}/v1/execute"))
            .bearer_auth(APP_KEY)
            .json(&json!({"sql": sql, "database": TEST_DB}))
            .send()
    };
    let mut conn = gw.connect().await;
    let _: Vec<i64> = conn
        .query("SELECT CAST('secret-mysql' AS SIGNED)")
        .await
        .unwrap();
    // The client still holds the only connection for its SHOW WARNINGS (diagnostics_hold);
    // the request waits for it, then must find nothing.
    let body: Json = execute("SHOW WARNINGS")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["rows"], json!([]), "{body}");
    let body: Json = execute("SELECT CAST('secret-http' AS SIGNED) AS n")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["warnings"], json!(1), "{body}");
    let warnings: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(warnings, vec![], "a MySQL client read a request's warnings");
    conn.disconnect().await.unwrap();
}

/// `COM_RESET_CONNECTION` and `COM_CHANGE_USER` clear the diagnostics area on MariaDB: the
/// client's warnings are gone afterwards through sluice too, whichever connection it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_change_user_clear_the_client_s_warnings() {
    let gw = one_connection("diag_reset").await;
    let mut seen = Vec::new();
    for (opts, user, password) in [
        (gw.direct_opts(), gw.backend_user.clone(), "backend-pw"),
        (
            gw.opts("app", "secret", Some(TEST_DB)),
            "app".to_owned(),
            "secret",
        ),
    ] {
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let mut counts = Vec::new();
        for how in ["reset", "change_user"] {
            let _: Vec<Option<i64>> = conn.query("SELECT 1/0").await.unwrap();
            let before: Option<u32> = conn.query_first("SELECT @@warning_count").await.unwrap();
            match how {
                "reset" => {
                    conn.reset().await.unwrap();
                }
                _ => conn
                    .change_user(
                        mysql_async::ChangeUserOpts::default()
                            .with_user(Some(user.clone()))
                            .with_pass(Some(password.to_owned()))
                            .with_db_name(Some(TEST_DB.to_owned())),
                    )
                    .await
                    .unwrap(),
            }
            let after: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await.unwrap();
            counts.push(format!("{how}: {before:?} then {after:?}"));
        }
        conn.disconnect().await.unwrap();
        seen.push(counts);
    }
    assert_eq!(seen[1], seen[0], "through sluice as directly");
    assert_eq!(seen[0][0], "reset: Some(1) then []");
}
