//! Whose conditions a database connection's diagnostics area may hold.
//!
//! The server keeps a session's warnings, notes and last error until the next statement
//! that raises conditions of its own or uses a table; `SHOW WARNINGS`, `SHOW ERRORS`,
//! `GET DIAGNOSTICS` and `@@warning_count` read them. They carry data ("Duplicate entry
//! 'alice@example.com' for key 'email'"), so on a pooled connection they are session state
//! like any other: a client must never read another's. Each connection records whose
//! conditions it may hold; a borrower who is someone else has them emptied first (see
//! [`CLEAR_DIAGNOSTICS`]), which costs a round trip only after conditions were raised.

use std::sync::atomic::{AtomicU64, Ordering};

/// Empties the diagnostics area: a statement that uses a table (a derived one, so it needs
/// no privilege and reads nothing) and raises nothing. MariaDB leaves the area alone for
/// statements without tables (`DO 1`, `SELECT 1`, `SET`), which is also why sluice's own
/// session statements (`SET`, `SELECT LAST_INSERT_ID()`) do not disturb a client's.
pub const CLEAR_DIAGNOSTICS: &str = "DO (SELECT 1 FROM (SELECT 1) AS sluice_clear_diagnostics)";

/// Someone whose session state a connection may hold: a client session, a Data API
/// request, or sluice itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(u64);

impl Owner {
    /// sluice's own statements (auth queries, kills, probes).
    pub const SLUICE: Owner = Owner(u64::MAX);

    /// An owner no one has been before: sessions take a new one each time they start over.
    pub fn fresh() -> Owner {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Owner(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One connection's diagnostics area, as far as sluice knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnostics {
    /// Whose conditions the area may hold (`None`: it is empty).
    holder: Option<Owner>,
    /// Whom the connection works for now; conditions raised are theirs.
    serving: Owner,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Diagnostics {
            holder: None,
            serving: Owner::SLUICE,
        }
    }
}

impl Diagnostics {
    /// A reply raised conditions (an error, warnings or notes): they belong to whoever the
    /// connection serves.
    pub fn raised(&mut self) {
        self.holder = Some(self.serving);
    }

    /// The server emptied the area (a reset, a change of user, [`CLEAR_DIAGNOSTICS`]).
    pub fn emptied(&mut self) {
        self.holder = None;
    }

    /// The connection starts serving `owner`. True when the area may hold someone else's
    /// conditions, which must be emptied before `owner` runs anything.
    pub fn serve(&mut self, owner: Owner) -> bool {
        self.serving = owner;
        self.holder.is_some_and(|holder| holder != owner)
    }

    /// The connection went back to the pool: until the next borrower, what it runs is
    /// sluice's.
    pub fn returned(&mut self) {
        self.serving = Owner::SLUICE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_owner_finds_the_area_emptied_and_the_raiser_finds_its_own() {
        let (alice, bob) = (Owner::fresh(), Owner::fresh());
        assert_ne!(alice, bob);
        let mut area = Diagnostics::default();
        assert!(!area.serve(alice), "a fresh connection holds nothing");
        area.raised();
        area.returned();
        assert!(!area.serve(alice), "alice may read her own warnings");
        area.returned();
        assert!(area.serve(bob), "bob must not read alice's");
        area.emptied();
        assert!(
            !area.serve(alice),
            "emptied for bob, nothing of alice's is left"
        );
    }

    #[test]
    fn conditions_raised_between_borrowers_are_sluice_s() {
        let alice = Owner::fresh();
        let mut area = Diagnostics::default();
        area.serve(alice);
        area.returned();
        area.raised(); // say, a KILL of a thread that is gone
        assert!(
            area.serve(alice),
            "sluice's own errors are emptied for a client"
        );
        area.emptied();
        area.raised();
        assert!(!area.serve(alice), "raised while serving alice: hers");
    }
}
