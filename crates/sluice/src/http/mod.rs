//! The Data API: SQL over HTTP/JSON, for clients that should hold no database socket.
//!
//! A second door into the same gateway: requests borrow from the same pool, under the same
//! budget, as MySQL-protocol clients. Each request is stateless (it borrows a connection for
//! one statement or one batch) except for transactions, which hold a connection by id
//! between requests until they end or expire.
//!
//! - `admission`: the connection and request caps, and the count of what they refuse;
//! - `clock` (with `socket`): the header and keep-alive timeouts of a connection;
//! - `auth`: bearer API keys; `body`: the JSON body extractor with its size and time limits;
//! - `envelope`: the `{status, message, data}` response and error statuses;
//! - `output`: responses streamed while they are produced, bounded in memory;
//! - `params` and `values`: JSON to binary-protocol values and back, without loss;
//! - `statement`: one statement over the binary protocol, results within limits;
//! - `connection`: which connection a request uses and how it goes back;
//! - `transactions`: the open transactions and their reaper;
//! - `handlers`: the endpoints; `openapi`: their description; `tls`: optional HTTPS.

mod admission;
mod auth;
mod body;
mod clock;
mod connection;
mod envelope;
mod handlers;
mod openapi;
mod output;
mod params;
mod socket;
mod statement;
pub mod tls;
mod transactions;
mod values;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use sluice_protocol::stall::Stall;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::tls::ServerTls;
use tracing::debug;

use crate::Gateway;
use admission::Rejection;
use auth::Caller;
use clock::HeadClock;
use envelope::{ApiError, Status};
use socket::{Arrivals, Counted};
use statement::{Budget, Statements};
use transactions::Transactions;

/// Shared state of the Data API.
pub struct Api {
    gateway: Arc<Gateway>,
    transactions: Arc<Transactions>,
    /// One permit per request in progress (`http.max_concurrent_requests`).
    requests: Arc<Semaphore>,
    vars_mariadb: BTreeMap<String, String>,
    vars_mysql: BTreeMap<String, String>,
}

impl Api {
    /// The Data API over `gateway`; starts the transaction reaper.
    pub fn new(gateway: Arc<Gateway>) -> Arc<Api> {
        let http = &gateway.settings().http;
        let transactions = Arc::new(Transactions::new(
            http.transaction_idle_timeout,
            http.transaction_max_lifetime,
            gateway.metrics.http_open_transactions.clone(),
        ));
        transactions.spawn_reaper(gateway.pool.clone());
        let timeout = http.statement_timeout;
        Arc::new(Api {
            vars_mariadb: BTreeMap::from([(
                "max_statement_time".to_owned(),
                format!("{:.3}", timeout.as_secs_f64()),
            )]),
            vars_mysql: BTreeMap::from([(
                "max_execution_time".to_owned(),
                timeout.as_millis().to_string(),
            )]),
            transactions,
            requests: Arc::new(Semaphore::new(http.max_concurrent_requests)),
            gateway,
        })
    }

    /// Requests being served and transactions open: what a shutdown drain waits for.
    pub fn in_flight(&self) -> usize {
        let max = self.gateway.settings().http.max_concurrent_requests;
        max - self.requests.available_permits() + self.transactions.count()
    }

    /// Rolls back the transactions still open when a drain ends.
    pub async fn shut_down(&self) {
        self.transactions.roll_back_all(&self.gateway.pool).await;
    }

    /// A fresh result allowance for one request.
    fn budget(&self) -> Budget {
        let http = &self.gateway.settings().http;
        Budget {
            bytes_left: http.max_result_size,
            max_bytes: http.max_result_size,
            max_rows: http.max_rows,
        }
    }

    /// Where `caller`'s statements are kept prepared.
    fn statements<'a>(&'a self, caller: &'a Caller) -> Statements<'a> {
        Statements {
            user: &caller.name,
            gateway: &self.gateway,
        }
    }
}

/// The Data API routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/execute", post(handlers::execute))
        .route("/v1/batch", post(handlers::batch))
        .route("/v1/transactions", post(handlers::begin))
        .route("/v1/transactions/{id}/commit", post(handlers::commit))
        .route("/v1/transactions/{id}/rollback", post(handlers::rollback))
        .route("/v1/openapi.json", get(openapi::document))
        .route_layer(middleware::from_fn_with_state(
            api.clone(),
            admission::limit_requests,
        ))
        .route_layer(middleware::from_fn_with_state(api.clone(), observe))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(api)
}

async fn not_found() -> ApiError {
    ApiError::new(
        Status::NotFound,
        "no such endpoint; see GET /v1/openapi.json",
    )
}

/// Counts each request by endpoint and status, and times it.
async fn observe(
    State(api): State<Arc<Api>>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await.into_response();
    let metrics = &api.gateway.metrics;
    let endpoint = path.as_str();
    metrics
        .http_requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    metrics
        .http_latency
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Largest read or write buffer hyper keeps per connection; a request head must fit in it.
/// hyper's default (about 400 KiB) would let each streaming response park that much.
const MAX_BUF: usize = 64 * 1024;

/// Serves the Data API on `listener` (HTTPS when `tls` is set), holding at most
/// `http.max_connections` connections, until `stop` fires (or its sender is dropped): then
/// the connections already in the accept queue are taken and served too, the listener is
/// closed, and it returns how many it took. Connections it serves carry on meanwhile.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<ServerTls>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> usize {
    let gateway = api.gateway.clone();
    let settings = &gateway.settings().http;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let answer = admission::full_answer(settings.max_connections);
    let refused = Rejection::MaxConnections.counter(&gateway.metrics);
    let app = router(api);
    let spawn = |socket: TcpStream, peer: std::net::SocketAddr| {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            admission::turn_away(socket, tls.is_none().then_some(answer.as_slice()));
            return;
        };
        // TCP_NODELAY and keepalive come from the listener (`server::listen`).
        let app = app.clone();
        // The certificate as it is now on disk (see `ServerTls`).
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let gateway = gateway.clone();
        tokio::spawn(async move {
            serve_socket(socket, &gateway, app, tls).await;
            debug!(%peer, "Data API connection closed");
            drop(slot);
        });
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return crate::server::close_listener(listener, spawn),
        };
        match accepted {
            Ok((socket, peer)) => spawn(socket, peer),
            Err(e) => {
                tracing::warn!(error = %e, "Data API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted socket with its timeouts: headers and keep-alive (`clock`), writes that
/// stall past `http.write_timeout` (sluice-protocol's `Stall`: the connection ends, and
/// with it the request and the database connection it holds), TLS when configured.
async fn serve_socket(socket: TcpStream, gateway: &Gateway, app: Router, tls: Option<TlsAcceptor>) {
    let http = &gateway.settings().http;
    let metrics = &gateway.metrics;
    let arrivals = Arrivals::default();
    let clock = HeadClock::new(
        arrivals.clone(),
        http.header_read_timeout,
        http.keepalive_timeout,
        Rejection::HeaderReadTimeout.counter(metrics),
        Rejection::KeepaliveTimeout.counter(metrics),
    );
    let socket = Stall::new(
        Counted::new(socket, arrivals),
        None,
        Some(http.write_timeout),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(clock)
        .header_read_timeout(http.header_read_timeout)
        .max_buf_size(MAX_BUF);
    let served = match tls {
        None => serve_connection(&builder, socket, app).await,
        Some(acceptor) => match tls::handshake(&acceptor, socket, http.header_read_timeout).await {
            Ok(stream) => serve_connection(&builder, stream, app).await,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    Rejection::HeaderReadTimeout.counter(metrics).inc();
                }
                metrics
                    .tls_handshake_failures
                    .with_label_values(&["http", crate::tls::failure_reason(&e)])
                    .inc();
                debug!(error = %e, "Data API TLS handshake failed");
                return;
            }
        },
    };
    if let Err(e) = served {
        if write_stalled(&e) {
            Rejection::WriteTimeout.counter(metrics).inc();
        }
        debug!(error = %e, "Data API connection ended with an error");
    }
}

/// HTTP/1.1 with keep-alive on one connection.
async fn serve_connection<I>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    app: Router,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    builder.serve_connection(TokioIo::new(io), service).await
}

/// Whether hyper gave up on a connection because a write timed out (the socket's only
/// time limit that surfaces as an I/O error; hyper's own header timeout is not one).
fn write_stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}
