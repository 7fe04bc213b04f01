//! Database identity passes through: database users log in through sluice with their own
//! passwords and no sluice configuration (the auth query), and run as themselves.
//!
//! Every gateway here uses a least-privileged auth account as its `[backend]` login, with
//! only `SELECT ON mysql.global_priv` (the grant the README documents), so these tests also
//! show that grant is enough.

mod common;

use common::*;
use mysql_async::prelude::*;

/// The password of every auth account.
const AUTH_PW: &str = "auth-pw";

/// Creates (or recreates) database user `name`@'%' with `password` (mysql_native_password),
/// then runs `grants` (with `{user}` standing for the account) as root.
async fn create_user(name: &str, password: &str, grants: &[&str]) {
    let mut root = direct().await;
    root.query_drop(format!(
        "CREATE OR REPLACE USER '{name}'@'%' IDENTIFIED BY '{password}'"
    ))
    .await
    .unwrap();
    for grant in grants {
        let grant = grant.replace("{user}", &format!("'{name}'@'%'"));
        root.query_drop(grant).await.unwrap();
    }
    root.disconnect().await.unwrap();
}

/// Creates an auth account with only the grant the auth query needs.
async fn create_auth_account(name: &str) {
    create_user(
        name,
        AUTH_PW,
        &["GRANT SELECT ON mysql.global_priv TO {user}"],
    )
    .await;
}

/// Starts a gateway whose `[backend]` login is the least-privileged auth account
/// `sl_<test>_auth`, with no `[[users]]`.
async fn start_with_auth_account(test: &str) -> TestGateway {
    let auth = format!("sl_{test}_auth");
    create_auth_account(&auth).await;
    start_with(test, |config| {
        config.backend.url = format!("mysql://{auth}:{AUTH_PW}@{DB_HOST}:{DB_PORT}");
        config.users.clear();
    })
    .await
}

/// Logs in through `gw` as `user`/`password`.
async fn login(
    gw: &TestGateway,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    mysql_async::Conn::new(gw.opts(user, password, db)).await
}

async fn current_user(conn: &mut mysql_async::Conn) -> String {
    conn.query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap()
}

/// The error code of a failed login or statement.
fn code<T: std::fmt::Debug>(result: Result<T, mysql_async::Error>) -> Option<u16> {
    server_code(&result.expect_err("refused"))
}

fn lookups(metrics: &str, result: &str) -> f64 {
    metric_value(
        metrics,
        &format!("sluice_auth_query_lookups_total{{result=\"{result}\"}}"),
    )
}

fn failures(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!("sluice_auth_failures_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_users_log_in_as_themselves() {
    let gw = start_with_auth_account("id_three").await;
    let (alice, bob, carol) = ("sl_id_alice", "sl_id_bob", "sl_id_carol");
    create_user(alice, "alice-pw", &["GRANT ALL ON sluice_test.* TO {user}"]).await;
    create_user(bob, "bob-pw", &["GRANT SELECT ON sluice_test.* TO {user}"]).await;
    create_user(carol, "carol-pw", &[]).await;

    let mut a = login(&gw, alice, "alice-pw", Some(TEST_DB)).await.unwrap();
    let mut b = login(&gw, bob, "bob-pw", Some(TEST_DB)).await.unwrap();
    let mut c = login(&gw, carol, "carol-pw", None).await.unwrap();
    assert_eq!(current_user(&mut a).await, format!("{alice}@%"));
    assert_eq!(current_user(&mut b).await, format!("{bob}@%"));
    assert_eq!(current_user(&mut c).await, format!("{carol}@%"));

    // Grants are the database's: alice writes, bob only reads, carol sees nothing.
    a.query_drop("CREATE OR REPLACE TABLE id_three (n INT)")
        .await
        .unwrap();
    a.query_drop("INSERT INTO id_three VALUES (1)")
        .await
        .unwrap();
    let n: Option<i32> = b.query_first("SELECT n FROM id_three").await.unwrap();
    assert_eq!(n, Some(1));
    assert_eq!(
        code(b.query_drop("INSERT INTO id_three VALUES (2)").await),
        Some(1142)
    );
    assert_eq!(code(c.query_drop("USE sluice_test").await), Some(1044));
    // Without PROCESS, each sees only its own threads.
    for (conn, user) in [(&mut a, alice), (&mut b, bob), (&mut c, carol)] {
        let users: Vec<String> = conn
            .query("SELECT DISTINCT USER FROM information_schema.PROCESSLIST")
            .await
            .unwrap();
        assert_eq!(users, vec![user.to_owned()]);
    }

    // Refusals: a wrong password and an unknown user both get 1045.
    assert_eq!(code(login(&gw, alice, "bob-pw", None).await), Some(1045));
    assert_eq!(
        code(login(&gw, "sl_id_nobody", "x", None).await),
        Some(1045)
    );
    // The accounts were read once each (and once more for the wrong password); the
    // other logins were answered from the cache.
    let mut again = login(&gw, alice, "alice-pw", None).await.unwrap();
    assert_eq!(current_user(&mut again).await, format!("{alice}@%"));
    let metrics = gw.metrics().await;
    assert_eq!(lookups(&metrics, "read"), 4.0, "{metrics}");
    assert_eq!(lookups(&metrics, "reread"), 1.0);
    assert_eq!(lookups(&metrics, "hit"), 1.0);
    assert_eq!(failures(&metrics, "bad_password"), 1.0);
    assert_eq!(failures(&metrics, "unknown_user"), 1.0);

    a.query_drop("DROP TABLE id_three").await.unwrap();
    for conn in [a, b, c, again] {
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_takes_effect_at_once() {
    let gw = start_with_auth_account("id_passwords").await;
    let (dora, emil) = ("sl_id_dora", "sl_id_emil");
    create_user(dora, "dora-1", &[]).await;
    create_user(emil, "emil-1", &[]).await;

    // dora changes her own password through sluice (as herself, not as the pool account).
    let mut d = login(&gw, dora, "dora-1", None).await.unwrap();
    d.query_drop("SET PASSWORD = PASSWORD('dora-2')")
        .await
        .unwrap();
    d.disconnect().await.unwrap();
    let mut d = login(&gw, dora, "dora-2", None).await.unwrap();
    assert_eq!(current_user(&mut d).await, format!("{dora}@%"));
    d.disconnect().await.unwrap();
    assert_eq!(code(login(&gw, dora, "dora-1", None).await), Some(1045));

    // emil's is changed by an administrator, directly on the database.
    let e = login(&gw, emil, "emil-1", None).await.unwrap();
    e.disconnect().await.unwrap();
    let mut root = direct().await;
    root.query_drop(format!("ALTER USER '{emil}'@'%' IDENTIFIED BY 'emil-2'"))
        .await
        .unwrap();
    root.disconnect().await.unwrap();
    let mut e = login(&gw, emil, "emil-2", None).await.unwrap();
    assert_eq!(current_user(&mut e).await, format!("{emil}@%"));
    e.disconnect().await.unwrap();
    assert_eq!(code(login(&gw, emil, "emil-1", None).await), Some(1045));

    // The auth account's own password did not change.
    let mut auth = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(DB_HOST)
            .tcp_port(DB_PORT)
            .user(Some("sl_id_passwords_auth"))
            .pass(Some(AUTH_PW)),
    )
    .await
    .unwrap();
    auth.ping().await.unwrap();
    auth.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_of_another_plugin_are_refused_clearly() {
    let gw = start_with_auth_account("id_plugin").await;
    let socket_user = "sl_id_socket";
    let mut root = direct().await;
    root.query_drop(format!(
        "CREATE OR REPLACE USER '{socket_user}'@'%' IDENTIFIED VIA unix_socket"
    ))
    .await
    .unwrap();
    root.disconnect().await.unwrap();
    assert_eq!(
        code(login(&gw, socket_user, "anything", None).await),
        Some(1045)
    );
    let metrics = gw.metrics().await;
    assert_eq!(failures(&metrics, "unsupported_plugin"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_is_shut_out_pooled_connections_included() {
    let auth = "sl_id_lock_auth";
    create_auth_account(auth).await;
    let gw = start_with("id_lock", |config| {
        config.backend.url = format!("mysql://{auth}:{AUTH_PW}@{DB_HOST}:{DB_PORT}");
        config.users.clear();
        config.auth.cache_ttl = std::time::Duration::ZERO;
    })
    .await;
    let hana = "sl_id_hana";
    create_user(hana, "hana-pw", &[]).await;
    let mut h = login(&gw, hana, "hana-pw", None).await.unwrap();
    assert_eq!(current_user(&mut h).await, format!("{hana}@%"));
    h.disconnect().await.unwrap();
    gw.wait_idle().await;
    let mut root = direct().await;
    root.query_drop(format!("ALTER USER '{hana}'@'%' ACCOUNT LOCK"))
        .await
        .unwrap();
    root.disconnect().await.unwrap();
    // Her idle connection is still logged in, but no login gets to it.
    assert_eq!(db_connections_of(hana).await, 1);
    assert_eq!(code(login(&gw, hana, "hana-pw", None).await), Some(1045));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_account_without_its_grant_is_a_clear_error() {
    let bare = "sl_id_no_grant_auth";
    create_user(bare, AUTH_PW, &[]).await;
    let gw = start_with("id_no_grant", |config| {
        config.backend.url = format!("mysql://{bare}:{AUTH_PW}@{DB_HOST}:{DB_PORT}");
        config.users.clear();
    })
    .await;
    create_user("sl_id_frank", "frank-pw", &[]).await;
    // Not the client's fault: "try again later" (1040), not access denied.
    let err = login(&gw, "sl_id_frank", "frank-pw", None)
        .await
        .expect_err("the auth query cannot run");
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("cannot check passwords"), "{err}");
    let metrics = gw.metrics().await;
    assert_eq!(failures(&metrics, "auth_query_failed"), 1.0, "{metrics}");
    assert_eq!(lookups(&metrics, "failed"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_users_run_as_the_login_they_name() {
    let (reporting, greta) = ("sl_id_reporting", "sl_id_greta");
    create_user(reporting, "report-pw", &[]).await;
    create_user(greta, "greta-db-pw", &[]).await;
    let gw = start_with("id_configured", |config| {
        config.users = vec![
            sluice::config::UserConfig {
                name: "dashboard".into(),
                password: Some("dash".into()),
                backend_user: Some(reporting.into()),
                backend_password: Some("report-pw".into()),
                ..Default::default()
            },
            sluice::config::UserConfig {
                name: "ops".into(),
                password: Some("ops".into()),
                backend: Some(sluice::config::SharedBackend::Shared),
                ..Default::default()
            },
            // Configured users come first: this entry, not the database's account, decides
            // how greta proves herself.
            sluice::config::UserConfig {
                name: greta.into(),
                password: Some("greta-sluice-pw".into()),
                backend_password: Some("greta-db-pw".into()),
                ..Default::default()
            },
        ];
    })
    .await;
    let mut dashboard = login(&gw, "dashboard", "dash", None).await.unwrap();
    assert_eq!(current_user(&mut dashboard).await, format!("{reporting}@%"));
    let mut ops = login(&gw, "ops", "ops", None).await.unwrap();
    assert_eq!(
        current_user(&mut ops).await,
        format!("{}@%", gw.backend_user)
    );
    let mut g = login(&gw, greta, "greta-sluice-pw", None).await.unwrap();
    assert_eq!(current_user(&mut g).await, format!("{greta}@%"));
    assert_eq!(
        code(login(&gw, greta, "greta-db-pw", None).await),
        Some(1045)
    );
    for conn in [dashboard, ops, g] {
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_accounts_of_one_name() {
    let gw = start_with_auth_account("id_hosts").await;
    let name = "sl_id_hosts";
    create_user(name, "any-host", &[]).await;
    let mut root = direct().await;
    root.query_drop(format!(
        "CREATE OR REPLACE USER '{name}'@'10.99.%' IDENTIFIED BY 'office'"
    ))
    .await
    .unwrap();
    root.disconnect().await.unwrap();
    // The database sees sluice's address, so the '%' account is the one that logs in.
    let mut conn = login(&gw, name, "any-host", None).await.unwrap();
    assert_eq!(current_user(&mut conn).await, format!("{name}@%"));
    conn.disconnect().await.unwrap();
    // The office password matches an account, so sluice accepts it; the database, judging
    // sluice's address, refuses: the client is denied access, as it would be directly.
    // Transaction pooling logs in to the database at the first statement, so the refusal
    // comes at login or at that statement.
    let refused = match login(&gw, name, "office", None).await {
        Ok(mut conn) => conn.query_drop("SELECT 1").await,
        Err(e) => Err(e),
    };
    let err = refused.expect_err("the database refuses the office password from sluice");
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let mut root = direct().await;
    root.query_drop(format!("DROP USER '{name}'@'10.99.%'"))
        .await
        .unwrap();
    root.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_moves_a_client_to_the_new_users_identity_and_defaults() {
    let gw = start_with_auth_account("chuser").await;
    create_user("sl_chuser_a", "pw-a", &[]).await;
    create_user(
        "sl_chuser_b",
        "pw-b",
        &[&format!("GRANT SELECT ON {TEST_DB}.* TO {{user}}")],
    )
    .await;
    // mysql_async: the new identity, and nothing of the old session.
    let mut conn = login(&gw, "sl_chuser_a", "pw-a", None).await.unwrap();
    conn.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES', @marker = 1")
        .await
        .unwrap();
    assert_eq!(current_user(&mut conn).await, "sl_chuser_a@%");
    change_user_to(&mut conn, "sl_chuser_b", "pw-b").await;
    assert_eq!(current_user(&mut conn).await, "sl_chuser_b@%");
    let (db, default_mode, marker): (Option<String>, u8, Option<u8>) = conn
        .query_first("SELECT DATABASE(), @@session.sql_mode = @@global.sql_mode, @marker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (db.as_deref(), default_mode, marker),
        (Some(TEST_DB), 1, None)
    );
    // The new user's grants, not the old one's.
    conn.query_drop(format!("SELECT COUNT(*) FROM {TEST_DB}.seq_1_to_3"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();

    // mysql2's changeUser: the same session as on a direct connection.
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients/change_user.js");
    let run = |port: u16| {
        let script = script.clone();
        async move {
            let out = tokio::process::Command::new("node")
                .arg(&script)
                .args([
                    &port.to_string(),
                    "sl_chuser_a",
                    "pw-a",
                    "sl_chuser_b",
                    "pw-b",
                    TEST_DB,
                ])
                .output()
                .await
                .expect("node installed (scripts/ensure-deps)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let direct_view = run(DB_PORT).await;
    let through_sluice = run(gw.addr.port()).await;
    assert!(
        direct_view.contains("\"user\":\"sl_chuser_b\""),
        "{direct_view}"
    );
    assert!(direct_view.contains("\"wrong\":1045"), "{direct_view}");
    assert_eq!(through_sluice, direct_view);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_share_one_budget_under_load() {
    const POOL: usize = 6;
    const CLIENTS: usize = 300;
    let auth = "sl_budget3_auth";
    create_auth_account(auth).await;
    let users = ["sl_budget3_a", "sl_budget3_b", "sl_budget3_c"];
    for user in users {
        create_user(
            user,
            "pw",
            &[&format!("GRANT ALL ON {TEST_DB}.* TO {{user}}")],
        )
        .await;
    }
    let gw = start_with("budget3", |config| {
        config.backend.url = format!("mysql://{auth}:{AUTH_PW}@{DB_HOST}:{DB_PORT}");
        config.users.clear();
        config.pool.max_db_connections = POOL;
        config.pool.borrow_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let mut root = direct().await;
    root.query_drop("CREATE OR REPLACE TABLE budget3 (id INT PRIMARY KEY, n INT)")
        .await
        .unwrap();
    root.query_drop("INSERT INTO budget3 SELECT seq, 0 FROM seq_1_to_30")
        .await
        .unwrap();
    // Every 20 ms, the database connections of all four logins sluice uses.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let logins: Vec<String> = users.iter().chain([&auth]).map(|u| u.to_string()).collect();
        tokio::spawn(async move {
            let mut peak = 0;
            let mut admin = direct().await;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let in_list = logins
                    .iter()
                    .map(|u| format!("'{u}'"))
                    .collect::<Vec<_>>()
                    .join(",");
                let n: Option<usize> = admin
                    .query_first(format!(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ({in_list})"
                    ))
                    .await
                    .unwrap();
                peak = peak.max(n.unwrap_or(0));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let opts = gw.opts(users[i % 3], "pw", Some(TEST_DB));
        clients.push(tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let id = i % 30 + 1;
            conn.query_drop("BEGIN").await?;
            conn.query_drop(format!("UPDATE budget3 SET n = n + 1 WHERE id = {id}"))
                .await?;
            let me: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
            conn.query_drop("COMMIT").await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(me.unwrap_or_default())
        }));
    }
    for (i, client) in clients.into_iter().enumerate() {
        let me = client.await.unwrap().unwrap();
        assert_eq!(
            me,
            format!("{}@%", users[i % 3]),
            "client {i} ran as itself"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.await.unwrap();
    assert!(
        (1..=POOL).contains(&peak),
        "peak database connections {peak}"
    );
    let total: Option<u64> = root
        .query_first("SELECT SUM(n) FROM budget3")
        .await
        .unwrap();
    assert_eq!(
        total,
        Some(CLIENTS as u64),
        "every transaction committed once"
    );
    root.query_drop("DROP TABLE budget3").await.unwrap();
}
