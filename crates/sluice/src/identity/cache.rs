//! The auth query's cache: what the database said about a user name, for a while.
//!
//! Reading accounts costs a database round trip on a pooled connection, so each name's
//! accounts are kept for `auth.cache_ttl`, and a name the database does not know for
//! `auth.unknown_user_ttl`. A proof the kept accounts refuse is checked again against a
//! fresh read at once, so a password changed on the database takes effect with the next
//! login, not after the TTL. The cache holds at most `auth.cache_size` names (least recently
//! used forgotten first); logins that need the same name while it is being read wait for
//! that one read; and at most a few reads run at once, so a flood of made-up names takes
//! only a share of the pool and costs the database one query per name and period.
//!
//! Only stored hashes (`SHA1(SHA1(password))`) are kept, never a password.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lru::LruCache;
use prometheus::IntCounterVec;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};
use tokio::time::Instant;

use super::accounts::Account;
use super::Denied;

/// Where accounts are read from: the database through the auth query (a fake in tests).
pub trait Directory: Send + Sync {
    /// Every account of `user`, none for a name the database does not know; `Err` when
    /// they could not be read (the directory logs why).
    fn accounts(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<Account>, LookupFailed>> + Send;
}

/// The directory could not be read; it logged why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupFailed;

/// How long entries are trusted and how much the cache may hold or read at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Accounts of a known user are trusted this long.
    pub ttl: Duration,
    /// A name without accounts is refused without asking again this long.
    pub unknown_ttl: Duration,
    /// Most names kept.
    pub capacity: NonZeroUsize,
    /// Most reads running at once.
    pub concurrent_reads: usize,
}

/// A check's outcome and the accounts it was judged by (for the log of a refusal).
#[derive(Debug)]
pub struct Verdict<T> {
    /// What the check said.
    pub result: Result<T, Denied>,
    /// The accounts it looked at.
    pub accounts: Arc<[Account]>,
}

#[derive(Clone)]
struct Entry {
    accounts: Arc<[Account]>,
    read_at: Instant,
    /// Which read this was: a login that found these accounts wanting re-reads only if no
    /// later read has replaced them meanwhile.
    generation: u64,
}

/// Accounts by user name, read from a [`Directory`] when missing, expired or refused.
pub struct AccountCache<D> {
    directory: D,
    limits: Limits,
    entries: Mutex<LruCache<String, Entry>>,
    flights: Flights,
    reads: Semaphore,
    generations: AtomicU64,
    /// `sluice_auth_query_lookups_total{result}`.
    lookups: IntCounterVec,
}

impl<D: Directory> AccountCache<D> {
    /// An empty cache over `directory`, counting lookups by result in `lookups`.
    pub fn new(directory: D, limits: Limits, lookups: IntCounterVec) -> AccountCache<D> {
        AccountCache {
            directory,
            entries: Mutex::new(LruCache::new(limits.capacity)),
            flights: Flights::default(),
            reads: Semaphore::new(limits.concurrent_reads.max(1)),
            generations: AtomicU64::new(0),
            limits,
            lookups,
        }
    }

    /// Runs `check` on `user`'s accounts: the kept ones while fresh, unless they fail it
    /// (then on a fresh read, or on the kept ones again if that read fails). Names without
    /// accounts are not read again before `unknown_ttl`. `Err` only when nothing was kept
    /// and the read failed.
    pub async fn verify<T>(
        &self,
        user: &str,
        check: impl Fn(&[Account]) -> Result<T, Denied>,
    ) -> Result<Verdict<T>, LookupFailed> {
        let mut kept = None;
        if let Some(entry) = self.fresh(user) {
            let result = check(&entry.accounts);
            if result.is_ok() || entry.accounts.is_empty() {
                self.count(kept_result(&entry));
                return Ok(Verdict {
                    result,
                    accounts: entry.accounts,
                });
            }
            kept = Some((entry, result));
        }
        let stale = kept.as_ref().map(|(entry, _)| entry.generation);
        match self.read(user, stale).await {
            Ok(accounts) => Ok(Verdict {
                result: check(&accounts),
                accounts,
            }),
            Err(failed) => match kept {
                Some((entry, result)) => Ok(Verdict {
                    result,
                    accounts: entry.accounts,
                }),
                None => Err(failed),
            },
        }
    }

    /// The accounts of `user` read after generation `stale` (any, when `None`): one another
    /// login read while this one waited its turn, or a new read.
    async fn read(&self, user: &str, stale: Option<u64>) -> Result<Arc<[Account]>, LookupFailed> {
        let _flight = self.flights.join(user).await;
        let newer = self
            .fresh(user)
            .filter(|entry| stale.is_none_or(|old| entry.generation > old));
        if let Some(entry) = newer {
            self.count(kept_result(&entry));
            return Ok(entry.accounts);
        }
        let _permit = self.reads.acquire().await.map_err(|_| LookupFailed)?;
        match self.directory.accounts(user).await {
            Ok(accounts) => {
                self.count(if stale.is_some() { "reread" } else { "read" });
                let accounts: Arc<[Account]> = accounts.into();
                let entry = Entry {
                    accounts: accounts.clone(),
                    read_at: Instant::now(),
                    generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
                };
                self.entries().put(user.to_owned(), entry);
                Ok(accounts)
            }
            Err(failed) => {
                self.count("failed");
                Err(failed)
            }
        }
    }

    /// The entry of `user` if it is still to be trusted; an expired one is dropped.
    fn fresh(&self, user: &str) -> Option<Entry> {
        let mut entries = self.entries();
        let entry = entries.get(user)?;
        let ttl = if entry.accounts.is_empty() {
            self.limits.unknown_ttl
        } else {
            self.limits.ttl
        };
        if entry.read_at.elapsed() < ttl {
            return Some(entry.clone());
        }
        entries.pop(user);
        None
    }

    fn entries(&self) -> MutexGuard<'_, LruCache<String, Entry>> {
        // A panic while holding this lock would be a bug; the entries stay usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, result: &str) {
        self.lookups.with_label_values(&[result]).inc();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// The lookup result of an answer from a kept entry.
fn kept_result(entry: &Entry) -> &'static str {
    if entry.accounts.is_empty() {
        "unknown_hit"
    } else {
        "hit"
    }
}

/// One read at a time per user name: logins that need a name being read wait for that read
/// instead of repeating it.
#[derive(Default)]
struct Flights {
    gates: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// A turn at reading one name; the name's gate is forgotten when the last turn ends.
struct Flight<'a> {
    // Dropped first, so that `ticket` sees only the gates still held by others.
    _turn: tokio::sync::OwnedMutexGuard<()>,
    _ticket: Ticket<'a>,
}

/// A claim on a name's gate, released (under the map's lock) when dropped, whether the
/// turn came or the waiting login gave up.
struct Ticket<'a> {
    flights: &'a Flights,
    user: String,
    gate: Option<Arc<AsyncMutex<()>>>,
}

impl Flights {
    fn gates(&self) -> MutexGuard<'_, HashMap<String, Arc<AsyncMutex<()>>>> {
        self.gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for the turn to read `user`.
    async fn join(&self, user: &str) -> Flight<'_> {
        let gate = self.gates().entry(user.to_owned()).or_default().clone();
        let ticket = Ticket {
            flights: self,
            user: user.to_owned(),
            gate: Some(gate.clone()),
        };
        Flight {
            _turn: gate.lock_owned().await,
            _ticket: ticket,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.gates().len()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut gates = self.flights.gates();
        drop(self.gate.take());
        // Every other holder of the gate holds a ticket too, released under this lock, so
        // the count is exact: one means only the map still knows it.
        if gates
            .get(&self.user)
            .is_some_and(|gate| Arc::strong_count(gate) == 1)
        {
            gates.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use prometheus::Opts;
    use sluice_protocol::auth::{new_salt, scramble_native, NativeHash, Proven};

    use super::*;
    use crate::identity::accounts::check;

    /// Accounts in memory, counting reads and how many run at once.
    #[derive(Default)]
    struct Fake {
        passwords: Mutex<HashMap<String, String>>,
        reads: AtomicUsize,
        running: AtomicUsize,
        most_running: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        fn set(&self, user: &str, password: &str) {
            self.passwords
                .lock()
                .unwrap()
                .insert(user.into(), password.into());
        }
        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    impl Directory for Arc<Fake> {
        async fn accounts(&self, user: &str) -> Result<Vec<Account>, LookupFailed> {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(LookupFailed);
            }
            let passwords = self.passwords.lock().unwrap();
            Ok(passwords
                .get(user)
                .map(|password| {
                    let hash = NativeHash::from_password(password.as_bytes()).to_hex();
                    vec![Account::new(
                        "%",
                        Some("mysql_native_password"),
                        Some(&hash),
                    )]
                })
                .unwrap_or_default())
        }
    }

    const TTL: Duration = Duration::from_secs(60);
    const UNKNOWN_TTL: Duration = Duration::from_secs(5);

    fn cache(capacity: usize) -> (Arc<Fake>, AccountCache<Arc<Fake>>) {
        let fake = Arc::new(Fake::default());
        let lookups = IntCounterVec::new(Opts::new("lookups", "test"), &["result"]).unwrap();
        let limits = Limits {
            ttl: TTL,
            unknown_ttl: UNKNOWN_TTL,
            capacity: NonZeroUsize::new(capacity).unwrap(),
            concurrent_reads: 2,
        };
        (fake.clone(), AccountCache::new(fake, limits, lookups))
    }

    /// Logs `user` in with `password` through `cache`.
    async fn login(
        cache: &AccountCache<Arc<Fake>>,
        user: &str,
        password: &str,
    ) -> Result<Proven, Denied> {
        let salt = new_salt();
        let proof = scramble_native(&salt, password.as_bytes()).unwrap();
        cache
            .verify(user, |accounts| check(accounts, &salt, &proof))
            .await
            .map_err(|_| Denied::Unavailable)?
            .result
    }

    fn lookups(cache: &AccountCache<Arc<Fake>>, result: &str) -> u64 {
        cache.lookups.with_label_values(&[result]).get()
    }

    #[tokio::test(start_paused = true)]
    async fn accounts_are_kept_for_the_ttl() {
        let (fake, cache) = cache(10);
        fake.set("app", "pw");
        assert!(login(&cache, "app", "pw").await.is_ok());
        assert!(login(&cache, "app", "pw").await.is_ok());
        assert_eq!(fake.reads(), 1);
        assert_eq!((lookups(&cache, "read"), lookups(&cache, "hit")), (1, 1));
        tokio::time::advance(TTL).await;
        assert!(login(&cache, "app", "pw").await.is_ok());
        assert_eq!(fake.reads(), 2, "expired accounts are read again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_proof_reads_again_at_once() {
        let (fake, cache) = cache(10);
        fake.set("app", "old");
        assert!(login(&cache, "app", "old").await.is_ok());
        fake.set("app", "new");
        assert!(
            login(&cache, "app", "new").await.is_ok(),
            "new password at once"
        );
        assert_eq!(fake.reads(), 2);
        assert_eq!(
            login(&cache, "app", "old").await,
            Err(Denied::BadPassword),
            "the old password fails after its own re-read"
        );
        assert_eq!(fake.reads(), 3);
        assert_eq!(lookups(&cache, "reread"), 2);
        // A failed re-read judges by the kept accounts.
        fake.down.store(true, Ordering::SeqCst);
        assert_eq!(login(&cache, "app", "old").await, Err(Denied::BadPassword));
        assert!(login(&cache, "app", "new").await.is_ok());
        assert_eq!(lookups(&cache, "failed"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_names_are_refused_without_asking_for_a_while() {
        let (fake, cache) = cache(10);
        for _ in 0..5 {
            assert_eq!(login(&cache, "ghost", "x").await, Err(Denied::UnknownUser));
        }
        assert_eq!(fake.reads(), 1);
        assert_eq!(lookups(&cache, "unknown_hit"), 4);
        // Created meanwhile: known once the negative entry expires.
        fake.set("ghost", "x");
        assert_eq!(login(&cache, "ghost", "x").await, Err(Denied::UnknownUser));
        tokio::time::advance(UNKNOWN_TTL).await;
        assert!(login(&cache, "ghost", "x").await.is_ok());
        assert_eq!(fake.reads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_forgets_the_least_recently_used_name() {
        let (fake, cache) = cache(2);
        for user in ["a", "b", "c"] {
            fake.set(user, "pw");
        }
        for user in ["a", "b", "a", "c"] {
            assert!(login(&cache, user, "pw").await.is_ok());
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(fake.reads(), 3);
        assert!(login(&cache, "a", "pw").await.is_ok(), "a was used last");
        assert_eq!(fake.reads(), 3);
        assert!(login(&cache, "b", "pw").await.is_ok(), "b was forgotten");
        assert_eq!(fake.reads(), 4);
        // Made-up names are bounded the same way.
        for i in 0..100 {
            let _ = login(&cache, &format!("ghost{i}"), "x").await;
        }
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_logins_of_one_name_share_a_read() {
        let (fake, cache) = cache(10);
        fake.set("app", "pw");
        let cache = Arc::new(cache);
        let logins: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { login(&cache, "app", "pw").await.is_ok() })
            })
            .collect();
        for login in logins {
            assert!(login.await.unwrap());
        }
        assert_eq!(fake.reads(), 1);
        assert_eq!(cache.flights.len(), 0, "no gate outlives its reads");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_of_many_names_run_a_few_at_a_time() {
        let (fake, cache) = cache(100);
        let cache = Arc::new(cache);
        let logins: Vec<_> = (0..20)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move { login(&cache, &format!("u{i}"), "pw").await })
            })
            .collect();
        for login in logins {
            assert_eq!(login.await.unwrap(), Err(Denied::UnknownUser));
        }
        assert_eq!(fake.reads(), 20);
        assert_eq!(fake.most_running.load(Ordering::SeqCst), 2);
        assert_eq!(cache.flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_that_gives_up_waiting_leaves_no_gate() {
        let (fake, cache) = cache(10);
        fake.set("app", "pw");
        let cache = Arc::new(cache);
        let first = tokio::spawn({
            let cache = cache.clone();
            async move { login(&cache, "app", "pw").await }
        });
        tokio::task::yield_now().await;
        let waiting = tokio::time::timeout(Duration::from_millis(1), login(&cache, "app", "pw"));
        assert!(waiting.await.is_err(), "gave up while the first read ran");
        assert!(first.await.unwrap().is_ok());
        assert_eq!(cache.flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_kept_and_nothing_read_is_unavailable() {
        let (fake, cache) = cache(10);
        fake.down.store(true, Ordering::SeqCst);
        assert_eq!(login(&cache, "app", "pw").await, Err(Denied::Unavailable));
        assert_eq!(cache.len(), 0, "a failed read is not kept");
    }
}
