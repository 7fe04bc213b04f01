//! A failing database link: a connection that stalls (no byte moves, nothing closes), one
//! whose database side vanished without sluice's side noticing, and a statement that runs
//! past `backend.query_timeout`. The first two go through a TCP forwarder inside the test,
//! which can freeze its connections or sever their database side.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a forwarded connection does with the bytes it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copies both ways.
    Flowing,
    /// Copies nothing either way and closes nothing, like a blackholed link.
    Frozen,
    /// The database side is closed; sluice's side stays open until it sends something, as
    /// after a database restart whose goodbye got lost.
    Severed,
}

/// Each forwarded connection's database thread id (from the server's greeting) and mode.
type Connections = Arc<Mutex<Vec<(u32, watch::Sender<Mode>)>>>;

/// A TCP forwarder from a local port to the test MariaDB, which can freeze or sever the
/// connection of one database thread, or of all.
struct Forwarder {
    addr: SocketAddr,
    connections: Connections,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Connections = Arc::default();
        let registered = connections.clone();
        tokio::spawn(async move {
            while let Ok((sluice_side, _)) = listener.accept().await {
                tokio::spawn(forward(sluice_side, registered.clone()));
            }
        });
        Forwarder { addr, connections }
    }

    /// Puts the connection of database thread `thread` (every one when `None`) in `mode`.
    fn set(&self, thread: Option<u32>, mode: Mode) {
        for (id, connection) in self.connections.lock().unwrap().iter() {
            if thread.is_none_or(|t| t == *id) {
                connection.send_replace(mode);
            }
        }
    }

    /// A backend URL through the forwarder, from the harness' direct one.
    fn url_for(&self, direct_url: &str) -> String {
        direct_url.replace(&format!("{DB_HOST}:{DB_PORT}"), &self.addr.to_string())
    }
}

async fn forward(mut sluice_side: TcpStream, registry: Connections) {
    let Ok(mut db_side) = TcpStream::connect((DB_HOST, DB_PORT)).await else {
        return;
    };
    // The greeting names the database thread: protocol version, version string, thread id.
    let mut greeting = vec![0u8; 4];
    if db_side.read_exact(&mut greeting).await.is_err() {
        return;
    }
    let len = usize::from(greeting[0]) | usize::from(greeting[1]) << 8;
    greeting.resize(4 + len, 0);
    if db_side.read_exact(&mut greeting[4..]).await.is_err() {
        return;
    }
    let thread = greeting[5..]
        .iter()
        .position(|b| *b == 0)
        .and_then(|end| greeting.get(6 + end..10 + end))
        .map_or(0, |id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]));
    let (mode_tx, mut mode) = watch::channel(Mode::Flowing);
    registry.lock().unwrap().push((thread, mode_tx));
    if sluice_side.write_all(&greeting).await.is_err() {
        return;
    }
    {
        let (mut from_sluice, mut to_sluice) = sluice_side.split();
        let (mut from_db, mut to_db) = db_side.split();
        tokio::select! {
            () = pump(&mut from_sluice, &mut to_db, mode.clone()) => return,
            () = pump(&mut from_db, &mut to_sluice, mode.clone()) => return,
            _ = mode.wait_for(|m| *m == Mode::Severed) => {}
        }
    }
    drop(db_side);
    let mut byte = [0u8; 1];
    let _ = sluice_side.read(&mut byte).await;
}

/// Copies `from` to `to` while the mode is `Flowing`, holding bytes otherwise.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.wait_for(|m| *m == Mode::Flowing).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m == Mode::Flowing).await.is_err()
            || to.write_all(&buf[..n]).await.is_err()
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_connection_fails_its_client_and_no_other() {
    const STALL: Duration = Duration::from_secs(1);
    let forwarder = Forwarder::start().await;
    let gw = start_with("stall", |c| {
        c.backend.url = forwarder.url_for(&c.backend.url);
        c.backend.stall_timeout = STALL;
        c.pool.max_db_connections = 3;
    })
    .await;
    // The stalled client holds its connection, inside a transaction.
    let mut stalled = gw.connect().await;
    stalled.query_drop("BEGIN").await.unwrap();
    let thread: Option<u32> = stalled
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .unwrap();
    forwarder.set(thread, Mode::Frozen);
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let outcome = stalled.query_drop("SELECT 1").await;
        (outcome, started.elapsed())
    });
    // Meanwhile another client gets a connection of its own and carries on.
    let mut other = gw.connect().await;
    for _ in 0..10 {
        let one: Option<u8> =
            tokio::time::timeout(Duration::from_secs(5), other.query_first("SELECT 1"))
                .await
                .expect("another client is not held up by the stalled connection")
                .unwrap();
        assert_eq!(one, Some(1));
        tokio::time::sleep(STALL / 8).await;
    }
    let (outcome, waited) = waiting.await.unwrap();
    let err = outcome.expect_err("the stalled statement fails");
    assert_eq!(
        server_code(&err),
        Some(1159),
        "told with the server's net timeout: {err:?}"
    );
    println!("stalled client got {err} after {waited:?}");
    assert!(waited < STALL + Duration::from_secs(4), "{waited:?}");
    // The link comes back: the pool serves new clients on fresh connections.
    forwarder.set(None, Mode::Flowing);
    let mut later = gw.connect().await;
    let one: Option<u8> = later.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    other.disconnect().await.unwrap();
    later.disconnect().await.unwrap();
    gw.wait_idle().await;
    let stats = gw.gateway.pool.stats();
    assert!(stats.total <= 3, "{stats:?}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"discarded\"}"
        ),
        1.0,
        "the stalled connection was discarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_client_shows_a_stalled_database_as_error_1159() {
    let forwarder = Forwarder::start().await;
    let gw = start_with("stall_cli", |c| {
        c.backend.url = forwarder.url_for(&c.backend.url);
        c.backend.stall_timeout = Duration::from_secs(1);
        c.pool.max_db_connections = 1;
    })
    .await;
    let mariadb = || {
        tokio::process::Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h127.0.0.1",
                "--skip-ssl",
                "-uapp",
                "-psecret",
            ])
            .arg(format!("-P{}", gw.addr.port()))
            .args(["-e", "SELECT 1"])
            .output()
    };
    // The first run leaves a connection of the client's kind idle in the pool; the second
    // gets it, frozen.
    let warm = mariadb()
        .await
        .expect("mariadb client installed (scripts/ensure-deps)");
    assert!(warm.status.success());
    gw.wait_idle().await;
    forwarder.set(None, Mode::Frozen);
    let out = mariadb().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Connector/C shows a client-side (2xxx) code from a server as "malformed packet"; this
    // one it shows as sent.
    assert!(
        stderr.contains("ERROR 1159 (08S01) at line 1: Got timeout reading communication packets"),
        "{stderr}"
    );
    assert!(!stderr.contains(&forwarder.addr.to_string()), "{stderr}");
}

/// One client's whole life: connect, one query, goodbye.
async fn one_query(gw: &TestGateway) -> Result<u8, mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB))).await?;
    let one: Option<u8> = conn.query_first("SELECT 1").await?;
    conn.disconnect().await?;
    Ok(one.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_pinged_after_the_pool_sees_one_broken() {
    const POOL: usize = 3;
    let forwarder = Forwarder::start().await;
    let gw = start_with("severed", |c| {
        c.backend.url = forwarder.url_for(&c.backend.url);
        c.pool.max_db_connections = POOL;
        // Age alone would never ping them in this test.
        c.pool.ping_after_idle = Duration::from_secs(3600);
    })
    .await;
    // Every connection used a moment ago.
    gw.use_connections(POOL).await;
    // The database side of all of them goes away without sluice's side noticing.
    forwarder.set(None, Mode::Severed);
    // The first client to get one finds out: nothing could have told sluice before.
    let first = one_query(&gw).await;
    println!("first client after the breakage: {first:?}");
    // Every later one gets a good answer: the rest were pinged before being lent.
    for i in 0..POOL {
        assert_eq!(one_query(&gw).await.unwrap(), 1, "client {i}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"failed_ping\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_query_timeout_is_killed_and_the_session_goes_on() {
    const LIMIT: Duration = Duration::from_secs(1);
    let gw = start_with("qtimeout", |c| {
        c.backend.query_timeout = Some(LIMIT);
        c.pool.max_db_connections = 2;
    })
    .await;
    let mut client = gw.connect().await;
    client
        .query_drop("SET @@session.sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .query_drop("SELECT SLEEP(30)")
        .await
        .expect_err("killed at query_timeout");
    let waited = started.elapsed();
    println!("query_timeout: {err} after {waited:?}");
    assert_eq!(server_code(&err), Some(1317), "{err:?}");
    assert!(waited < LIMIT + Duration::from_secs(5), "{waited:?}");
    // Same client, same session.
    let mode: Option<String> = client.query_first("SELECT @@sql_mode").await.unwrap();
    assert_eq!(mode.as_deref(), Some("ANSI_QUOTES"));
    // Statements within the limit are left alone.
    let slept: Option<u8> = client.query_first("SELECT SLEEP(0.1)").await.unwrap();
    assert_eq!(slept, Some(0));
    client.disconnect().await.unwrap();
    let metrics = gw.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_query_timeouts_total"), 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_db_connections_closed_total{reason=\"discarded\"}"
        ),
        0.0,
        "the connection stayed usable"
    );
}
