//! The MySQL compressed protocol (`CLIENT_COMPRESS`, zlib), as a byte-stream layer.
//!
//! Once a login with `CLIENT_COMPRESS` is accepted, every byte in both directions travels in
//! compressed packets: a 7-byte header (3 bytes of payload length, a sequence id, 3 bytes of
//! uncompressed length, 0 when the payload was sent as it is) and a zlib stream holding
//! ordinary MySQL packets, headers included. [`Compressed`] sits under the packet framing,
//! so everything above it (login, relay, change-user) reads and writes ordinary packets
//! whether compression is on or not.
//!
//! The two ends number compressed packets differently, so [`Compressed::start`] takes the
//! [`Side`] sluice plays. As the server (toward clients), the compressed sequence id of a
//! reply continues from the last one read, as MariaDB's server numbers them. As the client
//! (toward the database), every command opens a compressed packet numbered 0: the server
//! starts counting again at each command and answers `ER_NET_PACKETS_OUT_OF_ORDER` to any
//! other number, so commands written together (sluice's own statement, a client's command
//! and another statement in one write) each get compressed packets of their own. What
//! continues a command (LOAD DATA LOCAL's file, an auth switch answer) continues from the
//! server's last packet instead, as it expects. Replies are read whatever their numbers.
//! Hostile input is bounded: a compressed packet holds at most 16 MiB - 1 either way, and
//! one that inflates to anything but its announced length is refused.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
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

/// Which end of the connection sluice is: it decides how compressed packets are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// sluice serves a client: replies continue the compressed sequence from the last
    /// packet read, starting at `next_seq` (the login exchange's next sequence id).
    Server {
        /// The sequence id of the first compressed packet written.
        next_seq: u8,
    },
    /// sluice is a database's client: each command starts again at 0, as the server
    /// demands.
    Client,
}

/// Where the MySQL packets written begin, on the client side: a command must open a
/// compressed packet of its own, numbered 0. A command is a packet with sequence id 0 that
/// does not continue the one before it (the 256th packet of LOAD DATA LOCAL's file also
/// has sequence id 0, after 255 and with nothing read in between).
#[derive(Debug, Default)]
struct Commands {
    /// The header of the packet being read through, as far as it was written.
    header: [u8; 4],
    header_len: usize,
    /// Where in `pending` that header began.
    header_at: usize,
    /// Payload bytes of the current packet still to come.
    payload_left: usize,
    /// The sequence id of the last packet written since the peer last sent something.
    last_seq: Option<u8>,
    /// Offsets in `pending` where a command begins, in order.
    starts: Vec<usize>,
}

impl Commands {
    /// Follows the packets through `buf`, written at offset `base` of `pending`.
    fn scan(&mut self, base: usize, buf: &[u8]) {
        let mut at = 0;
        while at < buf.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(buf.len() - at);
                self.payload_left -= n;
                at += n;
                continue;
            }
            if self.header_len == 0 {
                self.header_at = base + at;
            }
            self.header[self.header_len] = buf[at];
            self.header_len += 1;
            at += 1;
            if self.header_len == self.header.len() {
                self.header_len = 0;
                self.payload_left = u24(&self.header[..3]);
                let seq = self.header[3];
                if seq == 0 && self.last_seq != Some(u8::MAX) {
                    self.starts.push(self.header_at);
                }
                self.last_seq = Some(seq);
            }
        }
    }
}

/// A byte stream that is plain until [`Compressed::start`], compressed from then on.
#[derive(Debug)]
pub struct Compressed<S> {
    inner: S,
    on: bool,
    /// Which end sluice is (meaningful once `on`).
    side: Side,
    /// Command boundaries in what is written (client side only).
    commands: Commands,
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
            side: Side::Client,
            commands: Commands::default(),
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            next_seq: 0,
        }
    }

    /// Compresses everything from now on (after the login's OK, which travels plain),
    /// numbering compressed packets as `side` does.
    pub fn start(&mut self, side: Side) {
        self.on = true;
        self.side = side;
        self.next_seq = match side {
            Side::Server { next_seq } => next_seq,
            Side::Client => 0,
        };
    }

    /// The sequence id the next compressed packet written carries. MariaDB's server, at
    /// each flush between the results of one reply, numbers the packets that follow from
    /// it (its packet number is synchronized with the compressed one), and drivers such as
    /// mysql_async expect that: a proxy relaying such a reply does the same.
    pub fn next_seq(&self) -> u8 {
        self.next_seq
    }

    /// Whether compression is on (after [`Compressed::start`]), for metrics and status.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// `packets` (whole MySQL packets, a new command) as they go on the wire now, for a last
    /// word sent without waiting (COM_QUIT from a destructor): in a compressed packet once
    /// compression is on. `None` while written bytes wait to be sent, which the goodbye
    /// would land inside.
    pub fn frame_now<'a>(&mut self, packets: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if !self.on {
            return Some(Cow::Borrowed(packets));
        }
        if !self.pending.is_empty() || self.sent < self.out.len() {
            return None;
        }
        self.out.clear();
        self.sent = 0;
        self.accept(packets);
        self.frame().ok()?;
        Some(Cow::Owned(std::mem::take(&mut self.out)))
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
            // What is written next answers this packet (a reply, or the file LOAD DATA
            // LOCAL asks for): its number follows, and it continues no packet written.
            self.next_seq = seq.wrapping_add(1);
            self.commands.last_seq = None;
        }
        Ok(())
    }

    /// Takes `buf` in to be framed, noting where commands begin in it (client side).
    fn accept(&mut self, buf: &[u8]) {
        if self.side == Side::Client {
            self.commands.scan(self.pending.len(), buf);
        }
        self.pending.extend_from_slice(buf);
    }

    /// Frames `pending` into compressed packets in `out`: at most 16 MiB - 1 bytes each,
    /// and (client side) a command's first one numbered 0 and holding nothing before it.
    fn frame(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut starts = std::mem::take(&mut self.commands.starts);
        let mut next_start = starts.iter().copied().peekable();
        let mut at = 0;
        let mut framed = Ok(());
        while at < pending.len() && framed.is_ok() {
            if next_start.next_if(|&start| start <= at).is_some() {
                self.next_seq = 0;
                continue;
            }
            let end = next_start
                .peek()
                .map_or(pending.len(), |&start| start.min(pending.len()))
                .min(at + MAX_PAYLOAD);
            framed = self.frame_one(&pending[at..end]);
            at = end;
        }
        starts.clear();
        self.commands.starts = starts;
        if self.commands.header_len > 0 {
            // A header cut in two by a flush: its command begins with the next bytes.
            self.commands.header_at = 0;
        }
        self.pending = pending;
        self.pending.clear();
        framed
    }

    /// Appends `chunk` (at most 16 MiB - 1 bytes) to `out` as one compressed packet.
    fn frame_one(&mut self, chunk: &[u8]) -> io::Result<()> {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        let inflated_len = if chunk.len() < MIN_COMPRESS_LEN {
            self.out.extend_from_slice(chunk);
            0
        } else if deflate(chunk, &mut self.out)? {
            chunk.len()
        } else {
            // Incompressible: send it as it is.
            self.out.truncate(start + HEADER_LEN);
            self.out.extend_from_slice(chunk);
            0
        };
        let len = self.out.len() - start - HEADER_LEN;
        self.out[start..start + 3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
        self.out[start + 3] = self.next_seq;
        self.out[start + 4..start + 7].copy_from_slice(&(inflated_len as u32).to_le_bytes()[..3]);
        self.next_seq = self.next_seq.wrapping_add(1);
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

thread_local! {
    /// Each thread's zlib compressor, reset for every packet (each is a zlib stream of its
    /// own) rather than set up and torn down for each: its tables are hundreds of KiB. Per
    /// thread rather than per connection, so an idle compressed client holds none of it.
    static DEFLATE: RefCell<Compress> =
        RefCell::new(Compress::new(flate2::Compression::new(LEVEL), true));
    /// Each thread's zlib decompressor, reset for every packet, like [`DEFLATE`].
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(true));
}

/// Appends `chunk` as one zlib stream to `out` and returns true, or returns false (with
/// `out` holding some of it) as soon as the stream would not be shorter than `chunk`:
/// incompressible data costs no more than one pass over it.
fn deflate(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
    DEFLATE.with_borrow_mut(|deflater| {
        deflater.reset();
        let start = out.len();
        // A zlib stream's header and checksum, and room for a good ratio to begin with.
        out.reserve(chunk.len() / 2 + 16);
        loop {
            let read = deflater.total_in() as usize;
            let status = deflater
                .compress_vec(&chunk[read..], out, FlushCompress::Finish)
                .map_err(io::Error::other)?;
            let deflated = out.len() - start;
            if deflated >= chunk.len() {
                return Ok(false);
            }
            if status == Status::StreamEnd {
                return Ok(true);
            }
            if out.len() < out.capacity() {
                // Room left and no end: zlib is stuck, which it never should be.
                return Err(io::Error::other(
                    "zlib stopped short of the end of a packet",
                ));
            }
            out.reserve(chunk.len() - deflated);
        }
    })
}

/// Inflates `payload`, which must come to exactly `expected` bytes, onto `out`. The output
/// room is exactly `expected`: a compressed packet cannot inflate past what it announced
/// (a zlib bomb stops at 16 MiB).
fn inflate(payload: &[u8], expected: usize, out: &mut BytesMut) -> io::Result<()> {
    let start = out.len();
    out.resize(start + expected, 0);
    let inflated = INFLATE.with_borrow_mut(|inflater| {
        inflater.reset(true);
        let status = inflater.decompress(payload, &mut out[start..], FlushDecompress::Finish);
        matches!(status, Ok(Status::StreamEnd))
            && inflater.total_out() as usize == expected
            && inflater.total_in() as usize == payload.len()
    });
    if !inflated {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a compressed packet is not one zlib stream of the length it announced",
        ));
    }
    Ok(())
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
        // Not inside a packet header: where its command begins must stay in `pending`.
        if this.pending.len() >= WRITE_BATCH && this.commands.header_len == 0 {
            std::task::ready!(this.poll_drain(cx))?;
        }
        this.accept(buf);
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
    use flate2::write::ZlibEncoder;
    use std::io::Write;
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
        stream.start(Side::Server { next_seq: 3 });
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

    /// Reads compressed packets from `theirs` until they hold `want` plain bytes, as
    /// (sequence id, inflated payload) pairs.
    async fn read_packets(theirs: &mut tokio::io::DuplexStream, want: usize) -> Vec<(u8, Vec<u8>)> {
        let mut packets = Vec::new();
        let mut got = 0;
        while got < want {
            let mut header = [0u8; HEADER_LEN];
            theirs.read_exact(&mut header).await.unwrap();
            let mut payload = vec![0u8; u24(&header[0..3])];
            theirs.read_exact(&mut payload).await.unwrap();
            let plain = match u24(&header[4..7]) {
                0 => payload,
                len => {
                    assert!(len <= MAX_PAYLOAD);
                    let mut inflated = BytesMut::new();
                    inflate(&payload, len, &mut inflated).unwrap();
                    inflated.to_vec()
                }
            };
            got += plain.len();
            packets.push((header[3], plain));
        }
        packets
    }

    /// MySQL packets with `payload`, from sequence id `seq`.
    fn mysql(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::packet::write_packet(&mut out, &mut { seq }, payload);
        out
    }

    #[tokio::test]
    async fn a_client_opens_every_command_at_sequence_zero() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(Side::Client);
        // Pipelined: a statement of sluice's, the client's command, another statement.
        let first = mysql(0, b"\x03SET sql_mode = ''");
        let second = mysql(0, &[b'x'; 3000]);
        let third = mysql(0, b"\x03SELECT @@sql_mode");
        let all = [first.clone(), second.clone(), third.clone()].concat();
        stream.write_all(&all).await.unwrap();
        stream.flush().await.unwrap();
        let packets = read_packets(&mut theirs, all.len()).await;
        assert_eq!(
            packets,
            [(0, first), (0, second), (0, third)],
            "one compressed packet per command, each numbered 0"
        );
        // The server's reply (numbered as it likes) is read whatever its number.
        theirs
            .write_all(&packet(7, b"\x03\0\0\x01\xfb", false))
            .await
            .unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).await.unwrap();
        // What answers it (a LOCAL INFILE file: inner sequence 2 on) continues from it...
        let file = [mysql(2, b"a,b\n"), mysql(3, b"")].concat();
        stream.write_all(&file).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(read_packets(&mut theirs, file.len()).await, [(8, file)]);
        // ... and the next command starts at 0 again.
        let ping = mysql(0, b"\x0e");
        stream.write_all(&ping).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(read_packets(&mut theirs, ping.len()).await, [(0, ping)]);
    }

    #[tokio::test]
    async fn a_file_past_sequence_255_continues_its_command() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(Side::Client);
        theirs
            .write_all(&packet(4, b"\x01\0\0\x01\xfb", false))
            .await
            .unwrap();
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).await.unwrap();
        let file = [
            mysql(254, b"1\n"),
            mysql(255, b"2\n"),
            mysql(0, b"3\n"),
            mysql(1, b""),
        ]
        .concat();
        stream.write_all(&file).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(read_packets(&mut theirs, file.len()).await, [(5, file)]);
    }

    #[tokio::test]
    async fn a_client_command_over_16_mib_goes_in_numbered_packets_under_16_mib() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(Side::Client);
        let mut query = vec![b'y'; 17 << 20];
        query[0] = 0x03;
        let big = mysql(0, &query);
        let after = mysql(0, b"\x0e");
        let all = [big.clone(), after.clone()].concat();
        let writer = async {
            stream.write_all(&all).await.unwrap();
            stream.flush().await.unwrap();
        };
        let (_, packets) = tokio::join!(writer, read_packets(&mut theirs, all.len()));
        let seqs: Vec<u8> = packets.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, [0, 1, 0], "the big command 0, 1; the next one 0");
        assert!(packets.iter().all(|(_, plain)| plain.len() <= MAX_PAYLOAD));
        assert_eq!([&packets[0].1[..], &packets[1].1[..]].concat(), big);
        assert_eq!(packets[2].1, after);
    }

    #[tokio::test]
    async fn a_server_numbers_on_from_what_it_read_whatever_it_writes() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut stream = Compressed::new(ours);
        stream.start(Side::Server { next_seq: 0 });
        theirs
            .write_all(&packet(4, b"\x01\0\0\0\x0e", false))
            .await
            .unwrap();
        let mut ping = [0u8; 5];
        stream.read_exact(&mut ping).await.unwrap();
        let replies = [mysql(0, b"\0\0\0"), mysql(0, b"\0\0\0")].concat();
        stream.write_all(&replies).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(
            read_packets(&mut theirs, replies.len()).await,
            [(5, replies)]
        );
    }

    #[tokio::test]
    async fn a_goodbye_is_framed_once_compression_is_on() {
        let (ours, _theirs) = tokio::io::duplex(1 << 16);
        let mut stream = Compressed::new(ours);
        let quit = [1, 0, 0, 0, 1];
        assert_eq!(stream.frame_now(&quit).as_deref(), Some(&quit[..]));
        stream.start(Side::Client);
        assert_eq!(
            stream.frame_now(&quit).as_deref(),
            Some(&[5, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1][..])
        );
    }

    #[tokio::test]
    async fn short_replies_go_uncompressed() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut stream = Compressed::new(ours);
        stream.start(Side::Server { next_seq: 0 });
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
        stream.start(Side::Server { next_seq: 0 });
        let mut lying = packet(0, &vec![0u8; 100_000], true);
        lying[4..7].copy_from_slice(&[100, 0, 0]); // announces 100 bytes
        theirs.write_all(&lying).await.unwrap();
        let mut byte = [0u8; 1];
        let err = stream.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_packet_inflating_short_of_its_length_or_with_bytes_after_its_stream_is_refused() {
        let stream = packet(0, &[b'z'; 500], true)[HEADER_LEN..].to_vec();
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(inflate(&stream, 501, &mut out).is_err(), "short");
        let mut trailing = stream.clone();
        trailing.push(0);
        assert!(inflate(&trailing, 500, &mut out).is_err(), "trailing");
        assert_eq!(&out[..], b"kept", "nothing of a refused packet is kept");
        inflate(&stream, 500, &mut out).unwrap();
        assert_eq!(out.len(), 4 + 500);
    }

    /// The per-thread compressor is reset between packets: each is a zlib stream of its
    /// own that inflates alone, whatever came before it on the thread.
    #[test]
    fn every_packet_is_a_stream_of_its_own_and_incompressible_ones_go_as_they_are() {
        let mut framer = Compressed::new(Vec::<u8>::new());
        framer.start(Side::Server { next_seq: 0 });
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let chunks = [
            vec![b'a'; 3000],
            noise,
            b"SELECT 1 FROM t WHERE x = 'yy' -- ".repeat(9),
        ];
        for chunk in &chunks {
            framer.frame_one(chunk).unwrap();
        }
        let mut at = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let header = &framer.out[at..at + HEADER_LEN];
            let (len, inflated_len) = (u24(&header[0..3]), u24(&header[4..7]));
            assert_eq!(header[3], i as u8);
            let payload = &framer.out[at + HEADER_LEN..at + HEADER_LEN + len];
            if i == 1 {
                assert!(
                    inflated_len == 0 && payload == &chunk[..],
                    "noise goes as it is"
                );
            } else {
                assert!(len < chunk.len() / 2, "chunk {i} compressed: {len}");
                let mut plain = BytesMut::new();
                inflate(payload, inflated_len, &mut plain).unwrap();
                assert_eq!(&plain[..], &chunk[..]);
            }
            at += HEADER_LEN + len;
        }
        assert_eq!(at, framer.out.len());
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
            stream.start(Side::Server { next_seq: 0 });
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
