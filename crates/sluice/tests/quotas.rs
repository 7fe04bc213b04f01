//! Per-user quotas on the one pool: a reserved floor another user cannot take, a ceiling
//! its own user waits at while others go on, weighted fair service across users, and a
//! per-user limit on connected clients.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

/// A client of `user` through `gw`.
async fn client(gw: &TestGateway, user: &str, password: &str) -> mysql_async::Conn {
    mysql_async::Conn::new(gw.opts(user, password, Some(TEST_DB)))
        .await
        .expect("connect through sluice")
}

/// Starts `n` clients of `app` that each run `rounds` transactions holding a connection
/// for `hold`, counting finished transactions in `done`.
fn hot_clients(
    gw: &TestGateway,
    n: usize,
    rounds: usize,
    hold: Duration,
    done: &Arc<AtomicUsize>,
) -> tokio::task::JoinSet<Result<(), mysql_async::Error>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let opts = gw.opts("app", "secret", Some(TEST_DB));
        let done = done.clone();
        set.spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            for _ in 0..rounds {
                conn.query_drop("BEGIN").await?;
                conn.query_drop(format!("DO SLEEP({})", hold.as_secs_f64()))
                    .await?;
                conn.query_drop("COMMIT").await?;
                done.fetch_add(1, Ordering::SeqCst);
            }
            conn.disconnect().await
        });
    }
    set
}

/// Waits until the gateway's line shows `app` holding `n` connections with more of its
/// clients waiting (its later clients may still be logging in when the first hold theirs).
async fn wait_for_app_holding_while_waiting(gw: &TestGateway, n: usize) {
    for _ in 0..250 {
        let (held, waiting) = gw
            .gateway
            .pool
            .lanes()
            .iter()
            .find(|l| l.user.as_deref() == Some("app"))
            .map_or((0, 0), |l| (l.borrowed, l.waiting));
        if held >= n && waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "app never held {n} with clients waiting: {:?}",
        gw.gateway.pool.lanes()
    );
}

async fn join_all(mut set: tokio::task::JoinSet<Result<(), mysql_async::Error>>) {
    while let Some(joined) = set.join_next().await {
        joined.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_user_cannot_take_the_connections_another_user_reserved() {
    const POOL: usize = 4;
    let gw = start_with("quota_floor", |c| {
        c.pool.max_db_connections = POOL;
        c.users[1].min_connections = 1;
    })
    .await;
    let done = Arc::new(AtomicUsize::new(0));
    let hot = hot_clients(&gw, 8, 1, Duration::from_millis(1000), &done);
    wait_for_app_holding_while_waiting(&gw, POOL - 1).await;
    // The hot user waits with three connections held; the fourth stays free for `empty`.
    let lanes = gw.gateway.pool.lanes();
    let app = lanes
        .iter()
        .find(|l| l.user.as_deref() == Some("app"))
        .unwrap();
    assert_eq!(app.borrowed, POOL - 1, "{lanes:?}");
    assert!(app.waiting > 0, "{lanes:?}");
    let mut reserved = client(&gw, "empty", "").await;
    for i in 0..5 {
        reserved.query_drop("BEGIN").await.unwrap();
        let n: Option<i32> = reserved.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(n, Some(i));
        reserved.query_drop("COMMIT").await.unwrap();
    }
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "served while every hot transaction ran"
    );
    reserved.disconnect().await.unwrap();
    join_all(hot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_ceiling_waits_while_others_proceed() {
    let gw = start_with("quota_ceiling", |c| {
        c.pool.max_db_connections = 4;
        c.pool.borrow_timeout = Duration::from_millis(400);
        c.users[0].max_connections = Some(1);
    })
    .await;
    let mut first = gw.connect().await;
    let mut second = gw.connect().await;
    first.query_drop("BEGIN").await.unwrap();
    first.query_drop("SELECT 1").await.unwrap();
    // A second client of the capped user waits for the first's connection, then is told.
    let err = second.query_drop("SELECT 2").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1226), "{err}");
    assert!(err.to_string().contains("max_connections"), "{err}");
    // Meanwhile another user is served at once, several times over.
    let mut other = client(&gw, "empty", "").await;
    for _ in 0..3 {
        other.query_drop("BEGIN").await.unwrap();
        other.query_drop("SELECT 3").await.unwrap();
        other.query_drop("COMMIT").await.unwrap();
    }
    // Once the first commits, the second goes on in the same session.
    let waiting = tokio::spawn(async move {
        let n: Option<i32> = second.query_first("SELECT 4").await.unwrap();
        (n, second)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.query_drop("COMMIT").await.unwrap();
    let (n, second) = waiting.await.unwrap();
    assert_eq!(n, Some(4));
    for conn in [first, second, other] {
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_user_goes_ahead_of_a_hot_user_s_queue() {
    let gw = start_with("quota_fair", |c| {
        c.pool.max_db_connections = 1;
        c.pool.borrow_timeout = Duration::from_secs(30);
    })
    .await;
    // Logged in beforehand: a driver's login runs statements of its own.
    let mut quiet = client(&gw, "empty", "").await;
    let done = Arc::new(AtomicUsize::new(0));
    // Six hot clients queue for the one connection, each holding it 200 ms.
    let hot = hot_clients(&gw, 6, 1, Duration::from_millis(200), &done);
    wait_for_app_holding_while_waiting(&gw, 1).await;
    for _ in 0..250 {
        if gw
            .gateway
            .pool
            .lanes()
            .iter()
            .map(|l| l.waiting)
            .sum::<usize>()
            >= 5
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The quiet user arrives last but holds nothing: the next connection back is its.
    quiet.query_drop("SELECT 1").await.unwrap();
    let hot_done_before = done.load(Ordering::SeqCst);
    assert!(
        hot_done_before <= 2,
        "the quiet user waited for {hot_done_before} of 6 hot transactions"
    );
    quiet.disconnect().await.unwrap();
    join_all(hot).await;
    assert_eq!(done.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_client_limit_refuses_its_next_client_only() {
    let gw = start_with("quota_clients", |c| {
        c.users[0].max_client_connections = Some(2);
    })
    .await;
    let a = gw.connect().await;
    let b = gw.connect().await;
    let err = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1203), "{err}");
    assert!(err.to_string().contains("max_client_connections"), "{err}");
    // Another user is unaffected, and a seat freed is a seat taken.
    let mut other = client(&gw, "empty", "").await;
    other.query_drop("SELECT 1").await.unwrap();
    a.disconnect().await.unwrap();
    let mut again = gw.connect().await;
    again.query_drop("SELECT 1").await.unwrap();
    for conn in [b, other, again] {
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_each_user_s_lane_and_quota() {
    let gw = start_with("quota_status", |c| {
        c.users[0].min_connections = 1;
        c.users[0].max_connections = Some(3);
        c.users[0].weight = Some(2);
    })
    .await;
    let mut conn = gw.connect().await;
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("SELECT 1").await.unwrap();
    let status = status_json(gw.admin).await;
    let lanes = status["lanes"].as_array().expect("lanes in /status");
    let app = lanes
        .iter()
        .find(|l| l["user"] == "app")
        .expect("app's lane");
    assert_eq!(app["borrowed"], 1, "{app}");
    assert_eq!(app["min_connections"], 1, "{app}");
    assert_eq!(app["max_connections"], 3, "{app}");
    assert_eq!(app["weight"], 2, "{app}");
    let empty = lanes
        .iter()
        .find(|l| l["user"] == "empty")
        .expect("configured users listed");
    assert_eq!(empty["borrowed"], 0, "{empty}");
    conn.query_drop("COMMIT").await.unwrap();
    conn.disconnect().await.unwrap();
}
