//! Who a client is, and as whom sluice logs in to the database for it.
//!
//! A client proves a user name with `mysql_native_password`; the [`Identity`] it gets names
//! the database login its connections use ([`BackendTarget`]). Pools, statement caches and
//! session adoption are keyed by that login, so nothing crosses database users.
//!
//! Sources, asked in the order of `auth.sources` until one knows the name:
//! - `users` (`configured`): the `[[users]]` of the configuration, each with its own
//!   database login or mapped to the shared `[backend]` account;
//! - `auth_query` (`auth_query`, `cache`): the database's own accounts, read through the
//!   `[backend]` account; the client runs as that database user, logged in with the
//!   `SHA1(password)` its proof showed (`accounts`).
//!
//! Both hold `mysql_native_password` hashes; `caching_sha2_password` clients are checked
//! against them too (see `sha2`).

mod accounts;
mod auth_query;
mod cache;
mod configured;
mod sha2;

pub use self::sha2::{CachingSha2, RsaKey};

use std::num::NonZeroUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_protocol::auth::Proven;
use tracing::warn;

use crate::config::{AuthSource, BackendSecret, BackendTarget, PoolMode, Settings};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::tls::TlsMode;
use auth_query::AuthQuery;
use cache::{AccountCache, Limits, LookupFailed};
use configured::ConfiguredUsers;

/// A client that proved who it is, and what follows from that.
#[derive(Debug)]
pub struct Identity {
    /// The user name the client logged in with.
    pub user: String,
    /// Its lane in the line for connections (its quota), made once per login.
    pub lane: crate::queue::LaneKey,
    /// The database login its connections use.
    pub backend: Arc<BackendTarget>,
    /// How long its clients keep a database connection.
    pub pool_mode: PoolMode,
    /// Databases the Data API lets it name; `None` allows any.
    pub databases: Option<Vec<String>>,
}

impl Identity {
    /// Whether this identity may work in `database` through the Data API (`None`: the
    /// backend's default schema).
    pub fn may_use(&self, database: Option<&str>) -> bool {
        match (&self.databases, database) {
            (None, _) => true,
            (Some(allowed), Some(name)) => allowed.iter().any(|a| a == name),
            (Some(_), None) => false,
        }
    }
}

/// Why a login was refused, for the metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No source knows the user.
    UnknownUser,
    /// The proof does not match the password.
    BadPassword,
    /// The database account uses a plugin other than `mysql_native_password`, so sluice
    /// cannot check the proof (the plugin is logged; the client sees access denied, as for
    /// any refusal, so the answer does not reveal that the account exists).
    UnsupportedPlugin,
    /// The auth query could not be run (database unreachable, the auth account lacks its
    /// grant): nothing is known about the password, so the client should retry later.
    Unavailable,
}

impl Denied {
    /// The `reason` label of `sluice_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::UnknownUser => "unknown_user",
            Denied::BadPassword => "bad_password",
            Denied::UnsupportedPlugin => "unsupported_plugin",
            Denied::Unavailable => "auth_query_failed",
        }
    }
}

/// One source of identities, in the configured order.
enum Source {
    /// `[[users]]`.
    Users,
    /// The database's accounts (boxed: the cache is large, and there is one).
    AuthQuery(Box<AccountCache<AuthQuery>>),
}

/// The sources of identities.
pub struct Identities {
    sources: Vec<Source>,
    /// The `[[users]]` and the defaults for other users; a reload swaps them whole, so a
    /// login sees one configuration or the other, never a mix.
    configured: ArcSwap<ConfiguredUsers>,
    shared: Arc<BackendTarget>,
    /// `caching_sha2_password`'s fast-path cache and RSA key.
    pub caching_sha2: CachingSha2,
}

impl Identities {
    /// The sources `settings` turn on; the auth query runs on `pool`'s own login.
    pub fn new(settings: &Settings, pool: &Pool, metrics: &Metrics) -> Identities {
        let shared = Arc::new(settings.backend.clone());
        let auth = &settings.auth;
        let sources = auth
            .sources
            .iter()
            .map(|source| match source {
                AuthSource::Users => Source::Users,
                AuthSource::AuthQuery => {
                    let query = AuthQuery::new(
                        pool.clone(),
                        &auth.query,
                        settings.pool.max_prepared_statements,
                        metrics.clone(),
                    );
                    let limits = Limits {
                        ttl: auth.cache_ttl,
                        unknown_ttl: auth.unknown_user_ttl,
                        capacity: NonZeroUsize::new(auth.cache_size).unwrap_or(NonZeroUsize::MIN),
                        // A flood of logins of unknown names keeps most of the pool for
                        // clients.
                        concurrent_reads: settings.pool.max_db_connections / 4,
                    };
                    Source::AuthQuery(Box::new(AccountCache::new(
                        query,
                        limits,
                        metrics.auth_query_lookups.clone(),
                    )))
                }
            })
            .collect();
        Identities {
            sources,
            configured: ArcSwap::from_pointee(ConfiguredUsers::new(settings, &shared)),
            shared,
            caching_sha2: CachingSha2::new(auth.cache_size, auth.rsa_private_key.clone()),
        }
    }

    /// Takes the users, passwords, pool modes and TLS modes of `settings` (a reload): new
    /// logins are checked against them; clients already logged in keep their identity. The
    /// auth query's sources and the `[backend]` account stay as they started.
    pub fn reload(&self, settings: &Settings) {
        self.configured
            .store(Arc::new(ConfiguredUsers::new(settings, &self.shared)));
    }

    /// Whether logins of `user` may or must use TLS: its `[[users]]` entry's `tls_mode`, or
    /// the global one. Asked before the password is checked, so a refusal for want of TLS
    /// says nothing about the password.
    pub fn tls_mode(&self, user: &str) -> TlsMode {
        self.configured.load().tls_mode(user)
    }

    /// The login of sluice's own connections (probes, the Data API's shared account).
    pub fn shared(&self) -> &Arc<BackendTarget> {
        &self.shared
    }

    /// Checks `user`'s `mysql_native_password` proof against `salt`, asking the sources in
    /// order: the first that knows the name decides.
    pub async fn verify(
        &self,
        user: &str,
        salt: &[u8],
        proof: &[u8],
    ) -> Result<Arc<Identity>, Denied> {
        for source in &self.sources {
            let outcome = match source {
                Source::Users => self.configured.load().verify(user, salt, proof),
                Source::AuthQuery(cache) => self.database_user(cache, user, salt, proof).await,
            };
            if !matches!(outcome, Err(Denied::UnknownUser)) {
                return outcome;
            }
        }
        Err(Denied::UnknownUser)
    }

    /// Checks a proof against the database's accounts of `user`; the identity runs as that
    /// database user, logged in with what the proof showed.
    async fn database_user(
        &self,
        cache: &AccountCache<AuthQuery>,
        user: &str,
        salt: &[u8],
        proof: &[u8],
    ) -> Result<Arc<Identity>, Denied> {
        let verdict = cache
            .verify(user, |found| accounts::check(found, salt, proof))
            .await
            .map_err(|LookupFailed| Denied::Unavailable)?;
        let secret = match verdict.result {
            Ok(Proven::Empty) => BackendSecret::Password(String::new()),
            Ok(Proven::PasswordSha1(sha1)) => BackendSecret::PasswordSha1(sha1),
            Err(Denied::UnsupportedPlugin) => {
                warn!(
                    %user,
                    plugins = ?accounts::other_plugins(&verdict.accounts),
                    "the database account uses an authentication plugin sluice cannot check; only mysql_native_password accounts log in through the auth query"
                );
                return Err(Denied::UnsupportedPlugin);
            }
            Err(denied) => return Err(denied),
        };
        let backend = BackendTarget {
            user: user.to_owned(),
            secret,
            ..BackendTarget::clone(&self.shared)
        };
        Ok(Arc::new(Identity {
            user: user.to_owned(),
            lane: crate::queue::LaneKey::app(user),
            backend: Arc::new(backend),
            pool_mode: self.configured.load().pool_mode,
            databases: None,
        }))
    }

    /// The identity a Data API key acts as (its user must be configured).
    pub fn of_configured(&self, user: &str) -> Option<Arc<Identity>> {
        self.configured.load().get(user)
    }
}
