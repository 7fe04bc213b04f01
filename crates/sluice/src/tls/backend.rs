//! TLS toward the database: `[backend] tls`, with the choices of the MySQL clients'
//! `--ssl-mode`.
//!
//! | mode | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` | when the server offers it | not checked |
//! | `require` | always (a server without it is refused) | not checked |
//! | `verify-ca` | always | signed by `tls_ca` |
//! | `verify-identity` | always | signed by `tls_ca` and naming the host of `url` |
//!
//! "Not checked" protects against eavesdropping only, not against a man in the middle, as
//! with the MySQL clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// `[backend] tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS always, with a certificate signed by `tls_ca`.
    VerifyCa,
    /// TLS always, with a certificate signed by `tls_ca` for the host sluice connects to.
    VerifyIdentity,
}

impl BackendTlsMode {
    /// Whether the certificate authority file is needed.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity
        )
    }
}

/// What a database connection does about TLS, ready to use.
#[derive(Clone)]
pub struct BackendTls {
    /// The configured mode.
    pub mode: BackendTlsMode,
    /// The connector, unless the mode is `disable`.
    connector: Option<TlsConnector>,
    /// The authority file it was built with, so a reload can tell whether it changed.
    ca: Option<PathBuf>,
}

/// Two are the same when built from the same mode and authority file.
impl PartialEq for BackendTls {
    fn eq(&self, other: &BackendTls) -> bool {
        self.mode == other.mode && self.ca == other.ca
    }
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendTls({:?})", self.mode)
    }
}

impl BackendTls {
    /// Plain TCP, for connections that need no choice (tests, tools).
    pub const DISABLED: BackendTls = BackendTls {
        mode: BackendTlsMode::Disable,
        connector: None,
        ca: None,
    };

    /// Builds the client side of `mode`; `ca` (PEM, one or more certificates) is read now
    /// and is required by the verifying modes. The error says what is wrong, for the
    /// configuration report.
    pub fn new(mode: BackendTlsMode, ca: Option<&Path>) -> Result<BackendTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca) {
            (BackendTlsMode::Disable, _) => {
                return Ok(BackendTls {
                    mode,
                    connector: None,
                    ca: ca.map(Path::to_path_buf),
                })
            }
            (BackendTlsMode::Prefer | BackendTlsMode::Require, _) => Arc::new(Lenient {
                chain: None,
                provider: provider.clone(),
            }),
            (_, None) => return Err(format!("tls = \"{}\" needs tls_ca", mode.name())),
            (_, Some(path)) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("{}: no certificate found", path.display()));
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                if mode == BackendTlsMode::VerifyCa {
                    Arc::new(Lenient {
                        chain: Some(webpki),
                        provider: provider.clone(),
                    })
                } else {
                    webpki
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(BackendTls {
            mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
            ca: ca.map(Path::to_path_buf),
        })
    }

    /// The connector to use with a server that does (`offered`) or does not offer TLS:
    /// `Ok(None)` for plain TCP, `Err` when the mode demands TLS the server lacks.
    pub fn connector(&self, offered: bool) -> Result<Option<&TlsConnector>, &'static str> {
        match (&self.connector, offered) {
            (None, _) => Ok(None),
            (Some(connector), true) => Ok(Some(connector)),
            (Some(_), false) if self.mode == BackendTlsMode::Prefer => Ok(None),
            (Some(_), false) => {
                Err("the database does not offer TLS, which [backend] tls requires")
            }
        }
    }
}

impl BackendTlsMode {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            BackendTlsMode::Disable => "disable",
            BackendTlsMode::Prefer => "prefer",
            BackendTlsMode::Require => "require",
            BackendTlsMode::VerifyCa => "verify-ca",
            BackendTlsMode::VerifyIdentity => "verify-identity",
        }
    }
}

/// The name to send (SNI) and, in `verify-identity`, to check the certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))
}

/// The certificate check of every mode but `verify-identity`: none (`prefer`, `require`),
/// or the chain only (`verify-ca`: the name in the certificate is not compared with the
/// host). The handshake's signatures are always checked, so the session keys belong to
/// whoever holds the certificate's key.
#[derive(Debug)]
struct Lenient {
    /// The chain check of `verify-ca`; `None` accepts any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
