//! SQL session stores for [keepsake](https://docs.rs/keepsake), built on
//! [sqlx](https://docs.rs/sqlx): SQLite, PostgreSQL and MySQL/MariaDB.
//!
//! | store | for |
//! |---|---|
//! | [`SqliteStore`] | One process (a single server, a desktop app, tests): sessions survive a restart without a database server. |
//! | [`PostgresStore`] | Several app servers sharing sessions through PostgreSQL; no sticky sessions needed. |
//! | [`MySqlStore`] | The same on MySQL 5.7+/8 or MariaDB 10.3+. |
//!
//! Each store implements [`SessionStore`](keepsake_core::SessionStore), and
//! applications normally reach them through the `keepsake` crate's features
//! of the same names.
//!
//! # Setup
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn setup() -> keepsake_core::Result<()> {
//! use keepsake_sqlx::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://app@localhost/app").await?;
//! store.migrate().await?; // creates the `sessions` table if it is missing
//! // hand `store` to keepsake's `SessionLayer`
//! # drop(store);
//! # Ok(())
//! # }
//! ```
//!
//! A store is made from a URL (`connect`), or from a pool the application
//! already has (`new`, e.g. to set pool sizes, timeouts or TLS), then
//! configured with `with_table_name` (default `sessions`),
//! `with_schema_name` (PostgreSQL) and `with_gc_batch_size` (default 1,000).
//! Table and schema names are put into SQL text, so they are checked (1 to 63
//! of `[A-Za-z0-9_]`, else [`Error::Config`](keepsake_core::Error::Config))
//! and quoted.
//!
//! # Features
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `sqlite` | [`SqliteStore`], with SQLite bundled (no system library needed) | no |
//! | `postgres` | [`PostgresStore`] | no |
//! | `mysql` | [`MySqlStore`] | no |
//! | `rustls` | TLS to the database server through rustls | no |
//!
//! sqlx is used with the tokio runtime and without its default features;
//! it is re-exported as [`sqlx`] so that a pool handed to `new` comes from
//! the same version.
//!
//! # The table
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | varchar(64), primary key | the [`StorageKey`](keepsake_core::StorageKey): hex SHA-256 of the session id |
//! | `user_id` | text (MySQL: varchar(255)), null, indexed | the per-user index |
//! | `ip_address` | varchar(45), null | |
//! | `user_agent` | text, null | |
//! | `payload` | text (MySQL: longtext) | opaque, stored byte for byte |
//! | `last_activity` | bigint, indexed | unix seconds |
//! | `expires_at` | bigint, indexed | unix seconds |
//! | `version` | bigint | the compare-and-swap counter |
//!
//! # Migrations
//!
//! The schema lives in `migrations/{postgres,sqlite,mysql}/` of the keepsake
//! repository, written for the default table `sessions`, and is embedded
//! into this crate with `sqlx::migrate!` from the crate's own copy of those
//! folders (a test keeps the two identical, byte for byte, so the published
//! crate carries exactly the repository's files). Teams that manage their
//! schema with their own tool can copy those files.
//!
//! `migrate()` creates or upgrades the table with no sqlx-cli, and works
//! for any table name: it takes each embedded migration, replaces the table
//! name (and the index names derived from it) with the configured ones, and
//! runs it. It does **not** use sqlx's migrator: that keeps its bookkeeping in
//! `_sqlx_migrations`, which is the application's own (sqlx 0.8 cannot
//! rename it) and would then report keepsake's migrations as unknown to the
//! application's migrator, and the other way round. Instead every migration
//! is idempotent (`CREATE TABLE IF NOT EXISTS`, `CREATE INDEX IF NOT
//! EXISTS`; on MySQL, which lacks the latter, the indexes are declared inside
//! `CREATE TABLE`), so `migrate()` can run at every start-up, by every
//! instance. PostgreSQL runs it in one transaction under an advisory lock,
//! SQLite in one transaction.
//!
//! # One round trip per operation
//!
//! The SQL of every operation is built once, when the store is configured,
//! and sqlx keeps it prepared on each connection.
//!
//! sqlx's pools ping a connection before every use by default, which would
//! double the round trips. The pools that `connect` builds ping only a
//! connection that has been idle for over a second (an idle-connection
//! killer or a server restart may have closed it) or that went idle before
//! the store's last failed operation (whatever broke that connection may
//! have broken it too). So a connection lost under load fails one operation,
//! and the next ones get live connections. A pool handed to `new` keeps its
//! own settings.
//!
//! | operation | statement |
//! |---|---|
//! | `load` | `SELECT … WHERE id = ? AND expires_at > now`; loads waiting at the same moment go together as `WHERE id = ANY(?)` (PostgreSQL) or `WHERE id IN (?, …)`, up to 64 keys a statement (see below) |
//! | `create` | `INSERT … ON CONFLICT (id) DO UPDATE … WHERE expires_at <= now`: a live row is never overwritten (0 rows: `Cas::Conflict`), an expired one not yet collected is replaced; creates waiting at the same moment go together as `INSERT … SELECT … FROM unnest(…)` (PostgreSQL) or `FROM (VALUES …)` (SQLite) with the same conflict clause and `RETURNING id`. MySQL: a plain `INSERT` each, and a duplicate key is `Cas::Conflict` |
//! | `save` | `UPDATE … WHERE id = ? AND version = ? AND expires_at > now`; 0 rows is `Cas::Conflict`, and a destroyed or expired record is never re-inserted |
//! | `save_in_place` | the same `UPDATE` without `expires_at` and `user_id`, so no index is written (most saves: the layer moves a stored expiry in steps); saves waiting at the same moment go together as `UPDATE … FROM unnest(…) RETURNING id` (PostgreSQL) or `UPDATE … FROM (VALUES …) RETURNING id` (SQLite), each still a compare-and-swap at its own version. MySQL has no `UPDATE … RETURNING`: one statement each |
//! | `touch` | `UPDATE` of `last_activity` and `expires_at` only (`GREATEST`/`MAX` with the stored expiry, so it never moves back), of a live row `WHERE version = ?`; 0 rows is `Cas::Conflict` |
//! | `retire` | `DELETE … WHERE id = ? AND version = ? AND expires_at > now`, the old record after an id change; retires waiting at the same moment go together as `DELETE … USING unnest(…) RETURNING id` (PostgreSQL) or `DELETE … WHERE (id, version) IN (VALUES …) RETURNING id` (SQLite). MySQL: one statement each |
//! | `destroy` | `DELETE … WHERE id = ?` |
//! | `list_for_user` | `SELECT … WHERE user_id = ? AND expires_at > now ORDER BY last_activity DESC, id` |
//! | `destroy_for_user` | `DELETE … WHERE user_id = ? [AND id <> ?]` (expired rows of the user go too) |
//! | `gc` | `DELETE` of at most one batch of expired rows per statement, repeated until a batch comes back short |
//!
//! # Grouped loads and writes
//!
//! A load that finds no other load of the same store in flight goes out at
//! once, as the single-key statement, so a lone request waits for nothing.
//! Loads that arrive while one is in flight wait for it and then go out
//! together, as one statement of up to 64 keys (more are split), and each
//! gets its own record back, or `None`. There is no timer: under load the
//! group grows with the round-trip time by itself, and the server answers
//! one statement instead of dozens. Once a group has carried more than one
//! load, the load that starts the next group first yields to the
//! scheduler once, so the loads of requests that are ready at that moment
//! join it (`keepsake_core::batch` tells how). When a grouped statement fails, every
//! load in it gets that error. Each table (each `with_table_name`) groups
//! its own loads; clones of a store share theirs.
//!
//! In-place saves, creates and retires are grouped the same way on
//! PostgreSQL and SQLite, each kind on its own: one statement for the
//! writes of a kind waiting at the same moment (up to 64), whose
//! `RETURNING` list names the records that were written. Each write in it
//! is still its own compare-and-swap: a save or retire applies only at its
//! expected version, a create only where no live record has its key. A key
//! written twice in one group (two layers on one table) is written again by
//! itself after the group, so each caller gets its own answer. On SQLite a
//! group is also one write transaction instead of one per write, which is
//! most of what a login costs there. MySQL has no `RETURNING` (MariaDB has
//! it on `INSERT` and `DELETE` only, from 10.5, and the store supports
//! 10.3), so nothing would tell which writes of a group applied: on MySQL
//! and MariaDB writes go one statement each.
//!
//! `gc` deletes in batches so that it never holds long locks; each store
//! also has `gc_with_progress` to report the running total after each batch.
//!
//! # SQLite
//!
//! [`SqliteStore::connect`] opens a file in WAL mode (readers never block
//! the writer) with `synchronous = NORMAL` and a busy timeout of 5 seconds,
//! so concurrent writers wait for each other instead of failing with
//! "database is locked". An in-memory database (`sqlite::memory:`) exists
//! only as long as a connection to it is open, so it gets a pool of exactly
//! one connection that is never closed. A pool handed to [`SqliteStore::new`]
//! is used as it is.
//!
//! [`SqliteStore`]: crate::SqliteStore
//! [`PostgresStore`]: crate::PostgresStore
//! [`MySqlStore`]: crate::MySqlStore
//! [`SqliteStore::connect`]: crate::SqliteStore::connect
//! [`SqliteStore::new`]: crate::SqliteStore::new

#![cfg_attr(docsrs, feature(doc_cfg))]
// The overview links to every store; with some features off, some are absent.
#![cfg_attr(
    not(all(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(rustdoc::broken_intra_doc_links)
)]

mod common;
#[cfg(test)]
mod grouped_tests;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// The sqlx this crate is built on, for the pools handed to the stores'
/// `new` (`sqlx::PgPool`, `sqlx::SqlitePool`, `sqlx::MySqlPool`).
pub use sqlx;
