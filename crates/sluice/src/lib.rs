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
//! - [`bench`]: the serverless burst simulator (`sluice bench burst`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod bench;
mod client;
pub mod config;
pub mod metrics;
pub mod pool;
pub mod server;

use std::sync::Arc;

use config::Settings;
use metrics::Metrics;
use pool::Pool;

/// Everything client sessions share: settings, the pool, and the metrics.
pub struct Gateway {
    /// Validated settings.
    pub settings: Settings,
    /// The database connection pool.
    pub pool: Pool,
    /// Exported metrics.
    pub metrics: Metrics,
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
            settings,
            pool,
            metrics,
        })
    }
}
