//! The store conformance kit: one suite of checks that every
//! [`SessionStore`] must pass.
//!
//! A driver crate enables the `test-kit` feature in its dev-dependencies and
//! calls [`run_all`] with a factory that makes a fresh, empty store (its own
//! table, directory or key prefix) for each check:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use keepsake_core::MemoryStore;
//! use keepsake_core::test_kit::{run_all, Options};
//!
//! run_all(|| async { MemoryStore::new() }, Options::default()).await;
//! # })
//! ```
//!
//! Every check panics with a message naming the check and the guarantee it
//! saw broken. The checks are also public one by one, for drivers that want
//! to run them as separate tests.

use std::future::Future;
use std::sync::Arc;

use crate::id::SessionId;
use crate::record::{Record, now};
use crate::store::{Cas, SessionStore};

/// What a store supports beyond the core guarantees.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Options {
    /// The backend expires entries itself (Redis, memcached): `gc` returns 0
    /// and the kit checks only that expired records do not load.
    pub self_expiring: bool,
    /// The store has a per-user index (`list_for_user`, `destroy_for_user`).
    /// When false the kit checks that both return `Error::Unsupported`.
    pub user_index: bool,
    /// How many concurrent writers the CAS race check runs.
    pub concurrent_writers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            self_expiring: false,
            user_index: true,
            concurrent_writers: 16,
        }
    }
}

impl Options {
    /// Sets [`Options::self_expiring`].
    #[must_use]
    pub fn self_expiring(mut self, yes: bool) -> Self {
        self.self_expiring = yes;
        self
    }

    /// Sets [`Options::user_index`].
    #[must_use]
    pub fn user_index(mut self, yes: bool) -> Self {
        self.user_index = yes;
        self
    }

    /// Sets [`Options::concurrent_writers`].
    #[must_use]
    pub fn concurrent_writers(mut self, n: usize) -> Self {
        self.concurrent_writers = n;
        self
    }
}

/// A fresh live record (expires in an hour) with a random key.
#[must_use]
pub fn record(payload: &str) -> Record {
    let now = now();
    Record {
        key: SessionId::generate().storage_key(),
        payload: payload.to_owned(),
        last_activity: now,
        expires_at: now + 3600,
        version: 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    }
}

/// Runs every check, each on a fresh store from `factory`.
pub async fn run_all<S, F, Fut>(mut factory: F, options: Options)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    load_missing(&factory().await).await;
    create_then_load(&factory().await).await;
    create_never_overwrites(&factory().await).await;
    save_is_compare_and_swap(&factory().await).await;
    save_never_resurrects(&factory().await).await;
    save_in_place_is_compare_and_swap(&factory().await).await;
    touch_keeps_payload(&factory().await).await;
    touch_is_conditional(&factory().await).await;
    retire_is_conditional(&factory().await, options).await;
    destroy_removes(&factory().await).await;
    expired_records_do_not_load(&factory().await).await;
    gc_counts_expired(&factory().await, options).await;
    payloads_round_trip(&factory().await).await;
    concurrent_cas(Arc::new(factory().await), options.concurrent_writers).await;
    if options.user_index {
        user_index(&factory().await).await;
        user_index_follows_writes(&factory().await).await;
    } else {
        user_index_unsupported(&factory().await).await;
    }
}

fn ok<T>(result: crate::Result<T>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what} failed: {}", crate::error::Report(&e)),
    }
}

/// `load` of an unknown key is `None`.
pub async fn load_missing(store: &impl SessionStore) {
    let key = SessionId::generate().storage_key();
    assert_eq!(ok(store.load(&key).await, "load"), None, "load_missing");
}

/// A created record loads back field for field.
pub async fn create_then_load(store: &impl SessionStore) {
    let mut r = record(r#"{"d":{"a":1}}"#);
    r.user_id = Some("user-1".into());
    r.ip_address = Some("203.0.113.9".into());
    r.user_agent = Some("Mozilla/5.0 (X11) keepsake-kit".into());
    assert_eq!(
        ok(store.create(&r).await, "create"),
        Cas::Applied,
        "create_then_load"
    );
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        Some(r),
        "create_then_load"
    );
}

/// `create` reports a collision and leaves the existing record alone.
pub async fn create_never_overwrites(store: &impl SessionStore) {
    let first = record(r#"{"d":{"owner":"first"}}"#);
    assert_eq!(ok(store.create(&first).await, "create"), Cas::Applied);
    let mut second = record(r#"{"d":{"owner":"second"}}"#);
    second.key = first.key.clone();
    assert_eq!(
        ok(store.create(&second).await, "create"),
        Cas::Conflict,
        "create_never_overwrites: a second create with the same key must be a Conflict"
    );
    assert_eq!(
        ok(store.load(&first.key).await, "load"),
        Some(first),
        "create_never_overwrites: the first record must be untouched"
    );
}

/// `save` applies only on the expected version.
pub async fn save_is_compare_and_swap(store: &impl SessionStore) {
    let mut r = record(r#"{"d":{"n":1}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);

    r.payload = r#"{"d":{"n":2}}"#.into();
    r.version = 2;
    r.user_id = Some("u".into());
    assert_eq!(
        ok(store.save(&r, 1).await, "save"),
        Cas::Applied,
        "save_is_compare_and_swap: save at the stored version must apply"
    );
    assert_eq!(ok(store.load(&r.key).await, "load"), Some(r.clone()));

    let mut stale = r.clone();
    stale.payload = r#"{"d":{"n":"stale"}}"#.into();
    stale.version = 2;
    assert_eq!(
        ok(store.save(&stale, 1).await, "save"),
        Cas::Conflict,
        "save_is_compare_and_swap: save at a stale version must be a Conflict"
    );
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        Some(r),
        "save_is_compare_and_swap: a conflicting save must change nothing"
    );
}

/// `save_in_place` writes the payload, activity and version at the expected
/// version only, keeps the stored expiry and user, and never re-creates an
/// expired record.
pub async fn save_in_place_is_compare_and_swap(store: &impl SessionStore) {
    let mut r = record(r#"{"d":{"n":1}}"#);
    r.user_id = Some("u".into());
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);

    r.payload = r#"{"d":{"n":2}}"#.into();
    r.last_activity += 10;
    r.version = 2;
    r.ip_address = Some("192.0.2.7".into());
    assert_eq!(
        ok(store.save_in_place(&r, 1).await, "save_in_place"),
        Cas::Applied,
        "save_in_place_is_compare_and_swap: a save at the stored version must apply"
    );
    assert_eq!(ok(store.load(&r.key).await, "load"), Some(r.clone()));

    let mut stale = r.clone();
    stale.payload = r#"{"d":{"n":"stale"}}"#.into();
    stale.version = 2;
    assert_eq!(
        ok(store.save_in_place(&stale, 1).await, "save_in_place"),
        Cas::Conflict,
        "save_in_place_is_compare_and_swap: a save at a stale version must be a Conflict"
    );
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        Some(r.clone()),
        "save_in_place_is_compare_and_swap: a conflicting save must change nothing"
    );

    let mut expired = record(r#"{"d":{}}"#);
    expired.expires_at = now() - 10;
    expired.last_activity = now() - 100;
    let _ = ok(store.create(&expired).await, "create");
    let mut late = expired.clone();
    late.version = 2;
    assert_eq!(
        ok(store.save_in_place(&late, 1).await, "save_in_place"),
        Cas::Conflict,
        "save_in_place_is_compare_and_swap: an expired record must not be saved"
    );
    assert_eq!(ok(store.load(&late.key).await, "load"), None);
}

/// `save` never re-creates a destroyed, expired or never-created record.
pub async fn save_never_resurrects(store: &impl SessionStore) {
    let never = record(r#"{"d":{}}"#);
    assert_eq!(ok(store.save(&never, 0).await, "save"), Cas::Conflict);
    assert_eq!(ok(store.save(&never, 1).await, "save"), Cas::Conflict);
    assert_eq!(
        ok(store.load(&never.key).await, "load"),
        None,
        "save_never_resurrects: save must not insert"
    );

    let mut r = record(r#"{"d":{}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    ok(store.destroy(&r.key).await, "destroy");
    r.version = 2;
    assert_eq!(ok(store.save(&r, 1).await, "save"), Cas::Conflict);
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        None,
        "save_never_resurrects: a destroyed record must stay destroyed"
    );

    let mut expired = record(r#"{"d":{}}"#);
    expired.expires_at = now() - 10;
    expired.last_activity = now() - 100;
    let _ = ok(store.create(&expired).await, "create");
    let mut late = expired.clone();
    late.expires_at = now() + 3600;
    late.version = 2;
    assert_eq!(ok(store.save(&late, 1).await, "save"), Cas::Conflict);
    assert_eq!(
        ok(store.load(&expired.key).await, "load"),
        None,
        "save_never_resurrects: an expired record must not come back"
    );
}

/// `touch` moves the expiry and leaves payload and version alone; it applies
/// only at the expected version, reports a miss, and never shortens an expiry.
pub async fn touch_keeps_payload(store: &impl SessionStore) {
    let r = record(r#"{"d":{"keep":"me"}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    let (last, expires) = (r.last_activity + 5, r.expires_at + 7200);
    assert_eq!(
        ok(store.touch(&r.key, r.version, last, expires).await, "touch"),
        Cas::Applied,
        "touch_keeps_payload: a touch at the stored version applies"
    );
    let loaded = ok(store.load(&r.key).await, "load").expect("touched record loads");
    assert_eq!(loaded.payload, r.payload, "touch_keeps_payload: payload");
    assert_eq!(loaded.version, r.version, "touch_keeps_payload: version");
    assert_eq!(
        loaded.last_activity, last,
        "touch_keeps_payload: last_activity"
    );
    assert_eq!(
        loaded.expires_at, expires,
        "touch_keeps_payload: expires_at"
    );

    let missing = SessionId::generate().storage_key();
    assert_eq!(
        ok(store.touch(&missing, 1, last, expires).await, "touch"),
        Cas::Conflict,
        "touch_keeps_payload: a touch of a missing record reports the miss"
    );
    assert_eq!(
        ok(store.load(&missing).await, "load"),
        None,
        "touch_keeps_payload: touch must not create"
    );
}

/// A touch at an older version changes nothing and says so, and a touch never
/// moves `expires_at` backwards (a longer lifetime set meanwhile stays).
pub async fn touch_is_conditional(store: &impl SessionStore) {
    let r = record(r#"{"d":{}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    let mut saved = r.clone();
    saved.version = r.version + 1;
    saved.expires_at = r.expires_at + 86_400;
    assert_eq!(
        ok(store.save(&saved, r.version).await, "save"),
        Cas::Applied
    );
    assert_eq!(
        ok(
            store
                .touch(&r.key, r.version, r.last_activity + 1, r.expires_at + 60)
                .await,
            "touch"
        ),
        Cas::Conflict,
        "touch_is_conditional: a touch at a superseded version must not apply"
    );
    let loaded = ok(store.load(&r.key).await, "load").expect("record loads");
    assert_eq!(
        (loaded.expires_at, loaded.version),
        (saved.expires_at, saved.version),
        "touch_is_conditional: the newer save's expiry stays"
    );
    assert_eq!(
        ok(
            store
                .touch(
                    &r.key,
                    saved.version,
                    r.last_activity + 2,
                    r.expires_at + 60
                )
                .await,
            "touch"
        ),
        Cas::Applied,
        "touch_is_conditional: a touch at the stored version applies"
    );
    let loaded = ok(store.load(&r.key).await, "load").expect("record loads");
    assert_eq!(
        loaded.expires_at, saved.expires_at,
        "touch_is_conditional: a touch never moves expires_at backwards"
    );
    assert_eq!(
        loaded.last_activity,
        r.last_activity + 2,
        "touch_is_conditional: last_activity moves"
    );
}

/// `retire` deletes a live record only at the expected version, and takes
/// it out of its owner's index.
pub async fn retire_is_conditional(store: &impl SessionStore, options: Options) {
    let mut r = record(r#"{"d":{}}"#);
    if options.user_index {
        r.user_id = Some(format!("retiring-{}", r.key.short()));
    }
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    assert_eq!(
        ok(
            store
                .retire(&r.key, r.version + 1, r.user_id.as_deref())
                .await,
            "retire"
        ),
        Cas::Conflict,
        "retire_is_conditional: another version is not retired"
    );
    assert!(
        ok(store.load(&r.key).await, "load").is_some(),
        "retire_is_conditional: a refused retire leaves the record"
    );
    assert_eq!(
        ok(
            store.retire(&r.key, r.version, r.user_id.as_deref()).await,
            "retire"
        ),
        Cas::Applied,
        "retire_is_conditional: the expected version is retired"
    );
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        None,
        "retire_is_conditional: a retired record no longer loads"
    );
    assert_eq!(
        ok(
            store.retire(&r.key, r.version, r.user_id.as_deref()).await,
            "retire"
        ),
        Cas::Conflict,
        "retire_is_conditional: a missing record is not retired twice"
    );
    if let (true, Some(user)) = (options.user_index, &r.user_id) {
        assert!(
            ok(store.list_for_user(user).await, "list_for_user").is_empty(),
            "retire_is_conditional: the owner's index forgets it"
        );
    }
}

/// `destroy` removes; destroying a missing key is fine.
pub async fn destroy_removes(store: &impl SessionStore) {
    let r = record(r#"{"d":{}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    ok(store.destroy(&r.key).await, "destroy");
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        None,
        "destroy_removes"
    );
    ok(store.destroy(&r.key).await, "destroy of a missing key");
}

/// Records past `expires_at` do not load, and cannot be touched back to life.
pub async fn expired_records_do_not_load(store: &impl SessionStore) {
    let mut r = record(r#"{"d":{}}"#);
    r.expires_at = now() - 1;
    let _ = ok(store.create(&r).await, "create");
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        None,
        "expired_records_do_not_load"
    );
    assert_eq!(
        ok(
            store.touch(&r.key, r.version, now(), now() + 3600).await,
            "touch"
        ),
        Cas::Conflict,
        "expired_records_do_not_load: a touch of an expired record reports the miss"
    );
    assert_eq!(
        ok(store.load(&r.key).await, "load"),
        None,
        "expired_records_do_not_load: touch must not revive"
    );
}

/// `gc` deletes exactly the expired records (or 0 for self-expiring stores).
pub async fn gc_counts_expired(store: &impl SessionStore, options: Options) {
    let mut live = Vec::new();
    for _ in 0..2 {
        let r = record(r#"{"d":{}}"#);
        assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
        live.push(r);
    }
    for _ in 0..3 {
        let mut r = record(r#"{"d":{}}"#);
        r.expires_at = now() - 5;
        r.user_id = Some("gc-user".into());
        let _ = ok(store.create(&r).await, "create");
    }
    let deleted = ok(store.gc(now()).await, "gc");
    let expected = if options.self_expiring { 0 } else { 3 };
    assert_eq!(
        deleted, expected,
        "gc_counts_expired: gc must return the number deleted"
    );
    assert_eq!(
        ok(store.gc(now()).await, "gc"),
        0,
        "gc_counts_expired: second gc"
    );
    for r in live {
        assert!(
            ok(store.load(&r.key).await, "load").is_some(),
            "gc_counts_expired: gc must keep live records"
        );
    }
}

/// Payloads come back byte for byte: unicode, quotes, 64 KiB.
pub async fn payloads_round_trip(store: &impl SessionStore) {
    let big = format!(r#"{{"d":{{"big":"{}"}}}}"#, "x".repeat(64 * 1024));
    let payloads = [
        r#"{"d":{"s":"quote \" backslash \\ newline \n tab \t"}}"#.to_owned(),
        r#"{"d":{"u":"日本語 ✓ 🦀 \u0000"}}"#.to_owned(),
        big,
    ];
    for payload in payloads {
        let r = record(&payload);
        assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
        let loaded = ok(store.load(&r.key).await, "load").expect("created record loads");
        assert_eq!(loaded.payload, payload, "payloads_round_trip");
    }
}

/// Concurrent load–modify–save loops on one record lose no update.
pub async fn concurrent_cas<S: SessionStore>(store: Arc<S>, writers: usize) {
    let base = record("0");
    assert_eq!(ok(store.create(&base).await, "create"), Cas::Applied);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = Arc::clone(&store);
        let key = base.key.clone();
        tasks.push(tokio::spawn(async move {
            for attempt in 0..1000 {
                let mut current = ok(store.load(&key).await, "load").expect("record exists");
                let n: u64 = current.payload.parse().expect("counter payload");
                current.payload = (n + 1).to_string();
                let expected = current.version;
                current.version += 1;
                if ok(store.save(&current, expected).await, "save").is_applied() {
                    return attempt;
                }
                tokio::task::yield_now().await;
            }
            panic!("concurrent_cas: a writer never got through");
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let last = ok(store.load(&base.key).await, "load").expect("record exists");
    assert_eq!(
        last.payload,
        writers.to_string(),
        "concurrent_cas: every compare-and-swap increment must land"
    );
    assert_eq!(last.version, 1 + i64::try_from(writers).unwrap_or(i64::MAX));
}

/// The per-user index lists live sessions, newest first, and revokes all but one.
pub async fn user_index(store: &impl SessionStore) {
    let user = format!(
        "kit-user-{}",
        &SessionId::generate().storage_key().as_str()[..12]
    );
    let other = format!("{user}-other");
    let mut mine = Vec::new();
    for i in 0..3 {
        let mut r = record(r#"{"d":{}}"#);
        r.user_id = Some(user.clone());
        r.last_activity = now() - 100 + i;
        assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
        mine.push(r);
    }
    let mut expired = record(r#"{"d":{}}"#);
    expired.user_id = Some(user.clone());
    expired.expires_at = now() - 1;
    let _ = ok(store.create(&expired).await, "create");
    let mut theirs = record(r#"{"d":{}}"#);
    theirs.user_id = Some(other.clone());
    assert_eq!(ok(store.create(&theirs).await, "create"), Cas::Applied);

    let listed = ok(store.list_for_user(&user).await, "list_for_user");
    let keys: Vec<_> = listed.iter().map(|s| s.key.clone()).collect();
    let newest_first: Vec<_> = mine.iter().rev().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys, newest_first,
        "user_index: live sessions, most recent first"
    );
    assert_eq!(
        listed[0],
        mine[2].info(),
        "user_index: listing carries the record's details"
    );

    let deleted = ok(
        store.destroy_for_user(&user, Some(&mine[0].key)).await,
        "destroy_for_user",
    );
    assert!(
        deleted >= 2,
        "user_index: destroy_for_user must delete the others"
    );
    let keys: Vec<_> = ok(store.list_for_user(&user).await, "list_for_user")
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(
        keys,
        vec![mine[0].key.clone()],
        "user_index: only the kept session"
    );
    assert!(ok(store.load(&mine[1].key).await, "load").is_none());
    assert!(
        ok(store.load(&theirs.key).await, "load").is_some(),
        "user_index: another user's session must survive"
    );

    ok(
        store.destroy_for_user(&user, None).await,
        "destroy_for_user",
    );
    assert!(ok(store.list_for_user(&user).await, "list_for_user").is_empty());
    assert!(ok(store.load(&mine[0].key).await, "load").is_none());
}

/// Saves that change the owner and destroys keep the index in step.
pub async fn user_index_follows_writes(store: &impl SessionStore) {
    let alice = format!(
        "kit-alice-{}",
        &SessionId::generate().storage_key().as_str()[..12]
    );
    let bob = format!(
        "kit-bob-{}",
        &SessionId::generate().storage_key().as_str()[..12]
    );
    let mut r = record(r#"{"d":{}}"#);
    assert_eq!(ok(store.create(&r).await, "create"), Cas::Applied);
    assert!(ok(store.list_for_user(&alice).await, "list_for_user").is_empty());

    r.user_id = Some(alice.clone());
    r.version = 2;
    assert_eq!(ok(store.save(&r, 1).await, "save"), Cas::Applied);
    assert_eq!(
        ok(store.list_for_user(&alice).await, "list_for_user").len(),
        1
    );

    r.user_id = Some(bob.clone());
    r.version = 3;
    assert_eq!(ok(store.save(&r, 2).await, "save"), Cas::Applied);
    assert!(
        ok(store.list_for_user(&alice).await, "list_for_user").is_empty(),
        "user_index_follows_writes: a new owner removes the old one's entry"
    );
    assert_eq!(
        ok(store.list_for_user(&bob).await, "list_for_user").len(),
        1
    );

    ok(store.destroy(&r.key).await, "destroy");
    assert!(
        ok(store.list_for_user(&bob).await, "list_for_user").is_empty(),
        "user_index_follows_writes: destroy removes the index entry"
    );
    assert_eq!(
        ok(store.destroy_for_user(&bob, None).await, "destroy_for_user"),
        0
    );
}

/// Stores without a user index say so with `Error::Unsupported`.
pub async fn user_index_unsupported(store: &impl SessionStore) {
    assert!(matches!(
        store.list_for_user("u").await,
        Err(crate::Error::Unsupported { .. })
    ));
    assert!(matches!(
        store.destroy_for_user("u", None).await,
        Err(crate::Error::Unsupported { .. })
    ));
}

/// The URL of a test server from the environment variable `var` (for example
/// `KEEPSAKE_TEST_POSTGRES_URL`), read at run time.
///
/// When the variable is unset, a test on a laptop prints that it was skipped
/// and gets `None`; under CI (`CI=true`) a missing server is a failure, never
/// a skip, so this panics.
#[must_use]
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{var} is not set, and under CI a missing test server is a failure")
        }
        _ => {
            eprintln!("skipped: {var} is not set (set it to run this test against a real server)");
            None
        }
    }
}
