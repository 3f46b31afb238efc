//! Helpers shared by the backend tests.

#![allow(dead_code, unreachable_pub)]

use keepsake_core::{Cas, Record, SessionStore};

/// A table (or schema) name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    let key = keepsake_core::SessionId::generate().storage_key();
    format!("{prefix}_{}", &key.as_str()[..12])
}

/// 8 writers × 50 load–increment–save loops on one record; returns the
/// final counter, which must be 400.
pub async fn concurrent_increments<S: SessionStore>(store: std::sync::Arc<S>) -> u64 {
    let base = keepsake_core::test_kit::record("0");
    assert_eq!(store.create(&base).await.unwrap(), Cas::Applied);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = std::sync::Arc::clone(&store);
        let key = base.key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                loop {
                    let mut current: Record = store.load(&key).await.unwrap().unwrap();
                    let n: u64 = current.payload.parse().unwrap();
                    current.payload = (n + 1).to_string();
                    let expected = current.version;
                    current.version += 1;
                    if store.save(&current, expected).await.unwrap().is_applied() {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = store.load(&base.key).await.unwrap().unwrap();
    assert_eq!(last.version, 401);
    last.payload.parse().unwrap()
}

/// Creates `expired` expired and `live` live records (every third with a
/// user), for gc tests.
pub async fn fill(store: &impl SessionStore, expired: usize, live: usize) {
    let now = keepsake_core::now();
    for i in 0..expired + live {
        let mut r = keepsake_core::test_kit::record(r#"{"d":{}}"#);
        if i < expired {
            r.expires_at = now - 10;
        }
        if i % 3 == 0 {
            r.user_id = Some("gc-user".into());
        }
        assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    }
}
