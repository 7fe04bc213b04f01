//! Real-client tests with `mysql_async` (Rust) through sluice against the real MariaDB.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use mysql_async::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_types_and_multi_results() {
    let gw = start("queries").await;
    let mut conn = gw.connect().await;
    let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
    assert!(
        version.contains("MariaDB"),
        "server version passed through: {version}"
    );
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some(TEST_DB));

    conn.query_drop("CREATE TEMPORARY TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20), d DECIMAL(10,2), n INT NULL)")
        .await
        .unwrap();
    conn.exec_drop(
        "INSERT INTO t (v, d, n) VALUES (?, ?, ?)",
        ("a😀", "12.30", None::<i32>),
    )
    .await
    .unwrap();
    assert_eq!(conn.last_insert_id(), Some(1));
    conn.exec_drop(
        "INSERT INTO t (v, d, n) VALUES (?, ?, ?)",
        ("b", "-1.05", Some(7)),
    )
    .await
    .unwrap();
    let rows: Vec<(u32, String, String, Option<i32>)> = conn
        .query("SELECT id, v, CAST(d AS CHAR), n FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, "a😀".into(), "12.30".into(), None),
            (2, "b".into(), "-1.05".into(), Some(7)),
        ]
    );
    // Prepared statements (binary protocol) round-trip too.
    let stmt_rows: Vec<(u32, Option<i32>)> = conn
        .exec("SELECT id, n FROM t WHERE id >= ? ORDER BY id", (1,))
        .await
        .unwrap();
    assert_eq!(stmt_rows, vec![(1, None), (2, Some(7))]);

    // Several statements, several result sets, one of them an UPDATE.
    let mut result = conn
        .query_iter("SELECT 1 AS a; UPDATE t SET n = 1 WHERE id = 1; SELECT 'x' AS b, 'y' AS c")
        .await
        .unwrap();
    let first: Vec<Row> = result.collect().await.unwrap();
    assert_eq!(first.len(), 1);
    let second: Vec<Row> = result.collect().await.unwrap();
    assert!(second.is_empty());
    assert_eq!(result.affected_rows(), 1);
    let third: Vec<(String, String)> = result.collect().await.unwrap();
    assert_eq!(third, vec![("x".into(), "y".into())]);
    drop(result);

    // A stored procedure returning two result sets.
    conn.query_drop(
        "CREATE OR REPLACE PROCEDURE sluice_two_sets() BEGIN SELECT 1; SELECT 2, 3; END",
    )
    .await
    .unwrap();
    let mut result = conn.query_iter("CALL sluice_two_sets()").await.unwrap();
    let a: Vec<u8> = result.collect().await.unwrap();
    let b: Vec<(u8, u8)> = result.collect().await.unwrap();
    assert_eq!((a, b), (vec![1], vec![(2, 3)]));
    drop(result);

    // A large result set.
    let count: Vec<u32> = conn.query("SELECT seq FROM seq_1_to_20000").await.unwrap();
    assert_eq!(count.len(), 20000);
    assert_eq!(count.last(), Some(&20000));

    conn.ping().await.unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_carry_their_codes_and_the_session_continues() {
    let gw = start("errors").await;
    let mut conn = gw.connect().await;
    for (sql, code) in [
        ("SELEC 1", 1064),
        ("SELECT * FROM no_such_table_xyz", 1146),
        ("SELECT no_such_column FROM DUAL", 1054),
        (
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'custom', MYSQL_ERRNO = 1644",
            1644,
        ),
    ] {
        let err = conn.query_drop(sql).await.unwrap_err();
        assert_eq!(server_code(&err), Some(code), "{sql}: {err}");
    }
    let err = conn
        .exec_drop("SELECT * FROM no_such_table_xyz WHERE a = ?", (1,))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1146));
    let one: u8 = conn.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_and_unknown_database() {
    let gw = start("auth").await;
    let err = mysql_async::Conn::new(gw.opts("app", "wrong", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    assert!(
        err.to_string().contains("Access denied for user 'app'"),
        "{err}"
    );
    let err = mysql_async::Conn::new(gw.opts("nobody", "secret", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let err = mysql_async::Conn::new(gw.opts("app", "secret", Some("no_such_db_xyz")))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1049), "{err}");

    // A user with no password, and a user whose password was given as a native hash.
    let mut conn = mysql_async::Conn::new(gw.opts("empty", "", None))
        .await
        .unwrap();
    let db: Option<Option<String>> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db, Some(None), "no schema unless one is asked for");
    conn.disconnect().await.unwrap();

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_auth_failures_total{reason=\"bad_password\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_auth_failures_total{reason=\"unknown_user\"}"
        ),
        1.0
    );

    let hashed = start_with("auth_hash", |c| {
        c.users = vec![sluice::config::UserConfig {
            name: "hashed".into(),
            password: None,
            password_hash: Some("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7".into()),
            backend: Some(sluice::config::SharedBackend::Shared),
            ..Default::default()
        }];
    })
    .await;
    let mut conn = mysql_async::Conn::new(hashed.opts("hashed", "secret", None))
        .await
        .unwrap();
    conn.ping().await.unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_init_db_change_user_reset() {
    let gw = start("session_cmds").await;
    let mut conn = gw.connect().await;
    conn.query_drop("SET @marker = 42").await.unwrap();
    conn.query_drop("USE mysql").await.unwrap();
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some("mysql"));

    // COM_RESET_CONNECTION clears user variables.
    conn.reset().await.unwrap();
    let marker: Option<Option<i64>> = conn.query_first("SELECT @marker").await.unwrap();
    assert_eq!(marker, Some(None));

    // COM_CHANGE_USER to another sluice user, then back with a bad password.
    conn.query_drop("SET @marker = 1").await.unwrap();
    conn.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some("empty".into()))
            .with_pass(None)
            .with_db_name(Some(TEST_DB.into())),
    )
    .await
    .unwrap();
    let (db, marker): (Option<String>, Option<i64>) = conn
        .query_first("SELECT DATABASE(), @marker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((db.as_deref(), marker), (Some(TEST_DB), None));
    let err = conn
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("nope".into())),
        )
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    // As on MariaDB, the connection stays open with its session, and the client may retry.
    conn.query_drop("SET @after = 7").await.unwrap();
    change_user_to(&mut conn, "app", "secret").await;
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_16_mib_pass_both_ways() {
    let gw = start("large").await;
    let mut conn = gw.connect().await;
    let max: u64 = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .unwrap()
        .unwrap();
    assert!(
        max >= 32 << 20,
        "test needs max_allowed_packet >= 32 MiB, server has {max}"
    );
    let size = (16 << 20) + 1234;
    let blob: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (len, back): (u64, Vec<u8>) = conn
        .exec_first("SELECT LENGTH(?), ?", (blob.clone(), blob.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(len, size as u64);
    assert!(back == blob, "blob came back intact");
    let text: String = conn
        .query_first(format!("SELECT REPEAT('x', {})", 20 << 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text.len(), 20 << 20);
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_is_bounded_waits_in_line_and_times_out_clearly() {
    let gw = start_with("bounded", |c| {
        c.pool.max_db_connections = 2;
        c.pool.borrow_timeout = Duration::from_millis(700);
    })
    .await;
    let mut a = gw.connect().await;
    let mut b = gw.connect().await;
    // Open transactions hold their connections.
    a.query_drop("BEGIN").await.unwrap();
    b.query_drop("BEGIN").await.unwrap();
    assert_eq!(db_connections_of(&gw.backend_user).await, 2);

    // A third client waits, then is told the pool is exhausted and what to raise.
    let err = mysql_async::Conn::new(gw.opts("app", "secret", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("pool.max_db_connections"), "{err}");

    // A waiting client gets the connection as soon as one is given back.
    let waiter = tokio::spawn({
        let opts = gw.opts("app", "secret", None);
        async move {
            let mut c = mysql_async::Conn::new(opts).await?;
            let v: Option<u8> = c.query_first("SELECT 3").await?;
            c.disconnect().await?;
            Ok::<_, mysql_async::Error>(v)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.disconnect().await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(3));
    assert!(db_connections_of(&gw.backend_user).await <= 2);
    let metrics = gw.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_borrow_timeouts_total"), 1.0);
    b.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_connection_carries_no_session_state() {
    let gw = start_with("no_leak", |c| c.pool.max_db_connections = 1).await;
    let mut first = gw.connect().await;
    let thread: u32 = first
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap();
    first
        .query_drop("CREATE TEMPORARY TABLE leak (a INT); SET @leak = 1; USE mysql; BEGIN; INSERT INTO sluice_test.leak_probe VALUES (1)")
        .await
        .ok();
    // Leave without COMMIT: the transaction must not survive into the next client.
    drop(first);
    gw.wait_idle().await;

    let mut second = mysql_async::Conn::new(gw.opts("empty", "", None))
        .await
        .unwrap();
    let again: u32 = second
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, thread, "the single pooled connection was reused");
    let (var, db): (Option<i64>, Option<String>) = second
        .query_first("SELECT @leak, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((var, db), (None, None));
    let err = second
        .query_drop("SELECT * FROM sluice_test.leak")
        .await
        .unwrap_err();
    assert_eq!(
        server_code(&err),
        Some(1146),
        "temporary table is gone: {err}"
    );
    let in_trans: u8 = second
        .query_first("SELECT @@in_transaction")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_trans, 0);
    second.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_connection_errors_one_client_only() {
    let gw = start("killed").await;
    let mut victim = gw.connect().await;
    let mut bystander = gw.connect().await;
    // Inside a transaction the victim holds one database connection; find its thread id.
    victim.query_drop("BEGIN").await.unwrap();
    let thread: u32 = victim
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap();
    let mut admin = direct().await;
    admin.query_drop(format!("KILL {thread}")).await.unwrap();
    let err = victim.query_drop("SELECT 1").await.unwrap_err();
    // The client sees an error packet (1158 from sluice, or the server's own kill notice),
    // not a hang.
    assert!(
        matches!(server_code(&err), Some(1158 | 1927 | 4031))
            || matches!(err, mysql_async::Error::Io(_)),
        "{err:?}"
    );
    let one: u8 = bystander.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    drop(victim);
    // The dead connection is not counted any more, and a new client works.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = gw.gateway.pool.stats();
    assert_eq!(
        stats.busy, 0,
        "between statements nobody holds a connection: {stats:?}"
    );
    assert_eq!(
        db_connections_of(&gw.backend_user).await,
        stats.total,
        "{stats:?}"
    );
    let mut fresh = gw.connect().await;
    fresh.ping().await.unwrap();
    fresh.disconnect().await.unwrap();
    bystander.disconnect().await.unwrap();
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_while_the_database_is_unreachable_get_a_clear_error() {
    let gw = start_with("down", |c| {
        c.backend.url = "mysql://root@127.0.0.1:1".into();
        c.pool.borrow_timeout = Duration::from_millis(600);
    })
    .await;
    let err = mysql_async::Conn::new(gw.opts("app", "secret", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    // The database's address is for the log, not for clients.
    assert!(!err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(
        err.to_string().contains("cannot reach the database"),
        "{err}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_db_connect_errors_total") >= 2.0,
        "retried with backoff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_inside_a_transaction_is_rolled_back_and_told_why() {
    let gw = start_with("idle_tx", |c| {
        c.idle_transaction_timeout = Duration::from_millis(300);
        c.pool.max_db_connections = 1;
    })
    .await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE TABLE IF NOT EXISTS idle_tx_probe (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    admin.query_drop("DELETE FROM idle_tx_probe").await.unwrap();

    let mut frozen = gw.connect().await;
    frozen.query_drop("BEGIN").await.unwrap();
    frozen
        .query_drop("INSERT INTO idle_tx_probe VALUES (1)")
        .await
        .unwrap();
    // The "function" freezes while holding a row lock.
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Its only pooled connection is free again, and the row lock with it.
    let mut other = gw.connect().await;
    let n: u64 = other
        .query_first("SELECT COUNT(*) FROM idle_tx_probe")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the insert was rolled back");
    other
        .query_drop("INSERT INTO idle_tx_probe VALUES (1)")
        .await
        .unwrap();
    other.disconnect().await.unwrap();

    let err = frozen.query_drop("COMMIT").await.unwrap_err();
    assert_eq!(server_code(&err), Some(4031), "{err}");
    assert!(
        err.to_string().contains("idle_transaction_timeout"),
        "{err}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_idle_timeouts_total{kind=\"transaction\"}"),
        1.0
    );
    admin.query_drop("DROP TABLE idle_tx_probe").await.unwrap();
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_disconnected_and_its_connection_returned() {
    let gw = start_with("idle_client", |c| {
        c.idle_client_timeout = Duration::from_millis(300)
    })
    .await;
    let mut conn = gw.connect().await;
    conn.query_drop("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(conn.ping().await.is_err(), "the idle client was cut");
    gw.wait_idle().await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_idle_timeouts_total{kind=\"client\"}"),
        1.0
    );
    assert_eq!(metric_value(&metrics, "sluice_client_connections"), 0.0);
}

/// The idle limit counts from the client's last reply even when the session woke meanwhile
/// (here: to give its buffers back after 1 s of quiet), so a limit of 1.3 s cuts it well
/// before 2 s (counting again from the release would give it until 2.3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_limit_counts_from_the_last_reply() {
    let gw = start_with("idle_exact", |c| {
        c.idle_client_timeout = Duration::from_millis(1300)
    })
    .await;
    let mut conn = gw.connect().await;
    conn.query_drop("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(conn.ping().await.is_err(), "the idle client was cut");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_idle_timeouts_total{kind=\"client\"}"),
        1.0
    );
}

/// Forwards TCP from a local port to MariaDB, so a test can make "the database" vanish and
/// come back without touching the real server other tests use.
struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(listener: tokio::net::TcpListener) -> Forwarder {
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect((DB_HOST, DB_PORT)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { task }
    }

    /// Drops the listener and every forwarded connection: the database "restarts".
    fn stop(self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_wait_out_a_database_restart_and_sluice_reconnects() {
    // Reserve a port, then free it: the "database" is down when the gateway starts.
    let port = {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let gw = start_with("restart", |c| {
        c.backend.url = format!("mysql://sl_restart:backend-pw@127.0.0.1:{port}");
        c.pool.borrow_timeout = Duration::from_secs(10);
        c.pool.reconnect_backoff_initial = Duration::from_millis(50);
        c.pool.reconnect_backoff_max = Duration::from_millis(200);
    })
    .await;
    let client = tokio::spawn({
        let opts = gw.opts("app", "secret", None);
        async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let one: Option<u8> = conn.query_first("SELECT 1").await?;
            Ok::<_, mysql_async::Error>((conn, one))
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !client.is_finished(),
        "the client waits while the database is down"
    );
    let forwarder = Forwarder::start(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let (conn, one) = client
        .await
        .unwrap()
        .expect("served once the database is back");
    assert_eq!(one, Some(1));
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_db_connect_errors_total") >= 2.0,
        "it retried"
    );

    // The database goes away under a connected client: that client gets an error, and new
    // clients are served again once it is back.
    forwarder.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = conn;
    assert!(conn.query_drop("SELECT 1").await.is_err());
    drop(conn);
    let _forwarder = Forwarder::start(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let mut fresh = gw.connect().await;
    let two: u8 = fresh.query_first("SELECT 2").await.unwrap().unwrap();
    assert_eq!(two, 2);
    fresh.disconnect().await.unwrap();
}
