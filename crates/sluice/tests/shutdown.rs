//! Graceful shutdown of the real binary: SIGTERM lets a transaction in flight commit, tells
//! idle clients with the server's shutdown error (1053), and exits 0; a second signal stops
//! at once.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::*;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sluice` binary serving on fresh ports as backend user `sl_<test>`.
struct Binary {
    child: Child,
    port: u16,
    admin: u16,
    backend_user: String,
}

impl Binary {
    async fn start(test: &str, shutdown_timeout: &str) -> Binary {
        let backend_user = create_backend_user(test).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_timeout = \"{shutdown_timeout}\"\n\
                 [backend]\nurl = \"mysql://{backend_user}:backend-pw@{DB_HOST}:{DB_PORT}/{TEST_DB}\"\n\
                 [[users]]\nname = \"app\"\npassword = \"secret\"\nbackend = \"shared\"\n"
            ),
        )
        .unwrap();
        // A free port can be taken by another test before sluice binds it: then sluice
        // exits, and it starts again on other ports.
        for _ in 0..3 {
            let (port, admin) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["serve", "--config"])
                .arg(&config)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut binary = Binary {
                child,
                port,
                admin,
                backend_user: backend_user.clone(),
            };
            if binary.listening().await {
                // The config file is read; the directory may go.
                drop(dir);
                return binary;
            }
        }
        panic!("sluice did not start");
    }

    /// Waits until both ports accept, while the process lives; false if it exited.
    async fn listening(&mut self) -> bool {
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let connects = |port: u16| tokio::net::TcpStream::connect(("127.0.0.1", port));
            if connects(self.admin).await.is_ok() && connects(self.port).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sluice did not start listening");
    }

    fn opts(&self) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("app"))
            .pass(Some("secret"))
            .prefer_socket(false)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    async fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "sluice still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn healthz_status(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .ok()?;
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = String::new();
        socket.read_to_string(&mut reply).await.ok()?;
        reply.lines().next().map(str::to_owned)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_tells_idle_clients_and_exits_0() {
    let mut sluice = Binary::start("sigterm", "20s").await;
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
    let mut sluice = Binary::start("sigterm_timeout", "1s").await;
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
    let mut sluice = Binary::start("sigterm_twice", "60s").await;
    let mut busy = mysql_async::Conn::new(sluice.opts()).await.unwrap();
    busy.query_drop("BEGIN").await.unwrap();
    sluice.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sluice.signal("INT");
    assert_eq!(sluice.exit_code(Duration::from_secs(5)).await, 1);
}
