//! Session-state tracking data (`CLIENT_SESSION_TRACK`) carried by OK packets.
//!
//! With `session_track_system_variables`, `session_track_schema` and
//! `session_track_state_change` on, the server says in each OK packet which variables
//! changed (and to what), whether the schema changed, and whether any other session state
//! changed. A multiplexing proxy uses this to carry a client's session to other connections.

use crate::lenenc;
use crate::response::{self, OkFields};
use crate::{ProtocolError, StatusFlags};

/// What one OK packet says changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// System variables set, with their new values, in order.
    pub variables: Vec<(String, String)>,
    /// The new default schema.
    pub schema: Option<String>,
    /// Some session state changed (user variables, temporary tables, ...); the other
    /// fields say which part of it is accounted for.
    pub state_changed: bool,
}

/// Parses an OK packet from a `CLIENT_SESSION_TRACK` connection: its fixed fields and the
/// session-state changes it reports.
pub fn parse_tracked_ok(payload: &[u8]) -> Result<(OkFields, StateChanges), ProtocolError> {
    let ok = response::parse_ok(payload)?;
    let mut changes = StateChanges::default();
    if !ok
        .status
        .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
    {
        return Ok((ok, changes));
    }
    // Skip header, affected rows, insert id, status and warnings, then the info string.
    let (_, rest) = lenenc::read_int(&payload[1..])?;
    let (_, rest) = lenenc::read_int(rest)?;
    let rest = rest
        .get(4..)
        .ok_or(ProtocolError::Malformed("short OK packet"))?;
    let (_, rest) = lenenc::read_bytes(rest)?;
    let (mut blocks, _) = lenenc::read_bytes(rest)?;
    while let Some((&kind, tail)) = blocks.split_first() {
        let (data, next) = lenenc::read_bytes(tail)?;
        blocks = next;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match kind {
            0 => {
                let (name, data) = lenenc::read_bytes(data)?;
                let (value, _) = lenenc::read_bytes(data)?;
                changes.variables.push((text(name), text(value)));
            }
            1 => changes.schema = Some(text(lenenc::read_bytes(data)?.0)),
            2 => changes.state_changed = true,
            // GTIDs and transaction characteristics/state: not session state sluice carries.
            _ => {}
        }
    }
    Ok((ok, changes))
}

/// Rewrites a tracked OK packet keeping only the session-state entries `keep` accepts
/// (given each entry's type and data); without any left, the state block and its status
/// flag go too. For clients that asked for session tracking, but not for all of it.
pub fn filter_tracked_ok(
    payload: &[u8],
    keep: impl Fn(u8, &[u8]) -> bool,
) -> Result<Vec<u8>, ProtocolError> {
    let ok = response::parse_ok(payload)?;
    if !ok
        .status
        .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
    {
        return Ok(payload.to_vec());
    }
    let (_, rest) = lenenc::read_int(&payload[1..])?;
    let (_, rest) = lenenc::read_int(rest)?;
    let rest = rest
        .get(4..)
        .ok_or(ProtocolError::Malformed("short OK packet"))?;
    let (info, rest) = lenenc::read_bytes(rest)?;
    let (mut blocks, _) = lenenc::read_bytes(rest)?;
    let mut kept = Vec::new();
    while let Some((&kind, tail)) = blocks.split_first() {
        let (data, next) = lenenc::read_bytes(tail)?;
        if keep(kind, data) {
            kept.push(kind);
            lenenc::put_bytes(&mut kept, data);
        }
        blocks = next;
    }
    let mut out = Vec::with_capacity(payload.len());
    out.push(payload[0]);
    lenenc::put_int(&mut out, ok.affected_rows);
    lenenc::put_int(&mut out, ok.last_insert_id);
    let mut status = ok.status;
    status.set(StatusFlags::SERVER_SESSION_STATE_CHANGED, !kept.is_empty());
    out.extend_from_slice(&status.bits().to_le_bytes());
    out.extend_from_slice(&ok.warnings.to_le_bytes());
    lenenc::put_bytes(&mut out, info);
    if !kept.is_empty() {
        lenenc::put_bytes(&mut out, &kept);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked_ok(blocks: &[u8]) -> Vec<u8> {
        let status =
            StatusFlags::SERVER_STATUS_AUTOCOMMIT | StatusFlags::SERVER_SESSION_STATE_CHANGED;
        let mut p = vec![0x00, 0, 0];
        p.extend_from_slice(&status.bits().to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]); // warnings, empty info
        lenenc::put_bytes(&mut p, blocks);
        p
    }

    #[test]
    fn parses_variables_schema_and_state_change() {
        let mut blocks = Vec::new();
        let mut var = Vec::new();
        lenenc::put_bytes(&mut var, b"time_zone");
        lenenc::put_bytes(&mut var, b"+02:00");
        blocks.push(0);
        lenenc::put_bytes(&mut blocks, &var);
        let mut schema = Vec::new();
        lenenc::put_bytes(&mut schema, b"shop");
        blocks.push(1);
        lenenc::put_bytes(&mut blocks, &schema);
        blocks.push(2);
        lenenc::put_bytes(&mut blocks, b"\x011");
        let (ok, changes) = parse_tracked_ok(&tracked_ok(&blocks)).unwrap();
        assert!(ok
            .status
            .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED));
        assert_eq!(
            changes.variables,
            vec![("time_zone".into(), "+02:00".into())]
        );
        assert_eq!(changes.schema.as_deref(), Some("shop"));
        assert!(changes.state_changed);
    }

    #[test]
    fn filters_entries_and_drops_the_flag_when_none_is_left() {
        let mut blocks = Vec::new();
        let mut var = Vec::new();
        lenenc::put_bytes(&mut var, b"sql_mode");
        lenenc::put_bytes(&mut var, b"ANSI");
        blocks.push(0);
        lenenc::put_bytes(&mut blocks, &var);
        blocks.push(2);
        lenenc::put_bytes(&mut blocks, b"1");
        let packet = tracked_ok(&blocks);
        let unchanged = filter_tracked_ok(&packet, |_, _| true).unwrap();
        assert_eq!(unchanged, packet);
        let only_state = filter_tracked_ok(&packet, |kind, _| kind == 2).unwrap();
        let (ok, changes) = parse_tracked_ok(&only_state).unwrap();
        assert!(changes.state_changed && changes.variables.is_empty());
        assert!(ok
            .status
            .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED));
        let none = filter_tracked_ok(&packet, |_, _| false).unwrap();
        let (ok, changes) = parse_tracked_ok(&none).unwrap();
        assert_eq!(changes, StateChanges::default());
        assert!(!ok
            .status
            .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED));
        assert_eq!(
            none.len(),
            8,
            "header, 2 lenenc ints, status, warnings, empty info"
        );
        assert!(filter_tracked_ok(&packet[..9], |_, _| true).is_err());
    }

    #[test]
    fn no_flag_means_no_changes_and_garbage_is_an_error() {
        let plain = response::encode_ok(
            crate::CapabilityFlags::CLIENT_SESSION_TRACK,
            &OkFields::default(),
            "",
        );
        assert_eq!(parse_tracked_ok(&plain).unwrap().1, StateChanges::default());
        assert!(parse_tracked_ok(&tracked_ok(&[0, 9, 1])).is_err());
        assert!(parse_tracked_ok(&[0x00, 0, 0, 0, 0x40]).is_err());
    }
}
