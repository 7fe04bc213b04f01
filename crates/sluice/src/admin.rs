//! The admin HTTP listener: `/healthz` for load balancers, `/metrics` for Prometheus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::Gateway;

/// The admin routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// Serves the admin routes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    if let Err(e) = axum::serve(listener, router(gateway)).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Liveness plus a summary: the process is serving, and how the pool looks. While draining
/// it answers 503, so load balancers send new clients elsewhere.
async fn healthz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let pool = gateway.pool.stats();
    let (code, status) = match gateway.shutdown.deadline() {
        None => (StatusCode::OK, "ok"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    (
        code,
        Json(json!({
            "status": status,
            "client_connections": gateway.metrics.client_connections.get(),
            "db_connections": pool,
        })),
    )
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    gateway.pool.export();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gateway.metrics.render(),
    )
}
