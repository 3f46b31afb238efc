//! Load with nothing lost: many concurrent clients on many sessions, each
//! request writing a unique key or incrementing its session's counter,
//! through two app instances (two layers) sharing one backend. Afterwards
//! every acknowledged write is present and every counter equals the number
//! of acknowledged increments.
//!
//! A plain `cargo test` runs a small load (8 clients, 20 sessions, 400
//! requests per store). `.ci/soak.sh` runs the real one; the shape comes
//! from the environment:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `KEEPSAKE_SOAK_CLIENTS` | concurrent clients | 8 |
//! | `KEEPSAKE_SOAK_SESSIONS` | sessions | 20 |
//! | `KEEPSAKE_SOAK_REQUESTS` | requests per store | 400 |
//! | `KEEPSAKE_SOAK_SECONDS` | time cap per store (the load stops early) | none |
//!
//! Memory always, SQLite (a temp file) with the `sqlite` feature; PostgreSQL,
//! MariaDB and Redis when their `KEEPSAKE_TEST_*_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use keepsake::{MemoryStore, SessionLayer, SessionStore};

use common::faults::{Faulty, Ledger, LoadSpec, create_sessions, run_load, verify};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Soaks `store` and prints the figures.
async fn soak(name: &str, store: impl SessionStore) {
    let clients = env("KEEPSAKE_SOAK_CLIENTS", 8);
    let sessions = env("KEEPSAKE_SOAK_SESSIONS", 20);
    let requests = env("KEEPSAKE_SOAK_REQUESTS", 400);
    let until = std::env::var("KEEPSAKE_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));

    let tally = Arc::new(Faulty::new(store));
    let handle = tally.handle();
    let shared: Arc<dyn SessionStore> = tally;
    // Two app instances: each layer serializes only its own commits, so
    // requests of one session through both race at the store.
    let apps: Vec<Router> = (0..2)
        .map(|_| common::app().layer(SessionLayer::from_arc(Arc::clone(&shared))))
        .collect();
    let apps = Arc::new(apps);

    let started = Instant::now();
    let ids = Arc::new(create_sessions(&apps, sessions).await);
    let setup = started.elapsed();
    let ledger = Arc::new(Ledger::default());
    let spec = LoadSpec {
        clients,
        requests,
        until,
        // One request in ten goes to one of four hot sessions.
        hot_every: 10,
    };
    let stats = run_load(spec, apps, ids.clone(), ledger.clone()).await;
    let verified = verify(&*shared, &ids, &ledger).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "soak {name}: {} requests from {clients} clients on {sessions} sessions in {:.1} s \
         ({:.0}/s; p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms; sessions created in {:.1} s); \
         {} acknowledged, {} errors {:?}; {} save conflicts retried; store calls: {} load, {} create, {} save, {} touch",
        stats.requests,
        stats.elapsed.as_secs_f64(),
        stats.per_second(),
        ms(stats.percentile(0.5)),
        ms(stats.percentile(0.99)),
        ms(stats.max_latency()),
        setup.as_secs_f64(),
        stats.acked,
        stats.failed,
        stats.statuses,
        handle.conflicts(),
        handle.calls(common::LOAD),
        handle.calls(common::CREATE),
        handle.calls(common::SAVE),
        handle.calls(common::TOUCH),
    );
    let verified = verified.unwrap_or_else(|e| panic!("soak {name}: {e}"));
    println!(
        "soak {name}: verified {} sessions: all {} acknowledged keys present, counters equal \
         the {} acknowledged increments; nothing lost",
        verified.sessions, verified.keys, verified.increments
    );
    assert_eq!(stats.failed, 0, "soak {name}: {:?}", stats.statuses);
    assert!(stats.requests > 0);
}

fn suffix() -> String {
    keepsake::SessionId::generate().storage_key().as_str()[..12].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_memory() {
    soak("memory", MemoryStore::new()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("soak.db").display());
    let store = keepsake::SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    soak("sqlite", store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres() {
    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
        return;
    };
    let table = format!("soak_{}", suffix());
    let store = keepsake::PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_table_name(&table)
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    soak("postgres", store).await;
    let _ = keepsake_sqlx::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mariadb() {
    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_MYSQL_URL") else {
        return;
    };
    let table = format!("soak_{}", suffix());
    let store = keepsake::MySqlStore::connect(&url)
        .await
        .unwrap()
        .with_table_name(&table)
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    soak("mariadb", store).await;
    let _ = keepsake_sqlx::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_redis() {
    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_REDIS_URL") else {
        return;
    };
    let store = keepsake::RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(format!("keepsake-soak:{}:", suffix()));
    soak("redis", store).await;
}
