//! Several applications sharing one database budget (`--apps hot:180,cold:20:min=4`).
//!
//! Each application runs as its own database user, created by the tool, so the database's
//! process list, sluice's per-user pools and per-user quotas tell them apart, and the report
//! can show whether a hot application starves a cold one, with and without quotas.

use std::str::FromStr;

use crate::config::{BackendSecret, BackendTarget, UserConfig};
use crate::queue::Quota;

/// One application of a multi-application burst: a name, its concurrent containers and
/// the quota the `quotas` mode gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppSpec {
    /// Short name; its database user is `sluice_bench_<name>`.
    pub name: String,
    /// Containers per wave.
    pub containers: usize,
    /// Its `[[users]]` quota in the `quotas` mode (`min=`, `max=`, `weight=`).
    #[serde(skip)]
    pub quota: Quota,
}

impl FromStr for AppSpec {
    type Err = String;

    /// Parses `NAME:CONTAINERS[:min=N][:max=N][:weight=N]`; the name is kept to letters,
    /// digits and `_` because it becomes part of a database user name written into SQL.
    fn from_str(text: &str) -> Result<AppSpec, String> {
        let mut parts = text.split(':');
        let (Some(name), Some(containers)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "{text:?}: expected NAME:CONTAINERS[:min=N][:max=N][:weight=N], e.g. hot:180"
            ));
        };
        if name.is_empty()
            || name.len() > 20
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "{name:?}: an application name is 1 to 20 letters, digits or _"
            ));
        }
        let containers = containers
            .parse()
            .map_err(|_| format!("{containers:?}: containers must be a whole number"))?;
        let mut quota = Quota::default();
        for setting in parts {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{setting:?}: expected min=N, max=N or weight=N"))?;
            let number: usize = value
                .parse()
                .map_err(|_| format!("{setting:?}: {key} must be a whole number"))?;
            match key {
                "min" => quota.min = number,
                "max" => quota.max = Some(number),
                "weight" => {
                    quota.weight =
                        u32::try_from(number).map_err(|_| format!("{setting:?}: too large"))?
                }
                _ => {
                    return Err(format!(
                        "{setting:?}: the quota keys are min, max and weight"
                    ))
                }
            }
        }
        Ok(AppSpec {
            name: name.to_owned(),
            containers,
            quota,
        })
    }
}

impl AppSpec {
    /// The database user the application runs as (and its sluice login).
    pub fn db_user(&self) -> String {
        format!("sluice_bench_{}", self.name)
    }
}

/// An application ready to run: where its containers connect, as whom.
#[derive(Debug, Clone)]
pub struct AppRun {
    /// Its name, for the report.
    pub name: String,
    /// Containers per wave.
    pub containers: usize,
    /// Its own database login, at the database (retargeted at sluice in gateway mode).
    pub target: BackendTarget,
    /// Its quota in the `quotas` mode.
    pub quota: Quota,
}

/// The applications of this run: the `--apps` list, each created (or re-created with a fresh
/// password) as a database user allowed to read and write the benchmark schema; or, without
/// `--apps`, one application `app` running as the `--database` user.
pub async fn prepare(
    apps: &[AppSpec],
    containers: usize,
    admin: &BackendTarget,
) -> anyhow::Result<Vec<AppRun>> {
    if apps.is_empty() {
        return Ok(vec![AppRun {
            name: "app".into(),
            containers,
            target: admin.clone(),
            quota: Quota::default(),
        }]);
    }
    let mut conn = super::workload::connect(admin).await?;
    let mut runs = Vec::new();
    for app in apps {
        let user = app.db_user();
        let password = format!("{:032x}", rand::random::<u128>());
        for sql in [
            format!("CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
            format!("GRANT SELECT, UPDATE ON sluice_bench.* TO '{user}'@'%'"),
        ] {
            conn.query_text(&sql)
                .await?
                .map_err(|e| anyhow::anyhow!("creating database user {user}: {e}"))?;
        }
        runs.push(AppRun {
            name: app.name.clone(),
            containers: app.containers,
            target: BackendTarget {
                user,
                secret: BackendSecret::Password(password),
                ..admin.clone()
            },
            quota: app.quota,
        });
    }
    Ok(runs)
}

/// Drops the database users [`prepare`] created for `--apps`, so a run leaves no accounts
/// behind (their connections, if any are still closing, end on their own). Nothing to do
/// for the `--database` user.
pub async fn remove(apps: &[AppSpec], admin: &BackendTarget) -> anyhow::Result<()> {
    if apps.is_empty() {
        return Ok(());
    }
    let mut conn = super::workload::connect(admin).await?;
    for app in apps {
        let user = app.db_user();
        conn.query_text(&format!("DROP USER IF EXISTS '{user}'@'%'"))
            .await?
            .map_err(|e| anyhow::anyhow!("dropping database user {user}: {e}"))?;
    }
    Ok(())
}

/// The in-process sluice's logins for these applications: each runs as its own database
/// user with the same name and password, so the gateway keeps one pool per application
/// inside the one `--pool` budget; `with_quotas` gives each its quota from `--apps`.
pub fn gateway_users(apps: &[AppRun], with_quotas: bool) -> Vec<UserConfig> {
    apps.iter()
        .map(|app| {
            let password = match &app.target.secret {
                BackendSecret::Password(p) => p.clone(),
                BackendSecret::PasswordSha1(_) => String::new(),
            };
            let quota = if with_quotas {
                app.quota
            } else {
                Quota::default()
            };
            UserConfig {
                name: app.target.user.clone(),
                password: Some(password.clone()),
                backend_user: Some(app.target.user.clone()),
                backend_password: Some(password),
                min_connections: quota.min,
                max_connections: quota.max,
                weight: Some(quota.weight),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_containers() {
        let app: AppSpec = "hot:180".parse().unwrap();
        assert_eq!((app.name.as_str(), app.containers), ("hot", 180));
        assert_eq!(app.db_user(), "sluice_bench_hot");
        assert_eq!(app.quota, Quota::default());
        let cold: AppSpec = "cold:20:min=4:weight=3".parse().unwrap();
        assert_eq!(
            cold.quota,
            Quota {
                min: 4,
                max: None,
                weight: 3
            }
        );
        for bad in [
            "hot",
            "ho't:3",
            ":3",
            "hot:x",
            "hot:-1",
            "hot:3:min",
            "hot:3:floor=2",
        ] {
            assert!(bad.parse::<AppSpec>().is_err(), "{bad}");
        }
    }
}
