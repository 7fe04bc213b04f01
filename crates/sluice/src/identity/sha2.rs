//! `caching_sha2_password` toward clients: what sluice remembers between logins, and the RSA
//! key clients without TLS encrypt their password with.
//!
//! sluice's identity sources hold `mysql_native_password` hashes, so a `caching_sha2_password`
//! client is checked like this: its first login sends the password itself (full
//! authentication, inside TLS or RSA-encrypted), which is checked against the native hash
//! (through the sources, as a native proof would be) and, when good, remembered as
//! `SHA256(SHA256(pw))` (to check later scrambles, the fast path) next to `SHA1(pw)` (what
//! the sources and the database login need). A fast-path login is then checked by the
//! sources again with a native proof made from that `SHA1(pw)`, so a password changed or an
//! account dropped on the database still takes effect. The password itself is never kept.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::PrivateKey;
use sluice_protocol::auth::PasswordSha1;
use sluice_protocol::caching_sha2::Sha2Digest;
use tokio::sync::OnceCell;

/// Bits of the key generated when none is configured (MySQL's default size).
const GENERATED_BITS: usize = 2048;

/// The server's RSA key for `caching_sha2_password` without TLS.
pub struct RsaKey {
    private: PrivateKey,
    public_pem: String,
}

impl RsaKey {
    /// Reads a PEM private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`); the error says what is wrong with the file.
    pub fn load(path: &Path) -> Result<RsaKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let private = PrivateKey::from_pkcs8_pem(&text)
            .or_else(|_| PrivateKey::from_pkcs1_pem(&text))
            .map_err(|e| format!("{}: not a PEM RSA private key: {e}", path.display()))?;
        RsaKey::from_private(private)
    }

    /// A new random key (takes a moment: done once, off the runtime's workers).
    pub fn generate() -> Result<RsaKey, String> {
        let private = PrivateKey::new(&mut rand::rng(), GENERATED_BITS)
            .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
        RsaKey::from_private(private)
    }

    fn from_private(private: PrivateKey) -> Result<RsaKey, String> {
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the RSA public key: {e}"))?;
        Ok(RsaKey {
            private,
            public_pem,
        })
    }

    /// The public key as clients want it (PEM, SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Decrypts a client's RSA-OAEP (SHA-1) ciphertext; `None` when it is not one.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        self.private
            .decrypt(rsa::Oaep::<sha1::Sha1>::new(), ciphertext)
            .ok()
    }
}

/// What a full authentication left for the fast path.
#[derive(Clone, Copy)]
struct Remembered {
    digest: Sha2Digest,
    sha1: PasswordSha1,
}

/// The fast-path cache and the RSA key.
pub struct CachingSha2 {
    remembered: Mutex<LruCache<String, Remembered>>,
    rsa_path: Option<PathBuf>,
    rsa: OnceCell<Option<Arc<RsaKey>>>,
}

impl CachingSha2 {
    /// Remembers at most `capacity` users; the key is read from `rsa_path` (or generated)
    /// when first needed.
    pub fn new(capacity: usize, rsa_path: Option<PathBuf>) -> CachingSha2 {
        CachingSha2 {
            remembered: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            rsa_path,
            rsa: OnceCell::new(),
        }
    }

    fn remembered(&self) -> MutexGuard<'_, LruCache<String, Remembered>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fast path: `SHA1(pw)` when `scramble` answers `nonce` with the password `user`
    /// last proved; `None` when that user has no remembered password or this is not it.
    pub fn fast_path(&self, user: &str, nonce: &[u8], scramble: &[u8]) -> Option<PasswordSha1> {
        let remembered = *self.remembered().get(user)?;
        remembered
            .digest
            .verify(nonce, scramble)
            .then_some(remembered.sha1)
    }

    /// Remembers `password` of `user` after the sources accepted it.
    pub fn remember(&self, user: &str, password: &[u8]) {
        let remembered = Remembered {
            digest: Sha2Digest::from_password(password),
            sha1: PasswordSha1(<sha1::Sha1 as sha1::Digest>::digest(password).into()),
        };
        self.remembered().put(user.to_owned(), remembered);
    }

    /// Forgets `user`'s password (the sources refused what it proved).
    pub fn forget(&self, user: &str) {
        self.remembered().pop(user);
    }

    /// The RSA key, loaded or generated at the first call; `None` (logged) when that
    /// failed, and clients without TLS then cannot finish a full authentication.
    pub async fn rsa_key(&self) -> Option<Arc<RsaKey>> {
        self.rsa
            .get_or_init(|| async {
                let path = self.rsa_path.clone();
                let made = tokio::task::spawn_blocking(move || match path {
                    Some(path) => RsaKey::load(&path),
                    None => RsaKey::generate(),
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match made {
                    Ok(key) => Some(Arc::new(key)),
                    Err(e) => {
                        tracing::error!(error = %e, "no RSA key for caching_sha2_password");
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::auth::{new_salt, scramble_sha256};

    #[test]
    fn a_remembered_password_opens_the_fast_path_only_for_itself() {
        let cache = CachingSha2::new(2, None);
        let nonce = new_salt();
        let scramble = scramble_sha256(&nonce, b"pw").unwrap();
        assert!(cache.fast_path("u", &nonce, &scramble).is_none());
        cache.remember("u", b"pw");
        let sha1 = cache.fast_path("u", &nonce, &scramble).unwrap();
        assert_eq!(
            sha1.0,
            <[u8; 20]>::from(<sha1::Sha1 as sha1::Digest>::digest(b"pw"))
        );
        let wrong = scramble_sha256(&nonce, b"other").unwrap();
        assert!(cache.fast_path("u", &nonce, &wrong).is_none());
        assert!(cache.fast_path("v", &nonce, &scramble).is_none());
        cache.forget("u");
        assert!(cache.fast_path("u", &nonce, &scramble).is_none());
    }

    #[test]
    fn the_rsa_key_decrypts_what_its_public_half_encrypted() {
        use rsa::pkcs8::DecodePublicKey;
        let key = RsaKey::generate().unwrap();
        let public = rsa::PublicKey::from_public_key_pem(key.public_pem()).unwrap();
        let sealed = public
            .encrypt(
                &mut rand::rng(),
                rsa::Oaep::<sha1::Sha1>::new(),
                b"secret\0",
            )
            .unwrap();
        assert_eq!(key.decrypt(&sealed).unwrap(), b"secret\0");
        assert!(key.decrypt(b"garbage").is_none());
    }
}
