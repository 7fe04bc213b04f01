//! Client scenarios (`tests/clients/*.json`) run by real drivers, directly against MariaDB
//! and through sluice, whose printed results must be the same line for line.
//!
//! A scenario runs on two fresh clients, `a` and `b`, one step at a time; a step is
//! `[who, sql, mode, params]`, with mode `binary` (server-side prepared statement), `reset`
//! (`COM_RESET_CONNECTION`) or `change_user` (`COM_CHANGE_USER` to the same user and
//! schema). PyMySQL (`scenarios.py`), mysql2 (`scenarios.js`) and mysql_async
//! ([`with_mysql_async`]) print them alike; a driver without a mode prints `unsupported`.

use std::path::PathBuf;

use mysql_async::prelude::*;
use serde_json::Value as Json;

use super::{run_client, TestGateway, TEST_DB};

/// Where the client scripts and scenario files are.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// The scenarios of `spec` (a file in [`clients_dir`]).
pub fn load(spec: &str) -> Json {
    let text = std::fs::read_to_string(clients_dir().join(spec)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs `program script PORT USER PASSWORD DATABASE more...` (`script` in [`clients_dir`])
/// directly and through `gw`; asserts both succeed, and returns both outputs, direct first.
pub async fn outputs_both_ways(
    gw: &TestGateway,
    program: &str,
    script: &str,
    more: &[&str],
) -> [String; 2] {
    let mut outputs = Vec::new();
    for (port, user, password) in gw.both_ways() {
        let mut args = vec![
            clients_dir().join(script).display().to_string(),
            port.to_string(),
            user,
            password,
            TEST_DB.to_owned(),
        ];
        args.extend(more.iter().map(|arg| arg.to_string()));
        let out = run_client(program, &args, None).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} {more:?} failed on port {port}:\n{}\n{}",
            stdout.chars().take(2000).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    let sluice = outputs.pop().unwrap();
    [outputs.pop().unwrap(), sluice]
}

/// Runs `program script PORT USER PASSWORD DATABASE SPEC` directly and through `gw`;
/// asserts both succeed and print the same lines, and returns the output.
pub async fn same_both_ways(gw: &TestGateway, program: &str, script: &str, spec: &str) -> String {
    let [direct, sluice] = outputs_both_ways(gw, program, script, &[spec]).await;
    compare_lines(&format!("{script} {spec}"), &direct, &sluice);
    direct
}

/// Asserts that `sluice` printed what `direct` did, line for line.
pub fn compare_lines(what: &str, direct: &str, sluice: &str) {
    for (want, got) in direct.lines().zip(sluice.lines()) {
        assert_eq!(
            got, want,
            "{what}: differs from MariaDB\n--- directly:\n{direct}\n--- through sluice:\n{sluice}"
        );
    }
    assert_eq!(direct.lines().count(), sluice.lines().count(), "{what}");
}

/// Runs `spec` with mysql_async directly and through `gw`; asserts both print the same
/// lines, and returns sluice's output.
pub async fn mysql_async_both_ways(gw: &TestGateway, spec: &str) -> String {
    let direct = with_mysql_async(gw.direct_opts(), &gw.backend_user, "backend-pw", spec).await;
    let sluice = with_mysql_async(
        gw.opts("app", "secret", Some(TEST_DB)),
        "app",
        "secret",
        spec,
    )
    .await;
    compare_lines("mysql_async", &direct, &sluice);
    sluice
}

/// The scenarios of `spec` with mysql_async as `user`/`password`, printed like the scripts
/// do.
pub async fn with_mysql_async(
    opts: mysql_async::OptsBuilder,
    user: &str,
    password: &str,
    spec: &str,
) -> String {
    let spec = load(spec);
    let metadata = spec["metadata"].as_bool().unwrap_or(false);
    let opts = opts.client_found_rows(false);
    let mut setup = mysql_async::Conn::new(opts.clone()).await.unwrap();
    for sql in spec["setup"].as_array().unwrap() {
        setup.query_drop(sql.as_str().unwrap()).await.unwrap();
    }
    setup.disconnect().await.unwrap();
    let mut out = String::new();
    for scenario in spec["scenarios"].as_array().unwrap() {
        let mut a = mysql_async::Conn::new(opts.clone()).await.unwrap();
        let mut b = mysql_async::Conn::new(opts.clone()).await.unwrap();
        for (index, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
            let who = step[0].as_str().unwrap();
            let sql = step[1].as_str().unwrap();
            let conn = if who == "a" { &mut a } else { &mut b };
            let params: Vec<mysql_async::Value> = step
                .get(3)
                .and_then(Json::as_array)
                .map(|p| p.iter().map(json_value).collect())
                .unwrap_or_default();
            let shown = match step.get(2).and_then(Json::as_str) {
                Some("binary") => {
                    let params = if params.is_empty() {
                        mysql_async::Params::Empty
                    } else {
                        mysql_async::Params::Positional(params)
                    };
                    shown(conn.exec_iter(sql, params).await, metadata).await
                }
                Some("reset") => {
                    conn.reset().await.unwrap();
                    "reset".to_owned()
                }
                Some("change_user") => {
                    let change = mysql_async::ChangeUserOpts::default()
                        .with_user(Some(user.to_owned()))
                        .with_pass(Some(password.to_owned()))
                        .with_db_name(Some(TEST_DB.to_owned()));
                    conn.change_user(change).await.unwrap();
                    "changed user".to_owned()
                }
                _ => shown(conn.query_iter(sql).await, metadata).await,
            };
            out.push_str(&format!(
                "{} #{index} {who}: {shown}\n",
                scenario["name"].as_str().unwrap()
            ));
        }
        a.disconnect().await.unwrap();
        b.disconnect().await.unwrap();
    }
    out
}

/// A scenario's parameter as a driver value.
fn json_value(value: &Json) -> mysql_async::Value {
    match value {
        Json::Null => mysql_async::Value::NULL,
        Json::Number(n) => n
            .as_i64()
            .map(mysql_async::Value::Int)
            .unwrap_or_else(|| mysql_async::Value::Double(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => mysql_async::Value::Bytes(s.clone().into_bytes()),
        other => mysql_async::Value::Bytes(other.to_string().into_bytes()),
    }
}

/// Every result set of a reply as `(v, ...) (v, ...)` (after its column definitions when
/// `metadata`), joined by ` ;; `, or the error.
async fn shown<P: Protocol>(
    result: mysql_async::Result<mysql_async::QueryResult<'_, 'static, P>>,
    metadata: bool,
) -> String {
    let mut result = match result {
        Ok(result) => result,
        Err(e) => return error_line(&e),
    };
    let mut sets = Vec::new();
    loop {
        let head = match result.columns_ref() {
            columns if metadata && !columns.is_empty() => {
                let defs: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{}/{}/{}/{}/{}",
                            c.name_str(),
                            c.column_type() as u8,
                            c.character_set(),
                            c.column_length(),
                            c.decimals(),
                            c.flags().bits()
                        )
                    })
                    .collect();
                format!("[{}] ", defs.join(" "))
            }
            _ => String::new(),
        };
        match result.collect::<mysql_async::Row>().await {
            Ok(rows) => sets.push(
                head + &rows
                    .into_iter()
                    .map(|row| {
                        let values: Vec<String> = row
                            .unwrap()
                            .into_iter()
                            .map(|v| match v {
                                mysql_async::Value::NULL => "NULL".to_owned(),
                                mysql_async::Value::Bytes(b) => {
                                    String::from_utf8_lossy(&b).into_owned()
                                }
                                mysql_async::Value::Int(i) => i.to_string(),
                                mysql_async::Value::UInt(u) => u.to_string(),
                                other => other.as_sql(true),
                            })
                            .collect();
                        format!("({})", values.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Err(e) => return error_line(&e),
        }
        if result.is_empty() {
            return sets.join(" ;; ");
        }
    }
}

fn error_line(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("error {}: {}", s.code, s.message),
        other => panic!("not a server error: {other}"),
    }
}
