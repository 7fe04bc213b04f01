//! Prometheus metrics, one registry per running gateway (so tests can run several).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Bucket bounds, in seconds, of the latency histograms: from well under a millisecond
/// (a point select on a pooled connection) to the default `borrow_timeout`.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 120.0,
];

/// Distinct users that get series of their own in the per-user metrics; later ones share
/// the `other` series, so made-up or numerous user names cannot grow the scrape unbounded.
pub const MAX_USER_LABELS: usize = 100;

/// The per-user metrics, labelled by database identity (`user`).
#[derive(Clone)]
pub struct UserMetrics {
    /// Authenticated client connections open now.
    pub client_connections: IntGaugeVec,
    /// Database connections open now (idle or lent).
    pub db_connections: IntGaugeVec,
    /// Database connections lent.
    pub borrows: IntCounterVec,
    /// Failed logins of users that exist (made-up names count as `unknown`).
    pub auth_failures: IntCounterVec,
    /// Statements refused because their user was over `max_statements_per_second`.
    pub rate_limited: IntCounterVec,
    /// Seconds from a client command's arrival to the last byte of its reply relayed, by
    /// login name (RDS Proxy's QueryResponseLatency): borrow wait included.
    pub query_response: HistogramVec,
    /// Seconds from a command sent to the database to its reply's end, by login name (RDS
    /// Proxy's QueryDatabaseResponseLatency).
    pub query_database: HistogramVec,
    labels: Arc<Mutex<HashSet<String>>>,
}

impl UserMetrics {
    /// The `user` label for `user`: its name while fewer than [`MAX_USER_LABELS`] names
    /// have been seen, else `other`.
    pub fn label<'a>(&self, user: &'a str) -> &'a str {
        let mut seen = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(user) {
            return user;
        }
        if seen.len() < MAX_USER_LABELS {
            seen.insert(user.to_owned());
            return user;
        }
        "other"
    }
}

/// Counts one thing in a gauge while it lives: no way out (an error, a panic) leaves the
/// gauge up.
#[derive(Debug)]
pub struct Held(IntGauge);

impl Held {
    /// Counts one more in `gauge` until dropped.
    pub fn new(gauge: IntGauge) -> Held {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl UserMetrics {
    /// Counts a client of `user` until the result is dropped.
    pub fn client(&self, user: &str) -> Held {
        Held::new(
            self.client_connections
                .with_label_values(&[self.label(user)]),
        )
    }

    /// Counts a database connection of `user` until the result is dropped.
    pub fn db_connection(&self, user: &str) -> Held {
        Held::new(self.db_connections.with_label_values(&[self.label(user)]))
    }

    /// `user`'s series of `sluice_user_borrows_total`, looked up once per session so that
    /// a borrow costs no label lookup.
    pub fn borrows(&self, user: &str) -> IntCounter {
        self.borrows.with_label_values(&[self.label(user)])
    }

    /// The latency histograms of `user`'s commands, looked up once per session so that a
    /// command's timing costs two atomic observations and no lookup.
    pub fn latency(&self, user: &str) -> QueryLatency {
        let label = [self.label(user)];
        QueryLatency {
            response: self.query_response.with_label_values(&label),
            database: self.query_database.with_label_values(&label),
        }
    }
}

/// `sluice_commands_total` by command byte. Each label's counter is looked up in the
/// vector once, the first time its command arrives, so counting a command costs one atomic
/// add and no label hashing or lock on the hot path. Series appear only for commands seen,
/// as with plain label lookups.
#[derive(Clone)]
pub struct CommandCounters {
    vec: IntCounterVec,
    by_byte: Arc<[OnceLock<IntCounter>; 256]>,
}

impl CommandCounters {
    fn new(vec: IntCounterVec) -> CommandCounters {
        CommandCounters {
            vec,
            by_byte: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// Counts one client command whose first payload byte is `command`.
    pub fn count(&self, command: u8) {
        self.by_byte[usize::from(command)]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[sluice_protocol::command::name(command)])
            })
            .inc();
    }
}

/// One user's query latency histograms (see [`UserMetrics::latency`]).
#[derive(Clone)]
pub struct QueryLatency {
    /// Command received to reply relayed.
    pub response: Histogram,
    /// Command sent to the database to its reply's end.
    pub database: Histogram,
}

/// Registers `metric` in `registry` and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Every metric sluice exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Per database user, with bounded cardinality.
    pub users: UserMetrics,
    /// Client connections open now.
    pub client_connections: IntGauge,
    /// Client connections accepted since start.
    pub client_connections_accepted: IntCounter,
    /// Client connections refused because `max_client_connections` was reached.
    pub client_connections_refused: IntCounter,
    /// Sockets connected and not yet authenticated.
    pub client_logins_pending: IntGauge,
    /// Logins cut before authenticating, by reason (timeout, evicted, too_large).
    pub login_aborts: IntCounterVec,
    /// Failed client logins, by reason (`unknown_user`, `bad_password`, `bad_packet`,
    /// `unsupported_plugin`, `auth_query_failed`, `tls_required`).
    pub auth_failures: IntCounterVec,
    /// Client logins received (before the password check), by `transport`: `tls` or
    /// `plain`.
    pub client_logins: IntCounterVec,
    /// Client sessions that switched to the compressed protocol (`CLIENT_COMPRESS`).
    pub compressed_sessions: IntCounter,
    /// `caching_sha2_password` exchanges, by `path`: `fast` (from the cache), `full_tls`
    /// (the password inside TLS), `full_rsa` (RSA-encrypted), `empty` (no password).
    pub caching_sha2_exchanges: IntCounterVec,
    /// TLS handshakes with clients that failed, by `listener` (`mysql`, `http`) and `reason`
    /// (`timeout`, `disconnected`, `alert_received`: the client refused the certificate,
    /// `bad_handshake`: garbage or no common ground, `other`).
    pub tls_handshake_failures: IntCounterVec,
    /// Auth query lookups, by `result`: `hit` and `unknown_hit` (answered from the cache),
    /// `read` (the query ran), `reread` (it ran again after a refused proof), `failed`.
    pub auth_query_lookups: IntCounterVec,
    /// Database connections by state (`busy`, `idle`, `total`, `max`, `in_transaction`,
    /// `pinned`); set when scraped.
    pub db_connections: IntGaugeVec,
    /// Database connections opened since start.
    pub db_connections_opened: IntCounter,
    /// Database connections opened with the compressed protocol (`[backend] compress`): set
    /// beside `db_connections_opened`, it shows whether the database granted it.
    pub db_connections_compressed: IntCounter,
    /// Database connections closed since start, by reason.
    pub db_connections_closed: IntCounterVec,
    /// Failed attempts to open a database connection.
    pub db_connect_errors: IntCounter,
    /// Borrowers that gave up waiting for a database connection.
    pub borrow_timeouts: IntCounter,
    /// Borrowers refused because every connection of the budget stayed busy for the whole
    /// `borrow_timeout` (`BorrowError::Exhausted`; not a user ceiling): the number the
    /// serverless articles watch as "no connections left".
    pub no_connections_left: IntCounter,
    /// Borrowers waiting in line for a database connection now.
    pub borrow_waiters: IntGauge,
    /// Seconds a borrower waited for a database connection (opening one included).
    pub borrow_wait: Histogram,
    /// The budget less the database connections open now; set when scraped.
    pub database_connections_remaining: IntGauge,
    /// Client connections closed since start (every accepted one, logged in or not).
    pub client_connections_closed: IntCounter,
    /// Client statements killed at `backend.query_timeout`.
    pub query_timeouts: IntCounter,
    /// Client commands forwarded, by command name.
    pub commands: CommandCounters,
    /// Clients cut for idling, by `kind` (`client`, `transaction`).
    pub idle_timeouts: IntCounterVec,
    /// Clients pinned to their database connection, by reason.
    pub pins: IntCounterVec,
    /// Database connections lent to clients (once per transaction or statement in
    /// transaction pooling).
    pub borrows: IntCounter,
    /// Round trips added to bring a lent connection to its client's session, by `kind`
    /// (`schema`, `change_user`, `variables`, `multi_statements`, `login`).
    pub session_adoptions: IntCounterVec,
    /// Statements prepared on database connections (prepare cache misses and re-prepares).
    pub statements_prepared: IntCounter,
    /// Client prepares answered from sluice's metadata cache.
    pub statement_cache_hits: IntCounter,
    /// Statements prepared again on a database connection that lacked them, at execute.
    pub statement_reprepares: IntCounter,
    /// Statements closed on a database connection to respect `pool.max_prepared_statements`.
    pub statement_evictions: IntCounter,
    /// Data API requests, by `endpoint` and HTTP `status`.
    pub http_requests: IntCounterVec,
    /// Data API request latency in seconds, by `endpoint`.
    pub http_latency: HistogramVec,
    /// Data API transactions open now (each holds a database connection).
    pub http_open_transactions: IntGauge,
    /// Data API connections and requests cut off by a limit, by `reason`
    /// (`max_connections`, `max_concurrent_requests`, `header_read_timeout`,
    /// `body_read_timeout`, `keepalive_timeout`, `write_timeout`).
    pub http_rejections: IntCounterVec,
    /// Connections that bypassed sluice killed by the janitor, by database `user` (bounded
    /// like the other per-user series).
    pub janitor_kills: IntCounterVec,
    /// Janitor rounds that read the processlist, whether they killed anything or not.
    pub janitor_rounds: IntCounter,
    /// 1 for where the pool's slots come from now (`mode`: `redis` lease or `static`
    /// share), 0 for the other; no series when the fleet is off.
    pub fleet_mode: IntGaugeVec,
    /// Slots this instance's fleet lease holds in Redis.
    pub fleet_lease_slots: IntGauge,
    /// Fleet heartbeats that failed to reach Redis.
    pub fleet_redis_errors: IntCounter,
    /// Configuration reloads (SIGHUP, `POST /reload`) by `result`: `ok` (applied) or
    /// `refused` (invalid; the old configuration stays).
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("sluice".into()), None).expect("valid prefix");
        let gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            registered(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let db_connections = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("db_connections", "Database connections by state"),
                &["state"],
            )
            .expect("valid metric"),
        );
        let tls_handshake_failures = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tls_handshake_failures_total",
                    "TLS handshakes with clients that failed, by listener and reason",
                ),
                &["listener", "reason"],
            )
            .expect("valid metric"),
        );
        let http_requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "Data API requests by endpoint and HTTP status",
                ),
                &["endpoint", "status"],
            )
            .expect("valid metric"),
        );
        let http_latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Data API request latency by endpoint",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["endpoint"],
            )
            .expect("valid metric"),
        );
        let user_histogram = |name: &str, help: &str| {
            registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    &["user"],
                )
                .expect("valid metric"),
            )
        };
        let borrow_wait = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "borrow_wait_seconds",
                    "Seconds borrowers waited for a database connection, opening one included",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let user_gauge = |name: &str, help: &str| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["user"]).expect("valid metric"),
            )
        };
        let users = UserMetrics {
            client_connections: user_gauge(
                "user_client_connections",
                "Authenticated client connections open now, by database user",
            ),
            db_connections: user_gauge(
                "user_db_connections",
                "Database connections open now (idle or lent), by database user",
            ),
            borrows: counter_vec(
                "user_borrows_total",
                "Database connections lent, by database user",
                "user",
            ),
            auth_failures: counter_vec(
                "user_auth_failures_total",
                "Failed logins by user (unknown for names no source knows)",
                "user",
            ),
            rate_limited: counter_vec(
                "user_rate_limited_total",
                "Statements refused over the user's max_statements_per_second, by login name",
                "user",
            ),
            query_response: user_histogram(
                "query_response_seconds",
                "Seconds from a client command's arrival to its reply relayed, by login name",
            ),
            query_database: user_histogram(
                "query_database_response_seconds",
                "Seconds from a command sent to the database to the end of its reply, by login name",
            ),
            labels: Arc::default(),
        };
        Metrics {
            users,
            http_requests,
            http_latency,
            http_open_transactions: gauge(
                "http_open_transactions",
                "Data API transactions open now, each holding a database connection",
            ),
            http_rejections: counter_vec(
                "http_rejections_total",
                "Data API connections and requests cut off by a limit or timeout",
                "reason",
            ),
            client_connections: gauge("client_connections", "Client connections open now"),
            client_connections_accepted: counter(
                "client_connections_accepted_total",
                "Client connections accepted",
            ),
            client_connections_refused: counter(
                "client_connections_refused_total",
                "Client connections refused at max_client_connections",
            ),
            client_logins_pending: gauge(
                "client_logins_pending",
                "Client sockets connected and not yet authenticated",
            ),
            login_aborts: counter_vec(
                "login_aborts_total",
                "Client logins cut before authenticating",
                "reason",
            ),
            auth_failures: counter_vec("auth_failures_total", "Failed client logins", "reason"),
            client_logins: counter_vec(
                "client_logins_total",
                "Client logins received, by transport (tls, plain)",
                "transport",
            ),
            compressed_sessions: counter(
                "client_compressed_sessions_total",
                "Client sessions that switched to the compressed protocol",
            ),
            caching_sha2_exchanges: counter_vec(
                "caching_sha2_exchanges_total",
                "caching_sha2_password exchanges with clients, by path",
                "path",
            ),
            tls_handshake_failures,
            auth_query_lookups: counter_vec(
                "auth_query_lookups_total",
                "User names looked up for the auth query, by whether the database was asked",
                "result",
            ),
            db_connections,
            db_connections_opened: counter(
                "db_connections_opened_total",
                "Database connections opened",
            ),
            db_connections_compressed: counter(
                "db_connections_compressed_total",
                "Database connections opened with the compressed protocol",
            ),
            db_connections_closed: counter_vec(
                "db_connections_closed_total",
                "Database connections closed",
                "reason",
            ),
            db_connect_errors: counter(
                "db_connect_errors_total",
                "Failed database connection attempts",
            ),
            borrow_timeouts: counter(
                "borrow_timeouts_total",
                "Clients that waited pool.borrow_timeout for a database connection and gave up",
            ),
            no_connections_left: counter(
                "no_connections_left_total",
                "Borrowers refused because the pool stayed exhausted for pool.borrow_timeout",
            ),
            borrow_waiters: gauge(
                "borrow_waiters",
                "Borrowers waiting in line for a database connection now",
            ),
            borrow_wait,
            database_connections_remaining: gauge(
                "database_connections_remaining",
                "max_db_connections less the database connections open now",
            ),
            client_connections_closed: counter(
                "client_connections_closed_total",
                "Client connections closed (every accepted one, logged in or not)",
            ),
            query_timeouts: counter(
                "query_timeouts_total",
                "Client statements killed because their reply was not done within backend.query_timeout",
            ),
            commands: CommandCounters::new(counter_vec(
                "commands_total",
                "Client commands by type",
                "command",
            )),
            pins: counter_vec(
                "pins_total",
                "Clients pinned to one database connection by session state sluice cannot carry",
                "reason",
            ),
            borrows: counter("borrows_total", "Database connections lent to clients"),
            session_adoptions: counter_vec(
                "session_adoptions_total",
                "Round trips added to bring a lent database connection to its client's session",
                "kind",
            ),
            statements_prepared: counter(
                "statements_prepared_total",
                "Statements prepared on database connections",
            ),
            statement_cache_hits: counter(
                "statement_cache_hits_total",
                "Client prepares answered from sluice's statement metadata cache",
            ),
            statement_reprepares: counter(
                "statement_reprepares_total",
                "Statements prepared on a database connection at execute time because it lacked them",
            ),
            statement_evictions: counter(
                "statement_evictions_total",
                "Statements closed on a database connection to stay under pool.max_prepared_statements",
            ),
            idle_timeouts: counter_vec(
                "idle_timeouts_total",
                "Clients cut for idling outside (client) or inside (transaction) a transaction",
                "kind",
            ),
            janitor_kills: counter_vec(
                "janitor_kills_total",
                "Sleeping connections that bypassed sluice killed by the janitor, by database user",
                "user",
            ),
            janitor_rounds: counter(
                "janitor_rounds_total",
                "Janitor rounds that read the server's processlist",
            ),
            fleet_mode: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "fleet_mode",
                        "1 for where the pool's slots come from: a Redis lease or the static share",
                    ),
                    &["mode"],
                )
                .expect("valid metric"),
            ),
            fleet_lease_slots: gauge(
                "fleet_lease_slots",
                "Connection slots this instance's fleet lease holds in Redis",
            ),
            fleet_redis_errors: counter(
                "fleet_redis_errors_total",
                "Fleet heartbeats that failed to reach Redis",
            ),
            config_reloads: counter_vec(
                "config_reloads_total",
                "Configuration reloads, applied (ok) or refused as invalid (refused)",
                "result",
            ),
            registry,
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_under_their_names() {
        let metrics = Metrics::new();
        for command in [3, 3, 0x17, 0xee, 0xef] {
            metrics.commands.count(command);
        }
        let text = metrics.render();
        assert!(text.contains("sluice_commands_total{command=\"COM_QUERY\"} 2"));
        assert!(text.contains("sluice_commands_total{command=\"COM_STMT_EXECUTE\"} 1"));
        // Bytes without a name share one series.
        assert!(text.contains("sluice_commands_total{command=\"unknown command\"} 2"));
        assert!(!text.contains("COM_PING"), "only commands seen have series");
    }
}
