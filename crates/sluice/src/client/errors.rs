//! The ERR packets sluice itself sends to clients, with the codes MySQL clients expect.
//!
//! Every code is one a server sends (never the 2xxx client-side codes, which Connector/C
//! reports as a malformed packet), and no message carries internal detail such as the
//! database's address or Rust error text: that goes to the log.

use sluice_protocol::command;
use sluice_protocol::response::ErrFields;

use crate::backend::BackendError;
use crate::pool::BorrowError;

/// 1045: wrong user or password.
pub fn access_denied(user: &str, host: &str, used_password: bool) -> ErrFields {
    ErrFields::new(
        1045,
        "28000",
        format!(
            "Access denied for user '{user}'@'{host}' (using password: {})",
            if used_password { "YES" } else { "NO" }
        ),
    )
}

/// 1045: a plaintext login of a user whose `tls_mode` (its own, or the global one) is
/// `require`; the message says what to change on either side.
pub fn tls_required(user: &str, host: &str) -> ErrFields {
    ErrFields::new(
        1045,
        "28000",
        format!(
            "Access denied for user '{user}'@'{host}': sluice requires TLS for this user (tls_mode = \"require\"); connect with TLS/SSL enabled"
        ),
    )
}

/// 1040 (08004, "retry later"): the auth query could not check the password (the database
/// is unreachable, or the auth account lacks its grant; the cause is in sluice's log).
pub fn auth_unavailable() -> ErrFields {
    ErrFields::new(
        1040,
        "08004",
        "Too many connections: sluice cannot check passwords against the database right now; try again later",
    )
}

/// 1040: the client limit is reached.
pub fn too_many_clients(max: usize) -> ErrFields {
    ErrFields::new(
        1040,
        "08004",
        format!("Too many connections: sluice is at max_client_connections ({max}); raise it or close idle clients"),
    )
}

/// 1203, the server's code for an account over its `max_user_connections`: the user
/// already has its `[[users]] max_client_connections` clients connected.
pub fn too_many_user_clients(user: &str, max: usize) -> ErrFields {
    ErrFields::new(
        1203,
        "42000",
        format!(
            "User {user} already has more than 'max_client_connections' active connections ({max})"
        ),
    )
}

/// No database connection could be had (1040, 08004: drivers treat it as "retry later"):
/// the pool stayed exhausted, or the database cannot be reached.
pub fn borrow_failed(err: &BorrowError) -> ErrFields {
    match err {
        BorrowError::Exhausted { .. } | BorrowError::Paused { .. } => {
            ErrFields::new(1040, "08004", err.to_string())
        }
        // The server's code for an account over its own connection limit.
        BorrowError::UserCeiling { user, max, .. } => ErrFields::new(
            1226,
            "42000",
            format!("User '{user}' has exceeded the 'max_db_connections_per_user' resource (current value: {max})"),
        ),
        BorrowError::AppCeiling { user, max, .. } => ErrFields::new(
            1226,
            "42000",
            format!("User '{user}' has exceeded the 'max_connections' resource (current value: {max}): all of its database connections stayed in use"),
        ),
        BorrowError::Unavailable(BackendError::Refused(refused)) => ErrFields::new(
            1040,
            "08004",
            format!(
                "Too many connections: sluice cannot open a database connection (the database refused it with error {}); try again later",
                refused.code
            ),
        ),
        BorrowError::Unavailable(_) => ErrFields::new(
            1040,
            "08004",
            "Too many connections: sluice cannot reach the database right now; try again later",
        ),
    }
}

/// 1226: the user ran more statements per second than `max_statements_per_second` allows;
/// the server's code for an account over one of its resource limits. The session goes on.
pub fn rate_limited(user: &str, per_second: u32) -> ErrFields {
    ErrFields::new(
        1226,
        "42000",
        format!(
            "User '{user}' has exceeded the 'max_statements_per_second' resource \
             (current value: {per_second}); retry shortly"
        ),
    )
}

/// 1047: a command sluice does not proxy.
pub fn unsupported_command(command_byte: u8) -> ErrFields {
    ErrFields::new(
        1047,
        "08S01",
        format!(
            "sluice does not support {} (0x{command_byte:02x}) through the gateway",
            command::name(command_byte)
        ),
    )
}

/// 1153: the client sent a packet over `max_packet_size`.
pub fn packet_too_large(limit: usize) -> ErrFields {
    ErrFields::new(
        1153,
        "08S01",
        format!("Got a packet bigger than 'max_allowed_packet' bytes (sluice max_packet_size = {limit})"),
    )
}

/// 1153: a packet over the pre-authentication limit.
pub fn login_packet_too_large(limit: usize) -> ErrFields {
    ErrFields::new(
        1153,
        "08S01",
        format!("Got a packet bigger than 'max_allowed_packet' bytes (sluice accepts at most {limit} bytes before a client has logged in)"),
    )
}

/// 1159: the client did not finish logging in within `login_timeout`.
pub fn login_timeout(limit: std::time::Duration) -> ErrFields {
    ErrFields::new(
        1159,
        "08S01",
        format!("Got timeout reading communication packets: the login did not complete within sluice's login_timeout ({limit:?})"),
    )
}

/// 1040: the login was dropped to make room for newer ones at `max_pending_logins`.
pub fn login_evicted(max: usize) -> ErrFields {
    ErrFields::new(
        1040,
        "08004",
        format!("Too many connections: more than {max} clients were logging in at once (sluice max_pending_logins); this one took longest and was dropped"),
    )
}

/// 1053: sluice is shutting down; the client should reconnect (to another instance).
pub fn shutting_down() -> ErrFields {
    ErrFields::new(1053, "08S01", "Server shutdown in progress")
}

/// 1835: a command packet too short to be what it says, as the server answers it (the
/// session goes on).
pub fn malformed_packet() -> ErrFields {
    ErrFields::new(1835, "HY000", "Malformed communication packet")
}

/// 1295: a bulk execute from a client that did not negotiate it (or its per-row results), as
/// the server answers it.
pub fn unsupported_ps() -> ErrFields {
    ErrFields::new(
        1295,
        "HY000",
        "This command is not supported in the prepared statement protocol yet",
    )
}

/// 1210: an execute without the parameters its statement needs, as the server answers it.
pub fn wrong_execute_arguments() -> ErrFields {
    ErrFields::new(1210, "HY000", "Incorrect arguments to mysqld_stmt_execute")
}

/// 1047: a packet that is not a valid command.
pub fn malformed(what: &str) -> ErrFields {
    ErrFields::new(1047, "08S01", format!("sluice: malformed packet: {what}"))
}

/// The database connection broke during a command (1158, 08S01: a communication failure;
/// 1159 when it stopped answering): the session is gone with it.
pub fn lost_backend(err: &BackendError) -> ErrFields {
    if err.is_stall() {
        ErrFields::new(
            1159,
            "08S01",
            "Got timeout reading communication packets: the database stopped answering; sluice closed the connection, reconnect to get a new session",
        )
    } else {
        ErrFields::new(
            1158,
            "08S01",
            "Got an error reading communication packets: the database connection was lost during the command; reconnect to get a new session",
        )
    }
}

/// 4031: the client idled past `idle_client_timeout` (MySQL 8 uses this code for the same).
pub fn idle_client(limit: std::time::Duration) -> ErrFields {
    ErrFields::new(
        4031,
        "HY000",
        format!("The client was disconnected by sluice because of inactivity (idle_client_timeout = {limit:?})"),
    )
}

/// 4031: the client idled inside a transaction (or with a cursor open) past
/// `idle_transaction_timeout`.
pub fn idle_transaction(limit: std::time::Duration) -> ErrFields {
    ErrFields::new(
        4031,
        "HY000",
        format!(
            "sluice rolled back this connection's transaction (and closed its cursors) after it \
             was idle for {limit:?} (idle_transaction_timeout) and closed the connection; \
             reconnect and retry the transaction"
        ),
    )
}

/// 1243: a statement id the client never prepared (or already closed).
pub fn unknown_statement(id: u32, command_byte: u8) -> ErrFields {
    let function = match command_byte {
        command::STMT_FETCH => "mysqld_stmt_fetch",
        command::STMT_RESET => "mysqld_stmt_reset",
        _ => "mysqld_stmt_execute",
    };
    ErrFields::new(
        1243,
        "HY000",
        format!("Unknown prepared statement handler ({id}) given to {function}"),
    )
}

/// 1421: `COM_STMT_FETCH` on a statement without an open cursor.
pub fn no_open_cursor(id: u32) -> ErrFields {
    ErrFields::new(
        1421,
        "HY000",
        format!("The statement ({id}) has no open cursor"),
    )
}

/// 1461: the client holds as many prepared statements as sluice allows one client.
pub fn too_many_statements(max: usize) -> ErrFields {
    ErrFields::new(
        1461,
        "42000",
        format!("Can't create more than max_prepared_stmt_count statements (current value: {max}); sluice allows one client {max} open statements, close the ones you no longer use"),
    )
}

/// A `KILL` sluice will not send to the server (1235, as for a feature not supported).
pub fn kill_refused(why: &str) -> ErrFields {
    ErrFields::new(
        1235,
        "42000",
        format!("sluice does not run {why}: send KILL <id> or KILL QUERY <id> as a statement of its own"),
    )
}

/// `KILL QUERY ID n`: query ids belong to the server, and clients of sluice see none.
pub fn unknown_query_id(id: u64) -> ErrFields {
    ErrFields::new(1957, "HY000", format!("Unknown query id: {id}"))
}

/// `KILL USER` of another user's clients.
pub fn not_owner(user: &str) -> ErrFields {
    ErrFields::new(
        1095,
        "HY000",
        format!("You are not owner of the connections of user {user}"),
    )
}

/// A prepared statement sluice will not prepare (1295, as MariaDB says of commands the
/// binary protocol does not run).
pub fn not_preparable(why: &str) -> ErrFields {
    ErrFields::new(
        1295,
        "HY000",
        format!("This command is not supported in the prepared statement protocol through sluice: {why}"),
    )
}
