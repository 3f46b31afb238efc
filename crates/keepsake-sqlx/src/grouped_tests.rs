//! Grouped loads against each backend (SQLite in memory always, PostgreSQL
//! and MySQL when their test servers are set): answers, grouping and errors.
//! Here rather than in `tests/` because they count the statements sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use keepsake_core::test_kit::{self, server_url};
use keepsake_core::{Cas, Error, Record, SessionId, SessionStore, StorageKey};
use tokio::task::JoinSet;

use crate::common::Loads;

/// A table name no other test run uses.
fn unique_table() -> String {
    let key = SessionId::generate().storage_key();
    format!("ks_grouped_{}", &key.as_str()[..12])
}

fn statements(loads: &Loads) -> usize {
    loads.statements.load(Ordering::Relaxed)
}

/// Loads every key of `keys` at once, each on its own task.
async fn load_all<S>(store: &S, keys: &[StorageKey]) -> Vec<keepsake_core::Result<Option<Record>>>
where
    S: SessionStore + Clone + 'static,
{
    let mut tasks = JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let store = store.clone();
        let key = key.clone();
        tasks.spawn(async move { (i, store.load(&key).await) });
    }
    let mut answers: Vec<_> = (0..keys.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        answers[i] = Some(answer);
    }
    answers.into_iter().map(Option::unwrap).collect()
}

/// 100 live sessions (each loaded three times), 10 expired and 30 missing,
/// all loaded at once: each load gets its own record or `None`, in far
/// fewer statements than loads, and a lone load is one statement.
async fn grouped_loads_answer_each_caller<S>(store: &S, loads: &Loads)
where
    S: SessionStore + Clone + 'static,
{
    let mut live = Vec::new();
    for i in 0..100 {
        let mut record = test_kit::record(&format!(r#"{{"d":{{"n":{i}}}}}"#));
        if i % 4 == 0 {
            record.user_id = Some(format!("user {i}"));
        }
        assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
        live.push(record);
    }
    let mut expired = Vec::new();
    for _ in 0..10 {
        let mut record = test_kit::record(r#"{"d":{}}"#);
        record.expires_at = keepsake_core::now() - 10;
        assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
        expired.push(record.key);
    }
    let missing: Vec<StorageKey> = (0..30)
        .map(|_| SessionId::generate().storage_key())
        .collect();
    let mut keys = Vec::new();
    let mut expected = Vec::new();
    for round in 0..3 {
        for record in &live {
            keys.push(record.key.clone());
            expected.push(Some(record.clone()));
        }
        if round == 1 {
            for key in expired.iter().chain(&missing) {
                keys.push(key.clone());
                expected.push(None);
            }
        }
    }

    let before = statements(loads);
    let answers = load_all(store, &keys).await;
    let sent = statements(loads) - before;
    for ((answer, expected), key) in answers.into_iter().zip(expected).zip(&keys) {
        assert_eq!(answer.unwrap(), expected, "{}", key.short());
    }
    // 340 loads of 140 distinct keys: a first load alone, then the rest
    // together (at most 64 keys per statement). Spawned tasks may start a
    // little apart, so allow some more batches, yet far fewer than loads.
    assert!(sent >= 3, "{sent} statements");
    assert!(sent <= 40, "{sent} statements for {} loads", keys.len());

    let before = statements(loads);
    assert_eq!(
        store.load(&live[7].key).await.unwrap(),
        Some(live[7].clone())
    );
    assert_eq!(store.load(&missing[0]).await.unwrap(), None);
    assert_eq!(
        statements(loads) - before,
        2,
        "a lone load is one statement"
    );
}

/// Loads on a table that does not exist: every caller of every batch gets
/// the backend's error, and the batches were grouped.
async fn a_failing_group_fails_every_caller<S>(store: &S, loads: &Loads, kind: &str)
where
    S: SessionStore + Clone + 'static,
{
    let keys: Vec<StorageKey> = (0..40)
        .map(|_| SessionId::generate().storage_key())
        .collect();
    let before = statements(loads);
    let answers = load_all(store, &keys).await;
    let sent = statements(loads) - before;
    assert!(sent < keys.len() / 2, "{sent} statements for 40 loads");
    for answer in answers {
        let error = answer.unwrap_err();
        assert!(
            matches!(error, Error::Backend { store, operation: "load", .. } if store == kind),
            "{error:?}"
        );
        // The sqlx error is the source, or the source of a shared one.
        let source = std::error::Error::source(&error).unwrap();
        let sqlx_error = source.downcast_ref::<sqlx::Error>().or_else(|| {
            source
                .downcast_ref::<keepsake_core::batch::Shared<sqlx::Error>>()
                .map(|shared| &*shared.0)
        });
        assert!(sqlx_error.is_some(), "{source:?}");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::SqliteStore;

    async fn store() -> SqliteStore {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test]
    async fn grouped_loads() {
        let store = store().await;
        grouped_loads_answer_each_caller(&store, &store.loads).await;
    }

    #[tokio::test]
    async fn grouped_loads_on_a_file_database() {
        let dir = std::env::temp_dir().join(unique_table());
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("s.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        grouped_loads_answer_each_caller(&store, &store.loads).await;
        store.pool().close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn errors_reach_every_caller() {
        let store = store().await.with_table_name("not_there").unwrap();
        a_failing_group_fails_every_caller(&store, &store.loads, "sqlite").await;
    }

    #[tokio::test]
    async fn each_table_has_its_own_batcher() {
        let store = store().await;
        let clone = store.clone();
        assert!(Arc::ptr_eq(&store.loads, &clone.loads));
        let other = store.with_table_name("other").unwrap();
        assert!(!Arc::ptr_eq(&other.loads, &clone.loads));
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::PostgresStore;

    async fn store(url: &str, table: &str) -> PostgresStore {
        let store = PostgresStore::connect(url)
            .await
            .unwrap()
            .with_table_name(table)
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_loads() {
        let Some(url) = server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
            return;
        };
        let table = unique_table();
        let store = store(&url, &table).await;
        grouped_loads_answer_each_caller(&store, &store.loads).await;
        sqlx::query(&format!("DROP TABLE \"{table}\""))
            .execute(store.pool())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_reach_every_caller() {
        let Some(url) = server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
            return;
        };
        let store = PostgresStore::connect(&url)
            .await
            .unwrap()
            .with_table_name(&unique_table())
            .unwrap();
        a_failing_group_fails_every_caller(&store, &store.loads, "postgres").await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use crate::MySqlStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_loads() {
        let Some(url) = server_url("KEEPSAKE_TEST_MYSQL_URL") else {
            return;
        };
        let table = unique_table();
        let store = MySqlStore::connect(&url)
            .await
            .unwrap()
            .with_table_name(&table)
            .unwrap();
        store.migrate().await.unwrap();
        grouped_loads_answer_each_caller(&store, &store.loads).await;
        sqlx::query(&format!("DROP TABLE `{table}`"))
            .execute(store.pool())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_reach_every_caller() {
        let Some(url) = server_url("KEEPSAKE_TEST_MYSQL_URL") else {
            return;
        };
        let store = MySqlStore::connect(&url)
            .await
            .unwrap()
            .with_table_name(&unique_table())
            .unwrap();
        a_failing_group_fails_every_caller(&store, &store.loads, "mysql").await;
    }
}
