//! [`MemoryStore`]: sessions in this process's memory.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::error::Result;
use crate::id::StorageKey;
use crate::record::{Record, SessionInfo};
use crate::store::{Cas, SessionStore};

const SHARDS: usize = 16;

/// Sessions in this process's memory: for tests, development and single-process
/// deployments that can lose their sessions on restart.
///
/// Entries are kept compactly (the 32 raw bytes of the storage key, the
/// payload, three integers, and the optional owner and client details behind
/// one pointer), sharded over 16 mutexes so concurrent requests of different
/// sessions rarely wait on each other. Expired entries stop loading at once
/// and are removed by [`SessionStore::gc`] (the layer's lottery, or a
/// background task).
///
/// ```
/// # tokio_test();
/// # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use keepsake_core::{Cas, MemoryStore, Record, SessionId, SessionStore};
///
/// let store = MemoryStore::new();
/// let record = Record {
///     key: SessionId::generate().storage_key(),
///     payload: r#"{"d":{}}"#.into(),
///     last_activity: keepsake_core::now(),
///     expires_at: keepsake_core::now() + 60,
///     version: 1,
///     user_id: None,
///     ip_address: None,
///     user_agent: None,
/// };
/// assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
/// assert_eq!(store.create(&record).await.unwrap(), Cas::Conflict);
/// assert_eq!(store.load(&record.key).await.unwrap(), Some(record));
/// # }) }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    users: Mutex<HashMap<Box<str>, KeySet>>,
}

type Shard = HashMap<[u8; 32], Entry, KeyHash>;

/// The raw storage keys of one user's sessions.
type KeySet = HashSet<[u8; 32], KeyHash>;

type KeyHash = BuildHasherDefault<KeyHasher>;

/// Hashes a raw storage key by its first eight bytes.
///
/// The keys are SHA-256 digests of ids the server generated, so their bytes
/// are already uniform. A client can look a key up but never make the store
/// hold a key it chose, so it cannot pile entries into one bucket: the
/// flooding that a keyed hash (SipHash, the default) guards against cannot
/// happen here, and it would only cost time on every operation.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (slot, byte) in word.iter_mut().zip(bytes) {
            *slot = *byte;
        }
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _length: usize) {
        // The length prefix of a fixed-size key carries no information.
    }
}

#[derive(Debug)]
struct Entry {
    payload: Box<str>,
    last_activity: i64,
    expires_at: i64,
    version: i64,
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    user_id: Option<Box<str>>,
    ip_address: Option<Box<str>>,
    user_agent: Option<Box<str>>,
}

impl Entry {
    fn from_record(record: &Record) -> Self {
        let extra = (record.user_id.is_some()
            || record.ip_address.is_some()
            || record.user_agent.is_some())
        .then(|| {
            Box::new(Extra {
                user_id: record.user_id.as_deref().map(Into::into),
                ip_address: record.ip_address.as_deref().map(Into::into),
                user_agent: record.user_agent.as_deref().map(Into::into),
            })
        });
        Self {
            payload: record.payload.as_str().into(),
            last_activity: record.last_activity,
            expires_at: record.expires_at,
            version: record.version,
            extra,
        }
    }

    fn user_id(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.user_id.as_deref())
    }

    fn to_record(&self, key: StorageKey) -> Record {
        let extra = self.extra.as_deref();
        let field = |f: fn(&Extra) -> &Option<Box<str>>| {
            extra.and_then(|e| f(e).as_deref()).map(str::to_owned)
        };
        Record {
            key,
            payload: String::from(&*self.payload),
            last_activity: self.last_activity,
            expires_at: self.expires_at,
            version: self.version,
            user_id: field(|e| &e.user_id),
            ip_address: field(|e| &e.ip_address),
            user_agent: field(|e| &e.user_agent),
        }
    }

    fn info(&self, key: StorageKey) -> SessionInfo {
        let extra = self.extra.as_deref();
        let field = |f: fn(&Extra) -> &Option<Box<str>>| {
            extra.and_then(|e| f(e).as_deref()).map(str::to_owned)
        };
        SessionInfo {
            key,
            user_id: field(|e| &e.user_id),
            last_activity: self.last_activity,
            expires_at: self.expires_at,
            ip_address: field(|e| &e.ip_address),
            user_agent: field(|e| &e.user_agent),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            users: Mutex::default(),
        }
    }

    /// How many entries the store holds, expired ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when the store holds no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &[u8; 32]) -> MutexGuard<'_, Shard> {
        // The last byte picks the shard; the first eight hash within it.
        lock(&self.shards[usize::from(key[31]) % SHARDS])
    }

    /// Keeps the per-user index in step with one entry's owner. Called with the
    /// entry's shard locked (lock order: shard, then users).
    fn reindex(&self, key: [u8; 32], old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        let mut users = lock(&self.users);
        if let Some(old) = old
            && let Some(set) = users.get_mut(old)
        {
            set.remove(&key);
            if set.is_empty() {
                users.remove(old);
            }
        }
        if let Some(new) = new {
            users.entry(new.into()).or_default().insert(key);
        }
    }

    fn user_keys(&self, user_id: &str) -> Vec<[u8; 32]> {
        lock(&self.users)
            .get(user_id)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave a map half-updated, so a poisoned lock is safe to use.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        let bytes = key.to_bytes();
        let now = crate::now();
        Ok(self
            .shard(&bytes)
            .get(&bytes)
            .filter(|e| e.expires_at > now)
            .map(|e| e.to_record(key.clone())))
    }

    async fn create(&self, record: &Record) -> Result<Cas> {
        let bytes = record.key.to_bytes();
        let now = crate::now();
        let mut shard = self.shard(&bytes);
        let previous_owner = match shard.get(&bytes) {
            Some(existing) if existing.expires_at > now => return Ok(Cas::Conflict),
            Some(expired) => expired.user_id().map(str::to_owned),
            None => None,
        };
        shard.insert(bytes, Entry::from_record(record));
        self.reindex(bytes, previous_owner.as_deref(), record.user_id.as_deref());
        Ok(Cas::Applied)
    }

    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        let bytes = record.key.to_bytes();
        let now = crate::now();
        let mut shard = self.shard(&bytes);
        let Some(entry) = shard.get_mut(&bytes) else {
            return Ok(Cas::Conflict);
        };
        if entry.version != expected_version || entry.expires_at <= now {
            return Ok(Cas::Conflict);
        }
        let previous_owner = entry.user_id().map(str::to_owned);
        *entry = Entry::from_record(record);
        self.reindex(bytes, previous_owner.as_deref(), record.user_id.as_deref());
        Ok(Cas::Applied)
    }

    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        let bytes = key.to_bytes();
        let now = crate::now();
        match self.shard(&bytes).get_mut(&bytes) {
            Some(entry) if entry.expires_at > now && entry.version == expected_version => {
                entry.last_activity = last_activity;
                entry.expires_at = entry.expires_at.max(expires_at);
                Ok(Cas::Applied)
            }
            _ => Ok(Cas::Conflict),
        }
    }

    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        let bytes = key.to_bytes();
        let mut shard = self.shard(&bytes);
        if let Some(entry) = shard.remove(&bytes) {
            self.reindex(bytes, entry.user_id(), None);
        }
        Ok(())
    }

    async fn gc(&self, now: i64) -> Result<u64> {
        let mut removed = 0u64;
        for shard in &*self.shards {
            let mut shard = lock(shard);
            let expired: Vec<[u8; 32]> = shard
                .iter()
                .filter(|(_, e)| e.expires_at <= now)
                .map(|(k, _)| *k)
                .collect();
            for key in expired {
                if let Some(entry) = shard.remove(&key) {
                    self.reindex(key, entry.user_id(), None);
                    removed += 1;
                }
            }
            let len = shard.len();
            shard.shrink_to(len * 2);
        }
        Ok(removed)
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        let now = crate::now();
        let mut sessions: Vec<SessionInfo> = self
            .user_keys(user_id)
            .into_iter()
            .filter_map(|bytes| {
                self.shard(&bytes)
                    .get(&bytes)
                    .filter(|e| e.expires_at > now && e.user_id() == Some(user_id))
                    .map(|e| e.info(StorageKey::from_bytes(bytes)))
            })
            .collect();
        sessions.sort_by(|a, b| {
            b.last_activity
                .cmp(&a.last_activity)
                .then(a.key.cmp(&b.key))
        });
        Ok(sessions)
    }

    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64> {
        let keep = except.map(StorageKey::to_bytes);
        let mut removed = 0;
        for bytes in self.user_keys(user_id) {
            if Some(bytes) == keep {
                continue;
            }
            let mut shard = self.shard(&bytes);
            if shard
                .get(&bytes)
                .is_some_and(|e| e.user_id() == Some(user_id))
                && let Some(entry) = shard.remove(&bytes)
            {
                self.reindex(bytes, entry.user_id(), None);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(all(test, feature = "test-kit"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::test_kit::run_all(
            || async { MemoryStore::new() },
            crate::test_kit::Options::default(),
        )
        .await;
    }
}
