//! The server under load: one axum app per variant, chosen by argument.
//!
//! ```text
//! server VARIANT PORT      serve on 127.0.0.1:PORT until killed
//! server cleanup           drop every table, schema and database the variants made
//! ```
//!
//! Every variant serves the same four routes:
//!
//! | route | handler |
//! |---|---|
//! | `/none` | never takes the session |
//! | `/read` | reads the counter |
//! | `/write` | increments the counter |
//! | `/login` | new session id (regenerate / cycle) and a user stored in the session |
//!
//! Variants: `bare`; `keepsake-{memory,sqlite,postgres,mysql,redis}` (and
//! the same with `-nogc`: the GC lottery off);
//! `tower-{memory,sqlite,postgres,mysql,redis}` (tower-sessions with an idle
//! expiry that only moves when the session is saved) and the same with
//! `-sliding` (idle expiry that slides on every request: `always_save`);
//! `axum-session-{sqlite,postgres}`.
//!
//! Configuration from the environment: `BENCH_DIR` (SQLite files),
//! `KEEPSAKE_TEST_POSTGRES_URL`, `KEEPSAKE_TEST_MYSQL_URL`,
//! `KEEPSAKE_TEST_REDIS_URL`, and `BENCH_NAME_SUFFIX` (lowercase letters,
//! digits and `_`; default none), appended to every table, schema and key
//! prefix, so that two workloads against the same database servers never
//! drop each other's tables.

use std::error::Error;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sqlx::ConnectOptions as _;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// The idle lifetime every variant is configured with.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Connections per SQL pool, the same for every library.
const POOL: u32 = 8;

const KEEPSAKE_TABLE: &str = "bench_keepsake_sessions";
const TOWER_SCHEMA: &str = "bench_tower";
const TOWER_TABLE: &str = "bench_tower_sessions";
const AXUM_SESSION_TABLE: &str = "bench_axum_session";
const KEEPSAKE_REDIS_PREFIX: &str = "keepsake-bench";
/// tower-sessions' Redis store has no key prefix: it gets a database of its own.
const TOWER_REDIS_DB: u8 = 11;

/// The names above with `BENCH_NAME_SUFFIX` appended.
struct Names {
    keepsake_table: String,
    tower_schema: String,
    tower_table: String,
    axum_session_table: String,
    keepsake_redis_prefix: String,
}

fn names() -> Result<Names> {
    let suffix = std::env::var("BENCH_NAME_SUFFIX").unwrap_or_default();
    if !suffix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "BENCH_NAME_SUFFIX={suffix:?}: only lowercase letters, digits and _ are allowed"
        )
        .into());
    }
    Ok(Names {
        keepsake_table: format!("{KEEPSAKE_TABLE}{suffix}"),
        tower_schema: format!("{TOWER_SCHEMA}{suffix}"),
        tower_table: format!("{TOWER_TABLE}{suffix}"),
        axum_session_table: format!("{AXUM_SESSION_TABLE}{suffix}"),
        keepsake_redis_prefix: format!("{KEEPSAKE_REDIS_PREFIX}{suffix}:"),
    })
}

static USERS: AtomicU64 = AtomicU64::new(0);

fn next_user() -> String {
    format!("user-{}", USERS.fetch_add(1, Ordering::Relaxed))
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn sqlite_path(variant: &str) -> Result<String> {
    let dir =
        std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let path = format!("{dir}/{variant}.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    Ok(path)
}

/// The same SQLite settings for every library: WAL, `synchronous = NORMAL`,
/// a 5 s busy timeout.
async fn sqlite_pool(variant: &str) -> Result<sqlx::SqlitePool> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
        "sqlite://{}",
        sqlite_path(variant)?
    ))?
    .create_if_missing(true)
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
    .busy_timeout(Duration::from_secs(5))
    .disable_statement_logging();
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(POOL)
        .connect_with(options)
        .await?)
}

async fn pg_pool() -> Result<sqlx::PgPool> {
    let options = sqlx::postgres::PgConnectOptions::from_str(&env("KEEPSAKE_TEST_POSTGRES_URL")?)?
        .disable_statement_logging();
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect_with(options)
        .await?)
}

async fn mysql_pool() -> Result<sqlx::MySqlPool> {
    let options = sqlx::mysql::MySqlConnectOptions::from_str(&env("KEEPSAKE_TEST_MYSQL_URL")?)?
        .disable_statement_logging();
    Ok(sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(POOL)
        .connect_with(options)
        .await?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.as_slice() {
        [cmd] if cmd == "cleanup" => runtime.block_on(cleanup()),
        [variant, port] => {
            let port: u16 = port.parse()?;
            runtime.block_on(async {
                let app = app(variant).await?;
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                println!("{variant} listening on 127.0.0.1:{port}");
                axum::serve(listener, app).await?;
                Ok(())
            })
        }
        _ => Err("usage: server VARIANT PORT | server cleanup".into()),
    }
}

async fn app(variant: &str) -> Result<Router> {
    let (library, rest) = variant.split_once('-').unwrap_or((variant, ""));
    match (library, rest) {
        ("bare", _) => Ok(bare::router()),
        ("keepsake", store) => match store.strip_suffix("-nogc") {
            Some(store) => keepsake_app::router(store, false).await,
            None => keepsake_app::router(store, true).await,
        },
        ("tower", store) => {
            let (store, sliding) = match store.strip_suffix("-sliding") {
                Some(store) => (store, true),
                None => (store, false),
            };
            tower_app::router(store, sliding).await
        }
        ("axum", rest) => axum_session_app::router(rest.trim_start_matches("session-")).await,
        _ => Err(format!("unknown variant {variant}").into()),
    }
}

async fn none() -> &'static str {
    "ok"
}

mod bare {
    use super::*;

    pub(crate) fn router() -> Router {
        Router::new()
            .route("/none", get(none))
            .route("/read", get(none))
            .route("/write", get(none))
            .route("/login", get(none))
    }
}

mod keepsake_app {
    use keepsake::{Session, SessionLayer, SessionStore};

    use super::*;

    async fn read(session: Session) -> String {
        session
            .get::<i64>("counter")
            .ok()
            .flatten()
            .unwrap_or(0)
            .to_string()
    }

    async fn write(session: Session) -> Result<String, keepsake::Error> {
        Ok(session.increment("counter", 1i64)?.to_string())
    }

    async fn login(session: Session) -> Result<&'static str, keepsake::Error> {
        let user = next_user();
        session.regenerate();
        session.put("user", &user)?;
        session.set_user_id(user);
        Ok("ok")
    }

    pub(crate) async fn store(store: &str) -> Result<std::sync::Arc<dyn SessionStore>> {
        let Names {
            keepsake_table: table,
            keepsake_redis_prefix: prefix,
            ..
        } = names()?;
        Ok(match store {
            "memory" => std::sync::Arc::new(keepsake::MemoryStore::new()),
            "sqlite" => {
                let store = keepsake::SqliteStore::new(sqlite_pool("keepsake").await?)
                    .with_table_name(&table)?;
                store.migrate().await?;
                std::sync::Arc::new(store)
            }
            "postgres" => {
                let pool = pg_pool().await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                    .execute(&pool)
                    .await?;
                let store = keepsake::PostgresStore::new(pool).with_table_name(&table)?;
                store.migrate().await?;
                std::sync::Arc::new(store)
            }
            "mysql" => {
                let pool = mysql_pool().await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                    .execute(&pool)
                    .await?;
                let store = keepsake::MySqlStore::new(pool).with_table_name(&table)?;
                store.migrate().await?;
                std::sync::Arc::new(store)
            }
            "redis" => std::sync::Arc::new(
                keepsake::RedisStore::connect(&env("KEEPSAKE_TEST_REDIS_URL")?)
                    .await?
                    .with_prefix(&prefix),
            ),
            other => return Err(format!("keepsake has no bench store {other}").into()),
        })
    }

    pub(crate) async fn router(store: &str, lottery: bool) -> Result<Router> {
        // Everything at its default (sliding idle expiry with a touch at most
        // once a minute, lottery GC 2 in 100, cache headers) except the
        // lifetime, which every variant shares. The `-nogc` variants turn the
        // lottery off, to show what it costs.
        let mut layer = SessionLayer::from_arc(self::store(store).await?).with_lifetime(IDLE);
        if !lottery {
            layer = layer.with_lottery(0, 1);
        }
        Ok(Router::new()
            .route("/none", get(none))
            .route("/read", get(read))
            .route("/write", get(write))
            .route("/login", get(login))
            .layer(layer))
    }
}

mod tower_app {
    use tower_sessions::{Expiry, Session, SessionManagerLayer, SessionStore};

    use super::*;

    async fn read(session: Session) -> String {
        session
            .get::<i64>("counter")
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
            .to_string()
    }

    async fn write(session: Session) -> Result<String, axum::http::StatusCode> {
        let err = |_| axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        let n = session
            .get::<i64>("counter")
            .await
            .map_err(err)?
            .unwrap_or(0)
            + 1;
        session.insert("counter", n).await.map_err(err)?;
        Ok(n.to_string())
    }

    async fn login(session: Session) -> Result<&'static str, axum::http::StatusCode> {
        let err = |_| axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        session.cycle_id().await.map_err(err)?;
        session.insert("user", next_user()).await.map_err(err)?;
        Ok("ok")
    }

    fn routes<S: SessionStore + Clone>(store: S, sliding: bool) -> Router {
        let expiry = Expiry::OnInactivity(time::Duration::seconds(IDLE.as_secs() as i64));
        // Without `always_save` a record's expiry moves only when the session
        // changes; with it, every request rewrites the whole record.
        let layer = SessionManagerLayer::new(store)
            .with_expiry(expiry)
            .with_always_save(sliding);
        Router::new()
            .route("/none", get(none))
            .route("/read", get(read))
            .route("/write", get(write))
            .route("/login", get(login))
            .layer(layer)
    }

    pub(crate) async fn router(store: &str, sliding: bool) -> Result<Router> {
        use tower_sessions_sqlx_store::{MySqlStore, PostgresStore, SqliteStore};
        let Names {
            tower_schema: schema,
            tower_table: table,
            ..
        } = names()?;
        Ok(match store {
            "memory" => routes(tower_sessions::MemoryStore::default(), sliding),
            "sqlite" => {
                let store =
                    SqliteStore::new(sqlite_pool("tower").await?).with_table_name(&table)?;
                store.migrate().await?;
                routes(store, sliding)
            }
            "postgres" => {
                let pool = pg_pool().await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&pool)
                    .await?;
                let store = PostgresStore::new(pool)
                    .with_schema_name(&schema)?
                    .with_table_name(&table)?;
                store.migrate().await?;
                routes(store, sliding)
            }
            "mysql" => {
                let pool = mysql_pool().await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {schema}"))
                    .execute(&pool)
                    .await?;
                let store = MySqlStore::new(pool)
                    .with_schema_name(&schema)?
                    .with_table_name(&table)?;
                store.migrate().await?;
                routes(store, sliding)
            }
            "redis" => {
                use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config};
                let url = env("KEEPSAKE_TEST_REDIS_URL")?;
                let url = format!("{}/{TOWER_REDIS_DB}", url.trim_end_matches('/'));
                // One multiplexed connection, as keepsake's RedisStore uses.
                let client = tower_sessions_redis_store::fred::prelude::Client::new(
                    Config::from_url(&url)?,
                    None,
                    None,
                    None,
                );
                client.init().await?;
                routes(tower_sessions_redis_store::RedisStore::new(client), sliding)
            }
            other => return Err(format!("tower-sessions has no bench store {other}").into()),
        })
    }
}

mod axum_session_app {
    use axum_session::{DatabasePool, Session, SessionConfig, SessionLayer, SessionStore};
    use axum_session_sqlx::{SessionPgPool, SessionSqlitePool};
    use sqlx09::ConnectOptions as _;

    use super::*;

    async fn read<P: DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
        session: Session<P>,
    ) -> String {
        session.get::<i64>("counter").unwrap_or(0).to_string()
    }

    async fn write<P: DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
        session: Session<P>,
    ) -> String {
        let n = session.get::<i64>("counter").unwrap_or(0) + 1;
        session.set("counter", n);
        n.to_string()
    }

    async fn login<P: DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
        session: Session<P>,
    ) -> &'static str {
        session.renew();
        session.set("user", next_user());
        "ok"
    }

    async fn routes<P: DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
        pool: P,
    ) -> Result<Router> {
        // axum_session takes a `&'static str`; the server makes one router.
        let table: &'static str = Box::leak(names()?.axum_session_table.into_boxed_str());
        let config = SessionConfig::default()
            .with_table_name(table)
            .with_lifetime(time::Duration::seconds(IDLE.as_secs() as i64));
        let store = SessionStore::new(Some(pool), config).await?;
        Ok(Router::new()
            .route("/none", get(none))
            .route("/read", get(read::<P>))
            .route("/write", get(write::<P>))
            .route("/login", get(login::<P>))
            .layer(SessionLayer::new(store)))
    }

    pub(crate) async fn router(store: &str) -> Result<Router> {
        match store {
            "sqlite" => {
                let options = sqlx09::sqlite::SqliteConnectOptions::from_str(&format!(
                    "sqlite://{}",
                    sqlite_path("axum-session")?
                ))?
                .create_if_missing(true)
                .journal_mode(sqlx09::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx09::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
                let pool = sqlx09::sqlite::SqlitePoolOptions::new()
                    .max_connections(POOL)
                    .connect_with(options)
                    .await?;
                routes(SessionSqlitePool::from(pool)).await
            }
            "postgres" => {
                let options = sqlx09::postgres::PgConnectOptions::from_str(&env(
                    "KEEPSAKE_TEST_POSTGRES_URL",
                )?)?
                .disable_statement_logging();
                let pool = sqlx09::postgres::PgPoolOptions::new()
                    .max_connections(POOL)
                    .connect_with(options)
                    .await?;
                sqlx09::query(sqlx09::AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS {}",
                    names()?.axum_session_table
                )))
                .execute(&pool)
                .await?;
                routes(SessionPgPool::from(pool)).await
            }
            other => Err(format!("axum_session has no bench store {other}").into()),
        }
    }
}

/// Drops what the variants created (the Redis keys expire by themselves).
async fn cleanup() -> Result<()> {
    let Names {
        keepsake_table,
        tower_schema,
        axum_session_table,
        ..
    } = names()?;
    if let Ok(url) = env("KEEPSAKE_TEST_POSTGRES_URL") {
        let pool = sqlx::PgPool::connect(&url).await?;
        for sql in [
            format!("DROP TABLE IF EXISTS {keepsake_table}"),
            format!("DROP SCHEMA IF EXISTS {tower_schema} CASCADE"),
            format!("DROP TABLE IF EXISTS {axum_session_table}"),
        ] {
            sqlx::query(&sql).execute(&pool).await?;
        }
    }
    if let Ok(url) = env("KEEPSAKE_TEST_MYSQL_URL") {
        let pool = sqlx::MySqlPool::connect(&url).await?;
        for sql in [
            format!("DROP TABLE IF EXISTS {keepsake_table}"),
            format!("DROP DATABASE IF EXISTS {tower_schema}"),
        ] {
            sqlx::query(&sql).execute(&pool).await?;
        }
    }
    Ok(())
}
