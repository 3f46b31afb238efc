//! What the three stores share: name checks, the SQL of every operation, the
//! migration renderer, row decoding and the `SessionStore` implementation.

// Each backend uses a different subset of these helpers.
#![cfg_attr(
    not(all(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::collections::HashMap;
use std::future::Future;
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use keepsake_core::batch::Batcher;
use keepsake_core::{Cas, Error, Record, Result, SessionInfo, StorageKey};
use sqlx::pool::PoolOptions;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Decode, Row, Type};

/// The table name used unless `with_table_name` says otherwise.
pub(crate) const DEFAULT_TABLE: &str = "sessions";

/// Rows deleted per `gc` statement unless `with_gc_batch_size` says otherwise.
pub(crate) const DEFAULT_GC_BATCH_SIZE: u64 = 1_000;

/// The longest table or schema name accepted: PostgreSQL's identifier limit.
pub(crate) const MAX_NAME_LEN: usize = 63;

/// The most keys one grouped load statement asks for; a larger batch is
/// split into several statements. Far below SQLite's smallest limit on
/// bound parameters (999 before 3.32).
pub(crate) const MAX_GROUP: usize = 64;

/// The sizes of the `IN (…)` lists that have a statement (MySQL, SQLite): a
/// group is padded to the next size by repeating its last key, so each
/// connection prepares at most this many grouped statements.
const GROUP_SIZES: [usize; 6] = [2, 4, 8, 16, 32, MAX_GROUP];

/// The operations of one store (one table) waiting at the same moment, each
/// kind grouped into one statement; see [`keepsake_core::batch`].
#[derive(Debug, Default)]
pub(crate) struct Batches {
    pub(crate) loads: Batcher<StorageKey, Option<Record>, sqlx::Error>,
    /// A record to save in place and the version it expects.
    pub(crate) saves: Batcher<(Record, i64), Cas, sqlx::Error>,
    /// A record to create.
    pub(crate) creates: Batcher<Record, Cas, sqlx::Error>,
    /// A key to retire and the version it expects.
    pub(crate) retires: Batcher<(StorageKey, i64), Cas, sqlx::Error>,
    /// Statements sent, single and grouped, by [`Statement`] (tests count
    /// them).
    #[cfg(test)]
    sent: [AtomicUsize; 4],
}

/// The kinds of statement a store groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Statement {
    Load,
    Save,
    Create,
    Retire,
}

impl Batches {
    /// Notes one statement of `kind` sent (in tests; nothing otherwise).
    #[allow(clippy::unused_self)]
    pub(crate) fn sent(&self, kind: Statement) {
        #[cfg(test)]
        self.sent[kind as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(not(test))]
        let _ = kind;
    }

    /// Statements of `kind` sent so far.
    #[cfg(test)]
    pub(crate) fn count(&self, kind: Statement) -> usize {
        self.sent[kind as usize].load(Ordering::Relaxed)
    }
}

/// Binds the keys of a grouped load: one array on PostgreSQL, one
/// parameter per key of the padded `IN (…)` list elsewhere.
pub(crate) trait BindKeys: sqlx::Database {
    /// Binds `keys`, repeating the last one up to `padded` parameters where
    /// the statement has one parameter per key.
    fn bind_keys<'q>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        keys: &'q [&'q str],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>;
}

#[cfg(feature = "postgres")]
impl BindKeys for sqlx::Postgres {
    fn bind_keys<'q>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        keys: &'q [&'q str],
        _padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        query.bind(keys)
    }
}

/// One parameter per key, the last repeated up to `padded`.
fn bind_each<'q, DB>(
    mut query: Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    keys: &'q [&'q str],
    padded: usize,
) -> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + Type<DB>,
{
    for key in keys {
        query = query.bind(*key);
    }
    if let Some(last) = keys.last() {
        for _ in keys.len()..padded {
            query = query.bind(*last);
        }
    }
    query
}

#[cfg(feature = "mysql")]
impl BindKeys for sqlx::MySql {
    fn bind_keys<'q>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        keys: &'q [&'q str],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        bind_each(query, keys, padded)
    }
}

#[cfg(feature = "sqlite")]
impl BindKeys for sqlx::Sqlite {
    fn bind_keys<'q>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        keys: &'q [&'q str],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        bind_each(query, keys, padded)
    }
}

/// One bound value of a row of a grouped compare-and-swap.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
}

impl Param<'_> {
    /// The value of the same type in a padding row: an empty key matches
    /// no record (and the create statement filters it out).
    fn padding(self) -> Param<'static> {
        match self {
            Self::Text(_) => Param::Text(""),
            Self::OptText(_) => Param::OptText(None),
            Self::Int(_) => Param::Int(-1),
        }
    }
}

/// A write that a store groups (an in-place save, a create, a retire): its
/// statement, its key, and its values in the order of the grouped
/// statement's columns.
pub(crate) trait GroupRow: Clone {
    /// The statement it belongs to.
    const STATEMENT: Statement;

    /// The key of the record it writes.
    fn key(&self) -> &str;

    /// Its values, in the order of the statement's `VALUES` row (or of its
    /// `unnest` arrays on PostgreSQL).
    fn params(&self) -> impl Iterator<Item = Param<'_>>;
}

/// The single statement of a write that a store also groups: what a write
/// alone in its batch, or written twice in one batch, is sent as.
pub(crate) trait WriteOne<T> {
    fn write_one(&self, write: &T) -> impl Future<Output = sqlx::Result<Cas>> + Send;
}

/// An in-place save: key, expected version, ip_address, user_agent,
/// payload, last_activity, version.
impl GroupRow for (Record, i64) {
    const STATEMENT: Statement = Statement::Save;

    fn key(&self) -> &str {
        self.0.key.as_str()
    }

    fn params(&self) -> impl Iterator<Item = Param<'_>> {
        let (record, expected) = self;
        [
            Param::Text(record.key.as_str()),
            Param::Int(*expected),
            Param::OptText(record.ip_address.as_deref()),
            Param::OptText(record.user_agent.as_deref()),
            Param::Text(record.payload.as_str()),
            Param::Int(record.last_activity),
            Param::Int(record.version),
        ]
        .into_iter()
    }
}

/// A create: the eight columns of [`COLUMNS`], in order.
impl GroupRow for Record {
    const STATEMENT: Statement = Statement::Create;

    fn key(&self) -> &str {
        self.key.as_str()
    }

    fn params(&self) -> impl Iterator<Item = Param<'_>> {
        [
            Param::Text(self.key.as_str()),
            Param::OptText(self.user_id.as_deref()),
            Param::OptText(self.ip_address.as_deref()),
            Param::OptText(self.user_agent.as_deref()),
            Param::Text(self.payload.as_str()),
            Param::Int(self.last_activity),
            Param::Int(self.expires_at),
            Param::Int(self.version),
        ]
        .into_iter()
    }
}

/// A retire: key, expected version.
impl GroupRow for (StorageKey, i64) {
    const STATEMENT: Statement = Statement::Retire;

    fn key(&self) -> &str {
        self.0.as_str()
    }

    fn params(&self) -> impl Iterator<Item = Param<'_>> {
        [Param::Text(self.0.as_str()), Param::Int(self.1)].into_iter()
    }
}

/// Binds the rows of a grouped compare-and-swap: one array per column on
/// PostgreSQL, one row of parameters per write of a padded `VALUES` list
/// elsewhere.
pub(crate) trait BindRows: sqlx::Database {
    /// Binds `rows`, padded up to `padded` rows where the statement has one
    /// row of parameters per write.
    fn bind_rows<'q, T: GroupRow>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        rows: &[&'q T],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>;
}

/// The rows' values column by column, one array each, typed by the first
/// row (every row of one kind has the same types).
#[cfg(feature = "postgres")]
impl BindRows for sqlx::Postgres {
    fn bind_rows<'q, T: GroupRow>(
        mut query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        rows: &[&'q T],
        _padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        let table: Vec<Vec<Param<'q>>> = rows.iter().map(|row| row.params().collect()).collect();
        let Some(first) = table.first() else {
            return query;
        };
        for (c, kind) in first.iter().enumerate() {
            let column = table.iter().map(|row| row[c]);
            query = match kind {
                Param::Text(_) => query.bind(
                    column
                        .map(|p| if let Param::Text(v) = p { v } else { "" })
                        .collect::<Vec<_>>(),
                ),
                Param::OptText(_) => query.bind(
                    column
                        .map(|p| if let Param::OptText(v) = p { v } else { None })
                        .collect::<Vec<_>>(),
                ),
                Param::Int(_) => query.bind(
                    column
                        .map(|p| if let Param::Int(v) = p { v } else { -1 })
                        .collect::<Vec<_>>(),
                ),
            };
        }
        query
    }
}

/// Each row's values, then padding rows shaped like the first.
fn bind_values<'q, DB, T: GroupRow>(
    mut query: Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    rows: &[&'q T],
    padded: usize,
) -> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + Type<DB>,
    i64: sqlx::Encode<'q, DB> + Type<DB>,
{
    let bind = |query: Query<'q, DB, _>, param: Param<'q>| match param {
        Param::Text(v) => query.bind(v),
        Param::OptText(v) => query.bind(v),
        Param::Int(v) => query.bind(v),
    };
    for row in rows {
        query = row.params().fold(query, bind);
    }
    if let Some(first) = rows.first() {
        for _ in rows.len()..padded {
            query = first
                .params()
                .map(|p| -> Param<'q> { p.padding() })
                .fold(query, bind);
        }
    }
    query
}

#[cfg(feature = "mysql")]
impl BindRows for sqlx::MySql {
    fn bind_rows<'q, T: GroupRow>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        rows: &[&'q T],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        bind_values(query, rows, padded)
    }
}

#[cfg(feature = "sqlite")]
impl BindRows for sqlx::Sqlite {
    fn bind_rows<'q, T: GroupRow>(
        query: Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>>,
        rows: &[&'q T],
        padded: usize,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments<'q>> {
        bind_values(query, rows, padded)
    }
}

/// How long a pooled connection may sit idle and still be used without a
/// ping first.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// When the store last saw an operation fail, shared with the pool's
/// `before_acquire` hook (see [`pool_options`]).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Nanoseconds after [`epoch`] of the last failure, plus one; 0 = never.
    last_failure: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Health {
    /// Notes that an operation failed just now.
    pub(crate) fn record_failure(&self) {
        let now = nanos(epoch().elapsed()).saturating_add(1);
        self.last_failure.fetch_max(now, Ordering::Relaxed);
    }

    /// True when a connection idle for `idle_for` was put back before the
    /// last failure, so it may have died along with the failed one.
    fn idle_since_before_failure(&self, idle_for: Duration) -> bool {
        let failure = self.last_failure.load(Ordering::Relaxed);
        failure != 0 && nanos(epoch().elapsed().saturating_sub(idle_for)) < failure
    }
}

/// Pool options for the stores' `connect`: sqlx's defaults, except for when
/// an idle connection is pinged before use. sqlx pings before every use,
/// which doubles the round trips of every session operation. Here a
/// connection is pinged only when it has been idle for more than
/// [`PING_AFTER_IDLE`] (an idle-connection killer or a server restart may
/// have closed it), or when it went idle before the store's last failed
/// operation (whatever killed that connection may have killed it too). A
/// busy pool thus costs one round trip per operation, and after a
/// connection is lost, one operation fails and the next ones get live
/// connections.
pub(crate) fn pool_options<DB: sqlx::Database>(health: Arc<Health>) -> PoolOptions<DB> {
    PoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let stale =
                meta.idle_for > PING_AFTER_IDLE || health.idle_since_before_failure(meta.idle_for);
            Box::pin(async move {
                if !stale {
                    return Ok(true);
                }
                // A failed ping discards the connection and takes another.
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
}

/// Checks a table or schema name before it is put into SQL text: 1 to 63 of
/// `[A-Za-z0-9_]`. Such a name needs no escaping inside quotes.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::Config {
            message: format!(
                "{what} name must be 1 to {MAX_NAME_LEN} characters long, got {} characters",
                name.len()
            ),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(Error::Config {
            message: format!(
                "{what} name {name:?} may only contain ASCII letters, digits and `_`, found {bad:?}"
            ),
        });
    }
    Ok(())
}

/// The SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// Quotes a name checked by [`validate_name`].
    pub(crate) fn quote(self, name: &str) -> String {
        match self {
            Self::MySql => format!("`{name}`"),
            Self::Sqlite | Self::Postgres => format!("\"{name}\""),
        }
    }

    /// The scalar function that picks the larger of two values.
    fn greatest(self) -> &'static str {
        match self {
            Self::Sqlite => "MAX",
            Self::Postgres | Self::MySql => "GREATEST",
        }
    }

    /// The `n`th bind parameter (1-based). Every statement below uses its
    /// parameters once each and in order, so MySQL's positional `?` binds
    /// the same values as the numbered forms.
    fn param(self, n: usize) -> String {
        match self {
            Self::Postgres => format!("${n}"),
            Self::Sqlite => format!("?{n}"),
            Self::MySql => "?".to_owned(),
        }
    }
}

/// The name of the index on `table` whose default name is `sessions_{suffix}`.
///
/// PostgreSQL cuts identifiers at 63 bytes and MySQL refuses longer ones, so
/// a long table name is shortened and made unique again with a hash of the
/// whole name.
pub(crate) fn index_name(table: &str, suffix: &str) -> String {
    let full = format!("{table}_{suffix}");
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    // 8 hex digits and two underscores around them.
    let keep = MAX_NAME_LEN.saturating_sub(suffix.len() + 10);
    let prefix = table.get(..keep).unwrap_or(table);
    format!("{prefix}_{:08x}_{suffix}", fnv1a(table))
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Renders a migration file, written for the default table `sessions`, for
/// another table: the identifier `sessions` becomes `table_ref` (quoted and,
/// on PostgreSQL, schema-qualified), every identifier `sessions_*` (an index)
/// becomes the quoted [`index_name`], and `--` comments are dropped.
///
/// The migration files contain no string literals, so this token-level
/// rewrite cannot touch anything but identifiers.
pub(crate) fn render_migration(
    sql: &str,
    dialect: Dialect,
    table: &str,
    table_ref: &str,
) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    for line in sql.lines() {
        let code = line.split_once("--").map_or(line, |(code, _)| code);
        if code.trim().is_empty() {
            continue;
        }
        let mut rest = code;
        while !rest.is_empty() {
            let word_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if word_len == 0 {
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    out.push(c);
                }
                rest = chars.as_str();
                continue;
            }
            let (word, tail) = rest.split_at(word_len);
            if word == DEFAULT_TABLE {
                out.push_str(table_ref);
            } else if let Some(suffix) = word.strip_prefix("sessions_") {
                out.push_str(&dialect.quote(&index_name(table, suffix)));
            } else {
                out.push_str(word);
            }
            rest = tail;
        }
        out.push('\n');
    }
    out
}

/// Indexes that earlier versions of the migrations created and the current
/// schema no longer has, by suffix (`sessions_{suffix}`): `migrate()` drops
/// them from existing tables after the migration files have run.
///
/// `last_activity_idx`: no statement filters or sorts the whole table on
/// `last_activity` (the per-user list sorts one user's rows, the CLI's
/// statistics scan), yet every save and touch maintained it.
/// `user_id_idx`: replaced by a partial index of the rows that have a user
/// where the backend has partial indexes (PostgreSQL, SQLite).
pub(crate) fn retired_indexes(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite | Dialect::Postgres => &["last_activity_idx", "user_id_idx"],
        Dialect::MySql => &["last_activity_idx"],
    }
}

/// A conditional write's answer from the rows it changed.
pub(crate) fn cas(rows: u64) -> Cas {
    if rows == 0 {
        Cas::Conflict
    } else {
        Cas::Applied
    }
}

/// The SQL of every operation, with the table name in place: built once
/// when the store is configured, so every call reuses the same text and
/// sqlx's per-connection prepared-statement cache.
#[derive(Debug)]
pub(crate) struct Queries {
    /// `$1` key, `$2` now.
    pub(crate) load: String,
    /// The grouped loads: the columns of `load` and then `id`. On
    /// PostgreSQL one statement, `$1` the keys as an array, `$2` now; on
    /// the others one per size of [`GROUP_SIZES`], the keys and then now.
    load_group: Vec<String>,
    /// The grouped in-place saves, answered by the ids that applied. On
    /// PostgreSQL one statement over seven arrays (key, expected version,
    /// ip_address, user_agent, payload, last_activity, version) and `$8`
    /// now; on SQLite one per size of [`GROUP_SIZES`], seven parameters per
    /// row and then now; none on MySQL.
    save_group: Vec<String>,
    /// The grouped creates, answered by the ids that were written: the
    /// rows of `create` (eight arrays on PostgreSQL, eight parameters per
    /// row of a padded `VALUES` list on SQLite) and then now; none on
    /// MySQL.
    create_group: Vec<String>,
    /// The grouped retires, answered by the ids deleted: the keys and the
    /// versions they expect (two arrays on PostgreSQL, two parameters per
    /// row on SQLite) and then now; none on MySQL.
    retire_group: Vec<String>,
    /// `$1`…`$8` the columns; on PostgreSQL and SQLite `$9` now (an expired
    /// row with the same key is replaced in the same statement).
    pub(crate) create: String,
    /// `$1`…`$7` the new values, `$8` key, `$9` expected version, `$10` now.
    pub(crate) save: String,
    /// A save that keeps `expires_at` and `user_id`, so no index is written
    /// (and PostgreSQL can update in place): `$1` ip_address, `$2`
    /// user_agent, `$3` payload, `$4` last_activity, `$5` version, `$6` key,
    /// `$7` expected version, `$8` now.
    pub(crate) save_in_place: String,
    /// `$1` last_activity, `$2` expires_at (kept when the stored one is
    /// later), `$3` key, `$4` expected version, `$5` now.
    pub(crate) touch: String,
    /// `$1` key.
    pub(crate) destroy: String,
    /// `$1` key, `$2` expected version, `$3` now.
    pub(crate) retire: String,
    /// `$1` now, `$2` batch size.
    pub(crate) gc: String,
    /// `$1` user, `$2` now.
    pub(crate) list_for_user: String,
    /// `$1` user.
    pub(crate) destroy_for_user: String,
    /// `$1` user, `$2` the key to keep.
    pub(crate) destroy_for_user_except: String,
}

const COLUMNS: &str =
    "id, user_id, ip_address, user_agent, payload, last_activity, expires_at, version";

impl Queries {
    /// The statements for `table_ref`, a quoted (and possibly qualified) name.
    pub(crate) fn new(dialect: Dialect, table_ref: &str) -> Self {
        let p = |n| dialect.param(n);
        let t = table_ref;
        let values = (1..=8).map(p).collect::<Vec<_>>().join(", ");
        let create = match dialect {
            // An expired row that gc has not collected yet is replaced in
            // the same statement; a live one is left alone (0 rows).
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {t} AS cur ({COLUMNS}) VALUES ({values}) \
                 ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, \
                 ip_address = excluded.ip_address, user_agent = excluded.user_agent, \
                 payload = excluded.payload, last_activity = excluded.last_activity, \
                 expires_at = excluded.expires_at, version = excluded.version \
                 WHERE cur.expires_at <= {}",
                p(9)
            ),
            // MySQL's affected-rows count cannot tell an insert from a
            // no-op `ON DUPLICATE KEY UPDATE` (sqlx sets CLIENT_FOUND_ROWS),
            // so a plain INSERT is used and a duplicate key means Conflict.
            Dialect::MySql => format!("INSERT INTO {t} ({COLUMNS}) VALUES ({values})"),
        };
        let gc = match dialect {
            Dialect::MySql => format!(
                "DELETE FROM {t} WHERE expires_at <= {} LIMIT {}",
                p(1),
                p(2)
            ),
            // SKIP LOCKED: a batch never waits for rows that a concurrent
            // gc (another app server) is already deleting.
            Dialect::Postgres => format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE expires_at <= {} \
                 LIMIT {} FOR UPDATE SKIP LOCKED)",
                p(1),
                p(2)
            ),
            Dialect::Sqlite => format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE expires_at <= {} LIMIT {})",
                p(1),
                p(2)
            ),
        };
        let group_select = format!(
            "SELECT payload, last_activity, expires_at, version, user_id, ip_address, \
             user_agent, id FROM {t} WHERE id"
        );
        let load_group = match dialect {
            Dialect::Postgres => vec![format!("{group_select} = ANY($1) AND expires_at > $2")],
            Dialect::MySql | Dialect::Sqlite => GROUP_SIZES
                .iter()
                .map(|&n| {
                    let list = (1..=n).map(p).collect::<Vec<_>>().join(", ");
                    format!("{group_select} IN ({list}) AND expires_at > {}", p(n + 1))
                })
                .collect(),
        };
        // In-place saves of several records in one statement, each a
        // compare-and-swap; RETURNING names the records that applied.
        // MySQL has no UPDATE … RETURNING: its in-place saves go one by one.
        let save_group = match dialect {
            Dialect::Postgres => vec![format!(
                "UPDATE {t} AS s SET ip_address = v.ip, user_agent = v.ua, payload = v.body, \
                 last_activity = v.last, version = v.ver \
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                 $6::int8[], $7::int8[]) AS v(k, expected, ip, ua, body, last, ver) \
                 WHERE s.id = v.k AND s.version = v.expected AND s.expires_at > $8 \
                 RETURNING s.id"
            )],
            // A VALUES list's columns are column1 … column7 (key, expected
            // version, ip_address, user_agent, payload, last_activity,
            // version).
            Dialect::Sqlite => GROUP_SIZES
                .iter()
                .map(|&n| {
                    let rows = values_rows(dialect, n, 7);
                    format!(
                        "UPDATE {t} AS s SET ip_address = v.column3, user_agent = v.column4, \
                         payload = v.column5, last_activity = v.column6, version = v.column7 \
                         FROM (VALUES {rows}) AS v \
                         WHERE s.id = v.column1 AND s.version = v.column2 AND s.expires_at > {} \
                         RETURNING id",
                        p(n * 7 + 1)
                    )
                })
                .collect(),
            Dialect::MySql => Vec::new(),
        };
        // Creates of several records in one statement, each inserted only
        // where no live record has its key (an expired one is replaced);
        // RETURNING names the records written. Padding rows (SQLite) have
        // an empty key and are filtered out before the insert.
        let upsert = "ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, \
             ip_address = excluded.ip_address, user_agent = excluded.user_agent, \
             payload = excluded.payload, last_activity = excluded.last_activity, \
             expires_at = excluded.expires_at, version = excluded.version \
             WHERE cur.expires_at <=";
        let create_group = match dialect {
            Dialect::Postgres => vec![format!(
                "INSERT INTO {t} AS cur ({COLUMNS}) SELECT * FROM unnest($1::text[], \
                 $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], \
                 $8::int8[]) {upsert} $9 RETURNING id"
            )],
            Dialect::Sqlite => GROUP_SIZES
                .iter()
                .map(|&n| {
                    let rows = values_rows(dialect, n, 8);
                    format!(
                        "INSERT INTO {t} AS cur ({COLUMNS}) SELECT column1, column2, column3, \
                         column4, column5, column6, column7, column8 FROM (VALUES {rows}) \
                         WHERE column1 <> '' {upsert} {} RETURNING id",
                        p(n * 8 + 1)
                    )
                })
                .collect(),
            Dialect::MySql => Vec::new(),
        };
        let retire_group = match dialect {
            Dialect::Postgres => vec![format!(
                "DELETE FROM {t} AS s USING unnest($1::text[], $2::int8[]) AS v(k, expected) \
                 WHERE s.id = v.k AND s.version = v.expected AND s.expires_at > $3 \
                 RETURNING s.id"
            )],
            Dialect::Sqlite => GROUP_SIZES
                .iter()
                .map(|&n| {
                    let rows = values_rows(dialect, n, 2);
                    format!(
                        "DELETE FROM {t} WHERE (id, version) IN (VALUES {rows}) \
                         AND expires_at > {} RETURNING id",
                        p(n * 2 + 1)
                    )
                })
                .collect(),
            Dialect::MySql => Vec::new(),
        };
        Self {
            load_group,
            save_group,
            create_group,
            retire_group,
            load: format!(
                "SELECT payload, last_activity, expires_at, version, user_id, ip_address, \
                 user_agent FROM {t} WHERE id = {} AND expires_at > {}",
                p(1),
                p(2)
            ),
            create,
            save: format!(
                "UPDATE {t} SET user_id = {}, ip_address = {}, user_agent = {}, payload = {}, \
                 last_activity = {}, expires_at = {}, version = {} \
                 WHERE id = {} AND version = {} AND expires_at > {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10)
            ),
            save_in_place: format!(
                "UPDATE {t} SET ip_address = {}, user_agent = {}, payload = {}, \
                 last_activity = {}, version = {} \
                 WHERE id = {} AND version = {} AND expires_at > {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8)
            ),
            touch: format!(
                "UPDATE {t} SET last_activity = {}, expires_at = {}(expires_at, {}) \
                 WHERE id = {} AND version = {} AND expires_at > {}",
                p(1),
                dialect.greatest(),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
            destroy: format!("DELETE FROM {t} WHERE id = {}", p(1)),
            retire: format!(
                "DELETE FROM {t} WHERE id = {} AND version = {} AND expires_at > {}",
                p(1),
                p(2),
                p(3)
            ),
            gc,
            list_for_user: format!(
                "SELECT id, user_id, last_activity, expires_at, ip_address, user_agent FROM {t} \
                 WHERE user_id = {} AND expires_at > {} ORDER BY last_activity DESC, id",
                p(1),
                p(2)
            ),
            destroy_for_user: format!("DELETE FROM {t} WHERE user_id = {}", p(1)),
            destroy_for_user_except: format!(
                "DELETE FROM {t} WHERE user_id = {} AND id <> {}",
                p(1),
                p(2)
            ),
        }
    }
}

impl Queries {
    /// The grouped load for `keys` keys (2 to [`MAX_GROUP`]), and how many
    /// key parameters it takes (the keys padded to a list size).
    pub(crate) fn load_group(&self, keys: usize) -> (&str, usize) {
        if let [one] = self.load_group.as_slice() {
            return (one, keys);
        }
        let at = GROUP_SIZES
            .iter()
            .position(|&n| n >= keys)
            .unwrap_or(GROUP_SIZES.len() - 1);
        (&self.load_group[at], GROUP_SIZES[at])
    }

    /// The grouped statement of `kind` for `rows` writes (2 to
    /// [`MAX_GROUP`]) and how many rows it takes, or `None` where that kind
    /// is not grouped.
    pub(crate) fn cas_group(&self, kind: Statement, rows: usize) -> Option<(&str, usize)> {
        let sizes = match kind {
            Statement::Save => &self.save_group,
            Statement::Create => &self.create_group,
            Statement::Retire => &self.retire_group,
            Statement::Load => return None,
        };
        match sizes.as_slice() {
            [] => None,
            [one] => Some((one, rows)),
            sizes => {
                let at = GROUP_SIZES
                    .iter()
                    .position(|&n| n >= rows)
                    .unwrap_or(GROUP_SIZES.len() - 1);
                Some((&sizes[at], GROUP_SIZES[at]))
            }
        }
    }

    /// True where writes of `kind` are grouped (not on MySQL).
    pub(crate) fn groups(&self, kind: Statement) -> bool {
        self.cas_group(kind, 2).is_some()
    }
}

/// `rows` rows of `columns` numbered parameters each, for a `VALUES` list:
/// `(?1, ?2), (?3, ?4)`.
fn values_rows(dialect: Dialect, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let params = (1..=columns)
                .map(|c| dialect.param(row * columns + c))
                .collect::<Vec<_>>();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Matches the records of a batch back to its keys, in order: a key with
/// no record (missing or expired) gets `None`, a key asked for twice gets
/// the record twice.
pub(crate) fn match_records(
    keys: &[StorageKey],
    mut found: HashMap<&str, Record>,
) -> Vec<Option<Record>> {
    let mut answers = vec![None; keys.len()];
    // From the back: a key's last occurrence takes its record, an earlier
    // one a copy of that answer.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate().rev() {
        answers[i] = match last.get(key.as_str()) {
            Some(&later) => answers[later].clone(),
            None => {
                last.insert(key.as_str(), i);
                found.remove(key.as_str())
            }
        };
    }
    answers
}

/// How a backend hands back text columns: PostgreSQL and SQLite as
/// `String`; MySQL as bytes, because sqlx refuses to decode a column with a
/// binary collation (the table's `utf8mb4_bin`) as a `String`.
pub(crate) trait Text: Sized {
    fn into_string(self) -> Result<String, sqlx::error::BoxDynError>;
}

impl Text for String {
    fn into_string(self) -> Result<String, sqlx::error::BoxDynError> {
        Ok(self)
    }
}

impl Text for Vec<u8> {
    fn into_string(self) -> Result<String, sqlx::error::BoxDynError> {
        Ok(String::from_utf8(self)?)
    }
}

pub(crate) fn text<'r, R, T>(row: &'r R, index: usize) -> sqlx::Result<Option<String>>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Text + Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get::<Option<T>, _>(index)?
        .map(Text::into_string)
        .transpose()
        .map_err(|source| sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source,
        })
}

/// Decodes a row of [`Queries::load`]. The payload is returned as stored:
/// the store never interprets it (a NULL one, possible only in a table made
/// by hand, comes back empty, which the layer treats as corrupt).
pub(crate) fn record_from_row<'r, R, T>(key: &StorageKey, row: &'r R) -> sqlx::Result<Record>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Text + Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Record {
        key: key.clone(),
        payload: text::<R, T>(row, 0)?.unwrap_or_default(),
        last_activity: row.try_get(1)?,
        expires_at: row.try_get(2)?,
        version: row.try_get(3)?,
        user_id: text::<R, T>(row, 4)?,
        ip_address: text::<R, T>(row, 5)?,
        user_agent: text::<R, T>(row, 6)?,
    })
}

/// Decodes a row of a grouped load: its key (column 7) and record; `None`
/// for a row whose id is none of `keys` (it cannot match anyway).
pub(crate) fn keyed_record_from_row<'r, 'k, R, T>(
    keys: &HashMap<&'k str, &'k StorageKey>,
    row: &'r R,
) -> sqlx::Result<Option<(&'k str, Record)>>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Text + Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id = text::<R, T>(row, 7)?.unwrap_or_default();
    match keys.get_key_value(id.as_str()) {
        Some((&id, key)) => Ok(Some((id, record_from_row::<R, T>(key, row)?))),
        None => Ok(None),
    }
}

/// Decodes a row of [`Queries::list_for_user`]; `Ok(None)` for a row whose id
/// is not a storage key (written by something other than keepsake), which is
/// logged and skipped.
pub(crate) fn info_from_row<'r, R, T>(store: &str, row: &'r R) -> sqlx::Result<Option<SessionInfo>>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Text + Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id = text::<R, T>(row, 0)?.unwrap_or_default();
    let Some(key) = StorageKey::parse(&id) else {
        tracing::warn!(
            store,
            id_len = id.len(),
            "skipping a session row whose id is not a storage key"
        );
        return Ok(None);
    };
    Ok(Some(SessionInfo {
        key,
        user_id: text::<R, T>(row, 1)?,
        last_activity: row.try_get(2)?,
        expires_at: row.try_get(3)?,
        ip_address: text::<R, T>(row, 4)?,
        user_agent: text::<R, T>(row, 5)?,
    }))
}

/// `u64` for a batch size bound as SQL `LIMIT` (every backend takes a signed
/// 64-bit integer there).
pub(crate) fn limit(batch: u64) -> i64 {
    i64::try_from(batch).unwrap_or(i64::MAX)
}

/// The builder methods and helpers every store has, and its `SessionStore`
/// implementation. The store type must have the fields `pool`, `queries`
/// (`Arc<Queries>`), `batches` (`Arc<Batches>`), `table`, `gc_batch_size` and
/// `health` (`Option<Arc<Health>>`), and an inherent
/// `fn table_ref(&self) -> String` (the quoted, possibly qualified, table
/// name). `$db` is its sqlx database, `$dialect` its [`Dialect`]; `$text`
/// the backend's [`Text`] type.
macro_rules! impl_store {
    ($store:ident, $pool:ty, $db:ty, $kind:expr, $dialect:expr, $text:ty) => {
        impl $store {
            /// Sets the table name. Defaults to `sessions`.
            ///
            /// # Errors
            ///
            /// [`Error::Config`] unless the name is 1 to 63 of `[A-Za-z0-9_]`.
            pub fn with_table_name(mut self, name: &str) -> Result<Self> {
                $crate::common::validate_name("table", name)?;
                name.clone_into(&mut self.table);
                self.rebuild();
                Ok(self)
            }

            /// Renders the statements again after the table's name changed,
            /// with a batcher of its own: loads of two tables never share a
            /// batch.
            fn rebuild(&mut self) {
                self.queries = Arc::new(Queries::new($dialect, &self.table_ref()));
                self.batches = Arc::default();
            }

            /// The single-key load statement.
            async fn load_one(&self, key: &StorageKey, now: i64) -> sqlx::Result<Option<Record>> {
                self.batches.sent($crate::common::Statement::Load);
                let row = sqlx::query(&self.queries.load)
                    .bind(key.as_str())
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| $crate::common::record_from_row::<_, $text>(key, &row))
                    .transpose()
            }

            /// One batch of loads, answered in the order of `keys`: the
            /// single-key statement for one key, else one grouped
            /// statement per [`MAX_GROUP`](crate::common::MAX_GROUP)
            /// distinct keys.
            async fn load_batch(&self, keys: Vec<StorageKey>) -> sqlx::Result<Vec<Option<Record>>> {
                let now = keepsake_core::now();
                if let [key] = keys.as_slice() {
                    return Ok(vec![self.load_one(key, now).await?]);
                }
                let by_id: std::collections::HashMap<&str, &StorageKey> =
                    keys.iter().map(|k| (k.as_str(), k)).collect();
                let distinct: Vec<&str> = by_id.keys().copied().collect();
                let mut found = std::collections::HashMap::with_capacity(distinct.len());
                for group in distinct.chunks($crate::common::MAX_GROUP) {
                    if let [id] = group {
                        if let Some(record) = self.load_one(by_id[id], now).await? {
                            found.insert(*id, record);
                        }
                        continue;
                    }
                    let (sql, padded) = self.queries.load_group(group.len());
                    self.batches.sent($crate::common::Statement::Load);
                    let rows = <$db as $crate::common::BindKeys>::bind_keys(
                        sqlx::query(sql),
                        group,
                        padded,
                    )
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                    for row in &rows {
                        if let Some((id, record)) =
                            $crate::common::keyed_record_from_row::<_, $text>(&by_id, row)?
                        {
                            found.insert(id, record);
                        }
                    }
                }
                Ok($crate::common::match_records(&keys, found))
            }

            /// The single in-place save statement.
            async fn save_one_in_place(&self, record: &Record, expected: i64) -> sqlx::Result<Cas> {
                self.batches.sent($crate::common::Statement::Save);
                let rows = sqlx::query(&self.queries.save_in_place)
                    .bind(record.ip_address.as_deref())
                    .bind(record.user_agent.as_deref())
                    .bind(record.payload.as_str())
                    .bind(record.last_activity)
                    .bind(record.version)
                    .bind(record.key.as_str())
                    .bind(expected)
                    .bind(keepsake_core::now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok($crate::common::cas(rows))
            }

            /// The single insert-if-absent of `create`. PostgreSQL and
            /// SQLite replace an expired row in the same statement (`now`
            /// is bound for that) and report a live one as 0 rows; MySQL
            /// reports it as a duplicate key.
            async fn create_one(&self, record: &Record) -> sqlx::Result<Cas> {
                self.batches.sent($crate::common::Statement::Create);
                let mut query = sqlx::query(&self.queries.create)
                    .bind(record.key.as_str())
                    .bind(record.user_id.as_deref())
                    .bind(record.ip_address.as_deref())
                    .bind(record.user_agent.as_deref())
                    .bind(record.payload.as_str())
                    .bind(record.last_activity)
                    .bind(record.expires_at)
                    .bind(record.version);
                if $dialect != Dialect::MySql {
                    query = query.bind(keepsake_core::now());
                }
                match query.execute(&self.pool).await {
                    Ok(done) => Ok($crate::common::cas(done.rows_affected())),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Cas::Conflict),
                    Err(e) => Err(e),
                }
            }

            /// The single retire statement.
            async fn retire_one(&self, key: &StorageKey, expected: i64) -> sqlx::Result<Cas> {
                self.batches.sent($crate::common::Statement::Retire);
                let rows = sqlx::query(&self.queries.retire)
                    .bind(key.as_str())
                    .bind(expected)
                    .bind(keepsake_core::now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok($crate::common::cas(rows))
            }

            /// One batch of compare-and-swap writes of one kind (in-place
            /// saves, creates or retires), answered in order: `one`, the
            /// single statement, for a write alone, else one grouped
            /// statement per [`MAX_GROUP`](crate::common::MAX_GROUP)
            /// writes, whose `RETURNING` names the records that applied. A
            /// key written twice in one batch (two layers on one table) is
            /// written by itself, after the group, so each answer is its
            /// own.
            async fn cas_batch<T>(&self, writes: Vec<T>) -> sqlx::Result<Vec<Cas>>
            where
                T: $crate::common::GroupRow + Sync,
                Self: $crate::common::WriteOne<T>,
            {
                use $crate::common::WriteOne as _;
                if let [write] = writes.as_slice() {
                    return Ok(vec![self.write_one(write).await?]);
                }
                let mut answers = vec![Cas::Conflict; writes.len()];
                let mut seen = std::collections::HashSet::with_capacity(writes.len());
                let (grouped, alone): (Vec<usize>, Vec<usize>) =
                    (0..writes.len()).partition(|&i| seen.insert(writes[i].key()));
                let now = keepsake_core::now();
                for chunk in grouped.chunks($crate::common::MAX_GROUP) {
                    let group = match chunk {
                        [_] => None,
                        _ => self.queries.cas_group(T::STATEMENT, chunk.len()),
                    };
                    let Some((sql, padded)) = group else {
                        for &i in chunk {
                            answers[i] = self.write_one(&writes[i]).await?;
                        }
                        continue;
                    };
                    let rows: Vec<&T> = chunk.iter().map(|&i| &writes[i]).collect();
                    self.batches.sent(T::STATEMENT);
                    let returned = <$db as $crate::common::BindRows>::bind_rows(
                        sqlx::query(sql),
                        &rows,
                        padded,
                    )
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut applied = std::collections::HashSet::with_capacity(returned.len());
                    for row in &returned {
                        if let Some(id) = $crate::common::text::<_, $text>(row, 0)? {
                            applied.insert(id);
                        }
                    }
                    for &i in chunk {
                        if applied.contains(writes[i].key()) {
                            answers[i] = Cas::Applied;
                        }
                    }
                }
                for i in alone {
                    answers[i] = self.write_one(&writes[i]).await?;
                }
                Ok(answers)
            }

            /// Wraps the failure of a batch `operation` was part of, and
            /// tells the pool's health check about it.
            fn fail_shared(&self, operation: &'static str, error: Arc<sqlx::Error>) -> Error {
                if let Some(health) = &self.health {
                    health.record_failure();
                }
                Error::backend($kind, operation, keepsake_core::batch::unshare(error))
            }

            /// Wraps a failure of `operation`, and tells the pool's
            /// health check about it.
            fn fail(&self, operation: &'static str, error: sqlx::Error) -> Error {
                if let Some(health) = &self.health {
                    health.record_failure();
                }
                Error::backend($kind, operation, error)
            }

            /// Sets how many expired rows one `gc` statement deletes.
            /// Smaller batches hold locks for less time; larger ones finish
            /// a big backlog with fewer round trips. Defaults to 1,000; 0 is
            /// taken as 1.
            #[must_use]
            pub fn with_gc_batch_size(mut self, rows: u64) -> Self {
                self.gc_batch_size = rows.max(1);
                self
            }

            /// The connection pool, for queries of the application's own.
            #[must_use]
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// The table the sessions live in (without schema).
            #[must_use]
            pub fn table_name(&self) -> &str {
                &self.table
            }

            /// Like [`SessionStore::gc`], calling `progress` after each batch
            /// with the number of rows deleted so far (for a progress bar).
            ///
            /// # Errors
            ///
            /// [`Error::Backend`] when a statement fails; the rows deleted by
            /// the batches before it stay deleted.
            pub async fn gc_with_progress(
                &self,
                now: i64,
                mut progress: impl FnMut(u64) + Send,
            ) -> Result<u64> {
                let batch = self.gc_batch_size;
                let mut total = 0u64;
                loop {
                    let deleted = sqlx::query(&self.queries.gc)
                        .bind(now)
                        .bind($crate::common::limit(batch))
                        .execute(&self.pool)
                        .await
                        .map_err(|e| self.fail("gc", e))?
                        .rows_affected();
                    total += deleted;
                    progress(total);
                    if deleted < batch {
                        return Ok(total);
                    }
                }
            }
        }

        impl $crate::common::WriteOne<(Record, i64)> for $store {
            fn write_one(
                &self,
                (record, expected): &(Record, i64),
            ) -> impl Future<Output = sqlx::Result<Cas>> + Send {
                self.save_one_in_place(record, *expected)
            }
        }

        impl $crate::common::WriteOne<Record> for $store {
            fn write_one(&self, record: &Record) -> impl Future<Output = sqlx::Result<Cas>> + Send {
                self.create_one(record)
            }
        }

        impl $crate::common::WriteOne<(StorageKey, i64)> for $store {
            fn write_one(
                &self,
                (key, expected): &(StorageKey, i64),
            ) -> impl Future<Output = sqlx::Result<Cas>> + Send {
                self.retire_one(key, *expected)
            }
        }

        #[async_trait::async_trait]
        impl SessionStore for $store {
            /// Grouped with the loads waiting at the same moment (see
            /// [`keepsake_core::batch`]): one statement for all of them.
            async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
                self.batches
                    .loads
                    .run(key.clone(), |keys| self.load_batch(keys))
                    .await
                    .map_err(|e| self.fail_shared("load", e))
            }

            /// Grouped with the creates waiting at the same moment (not on
            /// MySQL): one statement for all of them.
            async fn create(&self, record: &Record) -> Result<Cas> {
                if !self.queries.groups($crate::common::Statement::Create) {
                    return self
                        .create_one(record)
                        .await
                        .map_err(|e| self.fail("create", e));
                }
                self.batches
                    .creates
                    .run(record.clone(), |writes| self.cas_batch(writes))
                    .await
                    .map_err(|e| self.fail_shared("create", e))
            }

            async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
                let rows = sqlx::query(&self.queries.save)
                    .bind(record.user_id.as_deref())
                    .bind(record.ip_address.as_deref())
                    .bind(record.user_agent.as_deref())
                    .bind(record.payload.as_str())
                    .bind(record.last_activity)
                    .bind(record.expires_at)
                    .bind(record.version)
                    .bind(record.key.as_str())
                    .bind(expected_version)
                    .bind(keepsake_core::now())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.fail("save", e))?
                    .rows_affected();
                Ok($crate::common::cas(rows))
            }

            /// Grouped with the in-place saves waiting at the same moment
            /// (not on MySQL): one statement for all of them.
            async fn save_in_place(&self, record: &Record, expected_version: i64) -> Result<Cas> {
                if !self.queries.groups($crate::common::Statement::Save) {
                    return self
                        .save_one_in_place(record, expected_version)
                        .await
                        .map_err(|e| self.fail("save", e));
                }
                self.batches
                    .saves
                    .run((record.clone(), expected_version), |writes| {
                        self.cas_batch(writes)
                    })
                    .await
                    .map_err(|e| self.fail_shared("save", e))
            }

            async fn touch(
                &self,
                key: &StorageKey,
                expected_version: i64,
                last_activity: i64,
                expires_at: i64,
            ) -> Result<Cas> {
                let rows = sqlx::query(&self.queries.touch)
                    .bind(last_activity)
                    .bind(expires_at)
                    .bind(key.as_str())
                    .bind(expected_version)
                    .bind(keepsake_core::now())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.fail("touch", e))?
                    .rows_affected();
                Ok($crate::common::cas(rows))
            }

            /// Grouped with the retires waiting at the same moment (not on
            /// MySQL): one statement for all of them.
            async fn retire(
                &self,
                key: &StorageKey,
                expected_version: i64,
                _owner: Option<&str>,
            ) -> Result<Cas> {
                if !self.queries.groups($crate::common::Statement::Retire) {
                    return self
                        .retire_one(key, expected_version)
                        .await
                        .map_err(|e| self.fail("retire", e));
                }
                self.batches
                    .retires
                    .run((key.clone(), expected_version), |writes| {
                        self.cas_batch(writes)
                    })
                    .await
                    .map_err(|e| self.fail_shared("retire", e))
            }

            async fn destroy(&self, key: &StorageKey) -> Result<()> {
                sqlx::query(&self.queries.destroy)
                    .bind(key.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.fail("destroy", e))?;
                Ok(())
            }

            async fn gc(&self, now: i64) -> Result<u64> {
                self.gc_with_progress(now, |_| {}).await
            }

            async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
                let rows = sqlx::query(&self.queries.list_for_user)
                    .bind(user_id)
                    .bind(keepsake_core::now())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| self.fail("list_for_user", e))?;
                let mut sessions = Vec::with_capacity(rows.len());
                for row in &rows {
                    let info = $crate::common::info_from_row::<_, $text>($kind, row)
                        .map_err(|e| self.fail("list_for_user", e))?;
                    sessions.extend(info);
                }
                Ok(sessions)
            }

            async fn destroy_for_user(
                &self,
                user_id: &str,
                except: Option<&StorageKey>,
            ) -> Result<u64> {
                let query = match except {
                    Some(keep) => sqlx::query(&self.queries.destroy_for_user_except)
                        .bind(user_id)
                        .bind(keep.as_str()),
                    None => sqlx::query(&self.queries.destroy_for_user).bind(user_id),
                };
                Ok(query
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.fail("destroy_for_user", e))?
                    .rows_affected())
            }

            fn kind(&self) -> &'static str {
                $kind
            }
        }
    };
}

pub(crate) use impl_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_idle_since_before_a_failure_are_suspect() {
        let health = Health::default();
        let before = Instant::now();
        assert!(!health.idle_since_before_failure(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(2));
        health.record_failure();
        std::thread::sleep(Duration::from_millis(2));
        let after = Instant::now();
        // Put back before the failure: suspect.
        assert!(health.idle_since_before_failure(before.elapsed()));
        // Put back after the failure: fine.
        assert!(!health.idle_since_before_failure(after.elapsed()));
        assert!(!health.idle_since_before_failure(Duration::ZERO));
    }

    #[test]
    fn names_are_checked() {
        for good in ["sessions", "a", "A_b_9", "_x", &"n".repeat(63)] {
            assert!(validate_name("table", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a-b",
            "a b",
            "a;drop table x",
            "\"x\"",
            "`x`",
            "x.y",
            "é",
            &"n".repeat(64),
        ] {
            assert!(
                matches!(validate_name("table", bad), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn index_names_fit_and_stay_distinct() {
        assert_eq!(
            index_name("sessions", "user_id_idx"),
            "sessions_user_id_idx"
        );
        let long = "t".repeat(63);
        let other = format!("{}u", "t".repeat(62));
        let suffixes = ["expires_at_idx", "last_activity_idx", "user_id_idx"];
        let mut seen = std::collections::HashSet::new();
        for table in [&long, &other] {
            for suffix in suffixes {
                let name = index_name(table, suffix);
                assert!(name.len() <= MAX_NAME_LEN, "{name}");
                assert!(name.ends_with(suffix));
                assert!(validate_name("index", &name).is_ok());
                assert!(seen.insert(name));
            }
        }
    }

    #[test]
    fn rendering_replaces_identifiers_only() {
        let sql = "-- sessions comment\nCREATE TABLE IF NOT EXISTS sessions (id text);\n\
                   CREATE INDEX IF NOT EXISTS sessions_user_id_idx ON sessions (user_id); -- x\n";
        let out = render_migration(sql, Dialect::Postgres, "t1", "\"s\".\"t1\"");
        assert_eq!(
            out,
            "CREATE TABLE IF NOT EXISTS \"s\".\"t1\" (id text);\n\
             CREATE INDEX IF NOT EXISTS \"t1_user_id_idx\" ON \"s\".\"t1\" (user_id); \n"
        );
        let out = render_migration(sql, Dialect::MySql, "t1", "`t1`");
        assert!(out.contains("`t1_user_id_idx` ON `t1` (user_id)"));
    }

    #[test]
    fn grouped_loads_are_padded_to_a_few_sizes() {
        let q = Queries::new(Dialect::MySql, "`t`");
        for (keys, padded) in [
            (2, 2),
            (3, 4),
            (5, 8),
            (9, 16),
            (17, 32),
            (33, 64),
            (64, 64),
        ] {
            let (sql, n) = q.load_group(keys);
            assert_eq!(n, padded, "{keys} keys");
            assert_eq!(sql.matches('?').count(), padded + 1, "{sql}");
            assert!(sql.contains("id IN (?, ?"), "{sql}");
        }
        let q = Queries::new(Dialect::Sqlite, "\"t\"");
        let (sql, n) = q.load_group(3);
        assert_eq!(n, 4);
        assert!(
            sql.ends_with("IN (?1, ?2, ?3, ?4) AND expires_at > ?5"),
            "{sql}"
        );
        let q = Queries::new(Dialect::Postgres, "\"t\"");
        for keys in [2, 17, 64] {
            let (sql, n) = q.load_group(keys);
            assert_eq!(n, keys);
            assert!(
                sql.ends_with("WHERE id = ANY($1) AND expires_at > $2"),
                "{sql}"
            );
        }
    }

    #[test]
    fn records_are_matched_back_to_their_keys() {
        let a = keepsake_core::test_kit::record("a");
        let b = keepsake_core::test_kit::record("b");
        let missing = keepsake_core::SessionId::generate().storage_key();
        let keys = [
            a.key.clone(),
            missing.clone(),
            b.key.clone(),
            a.key.clone(),
            missing,
            a.key.clone(),
        ];
        let found = HashMap::from([(a.key.as_str(), a.clone()), (b.key.as_str(), b.clone())]);
        assert_eq!(
            match_records(&keys, found),
            [
                Some(a.clone()),
                None,
                Some(b),
                Some(a.clone()),
                None,
                Some(a)
            ]
        );
    }

    #[test]
    fn mysql_statements_bind_in_order() {
        // MySQL's `?` is positional, so each statement must use its
        // parameters once, in order: the numbered dialects show it.
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let q = Queries::new(dialect, "t");
            let groups = q
                .load_group
                .iter()
                .chain(&q.save_group)
                .chain(&q.create_group)
                .chain(&q.retire_group);
            for sql in [
                &q.load,
                &q.create,
                &q.save,
                &q.touch,
                &q.destroy,
                &q.retire,
                &q.gc,
                &q.list_for_user,
                &q.destroy_for_user,
                &q.destroy_for_user_except,
            ]
            .into_iter()
            .chain(groups)
            {
                let mut expected = 1;
                let marker = if dialect == Dialect::Postgres {
                    '$'
                } else {
                    '?'
                };
                let mut rest = sql.as_str();
                while let Some(at) = rest.find(marker) {
                    rest = &rest[at + 1..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    assert_eq!(digits, expected.to_string(), "{sql}");
                    expected += 1;
                }
            }
        }
    }
}
