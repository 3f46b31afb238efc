//! Measures the store operations a request makes (`load`, compare-and-swap
//! `save`) one after the other on a table of live sessions, to compare
//! schemas: the same loop before and after a migration changes the table.
//!
//! ```text
//! cargo run --release -p keepsake-sqlx --all-features --example schema_bench -- BACKEND [OPS] [URL]
//! ```
//!
//! `BACKEND` is `postgres`, `mysql` or `sqlite`; `OPS` (default 20,000) loads
//! and as many saves go over 6,400 sessions, one in ten of them with a user
//! id (the rest anonymous, as on most sites). The URL defaults to
//! `KEEPSAKE_TEST_POSTGRES_URL` / `KEEPSAKE_TEST_MYSQL_URL`, or to a
//! temporary file for SQLite. `KEEPSAKE_BENCH_SQL`, when set, is run after
//! `migrate()` (statements separated by `;`, the table named
//! `ks_schema_bench`), to try a variant of the schema without changing the
//! migrations. The table is dropped at the end.
//!
//! Printed per operation: wall time, and this process's CPU time (user +
//! system, from `/proc/self/stat`), which for SQLite includes the
//! database's own work. A measurement, not a test: it asserts nothing.

use std::error::Error as StdError;
use std::time::Instant;

use keepsake_core::{Record, SessionId, SessionStore};
use keepsake_sqlx::{MySqlStore, PostgresStore, SqliteStore};

type BoxResult<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// Sessions in the table unless `KEEPSAKE_BENCH_SESSIONS` says otherwise.
const SESSIONS: usize = 6_400;
const TABLE: &str = "ks_schema_bench";
const PAYLOAD: &str = r#"{"d":{"user":{"id":4242,"name":"Ada Lovelace"},"cart":[17,23,42],"locale":"en-GB"},"c":1700000000}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("sqlite", String::as_str).to_owned();
    let ops: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let extra = std::env::var("KEEPSAKE_BENCH_SQL").ok();
    match backend.as_str() {
        "postgres" => {
            let url = url_arg(&args, "KEEPSAKE_TEST_POSTGRES_URL")?;
            let store = PostgresStore::connect(&url).await?;
            let drop = format!("DROP TABLE IF EXISTS {TABLE}");
            sqlx::query(&drop).execute(store.pool()).await?;
            let store = store.with_table_name(TABLE)?;
            store.migrate().await?;
            for sql in extra.iter().flat_map(|s| s.split(';')) {
                sqlx::query(sql).execute(store.pool()).await?;
            }
            run(&store, ops).await?;
            sqlx::query(&drop).execute(store.pool()).await?;
        }
        "mysql" => {
            let url = url_arg(&args, "KEEPSAKE_TEST_MYSQL_URL")?;
            let store = MySqlStore::connect(&url).await?;
            let drop = format!("DROP TABLE IF EXISTS {TABLE}");
            sqlx::query(&drop).execute(store.pool()).await?;
            let store = store.with_table_name(TABLE)?;
            store.migrate().await?;
            for sql in extra.iter().flat_map(|s| s.split(';')) {
                sqlx::query(sql).execute(store.pool()).await?;
            }
            run(&store, ops).await?;
            sqlx::query(&drop).execute(store.pool()).await?;
        }
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!(
                "ks-schema-bench-{}",
                &SessionId::generate().storage_key().as_str()[..8]
            ));
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}/bench.db", dir.display());
            let store = SqliteStore::connect(&url).await?.with_table_name(TABLE)?;
            store.migrate().await?;
            for sql in extra.iter().flat_map(|s| s.split(';')) {
                sqlx::query(sql).execute(store.pool()).await?;
            }
            run(&store, ops).await?;
            store.pool().close().await;
            std::fs::remove_dir_all(&dir)?;
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    }
    Ok(())
}

fn url_arg(args: &[String], variable: &str) -> BoxResult<String> {
    match args.get(2) {
        Some(url) => Ok(url.clone()),
        None => std::env::var(variable).map_err(|_| format!("set {variable} or pass a URL").into()),
    }
}

async fn run(store: &impl SessionStore, ops: usize) -> BoxResult<()> {
    let now = keepsake_core::now();
    let sessions: usize =
        std::env::var("KEEPSAKE_BENCH_SESSIONS").map_or(Ok(SESSIONS), |s| s.parse())?;
    let mut records: Vec<Record> = (0..sessions)
        .map(|i| Record {
            key: SessionId::generate().storage_key(),
            payload: PAYLOAD.to_owned(),
            last_activity: now,
            expires_at: now + 1800,
            version: 1,
            user_id: (i % 10 == 0).then(|| format!("user-{i}")),
            ip_address: None,
            user_agent: None,
        })
        .collect();
    for record in &records {
        let _ = store.create(record).await?;
    }

    let (wall, cpu) = measure(async {
        for i in 0..ops {
            let record = &records[i % sessions];
            store
                .load(&record.key)
                .await?
                .ok_or("a session is missing")?;
        }
        BoxResult::Ok(())
    })
    .await?;
    report("load", ops, wall, cpu);

    let (wall, cpu) = measure(async {
        for i in 0..ops {
            let record = &mut records[i % sessions];
            let expected = record.version;
            record.version += 1;
            record.last_activity = now + 1 + i64::try_from(i / sessions)?;
            record.expires_at = record.last_activity + 1800;
            if !store.save(record, expected).await?.is_applied() {
                return Err("a save conflicted".into());
            }
        }
        BoxResult::Ok(())
    })
    .await?;
    report("save", ops, wall, cpu);
    Ok(())
}

async fn measure(work: impl Future<Output = BoxResult<()>>) -> BoxResult<(f64, f64)> {
    let cpu = process_cpu_seconds()?;
    let started = Instant::now();
    work.await?;
    Ok((
        started.elapsed().as_secs_f64(),
        process_cpu_seconds()? - cpu,
    ))
}

fn report(what: &str, ops: usize, wall: f64, cpu: f64) {
    #[allow(clippy::cast_precision_loss)]
    let per = |s: f64| s * 1e6 / ops as f64;
    println!(
        "{what}: {:.1} µs wall, {:.1} µs CPU per operation ({ops} operations)",
        per(wall),
        per(cpu)
    );
}

/// User + system CPU time of this process, from `/proc/self/stat`.
fn process_cpu_seconds() -> BoxResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').ok_or("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .ok_or("bad /proc/self/stat")?
        .parse::<f64>()?
        + fields
            .get(12)
            .ok_or("bad /proc/self/stat")?
            .parse::<f64>()?;
    // Linux reports these in clock ticks of 1/100 s on every common platform.
    Ok(ticks / 100.0)
}
