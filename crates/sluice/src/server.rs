//! Accepting client connections and running until shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::client::serve_client;
use crate::tls::ServerTls;
use crate::Gateway;

/// Pending connections the kernel may queue for the MySQL listener. A burst of cold function
/// starts arrives all at once; with tokio's default of 1024 the overflow waits for SYN
/// retransmits (1 s, 3 s, ...), which shows up as multi-second connect latency.
const LISTEN_BACKLOG: u32 = 4096;

/// How long after `shutdown_timeout` a drain waits for sessions that were mid-statement.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Keepalive probes on client sockets: a client host that vanished (a frozen or killed
/// function's machine) is found in minutes instead of never.
fn client_keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
}

/// A listener for clients. The options every client socket needs (no Nagle delay on
/// replies, keepalive probes) are set on the listener, whose accepted sockets inherit them
/// on Linux: four `setsockopt` calls per login fewer.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    SockRef::from(&socket).set_tcp_keepalive(&client_keepalive())?;
    socket.set_reuseaddr(true)?;
    // A new instance may bind the same port while the old one drains (rolling restarts):
    // the kernel spreads new connections over both until the old one closes its listener.
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts the session of a client just accepted.
fn spawn_client(gateway: &Arc<Gateway>, socket: TcpStream, peer: SocketAddr, next_id: &AtomicU32) {
    gateway.metrics.client_connections_accepted.inc();
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    // Registered here, in accept order, so the oldest login is the one dropped.
    let pending = gateway.admission.begin_login();
    tokio::spawn(serve_client(gateway.clone(), socket, peer, id, pending));
}

/// Closes a client listener (MySQL or Data API) at the start of a drain, first taking every
/// connection already in its accept queue and handing it to `serve`: the kernel completed
/// their handshakes, so closing the listener with them queued would reset them (unless
/// `net.ipv4.tcp_migrate_req = 1` hands them to another listener on the port, the new
/// instance of a rolling restart). A connection whose handshake completes between the last
/// accept and the close is still reset without that sysctl: a window of microseconds, not
/// of a drain. Returns how many were taken.
pub fn close_listener(
    listener: TcpListener,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) -> usize {
    let mut taken = 0;
    // `into_std` keeps the socket non-blocking, so `accept` says when the queue is empty.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            warn!(error = %e, "could not take the listener's pending connections");
            return 0;
        }
    };
    loop {
        match listener.accept() {
            // Accepted sockets start blocking, whatever the listener is.
            Ok((socket, peer)) => match socket
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(socket))
            {
                Ok(socket) => {
                    serve(socket, peer);
                    taken += 1;
                }
                Err(e) => warn!(error = %e, %peer, "could not serve a pending connection"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A client that gave up while queued: the next one may be fine.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // Out of file descriptors and the like: what is left is reset on close.
                warn!(error = %e, "accept failed while closing the listener");
                break;
            }
        }
    }
    drop(listener);
    taken
}

/// A bound gateway: both listeners are open, so their addresses are known (port 0 works).
pub struct Server {
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: TcpListener,
    http: Option<(TcpListener, Option<Arc<ServerTls>>)>,
    /// The admin console's listener, when `[console]` is on.
    console: Option<TcpListener>,
}

impl Server {
    /// Binds the MySQL and admin listeners from the gateway's settings.
    pub async fn bind(gateway: Arc<Gateway>) -> std::io::Result<Server> {
        let listener = listen(gateway.settings().listen)?;
        let admin = TcpListener::bind(gateway.settings().admin_listen).await?;
        let http = match gateway.settings().http_listen {
            Some(addr) => {
                let tls = match (&gateway.settings().http.tls, &gateway.client_tls) {
                    // The same files as the MySQL port: one certificate, reloaded once.
                    (Some(files), Some(shared))
                        if gateway.settings().tls.as_ref() == Some(files) =>
                    {
                        Some(shared.clone())
                    }
                    (Some(files), _) => Some(ServerTls::load(&files.cert, &files.key)?),
                    (None, _) => None,
                };
                Some((listen(addr)?, tls))
            }
            None => None,
        };
        let console = match &gateway.settings().console {
            Some(console) => Some(TcpListener::bind(console.listen).await?),
            None => None,
        };
        Ok(Server {
            gateway,
            listener,
            admin,
            http,
            console,
        })
    }

    /// The Data API address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The MySQL-protocol address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The admin console's address, when it is on.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state, for tests and status pages.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` completes; then drains (see [`crate::shutdown`]): stops
    /// accepting, waits up to `shutdown_timeout` for clients to finish their transactions
    /// and leave, and returns. Dropping the future (e.g. on a second signal) stops at once.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
        let Server {
            gateway,
            listener,
            admin,
            http,
            console,
        } = self;
        // The fleet member first: it sizes the pool to its share before anything opens.
        let settings = gateway.settings();
        let budget = crate::budget::spawn(&gateway.pool, gateway.server_limit.clone());
        let membership = match (&settings.fleet, &gateway.fleet) {
            (Some(config), Some(board)) => {
                let port = listener.local_addr()?.port();
                let (config, board) = (config.clone(), board.clone());
                let metrics = gateway.metrics.clone();
                let pool = &gateway.pool;
                Some(crate::fleet::start(pool, config, port, budget, board, metrics).await)
            }
            _ => {
                crate::budget::follow(&gateway.pool, budget);
                None
            }
        };
        gateway.pool.spawn_maintenance();
        crate::janitor::spawn(&gateway.pool, &settings.janitor, &gateway.metrics);
        let admin_addr = admin.local_addr()?;
        let admin_task = tokio::spawn(crate::admin::serve(admin, gateway.clone()));
        let console_task =
            console
                .zip(gateway.settings().console.clone())
                .map(|(listener, settings)| {
                    tokio::spawn(crate::admin::console::serve(
                        listener,
                        gateway.clone(),
                        Arc::new(settings),
                    ))
                });
        let http_addr = http.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let api = http
            .as_ref()
            .map(|_| crate::http::Api::new(gateway.clone()));
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel();
        let http_task = http.zip(api.clone()).map(|((listener, tls), api)| {
            tokio::spawn(crate::http::serve(listener, api, tls, http_stopped))
        });
        info!(
            listen = %listener.local_addr()?,
            admin = %admin_addr,
            http = ?http_addr,
            backend = ?gateway.settings().backend,
            max_db_connections = gateway.settings().pool.max_db_connections,
            "sluice is ready"
        );
        let next_id = AtomicU32::new(1);
        tokio::pin!(shutdown);
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment rather than spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            spawn_client(&gateway, socket, peer, &next_id);
        }
        let mut pending = close_listener(listener, |socket, peer| {
            spawn_client(&gateway, socket, peer, &next_id)
        });
        if let Some(task) = http_task {
            // It takes its own accept queue and returns.
            let _ = stop_http.send(());
            pending += task.await.unwrap_or_default();
        }
        let timeout = gateway.settings().shutdown_timeout;
        info!(
            ?timeout,
            clients = gateway.admission.occupied(),
            accepted_from_queue = pending,
            "stopped accepting clients; draining"
        );
        gateway.shutdown.begin(timeout);
        // Past the deadline, sessions still inside a statement get a moment to be told.
        let give_up = Instant::now() + timeout + DRAIN_GRACE;
        let busy = || gateway.admission.occupied() + api.as_ref().map_or(0, |api| api.in_flight());
        while busy() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(api) = &api {
            api.shut_down().await;
        }
        let left = busy();
        if left > 0 {
            warn!(
                clients = left,
                "shutdown_timeout passed; closing the remaining clients"
            );
        }
        admin_task.abort();
        if let Some(task) = console_task {
            task.abort();
        }
        // Database connections say goodbye (COM_QUIT), so the server logs no aborted ones.
        let closed = gateway.pool.close_idle();
        if let Some(membership) = membership {
            membership.leave().await;
        }
        info!(db_connections_closed = closed, "drained; stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listener_s_options() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }
}
