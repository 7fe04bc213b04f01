//! The ERR packets sluice itself sends to clients, with the codes MySQL clients expect.

use sluice_protocol::command;
use sluice_protocol::response::ErrFields;

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

/// 1040: the client limit is reached.
pub fn too_many_clients(max: usize) -> ErrFields {
    ErrFields::new(
        1040,
        "08004",
        format!("Too many connections: sluice is at max_client_connections ({max}); raise it or close idle clients"),
    )
}

/// No database connection could be had: the pool is exhausted (1040) or the database is
/// unreachable (2003).
pub fn borrow_failed(err: &BorrowError) -> ErrFields {
    match err {
        BorrowError::Exhausted { .. } => ErrFields::new(1040, "08004", err.to_string()),
        BorrowError::Unavailable(e) => ErrFields::new(2003, "HY000", format!("sluice: {e}")),
    }
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

/// 1047: a packet that is not a valid command.
pub fn malformed(what: &str) -> ErrFields {
    ErrFields::new(1047, "08S01", format!("sluice: malformed packet: {what}"))
}

/// 2013: the database connection broke during a command.
pub fn lost_backend(detail: &str) -> ErrFields {
    ErrFields::new(
        2013,
        "HY000",
        format!("Lost connection to the database during query (sluice: {detail}); reconnect to get a new session"),
    )
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
