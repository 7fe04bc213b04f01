//! The server's `max_prepared_stmt_count` counts the copies sluice keeps on its connections
//! for other clients; a client must never be refused for statements it no longer holds.
//! A test binary of its own: it lowers a global server variable (restored when it ends),
//! and test binaries do not run at the same time.

mod common;

use common::*;
use mysql_async::prelude::*;

/// The server's `max_prepared_stmt_count` for the tests: low enough to reach in a few
/// prepares, so the window in which other users of the shared server could hit it is short.
const LIMIT: u64 = 10;

/// Puts `max_prepared_stmt_count` back however the test ends.
struct Restore(u64);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h127.0.0.1",
                "-uroot",
                "--skip-ssl",
                "-e",
            ])
            .arg(format!("SET GLOBAL max_prepared_stmt_count = {}", self.0))
            .status();
    }
}

/// The tests of this binary run one at a time: each sets the global and puts back what it
/// found, which must be the server's own value, not another test's [`LIMIT`].
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The global lowered for one test; dropping it puts the old value back, then lets the next
/// test start.
struct Lowered {
    _restore: Restore,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Lowers `max_prepared_stmt_count` to [`LIMIT`] until the guard is dropped.
async fn lower_limit() -> Lowered {
    let serial = SERIAL.lock().await;
    let mut root = direct().await;
    let before: u64 = root
        .query_first("SELECT @@global.max_prepared_stmt_count")
        .await
        .unwrap()
        .unwrap();
    let restore = Restore(before);
    root.query_drop(format!("SET GLOBAL max_prepared_stmt_count = {LIMIT}"))
        .await
        .unwrap();
    root.disconnect().await.unwrap();
    Lowered {
        _restore: restore,
        _serial: serial,
    }
}

/// Prepares `SELECT <n> + ?` on `conn`, checks its answer and closes it.
async fn prepare_use_close(conn: &mut mysql_async::Conn, n: u64) {
    let stmt = conn
        .prep(format!("SELECT {n} + ?"))
        .await
        .unwrap_or_else(|e| panic!("prepare {n}: {e}"));
    let sum: Option<u64> = conn.exec_first(&stmt, (1,)).await.unwrap();
    assert_eq!(sum, Some(n + 1));
    conn.close(stmt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_kept_for_others_give_way_at_the_servers_limit() {
    let _restore = lower_limit().await;
    let gw = start_with("ps_limit", |c| c.pool.max_db_connections = 1).await;
    let mut conn = gw.connect().await;
    // Three times the server's limit of distinct statements, each closed after use: the
    // connection keeps copies (pool.max_prepared_statements is 256), which would reach the
    // limit by the eleventh.
    for i in 0..3 * LIMIT {
        prepare_use_close(&mut conn, i).await;
    }
    conn.disconnect().await.unwrap();
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "sluice_statement_evictions_total") >= LIMIT as f64 - 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_kept_on_other_connections_give_way_too() {
    let gw = start_with("ps_limit_spread", |c| c.pool.max_db_connections = 3).await;
    let restore = lower_limit().await;
    // Three clients in transactions at once hold three connections. Two of them prepare,
    // use and close five statements each: the server's limit is reached by copies kept on
    // their connections, which then go back to the pool idle.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut conn = gw.connect().await;
        conn.query_drop("BEGIN").await.unwrap();
        clients.push(conn);
    }
    let mut last = clients.pop().unwrap();
    for (c, conn) in clients.iter_mut().enumerate() {
        for i in 0..LIMIT / 2 {
            prepare_use_close(conn, 100 * (c as u64 + 1) + i).await;
        }
    }
    for mut conn in clients {
        conn.query_drop("COMMIT").await.unwrap();
        conn.disconnect().await.unwrap();
    }
    // Give-back runs after a client leaves: wait until only the third client's is lent.
    for _ in 0..100 {
        if gw.gateway.pool.stats().busy <= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The third client's connection keeps no copy: only the idle connections' copies can
    // give way. It holds one statement open all along (never closed to make room), and
    // goes on preparing new ones past the limit.
    let held = last.prep("SELECT 1000 + ?").await.unwrap();
    for i in 0..2 * LIMIT {
        prepare_use_close(&mut last, i).await;
        let reprepares = metric_value(&gw.metrics().await, "sluice_statement_reprepares_total");
        let sum: Option<u64> = last.exec_first(&held, (1,)).await.unwrap();
        assert_eq!(sum, Some(1001));
        assert_eq!(
            metric_value(&gw.metrics().await, "sluice_statement_reprepares_total"),
            reprepares,
            "the statement the client holds stayed prepared on its connection ({i})"
        );
    }
    // The idle connections' copies were among those closed.
    let evictions = metric_value(&gw.metrics().await, "sluice_statement_evictions_total");
    assert!(evictions >= (LIMIT / 2) as f64, "{evictions} evictions");
    last.query_drop("COMMIT").await.unwrap();
    last.close(held).await.unwrap();
    last.disconnect().await.unwrap();
    drop(restore);
}

/// mysql2 (`tests/clients/prepare_loop.js`) prepares, executes and closes three times the
/// limit of statements, directly and through sluice (one pooled connection, which keeps
/// copies): both print every answer and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_prepare_close_loops_pass_as_directly() {
    let gw = start_with("ps_limit_mysql2", |c| c.pool.max_db_connections = 1).await;
    let script = common::scenarios::clients_dir().join("prepare_loop.js");
    let count = 3 * LIMIT;
    let mut outputs = Vec::new();
    let lowered = lower_limit().await;
    for (port, user, password) in [
        (DB_PORT, gw.backend_user.as_str(), "backend-pw"),
        (gw.addr.port(), "app", "secret"),
    ] {
        let args = [
            script.display().to_string(),
            port.to_string(),
            user.to_owned(),
            password.to_owned(),
            TEST_DB.to_owned(),
            count.to_string(),
        ];
        let out = run_client("node", &args, None).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    drop(lowered);
    assert_eq!(outputs[1], outputs[0], "through sluice as directly");
    let expected: String = (0..count).map(|i| format!("{i}: {}\n", i + 1)).collect();
    assert_eq!(outputs[1], expected);
}
