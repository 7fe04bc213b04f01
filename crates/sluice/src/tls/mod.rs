//! TLS on both sides of the gateway (rustls with the ring provider: no OpenSSL needed).
//!
//! - `socket`: [`Socket`], the transport of every client and database connection, plain or
//!   encrypted, switched per connection after an SSLRequest;
//! - `certs`: [`ServerTls`], the certificate shown to clients (MySQL port and Data API),
//!   re-read when its files change;
//! - `backend`: [`BackendTls`], the `[backend] tls` modes toward the database.

mod backend;
mod certs;
mod socket;

pub use backend::{server_name, BackendTls, BackendTlsMode};
pub use certs::ServerTls;
pub use socket::Socket;

use serde::Deserialize;

/// `tls_mode`, globally and per `[[users]]` entry: whether clients of the MySQL port may,
/// or must, use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS is not offered (`CLIENT_SSL` is not in the greeting).
    Off,
    /// TLS is offered; plaintext logins are accepted too.
    Allow,
    /// Plaintext logins are refused (1045, naming the setting).
    Require,
}

impl TlsMode {
    /// Its name in the configuration and in messages.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Allow => "allow",
            TlsMode::Require => "require",
        }
    }
}

/// The `reason` label of a failed TLS handshake (see `sluice_tls_handshake_failures_total`).
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::TimedOut => return "timeout",
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected => return "disconnected",
        _ => {}
    }
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
    {
        Some(tokio_rustls::rustls::Error::AlertReceived(_)) => "alert_received",
        Some(_) => "bad_handshake",
        None => "other",
    }
}
