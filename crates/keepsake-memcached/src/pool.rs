//! Servers, their connection pools, and which server holds which key.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::proto::{Conn, Fault, Item, Reply, Store};

/// A failed request to one server: which server, which command, and why.
#[derive(Debug, thiserror::Error)]
#[error("memcached at {server} failed `{command}`")]
pub(crate) struct MemcachedError {
    server: Arc<str>,
    command: &'static str,
    #[source]
    fault: Fault,
}

/// One memcached server and a pool of connections to it.
///
/// At most `pool_size` requests run at once, each on a connection of its
/// own; more wait for a free one (within the timeout). A connection goes back
/// to the pool only after a request completed cleanly on it: one that failed,
/// timed out or was abandoned half way (a cancelled future) is closed, so a
/// half-read reply can never be taken for the answer to the next request.
pub(crate) struct Server {
    addr: Arc<str>,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    pool_size: usize,
    timeout: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Server {
    pub(crate) fn new(addr: &str, pool_size: usize, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            idle: Mutex::new(Vec::with_capacity(pool_size)),
            permits: Semaphore::new(pool_size),
            pool_size,
            timeout,
        }
    }

    /// The server's address, `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn error(&self, command: &'static str, fault: Fault) -> MemcachedError {
        MemcachedError {
            server: Arc::clone(&self.addr),
            command,
            fault,
        }
    }

    /// A connection of the pool for one request (or a short sequence of them).
    pub(crate) async fn lease(&self, command: &'static str) -> Result<Lease<'_>, MemcachedError> {
        let leased = tokio::time::timeout(self.timeout, async {
            let permit = self.permits.acquire().await.map_err(|_| Fault::Closed)?;
            loop {
                let idle = self
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop();
                match idle {
                    Some(conn) if conn.is_reusable() => return Ok((permit, conn)),
                    // Closed by the server while idle: drop it, try the next.
                    Some(_) => {}
                    None => break,
                }
            }
            Ok((permit, Conn::connect(&self.addr).await?))
        })
        .await;
        match leased {
            Ok(Ok((permit, conn))) => Ok(Lease {
                server: self,
                conn: Some(conn),
                healthy: true,
                _permit: permit,
            }),
            Ok(Err(fault)) => Err(self.error(command, fault)),
            Err(_) => Err(self.error(command, Fault::Timeout(self.timeout))),
        }
    }
}

/// A pooled connection, handed back on drop if its last request completed.
pub(crate) struct Lease<'a> {
    server: &'a Server,
    conn: Option<Conn>,
    healthy: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    async fn run<'c, T, F>(
        &'c mut self,
        command: &'static str,
        request: impl FnOnce(&'c mut Conn) -> F,
    ) -> Result<T, MemcachedError>
    where
        F: Future<Output = Result<T, Fault>> + 'c,
    {
        let server = self.server;
        let Some(conn) = self.conn.as_mut() else {
            return Err(server.error(command, Fault::Closed));
        };
        // Until the reply is read in full, the connection is in an unknown
        // state: if this future is dropped or fails, it is not reused.
        self.healthy = false;
        let result = tokio::time::timeout(server.timeout, request(conn)).await;
        match result {
            Ok(Ok(value)) => {
                self.healthy = true;
                Ok(value)
            }
            Ok(Err(fault)) => Err(server.error(command, fault)),
            Err(_) => Err(server.error(command, Fault::Timeout(server.timeout))),
        }
    }

    pub(crate) async fn get(&mut self, key: &str) -> Result<Option<Item>, MemcachedError> {
        self.run("get", |conn| conn.get(key, false)).await
    }

    pub(crate) async fn gets(&mut self, key: &str) -> Result<Option<Item>, MemcachedError> {
        self.run("gets", |conn| conn.get(key, true)).await
    }

    pub(crate) async fn add(
        &mut self,
        key: &str,
        flags: u32,
        exptime: i64,
        value: &[u8],
    ) -> Result<Reply, MemcachedError> {
        self.run("add", |conn| {
            conn.store(Store::Add, key, flags, exptime, value)
        })
        .await
    }

    pub(crate) async fn cas(
        &mut self,
        key: &str,
        flags: u32,
        exptime: i64,
        value: &[u8],
        token: u64,
    ) -> Result<Reply, MemcachedError> {
        self.run("cas", |conn| {
            conn.store(Store::Cas(token), key, flags, exptime, value)
        })
        .await
    }

    pub(crate) async fn delete(&mut self, key: &str) -> Result<bool, MemcachedError> {
        self.run("delete", |conn| conn.delete(key)).await
    }

    pub(crate) async fn version(&mut self) -> Result<String, MemcachedError> {
        self.run("version", Conn::version).await
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (true, Some(conn)) = (self.healthy, self.conn.take()) {
            self.server
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

/// The servers, and which one holds a key.
///
/// With several servers each key lives on exactly one, chosen by rendezvous
/// (highest random weight) hashing of the server's address and the key: the
/// choice does not depend on the order the servers are listed in, and adding
/// or removing a server moves only the keys that it gains or held. The hash
/// is FNV-1a with a 64-bit finalizer, fixed here so that every process and
/// every build agrees on it.
#[derive(Debug)]
pub(crate) struct Ring {
    first: Server,
    others: Vec<Server>,
}

impl Ring {
    /// A ring of `first` and `others`.
    pub(crate) fn new(first: Server, others: Vec<Server>) -> Self {
        Self { first, others }
    }

    /// Every server.
    pub(crate) fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.first).chain(&self.others)
    }

    /// The server that holds `key`.
    pub(crate) fn server_for(&self, key: &str) -> &Server {
        if self.others.is_empty() {
            return &self.first;
        }
        let first = (&self.first, weight(self.first.addr(), key));
        self.others
            .iter()
            .fold(first, |best, server| {
                let w = weight(server.addr(), key);
                if w > best.1 { (server, w) } else { best }
            })
            .0
    }
}

/// The rendezvous weight of `key` on the server at `addr`.
fn weight(addr: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = addr.bytes().chain([0xff]).chain(key.bytes());
    let hash = bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The splitmix64 finalizer spreads FNV's weak high bits.
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ring(addrs: &[&str]) -> Ring {
        let mut servers: Vec<_> = addrs
            .iter()
            .map(|a| Server::new(a, 1, Duration::from_secs(1)))
            .collect();
        let first = servers.remove(0);
        Ring::new(first, servers)
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..3000).map(|i| format!("keepsake:{:064x}", u128::from(i as u32) * 0x9e37_79b9))
    }

    #[test]
    fn hash_is_fixed() {
        // Computed independently from the definition (FNV-1a, then splitmix64).
        const GOLDEN: u64 = 0x00ec_5998_b2a7_622d;
        // The placement of keys must not change between builds or releases.
        assert_eq!(
            weight("127.0.0.1:11211", "keepsake:abc"),
            weight("127.0.0.1:11211", "keepsake:abc")
        );
        assert_ne!(
            weight("127.0.0.1:11211", "keepsake:abc"),
            weight("127.0.0.1:11212", "keepsake:abc")
        );
        assert_eq!(weight("127.0.0.1:11211", "keepsake:abc"), GOLDEN);
    }

    #[test]
    fn keys_spread_evenly_and_ignore_listing_order() {
        let abc = ring(&["a:1", "b:1", "c:1"]);
        let cba = ring(&["c:1", "b:1", "a:1"]);
        let mut counts = HashMap::new();
        for key in keys() {
            let server = abc.server_for(&key).addr();
            assert_eq!(server, cba.server_for(&key).addr());
            *counts.entry(server.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        for count in counts.values() {
            assert!((800..1200).contains(count), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = ring(&["a:1", "b:1", "c:1"]);
        let two = ring(&["a:1", "c:1"]);
        for key in keys() {
            let before = three.server_for(&key).addr();
            if before != "b:1" {
                assert_eq!(two.server_for(&key).addr(), before);
            }
        }
    }
}
