//! The database connection a request works on: a fresh one from the shared pool, or the
//! one its transaction holds; and how it is handed back afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use super::auth::Caller;
use super::envelope::{ApiError, Status};
use super::statement::{Outcome, RunError};
use super::transactions::Transaction;
use super::Api;
use crate::backend::{BackendConn, Flavor, ServerInfo};
use crate::diagnostics::Owner;
use crate::pool::{Lease, SessionError, WantedSession};

/// A connection in use by one request.
pub enum Held {
    /// Borrowed from the pool for this request only.
    Fresh(Lease),
    /// The transaction's connection, locked for this request.
    InTransaction {
        /// The transaction id.
        id: String,
        /// The transaction.
        transaction: Arc<Transaction>,
        /// Keeps other requests on this transaction waiting.
        guard: OwnedMutexGuard<Option<Lease>>,
        /// The connection, put back into `guard` when done.
        lease: Lease,
    },
}

/// The state a request leaves its connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// As it was: no open transaction, no session change.
    Clean,
    /// Possibly changed (or unknown after an error): reset before reuse.
    Dirty,
    /// Broken: close it.
    Broken,
}

impl After {
    /// The verdict for a statement's result.
    pub fn of(result: &Result<Outcome, RunError>) -> After {
        match result {
            Ok(outcome) if outcome.left_clean() => After::Clean,
            Ok(_) | Err(RunError::Refused(_)) => After::Dirty,
            Err(RunError::Broken(_)) => After::Broken,
        }
    }
}

impl Held {
    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        match self {
            Held::Fresh(lease) | Held::InTransaction { lease, .. } => lease.conn(),
        }
    }

    /// The connection itself, for a caller that ends its transaction.
    pub fn into_lease(self) -> Lease {
        match self {
            Held::Fresh(lease) | Held::InTransaction { lease, .. } => lease,
        }
    }

    /// Hands the connection back: to the pool (reset when `after` says so) or to its
    /// transaction. A broken connection is closed, ending its transaction.
    pub async fn finish(self, api: &Api, after: After) {
        match (self, after) {
            (Held::Fresh(lease), After::Clean) => api.gateway.pool.release(lease),
            (Held::Fresh(lease), After::Dirty) => api.gateway.pool.give_back(lease).await,
            (Held::Fresh(lease), After::Broken) => drop(lease),
            (Held::InTransaction { id, lease, .. }, After::Broken) => {
                drop(lease);
                api.transactions.remove(&id);
            }
            (
                Held::InTransaction {
                    transaction,
                    mut guard,
                    lease,
                    ..
                },
                _,
            ) => {
                *guard = Some(lease);
                transaction.touch();
            }
        }
    }
}

impl Api {
    /// The connection for a request: its transaction's when `transaction_id` is given,
    /// otherwise a fresh one on `database`.
    pub async fn acquire(
        &self,
        caller: &Caller,
        database: Option<&str>,
        transaction_id: Option<&str>,
    ) -> Result<Held, ApiError> {
        let Some(id) = transaction_id else {
            return Ok(Held::Fresh(self.borrow(caller, database).await?));
        };
        let transaction = self.transactions.get(id, &caller.name)?;
        if database.is_some() && database != transaction.database.as_deref() {
            return Err(ApiError::bad_request(format!(
                "transaction {id} works in database {:?}; leave \"database\" out or name that one",
                transaction.database.as_deref().unwrap_or("(default)")
            )));
        }
        let mut guard = transaction.lease.clone().lock_owned().await;
        let Some(lease) = guard.take() else {
            self.transactions.remove(id);
            return Err(ApiError::new(
                Status::Expired,
                format!("transaction {id} has ended: its database connection was lost"),
            ));
        };
        Ok(Held::InTransaction {
            id: id.to_owned(),
            transaction,
            guard,
            lease,
        })
    }

    /// A connection from the shared pool on `database` (the backend's default when `None`),
    /// with the Data API's session: no variables but the statement timeout.
    pub async fn borrow(&self, caller: &Caller, database: Option<&str>) -> Result<Lease, ApiError> {
        let pool = &self.gateway.pool;
        let database = database.or(pool.target().database.as_deref());
        caller.check_database(database)?;
        let server = pool.server_info().await?;
        let wanted = WantedSession {
            schema: database,
            vars: self.session_vars(&server),
            multi_statements: None,
            owner: Owner::fresh(),
            lane: &caller.identity.lane,
            borrows: &self
                .gateway
                .metrics
                .users
                .borrows(&caller.identity.backend.user),
        };
        match pool
            .borrow_for(&caller.identity.backend, Flavor::INTERNAL, &wanted)
            .await
        {
            Ok(lease) => Ok(lease),
            Err(SessionError::Borrow(e)) => Err(e.into()),
            Err(SessionError::Refused(err)) => Err(ApiError::database(&err)),
            Err(SessionError::Lost(e)) => Err(ApiError::broken(&e)),
        }
    }

    /// The session variables every Data API statement runs under: the statement timeout,
    /// in the server's own variable.
    fn session_vars(&self, server: &ServerInfo) -> &BTreeMap<String, String> {
        if server.version.contains("MariaDB") {
            &self.vars_mariadb
        } else {
            &self.vars_mysql
        }
    }
}
