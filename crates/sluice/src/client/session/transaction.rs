//! Transaction characteristics (`SET TRANSACTION`, `START TRANSACTION READ ONLY`) that
//! outlive the statement that set them, as MariaDB keeps them on its connection.

use std::collections::BTreeMap;

/// The session variables that give a transaction its access mode and isolation level.
const TRANSACTION_DEFAULTS: [&str; 4] = [
    "tx_read_only",
    "tx_isolation",
    "transaction_read_only",
    "transaction_isolation",
];

/// A session's default access mode and isolation level, as carried.
pub(super) type Defaults = [Option<String>; 4];

/// The defaults in `vars` (the client's carried session variables).
pub(super) fn defaults(vars: &BTreeMap<String, String>) -> Defaults {
    TRANSACTION_DEFAULTS.map(|name| vars.get(name).cloned())
}

/// Where a client's one-shot transaction characteristics are in their life on the held
/// connection. In any state but `None` the client keeps its connection.
///
/// Characteristics a `SET TRANSACTION` left for the next transaction stay on the connection
/// until a transaction has used them. Only a transaction seen to begin and end is sure to
/// have: MariaDB keeps them across `SELECT 1`, `SHOW`, `USE`, `DO` and `SET`, and across
/// statements on non-transactional tables. A transaction under characteristics (those, or
/// `START TRANSACTION READ ONLY`) that `SET autocommit = 1` ends leaves them in force until
/// an explicit `COMMIT` or `ROLLBACK`, even across `START TRANSACTION`; a one-shot isolation
/// level outlives even that, so the connection is reset before anyone else gets it. So do
/// the access mode and isolation level of any transaction `SET autocommit = 1` ends, which
/// matters when the session's defaults changed while it was open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextTransaction {
    /// None pending.
    None,
    /// Set, and no transaction seen yet.
    Pending,
    /// A transaction under them is open.
    Begun,
    /// Their transaction ended without `COMMIT` or `ROLLBACK`: still in force.
    Lingering,
}

impl NextTransaction {
    /// The state after a statement that succeeded: `sets` when it was a `SET TRANSACTION`,
    /// `starts` when it was a `START TRANSACTION` with an access mode, `in_transaction` from
    /// its status flags.
    pub(super) fn after(self, sets: bool, starts: bool, in_transaction: bool) -> NextTransaction {
        use NextTransaction::{Begun, Lingering, None, Pending};
        match (self, sets, in_transaction) {
            (Lingering, ..) => Lingering,
            (_, true, _) => Pending,
            (_, false, true) if starts => Begun,
            (None, false, _) => None,
            (_, false, true) => Begun,
            (Begun, false, false) => None,
            (Pending, false, false) => Pending,
        }
    }

    /// The state after a statement that ended the transaction without `COMMIT` or
    /// `ROLLBACK`, from the state before it (`was`): `SET autocommit = 1` (`by_autocommit`:
    /// the statement turned autocommit on) leaves the transaction's characteristics in
    /// force, which differ from the session's when it had its own or when the session's
    /// defaults changed while it was open (`defaults_changed`); the implicit commit of DDL
    /// clears them.
    pub(super) fn ended_implicitly(
        was: NextTransaction,
        by_autocommit: bool,
        defaults_changed: bool,
    ) -> NextTransaction {
        if by_autocommit && (was == NextTransaction::Begun || defaults_changed) {
            NextTransaction::Lingering
        } else {
            NextTransaction::None
        }
    }

    /// The state after an explicit `COMMIT` or `ROLLBACK` that succeeded; `true` when
    /// characteristics were lingering, so the connection must be reset before it goes.
    pub(super) fn ended_explicitly(self) -> (NextTransaction, bool) {
        match self {
            NextTransaction::Lingering => (NextTransaction::None, true),
            other => (other, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NextTransaction::{self, Begun, Lingering, Pending};

    #[test]
    fn set_transaction_characteristics_live_until_a_transaction_used_them() {
        let none = NextTransaction::None;
        assert_eq!(none.after(false, false, false), none);
        assert_eq!(
            none.after(false, false, true),
            none,
            "ordinary transactions"
        );
        assert_eq!(none.after(true, false, false), Pending);
        // SELECT 1, SHOW, USE, SET: no transaction seen, still pending.
        assert_eq!(Pending.after(false, false, false), Pending);
        assert_eq!(Pending.after(false, false, true), Begun);
        assert_eq!(Begun.after(false, false, true), Begun);
        assert_eq!(Begun.after(false, false, false), none);
        assert_eq!(
            Begun.after(true, false, true),
            Pending,
            "set again inside (MariaDB refuses)"
        );
    }

    #[test]
    fn start_transaction_read_only_is_a_transaction_under_characteristics() {
        let none = NextTransaction::None;
        assert_eq!(none.after(false, true, true), Begun);
        assert_eq!(
            none.after(false, true, false),
            none,
            "refused: no transaction"
        );
    }

    #[test]
    fn characteristics_ended_by_autocommit_linger_until_commit_or_rollback() {
        let none = NextTransaction::None;
        assert_eq!(
            NextTransaction::ended_implicitly(Begun, true, false),
            Lingering
        );
        assert_eq!(
            NextTransaction::ended_implicitly(Begun, false, true),
            none,
            "DDL"
        );
        assert_eq!(NextTransaction::ended_implicitly(none, true, false), none);
        assert_eq!(
            NextTransaction::ended_implicitly(none, true, true),
            Lingering,
            "SET SESSION tx_read_only = 1 inside, then SET autocommit = 1"
        );
        // START TRANSACTION, statements, SET TRANSACTION: still in force.
        assert_eq!(Lingering.after(false, true, true), Lingering);
        assert_eq!(Lingering.after(true, false, false), Lingering);
        assert_eq!(Lingering.ended_explicitly(), (none, true));
        assert_eq!(Begun.ended_explicitly(), (Begun, false));
    }
}
