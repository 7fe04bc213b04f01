//! Prepared statements shared across clients and database connections.
//!
//! Clients see sluice's statement ids. Behind them, a statement is known by a
//! [`StatementKey`]; its metadata is remembered gateway-wide ([`MetadataCache`]), so another
//! client's prepare of the same text needs no database round trip, and each database
//! connection keeps its own prepared copies ([`BackendStatements`]), made lazily and bounded
//! so no client can exhaust the server's `max_prepared_stmt_count`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use std::num::NonZeroUsize;

/// Session variables that change how a statement's text is parsed or its metadata encoded;
/// statements prepared under different values of these are different statements.
pub const PARSE_VARIABLES: [&str; 5] = [
    "sql_mode",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// What makes two prepares the same statement. Its hash is computed once, when it is made,
/// so that finding a statement on every execute costs no hashing of its text; the key never
/// changes after that (its parts are read through accessors).
#[derive(Debug, Clone)]
pub struct StatementKey {
    /// The sluice user who prepared it.
    user: String,
    /// The schema it was prepared in (unqualified names resolve there).
    schema: Option<String>,
    /// The connection collation and the [`PARSE_VARIABLES`] the client set.
    context: String,
    /// The [`PARSE_VARIABLES`] the client had set, by name: a copy prepared on another
    /// connection is prepared under them (literals keep the collation of prepare time).
    parse_vars: BTreeMap<String, String>,
    /// The statement text.
    sql: Vec<u8>,
    /// The hash of all of the above.
    hash: u64,
}

impl StatementKey {
    /// The key for `sql` prepared by `user` in `schema`, under the client's handshake
    /// collation and the session variables it set.
    pub fn new(
        user: &str,
        schema: Option<&str>,
        collation: u8,
        vars: &BTreeMap<String, String>,
        sql: &[u8],
    ) -> StatementKey {
        let mut context = collation.to_string();
        let mut parse_vars = BTreeMap::new();
        for name in PARSE_VARIABLES {
            if let Some(value) = vars.get(name) {
                context.push_str(&format!(";{name}={value}"));
                parse_vars.insert(name.to_owned(), value.clone());
            }
        }
        StatementKey {
            parse_vars,
            user: user.to_owned(),
            schema: schema.map(str::to_owned),
            context,
            sql: sql.to_vec(),
            hash: 0,
        }
        .hashed()
    }

    /// The same statement for a client whose column definitions carry MariaDB's extended
    /// metadata (`extended`): its prepare answers differ, so they are cached apart.
    pub fn with_extended_metadata(mut self, extended: bool) -> StatementKey {
        if extended {
            self.context.push_str(";extended_metadata");
        }
        self.hashed()
    }

    /// The schema it was prepared in.
    pub fn schema(&self) -> &Option<String> {
        &self.schema
    }

    /// The [`PARSE_VARIABLES`] the client had set.
    pub fn parse_vars(&self) -> &BTreeMap<String, String> {
        &self.parse_vars
    }

    /// The statement text.
    pub fn sql(&self) -> &[u8] {
        &self.sql
    }

    /// The key with its hash computed from its parts.
    fn hashed(mut self) -> StatementKey {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &self.user,
            &self.schema,
            &self.context,
            &self.parse_vars,
            &self.sql,
        )
            .hash(&mut hasher);
        self.hash = hasher.finish();
        self
    }
}

impl PartialEq for StatementKey {
    fn eq(&self, other: &StatementKey) -> bool {
        // The same key (one client's statement on its connections) needs no comparison.
        std::ptr::eq(self, other)
            || (self.hash == other.hash
                && self.sql == other.sql
                && self.user == other.user
                && self.schema == other.schema
                && self.context == other.context
                && self.parse_vars == other.parse_vars)
    }
}

impl Eq for StatementKey {}

impl Hash for StatementKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// What the server answered to a prepare: enough to answer the same prepare again.
#[derive(Debug)]
pub struct StatementMeta {
    /// The statement this describes.
    pub key: Arc<StatementKey>,
    /// Parameter definition packets, as the server sent them.
    pub param_defs: Vec<Vec<u8>>,
    /// Column definition packets, as the server sent them.
    pub column_defs: Vec<Vec<u8>>,
    /// The statement reads `LAST_INSERT_ID()` (classified once, at prepare).
    pub reads_last_insert_id: bool,
    /// The statement may change `LAST_INSERT_ID()` (classified once, at prepare).
    pub may_set_insert_id: bool,
}

impl StatementMeta {
    /// The number of `?` placeholders (the server describes each one).
    pub fn params(&self) -> u16 {
        self.param_defs.len() as u16
    }
}

/// Gateway-wide metadata of recently prepared statements (least recently used go first).
pub struct MetadataCache {
    entries: Mutex<LruCache<Arc<StatementKey>, Arc<StatementMeta>>>,
}

impl MetadataCache {
    /// A cache remembering up to `capacity` statements (at least one).
    pub fn new(capacity: usize) -> MetadataCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        MetadataCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The metadata of `key`, if a client prepared it recently.
    pub fn get(&self, key: &StatementKey) -> Option<Arc<StatementMeta>> {
        self.lock().get(key).cloned()
    }

    /// Remembers `meta`, replacing an older entry for the same statement.
    pub fn insert(&self, meta: Arc<StatementMeta>) {
        self.lock().put(meta.key.clone(), meta);
    }

    /// Forgets every entry: after DDL, any statement's parameters or columns may differ.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Arc<StatementKey>, Arc<StatementMeta>>> {
        // The cache holds no invariant a panicking holder could break.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A statement as prepared on one database connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatement {
    /// The server's id for it on that connection.
    pub id: u32,
    /// Its `?` placeholders.
    pub params: u16,
    /// The parameter types last bound to it there (the server reuses them when an execute
    /// binds none); shared with the client statement that bound them, so an execute copies
    /// no bytes.
    pub types: Option<Arc<[u8]>>,
}

/// The statements prepared on one database connection, least recently used first out.
#[derive(Debug)]
pub struct BackendStatements {
    entries: LruCache<Arc<StatementKey>, BackendStatement>,
}

impl Default for BackendStatements {
    fn default() -> Self {
        BackendStatements {
            entries: LruCache::unbounded(),
        }
    }
}

impl BackendStatements {
    /// The copy of `key` on this connection, marked as just used.
    pub fn get_mut(&mut self, key: &StatementKey) -> Option<&mut BackendStatement> {
        self.entries.get_mut(key)
    }

    /// Records a statement just prepared on this connection; returns the ids of the least
    /// recently used ones to close so that at most `capacity` stay prepared.
    pub fn insert(
        &mut self,
        key: Arc<StatementKey>,
        id: u32,
        params: u16,
        capacity: usize,
    ) -> Vec<u32> {
        let mut evicted = Vec::new();
        let statement = BackendStatement {
            id,
            params,
            types: None,
        };
        if let Some(replaced) = self.entries.put(key, statement) {
            // Prepared twice here (its metadata had left the cache): keep only the new copy.
            evicted.push(replaced.id);
        }
        while self.entries.len() > capacity.max(1) {
            if let Some((_, statement)) = self.entries.pop_lru() {
                evicted.push(statement.id);
            }
        }
        evicted
    }

    /// Forgets every statement: the server dropped them (reset or change of user).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether no statement is kept here.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every statement but those `spare` names and returns their ids, for closing
    /// them on the server.
    pub fn take_unless(&mut self, spare: &dyn Fn(&StatementKey) -> bool) -> Vec<u32> {
        let gone: Vec<Arc<StatementKey>> = self
            .entries
            .iter()
            .filter(|(key, _)| !spare(key))
            .map(|(key, _)| key.clone())
            .collect();
        gone.iter()
            .filter_map(|key| self.entries.pop(key).map(|s| s.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Arc<StatementKey> {
        Arc::new(StatementKey::new(
            "app",
            Some("db"),
            45,
            &BTreeMap::new(),
            sql.as_bytes(),
        ))
    }

    #[test]
    fn parse_context_separates_statements() {
        let mut vars = BTreeMap::new();
        let plain = StatementKey::new("app", Some("db"), 45, &vars, b"SELECT \"a\"");
        vars.insert("time_zone".to_owned(), "+01:00".to_owned());
        let other_zone = StatementKey::new("app", Some("db"), 45, &vars, b"SELECT \"a\"");
        assert_eq!(plain, other_zone, "time_zone does not change parsing");
        vars.insert("sql_mode".to_owned(), "ANSI_QUOTES".to_owned());
        let ansi = StatementKey::new("app", Some("db"), 45, &vars, b"SELECT \"a\"");
        assert_ne!(plain, ansi);
        let other_schema = StatementKey::new("app", Some("x"), 45, &BTreeMap::new(), b"SELECT 1");
        let other_user = StatementKey::new("bob", Some("x"), 45, &BTreeMap::new(), b"SELECT 1");
        assert_ne!(other_schema, other_user);
    }

    #[test]
    fn keys_made_apart_find_each_other() {
        let mut statements = BackendStatements::default();
        statements.insert(key("SELECT ?"), 1, 1, 8);
        assert_eq!(statements.get_mut(&key("SELECT ?")).map(|s| s.id), Some(1));
        let extended = Arc::new((*key("SELECT ?")).clone().with_extended_metadata(true));
        assert!(statements.get_mut(&extended).is_none());
        let plain = (*key("SELECT ?")).clone().with_extended_metadata(false);
        assert_eq!(statements.get_mut(&plain).map(|s| s.id), Some(1));
    }

    #[test]
    fn backend_statements_evict_least_recently_used() {
        let mut statements = BackendStatements::default();
        assert!(statements.insert(key("a"), 1, 0, 2).is_empty());
        assert!(statements.insert(key("b"), 2, 0, 2).is_empty());
        // Using "a" makes "b" the oldest.
        statements.get_mut(&key("a")).unwrap().types = Some(Arc::from([8, 0]));
        assert_eq!(statements.insert(key("c"), 3, 0, 2), vec![2]);
        assert_eq!(
            statements.insert(key("c"), 4, 0, 2),
            vec![3],
            "the older copy is closed"
        );
        assert!(statements.get_mut(&key("b")).is_none());
        assert_eq!(
            statements.get_mut(&key("a")).unwrap().types.as_deref(),
            Some(&[8, 0][..])
        );
        statements.clear();
        assert!(statements.get_mut(&key("a")).is_none());
        assert!(statements.get_mut(&key("c")).is_none());
    }

    #[test]
    fn copies_give_way_but_those_spared() {
        let mut statements = BackendStatements::default();
        for (id, sql) in [(1, "a"), (2, "b"), (3, "c")] {
            statements.insert(key(sql), id, 0, 8);
        }
        let mut gone = statements.take_unless(&|k: &StatementKey| k.sql() == b"b");
        gone.sort_unstable();
        assert_eq!(gone, vec![1, 3]);
        assert_eq!(statements.get_mut(&key("b")).map(|s| s.id), Some(2));
        assert!(statements.get_mut(&key("a")).is_none());
        assert_eq!(statements.take_unless(&|_: &StatementKey| false), vec![2]);
        assert!(statements.is_empty());
    }

    #[test]
    fn metadata_cache_is_bounded() {
        let cache = MetadataCache::new(1);
        for sql in ["a", "b"] {
            cache.insert(Arc::new(StatementMeta {
                key: key(sql),
                param_defs: Vec::new(),
                column_defs: Vec::new(),
                reads_last_insert_id: false,
                may_set_insert_id: false,
            }));
        }
        assert!(cache.get(&key("a")).is_none());
        assert_eq!(cache.get(&key("b")).unwrap().key.sql, b"b");
    }
}
