//! `sluice bench burst`: a serverless burst simulator that shows the problem and the fix.
//!
//! Simulated function containers run invocations against the database directly (naive and
//! "managed" the way the serverless-mysql module does it) and through sluice, one mode after
//! another on the same database, while a sampler records how many connections the database
//! holds. The report puts the modes side by side. With `--apps`, several applications
//! share the burst and the budget, and the report shows each one's share.

mod apps;
mod html;
mod report;
mod sampler;
mod workload;

pub use apps::AppSpec;
pub use report::{AppReport, Calls, ModeReport, Percentiles, Report};
pub use workload::{BurstOptions, Mode};

use std::time::Duration;

use anyhow::Context as _;

use crate::config::{parse_backend_url, BackendTarget};
use crate::server::Server;
use crate::Gateway;

/// Runs every mode in `options.modes` and returns the report. Starts an in-process sluice
/// for the gateway mode unless `options.gateway` names one.
pub async fn run_burst(options: &BurstOptions, progress: bool) -> anyhow::Result<Report> {
    let database =
        parse_backend_url(&options.database).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    if options.modes.contains(&Mode::Quotas) {
        anyhow::ensure!(
            options.apps.len() >= 2,
            "the quotas mode shares one budget between applications: give --apps two or more"
        );
        anyhow::ensure!(
            options.gateway.is_none(),
            "the quotas mode configures the in-process sluice; with --gateway, set quotas in that sluice's configuration and use the gateway mode"
        );
    }
    workload::prepare_table(&database)
        .await
        .context("preparing the benchmark table")?;
    let max_connections = workload::max_connections(&database).await?;
    let apps = apps::prepare(&options.apps, options.containers, &database)
        .await
        .context("creating the applications' database users")?;
    let modes = run_modes(options, &database, max_connections, &apps, progress).await;
    let removed = apps::remove(&options.apps, &database)
        .await
        .context("dropping the applications' database users");
    let modes = modes?;
    removed?;
    Ok(Report {
        settings: options.clone(),
        max_connections,
        modes,
    })
}

/// Runs every mode in `options.modes` for `apps`, one after the other.
async fn run_modes(
    options: &BurstOptions,
    database: &BackendTarget,
    max_connections: u64,
    apps: &[apps::AppRun],
    progress: bool,
) -> anyhow::Result<Vec<ModeReport>> {
    let users: Vec<String> = apps.iter().map(|a| a.target.user.clone()).collect();
    let names: Vec<String> = apps.iter().map(|a| a.name.clone()).collect();
    let mut modes = Vec::new();
    for mode in &options.modes {
        workload::wait_until_closed(database, &users).await?;
        let (targets, _gateway) = match mode {
            Mode::Gateway | Mode::Quotas => {
                let (addr, gateway) = gateway_for(options, apps, *mode == Mode::Quotas).await?;
                let at_gateway = |app: &apps::AppRun| apps::AppRun {
                    target: BackendTarget {
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        ..app.target.clone()
                    },
                    ..app.clone()
                };
                (apps.iter().map(at_gateway).collect(), gateway)
            }
            Mode::Direct | Mode::Managed => (apps.to_vec(), None),
        };
        let sampler = sampler::Sampler::start(
            database.clone(),
            &users,
            Duration::from_millis(options.sample_ms),
        )
        .await?;
        let run = workload::run_mode(*mode, options, &targets, max_connections, progress).await;
        // The last sample still sees the frozen containers' connections: what a real
        // platform would leave behind. Then the tool cleans up after itself.
        let samples = sampler.stop().await;
        workload::close_all(run.frozen).await;
        let per_app = names.iter().cloned().zip(run.apps).collect();
        modes.push(ModeReport::new(*mode, per_app, run.wall, samples));
    }
    Ok(modes)
}

/// The sluice to measure: the one at `--gateway`, or a fresh one in this process with
/// `--pool` connections and, as users, the database's credentials or (with `--apps`) one
/// login per application running as its own database user, with its quota when
/// `with_quotas`.
async fn gateway_for(
    options: &BurstOptions,
    apps: &[apps::AppRun],
    with_quotas: bool,
) -> anyhow::Result<(std::net::SocketAddr, Option<GatewayGuard>)> {
    if let Some(addr) = &options.gateway {
        let addr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .with_context(|| format!("--gateway {addr} does not resolve"))?;
        return Ok((addr, None));
    }
    let mut config = crate::config::Config {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    config.backend.url = options.database.clone();
    if !options.apps.is_empty() {
        config.users = apps::gateway_users(apps, with_quotas);
    }
    config.pool.max_db_connections = options.pool;
    config.pool.borrow_timeout = Duration::from_millis(options.borrow_timeout_ms);
    let settings = config
        .validate("bench")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::bind(Gateway::new(settings)).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Ok((addr, Some(GatewayGuard { _stop: stop })))
}

/// Keeps an in-process gateway running; dropping it stops the listener.
struct GatewayGuard {
    _stop: tokio::sync::oneshot::Sender<()>,
}
