//! What an idle authenticated client costs sluice in memory, measured on the real binary (a
//! process of its own, so the clients' memory is not counted): once the clients have been
//! quiet long enough to give their buffers back, sluice's resident set has grown by at most
//! [`BOUND_KIB`] per client. `scripts/bench-overhead` reports the release build's figure
//! (PyMySQL clients from eight source addresses).

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::*;
use mysql_async::prelude::*;

/// Idle clients opened.
const CLIENTS: usize = 1000;
/// Resident memory each may add, in KiB: the 8 KB (7.8 KiB). Measured 6.4 in the
/// debug build since the session's future stopped holding its parts twice (7.9 before; 10.2
/// before sessions gave their buffers back when quiet and kept the login's state out of
/// the client's task).
const BOUND_KIB: f64 = 7.8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_cost_a_bounded_amount_of_memory_each() {
    rlimit::increase_nofile_limit(4 * CLIENTS as u64).unwrap();
    let sluice = Binary::start(
        "idle_memory",
        &format!("max_client_connections = {}", CLIENTS + 10),
    )
    .await;
    let opts = sluice.opts().db_name(Some(TEST_DB));
    // Warm up: the pool's connection, the allocator's first arenas, the runtime's threads.
    let mut first = mysql_async::Conn::new(opts.clone()).await.unwrap();
    first.query_drop("DO 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = rss_kib(&sluice.pid().to_string()) as f64;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(mysql_async::Conn::new(opts.clone()).await.unwrap());
    }
    // Quiet past the moment sessions give their buffers back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = rss_kib(&sluice.pid().to_string()) as f64;
    let per_client = (after - before) / CLIENTS as f64;
    println!(
        "sluice RSS {:.1} MiB before, {:.1} MiB with {CLIENTS} idle clients: {per_client:.2} KiB each",
        before / 1024.0,
        after / 1024.0
    );
    assert!(
        per_client <= BOUND_KIB,
        "{per_client:.2} KiB per idle client, bound {BOUND_KIB}"
    );
    // They are all still served.
    for client in clients.iter_mut().step_by(97) {
        let one: Option<u8> = client.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    for client in clients {
        client.disconnect().await.unwrap();
    }
    first.disconnect().await.unwrap();
}
