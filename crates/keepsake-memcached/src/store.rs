//! [`MemcachedStore`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keepsake_core::{Cas, Error, Record, Result, SessionInfo, SessionStore, StorageKey, now};

use crate::codec::{self, FORMAT_FLAGS};
use crate::pool::{MemcachedError, Ring, Server};
use crate::proto::Reply;

const KIND: &str = "memcached";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "keepsake:";

/// memcached's default item size limit (its `-I` option): 1 MiB.
pub const DEFAULT_MAX_ITEM_SIZE: usize = 1024 * 1024;

/// The default number of connections per server.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The default time limit of one request (and of opening a connection).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The port used when an address names none.
const DEFAULT_PORT: u16 = 11211;

/// memcached's longest key.
const MAX_KEY_LEN: usize = 250;

/// What memcached keeps per item besides the key and the value (its item
/// header, CAS token and suffix: 63 bytes on memcached 1.6), rounded up so
/// that a value this store accepts always fits the server's item size.
const ITEM_OVERHEAD: usize = 96;

/// Sessions in memcached: one item per session, expired by memcached itself.
///
/// See the [crate documentation](crate) for the model: expiry, compare and
/// swap, `touch`, several servers, and what memcached cannot do (list a
/// user's sessions). Cloning is cheap and shares the connection pools.
///
/// ```no_run
/// # async fn run() -> keepsake_core::Result<()> {
/// use keepsake_memcached::MemcachedStore;
///
/// let store = MemcachedStore::connect("memcache://127.0.0.1:11211").await?;
/// assert_eq!(store.prefix(), "keepsake:");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemcachedStore {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Ring,
    prefix: Box<str>,
    max_item_size: usize,
}

impl fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("servers", &self.inner.ring.servers().collect::<Vec<_>>())
            .field("prefix", &self.inner.prefix)
            .field("max_item_size", &self.inner.max_item_size)
            .finish()
    }
}

impl MemcachedStore {
    /// Connects with the default settings to the server(s) in `url`, and
    /// checks that each one answers.
    ///
    /// `url` is `memcache://host:port`, or just `host:port`; several servers
    /// are separated by commas (`memcache://10.0.0.1:11211,10.0.0.2:11211`).
    /// The port defaults to 11211; IPv6 addresses go in brackets
    /// (`[::1]:11211`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed `url`; [`Error::Backend`] (operation
    /// `"connect"`) when a server does not answer.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// A builder for a store on the server(s) in `url` (see
    /// [`MemcachedStore::connect`] for its form).
    ///
    /// ```no_run
    /// # async fn run() -> keepsake_core::Result<()> {
    /// use std::time::Duration;
    /// use keepsake_memcached::MemcachedStore;
    ///
    /// let store = MemcachedStore::builder("memcache://10.0.0.1:11211,10.0.0.2:11211")
    ///     .prefix("shop:session:")
    ///     .pool_size(32)
    ///     .timeout(Duration::from_millis(500))
    ///     .connect()
    ///     .await?;
    /// assert_eq!(store.servers().count(), 2);
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> MemcachedStoreBuilder {
        MemcachedStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_item_size: DEFAULT_MAX_ITEM_SIZE,
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The prefix of every key this store writes.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The servers, as `host:port`.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.inner.ring.servers().map(Server::addr)
    }

    /// The largest encoded session (the record's fields and its payload) this
    /// store writes: the item size limit less the key and memcached's per-item
    /// overhead. Larger sessions are refused with [`Error::TooLarge`].
    #[must_use]
    pub fn max_value_size(&self) -> usize {
        let key_len = self.inner.prefix.len() + keepsake_core::STORAGE_KEY_LEN;
        self.inner
            .max_item_size
            .saturating_sub(key_len + ITEM_OVERHEAD)
    }

    /// The memcached key of a session.
    fn item_key(&self, key: &StorageKey) -> String {
        let mut item_key = String::with_capacity(self.inner.prefix.len() + key.as_str().len());
        item_key.push_str(&self.inner.prefix);
        item_key.push_str(key.as_str());
        item_key
    }

    /// The item value of `record`, refused when it cannot fit.
    fn encode(&self, record: &Record, operation: &'static str) -> Result<Vec<u8>> {
        let value = codec::encode(record).map_err(|e| Error::backend(KIND, operation, e))?;
        let limit = self.max_value_size();
        if value.len() > limit {
            return Err(Error::TooLarge {
                store: KIND,
                size: value.len(),
                limit,
            });
        }
        Ok(value)
    }

    /// The record in an item stored under `key`, or `None` (with a warning)
    /// when the item is not one this store can read.
    fn decode(key: &StorageKey, flags: u32, value: &[u8]) -> Option<Record> {
        match codec::decode(key, flags, value) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(
                    key = key.short(),
                    error = %keepsake_core::Report(&e),
                    "unreadable session item in memcached; treating it as absent"
                );
                None
            }
        }
    }
}

fn backend(operation: &'static str) -> impl FnOnce(MemcachedError) -> Error {
    move |e| Error::backend(KIND, operation, e)
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        let item_key = self.item_key(key);
        let server = self.inner.ring.server_for(&item_key);
        let mut lease = server.lease("get").await.map_err(backend("load"))?;
        let Some(item) = lease.get(&item_key).await.map_err(backend("load"))? else {
            return Ok(None);
        };
        drop(lease);
        // memcached's clock ticks once a second, so an item can outlive its
        // expiry by a moment: the expiry inside the value decides.
        Ok(Self::decode(key, item.flags, &item.value).filter(|r| !r.is_expired(now())))
    }

    async fn create(&self, record: &Record) -> Result<Cas> {
        let value = self.encode(record, "create")?;
        let item_key = self.item_key(&record.key);
        let exptime = codec::exptime(record.expires_at, now());
        let server = self.inner.ring.server_for(&item_key);
        let mut lease = server.lease("add").await.map_err(backend("create"))?;
        // `add` stores only if the key is free. An already expired record is
        // sent with exptime -1: memcached answers as for any `add` (so a live
        // item under the key is still a conflict) and drops the item at once.
        match lease
            .add(&item_key, FORMAT_FLAGS, exptime, &value)
            .await
            .map_err(backend("create"))?
        {
            Reply::Stored => Ok(Cas::Applied),
            Reply::NotStored | Reply::Exists | Reply::NotFound => Ok(Cas::Conflict),
        }
    }

    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        let value = self.encode(record, "save")?;
        let item_key = self.item_key(&record.key);
        let server = self.inner.ring.server_for(&item_key);
        let mut lease = server.lease("gets").await.map_err(backend("save"))?;
        let Some(item) = lease.gets(&item_key).await.map_err(backend("save"))? else {
            // Destroyed, expired or evicted: never re-created by a save.
            return Ok(Cas::Conflict);
        };
        match Self::decode(&record.key, item.flags, &item.value) {
            Some(stored) if stored.version == expected_version && !stored.is_expired(now()) => {}
            _ => return Ok(Cas::Conflict),
        }
        let exptime = codec::exptime(record.expires_at, now());
        // The token makes the write conditional on the item being exactly the
        // one read above: any write in between, a delete or an eviction turns
        // it into EXISTS or NOT_FOUND.
        match lease
            .cas(&item_key, FORMAT_FLAGS, exptime, &value, item.cas)
            .await
            .map_err(backend("save"))?
        {
            Reply::Stored => Ok(Cas::Applied),
            Reply::Exists | Reply::NotFound | Reply::NotStored => Ok(Cas::Conflict),
        }
    }

    /// `gets`, then a `cas` of the record with the new times: the token
    /// makes the write conditional on the item read, and the version check
    /// on the record this request loaded.
    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        let item_key = self.item_key(key);
        let server = self.inner.ring.server_for(&item_key);
        let mut lease = server.lease("gets").await.map_err(backend("touch"))?;
        let Some(item) = lease.gets(&item_key).await.map_err(backend("touch"))? else {
            return Ok(Cas::Conflict);
        };
        let Some(mut record) = Self::decode(key, item.flags, &item.value) else {
            return Ok(Cas::Conflict);
        };
        if record.is_expired(now()) || record.version != expected_version {
            return Ok(Cas::Conflict);
        }
        record.last_activity = last_activity;
        record.expires_at = record.expires_at.max(expires_at);
        let value = self.encode(&record, "touch")?;
        let exptime = codec::exptime(record.expires_at, now());
        // A write between the `gets` and this `cas` (a save, a delete, an
        // eviction) means the record this request loaded has moved on.
        match lease
            .cas(&item_key, FORMAT_FLAGS, exptime, &value, item.cas)
            .await
            .map_err(backend("touch"))?
        {
            Reply::Stored => Ok(Cas::Applied),
            Reply::Exists | Reply::NotFound | Reply::NotStored => Ok(Cas::Conflict),
        }
    }

    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        let item_key = self.item_key(key);
        let server = self.inner.ring.server_for(&item_key);
        let mut lease = server.lease("delete").await.map_err(backend("destroy"))?;
        lease.delete(&item_key).await.map_err(backend("destroy"))?;
        Ok(())
    }

    async fn gc(&self, _now: i64) -> Result<u64> {
        // memcached expires items itself.
        Ok(0)
    }

    async fn list_for_user(&self, _user_id: &str) -> Result<Vec<SessionInfo>> {
        Err(Error::Unsupported {
            store: KIND,
            operation: "list_for_user",
        })
    }

    async fn destroy_for_user(&self, _user_id: &str, _except: Option<&StorageKey>) -> Result<u64> {
        Err(Error::Unsupported {
            store: KIND,
            operation: "destroy_for_user",
        })
    }

    fn kind(&self) -> &'static str {
        KIND
    }
}

/// Builds a [`MemcachedStore`]: from [`MemcachedStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemcachedStoreBuilder {
    url: String,
    prefix: String,
    max_item_size: usize,
    pool_size: usize,
    timeout: Duration,
}

impl MemcachedStoreBuilder {
    /// The prefix of every key, so several applications (or test runs) can
    /// share servers. At most 186 bytes of printable ASCII without spaces
    /// (memcached keys are at most 250 bytes; the storage key takes 64).
    /// Defaults to `keepsake:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// memcached's item size limit, as set on the servers with `-I`. Sessions
    /// whose item would exceed it are refused with [`Error::TooLarge`] before
    /// anything is sent. Defaults to 1 MiB, memcached's default.
    pub fn max_item_size(mut self, bytes: usize) -> Self {
        self.max_item_size = bytes;
        self
    }

    /// Connections per server: how many requests to one server run at once;
    /// more wait for a free connection. Connections are opened when needed
    /// and kept for reuse. Defaults to 16.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// The time limit for opening a connection (or waiting for a free one)
    /// and for each request on it. Defaults to 2 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store without contacting any server: connections are
    /// opened on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, prefix, size, pool size or timeout.
    pub fn build(self) -> Result<MemcachedStore> {
        let addrs = parse_servers(&self.url)?;
        if self.prefix.len() + keepsake_core::STORAGE_KEY_LEN > MAX_KEY_LEN
            || !self.prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(config(format!(
                "memcached key prefix {:?} must be at most {} bytes of printable ASCII without spaces",
                self.prefix,
                MAX_KEY_LEN - keepsake_core::STORAGE_KEY_LEN
            )));
        }
        let overhead = self.prefix.len() + keepsake_core::STORAGE_KEY_LEN + ITEM_OVERHEAD;
        if self.max_item_size <= overhead {
            return Err(config(format!(
                "memcached max_item_size of {} bytes leaves no room for a session (the key and item header take {overhead})",
                self.max_item_size
            )));
        }
        if self.pool_size == 0 {
            return Err(config("memcached pool_size must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(config("memcached timeout must be more than zero".into()));
        }
        let mut servers = addrs
            .iter()
            .map(|addr| Server::new(addr, self.pool_size, self.timeout));
        let first = servers
            .next()
            .ok_or_else(|| config("no memcached server given".into()))?;
        Ok(MemcachedStore {
            inner: Arc::new(Inner {
                ring: Ring::new(first, servers.collect()),
                prefix: self.prefix.into(),
                max_item_size: self.max_item_size,
            }),
        })
    }

    /// Builds the store and checks that every server answers (`version`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] as [`build`](Self::build); [`Error::Backend`]
    /// (operation `"connect"`) when a server cannot be reached or does not
    /// answer in time.
    pub async fn connect(self) -> Result<MemcachedStore> {
        let store = self.build()?;
        for server in store.inner.ring.servers() {
            let mut lease = server.lease("version").await.map_err(backend("connect"))?;
            let version = lease.version().await.map_err(backend("connect"))?;
            tracing::debug!(server = server.addr(), %version, "memcached server answers");
        }
        Ok(store)
    }
}

fn config(message: String) -> Error {
    Error::Config { message }
}

/// The `host:port` of every server in `url`: comma-separated entries, each
/// `host:port` with an optional `memcache://` (or `memcached://`) scheme.
fn parse_servers(url: &str) -> Result<Vec<String>> {
    let mut servers: Vec<String> = Vec::new();
    for entry in url.split(',') {
        let entry = entry.trim();
        let bare = ["memcache://", "memcached://"]
            .iter()
            .find_map(|scheme| {
                entry
                    .get(..scheme.len())
                    .filter(|head| head.eq_ignore_ascii_case(scheme))
                    .map(|_| &entry[scheme.len()..])
            })
            .unwrap_or(entry);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        let addr = parse_addr(bare).ok_or_else(|| {
            config(format!(
                "memcached server {entry:?} is not `host:port` or `memcache://host:port` \
                 (several servers are separated by commas; IPv6 addresses go in brackets)"
            ))
        })?;
        if servers.contains(&addr) {
            return Err(config(format!("memcached server {addr} is listed twice")));
        }
        servers.push(addr);
    }
    Ok(servers)
}

/// `host[:port]` or `[v6][:port]` as `host:port`.
fn parse_addr(text: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (&text[..v6.len() + 2], port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port.parse::<u16>().ok().filter(|&p| p != 0)?,
    };
    host_ok.then(|| format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn server_lists() {
        let ok = [
            ("memcache://127.0.0.1:11311", vec!["127.0.0.1:11311"]),
            ("127.0.0.1:11311", vec!["127.0.0.1:11311"]),
            ("MEMCACHED://cache.internal/", vec!["cache.internal:11211"]),
            (
                "memcache://10.0.0.1:1, 10.0.0.2:2,memcache://[::1]",
                vec!["10.0.0.1:1", "10.0.0.2:2", "[::1]:11211"],
            ),
            ("[2001:db8::5]:11311", vec!["[2001:db8::5]:11311"]),
        ];
        for (url, want) in ok {
            assert_eq!(parse_servers(url).unwrap(), want, "{url}");
        }
        let bad = [
            "",
            "memcache://",
            "redis://127.0.0.1:6379",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "127.0.0.1:x",
            "::1",
            "[::1",
            "[::1]x",
            "user@host:1",
            "host:1/path",
            "a:1,,b:2",
            "a:1,a:1",
            "host with space:1",
        ];
        for url in bad {
            assert!(
                matches!(parse_servers(url), Err(Error::Config { .. })),
                "{url:?}"
            );
        }
    }

    #[test]
    fn builder_checks_its_settings() {
        let base = || MemcachedStore::builder("127.0.0.1:11211");
        assert!(base().build().is_ok());
        assert_eq!(base().build().unwrap().prefix(), DEFAULT_PREFIX);
        assert!(base().prefix("").build().is_ok());
        assert!(base().prefix("x".repeat(186)).build().is_ok());
        for bad in [
            base().prefix("x".repeat(187)),
            base().prefix("has space:"),
            base().prefix("tab\t"),
            base().prefix("é"),
            base().max_item_size(100),
            base().pool_size(0),
            base().timeout(Duration::ZERO),
        ] {
            assert!(matches!(bad.build(), Err(Error::Config { .. })));
        }
    }

    #[test]
    fn value_limit_leaves_room_for_key_and_header() {
        let store = MemcachedStore::builder("127.0.0.1:11211").build().unwrap();
        assert_eq!(store.max_value_size(), 1024 * 1024 - 9 - 64 - ITEM_OVERHEAD);
        let store = MemcachedStore::builder("127.0.0.1:11211")
            .prefix("")
            .max_item_size(4096)
            .build()
            .unwrap();
        assert_eq!(store.max_value_size(), 4096 - 64 - ITEM_OVERHEAD);
    }
}
