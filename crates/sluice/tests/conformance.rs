//! Protocol conformance (issue 17), judged by MariaDB: the scenarios of
//! `tests/clients/conformance.json` run with PyMySQL, mysql2 and mysql_async directly and
//! through sluice (two pooled connections, shared by the scenario's two clients and
//! everything before them), and must print the same, column definitions included:
//! `COM_RESET_CONNECTION` (PyMySQL, mysql_async) and `COM_CHANGE_USER` (mysql2,
//! mysql_async) followed by reads of every kind of session state, multiple result sets
//! (multi-statements, procedures, OUT/INOUT parameters through the binary protocol), a
//! cursor in a procedure, `START TRANSACTION WITH CONSISTENT SNAPSHOT`, `LAST_VALUE()`,
//! JSON/GEOMETRY/DECIMAL/TIMESTAMP columns in text and binary results, and the collation
//! result columns are sent in after the login's or `SET NAMES ... COLLATE`.

mod common;

use std::time::Duration;

use common::scenarios::{self, same_both_ways};
use common::*;

/// The scenarios these tests run.
const SPEC: &str = "conformance.json";

/// Held by each test: the scenarios share their tables and procedures.
static SCENARIOS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway whose clients share two database connections (a consistent snapshot holds one
/// while the other client writes).
async fn two_connections(test: &str) -> TestGateway {
    start_with(test, |c| {
        c.pool.max_db_connections = 2;
        c.pool.borrow_timeout = Duration::from_secs(5);
    })
    .await
}

/// Lines every driver must print (through sluice as directly, so as MariaDB does).
fn assert_lines(output: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            output.lines().any(|l| l == *line),
            "missing {line:?} in:\n{output}"
        );
    }
}

/// What a reset leaves, whichever driver sent it: an empty diagnostics area, no user
/// variables, temporary tables or SQL prepared statements, the transaction rolled back,
/// variables at their global defaults, `LAST_INSERT_ID()` 0; the schema is kept by a reset
/// and the one named by a change of user.
fn assert_session_cleared(output: &str, scenario: &str) {
    let schema = if scenario == "reset" {
        "information_schema"
    } else {
        TEST_DB
    };
    let lines: Vec<String> = [
        "#12 a: [@@warning_count:8/63/21/0/160 @@error_count:8/63/21/0/160] (0, 0)",
        "#16 a: error 1146: Table 'sluice_test.conf_tmp' doesn't exist",
        "#17 a: error 1243: Unknown prepared statement handler (s) given to EXECUTE",
        "#20 a: [COUNT(*):8/63/21/0/129] (0)",
    ]
    .iter()
    .map(|l| format!("{scenario} {l}"))
    .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_lines(output, &lines);
    let state = format!("{scenario} #13 a: ");
    let state = output.lines().find(|l| l.starts_with(&state)).unwrap();
    assert!(state.ends_with("(1, SYSTEM, 1, 1, 0)"), "{state}");
    let vars = format!("{scenario} #15 a: ");
    let vars = output.lines().find(|l| l.starts_with(&vars)).unwrap();
    assert!(
        vars.ends_with(&format!("({schema}, 0, NULL, NULL)")),
        "{vars}"
    );
}

/// The error of a `KILL` naming no thread (which sluice answers itself) is in the
/// client's diagnostics area, as a failed statement's error is, and not in another's.
fn assert_kill_error_kept(output: &str) {
    let lines: Vec<String> = [
        "#1 a: [Level:253/45/28/39/1 Code:3/63/4/0/161 Message:253/45/2048/39/1] \
         (Error, 1094, Unknown thread id: 999999)",
        "#2 a: [@@warning_count:8/63/21/0/160 @@error_count:8/63/21/0/160] (1, 1)",
        "#4 b: [Level:253/45/28/39/1 Code:3/63/4/0/161 Message:253/45/2048/39/1] ",
    ]
    .iter()
    .map(|l| format!("kill of an unknown thread {l}"))
    .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_lines(output, &lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_sees_what_mariadb_shows() {
    let _tables = SCENARIOS.lock().await;
    let gw = two_connections("conf_pymysql").await;
    let output = same_both_ways(&gw, "python3", "scenarios.py", SPEC).await;
    assert_session_cleared(&output, "reset");
    assert_kill_error_kept(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_sees_what_mariadb_shows() {
    let _tables = SCENARIOS.lock().await;
    let gw = two_connections("conf_mysql2").await;
    let output = same_both_ways(&gw, "node", "scenarios.js", SPEC).await;
    assert_session_cleared(&output, "change user");
    // mysql2 does not ask for CLIENT_PS_MULTI_RESULTS: no result set of OUT parameters.
    // Its login collation (utf8mb4_unicode_ci, 224) stays the results' after a change of
    // the connection's collation, on whichever connection.
    assert_lines(
        &output,
        &[
            "multi results #6 a: [in_proc:3/63/11/0/0] (3) ;; ",
            "collation #2 a: [s:253/224/40/0/0 lit:253/224/4/39/1] (x, a)",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_sees_what_mariadb_shows() {
    let _tables = SCENARIOS.lock().await;
    let gw = two_connections("conf_async").await;
    let sluice = scenarios::mysql_async_both_ways(&gw, SPEC).await;
    assert_session_cleared(&sluice, "reset");
    assert_session_cleared(&sluice, "change user");
    assert_kill_error_kept(&sluice);
    // mysql_async asks for CLIENT_PS_MULTI_RESULTS: OUT and INOUT parameters come as a
    // result set of their own.
    assert_lines(
        &sluice,
        &[
            "multi results #6 a: [in_proc:3/63/11/0/0] (3) ;; \
             [b:3/63/11/0/0 c:3/63/11/0/0] (6, 13)",
            // SET NAMES ... COLLATE utf8mb4_bin (46) outlives a change of the connection's
            // character set.
            "collation #7 a: [s:253/46/40/0/0 lit:253/46/4/39/1] (x, a)",
        ],
    );
}
