//! `mysql_native_password`: salts, stored hashes and proof checking.
//!
//! sluice stores a client password as the server does, `SHA1(SHA1(password))`, so that a
//! config file never needs the plain text. A client proves it knows the password by sending
//! `SHA1(password) XOR SHA1(salt + SHA1(SHA1(password)))`.

use sha1::{Digest, Sha1};

pub use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
pub use mysql_common::auth::plugins::mysql_native_password::scramble_native;

/// Length of the random salt sent in the greeting.
pub const SALT_LEN: usize = 20;
/// Plugin name of the only client authentication method sluice accepts.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";
/// Plugin name MySQL 8 clients and servers default to.
pub const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// A fresh random salt of printable ASCII (some clients mishandle NUL bytes in it).
pub fn new_salt() -> [u8; SALT_LEN] {
    std::array::from_fn(|_| rand::random_range(0x21u8..0x7f))
}

/// `SHA1(SHA1(password))`, the form in which `mysql.user` and sluice keep a password.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NativeHash([u8; 20]);

impl std::fmt::Debug for NativeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeHash(..)")
    }
}

impl NativeHash {
    /// Hashes a plain-text password.
    pub fn from_password(password: &[u8]) -> NativeHash {
        NativeHash(Sha1::digest(Sha1::digest(password)).into())
    }

    /// Parses the `*` + 40 hex digit form printed by `SELECT PASSWORD('...')`.
    pub fn parse(text: &str) -> Option<NativeHash> {
        let hex = text.strip_prefix('*')?;
        if hex.len() != 40 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(NativeHash(out))
    }

    /// The `*` + 40 upper-case hex digit form.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(41);
        out.push('*');
        for byte in self.0 {
            out.push_str(&format!("{byte:02X}"));
        }
        out
    }
}

/// What a user's password is: nothing, or a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The empty password: the client must send an empty auth response.
    Empty,
    /// A non-empty password, kept as its native hash.
    Hash(NativeHash),
}

impl Credential {
    /// Builds a credential from plain text, or from a `*HEX` hash when `text` is one.
    pub fn from_plain_or_hash(text: &str) -> Credential {
        if text.is_empty() {
            Credential::Empty
        } else if let Some(hash) = NativeHash::parse(text) {
            Credential::Hash(hash)
        } else {
            Credential::Hash(NativeHash::from_password(text.as_bytes()))
        }
    }

    /// Checks a client's `mysql_native_password` proof against `salt`, in constant time.
    pub fn verify(&self, salt: &[u8], proof: &[u8]) -> bool {
        let NativeHash(stored) = match self {
            Credential::Empty => return proof.is_empty(),
            Credential::Hash(hash) => *hash,
        };
        if proof.len() != 20 {
            return false;
        }
        let mut hasher = Sha1::new();
        hasher.update(salt);
        hasher.update(stored);
        let mask: [u8; 20] = hasher.finalize().into();
        let stage1: Vec<u8> = proof.iter().zip(mask).map(|(p, m)| p ^ m).collect();
        let candidate: [u8; 20] = Sha1::digest(&stage1).into();
        candidate
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_mysql_password_function() {
        // SELECT PASSWORD('secret') on MariaDB.
        let hash = NativeHash::from_password(b"secret");
        assert_eq!(hash.to_hex(), "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
        assert_eq!(NativeHash::parse(&hash.to_hex()), Some(hash));
        assert_eq!(NativeHash::parse(&hash.to_hex().to_lowercase()), Some(hash));
        assert!(NativeHash::parse("*12").is_none());
        assert!(NativeHash::parse("14E65567ABDB5135D0CFD9A70B3032C179A49EE7").is_none());
        assert!(NativeHash::parse("*ZZE65567ABDB5135D0CFD9A70B3032C179A49EE7").is_none());
    }

    #[test]
    fn verifies_client_proofs() {
        let salt = new_salt();
        assert!(salt.iter().all(|b| (0x21..0x7f).contains(b)));
        let credential = Credential::from_plain_or_hash("secret");
        let proof = scramble_native(&salt, b"secret").unwrap();
        assert!(credential.verify(&salt, &proof));
        let wrong = scramble_native(&salt, b"secreT").unwrap();
        assert!(!credential.verify(&salt, &wrong));
        assert!(!credential.verify(&salt, &[]));
        assert!(!credential.verify(&salt, &proof[..19]));
        let by_hash = Credential::from_plain_or_hash("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
        assert!(by_hash.verify(&salt, &proof));
        assert!(Credential::Empty.verify(&salt, &[]));
        assert!(!Credential::Empty.verify(&salt, &proof));
    }
}
