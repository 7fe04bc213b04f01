//! A connection passes to another client only when sluice can account for every change the
//! last one made. Each test here is a way that used to fail: checked with real clients
//! (PyMySQL, the `mariadb` command line, mysql_async) and, where the server can judge, by
//! running the same thing directly against MariaDB and comparing.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

/// Held by tests that make the server run KILL, while `kill_forms_...` counts the server's
/// global `Com_kill`.
static SERVER_KILLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn run(program: &str, args: &[String]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} must be installed (scripts/ensure-deps): {e}"))
}

/// Tables and the procedure the PyMySQL scenarios use.
async fn create_fixtures() {
    let mut admin = direct().await;
    for sql in [
        "CREATE OR REPLACE TABLE ss_rows (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
        "CREATE OR REPLACE TABLE ss_seq (id INT) ENGINE=InnoDB",
        "INSERT INTO ss_seq VALUES (100), (200), (300)",
        "CREATE OR REPLACE PROCEDURE ss_cursor_proc() BEGIN \
           DECLARE v INT; DECLARE c CURSOR FOR SELECT id FROM ss_seq ORDER BY id; \
           OPEN c; FETCH c INTO v; CLOSE c; SELECT v; END",
        "CREATE OR REPLACE PROCEDURE ss_make_temp() BEGIN \
           CREATE TEMPORARY TABLE ss_tmp (a INT); INSERT INTO ss_tmp VALUES (1); \
           SET SESSION time_zone = '+05:00'; END",
    ] {
        admin.query_drop(sql).await.unwrap();
    }
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_sees_the_same_session_through_sluice_as_directly() {
    let gw = start_with("ss_pymysql", |c| {
        c.pool.max_db_connections = 2;
        c.pool.borrow_timeout = Duration::from_secs(2);
    })
    .await;
    let _kills = SERVER_KILLS.lock().await;
    let script = repo_root().join("tests/clients/session_safety.py");
    let args = |port: u16, user: &str, password: &str, other: &str, other_pw: &str| {
        [
            script.display().to_string(),
            "--host".into(),
            DB_HOST.into(),
            "--port".into(),
            port.to_string(),
            "--user".into(),
            user.into(),
            "--password".into(),
            password.into(),
            "--database".into(),
            TEST_DB.into(),
            "--other-user".into(),
            other.into(),
            "--other-password".into(),
            other_pw.into(),
        ]
        .to_vec()
    };
    let mut outputs = Vec::new();
    for through_sluice in [false, true] {
        create_fixtures().await;
        let out = if through_sluice {
            run(
                "python3",
                &args(gw.addr.port(), "app", "secret", "empty", ""),
            )
            .await
        } else {
            let user = gw.backend_user.clone();
            run(
                "python3",
                &args(DB_PORT, &user, "backend-pw", &user, "backend-pw"),
            )
            .await
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "session_safety.py failed (through sluice: {through_sluice}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    let (direct, sluice) = (&outputs[0], &outputs[1]);
    for (line, (want, got)) in direct.lines().zip(sluice.lines()).enumerate() {
        assert_eq!(
            got, want,
            "line {line} differs from MariaDB\n--- directly:\n{direct}\n--- through sluice:\n{sluice}"
        );
    }
    assert_eq!(direct.lines().count(), sluice.lines().count());
    // The figures that matter, stated outright as well.
    for expected in [
        "row written by b after a's SET @@autocommit=0: 1",
        "b's sql_mode: STRICT_TRANS_TABLES",
        "another user reads a's temporary table: no",
        "then LAST_INSERT_ID(): 42",
        "multi-byte comment: 0",
        "KILL CONNECTION_ID(): error 1927",
        "tracking after 'USE mysql': [(1, '\\x05mysql')]",
        "rows after the procedure: ((101,), (200,), (300,))",
        "another client's query: mine",
    ] {
        assert!(
            sluice.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in\n{sluice}"
        );
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_pins_total{reason=\"stored_procedure\"}"),
        2.0,
        "one pin per client that ran CALL"
    );
}

/// Global `Com_kill`: how many KILL statements the server has run.
async fn server_kills() -> u64 {
    let mut admin = direct().await;
    let row: Option<(String, u64)> = admin
        .query_first("SHOW GLOBAL STATUS LIKE 'Com_kill'")
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    row.map(|(_, n)| n).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_forms_are_handled_by_sluice_or_refused() {
    let gw = start_with("ss_kill", |c| c.pool.max_db_connections = 3).await;
    let mut client = gw.connect().await;
    let code = |r: Result<(), mysql_async::Error>| r.err().as_ref().and_then(server_code);
    let kills = SERVER_KILLS.lock().await;
    let kills_before = server_kills().await;
    for (sql, expected) in [
        ("KILL 1; SELECT 1", 1235),
        ("SELECT 1; KILL QUERY 1", 1235),
        ("EXECUTE IMMEDIATE 'KILL 1'", 1235),
        ("PREPARE s FROM 'KILL QUERY 1'", 1235),
        ("BEGIN NOT ATOMIC KILL 1; END", 1235),
        ("CREATE PROCEDURE ss_killer() KILL 1", 1235),
        ("KILL 1 + 1", 1235),
        ("KILL QUERY ID 12", 1957),
        ("KILL 4000000000", 1094),
        ("KILL USER empty", 1095),
    ] {
        assert_eq!(code(client.query_drop(sql).await), Some(expected), "{sql}");
    }
    // A KILL statement prepared through the binary protocol is refused too.
    let prepared = client.prep("KILL 1").await;
    assert_eq!(prepared.err().as_ref().and_then(server_code), Some(1295));
    // Another user's client may not be killed.
    let mut other_user = mysql_async::Conn::new(gw.opts("empty", "", Some(TEST_DB)))
        .await
        .unwrap();
    let other_id: u64 = other_user
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code(client.query_drop(format!("KILL {other_id}")).await),
        Some(1095)
    );
    assert_eq!(
        code(client.query_drop("KILL QUERY CONNECTION_ID()").await),
        Some(1317)
    );
    client.query_drop("SELECT 1").await.unwrap();
    assert_eq!(
        server_kills().await,
        kills_before,
        "none of these reached the server"
    );
    drop(kills);

    // KILL QUERY of a busy client of the same user interrupts exactly its statement.
    let mut sleeper = gw.connect().await;
    let sleeper_id: u64 = sleeper
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = sleeper.query_first("SELECT SLEEP(20)").await;
        (r, sleeper)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .query_drop(format!("KILL QUERY {sleeper_id}"))
        .await
        .unwrap();
    let (slept, mut sleeper) = sleeping.await.unwrap();
    // SLEEP() interrupted returns 1 rather than failing.
    assert!(
        matches!(slept, Ok(Some(1))) || slept.as_ref().err().and_then(server_code) == Some(1317),
        "{slept:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    sleeper.query_drop("SELECT 1").await.unwrap();

    // KILL of a client ends its session; KILL USER ends every other client of the user.
    client
        .query_drop(format!("KILL {sleeper_id}"))
        .await
        .unwrap();
    assert!(sleeper.query_drop("SELECT 1").await.is_err());
    let mut victim = gw.connect().await;
    victim.query_drop("SELECT 1").await.unwrap();
    let mut killer = gw.connect().await;
    killer.query_drop("KILL USER app").await.unwrap_err();
    assert!(victim.query_drop("SELECT 1").await.is_err());
    other_user.query_drop("SELECT 1").await.unwrap();
    assert!(
        client.query_drop("SELECT 1").await.is_err(),
        "the client was killed by KILL USER already"
    );
    other_user.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_sluice_cannot_name_pins() {
    let gw = start_with("ss_unknown", |c| c.pool.max_db_connections = 2).await;
    let mut admin = direct().await;
    admin
        .query_drop(
            "CREATE OR REPLACE FUNCTION ss_sets_var() RETURNS INT BEGIN SET @ss_hidden = 5; RETURN 1; END",
        )
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let mut client = gw.connect().await;
    // A plain SELECT, but the function it calls sets a user variable.
    client.query_drop("SELECT ss_sets_var()").await.unwrap();
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_pins_total{reason=\"session_state\"}"),
        1.0
    );
    let hidden: Option<i64> = client.query_first("SELECT @ss_hidden").await.unwrap();
    assert_eq!(hidden, Some(5), "the client keeps its variable");
    // Carried changes do not pin.
    let mut free = gw.connect().await;
    free.query_drop(
        "SET @@sql_mode = 'ANSI', @@session.time_zone = '+01:00', SESSION wait_timeout = 999",
    )
    .await
    .unwrap();
    free.query_drop("SET STATEMENT max_statement_time = 5 FOR SELECT 1")
        .await
        .unwrap();
    let (mode, tz, wait, max_time): (String, String, u64, f64) = free
        .query_first("SELECT @@sql_mode, @@time_zone, @@wait_timeout, @@max_statement_time")
        .await
        .unwrap()
        .unwrap();
    assert!(mode.contains("ANSI_QUOTES"), "{mode}");
    assert_eq!((tz.as_str(), wait, max_time), ("+01:00", 999, 0.0));
    assert_eq!(
        gw.gateway.pool.stats().busy,
        1,
        "only the pinned client holds one"
    );
    client.disconnect().await.unwrap();
    free.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_transaction_holds_the_connection_until_that_transaction_ran() {
    let gw = start_with("ss_next_trx", |c| c.pool.max_db_connections = 1).await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE TABLE IF NOT EXISTS ss_trx (a INT) ENGINE=InnoDB")
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    async fn level_in_transaction(conn: &mut mysql_async::Conn) -> Option<String> {
        conn.query_drop("START TRANSACTION").await.unwrap();
        conn.query_drop("SELECT COUNT(*) FROM ss_trx")
            .await
            .unwrap();
        let level = conn
            .query_first(
                "SELECT trx_isolation_level FROM information_schema.INNODB_TRX \
                 WHERE trx_mysql_thread_id = @@pseudo_thread_id",
            )
            .await
            .unwrap();
        conn.query_drop("COMMIT").await.unwrap();
        level
    }
    let mut client = gw.connect().await;
    client
        .query_drop("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    assert_eq!(
        gw.gateway.pool.stats().busy,
        1,
        "held for the next transaction"
    );
    assert_eq!(
        level_in_transaction(&mut client).await.as_deref(),
        Some("SERIALIZABLE")
    );
    // Released once the characteristics are cleared (just after the reply).
    gw.wait_idle().await;
    // Another client's session has the default level. (InnoDB's own view of later
    // transactions on the same thread keeps showing SERIALIZABLE in MariaDB 10.11, directly
    // as well, even after COM_RESET_CONNECTION; the session variable is what sluice owns.)
    let mut other = gw.connect().await;
    let level: Option<String> = other.query_first("SELECT @@tx_isolation").await.unwrap();
    assert_eq!(level.as_deref(), Some("REPEATABLE-READ"));
    client.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_character_set_is_each_clients_baseline() {
    use sluice::backend::Flavor;
    let gw = start_with("ss_charset", |c| c.pool.max_db_connections = 1).await;
    // Both log in with utf8mb4_unicode_ci (224).
    let flavor = Flavor {
        collation: 224,
        ..Flavor::INTERNAL
    };
    let value = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap_or_default();
    let mut first = raw_client_with(&gw, flavor).await;
    first.execute("SET NAMES latin1").await.unwrap().unwrap();
    let mut second = raw_client_with(&gw, flavor).await;
    let collation = second
        .query_text("SELECT @@collation_connection")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(collation), "utf8mb4_unicode_ci");
    let mine = first
        .query_text("SELECT @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(mine), "latin1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_shows_refusals_and_multi_byte_text_is_safe() {
    let gw = start("ss_cli").await;
    let args: Vec<String> = [
        "--protocol=tcp",
        "-h127.0.0.1",
        &format!("-P{}", gw.addr.port()),
        "-uapp",
        "-psecret",
        "--batch",
        "--skip-ssl",
        TEST_DB,
        "-e",
        "SELECT /*€€*/LAST_INSERT_ID() AS id; EXECUTE IMMEDIATE 'KILL 1'; SELECT 'not reached'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run("mariadb", &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("id\n0\n"), "{stdout}{stderr}");
    assert!(
        stderr.contains("ERROR 1235 (42000)") && stderr.contains("KILL in dynamic SQL"),
        "{stderr}"
    );
    assert!(!stdout.contains("not reached"));
    // Nothing leaked: no client counted, no session registered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gw.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_client_connections"), 0.0);
    assert!(gw.gateway.sessions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_statement_ends_it() {
    let _kills = SERVER_KILLS.lock().await;
    let gw = start_with("ss_vanish", |c| c.pool.max_db_connections = 2).await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE OR REPLACE TABLE ss_vanish (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await
        .unwrap();
    admin
        .query_drop("INSERT INTO ss_vanish VALUES (1, 0)")
        .await
        .unwrap();
    // A holds the row lock; B waits for it, then vanishes.
    let mut holder = gw.connect().await;
    holder.query_drop("BEGIN").await.unwrap();
    holder
        .query_drop("SELECT * FROM ss_vanish WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let mut waiter = raw_client(&gw).await;
    let mut seq = 0;
    let mut payload = vec![sluice_protocol::command::QUERY];
    payload.extend_from_slice(b"UPDATE ss_vanish SET v = v + 1 WHERE id = 1 /* ss_vanish_wait */");
    waiter
        .stream
        .write_packet(&mut seq, &payload)
        .await
        .unwrap();
    let waiting = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                   WHERE INFO LIKE '%ss_vanish_wait%' AND INFO NOT LIKE '%PROCESSLIST%'";
    let mut seen = 0;
    for _ in 0..100 {
        seen = admin.query_first(waiting).await.unwrap().unwrap_or(0);
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "the update waits for the lock");
    vanish(waiter);
    let started = std::time::Instant::now();
    while admin.query_first::<u64, _>(waiting).await.unwrap() != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the statement kept waiting after its client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.query_drop("COMMIT").await.unwrap();
    let v: Option<i64> = admin
        .query_first("SELECT v FROM ss_vanish WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(v, Some(0), "the abandoned update did not run");
    holder.disconnect().await.unwrap();
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_after_ddl_through_sluice_gets_the_new_metadata() {
    let gw = start_with("ss_ddl", |c| c.pool.max_db_connections = 2).await;
    let mut first = gw.connect().await;
    first
        .query_drop("CREATE OR REPLACE TABLE ss_ddl (a INT)")
        .await
        .unwrap();
    let sql = "SELECT * FROM ss_ddl WHERE a > ?";
    let before = first.prep(sql).await.unwrap();
    assert_eq!((before.num_columns(), before.num_params()), (1, 1));
    first
        .query_drop("ALTER TABLE ss_ddl ADD COLUMN b INT")
        .await
        .unwrap();
    let mut second = gw.connect().await;
    let after = second.prep(sql).await.unwrap();
    assert_eq!(after.num_columns(), 2, "columns as the table has them now");
    first.disconnect().await.unwrap();
    second.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_taken_through_prepared_statements_pin() {
    let gw = start_with("ss_ps_lock", |c| {
        c.pool.max_db_connections = 2;
        c.pool.borrow_timeout = Duration::from_millis(500);
    })
    .await;
    let mut locker = gw.connect().await;
    let got: Option<i64> = locker
        .exec_first("SELECT GET_LOCK(?, 0)", ("ss_ps_lock",))
        .await
        .unwrap();
    assert_eq!(got, Some(1));
    // Another client (on the other connection) sees the lock held, and the locker keeps it.
    let mut other = gw.connect().await;
    let free: Option<i64> = other
        .exec_first("SELECT IS_FREE_LOCK(?)", ("ss_ps_lock",))
        .await
        .unwrap();
    assert_eq!(free, Some(0));
    let mine: Option<i64> = locker
        .exec_first(
            "SELECT IS_USED_LOCK(?) = @@pseudo_thread_id",
            ("ss_ps_lock",),
        )
        .await
        .unwrap();
    assert_eq!(mine, Some(1), "the lock stayed with its client");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_pins_total{reason=\"named_lock\"}"),
        1.0
    );
    locker.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_leaves_the_sql_mode_mariadb_leaves_for_an_ignore_space_client() {
    use sluice::backend::{first_value, BackendConn, Flavor};
    use sluice_protocol::{command, CapabilityFlags};
    // A login with CLIENT_IGNORE_SPACE adds IGNORE_SPACE to sql_mode; MariaDB's
    // COM_RESET_CONNECTION returns sql_mode to the global value, without it.
    let gw = start("reset_ignore_space").await;
    let flavor = Flavor {
        capabilities: CapabilityFlags::CLIENT_DEPRECATE_EOF | CapabilityFlags::CLIENT_IGNORE_SPACE,
        ..Flavor::INTERNAL
    };
    let direct_target = direct_target();
    let mut seen = Vec::new();
    for mut conn in [
        BackendConn::connect(&direct_target, flavor, Duration::from_secs(5))
            .await
            .unwrap(),
        raw_client_with(&gw, flavor).await,
    ] {
        let mut modes = Vec::new();
        for reset in [false, true, true] {
            if reset {
                let mut seq = 0;
                conn.stream
                    .write_packet(&mut seq, &[command::RESET_CONNECTION])
                    .await
                    .unwrap();
                let ok = conn.stream.read_packet().await.unwrap();
                assert_eq!(ok.payload[0], 0, "{:?}", ok.payload);
            }
            let rows = conn.query_text("SELECT @@sql_mode").await.unwrap().unwrap();
            modes.push(first_value::<String>(&rows).unwrap());
        }
        seen.push(modes);
    }
    assert!(seen[0][0].starts_with("IGNORE_SPACE,"), "{seen:?}");
    assert!(!seen[0][1].contains("IGNORE_SPACE"), "{seen:?}");
    assert_eq!(seen[1], seen[0], "through sluice as directly");
}

/// Runs `steps` on a fresh client and returns each outcome (`ok`, the first value, or the
/// error code), for comparing a run through sluice with one directly against MariaDB.
async fn outcomes(opts: mysql_async::OptsBuilder, steps: &[&str]) -> Vec<String> {
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let mut seen = Vec::new();
    for sql in steps {
        let outcome = match conn.query_first::<mysql_async::Value, _>(*sql).await {
            Ok(Some(value)) => value.as_sql(true),
            Ok(None) => "ok".to_owned(),
            Err(e) => format!("error {}", server_code(&e).unwrap_or(0)),
        };
        seen.push(format!("{sql} => {outcome}"));
    }
    conn.disconnect().await.unwrap();
    seen
}

/// MariaDB keeps the access mode of a transaction that `SET autocommit = 1` ended in force
/// until an explicit COMMIT or ROLLBACK, even for new transactions; and the transaction's,
/// not the session's when the session's default changed inside it. Through sluice the
/// client sees the same, and no other client inherits any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characteristics_a_transaction_leaves_behind_stay_with_its_client() {
    let gw = start_with("ss_lingering", |c| c.pool.max_db_connections = 2).await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE OR REPLACE TABLE ss_linger (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await
        .unwrap();
    admin
        .query_drop("INSERT INTO ss_linger VALUES (1, 0)")
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let update = "UPDATE ss_linger SET v = v + 1";
    let scenarios: [&[&str]; 2] = [
        &[
            "SET autocommit = 0",
            "START TRANSACTION READ ONLY",
            "SET autocommit = 1",
            update,
            "START TRANSACTION",
            update,
            "COMMIT",
            update,
        ],
        &[
            "SET autocommit = 0",
            update,
            "SET SESSION tx_read_only = 1",
            "SET autocommit = 1",
            update,
            update,
            "ROLLBACK",
            update,
            "SET SESSION tx_read_only = 0",
            update,
        ],
    ];
    for steps in scenarios {
        let direct = outcomes(gw.direct_opts(), steps).await;
        let through = outcomes(gw.opts("app", "secret", Some(TEST_DB)), steps).await;
        assert_eq!(through, direct, "through sluice as directly");
        // Whatever connection the client had, the next client writes as usual.
        let other = outcomes(gw.opts("app", "secret", Some(TEST_DB)), &[update, update]).await;
        assert!(other.iter().all(|o| o.ends_with("=> ok")), "{other:?}");
    }
    gw.wait_idle().await;
}

/// A client's `LAST_INSERT_ID()` put on a connection, then changed on another, and read
/// again back on the first: the first must not answer the older value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_insert_id_is_current_on_every_connection_a_client_returns_to() {
    let gw = start_with("ss_insert_id_return", |c| c.pool.max_db_connections = 2).await;
    let mut client = gw.connect().await;
    let mut other = gw.connect().await;
    for round in 1..=40u64 {
        // The other client takes a connection for a while now and then, so the client's
        // statements land on one connection or the other.
        let holding = round % 3 == 0;
        if holding {
            other.query_drop("BEGIN").await.unwrap();
            other.query_drop("SELECT 1").await.unwrap();
        }
        let read: Option<u64> = client.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
        assert_eq!(
            read,
            Some(round - 1),
            "round {round}: read before the change"
        );
        let set: Option<u64> = client
            .query_first(format!("SELECT LAST_INSERT_ID({round})"))
            .await
            .unwrap();
        assert_eq!(set, Some(round));
        if holding {
            other.query_drop("COMMIT").await.unwrap();
        }
    }
    client.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}
