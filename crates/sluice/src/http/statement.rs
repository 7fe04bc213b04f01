//! Running one statement with bound parameters over the binary protocol, and writing its
//! results as JSON while they arrive, within the request's limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use mysql_common::io::ParseBuf;
use mysql_common::packets::{Column, ComStmtExecuteRequestBuilder};
use mysql_common::proto::{Binary, MyDeserialize, MySerialize};
use mysql_common::row::RowDeserializer;
use mysql_common::value::ServerSide;
use mysql_common::Value;
use serde_json::{Map, Value as Json};
use sluice_protocol::response::{self, ErrFields};
use sluice_protocol::{ProtocolError, StatusFlags};

use super::envelope::{ApiError, Status};
use super::output::Output;
use super::values;
use crate::backend::{BackendConn, BackendError, Keeping};
use crate::statements::StatementKey;
use crate::Gateway;

/// How results are shaped, from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Rows as objects keyed by column name instead of arrays.
    pub objects: bool,
    /// Full column metadata (table, schema, length, ...).
    pub metadata: bool,
}

/// What is left of a request's result allowance; shared by the statements of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes of values still allowed (`http.max_result_size`).
    pub bytes_left: usize,
    /// Rows allowed per result (`http.max_rows`).
    pub max_rows: usize,
    /// The configured result size, for the message.
    pub max_bytes: usize,
}

/// A request's results as they are written: its `data` (one statement), or the entries
/// of a batch's `results`, within the request's allowance.
pub struct Results<'o> {
    out: &'o mut Output,
    shape: Shape,
    budget: Budget,
    /// Statement outcomes written so far; a batch reports a failure's index from it.
    pub written: usize,
}

impl<'o> Results<'o> {
    /// Results written to `out`, shaped by `shape`, within `budget`.
    pub fn new(out: &'o mut Output, shape: Shape, budget: Budget) -> Results<'o> {
        Results {
            out,
            shape,
            budget,
            written: 0,
        }
    }
}

/// What a statement did to the connection (its results went to [`Results`]).
#[derive(Debug)]
pub struct Outcome {
    /// The server's status after the last result.
    pub status: StatusFlags,
    /// Some result reported warnings: the connection's diagnostics area holds them.
    pub raised_conditions: bool,
}

impl Outcome {
    /// Whether the connection is as clean as before: no open transaction and no session
    /// state changed (a `SET`, `USE`, user variable ...), so it may go back unreset.
    pub fn left_clean(&self) -> bool {
        !self.left_traces() && !self.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
    }

    /// Whether the statement left something of its session behind: a change the server
    /// reported (variables, schema, user variables...) or warnings.
    pub fn left_traces(&self) -> bool {
        self.raised_conditions
            || self
                .status
                .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
    }
}

/// Why a statement produced no outcome.
#[derive(Debug)]
pub enum RunError {
    /// The request or the statement was refused; the connection is fine.
    Refused(ApiError),
    /// The connection broke; it must be closed.
    Broken(BackendError),
}

impl From<BackendError> for RunError {
    fn from(e: BackendError) -> RunError {
        RunError::Broken(e)
    }
}

impl From<ProtocolError> for RunError {
    fn from(e: ProtocolError) -> RunError {
        RunError::Broken(e.into())
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        match e {
            RunError::Refused(err) => err,
            RunError::Broken(err) => ApiError::broken(&err),
        }
    }
}

fn malformed(what: &'static str) -> RunError {
    RunError::Broken(ProtocolError::Malformed(what).into())
}

fn server_error(payload: &[u8]) -> Result<RunError, RunError> {
    Ok(RunError::Refused(ApiError::database(&ErrFields::parse(
        payload,
    )?)))
}

/// Where a request's statements are kept prepared: on the connection itself, among the
/// statements it keeps for every client (MySQL-protocol clients share them), keyed by caller.
pub struct Statements<'a> {
    /// The sluice user the request authenticated as.
    pub user: &'a str,
    /// For the per-connection statement cap and the statement metrics.
    pub gateway: &'a Gateway,
}

/// Executes `sql` with each parameter set in turn, prepared once per connection and kept
/// there for later requests, writing each execute's `data` to `results`. Stops at the
/// first failure, returned with the index of its parameter set.
pub async fn run(
    conn: &mut BackendConn,
    statements: &Statements<'_>,
    sql: &str,
    param_sets: &[Vec<Value>],
    results: &mut Results<'_>,
) -> Result<Vec<Outcome>, (usize, RunError)> {
    let schema = conn.schema.clone().flatten();
    let key = Arc::new(StatementKey::new(
        statements.user,
        schema.as_deref(),
        conn.flavor.collation,
        &BTreeMap::new(),
        sql.as_bytes(),
    ));
    let gateway = statements.gateway;
    let keeping = gateway.keeping(&Keeping::spare_none);
    let (id, placeholders) = match conn.statement_id(&key, &keeping).await {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => return Err((0, RunError::Refused(ApiError::database(&err)))),
        Err(e) => return Err((0, RunError::Broken(e))),
    };
    let mut outcomes = Vec::with_capacity(param_sets.len());
    for (i, params) in param_sets.iter().enumerate() {
        let result = execute(conn, id, placeholders, params, results).await;
        // Every execute binds its own types; MySQL-protocol clients that bind none must
        // have theirs bound again on this connection.
        if let Some(statement) = conn.statements.get_mut(&key) {
            statement.types = None;
        }
        match result {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => return Err((i, e)),
        }
    }
    conn.touch();
    Ok(outcomes)
}

/// One execute of statement `id` (with `placeholders` parameters) on `conn`.
async fn execute(
    conn: &mut BackendConn,
    id: u32,
    placeholders: u16,
    params: &[Value],
    results: &mut Results<'_>,
) -> Result<Outcome, RunError> {
    let (execute, as_long_data) = ComStmtExecuteRequestBuilder::new(id).build(params);
    if usize::from(placeholders) != params.len() {
        return Err(RunError::Refused(ApiError::bad_request(format!(
            "the statement has {placeholders} placeholder(s) but {} parameter(s) were given",
            params.len()
        ))));
    }
    if as_long_data {
        return Err(RunError::Refused(ApiError::new(
            Status::PayloadTooLarge,
            "the parameters exceed 16 MiB in total, more than one execute packet holds",
        )));
    }
    send(conn, &[&execute]).await?;
    read_results(conn, results).await
}

/// Queues each command as its own packet (sequence id 0) and sends them together.
async fn send(
    conn: &mut BackendConn,
    commands: &[&(dyn MySerialize + Sync)],
) -> Result<(), RunError> {
    let mut payload = Vec::new();
    for command in commands {
        payload.clear();
        command.serialize(&mut payload);
        let mut seq = 0;
        conn.stream.queue_packet(&mut seq, &payload);
    }
    conn.stream.flush().await?;
    Ok(())
}

/// Reads every result of an executed statement and writes them as one `data` object: the
/// first result, later ones (of a `CALL`) under `more_results`. Rows past a limit are read
/// and dropped, so the connection (and any transaction on it) stays usable, and the request
/// fails with 507.
async fn read_results(
    conn: &mut BackendConn,
    results: &mut Results<'_>,
) -> Result<Outcome, RunError> {
    if results.written > 0 {
        results.out.write(b",").await;
    }
    let mut overflow: Option<String> = None;
    let mut index = 0;
    let mut raised_conditions = false;
    loop {
        let packet = conn.stream.read_packet().await?;
        if packet.payload.first() == Some(&response::ERR_HEADER) {
            return Err(server_error(&packet.payload)?);
        }
        // The first result's keys come first; each later one is a whole object in
        // `more_results`, which the first result's object closes around.
        results
            .out
            .write(match index {
                0 => b"{".as_slice(),
                1 => b",\"more_results\":[{",
                _ => b",{",
            })
            .await;
        let (status, warnings) = if packet.payload.first() == Some(&response::OK_HEADER) {
            let ok = response::parse_ok(&packet.payload)?;
            let fields = format!(
                "\"columns\":[],\"last_insert_id\":{},\"rows\":[],\"rows_affected\":{},\"warnings\":{}",
                ok.last_insert_id, ok.affected_rows, ok.warnings
            );
            results.out.write(fields.as_bytes()).await;
            (ok.status, ok.warnings)
        } else {
            read_row_set(conn, &packet.payload, results, &mut overflow).await?
        };
        raised_conditions |= warnings > 0;
        if index > 0 {
            results.out.write(b"}").await;
        }
        if !status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
            results
                .out
                .write(if index > 0 { b"]}".as_slice() } else { b"}" })
                .await;
            results.written += 1;
            return match overflow {
                Some(message) => Err(RunError::Refused(ApiError::new(
                    Status::ResultTooLarge,
                    message,
                ))),
                None => Ok(Outcome {
                    status,
                    raised_conditions,
                }),
            };
        }
        index += 1;
    }
}

/// Reads one row set and writes its keys (`columns` to `warnings`); returns the status and
/// warning count its end carried.
async fn read_row_set(
    conn: &mut BackendConn,
    count_packet: &[u8],
    results: &mut Results<'_>,
    overflow: &mut Option<String>,
) -> Result<(StatusFlags, u16), RunError> {
    let (count, _) = sluice_protocol::lenenc::read_int(count_packet)?;
    let mut columns = Vec::new();
    for _ in 0..count {
        let packet = conn.stream.read_packet().await?;
        columns.push(
            Column::deserialize((), &mut ParseBuf(&packet.payload))
                .map_err(|_| malformed("bad column definition"))?,
        );
    }
    if !conn.flavor.deprecate_eof() {
        conn.stream.read_packet().await?;
    }
    let columns: Arc<[Column]> = columns.into();
    let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
    let shape = results.shape;
    let described: Vec<Json> = columns
        .iter()
        .map(|c| values::describe(c, shape.metadata))
        .collect();
    let out = &mut *results.out;
    out.write(b"\"columns\":").await;
    out.json(&described).await;
    out.write(b",\"last_insert_id\":0,\"rows\":[").await;
    let budget = &mut results.budget;
    let mut rows = 0;
    loop {
        let packet = conn.stream.read_packet().await?;
        let payload = &packet.payload;
        if payload.first() == Some(&response::ERR_HEADER) {
            return Err(server_error(payload)?);
        }
        if response::is_eof(payload) {
            let (status, warnings) = response::parse_terminator(payload)
                .ok_or_else(|| malformed("bad end of result set"))?;
            let end = format!("],\"rows_affected\":0,\"warnings\":{warnings}");
            out.write(end.as_bytes()).await;
            return Ok((status, warnings));
        }
        if overflow.is_some() {
            continue;
        }
        if rows == budget.max_rows {
            *overflow = Some(format!(
                "the result has more than {} rows (http.max_rows); add a LIMIT or raise http.max_rows",
                budget.max_rows
            ));
            continue;
        }
        let row = RowDeserializer::<ServerSide, Binary>::deserialize(
            columns.clone(),
            &mut ParseBuf(payload),
        )
        .map_err(|_| malformed("bad binary row"))?
        .into_inner()
        .unwrap_raw()
        .into_iter()
        .map(|value| value.unwrap_or(Value::NULL))
        .collect::<Vec<_>>();
        let size: usize = row.iter().map(values::size_of).sum();
        if size > budget.bytes_left {
            *overflow = Some(format!(
                "the result exceeds {} bytes (http.max_result_size); select fewer rows or columns, or raise http.max_result_size",
                budget.max_bytes
            ));
            continue;
        }
        budget.bytes_left -= size;
        let cells = row
            .into_iter()
            .zip(columns.iter())
            .map(|(value, column)| values::to_json(value, column));
        let row = if shape.objects {
            Json::Object(names.iter().cloned().zip(cells).collect::<Map<_, _>>())
        } else {
            Json::Array(cells.collect())
        };
        if rows > 0 {
            out.write(b",").await;
        }
        out.json(&row).await;
        rows += 1;
    }
}
