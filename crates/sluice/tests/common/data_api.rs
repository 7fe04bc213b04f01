//! The Data API in tests: keys, configuration, clients, and raw HTTP for hostile clients.

use std::net::SocketAddr;

use serde_json::Value;
use sluice::config::{api_key_sha256, ApiKeyConfig, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TEST_DB;

/// The key of user `app` (may use only the test database).
pub const APP_KEY: &str = "app-key";
/// The key of user `empty` (any database).
pub const OTHER_KEY: &str = "other-key";

/// Turns the Data API on with both keys.
pub fn data_api(c: &mut Config) {
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.http.api_keys = vec![
        ApiKeyConfig {
            user: "app".into(),
            key_sha256: api_key_sha256(APP_KEY),
        },
        ApiKeyConfig {
            user: "empty".into(),
            key_sha256: api_key_sha256(OTHER_KEY),
        },
    ];
    c.users[0].databases = Some(vec![TEST_DB.into()]);
}

/// An HTTP client; reqwest is built without a default TLS provider, so name ring.
pub fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The raw text of `POST /v1/execute` as `app` running `sql` in the test database.
pub fn execute_request(sql: &str) -> String {
    let body = serde_json::json!({"sql": sql, "database": TEST_DB}).to_string();
    format!(
        "POST /v1/execute HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {APP_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `request` on a fresh connection and reads until the server closes it; returns
/// everything received (empty when the connection was refused or reset).
pub async fn exchange(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return out;
    };
    if socket.write_all(request.as_bytes()).await.is_ok() {
        let _ = socket.read_to_end(&mut out).await;
    }
    out
}

/// The status code and JSON body of a raw HTTP/1.1 response with a `Content-Length`.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}
