//! Graceful shutdown: once it begins, sluice accepts no new clients (but serves those the
//! kernel had already queued), lets statements and transactions in flight finish until a
//! deadline, serves a client between transactions while it keeps sending commands, and
//! tells it with the server's own shutdown error (1053) once it has been quiet for
//! `shutdown_idle_grace`.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Whether a drain has begun, and its deadline; sessions watch it between commands.
pub struct Shutdown {
    deadline: watch::Sender<Option<Instant>>,
}

impl Shutdown {
    /// Not draining.
    pub fn new() -> Shutdown {
        Shutdown {
            deadline: watch::Sender::new(None),
        }
    }

    /// Starts draining: work in flight has until `timeout` from now. A second call keeps
    /// the first deadline.
    pub fn begin(&self, timeout: Duration) {
        self.deadline.send_if_modified(|deadline| {
            if deadline.is_some() {
                return false;
            }
            *deadline = Some(Instant::now() + timeout);
            true
        });
    }

    /// The drain's deadline, once it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// A receiver that wakes when the drain begins.
    pub fn watch(&self) -> watch::Receiver<Option<Instant>> {
        self.deadline.subscribe()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_deadline_holds_and_watchers_wake() {
        let shutdown = Shutdown::new();
        let mut watcher = shutdown.watch();
        assert_eq!(shutdown.deadline(), None);
        shutdown.begin(Duration::from_secs(30));
        watcher.changed().await.unwrap();
        let first = shutdown.deadline().unwrap();
        shutdown.begin(Duration::from_secs(1));
        assert_eq!(shutdown.deadline(), Some(first));
        assert!(first > Instant::now() + Duration::from_secs(20));
    }
}
