//! Helpers shared by the backend tests.

#![allow(dead_code, unreachable_pub)]

use keepsake_core::{Cas, Record, SessionStore};

/// A table (or schema) name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    let key = keepsake_core::SessionId::generate().storage_key();
    format!("{prefix}_{}", &key.as_str()[..12])
}

/// 8 writers × 50 load–increment–save loops on one record; returns the
/// final counter, which must be 400.
pub async fn concurrent_increments<S: SessionStore>(store: std::sync::Arc<S>) -> u64 {
    let base = keepsake_core::test_kit::record("0");
    assert_eq!(store.create(&base).await.unwrap(), Cas::Applied);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = std::sync::Arc::clone(&store);
        let key = base.key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                loop {
                    let mut current: Record = store.load(&key).await.unwrap().unwrap();
                    let n: u64 = current.payload.parse().unwrap();
                    current.payload = (n + 1).to_string();
                    let expected = current.version;
                    current.version += 1;
                    if store.save(&current, expected).await.unwrap().is_applied() {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = store.load(&base.key).await.unwrap().unwrap();
    assert_eq!(last.version, 401);
    last.payload.parse().unwrap()
}

/// Creates `expired` expired and `live` live records (every third with a
/// user), for gc tests.
pub async fn fill(store: &impl SessionStore, expired: usize, live: usize) {
    let now = keepsake_core::now();
    for i in 0..expired + live {
        let mut r = keepsake_core::test_kit::record(r#"{"d":{}}"#);
        if i < expired {
            r.expires_at = now - 10;
        }
        if i % 3 == 0 {
            r.user_id = Some("gc-user".into());
        }
        assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);
    }
}

/// The schema of keepsake 0.1's first migration, before the leaner indexes:
/// `{t}` is the table name, quoted by the caller's dialect where needed.
pub fn schema_before_leaner_indexes(dialect: &str, t: &str) -> Vec<String> {
    match dialect {
        "mysql" => vec![format!(
            "CREATE TABLE `{t}` (
                id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                user_id VARCHAR(255) NULL, ip_address VARCHAR(45) NULL, user_agent TEXT NULL,
                payload LONGTEXT NOT NULL, last_activity BIGINT NOT NULL,
                expires_at BIGINT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (id),
                INDEX `{t}_expires_at_idx` (expires_at),
                INDEX `{t}_last_activity_idx` (last_activity),
                INDEX `{t}_user_id_idx` (user_id)
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        )],
        _ => {
            let int = if dialect == "postgres" {
                "bigint"
            } else {
                "INTEGER"
            };
            vec![
                format!(
                    "CREATE TABLE \"{t}\" (id varchar(64) PRIMARY KEY NOT NULL, user_id text NULL,
                     ip_address varchar(45) NULL, user_agent text NULL, payload text NOT NULL,
                     last_activity {int} NOT NULL, expires_at {int} NOT NULL, version {int} NOT NULL)"
                ),
                format!("CREATE INDEX \"{t}_expires_at_idx\" ON \"{t}\" (expires_at)"),
                format!("CREATE INDEX \"{t}_last_activity_idx\" ON \"{t}\" (last_activity)"),
                format!("CREATE INDEX \"{t}_user_id_idx\" ON \"{t}\" (user_id)"),
            ]
        }
    }
}

/// Stores sessions through `store` on a table made by the old schema, runs
/// `migrate()` (twice: it must stay idempotent), and checks that every
/// session still loads, with its user index working.
pub async fn sessions_survive_the_upgrade<S: SessionStore>(
    store: &S,
    migrate: impl AsyncFn() -> keepsake_core::Result<()>,
) {
    let mut records = Vec::new();
    for i in 0..20 {
        let mut record = keepsake_core::test_kit::record(&format!(r#"{{"d":{{"n":{i}}}}}"#));
        record.user_id = (i % 4 == 0).then(|| "upgrade-user".to_owned());
        record.ip_address = Some("203.0.113.7".to_owned());
        assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
        records.push(record);
    }
    migrate().await.unwrap();
    migrate().await.unwrap();
    for record in &records {
        assert_eq!(
            store.load(&record.key).await.unwrap().as_ref(),
            Some(record)
        );
    }
    assert_eq!(store.list_for_user("upgrade-user").await.unwrap().len(), 5);
    // Writes keep working on the upgraded table.
    let mut changed = records[1].clone();
    changed.version += 1;
    changed.payload = r#"{"d":{"n":"changed"}}"#.to_owned();
    assert!(
        store
            .save(&changed, records[1].version)
            .await
            .unwrap()
            .is_applied()
    );
    assert_eq!(store.load(&changed.key).await.unwrap(), Some(changed));
}
