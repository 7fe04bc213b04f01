//! Client sessions: one task per MySQL-protocol client connection.
//!
//! `admission` bounds sockets that are still logging in and seats authenticated clients;
//! `login` authenticates a client against sluice's own user list (`tls` switches it to TLS
//! first when it asks, `caching_sha2` runs that plugin's exchange); `session` runs its command
//! loop; `relay` forwards one command and its reply between the client and a database
//! connection without decoding rows.

mod admission;
mod caching_sha2;
mod errors;
mod login;
mod relay;
mod session;
mod statement;
mod tls;
mod tracking;

pub use admission::{Admission, LoginThrottle};
pub use session::serve_client;

use std::time::Duration;

use sluice_protocol::compress::Compressed;
use sluice_protocol::response::ErrFields;
use sluice_protocol::stall::Stall;
use sluice_protocol::stream::PacketStream;

use crate::tls::Socket;

/// A client connection: packets, compressed once a login asks for it (`CLIENT_COMPRESS`),
/// over a socket, plain or TLS, whose writes time out when the client stops reading
/// (`client_write_timeout`).
pub type ClientStream = PacketStream<Stall<Compressed<Socket>>>;

/// The socket under a client's packets.
fn socket_of(stream: &ClientStream) -> &Socket {
    stream.get_ref().get_ref().get_ref()
}

/// Bytes the client sent that sluice read off the socket and has not handled yet: in the
/// packet buffer, or still inside the compression layer.
fn unread_len(stream: &ClientStream) -> usize {
    stream.buffered_len() + stream.get_ref().get_ref().buffered_len()
}

/// How long a refused oversized packet's remaining bytes are read and dropped before the
/// socket closes, and how many at most.
const DISCARD_TIME: Duration = Duration::from_secs(1);
const DISCARD_BYTES: usize = 64 << 20;

/// Answers a packet over the size limit with `err` (sequence id `seq`) without buffering
/// it, then reads and drops what the client is still sending for a bounded time, so the
/// error reaches it instead of a connection reset. The caller closes the connection.
async fn refuse_oversized(stream: &mut ClientStream, mut seq: u8, err: &ErrFields) {
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        if stream.write_packet(&mut seq, &err.encode()).await.is_ok() {
            stream.discard_input(DISCARD_BYTES).await;
        }
    })
    .await;
}
