//! Connection handling against small scripted servers on 127.0.0.1: failures,
//! timeouts, stale pooled connections, and requests running side by side.
//! No memcached needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keepsake_core::{Error, Report, SessionId, SessionStore};
use keepsake_memcached::MemcachedStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How a scripted server answers each request line.
#[derive(Clone, Copy)]
enum Script {
    /// `END` (a miss), then close the connection.
    MissThenClose,
    /// `END` after a delay, keeping the connection.
    SlowMiss(Duration),
    /// Never answer.
    Silent,
    /// A line that is no memcached reply.
    Garbage,
    /// A `VALUE` header announcing more bytes than follow, then close.
    Truncated,
}

struct Fake {
    addr: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

async fn fake(script: Script) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let counters = (
        Arc::clone(&accepted),
        Arc::clone(&open),
        Arc::clone(&most_open),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counters.0.fetch_add(1, Ordering::SeqCst);
            let now_open = counters.1.fetch_add(1, Ordering::SeqCst) + 1;
            counters.2.fetch_max(now_open, Ordering::SeqCst);
            let open = Arc::clone(&counters.1);
            tokio::spawn(async move {
                serve(stream, script).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Fake {
        addr,
        accepted,
        open,
        most_open,
    }
}

async fn serve(stream: TcpStream, script: Script) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply: &[u8] = match script {
            Script::MissThenClose => {
                let _ = stream.get_mut().write_all(b"END\r\n").await;
                return;
            }
            Script::SlowMiss(delay) => {
                tokio::time::sleep(delay).await;
                b"END\r\n"
            }
            Script::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Script::Garbage => b"HELLO THERE\r\n",
            Script::Truncated => {
                let key = line.split(' ').nth(1).unwrap_or("").trim_end().to_owned();
                let header = format!("VALUE {key} 0 100\r\nshort");
                let _ = stream.get_mut().write_all(header.as_bytes()).await;
                return;
            }
        };
        if stream.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn store(addr: &str) -> MemcachedStore {
    MemcachedStore::builder(format!("memcache://{addr}"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

fn key() -> keepsake_core::StorageKey {
    SessionId::generate().storage_key()
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced() {
    let server = fake(Script::MissThenClose).await;
    let store = store(&server.addr);
    for round in 1..=3 {
        assert_eq!(store.load(&key()).await.unwrap(), None, "round {round}");
        // Let the server's close arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_silent_server_times_out_and_its_connection_is_dropped() {
    let server = fake(Script::Silent).await;
    let store = store(&server.addr);
    let started = Instant::now();
    let err = store.load(&key()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        err,
        Error::Backend {
            store: "memcached",
            operation: "load",
            ..
        }
    ));
    let message = Report(&err).to_string();
    assert!(message.contains("no answer within 300ms"), "{message}");
    assert!(message.contains(&server.addr), "{message}");
    // The connection with a request in flight is never reused.
    let _ = store.load(&key()).await.unwrap_err();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reply_that_is_not_memcached_is_an_error() {
    let server = fake(Script::Garbage).await;
    let store = store(&server.addr);
    let err = store.load(&key()).await.unwrap_err();
    let message = Report(&err).to_string();
    assert!(
        message.contains("unexpected reply `HELLO THERE`"),
        "{message}"
    );
    assert!(store.destroy(&key()).await.is_err());
}

#[tokio::test]
async fn a_truncated_value_is_an_error() {
    let server = fake(Script::Truncated).await;
    let store = store(&server.addr);
    let err = store.load(&key()).await.unwrap_err();
    let message = Report(&err).to_string();
    assert!(message.contains("closed the connection"), "{message}");
}

#[tokio::test]
async fn an_unreachable_server_fails_connect_clearly() {
    // A port that was just free.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let err = MemcachedStore::connect(&addr).await.unwrap_err();
    assert!(matches!(
        err,
        Error::Backend {
            store: "memcached",
            operation: "connect",
            ..
        }
    ));
    let message = Report(&err).to_string();
    assert!(message.contains("could not connect"), "{message}");

    // `build` does not connect; the first request reports the failure.
    let store = store(&addr);
    assert!(matches!(
        store.load(&key()).await,
        Err(Error::Backend {
            operation: "load",
            ..
        })
    ));
}

#[tokio::test]
async fn concurrent_requests_run_side_by_side_up_to_the_pool_size() {
    let delay = Duration::from_millis(300);
    let server = fake(Script::SlowMiss(delay)).await;
    let store = MemcachedStore::builder(server.addr.clone())
        .pool_size(4)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.load(&key()).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), None);
    }
    let elapsed = started.elapsed();
    // Eight requests of 300 ms on four connections: two rounds, not eight.
    assert!(elapsed < delay * 6, "took {elapsed:?}");
    assert_eq!(server.most_open.load(Ordering::SeqCst), 4);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        4,
        "connections are reused"
    );
    assert_eq!(server.open.load(Ordering::SeqCst), 4, "and kept open");
}
