//! The connection budget: how many database connections sluice may hold, from its own cap,
//! the server's `max_connections` and the headroom to leave for others.
//!
//! The server's limit can change (`SET GLOBAL max_connections`, a new instance class), so it
//! is read at start, every `pool.budget_refresh` and whenever a reload changes `[pool]`,
//! and the budget published on a watch channel. The pool limit has one owner, which follows
//! it: [`follow`] for a lone instance, the fleet member (`crate::fleet`) when several share
//! the budget. A cap above what the server allows is reported, since that many could never
//! be opened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::first_value;
use crate::config::PoolConfig;
use crate::pool::Pool;

/// The connections the budget allows with `config` when the server's `max_connections`
/// is `server_max`: `max_db_connections`, or `max_connections_percent` of the server's,
/// whichever is less, and never more than the server's less `reserved_connections`
/// (at least 1).
pub fn effective(config: &PoolConfig, server_max: u64) -> usize {
    let server_max = usize::try_from(server_max).unwrap_or(usize::MAX);
    let share = config.max_connections_percent.map_or(usize::MAX, |p| {
        server_max.saturating_mul(usize::from(p)) / 100
    });
    let allowed = server_max.saturating_sub(config.reserved_connections);
    config.max_db_connections.min(share).min(allowed).max(1)
}

/// The server's `max_connections` as last read (0: not read yet), shared with `/status`.
#[derive(Debug, Default)]
pub struct ServerLimit(AtomicU64);

impl ServerLimit {
    /// The last value read, if any.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v > 0)
    }
}

/// Reads the server's limit now, every `budget_refresh` and whenever the pool's
/// configuration changes (a reload), publishing the budget on the returned channel (first
/// `max_db_connections`, what the pool starts at) and recording the limit in `server`,
/// until the pool is gone. Until the server's limit is first read, a reloaded
/// `max_db_connections` is the budget.
pub fn spawn(pool: &Pool, server: Arc<ServerLimit>) -> watch::Receiver<usize> {
    let weak = pool.downgrade();
    let mut configs = pool.watch_config();
    let (budget_tx, budget_rx) = watch::channel(configs.borrow().max_db_connections);
    tokio::spawn(async move {
        // The pool starts at max_db_connections.
        let mut last = (None, configs.borrow().max_db_connections);
        let mut server_max = None;
        while let Some(pool) = weak.upgrade() {
            let config = configs.borrow_and_update().clone();
            if let Some(read) = read_server_max(&pool).await {
                server.0.store(read, Ordering::Relaxed);
                server_max = Some(read);
            }
            let budget = server_max.map_or(config.max_db_connections, |server_max| {
                effective(&config, server_max)
            });
            if last != (server_max, budget) {
                if let Some(server_max) = server_max {
                    report(&config, server_max, budget);
                }
                budget_tx.send_replace(budget);
                last = (server_max, budget);
            }
            drop(pool);
            tokio::select! {
                () = tokio::time::sleep(config.budget_refresh) => {}
                changed = configs.changed() => if changed.is_err() { break },
            }
        }
    });
    budget_rx
}

/// Owns the pool limit of a lone instance: resizes `pool` to each budget published, until
/// the pool or the budget task is gone.
pub fn follow(pool: &Pool, mut budget: watch::Receiver<usize>) {
    let weak = pool.downgrade();
    tokio::spawn(async move {
        while budget.changed().await.is_ok() {
            let limit = *budget.borrow_and_update();
            let Some(pool) = weak.upgrade() else { break };
            pool.set_limit(limit).await;
        }
    });
}

/// Logs the budget, warning when sluice's own cap is above what the server allows.
fn report(config: &PoolConfig, server_max: u64, budget: usize) {
    let allowed = server_max.saturating_sub(config.reserved_connections as u64);
    if config.max_connections_percent.is_none() && config.max_db_connections as u64 > allowed {
        tracing::warn!(
            max_db_connections = config.max_db_connections,
            server_max_connections = server_max,
            reserved_connections = config.reserved_connections,
            budget,
            "pool.max_db_connections is above what the server allows (its max_connections \
             less pool.reserved_connections): the budget is {budget}"
        );
    } else {
        tracing::info!(
            server_max_connections = server_max,
            budget,
            "database connection budget"
        );
    }
}

/// The server's `max_connections`, read on a pooled connection of sluice's own login,
/// borrowed in line like any other: a connection opened beside the pool would take the
/// database one past the cap the operator set, exactly when the pool is full. `None` when
/// no connection came within `borrow_timeout` or the read failed (logged); the next
/// refresh tries again.
async fn read_server_max(pool: &Pool) -> Option<u64> {
    let mut lease = match pool.borrow_internal().await {
        Ok(lease) => lease,
        Err(e) => {
            tracing::warn!(error = %e, "no connection to read the server's max_connections");
            return None;
        }
    };
    match lease
        .conn()
        .query_text("SELECT @@GLOBAL.max_connections")
        .await
    {
        Ok(Ok(rows)) => {
            // A read of a global leaves the session as it was.
            pool.release(lease);
            first_value::<u64>(&rows)
        }
        Ok(Err(err)) => {
            pool.release(lease);
            tracing::warn!(error = %err, "could not read the server's max_connections");
            None
        }
        Err(e) => {
            // Dropping the lease closes the broken connection.
            drop(lease);
            tracing::warn!(error = %e, "could not read the server's max_connections");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize, percent: Option<u8>, reserved: usize) -> PoolConfig {
        PoolConfig {
            max_db_connections: max,
            max_connections_percent: percent,
            reserved_connections: reserved,
            ..PoolConfig::default()
        }
    }

    #[test]
    fn the_budget_is_the_least_of_the_cap_the_share_and_the_server_less_headroom() {
        assert_eq!(effective(&config(20, None, 5), 151), 20, "the cap");
        assert_eq!(
            effective(&config(500, None, 5), 151),
            146,
            "the server less headroom"
        );
        assert_eq!(effective(&config(500, Some(50), 5), 151), 75, "the share");
        assert_eq!(
            effective(&config(20, Some(50), 5), 151),
            20,
            "the cap bounds the share"
        );
        assert_eq!(effective(&config(500, Some(100), 10), 200), 190);
        assert_eq!(
            effective(&config(500, Some(10), 0), 5),
            1,
            "never below one"
        );
        assert_eq!(effective(&config(20, None, 500), 151), 1);
    }
}
