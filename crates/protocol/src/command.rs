//! Command bytes (the first payload byte of a client request) that sluice acts on.

/// `COM_QUIT`: the client is leaving; no reply.
pub const QUIT: u8 = 0x01;
/// `COM_INIT_DB`: change the default schema.
pub const INIT_DB: u8 = 0x02;
/// `COM_QUERY`: a text-protocol statement (or several).
pub const QUERY: u8 = 0x03;
/// `COM_FIELD_LIST`: column definitions of a table, ended by EOF.
pub const FIELD_LIST: u8 = 0x04;
/// `COM_STATISTICS`: a single human-readable string packet.
pub const STATISTICS: u8 = 0x09;
/// `COM_PROCESS_KILL`: deprecated kill by id.
pub const PROCESS_KILL: u8 = 0x0c;
/// `COM_PING`: liveness check.
pub const PING: u8 = 0x0e;
/// `COM_CHANGE_USER`: re-authenticate and reset the session.
pub const CHANGE_USER: u8 = 0x11;
/// `COM_BINLOG_DUMP`: replication stream (never proxied).
pub const BINLOG_DUMP: u8 = 0x12;
/// `COM_STMT_PREPARE`: prepare a binary-protocol statement.
pub const STMT_PREPARE: u8 = 0x16;
/// `COM_STMT_EXECUTE`: run a prepared statement.
pub const STMT_EXECUTE: u8 = 0x17;
/// `COM_STMT_SEND_LONG_DATA`: stream a parameter; no reply.
pub const STMT_SEND_LONG_DATA: u8 = 0x18;
/// `COM_STMT_CLOSE`: drop a prepared statement; no reply.
pub const STMT_CLOSE: u8 = 0x19;
/// `COM_STMT_RESET`: clear long data and cursor of a statement.
pub const STMT_RESET: u8 = 0x1a;
/// `COM_SET_OPTION`: toggle multi-statements.
pub const SET_OPTION: u8 = 0x1b;
/// `COM_STMT_FETCH`: read rows from an open cursor.
pub const STMT_FETCH: u8 = 0x1c;
/// `COM_RESET_CONNECTION`: reset session state without re-authenticating.
pub const RESET_CONNECTION: u8 = 0x1f;
/// MariaDB `COM_STMT_BULK_EXECUTE`.
pub const STMT_BULK_EXECUTE: u8 = 0xfa;

/// A readable name for a command byte, used in errors and logs.
pub fn name(command: u8) -> &'static str {
    match command {
        0x00 => "COM_SLEEP",
        QUIT => "COM_QUIT",
        INIT_DB => "COM_INIT_DB",
        QUERY => "COM_QUERY",
        FIELD_LIST => "COM_FIELD_LIST",
        0x05 => "COM_CREATE_DB",
        0x06 => "COM_DROP_DB",
        0x07 => "COM_REFRESH",
        0x08 => "COM_SHUTDOWN",
        STATISTICS => "COM_STATISTICS",
        0x0a => "COM_PROCESS_INFO",
        0x0b => "COM_CONNECT",
        PROCESS_KILL => "COM_PROCESS_KILL",
        0x0d => "COM_DEBUG",
        PING => "COM_PING",
        0x0f => "COM_TIME",
        0x10 => "COM_DELAYED_INSERT",
        CHANGE_USER => "COM_CHANGE_USER",
        BINLOG_DUMP => "COM_BINLOG_DUMP",
        0x13 => "COM_TABLE_DUMP",
        0x14 => "COM_CONNECT_OUT",
        0x15 => "COM_REGISTER_SLAVE",
        STMT_PREPARE => "COM_STMT_PREPARE",
        STMT_EXECUTE => "COM_STMT_EXECUTE",
        STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
        STMT_CLOSE => "COM_STMT_CLOSE",
        STMT_RESET => "COM_STMT_RESET",
        SET_OPTION => "COM_SET_OPTION",
        STMT_FETCH => "COM_STMT_FETCH",
        0x1d => "COM_DAEMON",
        0x1e => "COM_BINLOG_DUMP_GTID",
        RESET_CONNECTION => "COM_RESET_CONNECTION",
        STMT_BULK_EXECUTE => "COM_STMT_BULK_EXECUTE",
        _ => "unknown command",
    }
}
