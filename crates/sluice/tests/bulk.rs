//! MariaDB's bulk protocol through sluice: `COM_STMT_BULK_EXECUTE` (many parameter sets in
//! one command) is offered to clients when the database offers it, asked for on every
//! database connection, refused as the server refuses it to a client that did not negotiate
//! it, and carried like `COM_STMT_EXECUTE` through statement-id translation, lazy
//! per-connection prepares and replayed parameter types. Drivers' batch calls (MariaDB
//! Connector/Node's `batch()`, mysql_async's `exec_batch`) give what they give directly.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use sluice::backend::{BackendConn, Flavor};
use sluice_protocol::response::{parse_ok, ERR_HEADER};
use sluice_protocol::{command, MariadbCapabilities};

/// `COM_STMT_BULK_EXECUTE` as sluice counts it.
const BULK_COUNTER: &str = "sluice_commands_total{command=\"COM_STMT_BULK_EXECUTE\"}";

/// MariaDB's types for parameters: `MYSQL_TYPE_LONGLONG`, `MYSQL_TYPE_VAR_STRING`.
const LONGLONG: [u8; 2] = [8, 0];
const VAR_STRING: [u8; 2] = [253, 0];

/// Panics with the first line where `got` differs from `want` (the outputs are long).
fn assert_same_lines(got: &str, want: &str, what: &str) {
    let short = |line: &str| line.chars().take(600).collect::<String>();
    for (n, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(short(g), short(w), "{what}: line {n} differs");
        assert_eq!(g, w, "{what}: line {n} differs past 600 characters");
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{what}: line count"
    );
}

/// Runs tests/clients/bulk_batch.js directly and through `gw`, with the driver's bulk
/// option `bulk`, and returns both outputs.
async fn node_batches(gw: &TestGateway, table: &str, bulk: &str) -> [String; 2] {
    scenarios::outputs_both_ways(gw, "node", "bulk_batch.js", &[table, bulk]).await
}

/// Connector/Node's `batch()` through sluice uses the bulk command and returns what it
/// returns directly: the same results, affected counts and insert ids, the same error and
/// rows after a batch that fails on a duplicate key half-way; two clients alternating
/// batches share one database connection (a pool of one), so statement ids are translated
/// and the connection's copy is bound with each client's types in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_node_batch_gives_what_mariadb_gives() {
    let gw = start_with("bulk_node", |c| c.pool.max_db_connections = 1).await;
    let outputs = node_batches(&gw, "bulk_node_t", "on").await;
    assert_same_lines(&outputs[1], &outputs[0], "through sluice as directly");
    let through = &outputs[1];
    assert!(
        through.starts_with(r#"{"negotiated":{"bulk":true,"unit_results":false}}"#),
        "the driver negotiated bulk operations with sluice: {}",
        through.lines().next().unwrap_or_default()
    );
    assert!(through.contains(r#"{"aggregated":{"affectedRows":600,"insertId":"1n""#));
    assert!(through.contains(r#""errno":1062,"sqlState":"23000""#));
    assert!(through.contains(r#"{"row_count":1093}"#), "rows left");
    assert!(
        through.contains(r#""blob_len":1200000"#),
        "the 1.2 MB string went through"
    );
    // Over 900 rows went in bulk, at least one packet per batch call and several rows per
    // packet (the driver starts a new one where its types change: `k / 8` binds an INT
    // every eighth row and a DOUBLE otherwise).
    let bulks = metric_value(&gw.metrics().await, BULK_COUNTER);
    assert!(
        (26.0..500.0).contains(&bulks),
        "{bulks} bulk executes counted"
    );
    assert_eq!(gw.gateway.pool.stats().max, 1);
}

/// A driver told not to use bulk operations executes row by row, through sluice as
/// directly: sluice's database connections negotiating bulk changes nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_node_without_bulk_sees_no_difference() {
    let gw = start_with("bulk_node_off", |c| c.pool.max_db_connections = 1).await;
    let outputs = node_batches(&gw, "bulk_node_off_t", "off").await;
    assert_same_lines(&outputs[1], &outputs[0], "through sluice as directly");
    assert!(outputs[1].starts_with(r#"{"negotiated":{"bulk":false,"#));
    assert_eq!(metric_value(&gw.metrics().await, BULK_COUNTER), 0.0);
}

/// A row of `bulk_async_t`: id, a, s, d, tag.
type AsyncRow = (u32, Option<u64>, Option<String>, f64, String);

/// What mysql_async's `exec_batch` (its bulk path when the server offers bulk operations)
/// leaves and reports.
async fn exec_batch_run(mut conn: mysql_async::Conn) -> String {
    conn.query_drop(
        "CREATE OR REPLACE TABLE bulk_async_t (id INT AUTO_INCREMENT PRIMARY KEY, \
         a BIGINT UNSIGNED, s TEXT, d DOUBLE, tag VARCHAR(20) UNIQUE)",
    )
    .await
    .unwrap();
    let insert = "INSERT INTO bulk_async_t (a, s, d, tag) VALUES (?, ?, ?, ?)";
    let rows = |from: u64, to: u64| {
        (from..to).map(|k| {
            (
                (k % 3 != 0).then_some(u64::MAX - k),
                (k % 4 != 0).then(|| format!("row {k} ü")),
                k as f64 / 3.0,
                format!("tag-{k}"),
            )
        })
    };
    let mut report = Vec::new();
    conn.exec_batch(insert, rows(0, 400)).await.unwrap();
    report.push(format!(
        "batch: {} affected, insert id {:?}",
        conn.affected_rows(),
        conn.last_insert_id()
    ));
    let mut duplicate: Vec<_> = rows(400, 450).collect();
    duplicate[20].3 = "tag-7".into();
    let err = conn.exec_batch(insert, duplicate).await.unwrap_err();
    report.push(format!("duplicate: {err}"));
    let err = conn.exec_batch("SELECT ?", [(1,), (2,)]).await.unwrap_err();
    report.push(format!("select: {err}"));
    let left: Vec<AsyncRow> = conn
        .query("SELECT id, a, s, d, tag FROM bulk_async_t ORDER BY id")
        .await
        .unwrap();
    report.push(format!("{} rows: {left:?}", left.len()));
    conn.disconnect().await.unwrap();
    report.join("\n")
}

/// mysql_async's `exec_batch` negotiates bulk operations with sluice and gets what it gets
/// directly: the rows, the duplicate-key error, and the server's 1295 for a `SELECT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_exec_batch_gives_what_mariadb_gives() {
    let gw = start_with("bulk_async", |c| c.pool.max_db_connections = 1).await;
    let direct = mysql_async::Conn::new(gw.direct_opts()).await.unwrap();
    let want = exec_batch_run(direct).await;
    let through = exec_batch_run(gw.connect().await).await;
    assert_same_lines(&through, &want, "through sluice as directly");
    assert!(want.contains("ERROR 1062"), "{want:.300}");
    assert!(want.contains("ERROR 1295"), "{want:.300}");
    assert!(
        want.starts_with("batch: 400 affected, insert id Some(1)\n"),
        "{want:.300}"
    );
    assert!(
        want.contains("\n400 rows: "),
        "the failed batch left none: {want:.300}"
    );
    let bulks = metric_value(&gw.metrics().await, BULK_COUNTER);
    assert!(bulks >= 3.0, "{bulks} bulk executes counted");
}

/// The greeting offers MariaDB's bulk capabilities as the server's does, and the extended
/// capabilities sluice does not carry (progress reports, metadata caching) not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_offers_bulk_operations_as_the_server_does() {
    let gw = start("bulk_greeting").await;
    let greeting = |port: u16| async move {
        let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut stream = sluice_protocol::stream::PacketStream::new(socket, 1 << 20);
        let packet = stream.read_packet().await.unwrap();
        sluice_protocol::handshake::Greeting::parse(&packet.payload)
            .unwrap()
            .mariadb_capabilities
    };
    let server = greeting(DB_PORT).await;
    let offered = greeting(gw.addr.port()).await;
    let carried = MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS
        | MariadbCapabilities::MARIADB_CLIENT_BULK_UNIT_RESULTS
        | MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;
    assert!(server.contains(MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS));
    assert_eq!(offered, server & carried);
}

/// A client of sluice's own protocol code, directly or through the gateway.
struct Raw(BackendConn);

impl Raw {
    /// Prepares `sql`; returns its id and parameter count.
    async fn prepare(&mut self, sql: &str) -> (u32, u16) {
        let mut payload = vec![command::STMT_PREPARE];
        payload.extend_from_slice(sql.as_bytes());
        let mut seq = 0;
        self.0
            .stream
            .write_packet(&mut seq, &payload)
            .await
            .unwrap();
        let ok = self.0.stream.read_packet().await.unwrap().payload.to_vec();
        let prepared = sluice_protocol::prepared::PrepareOk::parse(&ok)
            .unwrap_or_else(|_| panic!("prepare {sql}: {ok:?}"));
        // CLIENT_DEPRECATE_EOF: definitions without EOF packets.
        for _ in 0..prepared.columns + prepared.params {
            self.0.stream.read_packet().await.unwrap();
        }
        (prepared.statement_id, prepared.params)
    }

    /// Sends `payload` and returns the first packet of the reply, draining a result set.
    async fn command(&mut self, payload: &[u8]) -> Vec<u8> {
        let reply = request(&mut self.0, payload).await;
        if reply[0] != ERR_HEADER && reply[0] != 0 {
            loop {
                let packet = self.0.stream.read_packet().await.unwrap().payload;
                if packet[0] == 0xfe && packet.len() < 0xff_ffff {
                    break;
                }
            }
        }
        reply
    }

    /// The session still answers.
    async fn ping(&mut self) {
        assert_eq!(self.command(&[command::PING]).await[0], 0, "PING answered");
    }
}

/// `command` for statement `id` followed by `tail`.
fn statement_command(command: u8, id: u32, tail: &[u8]) -> Vec<u8> {
    let mut payload = vec![command];
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(tail);
    payload
}

/// A bulk execute of statement `id` with `flags`, the `types` (when any) and the rows.
fn bulk(id: u32, flags: u16, types: &[[u8; 2]], rows: &[u8]) -> Vec<u8> {
    let mut tail = flags.to_le_bytes().to_vec();
    tail.extend(types.iter().flatten());
    tail.extend_from_slice(rows);
    statement_command(command::STMT_BULK_EXECUTE, id, &tail)
}

/// Bulk row values: a BIGINT, NULL, a string.
fn longlong(v: i64) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&v.to_le_bytes());
    out
}
fn null() -> Vec<u8> {
    vec![1]
}
fn string(s: &str) -> Vec<u8> {
    let mut out = vec![0, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// A `COM_STMT_EXECUTE` of statement `id` with three parameters: `types` bound (or not)
/// and `values` (none NULL).
fn execute(id: u32, types: Option<&[[u8; 2]]>, values: &[u8]) -> Vec<u8> {
    let mut tail = vec![0, 1, 0, 0, 0, 0];
    match types {
        Some(types) => {
            tail.push(1);
            tail.extend(types.iter().flatten());
        }
        None => tail.push(0),
    }
    tail.extend_from_slice(values);
    statement_command(command::STMT_EXECUTE, id, &tail)
}

/// Bytes of an execute's value: a BIGINT or a length-prefixed string.
fn value(v: &[u8]) -> Vec<u8> {
    v[1..].to_vec()
}

/// Two clients, each with its own copy of one statement, binding different types and
/// relying on the server to remember them: executes without types, bulk or not, after the
/// other client bound its own. What each reply says and the rows left.
async fn alternating_types(a: &mut Raw, b: &mut Raw) -> Vec<String> {
    let insert = "INSERT INTO bulk_types_t VALUES (?, ?, ?)";
    let (ia, _) = a.prepare(insert).await;
    let (ib, _) = b.prepare(insert).await;
    let ints = [LONGLONG, LONGLONG, VAR_STRING];
    let strings = [VAR_STRING, VAR_STRING, VAR_STRING];
    let values = |parts: &[Vec<u8>]| parts.iter().map(|p| value(p)).collect::<Vec<_>>().concat();
    let rows = |parts: &[Vec<u8>]| parts.concat();
    let steps = [
        // a binds numbers, b binds strings (the copy a pool of one shares flips to them).
        (
            true,
            execute(
                ia,
                Some(&ints),
                &values(&[longlong(1), longlong(10), string("one")]),
            ),
        ),
        (
            false,
            execute(
                ib,
                Some(&strings),
                &values(&[string("2"), string("20"), string("two")]),
            ),
        ),
        // Bulk without types: each relies on its own.
        (
            true,
            bulk(
                ia,
                0,
                &[],
                &rows(&[
                    longlong(3),
                    longlong(30),
                    string("three"),
                    longlong(4),
                    null(),
                    string("four"),
                ]),
            ),
        ),
        (
            false,
            bulk(
                ib,
                0,
                &[],
                &rows(&[string("5"), string("50"), string("five")]),
            ),
        ),
        // a's bulk binds strings: its plain execute without types relies on those now.
        (
            true,
            bulk(
                ia,
                0x80,
                &strings,
                &rows(&[string("6"), string("60"), string("six")]),
            ),
        ),
        (
            false,
            execute(
                ib,
                Some(&[LONGLONG, LONGLONG, LONGLONG]),
                &values(&[longlong(7), longlong(70), longlong(7)]),
            ),
        ),
        (
            true,
            execute(
                ia,
                None,
                &values(&[string("8"), string("80"), string("eight")]),
            ),
        ),
        (
            false,
            bulk(ib, 0, &[], &rows(&[longlong(9), longlong(90), longlong(9)])),
        ),
    ];
    let mut seen = Vec::new();
    for (on_a, payload) in steps {
        let client = if on_a { &mut *a } else { &mut *b };
        let reply = client.command(&payload).await;
        seen.push(match parse_ok(&reply) {
            Ok(ok) if reply[0] == 0 => format!(
                "OK affected {} id {} warnings {}",
                ok.affected_rows, ok.last_insert_id, ok.warnings
            ),
            _ => format!("{reply:?}"),
        });
    }
    seen
}

/// Statement ids, lazy prepares and the types a client bound last are carried for bulk
/// executes as for plain ones: on a pool of one, two clients' copies of a statement are one
/// copy on the database, bound with each client's types in turn, and what they leave is
/// what two direct sessions leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_executes_replay_each_clients_types_on_a_shared_connection() {
    let gw = start_with("bulk_types", |c| c.pool.max_db_connections = 1).await;
    let mut admin = direct().await;
    let table = "CREATE OR REPLACE TABLE bulk_types_t (id BIGINT PRIMARY KEY, a BIGINT, s TEXT)";
    let dump = "SELECT id, a, s FROM bulk_types_t ORDER BY id";
    admin.query_drop(table).await.unwrap();
    let target = direct_target();
    let connect = || BackendConn::connect(&target, Flavor::INTERNAL, Duration::from_secs(5));
    let (mut a, mut b) = (Raw(connect().await.unwrap()), Raw(connect().await.unwrap()));
    let want = alternating_types(&mut a, &mut b).await;
    let want_rows: Vec<(i64, Option<i64>, String)> = admin.query(dump).await.unwrap();
    admin.query_drop(table).await.unwrap();
    let (mut a, mut b) = (Raw(raw_client(&gw).await), Raw(raw_client(&gw).await));
    let got = alternating_types(&mut a, &mut b).await;
    let got_rows: Vec<(i64, Option<i64>, String)> = admin.query(dump).await.unwrap();
    assert_eq!(got, want, "replies through sluice as directly");
    assert_eq!(got_rows, want_rows, "rows through sluice as directly");
    assert_eq!(want_rows.len(), 9, "{want_rows:?}");
    assert!(want.iter().all(|r| r.starts_with("OK")), "{want:?}");
    assert_eq!(gw.gateway.pool.stats().max, 1);
    admin.disconnect().await.unwrap();
}

/// Malformed and refused bulk executes get the server's error, byte for byte, and the
/// session goes on: too short for its flags, flags the server does not know or the client
/// did not negotiate, types cut short, an unknown statement, a statement bulk cannot run,
/// "the statement prepared last" without types, rows cut short; and any bulk execute from a
/// client that did not negotiate bulk operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bulk_executes_get_the_servers_errors() {
    let gw = start("bulk_bad").await;
    let mut admin = direct().await;
    admin
        .query_drop("CREATE OR REPLACE TABLE bulk_bad_t (a BIGINT, s VARCHAR(10))")
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let insert = "INSERT INTO bulk_bad_t VALUES (?, ?)";
    let types = [LONGLONG, VAR_STRING];
    let row = [longlong(1), string("x")].concat();
    /// What to send: the statement to prepare, and the packet given its id.
    type Case = (&'static str, Box<dyn Fn(u32) -> Vec<u8>>);
    let short = |id| bulk(id, 0x80, &[], &[])[..6].to_vec();
    let (r1, r2) = (row.clone(), row.clone());
    let with_bulk: Vec<Case> = vec![
        (insert, Box::new(short)),
        (insert, Box::new(move |id| bulk(id, 0xc0, &types, &r1))),
        (insert, Box::new(move |id| bulk(id, 0x81, &types, &r2))),
        (insert, Box::new(|id| bulk(id, 0x80, &[LONGLONG], &[]))),
        (insert, Box::new(move |_| bulk(123_456, 0x80, &types, &[]))),
        (
            "SELECT ?",
            Box::new(|id| bulk(id, 0x80, &[LONGLONG], &longlong(1))),
        ),
        (insert, Box::new(move |_| bulk(u32::MAX, 0, &[], &row))),
        (
            insert,
            Box::new(move |id| bulk(id, 0x80, &types, &[0, 1, 2])),
        ),
    ];
    // Without bulk operations: a valid bulk execute, and one too short for its flags.
    let valid = [longlong(2), string("y")].concat();
    let without_bulk_cases: Vec<Case> = vec![
        (insert, Box::new(move |id| bulk(id, 0x80, &types, &valid))),
        (insert, Box::new(short)),
    ];
    let without_bulk = Flavor {
        mariadb: MariadbCapabilities::empty(),
        ..Flavor::INTERNAL
    };
    let target = direct_target();
    let timeout = Duration::from_secs(5);
    let mut sessions = [
        (
            Raw(BackendConn::connect(&target, Flavor::INTERNAL, timeout)
                .await
                .unwrap()),
            Raw(raw_client(&gw).await),
            with_bulk,
        ),
        (
            Raw(BackendConn::connect(&target, without_bulk, timeout)
                .await
                .unwrap()),
            Raw(raw_client_with(&gw, without_bulk).await),
            without_bulk_cases,
        ),
    ];
    let mut codes = Vec::new();
    for (direct, through, cases) in sessions.iter_mut() {
        for (sql, packet) in cases.iter() {
            let (id, _) = direct.prepare(sql).await;
            let want = direct.command(&packet(id)).await;
            let (id, _) = through.prepare(sql).await;
            let got = through.command(&packet(id)).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{sql}: {:?}",
                packet(id)
            );
            assert_eq!(got, want);
            assert_eq!(want[0], ERR_HEADER, "an error: {want:?}");
            codes.push(error_code(&want));
            direct.ping().await;
            through.ping().await;
        }
    }
    assert_eq!(
        codes,
        [1835, 1295, 1295, 1835, 1243, 1295, 1835, 1210, 1295, 1835],
        "the server's answers, as found on MariaDB 10.11"
    );
    let mut admin = direct().await;
    let left: Vec<(i64, String)> = admin.query("SELECT a, s FROM bulk_bad_t").await.unwrap();
    assert!(left.is_empty(), "nothing inserted: {left:?}");
    admin.disconnect().await.unwrap();
}
