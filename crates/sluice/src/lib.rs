//! sluice: a MySQL/MariaDB connection gateway for serverless and other high-churn clients.
//!
//! Clients connect with their ordinary MySQL driver; sluice authenticates them against its
//! own user list and serves them over a small, bounded pool of real database connections.
//!
//! - [`config`]: the file, defaults and validation;
//! - [`server`]: accepting clients and shutting down;
//! - `client`: one task per client connection (login, commands, relaying replies);
//! - [`pool`] and [`backend`]: the database connections;
//! - [`admin`] and [`metrics`]: health and Prometheus endpoints;
//! - [`http`]: the SQL-over-HTTP Data API, sharing the pool;
//! - [`bench`]: the serverless burst simulator (`sluice bench burst`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod bench;
mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod server;
pub mod statements;

use std::sync::Arc;

use config::Settings;
use metrics::Metrics;
use pool::Pool;

/// Everything client sessions share: settings, the pool, the metrics, and who is connected.
pub struct Gateway {
    /// Validated settings.
    pub settings: Settings,
    /// The database connection pool.
    pub pool: Pool,
    /// Exported metrics.
    pub metrics: Metrics,
    /// Connected clients by sluice connection id, so `KILL` can find them.
    pub sessions: registry::Registry,
    /// Metadata of statements clients prepared, shared by all sessions.
    pub statements: statements::MetadataCache,
}

impl Gateway {
    /// Builds the shared state for `settings`; no connection is opened yet.
    pub fn new(settings: Settings) -> Arc<Gateway> {
        let metrics = Metrics::new();
        let pool = Pool::new(
            settings.backend.clone(),
            settings.pool.clone(),
            settings.connect_timeout,
            metrics.clone(),
        );
        Arc::new(Gateway {
            statements: statements::MetadataCache::new(settings.pool.statement_cache_size),
            settings,
            pool,
            metrics,
            sessions: registry::Registry::default(),
        })
    }
}

impl Gateway {
    /// Carries out `KILL [QUERY] id` for `user`: the running statement is killed on the
    /// database over a short side connection, and for `KILL CONNECTION` the session is told
    /// to end.
    pub async fn kill(
        &self,
        user: &str,
        id: u64,
        query_only: bool,
    ) -> Result<(), sluice_protocol::response::ErrFields> {
        let target = self.sessions.target(user, id, query_only)?;
        let (thread, notify) = match target {
            registry::KillTarget::Query(thread) => (thread, None),
            registry::KillTarget::Connection(thread, notify) => (thread, Some(notify)),
        };
        if thread != 0 {
            let side = backend::BackendConn::connect(
                &self.settings.backend,
                backend::Flavor::INTERNAL,
                self.settings.connect_timeout,
            )
            .await;
            match side {
                Ok(mut side) => {
                    let _ = side.execute(&format!("KILL QUERY {thread}")).await;
                }
                Err(e) => tracing::warn!(error = %e, "could not open a connection to kill a query"),
            }
        }
        if let Some(notify) = notify {
            notify.notify_one();
        }
        Ok(())
    }
}
