//! Store operations alone, without the layer: `load` of an existing session,
//! compare-and-swap `save` of a changed one, and `touch` (expiry moved, no
//! payload rewrite), each over 1,000 sessions with a 200-byte payload.
//!
//! `MemoryStore` always; `FileStore` and `SqliteStore` with their features;
//! PostgreSQL, MariaDB/MySQL and Redis with their features *and* their URL in
//! `KEEPSAKE_TEST_POSTGRES_URL`, `KEEPSAKE_TEST_MYSQL_URL`,
//! `KEEPSAKE_TEST_REDIS_URL` (skipped otherwise). Each server store works in
//! a table / key prefix of its own and drops it afterwards.
//!
//! ```text
//! cargo bench --bench stores --features sqlite,postgres,mysql,file,redis
//! ```

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keepsake::{Cas, Record, SessionId, SessionStore};
use tokio::runtime::Runtime;

const SESSIONS: usize = 1_000;

fn payload() -> String {
    let filler = "x".repeat(200 - r#"{"d":{"counter":7,"f":""},"c":1700000000}"#.len());
    format!(r#"{{"d":{{"counter":7,"f":"{filler}"}},"c":1700000000}}"#)
}

/// 1,000 stored sessions and the version each is at.
struct Fixture {
    records: Vec<Record>,
    versions: Vec<AtomicI64>,
    next: AtomicUsize,
}

impl Fixture {
    async fn new(store: &dyn SessionStore) -> Self {
        let now = keepsake::now();
        let mut records = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let record = Record {
                key: SessionId::generate().storage_key(),
                payload: payload(),
                last_activity: now,
                expires_at: now + 3600,
                version: 1,
                user_id: None,
                ip_address: None,
                user_agent: None,
            };
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            records.push(record);
        }
        let versions = (0..SESSIONS).map(|_| AtomicI64::new(1)).collect();
        Self {
            records,
            versions,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % SESSIONS
    }
}

fn bench_store(c: &mut Criterion, runtime: &Runtime, name: &str, store: Arc<dyn SessionStore>) {
    let fixture = Arc::new(runtime.block_on(Fixture::new(&*store)));
    let mut group = c.benchmark_group(format!("store/{name}"));
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);

    group.bench_function("load", |b| {
        b.to_async(runtime).iter(|| {
            let (store, fixture) = (Arc::clone(&store), Arc::clone(&fixture));
            async move {
                let i = fixture.pick();
                let record = store.load(&fixture.records[i].key).await.unwrap();
                assert!(record.is_some());
            }
        });
    });
    group.bench_function("save", |b| {
        b.to_async(runtime).iter(|| {
            let (store, fixture) = (Arc::clone(&store), Arc::clone(&fixture));
            async move {
                let i = fixture.pick();
                let expected = fixture.versions[i].load(Ordering::Relaxed);
                let mut record = fixture.records[i].clone();
                record.version = expected + 1;
                record.last_activity = keepsake::now();
                assert_eq!(store.save(&record, expected).await.unwrap(), Cas::Applied);
                fixture.versions[i].store(expected + 1, Ordering::Relaxed);
            }
        });
    });
    group.bench_function("touch", |b| {
        b.to_async(runtime).iter(|| {
            let (store, fixture) = (Arc::clone(&store), Arc::clone(&fixture));
            async move {
                let i = fixture.pick();
                let now = keepsake::now();
                let record = &fixture.records[i];
                let _ = store
                    .touch(&record.key, record.version, now, now + 3600)
                    .await
                    .unwrap();
            }
        });
    });
    group.finish();
    // Leave nothing behind.
    runtime.block_on(async {
        for record in &fixture.records {
            store.destroy(&record.key).await.unwrap();
        }
    });
}

/// A name of our own for tables and key prefixes.
fn suffix() -> String {
    SessionId::generate().storage_key().as_str()[..10].to_owned()
}

#[allow(dead_code)]
fn url(name: &str) -> Option<String> {
    let url = std::env::var(name).ok().filter(|v| !v.is_empty());
    if url.is_none() {
        eprintln!("{name} is not set: skipped");
    }
    url
}

fn stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_store(
        c,
        &runtime,
        "memory",
        Arc::new(keepsake::MemoryStore::new()),
    );

    #[cfg(feature = "file")]
    {
        let dir = tempfile::tempdir().unwrap();
        // Defaults: every write is fsynced before it is renamed into place.
        let store = keepsake::FileStore::new(dir.path()).unwrap();
        bench_store(c, &runtime, "file", Arc::new(store));
    }

    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = runtime.block_on(async {
            let store = keepsake::SqliteStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            store
        });
        bench_store(c, &runtime, "sqlite", Arc::new(store));
    }

    #[cfg(feature = "postgres")]
    if let Some(url) = url("KEEPSAKE_TEST_POSTGRES_URL") {
        let table = format!("bench_{}", suffix());
        let store = runtime.block_on(async {
            let store = keepsake::PostgresStore::connect(&url)
                .await
                .unwrap()
                .with_table_name(&table)
                .unwrap();
            store.migrate().await.unwrap();
            store
        });
        let pool = store.pool().clone();
        bench_store(c, &runtime, "postgres", Arc::new(store));
        runtime.block_on(async {
            let sql = format!("DROP TABLE IF EXISTS {table}");
            sqlx_execute_pg(&pool, &sql).await;
        });
    }

    #[cfg(feature = "mysql")]
    if let Some(url) = url("KEEPSAKE_TEST_MYSQL_URL") {
        let table = format!("bench_{}", suffix());
        let store = runtime.block_on(async {
            let store = keepsake::MySqlStore::connect(&url)
                .await
                .unwrap()
                .with_table_name(&table)
                .unwrap();
            store.migrate().await.unwrap();
            store
        });
        let pool = store.pool().clone();
        bench_store(c, &runtime, "mysql", Arc::new(store));
        runtime.block_on(async {
            let sql = format!("DROP TABLE IF EXISTS {table}");
            sqlx_execute_mysql(&pool, &sql).await;
        });
    }

    #[cfg(feature = "redis")]
    if let Some(url) = url("KEEPSAKE_TEST_REDIS_URL") {
        let store = runtime.block_on(async {
            keepsake::RedisStore::connect(&url)
                .await
                .unwrap()
                .with_prefix(format!("keepsake-bench-{}:", suffix()))
        });
        bench_store(c, &runtime, "redis", Arc::new(store));
    }

    let _ = suffix;
}

#[cfg(feature = "postgres")]
async fn sqlx_execute_pg(pool: &keepsake_sqlx::sqlx::PgPool, sql: &str) {
    let _ = keepsake_sqlx::sqlx::query(sql).execute(pool).await;
}

#[cfg(feature = "mysql")]
async fn sqlx_execute_mysql(pool: &keepsake_sqlx::sqlx::MySqlPool, sql: &str) {
    let _ = keepsake_sqlx::sqlx::query(sql).execute(pool).await;
}

criterion_group!(benches, stores);
criterion_main!(benches);
