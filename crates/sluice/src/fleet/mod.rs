//! Several sluice instances sharing one database budget (`[fleet]`).
//!
//! Each instance holds a lease in Redis on some slots of the budget, renewed every
//! `heartbeat` and gone `lease_ttl` after the last renewal, so a dead instance's slots come
//! back (see [`script`] for the atomic grant). When the fleet is on, the task here is the
//! pool limit's one owner: the limit is the least of the budget (from [`crate::budget`]),
//! the lease and what the instance wants ([`plan`]). The pool grows only into slots
//! already granted, and a lease shrinks only after the pool has closed the connections
//! (`Pool::set_limit` returns once they are gone), so the fleet never holds more
//! connections than the budget. Borrows never talk to Redis: leases are bulk.
//!
//! Without Redis an instance keeps its lease until it would have expired (shrinking toward
//! its static share at once, so the shrink is done by then), then runs on the static share
//! (budget / `expected_instances`), which Redis keeps free for absent instances. It goes
//! back to leases as soon as Redis answers.
//!
//! Redis is one server (`redis_url`), the master a set of Redis Sentinels names
//! (`[fleet.sentinel]`): every reconnection asks the sentinels again, so after a failover
//! the next heartbeat renews the lease on the promoted replica; or a Redis Cluster
//! (`cluster_nodes`): the script touches one key, `budget_key`, so it runs whole on the
//! master of that key's slot, which the cluster client finds and follows through
//! redirections and failovers. A master that dies with no replica to take its slots
//! leaves the fleet without Redis, as a dead single server would.
//!
//! An instance that stops gracefully gives its lease back once its pool has closed every
//! connection ([`Membership::leave`]), so its slots return at once rather than after the TTL.

pub mod plan;
pub mod script;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::IntoConnectionInfo;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::FleetConfig;
use crate::metrics::Metrics;
use crate::pool::Pool;
use plan::Usage;
use script::{Ask, Granted, LeaseError, LeaseRecord};

/// Where the pool's slots come from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A live lease in Redis.
    Redis,
    /// No lease (Redis unreachable past the lease's expiry): the static share.
    Static,
}

impl Mode {
    /// The `mode` label of `sluice_fleet_mode`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Redis => "redis",
            Mode::Static => "static",
        }
    }
}

/// The fleet as this instance last saw it, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// This instance's id in the leases.
    pub instance_id: String,
    /// Where its slots come from now.
    pub mode: Mode,
    /// The fleet's budget.
    pub budget: usize,
    /// The static share (budget / expected instances).
    pub share: usize,
    /// Slots this instance holds in Redis (its last grant).
    pub lease: usize,
    /// Its pool limit now.
    pub pool_limit: usize,
    /// The last Redis error, while Redis fails.
    pub redis_error: Option<String>,
    /// Every live lease at the last heartbeat that reached Redis.
    pub instances: Vec<LeaseRecord>,
}

/// The fleet task's view, shared with `/status`; only the fleet task writes it.
#[derive(Debug)]
pub struct Board(Mutex<FleetView>);

impl Board {
    /// A board before the member starts (it names the instance then).
    pub fn new() -> Board {
        Board(Mutex::new(FleetView {
            instance_id: String::new(),
            mode: Mode::Static,
            budget: 0,
            share: 0,
            lease: 0,
            pool_limit: 0,
            redis_error: None,
            instances: Vec::new(),
        }))
    }

    /// The view now.
    pub fn view(&self) -> FleetView {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut FleetView)) {
        change(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

/// The default instance id: host name, listen port and process id, unique on one host
/// and across hosts.
fn default_instance_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice".into());
    format!("{host}:{port}:{}", std::process::id())
}

/// The running fleet member of this instance, for the server to end it.
pub struct Membership {
    leave: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Membership {
    /// At the end of a drain: gives the lease back in Redis once the pool has closed every
    /// connection (waiting up to `lease_ttl`; past that the lease is left to expire), and
    /// stops the member.
    pub async fn leave(self) {
        let _ = self.leave.send(());
        let _ = self.task.await;
    }
}

/// Names the instance (`instance_id`, else [`default_instance_id`] with the MySQL
/// listener's `port`) and, before any client is served, sizes the pool by a first
/// heartbeat: what Redis grants out of the static share (a new instance beside a fleet that
/// holds the whole budget may get nothing until demand moves slots), or the static share
/// when Redis does not answer. Then spawns the task that owns the pool limit from then on,
/// until the pool is gone or the instance leaves.
pub async fn start(
    pool: &Pool,
    config: FleetConfig,
    port: u16,
    budget: watch::Receiver<usize>,
    board: Arc<Board>,
    metrics: Metrics,
) -> Membership {
    let id = (config.instance_id.clone()).unwrap_or_else(|| default_instance_id(port));
    match &config.sentinel {
        _ if !config.cluster_nodes.is_empty() => info!(instance_id = %id,
            nodes = ?config.cluster_nodes, "fleet: sharing the budget through Redis leases, in a Redis Cluster"),
        None => info!(instance_id = %id, redis = %config.redis_url,
            "fleet: sharing the budget through Redis leases"),
        Some(sentinel) => info!(instance_id = %id, master = %sentinel.master,
            sentinels = ?sentinel.nodes, "fleet: sharing the budget through Redis leases, on the master Sentinel names"),
    }
    board.update(|v| v.instance_id = id);
    let share = plan::share(*budget.borrow(), config.expected_instances);
    pool.set_limit(share).await;
    let mut member = Member {
        source: Source::new(&config),
        conn: None,
        config,
        budget,
        board,
        metrics,
        held: share,
        resizing: None,
        lease_until: None,
        others_waiting: 0,
        failing: false,
    };
    member.beat(pool).await;
    if let Some((target, task)) = member.resizing.take() {
        // The pool is empty yet: the shrink is immediate.
        let _ = task.await;
        member.held = target;
    }
    let (leave, left) = oneshot::channel();
    let task = tokio::spawn(member.run(pool.downgrade(), left));
    Membership { leave, task }
}

/// Where the leases' Redis is: one server, the master Sentinel names now (asked at every
/// connection, so after a failover the next heartbeat finds the new master), or a cluster
/// (its slot map fetched at every connection).
enum Source {
    Server(redis::RedisResult<redis::Client>),
    Sentinel(Box<redis::RedisResult<SentinelClient>>),
    Cluster(Box<redis::RedisResult<ClusterClient>>),
}

impl Source {
    fn new(config: &FleetConfig) -> Source {
        if !config.cluster_nodes.is_empty() {
            let nodes = config.cluster_nodes.iter().map(String::as_str);
            return Source::Cluster(Box::new(ClusterClient::new(nodes)));
        }
        let Some(sentinel) = &config.sentinel else {
            return Source::Server(redis::Client::open(config.redis_url.as_str()));
        };
        // The master is reached with `redis_url`'s login and database.
        let client = config
            .redis_url
            .as_str()
            .into_connection_info()
            .and_then(|url| {
                let master = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(url.redis_settings().clone());
                SentinelClient::build(
                    sentinel.nodes.clone(),
                    sentinel.master.clone(),
                    Some(master),
                    SentinelServerType::Master,
                )
            });
        Source::Sentinel(Box::new(client))
    }

    async fn connect(&mut self) -> redis::RedisResult<Conn> {
        match self {
            Source::Server(client) => {
                let client = client.as_ref().map_err(Clone::clone)?;
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map(Conn::Server)
            }
            Source::Sentinel(client) => {
                let client = client.as_mut().as_mut().map_err(|e| e.clone())?;
                client.get_async_connection().await.map(Conn::Server)
            }
            Source::Cluster(client) => {
                let client = client.as_ref().as_ref().map_err(Clone::clone)?;
                client.get_async_connection().await.map(Conn::Cluster)
            }
        }
    }
}

/// A connection to the leases' Redis: to one server (Sentinel's master is one), or to a
/// cluster, which sends each command to the master of its key's slot.
enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The fleet task's state: one instance's membership.
struct Member {
    config: FleetConfig,
    source: Source,
    conn: Option<Conn>,
    budget: watch::Receiver<usize>,
    board: Arc<Board>,
    metrics: Metrics,
    /// What the pool may hold now: during a shrink, still the old limit.
    held: usize,
    /// A resize in flight and its target: one at a time (`Pool::set_limit`).
    resizing: Option<(usize, JoinHandle<()>)>,
    /// Until when the last grant holds without renewal.
    lease_until: Option<Instant>,
    /// Borrowers other instances had waiting at the last heartbeat.
    others_waiting: usize,
    /// Whether the last heartbeat failed (to log transitions once).
    failing: bool,
}

impl Member {
    async fn run(mut self, pool: crate::pool::WeakPool, mut leave: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(pool) = pool.upgrade() else { break };
                    self.beat(&pool).await;
                }
                Ok(()) = &mut leave => {
                    if let Some(pool) = pool.upgrade() {
                        self.release(&pool).await;
                    }
                    break;
                }
            }
        }
    }

    /// Deletes this instance's lease once `pool` holds no connection, so no slot is given
    /// back while a connection of it is still open.
    async fn release(&mut self, pool: &Pool) {
        let until = Instant::now() + self.config.lease_ttl;
        while pool.stats().total > 0 {
            if Instant::now() >= until {
                warn!("fleet: connections still open; leaving the lease to expire");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let Some(conn) = &mut self.conn else { return };
        let id = self.board.view().instance_id;
        let released = script::release(conn, &self.config.budget_key, &id);
        match tokio::time::timeout(self.config.heartbeat, released).await {
            Ok(Ok(())) => info!("fleet: lease given back"),
            Ok(Err(e)) => warn!(error = %e, "fleet: could not give the lease back; it expires"),
            Err(_) => warn!("fleet: Redis did not answer; the lease expires"),
        }
    }

    /// One heartbeat: renew the lease with this instance's usage and wants, then resize.
    async fn beat(&mut self, pool: &Pool) {
        if let Some((target, task)) = self.resizing.take() {
            if task.is_finished() {
                self.held = target;
            } else {
                self.resizing = Some((target, task));
            }
        }
        let budget = *self.budget.borrow();
        let share = plan::share(budget, self.config.expected_instances);
        let stats = pool.stats();
        let usage = Usage {
            borrowed: stats.busy,
            waiters: usize::try_from(self.metrics.borrow_waiters.get()).unwrap_or(0),
        };
        let desired = plan::desired(self.held, usage, self.others_waiting).min(budget);
        let ask = Ask {
            budget,
            want: desired.max(self.held),
            borrowed: usage.borrowed,
            waiters: usage.waiters,
        };
        let started = Instant::now();
        let (target, mode, lease) = match self.heartbeat(ask).await {
            Ok(granted) => {
                self.recovered();
                self.lease_until = Some(started + self.config.lease_ttl);
                let id = self.board.view().instance_id;
                self.others_waiting = granted
                    .leases
                    .iter()
                    .filter(|l| l.id != id)
                    .map(|l| l.waiters)
                    .sum();
                if granted.grant < self.held {
                    warn!(
                        grant = granted.grant,
                        held = self.held,
                        "fleet lease is below what the pool holds (the budget shrank?): shrinking"
                    );
                }
                let target = desired.min(granted.grant);
                self.board.update(|v| v.instances = granted.leases);
                (target, Mode::Redis, granted.grant)
            }
            Err(e) => {
                self.failed(&e);
                self.conn = None;
                self.others_waiting = 0;
                let lease = self.board.view().lease;
                match self.lease_until {
                    // Keep the lease, but shrink toward the share now: done before expiry.
                    Some(until) if Instant::now() < until => {
                        (self.held.min(share), Mode::Redis, lease)
                    }
                    _ => (share.min(budget), Mode::Static, 0),
                }
            }
        };
        self.resize(pool, target);
        self.publish(mode, budget, share, lease);
    }

    /// The grant script, on a connection made on first use and after every failure.
    async fn heartbeat(&mut self, ask: Ask) -> Result<Granted, LeaseError> {
        let limit = self.config.heartbeat;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => {
                let opened = tokio::time::timeout(limit, self.source.connect())
                    .await
                    .map_err(|_| LeaseError::Timeout(limit))??;
                slot.insert(opened)
            }
        };
        let id = self.board.view().instance_id;
        let config = &self.config;
        let call = script::grant(
            conn,
            &config.budget_key,
            &id,
            ask,
            config.lease_ttl,
            config.expected_instances,
        );
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| LeaseError::Timeout(limit))?
    }

    /// Grows the pool at once into granted slots; shrinks it in the background (the
    /// lease follows at the next heartbeat after the connections closed). One resize at
    /// a time.
    fn resize(&mut self, pool: &Pool, target: usize) {
        if self.resizing.is_some() || target == self.held {
            return;
        }
        let pool = pool.clone();
        let task = tokio::spawn(async move { pool.set_limit(target).await });
        if target > self.held {
            // Growing never waits: the pool may use the slots from now.
            self.held = target;
        }
        self.resizing = Some((target, task));
    }

    fn publish(&self, mode: Mode, budget: usize, share: usize, lease: usize) {
        for m in [Mode::Redis, Mode::Static] {
            self.metrics
                .fleet_mode
                .with_label_values(&[m.name()])
                .set(i64::from(m == mode));
        }
        self.metrics
            .fleet_lease_slots
            .set(i64::try_from(lease).unwrap_or(i64::MAX));
        let held = self.held;
        self.board.update(|v| {
            v.mode = mode;
            v.budget = budget;
            v.share = share;
            v.lease = lease;
            v.pool_limit = held;
        });
    }

    fn failed(&mut self, e: &LeaseError) {
        self.metrics.fleet_redis_errors.inc();
        if !self.failing {
            error!(error = %e, lease_ttl = ?self.config.lease_ttl,
                "fleet: Redis unreachable; keeping the lease until it expires, then running on the static share");
        }
        self.failing = true;
        let message = e.to_string();
        self.board.update(|v| v.redis_error = Some(message));
    }

    fn recovered(&mut self) {
        if self.failing {
            info!("fleet: Redis answers again; back on leases");
        }
        self.failing = false;
        self.board.update(|v| v.redis_error = None);
    }
}
