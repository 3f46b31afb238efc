//! End to end: the built `keepsake` binary against real stores. Each test
//! seeds sessions through the store API, runs the command with the
//! environment an application would have, and checks its output, its exit
//! status and what is left in the store. Every test has its own directory,
//! table or key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use keepsake_core::test_kit::{record, server_url};
use keepsake_core::{Record, SessionId, SessionStore, StorageKey, now};
use serde_json::Value;
use tempfile::TempDir;

/// A unique suffix for table names and key prefixes.
fn unique() -> String {
    SessionId::generate().storage_key().short().to_owned()
}

/// Runs `keepsake args…` in `dir` with exactly `vars` as its environment
/// (nothing inherited, so the developer's own SESSION_* cannot interfere).
async fn keepsake(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keepsake"));
    command.env_clear().current_dir(dir).args(args);
    for (name, value) in vars {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

#[track_caller]
fn assert_exit(output: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    assert!(
        stderr(output).contains(stderr_has),
        "stderr lacks {stderr_has:?}: {}",
        stderr(output)
    );
}

/// A session with a payload of `size` bytes.
fn session(user: Option<&str>, size: usize, expires_in: i64) -> Record {
    let mut record = record(&"x".repeat(size));
    record.user_id = user.map(str::to_owned);
    record.expires_at = now() + expires_in;
    record
}

/// One backend under test: how the binary reaches it, and a store of the
/// test's own on the same data.
struct Backend {
    vars: Vec<(String, String)>,
    store: Arc<dyn SessionStore>,
    /// Redis cannot hold an expired session: it removes it at once.
    self_expiring: bool,
}

impl Backend {
    fn vars(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

async fn stats(dir: &Path, backend: &Backend) -> Value {
    let output = keepsake(dir, &backend.vars(), &["stats", "--json"]).await;
    serde_json::from_str(&assert_ok(&output)).expect("stats --json prints JSON")
}

/// The whole life of a deployment's sessions, through the CLI.
async fn scenario(dir: &Path, backend: &Backend) {
    let vars = backend.vars();
    assert_ok(&keepsake(dir, &vars, &["migrate"]).await);
    // Idempotent: every deploy may run it.
    assert_ok(&keepsake(dir, &vars, &["migrate"]).await);

    let store = &backend.store;
    let kept = session(Some("alice"), 10, 3600);
    let live = [
        kept.clone(),
        session(Some("alice"), 20, 3600),
        session(Some("alice"), 30, 3600),
        session(Some("bob"), 40, 3600),
        session(None, 50, 3600),
    ];
    for record in &live {
        assert!(store.create(record).await.unwrap().is_applied());
    }
    let expired = [session(Some("alice"), 5, -60), session(None, 5, -1)];
    if !backend.self_expiring {
        for record in &expired {
            assert!(store.create(record).await.unwrap().is_applied());
        }
    }
    let expired_count = if backend.self_expiring { 0 } else { 2 };

    let before = stats(dir, backend).await;
    assert_eq!(before["active"], 5, "{before}");
    assert_eq!(before["expired"], expired_count, "{before}");
    assert_eq!(before["with_user"], 4, "{before}");
    assert_eq!(before["users"], 2, "{before}");
    assert_eq!(before["unreadable"], 0, "{before}");
    assert_eq!(
        before["payload_bytes"],
        serde_json::json!({"p50": 30, "p90": 50, "p99": 50, "max": 50}),
        "{before}"
    );
    let newest = before["newest_activity"].as_i64().unwrap();
    assert!((now() - 5..=now()).contains(&newest), "{before}");
    // The table, for people.
    let table = assert_ok(&keepsake(dir, &vars, &["stats"]).await);
    assert!(table.contains("live sessions    5"), "{table}");

    let pruned = keepsake(dir, &vars, &["prune"]).await;
    assert_eq!(
        assert_ok(&pruned).trim(),
        format!("pruned {expired_count} expired sessions")
    );
    let after = stats(dir, backend).await;
    assert_eq!(after["active"], 5, "{after}");
    assert_eq!(after["expired"], 0, "{after}");

    let bad = keepsake(
        dir,
        &vars,
        &["revoke", "--user", "alice", "--except", "abc"],
    )
    .await;
    assert_exit(&bad, 2, "64 lowercase hex");
    let revoked = keepsake(
        dir,
        &vars,
        &["revoke", "--user", "alice", "--except", kept.key.as_str()],
    )
    .await;
    assert_eq!(
        assert_ok(&revoked).trim(),
        "revoked 2 sessions of user alice (one kept)"
    );
    let alice: Vec<StorageKey> = store
        .list_for_user("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(alice, std::slice::from_ref(&kept.key));
    assert_eq!(store.list_for_user("bob").await.unwrap().len(), 1);
    let all = keepsake(dir, &vars, &["revoke", "--user", "bob"]).await;
    assert_eq!(assert_ok(&all).trim(), "revoked 1 sessions of user bob");
    assert!(store.list_for_user("bob").await.unwrap().is_empty());
    let last = stats(dir, backend).await;
    assert_eq!(last["active"], 2, "{last}");
    assert_eq!(last["users"], 1, "{last}");

    // Leave nothing behind.
    for record in live.iter().chain(&expired) {
        store.destroy(&record.key).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_end_to_end() {
    let dir = TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let store = keepsake_sqlx::SqliteStore::connect(&url)
        .await
        .unwrap()
        .with_table_name("web_sessions")
        .unwrap();
    let backend = Backend {
        vars: vec![
            ("SESSION_DRIVER".into(), "sqlite".into()),
            ("DATABASE_URL".into(), url.clone()),
            ("SESSION_TABLE".into(), "web_sessions".into()),
        ],
        store: Arc::new(store),
        self_expiring: false,
    };
    scenario(dir.path(), &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_end_to_end() {
    let Some(url) = server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
        return;
    };
    let table = format!("kscli_{}", unique());
    let store = keepsake_sqlx::PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_table_name(&table)
        .unwrap();
    let dir = TempDir::new().unwrap();
    let backend = Backend {
        vars: vec![
            ("SESSION_DRIVER".into(), "postgres".into()),
            ("SESSION_CONNECTION".into(), url.clone()),
            ("SESSION_TABLE".into(), table.clone()),
        ],
        store: Arc::new(store.clone()),
        self_expiring: false,
    };
    scenario(dir.path(), &backend).await;
    keepsake_sqlx::sqlx::query(&format!("DROP TABLE \"{table}\""))
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_end_to_end() {
    let Some(url) = server_url("KEEPSAKE_TEST_MYSQL_URL") else {
        return;
    };
    let table = format!("kscli_{}", unique());
    let store = keepsake_sqlx::MySqlStore::connect(&url)
        .await
        .unwrap()
        .with_table_name(&table)
        .unwrap();
    let dir = TempDir::new().unwrap();
    let backend = Backend {
        vars: vec![
            ("SESSION_DRIVER".into(), "mariadb".into()),
            ("DATABASE_URL".into(), url.clone()),
            ("SESSION_TABLE".into(), table.clone()),
        ],
        store: Arc::new(store.clone()),
        self_expiring: false,
    };
    scenario(dir.path(), &backend).await;
    keepsake_sqlx::sqlx::query(&format!("DROP TABLE `{table}`"))
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_end_to_end() {
    let dir = TempDir::new().unwrap();
    let sessions = dir.path().join("storage").join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let store = keepsake_file::FileStore::new(&sessions).unwrap();
    let backend = Backend {
        vars: vec![
            ("SESSION_DRIVER".into(), "file".into()),
            ("SESSION_FILES".into(), sessions.display().to_string()),
        ],
        store: Arc::new(store),
        self_expiring: false,
    };
    scenario(dir.path(), &backend).await;
    // A damaged file is reported, not fatal.
    let damaged = session(None, 3, 3600);
    assert!(backend.store.create(&damaged).await.unwrap().is_applied());
    let path = sessions
        .join(&damaged.key.as_str()[..2])
        .join(damaged.key.as_str());
    std::fs::write(&path, "not a session").unwrap();
    let report = stats(dir.path(), &backend).await;
    assert_eq!(report["unreadable"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_end_to_end() {
    let Some(url) = server_url("KEEPSAKE_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("kscli-{}:", unique());
    let store = keepsake_redis::RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(prefix.clone());
    let dir = TempDir::new().unwrap();
    let backend = Backend {
        vars: vec![
            ("SESSION_DRIVER".into(), "redis".into()),
            ("SESSION_REDIS_URL".into(), url.clone()),
            ("SESSION_PREFIX".into(), prefix.clone()),
        ],
        store: Arc::new(store),
        self_expiring: true,
    };
    scenario(dir.path(), &backend).await;
    // Keys of another store whose prefix extends this one are not sessions of this one.
    let other = keepsake_redis::RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(format!("{prefix}other:"));
    let foreign = session(None, 1, 3600);
    assert!(other.create(&foreign).await.unwrap().is_applied());
    let report = stats(dir.path(), &backend).await;
    // The scenario destroyed its own sessions.
    assert_eq!(report["active"], 0, "{report}");
    // Under the prefix but not a session key of it: reported, not counted.
    assert_eq!(report["unreadable"], 1, "{report}");
    other.destroy(&foreign.key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_stats_scan_every_master() {
    // Set by CI when it starts its Redis Cluster (`.ci/redis-cluster.sh`).
    let Some(urls) = server_url("KEEPSAKE_TEST_REDIS_CLUSTER_URLS") else {
        return;
    };
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    let prefix = format!("kscli-{}:", unique());
    let store = keepsake_redis::RedisStore::connect_cluster(&nodes)
        .await
        .unwrap()
        .with_prefix(prefix.clone());
    // Enough sessions that every master holds some.
    let records: Vec<Record> = (0..30)
        .map(|i| session(Some(if i % 2 == 0 { "ann" } else { "ben" }), 10 + i, 3600))
        .collect();
    for record in &records {
        assert!(store.create(record).await.unwrap().is_applied());
    }
    let dir = TempDir::new().unwrap();
    let vars = [
        ("SESSION_DRIVER", "redis-cluster"),
        ("SESSION_REDIS_URL", urls.as_str()),
        ("SESSION_PREFIX", prefix.as_str()),
    ];
    let output = keepsake(dir.path(), &vars, &["stats", "--json"]).await;
    let report: Value = serde_json::from_str(&assert_ok(&output)).unwrap();
    assert_eq!(report["active"], 30, "{report}");
    assert_eq!(report["users"], 2, "{report}");
    let output = keepsake(dir.path(), &vars, &["revoke", "--user", "ann"]).await;
    assert_eq!(assert_ok(&output).trim(), "revoked 15 sessions of user ann");
    for record in &records {
        store.destroy(&record.key).await.unwrap();
    }
}

#[tokio::test]
async fn configuration_errors_exit_with_2() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    assert_exit(&keepsake(d, &[], &["prune"]).await, 2, "SESSION_DRIVER");
    let unknown = keepsake(d, &[("SESSION_DRIVER", "mongodb")], &["prune"]).await;
    assert_exit(&unknown, 2, "SESSION_DRIVER");
    assert_exit(&unknown, 2, "mongodb");
    let no_url = keepsake(d, &[("SESSION_DRIVER", "postgres")], &["stats"]).await;
    assert_exit(&no_url, 2, "DATABASE_URL");
    let no_dir = keepsake(d, &[("SESSION_DRIVER", "file")], &["prune"]).await;
    assert_exit(&no_dir, 2, "SESSION_FILES");
    let memory = keepsake(d, &[("SESSION_DRIVER", "memory")], &["prune"]).await;
    assert_exit(&memory, 2, "memory");
    let missing_dir = keepsake(d, &[], &["--driver", "file", "--dir", "nowhere", "stats"]).await;
    assert_exit(&missing_dir, 2, "does not exist");
    assert!(
        !d.join("nowhere").exists(),
        "a typo must not create a directory"
    );
    let missing_db = keepsake(
        d,
        &[
            ("SESSION_DRIVER", "sqlite"),
            ("DATABASE_URL", "sqlite://typo.db"),
        ],
        &["prune"],
    )
    .await;
    assert_exit(&missing_db, 2, "typo.db");
    assert!(
        !d.join("typo.db").exists(),
        "a typo must not create a database"
    );
    let bad_table = keepsake(
        d,
        &[
            ("SESSION_DRIVER", "sqlite"),
            ("DATABASE_URL", "sqlite://t.db"),
        ],
        &["--table", "drop table x;", "migrate"],
    )
    .await;
    assert_exit(&bad_table, 2, "table");
    // clap's own usage errors.
    assert_exit(&keepsake(d, &[], &["frobnicate"]).await, 2, "frobnicate");
    assert_exit(
        &keepsake(d, &[("SESSION_DRIVER", "sqlite")], &["revoke"]).await,
        2,
        "--user",
    );
    let missing_env_file = keepsake(d, &[], &["--env-file", "absent.env", "prune"]).await;
    assert_exit(&missing_env_file, 2, "absent.env");
}

#[tokio::test]
async fn unsupported_operations_exit_with_2() {
    // memcached has no per-user index and cannot list its keys.
    let Some(url) = server_url("KEEPSAKE_TEST_MEMCACHED_URL") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let vars = [
        ("SESSION_DRIVER", "memcached"),
        ("SESSION_MEMCACHED_SERVERS", url.as_str()),
    ];
    let revoke = keepsake(dir.path(), &vars, &["revoke", "--user", "x"]).await;
    assert_exit(&revoke, 2, "does not support");
    let stats = keepsake(dir.path(), &vars, &["stats"]).await;
    assert_exit(&stats, 2, "memcached");
    let prune = keepsake(dir.path(), &vars, &["prune"]).await;
    assert_eq!(assert_ok(&prune).trim(), "pruned 0 expired sessions");
}

#[tokio::test]
async fn servers_that_refuse_exit_with_1() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    for (driver, url) in [
        ("postgres", "postgres://postgres@127.0.0.1:1/test"),
        ("mysql", "mysql://root@127.0.0.1:1/test"),
        ("redis", "redis://127.0.0.1:1"),
    ] {
        let output = keepsake(d, &[], &["--driver", driver, "--url", url, "prune"]).await;
        assert_exit(&output, 1, "127.0.0.1:1");
        assert!(
            stderr(&output).to_lowercase().contains("refused"),
            "{driver}: {}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn a_missing_table_is_a_runtime_error_with_a_hint() {
    let dir = TempDir::new().unwrap();
    let vars = [
        ("SESSION_DRIVER", "sqlite"),
        ("DATABASE_URL", "sqlite://app.db"),
    ];
    assert_ok(&keepsake(dir.path(), &vars, &["migrate"]).await);
    let output = keepsake(dir.path(), &vars, &["--table", "other", "stats"]).await;
    assert_exit(&output, 1, "keepsake migrate");
}

#[tokio::test]
async fn dotenv_is_read_and_flags_and_the_environment_win() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join(".env"),
        "SESSION_DRIVER=sqlite\nSESSION_CONNECTION=sqlite://from-dotenv.db\n",
    )
    .unwrap();
    let output = keepsake(d, &[], &["migrate"]).await;
    assert!(assert_ok(&output).contains("migrated table sessions"));
    assert!(d.join("from-dotenv.db").exists());
    // The real environment wins over .env …
    let output = keepsake(
        d,
        &[("SESSION_CONNECTION", "sqlite://from-env.db")],
        &["migrate"],
    )
    .await;
    assert_ok(&output);
    assert!(d.join("from-env.db").exists());
    // … and flags over both.
    let output = keepsake(
        d,
        &[("SESSION_DRIVER", "nonsense")],
        &[
            "--driver",
            "sqlite",
            "--url",
            "sqlite://from-flag.db",
            "migrate",
        ],
    )
    .await;
    assert_ok(&output);
    assert!(d.join("from-flag.db").exists());
    // --env-file instead of .env.
    std::fs::write(
        d.join("ops.env"),
        "SESSION_DRIVER=file\nSESSION_FILES=files\n",
    )
    .unwrap();
    let output = keepsake(d, &[], &["--env-file", "ops.env", "migrate"]).await;
    assert_ok(&output);
    assert!(d.join("files").is_dir());
}

#[tokio::test]
async fn help_documents_every_command_and_the_exit_status() {
    let dir = TempDir::new().unwrap();
    let help = assert_ok(&keepsake(dir.path(), &[], &["--help"]).await);
    for needle in [
        "migrate",
        "prune",
        "stats",
        "revoke",
        "SESSION_DRIVER",
        "Exit status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    for command in ["migrate", "prune", "stats", "revoke"] {
        let help = assert_ok(&keepsake(dir.path(), &[], &[command, "--help"]).await);
        assert!(help.contains("Usage: keepsake"), "{command}: {help}");
    }
}

#[tokio::test]
async fn a_long_prune_without_a_terminal_prints_plain_lines() {
    let dir = TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("big.db").display());
    let store = keepsake_sqlx::SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    for _ in 0..250 {
        assert!(
            store
                .create(&session(None, 1, -10))
                .await
                .unwrap()
                .is_applied()
        );
    }
    let vars = [("SESSION_DRIVER", "sqlite"), ("DATABASE_URL", url.as_str())];
    let output = keepsake(dir.path(), &vars, &["prune", "--batch-size", "7"]).await;
    assert_eq!(assert_ok(&output).trim(), "pruned 250 expired sessions");
    // No terminal: no bar, no escape sequences.
    assert!(!stderr(&output).contains('\u{1b}'), "{}", stderr(&output));
    let quiet = keepsake(dir.path(), &vars, &["prune", "--quiet"]).await;
    assert_eq!(assert_ok(&quiet).trim(), "pruned 0 expired sessions");
    assert_eq!(stderr(&quiet), "");
}
