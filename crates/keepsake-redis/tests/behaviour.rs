//! Redis-specific behaviour, checked on the raw keys: the data layout, key
//! expiry in step with `expires_at`, touch leaving the payload alone, and
//! corrupt data. Each check runs on a single node and on a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use keepsake_core::test_kit::record;
use keepsake_core::{Cas, SessionStore, StorageKey, now};
use keepsake_redis::RedisStore;
use keepsake_redis::redis::{self, aio::ConnectionLike};
use sha2::{Digest as _, Sha256};

use common::Prefixes;

fn session_key(store: &RedisStore, key: &StorageKey) -> String {
    format!("{}{}", store.prefix(), key.as_str())
}

fn user_key(store: &RedisStore, user_id: &str) -> String {
    format!(
        "{}user:{}",
        store.prefix(),
        hex::encode(Sha256::digest(user_id.as_bytes()))
    )
}

async fn query<C, T>(conn: &mut C, cmd: &mut redis::Cmd) -> T
where
    C: ConnectionLike + Send,
    T: redis::FromRedisValue,
{
    cmd.query_async(conn).await.expect("raw Redis command")
}

async fn expire_time_ms<C: ConnectionLike + Send>(conn: &mut C, key: &str) -> i64 {
    query(conn, redis::cmd("PEXPIRETIME").arg(key)).await
}

async fn hash<C: ConnectionLike + Send>(conn: &mut C, key: &str) -> HashMap<String, String> {
    query(conn, redis::cmd("HGETALL").arg(key)).await
}

fn assert_expiry(actual_ms: i64, expires_at: i64, what: &str) {
    let expected = expires_at * 1000;
    assert!(
        (actual_ms - expected).abs() < 1000,
        "{what}: key expires at {actual_ms} ms, the session at {expected} ms"
    );
}

/// The key's expiry follows `expires_at` through create, save and touch, and
/// the owner's index set never expires before the session.
async fn ttl_follows_expires_at<C: ConnectionLike + Send>(store: &RedisStore, conn: &mut C) {
    let user = "ttl-user";
    let mut r = record(r#"{"d":{}}"#);
    r.user_id = Some(user.into());
    r.expires_at = now() + 100;
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let key = session_key(store, &r.key);
    let set = user_key(store, user);
    assert_expiry(
        expire_time_ms(conn, &key).await,
        r.expires_at,
        "after create",
    );
    assert!(
        expire_time_ms(conn, &set).await >= r.expires_at * 1000,
        "set after create"
    );
    let pttl: i64 = query(conn, redis::cmd("PTTL").arg(&key)).await;
    assert!(
        pttl > 98_000 && pttl <= 101_000,
        "PTTL after create: {pttl}"
    );

    r.expires_at = now() + 200;
    r.version = 2;
    assert_eq!(store.save(&r, 1).await.unwrap(), Cas::Applied);
    assert_expiry(expire_time_ms(conn, &key).await, r.expires_at, "after save");
    assert!(
        expire_time_ms(conn, &set).await >= r.expires_at * 1000,
        "set after save"
    );

    let later = now() + 300;
    assert_eq!(
        store.touch(&r.key, 2, now(), later).await.unwrap(),
        Cas::Applied
    );
    assert_expiry(expire_time_ms(conn, &key).await, later, "after touch");
    assert!(
        expire_time_ms(conn, &set).await >= later * 1000,
        "set after touch"
    );

    // A shorter expiry never moves the key back (a longer lifetime set by
    // another request stays); the set keeps covering the longest.
    let sooner = now() + 50;
    assert_eq!(
        store.touch(&r.key, 2, now(), sooner).await.unwrap(),
        Cas::Applied
    );
    assert_expiry(
        expire_time_ms(conn, &key).await,
        later,
        "after a shortening touch",
    );
    assert!(
        expire_time_ms(conn, &set).await >= later * 1000,
        "set never shortens"
    );
    let loaded = store.load(&r.key).await.unwrap().expect("loads");
    assert_eq!(loaded.expires_at, later);
}

/// `touch` rewrites `last_activity` and `expires_at` only.
async fn touch_keeps_the_payload_field<C: ConnectionLike + Send>(store: &RedisStore, conn: &mut C) {
    let mut r = record(r#"{"d":{"keep":"me \u00e9 🦀"}}"#);
    r.user_id = Some("touch-user".into());
    r.ip_address = Some("192.0.2.1".into());
    r.user_agent = Some("agent".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let key = session_key(store, &r.key);
    let before = hash(conn, &key).await;
    assert_eq!(
        store
            .touch(&r.key, r.version, r.last_activity + 9, r.expires_at + 99)
            .await
            .unwrap(),
        Cas::Applied
    );
    let mut after = hash(conn, &key).await;
    assert_eq!(after["payload"], r.payload, "payload byte for byte");
    assert_eq!(
        after.remove("last_activity").unwrap(),
        (r.last_activity + 9).to_string()
    );
    assert_eq!(
        after.remove("expires_at").unwrap(),
        (r.expires_at + 99).to_string()
    );
    let mut unchanged = before.clone();
    unchanged.remove("last_activity");
    unchanged.remove("expires_at");
    assert_eq!(after, unchanged, "touch must leave every other field alone");
}

/// One hash per session with the documented fields; one set per user.
async fn layout<C: ConnectionLike + Send>(store: &RedisStore, conn: &mut C) {
    let mut r = record(r#"{"d":{"a":1}}"#);
    r.user_id = Some("layout-user".into());
    r.ip_address = Some("2001:db8::1".into());
    r.user_agent = Some("ua".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let key = session_key(store, &r.key);
    let fields = hash(conn, &key).await;
    let expected: HashMap<String, String> = [
        ("payload", r.payload.clone()),
        ("version", "1".to_owned()),
        ("expires_at", r.expires_at.to_string()),
        ("last_activity", r.last_activity.to_string()),
        ("user_id", "layout-user".to_owned()),
        ("ip_address", "2001:db8::1".to_owned()),
        ("user_agent", "ua".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(fields, expected);
    let set = user_key(store, "layout-user");
    let members: Vec<String> = query(conn, redis::cmd("SMEMBERS").arg(&set)).await;
    assert_eq!(members, vec![r.key.as_str().to_owned()]);

    // Clearing the owner and client details removes the fields and the entry.
    let mut anonymous = r.clone();
    anonymous.user_id = None;
    anonymous.ip_address = None;
    anonymous.user_agent = None;
    anonymous.version = 2;
    assert_eq!(store.save(&anonymous, 1).await.unwrap(), Cas::Applied);
    let fields = hash(conn, &key).await;
    let mut names: Vec<_> = fields.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["expires_at", "last_activity", "payload", "version"]);
    let members: Vec<String> = query(conn, redis::cmd("SMEMBERS").arg(&set)).await;
    assert!(members.is_empty(), "the old owner's entry is removed");
    assert_eq!(store.load(&r.key).await.unwrap(), Some(anonymous.clone()));

    // Some("") is not None.
    let mut empty = anonymous;
    empty.ip_address = Some(String::new());
    empty.version = 3;
    assert_eq!(store.save(&empty, 2).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(empty));
}

/// A record that is already expired at create time leaves no key behind.
async fn expired_create_writes_nothing<C: ConnectionLike + Send>(store: &RedisStore, conn: &mut C) {
    let mut r = record(r#"{"d":{}}"#);
    r.user_id = Some("expired-user".into());
    r.expires_at = now() - 5;
    let _ = store.create(&r).await.unwrap();
    let exists: i64 = query(conn, redis::cmd("EXISTS").arg(session_key(store, &r.key))).await;
    assert_eq!(exists, 0, "no session key");
    let exists: i64 = query(
        conn,
        redis::cmd("EXISTS").arg(user_key(store, "expired-user")),
    )
    .await;
    assert_eq!(exists, 0, "no index set");
    assert_eq!(store.load(&r.key).await.unwrap(), None);
}

/// Corrupt hashes load as absent and index garbage is cleaned, never a panic.
async fn corrupt_data_is_absent<C: ConnectionLike + Send>(store: &RedisStore, conn: &mut C) {
    let later = (now() + 600).to_string();
    let cases: [&[(&str, &[u8])]; 4] = [
        &[
            ("payload", b"{}"),
            ("version", b"one"),
            ("expires_at", later.as_bytes()),
            ("last_activity", b"1"),
        ],
        &[
            ("payload", b"{}"),
            ("version", b"1"),
            ("last_activity", b"1"),
        ],
        &[
            ("payload", b"\xff\xfe"),
            ("version", b"1"),
            ("expires_at", later.as_bytes()),
            ("last_activity", b"1"),
        ],
        &[("version", b"1"), ("expires_at", later.as_bytes())],
    ];
    for fields in cases {
        let key = keepsake_core::SessionId::generate().storage_key();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(session_key(store, &key));
        for (name, value) in fields {
            cmd.arg(*name).arg(*value);
        }
        let _: i64 = query(conn, &mut cmd).await;
        assert_eq!(store.load(&key).await.unwrap(), None, "{fields:?}");
    }

    let user = "corrupt-user";
    let mut r = record(r#"{"d":{}}"#);
    r.user_id = Some(user.into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let set = user_key(store, user);
    let _: i64 = query(
        conn,
        redis::cmd("SADD")
            .arg(&set)
            .arg("not-a-key")
            .arg(&b"\xff"[..]),
    )
    .await;
    let gone = keepsake_core::SessionId::generate().storage_key();
    let _: i64 = query(conn, redis::cmd("SADD").arg(&set).arg(gone.as_str())).await;
    let listed = store.list_for_user(user).await.unwrap();
    assert_eq!(listed, vec![r.info()]);
    let members: Vec<String> = query(conn, redis::cmd("SMEMBERS").arg(&set)).await;
    assert_eq!(
        members,
        vec![r.key.as_str().to_owned()],
        "garbage and dead entries removed"
    );
}

async fn run_checks<C: ConnectionLike + Send>(
    base: &RedisStore,
    conn: &mut C,
    prefixes: &Prefixes,
) {
    ttl_follows_expires_at(&prefixes.store(base), conn).await;
    touch_keeps_the_payload_field(&prefixes.store(base), conn).await;
    layout(&prefixes.store(base), conn).await;
    expired_create_writes_nothing(&prefixes.store(base), conn).await;
    corrupt_data_is_absent(&prefixes.store(base), conn).await;
}

#[tokio::test]
async fn single_node() {
    let Some(url) = common::single_url() else {
        return;
    };
    let base = RedisStore::connect(&url).await.expect("connect to Redis");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let prefixes = Prefixes::default();
    run_checks(&base, &mut conn, &prefixes).await;
    prefixes.delete_all(&[url]).await;
}

#[tokio::test]
async fn cluster() {
    let Some(urls) = common::cluster_urls() else {
        return;
    };
    let base = RedisStore::connect_cluster(&urls)
        .await
        .expect("connect to Redis Cluster");
    let mut conn = redis::cluster::ClusterClient::new(urls.clone())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let prefixes = Prefixes::default();
    run_checks(&base, &mut conn, &prefixes).await;
    prefixes.delete_all(&urls).await;
}
