//! The layer suite end to end on SQLite (file and `:memory:`), PostgreSQL and
//! MariaDB, each test on its own table.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use keepsake::SessionStore;
use keepsake_core::test_kit::server_url;

fn table() -> String {
    format!(
        "e2e_{}",
        &keepsake::SessionId::generate().storage_key().as_str()[..12]
    )
}

/// Runs the layer suite on `$store` at `$url`, every app instance on one
/// fresh table of its own.
macro_rules! sql_suite {
    ($store:ty, $url:expr) => {{
        let (url, table) = ($url, table());
        common::suite::run_suite(|| {
            let (url, table) = (url.clone(), table.clone());
            async move {
                let store = <$store>::connect(&url)
                    .await
                    .unwrap()
                    .with_table_name(&table)
                    .unwrap();
                store.migrate().await.unwrap();
                Arc::new(store) as Arc<dyn SessionStore>
            }
        })
        .await;
    }};
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sessions.db").display()
    );
    sql_suite!(keepsake::SqliteStore, url);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory() {
    let store = keepsake::SqliteStore::connect("sqlite::memory:")
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(store);
    common::suite::run_suite(|| {
        let store = Arc::clone(&store);
        async move { store }
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    let Some(url) = server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
        return;
    };
    sql_suite!(keepsake::PostgresStore, url);
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb() {
    let Some(url) = server_url("KEEPSAKE_TEST_MYSQL_URL") else {
        return;
    };
    sql_suite!(keepsake::MySqlStore, url);
}
