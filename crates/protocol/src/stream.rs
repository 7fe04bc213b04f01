//! A buffered packet reader/writer over any async byte stream.
//!
//! Reads are buffered so that a reply of many small packets costs few system calls; writes
//! are collected in a buffer and sent by [`PacketStream::flush`], so a proxy can forward a
//! burst of frames with one write.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::packet::{self, FrameHeader, HEADER_LEN};
use crate::ProtocolError;

/// Output is flushed once this much is buffered, so forwarding a large reply keeps memory flat.
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Smallest read-buffer growth: enough for a reply of many small packets per system call.
const READ_CHUNK_MIN: usize = 1024;
/// Largest read-buffer growth at once: a frame header announcing 16 MiB reserves memory only
/// as its bytes arrive, so a peer cannot make sluice allocate what it never sends.
const READ_CHUNK_MAX: usize = 256 * 1024;

/// One logical packet with continuation frames joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first frame.
    pub seq: u8,
    /// Sequence id the next packet in this exchange must carry.
    pub next_seq: u8,
    /// The joined payload.
    pub payload: BytesMut,
}

/// One frame exactly as received: header and payload.
#[derive(Debug)]
pub struct Frame {
    /// The parsed header.
    pub header: FrameHeader,
    /// Header and payload bytes.
    pub bytes: BytesMut,
}

impl Frame {
    /// The payload bytes without the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Renumbers the frame (header and bytes), for a proxy that forwards it on a connection
    /// numbered its own way.
    pub fn set_seq(&mut self, seq: u8) {
        self.header.seq = seq;
        if let Some(byte) = self.bytes.get_mut(3) {
            *byte = seq;
        }
    }

    /// The payload bytes without the header, owned (the same memory, not a copy).
    pub fn into_payload(mut self) -> BytesMut {
        self.bytes.advance(HEADER_LEN);
        self.bytes
    }
}

/// Packet-level reads and writes on one connection.
pub struct PacketStream<S> {
    io: S,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    max_packet: usize,
    /// A flush began and has not finished: the peer may have part of a packet.
    mid_write: bool,
    /// A read or write failed, or the peer closed.
    failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketStream<S> {
    /// Wraps `io`; logical packets larger than `max_packet` bytes are refused on read.
    /// Buffers start empty and grow with use, so a connection that never sends costs little.
    pub fn new(io: S, max_packet: usize) -> Self {
        PacketStream {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            max_packet,
            mid_write: false,
            failed: false,
        }
    }

    /// Changes the size limit for packets read from now on (e.g. small before a client has
    /// authenticated, `max_allowed_packet`-sized after).
    pub fn set_max_packet(&mut self, max_packet: usize) {
        self.max_packet = max_packet;
    }

    /// The underlying stream, e.g. to read socket options.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// True when a read or write failed or the peer closed: the connection is broken.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// True when the peer is at a packet boundary of what was sent: no flush stopped
    /// midway and nothing failed, so a last packet (a goodbye) would be read as one.
    pub fn at_packet_boundary(&self) -> bool {
        !self.mid_write && !self.failed
    }

    /// The underlying stream, mutably, e.g. to change its time limits.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Gives the read and write buffers' memory back when they hold nothing, for a peer that
    /// went quiet: an idle connection then costs no buffer, and one in the middle of a burst
    /// (whose caller does not call this) no allocation per packet. Bytes not yet consumed
    /// or sent stay.
    pub fn release_buffers(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        if self.write_buf.is_empty() {
            self.write_buf = Vec::new();
        }
    }

    /// Bytes read from the peer and not yet consumed.
    pub fn buffered_len(&self) -> usize {
        self.read_buf.len()
    }

    /// True when a whole frame is already buffered, so reading it will not wait.
    pub fn has_buffered_frame(&self) -> bool {
        FrameHeader::parse(&self.read_buf)
            .is_some_and(|header| self.read_buf.len() >= header.frame_len())
    }

    /// Reads until `wanted` bytes are buffered. With `exact`, never a byte more: what follows
    /// may not be this protocol's (a TLS handshake after an SSLRequest).
    async fn fill_to(&mut self, wanted: usize, exact: bool) -> Result<(), ProtocolError> {
        while self.read_buf.len() < wanted {
            let missing = wanted - self.read_buf.len();
            self.read_buf
                .reserve(missing.clamp(READ_CHUNK_MIN, READ_CHUNK_MAX));
            let read = if exact {
                (&mut self.io)
                    .take(missing as u64)
                    .read_buf(&mut self.read_buf)
                    .await
            } else {
                self.io.read_buf(&mut self.read_buf).await
            };
            self.failed |= !matches!(read, Ok(n) if n > 0);
            if read? == 0 {
                return Err(if self.read_buf.is_empty() {
                    ProtocolError::Closed
                } else {
                    ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
        Ok(())
    }

    /// Reads one frame without joining continuations, for forwarding as-is. A frame whose
    /// header announces more than the packet size limit is refused before its payload is read.
    pub async fn read_frame(&mut self) -> Result<Frame, ProtocolError> {
        self.read_frame_within(false).await
    }

    async fn read_frame_within(&mut self, exact: bool) -> Result<Frame, ProtocolError> {
        self.fill_to(HEADER_LEN, exact).await?;
        let header = FrameHeader::parse(&self.read_buf).ok_or(ProtocolError::Closed)?;
        if header.payload_len > self.max_packet {
            return Err(ProtocolError::TooLarge {
                size: header.payload_len,
                limit: self.max_packet,
            });
        }
        self.fill_to(header.frame_len(), exact).await?;
        let bytes = self.read_buf.split_to(header.frame_len());
        Ok(Frame { header, bytes })
    }

    /// Reads one logical packet, joining continuation frames, within the size limit. A
    /// packet of one frame (nearly all) is the read buffer's own bytes, not a copy.
    pub async fn read_packet(&mut self) -> Result<Packet, ProtocolError> {
        let first = self.read_frame().await?;
        let seq = first.header.seq;
        let mut next_seq = seq.wrapping_add(1);
        let mut continues = first.header.continues();
        let mut payload = first.into_payload();
        if payload.len() > self.max_packet {
            return Err(ProtocolError::TooLarge {
                size: payload.len(),
                limit: self.max_packet,
            });
        }
        while continues {
            let frame = self.read_frame().await?;
            if payload.len() + frame.header.payload_len > self.max_packet {
                return Err(ProtocolError::TooLarge {
                    size: payload.len() + frame.header.payload_len,
                    limit: self.max_packet,
                });
            }
            payload.extend_from_slice(frame.payload());
            next_seq = frame.header.seq.wrapping_add(1);
            continues = frame.header.continues();
        }
        Ok(Packet {
            seq,
            next_seq,
            payload,
        })
    }

    /// Reads one single-frame packet without reading a byte past its end, so that the
    /// connection may change hands after it: a client's SSLRequest is followed at once by
    /// its TLS handshake, which must reach the TLS layer, not this buffer.
    pub async fn read_packet_exact(&mut self) -> Result<Packet, ProtocolError> {
        let frame = self.read_frame_within(true).await?;
        if frame.header.continues() {
            return Err(ProtocolError::Malformed("unexpected multi-frame packet"));
        }
        Ok(Packet {
            seq: frame.header.seq,
            next_seq: frame.header.seq.wrapping_add(1),
            payload: frame.into_payload(),
        })
    }

    /// Reads and throws away whatever the peer still sends, up to `max_bytes` or until it
    /// closes. Used before closing on a refused oversized packet: closing a socket with
    /// unread input makes the kernel reset the connection, and the peer would lose the error
    /// sent to it. Callers bound the time it may take.
    pub async fn discard_input(&mut self, max_bytes: usize) {
        let mut discarded = self.read_buf.len();
        while discarded < max_bytes {
            // The read buffer, not a stack array: that would be part of every future that
            // may call this, in memory, for the life of each connection.
            self.read_buf.clear();
            self.read_buf.reserve(READ_CHUNK_MAX);
            match self.io.read_buf(&mut self.read_buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
        self.read_buf = BytesMut::new();
    }

    /// Queues `payload` as a packet starting at sequence id `*seq`, advancing `*seq`.
    pub fn queue_packet(&mut self, seq: &mut u8, payload: &[u8]) {
        packet::write_packet(&mut self.write_buf, seq, payload);
    }

    /// Queues a packet whose payload `build` appends to the buffer it is given, starting at
    /// sequence id `*seq` and advancing it: a packet rewritten on its way through (an OK
    /// packet) goes out without a buffer of its own. Nothing is queued when `build` fails.
    pub fn queue_packet_with<E>(
        &mut self,
        seq: &mut u8,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.write_buf.len();
        let payload_at = start + HEADER_LEN;
        self.write_buf.resize(payload_at, 0);
        if let Err(e) = build(&mut self.write_buf) {
            self.write_buf.truncate(start);
            return Err(e);
        }
        let len = self.write_buf.len() - payload_at;
        if len < packet::MAX_FRAME_PAYLOAD {
            self.write_buf[start..payload_at].copy_from_slice(&packet::header(len, *seq));
            *seq = seq.wrapping_add(1);
        } else {
            // Too long for one frame (never an OK packet in practice): framed as usual.
            let payload = self.write_buf.split_off(payload_at);
            self.write_buf.truncate(start);
            packet::write_packet(&mut self.write_buf, seq, &payload);
        }
        Ok(())
    }

    /// Queues bytes that are already framed (forwarded frames).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued_len(&self) -> usize {
        self.write_buf.len()
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        if !self.write_buf.is_empty() {
            self.mid_write = true;
            // Flushed too: a layer underneath may hold bytes until then (compression frames
            // what it was given; TLS seals it).
            let written = match self.io.write_all(&self.write_buf).await {
                Ok(()) => self.io.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.failed = true;
                return Err(e.into());
            }
            self.mid_write = false;
            self.write_buf.clear();
            if self.write_buf.capacity() > 4 * WRITE_HIGH_WATER {
                self.write_buf.shrink_to(16 * 1024);
            }
        }
        Ok(())
    }

    /// Queues one packet and flushes.
    pub async fn write_packet(
        &mut self,
        seq: &mut u8,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        self.queue_packet(seq, payload);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::MAX_FRAME_PAYLOAD;

    #[tokio::test]
    async fn joins_continuation_frames() {
        let mut wire = Vec::new();
        let mut seq = 0;
        let big = vec![9u8; MAX_FRAME_PAYLOAD + 3];
        packet::write_packet(&mut wire, &mut seq, &big);
        packet::write_packet(&mut wire, &mut seq, b"\x0ehi");
        let mut stream = PacketStream::new(std::io::Cursor::new(wire), 64 << 20);
        let first = stream.read_packet().await.unwrap();
        assert_eq!(first.payload.len(), big.len());
        assert_eq!((first.seq, first.next_seq), (0, 2));
        let second = stream.read_packet().await.unwrap();
        assert_eq!(&second.payload[..], b"\x0ehi");
        assert!(matches!(
            stream.read_packet().await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn released_buffers_keep_what_is_unread_or_unsent() {
        let mut wire = Vec::new();
        let mut seq = 0;
        packet::write_packet(&mut wire, &mut seq, b"\x03SELECT 1");
        packet::write_packet(&mut wire, &mut seq, b"\x03SELECT 2");
        let mut stream = PacketStream::new(std::io::Cursor::new(wire), 64 << 20);
        stream.read_packet().await.unwrap();
        // The second packet came in the same read: it stays.
        stream.release_buffers();
        assert!(stream.read_buf.capacity() > 0);
        let second = stream.read_packet().await.unwrap();
        assert_eq!(&second.payload[..], b"\x03SELECT 2");
        stream.queue_packet(&mut seq, b"\x00\x00\x00\x02\x00\x00\x00");
        stream.release_buffers();
        assert_eq!(stream.queued_len(), 11, "a queued packet is not dropped");
        drop(second);
        stream.write_buf.clear();
        stream.release_buffers();
        assert_eq!(stream.read_buf.capacity(), 0);
        assert_eq!(stream.write_buf.capacity(), 0);
    }

    #[test]
    fn packets_built_in_place_are_framed_like_any_other() {
        let mut stream = PacketStream::new(std::io::Cursor::new(Vec::new()), 64 << 20);
        let mut seq = 5;
        stream
            .queue_packet_with(&mut seq, |out| {
                out.extend_from_slice(b"abc");
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(stream.queue_packet_with(&mut seq, |_| Err(())), Err(()));
        let big = vec![7u8; MAX_FRAME_PAYLOAD];
        stream
            .queue_packet_with(&mut seq, |out| {
                out.extend_from_slice(&big);
                Ok::<_, ()>(())
            })
            .unwrap();
        let mut expected = Vec::new();
        let mut expected_seq = 5;
        packet::write_packet(&mut expected, &mut expected_seq, b"abc");
        packet::write_packet(&mut expected, &mut expected_seq, &big);
        assert_eq!(stream.write_buf, expected);
        assert_eq!(seq, expected_seq);
    }

    #[tokio::test]
    async fn refuses_oversized_and_truncated_packets() {
        let mut wire = Vec::new();
        let mut seq = 0;
        packet::write_packet(&mut wire, &mut seq, &vec![1u8; MAX_FRAME_PAYLOAD + 1]);
        let mut stream = PacketStream::new(std::io::Cursor::new(wire), 1024);
        assert!(matches!(
            stream.read_packet().await,
            Err(ProtocolError::TooLarge { .. })
        ));

        // A bare header announcing a full 16 MiB frame is refused without waiting for (or
        // reserving room for) its payload.
        let mut announced =
            PacketStream::new(std::io::Cursor::new(vec![0xff, 0xff, 0xff, 0]), 1024);
        assert!(matches!(
            announced.read_packet().await,
            Err(ProtocolError::TooLarge {
                size: MAX_FRAME_PAYLOAD,
                limit: 1024
            })
        ));

        let mut truncated = PacketStream::new(std::io::Cursor::new(vec![10, 0, 0, 0, 1, 2]), 1024);
        let err = truncated.read_packet().await.unwrap_err();
        assert!(err.is_disconnect(), "{err}");
    }
}
