//! `MemcachedStore` against a real memcached, at `KEEPSAKE_TEST_MEMCACHED_URL`
//! (`memcache://127.0.0.1:PORT`; `.ci/memcached.sh start` starts one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keepsake_core::test_kit::{self, Options, record, server_url};
use keepsake_core::{Cas, Error, Record, Report, SessionId, SessionStore, now};
use keepsake_memcached::MemcachedStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const DAY: i64 = 86_400;

fn url() -> Option<String> {
    server_url("KEEPSAKE_TEST_MEMCACHED_URL")
}

/// A key prefix of this test's own, so parallel runs never collide.
fn unique_prefix() -> String {
    format!(
        "keepsake-test-{}:",
        &SessionId::generate().storage_key().as_str()[..16]
    )
}

async fn store(url: &str) -> MemcachedStore {
    MemcachedStore::builder(url)
        .prefix(unique_prefix())
        .connect()
        .await
        .unwrap()
}

/// The first server of `url` as `host:port`.
fn first_server(url: &str) -> String {
    let first = url.split(',').next().unwrap().trim();
    first
        .strip_prefix("memcache://")
        .unwrap_or(first)
        .trim_end_matches('/')
        .to_owned()
}

/// Sends one raw command to the first server and returns the reply up to and
/// including its last line (`END`, or the single status line).
async fn raw(url: &str, command: &[u8]) -> String {
    let mut stream = BufReader::new(TcpStream::connect(first_server(url)).await.unwrap());
    stream.get_mut().write_all(command).await.unwrap();
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            stream.read_line(&mut line).await.unwrap(),
            0,
            "server closed"
        );
        reply.push_str(&line);
        if !reply.starts_with("VALUE ") || line == "END\r\n" {
            return reply;
        }
    }
}

fn item_key(store: &MemcachedStore, record: &Record) -> String {
    format!("{}{}", store.prefix(), record.key.as_str())
}

/// memcached's remaining lifetime of an item, in seconds (meta command `mg … t`).
async fn server_ttl(url: &str, key: &str) -> i64 {
    let reply = raw(url, format!("mg {key} t\r\n").as_bytes()).await;
    let ttl = reply
        .trim_end()
        .strip_prefix("HD t")
        .unwrap_or_else(|| panic!("unexpected mg reply {reply:?}"));
    ttl.parse().unwrap()
}

fn assert_near(actual: i64, expected: i64, what: &str) {
    assert!(
        (actual - expected).abs() <= 3,
        "{what}: memcached reports {actual} s left, expected about {expected}"
    );
}

#[tokio::test]
async fn conformance() {
    let Some(url) = url() else { return };
    test_kit::run_all(
        || store(&url),
        Options::default().self_expiring(true).user_index(false),
    )
    .await;
}

/// The same server under two spellings is two servers to the store: every
/// operation goes through the multi-server routing.
#[tokio::test]
async fn conformance_on_a_server_list() {
    let Some(url) = url() else { return };
    let addr = first_server(&url);
    let port = addr.rsplit(':').next().unwrap();
    let list = format!("memcache://{addr},localhost:{port}");
    let probe = store(&list).await;
    assert_eq!(probe.servers().count(), 2);
    test_kit::run_all(
        || store(&list),
        Options::default().self_expiring(true).user_index(false),
    )
    .await;
}

#[tokio::test]
async fn expiry_beyond_thirty_days_is_sent_as_an_absolute_time() {
    let Some(url) = url() else { return };
    let store = store(&url).await;

    // An hour: relative seconds.
    let short = record(r#"{"d":{}}"#);
    assert_eq!(store.create(&short).await.unwrap(), Cas::Applied);
    assert_near(
        server_ttl(&url, &item_key(&store, &short)).await,
        3600,
        "one hour",
    );

    // Exactly 30 days: still relative.
    let mut month = record(r#"{"d":{}}"#);
    month.expires_at = now() + 30 * DAY;
    assert_eq!(store.create(&month).await.unwrap(), Cas::Applied);
    assert_near(
        server_ttl(&url, &item_key(&store, &month)).await,
        30 * DAY,
        "30 days",
    );
    assert_eq!(store.load(&month.key).await.unwrap(), Some(month));

    // 400 days ("remember me"): were it sent as relative seconds, memcached
    // would read it as a date in 1970 and drop the item at once.
    let mut long = record(r#"{"d":{"remember":true}}"#);
    long.expires_at = now() + 400 * DAY;
    assert_eq!(store.create(&long).await.unwrap(), Cas::Applied);
    let key = item_key(&store, &long);
    assert_near(
        server_ttl(&url, &key).await,
        400 * DAY,
        "400 days after create",
    );
    assert_eq!(store.load(&long.key).await.unwrap(), Some(long.clone()));

    // The same rule on save and touch.
    let mut saved = long.clone();
    saved.version = 2;
    saved.expires_at = now() + 100 * DAY;
    assert_eq!(store.save(&saved, 1).await.unwrap(), Cas::Applied);
    assert_near(
        server_ttl(&url, &key).await,
        100 * DAY,
        "100 days after save",
    );
    let later = now() + 200 * DAY;
    assert_eq!(
        store.touch(&long.key, 2, now(), later).await.unwrap(),
        Cas::Applied
    );
    assert_near(
        server_ttl(&url, &key).await,
        200 * DAY,
        "200 days after touch",
    );
    assert_eq!(
        store.load(&long.key).await.unwrap().unwrap().expires_at,
        later
    );
}

#[tokio::test]
async fn an_expired_record_is_stored_as_expired() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    let mut expired = record(r#"{"d":{}}"#);
    expired.expires_at = now() - 5;
    // memcached takes `add` with exptime -1 and drops the item at once …
    assert_eq!(store.create(&expired).await.unwrap(), Cas::Applied);
    assert_eq!(
        raw(
            &url,
            format!("get {}\r\n", item_key(&store, &expired)).as_bytes()
        )
        .await,
        "END\r\n"
    );
    // … but still refuses it over a live item.
    let live = record(r#"{"d":{"live":1}}"#);
    assert_eq!(store.create(&live).await.unwrap(), Cas::Applied);
    let mut late = expired.clone();
    late.key = live.key.clone();
    assert_eq!(store.create(&late).await.unwrap(), Cas::Conflict);
    assert_eq!(store.load(&live.key).await.unwrap(), Some(live));
}

/// `touch` rewrites the item: new timestamps in the value and a new server
/// expiry, the rest of the record untouched.
#[tokio::test]
async fn touch_moves_the_server_expiry_and_keeps_the_record() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    let mut r = record(r#"{"d":{"n":1}}"#);
    r.expires_at = now() + 2;
    r.user_id = Some("user-7".into());
    r.ip_address = Some("192.0.2.1".into());
    r.user_agent = Some("agent".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let (last, expires) = (now(), now() + 3600);
    assert_eq!(
        store.touch(&r.key, r.version, last, expires).await.unwrap(),
        Cas::Applied
    );
    assert_near(
        server_ttl(&url, &item_key(&store, &r)).await,
        3600,
        "after touch",
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let loaded = store
        .load(&r.key)
        .await
        .unwrap()
        .expect("touched record outlives its old expiry");
    assert_eq!(
        loaded,
        Record {
            last_activity: last,
            expires_at: expires,
            ..r
        }
    );
}

#[tokio::test]
async fn a_session_too_large_for_an_item_is_refused_before_sending() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    let limit = store.max_value_size();

    // The largest session the store accepts does fit the real server.
    let mut fits = record("");
    let header = format!(
        "{{\"a\":{},\"e\":{},\"v\":{}}}\n",
        fits.last_activity, fits.expires_at, fits.version
    );
    fits.payload = "x".repeat(limit - header.len());
    assert_eq!(store.create(&fits).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&fits.key).await.unwrap(), Some(fits.clone()));

    // One byte more is a typed error, and nothing is written.
    let mut too_big = fits.clone();
    too_big.key = SessionId::generate().storage_key();
    too_big.payload.push('x');
    match store.create(&too_big).await {
        Err(Error::TooLarge {
            store: "memcached",
            size,
            limit: l,
        }) => {
            assert_eq!((size, l), (limit + 1, limit));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(store.load(&too_big.key).await.unwrap(), None);

    // A save that grows past the limit leaves the stored session as it was.
    let mut grown = fits.clone();
    grown.payload.push_str("more");
    grown.version = 2;
    assert!(matches!(
        store.save(&grown, 1).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(store.load(&fits.key).await.unwrap(), Some(fits));

    // A smaller configured item size lowers the limit.
    let small = MemcachedStore::builder(&url)
        .prefix(unique_prefix())
        .max_item_size(64 * 1024)
        .build()
        .unwrap();
    assert!(small.max_value_size() < 64 * 1024);
    let big = record(&"y".repeat(64 * 1024));
    assert!(matches!(
        small.create(&big).await,
        Err(Error::TooLarge {
            store: "memcached",
            ..
        })
    ));
}

/// A limit set above the server's (`-I`) is caught by the server; the error
/// says so, and the store goes on working.
#[tokio::test]
async fn the_server_refusing_an_item_is_a_clear_backend_error() {
    let Some(url) = url() else { return };
    let store = MemcachedStore::builder(&url)
        .prefix(unique_prefix())
        .max_item_size(4 * 1024 * 1024)
        .build()
        .unwrap();
    let huge = record(&"z".repeat(2 * 1024 * 1024));
    let err = store.create(&huge).await.unwrap_err();
    assert!(err.is_backend());
    let message = Report(&err).to_string();
    assert!(message.contains("too large"), "{message}");
    let small = record(r#"{"d":{}}"#);
    assert_eq!(store.create(&small).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&small.key).await.unwrap(), Some(small));
}

#[tokio::test]
async fn a_vanished_item_is_never_recreated_by_save() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    let mut r = record(r#"{"d":{"n":1}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    // Evicted, or deleted by another process, behind the store's back.
    let reply = raw(
        &url,
        format!("delete {}\r\n", item_key(&store, &r)).as_bytes(),
    )
    .await;
    assert_eq!(reply, "DELETED\r\n");
    r.payload = r#"{"d":{"n":2}}"#.into();
    r.version = 2;
    assert_eq!(store.save(&r, 1).await.unwrap(), Cas::Conflict);
    assert_eq!(store.load(&r.key).await.unwrap(), None);
    assert_eq!(
        raw(&url, format!("get {}\r\n", item_key(&store, &r)).as_bytes()).await,
        "END\r\n"
    );
    assert_eq!(
        store
            .touch(&r.key, r.version, now(), now() + 60)
            .await
            .unwrap(),
        Cas::Conflict
    );
    assert_eq!(store.load(&r.key).await.unwrap(), None);
}

#[tokio::test]
async fn an_unreadable_item_counts_as_absent_and_is_never_overwritten_by_save() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    let r = record(r#"{"d":{}}"#);
    let key = item_key(&store, &r);
    for (flags, value) in [
        (0, "hello"),
        (0x4b31, "no header"),
        (0x4b31, "{\"a\":1}\nx"),
    ] {
        let command = format!("set {key} {flags} 60 {}\r\n{value}\r\n", value.len());
        assert_eq!(raw(&url, command.as_bytes()).await, "STORED\r\n");
        assert_eq!(store.load(&r.key).await.unwrap(), None);
        assert_eq!(store.save(&r, 1).await.unwrap(), Cas::Conflict);
        assert_eq!(
            store.touch(&r.key, 1, now(), now() + 60).await.unwrap(),
            Cas::Conflict
        );
        assert_eq!(store.create(&r).await.unwrap(), Cas::Conflict);
        let stored = raw(&url, format!("get {key}\r\n").as_bytes()).await;
        assert!(
            stored.contains(value),
            "the foreign item is left alone: {stored:?}"
        );
    }
    store.destroy(&r.key).await.unwrap();
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
}

#[tokio::test]
async fn concurrent_requests_share_the_pool() {
    let Some(url) = url() else { return };
    let store = MemcachedStore::builder(&url)
        .prefix(unique_prefix())
        .pool_size(4)
        .connect()
        .await
        .unwrap();
    let records: Vec<_> = (0..64)
        .map(|i| record(&format!("{{\"d\":{{\"i\":{i}}}}}")))
        .collect();
    let tasks: Vec<_> = records
        .iter()
        .cloned()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
                assert_eq!(store.load(&r.key).await.unwrap(), Some(r));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn user_index_is_unsupported() {
    let Some(url) = url() else { return };
    let store = store(&url).await;
    match store.list_for_user("u").await {
        Err(Error::Unsupported {
            store: "memcached",
            operation,
        }) => {
            assert_eq!(operation, "list_for_user");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        store.destroy_for_user("u", None).await,
        Err(Error::Unsupported {
            store: "memcached",
            ..
        })
    ));
    assert_eq!(store.gc(now()).await.unwrap(), 0);
    assert_eq!(store.kind(), "memcached");
}
