//! Bearer API keys: `Authorization: Bearer KEY`, looked up by the key's SHA-256.
//!
//! Only digests are kept (the configuration file stores nothing else), so a leaked file or
//! memory dump does not reveal usable keys.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::Digest;

use super::envelope::{ApiError, Status};
use super::Api;
use crate::identity::Identity;

/// The sluice user a request acts as.
pub struct Caller {
    /// The user's name.
    pub name: String,
    /// Who it acts as: the databases it may use and its database login.
    pub identity: Arc<Identity>,
}

impl Caller {
    /// 403 unless this user may work in `database`.
    pub fn check_database(&self, database: Option<&str>) -> Result<(), ApiError> {
        if self.identity.may_use(database) {
            return Ok(());
        }
        Err(ApiError::new(
            Status::Unauthorized,
            match database {
                Some(name) => format!("user {:?} may not use database {name:?}", self.name),
                None => format!(
                    "user {:?} must name one of its databases in \"database\"",
                    self.name
                ),
            },
        ))
    }
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Caller, ApiError> {
        let missing = || {
            ApiError::new(
                Status::NotAuthenticated,
                "send an API key as \"Authorization: Bearer KEY\"",
            )
        };
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(missing)?;
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        let gateway = &api.gateway;
        let user = gateway
            .settings()
            .http
            .api_keys
            .get(&digest)
            .and_then(|name| Some((name, gateway.identities.of_configured(name)?)))
            .map(|(name, identity)| Caller {
                name: name.clone(),
                identity,
            });
        user.ok_or_else(|| ApiError::new(Status::NotAuthenticated, "unknown API key"))
    }
}
