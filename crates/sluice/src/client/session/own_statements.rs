//! sluice's own statements around a client's, in the same write: the client's
//! `LAST_INSERT_ID()` put on the connection before, and read back after together with the
//! diagnostics area's size, which decides whether the client keeps its connection.

use tracing::warn;

use super::{End, Session};
use crate::backend::first_value;
use crate::client::relay::Pipelined;
use crate::diagnostics::Owner;

/// What sluice reads right after a client's statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadBack {
    /// `LAST_INSERT_ID()`, which the statement may have changed.
    InsertId,
    /// `@@warning_count`: whether the diagnostics area still holds the client's warnings
    /// or error (statements without tables leave it as it was).
    Warnings,
    /// Both.
    Both,
}

impl ReadBack {
    fn of(insert_id: bool, warnings: bool) -> Option<ReadBack> {
        match (insert_id, warnings) {
            (true, true) => Some(ReadBack::Both),
            (true, false) => Some(ReadBack::InsertId),
            (false, true) => Some(ReadBack::Warnings),
            (false, false) => None,
        }
    }

    /// The statement; it uses no table, so it leaves the diagnostics area alone.
    fn sql(self) -> &'static str {
        match self {
            ReadBack::InsertId => READ_INSERT_ID,
            ReadBack::Warnings => "SELECT @@warning_count",
            ReadBack::Both => "SELECT LAST_INSERT_ID(), @@warning_count",
        }
    }
}

/// Reads the connection's `LAST_INSERT_ID()`.
const READ_INSERT_ID: &str = "SELECT LAST_INSERT_ID()";

/// sluice's statements around one client statement.
#[derive(Debug, Default)]
pub(super) struct OwnStatements {
    /// Puts the client's `LAST_INSERT_ID()` on the connection first.
    put: Option<String>,
    /// Read `LAST_INSERT_ID()` back right after the statement.
    read_insert_id: bool,
    /// Read `@@warning_count` back right after the statement.
    read_warnings: bool,
}

impl OwnStatements {
    /// What is read back after the client's statement.
    pub(super) fn read_back(&self) -> Option<ReadBack> {
        ReadBack::of(self.read_insert_id, self.read_warnings)
    }

    /// The statements to send with the client's.
    pub(super) fn pipelined(&self) -> Pipelined<'_> {
        Pipelined {
            before: self.put.as_deref(),
            after: self.read_back().map(ReadBack::sql),
        }
    }
}

impl Session {
    /// What goes with a client statement on the held connection. For one that reads or may
    /// change `LAST_INSERT_ID()` (`insert_id`): the client's value put there first if the
    /// server holds someone else's, and (`read_insert_id`) the value read back afterwards.
    /// While the client keeps its connection for its warnings, `@@warning_count` is read
    /// back too (not after `LOAD DATA LOCAL`, whose reply asks the client for a file, nor
    /// for a pinned client, whose `FOUND_ROWS()` a `SELECT` would overwrite).
    pub(super) fn own_statements(
        &mut self,
        insert_id: bool,
        read_insert_id: bool,
        reads_client_file: bool,
    ) -> OwnStatements {
        let owner = self.insert_owner;
        let value = self.state.last_insert_id;
        let read_warnings = self.keeps_diagnostics && self.pin.is_none() && !reads_client_file;
        let Some(lease) = self.backend.as_mut() else {
            return OwnStatements::default();
        };
        let conn = lease.conn();
        // A SET, not `DO LAST_INSERT_ID(n)`: a statement would use up characteristics a
        // `SET TRANSACTION` left for the next transaction.
        let put = (insert_id && conn.last_insert_id_of != Some(owner))
            .then(|| format!("SET @@session.last_insert_id = {value}"));
        if insert_id {
            conn.last_insert_id_of = Some(owner);
        }
        OwnStatements {
            put,
            read_insert_id: insert_id && read_insert_id,
            read_warnings,
        }
    }

    /// Reads the reply to `read_back`, sent after the client's statement. Returns whether
    /// the diagnostics area holds something, when that was read.
    pub(super) async fn read_back(&mut self, read_back: ReadBack) -> Result<Option<bool>, End> {
        let Some(lease) = self.backend.as_mut() else {
            return Ok(None);
        };
        let rows = match lease.conn().read_text_rows().await {
            Ok(Ok(rows)) => rows,
            Ok(Err(err)) => {
                warn!(error = %err, "could not read {}", read_back.sql());
                return Ok(None);
            }
            Err(e) => return Err(self.broken_after_reply(e)),
        };
        let row = rows.into_iter().next().unwrap_or_default();
        let number = |index: usize| {
            row.get(index)
                .and_then(|value| value.as_deref()?.parse::<u64>().ok())
        };
        let warnings = match read_back {
            ReadBack::InsertId => None,
            ReadBack::Warnings => number(0),
            ReadBack::Both => number(1),
        };
        if read_back != ReadBack::Warnings {
            if let Some(id) = number(0) {
                self.learn_insert_id(id);
                self.insert_id_unsettled = false;
            }
        }
        Ok(warnings.map(|count| count > 0))
    }

    /// Takes `id`, read on the held connection, as the client's `LAST_INSERT_ID()`. A new
    /// value gets a new name, held by this connection only.
    fn learn_insert_id(&mut self, id: u64) {
        if id == self.state.last_insert_id {
            return;
        }
        self.state.last_insert_id = id;
        self.insert_owner = Owner::fresh();
        if let Some(lease) = self.backend.as_mut() {
            lease.conn().last_insert_id_of = Some(self.insert_owner);
        }
    }

    /// Reads the client's `LAST_INSERT_ID()` from the held connection when a statement may
    /// have changed it, so it can be answered wherever the client goes next.
    pub(super) async fn settle_insert_id(&mut self) {
        if !std::mem::take(&mut self.insert_id_unsettled) {
            return;
        }
        let Some(lease) = self.backend.as_mut() else {
            return;
        };
        let conn = lease.conn();
        if conn.last_insert_id_of != Some(self.insert_owner) {
            return;
        }
        match conn.query_text(READ_INSERT_ID).await {
            Ok(Ok(rows)) => {
                if let Some(id) = first_value(&rows) {
                    self.learn_insert_id(id);
                }
            }
            Ok(Err(err)) => warn!(error = %err, "could not read LAST_INSERT_ID()"),
            Err(e) => {
                warn!(error = %e, "database connection lost reading LAST_INSERT_ID()");
                drop(self.backend.take());
                self.registration.handle.backend.set(0);
            }
        }
    }

    /// Whether the client keeps its connection for its warnings after a command that
    /// `raised` conditions or not; `holds` is whether the diagnostics area still holds
    /// something, when that was read back (otherwise it is as before the command).
    pub(super) fn keep_diagnostics(&mut self, raised: bool, holds: Option<bool>) {
        let hold = !self.gateway.settings().diagnostics_hold.is_zero();
        self.keeps_diagnostics = hold && (raised || holds.unwrap_or(self.keeps_diagnostics));
    }
}
