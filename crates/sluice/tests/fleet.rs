//! Several gateways sharing one database budget through leases in Redis (127.0.0.1:6379,
//! scripts/ensure-deps makes sure it runs): the database never sees more connections than
//! the budget, a dead instance's lease expires, and without Redis an instance runs on its
//! static share. Each test has its own Redis key and backend users (`sl_fleet_<test>_*`);
//! the kill and rolling-restart tests run real `sluice serve` processes.

mod common;

use std::time::{Duration, Instant};

use common::{metric_value, start_with, PeakWatcher, TestGateway};
use mysql_async::prelude::*;
use sluice::config::{FleetConfig, SentinelConfig};

/// The budget every test shares among three gateways.
const BUDGET: usize = 6;
/// Each gateway's static share of it.
const SHARE: usize = BUDGET / 3;
const REDIS: &str = "redis://127.0.0.1:6379";
const TTL: Duration = Duration::from_secs(2);

/// The Redis key of one test's leases, unique per run.
fn budget_key(test: &str) -> String {
    format!("fleet_test:{test}:{}", std::process::id())
}

/// Starts gateway `name` of `test`'s fleet on `redis_url`, in the current runtime.
async fn member(test: &str, name: &str, redis_url: &str) -> TestGateway {
    let redis = FleetConfig {
        redis_url: redis_url.to_owned(),
        ..FleetConfig::default()
    };
    member_of(test, name, redis).await
}

/// [`member`], finding Redis as `redis` says (`redis_url`, `sentinel`, `cluster_nodes`);
/// the rest of its `[fleet]` is the tests'.
async fn member_of(test: &str, name: &str, redis: FleetConfig) -> TestGateway {
    let key = budget_key(test);
    start_with(&format!("fleet_{test}_{name}"), move |config| {
        config.pool.max_db_connections = BUDGET;
        config.pool.borrow_timeout = Duration::from_secs(60);
        config.fleet = Some(FleetConfig {
            instance_id: None,
            lease_ttl: TTL,
            heartbeat: Duration::from_millis(200),
            expected_instances: 3,
            budget_key: key,
            ..redis
        });
    })
    .await
}

/// Starts `clients` connections through `gw`, each running `rounds` short transactions;
/// the future (needing nothing of `gw`) gives the errors the clients saw.
fn load(
    gw: &TestGateway,
    clients: usize,
    rounds: usize,
) -> impl std::future::Future<Output = Vec<String>> + 'static {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let opts = gw.opts("app", "secret", Some(common::TEST_DB));
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut conn = match mysql_async::Conn::new(opts).await {
                    Ok(conn) => conn,
                    Err(e) => return vec![e.to_string()],
                };
                for _ in 0..rounds {
                    let tx = "BEGIN; SELECT SLEEP(0.03); COMMIT";
                    if let Err(e) = conn.query_drop(tx).await {
                        errors.push(e.to_string());
                    }
                }
                let _ = conn.disconnect().await;
                errors
            })
        })
        .collect();
    async move {
        let mut errors = Vec::new();
        for task in tasks {
            errors.extend(task.await.expect("client task"));
        }
        errors
    }
}

/// The live leases in Redis under `test`'s key, by instance id.
async fn leases(test: &str) -> std::collections::HashMap<String, String> {
    leases_at(REDIS, test).await
}

/// [`leases`] in the Redis at `url`.
async fn leases_at(url: &str, test: &str) -> std::collections::HashMap<String, String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGETALL")
        .arg(budget_key(test))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Waits up to `limit` for `done`, polling every 50 ms; whether it came true.
async fn eventually(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_burst_through_three_gateways_stays_within_the_budget_and_idle_slots_move() {
    let test = "burst";
    let a = member(test, "a", REDIS).await;
    let b = member(test, "b", REDIS).await;
    let c = member(test, "c", REDIS).await;
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    // Uneven: a has waiters, b and c little use, so their idle slots should move to a.
    let (ea, eb, ec) = tokio::join!(load(&a, 10, 12), load(&b, 2, 12), load(&c, 1, 12));
    let grew = eventually(Duration::from_secs(20), async || {
        let (_, more) = tokio::join!(load(&a, 8, 4), async {
            a.gateway.fleet.as_ref().unwrap().view().lease > SHARE
        });
        more
    })
    .await;
    let peak = watcher.stop().await;
    assert_eq!((ea, eb, ec), (vec![], vec![], vec![]), "no client error");
    assert!(
        peak <= BUDGET,
        "the fleet held {peak} connections on a budget of {BUDGET}"
    );
    assert!(grew, "the busy gateway's lease grew past its share");
    let view = a.gateway.fleet.as_ref().unwrap().view();
    assert_eq!(view.instances.len(), 3, "{view:?}");
    assert!(view.instances.iter().map(|l| l.lease).sum::<usize>() <= BUDGET);
    let status = common::http_get(a.admin, "/status").await;
    assert!(status.contains("\"mode\":\"redis\""), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_without_redis_an_instance_runs_on_its_static_share() {
    let test = "noredis";
    // Port 1: nothing listens there.
    let lost = member(test, "a", "redis://127.0.0.1:1").await;
    let b = member(test, "b", REDIS).await;
    let c = member(test, "c", REDIS).await;
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    let (ea, eb, ec) = tokio::join!(load(&lost, 8, 10), load(&b, 8, 10), load(&c, 8, 10));
    let peak = watcher.stop().await;
    assert_eq!((ea, eb, ec), (vec![], vec![], vec![]), "no client error");
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
    let view = lost.gateway.fleet.as_ref().unwrap().view();
    assert_eq!(view.mode, sluice::fleet::Mode::Static, "{view:?}");
    assert!(view.pool_limit <= SHARE, "{view:?}");
    assert!(view.redis_error.is_some(), "{view:?}");
    let metrics = lost.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_fleet_mode{mode=\"static\"}"),
        1.0
    );
    assert!(metric_value(&metrics, "sluice_fleet_redis_errors_total") >= 1.0);
    let live = leases(test).await;
    assert_eq!(
        live.len(),
        2,
        "only the two with Redis hold leases: {live:?}"
    );
}

/// A Redis of one test's own on a free port (the shared one on 6379 is never stopped): a
/// server, a replica, or a sentinel.
struct PrivateRedis {
    port: u16,
    /// What follows `redis-server` (the port is added).
    args: Vec<String>,
    child: Option<std::process::Child>,
    /// Its working directory: a replica writes the RDB file it is sent there.
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        PrivateRedis::with_args(["--save", "", "--appendonly", "no"])
    }

    /// A replica of the server on `master`.
    fn replica_of(master: u16) -> PrivateRedis {
        let master = master.to_string();
        PrivateRedis::with_args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &master,
        ])
    }

    /// A sentinel watching the server on `master` as `name`, alone (quorum 1), quick to
    /// fail over; its configuration file (which Sentinel rewrites) in `dir`.
    fn sentinel(dir: &std::path::Path, name: &str, master: u16) -> PrivateRedis {
        let path = dir.join(format!("sentinel-{master}.conf"));
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {name} 500\n\
             sentinel failover-timeout {name} 5000\n"
        );
        std::fs::write(&path, conf).unwrap();
        PrivateRedis::with_args([path.to_str().unwrap(), "--sentinel"])
    }

    /// A node of a Redis Cluster, not yet part of one; its cluster bus on a free port of
    /// its own (the default, port + 10000, may be past 65535), its `nodes.conf` in its
    /// directory.
    fn cluster_node() -> PrivateRedis {
        let bus = free_port().to_string();
        PrivateRedis::with_args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
        ])
    }

    fn with_args<'a>(args: impl IntoIterator<Item = &'a str>) -> PrivateRedis {
        let port = free_port();
        let args = args.into_iter().map(str::to_owned).collect();
        let mut redis = PrivateRedis {
            port,
            args,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port, returning once it answers.
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(&self.args)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/ensure-deps installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start on {}", self.port);
    }

    /// The reply to one command, or `None` when the server does not answer.
    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.ok()
    }

    /// Scripts the server has run since it started (`EVALSHA` and `EVAL` calls): the
    /// fleet's round trips (the commands inside a script are not round trips).
    async fn commands(&self) -> u64 {
        let info: String = self.query(&["INFO", "commandstats"]).await.unwrap();
        info.lines()
            .filter_map(|l| {
                let calls = l
                    .strip_prefix("cmdstat_evalsha:calls=")
                    .or_else(|| l.strip_prefix("cmdstat_eval:calls="))?;
                calls.split(',').next()?.parse::<u64>().ok()
            })
            .sum()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_redis_stopped_and_restarted_mid_run_the_fleet_serves_on_the_static_share() {
    let test = "restart";
    let mut redis = PrivateRedis::start();
    let gateways = [
        member(test, "a", &redis.url()).await,
        member(test, "b", &redis.url()).await,
        member(test, "c", &redis.url()).await,
    ];
    let modes = || {
        gateways
            .iter()
            .map(|g| g.gateway.fleet.as_ref().unwrap().view().mode)
            .collect::<Vec<_>>()
    };
    use sluice::fleet::Mode;
    let all = |mode: Mode| modes().iter().all(|m| *m == mode);
    assert!(
        eventually(Duration::from_secs(10), async || all(Mode::Redis)).await,
        "{:?}",
        modes()
    );
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    let clients: Vec<_> = gateways.iter().map(|g| load(g, 4, 120)).collect();
    let clients = tokio::spawn(all_errors(clients));
    // Borrows never talk to Redis: its commands follow the heartbeats, not the load.
    let (commands_before, borrows_before) = (redis.commands().await, borrows(&gateways).await);
    let measured = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands = redis.commands().await - commands_before;
    let borrowed = borrows(&gateways).await - borrows_before;
    let heartbeats = 3 * (measured.elapsed().as_millis() as u64 / 200 + 1);
    eprintln!("fleet: {borrowed} borrows, {commands} Redis round trips, {heartbeats} heartbeats");
    redis.stop();
    let went_static = eventually(Duration::from_secs(15), async || all(Mode::Static)).await;
    let static_modes = modes();
    let limits: Vec<usize> = gateways
        .iter()
        .map(|g| g.gateway.fleet.as_ref().unwrap().view().pool_limit)
        .collect();
    redis.restart();
    let recovered = eventually(Duration::from_secs(15), async || all(Mode::Redis)).await;
    let errors = clients.await.unwrap();
    let peak = watcher.stop().await;
    assert!(went_static, "without Redis, past the TTL: {static_modes:?}");
    assert!(
        limits.iter().all(|l| *l <= SHARE),
        "static limits {limits:?}"
    );
    assert!(recovered, "back on leases: {:?}", modes());
    assert!(
        commands <= 2 * heartbeats + 2 && borrowed > commands,
        "{commands} Redis round trips for {borrowed} borrows and {heartbeats} heartbeats"
    );
    assert_eq!(errors, Vec::<String>::new(), "no client error");
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
}

/// Whether `gw` is on a lease, with no Redis error, and Redis at `url` holds it.
async fn holds_lease(gw: &TestGateway, url: &str, test: &str) -> bool {
    let view = gw.gateway.fleet.as_ref().unwrap().view();
    view.mode == sluice::fleet::Mode::Redis
        && view.redis_error.is_none()
        && leases_at(url, test).await.contains_key(&view.instance_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_sentinel_follows_the_master_through_a_failover() {
    let test = "sentinel";
    let dir = tempfile::tempdir().unwrap();
    let mut master = PrivateRedis::start();
    let replica = PrivateRedis::replica_of(master.port);
    let synced = eventually(Duration::from_secs(10), async || {
        replica
            .query::<String>(&["INFO", "replication"])
            .await
            .is_some_and(|info| info.contains("master_link_status:up"))
    })
    .await;
    assert!(synced, "the replica is synced");
    // Sentinel can only promote a replica it knows of: the master names it at once now.
    let sentinel = PrivateRedis::sentinel(dir.path(), "leases", master.port);
    let known = eventually(Duration::from_secs(20), async || {
        sentinel
            .query::<Vec<redis::Value>>(&["SENTINEL", "REPLICAS", "leases"])
            .await
            .is_some_and(|replicas| !replicas.is_empty())
    })
    .await;
    assert!(known, "the sentinel knows the replica");
    let named = SentinelConfig {
        master: "leases".into(),
        nodes: vec![sentinel.url()],
    };
    // No port: the host and port come from the sentinel.
    let redis = FleetConfig {
        redis_url: "redis://127.0.0.1".into(),
        sentinel: Some(named),
        ..FleetConfig::default()
    };
    let gw = member_of(test, "a", redis).await;
    assert!(
        eventually(Duration::from_secs(10), async || holds_lease(
            &gw,
            &master.url(),
            test
        )
        .await)
        .await,
        "a lease on the master the sentinel names"
    );
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    let clients = tokio::spawn(load(&gw, 4, 80));
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.stop();
    let killed = Instant::now();
    let promoted = eventually(Duration::from_secs(20), async || {
        sentinel
            .query::<Vec<String>>(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "leases"])
            .await
            .is_some_and(|addr| addr.get(1) == Some(&replica.port.to_string()))
    })
    .await
    .then(|| killed.elapsed());
    let renewed = eventually(Duration::from_secs(20), async || {
        holds_lease(&gw, &replica.url(), test).await
    })
    .await
    .then(|| killed.elapsed());
    let errors = clients.await.unwrap();
    let peak = watcher.stop().await;
    eprintln!(
        "fleet: sentinel: the replica was promoted {promoted:?} and the lease renewed on it \
         {renewed:?} after the master was killed (lease_ttl {TTL:?}); peak {peak} of {BUDGET}"
    );
    assert!(promoted.is_some(), "the sentinel promoted the replica");
    assert!(renewed.is_some(), "the lease lives on the new master");
    assert_eq!(errors, Vec::<String>::new(), "no client error");
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
}

/// A private Redis Cluster of three masters with no replica, on free ports.
struct PrivateCluster {
    nodes: Vec<PrivateRedis>,
}

impl PrivateCluster {
    /// Starts three nodes, joins them (`redis-cli --cluster create`, the slots split in
    /// three) and returns once every node reports `cluster_state:ok`.
    async fn start() -> PrivateCluster {
        let nodes: Vec<_> = (0..3).map(|_| PrivateRedis::cluster_node()).collect();
        let status = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli (scripts/ensure-deps installs it)");
        assert!(status.success(), "redis-cli --cluster create: {status}");
        let cluster = PrivateCluster { nodes };
        let ok = eventually(Duration::from_secs(10), async || {
            for node in &cluster.nodes {
                let info = node.query::<String>(&["CLUSTER", "INFO"]).await;
                if !info.is_some_and(|i| i.contains("cluster_state:ok")) {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(ok, "the private cluster reached cluster_state:ok");
        cluster
    }

    /// Every node's URL: the `cluster_nodes` a member is given.
    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// The node serving `key`'s slot: the only one that answers for the key (the others
    /// redirect, MOVED, an error).
    async fn master_of(&self, key: &str) -> usize {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.query::<i64>(&["EXISTS", key]).await.is_some() {
                return i;
            }
        }
        panic!("no node of the cluster serves {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_a_redis_cluster_shares_the_budget_and_falls_back_when_the_key_s_master_dies() {
    use sluice::fleet::Mode;
    let test = "cluster";
    let mut cluster = PrivateCluster::start().await;
    let redis = FleetConfig {
        cluster_nodes: cluster.urls(),
        ..FleetConfig::default()
    };
    let a = member_of(test, "a", redis.clone()).await;
    let b = member_of(test, "b", redis).await;
    let gateways = [&a, &b];
    let views = || {
        gateways
            .iter()
            .map(|g| g.gateway.fleet.as_ref().unwrap().view())
            .collect::<Vec<_>>()
    };
    let owner = cluster.master_of(&budget_key(test)).await;
    let owner_url = cluster.nodes[owner].url();
    let leased = eventually(Duration::from_secs(10), async || {
        holds_lease(&a, &owner_url, test).await && holds_lease(&b, &owner_url, test).await
    })
    .await;
    assert!(
        leased,
        "both hold leases on the key's master: {:?}",
        views()
    );
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    // Uneven: a's waiters make b give its idle slots back (a borrows from b).
    let (ea, eb) = tokio::join!(load(&a, 8, 10), load(&b, 1, 10));
    let grew = eventually(Duration::from_secs(10), async || {
        let (_, more) = tokio::join!(load(&a, 6, 3), async { views()[0].lease > SHARE });
        more
    })
    .await;
    let leases = views()[0].instances.clone();
    let clients = tokio::spawn(all_errors(vec![load(&a, 4, 60), load(&b, 4, 60)]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[owner].stop();
    let killed = Instant::now();
    let went_static = eventually(Duration::from_secs(10), async || {
        views().iter().all(|v| v.mode == Mode::Static)
    })
    .await
    .then(|| killed.elapsed());
    let fallen = views();
    let errors = clients.await.unwrap();
    let peak = watcher.stop().await;
    let slots: Vec<_> = leases.iter().map(|l| l.lease).collect();
    let limits: Vec<_> = fallen.iter().map(|v| (v.mode, v.pool_limit)).collect();
    eprintln!(
        "fleet: cluster: key on node {owner} of 3; leases {slots:?} before the kill, \
         (mode, pool limit) {limits:?} {went_static:?} after it (lease_ttl {TTL:?}); \
         peak {peak} of {BUDGET}"
    );
    assert_eq!((ea, eb), (vec![], vec![]), "no client error");
    assert!(grew, "a's lease grew past its share: {leases:?}");
    assert_eq!(leases.len(), 2, "{leases:?}");
    let sum: usize = leases.iter().map(|l| l.lease).sum();
    assert!(sum <= BUDGET, "leases of {sum} on a budget of {BUDGET}");
    assert!(
        went_static.is_some(),
        "the key's master is dead: {fallen:?}"
    );
    for view in &fallen {
        assert!(view.pool_limit <= SHARE, "{view:?}");
        assert!(view.redis_error.is_some(), "{view:?}");
    }
    assert_eq!(errors, Vec::<String>::new(), "no client error");
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
}

/// Database connections lent by `gateways` so far.
async fn borrows(gateways: &[TestGateway]) -> u64 {
    gateways
        .iter()
        .map(|g| g.gateway.metrics.borrows.get())
        .sum()
}

/// Every client's errors, of several [`load`]s.
async fn all_errors(loads: Vec<impl std::future::Future<Output = Vec<String>>>) -> Vec<String> {
    let mut errors = Vec::new();
    for l in loads {
        errors.extend(l.await);
    }
    errors
}

/// A `sluice serve` process of a fleet test, logging to `<name>.log` in its directory.
struct Process {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Process {
    /// Starts `sluice serve` on `listen` (a port it may share) with its own admin port, as
    /// backend user `user`, in `test`'s fleet of `expected` instances; returns it and its
    /// admin address once `/status` shows it on a lease.
    async fn start(
        dir: &std::path::Path,
        name: &str,
        listen: std::net::SocketAddr,
        user: &str,
        test: &str,
        expected: usize,
    ) -> (Process, std::net::SocketAddr) {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config = format!(
            r#"
listen = "{listen}"
admin_listen = "{admin}"
shutdown_timeout = "10s"

[backend]
url = "mysql://{user}:backend-pw@127.0.0.1:3306"

[pool]
max_db_connections = {BUDGET}
borrow_timeout = "30s"

[[users]]
name = "app"
password = "secret"
backend = "shared"

[fleet]
redis_url = "{REDIS}"
instance_id = "{name}"
lease_ttl = "2s"
heartbeat = "200ms"
expected_instances = {expected}
budget_key = "{key}"
"#,
            key = budget_key(test)
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let process = Process { child, log };
        // common::http_get panics on a refused connection: wait for the listener first.
        let ready = eventually(Duration::from_secs(30), async || {
            tokio::net::TcpStream::connect(admin).await.is_ok()
                && common::http_get(admin, "/status")
                    .await
                    .contains("\"mode\":\"redis\"")
        })
        .await;
        assert!(
            ready,
            "{name} serves on a lease; its log:\n{}",
            std::fs::read_to_string(&process.log).unwrap_or_default()
        );
        (process, admin)
    }

    /// SIGTERM, then waits for the drain to end; the process's log.
    async fn drain(mut self) -> String {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status:?}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connection options for `app` through the sluice listening on `addr`.
fn opts_at(addr: std::net::SocketAddr) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("app"))
        .pass(Some("secret"))
        .db_name(Some(common::TEST_DB))
        .prefer_socket(false)
}

/// One serverless-style call: connect, one short transaction, disconnect.
async fn call(opts: mysql_async::OptsBuilder) -> Result<(), mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(opts).await?;
    conn.query_drop("BEGIN; SELECT SLEEP(0.02); COMMIT").await?;
    conn.disconnect().await
}

/// A free port on 127.0.0.1 (nothing binds 127.0.0.2 and .3 but these tests).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_rolling_restart_on_a_shared_port_under_load_has_no_client_error() {
    let user = common::create_backend_user("fleet_rolling").await;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let start = |name| Process::start(dir.path(), name, addr, &user, "rolling", 2);
    let (old, _) = start("old").await;
    let watcher = PeakWatcher::start(&user);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Serverless-style clients, connecting for every transaction, with no retry: one that
    // reached the old instance a moment before its drain began is served through
    // shutdown_idle_grace, and one still in its accept queue is taken, not reset.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut done, mut errors) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match call(opts_at(addr)).await {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (done, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (new, _) = start("new").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain_began = Instant::now();
    let log = old.drain().await;
    let drained_in = drain_began.elapsed();
    // A graceful stop gives the lease back at once, not after the TTL.
    let live = leases("rolling").await;
    assert!(!live.contains_key("old"), "{live:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut errors) = (0, Vec::new());
    for client in clients {
        let (d, e) = client.await.unwrap();
        done += d;
        errors.extend(e);
    }
    let peak = watcher.stop().await;
    drop(new);
    let taken = log
        .lines()
        .find_map(|l| l.split("accepted_from_queue=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?");
    eprintln!(
        "fleet: rolling restart: {done} calls, {} errors; the old instance drained in \
         {drained_in:?}, taking {taken} connections from its accept queue",
        errors.len()
    );
    assert!(done > 0);
    assert_eq!(errors, Vec::<String>::new(), "no client error");
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
}

/// A small deterministic generator for the seeded choices of the kill test (xorshift64*).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_kill_9_of_one_of_three_processes_costs_the_survivors_nothing() {
    let test = "pkill";
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut random = Seeded(seed | 1);
    let victim = random.below(3) as usize;
    let kill_after = Duration::from_millis(200 + random.below(1500));
    eprintln!(
        "fleet: kill -9 test: seed {seed} (SLUICE_TEST_SEED repeats it): instance {victim} \
         killed {kill_after:?} into the load"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addrs: Vec<std::net::SocketAddr> = (1..=3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, i], port)))
        .collect();
    let mut processes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let user = common::create_backend_user(&format!("fleet_{test}_{i}")).await;
        let (process, _) =
            Process::start(dir.path(), &format!("i{i}"), *addr, &user, test, 3).await;
        processes.push(process);
    }
    let watcher = PeakWatcher::start(&format!("sl_fleet_{test}_%"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed_at = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    // Four clients per instance. The victim's clients, when it dies under them, go to a
    // survivor (as a load balancer would send them) and note how long after the kill their
    // first call there succeeded.
    let clients: Vec<_> = (0..12)
        .map(|c| {
            let (stop, killed_at, addrs) = (stop.clone(), killed_at.clone(), addrs.clone());
            tokio::spawn(async move {
                let mut target = c % 3;
                let (mut done, mut errors, mut moved_after) = (0, Vec::new(), None);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match call(opts_at(addrs[target])).await {
                        Ok(()) => {
                            done += 1;
                            if target != c % 3 && moved_after.is_none() {
                                moved_after = killed_at.get().map(|k| k.elapsed());
                            }
                        }
                        Err(_) if target == victim && killed_at.get().is_some() => {
                            target = (victim + 1 + c % 2) % 3
                        }
                        Err(e) => errors.push(format!("instance {target}: {e}")),
                    }
                }
                (done, errors, moved_after)
            })
        })
        .collect();
    tokio::time::sleep(kill_after).await;
    let doomed = processes[victim].child.id().to_string();
    let killed = *killed_at.get_or_init(Instant::now);
    let status = std::process::Command::new("kill")
        .args(["-9", &doomed])
        .status()
        .unwrap();
    assert!(status.success());
    let (victim_id, victim_user) = (format!("i{victim}"), format!("sl_fleet_{test}_{victim}"));
    // Each measured on its own, from the kill.
    let (lease_gone, connections_gone) = tokio::join!(
        async {
            eventually(Duration::from_secs(10), async || {
                !leases(test).await.contains_key(&victim_id)
            })
            .await
            .then(|| killed.elapsed())
        },
        async {
            eventually(Duration::from_secs(10), async || {
                common::db_connections_of(&victim_user).await == 0
            })
            .await
            .then(|| killed.elapsed())
        },
    );
    // The survivors carry the whole load a while past the lease's expiry.
    tokio::time::sleep(
        (killed + TTL + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut errors, mut moved) = (0, Vec::new(), Vec::new());
    for client in clients {
        let (d, e, m) = client.await.unwrap();
        done += d;
        errors.extend(e);
        moved.extend(m);
    }
    let peak = watcher.stop().await;
    let live = leases(test).await;
    eprintln!(
        "fleet: kill -9: {done} calls; the dead instance's database connections were gone \
         {connections_gone:?} and its lease {lease_gone:?} after the kill (lease_ttl {TTL:?}); \
         its clients were served by survivors {moved:?} after it; peak {peak} of {BUDGET}; \
         leases now {live:?}"
    );
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "no survivor's client saw an error"
    );
    assert!(peak <= BUDGET, "{peak} connections on a budget of {BUDGET}");
    let lease_gone = lease_gone.expect("the dead instance's lease expired");
    assert!(lease_gone <= TTL + Duration::from_secs(1), "{lease_gone:?}");
    assert!(
        connections_gone.is_some(),
        "the dead instance's connections closed"
    );
    assert_eq!(
        moved.len(),
        4,
        "each of the dead instance's clients moved: {moved:?}"
    );
    assert!(
        moved.iter().all(|m| *m <= TTL),
        "survivors absorbed them within the TTL: {moved:?}"
    );
    assert_eq!(live.len(), 2, "the survivors hold leases: {live:?}");
}
