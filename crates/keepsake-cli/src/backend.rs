//! Opening the configured store, and the commands that go through the
//! drivers' own API: migrate, prune, revoke.
//!
//! Every store is built here, from the driver crates directly, behind
//! [`open`]: the one place to switch to the library's own configuration
//! from the environment once it builds the concrete stores the CLI needs
//! (`migrate` and the SQL pools are inherent to each driver, not part of the
//! `SessionStore` trait).

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use keepsake_core::{Error, SessionStore, StorageKey};
use keepsake_file::FileStore;
use keepsake_memcached::MemcachedStore;
use keepsake_redis::RedisStore;
use keepsake_sqlx::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use keepsake_sqlx::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use keepsake_sqlx::sqlx::{self, ConnectOptions as _};
use keepsake_sqlx::{MySqlStore, PostgresStore, SqliteStore};

use crate::config::{Driver, Target, redact};
use crate::fail::Failure;
use crate::progress::Progress;

/// How long connecting to a server may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The opened store, by driver.
#[derive(Debug)]
pub(crate) enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
    MySql(MySqlStore),
    File(FileStore),
    Redis {
        store: RedisStore,
        urls: Vec<String>,
    },
    Memcached(MemcachedStore),
}

/// What the store is opened for: only `migrate` may create a missing
/// SQLite file or session directory (elsewhere a missing one is a typo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Migrate,
    Use,
}

pub(crate) async fn open(target: &Target, purpose: Purpose) -> Result<Store, Failure> {
    match target {
        Target::Sql { driver, url, table } => open_sql(*driver, url, table, purpose).await,
        Target::File { dir, by_default } => {
            if purpose == Purpose::Use && !dir.is_dir() {
                let why = if *by_default {
                    "SESSION_DRIVER is not set, so the file driver is used, as in the \
                     application; set SESSION_DRIVER, or SESSION_FILES or --dir"
                } else {
                    "check SESSION_FILES or --dir"
                };
                return Err(Failure::usage(format!(
                    "the session directory {} does not exist ({why})",
                    dir.display()
                )));
            }
            let store = FileStore::new(dir)
                .map_err(|e| Failure::store(format!("cannot open {}", dir.display()), e))?;
            Ok(Store::File(store))
        }
        Target::Redis {
            urls,
            cluster,
            prefix,
        } => {
            let connecting = if *cluster {
                RedisStore::connect_cluster(urls).await
            } else {
                RedisStore::connect(&urls[0]).await
            };
            let where_ = urls
                .iter()
                .map(|u| redact(u))
                .collect::<Vec<_>>()
                .join(", ");
            let mut store = connecting
                .map_err(|e| Failure::store(format!("cannot connect to Redis at {where_}"), e))?;
            if let Some(prefix) = prefix {
                store = store.with_prefix(prefix.clone());
            }
            Ok(Store::Redis {
                store,
                urls: urls.clone(),
            })
        }
        Target::Memcached { url, prefix } => {
            let mut builder = MemcachedStore::builder(url.clone());
            if let Some(prefix) = prefix {
                builder = builder.prefix(prefix.clone());
            }
            let store = builder.connect().await.map_err(|e| {
                Failure::store(format!("cannot connect to memcached at {}", redact(url)), e)
            })?;
            Ok(Store::Memcached(store))
        }
    }
}

async fn open_sql(
    driver: Driver,
    url: &str,
    table: &str,
    purpose: Purpose,
) -> Result<Store, Failure> {
    let shown = redact(url);
    let cannot = |e: Error| Failure::store(format!("cannot open {driver} database {shown}"), e);
    let table_name = |e: Error| Failure::store("SESSION_TABLE", e);
    match driver {
        Driver::Sqlite => {
            let file = sqlite_file(url);
            if file.is_none() && purpose == Purpose::Use {
                return Err(Failure::usage(
                    "an in-memory SQLite database exists only inside the application that                      opened it: point SESSION_CONNECTION at the database file",
                ));
            }
            if let Some(path) = file
                && purpose == Purpose::Use
                && !path.exists()
            {
                return Err(Failure::usage(format!(
                    "the SQLite database {} does not exist (check SESSION_CONNECTION, or run \
                     `keepsake migrate` to create it)",
                    path.display()
                )));
            }
            let store = SqliteStore::connect(url).await.map_err(cannot)?;
            Ok(Store::Sqlite(
                store.with_table_name(table).map_err(table_name)?,
            ))
        }
        Driver::Postgres => {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| Failure::usage(format!("invalid PostgreSQL URL {shown}: {e}")))?;
            probe(driver, &shown, options.connect()).await?;
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| cannot(Error::backend("postgres", "connect", e)))?;
            let store = PostgresStore::new(pool);
            Ok(Store::Postgres(
                store.with_table_name(table).map_err(table_name)?,
            ))
        }
        Driver::MySql => {
            let options = MySqlConnectOptions::from_str(url)
                .map_err(|e| Failure::usage(format!("invalid MySQL URL {shown}: {e}")))?;
            probe(driver, &shown, options.connect()).await?;
            let pool = MySqlPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| cannot(Error::backend("mysql", "connect", e)))?;
            let store = MySqlStore::new(pool);
            Ok(Store::MySql(
                store.with_table_name(table).map_err(table_name)?,
            ))
        }
        _ => Err(Failure::usage(format!("{driver} is not an SQL driver"))),
    }
}

/// Opens one connection first: a pool retries a refused connection until
/// its timeout and then reports only that it timed out, where this reports
/// the cause at once.
async fn probe<C, F>(driver: Driver, shown: &str, connecting: F) -> Result<(), Failure>
where
    C: sqlx::Connection,
    F: Future<Output = sqlx::Result<C>>,
{
    let cannot = format!("cannot connect to {driver} at {shown}");
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => {
            // Closing politely is a courtesy; a failure here changes nothing.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::runtime(cannot, e)),
        Err(_) => Err(Failure::runtime(
            cannot,
            format!("no answer within {} seconds", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// The file of an SQLite URL (`sqlite://path`, `sqlite:path`, with options
/// after `?`); `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

impl Store {
    pub(crate) fn as_dyn(&self) -> &dyn SessionStore {
        match self {
            Self::Sqlite(s) => s,
            Self::Postgres(s) => s,
            Self::MySql(s) => s,
            Self::File(s) => s,
            Self::Redis { store, .. } => store,
            Self::Memcached(s) => s,
        }
    }

    /// A short description of where the sessions are, for messages.
    pub(crate) fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => format!("table {}", s.table_name()),
            Self::Postgres(s) => match s.schema_name() {
                Some(schema) => format!("table {schema}.{}", s.table_name()),
                None => format!("table {}", s.table_name()),
            },
            Self::MySql(s) => format!("table {}", s.table_name()),
            Self::File(s) => format!("directory {}", s.path().display()),
            Self::Redis { store, .. } => format!("keys {}*", store.prefix()),
            Self::Memcached(s) => format!("keys {}*", s.prefix()),
        }
    }

    /// `keepsake migrate`.
    pub(crate) async fn migrate(&self) -> Result<String, Failure> {
        let fail = |e| Failure::store("migration failed", e);
        match self {
            Self::Sqlite(s) => s.migrate().await.map_err(fail)?,
            Self::Postgres(s) => s.migrate().await.map_err(fail)?,
            Self::MySql(s) => s.migrate().await.map_err(fail)?,
            // Opening the store created the directory.
            Self::File(s) => {
                return Ok(format!("session directory {} is ready", s.path().display()));
            }
            Self::Redis { .. } | Self::Memcached(_) => {
                return Ok(format!(
                    "nothing to migrate: {} keeps no schema",
                    self.as_dyn().kind()
                ));
            }
        }
        Ok(format!(
            "migrated {} ({})",
            self.location(),
            self.as_dyn().kind()
        ))
    }

    /// `keepsake prune`: deletes what expired at `now`, returns how many.
    pub(crate) async fn prune(
        &self,
        now: i64,
        batch_size: u64,
        progress: &mut Progress,
    ) -> Result<u64, Failure> {
        let fail = |e| Failure::store("pruning failed", e);
        macro_rules! sql_prune {
            ($store:expr, $count_sql:expr) => {{
                let store = $store.clone().with_gc_batch_size(batch_size);
                if progress.wants_total() {
                    let sql = $count_sql(store.table_name(), now);
                    let total: i64 = sqlx::query_scalar(&sql)
                        .fetch_one(store.pool())
                        .await
                        .map_err(|e| fail(Error::backend(store.kind(), "count", e)))?;
                    progress.set_total(u64::try_from(total).unwrap_or(0));
                }
                store
                    .gc_with_progress(now, |done| progress.update(done))
                    .await
                    .map_err(fail)
            }};
        }
        let deleted = match self {
            Self::Sqlite(s) => sql_prune!(s, |table, now| count_expired(table, '"', now)),
            Self::Postgres(s) => sql_prune!(s, |table: &str, now| {
                match s.schema_name() {
                    Some(schema) => format!(
                        "SELECT COUNT(*) FROM \"{schema}\".\"{table}\" WHERE expires_at <= {now}"
                    ),
                    None => count_expired(table, '"', now),
                }
            }),
            Self::MySql(s) => sql_prune!(s, |table, now| count_expired(table, '`', now)),
            Self::File(_) | Self::Redis { .. } | Self::Memcached(_) => {
                let deleted = self.as_dyn().gc(now).await.map_err(fail)?;
                progress.update(deleted);
                Ok(deleted)
            }
        }?;
        Ok(deleted)
    }

    /// `keepsake revoke`.
    pub(crate) async fn revoke(
        &self,
        user: &str,
        except: Option<&StorageKey>,
    ) -> Result<u64, Failure> {
        self.as_dyn()
            .destroy_for_user(user, except)
            .await
            .map_err(|e| Failure::store("revoking failed", e))
    }

    /// True when the backend expires sessions itself.
    pub(crate) fn self_expiring(&self) -> bool {
        matches!(self, Self::Redis { .. } | Self::Memcached(_))
    }

    /// The Redis URLs, for `stats` (which scans with connections of its own).
    pub(crate) fn redis_urls(&self) -> Option<&[String]> {
        match self {
            Self::Redis { urls, .. } => Some(urls),
            _ => None,
        }
    }
}

/// `SELECT COUNT(*)` of the expired rows. Table names were checked by the
/// driver (`[A-Za-z0-9_]` only), and `now` is an integer.
fn count_expired(table: &str, quote: char, now: i64) -> String {
    format!("SELECT COUNT(*) FROM {quote}{table}{quote} WHERE expires_at <= {now}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_file("sqlite://a/b.db"),
            Some(PathBuf::from("a/b.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///var/app.db?mode=rwc"),
            Some(PathBuf::from("/var/app.db"))
        );
        assert_eq!(sqlite_file("sqlite:app.db"), Some(PathBuf::from("app.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://"), None);
    }
}
