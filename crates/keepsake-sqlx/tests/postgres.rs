//! `PostgresStore` against a real server (`KEEPSAKE_TEST_POSTGRES_URL`).

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepsake_core::test_kit::{self, Options, server_url};
use keepsake_core::{Cas, Error, SessionStore};
use keepsake_sqlx::PostgresStore;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const URL_VAR: &str = "KEEPSAKE_TEST_POSTGRES_URL";

/// Drops the tables (and schemas) a test made, when it ends.
struct Cleanup {
    pool: PgPool,
    statements: Arc<Mutex<Vec<String>>>,
}

impl Cleanup {
    fn new(pool: &PgPool) -> Self {
        Self {
            pool: pool.clone(),
            statements: Arc::default(),
        }
    }

    fn table(&self, schema: Option<&str>, table: &str) {
        let name = match schema {
            Some(schema) => format!("\"{schema}\".\"{table}\""),
            None => format!("\"{table}\""),
        };
        self.statements
            .lock()
            .unwrap()
            .push(format!("DROP TABLE IF EXISTS {name}"));
    }

    fn schema(&self, schema: &str) {
        self.statements
            .lock()
            .unwrap()
            .push(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    }

    async fn run(self) {
        let statements = std::mem::take(&mut *self.statements.lock().unwrap());
        for sql in statements {
            sqlx::raw_sql(&sql).execute(&self.pool).await.unwrap();
        }
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .unwrap()
}

async fn fresh_store(pool: &PgPool, cleanup: &Cleanup) -> PostgresStore {
    let table = common::unique_name("ks_test");
    cleanup.table(None, &table);
    let store = PostgresStore::new(pool.clone())
        .with_table_name(&table)
        .unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    test_kit::run_all(|| fresh_store(&pool, &cleanup), Options::default()).await;
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_a_custom_schema() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let schema = common::unique_name("ks_test_schema");
    cleanup.schema(&schema);
    test_kit::run_all(
        || {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move {
                let store = PostgresStore::new(pool)
                    .with_schema_name(&schema)
                    .unwrap()
                    .with_table_name(&common::unique_name("ks_test"))
                    .unwrap();
                store.migrate().await.unwrap();
                store
            }
        },
        Options::default(),
    )
    .await;

    // The default table name inside the schema: created there, not in public.
    let store = PostgresStore::new(pool.clone())
        .with_schema_name(&schema)
        .unwrap();
    assert_eq!(store.schema_name(), Some(schema.as_str()));
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let r = test_kit::record(r#"{"d":{}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("\"{schema}\".sessions"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(found.is_some());
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".sessions WHERE id = $1"
    ))
    .bind(r.key.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(count, 1);
    cleanup.run().await;
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_indexes() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let t = store.table_name();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
    )
    .bind(t)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            format!("{t}_expires_at_idx"),
            format!("{t}_pkey"),
            format!("{t}_user_id_partial_idx"),
        ]
    );

    // Several instances migrating the same new table at once.
    let table = common::unique_name("ks_test");
    cleanup.table(None, &table);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = PostgresStore::new(pool.clone())
            .with_table_name(&table)
            .unwrap();
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    cleanup.run().await;
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let store = PostgresStore::new(pool);
    for bad in ["", "x; DROP TABLE y", "a\"b", "a.b", &"x".repeat(64)] {
        assert!(
            matches!(
                store.clone().with_table_name(bad),
                Err(Error::Config { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                store.clone().with_schema_name(bad),
                Err(Error::Config { .. })
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn any_stored_text_loads_as_it_is() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    let r = test_kit::record(r#"{"d":{}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let garbage = "not json {{{ \u{1} ✓";
    sqlx::query(&format!(
        "UPDATE \"{}\" SET payload = $1 WHERE id = $2",
        store.table_name()
    ))
    .bind(garbage)
    .bind(r.key.as_str())
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(store.load(&r.key).await.unwrap().unwrap().payload, garbage);
    cleanup.run().await;
}

#[tokio::test]
async fn gc_deletes_in_batches_and_reports_progress() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await.with_gc_batch_size(10);
    common::fill(&store, 25, 5).await;
    let mut seen = Vec::new();
    let deleted = store
        .gc_with_progress(keepsake_core::now(), |total| seen.push(total))
        .await
        .unwrap();
    assert_eq!(deleted, 25);
    assert_eq!(seen, [10, 20, 25]);
    assert_eq!(store.gc(keepsake_core::now()).await.unwrap(), 0);
    cleanup.run().await;
}

#[tokio::test]
async fn create_replaces_an_expired_row_but_never_a_live_one() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    let mut old = test_kit::record(r#"{"d":{"old":1}}"#);
    old.expires_at = keepsake_core::now() - 1;
    assert_eq!(store.create(&old).await.unwrap(), Cas::Applied);
    let mut new = test_kit::record(r#"{"d":{"new":1}}"#);
    new.key = old.key.clone();
    assert_eq!(store.create(&new).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&new.key).await.unwrap(), Some(new.clone()));
    let mut third = new.clone();
    third.payload = r#"{"d":{"third":1}}"#.into();
    assert_eq!(store.create(&third).await.unwrap(), Cas::Conflict);
    assert_eq!(store.load(&new.key).await.unwrap(), Some(new));
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = Arc::new(fresh_store(&pool, &cleanup).await);
    assert_eq!(common::concurrent_increments(store).await, 400);
    cleanup.run().await;
}

/// A server that is not there: every operation answers `Error::Backend`
/// with the sqlx error as its source, within the pool's acquire timeout.
#[tokio::test]
async fn database_down_is_a_backend_error() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let store = PostgresStore::new(pool);
    let r = test_kit::record(r#"{"d":{}}"#);
    let load = tokio::time::timeout(Duration::from_secs(20), store.load(&r.key))
        .await
        .expect("load gives up instead of hanging");
    let save = tokio::time::timeout(Duration::from_secs(20), store.save(&r, 1))
        .await
        .expect("save gives up instead of hanging");
    for (result, operation) in [(load.map(|_| ()), "load"), (save.map(|_| ()), "save")] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Backend { store: "postgres", operation: op, .. } if op == operation),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("the sqlx error is kept");
        assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    }
}

/// Kills every backend of `app` from the admin connection and waits until
/// the server has let them go.
async fn terminate(admin: &PgPool, app: &str) {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) AS k",
    )
    .bind(app)
    .fetch_one(admin)
    .await
    .unwrap();
    assert!(killed >= 1, "no backend of {app} to terminate");
    for _ in 0..100 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(admin)
                .await
                .unwrap();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the backends of {app} were not terminated");
}

/// Create, kill the connection, then: the next operation fails (with
/// `Error::Backend`) or retries on a fresh connection, and the ones after it
/// succeed.
async fn survives_termination(admin: &PgPool, store: PostgresStore, app: &str) {
    store.migrate().await.unwrap();
    let mut r = test_kit::record(r#"{"d":{"n":1}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    terminate(admin, app).await;
    if let Err(err) = store.load(&r.key).await {
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    }
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r.clone()));
    r.payload = r#"{"d":{"n":2}}"#.into();
    r.version = 2;
    assert_eq!(store.save(&r, 1).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r));
}

/// `pg_terminate_backend` on the store's own pool (from `connect`, which
/// pings only connections idle for over a second) and on a pool with
/// sqlx's defaults (which pings before every use).
#[tokio::test]
async fn pool_recovers_from_a_terminated_connection() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let admin = pool(&url).await;
    let cleanup = Cleanup::new(&admin);

    let app = common::unique_name("keepsake_test");
    let separator = if url.contains('?') { '&' } else { '?' };
    let table = common::unique_name("ks_test");
    cleanup.table(None, &table);
    let store = PostgresStore::connect(&format!("{url}{separator}application_name={app}"))
        .await
        .unwrap()
        .with_table_name(&table)
        .unwrap();
    survives_termination(&admin, store, &app).await;

    let app = common::unique_name("keepsake_test");
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .application_name(&app);
    let pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    let table = common::unique_name("ks_test");
    cleanup.table(None, &table);
    let store = PostgresStore::new(pool).with_table_name(&table).unwrap();
    survives_termination(&admin, store, &app).await;

    cleanup.run().await;
}

#[tokio::test]
async fn migrate_upgrades_a_table_of_the_old_schema_and_keeps_its_sessions() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let table = common::unique_name("ks_test");
    cleanup.table(None, &table);
    for sql in common::schema_before_leaner_indexes("postgres", &table) {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let store = PostgresStore::new(pool.clone())
        .with_table_name(&table)
        .unwrap();
    common::sessions_survive_the_upgrade(&store, async || store.migrate().await).await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
    )
    .bind(&table)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            format!("{table}_expires_at_idx"),
            format!("{table}_pkey"),
            format!("{table}_user_id_partial_idx"),
        ]
    );
    cleanup.run().await;
}
