//! Grouped loads and saves against each backend (SQLite in memory always,
//! PostgreSQL and MySQL when their test servers are set): answers, grouping
//! and errors. Here rather than in `tests/` because they count the
//! statements sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use keepsake_core::test_kit::{self, server_url};
use keepsake_core::{Cas, Error, Record, SessionId, SessionStore, StorageKey};
use tokio::task::JoinSet;

use crate::common::{Batches, Statement};

/// A table name no other test run uses.
fn unique_table() -> String {
    let key = SessionId::generate().storage_key();
    format!("ks_grouped_{}", &key.as_str()[..12])
}

fn statements(loads: &Batches) -> usize {
    loads.count(Statement::Load)
}

/// Calls `call` with the store and each of `items` at once, each on its
/// own task, and answers in the order of `items`.
async fn at_once<S, T, R, F, Fut>(store: &S, items: &[T], call: F) -> Vec<R>
where
    S: Clone + Send + 'static,
    T: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(S, T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (i, item) in items.iter().enumerate() {
        let call = call(store.clone(), item.clone());
        tasks.spawn(async move { (i, call.await) });
    }
    let mut answers: Vec<_> = (0..items.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        answers[i] = Some(answer);
    }
    answers.into_iter().map(Option::unwrap).collect()
}

/// Loads every key of `keys` at once.
async fn load_all<S>(store: &S, keys: &[StorageKey]) -> Vec<keepsake_core::Result<Option<Record>>>
where
    S: SessionStore + Clone + 'static,
{
    at_once(
        store,
        keys,
        |store, key| async move { store.load(&key).await },
    )
    .await
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
    batches.count(Statement::Save)
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
    let answers: Vec<Option<Cas>> = at_once(store, &saves, |store, (record, version)| async move {
        Some(store.save_in_place(&record, version).await.unwrap())
    })
    .await;
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
    assert_statements(sent, saves.len(), grouped, "saves");

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

/// 60 creates of new keys, 10 of keys a live session has, 10 of keys an
/// expired session has (where the backend replaces it in the same
/// statement) and a second create of 5 new keys, all at once; then retires
/// of 40 at their version, 10 at a stale version, 5 missing and 5 expired,
/// plus 3 keys retired twice, all at once. Each call gets its own
/// answer and the table holds exactly what applied; on a backend that
/// groups them, in far fewer statements than calls. A lone create and a
/// lone retire are one statement each.
async fn grouped_creates_and_retires_answer_each_caller<S>(
    store: &S,
    batches: &Batches,
    grouped: bool,
) where
    S: SessionStore + Clone + 'static,
{
    let fresh: Vec<Record> = (0..60)
        .map(|i| {
            let mut record = test_kit::record(&format!(r#"{{"d":{{"n":{i}}}}}"#));
            if i % 3 == 0 {
                record.user_id = Some(format!("user {i}"));
            }
            record
        })
        .collect();
    let mut creates = fresh.clone();
    let mut expected = vec![Cas::Applied; fresh.len()];
    let mut taken = Vec::new();
    for _ in 0..10 {
        let live = test_kit::record(r#"{"d":{"live":true}}"#);
        assert_eq!(store.create(&live).await.unwrap(), Cas::Applied);
        let mut again = test_kit::record(r#"{"d":{"again":true}}"#);
        again.key = live.key.clone();
        creates.push(again);
        expected.push(Cas::Conflict);
        taken.push(live);
    }
    let mut replaced = Vec::new();
    if grouped {
        for _ in 0..10 {
            let mut old = test_kit::record(r#"{"d":{"old":true}}"#);
            old.expires_at = keepsake_core::now() - 10;
            assert_eq!(store.create(&old).await.unwrap(), Cas::Applied);
            let mut new = test_kit::record(r#"{"d":{"new":true}}"#);
            new.key = old.key;
            creates.push(new.clone());
            expected.push(Cas::Applied);
            replaced.push(new);
        }
    }
    let twice = creates.len();
    for first in &fresh[..5] {
        let mut again = first.clone();
        again.payload = r#"{"d":{"twice":true}}"#.to_owned();
        creates.push(again);
    }

    let before = batches.count(Statement::Create);
    let answers = at_once(store, &creates, |store, record| async move {
        store.create(&record).await.unwrap()
    })
    .await;
    let sent = batches.count(Statement::Create) - before;
    for (i, first) in fresh.iter().enumerate() {
        let stored = store.load(&first.key).await.unwrap().unwrap();
        if i < 5 {
            // Raced with its second create: exactly one applied, and it
            // is what is stored.
            let second = answers[twice + i];
            assert_ne!(answers[i], second, "create {i}");
            let winner = if answers[i].is_applied() {
                first
            } else {
                &creates[twice + i]
            };
            assert_eq!(stored.payload, winner.payload, "create {i}");
        } else {
            assert_eq!(answers[i], Cas::Applied, "create {i}");
            assert_eq!(&stored, first, "create {i}");
        }
    }
    for (i, want) in expected.iter().enumerate().skip(fresh.len()) {
        assert_eq!(answers[i], *want, "create {i}");
    }
    for record in taken.iter().chain(&replaced) {
        assert_eq!(
            store.load(&record.key).await.unwrap().as_ref(),
            Some(record)
        );
    }
    assert_statements(sent, creates.len(), grouped, "creates");

    // Retires. The first five keys were written by whichever create won,
    // at version 1 either way.
    let mut retires: Vec<(StorageKey, i64)> = Vec::new();
    let mut expected = Vec::new();
    for (i, record) in fresh.iter().enumerate().skip(5).take(50) {
        let stale = i >= 45;
        retires.push((record.key.clone(), if stale { 9 } else { record.version }));
        expected.push(if stale { Cas::Conflict } else { Cas::Applied });
    }
    for _ in 0..5 {
        retires.push((SessionId::generate().storage_key(), 1));
        expected.push(Cas::Conflict);
    }
    for _ in 0..5 {
        let mut old = test_kit::record(r#"{"d":{}}"#);
        old.expires_at = keepsake_core::now() - 10;
        let _ = store.create(&old).await.unwrap();
        retires.push((old.key, old.version));
        expected.push(Cas::Conflict);
    }
    let twice = retires.len();
    for first in &fresh[..3] {
        retires.push((first.key.clone(), first.version));
        retires.push((first.key.clone(), first.version));
    }
    let before = batches.count(Statement::Retire);
    let answers = at_once(store, &retires, |store, (key, version)| async move {
        store.retire(&key, version, None).await.unwrap()
    })
    .await;
    let sent = batches.count(Statement::Retire) - before;
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(answers[i], *want, "retire {i}");
        let (key, _) = &retires[i];
        let gone = store.load(key).await.unwrap().is_none();
        assert_eq!(gone, !(40..50).contains(&i), "retire {i}");
    }
    for (i, first) in fresh[..3].iter().enumerate() {
        // Retired twice at once: exactly one of the two applied.
        let pair = [answers[twice + 2 * i], answers[twice + 2 * i + 1]];
        assert_eq!(
            pair.iter().filter(|a| a.is_applied()).count(),
            1,
            "retire {}",
            twice + 2 * i
        );
        assert_eq!(store.load(&first.key).await.unwrap(), None);
    }
    assert_statements(sent, retires.len(), grouped, "retires");

    let lone = test_kit::record(r#"{"d":{"lone":true}}"#);
    let (creates_before, retires_before) = (
        batches.count(Statement::Create),
        batches.count(Statement::Retire),
    );
    assert_eq!(store.create(&lone).await.unwrap(), Cas::Applied);
    assert_eq!(
        store.retire(&lone.key, 1, None).await.unwrap(),
        Cas::Applied
    );
    assert_eq!(
        (
            batches.count(Statement::Create) - creates_before,
            batches.count(Statement::Retire) - retires_before
        ),
        (1, 1),
        "a lone create and a lone retire are one statement each"
    );
}

/// `sent` statements for `calls` writes at once: far fewer where the
/// backend groups them, else one each.
fn assert_statements(sent: usize, calls: usize, grouped: bool, what: &str) {
    if grouped {
        assert!(sent <= calls / 2, "{sent} statements for {calls} {what}");
    } else {
        assert_eq!(sent, calls, "one statement per write of the {what}");
    }
}

/// Batches on a table that does not exist: every caller of every batch of
/// loads, creates and retires gets the backend's error, and the loads were
/// grouped.
async fn a_failing_group_fails_every_caller<S>(store: &S, batches: &Batches, kind: &str)
where
    S: SessionStore + Clone + 'static,
{
    let keys: Vec<StorageKey> = (0..40)
        .map(|_| SessionId::generate().storage_key())
        .collect();
    let before = statements(batches);
    let answers = load_all(store, &keys).await;
    let sent = statements(batches) - before;
    assert!(sent < keys.len() / 2, "{sent} statements for 40 loads");
    for answer in answers {
        assert_backend_error(&answer.unwrap_err(), kind, "load");
    }
    let records: Vec<Record> = (0..40).map(|_| test_kit::record(r#"{"d":{}}"#)).collect();
    let answers = at_once(store, &records, |store, record| async move {
        store.create(&record).await
    })
    .await;
    for answer in answers {
        assert_backend_error(&answer.unwrap_err(), kind, "create");
    }
    let answers = at_once(store, &keys, |store, key| async move {
        store.retire(&key, 1, None).await
    })
    .await;
    for answer in answers {
        assert_backend_error(&answer.unwrap_err(), kind, "retire");
    }
}

/// `error` is a backend error of `operation` on the store `kind`, caused by
/// an sqlx error (directly, or shared by the callers of one batch).
fn assert_backend_error(error: &Error, kind: &str, operation: &str) {
    assert!(
        matches!(error, Error::Backend { store, operation: op, .. } if *store == kind && *op == operation),
        "{error:?}"
    );
    let source = std::error::Error::source(error).unwrap();
    let sqlx_error = source.downcast_ref::<sqlx::Error>().or_else(|| {
        source
            .downcast_ref::<keepsake_core::batch::Shared<sqlx::Error>>()
            .map(|shared| &*shared.0)
    });
    assert!(sqlx_error.is_some(), "{source:?}");
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
    async fn grouped_creates_and_retires() {
        let store = store().await;
        grouped_creates_and_retires_answer_each_caller(&store, &store.batches, true).await;
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
        grouped_creates_and_retires_answer_each_caller(&store, &store.batches, true).await;
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
        grouped_creates_and_retires_answer_each_caller(&store, &store.batches, true).await;
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
        grouped_creates_and_retires_answer_each_caller(&store, &store.batches, false).await;
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
