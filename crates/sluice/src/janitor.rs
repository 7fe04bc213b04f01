//! The janitor of connections that bypass sluice (`[janitor]`, off by default).
//!
//! Functions that still connect to the database directly leave sleeping "zombie"
//! connections behind when their containers freeze or die. The `serverless-mysql` module
//! cleans them up from inside every function, each instance racing the others; the janitor
//! does it once, centrally. Every `interval` it reads `Threads_connected` and
//! `@@max_connections`; when the share of connections in use is above `threshold`, it reads
//! the sleeping threads of the processlist and kills (`KILL CONNECTION <id>`) those of the
//! configured `users` that slept at least `min_idle`, oldest first, at most
//! `max_kills_per_round`, and only as many as bring the share back to the threshold.
//!
//! Never killed: sluice's own connections (every thread id the pool holds, idle, lent or
//! closing, including the janitor's own borrowed connection) and other users' connections.
//! Only the numeric id read from the processlist is ever written into a statement.
//!
//! The race: a client may wake its connection between the read and the kill, a round trip
//! later. Re-reading before killing would only move that window, not close it (MySQL has
//! no conditional `KILL`), so the janitor accepts it, as `serverless-mysql` does: a
//! connection that slept `min_idle` and wakes within the next few milliseconds is killed
//! mid-statement, and its client sees the connection gone, as after `wait_timeout`.

use std::collections::HashSet;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::backend::{first_value, BackendConn, BackendError};
use crate::config::JanitorConfig;
use crate::metrics::Metrics;
use crate::pool::Pool;

/// The server's error for `KILL` of a thread that no longer exists (`ER_NO_SUCH_THREAD`).
const NO_SUCH_THREAD: u16 = 1094;

/// The sleeping threads, with what the janitor needs to choose and to log.
const SLEEPERS: &str = "SELECT ID, USER, HOST, TIME FROM information_schema.PROCESSLIST \
     WHERE COMMAND = 'Sleep'";

/// One sleeping thread of the server's processlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sleeper {
    /// The thread (connection) id: the only value ever written into a `KILL`.
    pub id: u64,
    /// Its database user.
    pub user: String,
    /// Where it connected from, for the log.
    pub host: String,
    /// How long it has slept.
    pub idle: Duration,
}

/// How full the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// `Threads_connected`: every connection, sluice's and others'.
    pub connected: u64,
    /// `@@max_connections`.
    pub max_connections: u64,
}

impl Load {
    /// How many connections must go for the share in use to be at most `threshold`
    /// (zero when it already is, or when the server reported no `max_connections`).
    pub fn excess(&self, threshold: f64) -> u64 {
        if self.max_connections == 0 {
            return 0;
        }
        // Truncation is the point: the largest whole count at or under the threshold.
        let allowed = (threshold * self.max_connections as f64).floor() as u64;
        self.connected.saturating_sub(allowed)
    }
}

/// The sleepers to kill this round, oldest first: those of `config.users` that slept at
/// least `min_idle` and are not in `owned` (sluice's own thread ids), no more than the
/// load's excess over the threshold nor `max_kills_per_round`.
pub fn victims(
    load: Load,
    mut sleepers: Vec<Sleeper>,
    owned: &HashSet<u32>,
    config: &JanitorConfig,
) -> Vec<Sleeper> {
    let excess = load.excess(config.threshold);
    if excess == 0 {
        return Vec::new();
    }
    let ours = |id: u64| u32::try_from(id).is_ok_and(|id| owned.contains(&id));
    sleepers.retain(|s| s.idle >= config.min_idle && config.users.contains(&s.user) && !ours(s.id));
    sleepers.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.id.cmp(&b.id)));
    let most = usize::try_from(excess)
        .unwrap_or(usize::MAX)
        .min(config.max_kills_per_round);
    sleepers.truncate(most);
    sleepers
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// No connection to read the processlist on.
    #[error("no database connection for the janitor: {0}")]
    Borrow(#[from] crate::pool::BorrowError),
    /// The connection failed; the lease is dropped (and the connection closed).
    #[error("the janitor's database connection failed: {0}")]
    Backend(#[from] BackendError),
    /// The server refused a statement (e.g. a missing grant).
    #[error("the server refused the janitor's query ({0}); the [backend] account needs PROCESS and CONNECTION ADMIN (or SUPER)")]
    Refused(String),
}

/// Runs a janitor round every `config.interval` until the pool's last handle is gone;
/// does nothing when the janitor is off.
pub fn spawn(pool: &Pool, config: &JanitorConfig, metrics: &Metrics) {
    if !config.enabled {
        return;
    }
    info!(users = ?config.users, threshold = config.threshold, min_idle = ?config.min_idle, "janitor is on");
    let weak = pool.downgrade();
    let config = config.clone();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else {
                break;
            };
            if let Err(e) = round(&pool, &config, &metrics).await {
                warn!(error = %e, "janitor round failed");
            }
        }
    });
}

/// One round: read the load, and when it is above the threshold, the sleepers; kill the
/// victims. Returns how many were killed.
async fn round(
    pool: &Pool,
    config: &JanitorConfig,
    metrics: &Metrics,
) -> Result<usize, RoundError> {
    let mut lease = pool.borrow_internal().await?;
    let conn = lease.conn();
    let load = read_load(conn).await?;
    metrics.janitor_rounds.inc();
    let chosen = if load.excess(config.threshold) > 0 {
        let sleepers = read_sleepers(conn).await?;
        victims(load, sleepers, &pool.thread_ids(), config)
    } else {
        Vec::new()
    };
    let mut killed = 0;
    for sleeper in chosen {
        if kill(conn, &sleeper, load).await? {
            metrics
                .janitor_kills
                .with_label_values(&[metrics.users.label(&sleeper.user)])
                .inc();
            killed += 1;
        }
    }
    // Only reads and KILLs ran: the session is as it was.
    pool.release(lease);
    Ok(killed)
}

/// Rows of a statement the server must answer.
async fn rows(conn: &mut BackendConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, RoundError> {
    conn.query_text(sql)
        .await?
        .map_err(|refused| RoundError::Refused(refused.to_string()))
}

/// `Threads_connected` and `@@max_connections`.
async fn read_load(conn: &mut BackendConn) -> Result<Load, RoundError> {
    let max_connections = first_value(&rows(conn, "SELECT @@GLOBAL.max_connections").await?);
    let status = rows(conn, "SHOW GLOBAL STATUS LIKE 'Threads_connected'").await?;
    let connected = status
        .first()
        .and_then(|row| row.get(1)?.as_deref()?.parse().ok());
    match (connected, max_connections) {
        (Some(connected), Some(max_connections)) => Ok(Load {
            connected,
            max_connections,
        }),
        _ => Err(RoundError::Refused(
            "no Threads_connected or max_connections in the answer".into(),
        )),
    }
}

/// The sleeping threads the janitor's login can see (all of them with `PROCESS`).
async fn read_sleepers(conn: &mut BackendConn) -> Result<Vec<Sleeper>, RoundError> {
    Ok(rows(conn, SLEEPERS)
        .await?
        .into_iter()
        .filter_map(|row| {
            let mut values = row.into_iter();
            let id = values.next()??.parse().ok()?;
            let user = values.next()?.unwrap_or_default();
            let host = values.next()?.unwrap_or_default();
            let idle = Duration::from_secs(values.next()??.parse().ok()?);
            Some(Sleeper {
                id,
                user,
                host,
                idle,
            })
        })
        .collect())
}

/// Kills one sleeper, logging it; `false` when it was gone already or the server refused.
async fn kill(conn: &mut BackendConn, sleeper: &Sleeper, load: Load) -> Result<bool, BackendError> {
    match conn
        .execute(&format!("KILL CONNECTION {}", sleeper.id))
        .await?
    {
        Ok(_) => {
            info!(
                user = %sleeper.user,
                thread_id = sleeper.id,
                idle = ?sleeper.idle,
                host = %sleeper.host,
                connected = load.connected,
                max_connections = load.max_connections,
                "janitor killed a sleeping connection that bypasses sluice"
            );
            Ok(true)
        }
        Err(err) if err.code == NO_SUCH_THREAD => {
            debug!(
                thread_id = sleeper.id,
                "the sleeper left before the janitor's kill"
            );
            Ok(false)
        }
        Err(err) => {
            warn!(thread_id = sleeper.id, user = %sleeper.user, error = %err, "the server refused the janitor's kill");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(id: u64, user: &str, idle: u64) -> Sleeper {
        Sleeper {
            id,
            user: user.into(),
            host: "10.0.0.1:5000".into(),
            idle: Duration::from_secs(idle),
        }
    }

    fn config() -> JanitorConfig {
        JanitorConfig {
            enabled: true,
            users: vec!["fn".into()],
            max_kills_per_round: 3,
            ..JanitorConfig::default()
        }
    }

    fn load(connected: u64) -> Load {
        Load {
            connected,
            max_connections: 100,
        }
    }

    #[test]
    fn excess_is_what_brings_the_share_to_the_threshold() {
        assert_eq!(load(80).excess(0.8), 0);
        assert_eq!(load(81).excess(0.8), 1);
        assert_eq!(load(100).excess(0.8), 20);
        assert_eq!(load(3).excess(0.0001), 3);
        let zero = Load {
            connected: 5,
            max_connections: 0,
        };
        assert_eq!(zero.excess(0.8), 0);
    }

    #[test]
    fn oldest_sleepers_of_listed_users_only_never_sluices() {
        let sleepers = vec![
            sleeper(1, "fn", 61),
            sleeper(2, "other", 900),
            sleeper(3, "fn", 59),
            sleeper(4, "fn", 500),
            sleeper(5, "fn", 700),
            sleeper(6, "fn", 120),
            sleeper(7, "fn", 300),
        ];
        let owned = HashSet::from([5]);
        let ids = |v: Vec<Sleeper>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        // At most max_kills_per_round, oldest first; 5 is sluice's, 2 another user's,
        // 3 too young.
        assert_eq!(
            ids(victims(load(100), sleepers.clone(), &owned, &config())),
            vec![4, 7, 6]
        );
        // Only the excess.
        assert_eq!(
            ids(victims(load(82), sleepers.clone(), &owned, &config())),
            vec![4, 7]
        );
        // Nothing at or under the threshold.
        assert!(victims(load(80), sleepers, &owned, &config()).is_empty());
    }
}
