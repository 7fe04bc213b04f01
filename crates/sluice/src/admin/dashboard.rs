//! `GET /`: the live dashboard, one self-contained page (inline CSS and JavaScript, no
//! external assets, compiled into the binary) that polls `/status` and draws the last few
//! minutes by hand on `<canvas>`, so an operator can watch a burst being absorbed with
//! nothing but a browser pointed at the admin listener.

use axum::http::header;
use axum::response::IntoResponse;

/// The page itself.
const PAGE: &str = include_str!("dashboard.html");

/// Serves the dashboard page.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
