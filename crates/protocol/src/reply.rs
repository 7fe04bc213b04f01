//! Follows a server's reply to one command, frame by frame, to learn where it ends.
//!
//! A proxy forwards rows without decoding them, but it must know when a reply is complete
//! (to read the client's next command) and with which status flags it ended (to learn
//! transaction boundaries). [`ReplyTracker`] reads only packet headers, column counts and
//! terminators to do that.

use crate::command;
use crate::lenenc;
use crate::packet::FrameHeader;
use crate::response::{self, EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER};
use crate::{ProtocolError, StatusFlags};

/// The shape of reply a command produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// OK, ERR, `LOCAL INFILE` request, or result sets (possibly several).
    Results,
    /// A `COM_STMT_EXECUTE` that asked for a cursor: like `Results`, but a result set whose
    /// metadata ends with `SERVER_STATUS_CURSOR_EXISTS` has no rows (they come by
    /// `COM_STMT_FETCH`). Only here is that flag read so: MariaDB also sets it on ordinary
    /// text results once a stored program has opened a cursor.
    CursorResults,
    /// `COM_STMT_PREPARE`: OK with parameter and column definitions, or ERR.
    Prepare,
    /// `COM_FIELD_LIST`: column definitions ended by EOF, or ERR.
    FieldList,
    /// `COM_STMT_FETCH`: rows ended by EOF, or ERR.
    Rows,
    /// `COM_STATISTICS`: exactly one packet.
    Single,
    /// `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT`: nothing at all.
    None,
}

impl ReplyShape {
    /// The reply shape of a command byte.
    pub fn of(command_byte: u8) -> ReplyShape {
        match command_byte {
            command::STMT_PREPARE => ReplyShape::Prepare,
            command::FIELD_LIST => ReplyShape::FieldList,
            command::STMT_FETCH => ReplyShape::Rows,
            command::STATISTICS => ReplyShape::Single,
            command::STMT_CLOSE | command::STMT_SEND_LONG_DATA | command::QUIT => ReplyShape::None,
            _ => ReplyShape::Results,
        }
    }

    /// The reply shape of a whole command packet: as [`ReplyShape::of`], and an execute
    /// (flags after the statement id) that asks for a cursor gets `CursorResults`.
    pub fn of_command(payload: &[u8]) -> ReplyShape {
        match payload {
            [command::STMT_EXECUTE, _, _, _, _, flags, ..] if flags & CURSOR_FLAGS != 0 => {
                ReplyShape::CursorResults
            }
            [first, ..] => ReplyShape::of(*first),
            [] => ReplyShape::None,
        }
    }
}

/// `CURSOR_TYPE_READ_ONLY | CURSOR_TYPE_FOR_UPDATE | CURSOR_TYPE_SCROLLABLE`.
const CURSOR_FLAGS: u8 = 0x07;

/// What the caller should do after feeding a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The reply continues; keep reading.
    More,
    /// The server asked for a local file: relay the client's data packets (up to and
    /// including the empty one), then keep reading the reply.
    LocalInfile,
    /// The reply is complete. The status flags of its last OK/EOF packet, when it had one.
    Done(Option<StatusFlags>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first packet of a result: OK, ERR, LOCAL INFILE or a column count.
    First,
    /// Expecting the COM_STMT_PREPARE OK (or ERR).
    PrepareOk,
    /// Column definitions of a result set still to come.
    Columns(u64),
    /// Expecting the EOF after column definitions.
    ColumnsEof,
    /// Rows until a terminator.
    Rows,
    /// COM_FIELD_LIST definitions until EOF.
    FieldList,
    /// A fixed number of packets still to come, then the reply ends.
    Counted(u64),
    /// Nothing more belongs to this reply.
    Finished,
}

/// State machine over the frames of one reply.
#[derive(Debug)]
pub struct ReplyTracker {
    state: State,
    deprecate_eof: bool,
    mid_packet: bool,
    last_was_ok: bool,
    /// The frame just fed ended a result and another follows.
    more_results: bool,
    rows: u64,
    /// An ERR packet, or a terminator with a warning count, was fed.
    raised_conditions: bool,
    /// A result set may be a cursor (see [`ReplyShape::CursorResults`]).
    cursor_allowed: bool,
}

impl ReplyTracker {
    /// Starts tracking the reply of `shape`, for a connection that negotiated
    /// `CLIENT_DEPRECATE_EOF` when `deprecate_eof` is set.
    pub fn new(shape: ReplyShape, deprecate_eof: bool) -> ReplyTracker {
        let state = match shape {
            ReplyShape::Results | ReplyShape::CursorResults => State::First,
            ReplyShape::Prepare => State::PrepareOk,
            ReplyShape::FieldList => State::FieldList,
            ReplyShape::Rows => State::Rows,
            ReplyShape::Single => State::Counted(1),
            ReplyShape::None => State::Finished,
        };
        ReplyTracker {
            state,
            deprecate_eof,
            mid_packet: false,
            last_was_ok: false,
            more_results: false,
            rows: 0,
            raised_conditions: false,
            cursor_allowed: shape == ReplyShape::CursorResults,
        }
    }

    /// True when the frame just fed was an OK packet (a standalone one, or the OK that ends
    /// a result set under `CLIENT_DEPRECATE_EOF`): the packets that carry session state.
    pub fn last_was_ok(&self) -> bool {
        self.last_was_ok
    }

    /// True when the frame just fed ended one result and another follows
    /// (`SERVER_MORE_RESULTS_EXISTS`): where the server flushes its output, and a compressed
    /// connection's packet numbers are synchronized (see `compress`).
    pub fn ended_result_with_more(&self) -> bool {
        self.more_results
    }

    /// Rows in the most recent result set so far (what `FOUND_ROWS()` reports).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// True when the reply so far ended in an error or reported warnings or notes: the
    /// server's diagnostics area now holds conditions of this command, which `SHOW WARNINGS`
    /// of whoever uses the connection next would read.
    pub fn raised_conditions(&self) -> bool {
        self.raised_conditions
    }

    /// True when the reply is complete (or needed no frame at all).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Feeds the next frame of the reply.
    pub fn feed(&mut self, header: FrameHeader, payload: &[u8]) -> Result<Step, ProtocolError> {
        let continuation = self.mid_packet;
        self.mid_packet = header.continues();
        self.last_was_ok = false;
        self.more_results = false;
        if continuation {
            return Ok(Step::More);
        }
        let first = *payload
            .first()
            .ok_or(ProtocolError::Malformed("empty packet in reply"))?;
        let step = match self.state {
            State::Finished => return Err(ProtocolError::Malformed("data after end of reply")),
            State::First | State::PrepareOk | State::Rows | State::FieldList
                if first == ERR_HEADER =>
            {
                self.raised_conditions = true;
                Step::Done(None)
            }
            State::First => match first {
                OK_HEADER | EOF_HEADER => self.end_of_result(payload)?,
                LOCAL_INFILE_HEADER => Step::LocalInfile,
                _ => {
                    let (columns, _) = lenenc::read_int(payload)?;
                    if columns == 0 {
                        return Err(ProtocolError::Malformed("result set with zero columns"));
                    }
                    self.state = State::Columns(columns);
                    self.rows = 0;
                    Step::More
                }
            },
            State::PrepareOk => {
                // id(4) columns(2) params(2) after the 0x00 header.
                let body = payload
                    .get(1..9)
                    .ok_or(ProtocolError::Malformed("short COM_STMT_PREPARE reply"))?;
                // filler(1) warnings(2) follow.
                self.raised_conditions |= payload.get(10..12).is_some_and(|w| w != [0, 0]);
                let columns = u64::from(u16::from_le_bytes([body[4], body[5]]));
                let params = u64::from(u16::from_le_bytes([body[6], body[7]]));
                let eofs = u64::from(!self.deprecate_eof)
                    * (u64::from(columns > 0) + u64::from(params > 0));
                self.counted(columns + params + eofs)
            }
            State::Columns(left) => {
                self.state = match (left - 1, self.deprecate_eof) {
                    (0, true) => State::Rows,
                    (0, false) => State::ColumnsEof,
                    (rest, _) => State::Columns(rest),
                };
                Step::More
            }
            State::ColumnsEof => {
                let status = self.terminator(payload).ok_or(ProtocolError::Malformed(
                    "expected EOF after column definitions",
                ))?;
                if self.cursor_allowed && status.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS)
                {
                    Step::Done(Some(status))
                } else {
                    self.state = State::Rows;
                    Step::More
                }
            }
            State::Rows if response::is_eof(payload) => self.end_of_result(payload)?,
            State::FieldList if response::is_eof(payload) => Step::Done(self.terminator(payload)),
            State::Rows => {
                self.rows += 1;
                Step::More
            }
            State::FieldList => Step::More,
            State::Counted(left) => self.counted(left - 1),
        };
        if matches!(step, Step::Done(_)) {
            self.state = State::Finished;
        }
        Ok(step)
    }

    /// The status of an OK/EOF packet, noting its warnings.
    fn terminator(&mut self, payload: &[u8]) -> Option<StatusFlags> {
        let (status, warnings) = response::parse_terminator(payload)?;
        self.raised_conditions |= warnings > 0;
        Some(status)
    }

    fn counted(&mut self, left: u64) -> Step {
        if left == 0 {
            Step::Done(None)
        } else {
            self.state = State::Counted(left);
            Step::More
        }
    }

    fn end_of_result(&mut self, payload: &[u8]) -> Result<Step, ProtocolError> {
        let status = self
            .terminator(payload)
            .ok_or(ProtocolError::Malformed("malformed OK/EOF packet"))?;
        self.last_was_ok = payload[0] == OK_HEADER || payload.len() > 5;
        if status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
            self.state = State::First;
            self.more_results = true;
            Ok(Step::More)
        } else {
            Ok(Step::Done(Some(status)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::MAX_FRAME_PAYLOAD;
    use crate::response::{encode_eof, encode_ok, ErrFields, OkFields};
    use crate::CapabilityFlags;

    fn header(len: usize) -> FrameHeader {
        FrameHeader {
            payload_len: len,
            seq: 1,
        }
    }

    fn feed_all(tracker: &mut ReplyTracker, packets: &[Vec<u8>]) -> Vec<Step> {
        packets
            .iter()
            .map(|p| tracker.feed(header(p.len()), p).unwrap())
            .collect()
    }

    fn ok(status: StatusFlags) -> Vec<u8> {
        encode_ok(
            CapabilityFlags::empty(),
            &OkFields {
                status,
                ..OkFields::default()
            },
            "",
        )
    }

    const COLUMN_DEF: &[u8] =
        b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00";

    #[test]
    fn text_result_set_with_classic_eof() {
        let auto = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let packets = vec![
            vec![1],
            COLUMN_DEF.to_vec(),
            encode_eof(CapabilityFlags::empty(), auto),
            b"\x011".to_vec(),
            b"\x012".to_vec(),
            encode_eof(CapabilityFlags::empty(), auto),
        ];
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        let steps = feed_all(&mut tracker, &packets);
        assert!(steps[..5].iter().all(|s| *s == Step::More));
        assert_eq!(steps[5], Step::Done(Some(auto)));
        assert!(tracker.is_finished());
        assert_eq!(tracker.rows(), 2);
        assert!(!tracker.last_was_ok(), "a classic EOF is not an OK packet");
    }

    #[test]
    fn conditions_are_noticed_in_any_terminator_or_error() {
        let auto = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let warned_eof = |warnings: u16| {
            let mut eof = encode_eof(CapabilityFlags::empty(), auto);
            eof[1..3].copy_from_slice(&warnings.to_le_bytes());
            eof
        };
        let warned_ok = |status: StatusFlags, warnings: u16| {
            encode_ok(
                CapabilityFlags::empty(),
                &OkFields {
                    status,
                    warnings,
                    ..OkFields::default()
                },
                "",
            )
        };
        let clean = vec![
            vec![1],
            COLUMN_DEF.to_vec(),
            warned_eof(0),
            b"\x011".to_vec(),
            warned_eof(0),
        ];
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        feed_all(&mut tracker, &clean);
        assert!(!tracker.raised_conditions());

        let mut warned = clean.clone();
        warned[4] = warned_eof(1);
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        feed_all(&mut tracker, &warned);
        assert!(tracker.raised_conditions(), "warnings in the closing EOF");

        // A multi-statement whose first result warned and whose last did not.
        let more = auto | StatusFlags::SERVER_MORE_RESULTS_EXISTS;
        let packets = vec![warned_ok(more, 2), warned_ok(auto, 0)];
        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        feed_all(&mut tracker, &packets);
        assert!(tracker.raised_conditions(), "warnings of an earlier result");

        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        let err = ErrFields::new(1146, "42S02", "Table 'x' doesn't exist").encode();
        feed_all(&mut tracker, &[err]);
        assert!(tracker.raised_conditions(), "an error");

        // COM_STMT_PREPARE OK: id, columns 0, params 0, filler, warnings 1.
        let prepare_ok = b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00".to_vec();
        let mut tracker = ReplyTracker::new(ReplyShape::Prepare, true);
        feed_all(&mut tracker, &[prepare_ok]);
        assert!(tracker.raised_conditions(), "a prepare that warned");
    }

    #[test]
    fn multi_results_and_deprecated_eof() {
        let more = StatusFlags::SERVER_MORE_RESULTS_EXISTS | StatusFlags::SERVER_STATUS_IN_TRANS;
        let last = StatusFlags::SERVER_STATUS_IN_TRANS;
        let mut end = ok(more);
        end[0] = 0xfe;
        let mut final_end = ok(last);
        final_end[0] = 0xfe;
        let packets = vec![
            ok(more), // an INSERT in a multi-statement
            vec![1],
            COLUMN_DEF.to_vec(),
            b"\x011".to_vec(),
            end,
            vec![1],
            COLUMN_DEF.to_vec(),
            final_end,
        ];
        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        let steps = feed_all(&mut tracker, &packets);
        assert!(steps[..7].iter().all(|s| *s == Step::More), "{steps:?}");
        assert_eq!(steps[7], Step::Done(Some(last)));
        // Where one result ends and another follows: after packets 0 and 4, nowhere else.
        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        let between: Vec<usize> = (0..packets.len())
            .filter(|&i| {
                feed_all(&mut tracker, &packets[i..=i]);
                tracker.ended_result_with_more()
            })
            .collect();
        assert_eq!(between, [0, 4]);
        assert!(
            tracker.last_was_ok(),
            "the deprecated-EOF terminator is an OK packet"
        );
        assert_eq!(tracker.rows(), 0);
    }

    #[test]
    fn error_mid_rows_and_local_infile() {
        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        let err = crate::response::ErrFields::new(1317, "70100", "interrupted").encode();
        let steps = feed_all(
            &mut tracker,
            &[vec![1], COLUMN_DEF.to_vec(), b"\x011".to_vec(), err],
        );
        assert_eq!(steps[3], Step::Done(None));

        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        assert_eq!(
            feed_all(&mut tracker, &[b"\xfbdata.csv".to_vec()]),
            vec![Step::LocalInfile]
        );
        let status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        assert_eq!(
            feed_all(&mut tracker, &[ok(status)]),
            vec![Step::Done(Some(status))]
        );
    }

    #[test]
    fn large_rows_span_frames() {
        let mut tracker = ReplyTracker::new(ReplyShape::Results, true);
        feed_all(&mut tracker, &[vec![1], COLUMN_DEF.to_vec()]);
        // A row of a 16 MiB string starts with 0xfe but is continued.
        let mut big = vec![0xfe];
        big.resize(MAX_FRAME_PAYLOAD, b'x');
        assert_eq!(
            tracker.feed(header(MAX_FRAME_PAYLOAD), &big).unwrap(),
            Step::More
        );
        // The continuation frame happens to start with 0xfe and is short: still row data.
        assert_eq!(tracker.feed(header(3), &[0xfe, 0, 0]).unwrap(), Step::More);
        let mut end = ok(StatusFlags::empty());
        end[0] = 0xfe;
        assert_eq!(
            tracker.feed(header(end.len()), &end).unwrap(),
            Step::Done(Some(StatusFlags::empty()))
        );
    }

    #[test]
    fn prepare_replies() {
        // id=1, 1 column, 2 params, classic EOFs: 2 params + EOF + 1 column + EOF.
        let prepare_ok = vec![0, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        let eof = encode_eof(CapabilityFlags::empty(), StatusFlags::empty());
        let packets = vec![
            prepare_ok.clone(),
            COLUMN_DEF.to_vec(),
            COLUMN_DEF.to_vec(),
            eof.clone(),
            COLUMN_DEF.to_vec(),
            eof,
        ];
        let mut tracker = ReplyTracker::new(ReplyShape::Prepare, false);
        let steps = feed_all(&mut tracker, &packets);
        assert_eq!(steps[5], Step::Done(None));
        assert!(steps[..5].iter().all(|s| *s == Step::More));

        let no_metadata = vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut tracker = ReplyTracker::new(ReplyShape::Prepare, false);
        assert_eq!(
            feed_all(&mut tracker, &[no_metadata]),
            vec![Step::Done(None)]
        );
    }

    #[test]
    fn cursor_open_ends_after_metadata_only_for_a_cursor_execute() {
        let cursor = StatusFlags::SERVER_STATUS_CURSOR_EXISTS;
        let packets = vec![
            vec![1],
            COLUMN_DEF.to_vec(),
            encode_eof(CapabilityFlags::empty(), cursor),
        ];
        let mut tracker = ReplyTracker::new(ReplyShape::CursorResults, false);
        assert_eq!(
            feed_all(&mut tracker, &packets)[2],
            Step::Done(Some(cursor))
        );
        let execute = [command::STMT_EXECUTE, 1, 0, 0, 0, 0x01, 1, 0, 0, 0];
        assert_eq!(ReplyShape::of_command(&execute), ReplyShape::CursorResults);
        let no_cursor = [command::STMT_EXECUTE, 1, 0, 0, 0, 0x00, 1, 0, 0, 0];
        assert_eq!(ReplyShape::of_command(&no_cursor), ReplyShape::Results);
        assert_eq!(
            ReplyShape::of_command(&[command::QUERY]),
            ReplyShape::Results
        );
        assert_eq!(ReplyShape::of_command(&[]), ReplyShape::None);
    }

    /// Every status-flag combination MariaDB puts on the terminators of a text result set
    /// (after a stored program opened a cursor it sets CURSOR_EXISTS there too, e.g. 0x69):
    /// the rows that follow still belong to the reply, in both EOF styles.
    #[test]
    fn text_results_read_their_rows_whatever_the_flags() {
        for bits in 0..=u16::MAX {
            let status =
                StatusFlags::from_bits_truncate(bits) - StatusFlags::SERVER_MORE_RESULTS_EXISTS;
            for deprecate_eof in [false, true] {
                let caps = if deprecate_eof {
                    CapabilityFlags::CLIENT_DEPRECATE_EOF
                } else {
                    CapabilityFlags::empty()
                };
                let mut packets = vec![vec![1], COLUMN_DEF.to_vec()];
                if !deprecate_eof {
                    packets.push(encode_eof(caps, status));
                }
                packets.push(b"\x011".to_vec());
                packets.push(b"\x012".to_vec());
                packets.push(encode_eof(caps, status));
                let mut tracker = ReplyTracker::new(ReplyShape::Results, deprecate_eof);
                let steps = feed_all(&mut tracker, &packets);
                let last = steps.len() - 1;
                assert!(
                    steps[..last].iter().all(|s| *s == Step::More),
                    "{status:?} deprecate_eof={deprecate_eof}: {steps:?}"
                );
                assert_eq!(steps[last], Step::Done(Some(status)));
                assert_eq!(tracker.rows(), 2);
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        assert!(tracker.feed(header(0), &[]).is_err());
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        assert!(tracker.feed(header(1), &[0xfc]).is_err());
        let mut tracker = ReplyTracker::new(ReplyShape::Prepare, false);
        assert!(tracker.feed(header(3), &[0, 1, 0]).is_err());
        let mut tracker = ReplyTracker::new(ReplyShape::Results, false);
        assert!(tracker.feed(header(1), &[0]).is_err());
        let mut tracker = ReplyTracker::new(ReplyShape::None, false);
        assert!(tracker.feed(header(1), &[0]).is_err());
    }
}
