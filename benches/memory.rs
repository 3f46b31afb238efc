//! Bytes per idle session in memory: 100,000 sessions with a 100-byte
//! payload, in keepsake's `MemoryStore` and in tower-sessions' `MemoryStore`.
//!
//! Two measurements of the same growth:
//! - **heap bytes requested**, counted by a global allocator wrapper
//!   (`stats_alloc`): what the store asked for, net of what it gave back;
//! - **resident memory** (RSS, from `/proc/self/statm`): what the process
//!   really holds, allocator rounding and headers included.
//!
//! ```text
//! cargo bench --bench memory
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use keepsake::{Cas, Payload, Record, SessionId, SessionStore as _};
use serde_json::Value;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SESSIONS: usize = 100_000;
const PAYLOAD: usize = 100;

/// Resident set size in bytes.
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The string value that makes keepsake's encoded payload exactly
/// `PAYLOAD` bytes: `{"d":{"k":"…"},"c":1700000000}`.
fn value() -> String {
    let empty = r#"{"d":{"k":""},"c":1700000000}"#.len();
    "x".repeat(PAYLOAD - empty)
}

struct Measured {
    heap: f64,
    rss: f64,
}

fn measure(build: impl FnOnce() -> Box<dyn std::any::Any>) -> Measured {
    let rss_before = rss();
    let region = Region::new(GLOBAL);
    let kept = build();
    let change = region.change();
    let rss_after = rss();
    // A `realloc` is already counted in `bytes_allocated` (growth) or
    // `bytes_deallocated` (shrinking); `bytes_reallocated` is the same
    // difference again, so adding it would count a growing `Vec` twice.
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    drop(kept);
    Measured {
        heap: net as f64 / SESSIONS as f64,
        rss: (rss_after - rss_before) as f64 / SESSIONS as f64,
    }
}

fn keepsake_store(runtime: &tokio::runtime::Runtime) -> Box<dyn std::any::Any> {
    let store = keepsake::MemoryStore::new();
    let mut payload = Payload {
        created_at: 1_700_000_000,
        ..Payload::default()
    };
    payload.data.insert("k".into(), Value::from(value()));
    let text = payload.encode().unwrap();
    assert_eq!(text.len(), PAYLOAD);
    let now = keepsake::now();
    runtime.block_on(async {
        for _ in 0..SESSIONS {
            let record = Record {
                key: SessionId::generate().storage_key(),
                payload: text.clone(),
                last_activity: now,
                expires_at: now + 3600,
                version: 1,
                user_id: None,
                ip_address: None,
                user_agent: None,
            };
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
        }
    });
    assert_eq!(store.len(), SESSIONS);
    Box::new(store)
}

fn tower_store(runtime: &tokio::runtime::Runtime) -> Box<dyn std::any::Any> {
    use tower_sessions::session::{Id, Record};
    use tower_sessions::{MemoryStore, SessionStore as _};

    let store = MemoryStore::default();
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    runtime.block_on(async {
        for _ in 0..SESSIONS {
            let mut data = std::collections::HashMap::new();
            data.insert("k".to_owned(), Value::from(value()));
            let mut record = Record {
                id: Id::default(),
                data,
                expiry_date: expiry,
            };
            store.create(&mut record).await.unwrap();
        }
    });
    Box::new(store)
}

/// Each store is measured in a process of its own, so one's freed memory
/// cannot hide the other's growth.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--store") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let m = match args.get(i + 1).map(String::as_str) {
            Some("keepsake") => measure(|| keepsake_store(&runtime)),
            Some("tower-sessions") => measure(|| tower_store(&runtime)),
            other => panic!("unknown store {other:?}"),
        };
        println!("{:.1} {:.1}", m.heap, m.rss);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let run = |store: &str| -> Measured {
        let out = std::process::Command::new(&exe)
            .args(["--store", store])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        Measured {
            heap: parts.next().unwrap(),
            rss: parts.next().unwrap(),
        }
    };
    let keepsake = run("keepsake");
    let tower = run("tower-sessions");
    println!("memory per idle session ({SESSIONS} sessions, {PAYLOAD}-byte payload):");
    println!(
        "  keepsake MemoryStore:       {:>6.0} B heap requested, {:>6.0} B resident",
        keepsake.heap, keepsake.rss
    );
    println!(
        "  tower-sessions MemoryStore: {:>6.0} B heap requested, {:>6.0} B resident",
        tower.heap, tower.rss
    );
    println!(
        "  keepsake / tower-sessions: {:.2} (heap), {:.2} (resident)",
        keepsake.heap / tower.heap,
        keepsake.rss / tower.rss
    );
}
