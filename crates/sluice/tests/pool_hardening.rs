//! The pool under conditions that used to break it: `min_idle` connections opened by
//! maintenance, a burst while maintenance opens them, and pooled connections the database
//! dropped (a restart) while they sat idle.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

/// `sluice_session_adoptions_total` of `kind` in a metrics page.
fn adoptions(metrics: &str, kind: &str) -> f64 {
    metric_value(
        metrics,
        &format!("sluice_session_adoptions_total{{kind=\"{kind}\"}}"),
    )
}

/// Waits until the pool holds `idle` idle connections.
async fn wait_for_idle(gw: &TestGateway, idle: usize) {
    for _ in 0..250 {
        if gw.gateway.pool.stats().idle >= idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "pool never reached {idle} idle: {:?}",
        gw.gateway.pool.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_serve_clients() {
    let gw = start_with("min_idle", |c| {
        c.pool.max_db_connections = 6;
        c.pool.min_idle = 5;
    })
    .await;
    // Maintenance opens them before any client asked for one.
    wait_for_idle(&gw, 5).await;
    assert_eq!(db_connections_of(&gw.backend_user).await, 5);
    for i in 0..10 {
        let mut conn = gw.connect().await;
        let n: Option<u32> = conn.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(n, Some(i));
        conn.disconnect().await.unwrap();
    }
    gw.wait_idle().await;
    assert!(gw.gateway.pool.stats().total <= 6);
}

/// Two clients with different session variables, taking turns over a pool of two idle
/// connections, each find the connection already holding theirs: no `SET` is replayed.
/// (Before, the most recently used connection was lent, the other client's, and every turn
/// paid a `SET` round trip.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_different_variables_each_find_their_own_connection() {
    const TURNS: usize = 20;
    let gw = start_with("fit_vars", |c| c.pool.max_db_connections = 2).await;
    let mut ansi = gw.connect().await;
    ansi.query_drop("SET SESSION sql_mode = 'ANSI'")
        .await
        .unwrap();
    let mut plain = gw.connect().await;
    // Both connections on the clients' schema: each client holds one at once.
    ansi.query_drop("BEGIN").await.unwrap();
    plain.query_drop("BEGIN").await.unwrap();
    ansi.query_drop("COMMIT").await.unwrap();
    plain.query_drop("COMMIT").await.unwrap();
    gw.wait_idle().await;
    let before = adoptions(&gw.metrics().await, "variables");
    for turn in 0..TURNS {
        let mode: String = ansi
            .query_first("SELECT @@sql_mode")
            .await
            .unwrap()
            .unwrap();
        assert!(mode.contains("ANSI_QUOTES"), "turn {turn}: {mode}");
        let mode: String = plain
            .query_first("SELECT @@sql_mode")
            .await
            .unwrap()
            .unwrap();
        assert!(!mode.contains("ANSI_QUOTES"), "turn {turn}: {mode}");
    }
    let replayed = adoptions(&gw.metrics().await, "variables") - before;
    assert_eq!(replayed, 0.0, "SETs replayed in {} borrows", 2 * TURNS);
    assert_eq!(db_connections_of(&gw.backend_user).await, 2);
    ansi.disconnect().await.unwrap();
    plain.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_while_maintenance_opens_min_idle_never_passes_the_cap() {
    const POOL: usize = 3;
    const CLIENTS: usize = 40;
    let gw = start_with("min_idle_burst", |c| {
        c.pool.max_db_connections = POOL;
        c.pool.min_idle = POOL;
        c.pool.borrow_timeout = Duration::from_secs(60);
    })
    .await;
    let watcher = PeakWatcher::start(&gw.backend_user);
    // At once, while maintenance is opening its connections.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let opts = gw.opts("app", "secret", Some(TEST_DB));
        clients.spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            for _ in 0..3 {
                conn.query_drop("BEGIN").await?;
                let n: Option<usize> = conn.query_first(format!("SELECT {i}")).await?;
                assert_eq!(n, Some(i));
                conn.query_drop("COMMIT").await?;
            }
            conn.disconnect().await
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.unwrap().unwrap();
    }
    let peak = watcher.stop().await;
    assert!(
        peak <= POOL,
        "the database saw {peak} connections, the cap is {POOL}"
    );
    let stats = gw.gateway.pool.stats();
    assert!(stats.total <= POOL, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_while_idle_are_never_lent() {
    const POOL: usize = 3;
    let gw = start_with("restarted", |c| {
        c.pool.max_db_connections = POOL;
        // Used a moment ago: age alone would lend them without a ping.
        c.pool.ping_after_idle = Duration::from_secs(3600);
    })
    .await;
    gw.use_connections(POOL).await;
    // What a database restart does to them: every one closed from the server's side.
    let mut admin = direct().await;
    let ids: Vec<u64> = admin
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
            (&gw.backend_user,),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), POOL);
    for id in ids {
        admin
            .query_drop(format!("KILL CONNECTION {id}"))
            .await
            .unwrap();
    }
    admin.disconnect().await.unwrap();
    db_connections_settle(&gw.backend_user, 0).await;
    // Each of the next clients gets a good answer, none a dead connection.
    for i in 0..POOL as u32 {
        let mut conn = gw.connect().await;
        let n: Option<u32> = conn.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(n, Some(i));
        conn.disconnect().await.unwrap();
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"closed_by_server\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// The login collation and first character set a session reports.
async fn raw_charset(conn: &mut sluice::backend::BackendConn) -> (String, String) {
    let rows = conn
        .query_text("SELECT @@collation_connection, @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    let mut values = rows[0].iter().map(|v| v.clone().unwrap_or_default());
    (values.next().unwrap(), values.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_driver_flavours_share_a_pool_of_two_without_evictions() {
    use sluice::backend::Flavor;
    use sluice_protocol::CapabilityFlags;
    const ROUNDS: usize = 20;
    let gw = start_with("flavours", |c| c.pool.max_db_connections = 2).await;
    // What mysql_async's login gives directly.
    let mut admin = direct().await;
    let native: (String, String) = admin
        .query_first("SELECT @@collation_connection, @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    admin.disconnect().await.unwrap();
    // Two raw clients: other login collations, with and without multi-statements; the keys
    // of the pool as mysql_async and Connector/C choose them (CLIENT_PS_MULTI_RESULTS too).
    let unicode = Flavor {
        capabilities: CapabilityFlags::CLIENT_DEPRECATE_EOF
            | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
            | CapabilityFlags::CLIENT_MULTI_STATEMENTS,
        collation: 224,
        ..Flavor::INTERNAL
    };
    let latin1 = Flavor {
        capabilities: CapabilityFlags::CLIENT_DEPRECATE_EOF
            | CapabilityFlags::CLIENT_PS_MULTI_RESULTS,
        collation: 8,
        ..Flavor::INTERNAL
    };
    for round in 0..ROUNDS {
        // The three at once, each a fresh login.
        let gw = &gw;
        let (native_seen, unicode_seen, latin1_seen) = tokio::join!(
            async {
                let mut conn = gw.connect().await;
                let seen: (String, String) = conn
                    .query_first("SELECT @@collation_connection, @@character_set_client")
                    .await
                    .unwrap()
                    .unwrap();
                conn.disconnect().await.unwrap();
                seen
            },
            async { raw_charset(&mut raw_client_with(gw, unicode).await).await },
            async { raw_charset(&mut raw_client_with(gw, latin1).await).await },
        );
        assert_eq!(native_seen, native, "round {round}");
        assert_eq!(
            unicode_seen,
            ("utf8mb4_unicode_ci".into(), "utf8mb4".into()),
            "round {round}"
        );
        assert_eq!(
            latin1_seen,
            ("latin1_swedish_ci".into(), "latin1".into()),
            "round {round}"
        );
    }
    let metrics = gw.metrics().await;
    let evicted = metric_value(
        &metrics,
        "sluice_db_connections_closed_total{reason=\"evicted\"}",
    );
    let adoption = |kind: &str| adoptions(&metrics, kind);
    println!(
        "{} logins over a pool of 2: {evicted} evictions; adoptions: variables {}, login {}, \
         multi_statements {}, schema {}",
        3 * ROUNDS,
        adoption("variables"),
        adoption("login"),
        adoption("multi_statements"),
        adoption("schema"),
    );
    assert!(evicted <= 2.0, "{evicted} evictions");
    // Each login collation was learned once at most.
    assert!(adoption("login") <= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_infile_is_refused_to_a_client_that_did_not_offer_it() {
    let gw = start("no_local_infile").await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "1\n2\n").unwrap();
    let script = format!(
        "CREATE TEMPORARY TABLE nli (id INT);\n\
         LOAD DATA LOCAL INFILE '{}' INTO TABLE nli;\n",
        csv.display()
    );
    // The same script, with and without the client offering CLIENT_LOCAL_FILES; database
    // connections offer it either way.
    let run = |local_infile: &str| {
        let args = [
            "--protocol=tcp".to_owned(),
            "-h127.0.0.1".to_owned(),
            format!("-P{}", gw.addr.port()),
            "-uapp".to_owned(),
            "-psecret".to_owned(),
            "--batch".to_owned(),
            "--skip-ssl".to_owned(),
            format!("--local-infile={local_infile}"),
            TEST_DB.to_owned(),
            "-e".to_owned(),
            format!("{script} SELECT COUNT(*) AS n FROM nli"),
        ];
        tokio::process::Command::new("mariadb").args(args).output()
    };
    let refused = run("0").await.expect("mariadb client installed");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ERROR 4166 (HY000)"), "{stderr}");
    let allowed = run("1").await.unwrap();
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        stdout.contains("n\n2\n"),
        "{stdout}{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_idle_close_when_given_back() {
    let gw = start_with("max_idle", |c| {
        c.pool.max_db_connections = 5;
        c.pool.max_idle = Some(2);
    })
    .await;
    // A burst of four at once, then quiet.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut conn = gw.connect().await;
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop("SELECT 1").await.unwrap();
        clients.push(conn);
    }
    for mut conn in clients {
        conn.query_drop("COMMIT").await.unwrap();
        conn.disconnect().await.unwrap();
    }
    gw.wait_idle().await;
    assert_eq!(gw.gateway.pool.stats().idle, 2);
    let open = db_connections_settle(&gw.backend_user, 2).await;
    assert_eq!(open, 2, "the database still sees {open}");
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"max_idle\"}"
        ) >= 2.0
    );
}
