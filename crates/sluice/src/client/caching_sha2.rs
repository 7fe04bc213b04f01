//! `caching_sha2_password` toward a client: the exchange after its scramble.
//!
//! The fast path answers from the cache of passwords clients proved before (see
//! `identity::CachingSha2`); otherwise the client is asked for its password, which it sends
//! in clear inside TLS, or without TLS encrypted with sluice's RSA public key (asking for the
//! key first unless it has it). Either way the result is a `mysql_native_password` proof
//! for the identity sources, which hold native hashes.

use sluice_protocol::auth::{scramble_native, scramble_with_sha1, SALT_LEN};
use sluice_protocol::caching_sha2::{
    password_from, FAST_AUTH_OK, PERFORM_FULL_AUTH, PUBLIC_KEY_HEADER, REQUEST_PUBLIC_KEY,
};
use sluice_protocol::ProtocolError;

use super::login::Proof;
use super::ClientStream;
use crate::Gateway;

/// Runs the exchange for `user`, whose `scramble` answers `salt`.
pub async fn proof(
    gateway: &Gateway,
    stream: &mut ClientStream,
    seq: &mut u8,
    user: &str,
    scramble: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Proof, ProtocolError> {
    let count = |path: &str| {
        gateway
            .metrics
            .caching_sha2_exchanges
            .with_label_values(&[path])
            .inc()
    };
    // The empty password has an empty scramble and nothing more to exchange.
    if scramble.is_empty() {
        count("empty");
        return Ok(Proof::native(Vec::new()));
    }
    let cache = &gateway.identities.caching_sha2;
    if let Some(sha1) = cache.fast_path(user, salt, scramble) {
        count("fast");
        stream.write_packet(seq, &FAST_AUTH_OK).await?;
        return Ok(Proof {
            native: scramble_with_sha1(salt, &sha1).to_vec(),
            password: None,
            fast_path: true,
        });
    }
    stream.write_packet(seq, &PERFORM_FULL_AUTH).await?;
    let mut answer = read(stream, seq).await?;
    let password = if super::socket_of(stream).is_tls() {
        count("full_tls");
        password_from(answer, &[])
    } else {
        count("full_rsa");
        let Some(key) = cache.rsa_key().await else {
            return Err(ProtocolError::Malformed(
                "caching_sha2_password without TLS needs an RSA key, and sluice has none",
            ));
        };
        if answer == [REQUEST_PUBLIC_KEY] {
            let mut packet = vec![PUBLIC_KEY_HEADER];
            packet.extend_from_slice(key.public_pem().as_bytes());
            stream.write_packet(seq, &packet).await?;
            answer = read(stream, seq).await?;
        }
        // What does not decrypt proves nothing: it is checked as a wrong password would be.
        match key.decrypt(&answer) {
            Some(decrypted) => password_from(decrypted, salt),
            None => return Ok(Proof::native(vec![0; 20])),
        }
    };
    let native = scramble_native(salt, &password).map_or_else(Vec::new, Vec::from);
    Ok(Proof {
        native,
        password: Some(password),
        fast_path: false,
    })
}

async fn read(stream: &mut ClientStream, seq: &mut u8) -> Result<Vec<u8>, ProtocolError> {
    let packet = stream.read_packet().await?;
    *seq = packet.next_seq;
    Ok(packet.payload.to_vec())
}
