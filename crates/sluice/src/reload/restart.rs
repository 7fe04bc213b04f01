//! The settings a running sluice cannot change: its listeners (the admin console's
//! included), the database it pools connections to, the fleet it belongs to, and the caps
//! and tasks sized or started once at start. A reload keeps their running values and names
//! each one whose new value waits for a restart, so an edit the process cannot honour is
//! reported, never silently ignored.

use crate::config::Settings;

/// `new` with every restart-only setting put back to its value in `running`, and the names
/// of those whose value differed, in the configuration's own terms.
pub fn keep_running(running: &Settings, mut new: Settings) -> (Settings, Vec<&'static str>) {
    let mut differ = Vec::new();
    // Each: where the setting is in the file, and in `Settings`.
    macro_rules! keep {
        ($($name:literal => $($field:ident).+;)+) => {$(
            if running.$($field).+ != new.$($field).+ {
                differ.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        )+};
    }
    keep! {
        "listen" => listen;
        "admin_listen" => admin_listen;
        "worker_threads" => worker_threads;
        "http_listen" => http_listen;
        "backend" => backend;
        "max_client_connections" => max_client_connections;
        "max_pending_logins" => max_pending_logins;
        "failed_login_delay" => failed_login_delay;
        "failed_login_delay_max" => failed_login_delay_max;
        "tls_cert / tls_key" => tls;
        "pool.statement_cache_size" => pool.statement_cache_size;
        "auth" => auth;
        "janitor" => janitor;
        "console" => console;
        "fleet" => fleet;
        "http.tls" => http.tls;
        "http.max_connections" => http.max_connections;
        "http.max_concurrent_requests" => http.max_concurrent_requests;
        "http.statement_timeout" => http.statement_timeout;
        "http.transaction_idle_timeout" => http.transaction_idle_timeout;
        "http.transaction_max_lifetime" => http.transaction_max_lifetime;
        "http.header_read_timeout" => http.header_read_timeout;
        "http.body_read_timeout" => http.body_read_timeout;
        "http.keepalive_timeout" => http.keepalive_timeout;
        "http.write_timeout" => http.write_timeout;
    }
    (new, differ)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UserConfig};

    fn settings(tweak: impl FnOnce(&mut Config)) -> Settings {
        let mut config = Config::default();
        tweak(&mut config);
        config.validate("test").unwrap()
    }

    #[test]
    fn backend_compression_waits_for_a_restart() {
        let running = settings(|_| {});
        let (kept, differ) = keep_running(&running, settings(|c| c.backend.compress = true));
        assert_eq!(differ, ["backend"]);
        assert!(!kept.backend.compress);
    }

    #[test]
    fn restart_only_settings_keep_their_running_value_and_are_named() {
        let running = settings(|_| {});
        let new = settings(|c| {
            c.listen = "127.0.0.1:7033".parse().unwrap();
            c.worker_threads = 1;
            c.backend.url = "mysql://root@127.0.0.1:3307".into();
            c.http.max_connections = 7;
            c.pool.borrow_timeout = std::time::Duration::from_secs(3);
            c.users.push(UserConfig {
                name: "fn".into(),
                password: Some("pw".into()),
                backend: Some(crate::config::SharedBackend::Shared),
                ..UserConfig::default()
            });
        });
        let (kept, differ) = keep_running(&running, new);
        assert_eq!(
            differ,
            [
                "listen",
                "worker_threads",
                "backend",
                "http.max_connections"
            ]
        );
        assert_eq!(kept.listen, running.listen);
        assert_eq!(kept.worker_threads, 0);
        assert_eq!(kept.backend.port, 3306);
        assert_eq!(kept.http.max_connections, running.http.max_connections);
        assert_eq!(kept.pool.borrow_timeout, std::time::Duration::from_secs(3));
        assert!(kept.users.contains_key("fn"), "the rest is applied");
    }

    #[test]
    fn an_unchanged_configuration_needs_no_restart() {
        let (_, differ) = keep_running(&settings(|_| {}), settings(|_| {}));
        assert!(differ.is_empty(), "{differ:?}");
    }
}
