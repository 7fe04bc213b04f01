//! Length-encoded integers and strings, the variable-width fields of the protocol.

use crate::ProtocolError;

/// Reads a length-encoded integer from the front of `buf`, returning it and the rest.
pub fn read_int(buf: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    let (&first, rest) = buf
        .split_first()
        .ok_or(ProtocolError::Malformed("missing length-encoded integer"))?;
    let width = match first {
        0..=0xfa => return Ok((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => {
            return Err(ProtocolError::Malformed(
                "invalid length-encoded integer prefix",
            ))
        }
    };
    if rest.len() < width {
        return Err(ProtocolError::Malformed("truncated length-encoded integer"));
    }
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&rest[..width]);
    Ok((u64::from_le_bytes(bytes), &rest[width..]))
}

/// Reads a length-encoded string from the front of `buf`, returning it and the rest.
pub fn read_bytes(buf: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let (len, rest) = read_int(buf)?;
    let len = usize::try_from(len).map_err(|_| ProtocolError::Malformed("string too long"))?;
    if rest.len() < len {
        return Err(ProtocolError::Malformed("truncated length-encoded string"));
    }
    Ok(rest.split_at(len))
}

/// Appends `value` as a length-encoded integer.
pub fn put_int(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=0xfa => out.push(value as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&value.to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// Appends `bytes` as a length-encoded string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_int(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_width() {
        for value in [
            0u64,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_int(&mut out, value);
            out.push(0x42);
            let (read, rest) = read_int(&out).unwrap();
            assert_eq!(read, value);
            assert_eq!(rest, &[0x42]);
        }
    }

    #[test]
    fn rejects_truncated_and_invalid_input() {
        assert!(read_int(&[]).is_err());
        assert!(read_int(&[0xfc, 1]).is_err());
        assert!(read_int(&[0xfe, 1, 2, 3]).is_err());
        assert!(read_int(&[0xff]).is_err());
        assert!(read_int(&[0xfb]).is_err());
        assert!(read_bytes(&[5, b'a', b'b']).is_err());
        assert_eq!(
            read_bytes(&[2, b'a', b'b', 9]).unwrap(),
            (&b"ab"[..], &[9u8][..])
        );
    }
}
