//! Transaction-level multiplexing against the real MariaDB: many clients over few database
//! connections, each seeing exactly its own session.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice_protocol::command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_over_few_connections_each_see_their_own_session() {
    const CLIENTS: usize = 500;
    const POOL: usize = 10;
    let gw = start_with("many", |c| c.pool.max_db_connections = POOL).await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE TABLE IF NOT EXISTS mux_rows (client INT, n INT) ENGINE=InnoDB")
        .await
        .unwrap();
    admin.query_drop("DELETE FROM mux_rows").await.unwrap();

    // Watch the database's side while the clients run.
    let watcher = PeakWatcher::start(&gw.backend_user);

    // MariaDB 10.11 can hand out the wrong offset time zone when many sessions set a new
    // offset at once (seen directly, without sluice); set each offset once first.
    let offset = |i: usize| format!("+{:02}:{:02}", i % 12, (i % 4) * 15);
    for i in 0..12 * 4 {
        admin
            .query_drop(format!("SET time_zone = '{}'", offset(i)))
            .await
            .unwrap();
    }
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let opts = gw.opts("app", "secret", Some(TEST_DB));
        clients.spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let tz = offset(i);
            let mode = if i % 2 == 0 {
                "ANSI_QUOTES"
            } else {
                "NO_ZERO_DATE"
            };
            conn.query_drop(format!("SET time_zone = '{tz}', sql_mode = '{mode}'"))
                .await?;
            if i % 3 == 0 {
                conn.query_drop("USE mysql").await?;
            }
            for n in 0..3 {
                // A transaction: both rows or none, seen by this client before commit.
                conn.query_drop("START TRANSACTION").await?;
                conn.query_drop(format!(
                    "INSERT INTO sluice_test.mux_rows VALUES ({i}, {n}), ({i}, {n})"
                ))
                .await?;
                let mine: u64 = conn
                    .query_first(format!(
                        "SELECT COUNT(*) FROM sluice_test.mux_rows WHERE client = {i}"
                    ))
                    .await?
                    .unwrap_or(0);
                assert_eq!(
                    mine,
                    2 * (n + 1) as u64,
                    "client {i} sees its own uncommitted rows"
                );
                if n == 1 {
                    conn.query_drop("ROLLBACK").await?;
                    conn.query_drop(format!(
                        "INSERT INTO sluice_test.mux_rows VALUES ({i}, 1), ({i}, 1)"
                    ))
                    .await?;
                } else {
                    conn.query_drop("COMMIT").await?;
                }
                let (got_tz, got_mode, db): (String, String, Option<String>) = conn
                    .query_first("SELECT @@time_zone, @@sql_mode, DATABASE()")
                    .await?
                    .unwrap();
                assert_eq!(got_tz, tz, "client {i} kept its time zone");
                assert_eq!(got_mode, mode, "client {i} kept its sql_mode");
                let want_db = if i % 3 == 0 { "mysql" } else { TEST_DB };
                assert_eq!(db.as_deref(), Some(want_db), "client {i} kept its schema");
            }
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(())
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.unwrap().unwrap();
    }
    let peak = watcher.stop().await;
    assert!(
        peak <= POOL,
        "the database saw {peak} connections, more than the pool of {POOL}"
    );
    let per_client: Vec<(u32, u64)> = admin
        .query("SELECT client, COUNT(*) FROM mux_rows GROUP BY client")
        .await
        .unwrap();
    assert_eq!(per_client.len(), CLIENTS);
    assert!(
        per_client.iter().all(|(_, n)| *n == 6),
        "every client's committed rows, no more"
    );
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "sluice_borrows_total") > (CLIENTS * 10) as f64);
    assert_eq!(metric_value(&metrics, "sluice_borrow_timeouts_total"), 0.0);
    admin.query_drop("DROP TABLE mux_rows").await.unwrap();
    admin.disconnect().await.unwrap();
}

/// The database thread serving the client's next statement.
async fn thread_of(conn: &mut mysql_async::Conn) -> u32 {
    conn.query_first("SELECT @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pin_reason_keeps_the_client_on_its_connection_and_is_counted() {
    let gw = start_with("pins", |c| c.pool.max_db_connections = 3).await;
    let cases = [
        ("CREATE TEMPORARY TABLE pin_t (a INT)", "temporary_table"),
        ("SET @pin = 1", "user_variable"),
        ("SELECT GET_LOCK('sluice_pin', 1)", "named_lock"),
        ("LOCK TABLES mysql.user READ", "table_lock"),
        ("PREPARE pin_s FROM 'SELECT 1'", "sql_prepare"),
        ("SELECT SQL_CALC_FOUND_ROWS 1", "found_rows"),
        ("SET ROLE NONE", "role"),
    ];
    for (sql, reason) in cases {
        let mut pinned = gw.connect().await;
        pinned.query_drop(sql).await.unwrap();
        let first = thread_of(&mut pinned).await;
        // Another client works in between; the pinned one stays where its state is.
        let mut other = gw.connect().await;
        for _ in 0..3 {
            other.query_drop("SELECT 1").await.unwrap();
        }
        assert_eq!(
            thread_of(&mut pinned).await,
            first,
            "{reason}: pinned client moved"
        );
        let metrics = gw.metrics().await;
        let sample = format!("sluice_pins_total{{reason=\"{reason}\"}}");
        assert_eq!(
            metric_value(&metrics, &sample),
            1.0,
            "{reason} counted once"
        );
        if reason == "table_lock" {
            pinned.query_drop("UNLOCK TABLES").await.unwrap();
        }
        pinned.disconnect().await.unwrap();
        other.disconnect().await.unwrap();
        gw.wait_idle().await;
    }
    // Plain statements and carried variables do not pin.
    let mut free = gw.connect().await;
    free.query_drop("SET time_zone = '+01:00'").await.unwrap();
    free.query_drop("SELECT 1").await.unwrap();
    assert_eq!(
        gw.gateway.pool.stats().busy,
        0,
        "an unpinned client holds nothing between statements"
    );
    free.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_functions_answer_correctly_on_another_connection() {
    let gw = start_with("functions", |c| c.pool.max_db_connections = 2).await;
    let mut a = gw.connect().await;
    let mut holder = gw.connect().await;
    a.query_drop("CREATE TABLE IF NOT EXISTS fn_probe (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await
        .unwrap();
    a.query_drop("INSERT INTO fn_probe (v) VALUES (1)")
        .await
        .unwrap();
    let id = a.last_insert_id().unwrap();
    let inserted_on = thread_of(&mut a).await;
    // Another client takes the connection that served the insert, inside a transaction.
    holder.query_drop("BEGIN").await.unwrap();
    let held = thread_of(&mut holder).await;
    let (last, elsewhere): (u64, u32) = a
        .query_first("SELECT LAST_INSERT_ID(), @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, id, "LAST_INSERT_ID() follows the client");
    if held == inserted_on {
        assert_ne!(
            elsewhere, inserted_on,
            "the check ran on another connection"
        );
    }
    a.query_drop("UPDATE fn_probe SET v = v + 1").await.unwrap();
    let rows: i64 = a.query_first("SELECT ROW_COUNT()").await.unwrap().unwrap();
    assert!(rows >= 1, "ROW_COUNT() after an UPDATE: {rows}");
    let _: Vec<u32> = a.query("SELECT id FROM fn_probe LIMIT 1").await.unwrap();
    let found: u64 = a.query_first("SELECT FOUND_ROWS()").await.unwrap().unwrap();
    assert_eq!(found, 1);

    // CONNECTION_ID() is sluice's id for the client, stable across connections, unique.
    let mine: u32 = a
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mine, a.id(), "matches the greeting's id");
    let theirs: u32 = holder
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(mine, theirs);
    holder.query_drop("ROLLBACK").await.unwrap();
    a.query_drop("DROP TABLE fn_probe").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_uses_sluice_ids_and_only_reaches_the_same_user() {
    let gw = start("kill_ids").await;
    let mut sleeper = gw.connect().await;
    let sleeper_id = sleeper.id();
    let running = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result: Result<Option<u8>, _> = sleeper.query_first("SELECT SLEEP(20)").await;
        (sleeper, started.elapsed(), result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut stranger = mysql_async::Conn::new(gw.opts("empty", "", None))
        .await
        .unwrap();
    let err = stranger
        .query_drop(format!("KILL QUERY {sleeper_id}"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1095), "{err}");
    let err = stranger.query_drop("KILL 999999").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1094), "{err}");

    let mut killer = gw.connect().await;
    killer
        .query_drop(format!("KILL QUERY {sleeper_id}"))
        .await
        .unwrap();
    let (mut sleeper, elapsed, result) = running.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "the query was interrupted after {elapsed:?}"
    );
    // MariaDB ends an interrupted SLEEP() with 1 (or error 1317).
    assert!(
        matches!(result, Ok(Some(1)))
            || result.as_ref().is_err_and(|e| server_code(e) == Some(1317)),
        "{result:?}"
    );
    sleeper.query_drop("SELECT 1").await.unwrap();

    killer
        .query_drop(format!("KILL {sleeper_id}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        sleeper.query_drop("SELECT 1").await.is_err(),
        "the killed client is gone"
    );
    killer.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_users_keep_their_connection() {
    let gw = start_with("session_mode", |c| {
        c.users.push(sluice::config::UserConfig {
            name: "sticky".into(),
            password: Some("pw".into()),
            password_hash: None,
            pool_mode: Some(sluice::config::PoolMode::Session),
            backend: Some(sluice::config::SharedBackend::Shared),
            ..Default::default()
        });
    })
    .await;
    let mut sticky = mysql_async::Conn::new(gw.opts("sticky", "pw", None))
        .await
        .unwrap();
    let first = thread_of(&mut sticky).await;
    let mut other = gw.connect().await;
    other.query_drop("SELECT 1").await.unwrap();
    assert_eq!(thread_of(&mut sticky).await, first);
    assert_eq!(
        gw.gateway.pool.stats().busy,
        1,
        "only the session-mode client holds one"
    );
    sticky.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_set_inside_a_procedure_or_several_at_once_follow_the_client() {
    let gw = start_with("proc_vars", |c| c.pool.max_db_connections = 2).await;
    let mut a = gw.connect().await;
    a.query_drop(
        "CREATE OR REPLACE PROCEDURE set_vars() BEGIN SET SESSION group_concat_max_len = 4321; END",
    )
    .await
    .unwrap();
    a.query_drop("CALL set_vars()").await.unwrap();
    a.query_drop(
        "SET SESSION foreign_key_checks = 0, unique_checks = 0, tx_isolation = 'SERIALIZABLE'",
    )
    .await
    .unwrap();
    // Push the client onto the other connection: someone else holds the one it used.
    let mut holder = gw.connect().await;
    holder.query_drop("BEGIN").await.unwrap();
    let used = thread_of(&mut holder).await;
    let (len, fk, uc, iso, th): (u64, u8, u8, String, u32) = a
        .query_first("SELECT @@group_concat_max_len, @@foreign_key_checks, @@unique_checks, @@tx_isolation, @@pseudo_thread_id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (len, fk, uc, iso.as_str()),
        (4321, 0, 0, "SERIALIZABLE"),
        "on thread {th} (holder on {used})"
    );
    // And the holder, which never set them, sees the defaults on whatever it gets next.
    holder.query_drop("COMMIT").await.unwrap();
    let (len, fk): (u64, u8) = holder
        .query_first("SELECT @@group_concat_max_len, @@foreign_key_checks")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(len, 4321);
    assert_eq!(fk, 1);
    assert_eq!(
        metric_value(
            &gw.metrics().await,
            "sluice_pins_total{reason=\"session_state\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_statement_option_follows_its_client_without_pinning() {
    let gw = start_with("set_option", |c| c.pool.max_db_connections = 1).await;
    // Two clients without the multi-statements capability, sharing the only connection.
    let mut on = raw_client(&gw).await;
    let mut off = raw_client(&gw).await;
    let multi = [&[command::QUERY][..], b"SELECT 1; SELECT 2"].concat();
    assert_eq!(
        result_sets(&mut on, &multi).await,
        Err(1064),
        "off at first"
    );

    // COM_SET_OPTION MYSQL_OPTION_MULTI_STATEMENTS_ON, answered with EOF.
    let reply = request(&mut on, &[command::SET_OPTION, 0, 0]).await;
    assert_eq!(reply[0], 0xfe, "{reply:?}");
    for round in 0..3 {
        assert_eq!(result_sets(&mut on, &multi).await, Ok(2), "round {round}");
        // The other client on the same connection still has it off.
        assert_eq!(
            result_sets(&mut off, &multi).await,
            Err(1064),
            "round {round}: the option leaked to another client"
        );
    }
    let metrics = gw.metrics().await;
    assert!(!metrics.contains("sluice_pins_total{"), "{metrics}");
}

/// Sends a COM_QUERY and reads its whole reply: the number of result sets, or the error code.
/// (The raw client deprecates EOF, so each result set ends with one 0xfe packet.)
async fn result_sets(
    conn: &mut sluice::backend::BackendConn,
    payload: &[u8],
) -> Result<usize, u16> {
    use sluice_protocol::reply::{ReplyShape, ReplyTracker, Step};
    let mut seq = 0;
    conn.stream.write_packet(&mut seq, payload).await.unwrap();
    let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
    let mut sets = 0;
    loop {
        let frame = conn.stream.read_frame().await.unwrap();
        let body = frame.payload();
        if body[0] == 0xff {
            return Err(error_code(body));
        }
        sets += usize::from(body[0] == 0xfe);
        if let Step::Done(_) = tracker.feed(frame.header, body).unwrap() {
            return Ok(sets);
        }
    }
}
