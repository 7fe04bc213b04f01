//! The MySQL-protocol admin console, driven by the `mariadb` command line client and by
//! `mysql_async`: what it shows agrees with `/status`, PAUSE and RESUME act on borrows,
//! and its own credentials, session bound and unknown statements are enforced.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use mysql_async::prelude::*;

fn with_console(config: &mut sluice::config::Config) {
    config.console.listen = Some("127.0.0.1:0".parse().unwrap());
    config.console.password = Some("console-pw".into());
}

/// Runs `sql` in the console with the `mariadb` client in batch mode; returns stdout,
/// stderr and whether it succeeded.
async fn mariadb(console: SocketAddr, password: &str, sql: &str) -> (String, String, bool) {
    let args: Vec<String> = [
        "--protocol=tcp",
        "-h",
        &console.ip().to_string(),
        "-P",
        &console.port().to_string(),
        "-uadmin",
        &format!("-p{password}"),
        "--skip-ssl",
        "--batch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_client("mariadb", &args, Some(sql)).await;
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The value of `column` in the first data row of a `--batch` table.
fn cell(output: &str, column: &str) -> String {
    let mut lines = output.lines();
    let header: Vec<&str> = lines.next().expect("a header").split('\t').collect();
    let row: Vec<&str> = lines.next().expect("a row").split('\t').collect();
    let at = header
        .iter()
        .position(|h| *h == column)
        .unwrap_or_else(|| panic!("no {column} in {header:?}"));
    row[at].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_pools_lanes_and_clients_and_pauses_borrows() {
    let gw = start_with("console_show", |c| {
        with_console(c);
        c.pool.max_db_connections = 3;
        c.pool.borrow_timeout = Duration::from_millis(400);
        c.users[0].min_connections = 1;
        c.users[0].max_connections = Some(2);
    })
    .await;
    let console = gw.console.expect("the console listens");
    let mut client = gw.connect().await;
    // Logged in before the pause: a driver's login runs statements of its own.
    let mut other = gw.connect().await;
    client.query_drop("BEGIN").await.unwrap();
    client.query_drop("SELECT 1").await.unwrap();

    let (pools, err, ok) = mariadb(console, "console-pw", "SHOW POOLS").await;
    assert!(ok, "{err}");
    let status = status_json(gw.admin).await;
    assert_eq!(cell(&pools, "budget"), "3");
    assert_eq!(
        cell(&pools, "borrowed"),
        status["pool"]["borrowed"].to_string()
    );
    assert_eq!(cell(&pools, "paused"), "false");

    let (lanes, err, ok) = mariadb(console, "console-pw", "SHOW LANES").await;
    assert!(ok, "{err}");
    assert_eq!(cell(&lanes, "user"), "app");
    assert_eq!(cell(&lanes, "borrowed"), "1");
    assert_eq!(cell(&lanes, "min_connections"), "1");
    assert_eq!(cell(&lanes, "max_connections"), "2");

    let (clients, err, ok) = mariadb(console, "console-pw", "show clients;").await;
    assert!(ok, "{err}");
    assert_eq!(cell(&clients, "user"), "app");
    assert_eq!(cell(&clients, "state"), "in_transaction");

    let (stats, _, ok) = mariadb(console, "console-pw", "SHOW STATS").await;
    assert!(ok && stats.contains("counters.borrows\t"), "{stats}");

    // PAUSE: a new borrow waits and, past borrow_timeout, is told why; RESUME lets it on.
    let (_, err, ok) = mariadb(console, "console-pw", "PAUSE").await;
    assert!(ok, "{err}");
    let refused = other.query_drop("SELECT 2").await.unwrap_err();
    assert_eq!(server_code(&refused), Some(1040), "{refused}");
    assert!(refused.to_string().contains("paused"), "{refused}");
    // The open transaction carries on while paused.
    client.query_drop("SELECT 3").await.unwrap();
    let (pools, _, _) = mariadb(console, "console-pw", "SHOW POOLS").await;
    assert_eq!(cell(&pools, "paused"), "true");
    let (_, err, ok) = mariadb(console, "console-pw", "RESUME").await;
    assert!(ok, "{err}");
    other.query_drop("SELECT 4").await.unwrap();
    client.query_drop("COMMIT").await.unwrap();
    client.disconnect().await.unwrap();
    other.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_wrong_passwords_unknown_statements_and_too_many_sessions() {
    let gw = start_with("console_refuse", with_console).await;
    let console = gw.console.expect("the console listens");
    let (_, err, ok) = mariadb(console, "wrong", "SHOW POOLS").await;
    assert!(!ok);
    assert!(err.contains("ERROR 1045"), "{err}");

    // An unknown statement is an error and the session goes on.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(console.ip().to_string())
        .tcp_port(console.port())
        .user(Some("admin"))
        .pass(Some("console-pw"))
        .prefer_socket(false);
    let mut session = mysql_async::Conn::new(opts.clone()).await.unwrap();
    let err = session.query_drop("DROP TABLE t").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1064), "{err}");
    let rows: Vec<(String, String)> = session.query("SHOW HELP").await.unwrap();
    assert!(
        rows.iter().any(|(command, _)| command == "PAUSE"),
        "{rows:?}"
    );

    // Eight sessions at once; the ninth is refused and the others still answer.
    let mut sessions = vec![session];
    for _ in 0..7 {
        sessions.push(mysql_async::Conn::new(opts.clone()).await.unwrap());
    }
    let err = mysql_async::Conn::new(opts.clone()).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    let rows: Vec<mysql_async::Row> = sessions[0].query("SHOW POOLS").await.unwrap();
    assert_eq!(rows.len(), 1);
    for session in sessions {
        session.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_unless_configured_and_never_without_a_password() {
    let gw = start("console_off").await;
    assert!(gw.console.is_none());
    let mut config = sluice::config::Config::default();
    config.console.listen = Some("127.0.0.1:0".parse().unwrap());
    let err = config.validate("test").unwrap_err().to_string();
    assert!(err.contains("console"), "{err}");
}
