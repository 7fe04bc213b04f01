//! The MySQL client/server protocol as sluice speaks it, in both directions.
//!
//! This crate knows nothing of pools or sessions: it frames packets, builds and parses the
//! handshake, checks `mysql_native_password` proofs, encodes OK/ERR/EOF packets and follows a
//! server's reply packet by packet so that a proxy can forward rows without decoding them.
//! `mysql_common` supplies the packet types and constants it has; what it lacks is here.
#![forbid(unsafe_code)]

pub mod auth;
pub mod caching_sha2;
pub mod command;
pub mod compress;
pub mod error;
pub mod handshake;
pub mod lenenc;
pub mod packet;
pub mod prepared;
pub mod reply;
pub mod response;
pub mod session_state;
pub mod stall;
pub mod stream;

pub use error::ProtocolError;
pub use mysql_common::constants::{CapabilityFlags, MariadbCapabilities, StatusFlags};
