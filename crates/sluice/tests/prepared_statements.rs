//! Binary-protocol prepared statements through sluice with mysql_async: many clients over few
//! database connections without pinning, every column type, eviction, re-prepare errors,
//! and the errors sluice gives for statement ids it does not know.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use mysql_async::{Row, Value};
use sluice::backend::BackendConn;
use sluice_protocol::command;
use sluice_protocol::prepared::CURSOR_TYPE_READ_ONLY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_execute_prepared_statements_over_few_connections_unpinned() {
    const CLIENTS: usize = 200;
    const POOL: usize = 4;
    let gw = start_with("ps_many", |c| c.pool.max_db_connections = POOL).await;
    let mut admin = direct().await;
    admin
        .query_drop(
            "CREATE TABLE IF NOT EXISTS ps_rows (client INT, n INT, label VARCHAR(40), v DOUBLE)",
        )
        .await
        .unwrap();
    admin.query_drop("DELETE FROM ps_rows").await.unwrap();
    let watcher = PeakWatcher::start(&gw.backend_user);

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let opts = gw.opts("app", "secret", Some(TEST_DB));
        clients.spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            for n in 0..5i32 {
                conn.exec_drop(
                    "INSERT INTO ps_rows (client, n, label, v) VALUES (?, ?, ?, ?)",
                    (
                        client as i32,
                        n,
                        format!("c{client}-{n}"),
                        f64::from(n) / 4.0,
                    ),
                )
                .await?;
            }
            let (count, sum, v): (i64, i64, f64) = conn
                .exec_first(
                    "SELECT COUNT(*), SUM(n), SUM(v) FROM ps_rows WHERE client = ?",
                    (client as i32,),
                )
                .await?
                .unwrap();
            assert_eq!((count, sum, v), (5, 10, 2.5), "client {client}");
            let (plus, label, null): (i64, String, Option<i64>) = conn
                .exec_first(
                    "SELECT ? + ?, CONCAT(?, '-x'), ?",
                    (
                        client as i64,
                        1_000_000_000_000i64,
                        format!("c{client}"),
                        Value::NULL,
                    ),
                )
                .await?
                .unwrap();
            assert_eq!(plus, client as i64 + 1_000_000_000_000);
            assert_eq!(label, format!("c{client}-x"));
            assert_eq!(null, None);
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(())
        });
    }
    while let Some(result) = clients.join_next().await {
        result.unwrap().unwrap();
    }
    let peak = watcher.stop().await;
    assert!(
        (1..=POOL).contains(&peak),
        "peak database connections {peak}"
    );

    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("sluice_pins_total{"),
        "no client was pinned:\n{metrics}"
    );
    // Three statements, prepared by 200 clients: answered from the cache but for the first
    // prepare of each on each connection, and copied lazily to each connection.
    let hits = metric_value(&metrics, "sluice_statement_cache_hits_total");
    let prepared = metric_value(&metrics, "sluice_statements_prepared_total");
    assert!(hits >= (3 * CLIENTS - 3 * POOL) as f64, "cache hits {hits}");
    assert!(
        (3.0..=(2 * 3 * POOL) as f64).contains(&prepared),
        "statements prepared on the database {prepared}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_prepared_statements_does_not_hold_a_connection() {
    let gw = start_with("ps_unpinned", |c| {
        c.pool.max_db_connections = 1;
        c.pool.borrow_timeout = Duration::from_secs(2);
    })
    .await;
    let mut first = gw.connect().await;
    let statement = first.prep("SELECT ? * 2").await.unwrap();
    let doubled: Option<i64> = first.exec_first(&statement, (21,)).await.unwrap();
    assert_eq!(doubled, Some(42));
    // `first` keeps its statement open and idles; `second` gets the only connection.
    let mut second = gw.connect().await;
    let tripled: Option<i64> = second.exec_first("SELECT ? * 3", (5,)).await.unwrap();
    assert_eq!(tripled, Some(15));
    let doubled: Option<i64> = first.exec_first(&statement, (8,)).await.unwrap();
    assert_eq!(doubled, Some(16));
    assert_eq!(db_connections_of(&gw.backend_user).await, 1);
    second.disconnect().await.unwrap();
    first.close(statement).await.unwrap();
    first.disconnect().await.unwrap();
}

/// Values of every column type, bound as parameters through sluice and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_round_trips_as_parameters_and_results() {
    let gw = start_with("ps_types", |c| c.pool.max_db_connections = 2).await;
    let mut admin = direct().await;
    admin
        .query_drop(
            "CREATE OR REPLACE TABLE ps_types (id INT PRIMARY KEY, \
             ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED, \
             mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, \
             bi BIGINT, bu BIGINT UNSIGNED, de DECIMAL(65,30), fl FLOAT, db DOUBLE, \
             d DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL, t TIME(6), y YEAR, \
             c CHAR(10), vc VARCHAR(100), bl BLOB, tx TEXT, j JSON, b BIT(64), \
             e ENUM('red','green'), st SET('a','b','c'))",
        )
        .await
        .unwrap();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let rows: Vec<Vec<Value>> = vec![
        vec![
            Value::Int(1),
            Value::Int(-128),
            Value::UInt(255),
            Value::Int(-32768),
            Value::UInt(65535),
            Value::Int(-8_388_608),
            Value::UInt(16_777_215),
            Value::Int(i64::from(i32::MIN)),
            Value::UInt(u64::from(u32::MAX)),
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Bytes(
                b"-12345678901234567890123456789012345.123456789012345678901234567890".to_vec(),
            ),
            Value::Float(1.5),
            Value::Double(-2.2250738585072014e-308),
            Value::Date(1000, 1, 1, 0, 0, 0, 0),
            Value::Date(2026, 11, 24, 23, 59, 58, 123_456),
            Value::Date(2038, 1, 19, 3, 14, 7, 999_999),
            Value::Time(true, 34, 22, 59, 59, 0),
            Value::Int(2155),
            Value::Bytes(b"fixed".to_vec()),
            Value::Bytes("héllo wörld ✓".as_bytes().to_vec()),
            Value::Bytes(all_bytes.clone()),
            Value::Bytes(b"text\0with nul".to_vec()),
            Value::Bytes(br#"{"a": [1, 2.5, null, "x"]}"#.to_vec()),
            Value::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 1]),
            Value::Bytes(b"green".to_vec()),
            Value::Bytes(b"a,c".to_vec()),
        ],
        {
            // Row 2: NULL everywhere but the key, and a positive TIME over 24 hours.
            let mut row = vec![Value::Int(2)];
            row.extend(std::iter::repeat_n(Value::NULL, 26));
            row[17] = Value::Time(false, 4, 4, 0, 0, 500_000);
            row
        },
    ];
    let insert = format!("INSERT INTO ps_types VALUES ({})", vec!["?"; 27].join(", "));
    // Two clients over two connections, interleaved, so statements move between them.
    let mut a = gw.connect().await;
    let mut b = gw.connect().await;
    a.exec_drop(&insert, rows[0].clone()).await.unwrap();
    b.exec_drop(&insert, rows[1].clone()).await.unwrap();

    let select = "SELECT * FROM ps_types WHERE id = ?";
    for (index, expected) in rows.iter().enumerate() {
        let id = index as i64 + 1;
        let through: Row = b.exec_first(select, (id,)).await.unwrap().unwrap();
        let straight: Row = admin.exec_first(select, (id,)).await.unwrap().unwrap();
        let through = through.unwrap();
        assert_eq!(
            through,
            straight.unwrap(),
            "row {id} through sluice vs direct"
        );
        let via_a: Row = a.exec_first(select, (id,)).await.unwrap().unwrap();
        assert_eq!(via_a.unwrap(), through, "row {id} on the other client");
        if index == 1 {
            assert!(through[1..]
                .iter()
                .enumerate()
                .all(|(i, v)| i == 16 || *v == Value::NULL));
            assert_eq!(through[17], Value::Time(false, 4, 4, 0, 0, 500_000));
            continue;
        }
        // Exact values for what a lossy path would break.
        assert_eq!(through[10], Value::UInt(u64::MAX));
        assert_eq!(through[9], Value::Int(i64::MIN));
        assert_eq!(through[11], expected[11]);
        assert_eq!(through[13], Value::Double(-2.2250738585072014e-308));
        assert_eq!(through[15], Value::Date(2026, 11, 24, 23, 59, 58, 123_456));
        assert_eq!(through[17], Value::Time(true, 34, 22, 59, 59, 0));
        assert_eq!(through[21], Value::Bytes(all_bytes.clone()));
        assert_eq!(through[24], Value::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(through[26], Value::Bytes(b"a,c".to_vec()));
    }
    // A JSON value compared as JSON, since the server may normalise its text.
    let json: Option<String> = a
        .exec_first(
            "SELECT JSON_EXTRACT(j, '$.a[1]') FROM ps_types WHERE id = ?",
            (1,),
        )
        .await
        .unwrap();
    assert_eq!(json.as_deref(), Some("2.5"));
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_connection_stay_under_the_cap() {
    const CAP: usize = 3;
    let gw = start_with("ps_evict", |c| {
        c.pool.max_db_connections = 1;
        c.pool.max_prepared_statements = CAP;
    })
    .await;
    let mut conn = gw.connect().await;
    let counters = |rows: Vec<(String, u64)>| -> (u64, u64) {
        let get = |name: &str| rows.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
        (get("Com_stmt_prepare"), get("Com_stmt_close"))
    };
    let show = "SHOW SESSION STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_close')";
    // One database connection, so these are the counters of the connection sluice uses.
    let (prepared_before, closed_before) = counters(conn.query(show).await.unwrap());
    let mut statements = Vec::new();
    for i in 0..20 {
        statements.push(conn.prep(format!("SELECT ? + {i}")).await.unwrap());
    }
    for round in 0..2 {
        for (i, statement) in statements.iter().enumerate() {
            let sum: Option<i64> = conn.exec_first(statement, (round * 100,)).await.unwrap();
            assert_eq!(sum, Some(round * 100 + i as i64));
        }
    }
    let (prepared_after, closed_after) = counters(conn.query(show).await.unwrap());
    let open_now = (prepared_after - prepared_before) - (closed_after - closed_before);
    assert!(
        open_now <= CAP as u64,
        "{open_now} statements open on the database connection (cap {CAP})"
    );
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "sluice_statement_evictions_total") >= 37.0);
    assert!(metric_value(&metrics, "sluice_statement_reprepares_total") >= 40.0);
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_cannot_be_prepared_again_returns_the_server_error() {
    let gw = start_with("ps_reprepare", |c| {
        c.pool.max_db_connections = 1;
        c.pool.max_prepared_statements = 1;
    })
    .await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE OR REPLACE TABLE ps_gone (x INT)")
        .await
        .unwrap();
    admin
        .query_drop("INSERT INTO ps_gone VALUES (7)")
        .await
        .unwrap();
    let mut conn = gw.connect().await;
    let gone = conn.prep("SELECT x FROM ps_gone").await.unwrap();
    // Preparing another statement closes the first on the (only) database connection.
    let other = conn.prep("SELECT ? + 1").await.unwrap();
    admin.query_drop("DROP TABLE ps_gone").await.unwrap();
    let err = conn
        .exec_first::<i64, _, _>(&gone, ())
        .await
        .expect_err("the table is gone");
    assert_eq!(server_code(&err), Some(1146), "{err}");
    let next: Option<i64> = conn.exec_first(&other, (41,)).await.unwrap();
    assert_eq!(next, Some(42), "the session goes on");
    conn.disconnect().await.unwrap();
}

/// Prepares `sql` over a raw client and reads the reply: the statement id, after skipping
/// `definitions` parameter and column definitions (no EOFs: the raw client deprecates them).
async fn prepare_raw(conn: &mut BackendConn, sql: &str, definitions: usize) -> u32 {
    let prepare = [&[command::STMT_PREPARE][..], sql.as_bytes()].concat();
    let ok = request(conn, &prepare).await;
    assert_eq!(ok[0], 0, "prepare of {sql}: {ok:?}");
    for _ in 0..definitions {
        conn.stream.read_packet().await.unwrap();
    }
    u32::from_le_bytes(ok[1..5].try_into().unwrap())
}

/// Five rows, one column: what the cursor tests read.
const CURSOR_SQL: &str = "SELECT seq FROM seq_1_to_5";

/// COM_STMT_EXECUTE of statement `id` without parameters, with execute `flags`.
fn execute_packet(id: u32, flags: u8) -> Vec<u8> {
    let mut packet = vec![command::STMT_EXECUTE];
    packet.extend_from_slice(&id.to_le_bytes());
    packet.extend_from_slice(&[flags, 1, 0, 0, 0]); // one iteration
    packet
}

/// COM_STMT_FETCH of `rows` rows from statement `id`.
fn fetch_packet(id: u32, rows: u32) -> Vec<u8> {
    let mut packet = vec![command::STMT_FETCH];
    packet.extend_from_slice(&id.to_le_bytes());
    packet.extend_from_slice(&rows.to_le_bytes());
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statement_ids_and_malformed_packets_get_errors() {
    let gw = start("ps_errors").await;
    let mut conn = raw_client(&gw).await;
    let unknown = execute_packet(99, 0);
    assert_eq!(error_code(&request(&mut conn, &unknown).await), 1243);
    let unknown = fetch_packet(99, 10);
    assert_eq!(error_code(&request(&mut conn, &unknown).await), 1243);
    assert_eq!(
        error_code(&request(&mut conn, &[command::STMT_RESET, 1]).await),
        1047
    );

    // A real statement: a fetch without a cursor, and an execute cut short.
    // One parameter and one column definition follow the prepare.
    let id = prepare_raw(&mut conn, "SELECT ?", 2).await;
    assert_eq!(
        error_code(&request(&mut conn, &fetch_packet(id, 10)).await),
        1421
    );
    // The parameter's null bitmap and types are missing: the server's 1210.
    assert_eq!(
        error_code(&request(&mut conn, &execute_packet(id, 0)).await),
        1210
    );
    // The session is still usable.
    let rows = conn
        .query_text("SELECT 'still here'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, vec![vec![Some("still here".to_owned())]]);
}

/// Reads one reply of a command with a result: its packets, up to the terminator.
async fn read_until_terminator(conn: &mut BackendConn) -> (Vec<Vec<u8>>, u16) {
    let mut packets = Vec::new();
    loop {
        let payload = conn.stream.read_packet().await.unwrap().payload;
        if payload[0] == 0xfe && payload.len() < 0xff_ffff {
            let status = u16::from_le_bytes([payload[3], payload[4]]);
            return (packets, status);
        }
        assert_ne!(payload[0], 0xff, "unexpected ERR {payload:?}");
        packets.push(payload.to_vec());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_cursor_pins_until_it_is_exhausted_or_reset() {
    const CURSOR_EXISTS: u16 = 0x40;
    const LAST_ROW_SENT: u16 = 0x80;
    let gw = start_with("ps_cursor", |c| {
        c.pool.max_db_connections = 1;
        c.pool.borrow_timeout = Duration::from_millis(500);
    })
    .await;
    let mut cursor_client = raw_client(&gw).await;
    let id = prepare_raw(&mut cursor_client, CURSOR_SQL, 1).await;
    let execute = execute_packet(id, CURSOR_TYPE_READ_ONLY);
    let fetch = fetch_packet(id, 10);
    let mut other = gw.connect().await;

    for ending in ["exhausted", "reset"] {
        let mut seq = 0;
        cursor_client
            .stream
            .write_packet(&mut seq, &execute)
            .await
            .unwrap();
        let (metadata, status) = read_until_terminator(&mut cursor_client).await;
        assert_eq!(
            metadata.len(),
            2,
            "column count and definition, no rows yet"
        );
        assert_ne!(status & CURSOR_EXISTS, 0, "the server opened a cursor");
        // The only database connection is the cursor's now.
        let err = other
            .query_drop("SELECT 1")
            .await
            .expect_err("pinned by the cursor");
        assert_eq!(server_code(&err), Some(1040), "{err}");
        if ending == "exhausted" {
            let mut seq = 0;
            cursor_client
                .stream
                .write_packet(&mut seq, &fetch)
                .await
                .unwrap();
            let (rows, status) = read_until_terminator(&mut cursor_client).await;
            assert_eq!(rows.len(), 5);
            assert_ne!(status & LAST_ROW_SENT, 0);
        } else {
            let reply = request(&mut cursor_client, &prepared_reset(id)).await;
            assert_eq!(reply[0], 0, "OK to COM_STMT_RESET");
            assert_eq!(error_code(&request(&mut cursor_client, &fetch).await), 1421);
        }
        other
            .query_drop("SELECT 1")
            .await
            .expect("the cursor's pin is gone");
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_pins_total{reason=\"cursor\"}"),
        2.0
    );
    other.disconnect().await.unwrap();
}

fn prepared_reset(id: u32) -> Vec<u8> {
    sluice_protocol::prepared::reset_packet(id).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frozen_with_an_open_cursor_loses_it_after_the_idle_limit() {
    let gw = start_with("ps_cursor_idle", |c| {
        c.pool.max_db_connections = 1;
        c.idle_transaction_timeout = Duration::from_millis(300);
    })
    .await;
    let mut frozen = raw_client(&gw).await;
    let id = prepare_raw(&mut frozen, CURSOR_SQL, 1).await;
    let mut seq = 0;
    frozen
        .stream
        .write_packet(&mut seq, &execute_packet(id, CURSOR_TYPE_READ_ONLY))
        .await
        .unwrap();
    let (_, status) = read_until_terminator(&mut frozen).await;
    assert_ne!(status & 0x40, 0, "a cursor is open");

    // The only connection is freed once the cursor's holder has idled past the limit.
    let started = std::time::Instant::now();
    let mut other = gw.connect().await;
    let one: Option<i64> = other.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    assert!(started.elapsed() >= Duration::from_millis(250));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "sluice_idle_timeouts_total{kind=\"transaction\"}"),
        1.0
    );
    // The frozen client, when it wakes, learns why.
    let reply = request(&mut frozen, &fetch_packet(id, 10)).await;
    assert_eq!(error_code(&reply), 4031);
    other.disconnect().await.unwrap();
}
