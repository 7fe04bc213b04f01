//! Borrowers waiting in line for a database connection, as a signal to holders.
//!
//! A client may keep its connection between commands only for convenience (to read its own
//! warnings next); it gives the connection back as soon as someone waits for one, so that
//! convenience never costs another client time.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// How many borrowers wait for a connection now, and a wake-up when one starts to.
#[derive(Debug, Default)]
pub struct Demand {
    waiting: AtomicUsize,
    arrived: Notify,
}

/// A borrower's place among the waiting, counted until it is dropped.
pub struct Waiting<'a>(&'a Demand);

impl Demand {
    /// Counts a borrower that has to wait, and wakes whoever watches.
    pub fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        Waiting(self)
    }

    /// Resolves when some borrower waits (at once if one already does).
    pub async fn someone_waits(&self) {
        loop {
            // Registered before the count is read, so an arrival in between still wakes it.
            let arrived = self.arrived.notified();
            if self.waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_watcher_wakes_when_a_borrower_starts_waiting_and_not_before() {
        let demand = Demand::default();
        let quiet = tokio::time::timeout(Duration::from_millis(50), demand.someone_waits()).await;
        assert!(quiet.is_err(), "nobody waits yet");
        let watcher = demand.someone_waits();
        let waiting = demand.wait();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("woken by the arrival");
        drop(waiting);
        let after = tokio::time::timeout(Duration::from_millis(50), demand.someone_waits()).await;
        assert!(after.is_err(), "the borrower was served and left");
    }
}
