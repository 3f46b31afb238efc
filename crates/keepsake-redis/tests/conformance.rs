//! The store conformance kit against a real Redis and a real Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use keepsake_core::test_kit::{Options, run_all};
use keepsake_redis::RedisStore;

use common::Prefixes;

#[tokio::test]
async fn conformance_single_node() {
    let Some(url) = common::single_url() else {
        return;
    };
    let base = RedisStore::connect(&url).await.expect("connect to Redis");
    let prefixes = Prefixes::default();
    run_all(
        || {
            let store = prefixes.store(&base);
            async move { store }
        },
        Options::default().self_expiring(true),
    )
    .await;
    prefixes.delete_all(&[url]).await;
}

/// The same over RESP3, where a script's `false` comes back as a boolean.
#[tokio::test]
async fn conformance_single_node_resp3() {
    let Some(url) = common::single_url() else {
        return;
    };
    let resp3 = format!("{}/?protocol=resp3", url.trim_end_matches('/'));
    let base = RedisStore::connect(&resp3).await.expect("connect to Redis");
    let prefixes = Prefixes::default();
    run_all(
        || {
            let store = prefixes.store(&base);
            async move { store }
        },
        Options::default().self_expiring(true),
    )
    .await;
    prefixes.delete_all(&[url]).await;
}

#[tokio::test]
async fn conformance_cluster() {
    let Some(urls) = common::cluster_urls() else {
        return;
    };
    let base = RedisStore::connect_cluster(&urls)
        .await
        .expect("connect to Redis Cluster");
    assert!(base.is_cluster());
    let prefixes = Prefixes::default();
    run_all(
        || {
            let store = prefixes.store(&base);
            async move { store }
        },
        Options::default().self_expiring(true),
    )
    .await;
    prefixes.delete_all(&urls).await;
}
