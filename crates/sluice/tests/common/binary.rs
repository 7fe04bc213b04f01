//! The real `sluice` binary, for what only a process shows: signals, exit codes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{create_backend_user, DB_HOST, DB_PORT, TEST_DB};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sluice` binary serving on fresh ports as backend user `sl_<test>`, with its
/// configuration file (kept until the binary is dropped, so it can be edited and reloaded).
pub struct Binary {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub backend_user: String,
    /// The configuration file it was started with.
    pub config: PathBuf,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
    /// The configuration's directory, kept while the binary runs.
    _dir: Option<tempfile::TempDir>,
}

/// The configuration file's text: `top` (top-level keys), the test's `[backend]` and
/// `users` (`[[users]]` tables, and any section after them).
pub fn config_text(backend_user: &str, top: &str, users: &str) -> String {
    format!(
        "{top}\n[backend]\nurl = \"mysql://{backend_user}:backend-pw@{DB_HOST}:{DB_PORT}/{TEST_DB}\"\n{users}"
    )
}

/// A `[[users]]` table running as the `[backend]` account.
pub fn shared_user(name: &str, password: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\nbackend = \"shared\"\n")
}

impl Binary {
    /// Starts the binary with `top` as the configuration's top-level keys and a user `app`
    /// (password `secret`); returns once both its listeners answer.
    pub async fn start(test: &str, top: &str) -> Binary {
        let backend_user = create_backend_user(test).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            config_text(&backend_user, top, &shared_user("app", "secret")),
        )
        .unwrap();
        // A free port can be taken by another test before sluice binds it: then sluice
        // exits, and it starts again on other ports.
        let log = dir.path().join("sluice.log");
        for _ in 0..3 {
            let (port, admin) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["serve", "--config"])
                .arg(&config)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut binary = Binary {
                child,
                port,
                admin,
                backend_user: backend_user.clone(),
                config: config.clone(),
                log: log.clone(),
                _dir: None,
            };
            if binary.listening().await {
                binary._dir = Some(dir);
                return binary;
            }
        }
        panic!("sluice did not start");
    }

    /// Waits until both ports accept, while the process lives; false if it exited.
    async fn listening(&mut self) -> bool {
        for _ in 0..200 {
            if !self.running() {
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

    /// Connection options for `app`/`secret`.
    pub fn opts(&self) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("app"))
            .pass(Some("secret"))
            .prefer_socket(false)
    }

    /// Sends the signal `name` (`TERM`, `INT`, `HUP`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The process id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "sluice still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status line of `GET /healthz`, `None` when the admin listener is gone.
    pub async fn healthz_status(&self) -> Option<String> {
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
