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

/// Sends `request` on a fresh connection and reads its response; `None` when the
/// connection is refused, reset or closed first.
pub async fn exchange(addr: SocketAddr, request: &str) -> Option<(u16, Value)> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    socket.write_all(request.as_bytes()).await.ok()?;
    read_response(&mut socket).await
}

/// The status code and JSON body of a raw HTTP/1.1 response with a `Content-Length`.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// Reads one response with a `Content-Length` from a connection that stays open; `None`
/// when the connection ends first.
pub async fn read_response(socket: &mut TcpStream) -> Option<(u16, Value)> {
    let mut raw = Vec::new();
    let mut byte = [0; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0; length];
    socket.read_exact(&mut body).await.ok()?;
    raw.extend_from_slice(&body);
    parse_response(&raw)
}
