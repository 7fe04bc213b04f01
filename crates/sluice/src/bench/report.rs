//! Summaries of a burst run: a terminal table and JSON (the HTML page is in `html.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::sampler::Sample;
use super::workload::{BurstOptions, Mode, Outcome};
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`.
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank =
            |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Percentiles {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Attempts, successes and latency of a set of invocations, so a mode or an application
/// is never judged by the latency of its successes alone.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Calls {
    /// Invocations attempted.
    pub attempted: usize,
    /// Invocations that succeeded.
    pub ok: usize,
    /// `ok / attempted` in percent (100 when nothing was attempted).
    pub success_pct: f64,
    /// Failed invocations by error (MySQL code, or `timeout`/`io`/`connect`).
    pub errors: BTreeMap<String, usize>,
    /// Latency of the successful invocations only (cold starts included).
    pub latency_ok_ms: Percentiles,
    /// Latency of every attempt, a failure counted as the time until its error.
    pub latency_all_ms: Percentiles,
}

impl Calls {
    /// Summarises an outcome.
    pub fn of(outcome: &Outcome) -> Calls {
        let failed: usize = outcome.errors.values().sum();
        let attempted = outcome.ok + failed;
        let all: Vec<f64> = outcome
            .latencies_ms
            .iter()
            .chain(&outcome.failure_ms)
            .copied()
            .collect();
        Calls {
            attempted,
            ok: outcome.ok,
            success_pct: if attempted == 0 {
                100.0
            } else {
                outcome.ok as f64 * 100.0 / attempted as f64
            },
            errors: outcome.errors.clone(),
            latency_ok_ms: Percentiles::of(&outcome.latencies_ms),
            latency_all_ms: Percentiles::of(&all),
        }
    }

    /// p50, p95, p99 of successes, then of every attempt: the columns every table shows.
    pub(super) fn latency_columns(&self) -> [f64; 6] {
        let (ok, all) = (self.latency_ok_ms, self.latency_all_ms);
        [ok.p50, ok.p95, ok.p99, all.p50, all.p95, all.p99]
    }

    /// Total failed invocations.
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// Errors as `code:count` pairs, `-` when none.
    pub(super) fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "-".into();
        }
        self.errors
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One application's share of a mode's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppReport {
    /// Its name (`app` when the run has one application).
    pub name: String,
    /// What its invocations got.
    pub calls: Calls,
}

/// One mode's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeReport {
    /// Which mode.
    pub mode: Mode,
    /// Every application's invocations together.
    pub calls: Calls,
    /// Each application's invocations, in `--apps` order.
    pub apps: Vec<AppReport>,
    /// Connection-open latency.
    pub connect_ms: Percentiles,
    /// Most connections of the benchmark users the database held at once.
    pub peak_db_connections: u64,
    /// Connections of the benchmark users still held when the burst ended (before clean-up).
    pub final_db_connections: u64,
    /// Highest `Threads_connected` seen (all users).
    pub peak_threads_connected: u64,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// The samples, for this mode's connections-over-time panel.
    pub samples: Vec<Sample>,
}

impl ModeReport {
    /// Summarises one mode's per-application outcomes and samples.
    pub fn new(
        mode: Mode,
        apps: Vec<(String, Outcome)>,
        wall: Duration,
        samples: Vec<Sample>,
    ) -> ModeReport {
        let mut total = Outcome::default();
        let mut reports = Vec::new();
        for (name, outcome) in apps {
            reports.push(AppReport {
                name,
                calls: Calls::of(&outcome),
            });
            total.merge(outcome);
        }
        ModeReport {
            mode,
            calls: Calls::of(&total),
            apps: reports,
            connect_ms: Percentiles::of(&total.connect_ms),
            peak_db_connections: samples
                .iter()
                .map(|s| s.user_connections)
                .max()
                .unwrap_or(0),
            final_db_connections: samples.last().map(|s| s.user_connections).unwrap_or(0),
            peak_threads_connected: samples
                .iter()
                .map(|s| s.threads_connected)
                .max()
                .unwrap_or(0),
            wall_s: wall.as_secs_f64(),
            samples,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// What was run.
    pub settings: BurstOptions,
    /// The database's `max_connections`.
    pub max_connections: u64,
    /// One entry per mode, in run order.
    pub modes: Vec<ModeReport>,
}

/// The latency columns' header: successes only, then every attempt.
const LATENCY_HEADER: &str = "  ok p50   ok p95   ok p99 | all p50  all p95  all p99";

/// Attempts, successes, rate, errors and both latency views, as table cells.
fn calls_cells(c: &Calls) -> String {
    let [o50, o95, o99, a50, a95, a99] = c.latency_columns();
    format!(
        "{:>9} {:>7} {:>6.1}%  {:<22} {o50:>8.2} {o95:>8.2} {o99:>8.2} | {a50:>7.2} {a95:>8.2} {a99:>8.2}",
        c.attempted,
        c.ok,
        c.success_pct,
        c.errors_text()
    )
}

impl Report {
    /// A table for the terminal: per mode, attempts and success rate beside the latency of
    /// successes ("ok") and of every attempt ("all", failures timed until their error);
    /// with several applications, a second table of each one's share.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let load = if s.apps.is_empty() {
            format!("{} containers", s.containers)
        } else {
            let apps: Vec<String> = s
                .apps
                .iter()
                .map(|a| format!("{}:{}", a.name, a.containers))
                .collect();
            format!("apps {}", apps.join(","))
        };
        let mut out = format!(
            "burst: {load} x {} invocations x {} waves, zombie ratio {}, db max_connections {}, sluice pool {}\n",
            s.invocations, s.waves, s.zombie_ratio, self.max_connections, s.pool
        );
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>7} {:>7}  {:<22} {LATENCY_HEADER} {:>9} {:>7} {:>8} {:>6}",
            "mode",
            "attempted",
            "ok",
            "ok %",
            "errors by kind",
            "connect99",
            "peak db",
            "final db",
            "wall s"
        );
        for m in &self.modes {
            let _ = writeln!(
                out,
                "{:<8} {} {:>9.2} {:>7} {:>8} {:>6.1}",
                m.mode.name(),
                calls_cells(&m.calls),
                m.connect_ms.p99,
                m.peak_db_connections,
                m.final_db_connections,
                m.wall_s
            );
        }
        out.push_str("latency in ms; ok = successes only, all = every attempt, a failure timed until its error\n");
        if !s.apps.is_empty() {
            let _ = writeln!(
                out,
                "\nper application (one budget):\n{:<8} {:<8} {:>9} {:>7} {:>7}  {:<22} {LATENCY_HEADER}",
                "mode", "app", "attempted", "ok", "ok %", "errors by kind"
            );
            for m in &self.modes {
                for a in &m.apps {
                    let _ = writeln!(
                        out,
                        "{:<8} {:<8} {}",
                        m.mode.name(),
                        a.name,
                        calls_cells(&a.calls)
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&values);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).max, 0.0);
        assert_eq!(Percentiles::of(&[3.0]).p50, 3.0);
    }
}
