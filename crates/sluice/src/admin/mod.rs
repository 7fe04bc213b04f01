//! The admin HTTP listener: `/healthz` for load balancers, `/metrics` for Prometheus,
//! `/status` (a JSON snapshot, see [`status`]) and the live dashboard at `/` that draws it
//! (see [`dashboard`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::Gateway;

pub mod actions;
pub mod console;
pub mod dashboard;
pub mod status;

/// What the admin handlers share.
#[derive(Clone)]
pub struct Admin {
    gateway: Arc<Gateway>,
}

/// The admin routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let admin = Admin { gateway };
    Router::new()
        .route("/", get(dashboard::page))
        .route("/status", get(status_json))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/pause", post(actions::pause))
        .route("/resume", post(actions::resume))
        .route("/reload", post(actions::reload))
        .with_state(admin)
}

/// Serves the admin routes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    if let Err(e) = axum::serve(listener, router(gateway)).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Liveness plus a summary: the process is serving, and how the pool looks. While draining
/// it answers 503, so load balancers send new clients elsewhere.
async fn healthz(State(admin): State<Admin>) -> impl IntoResponse {
    let gateway = &admin.gateway;
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

async fn status_json(State(admin): State<Admin>) -> impl IntoResponse {
    let max_connections = admin.gateway.server_limit.get();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(status::snapshot(&admin.gateway, max_connections)),
    )
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let gateway = &admin.gateway;
    status::export(gateway);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gateway.metrics.render(),
    )
}
