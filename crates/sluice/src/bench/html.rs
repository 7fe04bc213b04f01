//! The self-contained HTML page of a burst run: the tables, one connections-over-time panel
//! per mode on its own time axis (a half-second gateway run next to a two-minute direct
//! run would otherwise be a dot), and latency per mode with its success rate beside it.
//! Inline SVG only: no scripts, no external files.

use std::fmt::Write as _;

use super::report::{Calls, ModeReport, Report};

const COLORS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
const W: f64 = 760.0;
const H: f64 = 260.0;
const PAD: f64 = 50.0;

impl Report {
    /// The whole page.
    pub fn html(&self) -> String {
        let s = &self.settings;
        // Every panel shares the vertical scale, so heights compare across modes; each has
        // its own time axis.
        let c_max = self
            .modes
            .iter()
            .flat_map(|m| m.samples.iter().map(|s| s.user_connections))
            .max()
            .unwrap_or(1)
            .max(self.max_connections)
            .max(1) as f64;
        let mut panels = String::new();
        for (i, m) in self.modes.iter().enumerate() {
            panels.push_str(&self.panel(m, COLORS[i % 4], c_max));
        }
        let mut rows = String::new();
        for m in &self.modes {
            rows.push_str(&calls_row(m.mode.name(), "", &m.calls));
        }
        let mut app_rows = String::new();
        if !s.apps.is_empty() {
            for m in &self.modes {
                for a in &m.apps {
                    app_rows.push_str(&calls_row(m.mode.name(), &a.name, &a.calls));
                }
            }
            app_rows = format!(
                "<h2>Per application (one budget)</h2><table>{}{app_rows}</table>",
                CALLS_HEADER
            );
        }
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>sluice burst report</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}svg{{background:#fafafa;border:1px solid #ddd;margin:8px 0}}</style></head><body>
<h1>sluice burst report</h1>
<p>{} invocations &times; {} waves, zombie ratio {}, think time {} ms; database max_connections {}; sluice pool {}. Latency in ms: "ok" counts successes only, "all" every attempt, a failure timed until its error.</p>
<table>{CALLS_HEADER}{rows}</table>{app_rows}
<h2>Database connections over time, one panel per mode (own time axis)</h2>{panels}
<h2>Invocation latency of every attempt (ms, log scale), with success rate</h2>{}
</body></html>"#,
            s.invocations,
            s.waves,
            s.zombie_ratio,
            s.think_time_ms,
            self.max_connections,
            s.pool,
            self.latency_chart()
        )
    }

    /// One mode's connections over its own run.
    fn panel(&self, m: &ModeReport, color: &str, c_max: f64) -> String {
        let t_max = m.samples.iter().map(|s| s.t_ms).max().unwrap_or(1).max(1) as f64;
        let x = |t: f64| PAD + t / t_max * (W - 2.0 * PAD);
        let y = |c: f64| H - PAD - c / c_max * (H - 2.0 * PAD);
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
        let name = m.mode.name();
        format!(
            r##"<svg width="{W}" height="{H}" role="img" aria-label="{name}: database connections over time">
<text x="{PAD}" y="20" fill="{color}" font-weight="bold">{name}: peak {peak}, final {fin}, {ok:.1} % ok</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#333"/>
<line x1="{PAD}" y1="{limit:.1}" x2="{r}" y2="{limit:.1}" stroke="#999" stroke-dasharray="4"/><text x="{l2}" y="{lt:.1}" fill="#666">max_connections {mc}</text>
<text x="4" y="{PAD}" fill="#333">{cm}</text><text x="4" y="{b}" fill="#333">0</text><text x="{r}" y="{tb}" text-anchor="end" fill="#333">{ts:.2} s</text><text x="{PAD}" y="{tb}" fill="#333">0 s</text>
<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/></svg>"##,
            peak = m.peak_db_connections,
            fin = m.final_db_connections,
            ok = m.calls.success_pct,
            b = H - PAD,
            r = W - PAD,
            limit = y(self.max_connections as f64),
            l2 = PAD + 4.0,
            lt = y(self.max_connections as f64) - 4.0,
            mc = self.max_connections,
            cm = c_max as u64,
            tb = H - PAD + 18.0,
            ts = t_max / 1e3,
            pts = points.join(" ")
        )
    }

    /// Grouped bars of every attempt's p50/p95/p99 per mode on a log scale, each group
    /// labelled with its success rate.
    fn latency_chart(&self) -> String {
        let l_max = self
            .modes
            .iter()
            .map(|m| m.calls.latency_all_ms.p99)
            .fold(1.0f64, f64::max);
        let ly = |v: f64| {
            H - PAD - (v.max(0.01).log10() + 2.0) / (l_max.log10() + 2.0) * (H - 2.0 * PAD)
        };
        let mut bars = String::new();
        let group = (W - 2.0 * PAD) / self.modes.len().max(1) as f64;
        for (i, m) in self.modes.iter().enumerate() {
            let l = m.calls.latency_all_ms;
            for (j, (label, v)) in [("p50", l.p50), ("p95", l.p95), ("p99", l.p99)]
                .into_iter()
                .enumerate()
            {
                let bx = PAD + group * i as f64 + 10.0 + j as f64 * (group - 20.0) / 3.0;
                let top = ly(v);
                let _ = write!(
                    bars,
                    r#"<rect x="{bx:.1}" y="{top:.1}" width="{bw:.1}" height="{bh:.1}" fill="{c}" opacity="{o}"/><text x="{tx:.1}" y="{ty:.1}" font-size="11" text-anchor="middle">{label} {v:.1}</text>"#,
                    bw = (group - 20.0) / 3.0 - 4.0,
                    bh = (H - PAD - top).max(0.0),
                    c = COLORS[i % 4],
                    o = 1.0 - 0.25 * j as f64,
                    tx = bx + (group - 20.0) / 6.0,
                    ty = top - 4.0
                );
            }
            let _ = write!(
                bars,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} ({:.1} % ok)</text>"#,
                PAD + group * (i as f64 + 0.5),
                H - PAD + 18.0,
                m.mode.name(),
                m.calls.success_pct
            );
        }
        format!(
            r##"<svg width="{W}" height="{H}" role="img" aria-label="latency percentiles per mode"><line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/>{bars}</svg>"##,
            b = H - PAD,
            r = W - PAD
        )
    }
}

const CALLS_HEADER: &str = "<tr><th>mode</th><th>app</th><th>attempted</th><th>ok</th><th>ok %</th><th>errors by kind</th><th>ok p50</th><th>ok p95</th><th>ok p99</th><th>all p50</th><th>all p95</th><th>all p99</th></tr>";

fn calls_row(mode: &str, app: &str, c: &Calls) -> String {
    let latency: String = c
        .latency_columns()
        .iter()
        .map(|v| format!("<td>{v:.2}</td>"))
        .collect();
    format!(
        "<tr><td>{mode}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td>{latency}</tr>",
        escape(app),
        c.attempted,
        c.ok,
        c.success_pct,
        escape(&c.errors_text())
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
