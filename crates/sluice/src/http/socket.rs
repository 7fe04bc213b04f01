//! A Data API client socket that notes when bytes arrive, so the keep-alive clock (see
//! `clock`) can tell an idle connection from a slow request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many reads of a connection have brought bytes; shared with its keep-alive clock.
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<AtomicU64>);

impl Arrivals {
    /// Reads that brought bytes so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A socket whose reads are counted in its [`Arrivals`]; writes pass through.
pub struct Counted<I> {
    inner: I,
    arrivals: Arrivals,
}

impl<I> Counted<I> {
    /// Counts the reads of `inner` in `arrivals`.
    pub fn new(inner: I, arrivals: Arrivals) -> Self {
        Counted { inner, arrivals }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.arrivals.0.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_that_bring_bytes_are_counted() {
        let (near, mut far) = tokio::io::duplex(64);
        let arrivals = Arrivals::default();
        let mut counted = Counted::new(near, arrivals.clone());
        far.write_all(b"hi").await.unwrap();
        counted.read_exact(&mut [0; 2]).await.unwrap();
        assert_eq!(arrivals.count(), 1);
        counted.write_all(b"back").await.unwrap();
        far.read_exact(&mut [0; 4]).await.unwrap();
        drop(far);
        assert_eq!(counted.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(arrivals.count(), 1, "the end of the stream brings nothing");
    }
}
