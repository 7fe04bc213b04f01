//! A Data API client socket, watched: it notes when bytes arrive (so the keep-alive clock
//! can tell an idle connection from a slow request) and fails a write the client has not
//! accepted for `http.write_timeout`.
//!
//! A client that stops reading stops hyper's writes, hyper stops polling the response body,
//! and the request that produces the body waits, holding its database connection. Failing
//! the stalled write ends the connection: hyper drops the body, and with it the request and
//! its database connection (see `output`). The clock restarts whenever a write makes
//! progress, so a slow but steady reader is served.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How many reads of a connection have brought bytes; shared with its keep-alive clock.
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<AtomicU64>);

impl Arrivals {
    /// Reads that brought bytes so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A socket whose arrivals are counted and whose writes may stall only so long.
pub struct Watched<I> {
    inner: I,
    arrivals: Arrivals,
    write_timeout: Duration,
    /// Running while the client accepts nothing.
    stall: Option<Pin<Box<Sleep>>>,
    /// Counts connections cut for not reading.
    cut: IntCounter,
}

impl<I> Watched<I> {
    /// Watches `inner`; `cut` counts the connections ended by `write_timeout`.
    pub fn new(inner: I, arrivals: Arrivals, write_timeout: Duration, cut: IntCounter) -> Self {
        Watched {
            inner,
            arrivals,
            write_timeout,
            stall: None,
            cut,
        }
    }

    /// Passes a finished write through (the client took bytes: no stall), or times a
    /// pending one.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.cut.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client accepted nothing for http.write_timeout",
                )))
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.arrivals.record();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_timeout_and_reads_are_counted() {
        let (near, mut far) = tokio::io::duplex(64);
        let arrivals = Arrivals::default();
        let cut = IntCounter::new("cut", "cut").unwrap();
        let timeout = Duration::from_millis(300);
        let mut watched = Watched::new(near, arrivals.clone(), timeout, cut.clone());
        far.write_all(b"hi").await.unwrap();
        watched.read_exact(&mut [0; 2]).await.unwrap();
        assert_eq!(arrivals.count(), 1);
        // A slow but steady reader: eight pieces, one every 50 ms, longer than the timeout
        // in all but never stalled that long at once.
        let reader = tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                far.read_exact(&mut [0; 64]).await.unwrap();
            }
            far
        });
        let started = std::time::Instant::now();
        watched.write_all(&[0; 8 * 64]).await.unwrap();
        assert!(started.elapsed() > timeout);
        let _far = reader.await.unwrap();
        // Nobody reads any more: the write fails once the timeout passes.
        watched.write_all(&[0; 64]).await.unwrap();
        let err = watched.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(cut.get(), 1);
    }
}
