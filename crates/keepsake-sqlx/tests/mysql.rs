//! `MySqlStore` against a real MySQL/MariaDB server (`KEEPSAKE_TEST_MYSQL_URL`).

#![cfg(feature = "mysql")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepsake_core::test_kit::{self, Options, server_url};
use keepsake_core::{Cas, Error, SessionStore};
use keepsake_sqlx::MySqlStore;
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

const URL_VAR: &str = "KEEPSAKE_TEST_MYSQL_URL";

/// Drops the tables a test made, when it ends.
struct Cleanup {
    pool: MySqlPool,
    statements: Arc<Mutex<Vec<String>>>,
}

impl Cleanup {
    fn new(pool: &MySqlPool) -> Self {
        Self {
            pool: pool.clone(),
            statements: Arc::default(),
        }
    }

    fn table(&self, table: &str) {
        self.statements
            .lock()
            .unwrap()
            .push(format!("DROP TABLE IF EXISTS `{table}`"));
    }

    async fn run(self) {
        let statements = std::mem::take(&mut *self.statements.lock().unwrap());
        for sql in statements {
            sqlx::raw_sql(&sql).execute(&self.pool).await.unwrap();
        }
    }
}

async fn pool(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .unwrap()
}

async fn fresh_store(pool: &MySqlPool, cleanup: &Cleanup) -> MySqlStore {
    let table = common::unique_name("ks_test");
    cleanup.table(&table);
    let store = MySqlStore::new(pool.clone())
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
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = ? ORDER BY 1",
    )
    .bind(t)
    .fetch_all(&pool)
    .await
    .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "PRIMARY".to_owned(),
            format!("{t}_expires_at_idx"),
            format!("{t}_user_id_idx"),
        ]
    );

    // Several instances migrating the same new table at once.
    let table = common::unique_name("ks_test");
    cleanup.table(&table);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = MySqlStore::new(pool.clone())
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
    let pool = MySqlPoolOptions::new()
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .unwrap();
    let store = MySqlStore::new(pool);
    for bad in ["", "x; DROP TABLE y", "a`b", "a.b", &"x".repeat(64)] {
        assert!(
            matches!(
                store.clone().with_table_name(bad),
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
        "UPDATE `{}` SET payload = ? WHERE id = ?",
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
async fn create_conflicts_with_any_existing_row() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    let live = test_kit::record(r#"{"d":{"live":1}}"#);
    assert_eq!(store.create(&live).await.unwrap(), Cas::Applied);
    let mut other = test_kit::record(r#"{"d":{"other":1}}"#);
    other.key = live.key.clone();
    assert_eq!(store.create(&other).await.unwrap(), Cas::Conflict);
    assert_eq!(store.load(&live.key).await.unwrap(), Some(live));

    // An expired row that gc has not collected yet is a conflict too (see
    // the `MySqlStore` docs); once collected, the key is free again.
    let mut old = test_kit::record(r#"{"d":{"old":1}}"#);
    old.expires_at = keepsake_core::now() - 1;
    assert_eq!(store.create(&old).await.unwrap(), Cas::Applied);
    let mut new = test_kit::record(r#"{"d":{"new":1}}"#);
    new.key = old.key.clone();
    assert_eq!(store.create(&new).await.unwrap(), Cas::Conflict);
    assert_eq!(store.gc(keepsake_core::now()).await.unwrap(), 1);
    assert_eq!(store.create(&new).await.unwrap(), Cas::Applied);
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
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .unwrap();
    let store = MySqlStore::new(pool);
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
            matches!(err, Error::Backend { store: "mysql", operation: op, .. } if op == operation),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("the sqlx error is kept");
        assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    }
}

/// User ids compare exactly (binary collation), as on the other backends.
#[tokio::test]
async fn user_ids_are_case_sensitive() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    let user = common::unique_name("Alice");
    let mut r = test_kit::record(r#"{"d":{}}"#);
    r.user_id = Some(user.clone());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.list_for_user(&user).await.unwrap().len(), 1);
    let lower = user.to_lowercase();
    assert!(store.list_for_user(&lower).await.unwrap().is_empty());
    assert_eq!(store.destroy_for_user(&lower, None).await.unwrap(), 0);
    assert_eq!(store.destroy_for_user(&user, None).await.unwrap(), 1);
    cleanup.run().await;
}

/// A payload far beyond 64 KiB (TEXT's limit) round-trips.
#[tokio::test]
async fn large_payloads_fit() {
    let Some(url) = server_url(URL_VAR) else {
        return;
    };
    let pool = pool(&url).await;
    let cleanup = Cleanup::new(&pool);
    let store = fresh_store(&pool, &cleanup).await;
    let payload = format!(r#"{{"d":{{"big":"{}"}}}}"#, "é".repeat(300 * 1024));
    let r = test_kit::record(&payload);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap().unwrap().payload, payload);
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
    cleanup.table(&table);
    for sql in common::schema_before_leaner_indexes("mysql", &table) {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let store = MySqlStore::new(pool.clone())
        .with_table_name(&table)
        .unwrap();
    common::sessions_survive_the_upgrade(&store, async || store.migrate().await).await;
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = ? ORDER BY 1",
    )
    .bind(&table)
    .fetch_all(&pool)
    .await
    .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "PRIMARY".to_owned(),
            format!("{table}_expires_at_idx"),
            format!("{table}_user_id_idx"),
        ]
    );
    cleanup.run().await;
}
