//! `GET /status`: one JSON snapshot of the connection budget, the pool, the borrowers
//! waiting, per-user usage, latency totals and the clients, for operators and for the
//! dashboard (which turns the totals into rates and recent means by differencing polls).
//!
//! Everything here is read from what already exists (the pool's counts, the metrics, the
//! session registry) when asked; nothing on a client's path works for this page beyond the
//! few atomic stores of [`crate::registry::Activity`]. The one value sluice must ask the
//! database for, its `max_connections`, is the budget's last reading (see [`crate::budget`]).

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::proto::Metric;
use serde::Serialize;

use crate::registry::ActivitySnapshot;
use crate::Gateway;

/// Clients listed one by one; beyond, only counted, so the answer stays small with
/// thousands connected.
pub const MAX_LISTED_CLIENTS: usize = 1000;

/// The whole answer of `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `ok`, or `draining` during a graceful shutdown.
    pub status: &'static str,
    /// The connection budget.
    pub budget: Budget,
    /// Database connections by state, and borrowers waiting.
    pub pool: PoolView,
    /// Totals since start; the dashboard differences them into rates.
    pub counters: Counters,
    /// Latency totals since start (all users); differenced into recent means.
    pub latency: Latency,
    /// Per user (as labelled in the per-user metrics, so bounded), by name.
    pub users: Vec<UserRow>,
    /// The line for database connections: per configured or active user, connections
    /// held, borrowers waiting and its quota; `user: null` is sluice's own statements.
    pub lanes: Vec<crate::queue::LaneStats>,
    /// The clients connected over the MySQL protocol.
    pub clients: Clients,
    /// The instances sharing the budget and their leases (`null` without `[fleet]`).
    pub fleet: Option<crate::fleet::FleetView>,
    /// The last configuration reload (SIGHUP or `POST /reload`): when, its result, and
    /// what was refused or waits for a restart; `null` before the first.
    pub last_reload: Option<crate::reload::Report>,
}

/// The budget sluice keeps under, and the server's own limit.
#[derive(Debug, Serialize)]
pub struct Budget {
    /// sluice's cap (`pool.max_db_connections`).
    pub max_db_connections: usize,
    /// The server's `max_connections` (`null` until first read).
    pub server_max_connections: Option<u64>,
    /// Database connections open now (idle, lent or being opened).
    pub open: usize,
    /// The cap less those open.
    pub remaining: usize,
}

/// The pool's connections by state.
#[derive(Debug, Serialize)]
pub struct PoolView {
    /// Open now (idle, lent or being opened).
    pub open: usize,
    /// Idle, ready to lend.
    pub idle: usize,
    /// Lent to a client (or being opened for one).
    pub borrowed: usize,
    /// Borrowers waiting in line now.
    pub waiters: i64,
    /// Lent to a client inside a transaction (MySQL clients and Data API transactions).
    pub in_transaction: usize,
    /// Lent to a client pinned to it.
    pub pinned: usize,
    /// New borrows wait for an operator's `POST /resume`.
    pub paused: bool,
}

/// Counters since start.
#[derive(Debug, Serialize)]
pub struct Counters {
    /// Database connections lent to clients.
    pub borrows: u64,
    /// Borrowers refused because the pool stayed exhausted (`borrow_timeout`).
    pub no_connections_left: u64,
    /// Borrowers that gave up, pool exhausted or at their user's ceiling.
    pub borrow_timeouts: u64,
    /// Client connections accepted.
    pub client_connections_received: u64,
    /// Client connections closed.
    pub client_connections_closed: u64,
    /// Database connections opened.
    pub db_connections_opened: u64,
    /// Failed attempts to open one.
    pub db_connect_errors: u64,
}

/// A histogram's totals.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Totals {
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Totals {
    fn of(metric: &Metric) -> Totals {
        let histogram = metric.get_histogram();
        Totals {
            count: histogram.get_sample_count(),
            sum_seconds: histogram.get_sample_sum(),
        }
    }

    fn add(&mut self, other: Totals) {
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

/// Latency totals of all users.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Client command received to reply relayed.
    pub response: Totals,
    /// Command sent to the database to its reply's end.
    pub database: Totals,
    /// Waits for a database connection.
    pub borrow_wait: Totals,
}

/// One user's line.
#[derive(Debug, Default, Serialize)]
pub struct UserRow {
    /// The user label (`other` gathers names past the label cap).
    pub user: String,
    /// Client connections open now.
    pub clients: i64,
    /// Database connections open now (idle or lent).
    pub db_connections: i64,
    /// Clients of this user holding a database connection now.
    pub borrowed: usize,
    /// Clients of this user inside a transaction now.
    pub in_transaction: usize,
    /// Database connections lent since start.
    pub borrows: u64,
    /// Response latency totals.
    pub response: Totals,
    /// Database latency totals.
    pub database: Totals,
}

/// The clients, the first few listed.
#[derive(Debug, Serialize)]
pub struct Clients {
    /// Connected now.
    pub total: usize,
    /// Listed below (at most [`MAX_LISTED_CLIENTS`], lowest ids first).
    pub shown: usize,
    /// One entry a client.
    pub list: Vec<ClientRow>,
}

/// One client.
#[derive(Debug, Serialize)]
pub struct ClientRow {
    /// sluice's connection id (the client's `CONNECTION_ID()`).
    pub id: u32,
    /// Login name.
    pub user: String,
    /// The database account it runs as.
    pub backend_user: String,
    /// `running` (a command in progress), `in_transaction`, `pinned` or `idle`.
    pub state: &'static str,
    /// Why it is pinned to its connection, if it is.
    pub pin: Option<&'static str>,
    /// Whether it holds a database connection now.
    pub holds_connection: bool,
    /// Seconds in its state: idle time, unless running.
    pub state_seconds: f64,
    /// Seconds since it logged in.
    pub connected_seconds: f64,
}

impl ClientRow {
    fn state(activity: &ActivitySnapshot) -> &'static str {
        if activity.running {
            "running"
        } else if activity.in_transaction {
            "in_transaction"
        } else if activity.pin.is_some() {
            "pinned"
        } else {
            "idle"
        }
    }
}

/// What the registry says, counted once for both `/status` and `/metrics`.
struct Census {
    /// Clients holding a connection inside a transaction.
    in_transaction: usize,
    /// Clients holding a connection while pinned.
    pinned: usize,
    /// Per login name: (holding a connection, in a transaction).
    by_user: BTreeMap<String, (usize, usize)>,
    total: usize,
    listed: Vec<ClientRow>,
}

fn census(gateway: &Gateway, list: usize) -> Census {
    let now = Instant::now();
    let sessions = gateway.sessions.all();
    let mut census = Census {
        in_transaction: 0,
        pinned: 0,
        by_user: BTreeMap::new(),
        total: sessions.len(),
        listed: Vec::with_capacity(sessions.len().min(list)),
    };
    for (id, handle) in sessions {
        let activity = handle.activity.snapshot(now);
        let holds = handle.backend.get().1 != 0;
        let user = &handle.identity.user;
        let counts = census.by_user.entry(user.clone()).or_default();
        counts.0 += usize::from(holds);
        counts.1 += usize::from(activity.in_transaction);
        census.in_transaction += usize::from(holds && activity.in_transaction);
        census.pinned += usize::from(holds && activity.pin.is_some());
        if census.listed.len() < list {
            census.listed.push(ClientRow {
                id,
                user: user.clone(),
                backend_user: handle.identity.backend.user.clone(),
                state: ClientRow::state(&activity),
                pin: activity.pin,
                holds_connection: holds,
                state_seconds: activity.for_how_long.as_secs_f64(),
                connected_seconds: activity.age.as_secs_f64(),
            });
        }
    }
    census
}

/// Refreshes the gauges that are computed when scraped: the pool's counts, the remaining
/// connections, and connections lent inside a transaction or pinned.
pub fn export(gateway: &Gateway) {
    gateway.pool.export();
    let census = census(gateway, 0);
    let metrics = &gateway.metrics;
    let in_transaction = census.in_transaction as i64 + metrics.http_open_transactions.get();
    let gauges = &metrics.db_connections;
    gauges
        .with_label_values(&["in_transaction"])
        .set(in_transaction);
    gauges
        .with_label_values(&["pinned"])
        .set(census.pinned as i64);
}

/// Each series of a per-user metric, by its `user` label.
fn by_user(collector: &impl Collector) -> Vec<(String, Metric)> {
    collector
        .collect()
        .into_iter()
        .flat_map(|mut family| family.take_metric())
        .filter_map(|metric| {
            let user = metric
                .get_label()
                .iter()
                .find(|label| label.name() == "user")?
                .value()
                .to_owned();
            Some((user, metric))
        })
        .collect()
}

/// The snapshot `/status` answers; `server_max_connections` as the budget last read it.
pub fn snapshot(gateway: &Gateway, server_max_connections: Option<u64>) -> Status {
    let metrics = &gateway.metrics;
    let stats = gateway.pool.stats();
    let census = census(gateway, MAX_LISTED_CLIENTS);
    let users = &metrics.users;
    let mut rows: BTreeMap<String, UserRow> = BTreeMap::new();
    for (user, m) in by_user(&users.client_connections) {
        rows.entry(user).or_default().clients = m.get_gauge().get_value() as i64;
    }
    for (user, m) in by_user(&users.db_connections) {
        rows.entry(user).or_default().db_connections = m.get_gauge().get_value() as i64;
    }
    for (user, m) in by_user(&users.borrows) {
        rows.entry(user).or_default().borrows = m.get_counter().get_value() as u64;
    }
    let (mut response, mut database) = (Totals::default(), Totals::default());
    for (user, m) in by_user(&users.query_response) {
        let totals = Totals::of(&m);
        response.add(totals);
        rows.entry(user).or_default().response = totals;
    }
    for (user, m) in by_user(&users.query_database) {
        let totals = Totals::of(&m);
        database.add(totals);
        rows.entry(user).or_default().database = totals;
    }
    for (user, (borrowed, in_transaction)) in census.by_user {
        let label = users.label(&user).to_owned();
        let row = rows.entry(label).or_default();
        row.borrowed += borrowed;
        row.in_transaction += in_transaction;
    }
    let users: Vec<UserRow> = rows
        .into_iter()
        .map(|(user, mut row)| {
            row.user = user;
            row
        })
        .collect();
    Status {
        status: match gateway.shutdown.deadline() {
            None => "ok",
            Some(_) => "draining",
        },
        budget: Budget {
            max_db_connections: stats.max,
            server_max_connections,
            open: stats.total,
            remaining: stats.remaining(),
        },
        pool: PoolView {
            open: stats.total,
            idle: stats.idle,
            borrowed: stats.busy,
            waiters: metrics.borrow_waiters.get(),
            in_transaction: census.in_transaction
                + usize::try_from(metrics.http_open_transactions.get()).unwrap_or(0),
            pinned: census.pinned,
            paused: gateway.pool.is_paused(),
        },
        counters: Counters {
            borrows: metrics.borrows.get(),
            no_connections_left: metrics.no_connections_left.get(),
            borrow_timeouts: metrics.borrow_timeouts.get(),
            client_connections_received: metrics.client_connections_accepted.get(),
            client_connections_closed: metrics.client_connections_closed.get(),
            db_connections_opened: metrics.db_connections_opened.get(),
            db_connect_errors: metrics.db_connect_errors.get(),
        },
        latency: Latency {
            response,
            database,
            borrow_wait: Totals {
                count: metrics.borrow_wait.get_sample_count(),
                sum_seconds: metrics.borrow_wait.get_sample_sum(),
            },
        },
        users,
        lanes: gateway.pool.lanes(),
        clients: Clients {
            total: census.total,
            shown: census.listed.len(),
            list: census.listed,
        },
        fleet: gateway.fleet.as_ref().map(|board| board.view()),
        last_reload: gateway.reloads.last(),
    }
}
