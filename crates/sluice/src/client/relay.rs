//! Forwarding one command to the database and its reply back to the client.
//!
//! Frames are copied through as they arrive; only headers, column counts and terminators
//! are read (by [`ReplyTracker`]) to find where the reply ends. Output to the client is
//! flushed whenever no further database frame is already buffered, so a reply costs about
//! one write per read.

use std::time::{Duration, Instant};

use sluice_protocol::reply::{ReplyShape, ReplyTracker, Step};
use sluice_protocol::response::{self, OkFields};
use sluice_protocol::session_state::{self, StateChanges};
use sluice_protocol::stream::WRITE_HIGH_WATER;
use sluice_protocol::{ProtocolError, StatusFlags};
use tokio::io::Interest;

use super::tracking::Tracking;
use super::ClientStream;
use crate::backend::{BackendConn, BackendError};

/// How often a TLS client with unread bytes is looked at for a hang-up while its statement
/// runs (see `client_gone`).
const TLS_HANGUP_CHECK: Duration = Duration::from_millis(200);

/// How forwarding a command failed, and so which side is unusable now.
#[derive(Debug)]
pub enum RelayError {
    /// The client went away or misbehaved; the database connection is mid-reply.
    Client(ProtocolError),
    /// The database connection broke or sent garbage. `next_seq` is the sequence id an
    /// error packet to the client must carry.
    Backend {
        /// What went wrong.
        error: ProtocolError,
        /// Sequence id for the client's next packet.
        next_seq: u8,
    },
}

/// What a reply told sluice about the session, besides the data it carried to the client.
#[derive(Debug, Default)]
pub struct ReplyOutcome {
    /// Status flags of the last OK/EOF packet (`None` when the reply ended in ERR).
    pub status: Option<StatusFlags>,
    /// Session-state changes reported by its OK packets.
    pub changes: StateChanges,
    /// The last OK packet's fixed fields (affected rows, insert id).
    pub last_ok: Option<OkFields>,
    /// Rows of the last result set, when the reply ended with one.
    pub rows: Option<u64>,
    /// Some OK packet of the reply carried an insert id (the statement may have changed
    /// `LAST_INSERT_ID()`).
    pub insert_id_seen: bool,
    /// The reply ended in an error or reported warnings: the server's diagnostics area
    /// holds them for the client's next `SHOW WARNINGS`.
    pub raised_conditions: bool,
    /// When the command went to the database and when its reply's last byte had gone to
    /// the client (`None` for a command without a reply).
    pub times: Option<(Instant, Instant)>,
}

/// Statements of sluice's own that travel in the same write as a client's command.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pipelined<'a> {
    /// A statement answered by OK/ERR, sent before the command; its reply is read and
    /// dropped before the command's (an ERR is only logged).
    pub before: Option<&'a str>,
    /// A statement sent after the command; its reply is left for the caller to read.
    pub after: Option<&'a str>,
}

/// Forwards `payload` (a client command that arrived with sequence id `seq`) and relays the
/// whole reply, with `pipelined` statements around it. OK packets are read for session-state changes, and rewritten to carry only
/// the tracking entries the client asked for (`tracking`; `None` for a client without
/// CLIENT_SESSION_TRACK, which gets none), less the variables in `hidden` (changes the
/// server reports only because sluice rewrote how they were set).
pub async fn forward(
    client: &mut ClientStream,
    tracking: Option<&Tracking>,
    hidden: &[&[u8]],
    backend: &mut BackendConn,
    seq: u8,
    payload: &[u8],
    pipelined: Pipelined<'_>,
) -> Result<ReplyOutcome, RelayError> {
    let backend_err = |error, next_seq| RelayError::Backend { error, next_seq };
    if let Some(sql) = pipelined.before {
        backend.queue_query(sql);
    }
    let mut send_seq = seq;
    backend.stream.queue_packet(&mut send_seq, payload);
    // The sequence id of the reply's next frame to the client: numbered on from the
    // command's last frame (a command over 16 MiB has several), whatever the database
    // numbered it. A compressed database connection sets the sequence id to the compressed
    // one at each of its flushes (between result sets), which means nothing on the client's
    // own connection; on a plain one the numbers are the same.
    let mut next_seq = send_seq;
    if let Some(sql) = pipelined.after {
        backend.queue_query(sql);
    }
    let sent = Instant::now();
    backend
        .stream
        .flush()
        .await
        .map_err(|e| backend_err(e, next_seq))?;
    if pipelined.before.is_some() {
        match backend.read_simple_reply().await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "sluice's statement before a command failed")
            }
            Err(BackendError::Protocol(e)) => return Err(backend_err(e, next_seq)),
            Err(BackendError::Stalled) => {
                let stalled = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return Err(backend_err(ProtocolError::Io(stalled), next_seq));
            }
            Err(_) => {
                let error = ProtocolError::Malformed("unexpected reply to sluice's statement");
                return Err(backend_err(error, next_seq));
            }
        }
    }

    let shape = ReplyShape::of_command(payload);
    let mut tracker = ReplyTracker::new(shape, backend.flavor.deprecate_eof());
    let mut outcome = ReplyOutcome::default();
    if tracker.is_finished() {
        return Ok(outcome);
    }
    loop {
        if !backend.stream.has_buffered_frame() || client.queued_len() >= WRITE_HIGH_WATER {
            client.flush().await.map_err(RelayError::Client)?;
        }
        let mut frame = if backend.stream.has_buffered_frame() {
            backend.stream.read_frame().await
        } else {
            // Waiting on the database (a long statement, a lock wait): a client that hangs
            // up meanwhile ends the statement, as it would on a direct connection.
            tokio::select! {
                biased;
                frame = backend.stream.read_frame() => frame,
                () = client_gone(client) => return Err(RelayError::Client(ProtocolError::Closed)),
            }
        }
        .map_err(|e| backend_err(e, next_seq))?;
        let step = tracker
            .feed(frame.header, frame.payload())
            .map_err(|e| backend_err(e, next_seq))?;
        let out_seq = next_seq;
        frame.set_seq(out_seq);
        next_seq = out_seq.wrapping_add(1);
        if tracker.last_was_ok() {
            let (ok, changes) = session_state::parse_tracked_ok(frame.payload())
                .map_err(|e| backend_err(e, next_seq))?;
            outcome.changes.variables.extend(changes.variables);
            outcome.changes.schema = changes.schema.or(outcome.changes.schema.take());
            outcome.changes.state_changed |= changes.state_changed;
            outcome.insert_id_seen |= ok.last_insert_id != 0;
            outcome.last_ok = Some(ok);
            // An OK with the EOF header ends a result set; a plain OK is a statement's result.
            outcome.rows = (frame.payload()[0] == response::EOF_HEADER).then(|| tracker.rows());
            let tracked = ok
                .status
                .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED);
            let mut seq = out_seq;
            match tracking {
                // Nothing to take out: the packet goes as it came.
                Some(_) if !tracked => client.queue_raw(&frame.bytes),
                Some(tracking) if tracking.wants_everything() && hidden.is_empty() => {
                    client.queue_raw(&frame.bytes)
                }
                Some(tracking) => {
                    let packet = session_state::filter_tracked_ok(frame.payload(), |kind, data| {
                        tracking.keeps(kind, data) && !Tracking::names(kind, data, hidden)
                    })
                    .map_err(|e| backend_err(e, next_seq))?;
                    client.queue_packet(&mut seq, &packet);
                }
                None => client
                    .queue_packet_with(&mut seq, |out| {
                        response::strip_session_track_into(frame.payload(), out)
                    })
                    .map_err(|e| backend_err(e, next_seq))?,
            }
        } else {
            if let Step::Done(Some(status)) = step {
                // A classic EOF ends a result set; its status may say state changed without
                // saying what.
                outcome.rows = Some(tracker.rows());
                outcome.changes.state_changed |=
                    status.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED);
            }
            client.queue_raw(&frame.bytes);
        }
        match step {
            Step::More if tracker.ended_result_with_more() => {
                if let Some(seq) = synchronize(client).await? {
                    next_seq = seq;
                }
            }
            Step::More => {}
            Step::LocalInfile => {
                client.flush().await.map_err(RelayError::Client)?;
                next_seq = relay_local_file(client, backend).await?;
            }
            Step::Done(status) => {
                client.flush().await.map_err(RelayError::Client)?;
                outcome.times = Some((sent, Instant::now()));
                outcome.status = status;
                outcome.raised_conditions = tracker.raised_conditions();
                if outcome.raised_conditions {
                    backend.diagnostics.raised();
                }
                return Ok(outcome);
            }
        }
    }
}

/// Between two results of one reply to a compressed client: sends what is queued (so the
/// next result begins a compressed packet) and returns the sequence id it is numbered from,
/// that packet's own, as MariaDB's server does after its flush there. `None` for a plain
/// client, whose reply is numbered straight on.
async fn synchronize(client: &mut ClientStream) -> Result<Option<u8>, RelayError> {
    if !client.get_ref().get_ref().is_on() {
        return Ok(None);
    }
    client.flush().await.map_err(RelayError::Client)?;
    Ok(Some(client.get_ref().get_ref().next_seq()))
}

/// Resolves once the client has closed its socket with nothing unread left; never while it
/// is open (or has sent more, e.g. a pipelined command, which is read later).
///
/// Inside TLS the bytes a client leaves unread cannot be told apart (a pipelined command or
/// the close_notify alert of a client hanging up are both encrypted), so there the socket's
/// read side is watched for the peer's FIN instead, looking again now and then while bytes
/// wait unread.
async fn client_gone(client: &ClientStream) {
    let socket = super::socket_of(client);
    let Some(tcp) = socket.tcp().filter(|_| super::unread_len(client) == 0) else {
        return std::future::pending().await;
    };
    if !socket.is_tls() {
        let mut byte = [0u8; 1];
        return match tcp.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        };
    }
    loop {
        match tcp.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {
                tokio::time::sleep(TLS_HANGUP_CHECK).await;
            }
            _ => return,
        }
    }
}

/// Copies the client's `LOAD DATA LOCAL INFILE` data frames to the database, through the
/// empty frame that ends them. Returns the sequence id the server's answer will carry.
async fn relay_local_file(
    client: &mut ClientStream,
    backend: &mut BackendConn,
) -> Result<u8, RelayError> {
    loop {
        let frame = client.read_frame().await.map_err(RelayError::Client)?;
        backend.stream.queue_raw(&frame.bytes);
        let next_seq = frame.header.seq.wrapping_add(1);
        let last = frame.header.payload_len == 0;
        if last || backend.stream.queued_len() >= WRITE_HIGH_WATER {
            backend
                .stream
                .flush()
                .await
                .map_err(|error| RelayError::Backend { error, next_seq })?;
        }
        if last {
            return Ok(next_seq);
        }
    }
}
