//! The line borrowers wait in for a database connection: one lane per application (client
//! user), weighted fair across lanes, first come first served within one.
//!
//! One shared pool serves every application, so a hot function could otherwise take every
//! connection and keep a quiet one waiting behind its own queue. Each lane has a
//! [`Quota`]: a floor of connections reserved for it (others never take the last ones it
//! may need), a ceiling it never passes, and a weight. When a connection comes back it goes
//! to a waiting lane below its floor, else to the one holding the fewest connections for
//! its weight, so free capacity is shared in proportion to the weights between the floors
//! and the ceilings; among those holding equally, to the one served least lately for its
//! weight (start-time fair queueing: each grant moves a lane's tag on by 1/weight, and a
//! lane that starts waiting starts at the tag of the last grant), so a quiet user is
//! served next rather than behind a hot user's whole queue.
//!
//! A [`Ticket`] is the right to hold one connection (lent out or being opened); the pool's
//! slots, not tickets, bound the connections that exist.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

/// How much of the pool one application may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Connections reserved for it: others are refused a connection that would leave
    /// fewer free than its floor still needs (`[[users]] min_connections`).
    pub min: usize,
    /// Most connections it may hold at once (`[[users]] max_connections`).
    pub max: Option<usize>,
    /// Its share of capacity above the floors relative to other waiting lanes.
    pub weight: u32,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota {
            min: 0,
            max: None,
            weight: 1,
        }
    }
}

/// Whose lane a borrower waits in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LaneKey {
    /// sluice's own statements (authentication queries, kills, probes): no quota.
    Sluice,
    /// A client user (an application) by login name.
    App(Arc<str>),
}

impl LaneKey {
    /// The lane of the client user `name`.
    pub fn app(name: &str) -> LaneKey {
        LaneKey::App(Arc::from(name))
    }
}

/// Why a borrower got no ticket by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its application held its ceiling the whole time it would have been served.
    Ceiling(usize),
    /// Every connection stayed lent (or reserved for others).
    Exhausted,
}

/// One application's use of the line, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneStats {
    /// The client user; `None` for sluice's own statements.
    pub user: Option<String>,
    /// Connections it holds now.
    pub borrowed: usize,
    /// Borrowers of it waiting now.
    pub waiting: usize,
    /// Its reserved connections.
    pub min_connections: usize,
    /// Its ceiling, if any.
    pub max_connections: Option<usize>,
    /// Its weight.
    pub weight: u32,
}

/// The right to hold one connection; dropping it gives the place to the next borrower.
pub struct Ticket {
    /// `None` once given back (a ticket refused by a borrower that left).
    line: Option<Arc<Shared>>,
    lane: LaneKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            let mut lines = line.lock();
            lines.returned(&self.lane);
            lines.dispatch(&line);
        }
    }
}

/// The line. Cheap to clone; every clone is the same line.
#[derive(Clone)]
pub struct Line {
    shared: Arc<Shared>,
}

struct Shared {
    lines: Mutex<Lines>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // No code path panics while holding it; if one did, serve on with the data as is.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A borrower waiting in a lane.
struct Waiter {
    /// Arrival order across all lanes, to break ties between equally served lanes.
    seq: u64,
    give: oneshot::Sender<Ticket>,
}

#[derive(Default)]
struct Lane {
    borrowed: usize,
    waiting: VecDeque<Waiter>,
    /// The virtual time of its next grant (see [`Lines::now`]).
    tag: u64,
}

/// One grant's worth of virtual time at weight 1; divisible by every weight up to 16.
const GRANT: u64 = 720_720;

struct Lines {
    /// Tickets that may be out at once (the pool's budget).
    capacity: usize,
    /// Tickets out now, all lanes together.
    out: usize,
    /// Quotas of configured applications; others get the default.
    quotas: HashMap<LaneKey, Quota>,
    /// The lanes with a floor, and their floors' sum: what every grant checks, kept apart
    /// so a check costs the few floors, not every configured user.
    floored: Vec<LaneKey>,
    floors_total: usize,
    /// Lanes with a ticket out or a waiter; empty ones are removed.
    lanes: HashMap<LaneKey, Lane>,
    next_seq: u64,
    /// Virtual time: the tag of the last grant. A lane that starts waiting starts here, so
    /// it neither jumps the line with credit saved while quiet nor queues behind the
    /// service others received before it came.
    now: u64,
}

impl Lines {
    fn quota(&self, key: &LaneKey) -> Quota {
        self.quotas.get(key).copied().unwrap_or_default()
    }

    fn borrowed(&self, key: &LaneKey) -> usize {
        self.lanes.get(key).map_or(0, |l| l.borrowed)
    }

    /// The floor `key` is owed now: its `min`, scaled down in proportion when a smaller
    /// budget cannot honour every floor in full.
    fn floor(&self, key: &LaneKey) -> usize {
        let min = self.quota(key).min;
        if self.floors_total <= self.capacity {
            min
        } else {
            min * self.capacity / self.floors_total
        }
    }

    /// Replaces the quotas and what is derived from them.
    fn set_quotas(&mut self, quotas: HashMap<LaneKey, Quota>) {
        self.floored = quotas
            .iter()
            .filter(|(_, q)| q.min > 0)
            .map(|(k, _)| k.clone())
            .collect();
        self.floors_total = quotas.values().map(|q| q.min).sum();
        self.quotas = quotas;
    }

    /// Reserved connections that lanes other than `key` have not taken yet.
    fn reserved_for_others(&self, key: &LaneKey) -> usize {
        self.floored
            .iter()
            .filter(|k| *k != key)
            .map(|k| self.floor(k).saturating_sub(self.borrowed(k)))
            .sum()
    }

    /// Whether `key` may take a ticket now: room under the budget not reserved for
    /// others, and room under its own ceiling.
    fn may_take(&self, key: &LaneKey) -> bool {
        let free = self.capacity.saturating_sub(self.out);
        let under_ceiling = self
            .quota(key)
            .max
            .is_none_or(|max| self.borrowed(key) < max);
        under_ceiling && free > self.reserved_for_others(key)
    }

    fn take(&mut self, key: &LaneKey) {
        let step = GRANT / u64::from(self.quota(key).weight.max(1));
        let now = self.now;
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.borrowed += 1;
        lane.tag = lane.tag.max(now);
        self.now = lane.tag;
        lane.tag += step;
        self.out += 1;
    }

    fn returned(&mut self, key: &LaneKey) {
        self.out = self.out.saturating_sub(1);
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.borrowed = lane.borrowed.saturating_sub(1);
        }
        self.forget_if_empty(key);
    }

    fn forget_if_empty(&mut self, key: &LaneKey) {
        if self
            .lanes
            .get(key)
            .is_some_and(|l| l.borrowed == 0 && l.waiting.is_empty())
        {
            self.lanes.remove(key);
        }
    }

    /// The waiting lane to serve next, if any may take a ticket: below its floor first,
    /// then the fewest connections held per unit of weight, then the earliest tag, then
    /// the longest waiting.
    fn next_lane(&self) -> Option<LaneKey> {
        self.lanes
            .iter()
            .filter(|(key, lane)| !lane.waiting.is_empty() && self.may_take(key))
            .min_by(|(a_key, a), (b_key, b)| {
                let a_floor = a.borrowed >= self.floor(a_key);
                let b_floor = b.borrowed >= self.floor(b_key);
                let (a_weight, b_weight) = (
                    u64::from(self.quota(a_key).weight.max(1)),
                    u64::from(self.quota(b_key).weight.max(1)),
                );
                a_floor
                    .cmp(&b_floor)
                    .then((a.borrowed as u64 * b_weight).cmp(&(b.borrowed as u64 * a_weight)))
                    .then(a.tag.max(self.now).cmp(&b.tag.max(self.now)))
                    .then(a.waiting[0].seq.cmp(&b.waiting[0].seq))
            })
            .map(|(key, _)| key.clone())
    }

    /// Hands tickets to waiters while some lane may take one.
    fn dispatch(&mut self, shared: &Arc<Shared>) {
        while let Some(key) = self.next_lane() {
            let Some(waiter) = self
                .lanes
                .get_mut(&key)
                .and_then(|lane| lane.waiting.pop_front())
            else {
                break;
            };
            self.take(&key);
            let ticket = Ticket {
                line: Some(shared.clone()),
                lane: key.clone(),
            };
            if let Err(mut unwanted) = waiter.give.send(ticket) {
                // The borrower left this instant: undo here, the lock is ours already.
                unwanted.line = None;
                self.returned(&key);
            }
        }
    }
}

/// Takes a waiter out of its lane if it leaves before being served (timeout, or its
/// client went away), so lanes hold only live borrowers.
struct Place<'a> {
    line: &'a Line,
    lane: LaneKey,
    seq: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.line.shared.lock();
        if let Some(lane) = lines.lanes.get_mut(&self.lane) {
            lane.waiting.retain(|w| w.seq != self.seq);
        }
        lines.forget_if_empty(&self.lane);
    }
}

impl Line {
    /// A line for `capacity` connections with `quotas` for the applications named there.
    pub fn new(capacity: usize, quotas: HashMap<LaneKey, Quota>) -> Line {
        let mut lines = Lines {
            capacity,
            out: 0,
            quotas: HashMap::new(),
            floored: Vec::new(),
            floors_total: 0,
            lanes: HashMap::new(),
            next_seq: 0,
            now: 0,
        };
        lines.set_quotas(quotas);
        Line {
            shared: Arc::new(Shared {
                lines: Mutex::new(lines),
            }),
        }
    }

    /// Changes how many tickets may be out. A larger budget serves waiters at once; under
    /// a smaller one no ticket is handed out until enough come back.
    pub fn set_capacity(&self, capacity: usize) {
        let mut lines = self.shared.lock();
        lines.capacity = capacity;
        lines.dispatch(&self.shared);
    }

    /// Replaces the applications' quotas (a reload); tickets out stay out.
    pub fn set_quotas(&self, quotas: HashMap<LaneKey, Quota>) {
        let mut lines = self.shared.lock();
        lines.set_quotas(quotas);
        lines.dispatch(&self.shared);
    }

    /// A ticket for `lane`, waiting in line until `deadline`.
    pub async fn acquire(&self, lane: &LaneKey, deadline: Instant) -> Result<Ticket, Refused> {
        let (give, take) = oneshot::channel();
        let seq = {
            let mut lines = self.shared.lock();
            let nobody_ahead = lines.lanes.get(lane).is_none_or(|l| l.waiting.is_empty());
            if nobody_ahead && lines.may_take(lane) {
                lines.take(lane);
                return Ok(Ticket {
                    line: Some(self.shared.clone()),
                    lane: lane.clone(),
                });
            }
            let seq = lines.next_seq;
            lines.next_seq += 1;
            lines
                .lanes
                .entry(lane.clone())
                .or_default()
                .waiting
                .push_back(Waiter { seq, give });
            seq
        };
        let place = Place {
            line: self,
            lane: lane.clone(),
            seq,
        };
        let served = tokio::time::timeout_at(deadline.into(), take).await;
        drop(place);
        match served {
            Ok(Ok(ticket)) => Ok(ticket),
            _ => {
                let lines = self.shared.lock();
                match lines.quota(lane).max {
                    Some(max) if lines.borrowed(lane) >= max => Err(Refused::Ceiling(max)),
                    _ => Err(Refused::Exhausted),
                }
            }
        }
    }

    /// A ticket for sluice's own lane only if nobody waits and the budget has room left
    /// after every floor: for connections opened ahead of demand (`min_idle`), which must
    /// never delay a borrower.
    pub fn try_acquire_spare(&self) -> Option<Ticket> {
        let mut lines = self.shared.lock();
        let anyone_waits = lines.lanes.values().any(|l| !l.waiting.is_empty());
        if anyone_waits || !lines.may_take(&LaneKey::Sluice) {
            return None;
        }
        lines.take(&LaneKey::Sluice);
        Some(Ticket {
            line: Some(self.shared.clone()),
            lane: LaneKey::Sluice,
        })
    }

    /// Every lane in use or configured, applications by name, sluice's own last.
    pub fn lanes(&self) -> Vec<LaneStats> {
        let lines = self.shared.lock();
        let mut keys: Vec<&LaneKey> = lines.lanes.keys().chain(lines.quotas.keys()).collect();
        keys.sort_by(|a, b| match (a, b) {
            (LaneKey::App(a), LaneKey::App(b)) => a.cmp(b),
            (LaneKey::App(_), LaneKey::Sluice) => std::cmp::Ordering::Less,
            (LaneKey::Sluice, LaneKey::App(_)) => std::cmp::Ordering::Greater,
            (LaneKey::Sluice, LaneKey::Sluice) => std::cmp::Ordering::Equal,
        });
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let quota = lines.quota(key);
                LaneStats {
                    user: match key {
                        LaneKey::App(name) => Some(name.to_string()),
                        LaneKey::Sluice => None,
                    },
                    borrowed: lines.borrowed(key),
                    waiting: lines.lanes.get(key).map_or(0, |l| l.waiting.len()),
                    min_connections: quota.min,
                    max_connections: quota.max,
                    weight: quota.weight,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn app(name: &str) -> LaneKey {
        LaneKey::app(name)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn quotas(list: &[(&str, usize, Option<usize>, u32)]) -> HashMap<LaneKey, Quota> {
        list.iter()
            .map(|&(name, min, max, weight)| (app(name), Quota { min, max, weight }))
            .collect()
    }

    /// Starts a borrower of `lane` and lets it join the line before returning.
    async fn waiter(
        line: &Line,
        lane: LaneKey,
    ) -> tokio::task::JoinHandle<Result<Ticket, Refused>> {
        let line2 = line.clone();
        let handle = tokio::spawn(async move { line2.acquire(&lane, soon()).await });
        tokio::task::yield_now().await;
        handle
    }

    #[tokio::test]
    async fn within_a_lane_borrowers_are_served_in_arrival_order() {
        let line = Line::new(1, HashMap::new());
        let held = line.acquire(&app("a"), soon()).await.unwrap();
        let first = waiter(&line, app("a")).await;
        let second = waiter(&line, app("a")).await;
        drop(held);
        let got = first.await.unwrap().unwrap();
        assert!(!second.is_finished());
        drop(got);
        second.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_returned_connection_goes_to_the_lane_holding_fewer() {
        let line = Line::new(3, HashMap::new());
        let mut hot: Vec<Ticket> = Vec::new();
        for _ in 0..3 {
            hot.push(line.acquire(&app("hot"), soon()).await.unwrap());
        }
        // The hot lane queued first, the cold one after.
        let hot_waiter = waiter(&line, app("hot")).await;
        let cold_waiter = waiter(&line, app("cold")).await;
        hot.pop();
        let cold = cold_waiter.await.unwrap().unwrap();
        assert!(!hot_waiter.is_finished(), "cold holds none: it goes first");
        drop(cold);
        hot_waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_quiet_lane_goes_ahead_of_a_hot_lane_s_queue_on_one_connection() {
        let line = Line::new(1, HashMap::new());
        let held = line.acquire(&app("hot"), soon()).await.unwrap();
        let mut hot = Vec::new();
        for _ in 0..3 {
            hot.push(waiter(&line, app("hot")).await);
        }
        let quiet = waiter(&line, app("quiet")).await;
        drop(held);
        let served = quiet.await.unwrap().unwrap();
        assert!(hot.iter().all(|h| !h.is_finished()));
        drop(served);
        // Then the hot lane's queue, in its own order.
        let first = hot.remove(0).await.unwrap().unwrap();
        assert!(hot.iter().all(|h| !h.is_finished()));
        drop(first);
    }

    #[tokio::test]
    async fn weights_share_capacity_in_proportion() {
        let line = Line::new(4, quotas(&[("big", 0, None, 3), ("small", 0, None, 1)]));
        let mut big_waiters = Vec::new();
        let mut small_waiters = Vec::new();
        let blockers: Vec<Ticket> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(line.acquire(&LaneKey::Sluice, soon()).await.unwrap());
            }
            v
        };
        for _ in 0..4 {
            big_waiters.push(waiter(&line, app("big")).await);
            small_waiters.push(waiter(&line, app("small")).await);
        }
        drop(blockers);
        tokio::task::yield_now().await;
        let big = line
            .lanes()
            .iter()
            .find(|l| l.user.as_deref() == Some("big"))
            .unwrap()
            .borrowed;
        let small = line
            .lanes()
            .iter()
            .find(|l| l.user.as_deref() == Some("small"))
            .unwrap()
            .borrowed;
        assert_eq!((big, small), (3, 1));
    }

    #[tokio::test]
    async fn a_floor_is_kept_free_for_its_lane() {
        let line = Line::new(4, quotas(&[("reserved", 2, None, 1)]));
        let mut hot = Vec::new();
        for _ in 0..2 {
            hot.push(line.acquire(&app("hot"), soon()).await.unwrap());
        }
        let refused = line
            .acquire(&app("hot"), Instant::now() + Duration::from_millis(20))
            .await;
        assert_eq!(refused.err(), Some(Refused::Exhausted));
        let a = line.acquire(&app("reserved"), soon()).await.unwrap();
        let b = line.acquire(&app("reserved"), soon()).await.unwrap();
        // Above its floor, the reserved lane draws on common capacity like anyone.
        drop((a, b));
        assert_eq!(line.lanes().iter().map(|l| l.borrowed).sum::<usize>(), 2);
    }

    #[tokio::test]
    async fn a_lane_at_its_ceiling_waits_while_others_are_served() {
        let line = Line::new(4, quotas(&[("capped", 0, Some(1), 1)]));
        let held = line.acquire(&app("capped"), soon()).await.unwrap();
        let refused = line
            .acquire(&app("capped"), Instant::now() + Duration::from_millis(20))
            .await;
        assert_eq!(refused.err(), Some(Refused::Ceiling(1)));
        let capped_waiter = waiter(&line, app("capped")).await;
        let other = line.acquire(&app("other"), soon()).await.unwrap();
        drop(other);
        assert!(!capped_waiter.is_finished());
        drop(held);
        capped_waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn floors_scale_down_when_the_budget_cannot_honour_them() {
        let line = Line::new(4, quotas(&[("a", 4, None, 1), ("b", 4, None, 1)]));
        // Floors of 2 each now: b may take 2 while a holds none.
        let b1 = line.acquire(&app("b"), soon()).await.unwrap();
        let b2 = line.acquire(&app("b"), soon()).await.unwrap();
        let fast = Instant::now() + Duration::from_millis(20);
        assert!(line.acquire(&app("b"), fast).await.is_err());
        drop((b1, b2));
    }

    #[tokio::test]
    async fn a_smaller_capacity_holds_tickets_back_until_enough_return() {
        let line = Line::new(2, HashMap::new());
        let a = line.acquire(&app("a"), soon()).await.unwrap();
        let b = line.acquire(&app("a"), soon()).await.unwrap();
        line.set_capacity(1);
        let next = waiter(&line, app("a")).await;
        drop(a);
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "still one out on a capacity of one");
        drop(b);
        next.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_borrower_that_leaves_gives_up_its_place_and_any_ticket() {
        let line = Line::new(1, HashMap::new());
        let held = line.acquire(&app("a"), soon()).await.unwrap();
        let leaving = waiter(&line, app("a")).await;
        leaving.abort();
        let _ = leaving.await;
        assert_eq!(line.lanes().iter().map(|l| l.waiting).sum::<usize>(), 0);
        drop(held);
        assert!(line.acquire(&app("b"), soon()).await.is_ok());
        assert_eq!(line.lanes().iter().map(|l| l.borrowed).sum::<usize>(), 0);
    }

    #[tokio::test]
    async fn spare_tickets_never_go_ahead_of_a_waiter() {
        let line = Line::new(1, HashMap::new());
        let held = line.acquire(&app("a"), soon()).await.unwrap();
        let _next = waiter(&line, app("a")).await;
        assert!(line.try_acquire_spare().is_none());
        drop(held);
    }
}
