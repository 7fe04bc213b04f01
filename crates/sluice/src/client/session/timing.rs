//! Timing one client command for the latency histograms and the status page.
//!
//! A command costs one clock read when it arrives; the relay reads the clock when it sends
//! the command to the database and when the reply's last byte has gone to the client, and
//! both histograms end at that second read. No allocation, no label lookup (the user's
//! histograms are looked up once per session).

use std::time::Instant;

use crate::metrics::QueryLatency;
use crate::registry::Activity;

/// The clock of the command in progress.
pub(super) struct CommandTiming {
    latency: QueryLatency,
    received: Instant,
    relayed: Option<Instant>,
}

impl CommandTiming {
    /// Times commands into `latency` (one user's histograms).
    pub(super) fn new(latency: QueryLatency) -> CommandTiming {
        CommandTiming {
            latency,
            received: Instant::now(),
            relayed: None,
        }
    }

    /// Times the commands of another user from now on (after COM_CHANGE_USER).
    pub(super) fn set_latency(&mut self, latency: QueryLatency) {
        self.latency = latency;
    }

    /// A command has arrived.
    pub(super) fn start(&mut self, activity: &Activity) {
        self.received = Instant::now();
        self.relayed = None;
        activity.command_started(self.received);
    }

    /// The database answered: the command went to it at `sent` and its reply had been
    /// relayed to the client at `done`.
    pub(super) fn relayed(&mut self, sent: Instant, done: Instant) {
        let waited = done.saturating_duration_since(sent);
        self.latency.database.observe(waited.as_secs_f64());
        self.relayed = Some(done);
    }

    /// The command is done. A `query` (anything but a ping or a command without a reply)
    /// goes into the response histogram; `in_transaction` is the client's state after it.
    pub(super) fn finish(&mut self, activity: &Activity, query: bool, in_transaction: bool) {
        let end = match (self.relayed, query) {
            (Some(done), _) => done,
            (None, true) => Instant::now(),
            (None, false) => self.received,
        };
        if query {
            let took = end.saturating_duration_since(self.received);
            self.latency.response.observe(took.as_secs_f64());
        }
        activity.command_ended(end, in_transaction);
    }
}
