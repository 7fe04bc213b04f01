//! Configuration: the TOML file, its defaults, and validation into runtime settings.
//!
//! Every setting has a default, so `sluice serve` runs with no file at all. Command-line
//! flags and `SLUICE_*` environment variables override the file (see `cli.rs`). Validation
//! reports every problem with the file and key it concerns, and nothing starts until the
//! whole configuration is valid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_protocol::auth::Credential;

use crate::admin::console::ConsoleSettings;
use crate::pool::BackendTimeouts;
use crate::queue::{LaneKey, Quota};
use crate::tls::{BackendTls, BackendTlsMode, TlsMode};

/// The configuration file as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where MySQL-protocol clients connect.
    pub listen: SocketAddr,
    /// Where `/healthz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// Threads that run client sessions and database connections; 0: half the cores, at
    /// least one (see [`worker_threads`]).
    pub worker_threads: usize,
    /// SHA-256 (hex) of the bearer token the admin listener's actions (`POST /pause`,
    /// `POST /resume`) require; they are off without one.
    pub admin_token_sha256: Option<String>,
    /// Most authenticated client connections at once; more are refused with ERR 1040.
    pub max_client_connections: usize,
    /// Most sockets still logging in at once; at the cap the oldest login is dropped.
    pub max_pending_logins: usize,
    /// A client that has not authenticated this long after connecting is disconnected.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// The answer to a failed login from an address and user is delayed this long, doubling
    /// with each further failure of that pair up to `failed_login_delay_max`.
    #[serde(with = "humantime_serde")]
    pub failed_login_delay: Duration,
    /// Cap on the failed-login delay; zero turns the delay off.
    #[serde(with = "humantime_serde")]
    pub failed_login_delay_max: Duration,
    /// A client that takes no bytes of a reply for this long is disconnected (its
    /// transaction rolled back, its database connection reset and returned).
    #[serde(with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// On SIGTERM/SIGINT, statements and transactions in flight get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// During a drain, a client between transactions is still served until it has sent no
    /// command for this long (or `shutdown_timeout` passes): one that connected just before
    /// the drain began runs its statements instead of failing with 1053. "0s" closes idle
    /// clients at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_idle_grace: Duration,
    /// Log a line when a client connects and when it leaves normally. Off by default: a
    /// serverless fleet connects once per invocation, and two lines per connection are
    /// noise that costs about a tenth of a login's CPU; failed logins and sessions ended by
    /// an error are logged either way.
    pub log_connections: bool,
    /// Largest client packet accepted, like the server's `max_allowed_packet`.
    pub max_packet_size: usize,
    /// A client idle this long outside a transaction is disconnected.
    #[serde(with = "humantime_serde")]
    pub idle_client_timeout: Duration,
    /// A client idle this long inside an open transaction (a frozen or dead function holding
    /// locks) has the transaction rolled back and its database connection taken back.
    #[serde(with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// After a statement that raised warnings or an error, the client keeps its database
    /// connection for its next command (where `SHOW WARNINGS` finds them) for at most this
    /// long; "0s" gives the connection back at once.
    #[serde(with = "humantime_serde")]
    pub diagnostics_hold: Duration,
    /// The database sluice pools connections to.
    pub backend: BackendConfig,
    /// Pool limits and timers.
    pub pool: PoolConfig,
    /// Default pool mode for users that do not set their own.
    pub pool_mode: PoolMode,
    /// Users sluice knows itself, each with its database login (checked before, or after,
    /// the database's own users: see `[auth]`).
    pub users: Vec<UserConfig>,
    /// `[auth]`: where identities come from, and the auth query's cache.
    pub auth: AuthConfig,
    /// Where the SQL-over-HTTP Data API listens; off when unset.
    pub http_listen: Option<SocketAddr>,
    /// `[http]`: the Data API's keys, limits and TLS.
    pub http: HttpConfig,
    /// PEM certificate chain shown to clients that ask for TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Whether MySQL-protocol clients may (`allow`, the default with a certificate) or must
    /// (`require`) use TLS, or are not offered it (`off`, the default without one).
    pub tls_mode: Option<TlsMode>,
    /// `[janitor]`: kills sleeping connections that bypass sluice when the server fills up.
    pub janitor: JanitorConfig,
    /// `[fleet]`: several instances sharing one database budget through leases in Redis;
    /// off (one instance owns the whole budget) when absent.
    pub fleet: Option<FleetConfig>,
    /// `[console]`: the MySQL-protocol admin console, off unless `listen` is set.
    pub console: ConsoleConfig,
}

/// `[console]`: where the admin console listens and who may log in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Its address; the console is off when unset.
    pub listen: Option<SocketAddr>,
    /// The login name it accepts (default `admin`).
    pub user: Option<String>,
    /// Its password in plain text; or
    pub password: Option<String>,
    /// its native hash (`SELECT PASSWORD('...')`).
    pub password_hash: Option<String>,
}

impl ConsoleConfig {
    /// The console's settings when it is on, after reporting what is wrong with them.
    fn validate(&self, issue: &mut impl FnMut(&str, String)) -> Option<ConsoleSettings> {
        let listen = self.listen?;
        let credential = match (self.password.as_deref(), self.password_hash.as_deref()) {
            (Some(plain), None) if !plain.is_empty() => Credential::Hash(
                sluice_protocol::auth::NativeHash::from_password(plain.as_bytes()),
            ),
            (None, Some(hash)) => match sluice_protocol::auth::NativeHash::parse(hash) {
                Some(hash) => Credential::Hash(hash),
                None => {
                    issue(
                        "console.password_hash",
                        "must be '*' followed by 40 hex digits, as printed by SELECT PASSWORD('...')".into(),
                    );
                    return None;
                }
            },
            _ => {
                issue(
                    "console",
                    "the console needs exactly one of a non-empty password or password_hash".into(),
                );
                return None;
            }
        };
        Some(ConsoleSettings {
            listen,
            user: self.user.clone().unwrap_or_else(|| "admin".into()),
            credential,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6033)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 6080)),
            admin_token_sha256: None,
            worker_threads: 0,
            max_client_connections: 10_000,
            max_pending_logins: 1024,
            login_timeout: Duration::from_secs(10),
            failed_login_delay: Duration::from_millis(100),
            failed_login_delay_max: Duration::from_secs(5),
            client_write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            shutdown_idle_grace: Duration::from_secs(1),
            log_connections: false,
            max_packet_size: 64 * 1024 * 1024,
            idle_client_timeout: Duration::from_secs(1800),
            idle_transaction_timeout: Duration::from_secs(60),
            diagnostics_hold: Duration::from_secs(1),
            backend: BackendConfig::default(),
            pool: PoolConfig::default(),
            pool_mode: PoolMode::default(),
            users: Vec::new(),
            auth: AuthConfig::default(),
            http_listen: None,
            http: HttpConfig::default(),
            tls_cert: None,
            tls_key: None,
            tls_mode: None,
            janitor: JanitorConfig::default(),
            fleet: None,
            console: ConsoleConfig::default(),
        }
    }
}

/// `[fleet]`: the budget is shared by several sluice instances, each leasing slots of it
/// in Redis with a TTL renewed by heartbeat, so a dead instance's slots come back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Where the leases live (`redis://host:port/db`); with `sentinel`, only the login and
    /// database used on the master it names; unused with `cluster_nodes`.
    pub redis_url: String,
    /// `[fleet.sentinel]`: the leases live on the master these Redis Sentinels name, asked
    /// again at every reconnection so a failover is followed.
    pub sentinel: Option<SentinelConfig>,
    /// Some nodes of a Redis Cluster (`redis://[user:password@]host:port`, one login for
    /// all): the leases live on whichever master serves `budget_key`'s slot, found again
    /// at every reconnection. Empty: not a cluster.
    pub cluster_nodes: Vec<String>,
    /// This instance's name in the leases; unique in the fleet (default: host name, pid and
    /// listen port).
    pub instance_id: Option<String>,
    /// A lease not renewed for this long expires and its slots go back to the fleet.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the lease is renewed, usage published and the grant adjusted.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Instances the budget is shared by: the share each may use without Redis
    /// (budget / expected_instances), which Redis also keeps free for absent ones.
    pub expected_instances: usize,
    /// The Redis key of the leases; one per database.
    pub budget_key: String,
}

/// `[fleet.sentinel]`: Redis Sentinels and the name of the master they watch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in the sentinels' configuration (`sentinel monitor NAME ...`).
    pub master: String,
    /// The sentinels' addresses (`redis://host:26379`), tried in order.
    pub nodes: Vec<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            sentinel: None,
            cluster_nodes: Vec::new(),
            instance_id: None,
            lease_ttl: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            expected_instances: 2,
            budget_key: "sluice:budget".into(),
        }
    }
}

impl FleetConfig {
    /// Reports what is wrong with `[fleet]`.
    fn check(&self, issue: &mut impl FnMut(&str, String)) {
        if self.heartbeat.is_zero() {
            issue("fleet.heartbeat", "must be greater than zero".into());
        }
        if self.lease_ttl < self.heartbeat * 2 {
            issue(
                "fleet.lease_ttl",
                "must be at least twice fleet.heartbeat, or a late renewal loses the lease".into(),
            );
        }
        if self.expected_instances == 0 {
            issue("fleet.expected_instances", "must be at least 1".into());
        }
        if self.budget_key.is_empty() {
            issue("fleet.budget_key", "must not be empty".into());
        }
        if redis::parse_redis_url(&self.redis_url).is_none() {
            issue(
                "fleet.redis_url",
                format!("{:?} is not a redis:// URL", self.redis_url),
            );
        }
        if let Some(sentinel) = &self.sentinel {
            if sentinel.master.is_empty() {
                issue("fleet.sentinel.master", "must not be empty".into());
            }
            if sentinel.nodes.is_empty() {
                issue(
                    "fleet.sentinel.nodes",
                    "must name at least one sentinel".into(),
                );
            }
            for node in &sentinel.nodes {
                if redis::parse_redis_url(node).is_none() {
                    issue(
                        "fleet.sentinel.nodes",
                        format!("{node:?} is not a redis:// URL"),
                    );
                }
            }
            if !self.cluster_nodes.is_empty() {
                issue(
                    "fleet.cluster_nodes",
                    "a Redis Cluster has no Sentinel: give [fleet.sentinel] or cluster_nodes, not both"
                        .into(),
                );
            }
        }
        if let Some(problem) = cluster_problem(&self.cluster_nodes) {
            issue("fleet.cluster_nodes", problem);
        }
    }
}

/// What is wrong with `[fleet] cluster_nodes`, if anything: each must be a `redis://` URL
/// of database 0 (a cluster has no other), and the client must accept them together (one
/// login, one TLS mode: it uses the same on every node).
fn cluster_problem(nodes: &[String]) -> Option<String> {
    use redis::IntoConnectionInfo;
    if nodes.is_empty() {
        return None;
    }
    for node in nodes {
        if redis::parse_redis_url(node).is_none() {
            return Some(format!("{node:?} is not a redis:// URL"));
        }
        match node.as_str().into_connection_info() {
            Err(e) => return Some(format!("{node:?}: {e}")),
            Ok(info) if info.redis_settings().db() != 0 => {
                return Some(format!(
                    "{node:?} names a database; a Redis Cluster has only database 0"
                ))
            }
            Ok(_) => {}
        }
    }
    redis::cluster::ClusterClient::new(nodes.iter().map(String::as_str))
        .err()
        .map(|e| e.to_string())
}

/// `[janitor]`: the cleanup `serverless-mysql` does from inside every function, done once,
/// centrally: above a utilisation of the server's `max_connections`, kill sleeping
/// connections of the listed database users that bypass sluice (never sluice's own).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JanitorConfig {
    /// Off by default: killing connections is for operators who asked for it.
    pub enabled: bool,
    /// The database users whose sleeping connections may be killed; no other user's are.
    pub users: Vec<String>,
    /// Connected threads over `max_connections` above which the janitor kills, in (0, 1].
    pub threshold: f64,
    /// A connection must have slept at least this long to be killed.
    #[serde(with = "humantime_serde")]
    pub min_idle: Duration,
    /// How often the processlist is read.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most connections killed in one round, so one round cannot empty the server.
    pub max_kills_per_round: usize,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        JanitorConfig {
            enabled: false,
            users: Vec::new(),
            threshold: 0.8,
            min_idle: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            max_kills_per_round: 10,
        }
    }
}

impl JanitorConfig {
    /// Reports what is wrong with `[janitor]` (the values are checked even when it is off,
    /// so turning it on later cannot reveal an old mistake).
    fn check(&self, issue: &mut impl FnMut(&str, String)) {
        if self.enabled && self.users.is_empty() {
            issue(
                "janitor.users",
                "name at least one database user whose connections may be killed".into(),
            );
        }
        if self.users.iter().any(|user| user.is_empty()) {
            issue("janitor.users", "user names must not be empty".into());
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            issue(
                "janitor.threshold",
                "must be above 0 and at most 1 (a share of max_connections)".into(),
            );
        }
        for (key, value) in [
            ("janitor.min_idle", self.min_idle),
            ("janitor.interval", self.interval),
        ] {
            if value.is_zero() {
                issue(key, "must be greater than zero".into());
            }
        }
        if self.max_kills_per_round == 0 {
            issue("janitor.max_kills_per_round", "must be at least 1".into());
        }
    }
}

/// `[http]`: the SQL-over-HTTP Data API. Its connections come from the same pool as
/// MySQL-protocol clients', so these limits only bound what one request may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `"shared"`: HTTPS with the top-level `tls_cert` and `tls_key` (instead of its own
    /// `tls_cert`/`tls_key` here).
    pub tls: Option<SharedTls>,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted (413 beyond).
    pub max_body_size: usize,
    /// Largest result, in bytes of JSON values, one request may produce (507 beyond).
    pub max_result_size: usize,
    /// Most rows one result may hold (507 beyond).
    pub max_rows: usize,
    /// A statement running longer is stopped by the server (`max_statement_time`).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A transaction unused this long is rolled back and its connection freed.
    #[serde(with = "humantime_serde")]
    pub transaction_idle_timeout: Duration,
    /// A transaction is rolled back once this old, however busy.
    #[serde(with = "humantime_serde")]
    pub transaction_max_lifetime: Duration,
    /// A client must send a request's headers within this long: from accept for its first
    /// request, from its first byte for later ones. Also bounds the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this long (408 beyond, and the connection is
    /// closed).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A response the client accepts no byte of for this long is cut, and its request
    /// (with the database connection it holds) is abandoned.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Most HTTP connections held at once; sockets beyond are answered 503 and closed at
    /// once, so they cannot use up the file descriptors the other listeners need.
    pub max_connections: usize,
    /// Most requests in progress at once (a streamed response counts until its last byte);
    /// more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// The bearer keys: each maps to a user in `[[users]]`.
    pub api_keys: Vec<ApiKeyConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            tls: None,
            tls_cert: None,
            tls_key: None,
            max_body_size: 1024 * 1024,
            max_result_size: 16 * 1024 * 1024,
            max_rows: 100_000,
            statement_timeout: Duration::from_secs(30),
            transaction_idle_timeout: Duration::from_secs(180),
            transaction_max_lifetime: Duration::from_secs(900),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_concurrent_requests: 256,
            api_keys: Vec::new(),
        }
    }
}

/// `[[http.api_keys]]`: one bearer key, stored as its SHA-256 so the file holds no secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The sluice user requests with this key act as.
    pub user: String,
    /// SHA-256 of the key, 64 hex digits (`printf %s KEY | sha256sum`).
    pub key_sha256: String,
}

/// `[backend]`: where the database is and how sluice logs in to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `mysql://USER[:PASSWORD]@HOST[:PORT][/DATABASE]`.
    pub url: String,
    /// A file holding the backend password (first line), instead of putting it in `url`.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the backend password.
    pub password_env: Option<String>,
    /// How long one connection attempt (TCP and login) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A read or write on an open database connection that moves no byte for this long
    /// fails it. Generous: a statement that legitimately runs long (`SELECT SLEEP(n)`, a
    /// lock wait, a big sort) sends nothing until it is done.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// A client command whose reply has not finished after this long has its statement
    /// killed (`KILL QUERY`); off when unset.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Option<Duration>,
    /// TLS toward the database, like the MySQL clients' `--ssl-mode`.
    pub tls: BackendTlsMode,
    /// PEM certificate(s) of the authority that signs the database's certificate, for
    /// `tls = "verify-ca"` and `"verify-identity"`.
    pub tls_ca: Option<PathBuf>,
    /// The compressed protocol (`CLIENT_COMPRESS`, zlib) toward the database. Off by
    /// default: on the same host or network it only costs CPU on both ends; it pays when the
    /// database is across a WAN or a link billed by the byte (another zone).
    pub compress: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            url: "mysql://root@127.0.0.1:3306".to_owned(),
            password_file: None,
            password_env: None,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(600),
            query_timeout: None,
            tls: BackendTlsMode::default(),
            tls_ca: None,
            compress: false,
        }
    }
}

/// `[pool]`: the bounded set of database connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Hard cap on connections sluice opens to the database.
    pub max_db_connections: usize,
    /// Idle connections kept open even when unused.
    pub min_idle: usize,
    /// Most idle connections kept: one given back beyond them is closed at once, so a
    /// quiet pool gives connections back to the database soon after a burst (none when
    /// unset: `idle_timeout` alone trims).
    pub max_idle: Option<usize>,
    /// An idle connection beyond `min_idle` is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection is closed once this old, when next idle.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// A connection idle longer than this is pinged before it is lent out.
    #[serde(with = "humantime_serde")]
    pub ping_after_idle: Duration,
    /// How long a client waits for a connection before getting an error.
    #[serde(with = "humantime_serde")]
    pub borrow_timeout: Duration,
    /// First delay between reconnect attempts while the database is down.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_initial: Duration,
    /// Largest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// Most statements kept prepared on one database connection; the least recently used
    /// is closed beyond that, so unique statements in a loop cannot exhaust the server's
    /// `max_prepared_stmt_count`.
    pub max_prepared_statements: usize,
    /// Statements whose metadata sluice remembers, to answer a prepare of the same text
    /// without a database round trip.
    pub statement_cache_size: usize,
    /// Most connections one database user may have lent at once (none when unset), so
    /// one busy application cannot take the whole budget from the others.
    pub max_db_connections_per_user: Option<usize>,
    /// The budget as a share of the server's `max_connections` (like RDS Proxy's
    /// MaxConnectionsPercent), within `max_db_connections`; unset: `max_db_connections`.
    pub max_connections_percent: Option<u8>,
    /// Connections of the server's `max_connections` the budget always leaves free, for
    /// administrators and monitoring.
    pub reserved_connections: usize,
    /// How often the server's `max_connections` is read again, so the budget follows it.
    #[serde(with = "humantime_serde")]
    pub budget_refresh: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_db_connections: 20,
            min_idle: 0,
            max_idle: None,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            ping_after_idle: Duration::from_secs(5),
            borrow_timeout: Duration::from_secs(120),
            reconnect_backoff_initial: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            max_prepared_statements: 256,
            statement_cache_size: 4096,
            max_db_connections_per_user: None,
            max_connections_percent: None,
            reserved_connections: 5,
            budget_refresh: Duration::from_secs(60),
        }
    }
}

/// How long a client keeps a database connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Only for a statement in autocommit mode, a transaction, or while pinned.
    #[default]
    Transaction,
    /// For as long as the client is connected.
    Session,
}

/// `[auth]`: the sources of identities, tried in order until one knows the user name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Which sources are on, in the order they are asked; the first that knows a user
    /// decides (a wrong password there is not retried against the next).
    pub sources: Vec<AuthSource>,
    /// Reads a user's accounts through the `[backend]` login: one `?` (the user name),
    /// one row per `user@host` account with its host, authentication plugin and stored
    /// password hash, in that order.
    pub query: String,
    /// How long a user's accounts read by the query are trusted; a proof that fails against
    /// them reads them again at once. Zero reads them for every login.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a user name the query did not find is refused without asking again, so a
    /// flood of made-up names costs the database one query per name and period.
    #[serde(with = "humantime_serde")]
    pub unknown_user_ttl: Duration,
    /// Most user names (found or not) kept; the least recently used is forgotten first.
    /// Also bounds the `caching_sha2_password` fast-path cache.
    pub cache_size: usize,
    /// The plugin the greeting proposes; a client may still answer with the other one.
    pub default_plugin: AuthPlugin,
    /// A PEM RSA private key (PKCS#1 or PKCS#8) for `caching_sha2_password` clients without
    /// TLS; one is generated when first needed if unset.
    pub rsa_private_key: Option<PathBuf>,
}

/// The password plugins sluice speaks toward clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthPlugin {
    /// `mysql_native_password`.
    #[default]
    MysqlNativePassword,
    /// `caching_sha2_password` (MySQL 8's default).
    CachingSha2Password,
}

impl AuthPlugin {
    /// Its name on the wire and in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            AuthPlugin::MysqlNativePassword => sluice_protocol::auth::NATIVE_PASSWORD,
            AuthPlugin::CachingSha2Password => sluice_protocol::auth::CACHING_SHA2_PASSWORD,
        }
    }
}

/// The MariaDB (10.4 and later) auth query: `mysql.user` is a view over `mysql.global_priv`,
/// which keeps each account's plugin and hash in JSON. Locked accounts are left out, so
/// locking one shuts its user out of sluice within `cache_ttl`, pooled connections included.
pub const MARIADB_AUTH_QUERY: &str = "SELECT Host, JSON_VALUE(Priv, '$.plugin'), \
     JSON_VALUE(Priv, '$.authentication_string') FROM mysql.global_priv \
     WHERE User = ? AND NOT COALESCE(JSON_VALUE(Priv, '$.account_locked'), 0)";

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            sources: vec![AuthSource::Users, AuthSource::AuthQuery],
            query: MARIADB_AUTH_QUERY.to_owned(),
            cache_ttl: Duration::from_secs(60),
            unknown_user_ttl: Duration::from_secs(5),
            cache_size: 10_000,
            default_plugin: AuthPlugin::default(),
            rsa_private_key: None,
        }
    }
}

/// One source of identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// The `[[users]]` of the configuration.
    Users,
    /// The database's own accounts, read with `auth.query`.
    AuthQuery,
}

impl AuthSource {
    /// Its name in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            AuthSource::Users => "users",
            AuthSource::AuthQuery => "auth_query",
        }
    }
}

/// `backend = "shared"` on a `[[users]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedBackend {
    /// The user's clients run as the `[backend]` account.
    Shared,
}

/// `tls = "shared"` in `[http]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedTls {
    /// The Data API uses the top-level `tls_cert` and `tls_key`.
    Shared,
}

/// `[[users]]`: one client login.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Overrides the top-level `pool_mode` for this user.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Plain-text password (empty for none).
    #[serde(default)]
    pub password: Option<String>,
    /// The password as a MySQL native hash, `*` + 40 hex digits (`SELECT PASSWORD('...')`).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Databases this user may name in Data API requests; any when unset.
    #[serde(default)]
    pub databases: Option<Vec<String>>,
    /// `"shared"`: its clients run as the `[backend]` account. Otherwise the user names its
    /// own database login with `backend_user` and a `backend_password*`; one of the two is
    /// required.
    #[serde(default)]
    pub backend: Option<SharedBackend>,
    /// The database user its clients run as (default: `name`).
    #[serde(default)]
    pub backend_user: Option<String>,
    /// The password of `backend_user` (empty for none).
    #[serde(default)]
    pub backend_password: Option<String>,
    /// An environment variable holding the password of `backend_user`.
    #[serde(default)]
    pub backend_password_env: Option<String>,
    /// A file whose first line is the password of `backend_user`.
    #[serde(default)]
    pub backend_password_file: Option<PathBuf>,
    /// Overrides the top-level `tls_mode` for this user's logins.
    #[serde(default)]
    pub tls_mode: Option<TlsMode>,
    /// Most statements per second all of this user's clients together may run (a token
    /// bucket of that size); more are refused with ERR 1226 and may be retried.
    #[serde(default)]
    pub max_statements_per_second: Option<u32>,
    /// Database connections reserved for this user's clients: other users are never lent
    /// the ones it may still need.
    #[serde(default)]
    pub min_connections: usize,
    /// Most database connections this user's clients may hold at once; more wait.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Its share of free connections, relative to other users waiting at the same time.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Most clients of this user connected at once; more are refused with 1040.
    #[serde(default)]
    pub max_client_connections: Option<usize>,
}

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file, or `command line`/`environment` for overrides.
    pub source: String,
    /// The key, e.g. `pool.min_idle`.
    pub key: String,
    /// Why the value is wrong.
    pub reason: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.reason)
    }
}

/// Every problem found; the configuration is unusable if there is one.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<ConfigIssue>);

impl Config {
    /// Reads and parses a TOML file; syntax errors and unknown keys are reported with their
    /// line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![ConfigIssue {
                source: source.clone(),
                key: "-".into(),
                reason: format!("cannot read the file: {e}"),
            }])
        })?;
        toml::from_str(&text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "-".into());
            ConfigError(vec![ConfigIssue {
                source,
                key: location,
                reason: e.message().to_owned(),
            }])
        })
    }
}

/// Where and as whom sluice connects to the database.
#[derive(Clone, PartialEq)]
pub struct BackendTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Backend user.
    pub user: String,
    /// What proves it is that user.
    pub secret: BackendSecret,
    /// Default schema for clients that name none.
    pub database: Option<String>,
    /// TLS toward the database.
    pub tls: BackendTls,
    /// Whether to ask for the compressed protocol (`[backend] compress`), which a server
    /// that does not offer it is spoken to without.
    pub compress: bool,
}

/// What sluice proves a database login with.
#[derive(Clone, PartialEq, Eq)]
pub enum BackendSecret {
    /// The password (empty for none).
    Password(String),
    /// `SHA1(password)`, learned from a client's login (see `identity`): enough for
    /// `mysql_native_password`, not for `caching_sha2_password`.
    PasswordSha1(sluice_protocol::auth::PasswordSha1),
}

impl std::fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendSecret::Password(p) if p.is_empty() => "Password(none)",
            BackendSecret::Password(_) => "Password(..)",
            BackendSecret::PasswordSha1(_) => "PasswordSha1(..)",
        })
    }
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mysql://{}@{}", self.user, self.address())
    }
}

impl BackendTarget {
    /// `host:port`, for connecting and for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Validated settings the server runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// MySQL-protocol listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// SHA-256 of the admin bearer token (actions are off when `None`).
    pub admin_token: Option<[u8; 32]>,
    /// Runtime worker threads as configured (0: [`worker_threads`] picks); read once at
    /// start.
    pub worker_threads: usize,
    /// Cap on authenticated client connections.
    pub max_client_connections: usize,
    /// Cap on sockets still logging in.
    pub max_pending_logins: usize,
    /// Time from accept to authenticated.
    pub login_timeout: Duration,
    /// First delay after a failed login.
    pub failed_login_delay: Duration,
    /// Cap on the failed-login delay.
    pub failed_login_delay_max: Duration,
    /// Time a client may take no bytes of a reply.
    pub client_write_timeout: Duration,
    /// Time in-flight work gets to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// How long a client between transactions may stay quiet during a drain before it is
    /// closed.
    pub shutdown_idle_grace: Duration,
    /// Whether clients' connects and normal ends are logged.
    pub log_connections: bool,
    /// Largest client packet accepted.
    pub max_packet_size: usize,
    /// Idle limit outside transactions.
    pub idle_client_timeout: Duration,
    /// Idle limit inside a transaction.
    pub idle_transaction_timeout: Duration,
    /// How long a client keeps its connection for reading its warnings.
    pub diagnostics_hold: Duration,
    /// The database.
    pub backend: BackendTarget,
    /// Time limits toward the database: connect and stall.
    pub backend_timeouts: BackendTimeouts,
    /// A client statement still running after this long is killed; off when `None`.
    pub query_timeout: Option<Duration>,
    /// Pool limits.
    pub pool: PoolConfig,
    /// Client users by name.
    pub users: HashMap<String, User>,
    /// The pool mode of users no entry configures (those the auth query finds).
    pub pool_mode: PoolMode,
    /// The sources of identities and the auth query's cache.
    pub auth: AuthConfig,
    /// Data API listen address, when it is on.
    pub http_listen: Option<SocketAddr>,
    /// Data API settings.
    pub http: HttpSettings,
    /// The certificate and key shown to MySQL-protocol clients, when TLS is configured.
    pub tls: Option<TlsFiles>,
    /// Whether clients of users without their own `tls_mode` may or must use TLS.
    pub tls_mode: TlsMode,
    /// The janitor of connections that bypass sluice.
    pub janitor: JanitorConfig,
    /// Sharing the budget with other instances, when configured.
    pub fleet: Option<FleetConfig>,
    /// The admin console, when it is on.
    pub console: Option<ConsoleSettings>,
}

impl Settings {
    /// The configured users' shares of the pool, by lane; users without an entry (found by
    /// the auth query) get the default.
    pub fn quotas(&self) -> HashMap<LaneKey, Quota> {
        self.users
            .iter()
            .map(|(name, user)| (LaneKey::app(name), user.quota))
            .collect()
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// A client login sluice accepts.
#[derive(Debug, Clone)]
pub struct User {
    /// What proves the password.
    pub credential: Credential,
    /// How long its clients keep a database connection.
    pub pool_mode: PoolMode,
    /// Databases the Data API lets this user name; `None` allows any.
    pub databases: Option<Vec<String>>,
    /// The database login its clients run as.
    pub backend: UserBackend,
    /// Whether its clients may or must use TLS.
    pub tls_mode: TlsMode,
    /// Its statement rate limit, if any.
    pub max_statements_per_second: Option<std::num::NonZeroU32>,
    /// Its share of the database connections.
    pub quota: Quota,
    /// Most of its clients connected at once, if limited.
    pub max_client_connections: Option<usize>,
}

/// The database login of a configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserBackend {
    /// The `[backend]` account, shared with sluice's own statements.
    Shared,
    /// Its own database user and password.
    Own {
        /// The database user.
        user: String,
        /// Its password.
        secret: BackendSecret,
    },
}

/// Validated `[http]` settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Certificate and key files, when the listener speaks HTTPS.
    pub tls: Option<TlsFiles>,
    /// Largest request body.
    pub max_body_size: usize,
    /// Largest result in bytes.
    pub max_result_size: usize,
    /// Most rows per result.
    pub max_rows: usize,
    /// Server-enforced statement time limit.
    pub statement_timeout: Duration,
    /// Idle limit of a Data API transaction.
    pub transaction_idle_timeout: Duration,
    /// Age limit of a Data API transaction.
    pub transaction_max_lifetime: Duration,
    /// Time allowed for a request's headers (and the TLS handshake).
    pub header_read_timeout: Duration,
    /// Time allowed for a request's body.
    pub body_read_timeout: Duration,
    /// Idle limit between requests on a keep-alive connection.
    pub keepalive_timeout: Duration,
    /// Longest a response may wait for the client to accept more of it.
    pub write_timeout: Duration,
    /// Cap on HTTP connections held at once.
    pub max_connections: usize,
    /// Cap on requests in progress at once.
    pub max_concurrent_requests: usize,
    /// User name by SHA-256 of the bearer key.
    pub api_keys: HashMap<[u8; 32], String>,
}

/// Parses 64 hex digits into a SHA-256 digest.
fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of an API key as lowercase hex, the form the configuration file stores.
pub fn api_key_sha256(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Config {
    /// Checks everything and resolves secrets; `source` names the file for messages.
    pub fn validate(&self, source: &str) -> Result<Settings, ConfigError> {
        let mut issues = Vec::new();
        let mut issue = |key: &str, reason: String| {
            issues.push(ConfigIssue {
                source: source.to_owned(),
                key: key.to_owned(),
                reason,
            })
        };
        let admin_token = self.admin_token_sha256.as_deref().and_then(|hex| {
            let digest = parse_sha256_hex(hex);
            if digest.is_none() {
                issue(
                    "admin_token_sha256",
                    "must be 64 hex digits (printf %s TOKEN | sha256sum)".into(),
                );
            }
            digest
        });
        let pool = &self.pool;
        if pool.max_db_connections == 0 {
            issue("pool.max_db_connections", "must be at least 1".into());
        }
        for (key, value) in [
            ("pool.max_prepared_statements", pool.max_prepared_statements),
            ("pool.statement_cache_size", pool.statement_cache_size),
        ] {
            if value == 0 {
                issue(key, "must be at least 1".into());
            }
        }
        if let Some(ceiling) = pool.max_db_connections_per_user {
            if !(1..=pool.max_db_connections).contains(&ceiling) {
                issue(
                    "pool.max_db_connections_per_user",
                    format!(
                        "must be between 1 and pool.max_db_connections ({})",
                        pool.max_db_connections
                    ),
                );
            }
        }
        if pool
            .max_connections_percent
            .is_some_and(|p| !(1..=100).contains(&p))
        {
            issue(
                "pool.max_connections_percent",
                "must be between 1 and 100".into(),
            );
        }
        if pool.budget_refresh.is_zero() {
            issue("pool.budget_refresh", "must be greater than zero".into());
        }
        if let Some(max_idle) = pool.max_idle {
            if max_idle == 0 || max_idle < pool.min_idle {
                issue(
                    "pool.max_idle",
                    format!(
                        "must be at least 1 and at least pool.min_idle ({})",
                        pool.min_idle
                    ),
                );
            }
        }
        if pool.min_idle > pool.max_db_connections {
            issue(
                "pool.min_idle",
                format!(
                    "{} exceeds pool.max_db_connections ({})",
                    pool.min_idle, pool.max_db_connections
                ),
            );
        }
        if pool.borrow_timeout.is_zero() {
            issue("pool.borrow_timeout", "must be greater than zero".into());
        }
        if pool.reconnect_backoff_initial.is_zero()
            || pool.reconnect_backoff_initial > pool.reconnect_backoff_max
        {
            issue(
                "pool.reconnect_backoff_initial",
                "must be greater than zero and at most pool.reconnect_backoff_max".into(),
            );
        }
        for (key, value) in [
            (
                "backend.connect_timeout",
                Some(self.backend.connect_timeout),
            ),
            ("backend.stall_timeout", Some(self.backend.stall_timeout)),
            ("backend.query_timeout", self.backend.query_timeout),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                issue(key, "must be greater than zero".into());
            }
        }
        for (key, value) in [
            ("idle_client_timeout", self.idle_client_timeout),
            ("idle_transaction_timeout", self.idle_transaction_timeout),
            ("login_timeout", self.login_timeout),
            ("client_write_timeout", self.client_write_timeout),
        ] {
            if value.is_zero() {
                issue(key, "must be greater than zero".into());
            }
        }
        for (key, value) in [
            ("max_client_connections", self.max_client_connections),
            ("max_pending_logins", self.max_pending_logins),
        ] {
            if value == 0 {
                issue(key, "must be at least 1".into());
            }
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            issue(
                "worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: half the cores)"),
            );
        }
        if !(1024..=1 << 30).contains(&self.max_packet_size) {
            issue("max_packet_size", "must be between 1 KiB and 1 GiB".into());
        }
        let backend = match parse_backend_url(&self.backend.url) {
            Ok(target) => Some(target),
            Err(reason) => {
                issue("backend.url", reason);
                None
            }
        };
        let backend_tls = self.backend.tls_settings(backend.as_ref(), &mut issue);
        let tls = tls_files(
            "tls_cert",
            "tls_key",
            &self.tls_cert,
            &self.tls_key,
            &mut issue,
        );
        let tls_mode = self.tls_mode.unwrap_or(if tls.is_some() {
            TlsMode::Allow
        } else {
            TlsMode::Off
        });
        if tls_mode != TlsMode::Off && tls.is_none() {
            issue(
                "tls_mode",
                format!("\"{}\" needs tls_cert and tls_key", tls_mode.name()),
            );
        }
        if let Some(path) = &self.auth.rsa_private_key {
            if let Err(e) = crate::identity::RsaKey::load(path) {
                issue("auth.rsa_private_key", e);
            }
        }
        let password = one_password(
            [
                (
                    "backend.password_file",
                    self.backend.password_file.as_deref().map(Password::File),
                ),
                (
                    "backend.password_env",
                    self.backend.password_env.as_deref().map(Password::Env),
                ),
            ],
            &mut issue,
        )
        .unwrap_or_default();
        let mut users = HashMap::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if user.name.is_empty() || user.name.len() > 80 {
                issue(&format!("{key}.name"), "must be 1 to 80 characters".into());
                continue;
            }
            let credential = match (&user.password, &user.password_hash) {
                (Some(_), Some(_)) => {
                    issue(
                        &key,
                        format!("user {:?} sets both password and password_hash", user.name),
                    );
                    continue;
                }
                (Some(plain), None) if plain.is_empty() => Credential::Empty,
                (Some(plain), None) => Credential::Hash(
                    sluice_protocol::auth::NativeHash::from_password(plain.as_bytes()),
                ),
                (None, Some(hash)) => match sluice_protocol::auth::NativeHash::parse(hash) {
                    Some(hash) => Credential::Hash(hash),
                    None => {
                        issue(
                            &format!("{key}.password_hash"),
                            "must be '*' followed by 40 hex digits, as printed by SELECT PASSWORD('...')".into(),
                        );
                        continue;
                    }
                },
                (None, None) => Credential::Empty,
            };
            let Some(backend) = user.backend_login(&key, &mut issue) else {
                continue;
            };
            let user_tls = user.tls_mode.unwrap_or(tls_mode);
            if user_tls != TlsMode::Off && tls.is_none() {
                issue(
                    &format!("{key}.tls_mode"),
                    format!("\"{}\" needs tls_cert and tls_key", user_tls.name()),
                );
            }
            let max_statements_per_second = match user.max_statements_per_second {
                Some(rate) => match std::num::NonZeroU32::new(rate) {
                    Some(rate) => Some(rate),
                    None => {
                        issue(
                            &format!("{key}.max_statements_per_second"),
                            "must be at least 1 (leave it out for no limit)".into(),
                        );
                        continue;
                    }
                },
                None => None,
            };
            let Some(quota) = user.quota(&key, pool.max_db_connections, &mut issue) else {
                continue;
            };
            if user.max_client_connections == Some(0) {
                issue(
                    &format!("{key}.max_client_connections"),
                    "must be at least 1 (leave it out for no limit)".into(),
                );
                continue;
            }
            let entry = User {
                credential,
                pool_mode: user.pool_mode.unwrap_or(self.pool_mode),
                databases: user.databases.clone(),
                backend,
                tls_mode: user_tls,
                max_statements_per_second,
                quota,
                max_client_connections: user.max_client_connections,
            };
            if users.insert(user.name.clone(), entry).is_some() {
                issue(
                    &format!("{key}.name"),
                    format!("user {:?} is defined twice", user.name),
                );
            }
        }
        let reserved: usize = self.users.iter().map(|u| u.min_connections).sum();
        if reserved > pool.max_db_connections {
            issue(
                "users.min_connections",
                format!(
                    "the users reserve {reserved} connections in all, more than pool.max_db_connections ({})",
                    pool.max_db_connections
                ),
            );
        }
        self.auth.check(!self.users.is_empty(), &mut issue);
        self.janitor.check(&mut issue);
        if let Some(fleet) = &self.fleet {
            fleet.check(&mut issue);
        }
        let console = self.console.validate(&mut issue);
        if !issues.is_empty() {
            return Err(ConfigError(issues));
        }
        let Some(mut backend) = backend else {
            return Err(ConfigError(issues));
        };
        if let Some(password) = password {
            backend.secret = BackendSecret::Password(password);
        }
        if let Some(backend_tls) = backend_tls {
            backend.tls = backend_tls;
        }
        backend.compress = self.backend.compress;
        if users.is_empty() {
            // Out of the box, clients log in with the backend's own credentials.
            let BackendSecret::Password(password) = &backend.secret else {
                unreachable!("the configured backend secret is a password");
            };
            let credential = Credential::from_plain_or_hash(password);
            users.insert(
                backend.user.clone(),
                User {
                    credential,
                    pool_mode: self.pool_mode,
                    databases: None,
                    backend: UserBackend::Shared,
                    tls_mode,
                    max_statements_per_second: None,
                    quota: Quota::default(),
                    max_client_connections: None,
                },
            );
        }
        let http = self
            .http
            .validate(&users, tls.as_ref(), &mut |key: &str, reason: String| {
                issues.push(ConfigIssue {
                    source: source.to_owned(),
                    key: key.to_owned(),
                    reason,
                })
            });
        if !issues.is_empty() {
            return Err(ConfigError(issues));
        }
        Ok(Settings {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_token,
            worker_threads: self.worker_threads,
            max_client_connections: self.max_client_connections,
            max_pending_logins: self.max_pending_logins,
            login_timeout: self.login_timeout,
            failed_login_delay: self.failed_login_delay,
            failed_login_delay_max: self.failed_login_delay_max,
            client_write_timeout: self.client_write_timeout,
            shutdown_timeout: self.shutdown_timeout,
            shutdown_idle_grace: self.shutdown_idle_grace,
            log_connections: self.log_connections,
            max_packet_size: self.max_packet_size,
            idle_client_timeout: self.idle_client_timeout,
            idle_transaction_timeout: self.idle_transaction_timeout,
            diagnostics_hold: self.diagnostics_hold,
            backend,
            backend_timeouts: BackendTimeouts {
                connect: self.backend.connect_timeout,
                stall: self.backend.stall_timeout,
            },
            query_timeout: self.backend.query_timeout,
            pool: self.pool.clone(),
            users,
            pool_mode: self.pool_mode,
            auth: self.auth.clone(),
            http_listen: self.http_listen,
            http,
            tls,
            tls_mode,
            janitor: self.janitor.clone(),
            fleet: self.fleet.clone(),
            console,
        })
    }
}

/// Where a password is read from.
#[derive(Debug, Clone, Copy)]
enum Password<'a> {
    /// Written in the file itself.
    Inline(&'a str),
    /// An environment variable's value.
    Env(&'a str),
    /// A file's first line.
    File(&'a Path),
}

/// Reads the password given under one of `keys` (`Ok(None)` when none is): a password
/// may be written in one place only. An unset variable, an unreadable file or a second
/// place is reported under its key, and is `Err`.
fn one_password<const N: usize>(
    keys: [(&str, Option<Password<'_>>); N],
    issue: &mut impl FnMut(&str, String),
) -> Result<Option<String>, ()> {
    let given: Vec<_> = keys
        .iter()
        .filter_map(|(key, source)| Some((*key, (*source)?)))
        .collect();
    let (key, source) = match given.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        [(first, _), ..] => {
            let names: Vec<_> = given.iter().map(|(key, _)| *key).collect();
            issue(first, format!("set only one of {}", names.join(", ")));
            return Err(());
        }
    };
    let password = match source {
        Password::Inline(text) => text.to_owned(),
        Password::Env(var) => std::env::var(var).map_err(|_| {
            issue(key, format!("environment variable {var} is not set"));
        })?,
        Password::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => text.lines().next().unwrap_or("").to_owned(),
            Err(e) => {
                issue(key, format!("cannot read {}: {e}", path.display()));
                return Err(());
            }
        },
    };
    Ok(Some(password))
}

impl UserConfig {
    /// Its share of the `pool` connections, or `None` after reporting under `key` what is
    /// wrong with it.
    fn quota(&self, key: &str, pool: usize, issue: &mut impl FnMut(&str, String)) -> Option<Quota> {
        let mut ok = true;
        let mut problem = |field: &str, reason: String| {
            issue(&format!("{key}.{field}"), reason);
            ok = false;
        };
        if let Some(max) = self.max_connections {
            if !(1..=pool).contains(&max) {
                problem(
                    "max_connections",
                    format!("must be between 1 and pool.max_db_connections ({pool})"),
                );
            }
            if self.min_connections > max {
                problem(
                    "min_connections",
                    format!(
                        "{} exceeds its max_connections ({max})",
                        self.min_connections
                    ),
                );
            }
        }
        if self.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            problem("weight", "must be between 1 and 1000".into());
        }
        ok.then(|| Quota {
            min: self.min_connections,
            max: self.max_connections,
            weight: self.weight.unwrap_or(1),
        })
    }

    /// The database login this entry names, or `None` after reporting under `key` why it
    /// names none, or names it twice.
    fn backend_login(
        &self,
        key: &str,
        issue: &mut impl FnMut(&str, String),
    ) -> Option<UserBackend> {
        let password = one_password(
            [
                (
                    &format!("{key}.backend_password") as &str,
                    self.backend_password.as_deref().map(Password::Inline),
                ),
                (
                    &format!("{key}.backend_password_env"),
                    self.backend_password_env.as_deref().map(Password::Env),
                ),
                (
                    &format!("{key}.backend_password_file"),
                    self.backend_password_file.as_deref().map(Password::File),
                ),
            ],
            issue,
        )
        .ok()?;
        let own = self.backend_user.is_some() || password.is_some();
        match (self.backend, own) {
            (Some(SharedBackend::Shared), false) => Some(UserBackend::Shared),
            (Some(SharedBackend::Shared), true) => {
                issue(
                    &format!("{key}.backend"),
                    "backend = \"shared\" runs as the [backend] account: drop backend_user and backend_password*".into(),
                );
                None
            }
            (None, false) => {
                issue(
                    key,
                    format!(
                        "say which database login user {:?} runs as: backend = \"shared\" (the [backend] account), or backend_user and a backend_password* (its own)",
                        self.name
                    ),
                );
                None
            }
            (None, true) => {
                let user = self.backend_user.as_ref().unwrap_or(&self.name);
                if user.is_empty() || user.len() > 80 {
                    issue(
                        &format!("{key}.backend_user"),
                        "must be 1 to 80 characters".into(),
                    );
                    return None;
                }
                Some(UserBackend::Own {
                    user: user.clone(),
                    secret: BackendSecret::Password(password.unwrap_or_default()),
                })
            }
        }
    }
}

impl AuthConfig {
    /// Reports what is wrong with `[auth]`; `users_configured` says whether `[[users]]`
    /// has entries (which are then useless unless `users` is a source).
    fn check(&self, users_configured: bool, issue: &mut impl FnMut(&str, String)) {
        if self.sources.is_empty() {
            issue(
                "auth.sources",
                "name at least one source: \"users\" and/or \"auth_query\"".into(),
            );
        }
        for (i, source) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(source) {
                issue(
                    "auth.sources",
                    format!("{:?} is listed twice", source.name()),
                );
            }
        }
        if users_configured && !self.sources.contains(&AuthSource::Users) {
            issue(
                "auth.sources",
                "[[users]] are configured but \"users\" is not a source: add it, or remove them"
                    .into(),
            );
        }
        if !self.query.contains('?') {
            issue(
                "auth.query",
                "must take the user name as a ? placeholder".into(),
            );
        }
        if !(1..=MAX_AUTH_CACHE).contains(&self.cache_size) {
            issue(
                "auth.cache_size",
                format!("must be between 1 and {MAX_AUTH_CACHE}"),
            );
        }
    }
}

/// The runtime's worker threads for a `worker_threads` setting: the setting itself, or for
/// 0 half the cores the process may use, at least one. Not one per core: every query also
/// costs kernel time on the TCP stack (more than sluice's own, on loopback), usually
/// beside the database or the application on the same machine, and a task woken on one
/// worker and run on another costs a futex and cold caches. On 2 cores shared with
/// MariaDB, one worker spent 15-20 % less CPU per query than two at 16 clients and gave
/// more queries per second (`scripts/bench-overhead`'s `ALSO_WORKER_THREADS`).
pub fn worker_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).max(1)
}

/// Most runtime worker threads: far beyond any core count, and a typo such as 80000 would
/// otherwise start that many threads.
const MAX_WORKER_THREADS: usize = 1024;

/// Most user names the auth cache may be asked to keep: each costs a few hundred bytes.
const MAX_AUTH_CACHE: usize = 10_000_000;

/// Most Data API connections or requests that may be allowed at once: far beyond what a
/// process can serve, well within what a semaphore counts.
const MAX_HTTP_SLOTS: usize = 1_000_000;

/// Longest Data API connection timeout: deadlines are computed from now, and a day is more
/// than any client should hold a socket idle.
const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl HttpConfig {
    /// Checks the `[http]` section against the final user list.
    fn validate(
        &self,
        users: &HashMap<String, User>,
        shared_tls: Option<&TlsFiles>,
        issue: &mut impl FnMut(&str, String),
    ) -> HttpSettings {
        let own = tls_files(
            "http.tls_cert",
            "http.tls_key",
            &self.tls_cert,
            &self.tls_key,
            issue,
        );
        let tls = match (self.tls, own, shared_tls) {
            (None, own, _) => own,
            (Some(SharedTls::Shared), None, Some(shared)) => Some(shared.clone()),
            (Some(SharedTls::Shared), Some(_), _) => {
                issue(
                    "http.tls",
                    "\"shared\" uses the top-level tls_cert and tls_key: drop http.tls_cert and http.tls_key".into(),
                );
                None
            }
            (Some(SharedTls::Shared), None, None) => {
                issue(
                    "http.tls",
                    "\"shared\" needs the top-level tls_cert and tls_key".into(),
                );
                None
            }
        };
        for (key, value) in [
            ("http.max_body_size", self.max_body_size),
            ("http.max_result_size", self.max_result_size),
            ("http.max_rows", self.max_rows),
        ] {
            if value == 0 {
                issue(key, "must be at least 1".into());
            }
        }
        for (key, value) in [
            ("http.max_connections", self.max_connections),
            ("http.max_concurrent_requests", self.max_concurrent_requests),
        ] {
            if !(1..=MAX_HTTP_SLOTS).contains(&value) {
                issue(key, format!("must be between 1 and {MAX_HTTP_SLOTS}"));
            }
        }
        for (key, value) in [
            ("http.statement_timeout", self.statement_timeout),
            (
                "http.transaction_idle_timeout",
                self.transaction_idle_timeout,
            ),
            (
                "http.transaction_max_lifetime",
                self.transaction_max_lifetime,
            ),
        ] {
            if value.is_zero() {
                issue(key, "must be greater than zero".into());
            }
        }
        for (key, value) in [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.body_read_timeout", self.body_read_timeout),
            ("http.keepalive_timeout", self.keepalive_timeout),
            ("http.write_timeout", self.write_timeout),
        ] {
            if value.is_zero() || value > MAX_HTTP_TIMEOUT {
                issue(key, "must be greater than zero and at most a day".into());
            }
        }
        let mut api_keys = HashMap::new();
        for (i, key) in self.api_keys.iter().enumerate() {
            let name = format!("http.api_keys[{i}]");
            if !users.contains_key(&key.user) {
                issue(
                    &format!("{name}.user"),
                    format!("no user {:?} is defined", key.user),
                );
            }
            match parse_sha256_hex(&key.key_sha256) {
                Some(digest) => {
                    if api_keys.insert(digest, key.user.clone()).is_some() {
                        issue(
                            &format!("{name}.key_sha256"),
                            "the same key is listed twice".into(),
                        );
                    }
                }
                None => issue(
                    &format!("{name}.key_sha256"),
                    "must be 64 hex digits, the SHA-256 of the key (printf %s KEY | sha256sum)"
                        .into(),
                ),
            }
        }
        HttpSettings {
            tls,
            max_body_size: self.max_body_size,
            max_result_size: self.max_result_size,
            max_rows: self.max_rows,
            statement_timeout: self.statement_timeout,
            transaction_idle_timeout: self.transaction_idle_timeout,
            transaction_max_lifetime: self.transaction_max_lifetime,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            keepalive_timeout: self.keepalive_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            max_concurrent_requests: self.max_concurrent_requests,
            api_keys,
        }
    }
}

/// The certificate and key under `cert_key` and `key_key`: both or neither, and loadable
/// (a wrong file is reported at start, not at the first handshake).
fn tls_files(
    cert_key: &str,
    key_key: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    issue: &mut impl FnMut(&str, String),
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => match crate::tls::ServerTls::load(cert, key) {
            Ok(_) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            Err(e) => {
                issue(cert_key, e.to_string());
                None
            }
        },
        (None, None) => None,
        _ => {
            issue(
                cert_key,
                format!("set both {cert_key} and {key_key}, or neither"),
            );
            None
        }
    }
}

impl BackendConfig {
    /// The TLS toward the database `tls` and `tls_ca` ask for, once checked against the
    /// host of the URL (`target`), or `None` after reporting why not.
    fn tls_settings(
        &self,
        target: Option<&BackendTarget>,
        issue: &mut impl FnMut(&str, String),
    ) -> Option<BackendTls> {
        if self.tls_ca.is_some() && !self.tls.verifies() {
            issue(
                "backend.tls_ca",
                format!(
                    "is used only by tls = \"verify-ca\" or \"verify-identity\", not \"{}\"",
                    self.tls.name()
                ),
            );
            return None;
        }
        if self.tls == BackendTlsMode::VerifyIdentity {
            if let Some(Err(reason)) = target.map(|t| crate::tls::server_name(&t.host)) {
                issue("backend.url", reason);
            }
        }
        BackendTls::new(self.tls, self.tls_ca.as_deref())
            .map_err(|reason| issue("backend.tls", reason))
            .ok()
    }
}

/// Parses `mysql://USER[:PASSWORD]@HOST[:PORT][/DATABASE]`.
pub fn parse_backend_url(text: &str) -> Result<BackendTarget, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "mysql" | "mariadb") {
        return Err(format!("scheme must be mysql://, not {}://", url.scheme()));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "has no host".to_owned())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let user = decode(url.username());
    if user.is_empty() {
        return Err("has no user (mysql://USER@HOST)".into());
    }
    let database = url.path().trim_start_matches('/');
    if database.contains('/') {
        return Err("path must be a single database name".into());
    }
    if url.query().is_some() {
        return Err("query parameters are not supported".into());
    }
    Ok(BackendTarget {
        host,
        port: url.port().unwrap_or(3306),
        user,
        secret: BackendSecret::Password(url.password().map(decode).unwrap_or_default()),
        database: (!database.is_empty()).then(|| decode(database)),
        tls: BackendTls::DISABLED,
        compress: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates a file that must be refused: the error and the keys it names, in order.
    fn refused(text: &str) -> (ConfigError, Vec<String>) {
        let config: Config = toml::from_str(text).unwrap();
        let err = config.validate("sluice.toml").unwrap_err();
        let keys = err.0.iter().map(|i| i.key.clone()).collect();
        (err, keys)
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(worker_threads(0), (cores / 2).max(1));
        assert_eq!(worker_threads(3), 3);
        let (_, keys) = refused("worker_threads = 100000");
        assert_eq!(keys, ["worker_threads"]);
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Config::default().validate("defaults").unwrap();
        assert_eq!(settings.listen.port(), 6033);
        assert_eq!(settings.pool.max_db_connections, 20);
        assert_eq!(settings.backend.user, "root");
        assert!(settings.users.contains_key("root"));
    }

    #[test]
    fn backend_compression_is_off_unless_asked_for() {
        let settings = Config::default().validate("defaults").unwrap();
        assert!(!settings.backend.compress);
        let config: Config = toml::from_str("[backend]\ncompress = true\n").unwrap();
        assert!(config.validate("sluice.toml").unwrap().backend.compress);
    }

    #[test]
    fn parses_backend_urls() {
        let t = parse_backend_url("mysql://app:p%40ss@db.local:3307/shop").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str()),
            ("db.local", 3307, "app")
        );
        assert_eq!(t.secret, BackendSecret::Password("p@ss".into()));
        assert_eq!(t.database.as_deref(), Some("shop"));
        assert!(parse_backend_url("postgres://a@b").is_err());
        assert!(parse_backend_url("mysql://b:3306").is_err());
        assert!(parse_backend_url("not a url").is_err());
        assert!(parse_backend_url("mysql://a@h/db/x").is_err());
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let text = r#"
            [backend]
            url = "postgres://x@y"
            [pool]
            max_db_connections = 2
            min_idle = 5
            [[users]]
            name = "app"
            password_hash = "*nothex"
            [[users]]
            name = "app"
            password = "x"
            backend = "shared"
        "#;
        let (err, keys) = refused(text);
        assert_eq!(
            keys,
            vec!["pool.min_idle", "backend.url", "users[0].password_hash"]
        );
        assert!(err
            .to_string()
            .contains("sluice.toml: pool.min_idle: 5 exceeds"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[pool]\nmax_db_conections = 3\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_db_conections"), "{err}");
        std::fs::write(&path, "[pool]\nidle_timeout = \"soon\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn tls_settings_are_checked() {
        let text = r#"
            tls_mode = "require"
            [backend]
            tls = "verify-ca"
            [auth]
            rsa_private_key = "/nonexistent/rsa.pem"
            [[users]]
            name = "fn"
            backend = "shared"
            tls_mode = "allow"
        "#;
        let (_, keys) = refused(text);
        assert_eq!(
            keys,
            vec![
                "backend.tls",
                "tls_mode",
                "auth.rsa_private_key",
                "users[0].tls_mode",
            ]
        );
        assert_eq!(refused("[http]\ntls = \"shared\"\n").1, vec!["http.tls"]);
        let ca_without_check = "[backend]\ntls = \"require\"\ntls_ca = \"/x.pem\"\n";
        assert_eq!(refused(ca_without_check).1, vec!["backend.tls_ca"]);
        let half = "tls_cert = \"/x.pem\"\n";
        assert_eq!(refused(half).1, vec!["tls_cert"]);
        // No certificate: TLS is off, and the backend prefers TLS where offered.
        let settings = Config::default().validate("defaults").unwrap();
        assert_eq!(settings.tls_mode, TlsMode::Off);
        assert_eq!(settings.backend.tls.mode, BackendTlsMode::Prefer);
    }

    #[test]
    fn http_section_is_checked_against_users() {
        let text = format!(
            r#"
            http_listen = "127.0.0.1:6081"
            [http]
            tls_cert = "/nonexistent/cert.pem"
            max_rows = 0
            max_concurrent_requests = 0
            keepalive_timeout = "400days"
            [[http.api_keys]]
            user = "fn"
            key_sha256 = "{}"
            [[http.api_keys]]
            user = "ghost"
            key_sha256 = "not-hex"
            [[users]]
            name = "fn"
            password = "x"
            databases = ["app"]
            backend = "shared"
        "#,
            api_key_sha256("k")
        );
        let (_, keys) = refused(&text);
        assert_eq!(
            keys,
            vec![
                "http.tls_cert",
                "http.max_rows",
                "http.max_concurrent_requests",
                "http.keepalive_timeout",
                "http.api_keys[1].user",
                "http.api_keys[1].key_sha256"
            ]
        );
        let mut config: Config = toml::from_str(&text).unwrap();
        config.http.tls_cert = None;
        config.http.max_rows = 10;
        config.http.max_concurrent_requests = 10;
        config.http.keepalive_timeout = Duration::from_secs(5);
        config.http.api_keys.pop();
        let settings = config.validate("sluice.toml").unwrap();
        let digest = parse_sha256_hex(&api_key_sha256("k")).unwrap();
        assert_eq!(
            settings.http.api_keys.get(&digest).map(String::as_str),
            Some("fn")
        );
        assert_eq!(settings.users["fn"].databases, Some(vec!["app".to_owned()]));
    }

    #[test]
    fn backend_password_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut config = Config::default();
        config.backend.password_file = Some(path);
        assert_eq!(
            config.validate("t").unwrap().backend.secret,
            BackendSecret::Password("s3cret".into())
        );
        config.backend.password_file = Some(dir.path().join("missing"));
        assert!(config.validate("t").is_err());
    }

    #[test]
    fn users_name_their_database_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        std::env::set_var("SLUICE_TEST_USER_PW", "from-env");
        let text = format!(
            r#"
            [[users]]
            name = "shared"
            backend = "shared"
            [[users]]
            name = "own"
            password = "x"
            backend_user = "report_ro"
            backend_password = "inline"
            [[users]]
            name = "env"
            backend_password_env = "SLUICE_TEST_USER_PW"
            [[users]]
            name = "file"
            backend_user = "loader"
            backend_password_file = "{}"
        "#,
            path.display()
        );
        let config: Config = toml::from_str(&text).unwrap();
        let settings = config.validate("sluice.toml").unwrap();
        let own = |user: &str, password: &str| UserBackend::Own {
            user: user.into(),
            secret: BackendSecret::Password(password.into()),
        };
        assert_eq!(settings.users["shared"].backend, UserBackend::Shared);
        assert_eq!(settings.users["own"].backend, own("report_ro", "inline"));
        assert_eq!(settings.users["env"].backend, own("env", "from-env"));
        assert_eq!(settings.users["file"].backend, own("loader", "from-file"));
    }

    #[test]
    fn user_login_mistakes_name_their_key() {
        let text = r#"
            [[users]]
            name = "nothing"
            [[users]]
            name = "both"
            backend = "shared"
            backend_user = "x"
            [[users]]
            name = "twice"
            backend_password = "a"
            backend_password_env = "SLUICE_TEST_SURELY_UNSET"
            [[users]]
            name = "unset"
            backend_password_env = "SLUICE_TEST_SURELY_UNSET"
            [[users]]
            name = "long"
            backend_user = ""
        "#;
        let (err, keys) = refused(text);
        assert_eq!(
            keys,
            vec![
                "users[0]",
                "users[1].backend",
                "users[2].backend_password",
                "users[3].backend_password_env",
                "users[4].backend_user",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains(
                "sluice.toml: users[0]: say which database login user \"nothing\" runs as"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "set only one of users[2].backend_password, users[2].backend_password_env"
            ),
            "{text}"
        );
        let bad_value: Result<Config, _> =
            toml::from_str("[[users]]\nname = \"a\"\nbackend = \"own\"\n");
        assert!(bad_value.is_err());
    }

    #[test]
    fn auth_section_defaults_and_mistakes() {
        let settings = Config::default().validate("defaults").unwrap();
        assert_eq!(
            settings.auth.sources,
            vec![AuthSource::Users, AuthSource::AuthQuery]
        );
        assert_eq!(settings.auth.query, MARIADB_AUTH_QUERY);
        assert_eq!(settings.auth.cache_ttl, Duration::from_secs(60));
        let text = r#"
            [auth]
            sources = ["auth_query", "auth_query"]
            query = "SELECT 1"
            cache_size = 0
            [[users]]
            name = "fn"
            backend = "shared"
        "#;
        let (_, keys) = refused(text);
        assert_eq!(
            keys,
            vec![
                "auth.sources",
                "auth.sources",
                "auth.query",
                "auth.cache_size"
            ]
        );
        let empty: Config = toml::from_str("[auth]\nsources = []\n").unwrap();
        assert!(empty.validate("t").is_err());
        let unknown: Result<Config, _> = toml::from_str("[auth]\nsources = [\"ldap\"]\n");
        assert!(unknown.is_err());
        let only_query: Config =
            toml::from_str("[auth]\nsources = [\"auth_query\"]\ncache_ttl = \"0s\"\n").unwrap();
        let settings = only_query.validate("t").unwrap();
        assert_eq!(settings.auth.cache_ttl, Duration::ZERO);
    }

    #[test]
    fn janitor_section_defaults_and_mistakes() {
        let settings = Config::default().validate("defaults").unwrap();
        assert!(!settings.janitor.enabled);
        assert_eq!(settings.janitor.threshold, 0.8);
        assert_eq!(settings.janitor.min_idle, Duration::from_secs(60));
        let text = r#"
            [janitor]
            enabled = true
            threshold = 1.5
            min_idle = "0s"
            interval = "0s"
            max_kills_per_round = 0
        "#;
        let (_, keys) = refused(text);
        assert_eq!(
            keys,
            vec![
                "janitor.users",
                "janitor.threshold",
                "janitor.min_idle",
                "janitor.interval",
                "janitor.max_kills_per_round"
            ]
        );
        let (_, keys) = refused("[janitor]\nusers = [\"\"]\nthreshold = 0.0\n");
        assert_eq!(keys, vec!["janitor.users", "janitor.threshold"]);
        let on: Config = toml::from_str(
            "[janitor]\nenabled = true\nusers = [\"fn\"]\nthreshold = 0.0001\nmin_idle = \"1s\"\n",
        )
        .unwrap();
        let settings = on.validate("t").unwrap();
        assert_eq!(settings.janitor.users, vec!["fn".to_owned()]);
        assert_eq!(settings.janitor.min_idle, Duration::from_secs(1));
    }

    #[test]
    fn fleet_section_is_off_by_default_and_checked() {
        assert_eq!(Config::default().validate("defaults").unwrap().fleet, None);
        let text = r#"
            [fleet]
            redis_url = "http://nope"
            heartbeat = "1s"
            lease_ttl = "1s"
            expected_instances = 0
            budget_key = ""
        "#;
        let (_, keys) = refused(text);
        assert_eq!(
            keys,
            vec![
                "fleet.lease_ttl",
                "fleet.expected_instances",
                "fleet.budget_key",
                "fleet.redis_url"
            ]
        );
        let on: Config = toml::from_str("[fleet]\nexpected_instances = 3\n").unwrap();
        let fleet = on.validate("t").unwrap().fleet.unwrap();
        assert_eq!(fleet.expected_instances, 3);
        assert_eq!(fleet.lease_ttl, Duration::from_secs(5));
        assert_eq!(fleet.sentinel, None);
        let (_, keys) = refused("[fleet.sentinel]\nmaster = \"\"\nnodes = [\"http://s:26379\"]\n");
        assert_eq!(keys, vec!["fleet.sentinel.master", "fleet.sentinel.nodes"]);
        let (_, keys) = refused("[fleet.sentinel]\nmaster = \"m\"\nnodes = []\n");
        assert_eq!(keys, vec!["fleet.sentinel.nodes"]);
        let sentinel: Config = toml::from_str(
            "[fleet.sentinel]\nmaster = \"leases\"\nnodes = [\"redis://a:26379\", \"redis://b:26379\"]\n",
        )
        .unwrap();
        let fleet = sentinel.validate("t").unwrap().fleet.unwrap();
        assert_eq!(
            fleet.sentinel,
            Some(SentinelConfig {
                master: "leases".into(),
                nodes: vec!["redis://a:26379".into(), "redis://b:26379".into()],
            })
        );
    }

    #[test]
    fn fleet_cluster_nodes_are_checked_and_exclusive_with_sentinel() {
        let nodes = |list: &str| format!("[fleet]\ncluster_nodes = [{list}]\n");
        let cluster: Config = toml::from_str(&nodes(
            r#""redis://10.0.0.1:7000", "redis://10.0.0.2:7000""#,
        ))
        .unwrap();
        let fleet = cluster.validate("t").unwrap().fleet.unwrap();
        assert_eq!(fleet.cluster_nodes.len(), 2);
        assert_eq!(fleet.sentinel, None);
        for (list, says) in [
            (r#""http://a:7000""#, "is not a redis:// URL"),
            (r#""redis://a:7000/2""#, "only database 0"),
            (
                r#""redis://:x@a:7000", "redis://:y@b:7000""#,
                "different password",
            ),
        ] {
            let (err, keys) = refused(&nodes(list));
            assert_eq!(keys, vec!["fleet.cluster_nodes"], "{list}");
            assert!(err.to_string().contains(says), "{list}: {err}");
        }
        let both = format!(
            "{}[fleet.sentinel]\nmaster = \"m\"\nnodes = [\"redis://s:26379\"]\n",
            nodes(r#""redis://a:7000""#)
        );
        let (err, keys) = refused(&both);
        assert_eq!(keys, vec!["fleet.cluster_nodes"]);
        assert!(err.to_string().contains("not both"), "{err}");
    }
}
