//! A light lexer over a client's SQL text, for the few things a multiplexing proxy must know
//! before it runs a statement: which session state it creates that cannot follow the client
//! to another connection (so the client must be pinned), which functions answer from
//! per-connection state (`LAST_INSERT_ID()`, `ROW_COUNT()`, `FOUND_ROWS()`,
//! `CONNECTION_ID()`), and whether it is a `KILL`. Strings and comments are skipped, so an
//! `@` in a literal is not a user variable.

use std::ops::Range;

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

/// `KILL [CONNECTION | QUERY] id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// `KILL QUERY` ends only the running statement.
    pub query_only: bool,
    /// The connection id, as the client knows it.
    pub id: u64,
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

/// What the lexer found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Why the statement pins the client to its connection, if it does.
    pub pin: Option<&'static str>,
    /// Session functions in the first statement of the text, with their byte ranges.
    pub functions: Vec<FunctionCall>,
    /// Set when the whole text is one `KILL` statement.
    pub kill: Option<Kill>,
}

/// Scans `sql`.
pub fn scan(sql: &str) -> Scan {
    let bytes = sql.as_bytes();
    let mut scan = Scan::default();
    let mut words = Words::default();
    let mut first_statement = true;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' | b'`' => i = skip_quoted(bytes, i),
            b'#' => i = skip_line(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-')
                && bytes.get(i + 2).is_none_or(|b| b.is_ascii_whitespace()) =>
            {
                i = skip_line(bytes, i)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') && bytes.get(i + 2) != Some(&b'!') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |end| i + 2 + end + 2);
            }
            b'@' if bytes.get(i + 1) == Some(&b'@') => {
                // A system variable: @@name or @@session.name.
                i += 2;
                while i < bytes.len() && (is_ident(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
            }
            b'@' => {
                scan.pin.get_or_insert("user_variable");
                i += 1;
            }
            b';' => {
                first_statement = false;
                i += 1;
            }
            _ if is_ident(c) && !c.is_ascii_digit() => {
                let start = i;
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                let word = &sql[start..i];
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = bytes.get(j) == Some(&b'(');
                if call {
                    let mut k = j + 1;
                    while k < bytes.len() && bytes[k].is_ascii_whitespace() {
                        k += 1;
                    }
                    let function = [
                        ("LAST_INSERT_ID", SessionFunction::LastInsertId),
                        ("ROW_COUNT", SessionFunction::RowCount),
                        ("FOUND_ROWS", SessionFunction::FoundRows),
                        ("CONNECTION_ID", SessionFunction::ConnectionId),
                    ]
                    .into_iter()
                    .find(|(name, _)| word.eq_ignore_ascii_case(name))
                    .map(|(_, function)| function);
                    if let (Some(function), Some(b')'), true) =
                        (function, bytes.get(k), first_statement)
                    {
                        let before = sql[..start].trim_end();
                        let after = sql[k + 1..].trim_start();
                        let opens_item = before.ends_with(',')
                            || before.len() >= 6
                                && before[before.len() - 6..].eq_ignore_ascii_case("select");
                        let closes_item = after.is_empty()
                            || after.starts_with(',')
                            || after.starts_with(';')
                            || after
                                .get(..4)
                                .is_some_and(|w| w.eq_ignore_ascii_case("from"));
                        scan.functions.push(FunctionCall {
                            range: start..k + 1,
                            function,
                            select_item: opens_item && closes_item,
                        });
                    }
                    if word.eq_ignore_ascii_case("GET_LOCK") {
                        scan.pin.get_or_insert("named_lock");
                    }
                }
                words.see(word);
            }
            _ => i += 1,
        }
    }
    if let Some(reason) = words.pin() {
        scan.pin = Some(reason);
    }
    scan.kill = parse_kill(&words.leading, sql);
    scan
}

/// Keyword facts gathered in one pass, without keeping every word.
#[derive(Default)]
struct Words<'a> {
    /// The first few words, upper-cased (enough for `PREPARE` and `KILL ... id`).
    leading: Vec<String>,
    previous: &'a str,
    create_temporary: bool,
    lock_table: bool,
    flush: bool,
    read_lock: bool,
    calc_found_rows: bool,
}

impl<'a> Words<'a> {
    const LEADING: usize = 6;

    fn see(&mut self, word: &'a str) {
        let is = |w: &str, keyword: &str| w.eq_ignore_ascii_case(keyword);
        let previous = self.previous;
        self.create_temporary |= is(previous, "CREATE") && is(word, "TEMPORARY");
        self.lock_table |= is(previous, "LOCK") && (is(word, "TABLES") || is(word, "TABLE"));
        self.read_lock |= is(previous, "READ") && is(word, "LOCK");
        self.flush |= is(word, "FLUSH");
        self.calc_found_rows |= is(word, "SQL_CALC_FOUND_ROWS");
        if self.leading.len() < Self::LEADING {
            self.leading.push(word.to_ascii_uppercase());
        }
        self.previous = word;
    }

    fn pin(&self) -> Option<&'static str> {
        if self.create_temporary {
            Some("temporary_table")
        } else if self.lock_table || (self.flush && self.read_lock) {
            Some("table_lock")
        } else if self.leading.first().is_some_and(|w| w == "PREPARE") {
            Some("sql_prepare")
        } else if self.calc_found_rows {
            Some("found_rows")
        } else {
            None
        }
    }
}

fn parse_kill(words: &[String], sql: &str) -> Option<Kill> {
    let mut rest = words.iter().map(String::as_str).peekable();
    if rest.next()? != "KILL"
        || sql.contains(';') && sql.trim_end().trim_end_matches(';').contains(';')
    {
        return None;
    }
    let mut query_only = false;
    while let Some(&word) = rest.peek() {
        match word {
            "HARD" | "SOFT" | "CONNECTION" => {}
            "QUERY" => query_only = true,
            _ => break,
        }
        rest.next();
    }
    if rest.next().is_some() {
        return None; // KILL USER name, KILL QUERY ID n: not by plain id
    }
    let digits: String = sql
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let id = digits.chars().rev().collect::<String>().parse().ok()?;
    Some(Kill { query_only, id })
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn skip_line(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |n| i + n + 1)
}

fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Replaces each session function call in `sql` by its value (`value` gives the text; `None`
/// leaves the call alone). A call that is a select item keeps its column name.
pub fn substitute(
    sql: &str,
    functions: &[FunctionCall],
    value: impl Fn(SessionFunction) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut last = 0;
    let mut changed = false;
    for call in functions {
        if let Some(text) = value(call.function) {
            let original = &sql[call.range.clone()];
            out.push_str(&sql[last..call.range.start]);
            out.push_str(&text);
            if call.select_item {
                out.push_str(&format!(" AS `{}`", original.replace('`', "``")));
            }
            last = call.range.end;
            changed = true;
        }
    }
    out.push_str(&sql[last..]);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_by_reason() {
        let reason = |sql: &str| scan(sql).pin;
        assert_eq!(reason("SET @x = 1"), Some("user_variable"));
        assert_eq!(reason("SELECT @x := id FROM t"), Some("user_variable"));
        assert_eq!(reason("SELECT * FROM t WHERE email = 'a@b.com'"), None);
        assert_eq!(reason("SELECT @@session.sql_mode, @@autocommit"), None);
        assert_eq!(
            reason("create temporary table t (a int)"),
            Some("temporary_table")
        );
        assert_eq!(reason("SELECT GET_LOCK('job', 10)"), Some("named_lock"));
        assert_eq!(reason("LOCK TABLES t WRITE"), Some("table_lock"));
        assert_eq!(reason("FLUSH TABLES WITH READ LOCK"), Some("table_lock"));
        assert_eq!(reason("PREPARE s FROM 'SELECT 1'"), Some("sql_prepare"));
        assert_eq!(
            reason("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1"),
            Some("found_rows")
        );
        assert_eq!(reason("SELECT 1 -- @x\n"), None);
        assert_eq!(reason("SELECT 1 /* @x */"), None);
        assert_eq!(reason("SELECT \"it's @x\""), None);
        assert_eq!(reason("UPDATE t SET a = 1"), None);
    }

    #[test]
    fn finds_session_functions_in_the_first_statement_only() {
        let sql = "SELECT LAST_INSERT_ID(), row_count( ) + 1, 'FOUND_ROWS()'; SELECT FOUND_ROWS()";
        let found = scan(sql).functions;
        assert_eq!(found.len(), 2);
        assert_eq!(&sql[found[0].range.clone()], "LAST_INSERT_ID()");
        assert!(found[0].select_item);
        assert_eq!(found[1].function, SessionFunction::RowCount);
        assert!(!found[1].select_item, "part of an expression");
        assert!(scan("SELECT LAST_INSERT_ID(5)").functions.is_empty());
        let rewritten = substitute(sql, &found, |f| {
            Some(match f {
                SessionFunction::LastInsertId => "42".into(),
                _ => "7".into(),
            })
        });
        assert_eq!(
            rewritten.as_deref(),
            Some("SELECT 42 AS `LAST_INSERT_ID()`, 7 + 1, 'FOUND_ROWS()'; SELECT FOUND_ROWS()")
        );
        let id = scan("select connection_id() from dual").functions;
        assert_eq!(id[0].function, SessionFunction::ConnectionId);
        assert!(id[0].select_item);
        let filter = scan("DELETE FROM t WHERE id = LAST_INSERT_ID()").functions;
        assert!(!filter[0].select_item, "no alias in a WHERE clause");
    }

    #[test]
    fn recognises_kill() {
        assert_eq!(
            scan("KILL 12").kill,
            Some(Kill {
                query_only: false,
                id: 12
            })
        );
        assert_eq!(
            scan("kill query 7;").kill,
            Some(Kill {
                query_only: true,
                id: 7
            })
        );
        assert_eq!(
            scan("KILL CONNECTION 9").kill,
            Some(Kill {
                query_only: false,
                id: 9
            })
        );
        assert_eq!(scan("KILL USER bob").kill, None);
        assert_eq!(scan("SELECT 1").kill, None);
        assert_eq!(scan("KILL 1; DROP TABLE t").kill, None);
    }
}
