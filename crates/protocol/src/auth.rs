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
        self.prove(salt, proof).is_some()
    }

    /// Checks a proof like [`Credential::verify`] and, when it is good, returns what it
    /// proved: the empty password, or `SHA1(password)`, which the proof carries masked by
    /// the stored hash. That is what logging in to the database as the same user needs (see
    /// [`scramble_with_sha1`]), so sluice never sees or keeps the password itself.
    pub fn prove(&self, salt: &[u8], proof: &[u8]) -> Option<Proven> {
        let NativeHash(stored) = match self {
            Credential::Empty => return proof.is_empty().then_some(Proven::Empty),
            Credential::Hash(hash) => *hash,
        };
        let proof: &[u8; 20] = proof.try_into().ok()?;
        let mask = sha1_of(&[salt, &stored]);
        let stage1: [u8; 20] = std::array::from_fn(|i| proof[i] ^ mask[i]);
        let candidate = sha1_of(&[&stage1]);
        let differs = candidate
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (differs == 0).then_some(Proven::PasswordSha1(PasswordSha1(stage1)))
    }
}

/// What a good `mysql_native_password` proof showed about the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proven {
    /// The password is empty.
    Empty,
    /// `SHA1(password)`.
    PasswordSha1(PasswordSha1),
}

/// `SHA1(password)`: enough to log in with `mysql_native_password` (it is a password
/// equivalent for that plugin, so it is kept in memory only, never logged or written).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasswordSha1(pub [u8; 20]);

impl std::fmt::Debug for PasswordSha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordSha1(..)")
    }
}

/// SHA-1 of the concatenated `parts`.
fn sha1_of(parts: &[&[u8]]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The `mysql_native_password` answer to `nonce` from `SHA1(password)` alone: the same
/// bytes [`scramble_native`] computes from the password.
pub fn scramble_with_sha1(nonce: &[u8], PasswordSha1(stage1): &PasswordSha1) -> [u8; 20] {
    let stage2 = sha1_of(&[stage1]);
    let mask = sha1_of(&[nonce, &stage2]);
    std::array::from_fn(|i| stage1[i] ^ mask[i])
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

    #[test]
    fn a_good_proof_yields_what_logs_in_as_the_same_user() {
        let salt = new_salt();
        let credential = Credential::from_plain_or_hash("secret");
        let proof = scramble_native(&salt, b"secret").unwrap();
        let Some(Proven::PasswordSha1(sha1)) = credential.prove(&salt, &proof) else {
            panic!("a good proof proves the password");
        };
        // The answer to another nonce, computed without the password, is the client's.
        let nonce = new_salt();
        assert_eq!(
            scramble_with_sha1(&nonce, &sha1),
            scramble_native(&nonce, b"secret").unwrap()
        );
        let wrong = scramble_native(&salt, b"other").unwrap();
        assert_eq!(credential.prove(&salt, &wrong), None);
        assert_eq!(Credential::Empty.prove(&salt, &[]), Some(Proven::Empty));
    }
}
