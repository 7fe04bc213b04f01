//! The life of one client connection: login, then its commands until it leaves.
//!
//! In this version a client keeps one database connection for as long as it is connected
//! (session pooling); when it leaves, the connection is reset and returned to the pool.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_protocol::auth::NATIVE_PASSWORD;
use sluice_protocol::handshake::ChangeUser;
use sluice_protocol::response::{self, ErrFields, OkFields};
use sluice_protocol::stream::PacketStream;
use sluice_protocol::{command, CapabilityFlags, ProtocolError, StatusFlags};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

use super::errors;
use super::login::{self, Authenticated, LoginFailure};
use super::relay::{self, RelayError};
use crate::backend::Flavor;
use crate::pool::Lease;
use crate::Gateway;

/// How a session ended, for the closing log line.
enum End {
    Quit,
    Disconnected,
    Refused,
    Error(String),
}

/// One authenticated client and the database connection it holds.
struct Session {
    gateway: Arc<Gateway>,
    stream: PacketStream<TcpStream>,
    capabilities: CapabilityFlags,
    user: String,
    salt: [u8; 20],
    collation: u8,
    backend: Option<Lease>,
    status: StatusFlags,
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
    let mut session = Session {
        gateway,
        stream,
        capabilities,
        user,
        salt,
        collation,
        backend: None,
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
    };
    let mut seq = next_seq;
    let end = match session.attach_backend(database.as_deref()).await {
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
    end
}

impl Session {
    fn flavor(&self) -> Flavor {
        Flavor::of_client(self.capabilities, self.collation)
    }

    /// Borrows a database connection and puts it on `schema`; on failure the error is the
    /// packet to send the client.
    async fn attach_backend(&mut self, schema: Option<&str>) -> Result<(), ErrFields> {
        /// Pooled connections that turn out dead (e.g. after a database restart) are
        /// replaced this many times before the client is told.
        const ATTEMPTS: usize = 3;
        let pool = self.gateway.pool.clone();
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let mut lease = pool.borrow(self.flavor()).await.map_err(|e| {
                warn!(error = %e, "no database connection for client");
                errors::borrow_failed(&e)
            })?;
            match lease.conn().use_schema(pool.target(), schema).await {
                Ok(Ok(_)) => {
                    debug!(
                        thread_id = lease.conn().thread_id,
                        "attached database connection"
                    );
                    self.backend = Some(lease);
                    return Ok(());
                }
                Ok(Err(server_err)) => {
                    pool.give_back(lease).await;
                    return Err(server_err);
                }
                Err(e) => {
                    // Dropping the lease discards the dead connection.
                    debug!(error = %e, "pooled database connection is dead; trying another");
                    last_error = Some(e);
                }
            }
        }
        let detail = last_error.map(|e| e.to_string()).unwrap_or_default();
        Err(errors::lost_backend(&detail))
    }

    /// Returns the database connection, reset, to the pool.
    async fn detach_backend(&mut self) {
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

    async fn command_loop(&mut self) -> End {
        let settings = &self.gateway.settings;
        let (client_limit, transaction_limit) = (
            settings.idle_client_timeout,
            settings.idle_transaction_timeout,
        );
        let mut transaction_expired = false;
        loop {
            let in_transaction =
                self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) && !transaction_expired;
            let limit = if in_transaction {
                transaction_limit
            } else {
                client_limit
            };
            let read = match tokio::time::timeout(limit, self.stream.read_packet()).await {
                Ok(read) => read,
                Err(_) if in_transaction => {
                    // A frozen or dead function holding locks: roll back now (the reset on
                    // give-back does it), keep the socket so the client learns why if it returns.
                    warn!(?limit, "client idle inside a transaction; rolling it back");
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
                command::QUERY
                | command::INIT_DB
                | command::FIELD_LIST
                | command::STATISTICS
                | command::SET_OPTION
                | command::RESET_CONNECTION
                | command::STMT_PREPARE
                | command::STMT_EXECUTE
                | command::STMT_SEND_LONG_DATA
                | command::STMT_CLOSE
                | command::STMT_RESET
                | command::STMT_FETCH
                | command::STMT_BULK_EXECUTE => self.forward(packet.seq, &packet.payload).await,
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

    async fn forward(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let Some(lease) = self.backend.as_mut() else {
            return Err(End::Error("no database connection".into()));
        };
        match relay::forward(&mut self.stream, lease.conn(), seq, payload).await {
            Ok(status) => {
                if let Some(status) = status {
                    self.status = status;
                }
                Ok(())
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
            Err(RelayError::Backend {
                error,
                mut next_seq,
            }) => {
                warn!(%error, "database connection lost during {}", command::name(payload[0]));
                drop(self.backend.take());
                let _ = self
                    .send_err(&mut next_seq, &errors::lost_backend(&error.to_string()))
                    .await;
                Err(End::Error(format!("database connection lost: {error}")))
            }
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
        self.detach_backend().await;
        match self.attach_backend(request.database.as_deref()).await {
            Ok(()) => self.send_ok(&mut seq).await.map_err(client_end),
            Err(err) => {
                let _ = self.send_err(&mut seq, &err).await;
                Err(End::Refused)
            }
        }
    }
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
