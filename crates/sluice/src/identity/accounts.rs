//! A database user's accounts as the database stores them, and checking a client's proof
//! against them.
//!
//! One user name can have several accounts (`app@'10.%'`, `app@'%'`), each with its own
//! plugin and password. sluice cannot tell which one the database would pick for the
//! client: the database sees sluice's address, not the client's. So a proof is accepted
//! when it matches any `mysql_native_password` account of the name, and the database stays
//! the final judge when sluice then logs in as that user with what the proof showed.

use sluice_protocol::auth::{Credential, NativeHash, Proven, NATIVE_PASSWORD};

use super::Denied;

/// One `user@host` account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its host pattern, for logs.
    pub host: String,
    /// How it authenticates.
    pub method: Method,
}

/// How an account authenticates, as far as sluice can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `mysql_native_password` with this stored hash (or no password).
    Native(Credential),
    /// `mysql_native_password` with a stored value that is no hash (MariaDB writes
    /// `invalid` for accounts no password opens): no proof matches it.
    NoPassword,
    /// Another plugin (`ed25519`, `unix_socket`, `caching_sha2_password`, ...), named:
    /// sluice cannot check a proof for it.
    Other(String),
}

impl Account {
    /// An account from the auth query's columns. A missing plugin is the native one (as
    /// MariaDB treats it) and a missing hash is no password: the database refuses sluice's
    /// login later if that reading was wrong.
    pub fn new(host: &str, plugin: Option<&str>, stored: Option<&str>) -> Account {
        let method = match plugin.unwrap_or("") {
            "" | NATIVE_PASSWORD => match stored.unwrap_or("") {
                "" => Method::Native(Credential::Empty),
                text => NativeHash::parse(text).map_or(Method::NoPassword, |hash| {
                    Method::Native(Credential::Hash(hash))
                }),
            },
            other => Method::Other(other.to_owned()),
        };
        Account {
            host: host.to_owned(),
            method,
        }
    }
}

/// Checks a `mysql_native_password` proof against `salt` and every account of one user
/// name: what it proves when an account accepts it; otherwise `UnknownUser` when there is
/// no account, `UnsupportedPlugin` when no account uses the native plugin, `BadPassword`
/// when some does.
pub fn check(accounts: &[Account], salt: &[u8], proof: &[u8]) -> Result<Proven, Denied> {
    if accounts.is_empty() {
        return Err(Denied::UnknownUser);
    }
    let mut native = false;
    for account in accounts {
        match &account.method {
            Method::Native(credential) => {
                native = true;
                if let Some(proven) = credential.prove(salt, proof) {
                    return Ok(proven);
                }
            }
            Method::NoPassword => native = true,
            Method::Other(_) => {}
        }
    }
    Err(if native {
        Denied::BadPassword
    } else {
        Denied::UnsupportedPlugin
    })
}

/// The plugins of `accounts` sluice cannot check, for the log line that explains a refusal.
pub fn other_plugins(accounts: &[Account]) -> Vec<&str> {
    accounts
        .iter()
        .filter_map(|a| match &a.method {
            Method::Other(plugin) => Some(plugin.as_str()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::auth::{new_salt, scramble_native};

    fn hash_of(password: &str) -> String {
        NativeHash::from_password(password.as_bytes()).to_hex()
    }

    #[test]
    fn reads_what_the_auth_query_returns() {
        let hash = hash_of("pw");
        assert_eq!(
            Account::new("%", Some("mysql_native_password"), Some(&hash)).method,
            Method::Native(Credential::Hash(NativeHash::parse(&hash).unwrap()))
        );
        assert_eq!(
            Account::new("%", Some("mysql_native_password"), Some("")).method,
            Method::Native(Credential::Empty)
        );
        assert_eq!(
            Account::new("%", None, None).method,
            Method::Native(Credential::Empty)
        );
        assert_eq!(
            Account::new("localhost", Some("mysql_native_password"), Some("invalid")).method,
            Method::NoPassword
        );
        assert_eq!(
            Account::new("%", Some("ed25519"), Some("abc")).method,
            Method::Other("ed25519".into())
        );
    }

    #[test]
    fn a_proof_matching_any_native_account_is_accepted() {
        let salt = new_salt();
        let accounts = [
            Account::new("10.%", Some("mysql_native_password"), Some(&hash_of("a"))),
            Account::new("%", Some("mysql_native_password"), Some(&hash_of("b"))),
            Account::new("localhost", Some("unix_socket"), None),
        ];
        for password in ["a", "b"] {
            let proof = scramble_native(&salt, password.as_bytes()).unwrap();
            assert!(matches!(
                check(&accounts, &salt, &proof),
                Ok(Proven::PasswordSha1(_))
            ));
        }
        let wrong = scramble_native(&salt, b"c").unwrap();
        assert_eq!(check(&accounts, &salt, &wrong), Err(Denied::BadPassword));
        assert_eq!(check(&accounts, &salt, &[]), Err(Denied::BadPassword));
        assert_eq!(other_plugins(&accounts), vec!["unix_socket"]);
    }

    #[test]
    fn refusals_say_why() {
        let salt = new_salt();
        let proof = scramble_native(&salt, b"pw").unwrap();
        assert_eq!(check(&[], &salt, &proof), Err(Denied::UnknownUser));
        let other = [Account::new("%", Some("ed25519"), Some("x"))];
        assert_eq!(check(&other, &salt, &proof), Err(Denied::UnsupportedPlugin));
        let closed = [Account::new(
            "%",
            Some("mysql_native_password"),
            Some("invalid"),
        )];
        assert_eq!(check(&closed, &salt, &proof), Err(Denied::BadPassword));
        let empty = [Account::new("%", Some("mysql_native_password"), Some(""))];
        assert_eq!(check(&empty, &salt, &[]), Ok(Proven::Empty));
        assert_eq!(check(&empty, &salt, &proof), Err(Denied::BadPassword));
    }
}
