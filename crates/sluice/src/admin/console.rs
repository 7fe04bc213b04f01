//! The admin console: a MySQL-protocol listener (like ProxySQL's admin port or PgBouncer's
//! console) where an operator or a script uses the `mariadb` client it already has:
//! `SHOW POOLS`, `SHOW LANES`, `SHOW USERS`, `SHOW CLIENTS`, `SHOW STATS`, `PAUSE`,
//! `RESUME`. The rows are the `/status` snapshot's, so both views always agree.
//!
//! It has its own credentials (`[console]`), is off unless configured, and every resource
//! a peer can hold is bounded: a few sessions at once, a login deadline, small packets, an
//! idle timeout, and a second's delay before a refused password is answered.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_protocol::auth::{self, Credential, NATIVE_PASSWORD};
use sluice_protocol::handshake::{self, Greeting, Login};
use sluice_protocol::response::{encode_eof, encode_ok, ErrFields, OkFields};
use sluice_protocol::stream::PacketStream;
use sluice_protocol::{lenenc, CapabilityFlags, MariadbCapabilities, StatusFlags};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Gateway;

/// Console sessions open at once; more are refused with 1040.
const MAX_SESSIONS: usize = 8;
/// Largest packet a console client may send (statements are short).
const MAX_PACKET: usize = 64 * 1024;
/// A login must complete within this.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A session silent this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a refused password waits for its answer, so guessing is slow.
const REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// utf8mb4_general_ci: the collation of every column and the greeting.
const UTF8MB4: u8 = 45;

/// Who may log in to the console (`[console]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSettings {
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// The one login name it accepts.
    pub user: String,
    /// Its password (never empty: an open console is refused at validation).
    pub credential: Credential,
}

/// What a statement answers.
#[derive(Debug, PartialEq)]
enum Reply {
    /// A result set: column names and rows of text (`None`: SQL NULL).
    Rows(Vec<String>, Vec<Vec<Option<String>>>),
    /// Done, with a message for the client's info line.
    Done(String),
    /// Refused.
    Error(ErrFields),
}

/// Accepts console sessions on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, settings: Arc<ConsoleSettings>) {
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    let mut next_id: u32 = 0;
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        next_id = next_id.wrapping_add(1);
        let id = next_id;
        let (gateway, settings) = (gateway.clone(), settings.clone());
        let seat = sessions.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut stream = PacketStream::new(socket, MAX_PACKET);
            let Ok(_seat) = seat else {
                let err = ErrFields::new(1040, "08004", "Too many console sessions");
                let _ = stream.write_packet(&mut 0, &err.encode()).await;
                return;
            };
            match session(&mut stream, &gateway, &settings, id).await {
                Ok(()) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "console session ended"),
            }
        });
    }
}

/// One console session: login, then statements until the client quits or idles out.
async fn session(
    stream: &mut PacketStream<TcpStream>,
    gateway: &Gateway,
    settings: &ConsoleSettings,
    id: u32,
) -> Result<(), sluice_protocol::ProtocolError> {
    let login = tokio::time::timeout(LOGIN_TIMEOUT, log_in(stream, settings, id)).await;
    let Ok(Some(capabilities)) = login.map_err(|_| ()).and_then(|r| r.map_err(|_| ())) else {
        return Ok(());
    };
    loop {
        let Ok(packet) = tokio::time::timeout(IDLE_TIMEOUT, stream.read_packet()).await else {
            return Ok(());
        };
        let packet = packet?;
        let mut seq = packet.next_seq;
        let reply = match packet.payload.split_first() {
            Some((0x01, _)) | None => return Ok(()), // COM_QUIT
            Some((0x03, sql)) => answer(gateway, &String::from_utf8_lossy(sql)),
            Some((0x0e | 0x02, _)) => Reply::Done(String::new()), // COM_PING, COM_INIT_DB
            Some((command, _)) => Reply::Error(ErrFields::new(
                1047,
                "08S01",
                format!(
                    "the sluice console does not take {}; send statements such as SHOW HELP",
                    sluice_protocol::command::name(*command)
                ),
            )),
        };
        for payload in encode_reply(capabilities, &reply) {
            stream.queue_packet(&mut seq, &payload);
        }
        stream.flush().await?;
    }
}

/// Greets, checks the login against `settings` and answers it. Returns the capabilities the
/// session speaks with, or `None` after refusing.
async fn log_in(
    stream: &mut PacketStream<TcpStream>,
    settings: &ConsoleSettings,
    id: u32,
) -> Result<Option<CapabilityFlags>, sluice_protocol::ProtocolError> {
    let salt = auth::new_salt();
    // CLIENT_LONG_PASSWORD (alias CLIENT_MYSQL): no MariaDB extended capabilities here.
    let offered = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_TRANSACTIONS;
    let greeting = Greeting::for_client(
        "5.5.5-sluice-console",
        id,
        offered,
        MariadbCapabilities::empty(),
        UTF8MB4,
        &salt,
        NATIVE_PASSWORD,
    );
    let mut seq = 0;
    stream.write_packet(&mut seq, &greeting.encode()).await?;
    let packet = stream.read_packet().await?;
    seq = packet.next_seq;
    let Ok(login) = Login::parse(&packet.payload) else {
        let err = ErrFields::new(1047, "08S01", "Bad handshake");
        stream.write_packet(&mut seq, &err.encode()).await?;
        return Ok(None);
    };
    let mut proof = login.auth_response.clone();
    if login
        .auth_plugin
        .as_deref()
        .is_some_and(|p| p != NATIVE_PASSWORD)
    {
        let switch = handshake::encode_auth_switch(NATIVE_PASSWORD, &salt);
        stream.write_packet(&mut seq, &switch).await?;
        let answer = stream.read_packet().await?;
        seq = answer.next_seq;
        proof = answer.payload.to_vec();
    }
    if login.user != settings.user || !settings.credential.verify(&salt, &proof) {
        tracing::warn!(user = %login.user, "console login refused");
        tokio::time::sleep(REFUSAL_DELAY).await;
        let err = ErrFields::new(
            1045,
            "28000",
            format!(
                "Access denied for user '{}' to the sluice console (using password: {})",
                login.user,
                if proof.is_empty() { "NO" } else { "YES" }
            ),
        );
        stream.write_packet(&mut seq, &err.encode()).await?;
        return Ok(None);
    }
    let capabilities = login.capabilities & offered;
    let ok = encode_ok(capabilities, &idle_ok(), "");
    stream.write_packet(&mut seq, &ok).await?;
    Ok(Some(capabilities))
}

fn idle_ok() -> OkFields {
    OkFields {
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        ..OkFields::default()
    }
}

/// What `sql` answers: statements are matched by their words, case-insensitively, with
/// a trailing `;` or `\G` ignored.
fn answer(gateway: &Gateway, sql: &str) -> Reply {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .trim_end_matches("\\G")
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let status = || {
        serde_json::to_value(super::status::snapshot(gateway, gateway.server_limit.get()))
            .unwrap_or(Value::Null)
    };
    match words.as_slice() {
        ["SHOW", "POOLS"] => {
            let status = status();
            let mut pool = status["pool"].clone();
            if let (Some(row), Some(budget)) = (pool.as_object_mut(), status["budget"].as_object())
            {
                row.insert("budget".into(), budget["max_db_connections"].clone());
                row.insert("remaining".into(), budget["remaining"].clone());
                row.insert(
                    "server_max_connections".into(),
                    budget["server_max_connections"].clone(),
                );
            }
            table(&[pool])
        }
        ["SHOW", "LANES" | "QUOTAS"] => table(as_list(&status()["lanes"])),
        ["SHOW", "USERS"] => table(as_list(&status()["users"])),
        ["SHOW", "CLIENTS"] => table(as_list(&status()["clients"]["list"])),
        ["SHOW", "STATS"] => {
            let status = status();
            let mut rows = Vec::new();
            for section in ["counters", "latency"] {
                flatten(section, &status[section], &mut rows);
            }
            Reply::Rows(
                vec!["name".into(), "value".into()],
                rows.into_iter().map(|(k, v)| vec![Some(k), v]).collect(),
            )
        }
        ["PAUSE"] | ["RESUME"] => {
            let paused = words[0] == "PAUSE";
            let was = gateway.pool.set_paused(paused);
            tracing::warn!(
                paused,
                was_paused = was,
                "new borrows {} from the console",
                if paused { "paused" } else { "resumed" }
            );
            Reply::Done(format!(
                "new borrows {} (they were {})",
                if paused { "paused" } else { "resumed" },
                if was { "paused" } else { "running" }
            ))
        }
        ["SHOW", "HELP"] | ["HELP"] => Reply::Rows(
            vec!["command".into(), "what it does".into()],
            HELP.iter()
                .map(|(c, w)| vec![Some((*c).to_owned()), Some((*w).to_owned())])
                .collect(),
        ),
        // What drivers ask or set on connect (`SELECT @@version_comment LIMIT 1`,
        // `SELECT @@max_allowed_packet,@@wait_timeout`, `SET NAMES utf8mb4`).
        ["SELECT", ..] if words.iter().skip(1).any(|w| w.starts_with("@@")) => {
            select_variables(sql)
        }
        ["SET", ..] => Reply::Done(String::new()),
        _ => Reply::Error(ErrFields::new(
            1064,
            "42000",
            format!(
                "the sluice console does not know {:?}; SHOW HELP lists what it does",
                sql.trim()
            ),
        )),
    }
}

/// Answers `SELECT @@a, @@b [LIMIT 1]` with the console's own values of the variables
/// drivers read at connect; 1193 for others, as the server answers an unknown variable.
fn select_variables(sql: &str) -> Reply {
    let list = sql.trim().trim_end_matches(';').trim();
    let list = &list["SELECT".len()..];
    let list = match list.to_ascii_uppercase().rfind("LIMIT") {
        Some(at) => &list[..at],
        None => list,
    };
    let mut columns = Vec::new();
    let mut row = Vec::new();
    for expression in list.split(',').map(str::trim) {
        let name = expression
            .trim_start_matches("@@")
            .to_ascii_lowercase()
            .replace("session.", "")
            .replace("global.", "");
        let value = match name.as_str() {
            "version_comment" => "sluice admin console (SHOW HELP lists the commands)".to_owned(),
            "version" => "5.5.5-sluice-console".to_owned(),
            "max_allowed_packet" => MAX_PACKET.to_string(),
            "wait_timeout" | "interactive_timeout" => IDLE_TIMEOUT.as_secs().to_string(),
            "autocommit" => "1".to_owned(),
            _ => {
                return Reply::Error(ErrFields::new(
                    1193,
                    "HY000",
                    format!("Unknown system variable '{name}' in the sluice console"),
                ))
            }
        };
        columns.push(expression.to_owned());
        row.push(Some(value));
    }
    Reply::Rows(columns, vec![row])
}

/// The console's statements, for `SHOW HELP`.
const HELP: [(&str, &str); 8] = [
    (
        "SHOW POOLS",
        "the budget and the pool: open, idle, borrowed, waiters, paused",
    ),
    (
        "SHOW LANES",
        "per user: connections held, borrowers waiting, quota",
    ),
    (
        "SHOW USERS",
        "per user: clients, database connections, borrows, latency totals",
    ),
    (
        "SHOW CLIENTS",
        "connected clients: id, user, state, pin, idle time",
    ),
    (
        "SHOW STATS",
        "counters and latency totals since start, as name and value",
    ),
    (
        "PAUSE",
        "new borrows wait (up to borrow_timeout) until RESUME",
    ),
    ("RESUME", "new borrows proceed, waiting ones first"),
    ("SHOW HELP", "this list"),
];

fn as_list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// Rows of `objects`, one column per (flattened) field, in the first object's order but
/// with what names a row (`id`, `user`) first.
fn table(objects: &[Value]) -> Reply {
    let flat: Vec<Vec<(String, Option<String>)>> = objects
        .iter()
        .map(|object| {
            let mut fields = Vec::new();
            flatten("", object, &mut fields);
            fields.sort_by_key(|(key, _)| !matches!(key.as_str(), "id" | "user"));
            fields
        })
        .collect();
    let columns: Vec<String> = flat
        .first()
        .map(|fields| fields.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let rows = flat
        .into_iter()
        .map(|fields| fields.into_iter().map(|(_, v)| v).collect())
        .collect();
    Reply::Rows(columns, rows)
}

/// Appends `value`'s leaves under `prefix` (`a.b` for nested fields) as text.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Option<String>)>) {
    match value {
        Value::Object(fields) => {
            for (key, inner) in fields {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, inner, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), None)),
        Value::String(text) => out.push((prefix.to_owned(), Some(text.clone()))),
        other => out.push((prefix.to_owned(), Some(other.to_string()))),
    }
}

/// The packets of `reply` (a text result set without `CLIENT_DEPRECATE_EOF`, which the
/// console does not offer).
fn encode_reply(capabilities: CapabilityFlags, reply: &Reply) -> Vec<Vec<u8>> {
    match reply {
        Reply::Done(info) => vec![encode_ok(capabilities, &idle_ok(), info)],
        Reply::Error(err) => vec![err.encode()],
        Reply::Rows(columns, rows) => {
            let mut packets = Vec::with_capacity(columns.len() + rows.len() + 3);
            let mut count = Vec::new();
            lenenc::put_int(&mut count, columns.len() as u64);
            packets.push(count);
            packets.extend(columns.iter().map(|name| column_definition(name)));
            let eof = encode_eof(capabilities, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            packets.push(eof.clone());
            for row in rows {
                let mut packet = Vec::new();
                for value in row {
                    match value {
                        Some(text) => lenenc::put_bytes(&mut packet, text.as_bytes()),
                        None => packet.push(0xfb),
                    }
                }
                packets.push(packet);
            }
            packets.push(eof);
            packets
        }
    }
}

/// A `ColumnDefinition41` of a text column called `name`.
fn column_definition(name: &str) -> Vec<u8> {
    let mut packet = Vec::new();
    for part in ["def", "", "", "", name, name] {
        lenenc::put_bytes(&mut packet, part.as_bytes());
    }
    packet.push(0x0c);
    packet.extend_from_slice(&u16::from(UTF8MB4).to_le_bytes());
    packet.extend_from_slice(&(1024u32 * 4).to_le_bytes()); // display length
    packet.push(0xfd); // MYSQL_TYPE_VAR_STRING
    packet.extend_from_slice(&0u16.to_le_bytes()); // flags
    packet.push(0); // decimals
    packet.extend_from_slice(&[0, 0]);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_fields_become_dotted_columns_and_nulls_stay_null() {
        let reply = table(&[
            json!({"user": "a", "max": null, "latency": {"count": 2, "sum": 0.5}}),
            json!({"user": "b", "max": 3, "latency": {"count": 0, "sum": 0.0}}),
        ]);
        let Reply::Rows(columns, rows) = reply else {
            panic!("rows expected")
        };
        assert_eq!(columns, ["user", "latency.count", "latency.sum", "max"]);
        assert_eq!(
            rows[0],
            [Some("a".into()), Some("2".into()), Some("0.5".into()), None]
        );
        assert_eq!(rows[1][3], Some("3".into()));
    }

    #[test]
    fn drivers_read_the_variables_they_ask_for_at_connect() {
        let Reply::Rows(columns, rows) =
            select_variables("SELECT @@max_allowed_packet,@@wait_timeout")
        else {
            panic!("rows expected")
        };
        assert_eq!(columns, ["@@max_allowed_packet", "@@wait_timeout"]);
        assert_eq!(rows[0], [Some("65536".into()), Some("600".into())]);
        let Reply::Rows(columns, _) = select_variables("select @@version_comment limit 1") else {
            panic!("rows expected")
        };
        assert_eq!(columns, ["@@version_comment"]);
        assert!(matches!(
            select_variables("SELECT @@sql_mode"),
            Reply::Error(err) if err.code == 1193
        ));
    }

    #[test]
    fn a_result_set_is_count_columns_eof_rows_eof() {
        let reply = Reply::Rows(
            vec!["a".into(), "b".into()],
            vec![vec![Some("x".into()), None]],
        );
        let packets = encode_reply(CapabilityFlags::CLIENT_PROTOCOL_41, &reply);
        assert_eq!(packets.len(), 1 + 2 + 1 + 1 + 1);
        assert_eq!(packets[0], [2]);
        assert_eq!(packets[3][0], 0xfe);
        assert_eq!(packets[4], [1, b'x', 0xfb]);
        assert_eq!(packets[5][0], 0xfe);
    }
}
