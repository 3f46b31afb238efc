//! [`SqliteStore`]: sessions in an SQLite database.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use keepsake_core::{Cas, Error, Record, Result, SessionInfo, SessionStore, StorageKey};
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::common::{
    Batches, DEFAULT_GC_BATCH_SIZE, DEFAULT_TABLE, Dialect, Health, Queries, impl_store,
    index_name, render_migration, retired_indexes,
};

const KIND: &str = "sqlite";

/// How long a writer waits for another one before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Sessions in an SQLite database: for a single process that should keep its
/// sessions across restarts without running a database server.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use keepsake_core::{Cas, SessionStore};
/// use keepsake_sqlx::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// let record = keepsake_core::test_kit::record(r#"{"d":{}}"#);
/// assert_eq!(store.create(&record).await?, Cas::Applied);
/// assert_eq!(store.load(&record.key).await?, Some(record));
/// # Ok::<(), keepsake_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: String,
    queries: Arc<Queries>,
    pub(crate) batches: Arc<Batches>,
    gc_batch_size: u64,
    health: Option<Arc<Health>>,
}

impl SqliteStore {
    /// Opens the database at `url`: `sqlite://path/to/file.db` (created when
    /// missing) or `sqlite::memory:`.
    ///
    /// A file is opened in WAL mode with `synchronous = NORMAL` and a busy
    /// timeout of 5 seconds, so concurrent writers wait for each other
    /// instead of failing with "database is locked". An in-memory database
    /// lives only while a connection to it is open, so it gets a pool of a
    /// single connection that is never recycled.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the URL is invalid or the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let fail = |e| Error::backend(KIND, "connect", e);
        let options = SqliteConnectOptions::from_str(url)
            .map_err(fail)?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = if is_in_memory(url) {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .connect_with(
                    options
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await
        }
        .map_err(fail)?;
        Ok(Self::new(pool))
    }

    /// A store on an existing pool, using the table `sessions`. The pool's
    /// options (journal mode, busy timeout) are used as they are.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            queries: Arc::new(Queries::new(
                Dialect::Sqlite,
                &Dialect::Sqlite.quote(DEFAULT_TABLE),
            )),
            batches: Arc::default(),
            gc_batch_size: DEFAULT_GC_BATCH_SIZE,
            health: None,
        }
    }

    /// Creates the table and its indexes, or brings an existing table up to
    /// date, in one transaction. Safe to run at every start-up.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when a statement fails; nothing is changed then.
    pub async fn migrate(&self) -> Result<()> {
        let fail = |e| self.fail("migrate", e);
        let table_ref = Dialect::Sqlite.quote(&self.table);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        for migration in MIGRATIONS.iter() {
            let sql = render_migration(&migration.sql, Dialect::Sqlite, &self.table, &table_ref);
            sqlx::Executor::execute(&mut *tx, sql.as_str())
                .await
                .map_err(fail)?;
        }
        for suffix in retired_indexes(Dialect::Sqlite) {
            let index = Dialect::Sqlite.quote(&index_name(&self.table, suffix));
            sqlx::Executor::execute(&mut *tx, format!("DROP INDEX IF EXISTS {index}").as_str())
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }

    fn table_ref(&self) -> String {
        Dialect::Sqlite.quote(&self.table)
    }
}

/// True for the URL forms sqlx opens as an in-memory database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl_store!(
    SqliteStore,
    SqlitePool,
    sqlx::Sqlite,
    KIND,
    Dialect::Sqlite,
    String
);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    #[allow(dead_code)]
    fn futures_are_send(store: &SqliteStore) {
        assert_send(store.migrate());
        assert_send(store.gc_with_progress(0, |_| {}));
    }
}
