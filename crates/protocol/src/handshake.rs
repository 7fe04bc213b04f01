//! The connection phase: the server greeting, the client's login packet, auth switching.
//!
//! sluice plays the server toward clients and the client toward the database, so it both
//! builds and parses each of these packets. `mysql_common` provides the packet layouts.

use std::collections::HashMap;

use mysql_common::io::ParseBuf;
use mysql_common::packets::{HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};

use crate::auth::SALT_LEN;
use crate::{CapabilityFlags, MariadbCapabilities, ProtocolError, StatusFlags};

/// What the server says about itself in its greeting.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// Version string as sent, e.g. `5.5.5-10.11.19-MariaDB-0+deb12u1`.
    pub server_version: String,
    /// The server's id for this connection.
    pub connection_id: u32,
    /// Capabilities the server offers.
    pub capabilities: CapabilityFlags,
    /// The server's default collation id.
    pub collation: u8,
    /// Server status flags at connect time.
    pub status: StatusFlags,
    /// The challenge for the first authentication round.
    pub nonce: Vec<u8>,
    /// The authentication plugin the server proposes.
    pub auth_plugin: String,
    /// MariaDB's extended capabilities (a MariaDB server does not set `CLIENT_MYSQL`, alias
    /// `CLIENT_LONG_PASSWORD`, and sends these in the greeting's last reserved bytes).
    pub mariadb_capabilities: MariadbCapabilities,
}

impl Greeting {
    /// Encodes a protocol-10 greeting with `mysql_native_password` and a 20-byte salt.
    pub fn encode(&self) -> Vec<u8> {
        let mut scramble_1 = [0u8; 8];
        scramble_1.copy_from_slice(&self.nonce[..8]);
        let mut scramble_2 = self.nonce[8..].to_vec();
        scramble_2.push(0);
        let packet = HandshakePacket::new(
            10,
            self.server_version.as_bytes(),
            self.connection_id,
            scramble_1,
            Some(scramble_2),
            self.capabilities,
            self.collation,
            self.status,
            Some(self.auth_plugin.as_bytes()),
        )
        .with_mariadb_ext_capabilities(self.mariadb_capabilities);
        let mut out = Vec::with_capacity(128);
        packet.serialize(&mut out);
        out
    }

    /// Parses a server greeting, refusing protocol versions other than 10.
    pub fn parse(payload: &[u8]) -> Result<Greeting, ProtocolError> {
        if payload.first() == Some(&0xff) {
            return Err(ProtocolError::Malformed("server refused the connection"));
        }
        // mysql_common computes `auth_plugin_data_len as i8 - 8`, which overflows (and panics
        // in debug builds) for lengths of 0x80 and up; no real server sends those.
        let version_end = 1 + payload
            .get(1..)
            .and_then(|rest| rest.iter().position(|b| *b == 0))
            .ok_or(ProtocolError::Malformed("server greeting without version"))?;
        if payload
            .get(version_end + 21)
            .is_some_and(|len| *len >= 0x80)
        {
            return Err(ProtocolError::Malformed(
                "invalid auth data length in greeting",
            ));
        }
        let packet = HandshakePacket::deserialize((), &mut ParseBuf(payload))
            .map_err(|_| ProtocolError::Malformed("invalid server greeting"))?;
        if packet.protocol_version() != 10 {
            return Err(ProtocolError::Malformed("unsupported protocol version"));
        }
        let mariadb_capabilities = if packet
            .capabilities()
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
        {
            MariadbCapabilities::empty()
        } else {
            packet.mariadb_ext_capabilities()
        };
        Ok(Greeting {
            mariadb_capabilities,
            server_version: packet.server_version_str().into_owned(),
            connection_id: packet.connection_id(),
            capabilities: packet.capabilities(),
            collation: packet.default_collation(),
            status: packet.status_flags(),
            nonce: packet.nonce(),
            auth_plugin: packet
                .auth_plugin()
                .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
                .unwrap_or_else(|| crate::auth::NATIVE_PASSWORD.to_owned()),
        })
    }

    /// Builds the greeting sluice sends to a client, proposing `auth_plugin`.
    pub fn for_client(
        server_version: &str,
        connection_id: u32,
        capabilities: CapabilityFlags,
        mariadb_capabilities: MariadbCapabilities,
        collation: u8,
        salt: &[u8; SALT_LEN],
        auth_plugin: &str,
    ) -> Greeting {
        Greeting {
            mariadb_capabilities,
            server_version: server_version.to_owned(),
            connection_id,
            capabilities,
            collation,
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            nonce: salt.to_vec(),
            auth_plugin: auth_plugin.to_owned(),
        }
    }
}

/// The client's login packet (HandshakeResponse41).
#[derive(Debug, Clone)]
pub struct Login {
    /// Capabilities the client asked for.
    pub capabilities: CapabilityFlags,
    /// The client's maximum packet size.
    pub max_packet: u32,
    /// Collation id for the session's character set.
    pub collation: u8,
    /// User name.
    pub user: String,
    /// Authentication data for the plugin named in `auth_plugin`.
    pub auth_response: Vec<u8>,
    /// Initial schema, when the client named one.
    pub database: Option<String>,
    /// The plugin the auth data was made for.
    pub auth_plugin: Option<String>,
    /// Connection attributes (driver name, program name, ...).
    pub attributes: HashMap<String, String>,
    /// MariaDB's extended capabilities the client asked for (none from a client that set
    /// `CLIENT_MYSQL`, alias `CLIENT_LONG_PASSWORD`: those bytes are filler then).
    pub mariadb_capabilities: MariadbCapabilities,
}

/// Length of an SSLRequest: the first 32 bytes of a login packet, ending before the user.
pub const SSL_REQUEST_LEN: usize = 32;

/// True when `payload` is an SSLRequest: a truncated login packet with `CLIENT_SSL`, after
/// which the client starts a TLS handshake and sends its real login inside it.
pub fn is_tls_request(payload: &[u8]) -> bool {
    payload.len() == SSL_REQUEST_LEN
        && CapabilityFlags::from_bits_truncate(u32::from_le_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ]))
        .contains(CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_PROTOCOL_41)
}

impl Login {
    /// Parses a login packet. A 32-byte packet with `CLIENT_SSL` is a TLS request (see
    /// [`is_tls_request`]), not a login, and is refused here.
    pub fn parse(payload: &[u8]) -> Result<Login, ProtocolError> {
        if payload.len() < 32 {
            return Err(ProtocolError::Malformed("login packet too short"));
        }
        let flags = CapabilityFlags::from_bits_truncate(u32::from_le_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ]));
        if !flags.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            return Err(ProtocolError::Malformed(
                "client does not speak protocol 4.1 (CLIENT_PROTOCOL_41)",
            ));
        }
        if is_tls_request(payload) {
            return Err(ProtocolError::Malformed(
                "client requested TLS, which is not offered",
            ));
        }
        let packet = HandshakeResponse::deserialize((), &mut ParseBuf(payload))
            .map_err(|_| ProtocolError::Malformed("invalid login packet"))?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Ok(Login {
            capabilities: packet.capabilities(),
            max_packet: u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]),
            collation: packet.collation(),
            user: text(packet.user()),
            auth_response: packet.scramble_buf().to_vec(),
            database: packet.db_name().map(text).filter(|db| !db.is_empty()),
            auth_plugin: packet.auth_plugin().map(|p| text(p.as_bytes())),
            attributes: packet.connect_attributes().unwrap_or_default(),
            mariadb_capabilities: if flags.contains(CapabilityFlags::CLIENT_LONG_PASSWORD) {
                MariadbCapabilities::empty()
            } else {
                packet.mariadb_ext_capabilities()
            },
        })
    }
}

/// Builds the login packet sluice sends to the database. MariaDB's extended capabilities go
/// in `mariadb_capabilities` (the server reads them only from a client without
/// `CLIENT_MYSQL`, alias `CLIENT_LONG_PASSWORD`, which is then left out).
pub fn encode_login(
    capabilities: CapabilityFlags,
    mariadb_capabilities: MariadbCapabilities,
    collation: u8,
    user: &str,
    auth_response: &[u8],
    database: Option<&str>,
    auth_plugin: &str,
) -> Vec<u8> {
    let mut attributes = HashMap::new();
    attributes.insert("_client_name".to_owned(), "sluice".to_owned());
    attributes.insert("program_name".to_owned(), "sluice".to_owned());
    let packet = HandshakeResponse::new(
        Some(auth_response),
        (8, 0, 0),
        Some(user.as_bytes()),
        database.map(str::as_bytes),
        Some(mysql_common::packets::AuthPlugin::from_bytes(
            auth_plugin.as_bytes(),
        )),
        if mariadb_capabilities.is_empty() {
            capabilities
        } else {
            capabilities - CapabilityFlags::CLIENT_LONG_PASSWORD
        },
        Some(attributes),
        16 * 1024 * 1024,
    )
    .with_mariadb_ext_capabilities(mariadb_capabilities);
    let mut out = Vec::with_capacity(128);
    packet.serialize(&mut out);
    // HandshakeResponse::new picks utf8mb4_general_ci; use the requested collation.
    out[8] = collation;
    out
}

/// Encodes an AuthSwitchRequest asking the client to answer `plugin`'s challenge `data`.
pub fn encode_auth_switch(plugin: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + plugin.len() + data.len() + 1);
    out.push(0xfe);
    out.extend_from_slice(plugin.as_bytes());
    out.push(0);
    out.extend_from_slice(data);
    out.push(0);
    out
}

/// Parses an AuthSwitchRequest from a server: the plugin name and its challenge.
pub fn parse_auth_switch(payload: &[u8]) -> Result<(String, Vec<u8>), ProtocolError> {
    let body = payload
        .strip_prefix(&[0xfe])
        .ok_or(ProtocolError::Malformed("not an auth switch request"))?;
    let nul = body
        .iter()
        .position(|b| *b == 0)
        .ok_or(ProtocolError::Malformed(
            "auth switch request without plugin name",
        ))?;
    let plugin = String::from_utf8_lossy(&body[..nul]).into_owned();
    let mut data = body[nul + 1..].to_vec();
    if data.last() == Some(&0) {
        data.pop();
    }
    Ok((plugin, data))
}

/// A `COM_CHANGE_USER` request.
#[derive(Debug, Clone)]
pub struct ChangeUser {
    /// The user to become.
    pub user: String,
    /// Authentication data for `auth_plugin` against the connection's current salt.
    pub auth_response: Vec<u8>,
    /// Schema to switch to, if any.
    pub database: Option<String>,
    /// New collation id, when the client sent one.
    pub collation: Option<u8>,
    /// Plugin the auth data was made for.
    pub auth_plugin: Option<String>,
}

impl ChangeUser {
    /// Parses the payload (command byte included) for a client with `capabilities`.
    pub fn parse(
        payload: &[u8],
        capabilities: CapabilityFlags,
    ) -> Result<ChangeUser, ProtocolError> {
        fn nul_str(buf: &[u8]) -> Result<(String, &[u8]), ProtocolError> {
            let end = buf
                .iter()
                .position(|b| *b == 0)
                .ok_or(ProtocolError::Malformed(
                    "unterminated string in COM_CHANGE_USER",
                ))?;
            Ok((
                String::from_utf8_lossy(&buf[..end]).into_owned(),
                &buf[end + 1..],
            ))
        }
        let body = payload
            .get(1..)
            .ok_or(ProtocolError::Malformed("empty COM_CHANGE_USER"))?;
        let (user, rest) = nul_str(body)?;
        let (auth_response, rest) =
            if capabilities.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
                let (&len, rest) = rest.split_first().ok_or(ProtocolError::Malformed(
                    "COM_CHANGE_USER without auth data",
                ))?;
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(ProtocolError::Malformed(
                        "truncated COM_CHANGE_USER auth data",
                    ));
                }
                (rest[..len].to_vec(), &rest[len..])
            } else {
                let (auth, rest) = nul_str(rest)?;
                (auth.into_bytes(), rest)
            };
        let (database, rest) = if rest.is_empty() {
            (String::new(), rest)
        } else {
            nul_str(rest)?
        };
        let (collation, rest) = match rest {
            [low, _high, tail @ ..] => (Some(*low), tail),
            _ => (None, &[][..]),
        };
        let auth_plugin =
            if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !rest.is_empty() {
                Some(
                    nul_str(rest)
                        .map(|(name, _)| name)
                        .unwrap_or_else(|_| String::from_utf8_lossy(rest).into_owned()),
                )
            } else {
                None
            };
        Ok(ChangeUser {
            user,
            auth_response,
            database: (!database.is_empty()).then_some(database),
            collation,
            auth_plugin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip() {
        let salt = crate::auth::new_salt();
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let extended = MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;
        let greeting = Greeting::for_client(
            "5.5.5-10.11.19-MariaDB",
            42,
            caps,
            extended,
            45,
            &salt,
            crate::auth::NATIVE_PASSWORD,
        );
        let parsed = Greeting::parse(&greeting.encode()).unwrap();
        assert_eq!(parsed.mariadb_capabilities, extended);
        assert_eq!(parsed.server_version, "5.5.5-10.11.19-MariaDB");
        assert_eq!(parsed.connection_id, 42);
        assert_eq!(parsed.nonce, salt.to_vec());
        assert_eq!(parsed.auth_plugin, "mysql_native_password");
        assert_eq!(parsed.capabilities, caps);
        assert_eq!(parsed.collation, 45);
    }

    #[test]
    fn login_round_trip() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let packet = encode_login(
            caps,
            MariadbCapabilities::empty(),
            224,
            "app",
            &[1; 20],
            Some("shop"),
            "mysql_native_password",
        );
        let login = Login::parse(&packet).unwrap();
        assert_eq!(login.user, "app");
        assert_eq!(login.auth_response, vec![1; 20]);
        assert_eq!(login.database.as_deref(), Some("shop"));
        assert_eq!(login.collation, 224);
        assert_eq!(login.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert_eq!(
            login.attributes.get("_client_name").map(String::as_str),
            Some("sluice")
        );
        assert!(login.mariadb_capabilities.is_empty());
    }

    #[test]
    fn mariadb_capabilities_travel_only_without_client_mysql() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let extended = MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;
        let login = Login::parse(&encode_login(caps, extended, 45, "u", &[], None, "x")).unwrap();
        assert_eq!(login.mariadb_capabilities, extended);
        assert!(!login
            .capabilities
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD));
        // A MySQL-style client (CLIENT_MYSQL set): the bytes are filler, whatever they hold.
        let mut packet = encode_login(caps, extended, 45, "u", &[], None, "x");
        packet[0] |= 1;
        assert!(Login::parse(&packet)
            .unwrap()
            .mariadb_capabilities
            .is_empty());
    }

    #[test]
    fn malformed_logins_are_refused() {
        assert!(Login::parse(&[]).is_err());
        assert!(Login::parse(&[0; 31]).is_err());
        // Protocol 4.1 flag missing.
        assert!(Login::parse(&[0; 40]).is_err());
        // Claims 4.1 and lenenc auth data, then stops in the middle of the user name.
        let mut truncated = vec![0u8; 32];
        truncated[..4].copy_from_slice(
            &(CapabilityFlags::CLIENT_PROTOCOL_41
                | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
                .bits()
                .to_le_bytes(),
        );
        truncated.extend_from_slice(b"user");
        assert!(Login::parse(&truncated).is_err());
        let mut tls = vec![0u8; 32];
        tls[..4].copy_from_slice(
            &(CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SSL)
                .bits()
                .to_le_bytes(),
        );
        assert!(is_tls_request(&tls));
        assert!(Login::parse(&tls).is_err());
    }

    #[test]
    fn a_login_cut_to_32_bytes_is_an_ssl_request() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SSL;
        let none = MariadbCapabilities::empty();
        let login = encode_login(caps, none, 45, "u", &[], None, "mysql_native_password");
        assert!(is_tls_request(&login[..SSL_REQUEST_LEN]));
        assert!(!is_tls_request(&login[..31]));
        let plain = encode_login(
            CapabilityFlags::CLIENT_PROTOCOL_41,
            none,
            45,
            "u",
            &[],
            None,
            "mysql_native_password",
        );
        assert!(!is_tls_request(&plain[..SSL_REQUEST_LEN]));
    }

    #[test]
    fn change_user_parsing() {
        let caps = CapabilityFlags::CLIENT_SECURE_CONNECTION | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let mut payload = vec![0x11];
        payload.extend_from_slice(b"bob\0");
        payload.push(3);
        payload.extend_from_slice(&[1, 2, 3]);
        payload.extend_from_slice(b"shop\0");
        payload.extend_from_slice(&[33, 0]);
        payload.extend_from_slice(b"mysql_native_password\0");
        let change = ChangeUser::parse(&payload, caps).unwrap();
        assert_eq!(change.user, "bob");
        assert_eq!(change.auth_response, vec![1, 2, 3]);
        assert_eq!(change.database.as_deref(), Some("shop"));
        assert_eq!(change.collation, Some(33));
        assert_eq!(change.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert!(ChangeUser::parse(&[0x11], caps).is_err());
        assert!(ChangeUser::parse(b"\x11bob", caps).is_err());
        assert!(ChangeUser::parse(b"\x11bob\0\x09ab", caps).is_err());
    }

    #[test]
    fn auth_switch_round_trip() {
        let packet = encode_auth_switch("mysql_native_password", b"01234567890123456789");
        let (plugin, data) = parse_auth_switch(&packet).unwrap();
        assert_eq!(plugin, "mysql_native_password");
        assert_eq!(data, b"01234567890123456789");
        assert!(parse_auth_switch(b"\xfeno-nul").is_err());
        assert!(parse_auth_switch(b"\x00").is_err());
    }
}
