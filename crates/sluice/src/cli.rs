//! Command-line interface: `sluice serve` and `sluice check`.
//!
//! Flags override the config file; each flag can also be set by a `SLUICE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice::config::{
    ApiKeyConfig, Config, ConfigError, ConfigIssue, Settings, SharedBackend, UserConfig,
};

/// sluice: a MySQL/MariaDB connection gateway for serverless and other high-churn clients.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArgs),
    /// Validate a configuration and print what is wrong, or the effective settings.
    Check(ConfigArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `sluice bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulate a serverless burst directly against the database and through sluice.
    Burst(BurstArgs),
}

/// `sluice bench burst` flags.
#[derive(Debug, Args)]
pub struct BurstArgs {
    /// The burst itself.
    #[command(flatten)]
    pub options: sluice::bench::BurstOptions,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// How `bench burst` prints its results.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Where configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (every setting has a default).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for MySQL-protocol clients [default: 127.0.0.1:6033].
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address for /healthz and /metrics [default: 127.0.0.1:6080].
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The database: mysql://USER[:PASS]@HOST[:PORT][/DB] [default: mysql://root@127.0.0.1:3306].
    #[arg(long, env = "SLUICE_BACKEND")]
    pub backend: Option<String>,
    /// A client login NAME:PASSWORD (PASSWORD may be a *HEX native hash) that runs as the
    /// --backend account; repeatable. Database users need none: see [auth] sources.
    #[arg(long = "user", env = "SLUICE_USERS", value_delimiter = ',')]
    pub users: Vec<String>,
    /// Cap on database connections [default: 20].
    #[arg(long, env = "SLUICE_MAX_DB_CONNECTIONS")]
    pub max_db_connections: Option<usize>,
    /// Address for the SQL-over-HTTP Data API [default: off].
    #[arg(long, env = "SLUICE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// A Data API bearer key USER:KEY for a sluice user; repeatable (hashed at once, never stored).
    #[arg(long = "api-key", env = "SLUICE_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// PEM certificate chain: the Data API speaks HTTPS (with --http-tls-key).
    #[arg(long, env = "SLUICE_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for --http-tls-cert.
    #[arg(long, env = "SLUICE_HTTP_TLS_KEY")]
    pub http_tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the file (if any), applies overrides, and validates.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let (mut config, source) = match &self.config {
            Some(path) => (Config::load(path)?, path.display().to_string()),
            None => (Config::default(), "defaults".to_owned()),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin_listen {
            config.admin_listen = admin;
        }
        if let Some(url) = &self.backend {
            config.backend.url = url.clone();
        }
        if let Some(max) = self.max_db_connections {
            config.pool.max_db_connections = max;
        }
        if let Some(addr) = self.http_listen {
            config.http_listen = Some(addr);
        }
        if let Some(cert) = &self.http_tls_cert {
            config.http.tls_cert = Some(cert.clone());
        }
        if let Some(key) = &self.http_tls_key {
            config.http.tls_key = Some(key.clone());
        }
        for spec in &self.api_keys {
            match spec.split_once(':') {
                Some((user, key)) if !user.is_empty() && !key.is_empty() => {
                    config.http.api_keys.push(ApiKeyConfig {
                        user: user.to_owned(),
                        key_sha256: sluice::config::api_key_sha256(key),
                    })
                }
                _ => {
                    return Err(ConfigError(vec![ConfigIssue {
                        source: "command line".into(),
                        key: "--api-key".into(),
                        reason: "must be USER:KEY with neither part empty".into(),
                    }]))
                }
            }
        }
        for spec in &self.users {
            let Some((name, password)) = spec.split_once(':') else {
                return Err(ConfigError(vec![ConfigIssue {
                    source: "command line".into(),
                    key: "--user".into(),
                    reason: format!("{spec:?} must be NAME:PASSWORD"),
                }]));
            };
            let is_hash = sluice_protocol::auth::NativeHash::parse(password).is_some();
            config.users.retain(|u| u.name != name);
            config.users.push(UserConfig {
                name: name.to_owned(),
                password: (!is_hash).then(|| password.to_owned()),
                password_hash: is_hash.then(|| password.to_owned()),
                backend: Some(SharedBackend::Shared),
                ..UserConfig::default()
            });
        }
        config.validate(&source)
    }
}
