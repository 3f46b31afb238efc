//! Losing Redis mid-flight: requests fail quickly with a backend error, and
//! the store recovers by itself once Redis is back.
//!
//! The test runs its own `redis-server` on a free loopback port (set
//! `KEEPSAKE_TEST_REDIS_SERVER` to use another binary), kills it, and starts
//! it again on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_core::test_kit::record;
use keepsake_core::{Cas, Error, SessionStore};
use keepsake_redis::RedisStore;
use keepsake_redis::redis;

/// A `redis-server` child process, killed on drop.
struct Server {
    child: Child,
}

impl Server {
    /// Starts a server on `port`, or `None` when the binary is not installed
    /// (a failure under CI).
    fn start(binary: &str, port: u16) -> Option<Self> {
        let spawned = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => Some(Self { child }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                    "`{binary}` is not installed, and under CI the outage test must run"
                );
                eprintln!("skipped: `{binary}` is not installed");
                None
            }
            Err(e) => panic!("could not start `{binary}`: {e}"),
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// Waits until the server on `url` answers PING.
async fn wait_ready(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn outage_fails_fast_and_recovers() {
    let binary =
        std::env::var("KEEPSAKE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let Some(server) = Server::start(&binary, port) else {
        return;
    };
    wait_ready(&url).await;

    let store = RedisStore::connect(&url).await.expect("connect");
    let before = record(r#"{"d":{"before":"outage"}}"#);
    assert_eq!(store.create(&before).await.unwrap(), Cas::Applied);
    assert!(store.load(&before.key).await.unwrap().is_some());

    server.kill();

    // Every kind of request fails cleanly, with the cause, and quickly.
    for attempt in 0..3 {
        let started = Instant::now();
        let outcome = store.load(&before.key).await;
        let elapsed = started.elapsed();
        match outcome {
            Err(Error::Backend {
                store: "redis",
                operation: "load",
                source,
            }) => {
                assert!(!source.to_string().is_empty(), "the driver's error is kept");
            }
            other => {
                panic!("load #{attempt} during the outage: expected a backend error, got {other:?}")
            }
        }
        eprintln!("load #{attempt} during the outage failed after {elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(3),
            "load #{attempt} took {elapsed:?}"
        );
    }
    let started = Instant::now();
    let during = record(r#"{"d":{}}"#);
    assert!(matches!(
        store.create(&during).await,
        Err(Error::Backend {
            operation: "create",
            ..
        })
    ));
    assert!(matches!(
        store.save(&during, 1).await,
        Err(Error::Backend {
            operation: "save",
            ..
        })
    ));
    assert!(matches!(
        store.list_for_user("someone").await,
        Err(Error::Backend {
            operation: "list_for_user",
            ..
        })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "took {:?}",
        started.elapsed()
    );

    // Back on the same port: the same store works again, no restart needed.
    let _server = Server::start(&binary, port).expect("restart redis-server");
    wait_ready(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = 0;
    loop {
        match store.load(&before.key).await {
            // Persistence is off, so the old session is gone.
            Ok(loaded) => {
                assert_eq!(loaded, None);
                break;
            }
            Err(e) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "the store did not recover: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("recovered after {failures} failed request(s)");
    let after = record(r#"{"d":{"after":"outage"}}"#);
    assert_eq!(store.create(&after).await.unwrap(), Cas::Applied);
    assert_eq!(store.load(&after.key).await.unwrap(), Some(after));
}

/// A server that accepts nothing and answers nothing (stopped, as behind a
/// network partition) makes requests time out instead of hanging.
#[cfg(unix)]
#[tokio::test]
async fn unresponsive_server_times_out() {
    let binary =
        std::env::var("KEEPSAKE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let Some(server) = Server::start(&binary, port) else {
        return;
    };
    wait_ready(&url).await;
    let store = RedisStore::connect(&url).await.expect("connect");
    let r = record(r#"{"d":{}}"#);
    assert_eq!(store.create(&r).await.unwrap(), Cas::Applied);

    let pid = server.child.id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let started = Instant::now();
    let outcome = store.load(&r.key).await;
    let elapsed = started.elapsed();
    signal("-CONT");
    eprintln!("load against a stopped server failed after {elapsed:?}");
    assert!(
        matches!(
            outcome,
            Err(Error::Backend {
                operation: "load",
                ..
            })
        ),
        "expected a backend error, got {outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.load(&r.key).await {
            Ok(loaded) => {
                assert_eq!(loaded, Some(r));
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the store did not recover: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(server);
}
