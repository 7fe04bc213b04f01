//! Tokens of MariaDB SQL text, as bytes, without allocating.
//!
//! The lexer works on bytes, not `str`, so text in any client character set (or invalid
//! UTF-8) is analysed rather than skipped, and no slice can split a character. It skips
//! what the server skips — whitespace and comments — and opens executable comments
//! (`/*! ... */`, `/*M!... */`), whose content the server runs. Whether a backslash escapes
//! inside strings follows the client's `sql_mode` (`NO_BACKSLASH_ESCAPES`): a lexer that
//! disagrees with the server about where a string ends could miss a statement hidden after it.

use std::ops::Range;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keyword or unquoted identifier.
    Word,
    /// A number (or an identifier that starts with a digit).
    Number,
    /// A `'...'` or `"..."` literal, quotes included.
    String,
    /// A `` `...` `` identifier, backticks included.
    QuotedIdent,
    /// `@@name`, `@@session.name`, ...
    SystemVariable,
    /// `@name`, `@'name'`, ...
    UserVariable,
    /// Any other single byte (`;`, `(`, `=`, `,` ...).
    Punct(u8),
}

/// One token: its kind and where it is in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Byte offset of its first byte.
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
}

impl Token {
    /// Its byte range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Whether it is the word `keyword` (ASCII case-insensitive).
    pub fn is_word(&self, sql: &[u8], keyword: &str) -> bool {
        self.kind == Kind::Word && sql[self.range()].eq_ignore_ascii_case(keyword.as_bytes())
    }

    /// Whether it is the punctuation byte `p`.
    pub fn is_punct(&self, p: u8) -> bool {
        self.kind == Kind::Punct(p)
    }
}

/// Iterates over the tokens of `sql`.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    backslash_escapes: bool,
    in_executable_comment: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql`; `backslash_escapes` is false under `NO_BACKSLASH_ESCAPES`.
    pub fn new(sql: &'a [u8], backslash_escapes: bool) -> Lexer<'a> {
        Lexer {
            sql,
            pos: 0,
            backslash_escapes,
            in_executable_comment: false,
        }
    }

    /// Skips whitespace and comments; returns false at the end of the text.
    fn skip_ignored(&mut self) -> bool {
        let sql = self.sql;
        loop {
            let Some(&c) = sql.get(self.pos) else {
                return false;
            };
            let next = sql.get(self.pos + 1).copied();
            match c {
                _ if c.is_ascii_whitespace() => self.pos += 1,
                b'#' => self.pos = line_end(sql, self.pos),
                b'-' if next == Some(b'-')
                    && sql
                        .get(self.pos + 2)
                        .is_none_or(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
                {
                    self.pos = line_end(sql, self.pos)
                }
                b'*' if next == Some(b'/') && self.in_executable_comment => {
                    self.in_executable_comment = false;
                    self.pos += 2;
                }
                b'/' if next == Some(b'*') => {
                    let body = self.pos + 2;
                    let marker = match (sql.get(body), sql.get(body + 1)) {
                        (Some(b'!'), _) => Some(body + 1),
                        (Some(b'M' | b'm'), Some(b'!')) => Some(body + 2),
                        _ => None,
                    };
                    match marker {
                        Some(after) if !self.in_executable_comment => {
                            // The server runs what follows (after an optional version number).
                            self.in_executable_comment = true;
                            self.pos = after;
                            while sql.get(self.pos).is_some_and(u8::is_ascii_digit) {
                                self.pos += 1;
                            }
                        }
                        _ => {
                            self.pos = find(sql, body, b"*/").map_or(sql.len(), |end| end + 2);
                        }
                    }
                }
                _ => return true,
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if !self.skip_ignored() {
            return None;
        }
        let sql = self.sql;
        let start = self.pos;
        let c = sql[start];
        let (kind, end) = match c {
            b'\'' | b'"' => (Kind::String, self.quoted_end(start)),
            b'`' => (Kind::QuotedIdent, self.quoted_end(start)),
            b'@' if sql.get(start + 1) == Some(&b'@') => {
                let mut end = start + 2;
                while sql
                    .get(end)
                    .is_some_and(|&b| is_ident_byte(b) || b == b'.' || b == b'`')
                {
                    end = if sql[end] == b'`' {
                        self.quoted_end(end)
                    } else {
                        end + 1
                    };
                }
                (Kind::SystemVariable, end)
            }
            b'@' => {
                let end = match sql.get(start + 1) {
                    Some(b'\'' | b'"' | b'`') => self.quoted_end(start + 1),
                    _ => ident_end(sql, start + 1),
                };
                (Kind::UserVariable, end)
            }
            _ if c.is_ascii_digit() => (Kind::Number, ident_end(sql, start)),
            _ if is_ident_byte(c) => (Kind::Word, ident_end(sql, start)),
            _ => (Kind::Punct(c), start + 1),
        };
        self.pos = end.max(start + 1).min(sql.len());
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

impl Lexer<'_> {
    /// Where the quoted literal or identifier opening at `start` ends (just past its quote).
    fn quoted_end(&self, start: usize) -> usize {
        let sql = self.sql;
        let quote = sql[start];
        let mut i = start + 1;
        while i < sql.len() {
            match sql[i] {
                b'\\' if quote != b'`' && self.backslash_escapes => i += 2,
                b if b == quote && sql.get(i + 1) == Some(&quote) => i += 2,
                b if b == quote => return i + 1,
                _ => i += 1,
            }
        }
        sql.len()
    }
}

/// Bytes that may appear in an unquoted identifier (any non-ASCII byte, so multi-byte
/// characters stay whole).
pub fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn ident_end(sql: &[u8], mut i: usize) -> usize {
    while sql.get(i).copied().is_some_and(is_ident_byte) {
        i += 1;
    }
    i
}

fn line_end(sql: &[u8], i: usize) -> usize {
    sql[i..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(sql.len(), |n| i + n + 1)
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

/// The text inside a quoted token (without its quotes; escapes left as they are).
pub fn unquoted<'a>(sql: &'a [u8], token: &Token) -> &'a [u8] {
    let inner = &sql[token.range()];
    match inner {
        [q, body @ .., last] if q == last && matches!(q, b'\'' | b'"' | b'`') => body,
        [_, body @ ..] if matches!(inner.first(), Some(b'\'' | b'"' | b'`')) => body,
        _ => inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str, escapes: bool) -> Vec<(Kind, &str)> {
        Lexer::new(sql.as_bytes(), escapes)
            .map(|t| (t.kind, &sql[t.range()]))
            .collect()
    }

    #[test]
    fn tokens_comments_and_quotes() {
        assert_eq!(
            kinds("SET @@session.x=1, @u:='a''b' -- c\n# d\n/* e */;", true),
            vec![
                (Kind::Word, "SET"),
                (Kind::SystemVariable, "@@session.x"),
                (Kind::Punct(b'='), "="),
                (Kind::Number, "1"),
                (Kind::Punct(b','), ","),
                (Kind::UserVariable, "@u"),
                (Kind::Punct(b':'), ":"),
                (Kind::Punct(b'='), "="),
                (Kind::String, "'a''b'"),
                (Kind::Punct(b';'), ";"),
            ]
        );
        assert_eq!(kinds("@`a b`", true), vec![(Kind::UserVariable, "@`a b`")]);
        assert_eq!(
            kinds("1--1", true).len(),
            4,
            "-- without a space is minus minus"
        );
    }

    #[test]
    fn executable_comments_are_read() {
        assert_eq!(
            kinds(
                "/*!40101 SET @@x=1*/ /*M!100100 KILL 3 */ /* KILL 4 */",
                true
            ),
            vec![
                (Kind::Word, "SET"),
                (Kind::SystemVariable, "@@x"),
                (Kind::Punct(b'='), "="),
                (Kind::Number, "1"),
                (Kind::Word, "KILL"),
                (Kind::Number, "3"),
            ]
        );
    }

    #[test]
    fn backslashes_follow_the_sql_mode() {
        let sql = r"SELECT 'a\'; SET @@autocommit=0; -- '";
        assert_eq!(kinds(sql, true).len(), 2, "one string to the end");
        let plain = kinds(sql, false);
        assert!(plain.contains(&(Kind::SystemVariable, "@@autocommit")));
    }

    #[test]
    fn multi_byte_text_stays_whole() {
        let sql = "SELECT /*€€*/ 'é', ünïcode_col FROM t€";
        let words: Vec<_> = kinds(sql, true).into_iter().map(|(_, t)| t).collect();
        assert_eq!(words, ["SELECT", "'é'", ",", "ünïcode_col", "FROM", "t€"]);
        // Invalid UTF-8 and unterminated constructs end cleanly.
        let raw = [b'S', 0xff, b'\'', 0xfe, b'/', b'*'];
        assert_eq!(Lexer::new(&raw, true).count(), 2);
        assert_eq!(Lexer::new(b"'abc\\", true).count(), 1);
        assert_eq!(Lexer::new(b"@@", true).count(), 1);
    }

    #[test]
    fn unquoted_strips_quotes() {
        let sql = b"'KILL 1'";
        let token = Lexer::new(sql, true).next().unwrap();
        assert_eq!(unquoted(sql, &token), b"KILL 1");
        let open = b"'KILL";
        let token = Lexer::new(open, true).next().unwrap();
        assert_eq!(unquoted(open, &token), b"KILL");
    }
}
