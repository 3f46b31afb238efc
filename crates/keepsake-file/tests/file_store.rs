//! FileStore: the conformance kit, plus what only a filesystem store can get
//! wrong: torn writes, two stores and two processes on one directory, `gc`'s
//! treatment of files that are not sessions, permissions, bad directories.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keepsake_core::test_kit::{self, Options, record};
use keepsake_core::{Cas, Error, Record, SessionId, SessionStore, StorageKey, now};
use keepsake_file::FileStore;
use tempfile::TempDir;

fn store() -> (TempDir, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("sessions")).unwrap();
    (dir, store)
}

fn session_path(store: &FileStore, key: &StorageKey) -> PathBuf {
    store.path().join(&key.as_str()[..2]).join(key.as_str())
}

/// Every file under `dir`, recursively.
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

async fn increment(store: &FileStore, key: &StorageKey) {
    for _ in 0..100_000 {
        let mut current = store.load(key).await.unwrap().expect("record exists");
        let n: u64 = current.payload.parse().unwrap();
        current.payload = (n + 1).to_string();
        let expected = current.version;
        current.version += 1;
        if store.save(&current, expected).await.unwrap().is_applied() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("an increment never got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let mut dirs = Vec::new();
    test_kit::run_all(
        || {
            let (dir, store) = store();
            dirs.push(dir);
            async move { store }
        },
        Options::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_fsync() {
    let mut dirs = Vec::new();
    test_kit::run_all(
        || {
            let (dir, store) = store();
            dirs.push(dir);
            async move { store.with_sync(false) }
        },
        Options::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_directory_lose_no_update() {
    let (_dir, first) = store();
    let second = FileStore::new(first.path()).unwrap();
    let base = record("0");
    assert_eq!(first.create(&base).await.unwrap(), Cas::Applied);

    let (writers, each) = (8, 10);
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let key = base.key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                increment(&store, &key).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = second.load(&base.key).await.unwrap().unwrap();
    assert_eq!(last.payload, (writers * each).to_string());
    assert_eq!(last.version, 1 + i64::from(writers * each));
}

/// The environment variable that turns a test of this binary into a child
/// process: `<mode> <dir> <key> <count>`.
const CHILD: &str = "KEEPSAKE_FILE_TEST_CHILD";

fn spawn_child(test: &str, args: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, args)
        // The child's test harness reports on stdout; only its panics matter.
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test on its own: the body of the child processes of the tests below.
#[test]
fn child_process() {
    let Ok(args) = std::env::var(CHILD) else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let (mode, dir, key, count) = (args[0], args[1], args[2], args[3]);
    let key = StorageKey::parse(key).unwrap();
    let count: usize = count.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match mode {
            "cas" => {
                let store = FileStore::new(dir).unwrap();
                for _ in 0..count {
                    increment(&store, &key).await;
                }
            }
            "rewrite" => {
                // Large records; the parent kills this process in the middle
                // of some write (the fsync keeps a write in progress for a
                // good share of the time).
                let store = FileStore::new(dir).unwrap();
                for _ in 0..count {
                    let mut current = store.load(&key).await.unwrap().unwrap();
                    let expected = current.version;
                    current.version += 1;
                    current.payload = consistent_payload(current.version);
                    current.user_agent = Some(format!("writer {}", current.version));
                    assert!(store.save(&current, expected).await.unwrap().is_applied());
                }
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

/// A payload whose every byte can be checked against its version.
fn consistent_payload(version: i64) -> String {
    let unit = format!("[v{version}]");
    unit.repeat(300_000 / unit.len())
}

#[test]
fn two_processes_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = FileStore::new(&path).unwrap();
    let base = record("0");
    assert_eq!(runtime.block_on(store.create(&base)).unwrap(), Cas::Applied);

    let per_process = 150;
    let args = format!("cas {} {} {per_process}", path.display(), base.key);
    let children = [
        spawn_child("child_process", &args),
        spawn_child("child_process", &args),
    ];
    for mut child in children {
        assert!(child.wait().unwrap().success(), "child failed");
    }
    let last = runtime.block_on(store.load(&base.key)).unwrap().unwrap();
    assert_eq!(last.payload, (2 * per_process).to_string());
    assert_eq!(last.version, 1 + 2 * per_process as i64);
}

#[test]
fn a_writer_killed_mid_write_leaves_a_consistent_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = FileStore::new(&path).unwrap();
    let mut base = record(&consistent_payload(1));
    base.user_agent = Some("writer 1".into());
    assert_eq!(runtime.block_on(store.create(&base)).unwrap(), Cas::Applied);

    let shard = path.join(&base.key.as_str()[..2]);
    let temp_files = || {
        std::fs::read_dir(&shard)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count()
    };
    // Kill writers until at least two kills have landed in the middle of a
    // write (each leaves its temporary file behind), checking the record
    // after every kill.
    let mut kills = 0;
    for round in 0..100u64 {
        let args = format!("rewrite {} {} 1000000", path.display(), base.key);
        let mut child = spawn_child("child_process", &args);
        // Let it get going (a few versions further), then kill it after a
        // varying delay so the kill lands at different points of a write.
        let start_version = runtime
            .block_on(store.load(&base.key))
            .unwrap()
            .unwrap()
            .version;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let version = runtime
                .block_on(store.load(&base.key))
                .unwrap()
                .unwrap()
                .version;
            if version >= start_version + 3 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(300 * (round % 8)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;

        let loaded = runtime
            .block_on(store.load(&base.key))
            .unwrap()
            .expect("record survives");
        assert!(loaded.version > start_version, "the child made progress");
        assert_eq!(
            loaded.payload,
            consistent_payload(loaded.version),
            "payload matches version"
        );
        assert_eq!(
            loaded.user_agent,
            Some(format!("writer {}", loaded.version))
        );
        if temp_files() >= 2 {
            break;
        }
    }
    let torn = temp_files();
    eprintln!("{torn} of {kills} kills landed in the middle of a write");
    assert!(torn >= 1, "no kill interrupted a write in {kills} tries");
    // Whatever temporary files the kills left are not sessions: gc does not
    // count them (nor remove them yet: they are young).
    assert_eq!(runtime.block_on(store.gc(now())).unwrap(), 0);
    assert!(runtime.block_on(store.load(&base.key)).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_temporary_file_changes_nothing_and_is_collected_when_stale() {
    let (_dir, store) = store();
    let r = record(r#"{"d":{"v":1}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let shard = store.path().join(&r.key.as_str()[..2]);

    // A writer killed after writing half of the next version to its
    // temporary file.
    let full = std::fs::read(session_path(&store, &r.key)).unwrap();
    let fresh = shard.join(".tmp-0123456789abcdef");
    let stale = shard.join(".tmp-fedcba9876543210");
    std::fs::write(&fresh, &full[..full.len() / 2]).unwrap();
    std::fs::write(&stale, &full[..full.len() / 2]).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    assert_eq!(store.load(&r.key).await.unwrap(), Some(r.clone()));
    assert_eq!(
        store.gc(now()).await.unwrap(),
        0,
        "temporary files are not sessions"
    );
    assert!(
        fresh.exists(),
        "a young temporary file may be a write in progress"
    );
    assert!(!stale.exists(), "a stale temporary file is removed");
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_session_file_is_absent_replaceable_and_collected() {
    let (_dir, store) = store();
    let mut r = record(r#"{"d":{"v":"torn"}}"#);
    r.user_id = Some("torn-user".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let path = session_path(&store, &r.key);
    let full = std::fs::read(&path).unwrap();

    for len in [0, 5, full.len() / 2, full.len() - 1] {
        std::fs::write(&path, &full[..len]).unwrap();
        assert_eq!(store.load(&r.key).await.unwrap(), None, "torn at {len}");
        let mut next = r.clone();
        next.version = 2;
        assert_eq!(
            store.save(&next, 1).await.unwrap(),
            Cas::Conflict,
            "no save over a torn file"
        );
        assert_eq!(
            store.touch(&r.key, 1, now(), now() + 10).await.unwrap(),
            Cas::Conflict,
            "no touch of a torn file"
        );
        assert!(store.list_for_user("torn-user").await.unwrap().is_empty());
    }
    // A new session may take its place.
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r.clone()));

    // And gc removes a torn file even though it cannot know its expiry.
    std::fs::write(&path, b"keepsake-session 1\n{\"version\":1,").unwrap();
    assert_eq!(store.gc(now()).await.unwrap(), 1);
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_left_alone() {
    let (_dir, store) = store();
    let r = record("{}");
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let path = session_path(&store, &r.key);
    std::fs::write(&path, b"keepsake-session 2\nsomething new\n").unwrap();
    assert_eq!(store.load(&r.key).await.unwrap(), None);
    assert_eq!(
        store.create(&r).await.unwrap(),
        Cas::Conflict,
        "never overwritten"
    );
    assert_eq!(store.gc(now() + 1_000_000).await.unwrap(), 0);
    assert!(path.exists());
    store.destroy(&r.key).await.unwrap();
    assert!(!path.exists(), "destroy still removes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_touches_only_expired_sessions() {
    let (_dir, store) = store();
    let live = record("{}");
    assert_eq!(store.create(&live).await.unwrap(), Cas::Applied);
    let mut expired = Vec::new();
    for i in 0..20 {
        let mut r = record("{}");
        r.expires_at = now() - 1 - i;
        r.user_id = Some("gc-owner".into());
        assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
        expired.push(r);
    }
    let shard = store.path().join(&live.key.as_str()[..2]);
    let upper = live.key.as_str().to_uppercase();
    let foreign = [
        store.path().join("README"),
        store.path().join("zz-not-a-shard"),
        shard.join("notes.txt"),
        shard.join(upper),
        shard.join(format!("{}.bak", live.key)),
        shard.join(&live.key.as_str()[..63]),
    ];
    for path in &foreign {
        std::fs::write(path, b"not a session").unwrap();
    }
    let hex_dir = shard.join("a".repeat(64));
    std::fs::create_dir(&hex_dir).unwrap();

    assert_eq!(store.gc(now()).await.unwrap(), 20);
    assert_eq!(store.gc(now()).await.unwrap(), 0);
    for path in &foreign {
        assert!(path.exists(), "{} must survive gc", path.display());
    }
    assert!(hex_dir.is_dir());
    assert!(shard.join(".lock").exists(), "lock files survive");
    assert!(store.load(&live.key).await.unwrap().is_some());
    for r in &expired {
        assert!(!session_path(&store, &r.key).exists());
    }
    assert!(
        !store.path().join("users").read_dir().unwrap().any(|e| {
            let dir = e.unwrap().path();
            dir.read_dir().unwrap().next().is_some()
        }),
        "the expired sessions' index entries are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_never_become_paths() {
    let (_dir, store) = store();
    let user = "../../etc/passwd\0\n/ ✓";
    let mut r = record("{}");
    r.user_id = Some(user.into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.list_for_user(user).await.unwrap(), vec![r.info()]);
    for path in all_files(store.path()) {
        let relative = path.strip_prefix(store.path()).unwrap();
        for part in relative.components() {
            let name = part.as_os_str().to_str().unwrap();
            assert!(
                name == "users"
                    || name == ".lock"
                    || name
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "unexpected path component {name:?}"
            );
        }
    }
    assert_eq!(store.destroy_for_user(user, None).await.unwrap(), 1);
    assert!(store.load(&r.key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_index_entries_are_ignored_and_dropped() {
    let (_dir, store) = store();
    let mut r = record("{}");
    r.user_id = Some("alice".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    // A crash after the index entry was written but before the session file.
    let ghost = SessionId::generate().storage_key();
    let alice_dir = all_files(&store.path().join("users"))[0]
        .parent()
        .unwrap()
        .to_owned();
    std::fs::write(alice_dir.join(ghost.as_str()), b"").unwrap();

    assert_eq!(store.list_for_user("alice").await.unwrap(), vec![r.info()]);
    assert!(
        !alice_dir.join(ghost.as_str()).exists(),
        "the stale entry is dropped"
    );
    assert_eq!(
        store.destroy_for_user("alice", Some(&r.key)).await.unwrap(),
        0
    );
    assert!(store.load(&r.key).await.unwrap().is_some());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_are_0700_and_files_0600() {
    use std::os::unix::fs::PermissionsExt as _;

    let (_dir, store) = store();
    let mut r = record("{}");
    r.user_id = Some("perm-user".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.path()), 0o700);
    assert_eq!(mode(&store.path().join(&r.key.as_str()[..2])), 0o700);
    assert_eq!(mode(&store.path().join("users")), 0o700);
    let files = all_files(store.path());
    assert_eq!(files.len(), 3, "session, lock, index entry: {files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_bad_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for bad in [file.clone(), file.join("below")] {
        let error = FileStore::new(&bad).unwrap_err();
        assert!(matches!(
            error,
            Error::Backend {
                store: "file",
                operation: "open",
                ..
            }
        ));
        let report = keepsake_core::Report(&error).to_string();
        assert!(report.contains(&bad.display().to_string()), "{report}");
        assert!(report.contains("os error"), "the cause is kept: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_survives_reopening() {
    let (dir, store) = store();
    let mut r: Record = record(r#"{"d":{"kept":true}}"#);
    r.ip_address = Some("192.0.2.1".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    drop(store);
    let reopened = FileStore::new(dir.path().join("sessions")).unwrap();
    assert_eq!(reopened.load(&r.key).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_key_admit_one() {
    let (_dir, first) = store();
    let second = Arc::new(FileStore::new(first.path()).unwrap());
    let first = Arc::new(first);
    let key = SessionId::generate().storage_key();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            Arc::clone(&first)
        } else {
            Arc::clone(&second)
        };
        let mut r = record(&format!("{{\"d\":{{\"writer\":{i}}}}}"));
        r.key = key.clone();
        tasks.push(tokio::spawn(async move { store.create(&r).await.unwrap() }));
    }
    let mut applied = 0;
    for task in tasks {
        if task.await.unwrap().is_applied() {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
}

/// What `tracing` logs anywhere in this test binary (the store logs from
/// the blocking pool's threads, so a thread-local subscriber would miss it).
fn global_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    use std::sync::{Mutex, OnceLock};
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Writer(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Writer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Writer(logs))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

fn logged_warning_for(key: &StorageKey) -> bool {
    let logs = String::from_utf8_lossy(&global_logs().lock().unwrap()).into_owned();
    logs.lines()
        .any(|line| line.contains("WARN") && line.contains(key.short()) && line.contains("index"))
}

/// Puts a file where the per-user index directory belongs, so that no index
/// entry can be written or removed (root or not: no permission trick).
fn break_index(store: &FileStore) {
    let users = store.path().join("users");
    if users.is_dir() {
        std::fs::remove_dir_all(&users).unwrap();
    }
    std::fs::write(&users, b"not a directory").unwrap();
}

fn repair_index(store: &FileStore) {
    std::fs::remove_file(store.path().join("users")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_failure_does_not_fail_a_write_that_succeeded() {
    global_logs();
    let (_dir, store) = store();
    break_index(&store);

    // create: the session is stored although its index entry is not.
    let mut r = record(r#"{"d":{"n":1}}"#);
    r.user_id = Some("alice".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(r.clone()));
    assert!(logged_warning_for(&r.key), "the index failure is logged");

    // save with a change of owner: neither the new entry nor the removal
    // of the old one can happen; the data is stored all the same.
    repair_index(&store);
    let mut next = r.clone();
    next.version = 2;
    assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Applied);
    assert_eq!(
        store.list_for_user("alice").await.unwrap(),
        vec![next.info()]
    );
    break_index(&store);
    next.version = 3;
    next.user_id = Some("bob".into());
    next.payload = r#"{"d":{"n":3}}"#.into();
    assert_eq!(store.save(&next, 2).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(next.clone()));

    // destroy: the session goes even though its entry cannot be removed.
    let mut other = record("{}");
    other.user_id = Some("carol".into());
    assert_eq!(store.create(&other).await.unwrap(), Cas::Applied);
    store.destroy(&other.key).await.unwrap();
    assert_eq!(store.load(&other.key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_entry_is_written_again_by_the_next_save() {
    let (_dir, store) = store();
    break_index(&store);
    let mut r = record("{}");
    r.user_id = Some("alice".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    repair_index(&store);
    // Until the next save the index does not know the session.
    assert_eq!(store.list_for_user("alice").await.unwrap(), vec![]);

    let mut next = r.clone();
    next.version = 2;
    assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Applied);
    assert_eq!(
        store.list_for_user("alice").await.unwrap(),
        vec![next.info()]
    );
    assert_eq!(store.destroy_for_user("alice", None).await.unwrap(), 1);
    assert_eq!(store.load(&r.key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_left_by_a_failed_removal_is_dropped_by_the_next_listing() {
    let (_dir, store) = store();
    let mut r = record("{}");
    r.user_id = Some("alice".into());
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    // Make alice's entry unremovable: a non-empty directory in its place.
    let entry = all_files(&store.path().join("users"))[0].clone();
    std::fs::remove_file(&entry).unwrap();
    std::fs::create_dir(&entry).unwrap();
    std::fs::write(entry.join("x"), b"").unwrap();

    let mut next = r.clone();
    next.version = 2;
    next.user_id = Some("bob".into());
    assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Applied);
    assert_eq!(store.list_for_user("bob").await.unwrap(), vec![next.info()]);
    assert_eq!(store.list_for_user("alice").await.unwrap(), vec![]);
    assert_eq!(store.destroy_for_user("alice", None).await.unwrap(), 0);
    assert_eq!(store.load(&r.key).await.unwrap(), Some(next));
}
