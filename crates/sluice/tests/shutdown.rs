//! Graceful shutdown: SIGTERM to the real binary lets a transaction in flight commit, serves
//! clients between transactions while they keep sending commands (`shutdown_idle_grace`),
//! then tells them with the server's shutdown error (1053), and exits 0; a second signal
//! stops at once. Connections queued on the listener when the drain begins are served.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::*;
use mysql_async::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_serves_active_clients_then_tells_them_and_exits_0() {
    let grace = Duration::from_secs(2);
    let mut sluice = Binary::start(
        "sigterm",
        "shutdown_timeout = \"20s\"\nshutdown_idle_grace = \"2s\"",
    )
    .await;
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
    // Between transactions, clients that have not been quiet for the grace are served
    // (a database connection is still lent for each statement).
    let one: Option<u32> = idle.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    busy.query_drop("INSERT INTO drained VALUES (3)")
        .await
        .unwrap();
    // Quiet for the grace, they are told with the server's shutdown error.
    tokio::time::sleep(grace + Duration::from_millis(500)).await;
    let err = idle.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err:?}");
    let err = busy.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err:?}");
    assert_eq!(sluice.exit_code(Duration::from_secs(10)).await, 0);
    let rows: Vec<u32> = setup
        .query("SELECT id FROM drained ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [1, 2, 3],
        "the transaction committed, and the autocommit insert"
    );
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

/// The kernel completes TCP handshakes into the listener's queue before sluice accepts them;
/// closing a listener with connections queued resets them (Linux, without
/// `net.ipv4.tcp_migrate_req`). A drain takes them first, and serves them: MySQL clients and
/// Data API requests alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_when_the_drain_begins_are_served_not_reset() {
    const QUEUED: usize = 20;
    const QUEUED_REQUESTS: usize = 200;
    let (mut config, _) = test_config("drain_queue").await;
    common::data_api::data_api(&mut config);
    let gateway = sluice::Gateway::new(config.validate("test").unwrap());
    let server = sluice::server::Server::bind(gateway.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let http = server.http_addr().unwrap();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(addr.port())
        .user(Some("app"))
        .pass(Some("secret"))
        .prefer_socket(false);
    let clients: Vec<_> = (0..QUEUED)
        .map(|i| {
            let opts = opts.clone();
            tokio::spawn(async move {
                let mut conn = mysql_async::Conn::new(opts).await?;
                let echoed: Option<usize> = conn.query_first(format!("SELECT {i}")).await?;
                conn.disconnect().await?;
                Ok::<_, mysql_async::Error>(echoed == Some(i))
            })
        })
        .collect();
    let requests: Vec<_> = (0..QUEUED_REQUESTS)
        .map(|i| {
            let request = common::data_api::execute_request(&format!("SELECT {i} AS n"));
            tokio::spawn(async move { common::data_api::exchange(http, &request).await })
        })
        .collect();
    // Bound, not yet accepting: every handshake waits in the accept queue.
    let mut queued = (0, 0);
    for _ in 0..250 {
        queued = (accept_queue(addr.port()), accept_queue(http.port()));
        if queued == (QUEUED, QUEUED_REQUESTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        queued,
        (QUEUED, QUEUED_REQUESTS),
        "connections waiting in the accept queues"
    );
    // The drain begins before the accept loop takes anything (or very little).
    let run = tokio::spawn(server.run(std::future::ready(())));
    for (i, client) in clients.into_iter().enumerate() {
        let outcome = client.await.unwrap();
        assert!(
            matches!(outcome, Ok(true)),
            "queued client {i} was not served: {outcome:?}"
        );
    }
    for (i, request) in requests.into_iter().enumerate() {
        let answer = request.await.unwrap();
        let (status, body) = answer.unwrap_or_else(|| panic!("queued request {i} was reset"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["rows"][0][0], i, "{body}");
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), run).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the drain ended: {ended:?}"
    );
    assert_eq!(
        gateway.metrics.client_connections_accepted.get() as usize,
        QUEUED
    );
}

/// Connections waiting in the accept queue of the IPv4 listener on 127.0.0.1:`port`: for a
/// listening socket, `/proc/net/tcp` shows the queue's length as `rx_queue`.
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A: LISTEN), tx_queue:rx_queue
            if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
                return None;
            }
            let rx = fields.get(4)?.split(':').nth(1)?;
            usize::from_str_radix(rx, 16).ok()
        })
        .sum()
}

/// The runtime's worker threads, by the name tokio gives them.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tokio-rt-worker")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sizes_the_runtime() {
    let one = Binary::start("workers_one", "worker_threads = 1").await;
    let three = Binary::start("workers_three", "worker_threads = 3").await;
    let default = Binary::start("workers_default", "").await;
    for sluice in [&one, &three, &default] {
        let mut conn = mysql_async::Conn::new(sluice.opts()).await.unwrap();
        let n: Option<u32> = conn.query_first("SELECT 5").await.unwrap();
        assert_eq!(n, Some(5));
        conn.disconnect().await.unwrap();
    }
    assert_eq!(runtime_workers(one.pid()), 1);
    assert_eq!(runtime_workers(three.pid()), 3);
    assert_eq!(
        runtime_workers(default.pid()),
        sluice::config::worker_threads(0)
    );
}
