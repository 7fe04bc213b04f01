//! Connected clients by sluice connection id, so that `KILL <id>` and `KILL QUERY <id>` act
//! on the client a user sees (its `CONNECTION_ID()`), never on a database connection that
//! happens to serve someone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sluice_protocol::response::ErrFields;
use tokio::sync::Notify;

/// What other sessions may do to one client.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The sluice user it logged in as (only that user may kill it).
    pub user: String,
    /// Thread id of the database connection serving it now, or 0.
    pub backend_thread: Arc<AtomicU32>,
    /// Signalled to end the session (`KILL CONNECTION`).
    pub kill: Arc<Notify>,
}

/// The live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, SessionHandle>>,
}

/// What a `KILL` must do once the target is found.
pub enum KillTarget {
    /// End the statement running on this database thread, if any (0: none running).
    Query(u32),
    /// End the statement and then the session.
    Connection(u32, Arc<Notify>),
}

impl Registry {
    /// Adds a session and returns its handle.
    pub fn register(&self, id: u32, user: &str) -> SessionHandle {
        let handle = SessionHandle {
            user: user.to_owned(),
            backend_thread: Arc::new(AtomicU32::new(0)),
            kill: Arc::new(Notify::new()),
        };
        self.lock().insert(id, handle.clone());
        handle
    }

    /// Removes a session that ended.
    pub fn remove(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Finds what `user` may kill with `KILL [QUERY] id`, with MySQL's errors otherwise.
    pub fn target(&self, user: &str, id: u64, query_only: bool) -> Result<KillTarget, ErrFields> {
        let unknown = || ErrFields::new(1094, "HY000", format!("Unknown thread id: {id}"));
        let id = u32::try_from(id).map_err(|_| unknown())?;
        let sessions = self.lock();
        let handle = sessions.get(&id).ok_or_else(unknown)?;
        if handle.user != user {
            return Err(ErrFields::new(
                1095,
                "HY000",
                format!("You are not owner of thread {id}"),
            ));
        }
        let thread = handle.backend_thread.load(Ordering::Relaxed);
        Ok(if query_only {
            KillTarget::Query(thread)
        } else {
            KillTarget::Connection(thread, handle.kill.clone())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
