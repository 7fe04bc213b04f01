//! The certificate sluice shows clients, read from PEM files and re-read when they change.
//!
//! Certificates are renewed on disk (certbot, a secrets agent) while sluice runs. Each
//! handshake asks [`ServerTls::acceptor`] for the current configuration; at most once a
//! second that call looks at the files' modification times and, when either changed, loads
//! them again. A pair that fails to load (a half-written renewal) is logged and the previous
//! one kept, so a bad file never takes TLS down. [`ServerTls::reload`] forces a re-read
//! (for a SIGHUP handler).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// How often the files' modification times are looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A certificate chain and key on disk, and the acceptor made from them.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    stamps: [Option<SystemTime>; 2],
    checked: Instant,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerTls({}, {})",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl ServerTls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key); the error
    /// names the file at fault.
    pub fn load(cert: &Path, key: &Path) -> std::io::Result<Arc<ServerTls>> {
        let acceptor = acceptor(cert, key)?;
        Ok(Arc::new(ServerTls {
            state: Mutex::new(Loaded {
                acceptor,
                stamps: stamps(cert, key),
                checked: Instant::now(),
            }),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// The acceptor for a new handshake, re-read from disk first if the files changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.cert, &self.key);
            if now != state.stamps {
                state.stamps = now;
                self.replace(&mut state);
            }
        }
        state.acceptor.clone()
    }

    /// Reads the files again now, keeping the current pair if they do not load.
    pub fn reload(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stamps = stamps(&self.cert, &self.key);
        state.checked = Instant::now();
        self.replace(&mut state);
    }

    fn replace(&self, state: &mut Loaded) {
        match acceptor(&self.cert, &self.key) {
            Ok(acceptor) => {
                state.acceptor = acceptor;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the previous one")
            }
        }
    }
}

/// The modification times of both files (`None` for one that cannot be read now).
fn stamps(cert: &Path, key: &Path) -> [Option<SystemTime>; 2] {
    [cert, key].map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
}

/// Loads a PEM certificate chain and private key into an acceptor; errors name the file.
pub fn acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    let fail = |path: &Path, what: String| {
        std::io::Error::other(format!("TLS: {}: {what}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(fail(cert, "no certificate found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| fail(cert, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
