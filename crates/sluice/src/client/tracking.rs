//! The session tracking a client asked for, emulated over sluice's own.
//!
//! sluice runs every database connection with all session tracking on, because it learns a
//! client's session from it. A client must still get only the tracking entries it would get
//! from MariaDB directly: those its own `session_track_schema`,
//! `session_track_state_change` and `session_track_system_variables` allow (the server's
//! defaults at login, then what it sets). Some drivers misread entries they did not ask for.

use sluice_protocol::lenenc;

/// Session-state entry types in OK packets.
const SYSTEM_VARIABLE: u8 = 0;
const SCHEMA: u8 = 1;
const STATE_CHANGE: u8 = 2;

/// The tracking variables sluice keeps for itself on every connection; a client's own
/// values of these are remembered here instead of being carried.
pub const OWNED_VARIABLES: [&str; 3] = [
    "session_track_schema",
    "session_track_state_change",
    "session_track_system_variables",
];

/// One client's tracking settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    schema: bool,
    state_change: bool,
    /// `None`: every variable (`*`); otherwise lower-case names.
    variables: Option<Vec<String>>,
}

impl Default for Tracking {
    /// MariaDB 10.11's defaults, for servers that do not say theirs.
    fn default() -> Tracking {
        Tracking::from_values(
            "ON",
            "OFF",
            "autocommit,character_set_client,character_set_connection,character_set_results,time_zone",
        )
    }
}

impl Tracking {
    /// Settings from the three variables' values as the server shows them.
    pub fn from_values(schema: &str, state_change: &str, variables: &str) -> Tracking {
        let on = |v: &str| v == "1" || v.eq_ignore_ascii_case("ON");
        let names: Vec<String> = variables
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        Tracking {
            schema: on(schema),
            state_change: on(state_change),
            variables: (!names.iter().any(|n| n == "*")).then_some(names),
        }
    }

    /// Takes the client's new value of the tracking variable `OWNED_VARIABLES[index]`.
    pub fn set(&mut self, index: usize, value: &str) {
        let other = Tracking::from_values(value, value, value);
        match index {
            0 => self.schema = other.schema,
            1 => self.state_change = other.state_change,
            _ => self.variables = other.variables,
        }
    }

    /// Whether every entry sluice's tracking produces is one the client wants, so OK
    /// packets pass unchanged.
    pub fn wants_everything(&self) -> bool {
        self.schema && self.state_change && self.variables.is_none()
    }

    /// Whether an entry of type `kind` with `data` reports one of the variables `names`.
    pub fn names(kind: u8, data: &[u8], names: &[&[u8]]) -> bool {
        kind == SYSTEM_VARIABLE
            && !names.is_empty()
            && lenenc::read_bytes(data)
                .is_ok_and(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Whether an entry of type `kind` with `data` goes to the client.
    pub fn keeps(&self, kind: u8, data: &[u8]) -> bool {
        match kind {
            SCHEMA => self.schema,
            STATE_CHANGE => self.state_change,
            SYSTEM_VARIABLE => match &self.variables {
                None => true,
                Some(names) => lenenc::read_bytes(data).is_ok_and(|(name, _)| {
                    names
                        .iter()
                        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
                }),
            },
            // Transaction entries exist only when the client turned them on itself.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str) -> Vec<u8> {
        let mut data = Vec::new();
        lenenc::put_bytes(&mut data, name.as_bytes());
        lenenc::put_bytes(&mut data, b"x");
        data
    }

    #[test]
    fn defaults_keep_the_schema_and_five_variables() {
        let t = Tracking::default();
        assert!(!t.wants_everything());
        assert!(t.keeps(SCHEMA, b"\x04test"));
        assert!(!t.keeps(STATE_CHANGE, b"\x011"));
        assert!(t.keeps(SYSTEM_VARIABLE, &var("time_zone")));
        assert!(t.keeps(SYSTEM_VARIABLE, &var("AUTOCOMMIT")));
        assert!(!t.keeps(SYSTEM_VARIABLE, &var("sql_mode")));
        assert!(
            !t.keeps(SYSTEM_VARIABLE, b"\xff"),
            "malformed entries are dropped"
        );
    }

    #[test]
    fn a_client_can_ask_for_everything_or_nothing() {
        let all = Tracking::from_values("1", "ON", "*");
        assert!(all.wants_everything());
        let mut none = Tracking::from_values("0", "OFF", "");
        assert!(!none.keeps(SYSTEM_VARIABLE, &var("autocommit")));
        assert!(!none.keeps(SCHEMA, b"\x04test"));
        none.set(1, "ON");
        none.set(2, "sql_mode");
        assert!(none.keeps(STATE_CHANGE, b"\x011") && !none.keeps(SCHEMA, b"\x04test"));
        assert!(none.keeps(SYSTEM_VARIABLE, &var("sql_mode")));
    }
}
