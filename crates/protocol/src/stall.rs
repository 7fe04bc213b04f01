//! Time limits on a byte stream that stops making progress.
//!
//! A peer that stops answering (a blackholed network, a frozen host, a client that no
//! longer reads) leaves a read or a write waiting forever: TCP keepalive only probes a
//! connection with nothing in flight, and a peer whose kernel still acknowledges looks
//! healthy to it. [`Stall`] wraps any `AsyncRead + AsyncWrite` and fails an operation with
//! [`io::ErrorKind::TimedOut`] once it has waited its limit without a byte moving; every
//! byte moved starts the clock again. Reads and writes have separate limits, each of which
//! may be off: sluice puts both on database sockets, and a write limit alone fits a client
//! socket (a client that stops reading its results).
//!
//! The clock runs only while an operation waits: a socket nobody polls (an idle pooled
//! connection) never times out. An operation given up while waiting (its future dropped)
//! leaves its clock running, so the next one on that stream has only the rest of the limit;
//! sluice never reuses a connection whose operation it abandoned.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// One direction's limit and its clock.
#[derive(Debug, Default)]
struct Clock {
    limit: Option<Duration>,
    /// Allocated at the first wait and reused; `running` says whether it counts now.
    timer: Option<Pin<Box<Sleep>>>,
    running: bool,
}

impl Clock {
    fn new(limit: Option<Duration>) -> Clock {
        Clock {
            limit,
            ..Clock::default()
        }
    }

    /// Passes on the inner stream's answer `poll`: progress (or an error) stops the clock,
    /// waiting starts it (unless it runs already) and fails once the limit is reached.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.running = false;
            return poll;
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let deadline = Instant::now() + limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.running {
            timer.as_mut().reset(deadline);
            self.running = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.running = false;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {limit:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] after waiting
/// their limit without progress.
#[derive(Debug)]
pub struct Stall<S> {
    io: S,
    read: Clock,
    write: Clock,
}

impl<S> Stall<S> {
    /// Wraps `io`; `None` turns a direction's limit off.
    pub fn new(io: S, read_limit: Option<Duration>, write_limit: Option<Duration>) -> Stall<S> {
        Stall {
            io,
            read: Clock::new(read_limit),
            write: Clock::new(write_limit),
        }
    }

    /// Changes both limits (e.g. once a connection's login is done); a running clock keeps
    /// its deadline until the next progress.
    pub fn set_limits(&mut self, read_limit: Option<Duration>, write_limit: Option<Duration>) {
        self.read.limit = read_limit;
        self.write.limit = write_limit;
    }

    /// The wrapped stream, e.g. for socket options.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The wrapped stream, mutably: to switch it to TLS, or for a non-blocking look at it
    /// that must not start this stream's clocks.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        this.read.check(cx, poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write.check(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.write.check(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.write.check(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(10);

    fn timed_out<T: std::fmt::Debug>(result: io::Result<T>) -> bool {
        matches!(result, Err(e) if e.kind() == io::ErrorKind::TimedOut)
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_past_its_limit_fails() {
        let (_peer, io) = tokio::io::duplex(64);
        let mut stream = Stall::new(io, Some(LIMIT), None);
        let started = Instant::now();
        let mut byte = [0u8; 1];
        assert!(timed_out(stream.read(&mut byte).await));
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn every_byte_restarts_the_clock() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut stream = Stall::new(io, Some(LIMIT), Some(LIMIT));
        let trickle = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(LIMIT / 2).await;
                peer.write_all(b"x").await.unwrap();
            }
            peer
        });
        let mut five = [0u8; 5];
        // Five bytes over 2.5 limits, never a whole limit without one.
        stream.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"xxxxx");
        let _peer = trickle.await.unwrap();
        // Quiet again: the next read fails a limit after it began, not earlier.
        let started = Instant::now();
        assert!(timed_out(stream.read(&mut five).await));
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_take_fails_while_a_slow_reader_keeps_it_alive() {
        let (mut peer, io) = tokio::io::duplex(16);
        let mut stream = Stall::new(io, None, Some(LIMIT));
        let slow_reader = tokio::spawn(async move {
            let mut chunk = [0u8; 16];
            for _ in 0..4 {
                tokio::time::sleep(LIMIT / 2).await;
                peer.read_exact(&mut chunk).await.unwrap();
            }
            peer
        });
        // 64 bytes through a 16-byte pipe drained every half limit: never stalled.
        stream.write_all(&[7u8; 64]).await.unwrap();
        let _peer = slow_reader.await.unwrap();
        stream.write_all(&[7u8; 16]).await.unwrap();
        // The pipe is full and nobody reads any more.
        let started = Instant::now();
        assert!(timed_out(stream.write_all(&[7u8; 1]).await));
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_direction_without_a_limit_waits_as_long_as_it_takes() {
        let (mut peer, io) = tokio::io::duplex(64);
        // A client socket: writes limited, reads not (an idle client is a different timer).
        let mut stream = Stall::new(io, None, Some(LIMIT));
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(LIMIT * 100, stream.read(&mut byte)).await;
        assert!(read.is_err(), "still waiting, not failed");
        peer.write_all(b"y").await.unwrap();
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        stream.set_limits(Some(LIMIT), None);
        assert!(timed_out(stream.read(&mut byte).await));
    }
}
