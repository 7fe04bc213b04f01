//! The connection phase toward a client: greeting, login, authentication.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sluice_protocol::auth::{self, NATIVE_PASSWORD, SALT_LEN};
use sluice_protocol::handshake::{self, Greeting, Login};
use sluice_protocol::response::ErrFields;
use sluice_protocol::{CapabilityFlags, MariadbCapabilities, ProtocolError};

use super::errors;
use super::ClientStream;
use crate::backend::{ServerInfo, FLAVOR_MARIADB_CAPABILITIES};
use crate::identity::{Denied, Identity};
use crate::Gateway;

/// Capabilities sluice can honour toward clients (further limited by the database's).
const OFFERED: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_FOUND_ROWS.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_NO_SCHEMA.bits()
        | CapabilityFlags::CLIENT_ODBC.bits()
        | CapabilityFlags::CLIENT_LOCAL_FILES.bits()
        | CapabilityFlags::CLIENT_IGNORE_SPACE.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_INTERACTIVE.bits()
        | CapabilityFlags::CLIENT_IGNORE_SIGPIPE.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_CONNECT_ATTRS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits()
        | CapabilityFlags::CLIENT_SESSION_TRACK.bits()
        | CapabilityFlags::CLIENT_DEPRECATE_EOF.bits(),
);

/// A client that has proved who it is.
pub struct Authenticated {
    /// Capabilities both sides agreed on.
    pub capabilities: CapabilityFlags,
    /// MariaDB's extended capabilities both sides agreed on (extended metadata at most).
    pub mariadb_capabilities: MariadbCapabilities,
    /// The sluice user.
    pub user: String,
    /// Who it proved to be, and as whom its database connections log in.
    pub identity: Arc<Identity>,
    /// Collation id from the login packet.
    pub collation: u8,
    /// Schema requested at login.
    pub database: Option<String>,
    /// The salt of this connection, reused by COM_CHANGE_USER.
    pub salt: [u8; SALT_LEN],
    /// Sequence id for the packet that answers the login (OK or ERR).
    pub next_seq: u8,
}

/// Largest packet a client may send before it has authenticated: a login with its connection
/// attributes is a few hundred bytes, and an unauthenticated peer must not make sluice
/// buffer `max_packet_size`.
pub const MAX_LOGIN_PACKET: usize = 64 * 1024;

/// Why a login ended without a session.
pub enum LoginFailure {
    /// The client went away or sent garbage; nothing more to say to it.
    Protocol(ProtocolError),
    /// The client was refused; the ERR packet has been sent.
    Refused,
}

impl From<ProtocolError> for LoginFailure {
    fn from(e: ProtocolError) -> Self {
        LoginFailure::Protocol(e)
    }
}

/// Sends the greeting, reads the login, and authenticates it (switching a client that
/// offers another plugin, e.g. MySQL 8's `caching_sha2_password`, to `mysql_native_password`).
pub async fn authenticate(
    gateway: &Gateway,
    stream: &mut ClientStream,
    server: &ServerInfo,
    connection_id: u32,
    peer: SocketAddr,
) -> Result<Authenticated, LoginFailure> {
    let salt = auth::new_salt();
    let offered = OFFERED & (server.capabilities | CapabilityFlags::CLIENT_PLUGIN_AUTH)
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    let offered_mariadb = server.mariadb_capabilities & FLAVOR_MARIADB_CAPABILITIES;
    let greeting = Greeting::for_client(
        &server.version,
        connection_id,
        offered,
        offered_mariadb,
        server.collation,
        &salt,
    );
    let mut seq = 0;
    stream.write_packet(&mut seq, &greeting.encode()).await?;

    let packet = match stream.read_packet().await {
        Ok(packet) => packet,
        Err(ProtocolError::TooLarge { .. }) => {
            gateway
                .metrics
                .login_aborts
                .with_label_values(&["too_large"])
                .inc();
            let err = errors::login_packet_too_large(MAX_LOGIN_PACKET);
            super::refuse_oversized(stream, 2, &err).await;
            return Err(LoginFailure::Refused);
        }
        Err(e) => return Err(e.into()),
    };
    let mut seq = packet.next_seq;
    let login = match Login::parse(&packet.payload) {
        Ok(login) => login,
        Err(ProtocolError::Malformed(what)) => {
            gateway
                .metrics
                .auth_failures
                .with_label_values(&["bad_packet"])
                .inc();
            stream
                .write_packet(&mut seq, &errors::malformed(what).encode())
                .await?;
            return Err(LoginFailure::Refused);
        }
        Err(e) => return Err(e.into()),
    };
    let capabilities = login.capabilities & offered;
    let mariadb_capabilities = login.mariadb_capabilities & offered_mariadb;

    let proof = native_proof(
        stream,
        &mut seq,
        login.auth_plugin.as_deref(),
        &login.auth_response,
        &salt,
    )
    .await?;

    let identity = match verify_user(gateway, peer.ip(), &login.user, &salt, &proof).await {
        Ok(identity) => identity,
        Err(denied) => {
            let err = refusal(denied, &login.user, peer.ip(), !proof.is_empty());
            stream.write_packet(&mut seq, &err.encode()).await?;
            return Err(LoginFailure::Refused);
        }
    };
    Ok(Authenticated {
        capabilities,
        mariadb_capabilities,
        user: login.user,
        identity,
        collation: login.collation,
        database: login.database,
        salt,
        next_seq: seq,
    })
}

/// The client's `mysql_native_password` proof: the auth data it sent when it used that
/// plugin, otherwise its answer to an AuthSwitchRequest carrying `salt`.
pub async fn native_proof(
    stream: &mut ClientStream,
    seq: &mut u8,
    plugin: Option<&str>,
    auth_response: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, ProtocolError> {
    if plugin.is_none_or(|p| p == NATIVE_PASSWORD) {
        return Ok(auth_response.to_vec());
    }
    let switch = handshake::encode_auth_switch(NATIVE_PASSWORD, salt);
    stream.write_packet(seq, &switch).await?;
    let answer = stream.read_packet().await?;
    *seq = answer.next_seq;
    Ok(answer.payload)
}

/// The error a refused login (or COM_CHANGE_USER) gets: access denied, or 1040 when no
/// source could check the password (the auth query failed), which is no fault of the client.
pub fn refusal(denied: Denied, user: &str, peer: IpAddr, used_password: bool) -> ErrFields {
    match denied {
        Denied::Unavailable => errors::auth_unavailable(),
        _ => errors::access_denied(user, &peer.to_string(), used_password),
    }
}

/// Checks a `mysql_native_password` proof for `user` logging in from `peer`. After recent
/// failures of the same address and user the check waits first (see `LoginThrottle`);
/// failures are counted by reason and logged with user and peer. A check the auth query
/// could not make is no failure of the client's and does not lengthen its wait.
pub async fn verify_user(
    gateway: &Gateway,
    peer: IpAddr,
    user: &str,
    salt: &[u8],
    proof: &[u8],
) -> Result<Arc<Identity>, Denied> {
    let delay = gateway.throttle.delay(peer, user);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let denied = match gateway.identities.verify(user, salt, proof).await {
        Ok(identity) => {
            gateway.throttle.succeeded(peer, user);
            return Ok(identity);
        }
        Err(denied) => denied,
    };
    let users = &gateway.metrics.users;
    let label = match denied {
        // Names no source knows (or none could check) are not labelled: anyone can make them up.
        Denied::UnknownUser | Denied::Unavailable => "unknown",
        Denied::BadPassword | Denied::UnsupportedPlugin => users.label(user),
    };
    users.auth_failures.with_label_values(&[label]).inc();
    let reason = denied.reason();
    gateway
        .metrics
        .auth_failures
        .with_label_values(&[reason])
        .inc();
    if denied != Denied::Unavailable {
        gateway.throttle.failed(peer, user);
    }
    tracing::warn!(%user, %peer, reason, ?delay, "login failed");
    Err(denied)
}
