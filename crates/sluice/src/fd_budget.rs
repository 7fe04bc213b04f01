//! The file-descriptor budget: every client socket, login in progress, database connection
//! and Data API socket is a descriptor, and a process out of them can accept nothing, not
//! even `/metrics` or a new pool connection. At start sluice raises its soft
//! `RLIMIT_NOFILE` to the hard limit and, when the configured caps cannot fit in it with a
//! reserve for the listeners, the admin endpoint and the pool's side connections, lowers
//! the client caps to what fits, with a warning naming the numbers.

use crate::config::Settings;

/// Descriptors kept for everything that is not a client: listeners, admin requests, log
/// files, connections sluice opens for itself (probes, `KILL`).
pub const RESERVE: u64 = 64;

/// What had to change so the caps fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    /// The descriptor limit in force.
    pub limit: u64,
    /// Descriptors the configuration asked for.
    pub needed: u64,
    /// `max_client_connections` now.
    pub max_client_connections: usize,
    /// `max_pending_logins` now.
    pub max_pending_logins: usize,
    /// `http.max_connections` now, when the Data API is on.
    pub http_max_connections: Option<usize>,
}

/// The caps on sockets clients open: MySQL clients, logins in progress, and Data API
/// connections when the Data API is on (0 otherwise).
fn client_caps(settings: &Settings) -> [usize; 3] {
    let http = match settings.http_listen {
        Some(_) => settings.http.max_connections,
        None => 0,
    };
    [
        settings.max_client_connections,
        settings.max_pending_logins,
        http,
    ]
}

/// Descriptors the caps in `settings` can hold at once, the reserve included.
pub fn needed(settings: &Settings) -> u64 {
    client_caps(settings)
        .iter()
        .chain([&settings.pool.max_db_connections])
        .map(|&n| n as u64)
        .sum::<u64>()
        + RESERVE
}

/// Lowers the client caps of `settings` so everything fits in `limit` descriptors, keeping
/// their proportion (each keeps at least one); `None` when they fit already.
pub fn fit(settings: &mut Settings, limit: u64) -> Option<Shrunk> {
    let needed = needed(settings);
    if needed <= limit {
        return None;
    }
    let caps = client_caps(settings).map(|n| n as u64);
    let fixed = settings.pool.max_db_connections as u64 + RESERVE;
    let in_use = caps.iter().filter(|&&n| n > 0).count() as u64;
    let room = limit.saturating_sub(fixed).max(in_use);
    let total: u64 = caps.iter().sum();
    let mut shares = caps.map(|n| match n {
        0 => 0,
        n => (room * n / total).max(1),
    });
    // Rounding down leaves a few descriptors over; the MySQL clients get them.
    shares[0] += room.saturating_sub(shares.iter().sum());
    let [clients, pending, http] = shares.map(|n| n as usize);
    settings.max_client_connections = clients;
    settings.max_pending_logins = pending;
    let http_max_connections = settings.http_listen.map(|_| {
        settings.http.max_connections = http;
        http
    });
    Some(Shrunk {
        limit,
        needed,
        max_client_connections: clients,
        max_pending_logins: pending,
        http_max_connections,
    })
}

/// Raises the soft descriptor limit to the hard one, then [`fit`]s the caps into it,
/// logging what it found and did when `report` (at start; a reload fits the same caps
/// again, and repeating the warning each time would be noise).
pub fn raise_and_fit(settings: &mut Settings, report: bool) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            if report {
                tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE; client caps are not checked against it");
            }
            return;
        }
    };
    let shrunk = fit(settings, limit);
    if !report {
        return;
    }
    match shrunk {
        None => tracing::info!(
            limit,
            needed = needed(settings),
            "file descriptors: the configured caps fit"
        ),
        Some(shrunk) => tracing::warn!(
            limit = shrunk.limit,
            needed = shrunk.needed,
            max_client_connections = shrunk.max_client_connections,
            max_pending_logins = shrunk.max_pending_logins,
            http_max_connections = ?shrunk.http_max_connections,
            "RLIMIT_NOFILE is too low for max_client_connections + max_pending_logins + \
             http.max_connections (with the Data API on) + pool.max_db_connections + \
             {RESERVE} reserved; lowered the client caps to fit (raise the hard limit, e.g. \
             LimitNOFILE= in systemd or ulimit -Hn, to keep them)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(clients: usize, pending: usize, db: usize) -> Settings {
        let mut config = crate::config::Config {
            max_client_connections: clients,
            max_pending_logins: pending,
            ..Default::default()
        };
        config.pool.max_db_connections = db;
        config.validate("test").unwrap()
    }

    #[test]
    fn caps_that_fit_are_left_alone() {
        let mut s = settings(1000, 100, 20);
        assert_eq!(needed(&s), 1000 + 100 + 20 + RESERVE);
        assert_eq!(fit(&mut s, 1184), None);
        assert_eq!(s.max_client_connections, 1000);
    }

    #[test]
    fn caps_that_do_not_fit_shrink_in_proportion_leaving_the_reserve() {
        let mut s = settings(10_000, 1024, 20);
        let shrunk = fit(&mut s, 1024).unwrap();
        assert_eq!(shrunk.needed, 10_000 + 1024 + 20 + RESERVE);
        let total = s.max_client_connections + s.max_pending_logins + 20 + RESERVE as usize;
        assert_eq!(total, 1024);
        assert!(s.max_client_connections > 8 * s.max_pending_logins);
        assert!(s.max_pending_logins >= 1);
    }

    #[test]
    fn the_data_api_cap_counts_and_shrinks_with_the_others_when_it_is_on() {
        let mut s = settings(10_000, 1024, 20);
        s.http.max_connections = 4096;
        assert_eq!(needed(&s), 10_000 + 1024 + 20 + RESERVE, "off: not counted");
        s.http_listen = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(needed(&s), 10_000 + 1024 + 4096 + 20 + RESERVE);
        let shrunk = fit(&mut s, 2048).unwrap();
        assert_eq!(shrunk.http_max_connections, Some(s.http.max_connections));
        let total = s.max_client_connections
            + s.max_pending_logins
            + s.http.max_connections
            + 20
            + RESERVE as usize;
        assert_eq!(total, 2048);
        assert!(s.http.max_connections > 3 * s.max_pending_logins);
        assert!(s.max_client_connections > 2 * s.http.max_connections);
    }

    #[test]
    fn a_tiny_limit_still_leaves_one_of_each() {
        let mut s = settings(100, 10, 50);
        fit(&mut s, 16).unwrap();
        assert_eq!((s.max_client_connections, s.max_pending_logins), (1, 1));
    }
}
