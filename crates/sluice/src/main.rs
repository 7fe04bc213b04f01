//! The `sluice` binary: parses the command line and runs the gateway.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sluice::config::{ConfigError, Settings};
use sluice::server::Server;
use sluice::Gateway;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The benchmark's in-process gateway would drown its output in per-client lines.
    let default_level = match cli.command {
        cli::Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a terminal only: escape codes in a log file or journal are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    match cli.command {
        cli::Command::Check(args) => match args.settings() {
            Ok(settings) => {
                println!(
                    "configuration is valid: listen {} (tls_mode {}), admin {}, backend {:?} (tls {}), max_db_connections {}, {} user(s), identity sources {}, Data API {}",
                    settings.listen,
                    settings.tls_mode.name(),
                    settings.admin_listen,
                    settings.backend,
                    settings.backend.tls.mode.name(),
                    settings.pool.max_db_connections,
                    settings.users.len(),
                    settings
                        .auth
                        .sources
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    match settings.http_listen {
                        Some(addr) => format!(
                            "on {addr}{} with {} key(s)",
                            if settings.http.tls.is_some() { " (TLS)" } else { "" },
                            settings.http.api_keys.len()
                        ),
                        None => "off".into(),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        cli::Command::Bench(cli::BenchCommand::Burst(args)) => match bench_burst(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice bench burst: {e:#}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Serve(args) => {
            let settings = match fitted_settings(&args, true) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // A reload reads the same file with the same flags on top.
            // Quietly: the caps it fits need a restart, so the start's report stands.
            let source: sluice::reload::Source = Arc::new(move || fitted_settings(&args, false));
            match serve(settings, source) {
                Ok(Stop::Drained) => ExitCode::SUCCESS,
                Ok(Stop::Forced) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// How serving ended.
enum Stop {
    /// The first SIGTERM/SIGINT drained the clients.
    Drained,
    /// A second signal cut the drain short.
    Forced,
}

/// The settings of `args`, with the client caps fitted to the descriptor limit (what was
/// found and done logged when `report`).
fn fitted_settings(args: &cli::ConfigArgs, report: bool) -> Result<Settings, ConfigError> {
    let mut settings = args.settings()?;
    sluice::fd_budget::raise_and_fit(&mut settings, report);
    Ok(settings)
}

fn serve(settings: Settings, source: sluice::reload::Source) -> anyhow::Result<Stop> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sluice::config::worker_threads(settings.worker_threads))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = settings.listen;
        let admin = settings.admin_listen;
        let gateway = Gateway::reloadable(settings, source);
        // Before the listeners open: SIGHUP's default action would end the process.
        reload_on_hangup(gateway.clone())?;
        let server = Server::bind(gateway)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} / {admin}: {e}"))?;
        let signals = count_signals()?;
        tokio::select! {
            served = server.run(nth_signal(signals.clone(), 1)) => served.map(|()| Stop::Drained).map_err(Into::into),
            () = nth_signal(signals, 2) => {
                tracing::warn!("second signal: stopping at once");
                Ok(Stop::Forced)
            }
        }
    })
}

/// Reloads the configuration on each SIGHUP (the outcome is logged, see `sluice::reload`).
fn reload_on_hangup(gateway: Arc<Gateway>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            sluice::reload::reload(&gateway).await;
        }
    });
    Ok(())
}

/// Counts SIGTERM and SIGINT (Ctrl-C) as they arrive: the first drains, the second stops.
fn count_signals() -> std::io::Result<tokio::sync::watch::Receiver<u32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (count, counted) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            count.send_modify(|n| *n += 1);
        }
    });
    Ok(counted)
}

/// Completes once `n` signals have arrived.
async fn nth_signal(mut counted: tokio::sync::watch::Receiver<u32>, n: u32) {
    if counted.wait_for(|count| *count >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn bench_burst(args: cli::BurstArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let progress = std::io::stderr().is_terminal();
    let report = runtime.block_on(async {
        tokio::select! {
            report = sluice::bench::run_burst(&args.options, progress) => report,
            // Dropping the run closes every connection it opened.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; connections closed")),
        }
    })?;
    match args.format {
        cli::OutputFormat::Table => print!("{}", report.table()),
        cli::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report.html())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
