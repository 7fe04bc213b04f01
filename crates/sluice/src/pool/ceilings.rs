//! Per database user ceilings (`pool.max_db_connections_per_user`): one fair semaphore per
//! user, with a permit per connection it may have lent at once. A reload may change the
//! ceiling while connections are lent, so resizing lives here, next to the semaphores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Semaphore;

/// The ceiling and each user's semaphore under it (made on the user's first borrow).
pub struct Ceilings(Mutex<State>);

struct State {
    max: Option<usize>,
    users: HashMap<String, Arc<Semaphore>>,
}

impl Ceilings {
    /// Ceilings of `max` connections per user (`None`: no ceiling).
    pub fn new(max: Option<usize>) -> Ceilings {
        Ceilings(Mutex::new(State {
            max,
            users: HashMap::new(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ceiling now and `user`'s semaphore under it; `None` when there is no ceiling.
    pub fn of(&self, user: &str) -> Option<(usize, Arc<Semaphore>)> {
        let mut state = self.state();
        let max = state.max?;
        let permits = state
            .users
            .entry(user.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone();
        Some((max, permits))
    }

    /// Changes the ceiling to `max`. Raised, every user may borrow more at once. Lowered,
    /// the difference is taken back as lent connections come back, in line with the user's
    /// borrowers, so none gets a connection until the user is under the new ceiling. Set
    /// where there was none, or removed, users start afresh: connections lent under the old
    /// rule are not counted against the new one.
    pub fn set(&self, max: Option<usize>) {
        let mut state = self.state();
        match (state.max, max) {
            (Some(old), Some(new)) if new > old => {
                for permits in state.users.values() {
                    permits.add_permits(new - old);
                }
            }
            (Some(old), Some(new)) if new < old => {
                let fewer = u32::try_from(old - new).unwrap_or(u32::MAX);
                for permits in state.users.values() {
                    let permits = permits.clone();
                    tokio::spawn(async move {
                        if let Ok(taken) = permits.acquire_many_owned(fewer).await {
                            taken.forget();
                        }
                    });
                }
            }
            (Some(_), Some(_)) => {}
            _ => state.users.clear(),
        }
        state.max = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lowered_ceiling_waits_for_lent_connections_and_a_raised_one_applies_at_once() {
        let ceilings = Ceilings::new(Some(3));
        let (_, permits) = ceilings.of("app").unwrap();
        let lent: Vec<_> = (0..3)
            .map(|_| permits.clone().try_acquire_owned().unwrap())
            .collect();
        ceilings.set(Some(1));
        tokio::task::yield_now().await;
        drop(lent);
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 1, "two of three taken back");
        ceilings.set(Some(4));
        assert_eq!(permits.available_permits(), 4);
        assert_eq!(ceilings.of("app").unwrap().0, 4);
        ceilings.set(None);
        assert!(ceilings.of("app").is_none());
        ceilings.set(Some(2));
        let (max, fresh) = ceilings.of("app").unwrap();
        assert_eq!((max, fresh.available_permits()), (2, 2), "a fresh start");
    }
}
