//! The JSON body extractor: enforces `http.max_body_size` and `http.body_read_timeout`, and
//! answers malformed JSON with the envelope (axum's own rejections are plain text).

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use http_body_util::LengthLimitError;
use serde::de::DeserializeOwned;

use super::admission::Rejection;
use super::envelope::{ApiError, Status};
use super::Api;

/// A request body parsed as `T`; an empty body counts as `{}`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Api>> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, api: &Arc<Api>) -> Result<Body<T>, ApiError> {
        let http = &api.gateway.settings().http;
        let limit = http.max_body_size;
        let timeout = http.body_read_timeout;
        let read = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit));
        let bytes = read
            .await
            .map_err(|_| {
                Rejection::BodyReadTimeout
                    .counter(&api.gateway.metrics)
                    .inc();
                ApiError::new(
                    Status::RequestTimeout,
                    format!(
                        "the request body did not arrive within http.body_read_timeout ({timeout:?})"
                    ),
                )
            })?
            .map_err(|e| {
                let inner = e.into_inner();
                if inner.downcast_ref::<LengthLimitError>().is_some() {
                    ApiError::new(
                        Status::PayloadTooLarge,
                        format!(
                            "the request body exceeds http.max_body_size ({limit} bytes); send less or raise the limit"
                        ),
                    )
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {inner}"))
                }
            })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}
