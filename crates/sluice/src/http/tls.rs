//! Optional HTTPS for the Data API (rustls with the ring provider: no OpenSSL needed); the
//! certificate comes from `crate::tls::ServerTls`, shared with the MySQL port or its own.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Runs the server side of a TLS handshake, within `timeout` (`http.header_read_timeout`:
/// a client that connects and stays silent is closed as soon as on a plain listener).
pub async fn handshake<I>(
    acceptor: &TlsAcceptor,
    socket: I,
    timeout: Duration,
) -> std::io::Result<TlsStream<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, acceptor.accept(socket))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
