//! TLS toward clients on the MySQL port, and `caching_sha2_password`, with mysql_async
//! (rustls) as the client: certificates made by `openssl` per test (see `common::certs`).

mod common;

use common::certs::{self, sha2_paths, with_tls};
use common::*;
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, SslOpts};
use sluice::config::{AuthPlugin, UserConfig};
use sluice::tls::TlsMode;

/// Options trusting `ca`, through the gateway.
fn tls_opts(
    gw: &TestGateway,
    user: &str,
    password: &str,
    ca: &std::path::Path,
) -> mysql_async::OptsBuilder {
    gw.opts(user, password, Some(TEST_DB))
        .ssl_opts(SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]))
}

fn logins(metrics: &str, transport: &str) -> f64 {
    metric_value(
        metrics,
        &format!("sluice_client_logins_total{{transport=\"{transport}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_prepares_big_packets_and_change_user_over_tls() {
    let certs = certs::make();
    let gw = start_with("tls_basic", |c| with_tls(c, &certs, TlsMode::Require)).await;
    let mut conn = mysql_async::Conn::new(tls_opts(&gw, "app", "secret", &certs.ca))
        .await
        .expect("TLS login through sluice");
    let sum: Option<i64> = conn.query_first("SELECT 20 + 22").await.unwrap();
    assert_eq!(sum, Some(42));
    let echoed: Option<(i64, String)> = conn
        .exec_first("SELECT ? * 2, CONCAT(?, '!')", (21, "tls"))
        .await
        .unwrap();
    assert_eq!(echoed, Some((42, "tls!".to_owned())));

    // A parameter and a result over 16 MiB: several protocol frames inside TLS records.
    let big: Vec<u8> = (0..(17 << 20)).map(|i| (i % 251) as u8).collect();
    let back: Option<Vec<u8>> = conn.exec_first("SELECT ?", (big.clone(),)).await.unwrap();
    assert!(back.as_ref() == Some(&big), "17 MiB round trip over TLS");
    let text_len: Option<u64> = conn
        .query_first("SELECT LENGTH(REPEAT('x', 17 * 1024 * 1024))")
        .await
        .unwrap();
    assert_eq!(text_len, Some(17 << 20));

    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some("empty".into()))
            .with_pass(Some(String::new())),
    )
    .await
    .expect("COM_CHANGE_USER over TLS");
    let again: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(again, Some(1));
    conn.disconnect().await.unwrap();

    let metrics = gw.metrics().await;
    assert!(logins(&metrics, "tls") >= 1.0, "{metrics}");
    assert_eq!(logins(&metrics, "plain"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_plaintext_and_a_distrusting_client_fails_cleanly() {
    let certs = certs::make();
    let gw = start_with("tls_require", |c| {
        with_tls(c, &certs, TlsMode::Allow);
        c.users.push(UserConfig {
            name: "secure".into(),
            password: Some("pw".into()),
            backend: Some(sluice::config::SharedBackend::Shared),
            tls_mode: Some(TlsMode::Require),
            ..Default::default()
        });
    })
    .await;
    // Global "allow": app may log in either way.
    let mut plain = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .expect("plaintext allowed for app");
    plain.ping().await.unwrap();
    plain.disconnect().await.unwrap();

    // The user's own "require": refused in clear, with a message naming the setting.
    let refused = mysql_async::Conn::new(gw.opts("secure", "pw", Some(TEST_DB)))
        .await
        .expect_err("plaintext refused for a require user");
    assert_eq!(server_code(&refused), Some(1045), "{refused}");
    assert!(refused.to_string().contains("tls_mode"), "{refused}");
    let mut secure = mysql_async::Conn::new(tls_opts(&gw, "secure", "pw", &certs.ca))
        .await
        .expect("TLS login of a require user");
    secure.ping().await.unwrap();
    // COM_CHANGE_USER from a plaintext session to a require user is refused the same way,
    // and the session stays usable.
    let mut plain = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .unwrap();
    let err = plain
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some("secure".into()))
                .with_pass(Some("pw".into())),
        )
        .await
        .expect_err("change-user to a require user in clear is refused");
    assert!(err.to_string().contains("tls_mode"), "{err}");

    // A client that trusts another authority gives up during the handshake: no server
    // error, and sluice counts why.
    let distrusting = mysql_async::Conn::new(tls_opts(&gw, "app", "secret", &certs.other_ca)).await;
    let err = distrusting.expect_err("an unknown issuer is refused by the client");
    assert_eq!(server_code(&err), None, "{err}");
    // sluice sees the client's alert a moment after the client has given up.
    let alerts =
        "sluice_tls_handshake_failures_total{listener=\"mysql\",reason=\"alert_received\"}";
    let mut metrics = gw.metrics().await;
    for _ in 0..100 {
        if metric_value(&metrics, alerts) >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        metrics = gw.metrics().await;
    }
    assert!(metric_value(&metrics, alerts) >= 1.0, "{metrics}");
    assert!(
        metric_value(
            &metrics,
            "sluice_auth_failures_total{reason=\"tls_required\"}"
        ) >= 2.0,
        "{metrics}"
    );
    // And the gateway carries on.
    secure.query_drop("DO 1").await.unwrap();
    secure.disconnect().await.unwrap();
    plain.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_full_paths_then_the_fast_path() {
    let certs = certs::make();
    let gw = start_with("tls_sha2", |c| {
        with_tls(c, &certs, TlsMode::Allow);
        c.auth.default_plugin = AuthPlugin::CachingSha2Password;
        c.users.push(UserConfig {
            name: "viatls".into(),
            password: Some("tls-pw".into()),
            backend: Some(sluice::config::SharedBackend::Shared),
            ..Default::default()
        });
    })
    .await;
    // First login without TLS: the password travels RSA-encrypted.
    let mut rsa = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .expect("caching_sha2_password full authentication with RSA");
    let one: Option<i64> = rsa.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    rsa.disconnect().await.unwrap();
    assert_eq!(sha2_paths(&gw.metrics().await), [0, 0, 1]);

    // The next login of the same user takes the fast path, with or without TLS.
    let mut fast = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .expect("fast path");
    fast.ping().await.unwrap();
    fast.disconnect().await.unwrap();
    assert_eq!(sha2_paths(&gw.metrics().await), [1, 0, 1]);

    // A first login inside TLS sends the password as it is.
    let mut full = mysql_async::Conn::new(tls_opts(&gw, "viatls", "tls-pw", &certs.ca))
        .await
        .expect("caching_sha2_password full authentication over TLS");
    full.ping().await.unwrap();
    full.disconnect().await.unwrap();
    assert_eq!(sha2_paths(&gw.metrics().await), [1, 1, 1]);

    // Wrong passwords: 1045, on the fast path's user and on a fresh one.
    for (user, password) in [("app", "wrong"), ("viatls", "wrong")] {
        let err = mysql_async::Conn::new(gw.opts(user, password, Some(TEST_DB)))
            .await
            .expect_err("wrong password refused");
        assert_eq!(server_code(&err), Some(1045), "{user}: {err}");
    }
    // The right one still works after a wrong one.
    let mut again = mysql_async::Conn::new(gw.opts("app", "secret", Some(TEST_DB)))
        .await
        .unwrap();
    again.ping().await.unwrap();
    again.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_for_new_handshakes() {
    let certs = certs::make();
    let gw = start_with("tls_reload", |c| with_tls(c, &certs, TlsMode::Require)).await;
    let mut before = mysql_async::Conn::new(tls_opts(&gw, "app", "secret", &certs.ca))
        .await
        .unwrap();
    // Renewal: a new pair from another authority written over the files.
    let renewed = certs::make();
    std::fs::copy(&renewed.cert, &certs.cert).unwrap();
    std::fs::copy(&renewed.key, &certs.key).unwrap();
    let mut trusted_new = None;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(conn) = mysql_async::Conn::new(tls_opts(&gw, "app", "secret", &renewed.ca)).await
        {
            trusted_new = Some(conn);
            break;
        }
    }
    let mut after = trusted_new.expect("the renewed certificate is served within seconds");
    after.ping().await.unwrap();
    // The connection made before the renewal carries on.
    before.ping().await.unwrap();
    let old = mysql_async::Conn::new(tls_opts(&gw, "app", "secret", &certs.ca)).await;
    assert!(old.is_err(), "the old authority no longer matches");
    after.disconnect().await.unwrap();
    before.disconnect().await.unwrap();
}
