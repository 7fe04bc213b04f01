//! Binary-protocol statements without pinning.
//!
//! A client's statement ids are sluice's. Each `COM_STMT_*` command is translated to the id
//! the statement has on whichever database connection the client holds at that moment; a
//! connection that lacks the statement prepares it first. What the server would remember per
//! connection — the parameter types last bound, long data sent before an execute — sluice
//! remembers per client and replays. Only an open cursor ties a client to its connection.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_protocol::prepared::{self, Execute, PrepareOk, BULK_SEND_UNIT_RESULTS};
use sluice_protocol::response::{self, ErrFields};
use sluice_protocol::{command, MariadbCapabilities, StatusFlags};

use super::{client_end, Accounting, End, Session};
use crate::backend::{BackendConn, BackendError, Prepared};
use crate::client::errors;
use crate::client::statement;
use crate::statements::{StatementKey, StatementMeta};

/// Most statements one client may hold open: the server's default `max_prepared_stmt_count`.
const MAX_CLIENT_STATEMENTS: usize = 16_382;

/// A statement one client prepared, and what the server would remember about it for them.
struct ClientStatement {
    meta: Arc<StatementMeta>,
    /// Parameter types the client bound last.
    types: Option<Arc<[u8]>>,
    /// `COM_STMT_SEND_LONG_DATA` chunks waiting for the next execute, in order.
    long_data: Vec<(u16, Vec<u8>)>,
    long_data_len: usize,
    /// Whether a cursor is open on the client's database connection.
    cursor: bool,
}

/// What an execute takes from the client's statement.
struct ExecuteParts<'a> {
    /// The client's statement id.
    id: u32,
    meta: Arc<StatementMeta>,
    /// The located `COM_STMT_EXECUTE` or `COM_STMT_BULK_EXECUTE`.
    execute: Execute<'a>,
    /// The parameter types the client bound last.
    types: Option<Arc<[u8]>>,
    /// Long data sent since the last execute, to replay first.
    long_data: Vec<(u16, Vec<u8>)>,
}

/// One client's statements, by the ids sluice gave them.
#[derive(Default)]
pub(super) struct ClientStatements {
    by_id: HashMap<u32, ClientStatement>,
    next_id: u32,
    last_prepared: Option<u32>,
    open_cursors: usize,
}

impl ClientStatements {
    /// Cursors open now; while there are any, the client keeps its database connection.
    pub(super) fn open_cursors(&self) -> usize {
        self.open_cursors
    }

    fn add(&mut self, meta: Arc<StatementMeta>) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        while self.by_id.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1).max(1);
        }
        let id = self.next_id;
        self.by_id.insert(
            id,
            ClientStatement {
                meta,
                types: None,
                long_data: Vec::new(),
                long_data_len: 0,
                cursor: false,
            },
        );
        self.last_prepared = Some(id);
        id
    }

    /// The client's id in `payload`, with MariaDB's "last prepared" id resolved.
    fn id_in(&self, payload: &[u8]) -> Result<u32, ErrFields> {
        let id = prepared::statement_id(payload).map_err(|e| errors::malformed(&e.to_string()))?;
        Ok(match (id, self.last_prepared) {
            (prepared::LAST_PREPARED_ID, Some(last)) => last,
            _ => id,
        })
    }

    /// The client's id in `payload` when it names a statement the client holds; the error
    /// for the client otherwise.
    fn known_id(&self, payload: &[u8]) -> Result<u32, ErrFields> {
        let id = self.id_in(payload)?;
        if self.by_id.contains_key(&id) {
            Ok(id)
        } else {
            Err(errors::unknown_statement(id, payload[0]))
        }
    }

    /// Whether the client holds a statement under `key`.
    fn holds(&self, key: &StatementKey) -> bool {
        self.by_id.values().any(|s| *s.meta.key == *key)
    }

    /// Records whether statement `id` has a cursor open; true when one was just opened.
    fn set_cursor(&mut self, id: u32, open: bool) -> bool {
        let Some(statement) = self.by_id.get_mut(&id) else {
            return false;
        };
        let opened = open && !statement.cursor;
        match (statement.cursor, open) {
            (false, true) => self.open_cursors += 1,
            (true, false) => self.open_cursors -= 1,
            _ => {}
        }
        statement.cursor = open;
        opened
    }
}

impl Session {
    /// COM_STMT_PREPARE: answered from the metadata cache when another client prepared the
    /// same statement, otherwise prepared on a database connection (which keeps it).
    pub(super) async fn stmt_prepare(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let reply_seq = seq.wrapping_add(1);
        // Until this prepare succeeds, MariaDB's "last prepared" id names no statement.
        self.statements.last_prepared = None;
        if self.statements.by_id.len() >= MAX_CLIENT_STATEMENTS {
            let err = errors::too_many_statements(MAX_CLIENT_STATEMENTS);
            return self.reply_err(reply_seq, &err).await;
        }
        let sql = &payload[1..];
        let analysis = statement::analyze(sql, self.backslash_escapes());
        if let Some(why) = analysis.refusal {
            return self
                .reply_err(reply_seq, &errors::not_preparable(why))
                .await;
        }
        if analysis.kill.is_some() {
            return self
                .reply_err(reply_seq, &errors::not_preparable("KILL"))
                .await;
        }
        if let Some(reason) = analysis.pin {
            // A lock or state taken when the statement runs stays on the connection.
            self.pin(reason);
        } else if analysis.unknown
            || analysis.temporary_variables
            || analysis.next_transaction
            || analysis.sets_tracking != 0
            || analysis.sets_last_insert_id
        {
            // Effects sluice accounts for only in the text protocol.
            self.pin("prepared_statement");
        }
        let rewritten = statement::rewrite(sql, &analysis, |_| None);
        let key = StatementKey::new(
            &self.identity.user,
            self.state.schema.as_deref(),
            self.collation,
            &self.state.vars,
            rewritten.as_deref().unwrap_or(sql),
        )
        .with_extended_metadata(
            self.mariadb_capabilities
                .contains(MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA),
        );
        // The cache answers for a client whose session adds nothing to what the server
        // checks at prepare time; a pinned client (LOCK TABLES), one in a transaction or a
        // read-only session gets the server's own answer.
        let read_only = self
            .state
            .vars
            .get("tx_read_only")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"));
        let cacheable = self.pin.is_none() && self.backend.is_none() && !read_only;
        if let Some(meta) = self.gateway.statements.get(&key).filter(|_| cacheable) {
            return self.prepare_from_cache(reply_seq, meta).await;
        }
        if let Err(err) = self.attach_backend().await {
            return self.reply_err(reply_seq, &err).await;
        }
        // Another client may have prepared it while this one waited for a connection.
        if let Some(meta) = self.gateway.statements.get(&key).filter(|_| cacheable) {
            self.release_if_free().await;
            return self.prepare_from_cache(reply_seq, meta).await;
        }
        let key = Arc::new(key);
        let prepared = match self.prepare_on_backend(&key).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(err)) => {
                // The server's error is in the diagnostics area, for the client's SHOW ERRORS.
                self.keep_diagnostics(true, None);
                self.release_if_free().await;
                return self.reply_err(reply_seq, &err).await;
            }
            Err(e) => return Err(self.lose_backend(reply_seq, e).await),
        };
        self.keep_diagnostics(prepared.ok.warnings > 0, None);
        self.release_if_free().await;
        let meta = Arc::new(StatementMeta {
            key,
            param_defs: prepared.param_defs,
            column_defs: prepared.column_defs,
            reads_last_insert_id: analysis.reads_last_insert_id,
            may_set_insert_id: Accounting::of(&analysis, &[]).may_set_insert_id,
        });
        self.gateway.statements.insert(meta.clone());
        let id = self.statements.add(meta.clone());
        self.send_prepare_reply(reply_seq, id, &meta, prepared.ok.warnings)
            .await
    }

    /// Answers a prepare with metadata another client's prepare left in the cache.
    async fn prepare_from_cache(&mut self, seq: u8, meta: Arc<StatementMeta>) -> Result<(), End> {
        self.gateway.metrics.statement_cache_hits.inc();
        let id = self.statements.add(meta.clone());
        self.send_prepare_reply(seq, id, &meta, 0).await
    }

    /// COM_STMT_EXECUTE and COM_STMT_BULK_EXECUTE on whatever connection the client gets.
    pub(super) async fn stmt_execute(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let reply_seq = seq.wrapping_add(1);
        let checked = self.execute_request(payload);
        let ExecuteParts {
            id,
            meta,
            execute,
            types: client_types,
            long_data,
        } = match checked {
            Ok(parts) => parts,
            Err(err) => return self.reply_err(reply_seq, &err).await,
        };
        if let Err(err) = self.attach_backend().await {
            return self.reply_err(reply_seq, &err).await;
        }
        // What the statement does to LAST_INSERT_ID(), as for a text query (classified
        // when it was prepared).
        let may_set = meta.may_set_insert_id;
        let insert_id = meta.reads_last_insert_id || may_set;
        let own = self.own_statements(insert_id, may_set && self.pin.is_none(), false);
        let accounting = Accounting {
            may_set_insert_id: may_set,
            pipelined: own.pipelined(),
            read_back: own.read_back(),
            ..Accounting::default()
        };
        let backend_id = match self.backend_statement(&meta.key).await {
            Ok(Ok(backend_id)) => backend_id,
            Ok(Err(err)) => {
                self.release_if_free().await;
                return self.reply_err(reply_seq, &err).await;
            }
            Err(e) => return Err(self.lose_backend(reply_seq, e).await),
        };
        let Some(lease) = self.backend.as_mut() else {
            return Err(End::Error("no database connection".into()));
        };
        let conn = lease.conn();
        let on_backend = conn.statements.get_mut(&meta.key);
        let bind = match (execute.types(), on_backend) {
            (None, Some(statement)) if statement.types != client_types => {
                statement.types.clone_from(&client_types);
                client_types.as_deref()
            }
            (Some(_), Some(statement)) => {
                statement.types.clone_from(&client_types);
                None
            }
            _ => None,
        };
        let packet = execute.rewrite(backend_id, bind);
        let cursor_requested = execute.opens_cursor();
        for (param, data) in &long_data {
            let mut long_seq = 0;
            conn.stream.queue_packet(
                &mut long_seq,
                &prepared::long_data_packet(backend_id, *param, data),
            );
        }
        let status = self.forward_accounted(seq, &packet, accounting).await?;
        if payload[0] == command::STMT_EXECUTE {
            let open = cursor_requested
                && status.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS));
            if self.statements.set_cursor(id, open) {
                self.count_pin("cursor");
            }
        }
        self.release_if_free().await;
        Ok(())
    }

    /// Checks an execute against the client's statements and takes what it needs: the
    /// statement id, its metadata, the parameter types bound last, the pending long data.
    /// The checks and their order are the server's.
    fn execute_request<'a>(&mut self, payload: &'a [u8]) -> Result<ExecuteParts<'a>, ErrFields> {
        let bulk = payload[0] == command::STMT_BULK_EXECUTE;
        if bulk {
            self.check_bulk(payload)?;
        } else if payload.len() < 10 {
            // command(1) id(4) flags(1) iteration count(4): the server's answer to less.
            return Err(errors::malformed_packet());
        }
        let id = self.statements.known_id(payload)?;
        let limit = self.gateway.settings().max_packet_size;
        let Some(statement) = self.statements.by_id.get_mut(&id) else {
            return Err(errors::unknown_statement(id, payload[0]));
        };
        let params = statement.meta.params();
        let execute = if bulk {
            // Types announced but missing: the server's 1835.
            Execute::parse_bulk(payload, params).map_err(|_| errors::malformed_packet())?
        } else {
            // Parameters missing for a statement that has some: the server's 1210.
            Execute::parse(payload, params).map_err(|_| errors::wrong_execute_arguments())?
        };
        if let Some(types) = execute.types() {
            // What the server keeps for later executes that bind none, bulk or not.
            statement.types = Some(Arc::from(types));
        }
        let long_data = std::mem::take(&mut statement.long_data);
        if std::mem::take(&mut statement.long_data_len) > limit {
            return Err(errors::packet_too_large(limit));
        }
        Ok(ExecuteParts {
            id,
            meta: statement.meta.clone(),
            execute,
            types: statement.types.clone(),
            long_data,
        })
    }

    /// Refuses a bulk execute as the server does before it looks at the statement: too
    /// short for its flags (1835), or from a client that did not negotiate bulk operations,
    /// or asking for per-row results without having negotiated them (1295). The database
    /// connection always negotiates both, so its own refusal cannot be relied on.
    fn check_bulk(&self, payload: &[u8]) -> Result<(), ErrFields> {
        let flags = prepared::bulk_flags(payload).ok_or_else(errors::malformed_packet)?;
        let negotiated = |capability| self.mariadb_capabilities.contains(capability);
        let refused = !negotiated(MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS)
            || (flags & BULK_SEND_UNIT_RESULTS != 0
                && !negotiated(MariadbCapabilities::MARIADB_CLIENT_BULK_UNIT_RESULTS));
        if refused {
            return Err(errors::unsupported_ps());
        }
        Ok(())
    }

    /// COM_STMT_SEND_LONG_DATA: kept until the execute (the server answers nothing, and
    /// reports problems at the execute, as sluice does).
    pub(super) fn stmt_send_long_data(&mut self, payload: &[u8]) {
        let limit = self.gateway.settings().max_packet_size;
        let Ok((id, param, data)) = prepared::parse_long_data(payload) else {
            return;
        };
        let id = match (id, self.statements.last_prepared) {
            (prepared::LAST_PREPARED_ID, Some(last)) => last,
            _ => id,
        };
        let Some(statement) = self.statements.by_id.get_mut(&id) else {
            return;
        };
        statement.long_data_len = statement.long_data_len.saturating_add(data.len());
        if statement.long_data_len > limit {
            // Reported at the execute; nothing more is buffered.
            statement.long_data.clear();
            return;
        }
        match statement.long_data.last_mut() {
            Some((last, chunk)) if *last == param => chunk.extend_from_slice(data),
            _ => statement.long_data.push((param, data.to_vec())),
        }
    }

    /// COM_STMT_CLOSE: forgets the client's statement (no reply). The database connections
    /// keep their copies for other clients; an open cursor is closed.
    pub(super) async fn stmt_close(&mut self, payload: &[u8]) -> Result<(), End> {
        let Ok(id) = self.statements.id_in(payload) else {
            return Ok(());
        };
        self.statements.set_cursor(id, false);
        let Some(statement) = self.statements.by_id.remove(&id) else {
            return Ok(());
        };
        if statement.cursor {
            self.close_backend_cursor(&statement.meta.key).await?;
        }
        self.release_if_free().await;
        Ok(())
    }

    /// COM_STMT_RESET: drops pending long data, and closes an open cursor on the database.
    pub(super) async fn stmt_reset(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let reply_seq = seq.wrapping_add(1);
        let id = match self.statements.known_id(payload) {
            Ok(id) => id,
            Err(err) => return self.reply_err(reply_seq, &err).await,
        };
        let Some(statement) = self.statements.by_id.get_mut(&id) else {
            return Ok(());
        };
        statement.long_data.clear();
        statement.long_data_len = 0;
        let (cursor, key) = (statement.cursor, statement.meta.key.clone());
        if cursor {
            self.statements.set_cursor(id, false);
            self.close_backend_cursor(&key).await?;
            self.release_if_free().await;
        }
        let mut reply_seq = reply_seq;
        self.send_ok(&mut reply_seq).await.map_err(client_end)
    }

    /// COM_STMT_FETCH: rows from the cursor open on the client's (pinned) connection.
    pub(super) async fn stmt_fetch(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let reply_seq = seq.wrapping_add(1);
        let id = match self.statements.known_id(payload) {
            Ok(id) => id,
            Err(err) => return self.reply_err(reply_seq, &err).await,
        };
        let Some(statement) = self.statements.by_id.get(&id) else {
            return Ok(());
        };
        let key = statement.meta.key.clone();
        let backend_id = match (statement.cursor, self.backend.as_mut()) {
            (true, Some(lease)) => lease.conn().statements.get_mut(&key).map(|s| s.id),
            _ => None,
        };
        let Some(backend_id) = backend_id else {
            let err = errors::no_open_cursor(id);
            return self.reply_err(reply_seq, &err).await;
        };
        let packet = prepared::with_statement_id(payload, backend_id)
            .map_err(|e| End::Error(e.to_string()))?;
        let status = self.forward_unreleased(seq, &packet).await?;
        let open = status.is_some_and(|s| {
            s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS)
                && !s.contains(StatusFlags::SERVER_STATUS_LAST_ROW_SENT)
        });
        if !open {
            self.statements.set_cursor(id, false);
        }
        self.release_if_free().await;
        Ok(())
    }

    /// Forgets every statement: the client reset its session or changed user.
    pub(super) fn forget_statements(&mut self) {
        // Ids are not reused, as on the server: an id held from before a reset or change of
        // user must get 1243, not name a statement prepared since.
        let next_id = self.statements.next_id;
        self.statements = ClientStatements {
            next_id,
            ..ClientStatements::default()
        };
    }

    /// The id of `key` on the held connection, preparing it there first if needed. The
    /// server's error (e.g. a table dropped since) comes back inside.
    async fn backend_statement(
        &mut self,
        key: &Arc<StatementKey>,
    ) -> Result<Result<u32, ErrFields>, BackendError> {
        let gateway = self.gateway.clone();
        let (conn, held) = self.held_connection()?;
        let spare = |key: &StatementKey| held.holds(key);
        let found = conn.statement_id(key, &gateway.keeping(&spare)).await?;
        Ok(found.map(|(id, _params)| id))
    }

    /// Prepares `key` on the held connection, which keeps it.
    async fn prepare_on_backend(
        &mut self,
        key: &Arc<StatementKey>,
    ) -> Result<Result<Prepared, ErrFields>, BackendError> {
        let gateway = self.gateway.clone();
        let (conn, held) = self.held_connection()?;
        let spare = |key: &StatementKey| held.holds(key);
        conn.prepare_kept(key, &gateway.keeping(&spare)).await
    }

    /// The held connection, and the client's statements: those never give way on it to
    /// make room at the server's `max_prepared_stmt_count`.
    fn held_connection(&mut self) -> Result<(&mut BackendConn, &ClientStatements), BackendError> {
        match self.backend.as_mut() {
            Some(lease) => Ok((lease.conn(), &self.statements)),
            None => Err(BackendError::Protocol(
                sluice_protocol::ProtocolError::Malformed("no database connection held"),
            )),
        }
    }

    /// Closes the cursor of `key` on the held connection (COM_STMT_RESET there).
    async fn close_backend_cursor(&mut self, key: &StatementKey) -> Result<(), End> {
        let Some(lease) = self.backend.as_mut() else {
            return Ok(());
        };
        let conn = lease.conn();
        let Some(backend_id) = conn.statements.get_mut(key).map(|s| s.id) else {
            return Ok(());
        };
        if let Err(e) = conn
            .simple_command(&prepared::reset_packet(backend_id))
            .await
        {
            // The client is owed no reply here; the broken connection is dropped.
            tracing::warn!(error = %e, "database connection lost while closing a cursor");
            drop(self.backend.take());
        }
        Ok(())
    }

    /// The reply to a prepare, as the server would send it, carrying the client's id.
    async fn send_prepare_reply(
        &mut self,
        mut seq: u8,
        id: u32,
        meta: &StatementMeta,
        warnings: u16,
    ) -> Result<(), End> {
        let ok = PrepareOk {
            statement_id: id,
            columns: meta.column_defs.len() as u16,
            params: meta.params(),
            warnings,
        };
        let eof = (!self.flavor().deprecate_eof())
            .then(|| response::encode_eof(self.capabilities, self.status));
        self.stream.queue_packet(&mut seq, &ok.encode());
        for defs in [&meta.param_defs, &meta.column_defs] {
            for def in defs.iter() {
                self.stream.queue_packet(&mut seq, def);
            }
            if let (false, Some(eof)) = (defs.is_empty(), &eof) {
                self.stream.queue_packet(&mut seq, eof);
            }
        }
        self.stream.flush().await.map_err(client_end)
    }
}
