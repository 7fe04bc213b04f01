//! The MySQL compressed protocol (`CLIENT_COMPRESS`, zlib), as a byte-stream layer.
//!
//! Once a login with `CLIENT_COMPRESS` is accepted, every byte in both directions travels in
//! compressed packets: a 7-byte header (3 bytes of payload length, a sequence id, 3 bytes of
//! uncompressed length, 0 when the payload was sent as it is) and a zlib stream holding
//! ordinary MySQL packets, headers included. [`Compressed`] sits under the packet framing,
//! so everything above it (login, relay, change-user) reads and writes ordinary packets
//! whether compression is on or not.
//!
//! This is the server's side of the exchange (toward clients): the compressed sequence id of
//! a reply continues from the last one read, as MariaDB's server numbers them. Hostile input
//! is bounded: a compressed packet holds at most 16 MiB - 1 either way, and one that
//! inflates to anything but its announced length is refused.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use flate2::write::{ZlibDecoder, ZlibEncoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest payload (compressed or not) one compressed packet can announce.
const MAX_PAYLOAD: usize = 0xff_ffff;
/// Length of a compressed packet's header.
const HEADER_LEN: usize = 7;
/// Shorter payloads are sent as they are: compressing them costs more than it saves (the
/// servers' own threshold).
const MIN_COMPRESS_LEN: usize = 50;
/// Written bytes held before they are framed and sent even without a flush.
const WRITE_BATCH: usize = 64 * 1024;
/// Most bytes taken from the peer in one read.
const READ_CHUNK: usize = 16 * 1024;
/// zlib level: the fast end, since sluice's CPU is shared with the database.
const LEVEL: u32 = 1;

/// A byte stream that is plain until [`Compressed::start`], compressed from then on.
#[derive(Debug)]
pub struct Compressed<S> {
    inner: S,
    on: bool,
    /// Compressed bytes read and not yet unpacked.
    raw: BytesMut,
    /// Unpacked bytes not yet handed to the reader.
    plain: BytesMut,
    /// Where a read from the peer lands before it joins `raw` (empty until compression
    /// starts, so an uncompressed client costs nothing).
    scratch: Vec<u8>,
    /// Bytes written and not yet framed.
    pending: Vec<u8>,
    /// Framed bytes not yet sent, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The sequence id of the next compressed packet written.
    next_seq: u8,
}

impl<S> Compressed<S> {
    /// A plain stream over `inner`.
    pub fn new(inner: S) -> Compressed<S> {
        Compressed {
            inner,
            on: false,
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            next_seq: 0,
        }
    }

    /// Compresses everything from now on (after the login's OK went out plain), continuing
    /// the compressed sequence from `next_seq` (the login exchange's next sequence id).
    pub fn start(&mut self, next_seq: u8) {
        self.on = true;
        self.next_seq = next_seq;
    }

    /// Bytes read from the peer and not yet handed on (a pipelined command, say).
    pub fn buffered_len(&self) -> usize {
        self.raw.len() + self.plain.len()
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unpacks every complete compressed packet in `raw` into `plain`.
    fn unpack(&mut self) -> io::Result<()> {
        while self.raw.len() >= HEADER_LEN {
            let len = u24(&self.raw[0..3]);
            let seq = self.raw[3];
            let inflated_len = u24(&self.raw[4..7]);
            if self.raw.len() < HEADER_LEN + len {
                self.raw.reserve(HEADER_LEN + len - self.raw.len());
                return Ok(());
            }
            self.raw.advance(HEADER_LEN);
            let payload = self.raw.split_to(len);
            if inflated_len == 0 {
                self.plain.extend_from_slice(&payload);
            } else {
                inflate(&payload, inflated_len, &mut self.plain)?;
            }
            self.next_seq = seq.wrapping_add(1);
        }
        Ok(())
    }

    /// Frames `pending` into compressed packets in `out`.
    fn frame(&mut self) -> io::Result<()> {
        for chunk in self.pending.chunks(MAX_PAYLOAD) {
            let start = self.out.len();
            self.out.extend_from_slice(&[0; HEADER_LEN]);
            let inflated_len = if chunk.len() < MIN_COMPRESS_LEN {
                self.out.extend_from_slice(chunk);
                0
            } else {
                let mut encoder = ZlibEncoder::new(&mut self.out, flate2::Compression::new(LEVEL));
                encoder.write_all(chunk)?;
                encoder.finish()?;
                let deflated = self.out.len() - start - HEADER_LEN;
                if deflated >= chunk.len() || deflated > MAX_PAYLOAD {
                    // Incompressible: send it as it is.
                    self.out.truncate(start + HEADER_LEN);
                    self.out.extend_from_slice(chunk);
                    0
                } else {
                    chunk.len()
                }
            };
            let len = self.out.len() - start - HEADER_LEN;
            self.out[start..start + 3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
            self.out[start + 3] = self.next_seq;
            self.out[start + 4..start + 7]
                .copy_from_slice(&(inflated_len as u32).to_le_bytes()[..3]);
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        self.pending.clear();
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> Compressed<S> {
    /// Frames what is pending and sends every framed byte.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent == self.out.len() && !self.pending.is_empty() {
            self.out.clear();
            self.sent = 0;
            self.frame()?;
        }
        while self.sent < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.pending.is_empty() {
            // Written while the last batch was going out: frame and send it too.
            return self.poll_drain(cx);
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

fn u24(bytes: &[u8]) -> usize {
    usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16
}

/// Inflates `payload`, which must come to exactly `expected` bytes, onto `out`.
fn inflate(payload: &[u8], expected: usize, out: &mut BytesMut) -> io::Result<()> {
    let mut inflated = Vec::with_capacity(expected);
    let mut decoder = ZlibDecoder::new(Bounded {
        out: &mut inflated,
        left: expected,
    });
    decoder.write_all(payload)?;
    decoder.finish()?;
    if inflated.len() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a compressed packet inflated to another length than it announced",
        ));
    }
    out.extend_from_slice(&inflated);
    Ok(())
}

/// A writer that refuses more than `left` bytes: a compressed packet cannot inflate past
/// what it announced (a zlib bomb stops at 16 MiB).
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a compressed packet inflates past the length it announced",
            ));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Compressed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.on {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            this.unpack()?;
            if !this.plain.is_empty() {
                continue;
            }
            this.scratch.resize(READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut this.scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return if this.raw.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection inside a compressed packet",
                    )))
                };
            }
            this.raw.extend_from_slice(&this.scratch[..n]);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Compressed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.on {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.pending.len() >= WRITE_BATCH {
            std::task::ready!(this.poll_drain(cx))?;
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.on {
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.on {
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A compressed packet as a client would send it.
    fn packet(seq: u8, plain: &[u8], compress: bool) -> Vec<u8> {
        let (payload, inflated_len) = if compress {
            let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(plain).unwrap();
            (encoder.finish().unwrap(), plain.len())
        } else {
            (plain.to_vec(), 0)
        };
        let mut out = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        out.push(seq);
        out.extend_from_slice(&(inflated_len as u32).to_le_bytes()[..3]);
        out.extend_from_slice(&payload);
        out
    }

    #[tokio::test]
    async fn reads_compressed_and_stored_packets_and_answers_with_the_next_sequence() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(3);
        let big = vec![b'x'; 5000];
        let mut sent = packet(0, b"\x06\0\0\0\x03hello", false);
        sent.extend(packet(1, &big, true));
        theirs.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; 10 + 5000];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..10], b"\x06\0\0\0\x03hello");
        assert_eq!(&got[10..], &big[..]);
        // The reply continues from the last sequence read (1): it is 2.
        let reply = vec![b'y'; 3000];
        stream.write_all(&reply).await.unwrap();
        stream.flush().await.unwrap();
        let mut header = [0u8; HEADER_LEN];
        theirs.read_exact(&mut header).await.unwrap();
        assert_eq!(header[3], 2);
        assert_eq!(u24(&header[4..7]), 3000, "compressed");
        let mut payload = vec![0u8; u24(&header[0..3])];
        theirs.read_exact(&mut payload).await.unwrap();
        let mut inflated = BytesMut::new();
        inflate(&payload, 3000, &mut inflated).unwrap();
        assert_eq!(&inflated[..], &reply[..]);
    }

    #[tokio::test]
    async fn short_replies_go_uncompressed() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut stream = Compressed::new(ours);
        stream.start(0);
        stream
            .write_all(b"\x07\0\0\x01\0\0\0\x02\0\0\0")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; HEADER_LEN + 11];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..HEADER_LEN], &[11, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_packet_inflating_past_its_length_is_refused() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(0);
        let mut lying = packet(0, &vec![0u8; 100_000], true);
        lying[4..7].copy_from_slice(&[100, 0, 0]); // announces 100 bytes
        theirs.write_all(&lying).await.unwrap();
        let mut byte = [0u8; 1];
        let err = stream.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        for garbage in [
            vec![10, 0, 0, 0, 20, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            vec![3, 0, 0, 0, 0xff, 0xff, 0xff, 0x78, 0x9c, 0],
            vec![0, 0, 0, 0, 5, 0, 0],
        ] {
            let (ours, mut theirs) = tokio::io::duplex(1 << 16);
            let mut stream = Compressed::new(ours);
            stream.start(0);
            theirs.write_all(&garbage).await.unwrap();
            drop(theirs);
            let mut rest = Vec::new();
            assert!(stream.read_to_end(&mut rest).await.is_err(), "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn before_start_bytes_pass_as_they_are() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut stream = Compressed::new(ours);
        stream.write_all(b"plain").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"plain");
    }
}
