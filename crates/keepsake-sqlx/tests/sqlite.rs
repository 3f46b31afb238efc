//! `SqliteStore` against a temporary file and `:memory:`.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use keepsake_core::test_kit::{self, Options};
use keepsake_core::{Cas, Error, SessionStore};
use keepsake_sqlx::SqliteStore;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique_name("keepsake-sqlx"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("sessions.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn store_on(url: &str) -> SqliteStore {
    let store = SqliteStore::connect(url)
        .await
        .unwrap()
        .with_table_name(&common::unique_name("ks_test"))
        .unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn conformance_on_a_file() {
    let dir = TempDir::new();
    let base = SqliteStore::connect(&dir.url()).await.unwrap();
    test_kit::run_all(
        || {
            let base = base.clone();
            async move {
                let store = base
                    .with_table_name(&common::unique_name("ks_test"))
                    .unwrap();
                store.migrate().await.unwrap();
                store
            }
        },
        Options::default(),
    )
    .await;
}

#[tokio::test]
async fn conformance_in_memory() {
    test_kit::run_all(
        || async {
            let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
            store.migrate().await.unwrap();
            store
        },
        Options::default(),
    )
    .await;
}

#[tokio::test]
async fn in_memory_database_outlives_idle_time() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let r = test_kit::record(r#"{"d":{}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    // Many concurrent users of the single connection see the same database.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = r.key.clone();
        tasks.push(tokio::spawn(async move { store.load(&key).await.unwrap() }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Some(r.clone()));
    }
}

/// WAL and the busy timeout: 8 writers × 50 compare-and-swap increments
/// through a pool of several connections to one file, nothing lost and no
/// "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_a_file_wait_instead_of_failing() {
    let dir = TempDir::new();
    let store = Arc::new(store_on(&dir.url()).await);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(timeout, 5000);
    assert_eq!(common::concurrent_increments(store).await, 400);
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_indexes() {
    let dir = TempDir::new();
    let store = store_on(&dir.url()).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL",
    )
    .bind(store.table_name())
    .fetch_all(store.pool())
    .await
    .unwrap();
    indexes.sort();
    let t = store.table_name();
    assert_eq!(
        indexes,
        [
            format!("{t}_expires_at_idx"),
            format!("{t}_user_id_partial_idx")
        ]
    );
    // The default name works the same way.
    let default = SqliteStore::connect(&dir.url()).await.unwrap();
    default.migrate().await.unwrap();
    default.migrate().await.unwrap();
    assert_eq!(default.table_name(), "sessions");
    assert_eq!(default.gc(keepsake_core::now()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_long_table_name_gets_distinct_short_index_names() {
    let store = SqliteStore::connect("sqlite::memory:")
        .await
        .unwrap()
        .with_table_name(&"t".repeat(63))
        .unwrap();
    store.migrate().await.unwrap();
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn invalid_table_names_are_refused() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    for bad in ["", "x; DROP TABLE y", "a\"b", "a.b", &"x".repeat(64)] {
        let result = store.clone().with_table_name(bad);
        assert!(matches!(result, Err(Error::Config { .. })), "{bad:?}");
    }
}

#[tokio::test]
async fn any_stored_text_loads_as_it_is() {
    let store = store_on("sqlite::memory:").await;
    let r = test_kit::record(r#"{"d":{}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let garbage = "not json {{{ \u{1} ✓";
    sqlx::query(&format!(
        "UPDATE \"{}\" SET payload = ?1 WHERE id = ?2",
        store.table_name()
    ))
    .bind(garbage)
    .bind(r.key.as_str())
    .execute(store.pool())
    .await
    .unwrap();
    let loaded = store.load(&r.key).await.unwrap().unwrap();
    assert_eq!(loaded.payload, garbage);
}

#[tokio::test]
async fn gc_deletes_in_batches_and_reports_progress() {
    let store = store_on("sqlite::memory:").await.with_gc_batch_size(10);
    common::fill(&store, 25, 5).await;
    let mut seen = Vec::new();
    let deleted = store
        .gc_with_progress(keepsake_core::now(), |total| seen.push(total))
        .await
        .unwrap();
    assert_eq!(deleted, 25);
    assert_eq!(seen, [10, 20, 25]);
    assert_eq!(store.gc(keepsake_core::now()).await.unwrap(), 0);
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\"", store.table_name()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 5);
}

#[tokio::test]
async fn create_replaces_an_expired_row_but_never_a_live_one() {
    let store = store_on("sqlite::memory:").await;
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
}

#[tokio::test]
async fn migrate_upgrades_a_table_of_the_old_schema_and_keeps_its_sessions() {
    let dir = TempDir::new();
    let store = SqliteStore::connect(&dir.url())
        .await
        .unwrap()
        .with_table_name("ks_upgrade")
        .unwrap();
    for sql in common::schema_before_leaner_indexes("sqlite", "ks_upgrade") {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }
    common::sessions_survive_the_upgrade(&store, async || store.migrate().await).await;
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL",
    )
    .bind("ks_upgrade")
    .fetch_all(store.pool())
    .await
    .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "ks_upgrade_expires_at_idx",
            "ks_upgrade_user_id_partial_idx"
        ]
    );
}
