//! Summaries of a burst run: a terminal table, JSON, and a self-contained HTML page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::sampler::Sample;
use super::workload::{BurstOptions, Mode, Outcome};

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

/// One mode's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeReport {
    /// Which mode.
    pub mode: Mode,
    /// Successful invocations.
    pub ok: usize,
    /// Failed invocations by error code.
    pub errors: BTreeMap<String, usize>,
    /// Invocation latency (cold starts included).
    pub latency_ms: Percentiles,
    /// Connection-open latency.
    pub connect_ms: Percentiles,
    /// Most connections of the benchmark user the database held at once.
    pub peak_db_connections: u64,
    /// Connections of the benchmark user still held when the burst ended (before clean-up).
    pub final_db_connections: u64,
    /// Highest `Threads_connected` seen (all users).
    pub peak_threads_connected: u64,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// The samples, for charts.
    pub samples: Vec<Sample>,
}

impl ModeReport {
    /// Summarises one mode's outcome and samples.
    pub fn new(mode: Mode, outcome: Outcome, samples: Vec<Sample>) -> ModeReport {
        ModeReport {
            mode,
            ok: outcome.ok,
            errors: outcome.errors,
            latency_ms: Percentiles::of(&outcome.latencies_ms),
            connect_ms: Percentiles::of(&outcome.connect_ms),
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
            wall_s: outcome.wall.as_secs_f64(),
            samples,
        }
    }

    /// Total failed invocations.
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    fn errors_text(&self) -> String {
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

impl Report {
    /// A table for the terminal.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "burst: {} containers x {} invocations x {} waves, zombie ratio {}, db max_connections {}, sluice pool {}\n",
            s.containers, s.invocations, s.waves, s.zombie_ratio, self.max_connections, s.pool
        );
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>7} {:<18} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>7}",
            "mode",
            "ok",
            "errors",
            "by code",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "connect99",
            "peak db",
            "final db",
            "wall s"
        );
        for m in &self.modes {
            let _ = writeln!(
                out,
                "{:<8} {:>8} {:>7} {:<18} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>10.2} {:>9} {:>9} {:>7.1}",
                m.mode.name(),
                m.ok,
                m.error_count(),
                m.errors_text(),
                m.latency_ms.p50,
                m.latency_ms.p95,
                m.latency_ms.p99,
                m.latency_ms.max,
                m.connect_ms.p99,
                m.peak_db_connections,
                m.final_db_connections,
                m.wall_s
            );
        }
        out
    }

    /// A self-contained HTML page: the table, database connections over time, and latency
    /// percentiles per mode, drawn as inline SVG (no scripts, no external files).
    pub fn html(&self) -> String {
        const COLORS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
        let mut rows = String::new();
        for m in &self.modes {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
                m.mode.name(), m.ok, m.error_count(), escape(&m.errors_text()), m.latency_ms.p50, m.latency_ms.p95,
                m.latency_ms.p99, m.latency_ms.max, m.connect_ms.p99, m.peak_db_connections, m.final_db_connections, m.wall_s
            );
        }
        // Chart 1: connections over time.
        let (w, h, pad) = (760.0, 300.0, 50.0);
        let t_max = self
            .modes
            .iter()
            .flat_map(|m| m.samples.iter().map(|s| s.t_ms))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let c_max = self
            .modes
            .iter()
            .flat_map(|m| m.samples.iter().map(|s| s.user_connections))
            .max()
            .unwrap_or(1)
            .max(self.max_connections)
            .max(1) as f64;
        let x = |t: f64| pad + t / t_max * (w - 2.0 * pad);
        let y = |c: f64| h - pad - c / c_max * (h - 2.0 * pad);
        let mut lines = String::new();
        for (i, m) in self.modes.iter().enumerate() {
            let points: Vec<String> = m
                .samples
                .iter()
                .map(|s| {
                    format!(
                        "{:.1},{:.1}",
                        x(s.t_ms as f64),
                        y(s.user_connections as f64)
                    )
                })
                .collect();
            let _ = write!(
                lines,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{}">{}</text>"#,
                COLORS[i % 4],
                points.join(" "),
                w - pad - 90.0,
                pad + 16.0 * i as f64,
                COLORS[i % 4],
                m.mode.name()
            );
        }
        let limit = y(self.max_connections as f64);
        let conn_chart = format!(
            r##"<svg width="{w}" height="{h}" role="img" aria-label="database connections over time">
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#333"/>
<line x1="{pad}" y1="{limit:.1}" x2="{r}" y2="{limit:.1}" stroke="#999" stroke-dasharray="4"/><text x="{l2}" y="{lt:.1}" fill="#666">max_connections {mc}</text>
<text x="4" y="{pad}" fill="#333">{cm}</text><text x="4" y="{b}" fill="#333">0</text><text x="{r}" y="{tb}" text-anchor="end" fill="#333">{ts:.1} s</text>
{lines}</svg>"##,
            b = h - pad,
            r = w - pad,
            l2 = pad + 4.0,
            lt = limit - 4.0,
            mc = self.max_connections,
            cm = c_max as u64,
            tb = h - pad + 18.0,
            ts = t_max / 1e3
        );
        // Chart 2: latency percentiles, grouped bars on a log scale.
        let l_max = self
            .modes
            .iter()
            .map(|m| m.latency_ms.p99)
            .fold(1.0f64, f64::max);
        let ly = |v: f64| {
            h - pad - (v.max(0.01).log10() + 2.0) / (l_max.log10() + 2.0) * (h - 2.0 * pad)
        };
        let mut bars = String::new();
        let group = (w - 2.0 * pad) / self.modes.len().max(1) as f64;
        for (i, m) in self.modes.iter().enumerate() {
            for (j, (label, v)) in [
                ("p50", m.latency_ms.p50),
                ("p95", m.latency_ms.p95),
                ("p99", m.latency_ms.p99),
            ]
            .into_iter()
            .enumerate()
            {
                let bx = pad + group * i as f64 + 10.0 + j as f64 * (group - 20.0) / 3.0;
                let top = ly(v);
                let _ = write!(
                    bars,
                    r#"<rect x="{bx:.1}" y="{top:.1}" width="{bw:.1}" height="{bh:.1}" fill="{c}" opacity="{o}"/><text x="{tx:.1}" y="{ty:.1}" font-size="11" text-anchor="middle">{label} {v:.1}</text>"#,
                    bw = (group - 20.0) / 3.0 - 4.0,
                    bh = (h - pad - top).max(0.0),
                    c = COLORS[i % 4],
                    o = 1.0 - 0.25 * j as f64,
                    tx = bx + (group - 20.0) / 6.0,
                    ty = top - 4.0
                );
            }
            let _ = write!(
                bars,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                pad + group * (i as f64 + 0.5),
                h - pad + 18.0,
                m.mode.name()
            );
        }
        let latency_chart = format!(
            r##"<svg width="{w}" height="{h}" role="img" aria-label="latency percentiles per mode"><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/>{bars}</svg>"##,
            b = h - pad,
            r = w - pad
        );
        let s = &self.settings;
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>sluice burst report</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}svg{{background:#fafafa;border:1px solid #ddd;margin:8px 0}}</style></head><body>
<h1>sluice burst report</h1>
<p>{} containers &times; {} invocations &times; {} waves, zombie ratio {}, think time {} ms; database max_connections {}; sluice pool {}.</p>
<table><tr><th>mode</th><th>ok</th><th>errors</th><th>by code</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>connect p99 ms</th><th>peak db conns</th><th>final db conns</th><th>wall s</th></tr>{rows}</table>
<h2>Database connections over time</h2>{conn_chart}
<h2>Invocation latency (ms, log scale)</h2>{latency_chart}
</body></html>"#,
            s.containers,
            s.invocations,
            s.waves,
            s.zombie_ratio,
            s.think_time_ms,
            self.max_connections,
            s.pool
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
