//! The auth query: a user's accounts, read from the database through sluice's own login.
//!
//! Like PgBouncer's `auth_query`: the `[backend]` account (the auth account) runs
//! `auth.query` with the client's user name bound to its one `?`, on a pooled connection
//! (so it counts against the one budget), prepared once per connection. Each row is one
//! `user@host` account: host, authentication plugin, stored hash. On MariaDB 10.4+ the auth
//! account needs only `GRANT SELECT ON mysql.global_priv`.

use std::sync::Arc;

use mysql_common::Value;
use tracing::{error, warn};

use super::accounts::Account;
use super::cache::{Directory, LookupFailed};
use crate::backend::{BackendConn, Keeping};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::statements::StatementKey;

/// Most accounts kept for one user name: a name has a handful (one per host pattern);
/// further rows are ignored.
const MAX_ACCOUNTS: usize = 64;

/// The database as a [`Directory`] of accounts.
pub struct AuthQuery {
    pool: Pool,
    /// The query, as the statement every connection keeps prepared.
    statement: Arc<StatementKey>,
    /// `pool.max_prepared_statements`: the per-connection cap the statement counts in.
    capacity: usize,
    metrics: Metrics,
}

impl AuthQuery {
    /// Reads accounts with `sql` through `pool`'s own login.
    pub fn new(pool: Pool, sql: &str, capacity: usize, metrics: Metrics) -> AuthQuery {
        let statement = StatementKey::new(
            &pool.target().user,
            None,
            crate::backend::Flavor::INTERNAL.collation,
            &Default::default(),
            sql.as_bytes(),
        );
        AuthQuery {
            pool,
            statement: Arc::new(statement),
            capacity,
            metrics,
        }
    }

    /// Runs the query for `user` on `conn`: its rows, or why there are none. `Err(None)`
    /// means the connection broke and must not be reused.
    async fn run(
        &self,
        conn: &mut BackendConn,
        user: &str,
    ) -> Result<Vec<Vec<Option<String>>>, Option<String>> {
        let broken = |e: crate::backend::BackendError| {
            warn!(error = %e, "the auth query's database connection failed");
            None
        };
        let kept = conn
            .statements
            .get_mut(&self.statement)
            .map(|s| (s.id, s.params));
        let (id, params) = match kept {
            Some(kept) => kept,
            None => match conn
                .prepare_kept(
                    &self.statement,
                    &Keeping {
                        capacity: self.capacity,
                        metrics: &self.metrics,
                        pool: &self.pool,
                        spare: &Keeping::spare_none,
                    },
                )
                .await
                .map_err(broken)?
            {
                Ok(prepared) => (prepared.ok.statement_id, prepared.ok.params),
                Err(refused) => return Err(Some(refused.to_string())),
            },
        };
        if params != 1 {
            return Err(Some(format!(
                "auth.query has {params} placeholders; it takes one, the user name"
            )));
        }
        let user = Value::Bytes(user.as_bytes().to_vec());
        let rows = conn.execute_rows(id, &[user]).await.map_err(broken)?;
        // The types this execute bound are not those a client's execute of the same
        // statement would rely on (see `BackendStatement::types`).
        if let Some(statement) = conn.statements.get_mut(&self.statement) {
            statement.types = None;
        }
        match rows {
            Ok(rows) => Ok(rows),
            Err(refused) => Err(Some(refused.to_string())),
        }
    }
}

impl Directory for AuthQuery {
    async fn accounts(&self, user: &str) -> Result<Vec<Account>, LookupFailed> {
        let mut lease = self.pool.borrow_internal().await.map_err(|e| {
            warn!(error = %e, %user, "no database connection to run the auth query on");
            LookupFailed
        })?;
        let rows = match self.run(lease.conn(), user).await {
            Ok(rows) => rows,
            // Dropping the lease closes the broken connection.
            Err(None) => return Err(LookupFailed),
            Err(Some(why)) => {
                // The statement runs on the session as it was, so the connection goes back
                // as it is; the cause is the operator's to fix (a grant, the query).
                self.pool.release(lease);
                error!(
                    %user,
                    error = %why,
                    "the auth query failed: check auth.query and that the [backend] account may run it (on MariaDB: GRANT SELECT ON mysql.global_priv)"
                );
                return Err(LookupFailed);
            }
        };
        self.pool.release(lease);
        if rows.first().is_some_and(|row| row.len() < 3) {
            error!(
                columns = rows[0].len(),
                "auth.query must return host, plugin and stored hash, in that order"
            );
            return Err(LookupFailed);
        }
        if rows.len() > MAX_ACCOUNTS {
            warn!(%user, rows = rows.len(), kept = MAX_ACCOUNTS, "the auth query returned more accounts than sluice keeps for one name");
        }
        Ok(rows
            .iter()
            .take(MAX_ACCOUNTS)
            .map(|row| {
                Account::new(
                    row[0].as_deref().unwrap_or(""),
                    row[1].as_deref(),
                    row[2].as_deref(),
                )
            })
            .collect())
    }
}
