//! Packet framing: a 3-byte little-endian payload length, a 1-byte sequence id, the payload.
//!
//! A payload of 16 MiB − 1 bytes or more is split into several frames; every frame but the
//! last is exactly [`MAX_FRAME_PAYLOAD`] long. Proxies forward frames one by one, so the
//! helpers here work on single frames and say whether a frame continues the previous one.

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// The largest payload one frame carries; a frame this long is followed by another.
pub const MAX_FRAME_PAYLOAD: usize = 0xff_ffff;

/// The header of one frame as it sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes that follow the header.
    pub payload_len: usize,
    /// The frame's sequence id.
    pub seq: u8,
}

impl FrameHeader {
    /// Parses a header from the first four bytes of `buf`, if present.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let header = buf.get(..HEADER_LEN)?;
        Some(FrameHeader {
            payload_len: usize::from(header[0])
                | usize::from(header[1]) << 8
                | usize::from(header[2]) << 16,
            seq: header[3],
        })
    }

    /// Whole frame length (header and payload).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// True when another frame of the same logical packet follows this one.
    pub fn continues(&self) -> bool {
        self.payload_len == MAX_FRAME_PAYLOAD
    }
}

/// The header of a frame carrying `len` (below [`MAX_FRAME_PAYLOAD`] or equal to it) payload
/// bytes with sequence id `seq`.
pub fn header(len: usize, seq: u8) -> [u8; HEADER_LEN] {
    [len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]
}

/// Appends `payload` to `out` as one logical packet, split into frames as needed, starting at
/// sequence id `*seq` and leaving `*seq` at the id the next packet must carry.
pub fn write_packet(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    let mut chunks = payload.chunks(MAX_FRAME_PAYLOAD);
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let len = chunk.len();
        out.extend_from_slice(&header(len, *seq));
        out.extend_from_slice(chunk);
        *seq = seq.wrapping_add(1);
        if len < MAX_FRAME_PAYLOAD {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header() {
        let h = FrameHeader::parse(&[0x03, 0x00, 0x00, 0x07, 1, 2, 3]).unwrap();
        assert_eq!(
            h,
            FrameHeader {
                payload_len: 3,
                seq: 7
            }
        );
        assert_eq!(h.frame_len(), 7);
        assert!(!h.continues());
        assert!(FrameHeader::parse(&[1, 0, 0]).is_none());
        assert!(FrameHeader::parse(&[0xff, 0xff, 0xff, 0])
            .unwrap()
            .continues());
    }

    #[test]
    fn splits_large_payloads_and_ends_exact_multiples_with_an_empty_frame() {
        let payload = vec![7u8; MAX_FRAME_PAYLOAD];
        let mut out = Vec::new();
        let mut seq = 5;
        write_packet(&mut out, &mut seq, &payload);
        assert_eq!(seq, 7);
        assert_eq!(out.len(), 2 * HEADER_LEN + MAX_FRAME_PAYLOAD);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 6]);

        let mut out = Vec::new();
        let mut seq = 0;
        write_packet(&mut out, &mut seq, &vec![1u8; MAX_FRAME_PAYLOAD + 10]);
        assert_eq!(seq, 2);
        let second = FrameHeader::parse(&out[HEADER_LEN + MAX_FRAME_PAYLOAD..]).unwrap();
        assert_eq!(
            second,
            FrameHeader {
                payload_len: 10,
                seq: 1
            }
        );
    }
}
