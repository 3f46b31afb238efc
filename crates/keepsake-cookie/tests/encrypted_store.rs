//! EncryptedStore: the conformance kit over MemoryStore and FileStore, and
//! what encryption at rest must guarantee.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keepsake_cookie::{EncryptedStore, Key, Keys};
use keepsake_core::test_kit::{self, Options, record};
use keepsake_core::{Cas, MemoryStore, SessionStore};
use keepsake_file::FileStore;

const MARKER: &str = "PLAINTEXT-MARKER-7d41";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_memory() {
    test_kit::run_all(
        || async { EncryptedStore::new(MemoryStore::new(), Key::generate()) },
        Options::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_files() {
    let mut dirs = Vec::new();
    test_kit::run_all(
        || {
            let dir = tempfile::tempdir().unwrap();
            let store = FileStore::new(dir.path()).unwrap();
            dirs.push(dir);
            async move { EncryptedStore::new(store, Key::generate()) }
        },
        Options::default(),
    )
    .await;
}

#[tokio::test]
async fn the_inner_store_sees_no_plaintext() {
    let store = EncryptedStore::new(MemoryStore::new(), Key::generate());
    let r = record(&format!(r#"{{"d":{{"secret":"{MARKER}"}}}}"#));
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let raw = store.inner().load(&r.key).await.unwrap().unwrap();
    assert!(!raw.payload.contains(MARKER));
    assert!(!raw.payload.contains("secret"));
    assert!(
        raw.payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url text: {}",
        raw.payload
    );
    assert_eq!(
        raw.version, r.version,
        "everything but the payload is the inner store's"
    );
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r.clone()));

    // Saves are encrypted too.
    let mut next = r.clone();
    next.payload = format!(r#"{{"d":{{"again":"{MARKER}"}}}}"#);
    next.version = 2;
    assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Applied);
    let raw = store.inner().load(&r.key).await.unwrap().unwrap();
    assert!(!raw.payload.contains(MARKER));
    assert_eq!(store.load(&r.key).await.unwrap(), Some(next));
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = EncryptedStore::new(FileStore::new(dir.path()).unwrap(), Key::generate());
    let mut r = record(&format!(r#"{{"d":{{"secret":"{MARKER}"}}}}"#));
    r.user_id = Some("disk-user".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let mut next = r.clone();
    next.version = 2;
    next.payload = format!(r#"{{"d":{{"secret":"{MARKER}","n":2}}}}"#);
    assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Applied);

    let files = all_files(dir.path());
    assert!(
        files.iter().any(|f| f.ends_with(r.key.as_str())),
        "{files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let marker = MARKER.as_bytes();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{} holds the plaintext",
            file.display()
        );
    }
    assert_eq!(store.load(&r.key).await.unwrap(), Some(next));
}

/// Collects what `tracing` logs on this thread while `f` runs.
async fn capture_logs<F: std::future::Future<Output = ()>>(f: F) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    f.await;
    drop(guard);
    String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
}

#[tokio::test]
async fn a_wrong_key_gives_an_empty_payload_and_a_warning() {
    let memory = Arc::new(MemoryStore::new());
    let writer = EncryptedStore::new(Arc::clone(&memory), Key::generate());
    let reader = EncryptedStore::new(Arc::clone(&memory), Key::generate());
    let r = record(r#"{"d":{"a":1}}"#);
    assert_eq!(writer.create(&r).await.unwrap(), Cas::Applied);

    let logs = capture_logs(async {
        let loaded = reader
            .load(&r.key)
            .await
            .unwrap()
            .expect("the record itself loads");
        assert_eq!(loaded.payload, "", "undecryptable payload is empty");
        assert_eq!(loaded.version, r.version);
        assert_eq!(loaded.expires_at, r.expires_at);
        assert!(keepsake_core::Payload::decode(&loaded.payload).is_err());
    })
    .await;
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains(r.key.short()), "{logs}");
    assert!(
        !logs.contains(r.key.as_str()),
        "only the short key is logged: {logs}"
    );
}

#[tokio::test]
async fn a_payload_moved_to_another_row_does_not_decrypt() {
    let memory = Arc::new(MemoryStore::new());
    let store = EncryptedStore::new(Arc::clone(&memory), Key::generate());
    let victim = record(r#"{"d":{"role":"admin"}}"#);
    let attacker = record(r#"{"d":{"role":"guest"}}"#);
    assert_eq!(store.create(&victim).await.unwrap(), Cas::Applied);
    assert_eq!(store.create(&attacker).await.unwrap(), Cas::Applied);

    // Someone with write access to the table copies the victim's ciphertext
    // into their own row.
    let mut stolen = memory.load(&attacker.key).await.unwrap().unwrap();
    stolen.payload = memory.load(&victim.key).await.unwrap().unwrap().payload;
    stolen.version = 2;
    assert_eq!(memory.save(&stolen, 1).await.unwrap(), Cas::Applied);

    let logs = capture_logs(async {
        let loaded = store.load(&attacker.key).await.unwrap().unwrap();
        assert_eq!(loaded.payload, "");
    })
    .await;
    assert!(logs.contains("WARN"), "{logs}");
    assert_eq!(store.load(&victim.key).await.unwrap(), Some(victim));
}

#[tokio::test]
async fn plaintext_from_before_encryption_loads_empty() {
    let memory = Arc::new(MemoryStore::new());
    let r = record(r#"{"d":{"legacy":true}}"#);
    assert_eq!(memory.create(&r).await.unwrap(), Cas::Applied);
    let store = EncryptedStore::new(Arc::clone(&memory), Key::generate());
    assert_eq!(store.load(&r.key).await.unwrap().unwrap().payload, "");
}

#[tokio::test]
async fn rotation_reads_old_payloads_and_rewrites_with_the_new_key() {
    let memory = Arc::new(MemoryStore::new());
    let (old, new) = (Key::generate(), Key::generate());
    let before = EncryptedStore::new(Arc::clone(&memory), old.clone());
    let r = record(r#"{"d":{"n":1}}"#);
    assert_eq!(before.create(&r).await.unwrap(), Cas::Applied);

    let rotated = EncryptedStore::new(
        Arc::clone(&memory),
        Keys::new(new.clone()).with_previous(old),
    );
    let mut loaded = rotated.load(&r.key).await.unwrap().unwrap();
    assert_eq!(loaded, r);
    loaded.version = 2;
    assert_eq!(rotated.save(&loaded, 1).await.unwrap(), Cas::Applied);

    let only_new = EncryptedStore::new(Arc::clone(&memory), new);
    assert_eq!(
        only_new.load(&r.key).await.unwrap().unwrap().payload,
        r.payload
    );
    assert_eq!(
        before.load(&r.key).await.unwrap().unwrap().payload,
        "",
        "old key alone no longer reads it"
    );
}

#[tokio::test]
async fn debug_output_hides_the_keys() {
    let key = Key::generate();
    let store = EncryptedStore::new(MemoryStore::new(), key.clone());
    let text = format!("{store:?}");
    assert!(!text.contains(&key.to_base64()), "{text}");
    assert!(text.contains(&key.fingerprint()), "{text}");
    assert_eq!(store.kind(), "memory");
    assert!(store.client_side().is_none());
}
