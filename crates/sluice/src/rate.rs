//! Per-user statement rate limits (`[[users]] max_statements_per_second`): a token bucket
//! shared by all of a user's clients, so one runaway function cannot flood the database on
//! behalf of an application; statements over the rate are refused, not queued, and the
//! client may retry. A reload replaces the limits; each statement looks its user's bucket
//! up, so connected clients follow the new rate at once.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
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

type Buckets = HashMap<String, Arc<UserRate>>;

/// The buckets of the users that have a limit, by login name.
#[derive(Debug, Default)]
pub struct RateLimits(ArcSwap<Buckets>);

impl RateLimits {
    /// One bucket per configured user with `max_statements_per_second`.
    pub fn new(settings: &Settings) -> RateLimits {
        RateLimits(ArcSwap::from_pointee(buckets(settings, &Buckets::new())))
    }

    /// Takes the limits of `settings` (a reload): a user whose rate is unchanged keeps its
    /// bucket (and what it has used of it); the others start with a full new one.
    pub fn reload(&self, settings: &Settings) {
        self.0.store(Arc::new(buckets(settings, &self.0.load())));
    }

    /// The bucket of `user`, if it has a limit.
    pub fn of(&self, user: &str) -> Option<Arc<UserRate>> {
        self.0.load().get(user).cloned()
    }
}

/// A bucket for each user of `settings` with a limit, the one in `kept` when its rate is
/// the same.
fn buckets(settings: &Settings, kept: &Buckets) -> Buckets {
    settings
        .users
        .iter()
        .filter_map(|(name, user)| {
            let per_second = user.max_statements_per_second?;
            let bucket = match kept.get(name) {
                Some(bucket) if bucket.per_second == per_second => bucket.clone(),
                _ => Arc::new(UserRate {
                    limiter: RateLimiter::direct(Quota::per_second(per_second)),
                    per_second,
                }),
            };
            Some((name.clone(), bucket))
        })
        .collect()
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

    fn settings(rates: &[(&str, Option<u32>)]) -> Settings {
        let config = crate::config::Config {
            users: rates
                .iter()
                .map(|(name, rate)| crate::config::UserConfig {
                    name: (*name).into(),
                    backend: Some(crate::config::SharedBackend::Shared),
                    max_statements_per_second: *rate,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        config.validate("test").unwrap()
    }

    #[test]
    fn a_reload_keeps_unchanged_buckets_and_replaces_the_others() {
        let limits = RateLimits::new(&settings(&[("a", Some(5)), ("b", Some(5)), ("c", None)]));
        let (a, b) = (limits.of("a").unwrap(), limits.of("b").unwrap());
        limits.reload(&settings(&[("a", Some(5)), ("b", Some(9)), ("c", Some(2))]));
        assert!(
            Arc::ptr_eq(&a, &limits.of("a").unwrap()),
            "same rate, same bucket"
        );
        assert_eq!(limits.of("b").unwrap().per_second.get(), 9);
        assert!(!Arc::ptr_eq(&b, &limits.of("b").unwrap()));
        assert_eq!(limits.of("c").unwrap().per_second.get(), 2);
        limits.reload(&settings(&[("a", None)]));
        assert!(limits.of("a").is_none() && limits.of("b").is_none());
    }
}
