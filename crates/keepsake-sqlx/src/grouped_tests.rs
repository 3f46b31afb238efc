//! Grouped loads and saves against each backend (SQLite in memory always,
//! PostgreSQL and MySQL when their test servers are set): answers, grouping
//! and errors. Here rather than in `tests/` because they count the
//! statements sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use keepsake_core::test_kit::{self, server_url};
use keepsake_core::{Cas, Error, Record, SessionId, SessionStore, StorageKey};
use tokio::task::JoinSet;

use crate::common::Batches;

/// A table name no other test run uses.
fn unique_table() -> String {
    let key = SessionId::generate().storage_key();
    format!("ks_grouped_{}", &key.as_str()[..12])
}

fn statements(loads: &Batches) -> usize {
    loads.statements.load(Ordering::Relaxed)
}

/// Batches every key of `keys` at once, each on its own task.
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
async fn grouped_loads_answer_each_caller<S>(store: &S, loads: &Batches)
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

fn save_statements(batches: &Batches) -> usize {
    batches.save_statements.load(Ordering::Relaxed)
}

/// In-place saves of 100 live sessions at their version, 20 at a stale
/// version, 10 expired and 10 missing, plus a second save of 5 keys in the
/// same batch, all at once: each gets its own answer, what applied is
/// stored and nothing else changed; on a backend that groups saves, in far
/// fewer statements than saves. A lone save is one statement.
async fn grouped_saves_answer_each_caller<S>(store: &S, batches: &Batches, grouped: bool)
where
    S: SessionStore + Clone + 'static,
{
    let mut saves = Vec::new();
    let mut expected = Vec::new();
    let mut live = Vec::new();
    for i in 0..120 {
        let mut record = test_kit::record(&format!(r#"{{"d":{{"n":{i}}}}}"#));
        if i % 4 == 0 {
            record.user_id = Some(format!("user {i}"));
        }
        assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
        let mut next = record.clone();
        next.payload = format!(r#"{{"d":{{"n":{i},"saved":true}}}}"#);
        next.last_activity += 5;
        next.ip_address = Some(format!("192.0.2.{i}"));
        next.version = 2;
        if i < 100 {
            saves.push((next.clone(), 1));
            expected.push(Cas::Applied);
            live.push(next);
        } else {
            saves.push((next, 7));
            expected.push(Cas::Conflict);
            live.push(record);
        }
    }
    for _ in 0..10 {
        let mut record = test_kit::record(r#"{"d":{}}"#);
        record.expires_at = keepsake_core::now() - 10;
        record.last_activity = keepsake_core::now() - 100;
        let _ = store.create(&record).await.unwrap();
        let mut next = record.clone();
        next.version = 2;
        saves.push((next, 1));
        expected.push(Cas::Conflict);
    }
    for _ in 0..10 {
        let mut record = test_kit::record(r#"{"d":{}}"#);
        record.version = 2;
        saves.push((record, 1));
        expected.push(Cas::Conflict);
    }
    // A second save of five keys at the version the first one expects: at
    // most one of the two applies, and it is saved by itself.
    for first in &live[..5] {
        let mut again = first.clone();
        again.payload = r#"{"d":{"again":true}}"#.to_owned();
        again.version = 2;
        saves.push((again, 1));
    }

    let before = save_statements(batches);
    let mut tasks = JoinSet::new();
    for (i, (record, version)) in saves.iter().enumerate() {
        let store = store.clone();
        let record = record.clone();
        let version = *version;
        tasks.spawn(async move { (i, store.save_in_place(&record, version).await) });
    }
    let mut answers = vec![None; saves.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        answers[i] = Some(answer.unwrap());
    }
    let sent = save_statements(batches) - before;
    for (i, want) in expected.iter().enumerate() {
        let first = i < 5;
        if first {
            // Raced with its second save: exactly one of the two applied.
            let second = answers[saves.len() - 5 + i].unwrap();
            assert_eq!(
                [answers[i].unwrap(), second]
                    .iter()
                    .filter(|a| a.is_applied())
                    .count(),
                1,
                "save {i}"
            );
            let stored = store.load(&saves[i].0.key).await.unwrap().unwrap();
            let winner = if answers[i].unwrap().is_applied() {
                &saves[i].0
            } else {
                &saves[saves.len() - 5 + i].0
            };
            assert_eq!(stored.payload, winner.payload, "save {i}");
            continue;
        }
        assert_eq!(answers[i], Some(*want), "save {i}");
    }
    for (i, record) in live.iter().enumerate().skip(5) {
        let stored = store.load(&record.key).await.unwrap();
        assert_eq!(stored.as_ref(), Some(record), "record {i}");
    }
    for (record, _) in &saves[120..140] {
        assert_eq!(store.load(&record.key).await.unwrap(), None);
    }
    if grouped {
        assert!(sent <= 60, "{sent} statements for {} saves", saves.len());
    } else {
        assert_eq!(sent, saves.len(), "one statement per save");
    }

    let mut lone = live[50].clone();
    lone.payload = r#"{"d":{"lone":true}}"#.to_owned();
    lone.version = 3;
    let before = save_statements(batches);
    assert_eq!(store.save_in_place(&lone, 2).await.unwrap(), Cas::Applied);
    assert_eq!(
        save_statements(batches) - before,
        1,
        "a lone save is one statement"
    );
    assert_eq!(store.load(&lone.key).await.unwrap(), Some(lone));
}

/// Batches on a table that does not exist: every caller of every batch gets
/// the backend's error, and the batches were grouped.
async fn a_failing_group_fails_every_caller<S>(store: &S, loads: &Batches, kind: &str)
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
        grouped_loads_answer_each_caller(&store, &store.batches).await;
    }

    #[tokio::test]
    async fn grouped_saves() {
        let store = store().await;
        grouped_saves_answer_each_caller(&store, &store.batches, true).await;
    }

    #[tokio::test]
    async fn grouped_loads_on_a_file_database() {
        let dir = std::env::temp_dir().join(unique_table());
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("s.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        grouped_loads_answer_each_caller(&store, &store.batches).await;
        grouped_saves_answer_each_caller(&store, &store.batches, true).await;
        store.pool().close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn errors_reach_every_caller() {
        let store = store().await.with_table_name("not_there").unwrap();
        a_failing_group_fails_every_caller(&store, &store.batches, "sqlite").await;
    }

    #[tokio::test]
    async fn each_table_has_its_own_batcher() {
        let store = store().await;
        let clone = store.clone();
        assert!(Arc::ptr_eq(&store.batches, &clone.batches));
        let other = store.with_table_name("other").unwrap();
        assert!(!Arc::ptr_eq(&other.batches, &clone.batches));
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
        grouped_loads_answer_each_caller(&store, &store.batches).await;
        grouped_saves_answer_each_caller(&store, &store.batches, true).await;
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
        a_failing_group_fails_every_caller(&store, &store.batches, "postgres").await;
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
        grouped_loads_answer_each_caller(&store, &store.batches).await;
        grouped_saves_answer_each_caller(&store, &store.batches, false).await;
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
        a_failing_group_fails_every_caller(&store, &store.batches, "mysql").await;
    }
}
