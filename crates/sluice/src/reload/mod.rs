//! Reloading the configuration while serving, on SIGHUP (`main.rs`) or `POST /reload` (the
//! admin listener): it is read again from where it came from at start (the same file, with
//! the same command-line flags on top) and, when valid, swapped in whole.
//!
//! New logins, statements and borrows see the new settings; connected clients stay
//! connected. Users and passwords (a client logged in with an old password stays; a new
//! login needs the new one; a removed user cannot log in again), per-user statement rates,
//! quotas (`min_connections`, `max_connections`, `weight`, `max_client_connections`) and
//! `pool.max_db_connections_per_user`, the pool's budget and timers, and client timeouts
//! apply at once; the TLS certificate files are read again. What cannot change
//! while serving keeps its running value and is reported as needing a restart (see
//! [`restart`]). An invalid configuration is refused with every problem listed, and the
//! running one stays in force.

pub mod restart;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{info, warn};

use crate::config::{ConfigError, Settings};
use crate::Gateway;

/// Reads the configuration again, as it was read at start (file and flags), validated.
pub type Source = Arc<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// Where the configuration is read again from, and how the last reload went.
pub struct Reloads {
    /// `None`: the gateway was built from settings alone, and a reload is refused.
    source: Option<Source>,
    /// Reloads run one at a time, so two cannot interleave their swaps.
    running: tokio::sync::Mutex<()>,
    last: Mutex<Option<Report>>,
}

/// How a reload went: the answer to `POST /reload`, and the last one in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was done, in seconds since the Unix epoch.
    pub at_unix_seconds: u64,
    /// `ok` (applied) or `refused` (the running configuration stays).
    pub result: &'static str,
    /// Why it was refused: every problem, as `source: key: why`.
    pub problems: Vec<String>,
    /// Settings whose new value waits for a restart (the running value stays).
    pub needs_restart: Vec<&'static str>,
}

impl Reloads {
    /// Reloads read from `source`; without one every reload is refused.
    pub fn new(source: Option<Source>) -> Reloads {
        Reloads {
            source,
            running: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// The last reload's report, if there was one.
    pub fn last(&self) -> Option<Report> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the configuration again (file reads and certificate checks off the runtime's
    /// threads): the new settings, or every problem found.
    async fn read(&self) -> Result<Settings, Vec<String>> {
        let Some(source) = self.source.clone() else {
            return Err(vec![
                "this sluice was started without a configuration to read again".into(),
            ]);
        };
        match tokio::task::spawn_blocking(move || source()).await {
            Ok(Ok(settings)) => Ok(settings),
            Ok(Err(ConfigError(issues))) => Err(issues.iter().map(ToString::to_string).collect()),
            Err(e) => Err(vec![format!("reading the configuration failed: {e}")]),
        }
    }
}

/// Reads the configuration again and applies it, or refuses it whole; logs the outcome,
/// counts it in `sluice_config_reloads_total{result}` and keeps it for `/status`.
pub async fn reload(gateway: &Gateway) -> Report {
    let reloads = &gateway.reloads;
    let _one_at_a_time = reloads.running.lock().await;
    let (result, problems, needs_restart) = match reloads.read().await {
        Ok(settings) => ("ok", Vec::new(), apply(gateway, settings)),
        Err(problems) => ("refused", problems, Vec::new()),
    };
    let report = Report {
        at_unix_seconds: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        result,
        problems,
        needs_restart,
    };
    gateway
        .metrics
        .config_reloads
        .with_label_values(&[result])
        .inc();
    if !report.problems.is_empty() {
        warn!(problems = ?report.problems, "configuration reload refused; the running configuration stays");
    } else if !report.needs_restart.is_empty() {
        warn!(needs_restart = ?report.needs_restart, "configuration reloaded; these settings keep their running value until a restart");
    } else {
        info!("configuration reloaded");
    }
    *reloads.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    report
}

/// Swaps `new` in (its restart-only settings kept at their running values) and hands each
/// owner of reloadable state its part; the names of settings that need a restart.
fn apply(gateway: &Gateway, new: Settings) -> Vec<&'static str> {
    let (settings, mut needs_restart) = restart::keep_running(&gateway.settings(), new);
    // CLIENT_SSL is offered, or not, from the start (see `client_tls`).
    if crate::tls_wanted(&settings) != gateway.client_tls.is_some() {
        needs_restart.push("tls_mode (TLS offered on the MySQL port or not)");
    }
    gateway.identities.reload(&settings);
    gateway.rate_limits.reload(&settings);
    gateway
        .pool
        .reconfigure(settings.pool.clone(), settings.backend_timeouts);
    gateway.pool.set_quotas(settings.quotas());
    if let Some(tls) = &gateway.client_tls {
        tls.reload();
    }
    gateway.settings.store(Arc::new(settings));
    needs_restart
}
