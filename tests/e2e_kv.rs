//! The layer suite end to end on Redis, Redis Cluster, memcached and files.
#![cfg(any(feature = "redis", feature = "memcached", feature = "file"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use keepsake::SessionStore;
use keepsake_core::test_kit::server_url;

fn prefix() -> String {
    format!(
        "keepsake-e2e:{}:",
        &keepsake::SessionId::generate().storage_key().as_str()[..12]
    )
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis() {
    let Some(url) = server_url("KEEPSAKE_TEST_REDIS_URL") else {
        return;
    };
    let prefix = prefix();
    common::suite::run_suite(|| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            let store = keepsake::RedisStore::connect(&url)
                .await
                .unwrap()
                .with_prefix(prefix);
            Arc::new(store) as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster() {
    let Some(urls) = server_url("KEEPSAKE_TEST_REDIS_CLUSTER_URLS") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let prefix = prefix();
    common::suite::run_suite(|| {
        let (urls, prefix) = (urls.clone(), prefix.clone());
        async move {
            let store = keepsake::RedisStore::connect_cluster(urls)
                .await
                .unwrap()
                .with_prefix(prefix);
            Arc::new(store) as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memcached() {
    let Some(url) = server_url("KEEPSAKE_TEST_MEMCACHED_URL") else {
        return;
    };
    let prefix = prefix();
    common::suite::run_suite(|| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            let store = keepsake::MemcachedStore::builder(url)
                .prefix(prefix)
                .connect()
                .await
                .unwrap();
            Arc::new(store) as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[cfg(feature = "file")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    common::suite::run_suite(|| {
        let path = path.clone();
        async move { Arc::new(keepsake::FileStore::new(path).unwrap()) as Arc<dyn SessionStore> }
    })
    .await;
}
