//! Shared test harness: a real gateway in-process, on ephemeral ports, in front of the real
//! MariaDB on 127.0.0.1:3306 (scripts/ensure-deps makes sure it is there).
#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod data_api;
pub mod scenarios;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::*;
use sluice::backend::{BackendConn, Flavor};
use sluice::config::{BackendSecret, BackendTarget, Config, UserConfig};
use sluice::server::Server;
use sluice::Gateway;
use sluice_protocol::response::ErrFields;
use tokio::sync::oneshot;

/// Where the tests' MariaDB is.
pub const DB_HOST: &str = "127.0.0.1";
/// Its port.
pub const DB_PORT: u16 = 3306;
/// The schema tests work in.
pub const TEST_DB: &str = "sluice_test";

/// A running gateway; stops when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The Data API address, when the test turned it on (`http_listen`).
    pub http: Option<SocketAddr>,
    /// The admin console's address, when the test turned it on (`[console]`).
    pub console: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// The dedicated backend user, so the processlist shows only this gateway's connections.
    pub backend_user: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A direct connection to MariaDB as root.
pub async fn direct() -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(DB_HOST)
        .tcp_port(DB_PORT)
        .user(Some("root"))
        .db_name(Some(TEST_DB));
    mysql_async::Conn::new(opts)
        .await
        .expect("MariaDB reachable on 127.0.0.1:3306 as root")
}

/// Creates (or recreates) a backend user for one test, with a password, so sluice's own
/// authentication toward the database is exercised and its connections can be counted.
pub async fn create_backend_user(test: &str) -> String {
    let name = format!("sl_{test}");
    let mut conn = direct().await;
    conn.query_drop(format!(
        "CREATE OR REPLACE USER '{name}'@'%' IDENTIFIED BY 'backend-pw'"
    ))
    .await
    .unwrap();
    conn.query_drop(format!("GRANT ALL ON *.* TO '{name}'@'%'"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    name
}

/// Lines of the server's error log saying a connection of `user` was aborted, when the log
/// is a file this test can read (`None` otherwise).
pub async fn aborted_in_log(user: &str) -> Option<usize> {
    let mut admin = direct().await;
    let path: Option<String> = admin.query_first("SELECT @@log_error").await.unwrap();
    admin.disconnect().await.unwrap();
    let text = std::fs::read_to_string(path.filter(|p| p.starts_with('/'))?).ok()?;
    let needle = format!("user: '{user}'");
    Some(
        text.lines()
            .filter(|line| line.contains("Aborted connection") && line.contains(&needle))
            .count(),
    )
}

/// Counts the database connections of `user` right now (a `LIKE` pattern: a fleet's
/// users together, e.g. `sl_fleet_burst_%`).
pub async fn db_connections_of(user: &str) -> usize {
    let mut conn = direct().await;
    let count: Option<usize> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER LIKE ?",
            (user,),
        )
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    count.unwrap_or(0)
}

/// Polls the processlist (for up to 5 s) until `user` has at most `at_most` connections,
/// and returns the last count: connections close asynchronously after COM_QUIT.
pub async fn db_connections_settle(user: &str, at_most: usize) -> usize {
    let mut open = usize::MAX;
    for _ in 0..100 {
        open = db_connections_of(user).await;
        if open <= at_most {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open
}

/// Starts a gateway with client users `app`/`secret` and `empty`/(none), after `tweak`
/// has adjusted the default configuration.
/// `test` names the backend user (`sl_<test>`); it must be unique per test.
pub async fn start_with(test: &str, tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let (mut config, backend_user) = test_config(test).await;
    tweak(&mut config);
    let settings = config.validate("test").expect("valid test config");
    serve(Gateway::new(settings), backend_user).await
}

/// The configuration [`start_with`] starts from (ephemeral ports, backend user `sl_<test>`,
/// created here, and the users `app` and `empty`), with the backend user's name: for tests
/// that bind a [`Server`] themselves.
pub async fn test_config(test: &str) -> (Config, String) {
    let backend_user = create_backend_user(test).await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.backend.url = format!("mysql://{backend_user}:backend-pw@{DB_HOST}:{DB_PORT}");
    config.pool.max_db_connections = 4;
    config.users = vec![
        UserConfig {
            name: "app".into(),
            password: Some("secret".into()),
            password_hash: None,
            backend: Some(sluice::config::SharedBackend::Shared),
            ..Default::default()
        },
        UserConfig {
            name: "empty".into(),
            password: None,
            password_hash: None,
            backend: Some(sluice::config::SharedBackend::Shared),
            ..Default::default()
        },
    ];
    (config, backend_user)
}

/// Serves `gateway` (whose backend user is `backend_user`) on the ports of its settings
/// until the returned handle is dropped.
pub async fn serve(gateway: Arc<Gateway>, backend_user: String) -> TestGateway {
    let server = Server::bind(gateway).await.unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let http = server.http_addr();
    let console = server.console_addr();
    let gateway = server.gateway();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestGateway {
        addr,
        admin,
        http,
        console,
        gateway,
        backend_user,
        stop: Some(stop),
    }
}

/// Starts a gateway on the defaults of [`start_with`].
pub async fn start(test: &str) -> TestGateway {
    start_with(test, |_| {}).await
}

impl TestGateway {
    /// Connection options for `user`/`password` through the gateway.
    pub fn opts(&self, user: &str, password: &str, db: Option<&str>) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.addr.ip().to_string())
            .tcp_port(self.addr.port())
            .user(Some(user))
            .pass(Some(password))
            .db_name(db)
            .prefer_socket(false)
    }

    /// `(port, user, password)` of MariaDB directly (as this gateway's backend user) and of
    /// the gateway (as `app`): the two ways a comparison runs a client.
    pub fn both_ways(&self) -> [(u16, String, String); 2] {
        [
            (DB_PORT, self.backend_user.clone(), "backend-pw".to_owned()),
            (self.addr.port(), "app".to_owned(), "secret".to_owned()),
        ]
    }

    /// Connection options for MariaDB directly as this gateway's backend user, to compare
    /// what a client sees through sluice with what it sees directly.
    pub fn direct_opts(&self) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(DB_HOST)
            .tcp_port(DB_PORT)
            .user(Some(self.backend_user.clone()))
            .pass(Some("backend-pw"))
            .db_name(Some(TEST_DB))
    }

    /// Connects as `app` to the test schema.
    pub async fn connect(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.opts("app", "secret", Some(TEST_DB)))
            .await
            .expect("connect through sluice")
    }

    /// Fetches `/metrics`.
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await
    }

    /// Opens `n` database connections (clients each holding a transaction at once), then
    /// gives them all back: the pool ends with at least `n` idle connections (sluice's own
    /// reads at start may have opened more), `n` of them used a moment ago.
    pub async fn use_connections(&self, n: usize) {
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut conn = self.connect().await;
            conn.query_drop("BEGIN").await.unwrap();
            clients.push(conn);
        }
        for mut conn in clients {
            conn.query_drop("COMMIT").await.unwrap();
            conn.disconnect().await.unwrap();
        }
        self.wait_idle().await;
        let idle = self.gateway.pool.stats().idle;
        assert!(idle >= n, "{idle} idle after {n} were used");
    }

    /// Waits until the pool has no busy connection (give-back runs after a client leaves).
    pub async fn wait_idle(&self) {
        for _ in 0..100 {
            if self.gateway.pool.stats().busy == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("pool still busy: {:?}", self.gateway.pool.stats());
    }
}

/// Waits until the pool's budget is `want`, returning what it was last.
pub async fn budget_becomes(gw: &TestGateway, want: usize) -> usize {
    for _ in 0..200 {
        let max = gw.gateway.pool.stats().max;
        if max == want {
            return max;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    gw.gateway.pool.stats().max
}

/// Runs `tests/clients/tls_check.js` (mysql2: a query, a large result, several result sets,
/// a prepared statement, a change of user) as `app` against `gw` with the compressed protocol
/// on, and fails the test unless every check passed.
pub async fn mysql2_compressed_check(gw: &TestGateway) {
    let script = repo_root().join("tests/clients/tls_check.js");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(gw.addr.port().to_string())
        .args(["app", "secret", TEST_DB])
        .env("MYSQL2_COMPRESS", "1")
        .output()
        .await
        .expect("node runs (scripts/ensure-deps)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The repository's root directory (for `tests/clients`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a client program with `stdin` as its input and returns what it did; a program that
/// is not installed fails the test, naming scripts/ensure-deps.
pub async fn run_client(
    program: &str,
    args: &[String],
    stdin: Option<&str>,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be installed (scripts/ensure-deps): {e}"));
    let mut pipe = child.stdin.take().unwrap();
    // A client refused at connect exits before reading its input: a broken pipe here is
    // not a failure, the output says what happened.
    let _ = pipe.write_all(stdin.unwrap_or("").as_bytes()).await;
    drop(pipe);
    child.wait_with_output().await.unwrap()
}

/// The body of a GET that must answer 200.
pub async fn http_ok_body(addr: SocketAddr, path: &str) -> String {
    let response = http_get(addr, path).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
}

/// The admin listener's `/status` at `admin`.
pub async fn status_json(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_ok_body(admin, "/status").await).expect("JSON from /status")
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    out
}

/// A `POST` to the admin listener at `admin`, with `token` as the bearer token: the status
/// code and body.
pub async fn admin_post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = data_api::plain_client().post(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The resident set of process `pid` (`"self"`: this one), in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The value of an unlabelled or labelled sample in Prometheus text, e.g.
/// `metric_value(text, "sluice_auth_failures_total{reason=\"bad_password\"}")`.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `COM_CHANGE_USER` to `user` with `password`, on the test database; it must succeed.
pub async fn change_user_to(conn: &mut mysql_async::Conn, user: &str, password: &str) {
    conn.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some(user.into()))
            .with_pass(Some(password.into()))
            .with_db_name(Some(TEST_DB.into())),
    )
    .await
    .unwrap();
}

/// `SELECT 1 AS a; SELECT 2 AS b, 3 AS c` then `tail` (statements without a result set,
/// or nothing) in one query: both results, which every test of several results checks
/// come back as `([1], [(2, 3)])`.
pub async fn two_results(conn: &mut mysql_async::Conn, tail: &str) -> (Vec<i64>, Vec<(i64, i64)>) {
    let mut results = conn
        .query_iter(format!("SELECT 1 AS a; SELECT 2 AS b, 3 AS c{tail}"))
        .await
        .unwrap();
    let first: Vec<i64> = results.collect().await.unwrap();
    let second: Vec<(i64, i64)> = results.collect().await.unwrap();
    drop(results);
    (first, second)
}

/// The MySQL error code of a failed call.
pub fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// The test MariaDB as root, for sluice's own protocol client to talk to directly.
pub fn direct_target() -> BackendTarget {
    BackendTarget {
        host: DB_HOST.into(),
        port: DB_PORT,
        user: "root".into(),
        secret: BackendSecret::Password(String::new()),
        database: Some(TEST_DB.into()),
        tls: sluice::tls::BackendTls::DISABLED,
        compress: false,
    }
}

/// A raw client (sluice's own protocol client, logged in through the gateway).
pub async fn raw_client(gw: &TestGateway) -> BackendConn {
    raw_client_with(gw, Flavor::INTERNAL).await
}

/// A raw client logging in with `flavor`'s capabilities and collation.
pub async fn raw_client_with(gw: &TestGateway, flavor: Flavor) -> BackendConn {
    let target = BackendTarget {
        host: gw.addr.ip().to_string(),
        port: gw.addr.port(),
        user: "app".into(),
        secret: BackendSecret::Password("secret".into()),
        database: Some(TEST_DB.into()),
        tls: sluice::tls::BackendTls::DISABLED,
        compress: false,
    };
    BackendConn::connect(&target, flavor, Duration::from_secs(5))
        .await
        .expect("log in through sluice")
}

/// Closes a raw client's socket without the COM_QUIT its drop would send, as a client that
/// vanishes (a frozen or killed function) does.
pub fn vanish(conn: BackendConn) {
    if let Some(tcp) = conn.stream.get_ref().get_ref().get_ref().tcp() {
        let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
    }
    drop(conn);
}

/// Sends one command packet and returns the first packet of the reply.
pub async fn request(conn: &mut BackendConn, payload: &[u8]) -> Vec<u8> {
    let mut seq = 0;
    conn.stream.write_packet(&mut seq, payload).await.unwrap();
    conn.stream.read_packet().await.unwrap().payload.to_vec()
}

/// The error code of an ERR packet (0 for anything else).
pub fn error_code(reply: &[u8]) -> u16 {
    ErrFields::parse(reply).map(|e| e.code).unwrap_or(0)
}

/// Polls the database connections of a backend user every 20 ms, keeping the peak, until
/// stopped.
pub struct PeakWatcher {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl PeakWatcher {
    /// Starts watching the connections of `user` (a `LIKE` pattern, see [`db_connections_of`]).
    pub fn start(user: &str) -> PeakWatcher {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, user) = (done.clone(), user.to_owned());
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(db_connections_of(&user).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        PeakWatcher { done, task }
    }

    /// Stops watching and returns the most connections seen at once.
    pub async fn stop(self) -> usize {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("watcher task")
    }
}
