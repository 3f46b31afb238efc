//! [`RedisStore`]: the [`SessionStore`] on Redis and Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use keepsake_core::batch::{Batcher, unshare};
use keepsake_core::{
    Cas, Error, Record, Report, Result, SessionInfo, SessionStore, StorageKey, now, now_millis,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation, ServerErrorKind, Value,
};
use sha2::{Digest as _, Sha256};

use crate::conn::Conn;
use crate::reader::{Fields, Reader};
use crate::scripts;

const KIND: &str = "redis";

/// The key prefix a store uses unless [`RedisStore::with_prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "keepsake:";

/// The hash fields of a session, in the order `load` reads them.
pub(crate) const FIELDS: [&str; 7] = [
    "payload",
    "version",
    "expires_at",
    "last_activity",
    "user_id",
    "ip_address",
    "user_agent",
];

/// How long [`RedisStore::connect`] and [`RedisStore::connect_cluster`] wait
/// for a TCP connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long they wait for the answer to one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a cluster request may take in all, redirections and retries included.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection attempts after a failed one (single node), with a short
/// backoff, before the requests waiting for the connection fail. With the
/// connect timeout this bounds a request during an outage to about 2 s, even
/// when the server's address swallows packets.
const RECONNECT_RETRIES: usize = 1;

/// Sessions in Redis or Redis Cluster: one hash per session, expiry by Redis
/// itself, compare-and-swap by Lua script, and a per-user index set.
///
/// See the [crate documentation](crate) for the data layout, the consistency
/// of the per-user index on a cluster, and how outages behave.
///
/// ```no_run
/// # async fn example() -> keepsake_core::Result<()> {
/// use keepsake_redis::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("myapp:");
/// assert_eq!(store.prefix(), "myapp:");
/// assert!(!store.is_cluster());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    /// The loads waiting at the same moment, sent as one pipeline (single
    /// node only).
    loads: Arc<Grouped<StorageKey, Fields>>,
    /// The connection of the store's own those pipelines go out on, when
    /// [`RedisStore::connect`] opened the store on a plain TCP address.
    reader: Option<Arc<Reader>>,
    /// The script calls waiting at the same moment, sent as one pipeline
    /// (single node only).
    writes: Arc<Grouped<Call, Value>>,
}

/// Requests of one kind waiting at the same moment, sent as one pipeline
/// whose commands are each answered on their own: the loads of one store
/// (one prefix, `HMGET`s) or its script calls (`EVALSHA`s).
#[derive(Debug)]
struct Grouped<K, V> {
    batcher: Batcher<K, RedisResult<V>, RedisError>,
    /// Round trips sent (tests count them).
    #[cfg(test)]
    round_trips: std::sync::atomic::AtomicUsize,
}

impl<K, V> Default for Grouped<K, V> {
    fn default() -> Self {
        Self {
            batcher: Batcher::new(),
            #[cfg(test)]
            round_trips: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl<K, V> Grouped<K, V> {
    /// Notes one round trip sent (in tests; nothing otherwise).
    #[allow(clippy::unused_self)]
    fn sent(&self) {
        #[cfg(test)]
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One script call waiting for the next pipeline. Each carries its own
/// keys, so calls under different prefixes may share a pipeline.
type Call = Arc<ScriptInvocation<'static>>;

impl RedisStore {
    /// Connects to one Redis server, for example `redis://127.0.0.1:6379` or
    /// `redis://:password@redis.internal:6379/2`.
    ///
    /// The connection is a [`ConnectionManager`]: one multiplexed connection
    /// shared by every request, re-established in the background when it
    /// breaks. Each connection attempt gives up after 1 s, each command after
    /// 1 s, and a failed reconnection is retried once after a short pause, so
    /// a request during an outage fails within about two seconds (at once
    /// when the connection is refused) instead of hanging, and the store
    /// recovers by itself once Redis is back. For other timeouts build the manager yourself and use
    /// [`RedisStore::new`].
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let fail = |e: RedisError| Error::backend(KIND, "connect", e);
        let client = redis::Client::open(url).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let reader = Reader::for_node(
            client.get_connection_info(),
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
        );
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(fail)?;
        Ok(Self {
            reader: reader.map(Arc::new),
            ..Self::new(manager)
        })
    }

    /// Connects to a Redis Cluster through some of its nodes (one reachable
    /// node is enough; the client discovers the others), for example
    /// `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`.
    ///
    /// Each connection attempt gives up after 1 s, each command after 1 s, and
    /// a request after 2 s in all (redirections and retries included).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty list, [`Error::Backend`] when a URL is
    /// invalid or the cluster cannot be reached.
    pub async fn connect_cluster<I, U>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let fail = |e: RedisError| Error::backend(KIND, "connect", e);
        let nodes: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        if nodes.is_empty() {
            return Err(Error::Config {
                message: "RedisStore::connect_cluster needs at least one node URL".into(),
            });
        }
        let client = ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT))
            .build()
            .map_err(fail)?;
        let connection = client.get_async_connection().await.map_err(fail)?;
        Ok(Self::from_cluster(connection))
    }

    /// A store on an existing single-node [`ConnectionManager`], configured as
    /// the application likes (set its response and connection timeouts, or a
    /// request during an outage may wait long).
    #[must_use]
    pub fn new(manager: ConnectionManager) -> Self {
        Self {
            conn: Conn::Single(manager),
            prefix: DEFAULT_PREFIX.into(),
            loads: Arc::default(),
            reader: None,
            writes: Arc::default(),
        }
    }

    /// A store on an existing async Redis Cluster connection.
    #[must_use]
    pub fn from_cluster(connection: ClusterConnection) -> Self {
        Self {
            conn: Conn::Cluster(connection),
            prefix: DEFAULT_PREFIX.into(),
            loads: Arc::default(),
            reader: None,
            writes: Arc::default(),
        }
    }

    /// Sets the prefix of every key the store writes. Defaults to
    /// [`DEFAULT_PREFIX`] (`keepsake:`). Give each application sharing a
    /// Redis its own prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        // Loads under two prefixes never share a batch.
        self.loads = Arc::default();
        self
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True when the store talks to a Redis Cluster.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// `{prefix}{storage key}`: the session's hash.
    fn session_key(&self, key: &StorageKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// `{prefix}user:{hex sha256 of the user id}`: the user's index set.
    fn user_key(&self, user_id: &[u8]) -> String {
        format!(
            "{}user:{}",
            self.prefix,
            hex::encode(Sha256::digest(user_id))
        )
    }

    /// Adds `member` to the index `set` and extends the set's expiry to `exp_ms`.
    async fn index(
        &self,
        set: &str,
        member: &StorageKey,
        exp_ms: i64,
        now_ms: i64,
    ) -> RedisResult<()> {
        let _: i64 = scripts::INDEX
            .key(set)
            .arg(member.as_str())
            .arg(exp_ms)
            .arg(now_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Removes members from an index set. A failure only leaves stale
    /// entries, which listing and revoking skip (they check each session's
    /// owner) and which go with their sessions, so it is logged rather than
    /// returned. On a single node it is a script call like the writes, so
    /// it joins the pipeline of the calls waiting at the same moment instead
    /// of taking a round trip of its own (after a login's retire, a logout's
    /// destroy).
    async fn unindex(&self, set: &str, members: &[Vec<u8>], operation: &'static str) {
        if members.is_empty() {
            return;
        }
        let removed: Result<i64> = if self.is_cluster() {
            redis::cmd("SREM")
                .arg(set)
                .arg(members)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| Error::backend(KIND, operation, e))
        } else {
            let mut invocation = scripts::UNINDEX.key(set);
            invocation.arg(members);
            self.eval(invocation, operation).await
        };
        if let Err(error) = removed {
            tracing::warn!(
                error = %Report(&error),
                "could not remove entries from a per-user session index; they are skipped until their sessions end"
            );
        }
    }

    /// The members of a user's index set that are storage keys, and the ones
    /// that are not (to be removed).
    async fn members(&self, set: &str) -> RedisResult<(Vec<StorageKey>, Vec<Vec<u8>>)> {
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(set)
            .query_async(&mut self.conn())
            .await?;
        let mut keys = Vec::with_capacity(members.len());
        let mut invalid = Vec::new();
        for member in members {
            match std::str::from_utf8(&member)
                .ok()
                .and_then(StorageKey::parse)
            {
                Some(key) => keys.push(key),
                None => {
                    tracing::warn!(
                        "a per-user session index holds an entry that is not a storage key; removing it"
                    );
                    invalid.push(member);
                }
            }
        }
        Ok((keys, invalid))
    }

    /// Reads several sessions' fields in one round trip.
    /// The `CREATE` or `SAVE` script's invocation for `record`: its key and
    /// record arguments, and the owner's index. On a single node the index
    /// set is the script's second key, so the script adds the entry; on a
    /// cluster the set lives in another slot and the entry is added first,
    /// by a separate command, so a failure leaves nothing unindexed (at
    /// worst an entry that listing later drops).
    async fn invocation(
        &self,
        script: &'static redis::Script,
        record: &Record,
    ) -> RedisResult<ScriptInvocation<'static>> {
        let now_ms = now_millis();
        let exp_ms = millis(record.expires_at);
        let mut invocation = script.key(self.session_key(&record.key));
        if let Some(owner) = &record.user_id {
            let set = self.user_key(owner.as_bytes());
            if self.is_cluster() {
                self.index(&set, &record.key, exp_ms, now_ms).await?;
            } else {
                invocation.key(&set);
            }
        }
        record_args(&mut invocation, record, exp_ms, now_ms);
        Ok(invocation)
    }

    /// One `HMGET` of a session's fields.
    async fn load_one(&self, key: &StorageKey) -> RedisResult<Fields> {
        self.loads.sent();
        redis::cmd("HMGET")
            .arg(self.session_key(key))
            .arg(&FIELDS[..])
            .query_async(&mut self.conn())
            .await
    }

    /// One batch of loads on a single node: one `HMGET`, or a pipeline of
    /// them in one round trip. Each key is answered on its own (a key that
    /// holds something other than a hash fails only its own load); a
    /// failure of the round trip fails the whole batch.
    async fn load_batch(&self, keys: Vec<StorageKey>) -> RedisResult<Vec<RedisResult<Fields>>> {
        if let Some(reader) = &self.reader {
            self.loads.sent();
            return reader.load(&self.prefix, &keys).await;
        }
        if let [key] = keys.as_slice() {
            return Ok(vec![self.load_one(key).await]);
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in &keys {
            pipe.cmd("HMGET")
                .arg(self.session_key(key))
                .arg(&FIELDS[..]);
        }
        self.loads.sent();
        pipe.query_async(&mut self.conn()).await
    }

    /// Runs one of the scripts. On a single node, the calls waiting at the
    /// same moment (of any script, for any session) go out together as one
    /// pipeline; on a cluster, where a pipeline must stay within one slot,
    /// each call is its own command. A failure of the round trip fails
    /// every call in it; an error of one script fails only its own call.
    async fn eval<T: FromRedisValue>(
        &self,
        invocation: ScriptInvocation<'static>,
        operation: &'static str,
    ) -> Result<T> {
        let fail = |e: RedisError| Error::backend(KIND, operation, e);
        let value = if self.is_cluster() {
            invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(fail)?
        } else {
            self.writes
                .batcher
                .run(Arc::new(invocation), |calls| self.write_batch(calls))
                .await
                .map_err(|e| Error::backend(KIND, operation, unshare(e)))?
                .map_err(fail)?
        };
        redis::from_redis_value(value).map_err(|e| fail(e.into()))
    }

    /// One batch of script calls on a single node: one `EVALSHA`, or a
    /// pipeline of them in one round trip. A script the server does not
    /// hold (after a restart or `SCRIPT FLUSH`) fails only its own calls in
    /// the pipeline; those are run again one by one, which loads it.
    async fn write_batch(&self, calls: Vec<Call>) -> RedisResult<Vec<RedisResult<Value>>> {
        if let [call] = calls.as_slice() {
            self.writes.sent();
            return Ok(vec![call.invoke_async(&mut self.conn()).await]);
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in &calls {
            pipe.invoke_script(call);
        }
        self.writes.sent();
        let mut answers: Vec<RedisResult<Value>> = pipe.query_async(&mut self.conn()).await?;
        for (call, answer) in calls.iter().zip(&mut answers) {
            if matches!(answer, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
            {
                *answer = call.invoke_async(&mut self.conn()).await;
            }
        }
        Ok(answers)
    }

    async fn load_many(&self, keys: &[StorageKey]) -> RedisResult<Vec<Vec<Option<Vec<u8>>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            // A cluster pipeline must stay within one slot. The reads go out
            // concurrently instead, batched by the multiplexed connections.
            let reads = keys.iter().map(|key| {
                let mut conn = self.conn();
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.session_key(key)).arg(&FIELDS[..]);
                async move { cmd.query_async(&mut conn).await }
            });
            join_all(reads).await.into_iter().collect()
        } else {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("HMGET")
                    .arg(self.session_key(key))
                    .arg(&FIELDS[..]);
            }
            pipe.query_async(&mut self.conn()).await
        }
    }
}

impl From<ConnectionManager> for RedisStore {
    fn from(manager: ConnectionManager) -> Self {
        Self::new(manager)
    }
}

impl From<ClusterConnection> for RedisStore {
    fn from(connection: ClusterConnection) -> Self {
        Self::from_cluster(connection)
    }
}

/// Unix seconds to the milliseconds `PEXPIREAT` takes.
fn millis(unix_seconds: i64) -> i64 {
    unix_seconds.saturating_mul(1000)
}

/// An optional field as a script argument: `+value`, or `-` when absent.
fn optional(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("+{v}"))
}

/// `ARGV[1..=10]` of the `CREATE` and `SAVE` scripts.
fn record_args(invocation: &mut ScriptInvocation<'_>, record: &Record, exp_ms: i64, now_ms: i64) {
    invocation
        .arg(&record.payload)
        .arg(record.version)
        .arg(record.expires_at)
        .arg(record.last_activity)
        .arg(optional(record.user_id.as_deref()))
        .arg(optional(record.ip_address.as_deref()))
        .arg(optional(record.user_agent.as_deref()))
        .arg(exp_ms)
        .arg(now_ms)
        .arg(record.key.as_str());
}

/// A bulk string reply as bytes; `None` for nil, and for the boolean that a
/// script's `false` becomes under RESP3.
fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

/// The record from the `HMGET` of [`FIELDS`]; `None` when the hash is
/// missing, expired at `now`, or corrupt (logged).
fn decode(key: &StorageKey, values: Vec<Option<Vec<u8>>>, now: i64) -> Option<Record> {
    let Ok(
        [
            payload,
            version,
            expires_at,
            last_activity,
            user_id,
            ip_address,
            user_agent,
        ],
    ) = <[Option<Vec<u8>>; 7]>::try_from(values)
    else {
        tracing::warn!(
            key = key.short(),
            "unexpected reply reading a session from Redis; treating it as absent"
        );
        return None;
    };
    let Some(payload) = payload else {
        if [&version, &expires_at, &last_activity]
            .iter()
            .any(|v| v.is_some())
        {
            tracing::warn!(
                key = key.short(),
                field = "payload",
                "corrupt session in Redis; treating it as absent"
            );
        }
        return None;
    };
    let parsed = (|| {
        Ok::<_, &'static str>(Record {
            key: key.clone(),
            payload: String::from_utf8(payload).map_err(|_| "payload")?,
            version: integer("version", version.as_deref())?,
            expires_at: integer("expires_at", expires_at.as_deref())?,
            last_activity: integer("last_activity", last_activity.as_deref())?,
            user_id: text("user_id", user_id)?,
            ip_address: text("ip_address", ip_address)?,
            user_agent: text("user_agent", user_agent)?,
        })
    })();
    match parsed {
        Ok(record) => (!record.is_expired(now)).then_some(record),
        Err(field) => {
            tracing::warn!(
                key = key.short(),
                field,
                "corrupt session in Redis; treating it as absent"
            );
            None
        }
    }
}

fn integer(field: &'static str, value: Option<&[u8]>) -> std::result::Result<i64, &'static str> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or(field)
}

fn text(
    field: &'static str,
    value: Option<Vec<u8>>,
) -> std::result::Result<Option<String>, &'static str> {
    value.map(String::from_utf8).transpose().map_err(|_| field)
}

#[async_trait]
impl SessionStore for RedisStore {
    /// One `HMGET` of the session's fields. On a single node, the loads
    /// waiting at the same moment go out together as one pipeline (see
    /// [`keepsake_core::batch`]); on a cluster, where a pipeline must stay
    /// within one slot, each load is its own command.
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        let fail = |e: RedisError| Error::backend(KIND, "load", e);
        let values = if self.is_cluster() {
            self.load_one(key).await.map_err(fail)?
        } else {
            self.loads
                .batcher
                .run(key.clone(), |keys| self.load_batch(keys))
                .await
                .map_err(|e| Error::backend(KIND, "load", unshare(e)))?
                .map_err(fail)?
        };
        Ok(decode(key, values, now()))
    }

    /// One script: insert-if-absent, `PEXPIREAT` to `expires_at` (and, on a
    /// single node, the owner's index entry). A record that is already
    /// expired is answered [`Cas::Applied`] and not written.
    async fn create(&self, record: &Record) -> Result<Cas> {
        let fail = |e: RedisError| Error::backend(KIND, "create", e);
        let invocation = self
            .invocation(&scripts::CREATE, record)
            .await
            .map_err(fail)?;
        let applied: i64 = self.eval(invocation, "create").await?;
        Ok(if applied == 1 {
            Cas::Applied
        } else {
            Cas::Conflict
        })
    }

    /// One script: compare-and-swap on `version`, the new fields, and
    /// `PEXPIREAT` to `expires_at` (and, on a single node, the owner's index
    /// entry). When the owner changed, a second command removes the entry from
    /// the previous owner's index.
    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        let fail = |e: RedisError| Error::backend(KIND, "save", e);
        let mut invocation = self
            .invocation(&scripts::SAVE, record)
            .await
            .map_err(fail)?;
        invocation.arg(expected_version);
        let reply: Vec<Value> = self.eval(invocation, "save").await?;
        if !matches!(reply.first(), Some(Value::Int(1))) {
            return Ok(Cas::Conflict);
        }
        if let Some(previous) = reply.get(1).and_then(bytes)
            && Some(previous.as_slice()) != record.user_id.as_deref().map(str::as_bytes)
        {
            let set = self.user_key(&previous);
            self.unindex(&set, &[record.key.as_str().as_bytes().to_vec()], "save")
                .await;
        }
        Ok(Cas::Applied)
    }

    /// One script, on the session's key only: no `PEXPIREAT` and no index
    /// update, since the expiry and the owner stay as stored.
    async fn save_in_place(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        let mut invocation = scripts::SAVE_IN_PLACE.key(self.session_key(&record.key));
        invocation
            .arg(&record.payload)
            .arg(record.version)
            .arg(record.last_activity)
            .arg(optional(record.ip_address.as_deref()))
            .arg(optional(record.user_agent.as_deref()))
            .arg(expected_version);
        let applied: i64 = self.eval(invocation, "save").await?;
        Ok(if applied == 1 {
            Cas::Applied
        } else {
            Cas::Conflict
        })
    }

    /// One script that moves `last_activity`, `expires_at` and the key's
    /// `PEXPIREAT` of an existing hash at the expected version (a missing one
    /// stays missing, and the expiry never moves backwards). For a session
    /// with an owner, a second script extends the owner's index set so it
    /// outlives the session.
    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        let fail = |e: RedisError| Error::backend(KIND, "touch", e);
        let now_ms = now_millis();
        let exp_ms = millis(expires_at);
        let mut invocation = scripts::TOUCH.key(self.session_key(key));
        invocation
            .arg(last_activity)
            .arg(expires_at)
            .arg(exp_ms)
            .arg(expected_version);
        let reply: Vec<Value> = self.eval(invocation, "touch").await?;
        if !matches!(reply.first(), Some(Value::Int(1))) {
            return Ok(Cas::Conflict);
        }
        if let Some(owner) = reply.get(1).and_then(bytes) {
            let set = self.user_key(&owner);
            self.index(&set, key, exp_ms, now_ms).await.map_err(fail)?;
        }
        Ok(Cas::Applied)
    }

    /// One script that deletes the hash if it is at the expected version. On
    /// a single node, told the owner (as the layer always is), the same
    /// script removes the session from the owner's index. Otherwise (a
    /// cluster, or no owner given for a session that has one) the script
    /// returns the owner and a second command removes the index entry.
    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        owner: Option<&str>,
    ) -> Result<Cas> {
        let mut invocation = scripts::RETIRE.key(self.session_key(key));
        invocation.arg(expected_version);
        // On a single node the owner's index entry goes in the same script;
        // a cluster (another slot) or an owner that turns out to be another
        // takes the second command below.
        if let (Some(owner), false) = (owner, self.is_cluster()) {
            invocation
                .key(self.user_key(owner.as_bytes()))
                .arg(key.as_str())
                .arg(owner);
        }
        let reply: Vec<Value> = self.eval(invocation, "retire").await?;
        if !matches!(reply.first(), Some(Value::Int(1))) {
            return Ok(Cas::Conflict);
        }
        if let Some(owner) = reply.get(1).and_then(bytes) {
            let set = self.user_key(&owner);
            self.unindex(&set, &[key.as_str().as_bytes().to_vec()], "retire")
                .await;
        }
        Ok(Cas::Applied)
    }

    /// One script that deletes the hash and returns its owner; for a session
    /// with an owner, a second command removes it from the owner's index.
    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        let owner: Value = self
            .eval(scripts::DESTROY.key(self.session_key(key)), "destroy")
            .await?;
        if let Some(owner) = bytes(&owner) {
            let set = self.user_key(&owner);
            self.unindex(&set, &[key.as_str().as_bytes().to_vec()], "destroy")
                .await;
        }
        Ok(())
    }

    /// Returns 0: Redis deletes each session itself when its key's expiry
    /// (set to `expires_at`) passes, and index sets expire after their
    /// longest-lived session. There is nothing to collect.
    async fn gc(&self, _now: i64) -> Result<u64> {
        Ok(0)
    }

    /// Reads the user's index set, loads every listed session in one
    /// pipeline, and removes the entries whose session is gone.
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        let fail = |e: RedisError| Error::backend(KIND, "list_for_user", e);
        let set = self.user_key(user_id.as_bytes());
        let (keys, mut stale) = self.members(&set).await.map_err(fail)?;
        let rows = self.load_many(&keys).await.map_err(fail)?;
        let now = now();
        let mut sessions = Vec::new();
        for (key, row) in keys.into_iter().zip(rows) {
            match decode(&key, row, now) {
                Some(record) if record.user_id.as_deref() == Some(user_id) => {
                    sessions.push(record.info());
                }
                // Another owner now (or an index update still in flight):
                // the entry goes when that session does.
                Some(_) => {}
                None => stale.push(key.as_str().as_bytes().to_vec()),
            }
        }
        self.unindex(&set, &stale, "list_for_user").await;
        sessions.sort_by(|a, b| {
            b.last_activity
                .cmp(&a.last_activity)
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(sessions)
    }

    /// Reads the user's index set and deletes each listed session that this
    /// user still owns (one script per session, sent together), except
    /// `except`.
    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64> {
        let fail = |e: RedisError| Error::backend(KIND, "destroy_for_user", e);
        let set = self.user_key(user_id.as_bytes());
        let (keys, mut stale) = self.members(&set).await.map_err(fail)?;
        let targets: Vec<StorageKey> = keys.into_iter().filter(|k| Some(k) != except).collect();
        let deletes = targets.iter().map(|key| {
            let mut conn = self.conn();
            let key = self.session_key(key);
            async move {
                scripts::DESTROY_OWNED
                    .key(key)
                    .arg(user_id)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
        });
        let outcomes = join_all(deletes).await;
        let mut deleted = 0u64;
        let mut failure = None;
        for (key, outcome) in targets.iter().zip(outcomes) {
            match outcome {
                Ok(1) => {
                    deleted += 1;
                    stale.push(key.as_str().as_bytes().to_vec());
                }
                Ok(0) => stale.push(key.as_str().as_bytes().to_vec()),
                Ok(_) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.unindex(&set, &stale, "destroy_for_user").await;
        match failure {
            Some(e) => Err(fail(e)),
            None => Ok(deleted),
        }
    }

    fn kind(&self) -> &'static str {
        KIND
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use keepsake_core::SessionId;

    use super::*;

    fn row(fields: [Option<&str>; 7]) -> Vec<Option<Vec<u8>>> {
        fields
            .iter()
            .map(|f| f.map(|v| v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn decodes_a_full_record() {
        let key = SessionId::generate().storage_key();
        let record = decode(
            &key,
            row([
                Some(r#"{"d":{}}"#),
                Some("7"),
                Some("2000"),
                Some("1500"),
                Some("u"),
                Some(""),
                None,
            ]),
            1000,
        )
        .expect("live record");
        assert_eq!(
            record,
            Record {
                key,
                payload: r#"{"d":{}}"#.into(),
                last_activity: 1500,
                expires_at: 2000,
                version: 7,
                user_id: Some("u".into()),
                ip_address: Some(String::new()),
                user_agent: None,
            }
        );
    }

    #[test]
    fn missing_expired_and_corrupt_rows_are_absent() {
        let key = SessionId::generate().storage_key();
        let full = |version: &'static str, expires: &'static str| {
            row([
                Some("{}"),
                Some(version),
                Some(expires),
                Some("1"),
                None,
                None,
                None,
            ])
        };
        assert!(decode(&key, row([None; 7]), 1000).is_none(), "missing");
        assert!(decode(&key, full("1", "1000"), 1000).is_none(), "expired");
        assert!(decode(&key, full("1", "1001"), 1000).is_some(), "live");
        assert!(
            decode(&key, full("x", "2000"), 1000).is_none(),
            "bad version"
        );
        assert!(
            decode(&key, full("1", "soon"), 1000).is_none(),
            "bad expiry"
        );
        let mut bad_payload = full("1", "2000");
        bad_payload[0] = Some(vec![0xff, 0xfe]);
        assert!(
            decode(&key, bad_payload, 1000).is_none(),
            "payload not UTF-8"
        );
        assert!(decode(&key, Vec::new(), 1000).is_none(), "short reply");
    }

    #[test]
    fn optional_fields_keep_some_empty_apart_from_none() {
        assert_eq!(optional(None), "-");
        assert_eq!(optional(Some("")), "+");
        assert_eq!(optional(Some("-x")), "+-x");
    }

    #[test]
    fn script_replies_to_owner_bytes() {
        assert_eq!(
            bytes(&Value::BulkString(b"u".to_vec())),
            Some(b"u".to_vec())
        );
        assert_eq!(bytes(&Value::Nil), None);
        assert_eq!(bytes(&Value::Boolean(false)), None);
    }

    fn round_trips(store: &RedisStore) -> usize {
        store
            .loads
            .round_trips
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write_round_trips(store: &RedisStore) -> usize {
        store
            .writes
            .round_trips
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `call` on every item at once, each on its own task, and
    /// answers in the items' order.
    async fn at_once<I, T, F, Fut>(store: &RedisStore, items: &[I], call: F) -> Vec<T>
    where
        I: Clone + Send + 'static,
        T: Send + 'static,
        F: Fn(RedisStore, I) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, item) in items.iter().enumerate() {
            let answer = call(store.clone(), item.clone());
            tasks.spawn(async move { (i, answer.await) });
        }
        let mut answers: Vec<_> = (0..items.len()).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (i, answer) = done.unwrap();
            answers[i] = Some(answer);
        }
        answers.into_iter().map(Option::unwrap).collect()
    }

    /// Saves every record in place at once, each expecting the version
    /// paired with it.
    async fn save_all(store: &RedisStore, saves: &[(Record, i64)]) -> Vec<Result<Cas>> {
        at_once(store, saves, |store, (record, expected)| async move {
            store.save_in_place(&record, expected).await
        })
        .await
    }

    /// A store on the test server with a prefix of its own.
    async fn test_store() -> Option<RedisStore> {
        let url = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_REDIS_URL")?;
        let key = SessionId::generate().storage_key();
        let prefix = format!("ks_grouped_{}:", &key.as_str()[..12]);
        Some(RedisStore::connect(&url).await.unwrap().with_prefix(prefix))
    }

    /// Deletes every key under the store's prefix.
    async fn clean(store: &RedisStore) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", store.prefix()))
            .query_async(&mut store.conn())
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut store.conn())
                .await
                .unwrap();
        }
    }

    /// Loads every key at once, each on its own task.
    async fn load_all(store: &RedisStore, keys: &[StorageKey]) -> Vec<Result<Option<Record>>> {
        at_once(
            store,
            keys,
            |store, key| async move { store.load(&key).await },
        )
        .await
    }

    /// 100 live sessions (each loaded three times), 10 expired ones still
    /// in Redis and 30 missing, all loaded at once: each load gets its own
    /// record or `None`, in far fewer round trips than loads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_waiting_together_go_out_as_one_pipeline() {
        let Some(store) = test_store().await else {
            return;
        };
        let mut live = Vec::new();
        for i in 0..100 {
            let mut record = keepsake_core::test_kit::record(&format!(r#"{{"d":{{"n":{i}}}}}"#));
            if i % 4 == 0 {
                record.user_id = Some(format!("user {i}"));
            }
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            live.push(record);
        }
        let mut expired = Vec::new();
        for _ in 0..10 {
            // Written by hand without a key expiry: only its fields say
            // that it has expired.
            let key = SessionId::generate().storage_key();
            let past = now() - 10;
            let _: i64 = redis::cmd("HSET")
                .arg(store.session_key(&key))
                .arg(&[
                    ("payload", "{}".to_owned()),
                    ("version", "1".to_owned()),
                    ("expires_at", past.to_string()),
                    ("last_activity", past.to_string()),
                ])
                .query_async(&mut store.conn())
                .await
                .unwrap();
            expired.push(key);
        }
        let missing: Vec<StorageKey> = (0..30)
            .map(|_| SessionId::generate().storage_key())
            .collect();
        let mut keys = Vec::new();
        let mut expected = Vec::new();
        for round in 0..3 {
            for record in &live {
                keys.push(record.key.clone());
                expected.push(Some(record.clone()));
            }
            if round == 1 {
                for key in expired.iter().chain(&missing) {
                    keys.push(key.clone());
                    expected.push(None);
                }
            }
        }
        let before = round_trips(&store);
        let answers = load_all(&store, &keys).await;
        let sent = round_trips(&store) - before;
        for (answer, expected) in answers.into_iter().zip(expected) {
            assert_eq!(answer.unwrap(), expected);
        }
        assert!(sent >= 2, "{sent} round trips");
        assert!(sent <= 40, "{sent} round trips for {} loads", keys.len());

        let before = round_trips(&store);
        assert_eq!(
            store.load(&live[3].key).await.unwrap(),
            Some(live[3].clone())
        );
        assert_eq!(round_trips(&store) - before, 1, "a lone load is one HMGET");
        clean(&store).await;
    }

    /// A key that holds something other than a hash fails its own load,
    /// not the others of its pipeline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_key_fails_only_its_own_load() {
        let Some(store) = test_store().await else {
            return;
        };
        let bad = SessionId::generate().storage_key();
        let _: () = redis::cmd("SET")
            .arg(store.session_key(&bad))
            .arg("not a hash")
            .query_async(&mut store.conn())
            .await
            .unwrap();
        let mut records = Vec::new();
        for _ in 0..30 {
            let record = keepsake_core::test_kit::record("{}");
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            records.push(record);
        }
        let mut keys: Vec<StorageKey> = records.iter().map(|r| r.key.clone()).collect();
        for at in [0, 10, 20, 33] {
            keys.insert(at, bad.clone());
        }
        let before = round_trips(&store);
        let answers = load_all(&store, &keys).await;
        assert!(round_trips(&store) - before < keys.len() / 2);
        let mut records = records.into_iter();
        for (key, answer) in keys.iter().zip(answers) {
            if *key == bad {
                assert!(
                    matches!(
                        answer,
                        Err(Error::Backend {
                            operation: "load",
                            ..
                        })
                    ),
                    "{answer:?}"
                );
            } else {
                assert_eq!(answer.unwrap(), records.next());
            }
        }
        clean(&store).await;
    }

    /// 80 in-place saves at once, a quarter of them at a stale version and
    /// a few for sessions that are gone: each is its own compare-and-swap
    /// (applied or conflict, and only the applied ones change the record),
    /// in far fewer round trips than saves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saves_waiting_together_go_out_as_one_pipeline() {
        let Some(store) = test_store().await else {
            return;
        };
        let mut saves = Vec::new();
        let mut expected = Vec::new();
        for i in 0..80 {
            let mut record = keepsake_core::test_kit::record(r#"{"d":{}}"#);
            if i % 10 != 9 {
                assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            }
            let stored = record.version;
            record.payload = format!(r#"{{"d":{{"n":{i}}}}}"#);
            record.version = stored + 1;
            let (at, outcome) = match i % 10 {
                9 => (stored, Cas::Conflict),
                n if n % 4 == 0 => (stored + 7, Cas::Conflict),
                _ => (stored, Cas::Applied),
            };
            saves.push((record, at));
            expected.push(outcome);
        }
        let before = write_round_trips(&store);
        let answers = save_all(&store, &saves).await;
        let sent = write_round_trips(&store) - before;
        for (((record, _), answer), outcome) in saves.iter().zip(answers).zip(expected) {
            assert_eq!(answer.unwrap(), outcome);
            let stored = store.load(&record.key).await.unwrap();
            match outcome {
                Cas::Applied => assert_eq!(stored.as_ref(), Some(record)),
                Cas::Conflict => assert_ne!(stored.as_ref(), Some(record)),
            }
        }
        assert!(sent < saves.len() / 2, "{sent} round trips for 80 saves");

        let (record, at) = saves[1].clone();
        let mut next = record.clone();
        next.version = record.version + 1;
        let before = write_round_trips(&store);
        assert_eq!(
            store.save_in_place(&next, at + 1).await.unwrap(),
            Cas::Applied
        );
        assert_eq!(
            write_round_trips(&store) - before,
            1,
            "a lone save is one EVALSHA"
        );
        clean(&store).await;
    }

    /// A lone retire told the session's owner removes the index entry in
    /// its own script: one round trip. Without the owner, or with another
    /// one, the script answers the real owner and a second command removes
    /// the entry from that owner's set; the other set is left alone.
    #[tokio::test]
    async fn a_retire_told_the_owner_leaves_the_index_in_one_round_trip() {
        let Some(store) = test_store().await else {
            return;
        };
        let owned = |user: &str| {
            let mut record = keepsake_core::test_kit::record(r#"{"d":{}}"#);
            record.user_id = Some(user.to_owned());
            record
        };
        let members = |user: &'static str| async {
            let (keys, _) = store
                .members(&store.user_key(user.as_bytes()))
                .await
                .unwrap();
            keys
        };
        let other = owned("other");
        assert_eq!(store.create(&other).await.unwrap(), Cas::Applied);
        let cases: [(Option<&str>, usize); 3] = [(Some("alice"), 1), (None, 2), (Some("other"), 2)];
        for (told, round_trips) in cases {
            let record = owned("alice");
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            assert_eq!(members("alice").await, std::slice::from_ref(&record.key));
            let before = write_round_trips(&store);
            assert_eq!(
                store
                    .retire(&record.key, record.version, told)
                    .await
                    .unwrap(),
                Cas::Applied
            );
            assert_eq!(
                write_round_trips(&store) - before,
                round_trips,
                "round trips of a retire told {told:?}"
            );
            assert!(store.load(&record.key).await.unwrap().is_none());
            assert!(
                members("alice").await.is_empty(),
                "told {told:?}, the retire left the owner's index"
            );
            assert_eq!(
                members("other").await,
                std::slice::from_ref(&other.key),
                "told {told:?}, another user's index is untouched"
            );
        }
        clean(&store).await;
    }

    /// 40 sessions of one user retired at once: each leaves the user's
    /// index, and the index removals share the pipelines of the other
    /// script calls (far fewer round trips than retires and removals). Then
    /// 2,500 entries that are not storage keys are removed from the index
    /// by one listing, past Lua's `unpack` bound; and removals alone from
    /// 40 sets at once share pipelines too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_removals_join_the_script_pipelines() {
        let Some(store) = test_store().await else {
            return;
        };
        let user = "retired user";
        let mut keys = Vec::new();
        for _ in 0..40 {
            let mut record = keepsake_core::test_kit::record(r#"{"d":{}}"#);
            record.user_id = Some(user.to_owned());
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            keys.push((record.key, record.version));
        }
        let set = store.user_key(user.as_bytes());
        let indexed = || async {
            let n: i64 = redis::cmd("SCARD")
                .arg(&set)
                .query_async(&mut store.conn())
                .await
                .unwrap();
            n
        };
        assert_eq!(indexed().await, 40);
        let before = write_round_trips(&store);
        let answers = at_once(&store, &keys, |store, (key, version)| async move {
            store.retire(&key, version, None).await
        })
        .await;
        let sent = write_round_trips(&store) - before;
        for answer in answers {
            assert_eq!(answer.unwrap(), Cas::Applied);
        }
        assert_eq!(indexed().await, 0, "every retired session left the index");
        assert!(
            sent < 40,
            "{sent} round trips for 40 retires and 40 removals"
        );

        // Removals alone, from 40 sets at once: they go through the
        // script batcher (a plain SREM would count no round trip here).
        let sets: Vec<String> = (0..40)
            .map(|i| store.user_key(format!("user {i}").as_bytes()))
            .collect();
        for set in &sets {
            let _: i64 = redis::cmd("SADD")
                .arg(set)
                .arg("member")
                .query_async(&mut store.conn())
                .await
                .unwrap();
        }
        let before = write_round_trips(&store);
        at_once(&store, &sets, |store, set| async move {
            store.unindex(&set, &[b"member".to_vec()], "test").await;
        })
        .await;
        let sent = write_round_trips(&store) - before;
        assert!(
            (1..40).contains(&sent),
            "{sent} round trips for 40 removals"
        );
        for set in &sets {
            let left: i64 = redis::cmd("SCARD")
                .arg(set)
                .query_async(&mut store.conn())
                .await
                .unwrap();
            assert_eq!(left, 0);
        }

        let junk: Vec<String> = (0..2_500).map(|i| format!("not a key {i}")).collect();
        let _: i64 = redis::cmd("SADD")
            .arg(&set)
            .arg(&junk)
            .query_async(&mut store.conn())
            .await
            .unwrap();
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(&set)
            .arg(60_000)
            .query_async(&mut store.conn())
            .await
            .unwrap();
        assert!(store.list_for_user(user).await.unwrap().is_empty());
        assert_eq!(indexed().await, 0, "the junk entries were removed");
        clean(&store).await;
    }

    /// A script call that fails on the server (here: the key holds a
    /// string) fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_script_fails_only_its_own_call() {
        let Some(store) = test_store().await else {
            return;
        };
        let mut bad = keepsake_core::test_kit::record("{}");
        let _: () = redis::cmd("SET")
            .arg(store.session_key(&bad.key))
            .arg("not a hash")
            .query_async(&mut store.conn())
            .await
            .unwrap();
        bad.version += 1;
        let mut saves = Vec::new();
        for _ in 0..30 {
            let mut record = keepsake_core::test_kit::record("{}");
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            record.version += 1;
            saves.push((record, 1));
        }
        for at in [0, 10, 20, 33] {
            saves.insert(at, (bad.clone(), 1));
        }
        let before = write_round_trips(&store);
        let answers = save_all(&store, &saves).await;
        assert!(write_round_trips(&store) - before < saves.len() / 2);
        for ((record, _), answer) in saves.iter().zip(answers) {
            if record.key == bad.key {
                assert!(
                    matches!(
                        answer,
                        Err(Error::Backend {
                            operation: "save",
                            ..
                        })
                    ),
                    "{answer:?}"
                );
            } else {
                assert_eq!(answer.unwrap(), Cas::Applied);
                assert_eq!(
                    store.load(&record.key).await.unwrap().as_ref(),
                    Some(record)
                );
            }
        }
        clean(&store).await;
    }

    /// A pipeline of calls to a script the server has lost (after a
    /// restart or `SCRIPT FLUSH`) loads it again and answers every call.
    #[tokio::test]
    async fn a_pipeline_survives_a_flushed_script() {
        let Some(store) = test_store().await else {
            return;
        };
        let mut calls = Vec::new();
        let mut records = Vec::new();
        for _ in 0..3 {
            let mut record = keepsake_core::test_kit::record("{}");
            assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
            record.version += 1;
            let mut invocation = scripts::SAVE_IN_PLACE.key(store.session_key(&record.key));
            invocation
                .arg(&record.payload)
                .arg(record.version)
                .arg(record.last_activity)
                .arg("-")
                .arg("-")
                .arg(1);
            calls.push(Arc::new(invocation));
            records.push(record);
        }
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut store.conn())
            .await
            .unwrap();
        let answers = store.write_batch(calls).await.unwrap();
        for (answer, record) in answers.into_iter().zip(&records) {
            assert_eq!(answer.unwrap(), Value::Int(1));
            assert_eq!(
                store.load(&record.key).await.unwrap().as_ref(),
                Some(record)
            );
        }
        clean(&store).await;
    }

    #[tokio::test]
    async fn each_prefix_has_its_own_batcher() {
        let Some(store) = test_store().await else {
            return;
        };
        let clone = store.clone();
        assert!(Arc::ptr_eq(&store.loads, &clone.loads));
        let other = store.with_prefix("other:");
        assert!(!Arc::ptr_eq(&other.loads, &clone.loads));
    }

    /// A `redis-server` of the test's own on a free port, started with
    /// `args`, and the store on it at `path` of its URL (`/3`, say); `None`
    /// (skipped) when `redis-server` is not installed outside CI.
    async fn own_server(
        args: &[&str],
        credentials: &str,
        path: &str,
    ) -> Option<(std::process::Child, String, RedisStore)> {
        let binary = std::env::var("KEEPSAKE_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| "redis-server".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = std::process::Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                    "`{binary}` is not installed"
                );
                eprintln!("skipped: `{binary}` is not installed");
                return None;
            }
            Err(e) => panic!("could not start `{binary}`: {e}"),
        };
        let url = format!("redis://{credentials}127.0.0.1:{port}{path}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(store) = RedisStore::connect(&url).await {
                return Some((child, url, store));
            }
            assert!(std::time::Instant::now() < deadline, "no redis-server");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The loads' own connection logs in and selects the database of the
    /// URL, opens a new connection after the server dropped it, and never
    /// reads a reply meant for a load that was given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loads_connection_logs_in_reconnects_and_stays_in_step() {
        let Some((mut child, url, store)) =
            own_server(&["--requirepass", "s3cret"], ":s3cret@", "/3").await
        else {
            return;
        };
        assert!(
            store.reader.is_some(),
            "a plain TCP URL reads on its own connection"
        );
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let a = keepsake_core::test_kit::record(r#"{"n":"a"}"#);
        let b = keepsake_core::test_kit::record(r#"{"n":"b"}"#);
        for record in [&a, &b] {
            assert_eq!(store.create(record).await.unwrap(), Cas::Applied);
        }
        // Found: the load went to database 3, where the scripts wrote.
        assert_eq!(
            store.load(&a.key).await.unwrap().unwrap().payload,
            a.payload
        );

        // Every client but the admin is dropped; the next load opens a new
        // connection and succeeds.
        let _: () = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            store.load(&b.key).await.unwrap().unwrap().payload,
            b.payload
        );

        // A load given up while its reply is on the way leaves nothing
        // behind for the next one to read.
        let _: () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "400", "ALL"])
            .query_async(&mut admin)
            .await
            .unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(100), store.load(&a.key)).await;
        assert!(gave_up.is_err(), "the load waited out the pause");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            store.load(&b.key).await.unwrap().unwrap().payload,
            b.payload
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A round trip that fails (here: the server paused past the response
    /// timeout) fails every load and every save of its pipeline. Runs a
    /// `redis-server` of its own, so that pausing it disturbs nothing else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_round_trip_fails_every_call_in_it() {
        let Some((mut child, url, store)) = own_server(&[], "", "").await else {
            return;
        };
        let keys: Vec<StorageKey> = (0..40)
            .map(|_| SessionId::generate().storage_key())
            .collect();
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // Longer than two response timeouts: the first load alone and
        // then the others together both time out.
        let _: () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "3000", "ALL"])
            .query_async(&mut admin)
            .await
            .unwrap();
        let saves: Vec<(Record, i64)> = (0..40)
            .map(|_| (keepsake_core::test_kit::record("{}"), 1))
            .collect();
        let before = (round_trips(&store), write_round_trips(&store));
        let (answers, saved) = tokio::join!(load_all(&store, &keys), save_all(&store, &saves));
        let sent = round_trips(&store) - before.0;
        let writes_sent = write_round_trips(&store) - before.1;
        let _ = child.kill();
        let _ = child.wait();
        assert!(sent < keys.len() / 2, "{sent} round trips for 40 loads");
        assert!(
            writes_sent < saves.len() / 2,
            "{writes_sent} round trips for 40 saves"
        );
        for answer in saved {
            let error = answer.unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Backend {
                        store: "redis",
                        operation: "save",
                        ..
                    }
                ),
                "{error:?}"
            );
        }
        for answer in answers {
            let error = answer.unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Backend {
                        store: "redis",
                        operation: "load",
                        ..
                    }
                ),
                "{error:?}"
            );
        }
    }

    #[tokio::test]
    async fn bad_connection_settings_are_errors() {
        assert!(matches!(
            RedisStore::connect("not a url").await,
            Err(Error::Backend {
                store: "redis",
                operation: "connect",
                ..
            })
        ));
        assert!(matches!(
            RedisStore::connect_cluster(Vec::<String>::new()).await,
            Err(Error::Config { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let outcome = RedisStore::connect(&format!("redis://127.0.0.1:{port}")).await;
        assert!(matches!(
            outcome,
            Err(Error::Backend {
                operation: "connect",
                ..
            })
        ));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
