//! One authenticated connection from sluice to the database.
//!
//! The pool owns these; a client session borrows one and forwards its commands through
//! [`BackendConn::stream`]. The methods here are the few commands sluice sends on its own
//! behalf: ping, reset, change of schema, re-authentication to wipe a session clean, and its
//! own queries (text, or prepared with bound values for the auth query).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_common::io::ParseBuf;
use mysql_common::packets::{Column, ComStmtExecuteRequestBuilder};
use mysql_common::proto::{Binary, MyDeserialize, MySerialize};
use mysql_common::row::RowDeserializer;
use mysql_common::value::ServerSide;
use mysql_common::Value;
use sluice_protocol::auth::{self, CACHING_SHA2_PASSWORD, NATIVE_PASSWORD};
use sluice_protocol::compress::{Compressed, Side};
use sluice_protocol::handshake::{self, Greeting};
use sluice_protocol::packet::{FrameHeader, MAX_FRAME_PAYLOAD};
use sluice_protocol::prepared::{self, PrepareOk};
use sluice_protocol::reply::{ReplyShape, ReplyTracker, Step};
use sluice_protocol::response::{self, ErrFields, OkFields};
use sluice_protocol::stall::Stall;
use sluice_protocol::stream::PacketStream;
use sluice_protocol::{command, lenenc, CapabilityFlags, MariadbCapabilities, ProtocolError};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::tls::Socket;

use crate::config::{BackendSecret, BackendTarget};
use crate::diagnostics::{Diagnostics, Owner, CLEAR_DIAGNOSTICS};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::statements::{BackendStatements, StatementKey};

/// Capabilities sluice always asks of the database.
const BASE_CAPABILITIES: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits()
        | CapabilityFlags::CLIENT_CONNECT_ATTRS.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_LOCAL_FILES.bits()
        | CapabilityFlags::CLIENT_SESSION_TRACK.bits(),
);

/// TCP keepalive on database sockets: an idle pooled connection whose database vanished
/// without a word (a host gone, a NAT entry expired) is found dead within about a minute
/// and a half instead of at its next use.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Between keepalive probes, and how many unanswered ones close the socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// A database connection's packets: compressed once its login asked for it (`[backend]
/// compress` and a server that offers `CLIENT_COMPRESS`), over a socket, plain or TLS, whose
/// reads and writes fail once they stall (`backend.stall_timeout`).
pub type BackendStream = PacketStream<Stall<Compressed<Socket>>>;

/// Set once a server without `CLIENT_COMPRESS` was met under `[backend] compress`: the
/// warning is logged once, not at every connection the pool opens.
static NO_COMPRESSION_WARNED: AtomicBool = AtomicBool::new(false);

/// COM_QUIT as a whole packet (length 1, sequence id 0): the goodbye that lets the server
/// close the session cleanly instead of logging an aborted connection.
const QUIT_PACKET: [u8; 5] = [1, 0, 0, 0, command::QUIT];

/// Turns on the session-state tracking sluice relies on to carry a client's session from
/// one connection to another: every system variable, the schema, and any other change.
const ENABLE_TRACKING: &str = "SET SESSION session_track_system_variables = '*', \
     session_track_schema = ON, session_track_state_change = ON";

/// Client capabilities that change what the server sends and cannot change after login, so
/// a backend connection must be opened with the same choice of them as the client it
/// serves (they key the pool): `CLIENT_DEPRECATE_EOF` changes how replies are framed,
/// `CLIENT_FOUND_ROWS` what `UPDATE` reports as affected rows, `CLIENT_PS_MULTI_RESULTS`
/// whether a `CALL` through the binary protocol answers its OUT and INOUT parameters as
/// one more result set (`SERVER_PS_OUT_PARAMS`, which a driver that did not ask for it
/// takes for an ordinary one), `CLIENT_IGNORE_SPACE` how
/// the server parses function names (its `sql_mode` flag, which a login sets and a `SET`
/// could undo, so it is kept apart rather than carried). Everything else a client's login
/// chooses is carried as session state: its collation by `SET NAMES` (see
/// [`BackendConn::adopt_session`]), multi-statements by `COM_SET_OPTION`; and
/// `CLIENT_LOCAL_FILES` is always asked of the database, sluice refusing `LOCAL INFILE`
/// itself for clients that did not offer it.
pub const FLAVOR_CAPABILITIES: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_FOUND_ROWS.bits()
        | CapabilityFlags::CLIENT_IGNORE_SPACE.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_DEPRECATE_EOF.bits(),
);

/// MariaDB's extended capabilities that change what replies look like, so a connection
/// serves only clients that negotiated the same: extended metadata adds the data type name
/// (`json`, `point`, ...) to column definitions, which drivers use to type JSON columns.
pub const FLAVOR_MARIADB_CAPABILITIES: MariadbCapabilities =
    MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;

/// MariaDB's bulk capabilities: `COM_STMT_BULK_EXECUTE` (many parameter sets in one
/// command, which drivers' batch calls use when the server offers it) and its per-row
/// results. They change nothing but the answer to that command and its flags, which sluice
/// refuses itself for a client that did not negotiate them (as the server would), so every
/// database connection asks for them and they do not key the pool.
pub const BULK_MARIADB_CAPABILITIES: MariadbCapabilities = MariadbCapabilities::from_bits_truncate(
    MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS.bits()
        | MariadbCapabilities::MARIADB_CLIENT_BULK_UNIT_RESULTS.bits(),
);

/// MariaDB's extended capabilities sluice offers clients (those the server offers too).
pub const OFFERED_MARIADB_CAPABILITIES: MariadbCapabilities =
    MariadbCapabilities::from_bits_truncate(
        FLAVOR_MARIADB_CAPABILITIES.bits() | BULK_MARIADB_CAPABILITIES.bits(),
    );

/// How a client logged in, as far as its database connection is concerned: the
/// capabilities that key the pool, and the login collation its session starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flavor {
    /// The client's capabilities, masked to [`FLAVOR_CAPABILITIES`] (for sluice's own
    /// client connections, any capabilities to ask for besides sluice's base ones).
    pub capabilities: CapabilityFlags,
    /// The MariaDB extended capabilities to ask for: a client's, masked to
    /// [`FLAVOR_MARIADB_CAPABILITIES`], and [`BULK_MARIADB_CAPABILITIES`], which every
    /// connection sluice opens asks for.
    pub mariadb: MariadbCapabilities,
    /// The connection collation id from the client's login. On a pooled connection: that
    /// of the client it serves now (or served last), whose session it was adopted to.
    pub collation: u8,
}

impl Flavor {
    /// The flavor of connections sluice opens for itself (probe, side connections for KILL,
    /// the burst simulator, the Data API): modern EOF handling, OUT parameters of binary
    /// `CALL`s, utf8mb4_general_ci, and the bulk capabilities, so a connection it opens can
    /// serve a client later.
    pub const INTERNAL: Flavor = Flavor {
        capabilities: CapabilityFlags::from_bits_truncate(
            CapabilityFlags::CLIENT_DEPRECATE_EOF.bits()
                | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits(),
        ),
        mariadb: BULK_MARIADB_CAPABILITIES,
        collation: 45,
    };

    /// The flavor matching a client that logged in with `capabilities`, MariaDB's extended
    /// `mariadb` capabilities and `collation`.
    pub fn of_client(
        capabilities: CapabilityFlags,
        mariadb: MariadbCapabilities,
        collation: u8,
    ) -> Flavor {
        Flavor {
            capabilities: capabilities & FLAVOR_CAPABILITIES,
            mariadb: mariadb & FLAVOR_MARIADB_CAPABILITIES | BULK_MARIADB_CAPABILITIES,
            collation,
        }
    }

    /// Whether a connection of this flavor can serve a client of flavor `other`: the same
    /// capabilities (the collation is carried).
    pub fn serves(&self, other: &Flavor) -> bool {
        self.capabilities & FLAVOR_CAPABILITIES == other.capabilities & FLAVOR_CAPABILITIES
            && self.mariadb == other.mariadb
    }

    /// Whether replies end result sets with OK instead of EOF packets.
    pub fn deprecate_eof(&self) -> bool {
        self.capabilities
            .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }
}

/// Why talking to the database failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect did not succeed.
    #[error("cannot connect to the database at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The database answered too slowly.
    #[error("the database at {0} did not answer within the connect timeout")]
    Timeout(String),
    /// An open connection moved no byte for `backend.stall_timeout` while sluice waited on
    /// it. The message names no address: it may be shown to clients.
    #[error("the database connection stalled: no data moved for backend.stall_timeout")]
    Stalled,
    /// The connection broke or the database sent something unexpected.
    #[error("database connection failed: {0}")]
    Protocol(ProtocolError),
    /// The database refused sluice's credentials or a command with an ERR packet.
    #[error("the database refused: {0}")]
    Refused(ErrFields),
    /// The database asked for an authentication method sluice cannot perform.
    #[error("the database asked for authentication plugin {0}, which sluice does not support")]
    UnsupportedAuth(String),
    /// TLS toward the database could not be set up as `[backend] tls` demands (the server
    /// lacks it, or its certificate failed the check).
    #[error("TLS toward the database failed: {0}")]
    Tls(String),
}

impl From<ProtocolError> for BackendError {
    fn from(error: ProtocolError) -> Self {
        if error.is_stall() {
            BackendError::Stalled
        } else {
            BackendError::Protocol(error)
        }
    }
}

impl BackendError {
    /// True when retrying later may succeed (the database is down or restarting), false
    /// when the database actively refused (bad credentials, unknown database).
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Connect { .. } | BackendError::Timeout(_) | BackendError::Stalled => true,
            BackendError::Protocol(_) => true,
            // 1040 too many connections, 1053 server shutdown, 1129/1130 host blocked.
            BackendError::Refused(err) => matches!(err.code, 1040 | 1053 | 1203),
            BackendError::UnsupportedAuth(_) | BackendError::Tls(_) => false,
        }
    }

    /// True when the database stopped answering (a timed-out read or write), as opposed to
    /// a connection that broke; clients are told with a different code.
    pub fn is_stall(&self) -> bool {
        matches!(self, BackendError::Timeout(_) | BackendError::Stalled)
    }
}

/// A system variable's value as SQL: numbers as they are, anything else quoted. The server
/// reports a NULL `character_set_results` as an empty value.
fn sql_value(name: &str, value: &str) -> String {
    if value.is_empty() && name == "character_set_results" {
        "NULL".to_owned()
    } else if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    }
}

/// The character-set variables, in the order they must be set (the connection's character
/// set resets its collation).
pub const CHARSET_VARIABLES: [&str; 4] = [
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// Not a server variable, but kept among a session's variables: the collation that
/// `character_set_results` carries inside the server, which no variable shows and result
/// column definitions do (their character set number). It is the login's collation, or
/// that of the last `SET NAMES`; empty (the character set's default) once
/// `character_set_results` is set on its own. Only `SET NAMES ... COLLATE` can restore it.
pub const NAMES_COLLATION: &str = "sluice.names_collation";

/// Character sets the server takes for the results but refuses as a client's, so as the
/// character set of `SET NAMES` (ERR 1231).
const RESULTS_ONLY_CHARSETS: [&str; 4] = ["ucs2", "utf16", "utf16le", "utf32"];

/// Whether collation `collation` (as SQL, perhaps quoted) belongs to character set
/// `charset` (as SQL).
fn collation_of(collation: &str, charset: &str) -> bool {
    collation
        .trim_matches('\'')
        .strip_prefix(charset.trim_matches('\''))
        .is_some_and(|rest| rest.starts_with('_'))
}

/// The `SET` that takes variables `names` from the values `from` gives to those `to` gives
/// (both as SQL), or `None` when nothing differs. Character sets are set together, first
/// as `SET NAMES cs COLLATE coll` for the results' character set: only that form sets the
/// collation the results carry ([`NAMES_COLLATION`], which result column definitions show;
/// the client's character set gets it too, which MariaDB uses for parameters of prepared
/// statements), as the client's own login or `SET NAMES` did; the client's character set
/// and the connection's collation follow where they differ.
fn change_statement(
    names: &std::collections::BTreeSet<&str>,
    from: impl Fn(&str) -> String,
    to: impl Fn(&str) -> String,
) -> Option<String> {
    let mut items = Vec::new();
    let charset_changes = CHARSET_VARIABLES
        .iter()
        .chain([&NAMES_COLLATION])
        .any(|name| names.contains(name) && from(name) != to(name));
    if charset_changes {
        let [client, connection, results, collation] = CHARSET_VARIABLES.map(&to);
        let carried = to(NAMES_COLLATION);
        let results_only = RESULTS_ONLY_CHARSETS
            .iter()
            .any(|cs| results.trim_matches('\'').eq_ignore_ascii_case(cs));
        if results != "DEFAULT" && results != "NULL" && !results_only {
            // SET NAMES gives all three the collation the results carry: the one kept for
            // them, else (one character set for all) the connection's.
            let names_collation = if collation_of(&carried, &results) {
                Some(carried)
            } else if client == results
                && client == connection
                && collation_of(&collation, &results)
            {
                Some(collation.clone())
            } else {
                None
            };
            match &names_collation {
                Some(names_collation) => {
                    items.push(format!("NAMES {results} COLLATE {names_collation}"))
                }
                // A collation of another character set (the login's, say) cannot go with it.
                None => items.push(format!("NAMES {results}")),
            }
            if client != results {
                items.push(format!("@@session.character_set_client = {client}"));
            }
            let follows = results == connection
                && names_collation
                    .is_some_and(|c| c.trim_matches('\'') == collation.trim_matches('\''));
            if !follows && collation_of(&collation, &connection) {
                // Setting the collation sets the connection's character set with it.
                items.push(format!("@@session.collation_connection = {collation}"));
            } else if !follows {
                items.push(format!("@@session.character_set_connection = {connection}"));
            }
        } else {
            for (name, value) in CHARSET_VARIABLES
                .iter()
                .zip([client, connection, results, collation])
            {
                items.push(format!("@@session.{name} = {value}"));
            }
        }
    }
    for name in names
        .iter()
        .filter(|n| !CHARSET_VARIABLES.contains(n) && **n != NAMES_COLLATION)
    {
        let value = to(name);
        if from(name) != value {
            items.push(format!("@@session.{name} = {value}"));
        }
    }
    (!items.is_empty()).then(|| format!("SET {}", items.join(", ")))
}

/// A variable's value as SQL in a session whose set variables are `vars` and whose login
/// gave `login`: its own, or the login's, or `DEFAULT`.
fn value_in(
    vars: &BTreeMap<String, String>,
    login: &BTreeMap<String, String>,
    name: &str,
) -> String {
    match vars.get(name).or_else(|| login.get(name)) {
        Some(value) => sql_value(name, value),
        None => "DEFAULT".to_owned(),
    }
}

/// The first value of the first row of `rows`, parsed (sluice's one-value queries).
pub fn first_value<T: std::str::FromStr>(rows: &[Vec<Option<String>>]) -> Option<T> {
    rows.first()?.first()?.as_deref()?.parse().ok()
}

/// How a result set's rows are encoded.
#[derive(Debug, Clone, Copy)]
enum RowFormat {
    /// `COM_QUERY`: every value as length-encoded text.
    Text,
    /// `COM_STMT_EXECUTE`: a NULL bitmap, then values encoded by their column types.
    Binary,
}

/// Reads a column definition packet.
fn parse_column(payload: &[u8]) -> Result<Column, ProtocolError> {
    Column::deserialize((), &mut ParseBuf(payload))
        .map_err(|_| ProtocolError::Malformed("bad column definition"))
}

/// Splits a binary-protocol row into its values, as text.
fn parse_binary_row(
    columns: &Arc<[Column]>,
    payload: &[u8],
) -> Result<Vec<Option<String>>, ProtocolError> {
    let row =
        RowDeserializer::<ServerSide, Binary>::deserialize(columns.clone(), &mut ParseBuf(payload))
            .map_err(|_| ProtocolError::Malformed("bad binary row"))?;
    Ok(row
        .into_inner()
        .unwrap_raw()
        .into_iter()
        .map(|value| match value {
            None | Some(Value::NULL) => None,
            Some(Value::Bytes(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Some(other) => Some(other.as_sql(true)),
        })
        .collect())
}

/// Splits a text-protocol row into its values.
fn parse_text_row(mut payload: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut values = Vec::new();
    while let Some(&first) = payload.first() {
        if first == 0xfb {
            values.push(None);
            payload = &payload[1..];
        } else {
            let (value, rest) = lenenc::read_bytes(payload)?;
            values.push(Some(String::from_utf8_lossy(value).into_owned()));
            payload = rest;
        }
    }
    Ok(values)
}

/// What a login with one collation gives a session: its character-set variables
/// (`character_set_client`, `_connection`, `_results`, `collation_connection`), as the
/// server set them. A variable a client never set has its login's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCharset {
    /// The login's collation id.
    pub collation: u8,
    /// The variables it set, by name; shared, since every borrow hands them to the
    /// connection it lends.
    pub vars: Arc<BTreeMap<String, String>>,
}

/// What the server said about itself when sluice connected.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Version string, passed on to clients so they detect MariaDB vs MySQL correctly.
    pub version: String,
    /// Capabilities the server offers.
    pub capabilities: CapabilityFlags,
    /// MariaDB's extended capabilities the server offers.
    pub mariadb_capabilities: MariadbCapabilities,
    /// The server's default collation id.
    pub collation: u8,
    /// A new session's `session_track_schema`, `session_track_state_change` and
    /// `session_track_system_variables`, which clients see as their defaults.
    pub tracking_defaults: [String; 3],
}

/// Reads, right after login, what a session starts with: the tracking defaults clients
/// should see, and the character-set variables the login's collation chose.
const LOGIN_STATE: &str = "SELECT @@session_track_schema, @@session_track_state_change, \
     @@session_track_system_variables, @@character_set_client, @@character_set_connection, \
     @@character_set_results, @@collation_connection";

/// The variables [`LOGIN_STATE`] reads after the tracking ones, in order.
const LOGIN_VARIABLES: [&str; 4] = [
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// An open, authenticated database connection.
pub struct BackendConn {
    /// The packet stream; sessions forward client commands through it. Its reads and
    /// writes fail once they wait `backend.stall_timeout` without progress.
    pub stream: BackendStream,
    /// The client-visible choices this connection was opened with.
    pub flavor: Flavor,
    /// The database user it is logged in as: it serves only clients of that identity.
    pub user: String,
    /// What it logged in with: it serves only clients that proved the same, so a client
    /// whose password the database would refuse (another `user@host` account's, an old
    /// one) cannot borrow a connection another client's login opened.
    pub secret: BackendSecret,
    /// The database's id for this connection (its `CONNECTION_ID()`).
    pub thread_id: u32,
    /// Greeting facts, shared with the pool so clients see the real server version.
    pub server: ServerInfo,
    /// The schema in use, when sluice knows it (after a client session it does not).
    pub schema: Option<Option<String>>,
    /// System variables set on this connection (by any client), as the server reported them.
    pub vars: BTreeMap<String, String>,
    /// The character-set variables the login of the client it serves (`flavor.collation`)
    /// gives: what a variable some client set returns to for a client that never set it
    /// (not the server's global default).
    pub login_vars: Arc<BTreeMap<String, String>>,
    /// What COM_RESET_CONNECTION returns the character sets to: the server's own login
    /// state of this connection (its handshake or last COM_CHANGE_USER).
    reset_login: LoginCharset,
    /// Statements prepared on this connection, by what they are.
    pub statements: BackendStatements,
    /// Whether `;`-separated statements are accepted now (`COM_SET_OPTION` changes it), when
    /// sluice knows.
    pub multi_statements: Option<bool>,
    /// The client session whose `LAST_INSERT_ID()` the server holds on this connection
    /// (`None`: nobody's).
    pub last_insert_id_of: Option<Owner>,
    /// Whose warnings and errors the server's diagnostics area may hold.
    pub diagnostics: Diagnostics,
    /// A goodbye went out already ([`BackendConn::quit`]); `Drop` sends none.
    quit_sent: bool,
    nonce: Vec<u8>,
    created: Instant,
    last_used: Instant,
}

/// ER_MAX_PREPARED_STMT_COUNT_REACHED: the server holds `max_prepared_stmt_count` statements.
const MAX_PREPARED_STMT_COUNT_REACHED: u16 = 1461;

/// How a connection keeps the statements it prepares: how many, and what gives way when the
/// server refuses a prepare at its `max_prepared_stmt_count`, which counts the copies kept
/// on every connection for other clients.
pub struct Keeping<'a> {
    /// Most copies one connection keeps (`pool.max_prepared_statements`).
    pub capacity: usize,
    /// Where prepares, re-prepares and evictions are counted.
    pub metrics: &'a Metrics,
    /// Whose idle connections may be borrowed to close the copies they keep.
    pub pool: &'a Pool,
    /// Statements the client on this connection still holds: never closed to make room
    /// (its next execute would have to prepare again, and an open cursor would be lost).
    pub spare: &'a (dyn Fn(&StatementKey) -> bool + Sync),
}

impl Keeping<'_> {
    /// Spares nothing: sluice's own statements (auth query, Data API) hold none open.
    pub fn spare_none(_: &StatementKey) -> bool {
        false
    }
}

/// The result of a command that answers with a single OK or ERR packet.
pub type SimpleReply = Result<OkFields, ErrFields>;

/// A statement the server just prepared, with its parameter and column definitions.
#[derive(Debug)]
pub struct Prepared {
    /// The server's answer: id, counts, warnings.
    pub ok: PrepareOk,
    /// One packet per parameter.
    pub param_defs: Vec<Vec<u8>>,
    /// One packet per result column.
    pub column_defs: Vec<Vec<u8>>,
}

impl BackendConn {
    /// Opens and authenticates a connection with `flavor`, within `timeout`.
    pub async fn connect(
        target: &BackendTarget,
        flavor: Flavor,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let addr = target.address();
        tokio::time::timeout(timeout, Self::connect_inner(target, flavor))
            .await
            .map_err(|_| BackendError::Timeout(addr))?
    }

    async fn connect_inner(
        target: &BackendTarget,
        flavor: Flavor,
    ) -> Result<BackendConn, BackendError> {
        let addr = target.address();
        let socket = TcpStream::connect(&addr)
            .await
            .map_err(|source| BackendError::Connect { addr, source })?;
        socket.set_nodelay(true).map_err(ProtocolError::Io)?;
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        SockRef::from(&socket)
            .set_tcp_keepalive(&keepalive)
            .map_err(ProtocolError::Io)?;
        let mut stream = PacketStream::new(
            Stall::new(Compressed::new(Socket::Plain(socket)), None, None),
            1 << 30,
        );
        let greeting_packet = stream.read_packet().await?;
        if greeting_packet.payload.first() == Some(&response::ERR_HEADER) {
            return Err(BackendError::Refused(ErrFields::parse(
                &greeting_packet.payload,
            )?));
        }
        let greeting = Greeting::parse(&greeting_packet.payload)?;
        let mut capabilities = (BASE_CAPABILITIES | flavor.capabilities) & greeting.capabilities
            | CapabilityFlags::CLIENT_PROTOCOL_41;
        if target.compress {
            if greeting
                .capabilities
                .contains(CapabilityFlags::CLIENT_COMPRESS)
            {
                capabilities |= CapabilityFlags::CLIENT_COMPRESS;
            } else if !NO_COMPRESSION_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    server = %target.address(),
                    "[backend] compress is on but the database does not offer the compressed protocol; its connections stay uncompressed"
                );
            }
        }
        let mut conn = BackendConn {
            stream,
            flavor,
            thread_id: greeting.connection_id,
            server: ServerInfo {
                version: greeting.server_version.clone(),
                capabilities: greeting.capabilities,
                mariadb_capabilities: greeting.mariadb_capabilities,
                collation: greeting.collation,
                tracking_defaults: Default::default(),
            },
            user: target.user.clone(),
            secret: target.secret.clone(),
            schema: Some(target.database.clone()),
            vars: BTreeMap::new(),
            login_vars: Arc::default(),
            reset_login: LoginCharset {
                collation: flavor.collation,
                vars: Arc::default(),
            },
            statements: BackendStatements::default(),
            multi_statements: Some(
                flavor
                    .capabilities
                    .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            ),
            last_insert_id_of: None,
            diagnostics: Diagnostics::default(),
            quit_sent: false,
            nonce: greeting.nonce.clone(),
            created: Instant::now(),
            last_used: Instant::now(),
        };
        let (plugin, proof) = conn.auth_proof(target, &greeting.auth_plugin, &greeting.nonce)?;
        let mut seq = greeting_packet.next_seq;
        let offered = greeting.capabilities.contains(CapabilityFlags::CLIENT_SSL);
        let connector = target
            .tls
            .connector(offered)
            .map_err(|why| BackendError::Tls(why.to_owned()))?;
        let capabilities = match connector {
            Some(_) => capabilities | CapabilityFlags::CLIENT_SSL,
            None => capabilities,
        };
        let login = handshake::encode_login(
            capabilities,
            flavor.mariadb & greeting.mariadb_capabilities,
            flavor.collation,
            &target.user,
            &proof,
            target.database.as_deref(),
            plugin,
        );
        if let Some(connector) = connector {
            conn.start_tls(target, connector, &login, &mut seq).await?;
        }
        conn.stream.write_packet(&mut seq, &login).await?;
        conn.finish_auth(target).await?;
        if capabilities.contains(CapabilityFlags::CLIENT_COMPRESS) {
            // Everything after the login's OK travels compressed, as for any MariaDB client.
            conn.stream.get_mut().get_mut().start(Side::Client);
        }
        conn.read_login_state().await?;
        conn.enable_tracking().await?;
        conn.reset_login = conn.login();
        Ok(conn)
    }

    /// Switches to TLS before the login (`[backend] tls`, the server offering it): the
    /// login packet's first 32 bytes as the SSLRequest, as MySQL clients send it, then the
    /// handshake with `connector`.
    async fn start_tls(
        &mut self,
        target: &BackendTarget,
        connector: &tokio_rustls::TlsConnector,
        login: &[u8],
        seq: &mut u8,
    ) -> Result<(), BackendError> {
        let request = login
            .get(..handshake::SSL_REQUEST_LEN)
            .ok_or(ProtocolError::Malformed("short login packet"))?;
        self.stream.write_packet(seq, request).await?;
        let name = crate::tls::server_name(&target.host).map_err(BackendError::Tls)?;
        self.stream
            .get_mut()
            .get_mut()
            .get_mut()
            .connect_tls(connector, name)
            .await
            .map_err(|e| BackendError::Tls(e.to_string()))
    }

    /// Computes the answer to an authentication challenge for `plugin`.
    fn auth_proof<'p>(
        &self,
        target: &BackendTarget,
        plugin: &'p str,
        nonce: &[u8],
    ) -> Result<(&'p str, Vec<u8>), BackendError> {
        match (plugin, &target.secret) {
            (NATIVE_PASSWORD, BackendSecret::Password(password)) => Ok((
                plugin,
                auth::scramble_native(nonce, password.as_bytes())
                    .map(Vec::from)
                    .unwrap_or_default(),
            )),
            (NATIVE_PASSWORD, BackendSecret::PasswordSha1(sha1)) => Ok((
                plugin,
                auth::scramble_with_sha1(nonce, sha1).to_vec(),
            )),
            (CACHING_SHA2_PASSWORD, BackendSecret::Password(password)) => {
                let nonce: &[u8; 20] = nonce.get(..20).and_then(|n| n.try_into().ok()).ok_or(
                    ProtocolError::Malformed("short caching_sha2_password nonce"),
                )?;
                Ok((
                    plugin,
                    auth::scramble_sha256(nonce, password.as_bytes())
                        .map(Vec::from)
                        .unwrap_or_default(),
                ))
            }
            (CACHING_SHA2_PASSWORD, BackendSecret::PasswordSha1(_)) => {
                Err(BackendError::UnsupportedAuth(format!(
                    "{plugin} for user {} (sluice knows only the mysql_native_password hash of its password)",
                    target.user
                )))
            }
            (other, _) => Err(BackendError::UnsupportedAuth(other.to_owned())),
        }
    }

    /// Reads the server's verdict on a login or COM_CHANGE_USER, answering auth switches.
    async fn finish_auth(&mut self, target: &BackendTarget) -> Result<(), BackendError> {
        loop {
            let packet = self.stream.read_packet().await?;
            let mut seq = packet.next_seq;
            match packet.payload.first() {
                Some(&response::OK_HEADER) => return Ok(()),
                Some(&response::ERR_HEADER) => {
                    return Err(BackendError::Refused(ErrFields::parse(&packet.payload)?))
                }
                Some(&0xfe) => {
                    let (plugin, nonce) = handshake::parse_auth_switch(&packet.payload)?;
                    let (_, proof) = self.auth_proof(target, &plugin, &nonce)?;
                    self.nonce = nonce;
                    self.stream.write_packet(&mut seq, &proof).await?;
                }
                // caching_sha2_password: 0x01 0x03 is "fast auth succeeded"; OK follows.
                Some(&0x01) if packet.payload.get(1) == Some(&0x03) => continue,
                // Full authentication: inside TLS the password goes as it is.
                Some(&0x01)
                    if packet.payload.get(1) == Some(&0x04)
                        && self.stream.get_ref().get_ref().get_ref().is_tls() =>
                {
                    let BackendSecret::Password(password) = &target.secret else {
                        return Err(BackendError::UnsupportedAuth(format!(
                            "caching_sha2_password full authentication for user {} (sluice knows only the mysql_native_password hash of its password)",
                            target.user
                        )));
                    };
                    let mut answer = password.as_bytes().to_vec();
                    answer.push(0);
                    self.stream.write_packet(&mut seq, &answer).await?;
                }
                Some(&0x01) => {
                    return Err(BackendError::UnsupportedAuth(
                        "caching_sha2_password full authentication (needs TLS or an RSA key)"
                            .into(),
                    ))
                }
                _ => {
                    return Err(
                        ProtocolError::Malformed("unexpected packet during authentication").into(),
                    )
                }
            }
        }
    }

    /// Sends a command that is answered by one OK or ERR packet and returns the answer.
    pub async fn simple_command(&mut self, payload: &[u8]) -> Result<SimpleReply, BackendError> {
        let mut seq = 0;
        self.stream.write_packet(&mut seq, payload).await?;
        self.read_simple_reply().await
    }

    /// Sends a command answered by one packet (OK or ERR) and returns that packet as it came.
    pub async fn command_raw(&mut self, payload: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut seq = 0;
        self.stream.write_packet(&mut seq, payload).await?;
        let reply = self.stream.read_packet().await?;
        self.last_used = Instant::now();
        match reply.payload.first() {
            Some(&response::ERR_HEADER | &response::OK_HEADER) => Ok(reply.payload.to_vec()),
            _ => Err(ProtocolError::Malformed("expected OK or ERR").into()),
        }
    }

    /// Runs one text-protocol statement and returns its rows as strings (`None` for NULL), for
    /// sluice's own queries (status, processlist). A server error comes back inside.
    pub async fn query_text(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<String>>>, ErrFields>, BackendError> {
        self.queue_query(sql);
        self.stream.flush().await?;
        self.read_text_rows().await
    }

    /// Queues `sql` as a COM_QUERY to leave with the next flush, so that sluice's own
    /// statements can travel in the same write as a client's (one round trip for all).
    pub fn queue_query(&mut self, sql: &str) {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        let mut seq = 0;
        self.stream.queue_packet(&mut seq, &payload);
    }

    /// Reads the reply to a statement sent earlier that answers with OK or ERR.
    pub async fn read_simple_reply(&mut self) -> Result<SimpleReply, BackendError> {
        let reply = self.stream.read_packet().await?;
        self.last_used = Instant::now();
        let reply = match reply.payload.first() {
            Some(&response::ERR_HEADER) => Err(ErrFields::parse(&reply.payload)?),
            Some(&response::OK_HEADER) => Ok(response::parse_ok(&reply.payload)?),
            _ => return Err(ProtocolError::Malformed("expected OK or ERR").into()),
        };
        if reply.as_ref().map_or(true, |ok| ok.warnings > 0) {
            self.diagnostics.raised();
        }
        Ok(reply)
    }

    /// Reads the reply to a text-protocol statement sent earlier, as rows of strings.
    pub async fn read_text_rows(
        &mut self,
    ) -> Result<Result<Vec<Vec<Option<String>>>, ErrFields>, BackendError> {
        self.read_rows(RowFormat::Text).await
    }

    /// Executes prepared statement `id` with `params` (bound by the server, never spliced
    /// into SQL) and returns its rows as strings (`None` for NULL, other values in SQL
    /// literal form), for sluice's own statements (the auth query). A server error comes
    /// back inside.
    pub async fn execute_rows(
        &mut self,
        id: u32,
        params: &[Value],
    ) -> Result<Result<Vec<Vec<Option<String>>>, ErrFields>, BackendError> {
        let (execute, as_long_data) = ComStmtExecuteRequestBuilder::new(id).build(params);
        if as_long_data {
            return Err(ProtocolError::Malformed("parameters too large for one execute").into());
        }
        let mut payload = Vec::new();
        execute.serialize(&mut payload);
        let mut seq = 0;
        self.stream.write_packet(&mut seq, &payload).await?;
        self.read_rows(RowFormat::Binary).await
    }

    /// Reads a reply of one result set in `format`, as rows of strings.
    async fn read_rows(
        &mut self,
        format: RowFormat,
    ) -> Result<Result<Vec<Vec<Option<String>>>, ErrFields>, BackendError> {
        let mut tracker = ReplyTracker::new(ReplyShape::Results, self.flavor.deprecate_eof());
        let mut rows = Vec::new();
        // Packets before the rows: the column count, the definitions, and a classic EOF.
        let mut metadata_left: Option<u64> = None;
        // Binary rows are decoded by their columns' types.
        let mut columns = Vec::new();
        let mut column_count = 0;
        let mut row_columns: Option<Arc<[Column]>> = None;
        loop {
            let packet = self.stream.read_packet().await?;
            let header = FrameHeader {
                payload_len: packet.payload.len().min(MAX_FRAME_PAYLOAD - 1),
                seq: packet.seq,
            };
            let step = tracker.feed(header, &packet.payload)?;
            if tracker.raised_conditions() {
                self.diagnostics.raised();
            }
            match (step, metadata_left) {
                (Step::Done(_), _) if packet.payload.first() == Some(&response::ERR_HEADER) => {
                    return Ok(Err(ErrFields::parse(&packet.payload)?));
                }
                (Step::Done(_), _) => break,
                (Step::LocalInfile, _) => {
                    return Err(ProtocolError::Malformed("unexpected LOCAL INFILE request").into())
                }
                (Step::More, None) => {
                    let (count, _) = lenenc::read_int(&packet.payload)?;
                    column_count = count;
                    metadata_left = Some(count + u64::from(!self.flavor.deprecate_eof()));
                }
                (Step::More, Some(0)) => rows.push(match format {
                    RowFormat::Text => parse_text_row(&packet.payload)?,
                    RowFormat::Binary => {
                        let columns =
                            row_columns.get_or_insert_with(|| std::mem::take(&mut columns).into());
                        parse_binary_row(columns, &packet.payload)?
                    }
                }),
                (Step::More, Some(left)) => {
                    if matches!(format, RowFormat::Binary) && (columns.len() as u64) < column_count
                    {
                        columns.push(parse_column(&packet.payload)?);
                    }
                    metadata_left = Some(left - 1);
                }
            }
        }
        self.last_used = Instant::now();
        Ok(Ok(rows))
    }

    /// Prepares `sql` (COM_STMT_PREPARE) and reads the whole answer. Statement closes queued
    /// with [`BackendConn::queue_close`] go out first. The server's ERR is returned inside.
    pub async fn prepare(
        &mut self,
        sql: &[u8],
    ) -> Result<Result<Prepared, ErrFields>, BackendError> {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(command::STMT_PREPARE);
        payload.extend_from_slice(sql);
        let mut seq = 0;
        self.stream.write_packet(&mut seq, &payload).await?;
        let first = self.stream.read_packet().await?;
        if first.payload.first() == Some(&response::ERR_HEADER) {
            self.diagnostics.raised();
            return Ok(Err(ErrFields::parse(&first.payload)?));
        }
        let ok = PrepareOk::parse(&first.payload)?;
        if ok.warnings > 0 {
            self.diagnostics.raised();
        }
        let param_defs = self.read_definitions(ok.params).await?;
        let column_defs = self.read_definitions(ok.columns).await?;
        self.last_used = Instant::now();
        Ok(Ok(Prepared {
            ok,
            param_defs,
            column_defs,
        }))
    }

    /// Prepares `key` here and keeps it among this connection's statements, closing the least
    /// recently used beyond `capacity` (the closes leave with the next command).
    pub async fn prepare_kept(
        &mut self,
        key: &Arc<StatementKey>,
        keeping: &Keeping<'_>,
    ) -> Result<Result<Prepared, ErrFields>, BackendError> {
        let metrics = keeping.metrics;
        // A statement resolves its names in the schema it was first prepared in, as on the
        // server: prepare it there, then come back to the connection's schema.
        let (into_context, back_from_context) = self.parse_context_switch(key);
        if !into_context.is_empty() {
            if let Err(err) = self.execute(&into_context).await? {
                return Ok(Err(err));
            }
        }
        let back_to = match (&self.schema, key.schema()) {
            (Some(Some(current)), Some(wanted)) if current != wanted => Some(current.clone()),
            _ => None,
        };
        if let (Some(_), Some(wanted)) = (&back_to, key.schema()) {
            if let Err(err) = self.init_db(wanted).await? {
                return Ok(Err(err));
            }
        }
        let mut prepared = self.prepare(key.sql()).await?;
        // At the server's max_prepared_stmt_count, reached partly by copies kept for other
        // clients (prepared again where next executed), those copies give way rather than
        // a client be refused for statements it does not hold: this connection's first,
        // then those of idle connections, least recently used first, each followed by one
        // more try.
        let mut closed_here = false;
        while matches!(&prepared, Err(err) if err.code == MAX_PREPARED_STMT_COUNT_REACHED) {
            let room = if closed_here {
                false
            } else {
                closed_here = true;
                self.close_kept(keeping.spare, metrics) > 0
            };
            if !room && !keeping.pool.free_idle_statements().await {
                break;
            }
            prepared = self.prepare(key.sql()).await?;
        }
        if let Some(schema) = back_to {
            if let Err(err) = self.init_db(&schema).await? {
                self.schema = None;
                return Ok(Err(err));
            }
        }
        if !back_from_context.is_empty() {
            if let Err(err) = self.execute(&back_from_context).await? {
                return Ok(Err(err));
            }
        }
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(err) => return Ok(Err(err)),
        };
        metrics.statements_prepared.inc();
        let evicted = self.statements.insert(
            key.clone(),
            prepared.ok.statement_id,
            prepared.ok.params,
            keeping.capacity,
        );
        for id in evicted {
            metrics.statement_evictions.inc();
            self.queue_close(id);
        }
        Ok(Ok(prepared))
    }

    /// The `SET`s that put this connection under `key`'s parse variables and back, both
    /// empty when they already match.
    fn parse_context_switch(&self, key: &StatementKey) -> (String, String) {
        let names: std::collections::BTreeSet<&str> =
            crate::statements::PARSE_VARIABLES.into_iter().collect();
        let current = |name: &str| value_in(&self.vars, &self.login_vars, name);
        let wanted = |name: &str| value_in(key.parse_vars(), &self.login_vars, name);
        (
            change_statement(&names, current, wanted).unwrap_or_default(),
            change_statement(&names, wanted, current).unwrap_or_default(),
        )
    }

    /// The id and parameter count `key` has on this connection, preparing it first when this
    /// connection lacks it (a statement prepared elsewhere, or evicted here). The server's
    /// ERR is returned inside.
    pub async fn statement_id(
        &mut self,
        key: &Arc<StatementKey>,
        keeping: &Keeping<'_>,
    ) -> Result<Result<(u32, u16), ErrFields>, BackendError> {
        if let Some(statement) = self.statements.get_mut(key) {
            return Ok(Ok((statement.id, statement.params)));
        }
        keeping.metrics.statement_reprepares.inc();
        Ok(self
            .prepare_kept(key, keeping)
            .await?
            .map(|prepared| (prepared.ok.statement_id, prepared.ok.params)))
    }

    /// Reads `count` definition packets and, without CLIENT_DEPRECATE_EOF, the EOF after them.
    async fn read_definitions(&mut self, count: u16) -> Result<Vec<Vec<u8>>, BackendError> {
        let mut defs = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            defs.push(self.stream.read_packet().await?.payload.to_vec());
        }
        if count > 0 && !self.flavor.deprecate_eof() {
            let eof = self.stream.read_packet().await?;
            if !response::is_eof(&eof.payload) {
                return Err(ProtocolError::Malformed("expected EOF after definitions").into());
            }
        }
        Ok(defs)
    }

    /// Closes the copies this connection keeps but those `spare` names, counting them as
    /// evictions (they are prepared again where next executed); the closes leave with the
    /// next command. Returns how many were closed.
    pub fn close_kept(
        &mut self,
        spare: &(dyn Fn(&StatementKey) -> bool + Sync),
        metrics: &Metrics,
    ) -> usize {
        let ids = self.statements.take_unless(spare);
        for &id in &ids {
            metrics.statement_evictions.inc();
            self.queue_close(id);
        }
        ids.len()
    }

    /// Queues COM_STMT_CLOSE for statement `id`; it leaves with the next command (the server
    /// does not answer it).
    fn queue_close(&mut self, id: u32) {
        let mut seq = 0;
        self.stream
            .queue_packet(&mut seq, &prepared::close_packet(id));
    }

    /// Runs a statement that answers with OK (e.g. `SET`), returning the server's verdict.
    pub async fn execute(&mut self, sql: &str) -> Result<SimpleReply, BackendError> {
        self.queue_query(sql);
        self.stream.flush().await?;
        self.read_simple_reply().await
    }

    /// Records what a fresh session has: see [`LOGIN_STATE`].
    async fn read_login_state(&mut self) -> Result<(), BackendError> {
        let rows = self
            .query_text(LOGIN_STATE)
            .await?
            .map_err(BackendError::Refused)?;
        let Some(row) = rows.into_iter().next().filter(|r| r.len() == 7) else {
            return Err(
                ProtocolError::Malformed("unexpected answer to the login state query").into(),
            );
        };
        let mut values = row.into_iter().map(Option::unwrap_or_default);
        for slot in &mut self.server.tracking_defaults {
            *slot = values.next().unwrap_or_default();
        }
        let mut login: BTreeMap<String, String> = LOGIN_VARIABLES
            .iter()
            .map(|name| (name.to_string(), values.next().unwrap_or_default()))
            .collect();
        // A login gives the client and the results its own collation.
        let collation = login
            .get("collation_connection")
            .cloned()
            .unwrap_or_default();
        login.insert(NAMES_COLLATION.to_owned(), collation);
        self.login_vars = Arc::new(login);
        Ok(())
    }

    /// Turns sluice's session tracking back on after a client changed its own tracking
    /// settings on this connection.
    pub async fn restore_tracking(&mut self) -> Result<SimpleReply, BackendError> {
        self.execute(ENABLE_TRACKING).await
    }

    async fn enable_tracking(&mut self) -> Result<(), BackendError> {
        self.vars.clear();
        self.last_insert_id_of = None;
        self.diagnostics.emptied();
        if self
            .server
            .capabilities
            .contains(CapabilityFlags::CLIENT_SESSION_TRACK)
        {
            self.execute(ENABLE_TRACKING)
                .await?
                .map_err(BackendError::Refused)?;
        }
        Ok(())
    }

    /// Brings this connection to a client's session: its schema, the system variables it
    /// set, and the character sets its `login` gave (a `SET NAMES`, when another client's
    /// login left others), changing only what differs. A variable this connection has from
    /// an earlier client and this client never set goes back to what its login set (the
    /// character sets) or to its default. Each round trip this adds is counted in
    /// `sluice_session_adoptions_total` by kind. The server's ERR is returned inside.
    pub async fn adopt_session(
        &mut self,
        target: &BackendTarget,
        schema: Option<&str>,
        vars: &BTreeMap<String, String>,
        login: &LoginCharset,
        metrics: &Metrics,
    ) -> Result<SimpleReply, BackendError> {
        let wanted = schema.or(target.database.as_deref());
        if self.schema.as_ref().is_none_or(|s| s.as_deref() != wanted) {
            let kind = if wanted.is_some() {
                "schema"
            } else {
                "change_user"
            };
            metrics.session_adoptions.with_label_values(&[kind]).inc();
        }
        if let Err(err) = self.use_schema(target, schema).await? {
            return Ok(Err(err));
        }
        if *vars == self.vars && login.vars == self.login_vars {
            // The usual case: the connection's last client had the same session.
            self.flavor.collation = login.collation;
            return Ok(Ok(OkFields::default()));
        }
        let mut names: std::collections::BTreeSet<&str> = vars
            .keys()
            .chain(self.vars.keys())
            .map(String::as_str)
            .collect();
        if login.vars != self.login_vars {
            names.extend(CHARSET_VARIABLES);
        }
        let statement = change_statement(
            &names,
            |name| value_in(&self.vars, &self.login_vars, name),
            |name| value_in(vars, &login.vars, name),
        );
        if let Some(statement) = statement {
            metrics
                .session_adoptions
                .with_label_values(&["variables"])
                .inc();
            let reply = self.execute(&statement).await?;
            if reply.is_err() {
                return Ok(reply);
            }
        }
        self.vars.clone_from(vars);
        self.login_vars = login.vars.clone();
        self.flavor.collation = login.collation;
        Ok(Ok(OkFields::default()))
    }

    /// The login state of the client this connection serves (see [`LoginCharset`]).
    pub fn login(&self) -> LoginCharset {
        LoginCharset {
            collation: self.flavor.collation,
            vars: self.login_vars.clone(),
        }
    }

    /// Logs in again (COM_CHANGE_USER) with collation `collation` and reads what that login
    /// gave: how sluice learns what a client's login collation means, exactly as the server
    /// applies it (an unknown id gets the server's defaults). Clears the session, as a reset.
    pub async fn relogin(
        &mut self,
        target: &BackendTarget,
        collation: u8,
    ) -> Result<(), BackendError> {
        self.flavor.collation = collation;
        self.change_user(target).await?;
        self.read_login_state().await?;
        self.reset_login = self.login();
        Ok(())
    }

    /// Turns `;`-separated statements on or off (COM_SET_OPTION), to match the session of
    /// the client about to use the connection. The server's ERR is returned inside.
    pub async fn set_multi_statements(&mut self, on: bool) -> Result<SimpleReply, BackendError> {
        let option = u16::from(!on).to_le_bytes();
        let mut seq = 0;
        self.stream
            .write_packet(&mut seq, &[command::SET_OPTION, option[0], option[1]])
            .await?;
        let reply = self.stream.read_packet().await?;
        match reply.payload.first() {
            Some(&response::ERR_HEADER) => Ok(Err(ErrFields::parse(&reply.payload)?)),
            Some(&response::OK_HEADER | &response::EOF_HEADER) => {
                self.multi_statements = Some(on);
                Ok(Ok(OkFields::default()))
            }
            _ => Err(ProtocolError::Malformed("unexpected reply to COM_SET_OPTION").into()),
        }
    }

    /// Checks that the connection still works.
    pub async fn ping(&mut self) -> Result<(), BackendError> {
        self.simple_command(&[command::PING])
            .await?
            .map_err(BackendError::Refused)?;
        Ok(())
    }

    /// Switches the default schema; the server's ERR (e.g. 1049) is returned as `Err` inside.
    pub async fn init_db(&mut self, schema: &str) -> Result<SimpleReply, BackendError> {
        let mut payload = vec![command::INIT_DB];
        payload.extend_from_slice(schema.as_bytes());
        let reply = self.simple_command(&payload).await?;
        if reply.is_ok() {
            self.schema = Some(Some(schema.to_owned()));
        }
        Ok(reply)
    }

    /// Clears session state left by a client: open transaction, variables, temporary tables,
    /// locks and prepared statements. The schema is kept by the server, so it becomes unknown.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        self.simple_command(&[command::RESET_CONNECTION])
            .await?
            .map_err(BackendError::Refused)?;
        self.schema = None;
        self.statements.clear();
        self.multi_statements = None;
        // The server returns the character sets to its own login state of the connection.
        self.flavor.collation = self.reset_login.collation;
        self.login_vars = self.reset_login.vars.clone();
        self.enable_tracking().await
    }

    /// Re-authenticates with COM_CHANGE_USER: a full reset that also returns the schema to
    /// the backend's default (MySQL has no other way to leave a schema).
    pub async fn change_user(&mut self, target: &BackendTarget) -> Result<(), BackendError> {
        let nonce = self.nonce.clone();
        let (plugin, proof) = self.auth_proof(target, NATIVE_PASSWORD, &nonce)?;
        let mut payload = vec![command::CHANGE_USER];
        payload.extend_from_slice(target.user.as_bytes());
        payload.push(0);
        payload.push(proof.len() as u8);
        payload.extend_from_slice(&proof);
        payload.extend_from_slice(target.database.as_deref().unwrap_or("").as_bytes());
        payload.push(0);
        payload.extend_from_slice(&u16::from(self.flavor.collation).to_le_bytes());
        payload.extend_from_slice(plugin.as_bytes());
        payload.push(0);
        // CLIENT_CONNECT_ATTRS was negotiated, so an (empty) attribute block is expected.
        payload.push(0);
        let mut seq = 0;
        self.stream.write_packet(&mut seq, &payload).await?;
        self.finish_auth(target).await?;
        self.reset_login = self.login();
        self.statements.clear();
        self.multi_statements = None;
        self.schema = Some(target.database.clone());
        self.last_used = Instant::now();
        self.enable_tracking().await
    }

    /// Puts the connection on `schema` (or the backend default when `None`), the cheapest way.
    pub async fn use_schema(
        &mut self,
        target: &BackendTarget,
        schema: Option<&str>,
    ) -> Result<SimpleReply, BackendError> {
        let wanted = schema.or(target.database.as_deref());
        if self.schema.as_ref().is_some_and(|s| s.as_deref() == wanted) {
            return Ok(Ok(OkFields::default()));
        }
        match wanted {
            Some(name) => self.init_db(name).await,
            None => self
                .change_user(target)
                .await
                .map(|()| Ok(OkFields::default())),
        }
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When sluice last finished using the connection.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Starts working for `owner`: warnings and errors another left in the diagnostics
    /// area are emptied first (see [`crate::diagnostics`]; counted as a `diagnostics`
    /// adoption). The server's ERR is returned inside.
    pub async fn serve(
        &mut self,
        owner: Owner,
        metrics: &Metrics,
    ) -> Result<SimpleReply, BackendError> {
        if !self.diagnostics.serve(owner) {
            return Ok(Ok(OkFields::default()));
        }
        metrics
            .session_adoptions
            .with_label_values(&["diagnostics"])
            .inc();
        let reply = self.execute(CLEAR_DIAGNOSTICS).await?;
        if reply.is_ok() {
            self.diagnostics.emptied();
        }
        Ok(reply)
    }

    /// Records that the connection was just used (called when a borrower returns it).
    pub fn touch(&mut self) {
        self.last_used = Instant::now();
    }
}

impl BackendConn {
    /// Fails reads and writes on this connection that wait `limit` without progress (off
    /// with `None`). Set once the login is done, which has its own connect timeout.
    pub fn set_stall_timeout(&mut self, limit: Option<Duration>) {
        self.stream.get_mut().set_limits(limit, limit);
    }

    /// True when an idle connection is known dead without a round trip: the database
    /// closed it (a restart, `KILL CONNECTION`, `wait_timeout`) or sent something nobody
    /// asked for (the ERR it sends a connection it kills). One non-blocking peek.
    pub fn closed_by_peer(&mut self) -> bool {
        let compressed = self.stream.get_ref().get_ref();
        if self.stream.buffered_len() > 0 || compressed.buffered_len() > 0 || self.stream.failed() {
            return true;
        }
        self.stream
            .get_mut()
            .get_mut()
            .get_mut()
            .has_input_or_closed()
    }

    /// Whether this connection speaks the compressed protocol (`[backend] compress`, and a
    /// server that offered it), for the metric counting such connections.
    pub fn compressed(&self) -> bool {
        self.stream.get_ref().get_ref().is_on()
    }
}

impl Drop for BackendConn {
    /// Says goodbye (COM_QUIT) before the socket closes, so the server ends the session
    /// cleanly instead of counting and logging an aborted connection. Sent only at a packet
    /// boundary of what sluice wrote (a half-sent packet would swallow it as data), and
    /// without waiting: a full socket buffer or a dead peer just gets no goodbye. A server
    /// still busy with a reply reads it after that reply, and closes.
    fn drop(&mut self) {
        if !self.quit_sent && self.stream.at_packet_boundary() {
            // Inside a compressed packet when compression is on: a bare one would be taken
            // for a compressed header, and the server would count an aborted connection.
            let compressed = self.stream.get_mut().get_mut();
            if let Some(quit) = compressed.frame_now(&QUIT_PACKET) {
                compressed.get_mut().send_now(&quit);
            }
        }
    }
}

impl BackendConn {
    /// Says goodbye (COM_QUIT, when at a packet boundary) and waits until the server has
    /// closed the connection, so that a connection opened next never overlaps this one in
    /// the server's count. Callers bound the wait; whatever the server still sends (the
    /// rest of an abandoned reply) is read and dropped.
    pub async fn quit(&mut self) {
        if self.stream.at_packet_boundary() {
            self.quit_sent = true;
            let mut seq = 0;
            if self
                .stream
                .write_packet(&mut seq, &[command::QUIT])
                .await
                .is_err()
            {
                return;
            }
        }
        self.stream.discard_input(usize::MAX).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `SET` that takes a connection whose session is `from` to `to` (both
    /// `name=value` pairs, values as SQL).
    fn change(from: &[(&str, &str)], to: &[(&str, &str)]) -> Option<String> {
        let get = |pairs: &[(&str, &str)], name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("DEFAULT".to_owned(), |(_, v)| (*v).to_owned())
        };
        let names = from.iter().chain(to).map(|(n, _)| *n).collect();
        change_statement(&names, |n| get(from, n), |n| get(to, n))
    }

    fn session<'a>(
        cs: [&'a str; 3],
        collation: &'a str,
        carried: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("character_set_client", cs[0]),
            ("character_set_connection", cs[1]),
            ("character_set_results", cs[2]),
            ("collation_connection", collation),
            (NAMES_COLLATION, carried),
        ]
    }

    #[test]
    fn the_results_collation_is_set_before_the_connection_s() {
        let plain = session(
            ["'utf8mb4'"; 3],
            "'utf8mb4_general_ci'",
            "'utf8mb4_general_ci'",
        );
        // A login with utf8mb4_unicode_ci, then SET collation_connection = latin1_german1_ci.
        let mixed = session(
            ["'utf8mb4'", "'latin1'", "'utf8mb4'"],
            "'latin1_german1_ci'",
            "'utf8mb4_unicode_ci'",
        );
        assert_eq!(
            change(&plain, &mixed).as_deref(),
            Some(
                "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci', \
                 @@session.collation_connection = 'latin1_german1_ci'"
            )
        );
        // SET NAMES ... COLLATE utf8mb4_bin: one statement says it all.
        let bin = session(["'utf8mb4'"; 3], "'utf8mb4_bin'", "'utf8mb4_bin'");
        assert_eq!(
            change(&plain, &bin).as_deref(),
            Some("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'")
        );
        // character_set_results set on its own carries its default collation; the client's
        // character set set on its own leaves the results' collation.
        let own = session(
            ["'utf8mb4'", "'utf8mb4'", "'latin1'"],
            "'utf8mb4_bin'",
            "''",
        );
        assert_eq!(
            change(&plain, &own).as_deref(),
            Some(
                "SET NAMES 'latin1', @@session.character_set_client = 'utf8mb4', \
                 @@session.collation_connection = 'utf8mb4_bin'"
            )
        );
        let client = session(
            ["'latin1'", "'utf8mb4'", "'utf8mb4'"],
            "'utf8mb4_bin'",
            "'utf8mb4_bin'",
        );
        assert_eq!(
            change(&plain, &client).as_deref(),
            Some("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin', @@session.character_set_client = 'latin1'")
        );
        // A results character set no client may have, or none: each variable as it is.
        let ucs2 = session(
            ["'utf8mb4'", "'utf8mb4'", "'ucs2'"],
            "'utf8mb4_general_ci'",
            "''",
        );
        assert!(change(&plain, &ucs2)
            .is_some_and(|set| set.contains("@@session.character_set_results = 'ucs2'")));
        let none = session(
            ["'utf8mb4'", "'utf8mb4'", "NULL"],
            "'utf8mb4_general_ci'",
            "''",
        );
        assert_eq!(
            change(&plain, &none).as_deref(),
            Some(
                "SET @@session.character_set_client = 'utf8mb4', \
                 @@session.character_set_connection = 'utf8mb4', \
                 @@session.character_set_results = NULL, \
                 @@session.collation_connection = 'utf8mb4_general_ci'"
            )
        );
        assert_eq!(change(&plain, &plain), None);
    }
}
