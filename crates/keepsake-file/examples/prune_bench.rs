//! Measures `FileStore::gc` over a large directory.
//!
//! ```text
//! cargo run --release -p keepsake-file --example prune_bench -- [SESSIONS] [DIR]
//! ```
//!
//! Writes SESSIONS sessions (default 100,000; one in ten with a user id, so
//! the per-user index is exercised too) into DIR (default: a new temporary
//! directory, removed at the end), then times two passes of `gc`: one while
//! every session is still live (a pure scan: nothing to remove), and one after
//! they have all expired (every file and index entry removed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keepsake_core::{Record, SessionId, SessionStore, now};
use keepsake_file::FileStore;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().map_or(100_000, |n| {
        n.replace('_', "").parse().expect("SESSIONS is a number")
    });
    let (_temp, dir) = match args.next() {
        Some(dir) => (None, std::path::PathBuf::from(dir)),
        None => {
            let temp = tempfile::tempdir().unwrap();
            let dir = temp.path().join("sessions");
            (Some(temp), dir)
        }
    };
    // Filling the directory is not what is measured: skip the fsyncs there.
    let store = FileStore::new(&dir).unwrap().with_sync(false);

    let start = Instant::now();
    let expires_at = now() + 3600;
    let mut tasks = JoinSet::new();
    for i in 0..sessions {
        let store = store.clone();
        tasks.spawn(async move {
            let record = Record {
                key: SessionId::generate().storage_key(),
                payload: format!(r#"{{"d":{{"n":{i},"note":"{}"}},"c":0}}"#, "x".repeat(200)),
                last_activity: expires_at - 3600,
                expires_at,
                version: 1,
                user_id: (i % 10 == 0).then(|| format!("user-{}", i % 1000)),
                ip_address: Some("203.0.113.7".into()),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) prune_bench".into()),
            };
            assert!(store.create(&record).await.unwrap().is_applied());
        });
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    println!("wrote {sessions} sessions in {:.2?}", start.elapsed());

    let start = Instant::now();
    let removed = store.gc(now()).await.unwrap();
    report("scan, nothing expired", sessions, removed, start.elapsed());
    assert_eq!(removed, 0);

    let start = Instant::now();
    let removed = store.gc(expires_at).await.unwrap();
    report(
        "prune, everything expired",
        sessions,
        removed,
        start.elapsed(),
    );
    assert_eq!(removed as usize, sessions);
}

fn report(what: &str, files: usize, removed: u64, took: Duration) {
    let rate = files as f64 / took.as_secs_f64();
    println!("{what}: {files} files, {removed} removed in {took:.2?} ({rate:.0} files/s)");
}
