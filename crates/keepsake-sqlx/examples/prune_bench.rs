//! Measures `gc` on a large backlog of expired sessions, and what it does to
//! the latency of the `load`s that keep running meanwhile.
//!
//! ```text
//! cargo run --release -p keepsake-sqlx --all-features --example prune_bench -- BACKEND [ROWS] [BATCH] [URL]
//! ```
//!
//! `BACKEND` is `postgres`, `mysql` or `sqlite`. `ROWS` expired rows
//! (default 1,000,000) are bulk-inserted into a fresh table next to 1,000
//! live sessions; then `gc` deletes them in batches of `BATCH` (default
//! 1,000) while one task loads random live sessions in a loop. The URL
//! defaults to `KEEPSAKE_TEST_POSTGRES_URL` / `KEEPSAKE_TEST_MYSQL_URL`, or to
//! a temporary file for SQLite. The table is dropped at the end.
//!
//! This is a measurement, not a test: it prints figures and asserts nothing
//! about them.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keepsake_core::{Cas, SessionId, SessionStore, StorageKey};
use keepsake_sqlx::{MySqlStore, PostgresStore, SqliteStore};

type BoxResult<T> = Result<T, Box<dyn StdError + Send + Sync>>;

const LIVE: usize = 1_000;
const CHUNK: u64 = 100_000;
const PAYLOAD: &str = r#"{"d":{"user":{"id":4242,"name":"Ada Lovelace","roles":["admin","editor"]},"cart":[17,23,42],"locale":"en-GB"},"m":{"t":"Jx6cV0m9d5bq2cS8G6wO0o1mN7dKJtqf8cQ2xT4pLr0"},"c":1700000000}"#;

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let rows: u64 = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: u64 = args.get(2).map_or(Ok(1_000), |s| s.parse())?;
    let table = format!(
        "ks_bench_{}",
        &SessionId::generate().storage_key().as_str()[..8]
    );
    let now = keepsake_core::now();
    println!("backend: {backend}, expired rows: {rows}, live rows: {LIVE}, gc batch: {batch}");

    match backend.as_str() {
        "postgres" => {
            let url = url_arg(&args, "KEEPSAKE_TEST_POSTGRES_URL")?;
            let store = PostgresStore::connect(&url)
                .await?
                .with_table_name(&table)?
                .with_gc_batch_size(batch);
            store.migrate().await?;
            let insert = format!(
                "INSERT INTO \"{table}\" (id, user_id, ip_address, user_agent, payload, \
                 last_activity, expires_at, version) \
                 SELECT encode(sha256(('bench-' || i)::text::bytea), 'hex'), 'user-' || (i % 50000), \
                 '203.0.113.7', 'Mozilla/5.0 (bench)', $1, $2 - 7200, $2 - 1 - (i % 3600), 1 \
                 FROM generate_series($3::bigint, $4::bigint) AS i"
            );
            let started = Instant::now();
            let mut from = 0;
            while from < rows {
                let to = (from + CHUNK).min(rows);
                sqlx::query(&insert)
                    .bind(PAYLOAD)
                    .bind(now)
                    .bind(i64::try_from(from)?)
                    .bind(i64::try_from(to)? - 1)
                    .execute(store.pool())
                    .await?;
                from = to;
            }
            sqlx::query(&format!("ANALYZE \"{table}\""))
                .execute(store.pool())
                .await?;
            println!(
                "bulk insert + ANALYZE: {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let store = Arc::new(store);
            run(Arc::clone(&store), batch).await?;
            sqlx::query(&format!("DROP TABLE \"{table}\""))
                .execute(store.pool())
                .await?;
        }
        "mysql" => {
            let url = url_arg(&args, "KEEPSAKE_TEST_MYSQL_URL")?;
            let store = MySqlStore::connect(&url)
                .await?
                .with_table_name(&table)?
                .with_gc_batch_size(batch);
            store.migrate().await?;
            let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                          UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL \
                          SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
            let insert = format!(
                "INSERT INTO `{table}` (id, user_id, ip_address, user_agent, payload, \
                 last_activity, expires_at, version) \
                 SELECT SHA2(CONCAT('bench-', n), 256), CONCAT('user-', n % 50000), \
                 '203.0.113.7', 'Mozilla/5.0 (bench)', ?, ? - 7200, ? - 1 - (n % 3600), 1 \
                 FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + ? AS n \
                 FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) AS s WHERE n < ?"
            );
            let started = Instant::now();
            let mut from = 0;
            while from < rows {
                sqlx::query(&insert)
                    .bind(PAYLOAD)
                    .bind(now)
                    .bind(now)
                    .bind(from)
                    .bind(rows)
                    .execute(store.pool())
                    .await?;
                from += CHUNK;
            }
            sqlx::query(&format!("ANALYZE TABLE `{table}`"))
                .execute(store.pool())
                .await?;
            println!(
                "bulk insert + ANALYZE: {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let store = Arc::new(store);
            run(Arc::clone(&store), batch).await?;
            sqlx::query(&format!("DROP TABLE `{table}`"))
                .execute(store.pool())
                .await?;
        }
        "sqlite" => {
            let dir = std::env::temp_dir().join(&table);
            std::fs::create_dir_all(&dir)?;
            let default_url = format!("sqlite://{}", dir.join("bench.db").display());
            let url = args.get(3).cloned().unwrap_or(default_url);
            let store = SqliteStore::connect(&url)
                .await?
                .with_table_name(&table)?
                .with_gc_batch_size(batch);
            store.migrate().await?;
            let insert = format!(
                "WITH RECURSIVE c(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM c WHERE n + 1 < ?2) \
                 INSERT INTO \"{table}\" (id, user_id, ip_address, user_agent, payload, \
                 last_activity, expires_at, version) \
                 SELECT lower(hex(randomblob(32))), 'user-' || (n % 50000), '203.0.113.7', \
                 'Mozilla/5.0 (bench)', ?3, ?4 - 7200, ?4 - 1 - (n % 3600), 1 FROM c"
            );
            let started = Instant::now();
            let mut from = 0;
            while from < rows {
                let to = (from + CHUNK).min(rows);
                sqlx::query(&insert)
                    .bind(i64::try_from(from)?)
                    .bind(i64::try_from(to)?)
                    .bind(PAYLOAD)
                    .bind(now)
                    .execute(store.pool())
                    .await?;
                from = to;
            }
            sqlx::query("ANALYZE").execute(store.pool()).await?;
            println!(
                "bulk insert + ANALYZE: {:.1} s",
                started.elapsed().as_secs_f64()
            );
            run(Arc::new(store.clone()), batch).await?;
            store.pool().close().await;
            if args.get(3).is_none() {
                std::fs::remove_dir_all(&dir)?;
            }
        }
        other => {
            return Err(format!("unknown backend {other:?}: postgres, mysql or sqlite").into());
        }
    }
    Ok(())
}

fn url_arg(args: &[String], var: &str) -> BoxResult<String> {
    match args.get(3) {
        Some(url) => Ok(url.clone()),
        None => std::env::var(var).map_err(|_| format!("give a URL or set {var}").into()),
    }
}

/// Creates the live sessions, measures loads alone, then loads during gc.
async fn run<S: SessionStore>(store: Arc<S>, batch: u64) -> BoxResult<()> {
    let mut keys = Vec::with_capacity(LIVE);
    for _ in 0..LIVE {
        let mut record = keepsake_core::test_kit::record(PAYLOAD);
        record.user_id = Some("user-live".into());
        if store.create(&record).await? != Cas::Applied {
            return Err("a live session collided".into());
        }
        keys.push(record.key);
    }
    let keys = Arc::new(keys);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_loop(
        Arc::clone(&store),
        Arc::clone(&keys),
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    report("loads before gc", reader.await??);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_loop(
        Arc::clone(&store),
        Arc::clone(&keys),
        Arc::clone(&stop),
    ));
    let started = Instant::now();
    let deleted = store.gc(keepsake_core::now()).await?;
    let batches = deleted / batch + 1;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = reader.await??;
    #[allow(clippy::cast_precision_loss)]
    let rate = deleted as f64 / took.as_secs_f64();
    println!(
        "gc: deleted {deleted} rows in {:.2} s ({rate:.0} rows/s, {batches} statements)",
        took.as_secs_f64()
    );
    report("loads during gc", during);
    for key in keys.iter() {
        if store.load(key).await?.is_none() {
            return Err("gc deleted a live session".into());
        }
    }
    Ok(())
}

async fn read_loop<S: SessionStore>(
    store: Arc<S>,
    keys: Arc<Vec<StorageKey>>,
    stop: Arc<AtomicBool>,
) -> BoxResult<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    while !stop.load(Ordering::Relaxed) {
        // xorshift: a cheap spread over the live keys.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = &keys[usize::try_from(x % keys.len() as u64)?];
        let started = Instant::now();
        if store.load(key).await?.is_none() {
            return Err("a live session did not load".into());
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn report(what: &str, mut latencies: Vec<Duration>) {
    if latencies.is_empty() {
        println!("{what}: none completed");
        return;
    }
    latencies.sort_unstable();
    let at = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={}, p50={:.3} ms, p99={:.3} ms, max={:.3} ms",
        latencies.len(),
        ms(at(50)),
        ms(at(99)),
        ms(latencies[latencies.len() - 1])
    );
}
