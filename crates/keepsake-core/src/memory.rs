//! [`MemoryStore`]: sessions in this process's memory.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use indexmap::IndexMap;

use crate::error::Result;
use crate::id::StorageKey;
use crate::record::{Record, SessionInfo};
use crate::store::{Cas, SessionStore};

const SHARDS: usize = 16;

/// How many entries [`SessionStore::gc`] examines per hold of a shard's lock
/// before it releases the lock and yields: a request waiting on that shard
/// waits for at most this many expiry checks and removals.
const GC_SLICE: usize = 256;

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
/// `gc` walks each shard in slices of 256 entries: it holds the shard's lock
/// for one slice, then releases it and yields to the runtime before the
/// next, so however many sessions the store holds, a request never waits
/// behind more than one slice. An entry that expires, or that another
/// request's removal moves, while a collection runs may be left for the next
/// one. When most of a shard was removed, its memory is released with one
/// reallocation of what remains.
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

/// One shard: a hash map whose entries are also kept in a dense vector, so
/// that `gc` can resume a walk by position after releasing the lock.
type Shard = IndexMap<[u8; 32], Entry, KeyHash>;

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

    /// Examines at most `limit` entries of `shard` from position `*cursor`
    /// on, removing the expired ones and advancing `*cursor` past the live
    /// ones. Returns how many entries it examined and how many it removed.
    /// Called with the shard locked.
    fn collect_slice(
        &self,
        shard: &mut Shard,
        cursor: &mut usize,
        now: i64,
        limit: usize,
    ) -> (usize, u64) {
        let (mut examined, mut removed) = (0, 0);
        while examined < limit && *cursor < shard.len() {
            examined += 1;
            let expired = shard
                .get_index(*cursor)
                .is_some_and(|(_, e)| e.expires_at <= now);
            if !expired {
                *cursor += 1;
                continue;
            }
            // The last entry, not yet examined, moves into this position.
            if let Some((key, entry)) = shard.swap_remove_index(*cursor) {
                self.reindex(key, entry.user_id(), None);
                removed += 1;
            }
        }
        (examined, removed)
    }

    /// [`SessionStore::gc`] with the slice size as a parameter, calling
    /// `after_slice(shard index, entries examined)` after each lock hold,
    /// with the lock released.
    async fn gc_in_slices(
        &self,
        now: i64,
        slice: usize,
        mut after_slice: impl FnMut(usize, usize) + Send,
    ) -> u64 {
        let slice = slice.max(1);
        let mut removed = 0;
        for (index, shard) in self.shards.iter().enumerate() {
            let mut cursor = 0;
            // Entries created during the walk are appended behind the cursor:
            // examining no more than the shard held at the start keeps a
            // stream of creations from prolonging the walk forever.
            let mut budget = lock(shard).len();
            while budget > 0 {
                let (examined, done) = {
                    let mut shard = lock(shard);
                    let (examined, slice_removed) =
                        self.collect_slice(&mut shard, &mut cursor, now, slice.min(budget));
                    removed += slice_removed;
                    (examined, cursor >= shard.len())
                };
                budget = budget.saturating_sub(examined);
                after_slice(index, examined);
                if done || budget == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let mut shard = lock(shard);
            // Shrinking costs a pass over what remains, so only when at
            // most a quarter of the room is in use, keeping it amortized.
            if shard.capacity() > shard.len().saturating_mul(4) {
                let len = shard.len();
                shard.shrink_to(len * 2);
            }
        }
        removed
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
        if let Some(entry) = shard.swap_remove(&bytes) {
            self.reindex(bytes, entry.user_id(), None);
        }
        Ok(())
    }

    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        _owner: Option<&str>,
    ) -> Result<Cas> {
        let bytes = key.to_bytes();
        let now = crate::now();
        let mut shard = self.shard(&bytes);
        match shard.get(&bytes) {
            Some(entry) if entry.version == expected_version && entry.expires_at > now => {}
            _ => return Ok(Cas::Conflict),
        }
        if let Some(entry) = shard.swap_remove(&bytes) {
            self.reindex(bytes, entry.user_id(), None);
        }
        Ok(Cas::Applied)
    }

    async fn gc(&self, now: i64) -> Result<u64> {
        Ok(self.gc_in_slices(now, GC_SLICE, |_, _| {}).await)
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
                && let Some(entry) = shard.swap_remove(&bytes)
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

#[cfg(test)]
mod gc_slices {
    #![allow(clippy::unwrap_used)]

    use sha2::{Digest as _, Sha256};

    use super::*;

    /// The raw key of entry `i`: uniform bytes, as real storage keys are.
    fn key(i: u32) -> [u8; 32] {
        Sha256::digest(i.to_be_bytes()).into()
    }

    /// Entry `i`: its payload is its number; every third has an owner.
    fn record(i: u32, expires_at: i64) -> Record {
        Record {
            key: StorageKey::from_bytes(key(i)),
            payload: i.to_string(),
            last_activity: 0,
            expires_at,
            version: 1,
            user_id: i.is_multiple_of(3).then(|| format!("user-{}", i % 7)),
            ip_address: None,
            user_agent: None,
        }
    }

    fn expired() -> i64 {
        crate::now() - 10
    }

    fn live() -> i64 {
        crate::now() + 3600
    }

    /// A store of `n` entries, those with an even number expired.
    async fn half_expired(n: u32) -> MemoryStore {
        let store = MemoryStore::new();
        for i in 0..n {
            let expires_at = if i.is_multiple_of(2) {
                expired()
            } else {
                live()
            };
            let created = store.create(&record(i, expires_at)).await.unwrap();
            assert_eq!(created, Cas::Applied);
        }
        store
    }

    fn is_loadable(store: &MemoryStore, i: u32) -> bool {
        let key = key(i);
        store
            .shard(&key)
            .get(&key)
            .is_some_and(|e| e.expires_at > crate::now())
    }

    #[tokio::test]
    async fn no_lock_hold_examines_more_than_one_slice() {
        let n = 20_000;
        for slice in [1, 7, GC_SLICE] {
            let store = half_expired(n).await;
            let mut holds = Vec::new();
            let removed = store
                .gc_in_slices(crate::now(), slice, |shard, examined| {
                    // The hook runs between holds: the lock is free.
                    assert!(store.shards[shard].try_lock().is_ok());
                    holds.push(examined);
                })
                .await;
            assert_eq!(removed, u64::from(n / 2));
            assert!(holds.iter().all(|&e| e <= slice), "slice {slice}");
            assert_eq!(
                holds.iter().sum::<usize>(),
                n as usize,
                "each examined once"
            );
            assert!(holds.len() >= n as usize / slice, "slice {slice}");
        }

        // The store's own gc: the same result, and the index follows.
        let store = half_expired(n).await;
        assert_eq!(store.gc(crate::now()).await.unwrap(), u64::from(n / 2));
        assert_eq!(store.len(), n as usize / 2);
        assert_eq!(store.gc(crate::now()).await.unwrap(), 0);
        for i in 0..n {
            assert_eq!(is_loadable(&store, i), i % 2 == 1, "entry {i}");
        }
        for user in 0..7 {
            let expected = (0..n)
                .filter(|i| i.is_multiple_of(3) && i % 7 == user && i % 2 == 1)
                .count();
            assert_eq!(store.user_keys(&format!("user-{user}")).len(), expected);
        }
    }

    #[tokio::test]
    async fn changes_between_slices_are_safe() {
        let n = 4_000;
        let store = half_expired(n).await;
        let mut next = n;
        let mut created = Vec::new();
        let mut destroyed = Vec::new();
        store
            .gc_in_slices(crate::now(), 16, |shard, _| {
                // Between two holds, other requests create and destroy
                // entries of the very shard being walked.
                while usize::from(key(next)[31]) % SHARDS != shard {
                    next += 1;
                }
                let mut locked = lock(&store.shards[shard]);
                locked.insert(key(next), Entry::from_record(&record(next, live())));
                created.push(next);
                next += 1;
                let (&first, _) = locked.get_index(0).unwrap();
                let entry = locked.swap_remove(&first).unwrap();
                store.reindex(first, entry.user_id(), None);
                destroyed.push(entry.payload.parse::<u32>().unwrap());
            })
            .await;
        // Nothing live was removed but what the hook destroyed.
        for i in (1..n).step_by(2).chain(created) {
            assert_eq!(is_loadable(&store, i), !destroyed.contains(&i), "entry {i}");
        }
        // What this walk missed, the next one collects.
        let now = crate::now();
        store.gc(now).await.unwrap();
        assert!(
            store
                .shards
                .iter()
                .all(|s| lock(s).values().all(|e| e.expires_at > now))
        );
    }

    #[test]
    fn a_slice_is_a_pure_step_over_positions() {
        const NOW: i64 = 1_700_000_000;
        let store = MemoryStore::new();
        let mut shard = Shard::default();
        for i in 0..10u32 {
            let r = record(i, if i < 6 { NOW } else { NOW + 1 });
            shard.insert(key(i), Entry::from_record(&r));
        }
        let order = |shard: &Shard| -> Vec<u32> {
            shard.values().map(|e| e.payload.parse().unwrap()).collect()
        };
        let mut cursor = 0;
        // Entries 0..6 are expired: each removal pulls the last entry into
        // its position, which is examined next.
        assert_eq!(store.collect_slice(&mut shard, &mut cursor, NOW, 3), (3, 2));
        assert_eq!(cursor, 1);
        assert_eq!(order(&shard), [9, 8, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            store.collect_slice(&mut shard, &mut cursor, NOW, 100),
            (7, 4)
        );
        assert_eq!(cursor, 4);
        assert_eq!(order(&shard), [9, 8, 7, 6]);
        assert_eq!(
            store.collect_slice(&mut shard, &mut cursor, NOW, 100),
            (0, 0)
        );
        // A limit of zero examines nothing.
        let mut cursor = 0;
        assert_eq!(
            store.collect_slice(&mut shard, &mut cursor, NOW + 5, 0),
            (0, 0)
        );
    }
}
