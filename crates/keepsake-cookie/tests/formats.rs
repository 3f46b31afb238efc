//! The sealed formats: new values are format 2 (XChaCha20-Poly1305); values
//! sealed in format 1 (AES-256-GCM) by earlier releases still open, under
//! any position of their key in the rotation list.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keepsake_cookie::{CookieStore, EncryptedStore, Key, Keys};
use keepsake_core::{Cas, ClientSideStore, MemoryStore, Record, SessionId, SessionStore, now};

/// The values of `fixtures/format1.txt`, sealed by the format-1 code.
struct Format1 {
    key: Key,
    id: SessionId,
    cookie: String,
    payload: String,
}

fn format1() -> Format1 {
    let text = include_str!("fixtures/format1.txt");
    let field = |name: &str| -> String {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("fixture field {name}"))
            .trim()
            .to_owned()
    };
    Format1 {
        key: Key::from_base64(&field("key")).unwrap(),
        id: SessionId::parse(&field("id")).unwrap(),
        cookie: field("cookie"),
        payload: field("payload"),
    }
}

/// The record the fixture cookie was sealed from.
fn fixture_record(id: &SessionId, payload: &str) -> Record {
    Record {
        key: id.storage_key(),
        payload: payload.to_owned(),
        last_activity: 1_750_000_000,
        expires_at: 253_402_300_799,
        version: 7,
        user_id: Some("user-42".into()),
        ip_address: Some("203.0.113.9".into()),
        user_agent: Some("Mozilla/5.0 (fixture)".into()),
    }
}

fn format_byte(value: &str) -> u8 {
    URL_SAFE_NO_PAD.decode(value).unwrap()[0]
}

/// The fixture's key alone, and after a newer key in a rotation list.
fn key_lists(key: &Key) -> [Keys; 2] {
    [
        Keys::new(key.clone()),
        Keys::new(Key::generate()).with_previous(key.clone()),
    ]
}

#[test]
fn a_format_1_cookie_still_opens() {
    let f = format1();
    assert_eq!(format_byte(&f.cookie), 1);
    let expected = fixture_record(&f.id, r#"{"d":{"theme":"dark"}}"#);
    for keys in key_lists(&f.key) {
        let store = CookieStore::new(keys);
        assert_eq!(
            store.open(&f.cookie),
            Some((f.id.clone(), expected.clone()))
        );
    }
    // Still bound to its key and its cookie name.
    assert_eq!(CookieStore::new(Key::generate()).open(&f.cookie), None);
    let renamed = CookieStore::new(f.key.clone()).with_cookie_name("other");
    assert_eq!(renamed.open(&f.cookie), None);
}

#[test]
fn a_format_1_cookie_is_resealed_as_format_2() {
    let f = format1();
    let new = Key::generate();
    let rotated = CookieStore::new(Keys::new(new.clone()).with_previous(f.key.clone()));
    let (id, record) = rotated.open(&f.cookie).unwrap();
    let value = rotated.seal(&id, &record).unwrap();
    assert_eq!(format_byte(&value), 2);
    assert_eq!(
        CookieStore::new(new).open(&value),
        Some((id.clone(), record.clone()))
    );
    assert_eq!(
        CookieStore::new(f.key).open(&value),
        None,
        "sealed with the new key"
    );
    assert_eq!(rotated.open(&value), Some((id, record)));
}

#[test]
fn new_cookies_are_format_2_with_a_192_bit_nonce() {
    let store = CookieStore::new(Key::generate());
    let id = SessionId::generate();
    let mut record = fixture_record(&id, "{}");
    record.user_id = None;
    record.ip_address = None;
    record.user_agent = None;
    let value = store.seal(&id, &record).unwrap();
    let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
    assert_eq!(raw[0], 2, "format byte");
    // Plaintext: 32-byte id, three 8-byte integers, flags, the payload.
    let plain = 32 + 3 * 8 + 1 + 2;
    assert_eq!(
        raw.len(),
        1 + 24 + plain + 16,
        "format, nonce, ciphertext, tag"
    );
    assert_eq!(store.open(&value), Some((id, record)));
}

#[test]
fn a_format_byte_swapped_between_formats_or_unknown_does_not_open() {
    let f = format1();
    let store = CookieStore::new(f.key.clone());
    let id = SessionId::generate();
    let mut record = fixture_record(&id, "{}");
    record.expires_at = now() + 60;
    let format2 = URL_SAFE_NO_PAD
        .decode(store.seal(&id, &record).unwrap())
        .unwrap();
    let format1 = URL_SAFE_NO_PAD.decode(&f.cookie).unwrap();
    for (raw, original) in [(format2, 2u8), (format1, 1)] {
        for byte in [0u8, 1, 2, 3, 0x7f, 0xff] {
            if byte == original {
                continue;
            }
            let mut changed = raw.clone();
            changed[0] = byte;
            assert_eq!(
                store.open(&URL_SAFE_NO_PAD.encode(&changed)),
                None,
                "format {original} relabelled {byte}"
            );
        }
    }
}

#[tokio::test]
async fn a_format_1_payload_at_rest_still_opens_and_is_rewritten_as_format_2() {
    let f = format1();
    assert_eq!(format_byte(&f.payload), 1);
    let memory = Arc::new(MemoryStore::new());
    let mut raw = fixture_record(&f.id, &f.payload);
    raw.expires_at = now() + 3600;
    assert_eq!(memory.create(&raw).await.unwrap(), Cas::Applied);

    for keys in key_lists(&f.key) {
        let store = EncryptedStore::new(Arc::clone(&memory), keys);
        let loaded = store.load(&raw.key).await.unwrap().unwrap();
        assert_eq!(loaded.payload, r#"{"d":{"card":"4111"}}"#);
    }

    // Bound to its storage key: copied into another row, it does not open.
    let other = SessionId::generate();
    let mut copied = fixture_record(&other, &f.payload);
    copied.expires_at = now() + 3600;
    assert_eq!(memory.create(&copied).await.unwrap(), Cas::Applied);
    let store = EncryptedStore::new(Arc::clone(&memory), f.key.clone());
    assert_eq!(store.load(&copied.key).await.unwrap().unwrap().payload, "");

    // The next save writes format 2 with the primary key.
    let new = Key::generate();
    let rotated = EncryptedStore::new(
        Arc::clone(&memory),
        Keys::new(new.clone()).with_previous(f.key.clone()),
    );
    let mut loaded = rotated.load(&raw.key).await.unwrap().unwrap();
    loaded.version += 1;
    assert_eq!(
        rotated.save(&loaded, raw.version).await.unwrap(),
        Cas::Applied
    );
    let stored = memory.load(&raw.key).await.unwrap().unwrap().payload;
    assert_eq!(format_byte(&stored), 2);
    let only_new = EncryptedStore::new(Arc::clone(&memory), new);
    assert_eq!(
        only_new.load(&raw.key).await.unwrap().unwrap().payload,
        r#"{"d":{"card":"4111"}}"#
    );
    assert_eq!(store.load(&raw.key).await.unwrap().unwrap().payload, "");
}
