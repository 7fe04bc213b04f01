//! Test certificates made with the `openssl` command line tool (scripts/ensure-deps installs
//! it): a certificate authority, a server certificate it signs for `localhost` and
//! 127.0.0.1, and an unrelated authority that a client can wrongly trust.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::config::Config;
use sluice::tls::TlsMode;

/// A directory of PEM files, removed when dropped.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    /// The authority that signed `cert`.
    pub ca: PathBuf,
    /// The server certificate (`localhost`, 127.0.0.1).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// An authority that signed nothing here.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed (scripts/ensure-deps)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed authority `name`.pem with its key `name`.key.
fn authority(dir: &Path, name: &str) {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=sluice test {name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
        ],
    );
}

/// Makes a fresh set.
pub fn make() -> TestCerts {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    authority(path, "ca");
    authority(path, "other_ca");
    openssl(
        path,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        path.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    TestCerts {
        ca: path.join("ca.pem"),
        cert: path.join("server.pem"),
        key: path.join("server.key"),
        other_ca: path.join("other_ca.pem"),
        dir,
    }
}

/// Turns on TLS toward clients with `certs` in `mode`.
pub fn with_tls(config: &mut Config, certs: &TestCerts, mode: TlsMode) {
    config.tls_cert = Some(certs.cert.clone());
    config.tls_key = Some(certs.key.clone());
    config.tls_mode = Some(mode);
}

/// `sluice_caching_sha2_exchanges_total` by path: fast, full over TLS, full with RSA.
pub fn sha2_paths(metrics: &str) -> [u32; 3] {
    ["fast", "full_tls", "full_rsa"].map(|path| {
        super::metric_value(
            metrics,
            &format!("sluice_caching_sha2_exchanges_total{{path=\"{path}\"}}"),
        ) as u32
    })
}
