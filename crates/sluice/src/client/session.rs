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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_protocol::auth::NATIVE_PASSWORD;
use sluice_protocol::handshake::ChangeUser;
use sluice_protocol::packet::MAX_FRAME_PAYLOAD;
use sluice_protocol::response::{self, ErrFields, OkFields};
use sluice_protocol::stream::PacketStream;
use sluice_protocol::{command, CapabilityFlags, ProtocolError, StatusFlags};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

mod prepared;

use self::prepared::ClientStatements;
use super::errors;
use super::login::{self, Authenticated, LoginFailure};
use super::relay::{self, RelayError, ReplyOutcome};
use super::statement::{self, SessionFunction};
use crate::backend::{BackendError, Flavor};
use crate::config::PoolMode;
use crate::pool::{Lease, SessionError, WantedSession};
use crate::registry::SessionHandle;
use crate::Gateway;

/// How a session ended, for the closing log line.
enum End {
    Quit,
    Disconnected,
    Refused,
    Error(String),
}

/// One authenticated client and the database connection it holds, if any.
struct Session {
    gateway: Arc<Gateway>,
    id: u32,
    stream: PacketStream<TcpStream>,
    capabilities: CapabilityFlags,
    user: String,
    mode: PoolMode,
    salt: [u8; 20],
    collation: u8,
    backend: Option<Lease>,
    status: StatusFlags,
    state: SessionState,
    /// Why the client keeps its connection regardless of transactions.
    pin: Option<&'static str>,
    /// How `KILL` from other sessions reaches this one.
    handle: SessionHandle,
    /// The client's prepared statements.
    statements: ClientStatements,
    /// Whether the client's session accepts `;`-separated statements (capability at login,
    /// then COM_SET_OPTION).
    multi_statements: bool,
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

/// Serves one client connection from greeting to close. Never panics on client input.
pub async fn serve_client(gateway: Arc<Gateway>, socket: TcpStream, peer: SocketAddr, id: u32) {
    let span = tracing::info_span!("client", id, %peer);
    async move {
        info!("client connected");
        gateway.metrics.client_connections.inc();
        let end = run(gateway.clone(), socket, peer, id).await;
        gateway.metrics.client_connections.dec();
        match end {
            End::Quit => info!("client closed (quit)"),
            End::Disconnected => info!("client closed (disconnected)"),
            End::Refused => info!("client closed (refused at login)"),
            End::Error(reason) => info!(%reason, "client closed (error)"),
        }
    }
    .instrument(span)
    .await
}

async fn run(gateway: Arc<Gateway>, socket: TcpStream, peer: SocketAddr, id: u32) -> End {
    let mut stream = PacketStream::new(socket, gateway.settings.max_packet_size);
    let server = match gateway.pool.server_info().await {
        Ok(server) => server,
        Err(e) => {
            warn!(error = %e, "refusing client: database unreachable");
            let mut seq = 0;
            let _ = stream
                .write_packet(&mut seq, &errors::borrow_failed(&e).encode())
                .await;
            return End::Refused;
        }
    };
    let auth = match login::authenticate(&gateway, &mut stream, &server, id, peer).await {
        Ok(auth) => auth,
        Err(LoginFailure::Refused) => return End::Refused,
        Err(LoginFailure::Protocol(e)) if e.is_disconnect() => return End::Disconnected,
        Err(LoginFailure::Protocol(e)) => return End::Error(e.to_string()),
    };
    let Authenticated {
        capabilities,
        user,
        collation,
        database,
        salt,
        next_seq,
    } = auth;
    debug!(%user, "client authenticated");
    let mode = pool_mode_of(&gateway, &user);
    let handle = gateway.sessions.register(id, &user);
    let mut session = Session {
        gateway,
        id,
        stream,
        capabilities,
        user,
        mode,
        salt,
        collation,
        backend: None,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        state: SessionState {
            schema: database,
            ..SessionState::default()
        },
        pin: None,
        handle,
        statements: ClientStatements::default(),
        multi_statements: capabilities.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
    };
    let mut seq = next_seq;
    // Attach once at login: it checks the schema exists (1049 otherwise).
    let attached = session.attach_backend().await;
    session.release_if_free();
    let end = match attached {
        Ok(()) => match session.send_ok(&mut seq).await {
            Ok(()) => session.command_loop().await,
            Err(e) => End::Error(e.to_string()),
        },
        Err(err) => {
            let _ = session.stream.write_packet(&mut seq, &err.encode()).await;
            End::Refused
        }
    };
    session.detach_backend().await;
    session.gateway.sessions.remove(id);
    end
}

impl Session {
    fn flavor(&self) -> Flavor {
        Flavor::of_client(self.capabilities, self.collation)
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
        };
        match self.gateway.pool.borrow_for(self.flavor(), &wanted).await {
            Ok(mut lease) => {
                let thread_id = lease.conn().thread_id;
                self.handle
                    .backend_thread
                    .store(thread_id, Ordering::Relaxed);
                self.backend = Some(lease);
                Ok(())
            }
            Err(SessionError::Borrow(e)) => {
                warn!(error = %e, "no database connection for client");
                Err(errors::borrow_failed(&e))
            }
            Err(SessionError::Refused(err)) => Err(err),
            Err(SessionError::Lost(e)) => Err(errors::lost_backend(&e.to_string())),
        }
    }

    /// In transaction pooling, gives the connection back when nothing ties the client to it:
    /// no open transaction and no pin. Its session state is tracked, so no reset is needed.
    fn release_if_free(&mut self) {
        let tied = self.mode == PoolMode::Session
            || self.pin.is_some()
            || self.statements.open_cursors() > 0
            || self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        if !tied {
            if let Some(lease) = self.backend.take() {
                self.handle.backend_thread.store(0, Ordering::Relaxed);
                self.gateway.pool.release(lease);
            }
        }
    }

    /// Ties the client to its connection for good, counting the reason once.
    fn pin(&mut self, reason: &'static str) {
        if self.pin.is_none() && self.mode == PoolMode::Transaction {
            self.count_pin(reason);
            self.pin = Some(reason);
        }
    }

    /// Counts a reason the client keeps its connection (for good, or while a cursor is open).
    fn count_pin(&self, reason: &'static str) {
        if self.mode == PoolMode::Transaction {
            debug!(reason, "client pinned to its database connection");
            self.gateway.metrics.pins.with_label_values(&[reason]).inc();
        }
    }

    /// Learns from a reply what changed in the client's session.
    fn absorb(&mut self, outcome: &ReplyOutcome) {
        if let Some(status) = outcome.status {
            self.status = status;
        }
        let changes = &outcome.changes;
        let carried = !changes.variables.is_empty() || changes.schema.is_some();
        if let Some(lease) = self.backend.as_mut() {
            let conn = lease.conn();
            for (name, value) in &changes.variables {
                if name.starts_with("session_track") {
                    continue;
                }
                self.state.vars.insert(name.clone(), value.clone());
                conn.vars.insert(name.clone(), value.clone());
            }
            if let Some(schema) = &changes.schema {
                let schema = (!schema.is_empty()).then(|| schema.clone());
                conn.schema = Some(schema.clone());
                self.state.schema = schema;
            }
        }
        if changes.state_changed && !carried {
            // Something changed that sluice cannot name, so it cannot carry it either.
            self.pin("session_state");
        }
        if let Some(ok) = outcome.last_ok {
            if ok.last_insert_id != 0 {
                self.state.last_insert_id = ok.last_insert_id;
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

    /// Returns the database connection, reset, to the pool.
    async fn detach_backend(&mut self) {
        self.handle.backend_thread.store(0, Ordering::Relaxed);
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
        let settings = &self.gateway.settings;
        let (client_limit, transaction_limit) = (
            settings.idle_client_timeout,
            settings.idle_transaction_timeout,
        );
        let mut transaction_expired = false;
        loop {
            // An open cursor holds a connection just as an open transaction does.
            let in_transaction = (self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                || self.statements.open_cursors() > 0)
                && !transaction_expired;
            let limit = if in_transaction {
                transaction_limit
            } else {
                client_limit
            };
            let kill = self.handle.kill.clone();
            let next = tokio::select! {
                next = tokio::time::timeout(limit, self.stream.read_packet()) => next,
                () = kill.notified() => {
                    let mut seq = 1;
                    let _ = self.send_err(&mut seq, &ErrFields::new(1927, "70100", "Connection was killed")).await;
                    return End::Error("killed".into());
                }
            };
            let read = match next {
                Ok(read) => read,
                Err(_) if in_transaction => {
                    // A frozen or dead function holding locks: roll back now (the reset on
                    // give-back does it), keep the socket so the client learns why if it returns.
                    warn!(
                        ?limit,
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
                    let _ = self.send_err(&mut seq, &errors::idle_client(limit)).await;
                    return End::Error(format!("idle for {limit:?}"));
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
            let packet = match read {
                Ok(packet) => packet,
                Err(e) if e.is_disconnect() => return End::Disconnected,
                Err(ProtocolError::TooLarge { limit, .. }) => {
                    let mut seq = 1;
                    let _ = self
                        .send_err(&mut seq, &errors::packet_too_large(limit))
                        .await;
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
            self.gateway
                .metrics
                .commands
                .with_label_values(&[command::name(command_byte)])
                .inc();
            let mut seq = packet.next_seq;
            let outcome = match command_byte {
                command::QUIT => return End::Quit,
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
            };
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    /// COM_QUERY: pins for state that cannot be carried, answers session functions from
    /// tracked values, handles KILL, then forwards.
    async fn query(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let Ok(sql) = std::str::from_utf8(&payload[1..]) else {
            return self.forward(seq, payload).await;
        };
        let scan = statement::scan(sql);
        if let Some(reason) = scan.pin {
            self.pin(reason);
        }
        if let Some(kill) = scan.kill {
            let mut seq = seq.wrapping_add(1);
            let reply = self
                .gateway
                .kill(&self.user, kill.id, kill.query_only)
                .await;
            let sent = match reply {
                Ok(()) => self.send_ok(&mut seq).await,
                Err(err) => self.send_err(&mut seq, &err).await,
            };
            return sent.map_err(client_end);
        }
        let unpinned = self.pin.is_none();
        let state = &self.state;
        let id = self.id;
        let rewritten = statement::substitute(sql, &scan.functions, |function| match function {
            SessionFunction::ConnectionId => Some(id.to_string()),
            _ if !unpinned || payload.len() >= MAX_FRAME_PAYLOAD => None,
            SessionFunction::LastInsertId => Some(state.last_insert_id.to_string()),
            SessionFunction::RowCount => Some(state.row_count.to_string()),
            SessionFunction::FoundRows => Some(state.found_rows.to_string()),
        });
        match rewritten {
            Some(sql) => {
                let mut payload = Vec::with_capacity(sql.len() + 1);
                payload.push(command::QUERY);
                payload.extend_from_slice(sql.as_bytes());
                self.forward(seq, &payload).await
            }
            None => self.forward(seq, payload).await,
        }
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
        self.release_if_free();
        Ok(())
    }

    /// COM_RESET_CONNECTION: the client's session starts over (schema kept, as the server
    /// does); a connection it held is reset and returned.
    async fn reset_connection(&mut self, mut seq: u8) -> Result<(), End> {
        self.detach_backend().await;
        self.state = SessionState {
            schema: self.state.schema.take(),
            ..SessionState::default()
        };
        self.forget_statements();
        self.pin = None;
        self.status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        if self.mode == PoolMode::Session {
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
        self.release_if_free();
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
        if let Err(err) = self.attach_backend().await {
            self.reply_err(seq.wrapping_add(1), &err).await?;
            return Ok(None);
        }
        let Some(lease) = self.backend.as_mut() else {
            return Err(End::Error("no database connection".into()));
        };
        let client_tracks_state = self
            .capabilities
            .contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        match relay::forward(
            &mut self.stream,
            client_tracks_state,
            lease.conn(),
            seq,
            payload,
        )
        .await
        {
            Ok(outcome) => {
                self.absorb(&outcome);
                Ok(outcome.status)
            }
            Err(RelayError::Client(e)) => {
                // The reply is unfinished; the database connection cannot be reused.
                drop(self.backend.take());
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
        let _ = self
            .send_err(&mut seq, &errors::lost_backend(&error.to_string()))
            .await;
        End::Error(format!("database connection lost: {error}"))
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
            .is_some_and(|p| p != NATIVE_PASSWORD)
        {
            // The client's proof will answer a switch request: give it a fresh salt.
            self.salt = sluice_protocol::auth::new_salt();
        }
        let proof = login::native_proof(
            &mut self.stream,
            &mut seq,
            request.auth_plugin.as_deref(),
            &request.auth_response,
            &self.salt,
        )
        .await
        .map_err(client_end)?;
        if !login::check_user(&self.gateway, &request.user, &self.salt, &proof) {
            let host = self
                .stream
                .get_ref()
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let err = errors::access_denied(&request.user, &host, !proof.is_empty());
            let _ = self.send_err(&mut seq, &err).await;
            return Err(End::Refused);
        }
        self.user = request.user;
        if let Some(collation) = request.collation {
            self.collation = collation;
        }
        self.status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        self.mode = pool_mode_of(&self.gateway, &self.user);
        self.detach_backend().await;
        self.state = SessionState {
            schema: request.database.clone(),
            ..SessionState::default()
        };
        self.forget_statements();
        self.pin = None;
        let attached = self.attach_backend().await;
        self.release_if_free();
        match attached {
            Ok(()) => self.send_ok(&mut seq).await.map_err(client_end),
            Err(err) => {
                let _ = self.send_err(&mut seq, &err).await;
                Err(End::Refused)
            }
        }
    }
}

/// The pool mode configured for a (validated) user.
fn pool_mode_of(gateway: &Gateway, user: &str) -> PoolMode {
    gateway
        .settings
        .users
        .get(user)
        .map(|u| u.pool_mode)
        .unwrap_or_default()
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
