//! Who may hold a socket: logins in progress, then authenticated clients.
//!
//! An unauthenticated socket costs sluice a file descriptor, a task and buffers, and anyone
//! who can reach the port can open one. So logins in progress are capped
//! (`max_pending_logins`) and, at the cap, the **oldest** pending login is dropped to make
//! room: a legitimate client finishes its login in milliseconds, so a flood of silent
//! sockets can only lock it out by opening sockets faster than it logs in. A client takes a
//! `max_client_connections` seat only once authenticated, so silent sockets never hold one,
//! and a seat of its user's own `max_client_connections` when that user has one.
//!
//! Failed logins are throttled per source address and user ([`LoginThrottle`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus::IntGauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The logins in progress and the seats of authenticated clients.
pub struct Admission {
    pending: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next_pending: std::sync::atomic::AtomicU64,
    max_pending: usize,
    max_clients: usize,
    seats: Arc<Semaphore>,
    /// Authenticated clients of each user that has its own limit.
    per_user: Mutex<HashMap<String, usize>>,
    pending_gauge: IntGauge,
}

/// A login in progress; dropping it leaves the pending set.
pub struct PendingLogin {
    admission: Arc<Admission>,
    key: u64,
    evicted: Arc<Notify>,
}

impl PendingLogin {
    /// Completes when a newer socket needed this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        let mut pending = self.admission.pending();
        pending.remove(&self.key);
        self.admission.pending_gauge.set(pending.len() as i64);
    }
}

/// An authenticated client's place under `max_client_connections`, and under its user's
/// own limit if it has one; dropping it frees both.
pub struct Seat {
    _global: OwnedSemaphorePermit,
    user: Option<(Arc<Admission>, String)>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some((admission, user)) = self.user.take() {
            let mut per_user = admission.per_user();
            if let Some(count) = per_user.get_mut(&user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_user.remove(&user);
                }
            }
        }
    }
}

/// Why an authenticated client got no seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSeat {
    /// sluice holds `max_client_connections` clients.
    Full,
    /// The user holds its own `max_client_connections` (the number).
    UserFull(usize),
}

impl Admission {
    /// Room for `max_pending` logins in progress (their number shown in `pending_gauge`)
    /// and `max_clients` authenticated clients.
    pub fn new(max_pending: usize, max_clients: usize, pending_gauge: IntGauge) -> Arc<Admission> {
        Arc::new(Admission {
            pending: Mutex::new(BTreeMap::new()),
            next_pending: std::sync::atomic::AtomicU64::new(0),
            max_pending,
            max_clients,
            seats: Arc::new(Semaphore::new(max_clients)),
            per_user: Mutex::default(),
            pending_gauge,
        })
    }

    fn per_user(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.per_user.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new login; at the cap the oldest pending one is told to give up (it
    /// counts itself in `sluice_login_aborts_total`).
    pub fn begin_login(self: &Arc<Self>) -> PendingLogin {
        let key = self
            .next_pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut pending = self.pending();
        while pending.len() >= self.max_pending {
            let Some((_, oldest)) = pending.pop_first() else {
                break;
            };
            // `notify_one` stores the wake-up if the login is not waiting on it yet.
            oldest.notify_one();
        }
        pending.insert(key, evicted.clone());
        self.pending_gauge.set(pending.len() as i64);
        drop(pending);
        PendingLogin {
            admission: self.clone(),
            key,
            evicted,
        }
    }

    /// Sockets still logging in plus authenticated clients: what a drain waits for.
    pub fn occupied(&self) -> usize {
        self.pending().len() + (self.max_clients - self.seats.available_permits())
    }

    /// A seat for an authenticated client of `user`, if `max_client_connections` allows
    /// one more, and the user's own `user_max` too.
    pub fn seat(self: &Arc<Self>, user: &str, user_max: Option<usize>) -> Result<Seat, NoSeat> {
        let global = self
            .seats
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSeat::Full)?;
        let Some(max) = user_max else {
            return Ok(Seat {
                _global: global,
                user: None,
            });
        };
        let mut per_user = self.per_user();
        let count = per_user.entry(user.to_owned()).or_default();
        if *count >= max {
            return Err(NoSeat::UserFull(max));
        }
        *count += 1;
        Ok(Seat {
            _global: global,
            user: Some((self.clone(), user.to_owned())),
        })
    }
}

/// Delays answers to failed logins, per source address and user, doubling with each
/// failure up to a cap, so a password cannot be guessed at the speed of the hash check.
/// Concurrent attempts see the same (growing) delay, so parallel sockets do not escape it;
/// a success clears the record. Bounded: the least recently failed pairs are forgotten.
pub struct LoginThrottle {
    failures: Mutex<LruCache<(IpAddr, String), Failures>>,
    first_delay: Duration,
    max_delay: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Pairs (address, user) whose failures are remembered.
const THROTTLE_ENTRIES: usize = 100_000;

impl LoginThrottle {
    /// Delays start at `first_delay` and double up to `max_delay` (zero turns throttling off).
    /// A pair's record is forgotten once it has not failed for a while (see `delay`).
    pub fn new(first_delay: Duration, max_delay: Duration) -> LoginThrottle {
        LoginThrottle {
            failures: Mutex::new(LruCache::new(
                NonZeroUsize::new(THROTTLE_ENTRIES).expect("non-zero"),
            )),
            first_delay,
            max_delay,
        }
    }

    fn failures(&self) -> MutexGuard<'_, LruCache<(IpAddr, String), Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long to wait before checking a login of `user` from `ip`: nothing for a pair
    /// without recent failures.
    pub fn delay(&self, ip: IpAddr, user: &str) -> Duration {
        let key = (ip, user.to_owned());
        let mut failures = self.failures();
        let Some(record) = failures.peek(&key).copied() else {
            return Duration::ZERO;
        };
        let delay = self.delay_after(record.count);
        // Quiet for well past the longest delay: start over.
        if record.last.elapsed() > self.max_delay * 10 + Duration::from_secs(60) {
            failures.pop(&key);
            return Duration::ZERO;
        }
        delay
    }

    fn delay_after(&self, count: u32) -> Duration {
        if count == 0 {
            return Duration::ZERO;
        }
        let doublings = (count - 1).min(20);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// Records a failed login of `user` from `ip`.
    pub fn failed(&self, ip: IpAddr, user: &str) {
        let mut failures = self.failures();
        let key = (ip, user.to_owned());
        let count = failures.peek(&key).map_or(0, |r| r.count);
        failures.put(
            key,
            Failures {
                count: count.saturating_add(1),
                last: Instant::now(),
            },
        );
    }

    /// Forgets the failures of `user` from `ip` after it logged in.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut failures = self.failures();
        if !failures.is_empty() {
            failures.pop(&(ip, user.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_login_makes_room_for_a_new_one() {
        let gauge = IntGauge::new("t", "t").unwrap();
        let admission = Admission::new(2, 10, gauge.clone());
        let first = admission.begin_login();
        let _second = admission.begin_login();
        assert_eq!(gauge.get(), 2);
        let _third = admission.begin_login();
        assert_eq!(gauge.get(), 2, "the cap of 2 was kept");
        // The first login was told, even though it was not waiting yet.
        let told = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_millis(100), first.evicted())
                    .await
                    .is_ok()
            });
        assert!(told);
        drop(first);
        assert_eq!(gauge.get(), 2, "dropping an evicted login is a no-op");
    }

    #[test]
    fn seats_are_limited() {
        let admission = Admission::new(1, 2, IntGauge::new("t", "t").unwrap());
        let a = admission.seat("u", None);
        let b = admission.seat("u", None);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(admission.seat("u", None).err(), Some(NoSeat::Full));
        let _login = admission.begin_login();
        assert_eq!(admission.occupied(), 3);
        drop(a);
        assert!(admission.seat("u", None).is_ok());
    }

    #[test]
    fn a_user_with_its_own_limit_gets_no_more_seats_and_others_do() {
        let admission = Admission::new(1, 10, IntGauge::new("t", "t").unwrap());
        let a = admission.seat("capped", Some(2)).unwrap();
        let _b = admission.seat("capped", Some(2)).unwrap();
        assert_eq!(
            admission.seat("capped", Some(2)).err(),
            Some(NoSeat::UserFull(2))
        );
        assert!(admission.seat("other", Some(2)).is_ok());
        drop(a);
        assert!(admission.seat("capped", Some(2)).is_ok());
        assert!(
            admission.per_user().get("other").is_none(),
            "dropped seats leave no count"
        );
    }

    #[test]
    fn failed_logins_double_the_delay_up_to_the_cap_and_success_clears_it() {
        let throttle = LoginThrottle::new(Duration::from_millis(100), Duration::from_millis(500));
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(throttle.delay(ip, "app"), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..5 {
            throttle.failed(ip, "app");
            seen.push(throttle.delay(ip, "app").as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 500, 500]);
        // Other users and other addresses are not slowed down.
        assert_eq!(throttle.delay(ip, "other"), Duration::ZERO);
        assert_eq!(throttle.delay([10, 0, 0, 2].into(), "app"), Duration::ZERO);
        throttle.succeeded(ip, "app");
        assert_eq!(throttle.delay(ip, "app"), Duration::ZERO);
    }

    #[test]
    fn a_zero_cap_turns_throttling_off() {
        let throttle = LoginThrottle::new(Duration::from_millis(100), Duration::ZERO);
        let ip: IpAddr = [10, 0, 0, 1].into();
        throttle.failed(ip, "app");
        assert_eq!(throttle.delay(ip, "app"), Duration::ZERO);
    }
}
