//! CookieStore: sealing and opening cookie values, hostile input, the size
//! limit, key rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keepsake_cookie::{COOKIE_LIMIT, CookieStore, EncryptedStore, Key, Keys};
use keepsake_core::test_kit;
use keepsake_core::{
    Cas, ClientSideStore, Error, MemoryStore, Record, SessionId, SessionStore, now,
};

fn record(id: &SessionId, payload: &str) -> Record {
    Record {
        key: id.storage_key(),
        payload: payload.to_owned(),
        last_activity: now(),
        expires_at: now() + 3600,
        version: 4,
        user_id: None,
        ip_address: None,
        user_agent: None,
    }
}

fn sealed() -> (CookieStore, SessionId, Record, String) {
    let store = CookieStore::new(Key::generate());
    let id = SessionId::generate();
    let r = record(&id, r#"{"d":{"a":1}}"#);
    let value = store.seal(&id, &r).unwrap();
    (store, id, r, value)
}

#[test]
fn round_trip_keeps_every_field() {
    let store = CookieStore::new(Key::generate());
    let id = SessionId::generate();
    let mut r = record(&id, r#"{"d":{"s":"日本語 ✓ 🦀 \" \\ \n"},"m":{"t":"tok"}}"#);
    r.user_id = Some("user ✓".into());
    r.ip_address = Some("2001:db8::1".into());
    r.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64)".into());
    let value = store.seal(&id, &r).unwrap();
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "cookie-safe characters only: {value}"
    );
    assert!(!value.contains(id.as_str()));
    assert_eq!(store.open(&value), Some((id.clone(), r)));

    // Empty payload and no optional field.
    let bare = record(&id, "");
    let value = store.seal(&id, &bare).unwrap();
    assert_eq!(store.open(&value), Some((id, bare)));
}

#[test]
fn every_seal_differs() {
    let (store, id, r, value) = sealed();
    assert_ne!(store.seal(&id, &r).unwrap(), value, "fresh nonce");
}

#[test]
fn rotation_opens_old_values_and_seals_with_the_new_key() {
    let old = Key::generate();
    let new = Key::generate();
    let id = SessionId::generate();
    let r = record(&id, r#"{"d":{}}"#);

    let before = CookieStore::new(old.clone());
    let old_value = before.seal(&id, &r).unwrap();

    let rotated = CookieStore::new(Keys::new(new.clone()).with_previous(old));
    assert_eq!(rotated.open(&old_value), Some((id.clone(), r.clone())));
    let new_value = rotated.seal(&id, &r).unwrap();
    assert_eq!(
        CookieStore::new(new).open(&new_value),
        Some((id.clone(), r.clone()))
    );
    assert_eq!(
        before.open(&new_value),
        None,
        "the new value is sealed with the new key"
    );
    assert_eq!(rotated.open(&new_value), Some((id, r)));
}

#[test]
fn wrong_key_or_cookie_name_does_not_open() {
    let (store, _, _, value) = sealed();
    assert_eq!(CookieStore::new(Key::generate()).open(&value), None);
    let renamed = store.with_cookie_name("other_cookie");
    assert_eq!(renamed.open(&value), None, "the cookie name is bound");
}

#[test]
fn every_tampered_position_is_refused() {
    let (store, _, _, value) = sealed();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut tried = 0;
    for i in 0..value.len() {
        for &c in b"Az-_0" {
            let mut bytes = value.clone().into_bytes();
            if bytes[i] == c {
                continue;
            }
            bytes[i] = c;
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(
                store.open(&tampered),
                None,
                "position {i} set to {}",
                c as char
            );
            tried += 1;
        }
        // A character outside the alphabet.
        let mut bytes = value.clone().into_bytes();
        bytes[i] = b'.';
        assert_eq!(store.open(&String::from_utf8(bytes).unwrap()), None);
    }
    assert!(tried > value.len() * 4);
    assert!(alphabet.len() == 64);

    // Every bit of the decoded bytes.
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
    for i in 0..raw.len() {
        for bit in 0..8 {
            let mut flipped = raw.clone();
            flipped[i] ^= 1 << bit;
            assert_eq!(
                store.open(&URL_SAFE_NO_PAD.encode(&flipped)),
                None,
                "byte {i} bit {bit}"
            );
        }
    }
}

#[test]
fn truncated_and_extended_values_are_refused() {
    let (store, _, _, value) = sealed();
    for len in 0..value.len() {
        assert_eq!(store.open(&value[..len]), None, "truncated to {len}");
    }
    for suffix in ["A", "AA", "=", "==", " ", ";"] {
        assert_eq!(
            store.open(&format!("{value}{suffix}")),
            None,
            "{suffix:?} appended"
        );
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let store = CookieStore::new(Key::generate());
    let huge = "A".repeat(1 << 20);
    let id = SessionId::generate();
    let garbage = [
        "",
        "=",
        "a",
        "!!!!",
        "../../etc/passwd",
        "日本語",
        "AAAA+/AA",
        "AQ==",
        "AQ",
        id.as_str(),
        &huge,
        &huge[..4000],
        &huge[..4097],
    ];
    for value in garbage {
        assert_eq!(store.open(value), None, "{}", &value[..value.len().min(40)]);
    }
}

#[test]
fn expired_values_do_not_open() {
    let store = CookieStore::new(Key::generate());
    let id = SessionId::generate();
    let mut r = record(&id, "{}");
    for expires_at in [now(), now() - 1, i64::MIN] {
        r.expires_at = expires_at;
        let value = store.seal(&id, &r).unwrap();
        assert_eq!(store.open(&value), None, "expires_at {expires_at}");
    }
}

#[test]
fn an_encrypted_payload_is_not_a_cookie() {
    // The same key used at rest and in cookies: the purposes are bound, so a
    // ciphertext of one kind never opens as the other.
    let key = Key::generate();
    let cookies = CookieStore::new(key.clone());
    let memory = std::sync::Arc::new(MemoryStore::new());
    let at_rest = EncryptedStore::new(std::sync::Arc::clone(&memory), key);
    let id = SessionId::generate();
    let r = record(&id, r#"{"d":{}}"#);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(at_rest.create(&r)).unwrap(), Cas::Applied);
    let raw = runtime.block_on(memory.load(&r.key)).unwrap().unwrap();
    assert_eq!(cookies.open(&raw.payload), None);
}

#[test]
fn too_large_is_refused_at_the_documented_limit() {
    let store = CookieStore::new(Key::generate());
    let id = SessionId::generate();
    let name_and_reserve = "keepsake_session".len() + 1 + 200;
    assert_eq!(store.max_value_len(), COOKIE_LIMIT - name_and_reserve);

    // Find the largest payload that fits, then check the boundary.
    let fits = |n: usize| store.seal(&id, &record(&id, &"x".repeat(n))).is_ok();
    let (mut lo, mut hi) = (0, COOKIE_LIMIT);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    let value = store.seal(&id, &record(&id, &"x".repeat(lo))).unwrap();
    assert!(value.len() <= store.max_value_len());
    assert!(value.len() + name_and_reserve <= COOKIE_LIMIT);
    assert!(lo > 2700, "room for about 2.8 KB of payload, got {lo}");
    assert_eq!(store.open(&value).unwrap().1.payload.len(), lo);

    match store.seal(&id, &record(&id, &"x".repeat(lo + 1))) {
        Err(Error::TooLarge { store, size, limit }) => {
            assert_eq!(store, "cookie");
            assert_eq!(limit, 4096);
            assert!(size > 4096 && size <= 4096 + 4, "size {size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // Huge fields anywhere are refused, not truncated, and never panic.
    let mut r = record(&id, "{}");
    r.user_agent = Some("u".repeat(70_000));
    assert!(matches!(store.seal(&id, &r), Err(Error::TooLarge { size, .. }) if size > 70_000));
    let r = record(&id, &"x".repeat(1 << 20));
    assert!(matches!(store.seal(&id, &r), Err(Error::TooLarge { .. })));

    // A longer name or a bigger attributes reserve leaves less room.
    let roomy = store.clone().with_attributes_reserve(0);
    assert!(roomy.seal(&id, &record(&id, &"x".repeat(lo + 1))).is_ok());
    let tight = store
        .clone()
        .with_cookie_name("a_much_longer_session_cookie_name");
    assert!(tight.seal(&id, &record(&id, &"x".repeat(lo))).is_err());
}

#[tokio::test]
async fn the_server_side_methods_are_harmless() {
    let store = CookieStore::new(Key::generate());
    assert_eq!(store.kind(), "cookie");
    assert!(store.client_side().is_some());
    let id = SessionId::generate();
    let r = record(&id, "{}");
    assert_eq!(store.load(&r.key).await.unwrap(), None);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.save(&r, 1).await.unwrap(), Cas::Applied);
    assert_eq!(
        store.touch(&r.key, 1, now(), now() + 10).await.unwrap(),
        Cas::Applied
    );
    store.destroy(&r.key).await.unwrap();
    assert_eq!(store.gc(now()).await.unwrap(), 0);
    test_kit::user_index_unsupported(&store).await;

    // Through the trait object the layer holds.
    let dynamic: std::sync::Arc<dyn SessionStore> = std::sync::Arc::new(store);
    let client = dynamic.client_side().unwrap();
    let value = client.seal(&id, &r).unwrap();
    assert_eq!(client.open(&value), Some((id, r)));
}
