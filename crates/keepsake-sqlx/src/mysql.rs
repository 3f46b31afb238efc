//! [`MySqlStore`]: sessions in a MySQL or MariaDB table.

use std::sync::Arc;

use keepsake_core::{Cas, Error, Record, Result, SessionInfo, SessionStore, StorageKey};
use sqlx::MySqlPool;
use sqlx::migrate::Migrator;

use crate::common::{
    Batches, DEFAULT_GC_BATCH_SIZE, DEFAULT_TABLE, Dialect, Health, Queries, impl_store,
    index_name, pool_options, render_migration, retired_indexes,
};

const KIND: &str = "mysql";

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/mysql");

/// Sessions in a MySQL (5.7+, 8) or MariaDB (10.3+) table, shared by every
/// app server that uses the same database.
///
/// The table uses InnoDB and `utf8mb4` with a binary collation, so user ids
/// compare exactly as on the other backends; `user_id` is a `VARCHAR(255)`
/// (MySQL cannot index a whole `TEXT`), and the payload a `LONGTEXT`.
///
/// Unlike the PostgreSQL and SQLite stores, `create` on a key whose expired
/// row has not been collected yet reports `Cas::Conflict` rather than
/// replacing it: MySQL offers no single statement that both replaces only
/// expired rows and reports which case happened. Keys are 256-bit random, so
/// the layer simply draws another.
///
/// ```no_run
/// # async fn example() -> keepsake_core::Result<()> {
/// use keepsake_sqlx::MySqlStore;
///
/// let store = MySqlStore::connect("mysql://app@localhost/app")
///     .await?
///     .with_gc_batch_size(5_000);
/// store.migrate().await?;
/// assert_eq!(store.table_name(), "sessions");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    table: String,
    queries: Arc<Queries>,
    pub(crate) batches: Arc<Batches>,
    gc_batch_size: u64,
    health: Option<Arc<Health>>,
}

impl MySqlStore {
    /// Connects a pool with sqlx's defaults (up to 10 connections, 30 s
    /// acquire timeout) to `url`
    /// (`mysql://user:password@host:port/database`).
    ///
    /// An idle connection is pinged before use only after a second of
    /// idleness, so a busy store costs one round trip per operation. Use
    /// [`new`](Self::new) with a pool of your own for other settings.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the URL is invalid or the server cannot be
    /// reached within the acquire timeout.
    pub async fn connect(url: &str) -> Result<Self> {
        let health = Arc::new(Health::default());
        let pool = pool_options(Arc::clone(&health))
            .connect(url)
            .await
            .map_err(|e| Error::backend(KIND, "connect", e))?;
        Ok(Self {
            health: Some(health),
            ..Self::new(pool)
        })
    }

    /// A store on an existing pool, using the table `sessions`.
    #[must_use]
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            queries: Arc::new(Queries::new(
                Dialect::MySql,
                &Dialect::MySql.quote(DEFAULT_TABLE),
            )),
            batches: Arc::default(),
            gc_batch_size: DEFAULT_GC_BATCH_SIZE,
            health: None,
        }
    }

    /// Creates the table with its indexes, or brings an existing table up to
    /// date. Safe to run at every start-up and from several processes at
    /// once (every statement is idempotent; MySQL commits DDL statement by
    /// statement).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        let table_ref = Dialect::MySql.quote(&self.table);
        for migration in MIGRATIONS.iter() {
            let sql = render_migration(&migration.sql, Dialect::MySql, &self.table, &table_ref);
            sqlx::Executor::execute(&self.pool, sql.as_str())
                .await
                .map_err(|e| self.fail("migrate", e))?;
        }
        // MySQL has no DROP INDEX IF EXISTS: look first.
        for suffix in retired_indexes(Dialect::MySql) {
            let index = index_name(&self.table, suffix);
            let present: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?",
            )
            .bind(&self.table)
            .bind(&index)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail("migrate", e))?;
            if present > 0 {
                let sql = format!(
                    "ALTER TABLE {table_ref} DROP INDEX {}",
                    Dialect::MySql.quote(&index)
                );
                match sqlx::Executor::execute(&self.pool, sql.as_str()).await {
                    Ok(_) => {}
                    // 1091: another instance dropped it meanwhile.
                    Err(sqlx::Error::Database(e))
                        if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                            .is_some_and(|e| e.number() == 1091) => {}
                    Err(e) => return Err(self.fail("migrate", e)),
                }
            }
        }
        Ok(())
    }

    fn table_ref(&self) -> String {
        Dialect::MySql.quote(&self.table)
    }
}

impl_store!(
    MySqlStore,
    MySqlPool,
    sqlx::MySql,
    KIND,
    Dialect::MySql,
    Vec<u8>
);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    #[allow(dead_code)]
    fn futures_are_send(store: &MySqlStore) {
        assert_send(store.migrate());
        assert_send(store.gc_with_progress(0, |_| {}));
    }
}
