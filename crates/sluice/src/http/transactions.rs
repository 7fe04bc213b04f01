//! Data API transactions: a database connection held between requests, by id.
//!
//! Holding the connection is the point: a transaction's locks and uncommitted rows live on
//! one connection. So every transaction is bounded: unused for `transaction_idle_timeout`, or
//! older than `transaction_max_lifetime`, it is rolled back (by resetting the connection) and
//! its connection returns to the pool. Ids are 128 random bits, and only the user that opened
//! a transaction can see it; anyone else is told it does not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::Mutex as AsyncMutex;

use super::envelope::{ApiError, Status};
use crate::pool::{Lease, Pool};

/// How long the reason a transaction ended is remembered, to answer 410 instead of 404.
const REMEMBER_ENDED: Duration = Duration::from_secs(600);

/// One open transaction.
pub struct Transaction {
    /// The user that opened it; nobody else may use it.
    pub user: String,
    /// The database it works in.
    pub database: Option<String>,
    created: Instant,
    last_used: Mutex<Instant>,
    /// The connection; locked while a request uses it, so requests on one id take turns.
    /// `None` once the transaction has ended.
    pub lease: Arc<AsyncMutex<Option<Lease>>>,
}

impl Transaction {
    /// Records a use, restarting the idle clock.
    pub fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a transaction is gone, kept for a while after it ended by itself.
struct Ended {
    user: String,
    reason: String,
    at: Instant,
}

/// Every open transaction, by id.
pub struct Transactions {
    open: Mutex<HashMap<String, Arc<Transaction>>>,
    ended: Mutex<HashMap<String, Ended>>,
    idle_timeout: Duration,
    max_lifetime: Duration,
    gauge: IntGauge,
}

impl Transactions {
    /// An empty registry with the configured bounds; `gauge` counts open transactions.
    pub fn new(idle_timeout: Duration, max_lifetime: Duration, gauge: IntGauge) -> Transactions {
        Transactions {
            open: Mutex::default(),
            ended: Mutex::default(),
            idle_timeout,
            max_lifetime,
            gauge,
        }
    }

    /// Registers a transaction holding `lease` and returns its new id.
    pub fn open(&self, user: &str, database: Option<String>, lease: Lease) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let transaction = Arc::new(Transaction {
            user: user.to_owned(),
            database,
            created: now,
            last_used: Mutex::new(now),
            lease: Arc::new(AsyncMutex::new(Some(lease))),
        });
        lock(&self.open).insert(id.clone(), transaction);
        self.gauge.inc();
        id
    }

    /// The transaction `id` of `user`: 404 when unknown or someone else's, 410 when it was
    /// rolled back for idling or age.
    pub fn get(&self, id: &str, user: &str) -> Result<Arc<Transaction>, ApiError> {
        if let Some(found) = lock(&self.open).get(id).filter(|t| t.user == user) {
            return Ok(found.clone());
        }
        if let Some(ended) = lock(&self.ended).get(id).filter(|e| e.user == user) {
            return Err(ApiError::new(Status::Expired, ended.reason.clone()));
        }
        Err(ApiError::new(
            Status::NotFound,
            format!("no open transaction {id:?} for this API key"),
        ))
    }

    /// Removes `id` (after commit, rollback, or a broken connection).
    pub fn remove(&self, id: &str) {
        if lock(&self.open).remove(id).is_some() {
            self.gauge.dec();
        }
    }

    /// Rolls back and frees every transaction past its idle timeout or lifetime. One in use
    /// right now is left for the next round (its statement is bounded by the statement
    /// timeout).
    pub async fn reap(&self, pool: &Pool) {
        let now = Instant::now();
        self.roll_back_where(pool, |id, t| {
            if now.duration_since(t.created) >= self.max_lifetime {
                Some(format!(
                    "transaction {id} was rolled back: it reached http.transaction_max_lifetime ({:?})",
                    self.max_lifetime
                ))
            } else if now.duration_since(*lock(&t.last_used)) >= self.idle_timeout {
                Some(format!(
                    "transaction {id} was rolled back after idling for http.transaction_idle_timeout ({:?})",
                    self.idle_timeout
                ))
            } else {
                None
            }
        })
        .await;
    }

    /// Rolls back every transaction not in use right now, at the end of a shutdown drain.
    pub async fn roll_back_all(&self, pool: &Pool) {
        self.roll_back_where(pool, |id, _| {
            Some(format!(
                "transaction {id} was rolled back: sluice shut down"
            ))
        })
        .await;
    }

    /// Transactions open now.
    pub fn count(&self) -> usize {
        lock(&self.open).len()
    }

    /// Rolls back and frees the transactions for which `reason` gives a reason (remembered
    /// for a later use of their id); one in use right now is left alone.
    async fn roll_back_where(
        &self,
        pool: &Pool,
        reason: impl Fn(&str, &Transaction) -> Option<String>,
    ) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut open = lock(&self.open);
            open.retain(|id, t| {
                let Some(reason) = reason(id, t) else {
                    return true;
                };
                match t.lease.clone().try_lock_owned() {
                    Ok(guard) => {
                        expired.push((id.clone(), t.user.clone(), reason, guard));
                        false
                    }
                    Err(_) => true,
                }
            });
        }
        lock(&self.ended).retain(|_, e| now.duration_since(e.at) < REMEMBER_ENDED);
        for (id, user, reason, mut guard) in expired {
            self.gauge.dec();
            tracing::info!(transaction = %id, %user, %reason, "Data API transaction expired");
            lock(&self.ended).insert(
                id,
                Ended {
                    user,
                    reason,
                    at: now,
                },
            );
            if let Some(lease) = guard.take() {
                // The reset rolls the transaction back.
                pool.give_back(lease).await;
            }
        }
    }

    /// Runs [`Transactions::reap`] four times per idle timeout (at most once a second)
    /// until `api` is dropped.
    pub fn spawn_reaper(self: &Arc<Self>, pool: Pool) {
        let weak = Arc::downgrade(self);
        let period =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.reap(&pool).await;
            }
        });
    }
}
