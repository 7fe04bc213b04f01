//! The timer behind hyper's header-read timeout, taught to tell keep-alive idling from a
//! slow request.
//!
//! hyper (1.12) starts its header-read timer whenever a connection is ready for its next
//! request, so on its own it closes an idle keep-alive connection after
//! `header_read_timeout` as well: keep-alive could never last longer than a header may take.
//! hyper asks its [`Timer`] for one sleep per request head, so this timer hands out sleeps
//! that know the difference:
//!
//! - the first request of a connection gets `header_read_timeout` from the start (a socket
//!   that connects and sends nothing, or half its headers, is closed after it);
//! - a later one waits up to `keepalive_timeout` for its first byte, then has
//!   `header_read_timeout` from that byte to finish its headers.
//!
//! When a sleep ends, hyper closes the connection; the sleep counts why.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use prometheus::IntCounter;

use super::socket::Arrivals;

/// The header and keep-alive timers of one connection.
pub struct HeadClock {
    arrivals: Arrivals,
    first: AtomicBool,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    header_expired: IntCounter,
    idle_expired: IntCounter,
}

impl HeadClock {
    /// A clock for a new connection whose reads `arrivals` counts. The counters count
    /// connections closed for a slow request head and for idling.
    pub fn new(
        arrivals: Arrivals,
        header_read_timeout: Duration,
        keepalive_timeout: Duration,
        header_expired: IntCounter,
        idle_expired: IntCounter,
    ) -> HeadClock {
        HeadClock {
            arrivals,
            first: AtomicBool::new(true),
            header_read_timeout,
            keepalive_timeout,
            header_expired,
            idle_expired,
        }
    }

    fn wait(&self, phase: Phase, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadWait {
            phase,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            arrivals: self.arrivals.clone(),
            header_read_timeout: self.header_read_timeout,
            header_expired: self.header_expired.clone(),
            idle_expired: self.idle_expired.clone(),
        })
    }
}

impl Timer for HeadClock {
    /// hyper's HTTP/1 server asks only for [`Timer::sleep_until`]; a plain sleep is timed as a
    /// request head.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.wait(Phase::Header, Instant::now() + duration)
    }

    /// hyper sets `deadline` to `header_read_timeout` from now.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        if self.first.swap(false, Ordering::Relaxed) {
            return self.wait(Phase::Header, deadline);
        }
        let since = self.arrivals.count();
        self.wait(
            Phase::Idle { since },
            Instant::now() + self.keepalive_timeout,
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of the next request; `since` is the arrival count then.
    Idle { since: u64 },
    /// Reading a request head.
    Header,
}

struct HeadWait {
    phase: Phase,
    timer: Pin<Box<tokio::time::Sleep>>,
    arrivals: Arrivals,
    header_read_timeout: Duration,
    header_expired: IntCounter,
    idle_expired: IntCounter,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls this after every read that left the head incomplete, so the first
        // byte of a request is seen here as soon as it arrives.
        if let Phase::Idle { since } = this.phase {
            if this.arrivals.count() != since {
                this.phase = Phase::Header;
                let deadline = tokio::time::Instant::now() + this.header_read_timeout;
                this.timer.as_mut().reset(deadline);
            }
        }
        ready!(this.timer.as_mut().poll(cx));
        match this.phase {
            Phase::Idle { .. } => this.idle_expired.inc(),
            Phase::Header => this.header_expired.inc(),
        }
        Poll::Ready(())
    }
}

impl Sleep for HeadWait {}
