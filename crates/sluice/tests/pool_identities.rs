//! One pool, several database users: a connection serves only borrowers of the database
//! user it is logged in as, every user draws on the one `max_db_connections` budget, and an
//! idle connection of one user is closed (least recently used first) when another needs
//! the slot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice::backend::{first_value, Flavor};
use sluice::config::{BackendSecret, BackendTarget, PoolConfig};
use sluice::metrics::Metrics;
use sluice::pool::{BackendTimeouts, Pool};
use sluice::queue::LaneKey;

fn login(user: &str) -> BackendTarget {
    BackendTarget {
        host: DB_HOST.into(),
        port: DB_PORT,
        user: user.into(),
        secret: BackendSecret::Password("backend-pw".into()),
        database: Some(TEST_DB.into()),
        tls: sluice::tls::BackendTls::DISABLED,
        compress: false,
    }
}

/// A pool for `first`'s login under `config`, with the usual time limits.
fn pool_with(first: &BackendTarget, config: PoolConfig, metrics: Metrics) -> Pool {
    let timeouts = BackendTimeouts {
        connect: Duration::from_secs(5),
        stall: Duration::from_secs(60),
    };
    Pool::new(first.clone(), config, timeouts, metrics)
}

async fn current_user(pool: &Pool, login: &BackendTarget) -> String {
    let mut lease = pool
        .borrow(&LaneKey::Sluice, login, Flavor::INTERNAL, None)
        .await
        .unwrap();
    let rows = lease
        .conn()
        .query_text("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
        .await
        .unwrap()
        .unwrap();
    pool.release(lease);
    first_value::<String>(&rows).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_user_gets_its_own_connections_under_one_budget() {
    let users = [
        create_backend_user("ident_a").await,
        create_backend_user("ident_b").await,
        create_backend_user("ident_c").await,
    ];
    let logins: Vec<BackendTarget> = users.iter().map(|u| login(u)).collect();
    let config = PoolConfig {
        max_db_connections: 2,
        borrow_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let metrics = Metrics::new();
    let pool = pool_with(&logins[0], config, metrics.clone());

    // Each borrower runs as its own database user, never on another's connection.
    for (login, user) in logins.iter().zip(&users).take(2) {
        assert_eq!(&current_user(&pool, login).await, user);
    }
    assert_eq!(pool.stats().idle, 2);
    assert_eq!(current_user(&pool, &logins[0]).await, users[0], "reused");
    // A third user at the cap: the least recently used idle connection (b's) makes room.
    assert_eq!(current_user(&pool, &logins[2]).await, users[2]);
    assert_eq!(pool.stats().total, 2);
    let counts = [
        db_connections_of(&users[0]).await,
        db_connections_of(&users[1]).await,
        db_connections_of(&users[2]).await,
    ];
    assert_eq!(counts, [1, 0, 1], "b's idle connection was closed for c");
    let rendered = metrics.render();
    for (user, count) in users.iter().zip(counts) {
        let sample = format!("sluice_user_db_connections{{user=\"{user}\"}}");
        assert_eq!(metric_value(&rendered, &sample), count as f64, "{rendered}");
    }
    assert_eq!(
        metric_value(
            &rendered,
            "sluice_db_connections_closed_total{reason=\"evicted\"}"
        ),
        1.0
    );

    // Borrowers of different users share the cap: a third waits for one of two to return.
    let pool = Arc::new(pool);
    let mut held_a = pool
        .borrow(&LaneKey::Sluice, &logins[0], Flavor::INTERNAL, None)
        .await
        .unwrap();
    let held_c = pool
        .borrow(&LaneKey::Sluice, &logins[2], Flavor::INTERNAL, None)
        .await
        .unwrap();
    let waiting = {
        let (pool, login) = (pool.clone(), logins[1].clone());
        tokio::spawn(async move { current_user(&pool, &login).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the cap of 2 holds across users");
    let _ = held_a.conn().query_text("DO 1").await.unwrap();
    pool.release(held_a);
    assert_eq!(waiting.await.unwrap(), users[1]);
    pool.release(held_c);
    for user in &users {
        assert!(db_connections_of(user).await <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_metrics_follow_logins_and_cap_made_up_names() {
    let gw = start("user_metrics").await;
    let mut app = gw.connect().await;
    app.query_drop("DO 1").await.unwrap();
    for name in ["app", "nobody_1", "nobody_2"] {
        let err = mysql_async::Conn::new(gw.opts(name, "wrong", None))
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), Some(1045));
    }
    let metrics = gw.metrics().await;
    let value = |sample: &str| metric_value(&metrics, sample);
    assert_eq!(value("sluice_user_client_connections{user=\"app\"}"), 1.0);
    let borrows = format!("sluice_user_borrows_total{{user=\"{}\"}}", gw.backend_user);
    assert!(value(&borrows) >= 2.0, "login and DO 1: {metrics}");
    assert_eq!(value("sluice_user_auth_failures_total{user=\"app\"}"), 1.0);
    // Names no source knows are not labels: a flood of them cannot grow the scrape.
    assert_eq!(
        value("sluice_user_auth_failures_total{user=\"unknown\"}"),
        2.0
    );
    assert!(!metrics.contains("nobody_1"), "{metrics}");
    app.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_ceiling_waits_without_holding_up_others() {
    let users = [
        create_backend_user("ceil_a").await,
        create_backend_user("ceil_b").await,
    ];
    let logins: Vec<BackendTarget> = users.iter().map(|u| login(u)).collect();
    let config = PoolConfig {
        max_db_connections: 3,
        max_db_connections_per_user: Some(1),
        borrow_timeout: Duration::from_millis(500),
        ..PoolConfig::default()
    };
    let pool = pool_with(&logins[0], config, Metrics::new());
    let held = pool
        .borrow(&LaneKey::Sluice, &logins[0], Flavor::INTERNAL, None)
        .await
        .unwrap();
    // a's second borrow waits for its own ceiling and gives up with a clear error...
    let err = match pool
        .borrow(&LaneKey::Sluice, &logins[0], Flavor::INTERNAL, None)
        .await
    {
        Err(err) => err,
        Ok(_) => panic!("a second connection for a user with a ceiling of 1"),
    };
    assert!(
        err.to_string().contains("max_db_connections_per_user"),
        "{err}"
    );
    // ...while b, under the same budget, is served at once.
    assert_eq!(current_user(&pool, &logins[1]).await, users[1]);
    pool.release(held);
    assert_eq!(current_user(&pool, &logins[0]).await, users[0]);
}

/// Two database users sharing a full pool take turns on their own connections: a borrower
/// whose user has a connection lent out waits a moment for it rather than evicting the
/// other user's idle one, so the database does not see a new connection per borrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_a_full_pool_do_not_evict_each_other_per_borrow() {
    const BORROWS: usize = 200;
    let users = [
        create_backend_user("ident_turn_a").await,
        create_backend_user("ident_turn_b").await,
    ];
    let config = PoolConfig {
        max_db_connections: 2,
        borrow_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let metrics = Metrics::new();
    let pool = Arc::new(pool_with(&login(&users[0]), config, metrics.clone()));
    let mut borrowers = tokio::task::JoinSet::new();
    // Three borrowers per user, each back for more as soon as it gave its connection back.
    for i in 0..6 {
        let (pool, login) = (pool.clone(), login(&users[i % 2]));
        borrowers.spawn(async move {
            for _ in 0..BORROWS {
                assert_eq!(current_user(&pool, &login).await, login.user);
                // A client's next command comes after a round trip: others take turns.
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(done) = borrowers.join_next().await {
        done.unwrap();
    }
    assert!(pool.stats().total <= 2);
    let rendered = metrics.render();
    let evicted = metric_value(
        &rendered,
        "sluice_db_connections_closed_total{reason=\"evicted\"}",
    );
    let opened = metric_value(&rendered, "sluice_db_connections_opened_total");
    // Before, most borrows evicted (745 of 1,200 in one run); none or a few now.
    assert!(
        evicted <= 20.0 && opened <= 22.0,
        "{evicted} evicted, {opened} opened for {} borrows",
        6 * BORROWS
    );
}
