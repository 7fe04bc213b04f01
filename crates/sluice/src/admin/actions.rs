//! What an operator can do on the admin listener, behind its own bearer token
//! (`admin_token_sha256`): `POST /pause` and `POST /resume` of new borrows, for a
//! maintenance window (a database failover, a schema change that must not race clients),
//! and `POST /reload` of the configuration (see [`crate::reload`]).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Admin;

/// `POST /pause`: new borrows wait (up to `borrow_timeout`) until `POST /resume`.
pub async fn pause(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    set_paused(&admin, &headers, true)
}

/// `POST /resume`: borrows proceed again, waiting ones first.
pub async fn resume(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    set_paused(&admin, &headers, false)
}

/// `POST /reload`: reads the configuration again and applies it. 200 with the report
/// (`needs_restart` lists settings that keep their running value), or 422 with every
/// problem when the new configuration is invalid and the running one stays.
pub async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&admin, &headers) {
        return refusal(why);
    }
    let report = crate::reload::reload(&admin.gateway).await;
    let code = if report.problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (code, Json(report)).into_response()
}

fn set_paused(admin: &Admin, headers: &HeaderMap, paused: bool) -> Response {
    if let Err(why) = authorize(admin, headers) {
        return refusal(why);
    }
    let was = admin.gateway.pool.set_paused(paused);
    tracing::warn!(
        paused,
        was_paused = was,
        "new borrows {}",
        if paused { "paused" } else { "resumed" }
    );
    Json(json!({"paused": paused, "was_paused": was})).into_response()
}

/// The answer to a request `authorize` refused.
fn refusal((code, message): (StatusCode, &str)) -> Response {
    (code, Json(json!({"error": message}))).into_response()
}

/// Checks the request's bearer token against `admin_token_sha256` (the one in force: a
/// reload may change it): 403 when no token is configured (actions are off), 401 when the
/// token is missing or wrong.
fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(expected) = admin.gateway.settings().admin_token else {
        return Err((
            StatusCode::FORBIDDEN,
            "admin actions are off: set admin_token_sha256 in the configuration",
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match token {
        Some(token) if Sha256::digest(token.as_bytes()).as_slice() == expected => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required (Authorization: Bearer ...)",
        )),
    }
}
