//! What the Data API lets in: at most `http.max_connections` connections and
//! `http.max_concurrent_requests` requests at once; and the count of what it turns away.
//!
//! Both caps refuse at once rather than queue: a queue of sockets would hold the very file
//! descriptors the cap is there to save (the MySQL listener, `/metrics` and the pool need
//! theirs), and a queue of requests would hold their bodies in memory.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::envelope::{document, ApiError, Status};
use super::Api;
use crate::metrics::Metrics;

/// Why a connection or request was cut off: the `reason` of `sluice_http_rejections_total`.
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    /// A socket over `http.max_connections`.
    MaxConnections,
    /// A request over `http.max_concurrent_requests`.
    MaxConcurrentRequests,
    /// Headers (or the TLS handshake) not done within `http.header_read_timeout`.
    HeaderReadTimeout,
    /// A body not received within `http.body_read_timeout`.
    BodyReadTimeout,
    /// A keep-alive connection idle for `http.keepalive_timeout`.
    KeepaliveTimeout,
    /// A client that accepted nothing of its response for `http.write_timeout`.
    WriteTimeout,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::MaxConcurrentRequests => "max_concurrent_requests",
            Rejection::HeaderReadTimeout => "header_read_timeout",
            Rejection::BodyReadTimeout => "body_read_timeout",
            Rejection::KeepaliveTimeout => "keepalive_timeout",
            Rejection::WriteTimeout => "write_timeout",
        }
    }

    /// The counter of this reason.
    pub fn counter(self, metrics: &Metrics) -> IntCounter {
        metrics.http_rejections.with_label_values(&[self.label()])
    }
}

/// Seconds a refused client is asked to wait before trying again.
const RETRY_AFTER_SECS: &str = "1";

/// The raw HTTP/1.1 answer for a socket over the connection cap: a 503 with the envelope.
pub fn full_answer(max_connections: usize) -> Vec<u8> {
    let body = document(
        Status::Unavailable,
        &format!(
            "the Data API holds http.max_connections ({max_connections}) connections; retry shortly"
        ),
        serde_json::Value::Null,
    )
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Closes a socket over the connection cap at once, after `answer` when there is one (a
/// TLS listener has none: it cannot speak before the handshake). Nothing waits: what the
/// client already sent is read and what the socket takes at once is written.
pub fn turn_away(socket: TcpStream, answer: Option<&[u8]>) {
    let Some(answer) = answer else {
        return;
    };
    // Plain non-blocking calls on the descriptor, so nothing depends on the reactor having
    // seen this socket yet.
    let Ok(mut socket) = socket.into_std() else {
        return;
    };
    // Unread input would make the close a reset, which can destroy the answer before the
    // client reads it.
    let mut scratch = [0; 4096];
    for _ in 0..16 {
        if !matches!(socket.read(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = socket.write(answer);
}

/// Runs a request only within `http.max_concurrent_requests`; beyond it answers 503 with
/// `Retry-After`. A request keeps its place until its response is sent to the last byte.
pub async fn limit_requests(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let Ok(place) = api.requests.clone().try_acquire_owned() else {
        Rejection::MaxConcurrentRequests
            .counter(&api.gateway.metrics)
            .inc();
        let limit = api.gateway.settings().http.max_concurrent_requests;
        let refusal = ApiError::new(
            Status::Unavailable,
            format!(
                "the Data API is running http.max_concurrent_requests ({limit}) requests; retry shortly"
            ),
        );
        return ([(RETRY_AFTER, RETRY_AFTER_SECS)], refusal).into_response();
    };
    next.run(request).await.map(|body| {
        Body::new(Holding {
            body,
            _place: place,
        })
    })
}

/// A response body that keeps its request's place until it is dropped.
struct Holding {
    body: Body,
    _place: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
