//! Helpers shared by the Redis tests.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use keepsake_core::SessionId;
use keepsake_core::test_kit::server_url;
use keepsake_redis::RedisStore;
use keepsake_redis::redis::{self, AsyncCommands as _};

/// A fresh key prefix, so parallel runs never share keys.
pub fn random_prefix() -> String {
    format!(
        "keepsake-test:{}:",
        &SessionId::generate().storage_key().as_str()[..16]
    )
}

/// The single-node test server URL, or `None` (skipped) when unset.
pub fn single_url() -> Option<String> {
    server_url("KEEPSAKE_TEST_REDIS_URL")
}

/// The cluster node URLs, or `None` (skipped) when unset.
pub fn cluster_urls() -> Option<Vec<String>> {
    server_url("KEEPSAKE_TEST_REDIS_CLUSTER_URLS").map(|urls| {
        urls.split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    })
}

/// The prefixes a test handed out, to delete their keys at the end.
#[derive(Debug, Clone, Default)]
pub struct Prefixes(Arc<Mutex<Vec<String>>>);

impl Prefixes {
    /// A store on `base`'s connection with a fresh prefix, remembered.
    pub fn store(&self, base: &RedisStore) -> RedisStore {
        let prefix = random_prefix();
        self.0.lock().unwrap().push(prefix.clone());
        base.clone().with_prefix(prefix)
    }

    /// Deletes every key under the remembered prefixes, on each of `nodes`
    /// (every master of a cluster, or the one server).
    pub async fn delete_all(&self, nodes: &[String]) {
        let prefixes = self.0.lock().unwrap().clone();
        for node in nodes {
            let client = redis::Client::open(node.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            for prefix in &prefixes {
                let keys: Vec<String> = {
                    let mut iter = conn
                        .scan_match::<_, String>(format!("{prefix}*"))
                        .await
                        .unwrap();
                    let mut keys = Vec::new();
                    while let Some(Ok(key)) = iter.next_item().await {
                        keys.push(key);
                    }
                    keys
                };
                for key in keys {
                    let _: redis::RedisResult<i64> = conn.del(&key).await;
                }
            }
        }
    }
}
