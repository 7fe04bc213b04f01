//! Independent real clients through sluice: the `mariadb` command line client, PyMySQL and
//! sysbench. `scripts/ensure-deps` installs them; a missing one fails the test loudly.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

fn mariadb_args(gw: &TestGateway, user: &str, password: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--protocol=tcp".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", gw.addr.port()),
        format!("-u{user}"),
        "--batch".to_owned(),
        "--skip-ssl".to_owned(),
    ];
    if !password.is_empty() {
        args.push(format!("-p{password}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_queries_errors_and_local_infile() {
    let gw = start("cli").await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let body: String = (1..=2500).map(|i| format!("{i},name-{i}\n")).collect();
    std::fs::write(&csv, body).unwrap();
    let script = format!(
        "CREATE TEMPORARY TABLE li (id INT PRIMARY KEY, name VARCHAR(40));\n\
         LOAD DATA LOCAL INFILE '{}' INTO TABLE li FIELDS TERMINATED BY ',';\n\
         SELECT COUNT(*), SUM(id), MAX(name) FROM li;\n\
         SELECT 'a' AS x; SELECT 'b' AS y;\n\
         DELIMITER //\n\
         CREATE OR REPLACE PROCEDURE cli_sets() BEGIN SELECT 10; SELECT 20; END//\n\
         DELIMITER ;\n\
         CALL cli_sets();\n\
         STATUS;\n",
        csv.display()
    );
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, "app", "secret", &["--local-infile=1", TEST_DB]),
        Some(&script),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mariadb failed: {stderr}\n{stdout}");
    assert!(stdout.contains("2500\t3126250\tname-999"), "{stdout}");
    assert!(stdout.contains("x\na\ny\nb"), "{stdout}");
    assert!(stdout.contains("10\n10\n20\n20"), "{stdout}");
    assert!(
        stdout.contains("MariaDB"),
        "server version shown by STATUS: {stdout}"
    );

    // Session functions answered by sluice (this client is not pinned) keep their names.
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, "app", "secret", &[TEST_DB]),
        Some("SELECT CONNECTION_ID(), LAST_INSERT_ID();"),
    )
    .await;
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.starts_with("CONNECTION_ID()\tLAST_INSERT_ID()\n"),
        "{names}"
    );

    // Errors come through with their codes, and a bad password is refused.
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, "app", "secret", &[TEST_DB]),
        Some("SELECT * FROM nope_xyz;"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ERROR 1146 (42S02)"), "{stderr}");
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, "app", "bad", &[]),
        Some("SELECT 1;"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1045 (28000): Access denied for user 'app'"),
        "{stderr}"
    );
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, "app", "secret", &["nodb_xyz"]),
        Some("SELECT 1;"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 1049 (42000)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_suite_passes_through_sluice() {
    let gw = start("pymysql").await;
    let script = repo_root().join("tests/clients/pymysql_check.py");
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        gw.addr.port().to_string(),
        "--user".into(),
        "app".into(),
        "--password".into(),
        "secret".into(),
        "--database".into(),
        TEST_DB.into(),
    ];
    let out = run_client("python3", &args, None).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "PyMySQL checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_with_and_without_prepared_statements_runs_without_errors() {
    const POOL: usize = 8;
    let gw = start_with("sysbench", |c| c.pool.max_db_connections = POOL).await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE DATABASE IF NOT EXISTS sluice_sysbench")
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let common_args = |test: &str, port: u16, user: &str, password: &str| {
        vec![
            test.to_owned(),
            "--mysql-host=127.0.0.1".to_owned(),
            format!("--mysql-port={port}"),
            format!("--mysql-user={user}"),
            format!("--mysql-password={password}"),
            "--mysql-db=sluice_sysbench".to_owned(),
            "--mysql-ssl=off".to_owned(),
            "--tables=1".to_owned(),
            "--table-size=1000".to_owned(),
        ]
    };
    for step in ["cleanup", "prepare"] {
        let mut args = common_args("oltp_read_write", 3306, "root", "");
        args.push(step.into());
        let out = run_client("sysbench", &args, None).await;
        assert!(
            step == "cleanup" || out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The text protocol, then sysbench's default (server-side prepared statements), then a
    // read-write mix with transactions and prepared statements.
    for (test, ps_mode) in [
        ("oltp_point_select", "disable"),
        ("oltp_point_select", "auto"),
        ("oltp_read_write", "auto"),
    ] {
        let mut bench = common_args(test, gw.addr.port(), "app", "secret");
        bench.extend([
            "--threads=8".into(),
            "--time=3".into(),
            format!("--db-ps-mode={ps_mode}"),
            "run".into(),
        ]);
        let out = run_client("sysbench", &bench, None).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let context = format!(
            "{test} {ps_mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{context}");
        let errors = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("ignored errors:"))
            .unwrap_or_else(|| panic!("no error line in sysbench output: {context}"));
        // sysbench stops with an error on anything but deadlocks and lock wait timeouts
        // (its default --mysql-ignore-errors), which a read-write mix on one small table
        // gets directly too; point selects get none.
        if test == "oltp_point_select" {
            assert!(
                errors.split_whitespace().nth(2) == Some("0"),
                "{errors}\n{context}"
            );
        }
        let queries: u64 = stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("read:")?.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            queries > 100,
            "sysbench ran queries through sluice: {context}"
        );
        assert!(db_connections_of(&gw.backend_user).await <= POOL);
    }
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_pins_total{"),
        "prepared statements pinned nobody:\n{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "sluice_commands_total{command=\"COM_STMT_EXECUTE\"}"
        ) > 100.0
    );
    // sysbench's 8 threads prepare the same statements: most prepares come from the cache,
    // and each of the 8 connections prepares its own copy once.
    assert!(metric_value(&metrics, "sluice_statement_cache_hits_total") > 0.0);
    assert!(metric_value(&metrics, "sluice_statements_prepared_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_shows_sluices_own_errors_with_their_codes() {
    // Connector/C shows an ERR packet with a client-side code (2xxx) as "2027 Received
    // malformed packet"; every error sluice makes up itself must read as the server's.
    let down = start_with("cli_down", |c| {
        c.backend.url = "mysql://root@127.0.0.1:1".into();
        c.pool.borrow_timeout = Duration::from_millis(300);
    })
    .await;
    let out = run_client(
        "mariadb",
        &mariadb_args(&down, "app", "secret", &[]),
        Some("SELECT 1;"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ERROR 1040 (08004): Too many connections: sluice cannot reach the database right now"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("127.0.0.1:1"), "no address: {stderr}");

    let full = start_with("cli_full", |c| c.max_client_connections = 1).await;
    let holder = full.connect().await;
    let out = run_client(
        "mariadb",
        &mariadb_args(&full, "app", "secret", &[]),
        Some("SELECT 1;"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ERROR 1040 (08004): Too many connections: sluice is at max_client_connections (1)"
        ),
        "{stderr}"
    );
    holder.disconnect().await.unwrap();
}
