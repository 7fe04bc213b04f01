//! Reloading the configuration while serving (`POST /reload`, SIGHUP): passwords and quotas
//! change for new work while connected clients carry on; an invalid file is refused with
//! every problem listed and the running configuration keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::binary::{config_text, shared_user, Binary};
use common::*;
use mysql_async::prelude::*;
use serde_json::Value;
use sluice::config::{api_key_sha256, Config};
use sluice::Gateway;

/// The admin token of these tests.
const TOKEN: &str = "reload-token";

/// An in-process gateway started from a configuration file that a reload reads again.
struct Reloadable {
    gw: TestGateway,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Top-level keys every file of these tests has: `listen`, a fresh admin port and the admin
/// token, then `extra`.
fn top(listen: &str, extra: &str) -> String {
    format!(
        "listen = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token_sha256 = \"{}\"\n{extra}",
        api_key_sha256(TOKEN)
    )
}

/// Any free port, as the files of these tests listen on.
const ANY_PORT: &str = "127.0.0.1:0";

/// Reads `file` as `sluice serve --config file` does.
fn read(file: &Path) -> Result<sluice::config::Settings, sluice::config::ConfigError> {
    Config::load(file)?.validate(&file.display().to_string())
}

impl Reloadable {
    /// Starts from a file of `top(ANY_PORT, extra)`, the test's backend, and `users`.
    async fn start(test: &str, extra: &str, users: &str) -> Reloadable {
        let backend_user = create_backend_user(test).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            config_text(&backend_user, &top(ANY_PORT, extra), users),
        )
        .unwrap();
        let settings = read(&file).expect("valid test config");
        let source_file = file.clone();
        let gateway = Gateway::reloadable(settings, Arc::new(move || read(&source_file)));
        Reloadable {
            gw: serve(gateway, backend_user).await,
            file,
            _dir: dir,
        }
    }

    /// Rewrites the file with `top(ANY_PORT, extra)` and `users`, then `POST /reload`s it.
    async fn reload(&self, extra: &str, users: &str) -> (u16, Value) {
        self.reload_text(&self.text(ANY_PORT, extra, users)).await
    }

    /// A file of `top(listen, extra)`, the test's backend, and `users`.
    fn text(&self, listen: &str, extra: &str, users: &str) -> String {
        config_text(&self.gw.backend_user, &top(listen, extra), users)
    }

    /// Rewrites the file as `text`, then `POST /reload`s it.
    async fn reload_text(&self, text: &str) -> (u16, Value) {
        std::fs::write(&self.file, text).unwrap();
        let (code, body) = admin_post(self.gw.admin, "/reload", Some(TOKEN)).await;
        (code, serde_json::from_str(&body).expect(&body))
    }

    async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<mysql_async::Conn, mysql_async::Error> {
        mysql_async::Conn::new(self.gw.opts(user, password, Some(TEST_DB))).await
    }
}

/// The MySQL error code of a login that must fail.
fn refused_with(login: Result<mysql_async::Conn, mysql_async::Error>) -> Option<u16> {
    let Err(err) = login else {
        panic!("the login was accepted")
    };
    server_code(&err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_a_password_live_and_connected_clients_carry_on() {
    let sluice = Reloadable::start(
        "reload_password",
        "",
        &(shared_user("reload_app", "old-pw") + &shared_user("reload_gone", "pw")),
    )
    .await;
    let mut connected = sluice.login("reload_app", "old-pw").await.unwrap();
    let mut gone_but_connected = sluice.login("reload_gone", "pw").await.unwrap();
    connected.query_drop("BEGIN").await.unwrap();

    let (code, report) = sluice
        .reload("", &shared_user("reload_app", "new-pw"))
        .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["result"], "ok");
    assert_eq!(report["needs_restart"], serde_json::json!([]));

    // Connected clients keep working, inside their transaction too.
    let one: Option<i64> = connected.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    connected.query_drop("COMMIT").await.unwrap();
    let two: Option<i64> = gone_but_connected.query_first("SELECT 2").await.unwrap();
    assert_eq!(two, Some(2));
    // New logins need the new password; a removed user is unknown.
    assert_eq!(
        refused_with(sluice.login("reload_app", "old-pw").await),
        Some(1045)
    );
    assert_eq!(
        refused_with(sluice.login("reload_gone", "pw").await),
        Some(1045)
    );
    let mut fresh = sluice.login("reload_app", "new-pw").await.unwrap();
    fresh.query_drop("SELECT 3").await.unwrap();

    let status = http_get(sluice.gw.admin, "/status").await;
    assert!(
        status.contains("\"last_reload\":{\"at_unix_seconds\":"),
        "{status}"
    );
    assert!(status.contains("\"result\":\"ok\""), "{status}");
    let metrics = sluice.gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    for conn in [connected, gone_but_connected, fresh] {
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_quotas_live() {
    let user = |extra: &str| shared_user("reload_quota", "pw") + extra;
    let sluice = Reloadable::start(
        "reload_quota",
        "[pool]\nmax_db_connections = 4\nborrow_timeout = \"30s\"\n",
        &user(""),
    )
    .await;
    let mut a = sluice.login("reload_quota", "pw").await.unwrap();
    let mut b = sluice.login("reload_quota", "pw").await.unwrap();
    for _ in 0..20 {
        a.query_drop("SELECT 1").await.unwrap();
    }

    // A statement rate for the connected client, a per-user ceiling, a smaller budget and
    // a shorter borrow timeout.
    let pool = "[pool]\nmax_db_connections = 3\nmax_db_connections_per_user = 1\n\
                borrow_timeout = \"300ms\"\n";
    let (code, report) = sluice
        .reload(pool, &user("max_statements_per_second = 3\n"))
        .await;
    assert_eq!(code, 200, "{report}");
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(err) = a.query_drop("SELECT 1").await {
            assert_eq!(server_code(&err), Some(1226), "{err}");
            refused += 1;
        }
    }
    assert!(
        refused >= 15,
        "only {refused} of 20 over the rate were refused"
    );
    assert_eq!(budget_becomes(&sluice.gw, 3).await, 3);
    // One connection lent to the user at once: the second waits 300 ms, then 1226.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.query_drop("BEGIN").await.unwrap();
    let err = b.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1226), "{err}");
    assert!(
        err.to_string().contains("max_db_connections_per_user"),
        "{err}"
    );
    a.query_drop("COMMIT").await.unwrap();

    // Lifted again: both at once, and no rate.
    let (code, report) = sluice.reload("", &user("")).await;
    assert_eq!(code, 200, "{report}");
    a.query_drop("BEGIN").await.unwrap();
    for _ in 0..20 {
        b.query_drop("SELECT 1").await.unwrap();
    }
    a.query_drop("COMMIT").await.unwrap();
    assert_eq!(budget_becomes(&sluice.gw, 20).await, 20);
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_broken_configuration_listing_every_problem() {
    let users = shared_user("reload_keep", "pw");
    let sluice = Reloadable::start("reload_broken", "", &users).await;

    // Two bad values at once: both are listed, nothing is applied.
    let (code, report) = sluice
        .reload(
            "login_timeout = \"0s\"\n",
            &(shared_user("reload_keep", "changed")
                + "[[users]]\nname = \"reload_bad\"\npassword_hash = \"nope\"\nbackend = \"shared\"\n"),
        )
        .await;
    assert_eq!(code, 422, "{report}");
    assert_eq!(report["result"], "refused");
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("login_timeout: must be greater than zero"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("users[1].password_hash"),
        "{problems:?}"
    );

    // Not TOML at all: refused with its line.
    let (code, report) = sluice.reload_text("listen = \n[pool\n").await;
    assert_eq!(code, 422, "{report}");
    assert!(
        report["problems"][0].as_str().unwrap().contains("line 2"),
        "{report}"
    );

    // The running configuration keeps serving.
    let mut conn = sluice.login("reload_keep", "pw").await.unwrap();
    conn.query_drop("SELECT 1").await.unwrap();
    conn.disconnect().await.unwrap();
    assert_eq!(
        refused_with(sluice.login("reload_keep", "changed").await),
        Some(1045)
    );
    let metrics = sluice.gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_config_reloads_total{result=\"refused\"}"),
        2.0
    );
    let status = http_get(sluice.gw.admin, "/status").await;
    assert!(status.contains("\"result\":\"refused\""), "{status}");

    // A setting that needs a restart is named, keeps its running value, and the rest applies.
    let moved = sluice.text("127.0.0.1:1", "", &shared_user("reload_keep", "changed"));
    let (code, report) = sluice.reload_text(&moved).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["needs_restart"], serde_json::json!(["listen"]));
    let mut conn = sluice.login("reload_keep", "changed").await.unwrap();
    conn.query_drop("SELECT 1").await.unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_admin_token() {
    let users = shared_user("reload_token", "pw");
    let sluice = Reloadable::start("reload_token", "", &users).await;
    std::fs::write(
        &sluice.file,
        sluice.text(ANY_PORT, "", &shared_user("reload_token", "new")),
    )
    .unwrap();
    let (code, body) = admin_post(sluice.gw.admin, "/reload", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = admin_post(sluice.gw.admin, "/reload", Some("guess")).await;
    assert_eq!(code, 401, "{body}");
    // Nothing was read: the old password works, and no reload was counted.
    let mut conn = sluice.login("reload_token", "pw").await.unwrap();
    conn.query_drop("SELECT 1").await.unwrap();
    conn.disconnect().await.unwrap();
    let metrics = sluice.gw.metrics().await;
    assert!(
        !metrics.contains("sluice_config_reloads_total{"),
        "{metrics}"
    );

    // Without a token configured, admin actions are off.
    let gw = start("reload_no_token").await;
    let (code, body) = admin_post(gw.admin, "/reload", Some(TOKEN)).await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_sighup_of_the_binary() {
    let mut sluice = Binary::start("reload_sighup", "").await;
    let mut connected = mysql_async::Conn::new(sluice.opts()).await.unwrap();
    let opts = sluice.opts();
    let with = |password: &str| opts.clone().pass(Some(password.to_owned()));
    std::fs::write(
        &sluice.config,
        config_text(&sluice.backend_user, "", &shared_user("app", "rotated")),
    )
    .unwrap();
    sluice.signal("HUP");
    let mut rotated = None;
    for _ in 0..100 {
        if let Ok(conn) = mysql_async::Conn::new(with("rotated")).await {
            rotated = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rotated = rotated.expect("the new password works after SIGHUP");
    rotated.query_drop("SELECT 1").await.unwrap();
    let err = mysql_async::Conn::new(with("secret")).await.err().unwrap();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    connected.query_drop("SELECT 2").await.unwrap();

    // A broken file on SIGHUP: refused (logged, counted), and the process serves on.
    std::fs::write(&sluice.config, "[pool\n").unwrap();
    sluice.signal("HUP");
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], sluice.admin).into();
    let mut refused = 0.0;
    for _ in 0..100 {
        refused = metric_value(
            &http_get(admin, "/metrics").await,
            "sluice_config_reloads_total{result=\"refused\"}",
        );
        if refused > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, 1.0);
    assert!(sluice.running());
    mysql_async::Conn::new(with("rotated"))
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();
    connected.query_drop("SELECT 3").await.unwrap();
    connected.disconnect().await.unwrap();
    rotated.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_a_user_s_lane_quota_live() {
    let user = |extra: &str| shared_user("reload_lane", "pw") + extra;
    let pool = "[pool]\nborrow_timeout = \"300ms\"\n";
    let sluice = Reloadable::start("reload_lane", pool, &user("")).await;
    let mut a = sluice.login("reload_lane", "pw").await.unwrap();
    let mut b = sluice.login("reload_lane", "pw").await.unwrap();
    a.query_drop("BEGIN").await.unwrap();
    b.query_drop("SELECT 1").await.unwrap();

    let (code, report) = sluice.reload(pool, &user("max_connections = 1\n")).await;
    assert_eq!(code, 200, "{report}");
    // The lent connection stays lent; a second one waits past borrow_timeout, then 1226.
    let err = b.query_drop("SELECT 2").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1226), "{err}");
    assert!(err.to_string().contains("max_connections"), "{err}");
    a.query_drop("COMMIT").await.unwrap();
    b.query_drop("SELECT 3").await.unwrap();
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_connections_is_off_by_default_and_reloads() {
    let sluice = Binary::start("log_connections", "").await;
    let log = || std::fs::read_to_string(&sluice.log).unwrap();
    let connect_and_quit = || async {
        let mut conn = mysql_async::Conn::new(sluice.opts()).await.unwrap();
        conn.query_drop("SELECT 1").await.unwrap();
        conn.disconnect().await.unwrap();
    };
    connect_and_quit().await;
    // A wrong password is logged whatever the setting.
    let wrong = sluice.opts().pass(Some("wrong"));
    assert!(mysql_async::Conn::new(wrong).await.is_err());
    let mut waited = 0;
    while !log().contains("login failed") && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let quiet = log();
    assert!(quiet.contains("login failed"), "{quiet}");
    assert!(!quiet.contains("client connected"), "{quiet}");
    assert!(!quiet.contains("client closed"), "{quiet}");

    std::fs::write(
        &sluice.config,
        config_text(
            &sluice.backend_user,
            "log_connections = true",
            &shared_user("app", "secret"),
        ),
    )
    .unwrap();
    sluice.signal("HUP");
    let mut logged = String::new();
    for _ in 0..100 {
        connect_and_quit().await;
        logged = log();
        if logged.contains("client closed (quit)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged.contains("client connected"), "{logged}");
    assert!(logged.contains("client closed (quit)"), "{logged}");
    // The descriptor budget is reported at start, not again at the reload.
    assert_eq!(logged.matches("file descriptors:").count(), 1, "{logged}");
}
