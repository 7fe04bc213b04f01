//! The `[[users]]` of the configuration: a password sluice checks itself, and the database
//! login each user's clients run as (the shared `[backend]` account, or its own), with the
//! pool and TLS modes of users no entry names: everything a reload replaces at once.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_protocol::auth::Credential;

use super::{Denied, Identity};
use crate::config::{BackendTarget, PoolMode, Settings, UserBackend};
use crate::tls::TlsMode;

/// A configured user: its credential and identity.
struct Configured {
    credential: Credential,
    identity: Arc<Identity>,
    tls_mode: TlsMode,
}

/// The configured users by name, and the defaults for others.
pub struct ConfiguredUsers {
    users: HashMap<String, Configured>,
    /// The pool mode of database users found by the auth query.
    pub pool_mode: PoolMode,
    /// Whether clients without an entry of their own may or must use TLS.
    tls_mode: TlsMode,
}

impl ConfiguredUsers {
    /// The users of `settings`, their logins next to `shared` (the `[backend]` account).
    pub fn new(settings: &Settings, shared: &Arc<BackendTarget>) -> ConfiguredUsers {
        let users = settings
            .users
            .iter()
            .map(|(name, user)| {
                let backend = match &user.backend {
                    UserBackend::Shared => shared.clone(),
                    UserBackend::Own { user, secret } => Arc::new(BackendTarget {
                        user: user.clone(),
                        secret: secret.clone(),
                        ..BackendTarget::clone(shared)
                    }),
                };
                let identity = Arc::new(Identity {
                    user: name.clone(),
                    lane: crate::queue::LaneKey::app(name),
                    backend,
                    pool_mode: user.pool_mode,
                    databases: user.databases.clone(),
                });
                let configured = Configured {
                    credential: user.credential,
                    identity,
                    tls_mode: user.tls_mode,
                };
                (name.clone(), configured)
            })
            .collect();
        ConfiguredUsers {
            users,
            pool_mode: settings.pool_mode,
            tls_mode: settings.tls_mode,
        }
    }

    /// Checks `user`'s `mysql_native_password` proof against `salt`.
    pub fn verify(&self, user: &str, salt: &[u8], proof: &[u8]) -> Result<Arc<Identity>, Denied> {
        let configured = self.users.get(user).ok_or(Denied::UnknownUser)?;
        configured
            .credential
            .prove(salt, proof)
            .map(|_| configured.identity.clone())
            .ok_or(Denied::BadPassword)
    }

    /// The `tls_mode` of a configured user, or the global one for a name not configured.
    pub fn tls_mode(&self, user: &str) -> TlsMode {
        self.users.get(user).map_or(self.tls_mode, |c| c.tls_mode)
    }

    /// The identity of a configured user, without a proof (a Data API key names it).
    pub fn get(&self, user: &str) -> Option<Arc<Identity>> {
        self.users.get(user).map(|c| c.identity.clone())
    }
}
