//! The one response shape every Data API endpoint uses: `{"status", "message", "data"}`.
//!
//! Clients branch on `status` (a stable word) or on the HTTP code that goes with it; the
//! `message` is for people and says what to do. Database errors keep the server's own code,
//! SQLSTATE and message in `data`, so existing error handling by MySQL code still works.

use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_protocol::response::ErrFields;

use crate::backend::BackendError;
use crate::pool::BorrowError;

/// The envelope's `status` word, each tied to one HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: the request did what it asked.
    Success,
    /// 400: malformed JSON, a bad parameter, a wrong parameter count.
    BadRequest,
    /// 401: no API key, or an unknown one.
    NotAuthenticated,
    /// 403: the key's user may not use that database (or the server refused access).
    Unauthorized,
    /// 404: no such endpoint, or no such transaction for this user.
    NotFound,
    /// 408: the request body did not arrive within `http.body_read_timeout`.
    RequestTimeout,
    /// 409: a deadlock, lock wait timeout or duplicate key: retrying may succeed.
    Conflict,
    /// 410: the transaction existed but was rolled back for idling or age.
    Expired,
    /// 413: the request body exceeds `http.max_body_size`.
    PayloadTooLarge,
    /// 422: the database refused the statement (syntax, unknown table, constraint...).
    SqlError,
    /// 503: no database connection within `pool.borrow_timeout`, the database is down, or
    /// the Data API is at `http.max_connections` or `http.max_concurrent_requests`.
    Unavailable,
    /// 502: the database connection broke during the request.
    BadGateway,
    /// 504: the statement ran past `http.statement_timeout` and the server stopped it.
    Timeout,
    /// 507: the result exceeds `http.max_rows` or `http.max_result_size`.
    ResultTooLarge,
}

impl Status {
    /// The HTTP status code.
    pub fn code(self) -> StatusCode {
        match self {
            Status::Success => StatusCode::OK,
            Status::BadRequest => StatusCode::BAD_REQUEST,
            Status::NotAuthenticated => StatusCode::UNAUTHORIZED,
            Status::Unauthorized => StatusCode::FORBIDDEN,
            Status::NotFound => StatusCode::NOT_FOUND,
            Status::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Status::Conflict => StatusCode::CONFLICT,
            Status::Expired => StatusCode::GONE,
            Status::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Status::SqlError => StatusCode::UNPROCESSABLE_ENTITY,
            Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Status::BadGateway => StatusCode::BAD_GATEWAY,
            Status::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Status::ResultTooLarge => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// The word in the envelope.
    pub fn word(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::BadRequest => "badRequest",
            Status::NotAuthenticated => "notAuthenticated",
            Status::Unauthorized => "unauthorized",
            Status::NotFound => "notFound",
            Status::RequestTimeout => "requestTimeout",
            Status::Conflict => "conflict",
            Status::Expired => "expired",
            Status::PayloadTooLarge => "payloadTooLarge",
            Status::SqlError => "sqlError",
            Status::Unavailable => "unavailable",
            Status::BadGateway => "badGateway",
            Status::Timeout => "timeout",
            Status::ResultTooLarge => "resultTooLarge",
        }
    }
}

/// A successful reply carrying `data`.
pub fn success(message: &str, data: Value) -> Response {
    envelope(Status::Success, message, data)
}

fn envelope(status: Status, message: &str, data: Value) -> Response {
    (status.code(), Json(document(status, message, data))).into_response()
}

/// The envelope as JSON.
pub fn document(status: Status, message: &str, data: Value) -> Value {
    json!({"status": status.word(), "message": message, "data": data})
}

/// A failed request: what to tell the client, and any details for `data`.
#[derive(Debug)]
pub struct ApiError {
    /// The envelope status (and so the HTTP code).
    pub status: Status,
    /// What went wrong and what to do.
    pub message: String,
    /// Details: the MySQL code and SQLSTATE, a batch index, ...
    pub data: Value,
}

impl ApiError {
    /// An error without details.
    pub fn new(status: Status, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            data: Value::Null,
        }
    }

    /// A `badRequest` error.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::BadRequest, message)
    }

    /// The database's ERR packet, with a status that fits its code.
    pub fn database(err: &ErrFields) -> ApiError {
        let status = match err.code {
            // Deadlock, lock wait timeout, duplicate key: conflicts a retry may resolve.
            1205 | 1213 | 1062 => Status::Conflict,
            // Access denied to a database, table or column.
            1044 | 1045 | 1142 | 1143 | 1227 => Status::Unauthorized,
            // max_statement_time (MariaDB) / max_execution_time (MySQL) exceeded.
            1969 | 3024 => Status::Timeout,
            _ => Status::SqlError,
        };
        let mut message = err.message.clone();
        if status == Status::Timeout {
            message.push_str(" (raise http.statement_timeout if this statement needs longer)");
        }
        ApiError {
            status,
            message,
            data: json!({
                "code": err.code,
                "sqlstate": String::from_utf8_lossy(&err.sql_state),
            }),
        }
    }

    /// The database connection failed mid-request.
    /// The cause is logged, not sent: it is sluice's business, not the caller's.
    pub fn broken(err: &BackendError) -> ApiError {
        tracing::warn!(error = %err, "Data API: database connection failed during a request");
        let what = if err.is_stall() {
            "the database stopped answering during the request"
        } else {
            "the database connection failed during the request"
        };
        ApiError::new(Status::BadGateway, what)
    }

    /// Adds `"index": i` to the details (which statement of a batch failed).
    pub fn at_index(mut self, index: usize) -> ApiError {
        match &mut self.data {
            Value::Object(map) => {
                map.insert("index".into(), index.into());
            }
            other => *other = json!({ "index": index }),
        }
        self.message = format!("statement {index}: {}", self.message);
        self
    }
}

impl From<BorrowError> for ApiError {
    /// No connection: the pool stayed busy or the database cannot be reached. Either way
    /// the request did nothing and may be retried later.
    fn from(err: BorrowError) -> ApiError {
        match err {
            BorrowError::Exhausted { .. }
            | BorrowError::UserCeiling { .. }
            | BorrowError::AppCeiling { .. }
            | BorrowError::Paused { .. } => ApiError::new(Status::Unavailable, err.to_string()),
            // Where the database is and why it cannot be reached go to the log only.
            BorrowError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "Data API: no database connection");
                ApiError::new(
                    Status::Unavailable,
                    "sluice cannot reach the database right now; try again later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let closes = self.status == Status::RequestTimeout;
        let mut response = envelope(self.status, &self.message, self.data);
        if closes {
            // The rest of the body may still be on its way: the connection cannot carry
            // another request.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_map_to_fitting_statuses() {
        let err = |code| ErrFields::new(code, "HY000", "m");
        assert_eq!(ApiError::database(&err(1213)).status, Status::Conflict);
        assert_eq!(ApiError::database(&err(1969)).status, Status::Timeout);
        assert_eq!(ApiError::database(&err(1146)).status, Status::SqlError);
        let indexed = ApiError::database(&err(1146)).at_index(2);
        assert_eq!(indexed.data["index"], 2);
        assert_eq!(indexed.data["code"], 1146);
    }
}
