//! The endpoints: execute, batch, and transactions (begin, commit, rollback).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use mysql_common::Value;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::auth::Caller;
use super::body::Body;
use super::connection::{After, Held};
use super::envelope::{success, ApiError};
use super::output::{self, Output};
use super::params;
use super::statement::{self, Outcome, Results, RunError, Shape, Statements};
use super::Api;
use crate::backend::BackendConn;

/// How rows are written.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowsAs {
    /// `[1, "a"]`: compact, in column order.
    #[default]
    Arrays,
    /// `{"id": 1, "name": "a"}`.
    Objects,
}

/// Options every statement-running endpoint shares.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Common {
    database: Option<String>,
    transaction_id: Option<String>,
    include_metadata: bool,
    rows_as: RowsAs,
}

impl Common {
    /// The connection these options ask for.
    async fn acquire(&self, api: &Api, caller: &Caller) -> Result<Held, ApiError> {
        api.acquire(
            caller,
            self.database.as_deref(),
            self.transaction_id.as_deref(),
        )
        .await
    }

    fn shape(&self) -> Shape {
        Shape {
            objects: matches!(self.rows_as, RowsAs::Objects),
            metadata: self.include_metadata,
        }
    }
}

/// `POST /v1/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    sql: String,
    #[serde(default)]
    params: Vec<Json>,
    #[serde(flatten)]
    common: Common,
}

/// Runs one statement; its result is streamed (see `output`).
pub async fn execute(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Body(req): Body<ExecuteRequest>,
) -> Response {
    output::respond("statement executed", move |out| {
        Box::pin(async move { run_execute(&api, &caller, &req, out).await })
    })
    .await
}

async fn run_execute(
    api: &Api,
    caller: &Caller,
    req: &ExecuteRequest,
    out: &mut Output,
) -> Result<(), ApiError> {
    let params = params::to_values(&req.params).map_err(ApiError::bad_request)?;
    let common = &req.common;
    let mut held = common.acquire(api, caller).await?;
    let mut results = Results::new(out, common.shape(), api.budget());
    let result = statement::run(
        held.conn(),
        &api.statements(caller),
        &req.sql,
        &[params],
        &mut results,
    )
    .await
    .map(|mut outcomes| outcomes.remove(0))
    .map_err(|(_, e)| e);
    held.finish(api, After::of(&result)).await;
    result.map(drop).map_err(ApiError::from)
}

/// One statement of a `statements` batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchStatement {
    sql: String,
    #[serde(default)]
    params: Vec<Json>,
}

/// `POST /v1/batch`: `sql` with `params_sets`, or a list of `statements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    sql: Option<String>,
    params_sets: Option<Vec<Vec<Json>>>,
    statements: Option<Vec<BatchStatement>>,
    #[serde(flatten)]
    common: Common,
}

/// Statements of a batch sharing one SQL text, prepared once: all of `params_sets`, or one
/// entry of `statements`.
struct Group<'a> {
    sql: &'a str,
    param_sets: Vec<Vec<Value>>,
}

impl BatchRequest {
    /// The batch in groups, parameters converted; bad input fails before anything runs,
    /// with the index of the statement it belongs to.
    fn groups(&self) -> Result<Vec<Group<'_>>, ApiError> {
        let convert = |i: usize, params: &[Json]| {
            params::to_values(params).map_err(|why| ApiError::bad_request(why).at_index(i))
        };
        let groups = match (&self.sql, &self.params_sets, &self.statements) {
            (Some(sql), Some(sets), None) => vec![Group {
                sql,
                param_sets: sets
                    .iter()
                    .enumerate()
                    .map(|(i, params)| convert(i, params))
                    .collect::<Result<_, _>>()?,
            }],
            (None, None, Some(statements)) => statements
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Ok(Group {
                        sql: &s.sql,
                        param_sets: vec![convert(i, &s.params)?],
                    })
                })
                .collect::<Result<_, ApiError>>()?,
            _ => {
                return Err(ApiError::bad_request(
                    "give either \"sql\" with \"params_sets\", or \"statements\"",
                ))
            }
        };
        if groups.iter().all(|g| g.param_sets.is_empty()) {
            return Err(ApiError::bad_request("the batch is empty"));
        }
        Ok(groups)
    }
}

/// Statements that make a batch atomic: its own transaction, or a savepoint inside the
/// caller's transaction.
struct Atomic {
    begin: &'static str,
    undo: &'static str,
    keep: &'static str,
}

const OWN_TRANSACTION: Atomic = Atomic {
    begin: "START TRANSACTION",
    undo: "ROLLBACK",
    keep: "COMMIT",
};

const SAVEPOINT: Atomic = Atomic {
    begin: "SAVEPOINT sluice_batch",
    undo: "ROLLBACK TO SAVEPOINT sluice_batch",
    keep: "RELEASE SAVEPOINT sluice_batch",
};

/// Runs a sluice-issued control statement (`START TRANSACTION`, `COMMIT`, ...).
async fn control(conn: &mut BackendConn, sql: &str) -> Result<(), RunError> {
    match conn.execute(sql).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(RunError::Refused(ApiError::database(&err))),
        Err(e) => Err(RunError::Broken(e)),
    }
}

/// Runs many statements atomically: all take effect, or (on the first error, reported with
/// its index) none do. Results are streamed (see `output`).
pub async fn batch(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Body(req): Body<BatchRequest>,
) -> Response {
    output::respond("batch committed", move |out| {
        Box::pin(async move { run_batch_request(&api, &caller, &req, out).await })
    })
    .await
}

async fn run_batch_request(
    api: &Api,
    caller: &Caller,
    req: &BatchRequest,
    out: &mut Output,
) -> Result<(), ApiError> {
    let groups = req.groups()?;
    let common = &req.common;
    let atomic = match common.transaction_id {
        Some(_) => SAVEPOINT,
        None => OWN_TRANSACTION,
    };
    let mut held = common.acquire(api, caller).await?;
    out.write(b"{\"results\":[").await;
    let mut results = Results::new(out, common.shape(), api.budget());
    let statements = api.statements(caller);
    let result = run_batch(held.conn(), &statements, &atomic, &groups, &mut results).await;
    let after = match &result {
        Ok(left_traces) if !left_traces => After::Clean,
        Err(RunError::Broken(_)) => After::Broken,
        _ => After::Dirty,
    };
    held.finish(api, after).await;
    result?;
    out.write(b"]}").await;
    Ok(())
}

/// The batch proper, writing each statement's `data` to `results`; returns whether any
/// statement left traces in the session (see [`Outcome::left_traces`]).
async fn run_batch(
    conn: &mut BackendConn,
    statements: &Statements<'_>,
    atomic: &Atomic,
    groups: &[Group<'_>],
    results: &mut Results<'_>,
) -> Result<bool, RunError> {
    control(conn, atomic.begin).await?;
    let mut left_traces = false;
    for group in groups {
        let before = results.written;
        let ran = statement::run(conn, statements, group.sql, &group.param_sets, results);
        match ran.await {
            Ok(outcomes) => {
                left_traces |= outcomes.iter().any(Outcome::left_traces);
            }
            Err((i, RunError::Refused(err))) => {
                control(conn, atomic.undo).await?;
                return Err(RunError::Refused(err.at_index(before + i)));
            }
            Err((_, broken)) => return Err(broken),
        }
    }
    control(conn, atomic.keep).await?;
    Ok(left_traces)
}

/// Isolation levels a transaction may ask for.
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum Isolation {
    /// `READ UNCOMMITTED`.
    #[serde(rename = "READ UNCOMMITTED", alias = "read_uncommitted")]
    ReadUncommitted,
    /// `READ COMMITTED`.
    #[serde(rename = "READ COMMITTED", alias = "read_committed")]
    ReadCommitted,
    /// `REPEATABLE READ` (InnoDB's default).
    #[serde(rename = "REPEATABLE READ", alias = "repeatable_read")]
    RepeatableRead,
    /// `SERIALIZABLE`.
    #[serde(rename = "SERIALIZABLE", alias = "serializable")]
    Serializable,
}

impl Isolation {
    fn sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
            Isolation::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// `POST /v1/transactions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BeginRequest {
    database: Option<String>,
    isolation_level: Option<Isolation>,
    read_only: bool,
}

/// Opens a transaction and returns its id; the connection stays with it until commit,
/// rollback, or expiry.
pub async fn begin(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Body(req): Body<BeginRequest>,
) -> Result<Response, ApiError> {
    let mut lease = api.borrow(&caller, req.database.as_deref()).await?;
    let start = if req.read_only {
        "START TRANSACTION READ ONLY"
    } else {
        "START TRANSACTION READ WRITE"
    };
    let mut started = Ok(());
    for sql in req
        .isolation_level
        .map(Isolation::sql)
        .into_iter()
        .chain([start])
    {
        started = control(lease.conn(), sql).await;
        if started.is_err() {
            break;
        }
    }
    match started {
        Ok(()) => {}
        Err(RunError::Refused(err)) => {
            api.gateway.pool.give_back(lease).await;
            return Err(err);
        }
        Err(broken) => return Err(broken.into()),
    }
    let database = req
        .database
        .or_else(|| api.gateway.pool.target().database.clone());
    let id = api.transactions.open(&caller.name, database, lease);
    let http = &api.gateway.settings().http;
    Ok(success(
        "transaction started",
        json!({
            "transaction_id": id,
            "idle_timeout_ms": http.transaction_idle_timeout.as_millis() as u64,
            "max_lifetime_ms": http.transaction_max_lifetime.as_millis() as u64,
        }),
    ))
}

/// `POST /v1/transactions/{id}/commit`.
pub async fn commit(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    end(&api, &caller, &id, "COMMIT").await?;
    Ok(success(
        "transaction committed",
        json!({"transaction_id": id}),
    ))
}

/// `POST /v1/transactions/{id}/rollback`.
pub async fn rollback(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    end(&api, &caller, &id, "ROLLBACK").await?;
    Ok(success(
        "transaction rolled back",
        json!({"transaction_id": id}),
    ))
}

/// Ends a transaction with `sql`; its connection is reset and returned either way.
async fn end(api: &Api, caller: &Caller, id: &str, sql: &str) -> Result<(), ApiError> {
    let mut held = api.acquire(caller, None, Some(id)).await?;
    api.transactions.remove(id);
    let result = control(held.conn(), sql).await;
    let lease = held.into_lease();
    match result {
        Ok(()) | Err(RunError::Refused(_)) => api.gateway.pool.give_back(lease).await,
        Err(RunError::Broken(_)) => drop(lease),
    }
    result.map_err(ApiError::from)
}
