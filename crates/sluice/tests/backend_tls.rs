//! TLS toward the database (`[backend] tls`). The shared MariaDB has TLS off and must stay
//! as it is, so this test starts a second MariaDB of its own (a fresh data directory, its
//! own port and socket, certificates made by `openssl`) and stops it at the end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::{self, TestCerts};
use common::*;
use mysql_async::prelude::*;
use sluice::tls::BackendTlsMode;

/// A MariaDB server with TLS, killed when dropped.
struct TlsMariaDb {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TlsMariaDb {
    async fn start(certs: &TestCerts) -> TlsMariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let installed = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ])
            .arg("--skip-test-db")
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (scripts/ensure-deps installs MariaDB)");
        assert!(
            installed.status.success(),
            "{}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let arg = |name: &str, value: &Path| format!("--{name}={}", value.display());
        let child = Command::new("/usr/sbin/mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(arg("datadir", &data))
            .arg(format!("--socket={}", path("mysqld.sock")))
            .arg(format!("--pid-file={}", path("mysqld.pid")))
            .arg(format!("--log-error={}", path("error.log")))
            .arg(arg("ssl-cert", &certs.cert))
            .arg(arg("ssl-key", &certs.key))
            .arg(arg("ssl-ca", &certs.ca))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let server = TlsMariaDb {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..300 {
            if let Ok(mut conn) = mysql_async::Conn::new(server.root()).await {
                conn.query_drop(
                    "CREATE USER 'viatls'@'%' IDENTIFIED BY 'tls-pw' REQUIRE SSL;
                     GRANT ALL ON *.* TO 'viatls'@'%'",
                )
                .await
                .unwrap();
                conn.disconnect().await.unwrap();
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the second MariaDB did not start: {}",
            std::fs::read_to_string(server._dir.path().join("error.log")).unwrap_or_default()
        );
    }

    /// Options for root over plain TCP (what the test itself uses to set things up).
    fn root(&self) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .prefer_socket(false)
    }
}

/// The TLS version the database reports for the connection serving `conn`'s statements.
async fn backend_tls_version(conn: &mut mysql_async::Conn) -> String {
    conn.query_first::<(String, String), _>("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .await
        .unwrap()
        .map(|(_, version)| version)
        .unwrap_or_default()
}

/// The error a client of `gw` gets when no database connection can be opened (at login,
/// which reads the server version, or at its first statement).
async fn refusal(gw: &TestGateway) -> mysql_async::Error {
    match mysql_async::Conn::new(gw.opts("app", "secret", None)).await {
        Ok(mut conn) => conn.query_drop("SELECT 1").await.expect_err("refused"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_modes_against_a_database_with_tls() {
    let certs = certs::make();
    let db = TlsMariaDb::start(&certs).await;
    let url = format!("mysql://viatls:tls-pw@127.0.0.1:{}", db.port);

    // verify-identity: the certificate is checked against the authority and 127.0.0.1.
    for (test, mode) in [
        ("btls_identity", BackendTlsMode::VerifyIdentity),
        ("btls_ca", BackendTlsMode::VerifyCa),
        ("btls_require", BackendTlsMode::Require),
        ("btls_prefer", BackendTlsMode::Prefer),
    ] {
        let gw = start_with(test, |c| {
            c.backend.url = url.clone();
            c.backend.tls = mode;
            c.backend.tls_ca = mode.verifies().then(|| certs.ca.clone());
            c.auth.sources = vec![sluice::config::AuthSource::Users];
        })
        .await;
        let mut conn = mysql_async::Conn::new(gw.opts("app", "secret", None))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        // The account REQUIRE SSL: it could not log in at all without TLS.
        let version = backend_tls_version(&mut conn).await;
        assert!(version.starts_with("TLS"), "{mode:?}: {version:?}");
        let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
        assert_eq!(user.as_deref(), Some("viatls@%"));
        conn.disconnect().await.unwrap();
    }

    // Compressed inside TLS ([backend] compress): both, and a 10 MB reply intact (this
    // server keeps the default max_allowed_packet).
    let gw = start_with("btls_compress", |c| {
        c.backend.url = url.clone();
        c.backend.tls = BackendTlsMode::Require;
        c.backend.compress = true;
        c.auth.sources = vec![sluice::config::AuthSource::Users];
    })
    .await;
    let mut conn = mysql_async::Conn::new(gw.opts("app", "secret", None))
        .await
        .unwrap();
    assert!(backend_tls_version(&mut conn).await.starts_with("TLS"));
    let compression: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Compression'")
        .await
        .unwrap();
    assert_eq!(compression.map(|(_, on)| on).as_deref(), Some("ON"));
    let big: Option<Vec<u8>> = conn
        .query_first("SELECT REPEAT('t', 10000000)")
        .await
        .unwrap();
    assert!(big.is_some_and(|b| b.len() == 10_000_000 && b.iter().all(|&c| c == b't')));
    conn.disconnect().await.unwrap();
    drop(gw);

    // disable: the REQUIRE SSL account is refused by the database, and the client gets
    // sluice's "cannot open a database connection" (1040), naming no address.
    let gw = start_with("btls_disable", |c| {
        c.backend.url = url.clone();
        c.backend.tls = BackendTlsMode::Disable;
        c.auth.sources = vec![sluice::config::AuthSource::Users];
        c.pool.borrow_timeout = Duration::from_secs(1);
    })
    .await;
    let err = refusal(&gw).await;
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");

    // verify-ca with the wrong authority: no connection is opened.
    let gw = start_with("btls_wrong_ca", |c| {
        c.backend.url = url.clone();
        c.backend.tls = BackendTlsMode::VerifyCa;
        c.backend.tls_ca = Some(certs.other_ca.clone());
        c.auth.sources = vec![sluice::config::AuthSource::Users];
        c.pool.borrow_timeout = Duration::from_secs(1);
    })
    .await;
    let refused = refusal(&gw).await;
    assert_eq!(server_code(&refused), Some(1040), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_fails_against_a_database_without_tls() {
    // The shared MariaDB has TLS disabled.
    let gw = start_with("btls_none", |c| {
        c.backend.tls = BackendTlsMode::Require;
        c.pool.borrow_timeout = Duration::from_secs(1);
    })
    .await;
    let refused = refusal(&gw).await;
    assert_eq!(server_code(&refused), Some(1040), "{refused}");
    // prefer (the default) falls back to plain TCP there: every other test runs that way.
}
