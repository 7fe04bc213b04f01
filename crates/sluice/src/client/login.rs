//! The connection phase toward a client: greeting, TLS when asked for, login,
//! authentication.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sluice_protocol::auth::{self, CACHING_SHA2_PASSWORD, NATIVE_PASSWORD, SALT_LEN};
use sluice_protocol::handshake::{self, Greeting, Login};
use sluice_protocol::response::ErrFields;
use sluice_protocol::{CapabilityFlags, MariadbCapabilities, ProtocolError};

use super::errors;
use super::ClientStream;
use crate::backend::{ServerInfo, OFFERED_MARIADB_CAPABILITIES};
use crate::identity::{Denied, Identity};
use crate::tls::TlsMode;
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
        | CapabilityFlags::CLIENT_COMPRESS.bits()
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

/// Sends the greeting, switches to TLS when the client asks, reads the login, and
/// authenticates it (see [`client_proof`] for which plugin).
pub async fn authenticate(
    gateway: &Gateway,
    stream: &mut ClientStream,
    server: &ServerInfo,
    connection_id: u32,
    peer: SocketAddr,
) -> Result<Authenticated, LoginFailure> {
    let salt = auth::new_salt();
    let tls = gateway.client_tls.as_ref();
    let mut offered = OFFERED & (server.capabilities | CapabilityFlags::CLIENT_PLUGIN_AUTH)
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    if tls.is_some() {
        offered |= CapabilityFlags::CLIENT_SSL;
    }
    let offered_mariadb = server.mariadb_capabilities & OFFERED_MARIADB_CAPABILITIES;
    let greeting = Greeting::for_client(
        &server.version,
        connection_id,
        offered,
        offered_mariadb,
        server.collation,
        &salt,
        gateway.settings().auth.default_plugin.name(),
    );
    let mut seq = 0;
    stream.write_packet(&mut seq, &greeting.encode()).await?;

    // Read exactly the first packet: after an SSLRequest the TLS handshake follows at once.
    let mut packet = match stream.read_packet_exact().await {
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
    let on_tls = match tls {
        Some(tls) if handshake::is_tls_request(&packet.payload) => {
            super::tls::accept(gateway, stream, tls).await?;
            packet = stream.read_packet().await?;
            true
        }
        _ => false,
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
    gateway
        .metrics
        .client_logins
        .with_label_values(&[if on_tls { "tls" } else { "plain" }])
        .inc();
    if !on_tls && gateway.identities.tls_mode(&login.user) == TlsMode::Require {
        let err = tls_refusal(gateway, &login.user, peer.ip());
        stream.write_packet(&mut seq, &err.encode()).await?;
        return Err(LoginFailure::Refused);
    }
    let capabilities = login.capabilities & offered;
    let mariadb_capabilities = login.mariadb_capabilities & offered_mariadb;

    let proof = client_proof(
        gateway,
        stream,
        &mut seq,
        &login.user,
        login.auth_plugin.as_deref(),
        &login.auth_response,
        &salt,
    )
    .await?;
    let identity = match check_proof(gateway, peer.ip(), &login.user, &salt, &proof).await {
        Ok(identity) => identity,
        Err(denied) => {
            let err = refusal(denied, &login.user, peer.ip(), proof.used_password());
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

/// The 1045 a plaintext login of a user who must use TLS gets, counted and logged.
pub fn tls_refusal(gateway: &Gateway, user: &str, peer: IpAddr) -> ErrFields {
    gateway
        .metrics
        .auth_failures
        .with_label_values(&["tls_required"])
        .inc();
    tracing::warn!(%user, %peer, "login without TLS refused: tls_mode is \"require\"");
    errors::tls_required(user, &peer.to_string())
}

/// What a client proved about its password, in the form the identity sources check.
pub struct Proof {
    /// A `mysql_native_password` proof against the connection's salt: the client's own, or
    /// made by sluice from what `caching_sha2_password` showed.
    pub(super) native: Vec<u8>,
    /// The password, when a `caching_sha2_password` full authentication sent it: remembered
    /// for the fast path once the sources accept it.
    pub(super) password: Option<Vec<u8>>,
    /// The proof came from the fast-path cache: if the sources refuse it, the remembered
    /// password is stale and is forgotten.
    pub(super) fast_path: bool,
}

impl Proof {
    pub(super) fn native(native: Vec<u8>) -> Proof {
        Proof {
            native,
            password: None,
            fast_path: false,
        }
    }

    /// Whether the client used a password (for the "using password" part of 1045).
    pub fn used_password(&self) -> bool {
        !self.native.is_empty() || self.password.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// Reads the client's proof for the plugin it answered with (`auth_response`, computed
/// against `salt`), running the plugin's further exchange. A client that answered with a
/// plugin other than `auth.default_plugin` is switched to it with `salt` as the challenge,
/// except that `caching_sha2_password` answers are always taken as they are (so with the
/// native default both plugins are served without a switch).
pub async fn client_proof(
    gateway: &Gateway,
    stream: &mut ClientStream,
    seq: &mut u8,
    user: &str,
    plugin: Option<&str>,
    auth_response: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Proof, ProtocolError> {
    let answer;
    let wanted = gateway.settings().auth.default_plugin.name();
    let (plugin, response) = match plugin {
        None => (NATIVE_PASSWORD, auth_response),
        // As MySQL 8 does for caching_sha2_password accounts: clients that answered with the
        // native plugin (mysql2 always does) are switched when caching_sha2 is the default.
        Some(p) if p == wanted || p == CACHING_SHA2_PASSWORD => (p, auth_response),
        Some(_) => {
            let plugin = wanted;
            let switch = handshake::encode_auth_switch(plugin, salt);
            stream.write_packet(seq, &switch).await?;
            let packet = stream.read_packet().await?;
            *seq = packet.next_seq;
            answer = packet.payload.to_vec();
            (plugin, answer.as_slice())
        }
    };
    if plugin == NATIVE_PASSWORD {
        return Ok(Proof::native(response.to_vec()));
    }
    super::caching_sha2::proof(gateway, stream, seq, user, response, salt).await
}

/// Checks a proof with [`verify_user`], keeping the `caching_sha2_password` fast-path cache
/// in step with the verdict.
pub async fn check_proof(
    gateway: &Gateway,
    peer: IpAddr,
    user: &str,
    salt: &[u8],
    proof: &Proof,
) -> Result<Arc<Identity>, Denied> {
    let verdict = verify_user(gateway, peer, user, salt, &proof.native).await;
    let sha2 = &gateway.identities.caching_sha2;
    match (&verdict, &proof.password) {
        (Ok(_), Some(password)) => sha2.remember(user, password),
        (Err(Denied::BadPassword | Denied::UnknownUser), _) if proof.fast_path => sha2.forget(user),
        _ => {}
    }
    verdict
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
