//! The Data API: SQL over HTTP/JSON, for clients that should hold no database socket.
//!
//! A second door into the same gateway: requests borrow from the same pool, under the same
//! budget, as MySQL-protocol clients. Each request is stateless (it borrows a connection for
//! one statement or one batch) except for transactions, which hold a connection by id
//! between requests until they end or expire.
//!
//! - `auth`: bearer API keys; `body`: the JSON body extractor with its size limit;
//! - `envelope`: the `{status, message, data}` response and error statuses;
//! - `params` and `values`: JSON to binary-protocol values and back, without loss;
//! - `statement`: one statement over the binary protocol, results within limits;
//! - `connection`: which connection a request uses and how it goes back;
//! - `transactions`: the open transactions and their reaper;
//! - `handlers`: the endpoints; `openapi`: their description; `tls`: optional HTTPS.

mod auth;
mod body;
mod connection;
mod envelope;
mod handlers;
mod openapi;
mod params;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::Gateway;
use auth::Caller;
use envelope::{ApiError, Status};
use statement::{Budget, Statements};
use transactions::Transactions;

/// Shared state of the Data API.
pub struct Api {
    gateway: Arc<Gateway>,
    transactions: Arc<Transactions>,
    vars_mariadb: BTreeMap<String, String>,
    vars_mysql: BTreeMap<String, String>,
}

impl Api {
    /// The Data API over `gateway`; starts the transaction reaper.
    pub fn new(gateway: Arc<Gateway>) -> Arc<Api> {
        let http = &gateway.settings.http;
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
            gateway,
        })
    }

    /// A fresh result allowance for one request.
    fn budget(&self) -> Budget {
        let http = &self.gateway.settings.http;
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

/// Serves the Data API on `listener` (HTTPS when `tls` is set) until the task is aborted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, tls: Option<TlsAcceptor>) {
    let app = router(Api::new(gateway));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "Data API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(socket, app).await,
                Some(acceptor) => match tls::handshake(&acceptor, socket).await {
                    Ok(stream) => serve_connection(stream, app).await,
                    Err(e) => debug!(%peer, error = %e, "Data API TLS handshake failed"),
                },
            }
        });
    }
}

/// HTTP/1.1 with keep-alive on one accepted connection.
async fn serve_connection<I>(io: I, app: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "Data API connection ended with an error");
    }
}
