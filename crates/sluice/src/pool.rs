//! The bounded pool of database connections.
//!
//! At most `max_db_connections` connections exist at once, counting idle ones, busy ones and
//! ones being opened: each holds a *slot* (a permit of a semaphore the size of the cap) from
//! before it is opened until it is closed, so the count can neither pass the cap nor drift.
//! Borrowers wait in a [`Line`] with one ticket per connection of the budget: one lane per
//! application, weighted fair across lanes with floors and ceilings, first come first served
//! within one; they give up after `borrow_timeout`. Every connection lent out or being
//! opened holds a ticket (maintenance's openings too), so a borrower that finds no idle
//! connection of its flavor and no free slot always finds an idle one to evict.
//!
//! Every connection comes in through one path (`Pool::open`) and leaves through another
//! (`Inner::close`), which counts why. Idle connections are vetted before they are lent:
//! retired past `max_lifetime`, dropped when the database closed them, pinged after
//! `ping_after_idle` or when they sat idle across a breakage the pool saw on another
//! connection (a database restart breaks them all). A background task trims idle
//! connections, retires old ones and keeps `min_idle` open.
//!
//! A reload hands the pool new limits and timers ([`Pool::reconfigure`]): borrows, checks
//! and connections that start afterwards follow them; the budget task (`budget`) watches
//! them and resizes the pool, the one owner of its size.

mod ceilings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::backend::{BackendConn, BackendError, Flavor, Keeping, LoginCharset, ServerInfo};
use crate::config::{BackendTarget, PoolConfig};
use crate::diagnostics::Owner;
use crate::metrics::{Held, Metrics};
use crate::queue::{LaneKey, LaneStats, Line, Quota, Refused, Ticket};
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
    /// The borrower's database user kept `max_db_connections_per_user` connections lent
    /// for the whole `borrow_timeout`.
    #[error(
        "database user {user} has all of its {max} connections (pool.max_db_connections_per_user) \
         in use and none came back within {waited:?}"
    )]
    UserCeiling {
        /// The database user.
        user: String,
        /// Its ceiling.
        max: usize,
        /// How long the borrower waited.
        waited: Duration,
    },
    /// The borrower's application held its `max_connections` for the whole
    /// `borrow_timeout`.
    #[error(
        "user {user} has all of its {max} database connections ([[users]] max_connections) \
         in use and none came back within {waited:?}"
    )]
    AppCeiling {
        /// The client user (application).
        user: String,
        /// Its ceiling.
        max: usize,
        /// How long the borrower waited.
        waited: Duration,
    },
    /// An operator paused new borrows (maintenance) and did not resume them within the
    /// borrower's `borrow_timeout`.
    #[error(
        "sluice is paused for maintenance: no database connection is lent until an operator \
         resumes it (waited {waited:?})"
    )]
    Paused {
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
    /// Who borrows: warnings and errors someone else left on the connection are emptied.
    pub owner: Owner,
    /// The lane it waits in for a connection: its application's quota.
    pub lane: &'a LaneKey,
    /// The borrower's user's series of `sluice_user_borrows_total` (see
    /// `UserMetrics::borrows`), so a borrow costs no label lookup.
    pub borrows: &'a IntCounter,
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

impl PoolStats {
    /// Connections the budget still allows: the cap less those open (RDS Proxy users watch
    /// this as the database's remaining connections).
    pub fn remaining(&self) -> usize {
        self.max.saturating_sub(self.total)
    }
}

/// A connection and its slot under the cap. Dropping it closes the connection (with
/// COM_QUIT, see `BackendConn`'s `Drop`) and frees the slot, so no path can leak a slot or
/// free one twice.
struct Pooled {
    /// Boxed: connections move in and out of the idle list, and a connection is large.
    conn: Box<BackendConn>,
    _slot: OwnedSemaphorePermit,
    /// Counts it in `sluice_user_db_connections` while it exists.
    _counted: Held,
    /// Lists its thread id in [`Pool::thread_ids`] while it exists.
    _owned: OwnedThread,
}

/// The server thread ids of every connection the pool holds (idle, lent, or closing), so
/// that the janitor can tell sluice's own connections from those that bypass it.
type ThreadIds = Arc<Mutex<HashSet<u32>>>;

/// Lists one connection's thread id in the pool's [`ThreadIds`] until dropped, which
/// happens only after the server has closed it (see `Inner::close`): no way out leaves a
/// stale id, and no live connection of the pool is ever missing.
struct OwnedThread {
    threads: ThreadIds,
    id: u32,
}

impl OwnedThread {
    fn new(threads: &ThreadIds, id: u32) -> OwnedThread {
        threads.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        OwnedThread {
            threads: threads.clone(),
            id,
        }
    }
}

impl Drop for OwnedThread {
    fn drop(&mut self) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

struct State {
    idle: Vec<Pooled>,
    last_flavor: Option<Flavor>,
    /// Set by [`Pool::close_idle`]: connections given back are closed, none are opened
    /// to keep `min_idle`.
    draining: bool,
}

/// What a borrower's session will ask of a connection, so that among idle ones the pool
/// lends one that already has it: each difference costs a round trip (`COM_INIT_DB`, `SET`)
/// before the borrower's own command.
#[derive(Debug, Clone, Copy, Default)]
struct Fit<'a> {
    /// The schema it will use.
    schema: Option<&'a str>,
    /// The system variables it will adopt (`None`: it takes the connection as it is).
    vars: Option<&'a BTreeMap<String, String>>,
}

impl Fit<'_> {
    /// What [`Fit::spared`] and a matching login collation come to at best: nothing to set
    /// up.
    const PERFECT: (u8, bool) = (2, true);

    /// How many of the round trips setting the borrower's session up `conn` would spare:
    /// one for being on the schema, one for holding the same variables.
    fn spared(&self, conn: &BackendConn) -> u8 {
        let on_schema = conn
            .schema
            .as_ref()
            .is_some_and(|s| s.as_deref() == self.schema);
        let same_vars = self.vars.is_some_and(|vars| *vars == conn.vars);
        u8::from(on_schema) + u8::from(same_vars)
    }
}

/// What a borrower found under the lock.
enum Taken {
    /// An idle connection of its flavor, to vet before lending.
    Idle(Pooled),
    /// Room for a new connection.
    Slot(OwnedSemaphorePermit),
    /// Neither: every slot is held by a connection on its way in or out of the idle list.
    Nothing,
    /// Only other logins' connections are idle, and the borrower may wait for one of its
    /// own login's to come back rather than evict one of them (see [`EVICTION_GRACE`]).
    Wait,
}

/// How long a borrower whose login has connections lent out waits for one of them to come
/// back before it evicts another login's idle connection to open its own. Without it, two
/// logins sharing a full pool evict each other's connections on nearly every borrow (the
/// line hands out turns alternately), and the database sees a new connection per query:
/// 2,300 a second with 8 clients of two users on a pool of 4.
const EVICTION_GRACE: Duration = Duration::from_millis(20);

/// A lease's place in [`Inner::lent`]: its user's key, and whether it is counted there (from
/// the moment [`Inner::take`] hands it a connection or a slot for one until it ends).
struct Lending {
    key: u64,
    counted: bool,
}

impl Lending {
    /// Counts the lease in `lent`, once.
    fn count(&mut self, lent: &mut HashMap<u64, usize>) {
        if !self.counted {
            *lent.entry(self.key).or_default() += 1;
            self.counted = true;
        }
    }

    /// Takes the lease out of `lent` again, if it was counted (when it ends).
    fn uncount(&mut self, lent: &mut HashMap<u64, usize>) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        if let Some(n) = lent.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                lent.remove(&self.key);
            }
        }
    }

    /// Whether connections of the lease's user are lent to other borrowers (or being opened
    /// for them): one of those will come back.
    fn others_lent(&self, lent: &HashMap<u64, usize>) -> bool {
        lent.get(&self.key).copied().unwrap_or(0) > usize::from(self.counted)
    }
}

/// The key under which [`Inner::lent`] counts a database user's lent connections.
fn login_key(user: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut hasher);
    hasher.finish()
}

/// How often a smaller budget looks for a slot to give up (see [`Pool::set_limit`]).
const SHRINK_POLL: Duration = Duration::from_millis(20);

/// How long a closing connection's slot waits for the server to close it after COM_QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(1);

struct Inner {
    target: BackendTarget,
    /// Limits and timers in force; a reload sends new ones, which the budget task watches.
    config: watch::Sender<Arc<PoolConfig>>,
    timeouts: ArcSwap<BackendTimeouts>,
    /// One per connection that exists (idle, lent or being opened): the hard cap.
    slots: Arc<Semaphore>,
    /// The budget now: how many connections may exist (see [`Pool::set_limit`]).
    limit: AtomicUsize,
    /// Permits `slots` holds in all: above `limit` while a smaller budget waits for
    /// connections to come back.
    capacity: AtomicUsize,
    /// Whether new borrows wait (an operator's pause for maintenance).
    paused: tokio::sync::watch::Sender<bool>,
    /// The line borrowers wait in; one ticket per connection lent out or being opened.
    line: Line,
    /// Per database user, one permit per connection it may have lent at once
    /// (`max_db_connections_per_user`).
    ceilings: ceilings::Ceilings,
    state: Mutex<State>,
    server: RwLock<Option<ServerInfo>>,
    /// What a login with each collation gives (learned from real logins).
    logins: Mutex<HashMap<u8, LoginCharset>>,
    /// When a connection was last found broken: idle connections last used before then
    /// are pinged before they are lent, whatever `ping_after_idle` says.
    broken_at: Mutex<Option<Instant>>,
    /// Thread ids of the connections that exist.
    threads: ThreadIds,
    /// Per database user ([`login_key`]), how many of its connections are lent or being
    /// opened for a borrower now.
    lent: Mutex<HashMap<u64, usize>>,
    /// Woken whenever a connection goes back to the idle list, for borrowers waiting on
    /// their login's ([`Taken::Wait`]).
    returned: tokio::sync::Notify,
    metrics: Metrics,
}

impl Inner {
    fn config(&self) -> Arc<PoolConfig> {
        self.config.borrow().clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug; keep serving with the data as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn logins(&self) -> MutexGuard<'_, HashMap<u8, LoginCharset>> {
        self.logins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lent(&self) -> MutexGuard<'_, HashMap<u64, usize>> {
        self.lent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn broken_at(&self) -> MutexGuard<'_, Option<Instant>> {
        self.broken_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that a connection turned out broken: the database may have restarted or
    /// the network failed, so the idle ones are suspect too.
    fn note_broken(&self) {
        *self.broken_at() = Some(Instant::now());
    }

    /// Whether `conn` sat idle across a breakage seen since.
    fn suspect(&self, conn: &BackendConn) -> bool {
        self.broken_at().is_some_and(|at| conn.last_used() <= at)
    }

    /// Closes a connection, counting why; one whose socket failed tells the pool.
    /// Its slot comes free only once the server has closed the connection (or after
    /// [`QUIT_WAIT`]), so a connection opened in its place never overlaps it in the
    /// server's own count: the cap holds as the database sees it.
    fn close(&self, mut pooled: Pooled, reason: &str) {
        if pooled.conn.stream.failed() {
            self.note_broken();
        }
        self.metrics
            .db_connections_closed
            .with_label_values(&[reason])
            .inc();
        // Outside a runtime (process exit) there is nobody to wait: `Drop` says goodbye.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(QUIT_WAIT, pooled.conn.quit()).await;
                drop(pooled);
            });
        }
    }

    fn expired(&self, conn: &BackendConn) -> bool {
        conn.created().elapsed() >= self.config().max_lifetime
    }

    /// Takes an idle connection of `login` (its user and secret) that serves `flavor`
    /// (preferring one that `fit`s the borrower's session), or else a slot for a new one,
    /// evicting the least recently used idle connection (of any user or flavor) when the cap
    /// is reached, unless the borrower `may_wait` and its user has connections lent out
    /// (counted in [`Inner::lent`] under `lease`'s key): every database user draws on the
    /// one budget. A connection or slot taken is counted as lent here, under the lock, so a
    /// borrower of the same user looking a moment later sees it.
    fn take(
        &self,
        login: &BackendTarget,
        flavor: Flavor,
        fit: Fit<'_>,
        lease: &mut Lending,
        may_wait: bool,
    ) -> Taken {
        let mut state = self.state();
        state.last_flavor = Some(flavor);
        // The one sparing the most round trips (schema, variables), then on the login
        // collation wanted, then the most recently used: looked for from the most recently
        // used down, so the usual case (a connection that fits in every way) stops at the
        // first one that does.
        let mut found: Option<(usize, (u8, bool))> = None;
        for (i, pooled) in state.idle.iter().enumerate().rev() {
            let conn = &pooled.conn;
            if conn.user != login.user
                || conn.secret != login.secret
                || !conn.flavor.serves(&flavor)
            {
                continue;
            }
            let fits = (fit.spared(conn), conn.flavor.collation == flavor.collation);
            if found.is_none_or(|(_, best)| fits > best) {
                found = Some((i, fits));
                if fits == Fit::PERFECT {
                    break;
                }
            }
        }
        let found = found.map(|(i, _)| i);
        if let Some(i) = found {
            lease.count(&mut self.lent());
            return Taken::Idle(state.idle.remove(i));
        }
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            lease.count(&mut self.lent());
            return Taken::Slot(slot);
        }
        if state.idle.is_empty() {
            return Taken::Nothing;
        }
        if may_wait && lease.others_lent(&self.lent()) {
            return Taken::Wait;
        }
        let evicted = state.idle.remove(0);
        // Its slot will be the borrower's connection: counted from now, or the borrower's
        // user would look as if it had none and its next borrower would evict too.
        lease.count(&mut self.lent());
        drop(state);
        // Its slot is the borrower's once the server has let it go.
        self.close(evicted, "evicted");
        Taken::Nothing
    }
}

/// The time limits of database connections, from `[backend]`.
#[derive(Debug, Clone, Copy)]
pub struct BackendTimeouts {
    /// One connection attempt, TCP and login.
    pub connect: Duration,
    /// A read or write on an open connection that moves no byte for this long fails it.
    pub stall: Duration,
}

/// A borrowed connection. Give it back with [`Pool::give_back`]; dropping it closes the
/// connection instead (the right thing when its state is unknown, e.g. mid-reply).
pub struct Lease {
    conn: Option<Pooled>,
    /// Counts the connection in [`Inner::lent`] while it is lent.
    lent: Lending,
    ticket: Option<Ticket>,
    /// The borrower's place under `max_db_connections_per_user`, when there is a ceiling.
    user_permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Inner>,
}

impl Lease {
    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        // `conn` is only taken by give_back, which consumes the lease.
        &mut self
            .conn
            .as_mut()
            .expect("lease holds a connection until consumed")
            .conn
    }
}

impl Lease {
    /// Closes the connection now, counting `reason`.
    fn close(mut self, reason: &str) {
        if let Some(pooled) = self.conn.take() {
            self.pool.close(pooled, reason);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pooled) = self.conn.take() {
            self.pool.close(pooled, "discarded");
        }
        if self.lent.counted {
            self.lent.uncount(&mut self.pool.lent());
        }
        // The slot went first, so the next borrower finds room.
        drop(self.ticket.take());
        drop(self.user_permit.take());
    }
}

/// The shared pool handle.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// A pool handle that does not keep the pool open, for background tasks that should end
/// with it (see [`Pool::downgrade`]).
pub struct WeakPool(std::sync::Weak<Inner>);

impl WeakPool {
    /// The pool, while some strong handle still holds it.
    pub fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(|inner| Pool { inner })
    }
}

impl Pool {
    /// A handle that does not keep the pool (and its connections) alive.
    pub fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.inner))
    }

    /// Creates an empty pool; connections open on demand.
    pub fn new(
        target: BackendTarget,
        config: PoolConfig,
        timeouts: BackendTimeouts,
        metrics: Metrics,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                ceilings: ceilings::Ceilings::new(config.max_db_connections_per_user),
                line: Line::new(config.max_db_connections, HashMap::new()),
                slots: Arc::new(Semaphore::new(config.max_db_connections)),
                limit: AtomicUsize::new(config.max_db_connections),
                paused: tokio::sync::watch::Sender::new(false),
                capacity: AtomicUsize::new(config.max_db_connections),
                state: Mutex::new(State {
                    idle: Vec::new(),
                    last_flavor: None,
                    draining: false,
                }),
                server: RwLock::new(None),
                logins: Mutex::default(),
                broken_at: Mutex::new(None),
                threads: ThreadIds::default(),
                lent: Mutex::default(),
                returned: tokio::sync::Notify::new(),
                target,
                config: watch::Sender::new(Arc::new(config)),
                timeouts: ArcSwap::from_pointee(timeouts),
                metrics,
            }),
        }
    }

    /// The database this pool connects to.
    pub fn target(&self) -> &BackendTarget {
        &self.inner.target
    }

    /// Takes new limits and timers (a reload): borrows and connections that start from now
    /// on follow them, a changed `max_db_connections_per_user` applies to each user as
    /// [`ceilings::Ceilings::set`] says, and the budget task recomputes the pool's size.
    pub fn reconfigure(&self, config: PoolConfig, timeouts: BackendTimeouts) {
        let inner = &self.inner;
        inner.ceilings.set(config.max_db_connections_per_user);
        inner.timeouts.store(Arc::new(timeouts));
        inner.config.send_replace(Arc::new(config));
    }

    /// The pool's limits and timers, now and as a reload changes them (for the budget task).
    pub fn watch_config(&self) -> watch::Receiver<Arc<PoolConfig>> {
        self.inner.config.subscribe()
    }

    /// Changes the budget to `limit` connections (0 lends nothing until raised: a fleet
    /// member without slots). A larger budget takes effect at once; a smaller one as
    /// connections come back: no more than `limit` are lent from now on, and the least
    /// recently used idle connections are closed until no more than `limit` exist, so when
    /// this returns at most `limit` connections exist. Resizes must not overlap (one task
    /// owns them: `budget::follow`, or the fleet member).
    pub async fn set_limit(&self, limit: usize) {
        let inner = &self.inner;
        inner.limit.store(limit, Ordering::Relaxed);
        inner.line.set_capacity(limit);
        let capacity = inner.capacity.load(Ordering::Relaxed);
        if limit > capacity {
            inner.slots.add_permits(limit - capacity);
            inner.capacity.store(limit, Ordering::Relaxed);
            return;
        }
        for _ in limit..capacity {
            // With fewer lent, connections come back idle: close the least recently used
            // until a slot is free.
            loop {
                if let Ok(slot) = inner.slots.try_acquire() {
                    slot.forget();
                    break;
                }
                let oldest = {
                    let mut state = inner.state();
                    (!state.idle.is_empty()).then(|| state.idle.remove(0))
                };
                if let Some(pooled) = oldest {
                    inner.close(pooled, "budget");
                }
                tokio::time::sleep(SHRINK_POLL).await;
            }
            inner.capacity.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sets the applications' quotas (at start and on reload); connections lent stay lent.
    pub fn set_quotas(&self, quotas: HashMap<LaneKey, Quota>) {
        self.inner.line.set_quotas(quotas);
    }

    /// Every application's use of the line and its quota, for `/status`.
    pub fn lanes(&self) -> Vec<LaneStats> {
        self.inner.line.lanes()
    }

    /// Pauses or resumes new borrows (`paused`), for a maintenance window: while paused,
    /// borrowers wait in line as for a busy pool (up to `borrow_timeout`, then an error that
    /// says why); connections already lent (open transactions) carry on. Returns whether it
    /// was paused before.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.inner.paused.send_replace(paused)
    }

    /// Whether new borrows are paused.
    pub fn is_paused(&self) -> bool {
        *self.inner.paused.borrow()
    }

    /// The server thread ids of every database connection the pool holds now (idle, lent,
    /// or closing): the janitor never kills these.
    pub fn thread_ids(&self) -> HashSet<u32> {
        self.inner
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let idle = inner.state().idle.len();
        let max = inner.limit.load(Ordering::Relaxed);
        let capacity = inner.capacity.load(Ordering::Relaxed);
        let total = capacity.saturating_sub(inner.slots.available_permits());
        PoolStats {
            busy: total.saturating_sub(idle),
            idle,
            total,
            max,
        }
    }

    /// The server's version and capabilities, connecting once if none is known yet.
    pub async fn server_info(&self) -> Result<ServerInfo, BorrowError> {
        if let Some(info) = self.known_server_info() {
            return Ok(info);
        }
        let mut lease = self.borrow_internal().await?;
        let info = lease.conn().server.clone();
        self.put_idle(lease);
        Ok(info)
    }

    fn known_server_info(&self) -> Option<ServerInfo> {
        self.inner.server.read().ok().and_then(|info| info.clone())
    }

    /// Lends a connection of sluice's own login (the `[backend]` account) for sluice's own
    /// statements (auth queries, kills, probes), waiting in line like any borrower.
    pub async fn borrow_internal(&self) -> Result<Lease, BorrowError> {
        let own = self.inner.target.clone();
        self.borrow(&LaneKey::Sluice, &own, Flavor::INTERNAL, None)
            .await
    }

    /// Lends a connection logged in as `login` with `flavor`, waiting in `lane` up to
    /// `borrow_timeout`. Among idle connections it prefers one already on `schema`, sparing
    /// a `COM_INIT_DB`. The wait, success or not, goes into `sluice_borrow_wait_seconds`.
    pub async fn borrow(
        &self,
        lane: &LaneKey,
        login: &BackendTarget,
        flavor: Flavor,
        schema: Option<&str>,
    ) -> Result<Lease, BorrowError> {
        let fit = Fit { schema, vars: None };
        self.borrow_fitting(lane, login, flavor, fit).await
    }

    /// [`Pool::borrow`], preferring an idle connection that `fit`s the borrower's session.
    async fn borrow_fitting(
        &self,
        lane: &LaneKey,
        login: &BackendTarget,
        flavor: Flavor,
        fit: Fit<'_>,
    ) -> Result<Lease, BorrowError> {
        let started = Instant::now();
        let lent = self.borrow_since(started, lane, login, flavor, fit).await;
        let waited = started.elapsed().as_secs_f64();
        self.inner.metrics.borrow_wait.observe(waited);
        lent
    }

    /// [`Pool::borrow`] for a borrower that arrived at `started`.
    async fn borrow_since(
        &self,
        started: Instant,
        lane: &LaneKey,
        login: &BackendTarget,
        flavor: Flavor,
        fit: Fit<'_>,
    ) -> Result<Lease, BorrowError> {
        let inner = &self.inner;
        let deadline = started + inner.config().borrow_timeout;
        // Counted in `sluice_borrow_waiters` until a lending permit is ours (or never is).
        let waiting = Held::new(inner.metrics.borrow_waiters.clone());
        let exhausted = || {
            inner.metrics.borrow_timeouts.inc();
            inner.metrics.no_connections_left.inc();
            BorrowError::Exhausted {
                max: inner.limit.load(Ordering::Relaxed),
                waited: started.elapsed(),
            }
        };
        let mut paused = inner.paused.subscribe();
        if *paused.borrow_and_update() {
            let resumed = tokio::time::timeout_at(deadline.into(), paused.wait_for(|p| !*p)).await;
            if !matches!(resumed, Ok(Ok(_))) {
                return Err(BorrowError::Paused {
                    waited: started.elapsed(),
                });
            }
        }
        // A user at its ceiling waits before taking a place in the common line, so its
        // wait never holds up another user's borrower.
        let user_permit = match inner.ceilings.of(&login.user) {
            None => None,
            Some((max, permits)) => {
                match tokio::time::timeout_at(deadline.into(), permits.acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        inner.metrics.borrow_timeouts.inc();
                        return Err(BorrowError::UserCeiling {
                            user: login.user.clone(),
                            max,
                            waited: started.elapsed(),
                        });
                    }
                }
            }
        };
        let ticket = match inner.line.acquire(lane, deadline).await {
            Ok(ticket) => ticket,
            Err(Refused::Exhausted) => return Err(exhausted()),
            Err(Refused::Ceiling(max)) => {
                inner.metrics.borrow_timeouts.inc();
                return Err(BorrowError::AppCeiling {
                    user: match lane {
                        LaneKey::App(name) => name.to_string(),
                        LaneKey::Sluice => String::new(),
                    },
                    max,
                    waited: started.elapsed(),
                });
            }
        };
        drop(waiting);
        let mut lease = Lease {
            conn: None,
            lent: Lending {
                key: login_key(&login.user),
                counted: false,
            },
            ticket: Some(ticket),
            user_permit,
            pool: inner.clone(),
        };
        // Until when the borrower waits for its own login's connection instead of evicting.
        let mut waits_until: Option<Instant> = None;
        loop {
            // Listening before looking, so a connection given back in between is not missed.
            let returned = inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let may_wait = waits_until.is_none_or(|until| Instant::now() < until);
            let slot = match inner.take(login, flavor, fit, &mut lease.lent, may_wait) {
                Taken::Idle(pooled) => match self.vet(pooled).await {
                    Some(pooled) => {
                        lease.conn = Some(pooled);
                        return Ok(lease);
                    }
                    None => continue,
                },
                Taken::Slot(slot) => slot,
                Taken::Wait => {
                    let until = *waits_until
                        .get_or_insert_with(|| (Instant::now() + EVICTION_GRACE).min(deadline));
                    tokio::select! {
                        () = &mut returned => {}
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                    continue;
                }
                // A connection is being closed this instant; its slot is ours next.
                Taken::Nothing => match tokio::time::timeout_at(
                    deadline.into(),
                    inner.slots.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(slot)) => slot,
                    _ => return Err(exhausted()),
                },
            };
            lease.conn = Some(self.open(login, flavor, slot, deadline).await?);
            return Ok(lease);
        }
    }

    /// Checks an idle connection before it is lent: too old, closed by the database, or
    /// (idle past `ping_after_idle`, or across a breakage) not answering a ping, it is
    /// closed and `None` returned.
    async fn vet(&self, mut pooled: Pooled) -> Option<Pooled> {
        let inner = &self.inner;
        let conn = &mut pooled.conn;
        if inner.expired(conn) {
            debug!(
                thread_id = conn.thread_id,
                "retiring database connection past max_lifetime"
            );
            inner.close(pooled, "max_lifetime");
            return None;
        }
        if conn.closed_by_peer() {
            warn!(
                thread_id = conn.thread_id,
                "the database closed an idle connection; replacing it"
            );
            inner.note_broken();
            inner.close(pooled, "closed_by_server");
            return None;
        }
        if conn.last_used().elapsed() >= inner.config().ping_after_idle || inner.suspect(conn) {
            if let Err(e) = conn.ping().await {
                warn!(thread_id = conn.thread_id, error = %e, "idle database connection failed its ping; replacing it");
                inner.note_broken();
                inner.close(pooled, "failed_ping");
                return None;
            }
        }
        Some(pooled)
    }

    /// Opens a connection into `slot`, retrying with jittered exponential backoff until
    /// `deadline` while the failure looks transient (database down or restarting). The one
    /// way connections come into the pool (borrowers and maintenance alike): it records the
    /// server's greeting and sets the stall timeout.
    async fn open(
        &self,
        login: &BackendTarget,
        flavor: Flavor,
        slot: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Pooled, BackendError> {
        let inner = &self.inner;
        let (config, timeouts) = (inner.config(), inner.timeouts.load_full());
        let mut delay = config.reconnect_backoff_initial;
        loop {
            // Boxed: a connect's state (TLS and login included) is large, and every future
            // that may borrow (each client session's, idle or not) would otherwise carry
            // room for it; this way only a connect in progress costs it.
            let connect = Box::pin(BackendConn::connect(login, flavor, timeouts.connect));
            match connect.await {
                Ok(mut conn) => {
                    inner.metrics.db_connections_opened.inc();
                    if conn.compressed() {
                        inner.metrics.db_connections_compressed.inc();
                    }
                    conn.set_stall_timeout(Some(timeouts.stall));
                    if let Ok(mut server) = inner.server.write() {
                        *server = Some(conn.server.clone());
                    }
                    inner
                        .logins()
                        .entry(conn.flavor.collation)
                        .or_insert_with(|| conn.login());
                    debug!(thread_id = conn.thread_id, "opened database connection");
                    return Ok(Pooled {
                        _counted: inner.metrics.users.db_connection(&conn.user),
                        _owned: OwnedThread::new(&inner.threads, conn.thread_id),
                        conn: Box::new(conn),
                        _slot: slot,
                    });
                }
                Err(e) => {
                    inner.metrics.db_connect_errors.inc();
                    let jittered = delay.mul_f64(rand::random_range(0.5..1.0));
                    if !e.is_transient() || Instant::now() + jittered >= deadline {
                        return Err(e);
                    }
                    warn!(error = %e, retry_in = ?jittered, "database connection failed; retrying");
                    tokio::time::sleep(jittered).await;
                    delay = (delay * 2).min(config.reconnect_backoff_max);
                }
            }
        }
    }

    /// Lends a connection logged in as `login` that serves `flavor`, already on `session`
    /// and on the character sets of the client's login, changing only what differs (an idle
    /// connection already on the schema and variables is preferred, so clients with
    /// different `SET`s each find their own and pay no extra round trip). Pooled
    /// connections that turn out dead (e.g. after a database restart) are replaced a few
    /// times before the borrower is told. Counted in `sluice_borrows_total`.
    pub async fn borrow_for(
        &self,
        login: &BackendTarget,
        flavor: Flavor,
        session: &WantedSession<'_>,
    ) -> Result<Lease, SessionError> {
        const ATTEMPTS: usize = 3;
        let target = login;
        let metrics = &self.inner.metrics;
        let fit = Fit {
            schema: session.schema.or(target.database.as_deref()),
            vars: Some(session.vars),
        };
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let mut lease = self
                .borrow_fitting(session.lane, login, flavor, fit)
                .await
                .map_err(SessionError::Borrow)?;
            metrics.borrows.inc();
            session.borrows.inc();
            let charset = match self
                .login_charset(&mut lease, login, flavor.collation)
                .await
            {
                Ok(Ok(login)) => login,
                Ok(Err(refused)) => {
                    // A failed COM_CHANGE_USER leaves the session unknown: the lease goes.
                    return Err(SessionError::Refused(refused));
                }
                Err(e) => {
                    debug!(error = %e, "pooled database connection is dead; trying another");
                    last_error = Some(e);
                    continue;
                }
            };
            let conn = lease.conn();
            let mut adopted = conn
                .adopt_session(target, session.schema, session.vars, &charset, metrics)
                .await;
            if let (Ok(Ok(_)), Some(on)) = (&adopted, session.multi_statements) {
                if conn.multi_statements != Some(on) {
                    metrics
                        .session_adoptions
                        .with_label_values(&["multi_statements"])
                        .inc();
                    adopted = conn.set_multi_statements(on).await;
                }
            }
            if let Ok(Ok(_)) = adopted {
                adopted = conn.serve(session.owner, metrics).await;
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

    /// What a login with `collation` gives a session. Learned from every connection opened
    /// and, the first time a client's collation is one no connection logged in with, by
    /// logging `lease`'s connection in again with it (counted as a `login` adoption): the
    /// server's own answer, including its defaults for ids it does not know. A refusal (a
    /// character set the server does not accept from clients, such as `ucs2`) comes back
    /// inside, as the server would refuse such a login.
    async fn login_charset(
        &self,
        lease: &mut Lease,
        login: &BackendTarget,
        collation: u8,
    ) -> Result<Result<LoginCharset, ErrFields>, BackendError> {
        let inner = &self.inner;
        if let Some(known) = inner.logins().get(&collation) {
            return Ok(Ok(known.clone()));
        }
        let conn = lease.conn();
        if conn.flavor.collation != collation {
            inner
                .metrics
                .session_adoptions
                .with_label_values(&["login"])
                .inc();
            match conn.relogin(login, collation).await {
                Ok(()) => {}
                Err(BackendError::Refused(refused)) => return Ok(Err(refused)),
                Err(e) => return Err(e),
            }
        }
        let login = conn.login();
        inner.logins().insert(collation, login.clone());
        Ok(Ok(login))
    }

    /// Returns a connection after a client is done with it: its session is reset first, so
    /// the next borrower never sees the previous one's state. A connection that fails the
    /// reset is closed.
    pub async fn give_back(&self, mut lease: Lease) {
        let reset = lease.conn().reset().await;
        match reset {
            Ok(()) => self.put_idle(lease),
            Err(e) => {
                debug!(error = %e, "closing database connection that failed its reset");
                lease.close("failed_reset");
            }
        }
    }

    /// Returns a connection whose session state sluice tracks (transaction pooling): no
    /// reset, the next borrower adopts its own state over it.
    pub fn release(&self, lease: Lease) {
        self.put_idle(lease);
    }

    /// Puts a connection whose session is known to be clean back in the idle list (or
    /// closes it: past `max_lifetime`, `max_idle` already idle, or the pool is draining).
    fn put_idle(&self, mut lease: Lease) {
        let inner = &self.inner;
        if let Some(mut pooled) = lease.conn.take() {
            if inner.expired(&pooled.conn) {
                inner.close(pooled, "max_lifetime");
                return;
            }
            pooled.conn.touch();
            pooled.conn.diagnostics.returned();
            let mut state = inner.state();
            let full = inner
                .config()
                .max_idle
                .is_some_and(|max| state.idle.len() >= max);
            if state.draining || full {
                drop(state);
                inner.close(pooled, if full { "max_idle" } else { "shutdown" });
            } else {
                state.idle.push(pooled);
                drop(state);
                inner.returned.notify_waiters();
            }
        }
        // Dropping the lease now releases its permit, after the connection is idle.
    }

    /// Closes the prepared statements kept on the least recently used idle connection that
    /// keeps any, for a prepare the server refused at its `max_prepared_stmt_count`. The
    /// connection is borrowed for that with a spare ticket (a waiting borrower goes first)
    /// and put back where it was. Returns whether statements were closed, so the prepare
    /// is worth trying again; false when no idle connection keeps any, or none can be had.
    pub async fn free_idle_statements(&self) -> bool {
        let inner = &self.inner;
        let Some(ticket) = inner.line.try_acquire_spare() else {
            return false;
        };
        let taken = {
            let mut state = inner.state();
            // Oldest first in the idle list.
            let found = state
                .idle
                .iter()
                .position(|p| !p.conn.statements.is_empty());
            found.map(|at| (at, state.idle.remove(at)))
        };
        let Some((at, mut pooled)) = taken else {
            return false;
        };
        let metrics = &inner.metrics;
        let closed = pooled.conn.close_kept(&Keeping::spare_none, metrics);
        // The server answers no COM_STMT_CLOSE: the ping's answer says they are done.
        if let Err(e) = pooled.conn.ping().await {
            debug!(error = %e, "idle connection failed while closing its statements");
            inner.close(pooled, "failed_ping");
            return closed > 0;
        }
        let draining = {
            let mut state = inner.state();
            if !state.draining {
                let at = at.min(state.idle.len());
                state.idle.insert(at, pooled);
                None
            } else {
                Some(pooled)
            }
        };
        if let Some(pooled) = draining {
            inner.close(pooled, "shutdown");
        }
        drop(ticket);
        closed > 0
    }

    /// Closes every idle connection now, each with COM_QUIT, and from then on closes
    /// connections as they are given back and opens none for `min_idle`: the last step of
    /// a graceful shutdown, so the database logs no aborted connection. Borrowing still
    /// works (a transaction finishing during the drain may need a connection). Returns how
    /// many were closed.
    pub fn close_idle(&self) -> usize {
        let inner = &self.inner;
        let idle = {
            let mut state = inner.state();
            state.draining = true;
            std::mem::take(&mut state.idle)
        };
        let closed = idle.len();
        for pooled in idle {
            inner.close(pooled, "shutdown");
        }
        closed
    }

    /// Closes idle connections past `idle_timeout` (above `min_idle`) or `max_lifetime`, and
    /// opens connections up to `min_idle`. Called periodically by [`Pool::spawn_maintenance`].
    pub async fn maintain(&self) {
        let inner = &self.inner;
        let config = inner.config();
        let min_idle = config.min_idle;
        let (closed, flavor) = {
            let mut state = inner.state();
            let mut keep = Vec::with_capacity(state.idle.len());
            let mut closed = Vec::new();
            // Newest last: keep the most recently used ones when trimming.
            for pooled in state.idle.drain(..).rev() {
                let idle_too_long = pooled.conn.last_used().elapsed() >= config.idle_timeout
                    && keep.len() >= min_idle;
                if idle_too_long {
                    closed.push((pooled, "idle_timeout"));
                } else if inner.expired(&pooled.conn) {
                    closed.push((pooled, "max_lifetime"));
                } else {
                    keep.push(pooled);
                }
            }
            keep.reverse();
            state.idle = keep;
            let flavor = (!state.draining).then(|| state.last_flavor.unwrap_or(Flavor::INTERNAL));
            (closed, flavor)
        };
        for (pooled, reason) in closed {
            inner.close(pooled, reason);
        }
        let Some(flavor) = flavor else { return };
        while inner.state().idle.len() < min_idle {
            // Like a borrower, an opening holds a ticket and a slot, but only spare ones: a
            // waiting borrower goes first, floors stay free, and the cap holds.
            let Some(ticket) = inner.line.try_acquire_spare() else {
                break;
            };
            let Ok(slot) = inner.slots.clone().try_acquire_owned() else {
                break;
            };
            // min_idle connections are of sluice's own login (per-user ones: the budget issue).
            match self.open(&inner.target, flavor, slot, Instant::now()).await {
                Ok(pooled) => inner.state().idle.push(pooled),
                Err(e) => {
                    debug!(error = %e, "could not open a min_idle connection");
                    break;
                }
            }
            drop(ticket);
        }
    }

    /// Runs [`Pool::maintain`] every second until the pool's last handle is gone.
    pub fn spawn_maintenance(&self) {
        let weak = self.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { break };
                pool.maintain().await;
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
        self.inner
            .metrics
            .database_connections_remaining
            .set(stats.remaining() as i64);
    }
}
