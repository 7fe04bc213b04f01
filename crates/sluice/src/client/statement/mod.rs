//! What a client's SQL text will do to its session, decided before it runs.
//!
//! A multiplexing proxy may hand a connection to another client only when it can account for
//! every change the last one made. The server's session tracking is one witness, but not a
//! complete one: MariaDB does not report `SET @@name = value`, a `SET TRANSACTION` for the
//! next transaction, named locks or `LAST_INSERT_ID(expr)`, and a procedure can change
//! things it reports only in part. So every statement is classified first:
//!
//! - **known**: plain queries, DML, DDL, transaction control, `USE`, and `SET` forms sluice
//!   parses. Their effect on the session is carried (`SET` of a session variable without a
//!   scope is rewritten to `@@session.name`, a form the server reports);
//! - **pinning**: state that cannot follow the client (temporary tables, user variables,
//!   `GET_LOCK`, `LOCK TABLES`, SQL `PREPARE`, `CALL`, anonymous compound statements,
//!   `HANDLER`, XA, ...), with the reason counted;
//! - **unknown**: anything else; a state change the server reports after it pins.
//!
//! `KILL` never reaches the server as a client typed it: a lone `KILL` statement is carried
//! out by sluice on its own client ids, and `KILL` anywhere else (a multi-statement query,
//! dynamic SQL text, a stored program's body) is refused.

mod lexer;

use std::ops::Range;

use lexer::{is_ident_byte, unquoted, Kind, Lexer, Token};

/// A zero-argument function whose value depends on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFunction {
    /// `LAST_INSERT_ID()`
    LastInsertId,
    /// `ROW_COUNT()`
    RowCount,
    /// `FOUND_ROWS()`
    FoundRows,
    /// `CONNECTION_ID()`
    ConnectionId,
}

impl SessionFunction {
    /// The client's `value` of this function as SQL that the server types as it types the
    /// call itself (an `IF` whose other branch, never taken, is the call): a bare literal
    /// would change the result's column definition (`-1` is a 2-digit `LONG`, `ROW_COUNT()`
    /// a 21-digit `LONGLONG`), which drivers read.
    pub fn typed(self, value: impl std::fmt::Display) -> String {
        match self {
            SessionFunction::LastInsertId => {
                format!("IF(1, CAST({value} AS UNSIGNED), LAST_INSERT_ID())")
            }
            SessionFunction::RowCount => format!("IF(1, {value}, ROW_COUNT())"),
            SessionFunction::FoundRows => format!("IF(1, {value}, FOUND_ROWS())"),
            SessionFunction::ConnectionId => {
                format!("IF(1, CAST({value} AS UNSIGNED), CONNECTION_ID())")
            }
        }
    }
}

/// One call of a session function in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// Where the call is, `NAME(` to `)`.
    pub range: Range<usize>,
    /// Which function.
    pub function: SessionFunction,
    /// The call is a whole item of a select list (`SELECT LAST_INSERT_ID(), ...`), so its
    /// replacement must keep the column name with an alias.
    pub select_item: bool,
}

/// Whom a `KILL` statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillTarget {
    /// A connection id, as the client knows it (sluice's ids).
    Id(u64),
    /// `CONNECTION_ID()`: the client itself.
    Own,
    /// `KILL USER name`: every client of that user.
    User(String),
    /// `KILL QUERY ID n`: a server query id, which clients of sluice cannot know.
    QueryId(u64),
}

/// A `KILL` statement that is the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// `KILL QUERY` ends only the running statement.
    pub query_only: bool,
    /// Whom it names.
    pub target: KillTarget,
}

/// What sluice learned about a text before running it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Why the text pins the client to its connection, if it does.
    pub pin: Option<&'static str>,
    /// Session functions in the first statement, with their byte ranges.
    pub functions: Vec<FunctionCall>,
    /// Set when the whole text is one `KILL` statement.
    pub kill: Option<Kill>,
    /// Why sluice must refuse the text without running it (a `KILL` it cannot carry out).
    pub refusal: Option<&'static str>,
    /// The names of session variables assigned as `@@name` (no scope): `session.` is
    /// inserted before each so that the server reports the change (and the report is kept
    /// from the client, which would not get it directly).
    pub scope_inserts: Vec<Range<usize>>,
    /// The character set or collation of the connection is set (`SET NAMES ... COLLATE`):
    /// the server reports the character sets but not the collation.
    pub sets_charset: bool,
    /// `SET NAMES`, `SET CHARACTER SET` or `SET CHARSET`: besides the character sets, the
    /// collation that the client's and the results' character sets carry is set.
    pub sets_names: bool,
    /// Some statement is not one sluice understands: a state change after it pins.
    pub unknown: bool,
    /// Which of the client's own tracking settings are assigned, by their index in
    /// `tracking::OWNED_VARIABLES` (bit 0: `session_track_schema`, ...); other
    /// `session_track_*` variables set bit 7.
    pub sets_tracking: u8,
    /// `SET TRANSACTION ...`: characteristics for the next transaction only, held by the
    /// connection until that transaction has run.
    pub next_transaction: bool,
    /// `SET STATEMENT ... FOR`: the variable values reported are the statement's, not the
    /// session's.
    pub temporary_variables: bool,
    /// `LAST_INSERT_ID(expr)` sets the value the client reads next.
    pub sets_last_insert_id: bool,
    /// `LAST_INSERT_ID()` is read, in any statement of the text.
    pub reads_last_insert_id: bool,
    /// `LOAD DATA LOCAL INFILE`: the server will ask the client for a file mid-reply, so
    /// nothing of sluice's may follow the statement in the same write.
    pub reads_client_file: bool,
    /// Precisely `LOCAL INFILE` (`LOAD DATA|XML ... LOCAL INFILE`): a client that did not
    /// offer CLIENT_LOCAL_FILES is refused as the server would refuse it, since sluice's
    /// database connections always offer it.
    pub local_infile: bool,
    /// Some statement may change `LAST_INSERT_ID()`: it inserts (`INSERT`, `REPLACE`,
    /// `LOAD`), sets it (`LAST_INSERT_ID(expr)`), or runs code sluice cannot see.
    pub may_set_insert_id: bool,
    /// How many statements the text holds.
    pub statements: usize,
    /// Assignments in `SET` statements: when a `SET` of several fails, MariaDB may still
    /// have applied some of them.
    pub assignments: usize,
    /// A statement ends a transaction the way its client meant to (`COMMIT`, `ROLLBACK`,
    /// not `ROLLBACK TO SAVEPOINT`).
    pub ends_transaction: bool,
    /// `START TRANSACTION READ ONLY` (or `READ WRITE`): a transaction under characteristics
    /// of its own, which MariaDB keeps after `SET autocommit = 1` ends it.
    pub starts_with_characteristics: bool,
    /// Some statement changes table or routine definitions (`CREATE`, `ALTER`, `DROP`,
    /// `RENAME`, `TRUNCATE`): metadata of prepared statements may be stale after it.
    pub ddl: bool,
}

impl Analysis {
    fn pin(&mut self, reason: &'static str) {
        self.pin.get_or_insert(reason);
    }

    fn refuse(&mut self, why: &'static str) {
        self.refusal.get_or_insert(why);
    }
}

/// Classifies `sql`. `backslash_escapes` is false when the client's `sql_mode` has
/// `NO_BACKSLASH_ESCAPES`. Never panics, whatever the bytes.
pub fn analyze(sql: &[u8], backslash_escapes: bool) -> Analysis {
    let mut scanner = Scanner {
        sql,
        lexer: Lexer::new(sql, backslash_escapes),
        backslash_escapes,
        analysis: Analysis::default(),
        prev: None,
        statement_index: 0,
        first_word: None,
        definition: false,
        compound: false,
        depth: 0,
    };
    scanner.run();
    scanner.analysis
}

/// Character sets in which a backslash byte can end a multi-byte character: the lexer cannot
/// tell where strings end in them, so a client using one is pinned.
const UNSAFE_CHARSETS: [&str; 5] = ["big5", "cp932", "gbk", "sjis", "gb18030"];

/// Session variables whose value is used once (or feeds `LAST_INSERT_ID()`), so carrying
/// them to other connections would repeat them.
const ONE_SHOT_VARIABLES: [&str; 5] = [
    "insert_id",
    "last_insert_id",
    "identity",
    "rand_seed1",
    "rand_seed2",
];

/// Variables that, set as `@@name` without a scope, change the next transaction only.
const NEXT_TRANSACTION_VARIABLES: [&str; 4] = [
    "tx_isolation",
    "tx_read_only",
    "transaction_isolation",
    "transaction_read_only",
];

/// Words that start a compound statement outside stored programs.
const COMPOUND_STARTS: [&str; 6] = ["IF", "CASE", "LOOP", "REPEAT", "WHILE", "FOR"];

/// Statements sluice knows change nothing it cannot carry (pins inside them are found token
/// by token).
const KNOWN_STATEMENTS: [&str; 29] = [
    "SELECT",
    "WITH",
    "VALUES",
    "TABLE",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "LOAD",
    "DO",
    "SHOW",
    "DESCRIBE",
    "DESC",
    "EXPLAIN",
    "HELP",
    "ANALYZE",
    "CHECK",
    "CHECKSUM",
    "OPTIMIZE",
    "REPAIR",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "START",
    "USE",
    "TRUNCATE",
    "RENAME",
    "UNLOCK",
];

/// Statements whose effect stays on the connection, by first word, with the pin reason.
const PINNING_STATEMENTS: [(&str, &str); 6] = [
    ("CALL", "stored_procedure"),
    ("DEALLOCATE", "sql_prepare"),
    ("HANDLER", "handler"),
    ("XA", "xa_transaction"),
    ("LOCK", "table_lock"),
    ("BACKUP", "backup_lock"),
];

/// DDL and account statements: known, and they change no session state.
const KNOWN_DDL: [&str; 6] = ["ALTER", "DROP", "GRANT", "REVOKE", "FLUSH", "CREATE"];

struct Scanner<'a> {
    sql: &'a [u8],
    lexer: Lexer<'a>,
    backslash_escapes: bool,
    analysis: Analysis,
    prev: Option<Token>,
    statement_index: usize,
    /// The first word of the statement being read.
    first_word: Option<Token>,
    /// Inside a stored program's definition: its body is not run now.
    definition: bool,
    /// Inside an anonymous compound statement, which runs its body now.
    compound: bool,
    /// Parenthesis depth within the statement.
    depth: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<Token> {
        self.lexer.clone().next()
    }

    fn peek_is_word(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(self.sql, keyword))
    }

    fn peek_is_punct(&self, p: u8) -> bool {
        self.peek().is_some_and(|t| t.is_punct(p))
    }

    fn word_is(&self, token: Option<Token>, keyword: &str) -> bool {
        token.is_some_and(|t| t.is_word(self.sql, keyword))
    }

    fn word_in(&self, token: Option<Token>, keywords: &[&str]) -> bool {
        keywords.iter().any(|k| self.word_is(token, k))
    }

    /// Whether the token after a `KILL` word makes it a KILL statement (an id, a modifier,
    /// `USER`, `CONNECTION_ID()`), not a column that happens to be named `kill`.
    fn kill_follows(&self) -> bool {
        self.peek().is_some_and(|t| {
            t.kind == Kind::Number
                || t.kind == Kind::UserVariable
                || self.word_in(
                    Some(t),
                    &[
                        "HARD",
                        "SOFT",
                        "CONNECTION",
                        "QUERY",
                        "USER",
                        "CONNECTION_ID",
                    ],
                )
        })
    }

    /// The next token, after noting what it tells wherever it appears.
    fn bump(&mut self) -> Option<Token> {
        let token = self.lexer.next()?;
        self.notice(token);
        self.prev = Some(token);
        Some(token)
    }

    fn notice(&mut self, token: Token) {
        let sql = self.sql;
        match token.kind {
            Kind::Punct(b'(') => self.depth += 1,
            Kind::Punct(b')') => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        if (self.definition || self.compound) && token.is_word(sql, "KILL") && self.kill_follows() {
            self.analysis
                .refuse("KILL inside a stored program or compound statement");
        }
        if self.definition {
            // A stored program's body runs later, through CALL or a trigger.
            return;
        }
        match token.kind {
            Kind::UserVariable => self.analysis.pin("user_variable"),
            Kind::Word => {
                if token.is_word(sql, "INFILE") {
                    self.analysis.reads_client_file = true;
                    self.analysis.local_infile |= self.word_is(self.prev, "LOCAL");
                } else if token.is_word(sql, "SQL_CALC_FOUND_ROWS") {
                    self.analysis.pin("found_rows");
                } else if token.is_word(sql, "TEMPORARY") && self.word_is(self.first_word, "CREATE")
                {
                    self.analysis.pin("temporary_table");
                } else if self.word_is(self.first_word, "FLUSH")
                    && (token.is_word(sql, "LOCK") || token.is_word(sql, "EXPORT"))
                {
                    self.analysis.pin("table_lock");
                } else if self.peek_is_punct(b'(') {
                    self.function_call(token);
                }
            }
            _ => {}
        }
    }

    /// `NAME(` seen: a session function, a lock, or `LAST_INSERT_ID(expr)`.
    fn function_call(&mut self, name: Token) {
        let sql = self.sql;
        if name.is_word(sql, "GET_LOCK") {
            self.analysis.pin("named_lock");
            return;
        }
        let function = [
            ("LAST_INSERT_ID", SessionFunction::LastInsertId),
            ("ROW_COUNT", SessionFunction::RowCount),
            ("FOUND_ROWS", SessionFunction::FoundRows),
            ("CONNECTION_ID", SessionFunction::ConnectionId),
        ]
        .into_iter()
        .find(|(word, _)| name.is_word(sql, word))
        .map(|(_, function)| function);
        let Some(function) = function else { return };
        let mut ahead = self.lexer.clone();
        let (_open, close) = (ahead.next(), ahead.next());
        let Some(close) = close.filter(|t| t.is_punct(b')')) else {
            if function == SessionFunction::LastInsertId {
                self.analysis.sets_last_insert_id = true;
            }
            return;
        };
        if function == SessionFunction::LastInsertId {
            self.analysis.reads_last_insert_id = true;
        }
        if self.statement_index > 0 {
            return;
        }
        let after = ahead.next();
        let opens_item = self
            .prev
            .is_some_and(|p| p.is_punct(b',') || p.is_word(sql, "SELECT"));
        let closes_item =
            after.is_none_or(|t| t.is_punct(b',') || t.is_punct(b';') || t.is_word(sql, "FROM"));
        self.analysis.functions.push(FunctionCall {
            range: name.start..close.end,
            function,
            select_item: opens_item && closes_item,
        });
    }

    fn run(&mut self) {
        while let Some(first) = self.bump() {
            if first.is_punct(b';') {
                continue;
            }
            self.analysis.statements += 1;
            self.depth = 0;
            self.first_word = Some(first);
            self.statement(first);
            self.statement_index += 1;
        }
    }

    /// After `ROLLBACK`: `[WORK] TO [SAVEPOINT] name`, which ends no transaction.
    fn to_savepoint(&self) -> bool {
        let mut ahead = self.lexer.clone();
        let mut next = ahead.next();
        if self.word_is(next, "WORK") {
            next = ahead.next();
        }
        self.word_is(next, "TO")
    }

    /// After `START`: whether the statement names an access mode (`READ ONLY|WRITE`).
    fn names_access_mode(&self) -> bool {
        let mut ahead = self.lexer.clone();
        std::iter::from_fn(|| ahead.next())
            .take_while(|token| !token.is_punct(b';'))
            .any(|token| token.is_word(self.sql, "READ"))
    }

    /// Reads to the end of the statement (a `;` outside parentheses, or the end).
    fn rest(&mut self) {
        while let Some(token) = self.peek() {
            if token.is_punct(b';') && self.depth == 0 && !self.definition {
                return;
            }
            self.bump();
        }
    }

    /// Classifies one statement whose first token is `first`, reading it to its end.
    fn statement(&mut self, first: Token) {
        let sql = self.sql;
        let is = |keyword: &str| first.is_word(sql, keyword);
        self.analysis.ddl |= ["CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"]
            .iter()
            .any(|k| is(k));
        self.analysis.ends_transaction |= is("COMMIT") || (is("ROLLBACK") && !self.to_savepoint());
        self.analysis.starts_with_characteristics |=
            is("START") && self.peek_is_word("TRANSACTION") && self.names_access_mode();
        self.analysis.may_set_insert_id |= ["INSERT", "REPLACE", "LOAD", "CALL", "EXECUTE"]
            .iter()
            .any(|k| is(k));
        if is("KILL") {
            self.kill();
        } else if is("SET") {
            self.set();
        } else if is("BEGIN") && self.peek_is_word("NOT") {
            self.compound();
        } else if first.kind == Kind::Word && self.peek_is_punct(b':') && !is("BEGIN") {
            self.compound(); // a label: `l: LOOP ... END LOOP`
        } else if self.word_in(Some(first), &COMPOUND_STARTS) && !self.peek_is_punct(b'(') {
            self.compound();
        } else if is("CREATE") && self.defines_program() {
            self.definition();
        } else if is("EXECUTE") {
            self.execute();
        } else if is("PREPARE") {
            self.analysis.pin("sql_prepare");
            self.prepare();
        } else if let Some((_, reason)) = PINNING_STATEMENTS.iter().find(|(word, _)| is(word)) {
            self.analysis.pin(reason);
            self.rest();
        } else if is("BEGIN")
            || first.is_punct(b'(')
            || self.word_in(Some(first), &KNOWN_STATEMENTS)
            || self.word_in(Some(first), &KNOWN_DDL)
        {
            self.rest();
        } else {
            self.analysis.unknown = true;
            self.rest();
        }
    }

    /// `CREATE [OR REPLACE] [DEFINER = ...] [AGGREGATE] PROCEDURE|FUNCTION|TRIGGER|EVENT|
    /// PACKAGE`: a stored program whose body must not be read as statements.
    fn defines_program(&self) -> bool {
        let mut ahead = self.lexer.clone();
        for _ in 0..12 {
            let Some(token) = ahead.next() else {
                return false;
            };
            if self.word_in(
                Some(token),
                &["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"],
            ) {
                return true;
            }
            if self.word_in(Some(token), &["TABLE", "VIEW", "INDEX", "DATABASE", "USER"]) {
                return false;
            }
        }
        false
    }

    /// An anonymous compound statement (`BEGIN NOT ATOMIC`, `IF`, `WHILE`, ...): it may do
    /// anything, so the client is pinned; `KILL` in it is refused.
    fn compound(&mut self) {
        self.analysis.pin("compound_statement");
        self.analysis.unknown = true;
        // The body's statements are separated by `;`: read them all as one.
        self.compound = true;
        while self.bump().is_some() {}
    }

    /// A stored program's definition, to its end: the first `;` outside `BEGIN ... END`
    /// (and `CASE ... END`) blocks. Statements after it are classified as usual.
    fn definition(&mut self) {
        let sql = self.sql;
        self.definition = true;
        let mut blocks = 0usize;
        while let Some(token) = self.peek() {
            if token.is_punct(b';') && blocks == 0 {
                break;
            }
            self.bump();
            if token.is_word(sql, "BEGIN") || token.is_word(sql, "CASE") {
                blocks += 1;
            } else if token.is_word(sql, "END") {
                let closes = self.peek();
                if self.word_in(closes, &["IF", "LOOP", "WHILE", "REPEAT", "FOR"]) {
                    self.bump();
                } else {
                    if self.word_is(closes, "CASE") {
                        self.bump();
                    }
                    blocks = blocks.saturating_sub(1);
                }
            }
        }
        self.definition = false;
    }

    /// `EXECUTE IMMEDIATE 'text'` runs the text: classify it. Anything but a literal is
    /// dynamic SQL sluice cannot see.
    fn execute(&mut self) {
        if !self.peek_is_word("IMMEDIATE") {
            self.analysis.pin("sql_prepare");
            return self.rest();
        }
        self.bump();
        let literal = self.peek().filter(|t| t.kind == Kind::String);
        match literal {
            Some(text) => {
                self.bump();
                self.dynamic(text);
                // Anything after the literal (USING ...) is read as usual.
            }
            None => self.analysis.pin("dynamic_sql"),
        }
        self.rest();
    }

    /// `PREPARE name FROM 'text'`: the text runs later, on this connection.
    fn prepare(&mut self) {
        while let Some(token) = self.peek() {
            if token.is_punct(b';') && self.depth == 0 {
                return;
            }
            self.bump();
            if token.is_word(self.sql, "FROM") {
                if let Some(text) = self.peek().filter(|t| t.kind == Kind::String) {
                    self.bump();
                    self.dynamic(text);
                }
            }
        }
    }

    /// Folds the analysis of dynamic SQL text into this one.
    fn dynamic(&mut self, literal: Token) {
        let inner = analyze(unquoted(self.sql, &literal), self.backslash_escapes);
        let found = &mut self.analysis;
        if inner.kill.is_some() || inner.refusal.is_some() {
            found.refuse("KILL in dynamic SQL");
        }
        if let Some(reason) = inner.pin {
            found.pin(reason);
        }
        if !inner.scope_inserts.is_empty() || inner.temporary_variables || inner.sets_tracking != 0
        {
            // A SET sluice would rewrite, inside text it must not change.
            found.pin("dynamic_sql");
        }
        found.unknown |= inner.unknown;
        found.next_transaction |= inner.next_transaction;
        found.sets_last_insert_id |= inner.sets_last_insert_id;
        found.reads_last_insert_id |= inner.reads_last_insert_id;
    }

    /// `KILL [HARD | SOFT] [CONNECTION | QUERY] {id | CONNECTION_ID() | USER name | ID n}`.
    fn kill(&mut self) {
        let sql = self.sql;
        let mut query_only = false;
        while let Some(word) = self.peek().filter(|t| {
            ["HARD", "SOFT", "CONNECTION", "QUERY"]
                .iter()
                .any(|k| t.is_word(sql, k))
        }) {
            query_only |= word.is_word(sql, "QUERY");
            self.bump();
        }
        let number = |token: Option<Token>| {
            token
                .filter(|t| t.kind == Kind::Number)
                .and_then(|t| std::str::from_utf8(&sql[t.range()]).ok()?.parse().ok())
        };
        let target = match self.bump() {
            Some(t) if t.kind == Kind::Number => number(Some(t)).map(KillTarget::Id),
            Some(t) if t.is_word(sql, "CONNECTION_ID") => {
                let call = (self.bump(), self.bump());
                matches!(call, (Some(o), Some(c)) if o.is_punct(b'(') && c.is_punct(b')'))
                    .then_some(KillTarget::Own)
            }
            Some(t) if t.is_word(sql, "ID") && query_only => {
                let id = self.bump();
                number(id).map(KillTarget::QueryId)
            }
            Some(t) if t.is_word(sql, "USER") => match self.bump() {
                Some(name)
                    if matches!(name.kind, Kind::Word | Kind::String | Kind::QuotedIdent) =>
                {
                    let user = String::from_utf8_lossy(unquoted(sql, &name)).into_owned();
                    // `user@host`: sluice users have no host part.
                    if self.peek().is_some_and(|t| t.kind == Kind::UserVariable) {
                        self.bump();
                    }
                    let ends = self.peek().is_none_or(|t| t.is_punct(b';'));
                    ends.then_some(KillTarget::User(user))
                }
                _ => None,
            },
            _ => None,
        };
        let ends_here = self.peek().is_none_or(|t| t.is_punct(b';'));
        self.rest();
        self.bump(); // the `;`, if any
        let alone = self.statement_index == 0 && self.peek().is_none();
        match (target, ends_here, alone) {
            (Some(target), true, true) => {
                self.analysis.kill = Some(Kill { query_only, target });
            }
            (_, _, false) => self.analysis.refuse("KILL in a multi-statement query"),
            _ => self
                .analysis
                .refuse("KILL of anything but a number, CONNECTION_ID() or USER name"),
        }
        while self.bump().is_some() {}
    }

    /// `SET ...`: system variables (carried), user variables (pinning), and the special forms.
    fn set(&mut self) {
        let sql = self.sql;
        let word = |t: Option<Token>, k: &str| t.is_some_and(|t| t.is_word(sql, k));
        let next = self.peek();
        if word(next, "TRANSACTION") {
            self.analysis.next_transaction = true;
            return self.rest();
        }
        if word(next, "STATEMENT") {
            // SET STATEMENT a = 1, ... FOR <statement>: the values hold for that statement.
            self.analysis.temporary_variables = true;
            while let Some(token) = self.bump() {
                if token.is_word(sql, "FOR") && self.depth == 0 {
                    break;
                }
            }
            match self.bump() {
                Some(inner) => self.statement(inner),
                None => self.analysis.unknown = true,
            }
            return;
        }
        if word(next, "PASSWORD") || word(next, "DEFAULT") {
            return self.rest(); // SET PASSWORD, SET DEFAULT ROLE: the account, not the session
        }
        if word(next, "ROLE") {
            self.analysis.pin("role");
            return self.rest();
        }
        let mut global = false;
        loop {
            // One assignment: [scope] target {= | :=} value.
            let Some(mut target) = self.bump() else {
                return;
            };
            self.analysis.assignments += 1;
            for scope in ["GLOBAL", "SESSION", "LOCAL"] {
                if target.is_word(sql, scope) {
                    global = scope == "GLOBAL";
                    match self.bump() {
                        Some(t) => target = t,
                        None => return self.analysis.pin("unparsed_set"),
                    }
                }
            }
            if word(Some(target), "TRANSACTION") {
                // SET SESSION TRANSACTION ...: reported as tx_isolation / tx_read_only.
                return self.rest();
            }
            if word(Some(target), "NAMES")
                || word(Some(target), "CHARSET")
                || (word(Some(target), "CHARACTER") && self.peek_is_word("SET"))
            {
                if word(Some(target), "CHARACTER") {
                    self.bump();
                }
                self.charset_value();
            } else {
                match self.assignment_target(target, global) {
                    Ok(()) => {}
                    Err(()) => {
                        self.analysis.pin("unparsed_set");
                        return self.rest();
                    }
                }
                let assign = self.bump();
                let colon_equals =
                    assign.is_some_and(|t| t.is_punct(b':')) && self.peek_is_punct(b'=');
                if colon_equals {
                    self.bump();
                } else if !assign.is_some_and(|t| t.is_punct(b'=')) {
                    self.analysis.pin("unparsed_set");
                    return self.rest();
                }
                // The value: up to a comma or the statement's end, outside parentheses.
                while let Some(token) = self.peek() {
                    if self.depth == 0 && (token.is_punct(b',') || token.is_punct(b';')) {
                        break;
                    }
                    self.bump();
                }
            }
            match self.peek() {
                Some(t) if t.is_punct(b',') => {
                    self.bump();
                }
                _ => return,
            }
        }
    }

    /// The variable an assignment sets; rejects forms sluice cannot account for.
    fn assignment_target(&mut self, target: Token, global: bool) -> Result<(), ()> {
        let sql = self.sql;
        let text = &sql[target.range()];
        let name = match target.kind {
            Kind::UserVariable => return Ok(()), // pinned when seen
            Kind::Word => text,
            Kind::QuotedIdent => unquoted(sql, &target),
            Kind::SystemVariable => {
                let after = &text[2..];
                let scoped = |scope: &[u8]| {
                    after.len() > scope.len()
                        && after[..scope.len()].eq_ignore_ascii_case(scope)
                        && after[scope.len()] == b'.'
                };
                if scoped(b"global") {
                    return Ok(());
                }
                if scoped(b"session") || scoped(b"local") {
                    &after[after.iter().position(|&b| b == b'.').map_or(0, |p| p + 1)..]
                } else if global {
                    return Err(()); // @@name after GLOBAL: which scope is meant is unclear
                } else if NEXT_TRANSACTION_VARIABLES
                    .iter()
                    .any(|v| after.eq_ignore_ascii_case(v.as_bytes()))
                {
                    // MariaDB: `SET @@tx_isolation = x` is `SET TRANSACTION ...`, for the
                    // next transaction only (and refused inside one).
                    self.analysis.next_transaction = true;
                    return Ok(());
                } else {
                    self.analysis
                        .scope_inserts
                        .push(target.start + 2..target.end);
                    after
                }
            }
            _ => return Err(()),
        };
        if global {
            return Ok(());
        }
        let name = name.strip_prefix(b"`").unwrap_or(name);
        let name = name.strip_suffix(b"`").unwrap_or(name);
        if name.len() >= 14 && name[..14].eq_ignore_ascii_case(b"session_track_") {
            let owned = super::tracking::OWNED_VARIABLES
                .iter()
                .position(|v| name.eq_ignore_ascii_case(v.as_bytes()));
            self.analysis.sets_tracking |= owned.map_or(0x80, |i| 1 << i);
        }
        if name.eq_ignore_ascii_case(b"character_set_connection")
            || name.eq_ignore_ascii_case(b"collation_connection")
        {
            self.analysis.sets_charset = true;
        }
        if ONE_SHOT_VARIABLES
            .iter()
            .any(|v| name.eq_ignore_ascii_case(v.as_bytes()))
        {
            self.analysis.pin("one_shot_variable");
        }
        if !name.iter().all(|&b| is_ident_byte(b)) || name.is_empty() {
            return Err(());
        }
        Ok(())
    }

    /// The character set of `SET NAMES` / `SET CHARACTER SET`, and `COLLATE`, if any.
    fn charset_value(&mut self) {
        self.analysis.sets_charset = true;
        self.analysis.sets_names = true;
        let Some(value) = self.bump() else { return };
        let sql = self.sql;
        let name = unquoted(sql, &value);
        if UNSAFE_CHARSETS
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
        {
            self.analysis.pin("charset");
        }
        while let Some(token) = self.peek() {
            if self.depth == 0 && (token.is_punct(b',') || token.is_punct(b';')) {
                break;
            }
            self.bump();
        }
    }
}

/// An edit of the client's text: replace `range` by `text`.
struct Edit {
    range: Range<usize>,
    text: Vec<u8>,
}

/// Rewrites `sql` for the server: session functions replaced by their value (`value` gives
/// the text; `None` leaves the call alone; a select item keeps its column name), and
/// `session.` inserted into unscoped `SET @@name`. `None` when nothing changes.
pub fn rewrite(
    sql: &[u8],
    analysis: &Analysis,
    value: impl Fn(SessionFunction) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut edits: Vec<Edit> = analysis
        .scope_inserts
        .iter()
        .map(|name| Edit {
            range: name.start..name.start,
            text: b"session.".to_vec(),
        })
        .collect();
    for call in &analysis.functions {
        if let Some(text) = value(call.function) {
            let mut text = text.into_bytes();
            if call.select_item {
                let original = &sql[call.range.clone()];
                text.extend_from_slice(b" AS `");
                for &b in original {
                    if b == b'`' {
                        text.push(b'`');
                    }
                    text.push(b);
                }
                text.push(b'`');
            }
            edits.push(Edit {
                range: call.range.clone(),
                text,
            });
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|e| e.range.start);
    let mut out = Vec::with_capacity(sql.len() + 32);
    let mut last = 0;
    for edit in edits {
        if edit.range.start < last || edit.range.end > sql.len() {
            continue; // overlapping edits cannot happen; never slice out of bounds anyway
        }
        out.extend_from_slice(&sql[last..edit.range.start]);
        out.extend_from_slice(&edit.text);
        last = edit.range.end;
    }
    out.extend_from_slice(&sql[last..]);
    Some(out)
}

#[cfg(test)]
mod tests;
