//! The TLS handshake toward a client that sent an SSLRequest, counted by outcome.

use sluice_protocol::ProtocolError;

use super::ClientStream;
use crate::tls::ServerTls;
use crate::Gateway;

/// Switches the client's connection to TLS with the certificate as it is now on disk. A
/// failure is counted in `sluice_tls_handshake_failures_total{listener="mysql"}` by reason
/// and ends the login (the caller's `login_timeout` bounds a silent client).
pub async fn accept(
    gateway: &Gateway,
    stream: &mut ClientStream,
    tls: &ServerTls,
) -> Result<(), ProtocolError> {
    let acceptor = tls.acceptor();
    let socket = stream.get_mut().get_mut().get_mut();
    if let Err(e) = socket.accept_tls(&acceptor).await {
        let reason = crate::tls::failure_reason(&e);
        gateway
            .metrics
            .tls_handshake_failures
            .with_label_values(&["mysql", reason])
            .inc();
        tracing::info!(reason, error = %e, "client TLS handshake failed");
        return Err(ProtocolError::Io(e));
    }
    Ok(())
}
