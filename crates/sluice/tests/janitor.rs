//! The janitor of connections that bypass sluice: against the real MariaDB, with a
//! threshold so low (`0.0001`) that the server always counts as full, it kills the sleeping
//! direct connections of the listed user that slept `min_idle`, and spares everything else:
//! other users, young sleepers, sluice's own pooled connections (logged in as that same
//! user) and, when it is off, everyone.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice::config::{Config, JanitorConfig};

/// Generous bound on waits for the janitor (rounds every 200 ms).
const PATIENCE: Duration = Duration::from_secs(20);

/// Turns the janitor on for `users`, always "above" the threshold, rounds every 200 ms.
fn janitor(config: &mut Config, users: Vec<String>, min_idle: Duration) {
    config.janitor = JanitorConfig {
        enabled: true,
        users,
        threshold: 0.0001,
        min_idle,
        interval: Duration::from_millis(200),
        max_kills_per_round: 10,
    };
}

/// A direct connection (bypassing sluice) as `user`, and its thread id.
async fn bypass(user: &str) -> (mysql_async::Conn, u64) {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(DB_HOST)
        .tcp_port(DB_PORT)
        .user(Some(user))
        .pass(Some("backend-pw"))
        .db_name(Some(TEST_DB));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let id: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
    (conn, id.unwrap())
}

/// The thread ids in the server's processlist now.
async fn threads() -> HashSet<u64> {
    let mut root = direct().await;
    let ids: Vec<u64> = root
        .query("SELECT ID FROM information_schema.PROCESSLIST")
        .await
        .unwrap();
    root.disconnect().await.unwrap();
    ids.into_iter().collect()
}

/// Waits until `metric` reaches `at_least` (panics after [`PATIENCE`]).
async fn wait_for_metric(gw: &TestGateway, metric: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric_value(&gw.metrics().await, metric) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{metric} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `conn` still answers.
async fn alive(conn: &mut mysql_async::Conn) -> bool {
    conn.query_first::<u32, _>("SELECT 1").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_old_sleepers_of_listed_users_and_spares_others_and_sluices_own() {
    // sluice's backend is `sl_janitor_kills`: the very user whose direct connections die.
    let user = "sl_janitor_kills".to_owned();
    let other = create_backend_user("janitor_kills_other").await;
    let gw = start_with("janitor_kills", |c| {
        janitor(c, vec![user.clone()], Duration::from_secs(1));
    })
    .await;
    assert_eq!(gw.backend_user, user);
    gw.use_connections(2).await;
    let (mut doomed, doomed_id) = bypass(&user).await;
    let (mut spared, spared_id) = bypass(&other).await;

    let kills = format!("sluice_janitor_kills_total{{user=\"{user}\"}}");
    wait_for_metric(&gw, &kills, 1.0).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while threads().await.contains(&doomed_id) {
        assert!(tokio::time::Instant::now() < deadline, "never killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !alive(&mut doomed).await,
        "the killed connection's next query fails"
    );

    // A few more rounds, then everything else is still there.
    let rounds = metric_value(&gw.metrics().await, "sluice_janitor_rounds_total");
    wait_for_metric(&gw, "sluice_janitor_rounds_total", rounds + 5.0).await;
    let now = threads().await;
    assert!(now.contains(&spared_id), "another user's sleeper is spared");
    assert!(alive(&mut spared).await);
    let owned = gw.gateway.pool.thread_ids();
    assert!(
        owned.len() >= 2,
        "the pool holds its connections: {owned:?}"
    );
    for id in &owned {
        assert!(now.contains(&u64::from(*id)), "sluice's thread {id} spared");
    }
    let text = gw.metrics().await;
    assert_eq!(metric_value(&text, &kills), 1.0, "only the one sleeper");
    assert_eq!(
        metric_value(
            &text,
            "sluice_db_connections_closed_total{reason=\"closed_by_server\"}"
        ),
        0.0
    );
    // And clients through sluice are served on the same connections.
    let mut client = gw.connect().await;
    let n: Option<u32> = client.query_first("SELECT 7").await.unwrap();
    assert_eq!(n, Some(7));
    client.disconnect().await.unwrap();
    spared.disconnect().await.unwrap();
}

/// Starts a gateway whose janitor (`enabled` or not) lists `sl_<test>` with `min_idle`,
/// opens a direct connection as that user, lets the janitor have ten rounds (or, when off,
/// the time they would take, and more), checks the connection survived untouched, and
/// returns the metrics.
async fn sleeper_survives(test: &str, min_idle: Duration, enabled: bool) -> String {
    let user = format!("sl_{test}");
    let gw = start_with(test, |c| {
        janitor(c, vec![user.clone()], min_idle);
        c.janitor.enabled = enabled;
    })
    .await;
    let (mut sleeper, sleeper_id) = bypass(&user).await;
    if enabled {
        wait_for_metric(&gw, "sluice_janitor_rounds_total", 10.0).await;
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(threads().await.contains(&sleeper_id));
    assert!(alive(&mut sleeper).await);
    sleeper.disconnect().await.unwrap();
    let text = gw.metrics().await;
    let kills = format!("sluice_janitor_kills_total{{user=\"{user}\"}}");
    assert_eq!(metric_value(&text, &kills), 0.0);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_sleepers_younger_than_min_idle() {
    let text = sleeper_survives("janitor_young", Duration::from_secs(3600), true).await;
    assert!(metric_value(&text, "sluice_janitor_rounds_total") >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_kills_nothing() {
    // It would kill the sleeper after a second, were it on.
    let text = sleeper_survives("janitor_off", Duration::from_secs(1), false).await;
    assert_eq!(metric_value(&text, "sluice_janitor_rounds_total"), 0.0);
}
