//! Who a client is, and as whom sluice logs in to the database for it.
//!
//! A client proves a user name with `mysql_native_password`; the [`Identity`] it gets names
//! the database login its connections use ([`BackendTarget`]). Pools, statement caches and
//! session adoption are keyed by that login, so nothing crosses database users.
//!
//! Sources: the `[[users]]` of the configuration, each mapped to the shared account of
//! `[backend]`.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_protocol::auth::Credential;

use crate::config::{BackendTarget, PoolMode, Settings};

/// A client that proved who it is, and what follows from that.
#[derive(Debug)]
pub struct Identity {
    /// The user name the client logged in with.
    pub user: String,
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
}

impl Denied {
    /// The `reason` label of `sluice_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::UnknownUser => "unknown_user",
            Denied::BadPassword => "bad_password",
        }
    }
}

/// A configured user: its credential and identity.
struct Configured {
    credential: Credential,
    identity: Arc<Identity>,
}

/// The sources of identities.
pub struct Identities {
    configured: HashMap<String, Configured>,
    shared: Arc<BackendTarget>,
}

impl Identities {
    /// The identities `settings` define.
    pub fn new(settings: &Settings) -> Identities {
        let shared = Arc::new(settings.backend.clone());
        let configured = settings
            .users
            .iter()
            .map(|(name, user)| {
                let identity = Arc::new(Identity {
                    user: name.clone(),
                    backend: shared.clone(),
                    pool_mode: user.pool_mode,
                    databases: user.databases.clone(),
                });
                (
                    name.clone(),
                    Configured {
                        credential: user.credential,
                        identity,
                    },
                )
            })
            .collect();
        Identities { configured, shared }
    }

    /// The login of sluice's own connections (probes, the Data API's shared account).
    pub fn shared(&self) -> &Arc<BackendTarget> {
        &self.shared
    }

    /// Checks `user`'s `mysql_native_password` proof against `salt`.
    pub async fn verify(
        &self,
        user: &str,
        salt: &[u8],
        proof: &[u8],
    ) -> Result<Arc<Identity>, Denied> {
        let configured = self.configured.get(user).ok_or(Denied::UnknownUser)?;
        configured
            .credential
            .prove(salt, proof)
            .map(|_| configured.identity.clone())
            .ok_or(Denied::BadPassword)
    }

    /// The identity a Data API key acts as (its user must be configured).
    pub fn of_configured(&self, user: &str) -> Option<Arc<Identity>> {
        self.configured.get(user).map(|c| c.identity.clone())
    }
}
