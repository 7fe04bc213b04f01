//! Simulated function containers and the three client strategies they can use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::response::ErrFields;
use tokio::task::JoinSet;

use super::apps::{AppRun, AppSpec};
use crate::backend::{BackendConn, BackendError, Flavor};
use crate::config::BackendTarget;

/// How a container talks to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Naive: one connection per container, opened cold, never closed.
    Direct,
    /// The serverless-mysql algorithm: retry 1040 with jittered backoff, and when the
    /// database is over 80 % utilised kill sleeping zombies or close its own connection.
    Managed,
    /// The naive code pointed at sluice.
    Gateway,
    /// As `gateway`, with each application's quota from `--apps` (`min=`, `max=`,
    /// `weight=`), to compare per-application latency and errors with and without.
    Quotas,
}

impl Mode {
    /// Lower-case name for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Managed => "managed",
            Mode::Gateway => "gateway",
            Mode::Quotas => "quotas",
        }
    }
}

/// Settings of one burst run (the `sluice bench burst` flags).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BurstOptions {
    /// Concurrent containers per wave.
    #[arg(long, default_value_t = 200)]
    pub containers: usize,
    /// Invocations each container runs, one after another.
    #[arg(long, default_value_t = 5)]
    pub invocations: usize,
    /// Waves of new (cold) containers; earlier waves stay frozen, holding their connections.
    #[arg(long, default_value_t = 2)]
    pub waves: usize,
    /// Share of containers that die at the end of their wave, closing their socket without
    /// saying goodbye (no COM_QUIT), instead of staying frozen.
    #[arg(long, default_value_t = 0.0)]
    pub zombie_ratio: f64,
    /// The statement each invocation runs; `{id}` becomes a random row id. Default: a point
    /// select on the table the tool creates.
    #[arg(long)]
    pub query: Option<String>,
    /// Pause between a container's invocations, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub think_time_ms: u64,
    /// Share of invocations that run an UPDATE instead of the query.
    #[arg(long, default_value_t = 0.0)]
    pub write_ratio: f64,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "direct,managed,gateway")]
    pub modes: Vec<Mode>,
    /// The database, as `mysql://USER[:PASS]@HOST[:PORT]`.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    #[serde(serialize_with = "without_password")]
    pub database: String,
    /// Use the sluice at this address instead of starting one in-process.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Pool size of the in-process sluice.
    #[arg(long, default_value_t = 20)]
    pub pool: usize,
    /// Borrow timeout of the in-process sluice, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub borrow_timeout_ms: u64,
    /// How often the database's connection count is sampled, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub sample_ms: u64,
    /// Several applications at once through the same target, one budget: `NAME:CONTAINERS`
    /// each (e.g. `hot:180,cold:20`), each running as its own database user
    /// `sluice_bench_NAME` that the tool creates. Replaces `--containers`. A quota for the
    /// `quotas` mode follows as `:min=N`, `:max=N`, `:weight=N` (e.g. `cold:20:min=4`).
    #[arg(long, value_delimiter = ',')]
    pub apps: Vec<AppSpec>,
}

/// Writes a database URL into reports without its password.
fn without_password<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match crate::config::parse_backend_url(url) {
        Ok(target) => serializer.serialize_str(&format!("{target:?}")),
        Err(_) => serializer.serialize_str("(invalid)"),
    }
}

/// Rows in the benchmark table.
const TABLE_ROWS: u32 = 1000;
/// The schema and table the tool creates.
const TABLE: &str = "sluice_bench.burst";

/// What one application's containers produced in one mode.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Invocations that succeeded.
    pub ok: usize,
    /// Failed invocations by error (MySQL code, or `timeout`/`io`).
    pub errors: BTreeMap<String, usize>,
    /// Latency of each successful invocation, including its connect when cold, in ms.
    pub latencies_ms: Vec<f64>,
    /// Time each failed invocation took until its error, in ms: a fast failure must not
    /// make a mode look fast, so the report also shows latency over every attempt.
    pub failure_ms: Vec<f64>,
    /// Time to open each connection, in ms.
    pub connect_ms: Vec<f64>,
}

impl Outcome {
    /// Adds another outcome's figures to this one (containers into applications,
    /// applications into a mode).
    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.latencies_ms.extend(other.latencies_ms);
        self.failure_ms.extend(other.failure_ms);
        self.connect_ms.extend(other.connect_ms);
    }
}

/// What one mode's run produced.
pub struct ModeRun {
    /// One outcome per application, in `--apps` order.
    pub apps: Vec<Outcome>,
    /// Wall time of the whole mode.
    pub wall: Duration,
    /// The frozen containers' connections, still open.
    pub frozen: Vec<BackendConn>,
}

/// Opens one connection the way a function's driver would.
pub(super) async fn connect(target: &BackendTarget) -> Result<BackendConn, BackendError> {
    BackendConn::connect(target, Flavor::INTERNAL, Duration::from_secs(30)).await
}

/// A short error label: the MySQL code when there is one.
fn error_label(error: &BackendError) -> String {
    match error {
        BackendError::Refused(err) => err.code.to_string(),
        BackendError::Timeout(_) | BackendError::Stalled => "timeout".into(),
        BackendError::Connect { .. } => "connect".into(),
        BackendError::Protocol(_) => "io".into(),
        BackendError::UnsupportedAuth(_) => "auth".into(),
        BackendError::Tls(_) => "tls".into(),
    }
}

async fn admin_query(
    target: &BackendTarget,
    sql: &str,
) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut conn = connect(target).await?;
    let rows = conn
        .query_text(sql)
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rows)
}

/// Creates and fills the benchmark table if it is missing.
pub async fn prepare_table(target: &BackendTarget) -> anyhow::Result<()> {
    let mut conn = connect(target).await?;
    for sql in [
        "CREATE DATABASE IF NOT EXISTS sluice_bench".to_owned(),
        format!("CREATE TABLE IF NOT EXISTS {TABLE} (id INT PRIMARY KEY, v VARCHAR(64), n BIGINT NOT NULL DEFAULT 0)"),
        format!("INSERT IGNORE INTO {TABLE} (id, v) SELECT seq, MD5(seq) FROM sluice_bench.seq_1_to_{TABLE_ROWS}"),
    ] {
        conn.query_text(&sql).await?.map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    }
    Ok(())
}

/// The database's `max_connections`.
pub async fn max_connections(target: &BackendTarget) -> anyhow::Result<u64> {
    let rows = admin_query(target, "SELECT @@max_connections").await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("could not read max_connections"))
}

/// An SQL list of the database users whose connections the benchmark counts.
pub(super) fn user_list(users: &[String]) -> String {
    users
        .iter()
        .map(|u| format!("'{}'", u.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits, up to 5 s, until the server holds no connection of the benchmark's users but the
/// one asking: a closed connection leaves the process list a moment after its goodbye, and
/// one mode's stragglers must not count in the next mode's peak.
pub async fn wait_until_closed(target: &BackendTarget, users: &[String]) -> anyhow::Result<()> {
    let mut conn = connect(target).await?;
    let count = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE USER IN ({}) AND ID <> CONNECTION_ID()",
        user_list(users)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = conn
            .query_text(&count)
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let left: u64 = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if left == 0 || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one mode: every wave of containers of every application at once, each container
/// running its invocations.
pub async fn run_mode(
    mode: Mode,
    options: &BurstOptions,
    apps: &[AppRun],
    max_connections: u64,
    progress: bool,
) -> ModeRun {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let containers: usize = apps.iter().map(|a| a.containers).sum();
    let total = containers * options.invocations * options.waves;
    let ticker = progress.then(|| {
        let done = done.clone();
        let name = mode.name();
        tokio::spawn(async move {
            loop {
                let n = done.load(Ordering::Relaxed);
                let width = 30;
                let filled = (n * width).checked_div(total).unwrap_or(width);
                eprint!(
                    "\r{name:>8} [{}{}] {n}/{total} invocations ",
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let mut outcomes: Vec<Outcome> = apps.iter().map(|_| Outcome::default()).collect();
    let mut frozen = Vec::new();
    for _wave in 0..options.waves {
        let mut containers = JoinSet::new();
        for (index, app) in apps.iter().enumerate() {
            for _ in 0..app.containers {
                let container = Container {
                    mode,
                    target: app.target.clone(),
                    options: options.clone(),
                    max_connections,
                    done: done.clone(),
                };
                containers.spawn(async move { (index, container.run().await) });
            }
        }
        while let Some(joined) = containers.join_next().await {
            let Ok((index, (result, conn))) = joined else {
                continue;
            };
            outcomes[index].merge(result);
            if let Some(conn) = conn {
                if rand::random_range(0.0..1.0) < options.zombie_ratio {
                    drop(conn); // died: the socket closes without COM_QUIT
                } else {
                    frozen.push(conn);
                }
            }
        }
    }
    let wall = started.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
        eprintln!(
            "\r{:>8} done: {total} invocations in {:.1?}{:20}",
            mode.name(),
            wall,
            ""
        );
    }
    ModeRun {
        apps: outcomes,
        wall,
        frozen,
    }
}

/// Closes the frozen containers' connections politely (COM_QUIT), as the tool's clean-up.
pub async fn close_all(conns: Vec<BackendConn>) {
    let mut quits = JoinSet::new();
    for mut conn in conns {
        quits.spawn(async move {
            let mut seq = 0;
            let _ = conn
                .stream
                .write_packet(&mut seq, &[sluice_protocol::command::QUIT])
                .await;
        });
    }
    while quits.join_next().await.is_some() {}
}

/// One simulated function container.
struct Container {
    mode: Mode,
    target: BackendTarget,
    options: BurstOptions,
    max_connections: u64,
    done: Arc<AtomicUsize>,
}

impl Container {
    async fn run(self) -> (Outcome, Option<BackendConn>) {
        let mut result = Outcome::default();
        let mut conn: Option<BackendConn> = None;
        for i in 0..self.options.invocations {
            if i > 0 && self.options.think_time_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.options.think_time_ms)).await;
            }
            let started = Instant::now();
            let outcome = self.invoke(&mut conn, &mut result).await;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            match outcome {
                Ok(()) => {
                    result.ok += 1;
                    result.latencies_ms.push(elapsed_ms);
                }
                Err(label) => {
                    *result.errors.entry(label).or_default() += 1;
                    result.failure_ms.push(elapsed_ms);
                }
            }
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        (result, conn)
    }

    /// One invocation: connect if cold, run the statement, and (managed) tidy up.
    async fn invoke(
        &self,
        slot: &mut Option<BackendConn>,
        result: &mut Outcome,
    ) -> Result<(), String> {
        if slot.is_none() {
            let started = Instant::now();
            let conn = match self.mode {
                Mode::Managed => self.connect_with_retry().await,
                Mode::Direct | Mode::Gateway | Mode::Quotas => connect(&self.target).await,
            }
            .map_err(|e| error_label(&e))?;
            result
                .connect_ms
                .push(started.elapsed().as_secs_f64() * 1e3);
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_mut() else {
            return Err("io".into());
        };
        let sql = self.statement();
        match conn.query_text(&sql).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(err.code.to_string()),
            Err(e) => {
                *slot = None;
                return Err(error_label(&e));
            }
        }
        if self.mode == Mode::Managed && self.over_utilised(conn).await {
            if let Some(mut own) = slot.take() {
                let mut seq = 0;
                let _ = own
                    .stream
                    .write_packet(&mut seq, &[sluice_protocol::command::QUIT])
                    .await;
            }
        }
        Ok(())
    }

    fn statement(&self) -> String {
        let id = rand::random_range(1..=TABLE_ROWS);
        if self.options.write_ratio > 0.0 && rand::random_range(0.0..1.0) < self.options.write_ratio
        {
            return format!("UPDATE {TABLE} SET n = n + 1 WHERE id = {id}");
        }
        match &self.options.query {
            Some(query) => query.replace("{id}", &id.to_string()),
            None => format!("SELECT v FROM {TABLE} WHERE id = {id}"),
        }
    }

    /// serverless-mysql's connect: retry "Too many connections" with full-jitter backoff
    /// (base 2 ms, cap 100 ms, 50 retries).
    async fn connect_with_retry(&self) -> Result<BackendConn, BackendError> {
        let mut attempt = 0u32;
        loop {
            match connect(&self.target).await {
                Err(BackendError::Refused(ErrFields { code: 1040, .. })) if attempt < 50 => {
                    let cap = (2.0 * 2f64.powi(attempt as i32)).min(100.0);
                    tokio::time::sleep(Duration::from_secs_f64(rand::random_range(0.0..cap) / 1e3))
                        .await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// serverless-mysql's end(): when connections in use exceed 80 % of max_connections, kill
    /// this user's connections that have slept 3 s or more; if there were none, close our own.
    /// Returns true when our own connection should close.
    async fn over_utilised(&self, conn: &mut BackendConn) -> bool {
        let user = self.target.user.replace('\'', "''");
        let used = conn
            .query_text(&format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
            ))
            .await;
        let used: u64 = match used {
            Ok(Ok(rows)) => rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            _ => return true,
        };
        if (used as f64) <= 0.8 * self.max_connections as f64 {
            return false;
        }
        let sleepers = conn
            .query_text(&format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Sleep' AND TIME >= 3 \
                 AND USER = '{user}' AND ID <> CONNECTION_ID() ORDER BY TIME DESC"
            ))
            .await;
        let ids: Vec<String> = match sleepers {
            Ok(Ok(rows)) => rows
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect(),
            _ => Vec::new(),
        };
        for id in &ids {
            let _ = conn.query_text(&format!("KILL {id}")).await;
        }
        ids.is_empty()
    }
}
