//! sluice: a MySQL/MariaDB connection gateway for serverless and other high-churn clients.
//!
//! Clients connect with their ordinary MySQL driver; sluice authenticates them against its
//! own user list and serves them over a small, bounded pool of real database connections.
//!
//! - [`config`]: the file, defaults and validation; [`fd_budget`]: caps that fit the
//!   descriptor limit; [`reload`]: a new configuration while serving (SIGHUP, `POST /reload`);
//! - [`server`]: accepting clients; [`shutdown`]: draining them on SIGTERM;
//! - `client`: one task per client connection (login, commands, relaying replies);
//! - [`identity`]: who a client is, and as whom its database connections log in;
//! - [`pool`] and [`backend`]: the database connections; [`budget`]: how many;
//!   [`fleet`]: one budget shared by several instances through leases in Redis;
//! - [`janitor`]: kills sleeping connections that bypass sluice when the server fills up;
//! - [`admin`] and [`metrics`]: health, Prometheus, `/status` and the live dashboard;
//! - [`http`]: the SQL-over-HTTP Data API, sharing the pool;
//! - [`tls`]: TLS toward clients (MySQL port and Data API) and toward the database;
//! - [`bench`]: the serverless burst simulator (`sluice bench burst`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod bench;
pub mod budget;
mod client;
pub mod config;
pub mod diagnostics;
pub mod fd_budget;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod janitor;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod rate;
pub mod registry;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod statements;
pub mod tls;

use std::sync::Arc;

use arc_swap::ArcSwap;
use config::Settings;
use metrics::Metrics;
use pool::Pool;

/// Everything client sessions share: settings, the pool, the metrics, and who is connected.
pub struct Gateway {
    /// The validated settings in force. A reload swaps them whole (see [`reload`]), so each
    /// new login, statement or borrow reads the current ones through [`Gateway::settings`]
    /// while connected clients carry on.
    pub(crate) settings: ArcSwap<Settings>,
    /// The database connection pool.
    pub pool: Pool,
    /// Exported metrics.
    pub metrics: Metrics,
    /// Connected clients by sluice connection id, so `KILL` can find them.
    pub sessions: registry::Registry,
    /// Metadata of statements clients prepared, shared by all sessions.
    pub statements: statements::MetadataCache,
    /// Logins in progress and seats of authenticated clients.
    pub(crate) admission: Arc<client::Admission>,
    /// Delays for failed logins, per address and user.
    pub(crate) throttle: client::LoginThrottle,
    /// Whether the gateway is draining, and until when.
    pub shutdown: shutdown::Shutdown,
    /// Who clients are, and as whom sluice logs in to the database for them.
    pub identities: identity::Identities,
    /// The certificate MySQL-protocol clients may switch to TLS with: `None` when TLS is
    /// not configured or every `tls_mode` is `off` (then `CLIENT_SSL` is not offered).
    pub client_tls: Option<Arc<tls::ServerTls>>,
    /// The server's `max_connections` as the budget last read it.
    pub server_limit: Arc<budget::ServerLimit>,
    /// Per-user statement rate limits.
    pub rate_limits: rate::RateLimits,
    /// The fleet as this instance sees it, when `[fleet]` is on (written by its member
    /// task once the listener's port is known).
    pub fleet: Option<Arc<fleet::Board>>,
    /// Where a reload reads the configuration from, and how the last one went.
    pub reloads: reload::Reloads,
}

impl Gateway {
    /// Builds the shared state for `settings`; no connection is opened yet. Without a
    /// source to read them again, a reload is refused (see [`Gateway::reloadable`]).
    pub fn new(settings: Settings) -> Arc<Gateway> {
        Gateway::build(settings, None)
    }

    /// [`Gateway::new`] for a gateway whose configuration `source` can read again: SIGHUP
    /// and `POST /reload` apply what it returns.
    pub fn reloadable(settings: Settings, source: reload::Source) -> Arc<Gateway> {
        Gateway::build(settings, Some(source))
    }

    /// The settings in force now: a reload may replace them at any time, so callers read
    /// them when they start a piece of work rather than keep them.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// How a database connection keeps the statements it prepares, under the settings in
    /// force; `spare` names statements that must not give way (those a client holds).
    pub fn keeping<'a>(
        &'a self,
        spare: &'a (dyn Fn(&statements::StatementKey) -> bool + Sync),
    ) -> backend::Keeping<'a> {
        backend::Keeping {
            capacity: self.settings().pool.max_prepared_statements,
            metrics: &self.metrics,
            pool: &self.pool,
            spare,
        }
    }

    fn build(settings: Settings, source: Option<reload::Source>) -> Arc<Gateway> {
        let metrics = Metrics::new();
        let pool = Pool::new(
            settings.backend.clone(),
            settings.pool.clone(),
            settings.backend_timeouts,
            metrics.clone(),
        );
        pool.set_quotas(settings.quotas());
        let client_tls = client_tls(&settings);
        let fleet = settings
            .fleet
            .as_ref()
            .map(|_| Arc::new(fleet::Board::new()));
        Arc::new(Gateway {
            fleet,
            client_tls,
            server_limit: Arc::default(),
            rate_limits: rate::RateLimits::new(&settings),
            statements: statements::MetadataCache::new(settings.pool.statement_cache_size),
            admission: client::Admission::new(
                settings.max_pending_logins,
                settings.max_client_connections,
                metrics.client_logins_pending.clone(),
            ),
            shutdown: shutdown::Shutdown::new(),
            identities: identity::Identities::new(&settings, &pool, &metrics),
            throttle: client::LoginThrottle::new(
                settings.failed_login_delay,
                settings.failed_login_delay_max,
            ),
            settings: ArcSwap::from_pointee(settings),
            pool,
            metrics,
            sessions: registry::Registry::default(),
            reloads: reload::Reloads::new(source),
        })
    }
}

/// The certificate for MySQL-protocol clients, when some user may use TLS. The files were
/// loaded when the configuration was checked; failing now (they changed meanwhile) leaves
/// TLS off, logged, and `require` users refused.
fn client_tls(settings: &Settings) -> Option<Arc<tls::ServerTls>> {
    let files = settings.tls.as_ref()?;
    if !tls_wanted(settings) {
        return None;
    }
    tls::ServerTls::load(&files.cert, &files.key)
        .map_err(|e| tracing::error!(error = %e, "TLS toward clients is off"))
        .ok()
}

/// Whether some login may use TLS on the MySQL port (the global or a user's `tls_mode` is
/// not `off`): only then is `CLIENT_SSL` offered.
fn tls_wanted(settings: &Settings) -> bool {
    settings.tls_mode != tls::TlsMode::Off
        || settings
            .users
            .values()
            .any(|u| u.tls_mode != tls::TlsMode::Off)
}

impl Gateway {
    /// Ends the statement running for `target`, if any, on a connection borrowed from the
    /// pool (so it counts against the budget). The kill names the statement's query id and
    /// is sent only if the target still holds the same borrow after the id was read, so it
    /// can never interrupt another client's statement.
    pub async fn kill_query(&self, target: &registry::SessionHandle) {
        let before = target.backend.get();
        if before.1 == 0 {
            return; // not holding a connection: nothing runs
        }
        let login = &target.identity.backend;
        let mut side = match self
            .pool
            .borrow(
                &queue::LaneKey::Sluice,
                login,
                backend::Flavor::INTERNAL,
                None,
            )
            .await
        {
            Ok(side) => side,
            Err(e) => {
                tracing::warn!(error = %e, "no connection to kill a query with");
                return;
            }
        };
        let sql = format!(
            "SELECT QUERY_ID FROM information_schema.PROCESSLIST WHERE ID = {}",
            before.1
        );
        let query_id = match side.conn().query_text(&sql).await {
            Ok(Ok(rows)) => backend::first_value::<u64>(&rows),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not read the query to kill");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the query to kill");
                drop(side);
                return;
            }
        };
        if let Some(query_id) = query_id.filter(|_| target.backend.get() == before) {
            // 1957 (unknown query id) means it finished meanwhile: nothing to do.
            if let Err(e) = side
                .conn()
                .execute(&format!("KILL QUERY ID {query_id}"))
                .await
            {
                tracing::warn!(error = %e, "could not kill a query");
                drop(side);
                return;
            }
        }
        self.pool.release(side);
    }

    /// Ends `target`'s session (`KILL CONNECTION`): its running statement first, then the
    /// session itself, which rolls back and returns its connection.
    pub async fn kill_session(&self, target: &registry::SessionHandle) {
        self.kill_query(target).await;
        target.kill.notify_one();
    }
}
