//! Per-user statement rate limits (`[[users]] max_statements_per_second`): a token bucket
//! shared by all of a user's clients, so one runaway function cannot flood the database on
//! behalf of an application; statements over the rate are refused, not queued, and the
//! client may retry.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Settings;

/// One user's bucket and its configured rate (for the error message).
#[derive(Debug)]
pub struct UserRate {
    limiter: DefaultDirectRateLimiter,
    /// Statements per second allowed.
    pub per_second: NonZeroU32,
}

impl UserRate {
    /// Takes one statement's token; `false` when the user is over its rate.
    pub fn allows(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

/// The buckets of the users that have a limit, by login name.
#[derive(Debug, Default)]
pub struct RateLimits(HashMap<String, Arc<UserRate>>);

impl RateLimits {
    /// One bucket per configured user with `max_statements_per_second`.
    pub fn new(settings: &Settings) -> RateLimits {
        RateLimits(
            settings
                .users
                .iter()
                .filter_map(|(name, user)| {
                    let per_second = user.max_statements_per_second?;
                    let limiter = RateLimiter::direct(Quota::per_second(per_second));
                    Some((
                        name.clone(),
                        Arc::new(UserRate {
                            limiter,
                            per_second,
                        }),
                    ))
                })
                .collect(),
        )
    }

    /// The bucket of `user`, if it has a limit.
    pub fn of(&self, user: &str) -> Option<Arc<UserRate>> {
        self.0.get(user).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_refuses() {
        let per_second = NonZeroU32::new(5).unwrap();
        let rate = UserRate {
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            per_second,
        };
        let allowed = (0..20).filter(|_| rate.allows()).count();
        assert!((5..=6).contains(&allowed), "{allowed} of a burst of 20");
    }
}
