//! The bounded pool of database connections.
//!
//! At most `max_db_connections` connections exist at once, counting idle ones, busy ones and
//! ones being opened. Borrowers queue on a fair (FIFO) semaphore with one permit per
//! connection, so the first to wait is the first served, and give up after `borrow_timeout`.
//! A background task trims idle connections and retires old ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::backend::{BackendConn, BackendError, Flavor, ServerInfo};
use crate::config::{BackendTarget, PoolConfig};
use crate::metrics::Metrics;
use sluice_protocol::response::ErrFields;

/// Why a borrower got no connection.
#[derive(Debug, thiserror::Error)]
pub enum BorrowError {
    /// Every connection stayed busy for the whole `borrow_timeout`.
    #[error(
        "sluice's database connection pool is exhausted: all {max} connections stayed busy for {waited:?}; \
         raise pool.max_db_connections or pool.borrow_timeout, or shorten transactions"
    )]
    Exhausted {
        /// The pool size.
        max: usize,
        /// How long the borrower waited.
        waited: Duration,
    },
    /// No connection could be opened.
    #[error(transparent)]
    Unavailable(#[from] BackendError),
}

/// The session a borrower needs on its connection.
#[derive(Debug, Clone, Copy)]
pub struct WantedSession<'a> {
    /// The schema (the backend's default when `None`).
    pub schema: Option<&'a str>,
    /// Every system variable the borrower set; others go back to their defaults.
    pub vars: &'a BTreeMap<String, String>,
    /// Whether `;`-separated statements must be on or off (`None`: as the connection is).
    pub multi_statements: Option<bool>,
}

/// Why no connection on the wanted session could be had.
#[derive(Debug)]
pub enum SessionError {
    /// No connection at all: the pool stayed exhausted, or the database is unreachable.
    Borrow(BorrowError),
    /// The database refused the session (e.g. 1049 for an unknown schema).
    Refused(ErrFields),
    /// Pooled connections kept turning out dead while being set up.
    Lost(BackendError),
}

/// Counts of connections, for metrics and status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Lent out or being opened.
    pub busy: usize,
    /// Open and waiting to be lent.
    pub idle: usize,
    /// Busy plus idle.
    pub total: usize,
    /// The cap.
    pub max: usize,
}

struct State {
    idle: Vec<BackendConn>,
    total: usize,
    last_flavor: Option<Flavor>,
}

struct Inner {
    target: BackendTarget,
    config: PoolConfig,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    server: RwLock<Option<ServerInfo>>,
    metrics: Metrics,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug; keep serving with the data as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forget(&self, reason: &str) {
        self.state().total -= 1;
        self.metrics
            .db_connections_closed
            .with_label_values(&[reason])
            .inc();
    }

    fn expired(&self, conn: &BackendConn) -> bool {
        conn.created().elapsed() >= self.config.max_lifetime
    }
}

/// A borrowed connection. Give it back with [`Pool::give_back`]; dropping it closes the
/// connection instead (the right thing when its state is unknown, e.g. mid-reply).
pub struct Lease {
    conn: Option<BackendConn>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Inner>,
}

impl Lease {
    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        // `conn` is only taken by give_back, which consumes the lease.
        self.conn
            .as_mut()
            .expect("lease holds a connection until consumed")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.forget("discarded");
        }
        drop(self.permit.take());
    }
}

/// The shared pool handle.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Creates an empty pool; connections open on demand.
    pub fn new(
        target: BackendTarget,
        config: PoolConfig,
        connect_timeout: Duration,
        metrics: Metrics,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.max_db_connections)),
                state: Mutex::new(State {
                    idle: Vec::new(),
                    total: 0,
                    last_flavor: None,
                }),
                server: RwLock::new(None),
                target,
                config,
                connect_timeout,
                metrics,
            }),
        }
    }

    /// The database this pool connects to.
    pub fn target(&self) -> &BackendTarget {
        &self.inner.target
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.state();
        let idle = state.idle.len();
        PoolStats {
            busy: state.total - idle,
            idle,
            total: state.total,
            max: self.inner.config.max_db_connections,
        }
    }

    /// The server's version and capabilities, connecting once if none is known yet.
    pub async fn server_info(&self) -> Result<ServerInfo, BorrowError> {
        if let Some(info) = self.known_server_info() {
            return Ok(info);
        }
        let lease = self.borrow(Flavor::INTERNAL, None).await?;
        self.put_idle(lease);
        self.known_server_info()
            .ok_or(BorrowError::Unavailable(BackendError::Timeout(
                self.inner.target.address(),
            )))
    }

    fn known_server_info(&self) -> Option<ServerInfo> {
        self.inner.server.read().ok().and_then(|info| info.clone())
    }

    /// Lends a connection of `flavor`, waiting in line up to `borrow_timeout`. Among idle
    /// connections it prefers one already on `schema`, sparing a `COM_INIT_DB`.
    pub async fn borrow(&self, flavor: Flavor, schema: Option<&str>) -> Result<Lease, BorrowError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.config.borrow_timeout;
        let mut permit =
            match tokio::time::timeout_at(deadline.into(), inner.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    inner.metrics.borrow_timeouts.inc();
                    return Err(BorrowError::Exhausted {
                        max: inner.config.max_db_connections,
                        waited: started.elapsed(),
                    });
                }
            };
        loop {
            let reused = {
                let mut state = inner.state();
                state.last_flavor = Some(flavor);
                let on_schema =
                    |c: &BackendConn| c.schema.as_ref().is_some_and(|s| s.as_deref() == schema);
                let found = state
                    .idle
                    .iter()
                    .rposition(|c| c.flavor == flavor && on_schema(c))
                    .or_else(|| state.idle.iter().rposition(|c| c.flavor == flavor));
                match found {
                    Some(i) => Some(state.idle.remove(i)),
                    None => {
                        if state.total >= inner.config.max_db_connections && !state.idle.is_empty()
                        {
                            // Make room: close the least recently used idle connection.
                            drop(state.idle.remove(0));
                            state.total -= 1;
                            inner
                                .metrics
                                .db_connections_closed
                                .with_label_values(&["evicted"])
                                .inc();
                        }
                        state.total += 1;
                        None
                    }
                }
            };
            let mut lease = Lease {
                conn: reused,
                permit: Some(permit),
                pool: inner.clone(),
            };
            match lease.conn.as_mut() {
                Some(conn) if inner.expired(conn) => {
                    debug!(
                        thread_id = conn.thread_id,
                        "retiring database connection past max_lifetime"
                    );
                    lease.conn = None;
                    inner.forget("max_lifetime");
                }
                Some(conn) if conn.last_used().elapsed() >= inner.config.ping_after_idle => {
                    if let Err(e) = conn.ping().await {
                        warn!(thread_id = conn.thread_id, error = %e, "idle database connection failed its ping; replacing it");
                        lease.conn = None;
                        inner.forget("failed_ping");
                    } else {
                        return Ok(lease);
                    }
                }
                Some(_) => return Ok(lease),
                None => {
                    // We reserved a slot in `total`; fill it or release it.
                    match self.open(flavor, deadline).await {
                        Ok(conn) => {
                            lease.conn = Some(conn);
                            return Ok(lease);
                        }
                        Err(e) => {
                            inner.state().total -= 1;
                            return Err(BorrowError::Unavailable(e));
                        }
                    }
                }
            }
            permit = lease
                .permit
                .take()
                .expect("permit present until the lease is dropped");
        }
    }

    /// Opens a connection, retrying with jittered exponential backoff until `deadline`
    /// while the failure looks transient (database down or restarting).
    async fn open(&self, flavor: Flavor, deadline: Instant) -> Result<BackendConn, BackendError> {
        let inner = &self.inner;
        let mut delay = inner.config.reconnect_backoff_initial;
        loop {
            match BackendConn::connect(&inner.target, flavor, inner.connect_timeout).await {
                Ok(conn) => {
                    inner.metrics.db_connections_opened.inc();
                    if let Ok(mut server) = inner.server.write() {
                        *server = Some(conn.server.clone());
                    }
                    debug!(thread_id = conn.thread_id, "opened database connection");
                    return Ok(conn);
                }
                Err(e) => {
                    inner.metrics.db_connect_errors.inc();
                    let jittered = delay.mul_f64(rand::random_range(0.5..1.0));
                    if !e.is_transient() || Instant::now() + jittered >= deadline {
                        return Err(e);
                    }
                    warn!(error = %e, retry_in = ?jittered, "database connection failed; retrying");
                    tokio::time::sleep(jittered).await;
                    delay = (delay * 2).min(inner.config.reconnect_backoff_max);
                }
            }
        }
    }

    /// Lends a connection of `flavor` already on `session`, changing only what differs.
    /// Pooled connections that turn out dead (e.g. after a database restart) are replaced a
    /// few times before the borrower is told. Counted in `sluice_borrows_total`.
    pub async fn borrow_for(
        &self,
        flavor: Flavor,
        session: &WantedSession<'_>,
    ) -> Result<Lease, SessionError> {
        const ATTEMPTS: usize = 3;
        let target = self.target();
        let hint = session.schema.or(target.database.as_deref());
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let mut lease = self
                .borrow(flavor, hint)
                .await
                .map_err(SessionError::Borrow)?;
            self.inner.metrics.borrows.inc();
            let conn = lease.conn();
            let mut adopted = conn
                .adopt_session(target, session.schema, session.vars)
                .await;
            if let (Ok(Ok(_)), Some(on)) = (&adopted, session.multi_statements) {
                if conn.multi_statements != Some(on) {
                    adopted = conn.set_multi_statements(on).await;
                }
            }
            match adopted {
                Ok(Ok(_)) => return Ok(lease),
                Ok(Err(refused)) => {
                    self.give_back(lease).await;
                    return Err(SessionError::Refused(refused));
                }
                Err(e) => {
                    // Dropping the lease discards the dead connection.
                    debug!(error = %e, "pooled database connection is dead; trying another");
                    last_error = Some(e);
                }
            }
        }
        Err(SessionError::Lost(
            last_error.unwrap_or_else(|| BackendError::Timeout(target.address())),
        ))
    }

    /// Returns a connection after a client is done with it: its session is reset first, so
    /// the next borrower never sees the previous one's state. A connection that fails the
    /// reset is closed.
    pub async fn give_back(&self, mut lease: Lease) {
        let reset = lease.conn().reset().await;
        match reset {
            Ok(()) => self.put_idle(lease),
            Err(e) => debug!(error = %e, "closing database connection that failed its reset"),
        }
    }

    /// Returns a connection whose session state sluice tracks (transaction pooling): no
    /// reset, the next borrower adopts its own state over it.
    pub fn release(&self, lease: Lease) {
        self.put_idle(lease);
    }

    /// Puts a connection whose session is known to be clean back in the idle list.
    fn put_idle(&self, mut lease: Lease) {
        let inner = &self.inner;
        if let Some(mut conn) = lease.conn.take() {
            if inner.expired(&conn) {
                inner.forget("max_lifetime");
            } else {
                conn.touch();
                inner.state().idle.push(conn);
            }
        }
        // Dropping the lease now releases its permit, after the connection is idle.
    }

    /// Closes idle connections past `idle_timeout` (above `min_idle`) or `max_lifetime`, and
    /// opens connections up to `min_idle`. Called periodically by [`Pool::run_maintenance`].
    pub async fn maintain(&self) {
        let inner = &self.inner;
        let (closed, missing, flavor) = {
            let mut state = inner.state();
            let min_idle = inner.config.min_idle;
            let mut keep = Vec::with_capacity(state.idle.len());
            let mut closed = Vec::new();
            // Newest last: keep the most recently used ones when trimming.
            for conn in state.idle.drain(..).rev() {
                let idle_too_long = conn.last_used().elapsed() >= inner.config.idle_timeout
                    && keep.len() >= min_idle;
                if idle_too_long || inner.expired(&conn) {
                    closed.push(if idle_too_long {
                        "idle_timeout"
                    } else {
                        "max_lifetime"
                    });
                } else {
                    keep.push(conn);
                }
            }
            keep.reverse();
            state.idle = keep;
            state.total -= closed.len();
            let room = inner.config.max_db_connections - state.total;
            let missing = min_idle.saturating_sub(state.idle.len()).min(room);
            state.total += missing;
            (closed, missing, state.last_flavor)
        };
        for reason in closed {
            inner
                .metrics
                .db_connections_closed
                .with_label_values(&[reason])
                .inc();
        }
        let flavor = flavor.unwrap_or(Flavor::INTERNAL);
        for _ in 0..missing {
            match BackendConn::connect(&inner.target, flavor, inner.connect_timeout).await {
                Ok(conn) => {
                    inner.metrics.db_connections_opened.inc();
                    inner.state().idle.push(conn);
                }
                Err(e) => {
                    inner.metrics.db_connect_errors.inc();
                    inner.state().total -= 1;
                    debug!(error = %e, "could not open a min_idle connection");
                }
            }
        }
    }

    /// Runs [`Pool::maintain`] every second until the pool's last handle is gone.
    pub fn spawn_maintenance(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Pool { inner }.maintain().await;
            }
        });
    }

    /// Refreshes the pool gauges in `metrics`.
    pub fn export(&self) {
        let stats = self.stats();
        let gauges = &self.inner.metrics.db_connections;
        gauges.with_label_values(&["busy"]).set(stats.busy as i64);
        gauges.with_label_values(&["idle"]).set(stats.idle as i64);
        gauges.with_label_values(&["total"]).set(stats.total as i64);
        gauges.with_label_values(&["max"]).set(stats.max as i64);
    }
}
