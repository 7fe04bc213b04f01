//! The `sluice` binary's command line: `check` explains bad configurations precisely, and
//! `serve` refuses to start on one.

use std::process::Command;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_USERS")
        .env_remove("SLUICE_API_KEYS")
        .output()
        .expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_file_and_explains_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        r#"
listen = "127.0.0.1:7033"
[backend]
url = "mysql://app@db.internal:3306/shop"
[pool]
max_db_connections = 8
borrow_timeout = "30s"
[[users]]
name = "fn"
password_hash = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
backend = "shared"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = sluice(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max_db_connections 8"), "{stdout}");
    assert!(stdout.contains("1 user(s)"), "{stdout}");
    assert!(
        stdout.contains("identity sources users, auth_query"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pool]\nmax_db_connections = 2\nmin_idle = 3\n[[users]]\nname = \"x\"\npassword_hash = \"nope\"\n").unwrap();
    let (code, _, stderr) = sluice(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    let path = bad.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{path}: pool.min_idle: 3 exceeds pool.max_db_connections (2)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}: users[0].password_hash:")),
        "{stderr}"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[pool]\nmax_db_conections = 2\n").unwrap();
    let (code, _, stderr) = sluice(&["check", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("line 2") && stderr.contains("max_db_conections"),
        "{stderr}"
    );

    let (code, _, stderr) = sluice(&["check", "--config", "/nonexistent/sluice.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn flags_override_the_file_and_are_validated() {
    let (code, stdout, stderr) = sluice(&[
        "check",
        "--backend",
        "mysql://u:p@127.0.0.1:3307/db",
        "--max-db-connections",
        "5",
        "--user",
        "a:pw",
        "--user",
        "b:*14E65567ABDB5135D0CFD9A70B3032C179A49EE7",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("mysql://u@127.0.0.1:3307") && stdout.contains("max_db_connections 5"),
        "{stdout}"
    );
    assert!(stdout.contains("2 user(s)"), "{stdout}");
    assert!(
        !stdout.contains(":p@"),
        "the backend password is never printed: {stdout}"
    );

    let (code, _, stderr) = sluice(&["check", "--user", "nocolon"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--user") && stderr.contains("NAME:PASSWORD"),
        "{stderr}"
    );
    let (code, _, stderr) = sluice(&[
        "serve",
        "--backend",
        "postgres://x@y",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "serve must not start on an invalid config");
    assert!(stderr.contains("backend.url"), "{stderr}");
}

#[test]
fn check_reports_the_data_api_and_its_keys() {
    let (code, stdout, stderr) = sluice(&[
        "check",
        "--http-listen",
        "127.0.0.1:6081",
        "--api-key",
        "root:k1",
        "--api-key",
        "root:k2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Data API on 127.0.0.1:6081 with 2 key(s)"),
        "{stdout}"
    );
    assert!(!stdout.contains("k1"), "keys are never printed: {stdout}");
    let (code, _, stderr) = sluice(&["check", "--api-key", "nocolon"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--api-key") && stderr.contains("USER:KEY"),
        "{stderr}"
    );
    let (code, _, stderr) = sluice(&["check", "--api-key", "ghost:k"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("http.api_keys[0].user: no user \"ghost\""),
        "{stderr}"
    );
    let (code, _, stderr) = sluice(&["check", "--http-tls-cert", "/nonexistent.pem"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("set both http.tls_cert and http.tls_key"),
        "{stderr}"
    );
}
