//! Connected clients by sluice connection id, so that `KILL <id>` and `KILL QUERY <id>` act
//! on the client a user sees (its `CONNECTION_ID()`), never on a database connection that
//! happens to serve someone else.
//!
//! Each client publishes which database thread serves it, stamped with a generation that
//! changes on every borrow and return. A kill reads the stamp, finds the thread's running
//! query id, and kills that query (`KILL QUERY ID`) only if the stamp has not changed in
//! between: query ids are never reused, so the kill can only hit the statement it was meant
//! for, even if the connection passes to another client a moment later.
//!
//! Each client also publishes what it is doing ([`Activity`]), so the admin `/status`
//! page can list clients without asking their tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_protocol::response::ErrFields;
use tokio::sync::Notify;

use crate::identity::Identity;

/// Which database thread serves a client now, and in which borrow of it.
#[derive(Debug, Default)]
pub struct BackendStamp(AtomicU64);

impl BackendStamp {
    /// Records that the client now holds database thread `thread` (0: none).
    pub fn set(&self, thread: u32) {
        let generation = (self.0.load(Ordering::Acquire) >> 32).wrapping_add(1);
        self.0
            .store(generation << 32 | u64::from(thread), Ordering::Release);
    }

    /// The current (generation, thread); equal stamps mean the same borrow.
    pub fn get(&self) -> (u32, u32) {
        let v = self.0.load(Ordering::Acquire);
        ((v >> 32) as u32, v as u32)
    }
}

/// What a client is doing, as its session last published it: cheap to update (two relaxed
/// atomic stores when a command starts and two when it ends, with the clock reads the
/// latency histograms make anyway, no allocation), read by the status page.
#[derive(Debug)]
pub struct Activity {
    /// When the session began; times are kept as milliseconds since then.
    since: Instant,
    /// [`Activity::RUNNING`] and [`Activity::IN_TRANSACTION`].
    flags: AtomicU8,
    /// Milliseconds after `since` when the flags last changed.
    changed_ms: AtomicU64,
    /// Why the client is pinned to its connection, if it is (set rarely: once a session).
    pin: Mutex<Option<&'static str>>,
}

/// What a client is doing now, for the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivitySnapshot {
    /// A command is in progress.
    pub running: bool,
    /// The client's transaction is open.
    pub in_transaction: bool,
    /// Why it is pinned to its connection, if it is.
    pub pin: Option<&'static str>,
    /// How long it has been in this state (idle time when not running).
    pub for_how_long: Duration,
    /// How long the session has existed.
    pub age: Duration,
}

impl Activity {
    const RUNNING: u8 = 1;
    const IN_TRANSACTION: u8 = 2;

    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            flags: AtomicU8::new(0),
            changed_ms: AtomicU64::new(0),
            pin: Mutex::new(None),
        }
    }

    fn store(&self, flags: u8, at: Instant) {
        let ms = at.saturating_duration_since(self.since).as_millis();
        self.changed_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.flags.store(flags, Ordering::Relaxed);
    }

    /// A command arrived at `at` (its transaction state is unchanged until it ends).
    pub fn command_started(&self, at: Instant) {
        let open = self.flags.load(Ordering::Relaxed) & Self::IN_TRANSACTION;
        self.store(open | Self::RUNNING, at);
    }

    /// The command's reply was done at `at`; `in_transaction` says whether a transaction
    /// is open after it.
    pub fn command_ended(&self, at: Instant, in_transaction: bool) {
        let open = if in_transaction {
            Self::IN_TRANSACTION
        } else {
            0
        };
        self.store(open, at);
    }

    /// Records the reason the client is pinned to its connection (`None`: not pinned).
    pub fn set_pin(&self, reason: Option<&'static str>) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// What the client is doing, as of `now`.
    pub fn snapshot(&self, now: Instant) -> ActivitySnapshot {
        let flags = self.flags.load(Ordering::Relaxed);
        let changed = self.since + Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
        ActivitySnapshot {
            running: flags & Self::RUNNING != 0,
            in_transaction: flags & Self::IN_TRANSACTION != 0,
            pin: *self.pin.lock().unwrap_or_else(|e| e.into_inner()),
            for_how_long: now.saturating_duration_since(changed),
            age: now.saturating_duration_since(self.since),
        }
    }
}

/// What other sessions may do to one client.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Who it logged in as: only that user may kill it, and the kill of its statement runs
    /// on a connection of its database login (which may kill its own threads).
    pub identity: Arc<Identity>,
    /// The database thread serving it now.
    pub backend: Arc<BackendStamp>,
    /// Signalled to end the session (`KILL CONNECTION`).
    pub kill: Arc<Notify>,
    /// What it is doing, for the status page.
    pub activity: Arc<Activity>,
}

/// The live sessions.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<u32, SessionHandle>>>,
}

/// A session's entry; dropping it removes the entry, so no path out of a session (an error,
/// even a panic) can leave it behind.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    id: u32,
    /// The handle others use to reach the session.
    pub handle: SessionHandle,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.registry.lock();
        // A newer registration of the same id (after COM_CHANGE_USER) is not this one's.
        if sessions
            .get(&self.id)
            .is_some_and(|h| Arc::ptr_eq(&h.kill, &self.handle.kill))
        {
            sessions.remove(&self.id);
        }
    }
}

impl Registry {
    /// Adds a session (or replaces its entry, after COM_CHANGE_USER) and returns its entry.
    pub fn register(&self, id: u32, identity: &Arc<Identity>) -> Registration {
        let handle = SessionHandle {
            identity: identity.clone(),
            backend: Arc::new(BackendStamp::default()),
            kill: Arc::new(Notify::new()),
            activity: Arc::new(Activity::new()),
        };
        self.lock().insert(id, handle.clone());
        Registration {
            registry: self.clone(),
            id,
            handle,
        }
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the session `user` may kill with `KILL [QUERY] id`, with MariaDB's errors
    /// otherwise (1094 unknown id, 1095 another user's).
    pub fn target(&self, user: &str, id: u64) -> Result<SessionHandle, ErrFields> {
        let unknown = || ErrFields::new(1094, "HY000", format!("Unknown thread id: {id}"));
        let id = u32::try_from(id).map_err(|_| unknown())?;
        let sessions = self.lock();
        let handle = sessions.get(&id).ok_or_else(unknown)?;
        if handle.identity.user != user {
            return Err(ErrFields::new(
                1095,
                "HY000",
                format!("You are not owner of thread {id}"),
            ));
        }
        Ok(handle.clone())
    }

    /// Every session of `user` but `except`, for `KILL USER`.
    pub fn of_user(&self, user: &str, except: u32) -> Vec<SessionHandle> {
        self.lock()
            .iter()
            .filter(|(id, h)| h.identity.user == user && **id != except)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Every session, by id, lowest first: for the status page, which shows the first few
    /// and counts the rest. The lock is held only to copy the handles.
    pub fn all(&self) -> Vec<(u32, SessionHandle)> {
        let mut all: Vec<_> = self.lock().iter().map(|(id, h)| (*id, h.clone())).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_change_with_every_borrow() {
        let stamp = BackendStamp::default();
        assert_eq!(stamp.get(), (0, 0));
        stamp.set(7);
        let first = stamp.get();
        assert_eq!(first.1, 7);
        stamp.set(0);
        stamp.set(7);
        assert_eq!(stamp.get().1, 7);
        assert_ne!(stamp.get(), first, "same thread, another borrow");
    }

    #[test]
    fn activity_follows_commands_and_pins() {
        let activity = Activity::new();
        let start = activity.since;
        let idle = activity.snapshot(start + Duration::from_secs(2));
        assert!(!idle.running && !idle.in_transaction && idle.pin.is_none());
        assert_eq!(idle.for_how_long, Duration::from_secs(2));
        activity.command_started(start + Duration::from_secs(3));
        let running = activity.snapshot(start + Duration::from_millis(3500));
        assert!(running.running);
        assert_eq!(running.for_how_long, Duration::from_millis(500));
        activity.command_ended(start + Duration::from_secs(4), true);
        activity.set_pin(Some("temporary_table"));
        let held = activity.snapshot(start + Duration::from_secs(10));
        assert!(!held.running && held.in_transaction);
        assert_eq!(held.pin, Some("temporary_table"));
        assert_eq!(held.for_how_long, Duration::from_secs(6));
        assert_eq!(held.age, Duration::from_secs(10));
        activity.command_started(start + Duration::from_secs(11));
        assert!(
            activity.snapshot(start).in_transaction,
            "still open while running"
        );
    }

    fn identity(user: &str) -> Arc<Identity> {
        let settings = crate::config::Config::default().validate("test").unwrap();
        Arc::new(Identity {
            user: user.to_owned(),
            lane: crate::queue::LaneKey::app(user),
            backend: Arc::new(settings.backend),
            pool_mode: Default::default(),
            databases: None,
        })
    }

    #[test]
    fn entries_leave_when_dropped_and_kills_respect_users() {
        let registry = Registry::default();
        let a = registry.register(1, &identity("app"));
        let b = registry.register(2, &identity("other"));
        assert_eq!(registry.len(), 2);
        assert!(registry.target("app", 1).is_ok());
        assert_eq!(registry.target("app", 2).unwrap_err().code, 1095);
        assert_eq!(registry.target("app", 9).unwrap_err().code, 1094);
        assert_eq!(registry.target("app", u64::MAX).unwrap_err().code, 1094);
        assert_eq!(registry.of_user("app", 0).len(), 1);
        assert!(registry.of_user("app", 1).is_empty());
        let again = registry.register(1, &identity("other"));
        drop(a);
        assert_eq!(
            registry.target("other", 1).map(|_| ()),
            Ok(()),
            "the newer entry stays"
        );
        drop(again);
        drop(b);
        assert!(registry.is_empty());
    }
}
