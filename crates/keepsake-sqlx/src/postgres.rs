//! [`PostgresStore`]: sessions in a PostgreSQL table.

use std::sync::Arc;

use keepsake_core::{Cas, Error, Record, Result, SessionInfo, SessionStore, StorageKey};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::common::{
    Batches, DEFAULT_GC_BATCH_SIZE, DEFAULT_TABLE, Dialect, Health, Queries, impl_store,
    index_name, pool_options, render_migration, retired_indexes, validate_name,
};

const KIND: &str = "postgres";

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Sessions in a PostgreSQL table, shared by every app server that uses the
/// same database.
///
/// ```no_run
/// # async fn example() -> keepsake_core::Result<()> {
/// use keepsake_sqlx::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://app@localhost/app")
///     .await?
///     .with_schema_name("auth")?
///     .with_table_name("web_sessions")?;
/// store.migrate().await?; // creates auth.web_sessions (and the schema)
/// assert_eq!(store.table_name(), "web_sessions");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    table: String,
    schema: Option<String>,
    queries: Arc<Queries>,
    pub(crate) batches: Arc<Batches>,
    gc_batch_size: u64,
    health: Option<Arc<Health>>,
}

impl PostgresStore {
    /// Connects a pool with sqlx's defaults (up to 10 connections, 30 s
    /// acquire timeout) to `url`
    /// (`postgres://user:password@host:port/database`).
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

    /// A store on an existing pool, using the table `sessions` in the
    /// connection's `search_path`.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            schema: None,
            queries: Arc::new(Queries::new(
                Dialect::Postgres,
                &table_ref(None, DEFAULT_TABLE),
            )),
            batches: Arc::default(),
            gc_batch_size: DEFAULT_GC_BATCH_SIZE,
            health: None,
        }
    }

    /// Sets the schema the table lives in. Defaults to none: the table is
    /// found through the connection's `search_path` (normally `public`).
    /// [`migrate`](Self::migrate) creates the schema when it is missing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless the name is 1 to 63 of `[A-Za-z0-9_]`.
    pub fn with_schema_name(mut self, name: &str) -> Result<Self> {
        validate_name("schema", name)?;
        self.schema = Some(name.to_owned());
        self.rebuild();
        Ok(self)
    }

    /// The schema set with [`with_schema_name`](Self::with_schema_name).
    #[must_use]
    pub fn schema_name(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Creates the schema (when one is set and missing), the table and its
    /// indexes, or brings an existing table up to date. Safe to run at every
    /// start-up and from several processes at once: it runs in one
    /// transaction under an advisory lock on the table's name.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when a statement fails (for example for lack of
    /// privileges); nothing is changed then.
    pub async fn migrate(&self) -> Result<()> {
        let fail = |e| self.fail("migrate", e);
        let table_ref = self.table_ref();
        let mut tx = self.pool.begin().await.map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("keepsake-migrate:{table_ref}"))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        if let Some(schema) = &self.schema {
            // Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE
            // privilege on the database even when the schema exists.
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(schema)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
            if !exists {
                let sql = format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    Dialect::Postgres.quote(schema)
                );
                sqlx::Executor::execute(&mut *tx, sql.as_str())
                    .await
                    .map_err(fail)?;
            }
        }
        for migration in MIGRATIONS.iter() {
            let sql = render_migration(&migration.sql, Dialect::Postgres, &self.table, &table_ref);
            sqlx::Executor::execute(&mut *tx, sql.as_str())
                .await
                .map_err(fail)?;
        }
        for suffix in retired_indexes(Dialect::Postgres) {
            // An index lives in its table's schema.
            let index = table_ref_of(self.schema.as_deref(), &index_name(&self.table, suffix));
            sqlx::Executor::execute(&mut *tx, format!("DROP INDEX IF EXISTS {index}").as_str())
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }

    fn table_ref(&self) -> String {
        table_ref(self.schema.as_deref(), &self.table)
    }
}

/// The quoted, schema-qualified table name.
fn table_ref(schema: Option<&str>, table: &str) -> String {
    table_ref_of(schema, table)
}

/// The quoted, schema-qualified name of a relation (table or index).
fn table_ref_of(schema: Option<&str>, table: &str) -> String {
    let table = Dialect::Postgres.quote(table);
    match schema {
        Some(schema) => format!("{}.{table}", Dialect::Postgres.quote(schema)),
        None => table,
    }
}

impl_store!(
    PostgresStore,
    PgPool,
    sqlx::Postgres,
    KIND,
    Dialect::Postgres,
    String
);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    #[allow(dead_code)]
    fn futures_are_send(store: &PostgresStore) {
        assert_send(store.migrate());
        assert_send(store.gc_with_progress(0, |_| {}));
    }
}
