//! `caching_sha2_password`, the server side: MySQL 8's default authentication.
//!
//! The client first answers the 20-byte nonce with a scramble,
//! `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)`. A server that remembers
//! `SHA256(SHA256(pw))` from an earlier login checks it at once (the *fast path*, answered
//! with [`FAST_AUTH_OK`]); otherwise it asks for the password itself ([`PERFORM_FULL_AUTH`]),
//! which the client sends in clear inside TLS, or without TLS encrypted with the server's RSA
//! public key (after asking for it with [`REQUEST_PUBLIC_KEY`]) and XORed with the nonce.

use sha2::{Digest, Sha256};

/// "Fast authentication succeeded": an OK packet follows.
pub const FAST_AUTH_OK: [u8; 2] = [0x01, 0x03];
/// "Send the password": full authentication is needed.
pub const PERFORM_FULL_AUTH: [u8; 2] = [0x01, 0x04];
/// The client's request for the server's RSA public key (a one-byte packet).
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// The first byte of the packet that carries the server's public key (PEM follows).
pub const PUBLIC_KEY_HEADER: u8 = 0x01;

/// `SHA256(SHA256(password))`: what a server keeps to check the fast path. It does not let
/// anyone log in (the scramble needs `SHA256(password)`), so it may be cached in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha2Digest([u8; 32]);

impl std::fmt::Debug for Sha2Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha2Digest(..)")
    }
}

impl Sha2Digest {
    /// The digest of a plain-text password.
    pub fn from_password(password: &[u8]) -> Sha2Digest {
        Sha2Digest(Sha256::digest(Sha256::digest(password)).into())
    }

    /// Checks a client's fast-path scramble against `nonce`, in constant time.
    pub fn verify(&self, nonce: &[u8], scramble: &[u8]) -> bool {
        let Ok(scramble) = <&[u8; 32]>::try_from(scramble) else {
            return false;
        };
        let mask: [u8; 32] = Sha256::new()
            .chain_update(self.0)
            .chain_update(nonce)
            .finalize()
            .into();
        let stage1: [u8; 32] = std::array::from_fn(|i| scramble[i] ^ mask[i]);
        let candidate: [u8; 32] = Sha256::digest(stage1).into();
        candidate
            .iter()
            .zip(self.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The password from a full authentication's answer: the RSA-decrypted bytes (or, inside
/// TLS, the bytes as sent) XORed with the nonce repeated (`nonce` empty: not XORed), up to
/// the terminating NUL.
pub fn password_from(mut answer: Vec<u8>, nonce: &[u8]) -> Vec<u8> {
    if !nonce.is_empty() {
        for (byte, mask) in answer.iter_mut().zip(nonce.iter().cycle()) {
            *byte ^= mask;
        }
    }
    if let Some(end) = answer.iter().position(|b| *b == 0) {
        answer.truncate(end);
    }
    answer
}

/// What a client encrypts with the server's public key: the password with its NUL, XORed
/// with the nonce repeated. The inverse of [`password_from`].
pub fn masked_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = password.to_vec();
    out.push(0);
    for (byte, mask) in out.iter_mut().zip(nonce.iter().cycle()) {
        *byte ^= mask;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{new_salt, scramble_sha256};

    #[test]
    fn the_fast_path_accepts_the_clients_scramble_only() {
        let nonce = new_salt();
        let digest = Sha2Digest::from_password(b"secret");
        let scramble = scramble_sha256(&nonce, b"secret").unwrap();
        assert!(digest.verify(&nonce, &scramble));
        let wrong = scramble_sha256(&nonce, b"Secret").unwrap();
        assert!(!digest.verify(&nonce, &wrong));
        assert!(!digest.verify(&new_salt(), &scramble));
        assert!(!digest.verify(&nonce, &scramble[..31]));
        assert!(!digest.verify(&nonce, &[]));
    }

    #[test]
    fn full_authentication_answers_unmask() {
        let nonce = new_salt();
        assert_eq!(
            password_from(
                masked_password(b"a much longer password than the nonce", &nonce),
                &nonce
            ),
            b"a much longer password than the nonce"
        );
        assert_eq!(password_from(b"plain\0".to_vec(), &[]), b"plain");
        assert_eq!(password_from(Vec::new(), &nonce), b"");
    }
}
