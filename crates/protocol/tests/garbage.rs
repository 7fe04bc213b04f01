//! Every decoder meets random and truncated input: it must return an error or a value,
//! never panic. (A stand-in for a fuzzer that runs on stable Rust in every test run.)

use sluice_protocol::handshake::{parse_auth_switch, ChangeUser, Greeting, Login};
use sluice_protocol::packet::FrameHeader;
use sluice_protocol::reply::{ReplyShape, ReplyTracker};
use sluice_protocol::response::{self, ErrFields};
use sluice_protocol::{command, lenenc, prepared, CapabilityFlags};

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() as usize) % (max + 1);
        (0..len)
            .map(|_| {
                // Bias towards the bytes that mean something to the protocol.
                match self.next() % 8 {
                    0 => 0x00,
                    1 => 0xfe,
                    2 => 0xff,
                    3 => 0xfb,
                    4 => 0xfc,
                    _ => self.next() as u8,
                }
            })
            .collect()
    }
}

fn valid_login() -> Vec<u8> {
    sluice_protocol::handshake::encode_login(
        CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_CONNECT_ATTRS,
        sluice_protocol::MariadbCapabilities::empty(),
        45,
        "user",
        &[7; 20],
        Some("db"),
        "mysql_native_password",
    )
}

#[test]
fn decoders_survive_random_input() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let buf = rng.bytes(96);
        let _ = Login::parse(&buf);
        let _ = Greeting::parse(&buf);
        let _ = ChangeUser::parse(&buf, CapabilityFlags::all());
        let _ = ChangeUser::parse(&buf, CapabilityFlags::empty());
        let _ = parse_auth_switch(&buf);
        let _ = ErrFields::parse(&buf);
        let _ = response::parse_ok(&buf);
        let _ = response::terminator_status(&buf);
        let _ = response::strip_session_track(&buf);
        let _ = lenenc::read_bytes(&buf);
        let _ = FrameHeader::parse(&buf);
        let _ = prepared::PrepareOk::parse(&buf);
        let _ = prepared::parse_long_data(&buf);
        let _ = prepared::with_statement_id(&buf, 1);
        for params in [0, 1, 9, u16::MAX] {
            if let Ok(execute) = prepared::Execute::parse(&buf, params) {
                let _ = execute.rewrite(2, Some(&[8, 0]));
            }
        }
    }
}

#[test]
fn truncations_and_bit_flips_of_a_valid_login_never_panic() {
    let login = valid_login();
    assert!(Login::parse(&login).is_ok());
    for cut in 0..login.len() {
        let _ = Login::parse(&login[..cut]);
    }
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let mut mutated = login.clone();
        let at = (rng.next() as usize) % mutated.len();
        mutated[at] ^= 1 << (rng.next() % 8);
        let _ = Login::parse(&mutated);
    }
}

#[test]
fn reply_tracker_survives_random_replies() {
    let mut rng = XorShift(7);
    let commands = [
        command::QUERY,
        command::STMT_PREPARE,
        command::STMT_EXECUTE,
        command::FIELD_LIST,
        command::STMT_FETCH,
        command::STATISTICS,
    ];
    for round in 0..5_000 {
        let shape = ReplyShape::of(commands[round % commands.len()]);
        let mut tracker = ReplyTracker::new(shape, rng.next().is_multiple_of(2));
        for _ in 0..20 {
            let payload = rng.bytes(24);
            let header = FrameHeader {
                payload_len: payload.len(),
                seq: 1,
            };
            if tracker.feed(header, &payload).is_err() || tracker.is_finished() {
                break;
            }
        }
    }
}
