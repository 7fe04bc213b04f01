//! The `sluice` binary: parses the command line and runs the gateway.

mod cli;

use std::process::ExitCode;

use clap::Parser;
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
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    match cli.command {
        cli::Command::Check(args) => match args.settings() {
            Ok(settings) => {
                println!(
                    "configuration is valid: listen {}, admin {}, backend {:?}, max_db_connections {}, {} user(s), Data API {}",
                    settings.listen,
                    settings.admin_listen,
                    settings.backend,
                    settings.pool.max_db_connections,
                    settings.users.len(),
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
            let settings = match args.settings() {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match serve(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(settings: sluice::config::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = settings.listen;
        let admin = settings.admin_listen;
        let server = Server::bind(Gateway::new(settings))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} / {admin}: {e}"))?;
        server.run(shutdown_signal()).await?;
        Ok(())
    })
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
