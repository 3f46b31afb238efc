//! [`FileStore`]: the blocking filesystem work, and the async trait on top.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keepsake_core::{Cas, Error, Record, Result, SessionInfo, SessionStore, StorageKey};
use sha2::{Digest as _, Sha256};

use crate::format::{self, FormatError, Header};
use crate::io::{
    Context as _, IoError, ShardLock, TEMP_PREFIX, create_dir, create_dir_all, private_file,
    sync_dir, temp_name, write_atomic,
};

const KIND: &str = "file";

/// The directory of the per-user index, beside the shard directories.
const USERS_DIR: &str = "users";

/// Temporary files older than this are left over from a crashed writer and
/// are removed by [`SessionStore::gc`]. No write takes anywhere near as long.
const STALE_TEMP: Duration = Duration::from_secs(10 * 60);

/// Sessions in files: one file per session under a directory, for a single
/// server (or several processes sharing one local directory) that wants
/// sessions to survive restarts without running a database.
///
/// See the [crate documentation](crate) for the layout, the file format and
/// the locking model.
///
/// Cloning is cheap: clones share one configuration.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use keepsake_core::{Cas, Record, SessionId, SessionStore};
/// use keepsake_file::FileStore;
///
/// let dir = std::env::temp_dir().join(format!("keepsake-doc-{}", std::process::id()));
/// let store = FileStore::new(&dir)?;
/// let record = Record {
///     key: SessionId::generate().storage_key(),
///     payload: r#"{"d":{"cart":3}}"#.into(),
///     last_activity: keepsake_core::now(),
///     expires_at: keepsake_core::now() + 3600,
///     version: 1,
///     user_id: Some("42".into()),
///     ip_address: None,
///     user_agent: None,
/// };
/// assert_eq!(store.create(&record).await?, Cas::Applied);
/// assert_eq!(store.load(&record.key).await?, Some(record.clone()));
/// assert_eq!(store.list_for_user("42").await?.len(), 1);
/// store.destroy(&record.key).await?;
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), keepsake_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    sync: bool,
}

impl FileStore {
    /// Opens (and creates, mode 0700 on unix, with missing parents) the
    /// session directory `dir`, and checks that it can be listed and
    /// written to.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] (operation `"open"`) naming the path and carrying
    /// the I/O error when the directory cannot be created, is not a
    /// directory, or cannot be read or written.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_owned();
        let open = |e: IoError| Error::backend(KIND, "open", e);
        create_dir_all(&root)
            .context("create session directory", &root)
            .map_err(open)?;
        fs::read_dir(&root)
            .context("list session directory", &root)
            .map_err(open)?;
        let probe = root.join(temp_name());
        private_file()
            .create_new(true)
            .open(&probe)
            .context("write a file in session directory", &root)
            .map_err(open)?;
        fs::remove_file(&probe)
            .context("remove a file in session directory", &root)
            .map_err(open)?;
        Ok(Self {
            inner: Arc::new(Inner { root, sync: true }),
        })
    }

    /// Whether writes are flushed to disk (`fsync` of the file before it is
    /// renamed into place, and of its directory after) before they are
    /// acknowledged. Without it a write is still atomic (old or new version,
    /// never a torn file) but a power loss may lose the last writes.
    ///
    /// Defaults to `true`.
    #[must_use]
    pub fn with_sync(self, sync: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                sync,
            }),
        }
    }

    /// The session directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `f` on the blocking thread pool, never on an async worker.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, IoError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::backend(KIND, operation, e)),
            Err(join) => Err(Error::backend(KIND, operation, join)),
        }
    }
}

/// What is stored under a key.
enum Stored {
    Missing,
    /// Unreadable: torn, garbage, or a newer format version.
    Unreadable(FormatError),
    Present(Header, String),
}

impl Stored {
    /// The header, when the file holds a live record at `now`.
    fn live(&self, now: i64) -> Option<&Header> {
        match self {
            Self::Present(header, _) if !header.is_expired(now) => Some(header),
            _ => None,
        }
    }

    fn owner(&self) -> Option<&str> {
        match self {
            Self::Present(header, _) => header.user_id.as_deref(),
            _ => None,
        }
    }
}

fn is_hex(name: &str, len: usize) -> bool {
    name.len() == len
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Logs a failure of the per-user index around a write that itself
/// succeeded: the write stands (its data is stored), and the entry is
/// repaired by the session's next save (a missing entry) or dropped by the
/// next listing (a stale one).
fn index_failed(key: &StorageKey, error: &IoError) {
    let cause = std::error::Error::source(error).map(ToString::to_string);
    tracing::warn!(
        store = KIND,
        key = key.short(),
        error = %error,
        cause = cause.as_deref().unwrap_or_default(),
        "per-user index not updated; the session itself is stored"
    );
}

fn warn_unreadable(key: &StorageKey, error: &FormatError) {
    tracing::warn!(
        store = KIND,
        key = key.short(),
        error = %error,
        "unreadable session file treated as absent"
    );
}

impl Inner {
    fn shard_dir(&self, key: &StorageKey) -> PathBuf {
        self.root.join(&key.as_str()[..2])
    }

    fn session_path(&self, key: &StorageKey) -> PathBuf {
        self.shard_dir(key).join(key.as_str())
    }

    /// The index directory of `user_id`: `users/<h[..2]>/<h>` where `h` is the
    /// hex SHA-256 of the user id, so no path is ever built from the id.
    fn user_dir(&self, user_id: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(user_id.as_bytes()));
        self.root.join(USERS_DIR).join(&hash[..2]).join(hash)
    }

    /// Locks the shard of `key`, creating its directory on first use.
    fn lock(&self, key: &StorageKey) -> Result<ShardLock, IoError> {
        let dir = self.shard_dir(key);
        match ShardLock::acquire(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_dir(&dir).context("create shard directory", &dir)?;
                ShardLock::acquire(&dir).context("lock shard", &dir)
            }
            other => other.context("lock shard", &dir),
        }
    }

    fn read(&self, key: &StorageKey) -> Result<Stored, IoError> {
        let path = self.session_path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(match format::decode(&bytes) {
                Ok((header, payload)) => Stored::Present(header, payload),
                Err(e) => Stored::Unreadable(e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stored::Missing),
            Err(e) => Err(IoError::new("read session file", &path, e)),
        }
    }

    fn write(&self, record: &Record) -> Result<(), IoError> {
        let path = self.session_path(&record.key);
        let bytes = format::encode(record).context("encode session file", &path)?;
        write_atomic(&self.shard_dir(&record.key), &path, &bytes, self.sync)
    }

    fn remove_session(&self, key: &StorageKey) -> Result<bool, IoError> {
        let path = self.session_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IoError::new("remove session file", &path, e)),
        }
    }

    /// Adds `key` to the index of `user_id`. Called before the session file is
    /// written, so a crash leaves at worst a stale entry (skipped and removed
    /// on the next listing), never a session missing from its user's index.
    fn add_marker(&self, user_id: &str, key: &StorageKey) -> Result<(), IoError> {
        let dir = self.user_dir(user_id);
        let marker = dir.join(key.as_str());
        // A concurrent `remove_marker` of the last entry may remove the
        // directory between its creation and the marker's: try again.
        let mut attempts = 0;
        loop {
            create_dir_all(&dir).context("create user index directory", &dir)?;
            match private_file().create(true).truncate(false).open(&marker) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
                Err(e) => return Err(IoError::new("create user index entry", &marker, e)),
            }
        }
        if self.sync {
            sync_dir(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Removes `key` from the index of `user_id`, and the user's directory
    /// once it is empty.
    fn remove_marker(&self, user_id: &str, key: &StorageKey) -> Result<(), IoError> {
        let dir = self.user_dir(user_id);
        let marker = dir.join(key.as_str());
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::new("remove user index entry", &marker, e)),
        }
        // Fails while other entries remain, which is the point.
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    /// Whether the index of `user_id` lists `key`. An entry that cannot be
    /// inspected counts as missing, so that writing it is tried again.
    fn has_marker(&self, user_id: &str, key: &StorageKey) -> bool {
        fs::symlink_metadata(self.user_dir(user_id).join(key.as_str())).is_ok()
    }

    /// Index work before `key` is written with the owner `new` (the stored
    /// record's owner is `old`): adds the entry of `new` when the owner
    /// changes, or when it is missing (a failure of an earlier write, which
    /// this repairs). Never fails the write: see [`index_failed`].
    fn reindex_before(&self, key: &StorageKey, old: Option<&str>, new: Option<&str>) {
        let Some(new) = new else {
            return;
        };
        if old == Some(new) && self.has_marker(new, key) {
            return;
        }
        if let Err(e) = self.add_marker(new, key) {
            index_failed(key, &e);
        }
    }

    /// Index work after `key` was written with the owner `new`: removes the
    /// entry of the previous owner `old`. Never fails the write: see
    /// [`index_failed`].
    fn reindex_after(&self, key: &StorageKey, old: Option<&str>, new: Option<&str>) {
        match old {
            Some(old) if new != Some(old) => self.unindex(old, key),
            _ => {}
        }
    }

    /// Removes the entry of `key` from the index of `user_id` after the
    /// session changed owner or was removed. A failure leaves a stale entry,
    /// which listings skip and drop, so it is logged, never returned.
    fn unindex(&self, user_id: &str, key: &StorageKey) {
        if let Err(e) = self.remove_marker(user_id, key) {
            index_failed(key, &e);
        }
    }

    fn load(&self, key: &StorageKey, now: i64) -> Result<Option<Record>, IoError> {
        Ok(match self.read(key)? {
            Stored::Present(header, payload) if !header.is_expired(now) => {
                Some(format::to_record(key.clone(), header, payload))
            }
            Stored::Unreadable(e) => {
                warn_unreadable(key, &e);
                None
            }
            _ => None,
        })
    }

    fn create(&self, record: &Record, now: i64) -> Result<Cas, IoError> {
        let _lock = self.lock(&record.key)?;
        let stored = self.read(&record.key)?;
        if stored.live(now).is_some() {
            return Ok(Cas::Conflict);
        }
        if let Stored::Unreadable(e) = &stored {
            if !e.is_corrupt() {
                // A newer keepsake's live session, perhaps: never overwrite it.
                return Ok(Cas::Conflict);
            }
            warn_unreadable(&record.key, e);
        }
        let (old, new) = (stored.owner(), record.user_id.as_deref());
        self.reindex_before(&record.key, old, new);
        self.write(record)?;
        self.reindex_after(&record.key, old, new);
        Ok(Cas::Applied)
    }

    fn save(&self, record: &Record, expected_version: i64, now: i64) -> Result<Cas, IoError> {
        let _lock = self.lock(&record.key)?;
        let stored = self.read(&record.key)?;
        match stored.live(now) {
            Some(header) if header.version == expected_version => {}
            _ => return Ok(Cas::Conflict),
        }
        let (old, new) = (stored.owner(), record.user_id.as_deref());
        self.reindex_before(&record.key, old, new);
        self.write(record)?;
        self.reindex_after(&record.key, old, new);
        Ok(Cas::Applied)
    }

    fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
        now: i64,
    ) -> Result<Cas, IoError> {
        if !self.shard_dir(key).is_dir() {
            return Ok(Cas::Conflict);
        }
        let _lock = self.lock(key)?;
        match self.read(key)? {
            Stored::Present(mut header, payload)
                if !header.is_expired(now) && header.version == expected_version =>
            {
                header.last_activity = last_activity;
                header.expires_at = header.expires_at.max(expires_at);
                self.write(&format::to_record(key.clone(), header, payload))?;
                Ok(Cas::Applied)
            }
            _ => Ok(Cas::Conflict),
        }
    }

    fn retire(&self, key: &StorageKey, expected_version: i64, now: i64) -> Result<Cas, IoError> {
        if !self.shard_dir(key).is_dir() {
            return Ok(Cas::Conflict);
        }
        let _lock = self.lock(key)?;
        let stored = self.read(key)?;
        match stored.live(now) {
            Some(header) if header.version == expected_version => {}
            _ => return Ok(Cas::Conflict),
        }
        self.remove_session(key)?;
        if let Some(owner) = stored.owner() {
            self.unindex(owner, key);
        }
        Ok(Cas::Applied)
    }

    fn destroy(&self, key: &StorageKey) -> Result<(), IoError> {
        if !self.shard_dir(key).is_dir() {
            return Ok(());
        }
        let _lock = self.lock(key)?;
        let stored = self.read(key)?;
        self.remove_session(key)?;
        if let Some(owner) = stored.owner() {
            self.unindex(owner, key);
        }
        Ok(())
    }

    /// Reads the header of the file at `path`: `None` when it is gone.
    fn read_head(path: &Path) -> Result<Option<Result<Header, FormatError>>, IoError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IoError::new("open session file", path, e)),
        };
        let len = file.metadata().context("inspect session file", path)?.len();
        format::read_head(&mut file, len)
            .map(Some)
            .context("read session file", path)
    }

    /// Whether the file at `path` is to be collected: expired, or damaged (a
    /// newer format version is left alone). Returns the owner to unindex.
    fn collectable(path: &Path, now: i64) -> Result<Option<Option<String>>, IoError> {
        Ok(match Self::read_head(path)? {
            Some(Ok(header)) if header.is_expired(now) => Some(header.user_id),
            Some(Err(e)) if e.is_corrupt() => Some(None),
            _ => None,
        })
    }

    fn gc(&self, now: i64) -> Result<u64, IoError> {
        let mut removed = 0;
        let shards = match fs::read_dir(&self.root) {
            Ok(shards) => shards,
            Err(e) => return Err(IoError::new("list session directory", &self.root, e)),
        };
        let mut shard_names: Vec<String> = shards
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| is_hex(name, 2))
            .collect();
        shard_names.sort_unstable();
        for name in shard_names {
            removed += self.gc_shard(&self.root.join(name), now)?;
        }
        Ok(removed)
    }

    /// Collects one shard: candidates are found without the lock, then each
    /// is checked again and removed under it, so a session re-created in the
    /// meantime is never removed.
    fn gc_shard(&self, dir: &Path, now: i64) -> Result<u64, IoError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(IoError::new("list shard directory", dir, e)),
        };
        let mut candidates = Vec::new();
        for entry in entries {
            let entry = entry.context("list shard directory", dir)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                remove_if_stale(&entry.path());
                continue;
            }
            // Lock files, foreign files and anything else not named like a
            // session are never touched.
            if !is_hex(&name, 64) {
                continue;
            }
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if Self::collectable(&entry.path(), now)?.is_some() {
                candidates.push(name);
            }
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let _lock = ShardLock::acquire(dir).context("lock shard", dir)?;
        let mut removed = 0;
        for name in candidates {
            let Some(key) = StorageKey::parse(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let Some(owner) = Self::collectable(&path, now)? else {
                continue;
            };
            if self.remove_session(&key)? {
                removed += 1;
                if let Some(owner) = owner {
                    self.unindex(&owner, &key);
                }
            }
        }
        Ok(removed)
    }

    /// The keys listed in the index of `user_id`.
    fn user_keys(&self, user_id: &str) -> Result<Vec<StorageKey>, IoError> {
        let dir = self.user_dir(user_id);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IoError::new("list user index", &dir, e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.context("list user index", &dir)?;
            if let Some(key) = entry.file_name().to_str().and_then(StorageKey::parse) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Removes the index entry of `key` for `user_id` if, under the lock, the
    /// session no longer belongs to that user (left over by a crash).
    fn drop_stale_marker(&self, user_id: &str, key: &StorageKey) -> Result<(), IoError> {
        let _lock = self.lock(key)?;
        if self.read(key)?.owner() != Some(user_id) {
            self.unindex(user_id, key);
        }
        Ok(())
    }

    fn list_for_user(&self, user_id: &str, now: i64) -> Result<Vec<SessionInfo>, IoError> {
        let mut sessions = Vec::new();
        for key in self.user_keys(user_id)? {
            match self.read(&key)? {
                Stored::Present(header, payload) if header.user_id.as_deref() == Some(user_id) => {
                    if !header.is_expired(now) {
                        sessions.push(format::to_record(key, header, payload).info());
                    }
                }
                Stored::Unreadable(_) => {}
                _ => self.drop_stale_marker(user_id, &key)?,
            }
        }
        sessions.sort_by(|a, b| {
            b.last_activity
                .cmp(&a.last_activity)
                .then(a.key.cmp(&b.key))
        });
        Ok(sessions)
    }

    fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64, IoError> {
        let mut removed = 0;
        for key in self.user_keys(user_id)? {
            if Some(&key) == except {
                continue;
            }
            let _lock = self.lock(&key)?;
            if self.read(&key)?.owner() == Some(user_id) && self.remove_session(&key)? {
                removed += 1;
            }
            self.unindex(user_id, &key);
        }
        Ok(removed)
    }
}

/// Removes a temporary file left by a writer that crashed long ago.
fn remove_if_stale(path: &Path) {
    let stale = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age >= STALE_TEMP);
    if stale {
        match fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!(store = KIND, path = %path.display(), "removed stale temporary file");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                store = KIND,
                path = %path.display(),
                error = %e,
                "could not remove stale temporary file"
            ),
        }
    }
}

#[async_trait]
impl SessionStore for FileStore {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        let key = key.clone();
        let now = keepsake_core::now();
        self.blocking("load", move |inner| inner.load(&key, now))
            .await
    }

    async fn create(&self, record: &Record) -> Result<Cas> {
        let record = record.clone();
        let now = keepsake_core::now();
        self.blocking("create", move |inner| inner.create(&record, now))
            .await
    }

    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        let record = record.clone();
        let now = keepsake_core::now();
        self.blocking("save", move |inner| {
            inner.save(&record, expected_version, now)
        })
        .await
    }

    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        let key = key.clone();
        let now = keepsake_core::now();
        self.blocking("touch", move |inner| {
            inner.touch(&key, expected_version, last_activity, expires_at, now)
        })
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        let key = key.clone();
        self.blocking("destroy", move |inner| inner.destroy(&key))
            .await
    }

    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        _owner: Option<&str>,
    ) -> Result<Cas> {
        let key = key.clone();
        let now = keepsake_core::now();
        self.blocking("retire", move |inner| {
            inner.retire(&key, expected_version, now)
        })
        .await
    }

    async fn gc(&self, now: i64) -> Result<u64> {
        self.blocking("gc", move |inner| inner.gc(now)).await
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        let user_id = user_id.to_owned();
        let now = keepsake_core::now();
        self.blocking("list_for_user", move |inner| {
            inner.list_for_user(&user_id, now)
        })
        .await
    }

    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64> {
        let user_id = user_id.to_owned();
        let except = except.cloned();
        self.blocking("destroy_for_user", move |inner| {
            inner.destroy_for_user(&user_id, except.as_ref())
        })
        .await
    }

    fn kind(&self) -> &'static str {
        KIND
    }
}
