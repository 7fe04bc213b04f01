//! Errors raised while reading or writing protocol packets.

use std::io;

/// What went wrong on one connection's byte stream; the connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed or closed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between packets.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent bytes that are not a valid packet of the expected kind.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The peer sent a logical packet larger than the configured limit.
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received so far for this logical packet.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
}

impl ProtocolError {
    /// True when the peer went away rather than misbehaving, so callers can log it quietly.
    pub fn is_disconnect(&self) -> bool {
        match self {
            ProtocolError::Closed => true,
            ProtocolError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// True when the stream made no progress for its limit (see [`crate::stall`]): the peer
    /// is stalled rather than gone.
    pub fn is_stall(&self) -> bool {
        matches!(self, ProtocolError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}
