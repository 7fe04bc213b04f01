//! Client sessions: one task per MySQL-protocol client connection.
//!
//! `login` authenticates a client against sluice's own user list; `session` runs its command
//! loop; `relay` forwards one command and its reply between the client and a database
//! connection without decoding rows.

mod errors;
mod login;
mod relay;
mod session;
mod statement;
mod tracking;

pub use session::serve_client;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_protocol::stream::PacketStream;
use tokio::net::TcpStream;

use crate::Gateway;

/// Tells a client over `max_client_connections` why it is refused (ERR 1040), then closes.
pub async fn refuse_client(gateway: Arc<Gateway>, socket: TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "refusing client: max_client_connections reached");
    let mut stream = PacketStream::new(socket, 1024);
    let mut seq = 0;
    let err = errors::too_many_clients(gateway.settings.max_client_connections);
    let _ = stream.write_packet(&mut seq, &err.encode()).await;
}
