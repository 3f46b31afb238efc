//! The cookie driver and encryption at rest, end to end through the layer.
#![cfg(all(feature = "cookie", feature = "encryption"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{app, ok, run};
use keepsake::testing::TestClient;
use keepsake::{
    CookieStore, EncryptedStore, Key, Keys, MemoryStore, SessionFailure, SessionLayer, SessionStore,
};
use serde_json::json;

const MARKER: &str = "plaintext-marker-7f3a9c";

fn cookie_client(keys: Keys) -> TestClient {
    TestClient::new(
        app(),
        SessionLayer::new(CookieStore::new(keys)).with_lottery(0, 1),
    )
}

#[tokio::test]
async fn cookie_driver_flash_regenerate_invalidate() {
    let client = cookie_client(Keys::new(Key::generate()));
    common::suite::flash_timelines(&client).await;
    let store: Arc<dyn SessionStore> = Arc::new(CookieStore::new(Keys::new(Key::generate())));
    common::suite::regenerate_keeps_data(&client.new_browser(), &store).await;
    common::suite::invalidate_destroys(&client.new_browser(), &store).await;
}

#[tokio::test]
async fn cookie_driver_keeps_the_session_in_the_cookie_encrypted() {
    let client = cookie_client(Keys::new(Key::generate()));
    run(
        &client,
        json!([["put", "secret", MARKER], ["increment", "n", 1]]),
    )
    .await;
    let value = client.cookie().unwrap();
    assert!(!value.contains(MARKER) && !value.contains("secret"));
    let r = run(&client, json!([["get", "secret"], ["increment", "n", 1]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!(MARKER), json!(2)));
}

#[tokio::test]
async fn tampered_foreign_and_garbage_cookies_give_a_fresh_session() {
    let client = cookie_client(Keys::new(Key::generate()));
    run(&client, json!([["put", "a", 1]])).await;
    let value = client.cookie().unwrap();
    let mut tampered = value.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let foreign = cookie_client(Keys::new(Key::generate()));
    run(&foreign, json!([["put", "a", 1]])).await;
    for bad in [
        String::from_utf8(tampered).unwrap(),
        value[..value.len() / 2].to_owned(),
        foreign.cookie().unwrap(),
        "garbage".to_owned(),
        "x".repeat(5000),
    ] {
        client.set_cookie(Some(bad));
        let r = run(&client, json!([["get", "a"]])).await;
        assert_eq!(ok(&r[0]), json!(null));
    }
}

#[tokio::test]
async fn a_session_too_large_for_a_cookie_is_refused_clearly() {
    let client = cookie_client(Keys::new(Key::generate()));
    let response = client
        .post_json("/run", &json!([["put", "big", "x".repeat(5000)]]))
        .await;
    response.assert_status(500);
    assert!(response.set_cookies().is_empty());
}

#[tokio::test]
async fn cookie_key_rotation() {
    let old = Key::generate();
    let new = Key::generate();
    let before = cookie_client(Keys::new(old.clone()));
    run(&before, json!([["put", "a", 1]])).await;
    let rotated = cookie_client(Keys::new(new).with_previous(old));
    rotated.set_cookie(before.cookie());
    let r = run(&rotated, json!([["get", "a"], ["put", "b", 2]])).await;
    assert_eq!(ok(&r[0]), json!(1));
    assert_ne!(
        rotated.cookie(),
        before.cookie(),
        "re-sealed with the new key"
    );
}

#[tokio::test]
async fn the_error_of_a_refused_cookie_is_attached() {
    let layer = SessionLayer::new(CookieStore::new(Keys::new(Key::generate())));
    let app = app().layer(layer);
    let request = http::Request::post("/run")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            serde_json::to_vec(&json!([["put", "big", "x".repeat(5000)]])).unwrap(),
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    let failure = response.extensions().get::<SessionFailure>().unwrap();
    assert!(
        matches!(
            failure.error(),
            keepsake::Error::TooLarge {
                store: "cookie",
                ..
            }
        ),
        "{failure}"
    );
}

/// Writes a marker through the layer and returns the client.
async fn write_marker(store: Arc<dyn SessionStore>) -> TestClient {
    let client = TestClient::new(app(), SessionLayer::from_arc(store).with_lottery(0, 1));
    run(&client, json!([["put", "secret", MARKER]])).await;
    client
}

fn grep_dir(dir: &std::path::Path) -> bool {
    let mut found = false;
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        found |= bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn encrypted_memory_store_hides_the_payload() {
    let inner = Arc::new(MemoryStore::new());
    let keys = Keys::new(Key::generate());
    let store = Arc::new(EncryptedStore::new(Arc::clone(&inner), keys.clone()));
    let client = write_marker(store).await;
    let id = keepsake::SessionId::parse(&client.cookie().unwrap()).unwrap();
    let raw = inner.load(&id.storage_key()).await.unwrap().unwrap();
    assert!(
        !raw.payload.contains(MARKER),
        "the backing store holds plaintext"
    );
    assert_eq!(
        ok(&run(&client, json!([["get", "secret"]])).await[0]),
        json!(MARKER)
    );

    // Another key reads an empty session rather than failing.
    let wrong = TestClient::new(
        app(),
        SessionLayer::new(EncryptedStore::new(inner, Keys::new(Key::generate()))),
    );
    wrong.set_cookie(client.cookie());
    let r = run(&wrong, json!([["all"]])).await;
    assert_eq!(ok(&r[0]), json!({}));
}

#[cfg(feature = "file")]
#[tokio::test]
async fn encrypted_file_store_hides_the_payload_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write_marker(Arc::new(
        keepsake::FileStore::new(dir.path().join("plain")).unwrap(),
    ))
    .await;
    assert!(
        grep_dir(&dir.path().join("plain")),
        "control: a plain store shows the marker"
    );
    let _ = plain;
    let old = Key::generate();
    let encrypted = keepsake::FileStore::new(dir.path().join("enc")).unwrap();
    let client = write_marker(Arc::new(EncryptedStore::new(
        encrypted,
        Keys::new(old.clone()),
    )))
    .await;
    assert!(
        !grep_dir(&dir.path().join("enc")),
        "the encrypted store wrote plaintext to disk"
    );

    // Rotation: a new primary key still reads what the old one wrote.
    let rotated = keepsake::FileStore::new(dir.path().join("enc")).unwrap();
    let rotated = TestClient::new(
        app(),
        SessionLayer::new(EncryptedStore::new(
            rotated,
            Keys::new(Key::generate()).with_previous(old),
        )),
    );
    rotated.set_cookie(client.cookie());
    assert_eq!(
        ok(&run(&rotated, json!([["get", "secret"]])).await[0]),
        json!(MARKER)
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn encrypted_sqlite_store_hides_the_payload_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let sqlite = keepsake::SqliteStore::connect(&url).await.unwrap();
    sqlite.migrate().await.unwrap();
    let client = write_marker(Arc::new(EncryptedStore::new(
        sqlite,
        Keys::new(Key::generate()),
    )))
    .await;
    assert_eq!(
        ok(&run(&client, json!([["get", "secret"]])).await[0]),
        json!(MARKER)
    );
    assert!(!grep_dir(dir.path()), "the database files hold plaintext");
}

/// A field of `tests/fixtures/format1.txt`: values sealed through the layer
/// in format 1 (AES-256-GCM) before format 2 replaced it.
fn format1(name: &str) -> String {
    include_str!("fixtures/format1.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("fixture field {name}"))
        .trim()
        .to_owned()
}

fn format_byte(value: &str) -> u8 {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .unwrap()[0]
}

#[tokio::test]
async fn a_format_1_cookie_still_opens_and_is_resealed_as_format_2() {
    let old = Key::from_base64(&format1("key")).unwrap();
    let client = cookie_client(Keys::new(Key::generate()).with_previous(old));
    let cookie = format1("cookie");
    assert_eq!(format_byte(&cookie), 1);
    client.set_cookie(Some(cookie.clone()));
    let r = run(&client, json!([["get", "theme"], ["put", "seen", true]])).await;
    assert_eq!(ok(&r[0]), json!("dark"));
    let resealed = client.cookie().unwrap();
    assert_ne!(resealed, cookie);
    assert_eq!(format_byte(&resealed), 2);
    let r = run(&client, json!([["get", "theme"], ["get", "seen"]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!("dark"), json!(true)));
}

#[tokio::test]
async fn a_format_1_payload_at_rest_still_opens_and_is_rewritten_as_format_2() {
    let old = Key::from_base64(&format1("key")).unwrap();
    let id = keepsake::SessionId::parse(&format1("id")).unwrap();
    let inner = Arc::new(MemoryStore::new());
    let stored = keepsake::Record {
        key: id.storage_key(),
        payload: format1("payload"),
        last_activity: format1("last_activity").parse().unwrap(),
        expires_at: format1("expires_at").parse().unwrap(),
        version: 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    };
    assert_eq!(format_byte(&stored.payload), 1);
    assert_eq!(inner.create(&stored).await.unwrap(), keepsake::Cas::Applied);
    let store = EncryptedStore::new(
        Arc::clone(&inner),
        Keys::new(Key::generate()).with_previous(old),
    );
    let client = TestClient::new(app(), SessionLayer::new(store).with_lottery(0, 1));
    client.set_cookie(Some(id.as_str().to_owned()));
    let r = run(&client, json!([["get", "theme"], ["put", "seen", true]])).await;
    assert_eq!(ok(&r[0]), json!("dark"));
    assert_eq!(client.cookie().as_deref(), Some(id.as_str()));
    let raw = inner.load(&id.storage_key()).await.unwrap().unwrap();
    assert!(raw.version > 1);
    assert_eq!(format_byte(&raw.payload), 2);
    let r = run(&client, json!([["get", "theme"], ["get", "seen"]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!("dark"), json!(true)));
}
