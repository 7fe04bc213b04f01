//! The life of one client connection: login, then its commands until it leaves.
//!
//! In transaction pooling (the default) a client holds a database connection only while it
//! must: for one statement in autocommit mode, for a whole transaction (the server's
//! `SERVER_STATUS_IN_TRANS` flag says when one is open), or while pinned by session state
//! that cannot follow it. The rest of its session (schema, system variables) is learned from
//! the server's session-state tracking and re-applied to whichever connection it gets next.
//! In session pooling a client keeps one connection while connected. When a client leaves,
//! a connection it still holds is reset before anyone else gets it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use sluice_protocol::auth::{CACHING_SHA2_PASSWORD, NATIVE_PASSWORD};
use sluice_protocol::compress::{Compressed, Side};
use sluice_protocol::handshake::ChangeUser;
use sluice_protocol::packet::MAX_FRAME_PAYLOAD;
use sluice_protocol::response::{self, ErrFields, OkFields};
use sluice_protocol::session_state;
use sluice_protocol::stall::Stall;
use sluice_protocol::stream::PacketStream;
use sluice_protocol::{command, CapabilityFlags, MariadbCapabilities, ProtocolError, StatusFlags};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

mod own_statements;
mod prepared;
mod timing;
mod transaction;

use self::own_statements::ReadBack;
use self::prepared::ClientStatements;
use self::timing::CommandTiming;
use self::transaction::{Defaults, NextTransaction};
use super::admission::{NoSeat, PendingLogin, Seat};
use super::errors;
use super::login::{self, Authenticated, LoginFailure};
use super::relay::{self, Pipelined, RelayError, ReplyOutcome};
use super::statement::{self, Analysis, Kill, KillTarget, SessionFunction};
use super::tracking::{Tracking, OWNED_VARIABLES};
use super::ClientStream;
use crate::backend::{first_value, BackendError, Flavor, CHARSET_VARIABLES, NAMES_COLLATION};
use crate::config::PoolMode;
use crate::diagnostics::Owner;
use crate::identity::Identity;
use crate::metrics::Held;
use crate::pool::{BorrowError, Lease, SessionError, WantedSession};
use crate::registry::Registration;
use crate::tls::{Socket, TlsMode};
use crate::Gateway;

/// Failed COM_CHANGE_USER attempts after which the connection is closed.
const MAX_FAILED_CHANGE_USERS: u32 = 3;

/// How a session ended, for the closing log line.
enum End {
    Quit,
    Shutdown,
    Disconnected,
    Refused,
    Error(String),
}

/// How long a client may be quiet between commands before its buffers are given back: one
/// in the middle of a burst keeps them (no allocation per command), an idle one costs only
/// its session.
const QUIET_BEFORE_RELEASING_BUFFERS: Duration = Duration::from_secs(1);

/// One authenticated client and the database connection it holds, if any.
struct Session {
    gateway: Arc<Gateway>,
    id: u32,
    stream: ClientStream,
    capabilities: CapabilityFlags,
    /// MariaDB's extended capabilities the client negotiated (see `Flavor::mariadb`).
    mariadb_capabilities: MariadbCapabilities,
    /// Who the client is, and as whom its database connections log in.
    identity: Arc<Identity>,
    /// Counts the client under its database user in `sluice_user_client_connections`.
    counted: Held,
    /// Its database user's `sluice_user_borrows_total`, looked up once.
    borrows: IntCounter,
    salt: [u8; 20],
    collation: u8,
    backend: Option<Lease>,
    status: StatusFlags,
    state: SessionState,
    /// Why the client keeps its connection regardless of transactions.
    pin: Option<&'static str>,
    /// The session's default access mode and isolation level when the open transaction
    /// began (see `transaction`).
    defaults_at_begin: Option<Defaults>,
    /// The held connection has state sluice can neither carry nor undo (a one-shot
    /// isolation level that outlived its transaction): it is reset when given back.
    reset_on_release: bool,
    /// The session's entry among the live ones, through which `KILL` reaches it.
    registration: Registration,
    /// The session tracking the client asked for (`None`: it has no CLIENT_SESSION_TRACK).
    tracking: Option<Tracking>,
    /// Where characteristics set by `SET TRANSACTION` are in their life on the held
    /// connection.
    next_transaction: NextTransaction,
    /// The held connection's `LAST_INSERT_ID()` may be newer than the one in `state`.
    insert_id_unsettled: bool,
    /// Names this session (until it starts over) as the owner of the warnings and errors in
    /// a connection's diagnostics area.
    owner: Owner,
    /// Names the client's current `LAST_INSERT_ID()` on the connections that hold it: a new
    /// one each time the value changes, so that a connection still holding an older value
    /// of the client's gets the current one put back.
    insert_owner: Owner,
    /// The client's last command raised warnings or an error: it keeps its connection for
    /// its next command, where `SHOW WARNINGS` or `GET DIAGNOSTICS` finds them, for at most
    /// `diagnostics_hold` of idle time, and for as long as the area still holds them (its
    /// size is read back after each statement: those without tables leave it alone). Once
    /// given back, the warnings stay on the connection for the client's return and are
    /// emptied for anyone else (see `crate::diagnostics`).
    keeps_diagnostics: bool,
    /// COM_CHANGE_USER attempts that failed on this connection.
    failed_change_users: u32,
    /// The client's prepared statements.
    statements: ClientStatements,
    /// Whether the client's session accepts `;`-separated statements (capability at login,
    /// then COM_SET_OPTION).
    multi_statements: bool,
    /// Times the command in progress (latency histograms, the status page).
    timing: CommandTiming,
}

/// What sluice knows about a command before its reply, to account for what the reply says.
#[derive(Debug, Default, Clone, Copy)]
struct Accounting<'a> {
    /// Variables whose tracking entries the client must not see (see `relay::forward`).
    hidden: &'a [&'a [u8]],
    /// sluice's own statements sent with the command (see `own_statements`).
    pipelined: Pipelined<'a>,
    /// What the statement sent after the command reads.
    read_back: Option<ReadBack>,
    /// The command holds a statement sluice does not understand.
    unknown: bool,
    /// Variable values reported are a `SET STATEMENT`'s, not the session's.
    temporary_variables: bool,
    /// `SET TRANSACTION`: the connection keeps characteristics for the next transaction.
    next_transaction: bool,
    /// `START TRANSACTION READ ONLY|WRITE`: a transaction under its own characteristics.
    starts_with_characteristics: bool,
    /// The statement may change `LAST_INSERT_ID()` (see `Analysis::may_set_insert_id`).
    may_set_insert_id: bool,
}

impl<'a> Accounting<'a> {
    fn of(analysis: &Analysis, hidden: &'a [&'a [u8]]) -> Accounting<'a> {
        Accounting {
            hidden,
            pipelined: Pipelined::default(),
            read_back: None,
            unknown: analysis.unknown,
            temporary_variables: analysis.temporary_variables,
            next_transaction: analysis.next_transaction,
            starts_with_characteristics: analysis.starts_with_characteristics,
            may_set_insert_id: analysis.may_set_insert_id
                || analysis.sets_last_insert_id
                || analysis.unknown,
        }
    }
}

/// Holds an authenticated client's seat under `max_client_connections` and counts it in
/// `sluice_client_connections` while it lives; a guard, so no way out of a session (an
/// error, even a panic) can leave the gauge up or the seat taken.
struct ClientGauge {
    gateway: Arc<Gateway>,
    _seat: Seat,
}

impl ClientGauge {
    fn new(gateway: Arc<Gateway>, seat: Seat) -> ClientGauge {
        gateway.metrics.client_connections.inc();
        ClientGauge {
            gateway,
            _seat: seat,
        }
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.gateway.metrics.client_connections.dec();
    }
}

/// The session a client would have on a direct connection, carried between connections.
#[derive(Debug, Default)]
struct SessionState {
    schema: Option<String>,
    vars: BTreeMap<String, String>,
    last_insert_id: u64,
    row_count: i64,
    found_rows: u64,
}

/// Serves one client connection from greeting to close; `pending` is its place among the
/// logins in progress until it authenticates. Never panics on client input.
pub async fn serve_client(
    gateway: Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    id: u32,
    pending: PendingLogin,
) {
    let span = tracing::info_span!("client", id, %peer);
    async move {
        // Read at each end: a reload may turn it on or off meanwhile.
        let log_connections = || gateway.settings().log_connections;
        if log_connections() {
            info!("client connected");
        }
        let closed = gateway.metrics.client_connections_closed.clone();
        let end = run(gateway.clone(), socket, peer, id, pending).await;
        closed.inc();
        let how = match end {
            End::Error(reason) => {
                info!(%reason, "client closed (error)");
                return;
            }
            End::Quit => "quit",
            End::Shutdown => "shutdown",
            End::Disconnected => "disconnected",
            End::Refused => "refused at login",
        };
        if log_connections() {
            info!("client closed ({how})");
        }
    }
    .instrument(span)
    .await
}

/// A client past login and admission, ready for its session.
struct Admitted {
    stream: ClientStream,
    /// The session tracking it starts with (`None`: it has no CLIENT_SESSION_TRACK).
    tracking: Option<Tracking>,
    auth: Authenticated,
    /// Its place among the connected clients, for as long as it stays.
    gauge: ClientGauge,
}

async fn run(
    gateway: Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    id: u32,
    pending: PendingLogin,
) -> End {
    // Each phase boxed: this task lives as long as the client, idle or not, and its future
    // is as large as its largest state; the login's (the greeting, the password check, its
    // timers) is over once the client is in.
    // Made in the match: what the session is made of is gone before the session's wait.
    let (session, seq, gauge) = match Box::pin(admit(&gateway, socket, peer, id, pending)).await {
        Ok(admitted) => Session::new(gateway, admitted, id),
        Err(end) => return end,
    };
    let end = Box::pin(serve_authenticated(session, seq)).await;
    drop(gauge);
    end
}

/// Greets the client, checks its login and gives it a seat among the connected clients;
/// refusals end here, answered.
async fn admit(
    gateway: &Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    id: u32,
    pending: PendingLogin,
) -> Result<Admitted, End> {
    // Writes that make no progress for client_write_timeout fail: a client that stops
    // reading cannot hold its database connection (or sluice's buffers) indefinitely.
    let socket = Stall::new(
        Compressed::new(Socket::Plain(socket)),
        None,
        Some(gateway.settings().client_write_timeout),
    );
    let mut stream = PacketStream::new(socket, login::MAX_LOGIN_PACKET);
    let server = match gateway.pool.server_info().await {
        Ok(server) => server,
        Err(e) => {
            warn!(error = %e, "refusing client: database unreachable");
            let mut seq = 0;
            let _ = stream
                .write_packet(&mut seq, &errors::borrow_failed(&e).encode())
                .await;
            return Err(End::Refused);
        }
    };
    let settings = gateway.settings();
    let login = tokio::time::timeout(
        settings.login_timeout,
        login::authenticate(gateway, &mut stream, &server, id, peer),
    );
    let outcome = tokio::select! {
        auth = login => auth.map_err(|_| "timeout"),
        () = pending.evicted() => Err("evicted"),
    };
    let auth = match outcome {
        Ok(Ok(auth)) => auth,
        Ok(Err(LoginFailure::Refused)) => return Err(End::Refused),
        Ok(Err(LoginFailure::Protocol(e))) if e.is_disconnect() => return Err(End::Disconnected),
        Ok(Err(LoginFailure::Protocol(e))) => return Err(End::Error(e.to_string())),
        Err(reason) => {
            gateway
                .metrics
                .login_aborts
                .with_label_values(&[reason])
                .inc();
            let err = if reason == "timeout" {
                errors::login_timeout(settings.login_timeout)
            } else {
                errors::login_evicted(settings.max_pending_logins)
            };
            // Best effort: the peer may not be reading, and must not hold us up.
            let mut seq = 2;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                stream.write_packet(&mut seq, &err.encode()),
            )
            .await;
            return Err(End::Error(format!("login {reason}")));
        }
    };
    drop(pending);
    let user_max = settings
        .users
        .get(&auth.user)
        .and_then(|u| u.max_client_connections);
    let seat = match gateway.admission.seat(&auth.user, user_max) {
        Ok(seat) => seat,
        Err(no_seat) => {
            gateway.metrics.client_connections_refused.inc();
            let err = match no_seat {
                NoSeat::Full => {
                    warn!(user = %auth.user, "refusing client: max_client_connections reached");
                    errors::too_many_clients(settings.max_client_connections)
                }
                NoSeat::UserFull(max) => {
                    warn!(user = %auth.user, "refusing client: the user's max_client_connections reached");
                    errors::too_many_user_clients(&auth.user, max)
                }
            };
            let mut seq = auth.next_seq;
            let _ = stream.write_packet(&mut seq, &err.encode()).await;
            return Err(End::Refused);
        }
    };
    let gauge = ClientGauge::new(gateway.clone(), seat);
    stream.set_max_packet(settings.max_packet_size);
    let tracking = auth
        .capabilities
        .contains(CapabilityFlags::CLIENT_SESSION_TRACK)
        .then(|| tracking_defaults(&server));
    Ok(Admitted {
        stream,
        tracking,
        auth,
        gauge,
    })
}

impl Session {
    /// The session of a client just admitted, the sequence id its login's OK takes, and
    /// its seat. Not async, and boxed: the future that serves the session holds a pointer to
    /// it, where an async fn's argument would sit in its future twice (the argument, and
    /// the local it moves to), which every idle client would pay for in memory.
    fn new(gateway: Arc<Gateway>, admitted: Admitted, id: u32) -> (Box<Session>, u8, ClientGauge) {
        let Admitted {
            stream,
            tracking,
            auth,
            gauge,
        } = admitted;
        let Authenticated {
            capabilities,
            mariadb_capabilities,
            user,
            identity,
            collation,
            database,
            salt,
            next_seq,
        } = auth;
        debug!(%user, backend_user = %identity.backend.user, "client authenticated");
        let registration = gateway.sessions.register(id, &identity);
        let counted = gateway.metrics.users.client(&identity.user);
        let borrows = gateway.metrics.users.borrows(&identity.backend.user);
        let timing = CommandTiming::new(gateway.metrics.users.latency(&identity.user));
        let session = Box::new(Session {
            gateway,
            id,
            stream,
            capabilities,
            mariadb_capabilities,
            counted,
            borrows,
            identity,
            salt,
            collation,
            backend: None,
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            state: SessionState {
                schema: database,
                ..SessionState::default()
            },
            pin: None,
            reset_on_release: false,
            defaults_at_begin: None,
            registration,
            tracking,
            next_transaction: NextTransaction::None,
            insert_id_unsettled: false,
            owner: Owner::fresh(),
            insert_owner: Owner::fresh(),
            keeps_diagnostics: false,
            failed_change_users: 0,
            statements: ClientStatements::default(),
            multi_statements: capabilities.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            timing,
        });
        (session, next_seq, gauge)
    }
}

/// Serves an authenticated client's session until it ends. This future lives as long as
/// the client, idle or not, and is as large as its largest state: what runs once (the
/// first attach, the last detach) is boxed, so that an idle client's future is little
/// more than its session and the wait for its next command.
async fn serve_authenticated(mut session: Box<Session>, mut seq: u8) -> End {
    // Attach once at login: it checks the schema exists (1049 otherwise).
    let attached = Box::pin(session.attach_backend()).await;
    Box::pin(session.release_if_free()).await;
    let end = match attached {
        Ok(()) => match session.send_ok(&mut seq).await {
            Ok(()) => {
                if session
                    .capabilities
                    .contains(CapabilityFlags::CLIENT_COMPRESS)
                {
                    // Everything after the login's OK travels compressed.
                    session
                        .stream
                        .get_mut()
                        .get_mut()
                        .start(Side::Server { next_seq: 0 });
                    session.gateway.metrics.compressed_sessions.inc();
                }
                session.command_loop().await
            }
            Err(e) => End::Error(e.to_string()),
        },
        Err(err) => {
            let _ = session.stream.write_packet(&mut seq, &err.encode()).await;
            End::Refused
        }
    };
    Box::pin(session.detach_backend()).await;
    end
}

/// A new client's tracking settings: what the server gives a new session.
fn tracking_defaults(server: &crate::backend::ServerInfo) -> Tracking {
    match &server.tracking_defaults {
        [schema, state, vars] if !schema.is_empty() => Tracking::from_values(schema, state, vars),
        _ => Tracking::default(),
    }
}

impl Session {
    fn flavor(&self) -> Flavor {
        Flavor::of_client(self.capabilities, self.mariadb_capabilities, self.collation)
    }

    /// Borrows a database connection on the client's session (schema, variables,
    /// multi-statement option); on failure the error is the packet to send the client.
    async fn attach_backend(&mut self) -> Result<(), ErrFields> {
        if self.backend.is_some() {
            return Ok(());
        }
        let wanted = WantedSession {
            schema: self.state.schema.as_deref(),
            vars: &self.state.vars,
            multi_statements: Some(self.multi_statements),
            owner: self.owner,
            lane: &self.identity.lane,
            borrows: &self.borrows,
        };
        match self
            .gateway
            .pool
            .borrow_for(&self.identity.backend, self.flavor(), &wanted)
            .await
        {
            Ok(mut lease) => {
                let thread_id = lease.conn().thread_id;
                self.registration.handle.backend.set(thread_id);
                self.backend = Some(lease);
                Ok(())
            }
            // The database refused the client's own login (its grants, host rules, a
            // password changed meanwhile): the database's answer is the client's.
            Err(SessionError::Borrow(BorrowError::Unavailable(BackendError::Refused(err))))
                if !Arc::ptr_eq(&self.identity.backend, self.gateway.identities.shared()) =>
            {
                warn!(
                    code = err.code,
                    "the database refused the client's own login"
                );
                Err(err)
            }
            Err(SessionError::Borrow(e)) => {
                warn!(error = %e, "no database connection for client");
                Err(errors::borrow_failed(&e))
            }
            Err(SessionError::Refused(err)) => Err(err),
            Err(SessionError::Lost(e)) => {
                warn!(error = %e, "pooled database connections kept failing");
                Err(errors::lost_backend(&e))
            }
        }
    }

    /// In transaction pooling, gives the connection back when nothing ties the client to it:
    /// no open transaction and no pin. Its session state is tracked, so no reset is needed
    /// (unless `reset_on_release` says it holds what sluice cannot carry).
    async fn release_if_free(&mut self) {
        let tied = self.identity.pool_mode == PoolMode::Session
            || self.pin.is_some()
            || self.keeps_diagnostics
            || self.next_transaction != NextTransaction::None
            || self.statements.open_cursors() > 0
            || self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        if !tied {
            self.settle_insert_id().await;
            if let Some(lease) = self.backend.take() {
                self.registration.handle.backend.set(0);
                if std::mem::take(&mut self.reset_on_release) {
                    self.gateway.pool.give_back(lease).await;
                } else {
                    self.gateway.pool.release(lease);
                }
            }
        }
    }

    /// Ties the client to its connection for good, counting the reason once.
    fn pin(&mut self, reason: &'static str) {
        if self.pin.is_none() && self.identity.pool_mode == PoolMode::Transaction {
            self.count_pin(reason);
            self.pin = Some(reason);
            self.registration.handle.activity.set_pin(Some(reason));
        }
    }

    /// Counts a reason the client keeps its connection (for good, or while a cursor is open).
    fn count_pin(&self, reason: &'static str) {
        if self.identity.pool_mode == PoolMode::Transaction {
            debug!(reason, "client pinned to its database connection");
            self.gateway.metrics.pins.with_label_values(&[reason]).inc();
        }
    }

    /// Learns from a reply what changed in the client's session. A change sluice cannot
    /// account for pins the client: one the server reports without naming it, or any
    /// change after a statement sluice does not understand.
    fn absorb(&mut self, outcome: &ReplyOutcome, accounting: Accounting<'_>) {
        if let Some(status) = outcome.status {
            let in_transaction = status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
            if in_transaction && !self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
                self.defaults_at_begin = Some(transaction::defaults(&self.state.vars));
            }
            self.status = status;
            self.next_transaction = self.next_transaction.after(
                accounting.next_transaction,
                accounting.starts_with_characteristics,
                in_transaction,
            );
        }
        let changes = &outcome.changes;
        let named = !changes.variables.is_empty() || changes.schema.is_some();
        if let Some(lease) = self.backend.as_mut() {
            let conn = lease.conn();
            if !accounting.temporary_variables {
                for (name, value) in &changes.variables {
                    if OWNED_VARIABLES.contains(&name.as_str()) {
                        continue;
                    }
                    if name == "character_set_results" {
                        // Set on its own, it carries its default collation (a SET NAMES is
                        // read back whole afterwards, see `after_query`).
                        for vars in [&mut self.state.vars, &mut conn.vars] {
                            vars.insert(NAMES_COLLATION.to_owned(), String::new());
                        }
                    }
                    self.state.vars.insert(name.clone(), value.clone());
                    conn.vars.insert(name.clone(), value.clone());
                }
            }
            if let Some(schema) = &changes.schema {
                let schema = (!schema.is_empty()).then(|| schema.clone());
                conn.schema = Some(schema.clone());
                self.state.schema = schema;
            }
            if let Some(status) = outcome.status {
                // The status flags are a witness too: autocommit as the server has it now,
                // however it was changed.
                let on = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
                let carried = self.state.vars.get("autocommit").map(|v| v == "ON");
                if carried.unwrap_or(true) != on {
                    let value = if on { "ON" } else { "OFF" }.to_owned();
                    self.state.vars.insert("autocommit".into(), value.clone());
                    conn.vars.insert("autocommit".into(), value);
                }
            }
        }
        if changes.state_changed && (accounting.unknown || !named) {
            // Something changed that sluice cannot name, so it cannot carry it either.
            self.pin("session_state");
        }
        if outcome.insert_id_seen || accounting.may_set_insert_id {
            // The server's LAST_INSERT_ID() may have changed (an OK packet's insert id is not
            // it: an explicit id or ON DUPLICATE KEY UPDATE report one and change nothing),
            // so it is read back before the connection goes (see `settle_insert_id`).
            if let Some(lease) = self.backend.as_mut() {
                lease.conn().last_insert_id_of = Some(self.insert_owner);
                self.insert_id_unsettled = true;
            }
        }
        match (outcome.rows, outcome.last_ok) {
            (Some(rows), _) => {
                self.state.found_rows = rows;
                self.state.row_count = -1;
            }
            (None, Some(ok)) => self.state.row_count = ok.affected_rows as i64,
            (None, None) => {}
        }
    }

    /// Ends the session because sluice is shutting down: the client has been quiet between
    /// transactions for `shutdown_idle_grace`, or the drain's deadline came (a transaction
    /// still open then is rolled back by the reset on give-back). The client gets the
    /// server's shutdown error, which its next command reads as the answer.
    async fn shut_down(&mut self, in_transaction: bool) -> End {
        if in_transaction {
            warn!("transaction still open at the end of shutdown_timeout; rolling it back");
        }
        self.detach_backend().await;
        let mut seq = 1;
        let _ = self.send_err(&mut seq, &errors::shutting_down()).await;
        End::Shutdown
    }

    /// Returns the database connection, reset, to the pool.
    async fn detach_backend(&mut self) {
        self.registration.handle.backend.set(0);
        if let Some(lease) = self.backend.take() {
            self.gateway.pool.give_back(lease).await;
        }
    }

    async fn send_ok(&mut self, seq: &mut u8) -> Result<(), ProtocolError> {
        let ok = OkFields {
            status: self.status,
            ..OkFields::default()
        };
        self.stream
            .write_packet(seq, &response::encode_ok(self.capabilities, &ok, ""))
            .await
    }

    async fn send_err(&mut self, seq: &mut u8, err: &ErrFields) -> Result<(), ProtocolError> {
        self.stream.write_packet(seq, &err.encode()).await
    }

    /// Answers the client's command with `err` (sequence id `seq`); the session goes on
    /// unless the client is gone.
    async fn reply_err(&mut self, mut seq: u8, err: &ErrFields) -> Result<(), End> {
        self.send_err(&mut seq, err).await.map_err(client_end)
    }

    async fn command_loop(&mut self) -> End {
        let mut transaction_expired = false;
        let mut shutdown = self.gateway.shutdown.watch();
        // Whether the client's buffers are still held since its last command.
        let mut buffers_held = true;
        // Since when the client has sent nothing: the end of its login or of the reply to
        // its last command (a long statement is not quiet). Unset while a command runs.
        let mut quiet_since = None;
        loop {
            // One clock read per turn of the loop, for every limit below.
            let now = std::time::Instant::now();
            let quiet_from = *quiet_since.get_or_insert(now);
            // Read before each command, so a reload's timeouts apply to connected clients.
            let (client_limit, transaction_limit, diagnostics_hold, idle_grace) = {
                let settings = self.gateway.settings();
                (
                    settings.idle_client_timeout,
                    settings.idle_transaction_timeout,
                    settings.diagnostics_hold,
                    settings.shutdown_idle_grace,
                )
            };
            // An open cursor, or characteristics set for the next transaction, hold a
            // connection just as an open transaction does.
            let in_transaction = (self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                || self.statements.open_cursors() > 0
                || self.next_transaction != NextTransaction::None)
                && !transaction_expired;
            // Every limit counts from when the client went quiet, whatever woke this loop
            // since (a drain beginning, warnings let go, buffers given back).
            let quiet_for = now.saturating_duration_since(quiet_from);
            let mut limit = if in_transaction {
                transaction_limit
            } else {
                client_limit
            }
            .saturating_sub(quiet_for);
            let holding_diagnostics =
                self.keeps_diagnostics && self.backend.is_some() && !in_transaction;
            if holding_diagnostics {
                limit = limit.min(diagnostics_hold.saturating_sub(quiet_for));
            }
            let draining = *shutdown.borrow_and_update();
            if let Some(deadline) = draining {
                // Inside a transaction: until the deadline. Between transactions: while the
                // client keeps sending commands, so one that connected a moment before the
                // drain (a function about to run its statements) is served, not told 1053.
                let mut left = deadline.saturating_duration_since(now);
                if !in_transaction {
                    left = left.min((quiet_from + idle_grace).saturating_duration_since(now));
                }
                if left.is_zero() {
                    return self.shut_down(in_transaction).await;
                }
                limit = limit.min(left);
            }
            // A client quiet for a moment gives its buffers back: 100,000 idle clients must
            // not each hold a read and a write buffer.
            let release_in = QUIET_BEFORE_RELEASING_BUFFERS.saturating_sub(quiet_for);
            let releasing = buffers_held && release_in < limit;
            if releasing {
                limit = release_in;
            }
            let kill = self.registration.handle.kill.clone();
            let next = tokio::select! {
                // A kill that arrived before the client's next command wins over it, as on
                // the server: the client is told instead of being served.
                biased;
                () = kill.notified() => {
                    let mut seq = 1;
                    let _ = self.send_err(&mut seq, &ErrFields::new(1927, "70100", "Connection was killed")).await;
                    return End::Error("killed".into());
                }
                Ok(()) = shutdown.changed() => continue,
                next = tokio::time::timeout(limit, self.stream.read_packet()) => next,
            };
            let read = match next {
                Ok(read) => {
                    buffers_held = true;
                    read
                }
                Err(_) if releasing => {
                    self.stream.release_buffers();
                    buffers_held = false;
                    continue;
                }
                // The drain's deadline or grace, not the client's idle limit: handled above.
                Err(_) if draining.is_some() => continue,
                Err(_) if holding_diagnostics => {
                    // The warnings stay on the connection, emptied for anyone else.
                    self.keeps_diagnostics = false;
                    self.release_if_free().await;
                    continue;
                }
                Err(_) if in_transaction => {
                    // A frozen or dead function holding locks: roll back now (the reset on
                    // give-back does it), keep the socket so the client learns why if it returns.
                    warn!(
                        limit = ?transaction_limit,
                        "client idle inside a transaction or cursor; rolling it back"
                    );
                    self.gateway
                        .metrics
                        .idle_timeouts
                        .with_label_values(&["transaction"])
                        .inc();
                    self.detach_backend().await;
                    transaction_expired = true;
                    continue;
                }
                Err(_) => {
                    self.gateway
                        .metrics
                        .idle_timeouts
                        .with_label_values(&["client"])
                        .inc();
                    let mut seq = 1;
                    let _ = self
                        .send_err(&mut seq, &errors::idle_client(client_limit))
                        .await;
                    return End::Error(format!("idle for {client_limit:?}"));
                }
            };
            if transaction_expired {
                return match read {
                    Ok(packet) if packet.payload.first() != Some(&command::QUIT) => {
                        let mut seq = packet.next_seq;
                        let _ = self
                            .send_err(&mut seq, &errors::idle_transaction(transaction_limit))
                            .await;
                        End::Error("returned after its transaction was rolled back".into())
                    }
                    _ => End::Quit,
                };
            }
            quiet_since = None;
            let packet = match read {
                Ok(packet) => packet,
                Err(e) if e.is_disconnect() => return End::Disconnected,
                Err(ProtocolError::TooLarge { limit, .. }) => {
                    let err = errors::packet_too_large(limit);
                    super::refuse_oversized(&mut self.stream, 1, &err).await;
                    return End::Error("packet too large".into());
                }
                Err(e) => return End::Error(e.to_string()),
            };
            let Some(&command_byte) = packet.payload.first() else {
                let mut seq = packet.next_seq;
                let _ = self
                    .send_err(&mut seq, &errors::malformed("empty command"))
                    .await;
                return End::Error("empty command packet".into());
            };
            self.gateway.metrics.commands.count(command_byte);
            let seq = packet.next_seq;
            if matches!(
                command_byte,
                command::QUERY | command::STMT_EXECUTE | command::STMT_BULK_EXECUTE
            ) {
                // Looked up per statement, so a reloaded limit applies to connected clients.
                let over = self
                    .gateway
                    .rate_limits
                    .of(&self.identity.user)
                    .filter(|rate| !rate.allows());
                if let Some(rate) = over {
                    if let Err(end) = self.refuse_over_rate(seq, &rate).await {
                        return end;
                    }
                    continue;
                }
            }
            self.timing.start(&self.registration.handle.activity);
            if command_byte == command::QUIT {
                return End::Quit;
            }
            // Boxed: a command's future is large (a borrow, a relay, a reply read back) and,
            // inline, would be part of this loop's future, held in memory for as long as the
            // client idles between commands. One allocation per command buys about 2.7 KiB
            // less per idle client.
            let outcome = Box::pin(self.dispatch(command_byte, &packet)).await;
            if let Err(end) = outcome {
                return end;
            }
            let query = !matches!(
                command_byte,
                command::PING | command::STMT_SEND_LONG_DATA | command::STMT_CLOSE
            );
            let in_transaction = self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
            self.timing
                .finish(&self.registration.handle.activity, query, in_transaction);
        }
    }

    /// Runs one command to its end (QUIT is the caller's), given its first byte.
    async fn dispatch(
        &mut self,
        command_byte: u8,
        packet: &sluice_protocol::stream::Packet,
    ) -> Result<(), End> {
        let mut seq = packet.next_seq;
        match command_byte {
            command::PING => self.send_ok(&mut seq).await.map_err(Into::into),
            command::CHANGE_USER => self.change_user(&packet.payload, seq).await,
            command::RESET_CONNECTION => self.reset_connection(seq).await,
            command::QUERY => self.query(packet.seq, &packet.payload).await,
            command::SET_OPTION => self.set_option(packet.seq, &packet.payload).await,
            command::STMT_PREPARE => self.stmt_prepare(packet.seq, &packet.payload).await,
            command::STMT_EXECUTE | command::STMT_BULK_EXECUTE => {
                self.stmt_execute(packet.seq, &packet.payload).await
            }
            command::STMT_SEND_LONG_DATA => {
                self.stmt_send_long_data(&packet.payload);
                Ok(())
            }
            command::STMT_CLOSE => self.stmt_close(&packet.payload).await,
            command::STMT_RESET => self.stmt_reset(packet.seq, &packet.payload).await,
            command::STMT_FETCH => self.stmt_fetch(packet.seq, &packet.payload).await,
            command::INIT_DB | command::FIELD_LIST | command::STATISTICS => {
                self.forward(packet.seq, &packet.payload).await
            }
            other => self
                .send_err(&mut seq, &errors::unsupported_command(other))
                .await
                .map_err(Into::into),
        }
    }

    /// Refuses a statement over the user's `max_statements_per_second` (sequence id
    /// `seq`), counting it; the session goes on.
    async fn refuse_over_rate(
        &mut self,
        mut seq: u8,
        rate: &crate::rate::UserRate,
    ) -> Result<(), End> {
        let users = &self.gateway.metrics.users;
        users
            .rate_limited
            .with_label_values(&[users.label(&self.identity.user)])
            .inc();
        let err = errors::rate_limited(&self.identity.user, rate.per_second.get());
        self.send_err(&mut seq, &err).await.map_err(client_end)
    }

    /// COM_QUERY: classifies the text first (see `statement`): refuses a `KILL` it cannot
    /// carry out, runs a `KILL` itself, pins for state that cannot be carried, rewrites
    /// `SET @@name` to a form the server reports and session functions to the values sluice
    /// tracked, then forwards and accounts for what changed.
    async fn query(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let sql = &payload[1..];
        let analysis = statement::analyze(sql, self.backslash_escapes());
        if let Some(why) = analysis.refusal {
            return self
                .reply_err(seq.wrapping_add(1), &errors::kill_refused(why))
                .await;
        }
        if let Some(kill) = analysis.kill {
            return self.kill(seq.wrapping_add(1), kill).await;
        }
        if analysis.local_infile
            && !self
                .capabilities
                .contains(CapabilityFlags::CLIENT_LOCAL_FILES)
        {
            // Database connections always offer LOCAL INFILE; this client did not.
            return self
                .reply_err(seq.wrapping_add(1), &local_infile_refused())
                .await;
        }
        if let Some(reason) = analysis.pin {
            self.pin(reason);
        }
        let unpinned = self.pin.is_none();
        let state = &self.state;
        let id = self.id;
        let rewritten = statement::rewrite(sql, &analysis, |function| match function {
            SessionFunction::ConnectionId => Some(function.typed(id)),
            _ if !unpinned || payload.len() >= MAX_FRAME_PAYLOAD => None,
            // Read on the connection, after `own_insert_id` put the client's value there.
            SessionFunction::LastInsertId => None,
            SessionFunction::RowCount => Some(function.typed(state.row_count)),
            SessionFunction::FoundRows => Some(function.typed(state.found_rows)),
        });
        let hidden: Vec<&[u8]> = analysis
            .scope_inserts
            .iter()
            .map(|name| &sql[name.clone()])
            .collect();
        let mut accounting = Accounting::of(&analysis, &hidden);
        if analysis.sets_tracking & 0x7f != 0 && analysis.statements == 1 {
            let sql = rewritten.as_deref().unwrap_or(sql);
            return self.set_tracking(seq, sql, &analysis, accounting).await;
        }
        let may_set = analysis.may_set_insert_id
            || analysis.sets_last_insert_id
            || analysis.unknown
            || analysis.pin.is_some();
        let insert_id = analysis.reads_last_insert_id || may_set;
        if insert_id {
            // The server must hold this client's value both to answer a read and to keep it
            // when a statement that might change it does not (an explicit id, ON DUPLICATE
            // KEY UPDATE), so that the value read back afterwards is the client's. Both go
            // in the same write as the client's statement.
            if let Err(err) = self.attach_backend().await {
                return self.reply_err(seq.wrapping_add(1), &err).await;
            }
        }
        // A pinned client reads ROW_COUNT() and FOUND_ROWS() from the server, which a
        // SELECT of sluice's would overwrite: its value is read back when it leaves.
        let read_insert_id = may_set && !analysis.reads_client_file && self.pin.is_none();
        let own = self.own_statements(insert_id, read_insert_id, analysis.reads_client_file);
        let was_in_transaction = self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        let characteristics_before = self.next_transaction;
        let autocommit_before = self.status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        accounting.pipelined = own.pipelined();
        accounting.read_back = own.read_back();
        let status = match rewritten {
            Some(sql) => {
                let mut payload = Vec::with_capacity(sql.len() + 1);
                payload.push(command::QUERY);
                payload.extend_from_slice(&sql);
                self.forward_accounted(seq, &payload, accounting).await?
            }
            None => self.forward_accounted(seq, payload, accounting).await?,
        };
        if analysis.ddl {
            // Definitions may have changed: cached prepare answers are no longer trusted.
            self.gateway.statements.clear();
        }
        if status.is_none() && analysis.assignments > 1 && self.backend.is_some() {
            // A failed SET of several variables may have applied some of them (MariaDB
            // does), and which is not reported: the session stays where it is.
            self.pin("failed_set");
        }
        if self.ended_transaction_implicitly(&analysis, was_in_transaction) {
            let by_autocommit =
                !autocommit_before && self.status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            let defaults_changed =
                self.defaults_at_begin.take() != Some(transaction::defaults(&self.state.vars));
            self.next_transaction = NextTransaction::ended_implicitly(
                characteristics_before,
                by_autocommit,
                defaults_changed,
            );
        } else if analysis.ends_transaction && status.is_some() {
            let (next, lingered) = self.next_transaction.ended_explicitly();
            self.next_transaction = next;
            self.reset_on_release |= lingered;
        }
        if status.is_some() || self.backend.is_some() {
            self.after_query(&analysis).await?;
        }
        self.release_if_free().await;
        Ok(())
    }

    /// A `SET` of the client's own tracking settings: its OK carries the entries the *new*
    /// settings allow, as from MariaDB, so it is held back until they are known.
    async fn set_tracking(
        &mut self,
        seq: u8,
        sql: &[u8],
        analysis: &Analysis,
        accounting: Accounting<'_>,
    ) -> Result<(), End> {
        let reply_seq = seq.wrapping_add(1);
        if let Err(err) = self.attach_backend().await {
            return self.reply_err(reply_seq, &err).await;
        }
        let Some(lease) = self.backend.as_mut() else {
            return Err(End::Error("no database connection".into()));
        };
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(command::QUERY);
        payload.extend_from_slice(sql);
        let reply = match lease.conn().command_raw(&payload).await {
            Ok(reply) => reply,
            Err(e) => return Err(self.lose_backend(reply_seq, e).await),
        };
        if reply.first() == Some(&response::ERR_HEADER) {
            lease.conn().diagnostics.raised();
            self.keep_diagnostics(true, None);
            self.release_if_free().await;
            let mut seq = reply_seq;
            return self
                .stream
                .write_packet(&mut seq, &reply)
                .await
                .map_err(client_end);
        }
        let (ok, changes) = match session_state::parse_tracked_ok(&reply) {
            Ok(parsed) => parsed,
            Err(e) => return Err(self.lose_backend(reply_seq, e.into()).await),
        };
        let outcome = ReplyOutcome {
            status: Some(ok.status),
            changes,
            last_ok: Some(ok),
            rows: None,
            insert_id_seen: false,
            raised_conditions: ok.warnings > 0,
            times: None,
        };
        if outcome.raised_conditions {
            lease.conn().diagnostics.raised();
        }
        self.absorb(&outcome, accounting);
        self.keep_diagnostics(outcome.raised_conditions, None);
        self.after_query(analysis).await?;
        let packet = match &self.tracking {
            None => response::strip_session_track(&reply),
            Some(tracking) => session_state::filter_tracked_ok(&reply, |kind, data| {
                tracking.keeps(kind, data) && !Tracking::names(kind, data, accounting.hidden)
            }),
        };
        let packet = packet.map_err(|e| End::Error(e.to_string()))?;
        self.release_if_free().await;
        let mut seq = reply_seq;
        self.stream
            .write_packet(&mut seq, &packet)
            .await
            .map_err(client_end)
    }

    /// The first row of `sql` run on the held connection (`None` without one).
    async fn held_row(
        &mut self,
        sql: &str,
    ) -> Result<Option<Result<Vec<Option<String>>, ErrFields>>, End> {
        let Some(lease) = self.backend.as_mut() else {
            return Ok(None);
        };
        match lease.conn().query_text(sql).await {
            Ok(read) => Ok(Some(
                read.map(|rows| rows.into_iter().next().unwrap_or_default()),
            )),
            Err(e) => Err(self.broken_after_reply(e)),
        }
    }

    /// What a query changed that its reply does not say, read back from the connection:
    /// the character sets and collation, and the client's own tracking settings.
    async fn after_query(&mut self, analysis: &Analysis) -> Result<(), End> {
        if analysis.sets_charset {
            // The server reports the character sets a SET NAMES changes, but not the
            // collation, nor the character set a SET of collation_connection implies.
            let read = self
                .held_row(
                    "SELECT @@character_set_client, @@character_set_connection, \
                     @@character_set_results, @@collation_connection",
                )
                .await?;
            match read {
                Some(Ok(values)) => {
                    let values: Vec<String> =
                        values.into_iter().map(Option::unwrap_or_default).collect();
                    // SET NAMES gives all three character sets the connection's collation;
                    // SET CHARACTER SET gives the client's and the results' their default.
                    let names_collation = match values.as_slice() {
                        _ if !analysis.sets_names => None,
                        [client, connection, results, collation]
                            if client == connection && client == results =>
                        {
                            Some(collation.clone())
                        }
                        _ => Some(String::new()),
                    };
                    let names = CHARSET_VARIABLES.iter().chain([&NAMES_COLLATION]);
                    for (name, value) in
                        names.zip(values.into_iter().map(Some).chain([names_collation]))
                    {
                        let Some(value) = value else { continue };
                        if let Some(lease) = self.backend.as_mut() {
                            lease.conn().vars.insert((*name).into(), value.clone());
                        }
                        self.state.vars.insert((*name).into(), value);
                    }
                }
                Some(Err(_)) => self.pin("charset"),
                None => {}
            }
        }
        if analysis.sets_tracking & 0x7f != 0 {
            let read = self
                .held_row(
                    "SELECT @@session_track_schema, @@session_track_state_change, \
                     @@session_track_system_variables",
                )
                .await?;
            let Some(lease) = self.backend.as_mut() else {
                return Ok(());
            };
            let conn = lease.conn();
            let restored = match read {
                None => return Ok(()),
                Some(Ok(values)) => {
                    // Only the settings the client assigned are its own; the others on the
                    // connection are sluice's.
                    if let Some(tracking) = self.tracking.as_mut() {
                        for (index, value) in values.into_iter().enumerate() {
                            if analysis.sets_tracking & (1 << index) != 0 {
                                tracking.set(index, value.as_deref().unwrap_or(""));
                            }
                        }
                    }
                    conn.restore_tracking().await
                }
                Some(Err(_)) => conn.restore_tracking().await,
            };
            match restored {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => self.pin("session_tracking"),
                Err(e) => return Err(self.broken_after_reply(e)),
            }
        }
        Ok(())
    }

    /// The held connection broke after the reply went out: the client cannot be told in
    /// answer to anything, so its session ends as if the database had closed it.
    fn broken_after_reply(&mut self, error: BackendError) -> End {
        warn!(%error, "database connection lost after a reply");
        drop(self.backend.take());
        End::Error(format!("database connection lost: {error}"))
    }

    /// Whether the last text ended the client's transaction without COMMIT or ROLLBACK.
    fn ended_transaction_implicitly(&self, analysis: &Analysis, was_in_transaction: bool) -> bool {
        was_in_transaction
            && !self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
            && !analysis.ends_transaction
    }

    /// Whether a backslash escapes inside strings in the client's `sql_mode`.
    fn backslash_escapes(&self) -> bool {
        !self
            .state
            .vars
            .get("sql_mode")
            .is_some_and(|mode| mode.contains("NO_BACKSLASH_ESCAPES"))
    }

    /// A lone `KILL` statement, carried out on sluice's ids within the client's own user.
    /// The client's own connection behaves as it would on the server: `KILL QUERY` of itself
    /// interrupts the `KILL` (1317), `KILL` of itself ends the session (1927).
    async fn kill(&mut self, seq: u8, kill: Kill) -> Result<(), End> {
        let gateway = self.gateway.clone();
        let own = match kill.target {
            KillTarget::Own => true,
            KillTarget::Id(id) => id == u64::from(self.id),
            KillTarget::QueryId(id) => {
                return self.reply_err(seq, &errors::unknown_query_id(id)).await;
            }
            KillTarget::User(ref user) => {
                if *user != self.identity.user {
                    return self.reply_err(seq, &errors::not_owner(user)).await;
                }
                for target in gateway.sessions.of_user(user, self.id) {
                    if kill.query_only {
                        gateway.kill_query(&target).await;
                    } else {
                        gateway.kill_session(&target).await;
                    }
                }
                !kill.query_only
            }
        };
        if own {
            let err = if kill.query_only {
                ErrFields::new(1317, "70100", "Query execution was interrupted")
            } else {
                ErrFields::new(1927, "70100", "Connection was killed")
            };
            self.reply_err(seq, &err).await?;
            return if kill.query_only {
                Ok(())
            } else {
                Err(End::Error("killed itself".into()))
            };
        }
        if let KillTarget::Id(id) = kill.target {
            match gateway.sessions.target(&self.identity.user, id) {
                Ok(target) if kill.query_only => gateway.kill_query(&target).await,
                Ok(target) => gateway.kill_session(&target).await,
                Err(err) => return self.raise(seq, &err).await,
            }
        }
        let mut seq = seq;
        self.send_ok(&mut seq).await.map_err(client_end)
    }

    /// Answers `err`, which sluice found itself for a statement the server would have
    /// failed, as the server does: raised on the client's connection (`SIGNAL`), so that,
    /// like any failed statement's error, it is in the diagnostics area for the client's
    /// `SHOW ERRORS`, `@@error_count` or `GET DIAGNOSTICS`. A message `SIGNAL` cannot carry
    /// as it is (a backslash, whose meaning depends on `sql_mode`, or past 128 characters)
    /// is only sent to the client.
    async fn raise(&mut self, seq: u8, err: &ErrFields) -> Result<(), End> {
        if err.message.contains('\\') || err.message.chars().count() > 128 {
            return self.reply_err(seq, err).await;
        }
        let sql = format!(
            "SIGNAL SQLSTATE '{}' SET MYSQL_ERRNO = {}, MESSAGE_TEXT = '{}'",
            String::from_utf8_lossy(&err.sql_state),
            err.code,
            err.message.replace('\'', "''")
        );
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.forward_accounted(seq.wrapping_sub(1), &payload, Accounting::default())
            .await?;
        self.release_if_free().await;
        Ok(())
    }

    /// COM_SET_OPTION: multi-statements on or off, carried to whichever connection serves
    /// the client next, like the rest of its session.
    async fn set_option(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let status = self.forward_unreleased(seq, payload).await?;
        let on = match payload.get(1..3) {
            Some([0, 0]) => Some(true),
            Some([1, 0]) => Some(false),
            _ => None,
        };
        if let (Some(_), Some(on)) = (status, on) {
            self.multi_statements = on;
            if let Some(lease) = self.backend.as_mut() {
                lease.conn().multi_statements = Some(on);
            }
        }
        self.release_if_free().await;
        Ok(())
    }

    /// Ends the client's session as it was (a connection it held is reset and returned)
    /// and starts a fresh one on `schema`, as after login.
    async fn start_over(&mut self, schema: Option<String>) {
        self.detach_backend().await;
        self.state = SessionState {
            schema,
            ..SessionState::default()
        };
        self.forget_statements();
        self.pin = None;
        self.registration.handle.activity.set_pin(None);
        self.reset_on_release = false;
        self.defaults_at_begin = None;
        self.next_transaction = NextTransaction::None;
        self.insert_id_unsettled = false;
        self.owner = Owner::fresh();
        self.insert_owner = Owner::fresh();
        self.keeps_diagnostics = false;
        self.status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        if self.tracking.is_some() {
            if let Ok(server) = self.gateway.pool.server_info().await {
                self.tracking = Some(tracking_defaults(&server));
            }
        }
        if self
            .capabilities
            .contains(CapabilityFlags::CLIENT_IGNORE_SPACE)
        {
            // MariaDB's COM_CHANGE_USER and COM_RESET_CONNECTION return sql_mode to the
            // global value, without the IGNORE_SPACE a login with CLIENT_IGNORE_SPACE adds;
            // the connections this client is lent were logged in with it, so the global
            // value is carried.
            if let Some(mode) = self.global_sql_mode().await {
                self.state.vars.insert("sql_mode".to_owned(), mode);
            }
        }
    }

    /// The server's global `sql_mode`, read on a connection of sluice's own login.
    async fn global_sql_mode(&self) -> Option<String> {
        let pool = &self.gateway.pool;
        let mut side = pool.borrow_internal().await.ok()?;
        let rows = side
            .conn()
            .query_text("SELECT @@global.sql_mode")
            .await
            .ok()?
            .ok()?;
        pool.release(side);
        first_value::<String>(&rows)
    }

    /// COM_RESET_CONNECTION: the client's session starts over (schema kept, as the server
    /// does); a connection it held is reset and returned.
    async fn reset_connection(&mut self, mut seq: u8) -> Result<(), End> {
        let schema = self.state.schema.take();
        self.start_over(schema).await;
        if self.identity.pool_mode == PoolMode::Session {
            if let Err(err) = self.attach_backend().await {
                return self.reply_err(seq, &err).await;
            }
        }
        self.send_ok(&mut seq).await.map_err(client_end)
    }

    /// Forwards a command and relays its reply, then gives the connection back if nothing
    /// ties the client to it.
    async fn forward(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        self.forward_unreleased(seq, payload).await?;
        self.release_if_free().await;
        Ok(())
    }

    /// Forwards a command and relays its reply, learning what it changed; the connection
    /// stays held. Returns the reply's final status flags (`None` after an ERR, including
    /// one sluice sent because no connection could be had).
    async fn forward_unreleased(
        &mut self,
        seq: u8,
        payload: &[u8],
    ) -> Result<Option<StatusFlags>, End> {
        self.forward_accounted(seq, payload, Accounting::default())
            .await
    }

    /// [`Session::forward_unreleased`] for a command sluice classified first.
    async fn forward_accounted(
        &mut self,
        seq: u8,
        payload: &[u8],
        accounting: Accounting<'_>,
    ) -> Result<Option<StatusFlags>, End> {
        if let Err(err) = self.attach_backend().await {
            self.reply_err(seq.wrapping_add(1), &err).await?;
            return Ok(None);
        }
        let Some(lease) = self.backend.as_mut() else {
            return Err(End::Error("no database connection".into()));
        };
        let relay = relay::forward(
            &mut self.stream,
            self.tracking.as_ref(),
            accounting.hidden,
            lease.conn(),
            seq,
            payload,
            accounting.pipelined,
        );
        let relayed = match self.gateway.settings().query_timeout {
            Some(limit) => {
                within_query_timeout(relay, limit, &self.gateway, &self.registration.handle).await
            }
            None => relay.await,
        };
        match relayed {
            Ok(outcome) => {
                if let Some((sent, done)) = outcome.times {
                    self.timing.relayed(sent, done);
                }
                self.absorb(&outcome, accounting);
                let holds = match accounting.read_back {
                    Some(read_back) => self.read_back(read_back).await?,
                    None => None,
                };
                self.keep_diagnostics(outcome.raised_conditions, holds);
                Ok(outcome.status)
            }
            Err(RelayError::Client(e)) => {
                // The reply is unfinished; the database connection cannot be reused. A
                // statement still running (a lock wait, a long query) is ended first, as the
                // server would end it for a client that hung up.
                // The connection goes first, so its pool slot can serve the kill.
                drop(self.backend.take());
                if e.is_disconnect() {
                    let gateway = self.gateway.clone();
                    gateway.kill_query(&self.registration.handle).await;
                }
                self.registration.handle.backend.set(0);
                Err(if e.is_disconnect() {
                    End::Disconnected
                } else {
                    End::Error(e.to_string())
                })
            }
            Err(RelayError::Backend { error, next_seq }) => {
                warn!(
                    "database connection lost during {}",
                    command::name(payload[0])
                );
                Err(self.lose_backend(next_seq, error.into()).await)
            }
        }
    }

    /// The held database connection broke: it is discarded and the client, told with an
    /// ERR carrying `seq`, must reconnect.
    async fn lose_backend(&mut self, mut seq: u8, error: BackendError) -> End {
        warn!(%error, "database connection lost");
        drop(self.backend.take());
        let _ = self.send_err(&mut seq, &errors::lost_backend(&error)).await;
        End::Error(format!("database connection lost: {error}"))
    }

    /// Answers a refused COM_CHANGE_USER with `err`. Like MariaDB, the session stays as it
    /// was and the client may try again, but not forever: guessing passwords on one socket
    /// ends after a few tries.
    async fn refuse_change_user(&mut self, mut seq: u8, err: &ErrFields) -> Result<(), End> {
        self.failed_change_users += 1;
        let _ = self.send_err(&mut seq, err).await;
        if self.failed_change_users >= MAX_FAILED_CHANGE_USERS {
            Err(End::Refused)
        } else {
            Ok(())
        }
    }

    /// COM_CHANGE_USER: authenticate as another sluice user and start a clean session.
    async fn change_user(&mut self, payload: &[u8], mut seq: u8) -> Result<(), End> {
        let request = match ChangeUser::parse(payload, self.capabilities) {
            Ok(request) => request,
            Err(e) => {
                let _ = self
                    .send_err(&mut seq, &errors::malformed(&e.to_string()))
                    .await;
                return Err(End::Error(e.to_string()));
            }
        };
        if request
            .auth_plugin
            .as_deref()
            .is_some_and(|p| p != NATIVE_PASSWORD && p != CACHING_SHA2_PASSWORD)
        {
            // The client's proof will answer a switch request: give it a fresh salt.
            self.salt = sluice_protocol::auth::new_salt();
        }
        let socket = super::socket_of(&self.stream);
        let peer = socket
            .tcp()
            .and_then(|tcp| tcp.peer_addr().ok())
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
        if !socket.is_tls() && self.gateway.identities.tls_mode(&request.user) == TlsMode::Require {
            let err = login::tls_refusal(&self.gateway, &request.user, peer);
            return self.refuse_change_user(seq, &err).await;
        }
        // A client that goes quiet in the middle of an authentication exchange gets no
        // longer than at login.
        let proof = tokio::time::timeout(
            self.gateway.settings().login_timeout,
            login::client_proof(
                &self.gateway,
                &mut self.stream,
                &mut seq,
                &request.user,
                request.auth_plugin.as_deref(),
                &request.auth_response,
                &self.salt,
            ),
        )
        .await
        .map_err(|_| End::Error("COM_CHANGE_USER exchange timed out".into()))?
        .map_err(client_end)?;
        let verified =
            login::check_proof(&self.gateway, peer, &request.user, &self.salt, &proof).await;
        let identity = match verified {
            Ok(identity) => identity,
            Err(denied) => {
                let err = login::refusal(denied, &request.user, peer, proof.used_password());
                return self.refuse_change_user(seq, &err).await;
            }
        };
        // A new entry: kills aimed at the old user's session do not reach the new one.
        self.registration = self.gateway.sessions.register(self.id, &identity);
        self.counted = self.gateway.metrics.users.client(&identity.user);
        self.borrows = self.gateway.metrics.users.borrows(&identity.backend.user);
        self.timing
            .set_latency(self.gateway.metrics.users.latency(&identity.user));
        self.identity = identity;
        if let Some(collation) = request.collation {
            self.collation = collation;
        }
        self.start_over(request.database.clone()).await;
        let attached = self.attach_backend().await;
        self.release_if_free().await;
        match attached {
            Ok(()) => self.send_ok(&mut seq).await.map_err(client_end),
            Err(err) => {
                let _ = self.send_err(&mut seq, &err).await;
                Err(End::Refused)
            }
        }
    }
}

/// 4166: `LOAD DATA LOCAL INFILE` from a client that did not offer CLIENT_LOCAL_FILES, as
/// the server answers it.
fn local_infile_refused() -> ErrFields {
    ErrFields::new(
        4166,
        "HY000",
        "The used command is not allowed because the MariaDB server or client has disabled \
         the local infile capability",
    )
}

/// Runs `relay` (one client command and its reply) to its end. If the reply is unfinished
/// after `limit` (`backend.query_timeout`), the statement is killed as a `KILL QUERY` of
/// the client would kill it, on a side connection and by query id: the client gets the
/// server's own interruption error (1317) and keeps its session, and the database
/// connection stays usable.
async fn within_query_timeout<T>(
    relay: impl std::future::Future<Output = T>,
    limit: std::time::Duration,
    gateway: &Arc<Gateway>,
    handle: &crate::registry::SessionHandle,
) -> T {
    tokio::pin!(relay);
    tokio::select! {
        done = &mut relay => return done,
        () = tokio::time::sleep(limit) => {}
    }
    warn!(
        ?limit,
        "statement still running at query_timeout; killing it"
    );
    gateway.metrics.query_timeouts.inc();
    // A task of its own: the reply may end (interrupted) before the kill's own answer has
    // arrived, and a kill dropped mid-command would cost its side connection.
    let (gateway, handle) = (gateway.clone(), handle.clone());
    tokio::spawn(async move { gateway.kill_query(&handle).await });
    relay.await
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        client_end(e)
    }
}

fn client_end(e: ProtocolError) -> End {
    if e.is_disconnect() {
        End::Disconnected
    } else {
        End::Error(e.to_string())
    }
}
