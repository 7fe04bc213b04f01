//! Independent clients over TLS and with `caching_sha2_password`: the `mariadb` command line
//! client (`--ssl --ssl-verify-server-cert --ssl-ca`), PyMySQL (its whole suite over TLS) and
//! Node's mysql2. `scripts/ensure-deps` installs them.

mod common;

use common::certs::{self, sha2_paths, with_tls};
use common::*;
use sluice::config::AuthPlugin;
use sluice::tls::TlsMode;

fn mariadb_args(gw: &TestGateway, tls: &[String]) -> Vec<String> {
    let mut args = vec![
        "--protocol=tcp".to_owned(),
        "-h127.0.0.1".to_owned(),
        format!("-P{}", gw.addr.port()),
        "-uapp".to_owned(),
        "-psecret".to_owned(),
        "--batch".to_owned(),
        "--local-infile=1".to_owned(),
    ];
    args.extend_from_slice(tls);
    args.push(TEST_DB.to_owned());
    args
}

fn verified(ca: &std::path::Path) -> Vec<String> {
    vec![
        "--ssl".into(),
        "--ssl-verify-server-cert".into(),
        format!("--ssl-ca={}", ca.display()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_over_verified_tls() {
    let certs = certs::make();
    let gw = start_with("tls_cli", |c| with_tls(c, &certs, TlsMode::Require)).await;
    let csv = certs.dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        (1..=300).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let script = format!(
        "CREATE TEMPORARY TABLE tls_li (id INT PRIMARY KEY);\n\
         LOAD DATA LOCAL INFILE '{}' INTO TABLE tls_li;\n\
         SELECT COUNT(*), SUM(id) FROM tls_li;\n\
         SELECT LENGTH(REPEAT('y', 17 * 1024 * 1024)) AS big;\n\
         STATUS;\n",
        csv.display()
    );
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, &verified(&certs.ca)),
        Some(&script),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mariadb over TLS failed: {stderr}\n{stdout}"
    );
    assert!(stdout.contains("300\t45150"), "{stdout}");
    assert!(stdout.contains("17825792"), "{stdout}");
    assert!(
        stdout.contains("Cipher in use"),
        "the client reports TLS: {stdout}"
    );

    // Plaintext against "require": the server's 1045, naming the setting.
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, &["--skip-ssl".into()]),
        Some("SELECT 1;\n"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("1045") && stderr.contains("tls_mode"),
        "{stderr}"
    );

    // A client trusting another authority refuses the certificate and says so.
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, &verified(&certs.other_ca)),
        Some("SELECT 1;\n"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong CA must fail");
    assert!(
        stderr.contains("2026") || stderr.to_lowercase().contains("ssl"),
        "{stderr}"
    );

    // sluice is still fine.
    let out = run_client(
        "mariadb",
        &mariadb_args(&gw, &verified(&certs.ca)),
        Some("SELECT 'still' AS up;\n"),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("still"));
}

/// PyMySQL's suite through `gw`: over TLS trusting `ca`, or (`None`) never over TLS.
fn pymysql_args(gw: &TestGateway, ca: Option<&std::path::Path>, only: &[&str]) -> Vec<String> {
    let script = repo_root().join("tests/clients/pymysql_check.py");
    let mut args = vec![
        script.display().to_string(),
        "--port".into(),
        gw.addr.port().to_string(),
        "--user".into(),
        "app".into(),
        "--password".into(),
        "secret".into(),
        "--database".into(),
        TEST_DB.into(),
    ];
    match ca {
        Some(ca) => args.extend(["--ssl-ca".into(), ca.display().to_string()]),
        None => args.push("--ssl-disabled".into()),
    }
    for check in only {
        args.extend(["--only".into(), check.to_string()]);
    }
    args
}

async fn expect_passing(program: &str, args: &[String], what: &str) -> String {
    let out = run_client(program, args, None).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "{what}:\n{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_suite_over_tls() {
    let certs = certs::make();
    let gw = start_with("tls_pymysql", |c| {
        with_tls(c, &certs, TlsMode::Require);
        c.pool.max_db_connections = 6;
    })
    .await;
    let out = expect_passing(
        "python3",
        &pymysql_args(&gw, Some(&certs.ca), &[]),
        "PyMySQL over TLS",
    )
    .await;
    assert!(out.contains("passed"), "{out}");
    assert!(!out.contains("SKIP check_transport"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_with_pymysql_and_mysql2() {
    let certs = certs::make();
    let gw = start_with("tls_sha2_clients", |c| {
        with_tls(c, &certs, TlsMode::Allow);
        c.auth.default_plugin = AuthPlugin::CachingSha2Password;
    })
    .await;
    // PyMySQL without TLS: RSA full authentication (its `cryptography` package encrypts).
    let basics = ["connect_and_basics", "wrong_password"];
    expect_passing(
        "python3",
        &pymysql_args(&gw, None, &basics[..1]),
        "PyMySQL, RSA",
    )
    .await;
    let [fast, full_tls, full_rsa] = sha2_paths(&gw.metrics().await);
    assert_eq!((full_tls, full_rsa), (0, 1), "first login: RSA");
    // Its second connection inside the same check, and the next run, take the fast path;
    // the wrong password is refused with 1045 (the check asserts the code).
    expect_passing(
        "python3",
        &pymysql_args(&gw, Some(&certs.ca), &basics),
        "PyMySQL, fast path",
    )
    .await;
    // (The wrong password misses the fast path and goes on to a full authentication.)
    let [fast_after, full_tls, full_rsa] = sha2_paths(&gw.metrics().await);
    assert!(fast_after > fast, "fast path used");

    // mysql2 (which answers with the native plugin and is switched) over TLS, then in
    // clear: every login and change-user of app now takes the fast path.
    let script = repo_root().join("tests/clients/tls_check.js");
    let mysql2 = |ca: Option<&std::path::Path>| {
        let mut args = vec![
            script.display().to_string(),
            gw.addr.port().to_string(),
            "app".into(),
            "secret".into(),
            TEST_DB.into(),
        ];
        args.extend(ca.map(|ca| ca.display().to_string()));
        args
    };
    expect_passing("node", &mysql2(Some(&certs.ca)), "mysql2 over TLS").await;
    expect_passing("node", &mysql2(None), "mysql2 in clear").await;
    let [fast_end, full_tls_end, full_rsa_end] = sha2_paths(&gw.metrics().await);
    assert!(fast_end >= fast_after + 2, "mysql2 took the fast path");
    assert_eq!(
        (full_tls_end, full_rsa_end),
        (full_tls, full_rsa),
        "no full path"
    );
}
