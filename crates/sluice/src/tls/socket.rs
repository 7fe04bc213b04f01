//! A TCP socket that speaks plain bytes or TLS, decided per connection.
//!
//! Client and database connections both start in clear (the MySQL greeting is never
//! encrypted) and may switch to TLS after an SSLRequest. [`Socket`] carries either form
//! through login, relaying and change-user, so the rest of sluice reads and writes packets
//! without knowing which it has.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ConnectionCommon;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// One connection's transport.
pub enum Socket {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS toward a client: sluice is the server (boxed: the TLS state is large).
    Server(Box<server::TlsStream<TcpStream>>),
    /// TLS toward the database: sluice is the client.
    Client(Box<client::TlsStream<TcpStream>>),
    /// A TLS handshake took the socket and did not give it back (it failed, or was given
    /// up): nothing more can be read or written.
    Closed,
}

impl Socket {
    /// The TCP socket underneath, for addresses, socket options and peeking (`None` after a
    /// failed handshake).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Socket::Plain(tcp) => Some(tcp),
            Socket::Server(tls) => Some(tls.get_ref().0),
            Socket::Client(tls) => Some(tls.get_ref().0),
            Socket::Closed => None,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Server(_) | Socket::Client(_))
    }

    /// Runs the server side of a TLS handshake on a plain socket (after a client's
    /// SSLRequest); from then on everything is encrypted.
    pub async fn accept_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let tcp = self.take_plain()?;
        *self = Socket::Server(Box::new(acceptor.accept(tcp).await?));
        Ok(())
    }

    /// Runs the client side of a TLS handshake on a plain socket (after sluice's
    /// SSLRequest to the database), naming `server` (SNI, and the certificate check).
    pub async fn connect_tls(
        &mut self,
        connector: &TlsConnector,
        server: ServerName<'static>,
    ) -> io::Result<()> {
        let tcp = self.take_plain()?;
        *self = Socket::Client(Box::new(connector.connect(server, tcp).await?));
        Ok(())
    }

    /// The plain TCP socket, leaving `Closed` until a handshake puts a TLS one back.
    fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Socket::Closed) {
            Socket::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::other("TLS is already on"))
            }
        }
    }

    /// Whether anything arrived, or the peer closed, without waiting and without starting a
    /// read timer: for an idle connection, which should have nothing to read. A plain
    /// socket is peeked, but only when the runtime's reactor has seen it become readable
    /// since a read last came up short: an idle socket it has not (the usual case) costs no
    /// system call, and a peek that finds nothing clears that readiness. A TLS one is read (records such as session tickets are taken in, and a
    /// byte of data means the connection is unusable anyway).
    pub fn has_input_or_closed(&mut self) -> bool {
        match self {
            Socket::Plain(tcp) => {
                let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
                let peek = || SockRef::from(&*tcp).peek(&mut byte);
                match tcp.try_io(tokio::io::Interest::READABLE, peek) {
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            Socket::Closed => true,
            tls => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                !matches!(Pin::new(tls).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }

    /// Sends `bytes` now, without waiting: a last word (COM_QUIT) from a destructor. Inside
    /// TLS they are sealed into a record first. Nothing is sent when the socket would block.
    pub fn send_now(&mut self, bytes: &[u8]) {
        match self {
            Socket::Plain(tcp) => {
                let _ = SockRef::from(&*tcp).send(bytes);
            }
            Socket::Client(tls) => {
                let (tcp, conn) = tls.get_mut();
                seal_and_send(tcp, conn, bytes);
            }
            Socket::Server(tls) => {
                let (tcp, conn) = tls.get_mut();
                seal_and_send(tcp, conn, bytes);
            }
            Socket::Closed => {}
        }
    }
}

/// The error of any use of a `Closed` socket.
fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the TLS handshake did not complete",
    )
}

/// Seals `bytes` into TLS records of `conn` and sends them on `tcp` without waiting.
fn seal_and_send<D>(tcp: &TcpStream, conn: &mut ConnectionCommon<D>, bytes: &[u8]) {
    let mut sealed = Vec::new();
    if conn.writer().write_all(bytes).is_ok() && conn.write_tls(&mut sealed).is_ok() {
        let _ = SockRef::from(tcp).send(&sealed);
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Socket::Server(io) => Pin::new(io).poll_read(cx, buf),
            Socket::Client(io) => Pin::new(io).poll_read(cx, buf),
            Socket::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Socket::Server(io) => Pin::new(io).poll_write(cx, buf),
            Socket::Client(io) => Pin::new(io).poll_write(cx, buf),
            Socket::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Socket::Server(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Socket::Client(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Socket::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(io) => io.is_write_vectored(),
            Socket::Server(io) => io.is_write_vectored(),
            Socket::Client(io) => io.is_write_vectored(),
            Socket::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(io) => Pin::new(io).poll_flush(cx),
            Socket::Server(io) => Pin::new(io).poll_flush(cx),
            Socket::Client(io) => Pin::new(io).poll_flush(cx),
            Socket::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Socket::Server(io) => Pin::new(io).poll_shutdown(cx),
            Socket::Client(io) => Pin::new(io).poll_shutdown(cx),
            Socket::Closed => Poll::Ready(Ok(())),
        }
    }
}
