//! Server-side prepared statements from two clients no one here wrote: MariaDB Connector/C
//! (`tests/clients/stmt_check.c`, compiled here with gcc) and Node's mysql2
//! (`tests/clients/mysql2_check.js`). Each runs its checks directly against MariaDB first —
//! proving the checks themselves — then through sluice. `scripts/ensure-deps` installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scenarios::clients_dir;
use common::*;

/// Runs a check program to the end and asserts it reported `expected` passes and no failure.
async fn run_checks(program: &Path, args: &[String], expected: usize, against: &str) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} must be installed (scripts/ensure-deps): {e}",
                program.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("{expected} passed, 0 failed")),
        "{} against {against}:\n{stdout}\n{stderr}",
        program.display()
    );
}

fn args(port: u16, user: &str, password: &str) -> Vec<String> {
    vec![
        port.to_string(),
        user.to_owned(),
        password.to_owned(),
        TEST_DB.to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_c_statements_move_between_clients_on_one_connection() {
    let build = tempfile::tempdir().unwrap();
    let binary = build.path().join("stmt_check");
    let flags = Command::new("mariadb_config")
        .args(["--cflags", "--libs"])
        .output()
        .expect("mariadb_config (libmariadb-dev) must be installed: scripts/ensure-deps");
    let flags = String::from_utf8(flags.stdout).unwrap();
    let compiled = Command::new("gcc")
        .args(["-Wall", "-Werror", "-O1", "-o"])
        .arg(&binary)
        .arg(clients_dir().join("stmt_check.c"))
        .args(flags.split_whitespace())
        .output()
        .expect("gcc must be installed: scripts/ensure-deps");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    run_checks(&binary, &args(DB_PORT, "root", ""), 6, "MariaDB").await;

    // One database connection: both of the program's clients share it, so every statement
    // is executed on a connection where the other client last bound its own types.
    let gw = start_with("ps_connector_c", |c| c.pool.max_db_connections = 1).await;
    let watcher = PeakWatcher::start(&gw.backend_user);
    run_checks(&binary, &args(gw.addr.port(), "app", "secret"), 6, "sluice").await;
    assert_eq!(watcher.stop().await, 1);
    let metrics = gw.metrics().await;
    // Two cursors (one read to the end, one reset half way) pinned while open; nothing else.
    assert_eq!(
        metric_value(&metrics, "sluice_pins_total{reason=\"cursor\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.matches("sluice_pins_total{").count(),
        1,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "sluice_commands_total{command=\"COM_STMT_SEND_LONG_DATA\"}"
        ) >= 48.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_execute_round_trips_every_type_over_a_small_pool() {
    const POOL: usize = 4;
    let script = clients_dir().join("mysql2_check.js");
    let node = PathBuf::from("node");
    let with_script = |mut args: Vec<String>| {
        args.insert(0, script.display().to_string());
        args
    };
    run_checks(&node, &with_script(args(DB_PORT, "root", "")), 5, "MariaDB").await;

    let gw = start_with("ps_mysql2", |c| c.pool.max_db_connections = POOL).await;
    let watcher = PeakWatcher::start(&gw.backend_user);
    run_checks(
        &node,
        &with_script(args(gw.addr.port(), "app", "secret")),
        5,
        "sluice",
    )
    .await;
    let peak = watcher.stop().await;
    assert!(
        (1..=POOL).contains(&peak),
        "peak database connections {peak}"
    );
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_pins_total{"),
        "no pins:\n{metrics}"
    );
    // 51 clients prepare the same statements: the cache answers most prepares.
    assert!(
        metric_value(&metrics, "sluice_statement_cache_hits_total") >= 100.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "sluice_commands_total{command=\"COM_STMT_EXECUTE\"}"
        ) >= 3000.0
    );
}
