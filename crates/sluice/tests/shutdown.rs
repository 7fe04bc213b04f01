//! Graceful shutdown of the real binary: SIGTERM lets a transaction in flight commit, tells
//! idle clients with the server's shutdown error (1053), and exits 0; a second signal stops
//! at once.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::*;
use mysql_async::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_tells_idle_clients_and_exits_0() {
    let mut sluice = Binary::start("sigterm", "shutdown_timeout = \"20s\"").await;
    let aborted_before = aborted_in_log(&sluice.backend_user).await;
    let mut setup = direct().await;
    setup
        .query_drop("CREATE OR REPLACE TABLE drained (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut busy = mysql_async::Conn::new(sluice.opts().db_name(Some(TEST_DB)))
        .await
        .unwrap();
    let mut idle = mysql_async::Conn::new(sluice.opts().db_name(Some(TEST_DB)))
        .await
        .unwrap();
    idle.query_drop("DO 1").await.unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO drained VALUES (1)")
        .await
        .unwrap();

    sluice.signal("TERM");
    // New clients are turned away while the transaction finishes...
    let mut refused = false;
    for _ in 0..100 {
        if mysql_async::Conn::new(sluice.opts()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting clients after SIGTERM");
    assert_eq!(
        sluice.healthz_status().await.as_deref(),
        Some("HTTP/1.1 503 Service Unavailable"),
        "load balancers are told to look elsewhere"
    );
    // ...which still runs statements and commits.
    busy.query_drop("INSERT INTO drained VALUES (2)")
        .await
        .unwrap();
    busy.query_drop("COMMIT").await.unwrap();
    // The idle client's next command is answered with the server's shutdown error.
    let err = idle.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err:?}");
    let err = busy.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err:?}");
    assert_eq!(sluice.exit_code(Duration::from_secs(10)).await, 0);
    let rows: Vec<u32> = setup
        .query("SELECT id FROM drained ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows, [1, 2], "the transaction committed");
    // Every database connection was closed with a goodbye: the server logged no aborted one.
    assert_eq!(
        aborted_in_log(&sluice.backend_user).await,
        aborted_before,
        "database connections closed without COM_QUIT"
    );
    setup.query_drop("DROP TABLE drained").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_past_shutdown_timeout_is_rolled_back_and_a_second_signal_stops_at_once()
{
    let mut sluice = Binary::start("sigterm_timeout", "shutdown_timeout = \"1s\"").await;
    let mut setup = direct().await;
    setup
        .query_drop("CREATE OR REPLACE TABLE abandoned (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut busy = mysql_async::Conn::new(sluice.opts().db_name(Some(TEST_DB)))
        .await
        .unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO abandoned VALUES (1)")
        .await
        .unwrap();
    sluice.signal("TERM");
    // The client never commits: after shutdown_timeout it is rolled back and told.
    assert_eq!(sluice.exit_code(Duration::from_secs(10)).await, 0);
    let err = busy.query_drop("COMMIT").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err:?}");
    let count: u32 = setup
        .query_first("SELECT COUNT(*) FROM abandoned")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count, 0, "rolled back");
    setup.query_drop("DROP TABLE abandoned").await.unwrap();

    // A second signal does not wait for the drain.
    let mut sluice = Binary::start("sigterm_twice", "shutdown_timeout = \"60s\"").await;
    let mut busy = mysql_async::Conn::new(sluice.opts()).await.unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    sluice.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sluice.signal("INT");
    assert_eq!(sluice.exit_code(Duration::from_secs(5)).await, 1);
}
