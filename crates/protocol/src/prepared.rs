//! Binary-protocol statement packets, read and rewritten so statement ids can be translated.
//!
//! A client's statement ids are sluice's own; every database connection has its own id for
//! the same statement. sluice therefore rewrites the id in each `COM_STMT_*` packet, and in a
//! `COM_STMT_EXECUTE` or MariaDB's `COM_STMT_BULK_EXECUTE` may add the parameter types the
//! client bound earlier on another connection (the server only remembers types per
//! statement, per connection).

use crate::command;
use crate::ProtocolError;

/// `COM_STMT_EXECUTE` flag asking the server to open a read-only cursor.
pub const CURSOR_TYPE_READ_ONLY: u8 = 0x01;
/// MariaDB's statement id meaning "the statement this connection prepared last", used to
/// send a prepare and its execute without waiting.
pub const LAST_PREPARED_ID: u32 = 0xffff_ffff;
/// `COM_STMT_BULK_EXECUTE` flag: the parameter types follow the flags (otherwise the server
/// uses those bound last).
pub const BULK_SEND_TYPES: u16 = 0x80;
/// `COM_STMT_BULK_EXECUTE` flag asking for one result row (id, affected rows) per parameter
/// set instead of one OK; only for a client with `MARIADB_CLIENT_BULK_UNIT_RESULTS`.
pub const BULK_SEND_UNIT_RESULTS: u16 = 0x40;
/// Bytes of a `COM_STMT_BULK_EXECUTE` before its parameter types: command(1) id(4) flags(2).
const BULK_HEADER: usize = 7;

/// The fixed part of the server's answer to `COM_STMT_PREPARE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    /// The statement's id on that connection.
    pub statement_id: u32,
    /// Columns of its result set (0 for statements without one).
    pub columns: u16,
    /// `?` placeholders.
    pub params: u16,
    /// Warnings raised while preparing.
    pub warnings: u16,
}

impl PrepareOk {
    /// Reads the first packet of a successful prepare reply.
    pub fn parse(payload: &[u8]) -> Result<PrepareOk, ProtocolError> {
        let short = ProtocolError::Malformed("short COM_STMT_PREPARE reply");
        if payload.first() != Some(&0) {
            return Err(ProtocolError::Malformed("COM_STMT_PREPARE reply is not OK"));
        }
        let body = payload.get(1..9).ok_or(short)?;
        let warnings = payload
            .get(10..12)
            .map_or(0, |w| u16::from_le_bytes([w[0], w[1]]));
        Ok(PrepareOk {
            statement_id: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
            columns: u16::from_le_bytes([body[4], body[5]]),
            params: u16::from_le_bytes([body[6], body[7]]),
            warnings,
        })
    }

    /// Encodes the packet, as a server would send it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.push(0);
        out.extend_from_slice(&self.statement_id.to_le_bytes());
        out.extend_from_slice(&self.columns.to_le_bytes());
        out.extend_from_slice(&self.params.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out
    }
}

/// The statement id every `COM_STMT_*` command carries in bytes 1 to 4.
pub fn statement_id(payload: &[u8]) -> Result<u32, ProtocolError> {
    let id = payload.get(1..5).ok_or(ProtocolError::Malformed(
        "statement command without a statement id",
    ))?;
    Ok(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

/// A copy of a `COM_STMT_*` packet that names statement `id` instead.
pub fn with_statement_id(payload: &[u8], id: u32) -> Result<Vec<u8>, ProtocolError> {
    statement_id(payload)?;
    let mut out = payload.to_vec();
    out[1..5].copy_from_slice(&id.to_le_bytes());
    Ok(out)
}

/// Builds `COM_STMT_CLOSE` for `id` (the server sends no reply).
pub fn close_packet(id: u32) -> [u8; 5] {
    let id = id.to_le_bytes();
    [command::STMT_CLOSE, id[0], id[1], id[2], id[3]]
}

/// Builds `COM_STMT_RESET` for `id`.
pub fn reset_packet(id: u32) -> [u8; 5] {
    let id = id.to_le_bytes();
    [command::STMT_RESET, id[0], id[1], id[2], id[3]]
}

/// Builds `COM_STMT_SEND_LONG_DATA` carrying `data` for parameter `param` of statement `id`.
pub fn long_data_packet(id: u32, param: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + data.len());
    out.push(command::STMT_SEND_LONG_DATA);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&param.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The parts of a `COM_STMT_SEND_LONG_DATA` packet.
pub fn parse_long_data(payload: &[u8]) -> Result<(u32, u16, &[u8]), ProtocolError> {
    let id = statement_id(payload)?;
    let param = payload.get(5..7).ok_or(ProtocolError::Malformed(
        "COM_STMT_SEND_LONG_DATA without a parameter",
    ))?;
    Ok((id, u16::from_le_bytes([param[0], param[1]]), &payload[7..]))
}

/// The flags of a `COM_STMT_BULK_EXECUTE` packet (`None` when it is too short to have them:
/// the server's "malformed packet").
pub fn bulk_flags(payload: &[u8]) -> Option<u16> {
    payload
        .get(5..BULK_HEADER)
        .map(|f| u16::from_le_bytes([f[0], f[1]]))
}

/// A `COM_STMT_EXECUTE` or `COM_STMT_BULK_EXECUTE` packet, located but not decoded: sluice
/// needs its flags, whether it binds parameter types, and where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute<'a> {
    payload: &'a [u8],
    /// `COM_STMT_BULK_EXECUTE`: types are announced by a flag, and rows follow them.
    bulk: bool,
    /// Where bound parameter types start, or would (`None` for statements without
    /// parameters).
    types_at: Option<usize>,
    /// Parameter types (two bytes per parameter) when the packet binds them.
    types: Option<&'a [u8]>,
}

impl<'a> Execute<'a> {
    /// Locates the parts of `payload`, an execute for a statement with `params` parameters.
    pub fn parse(payload: &'a [u8], params: u16) -> Result<Execute<'a>, ProtocolError> {
        const SHORT: &str = "short COM_STMT_EXECUTE packet";
        // command(1) id(4) flags(1) iteration count(4)
        if payload.len() < 10 {
            return Err(ProtocolError::Malformed(SHORT));
        }
        if params == 0 {
            return Ok(Execute {
                payload,
                bulk: false,
                types_at: None,
                types: None,
            });
        }
        let at = 10 + usize::from(params).div_ceil(8);
        let types = match *payload.get(at).ok_or(ProtocolError::Malformed(SHORT))? {
            0 => None,
            1 => Some(
                payload
                    .get(at + 1..at + 1 + 2 * usize::from(params))
                    .ok_or(ProtocolError::Malformed(SHORT))?,
            ),
            _ => return Err(ProtocolError::Malformed("bad new-params-bound flag")),
        };
        Ok(Execute {
            payload,
            bulk: false,
            types_at: Some(at + 1),
            types,
        })
    }

    /// Locates the parts of `payload`, a bulk execute for a statement with `params`
    /// parameters, refusing what the server refuses as malformed before running it: types
    /// announced but cut short, and no types for "the statement prepared last".
    pub fn parse_bulk(payload: &'a [u8], params: u16) -> Result<Execute<'a>, ProtocolError> {
        const SHORT: &str = "short COM_STMT_BULK_EXECUTE packet";
        let flags = bulk_flags(payload).ok_or(ProtocolError::Malformed(SHORT))?;
        if params == 0 {
            return Ok(Execute {
                payload,
                bulk: true,
                types_at: None,
                types: None,
            });
        }
        let types = if flags & BULK_SEND_TYPES != 0 {
            Some(
                payload
                    .get(BULK_HEADER..BULK_HEADER + 2 * usize::from(params))
                    .ok_or(ProtocolError::Malformed(SHORT))?,
            )
        } else if statement_id(payload)? == LAST_PREPARED_ID {
            return Err(ProtocolError::Malformed(
                "COM_STMT_BULK_EXECUTE of the last prepared statement without types",
            ));
        } else {
            None
        };
        Ok(Execute {
            payload,
            bulk: true,
            types_at: Some(BULK_HEADER),
            types,
        })
    }

    /// Whether it asks the server to open a read-only cursor (a bulk execute never does).
    pub fn opens_cursor(&self) -> bool {
        !self.bulk && self.payload[5] & CURSOR_TYPE_READ_ONLY != 0
    }

    /// The parameter types this packet binds, if it binds any.
    pub fn types(&self) -> Option<&'a [u8]> {
        self.types
    }

    /// The packet for statement `id` on another connection. With `bind`, the packet binds
    /// those types even though the client's did not (they were bound on another connection).
    pub fn rewrite(&self, id: u32, bind: Option<&[u8]>) -> Vec<u8> {
        let payload = self.payload;
        let mut out;
        match (bind, self.types_at, self.types) {
            (Some(types), Some(at), None) => {
                out = Vec::with_capacity(payload.len() + types.len());
                if self.bulk {
                    out.extend_from_slice(&payload[..at]);
                    out[5] |= BULK_SEND_TYPES as u8;
                } else {
                    // The new-params-bound byte before `at` turns from 0 to 1.
                    out.extend_from_slice(&payload[..at - 1]);
                    out.push(1);
                }
                out.extend_from_slice(types);
                out.extend_from_slice(&payload[at..]);
            }
            _ => out = payload.to_vec(),
        }
        out[1..5].copy_from_slice(&id.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An execute of statement 7 with two parameters: (NULL, LONGLONG 5).
    fn execute_with_types() -> Vec<u8> {
        let mut p = vec![command::STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        p.push(0b01); // null bitmap: first parameter is NULL
        p.push(1); // new params bound
        p.extend_from_slice(&[6, 0, 8, 0]); // MYSQL_TYPE_NULL, MYSQL_TYPE_LONGLONG
        p.extend_from_slice(&5u64.to_le_bytes());
        p
    }

    #[test]
    fn prepare_ok_round_trips() {
        let ok = PrepareOk {
            statement_id: 42,
            columns: 3,
            params: 2,
            warnings: 1,
        };
        assert_eq!(PrepareOk::parse(&ok.encode()).unwrap(), ok);
        assert!(PrepareOk::parse(&[0, 1, 2]).is_err());
        assert!(PrepareOk::parse(&[0xff, 1, 2, 3, 4, 5, 6, 7, 8]).is_err());
    }

    #[test]
    fn execute_with_types_is_renamed_only() {
        let packet = execute_with_types();
        let execute = Execute::parse(&packet, 2).unwrap();
        assert_eq!(execute.types(), Some(&[6, 0, 8, 0][..]));
        let out = execute.rewrite(9, Some(&[1, 2, 3, 4]));
        assert_eq!(statement_id(&out).unwrap(), 9);
        assert_eq!(out[5..], packet[5..]);
    }

    #[test]
    fn execute_without_types_gets_the_remembered_ones() {
        // Statement 7, two LONGLONG parameters (5, 6), relying on types bound earlier.
        let mut packet = vec![command::STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        packet.push(0); // null bitmap
        packet.push(0); // no new types
        packet.extend_from_slice(&5u64.to_le_bytes());
        packet.extend_from_slice(&6u64.to_le_bytes());
        let execute = Execute::parse(&packet, 2).unwrap();
        assert_eq!(execute.types(), None);
        let out = execute.rewrite(3, Some(&[8, 0, 8, 0]));
        let reparsed = Execute::parse(&out, 2).unwrap();
        assert_eq!(reparsed.types(), Some(&[8, 0, 8, 0][..]));
        assert_eq!(statement_id(&out).unwrap(), 3);
        assert_eq!(out[16..], packet[12..]);
        // Nothing to add: only the id changes.
        assert_eq!(execute.rewrite(3, None)[5..], packet[5..]);
    }

    #[test]
    fn execute_without_parameters_and_bad_packets() {
        let packet = [
            command::STMT_EXECUTE,
            1,
            0,
            0,
            0,
            CURSOR_TYPE_READ_ONLY,
            1,
            0,
            0,
            0,
        ];
        let execute = Execute::parse(&packet, 0).unwrap();
        assert!(execute.opens_cursor());
        assert_eq!(execute.rewrite(2, Some(&[8, 0]))[1..5], 2u32.to_le_bytes());
        assert!(Execute::parse(&packet[..6], 0).is_err());
        assert!(Execute::parse(&packet, 3).is_err());
        let mut bad_flag = packet.to_vec();
        bad_flag.extend_from_slice(&[0, 7]);
        assert!(Execute::parse(&bad_flag, 1).is_err());
        let mut short_types = packet.to_vec();
        short_types.extend_from_slice(&[0, 1, 8]);
        assert!(Execute::parse(&short_types, 1).is_err());
    }

    /// A bulk execute of statement 7 with two parameters, flags `flags`, then `rest`.
    fn bulk(flags: u16, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![command::STMT_BULK_EXECUTE, 7, 0, 0, 0];
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn bulk_with_types_is_renamed_only() {
        // Types LONGLONG, VAR_STRING; rows (1, NULL) and (2, "ab").
        let rows = [
            0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b',
        ];
        let mut rest = vec![8, 0, 253, 0];
        rest.extend_from_slice(&rows);
        let packet = bulk(BULK_SEND_TYPES, &rest);
        assert_eq!(bulk_flags(&packet), Some(BULK_SEND_TYPES));
        let execute = Execute::parse_bulk(&packet, 2).unwrap();
        assert_eq!(execute.types(), Some(&[8, 0, 253, 0][..]));
        assert!(!execute.opens_cursor());
        let out = execute.rewrite(9, Some(&[1, 2, 3, 4]));
        assert_eq!(statement_id(&out).unwrap(), 9);
        assert_eq!(out[5..], packet[5..]);
    }

    #[test]
    fn bulk_without_types_gets_the_remembered_ones() {
        let rows = [0, 5, 0, 0, 0, 0, 0, 0, 0, 1];
        let packet = bulk(0, &rows);
        let execute = Execute::parse_bulk(&packet, 2).unwrap();
        assert_eq!(execute.types(), None);
        let out = execute.rewrite(3, Some(&[8, 0, 8, 0]));
        assert_eq!(bulk_flags(&out), Some(BULK_SEND_TYPES));
        let reparsed = Execute::parse_bulk(&out, 2).unwrap();
        assert_eq!(reparsed.types(), Some(&[8, 0, 8, 0][..]));
        assert_eq!(out[11..], rows);
        assert_eq!(statement_id(&out).unwrap(), 3);
        // Unit results asked for stay asked for.
        let unit = bulk(BULK_SEND_UNIT_RESULTS, &rows);
        let out = Execute::parse_bulk(&unit, 2)
            .unwrap()
            .rewrite(3, Some(&[8, 0, 8, 0]));
        assert_eq!(
            bulk_flags(&out),
            Some(BULK_SEND_TYPES | BULK_SEND_UNIT_RESULTS)
        );
    }

    #[test]
    fn malformed_bulk_packets() {
        assert_eq!(
            bulk_flags(&[command::STMT_BULK_EXECUTE, 1, 0, 0, 0, 0x80]),
            None
        );
        assert!(Execute::parse_bulk(&bulk(0, &[])[..6], 1).is_err());
        // Types announced, one parameter's worth missing.
        assert!(Execute::parse_bulk(&bulk(BULK_SEND_TYPES, &[8, 0]), 2).is_err());
        // Without parameters there is nothing to check.
        assert!(Execute::parse_bulk(&bulk(BULK_SEND_TYPES, &[]), 0).is_ok());
        // "The statement prepared last" has no types to fall back on.
        let mut last = bulk(0, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        last[1..5].copy_from_slice(&LAST_PREPARED_ID.to_le_bytes());
        assert!(Execute::parse_bulk(&last, 2).is_err());
        last[5] = BULK_SEND_TYPES as u8;
        last.splice(7..7, [8, 0, 8, 0]);
        assert!(Execute::parse_bulk(&last, 2).is_ok());
    }

    #[test]
    fn long_data_and_small_packets() {
        let packet = long_data_packet(5, 2, b"abc");
        assert_eq!(parse_long_data(&packet).unwrap(), (5, 2, &b"abc"[..]));
        assert!(parse_long_data(&packet[..6]).is_err());
        assert_eq!(statement_id(&close_packet(77)).unwrap(), 77);
        assert_eq!(reset_packet(1)[0], command::STMT_RESET);
        assert_eq!(
            statement_id(&with_statement_id(&close_packet(1), 8).unwrap()).unwrap(),
            8
        );
        assert!(with_statement_id(&[command::STMT_CLOSE, 1], 2).is_err());
    }
}
