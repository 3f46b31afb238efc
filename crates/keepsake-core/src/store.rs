//! The [`SessionStore`] trait every backend implements.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{SessionId, StorageKey};
use crate::record::{Record, SessionInfo};

/// The outcome of a conditional write: [`SessionStore::create`] or
/// [`SessionStore::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Cas {
    /// The write was applied.
    Applied,
    /// The write was not applied: for `create`, a record with that key
    /// already exists; for `save`, the stored version is not the expected one,
    /// or the record is gone (destroyed or expired).
    Conflict,
}

impl Cas {
    /// True when the write was applied.
    #[must_use]
    pub fn is_applied(self) -> bool {
        self == Self::Applied
    }
}

/// A session backend.
///
/// Every operation is one round trip where the backend allows it. Stores
/// receive [`StorageKey`]s (hashed ids), never session ids, and an opaque
/// [`Record::payload`] that they persist as it is.
///
/// The guarantees, checked for every store by the conformance kit
/// (`keepsake_core::test_kit`, feature `test-kit`):
///
/// - `load` never returns an expired record.
/// - `create` inserts only if no record has that key (even an expired one that
///   has not been collected yet is replaced only if the backend can do so
///   atomically); it never overwrites a live record.
/// - `save` is compare-and-swap on [`Record::version`]: it writes only if the
///   stored version equals `expected_version`, and never re-creates a record
///   that was destroyed or has expired.
/// - `touch` moves `last_activity` and `expires_at` of a live record whose
///   version is still the expected one, never moves `expires_at` backwards,
///   and leaves the payload and version alone.
/// - `retire` deletes a live record only at the expected version.
/// - `gc` deletes expired records and returns how many.
/// - `list_for_user` / `destroy_for_user` use the per-user index; stores that
///   cannot have one return [`Error::Unsupported`](crate::Error::Unsupported).
///
/// The trait is object safe: the layer holds an `Arc<dyn SessionStore>`.
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// Loads the live record stored under `key`; `None` when absent or expired.
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>>;

    /// Inserts `record` unless a live record with its key exists.
    async fn create(&self, record: &Record) -> Result<Cas>;

    /// Replaces the stored record with `record` (whose `version` is the new
    /// version) if the stored version is `expected_version`.
    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas>;

    /// [`save`](Self::save) of a record whose `expires_at` and `user_id`
    /// are those of the version it replaces (the compare-and-swap on
    /// `expected_version` guarantees it): a store may leave those two
    /// fields, and its indexes on them, as they are, and write only the
    /// rest. Most saves of a session are of this kind, because its expiry
    /// moves in steps (see the layer's `with_touch_after`).
    ///
    /// The default calls [`save`](Self::save). The SQL stores override it
    /// with an update that changes no indexed column.
    async fn save_in_place(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        self.save(record, expected_version).await
    }

    /// Moves the expiry of a live record without rewriting its payload, if
    /// its stored version is still `expected_version`.
    ///
    /// `expires_at` never moves backwards: a record that already expires
    /// later (another request set a longer lifetime) keeps its expiry. A
    /// missing, expired or since-saved record is left as it is and the answer
    /// is [`Cas::Conflict`], so the caller knows the id it holds may be dead.
    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas>;

    /// Deletes the record stored under `key`, if any.
    async fn destroy(&self, key: &StorageKey) -> Result<()>;

    /// Deletes the record stored under `key` if it is live at
    /// `expected_version`: a login or logout retiring the id it loaded, in
    /// one compare-and-swap. [`Cas::Conflict`] when the record is gone,
    /// expired or at another version (another request saved meanwhile).
    ///
    /// `owner` is the `user_id` of the record at `expected_version`, as the
    /// caller loaded it: when the retire is applied it is the owner of the
    /// record that was deleted, so a store that keeps an index of each
    /// user's sessions may remove the entry in the same step instead of
    /// reading the owner back first. Stores whose index is a column of the
    /// record ignore it.
    ///
    /// The default saves an expired tombstone at the expected version (so
    /// the id stops loading atomically) and then destroys it, two round
    /// trips; stores that can delete conditionally do it in one.
    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        owner: Option<&str>,
    ) -> Result<Cas> {
        let _ = owner;
        let now = crate::now();
        let tombstone = Record {
            key: key.clone(),
            payload: String::new(),
            last_activity: now,
            expires_at: now - 1,
            version: expected_version + 1,
            user_id: None,
            ip_address: None,
            user_agent: None,
        };
        if !self.save(&tombstone, expected_version).await?.is_applied() {
            return Ok(Cas::Conflict);
        }
        // The id no longer loads; removing the expired record only frees
        // the space (gc would do it too), so a failure here is not one of
        // the retire.
        if let Err(error) = self.destroy(key).await {
            tracing::warn!(
                session = %key.short(),
                error = %crate::error::Report(&error),
                "removing a retired session record failed; gc will remove it"
            );
        }
        Ok(Cas::Applied)
    }

    /// Deletes the records that expired at or before `now` (unix seconds) and
    /// returns how many. Stores whose backend expires entries itself return 0.
    async fn gc(&self, now: i64) -> Result<u64>;

    /// The live sessions of `user_id`, most recently active first.
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>>;

    /// Deletes every session of `user_id` except `except` ("log out other
    /// devices") and returns how many were deleted.
    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64>;

    /// A short name for logs and metrics: `"memory"`, `"postgres"`, `"redis"` …
    fn kind(&self) -> &'static str;

    /// Stores that keep the whole record in the client (the cookie driver)
    /// return themselves here; the layer then reads and writes the record
    /// through the cookie instead of calling the other methods.
    fn client_side(&self) -> Option<&dyn ClientSideStore> {
        None
    }
}

/// A store whose records live in the client: the layer hands it the cookie
/// value it received and asks it for the value to send back.
pub trait ClientSideStore: Send + Sync {
    /// Opens a cookie value: the session id and record it carries, or `None`
    /// when it is not one this store sealed (tampered, truncated, another
    /// key, garbage). Implementations log a `warn` for the latter.
    fn open(&self, value: &str) -> Option<(SessionId, Record)>;

    /// Seals `record` of session `id` into a cookie value.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`](crate::Error::TooLarge) when the value would not fit
    /// in a browser cookie.
    fn seal(&self, id: &SessionId, record: &Record) -> Result<String>;
}

/// The future of one store operation, as `#[async_trait]` methods return it.
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A shared store is a store. The methods hand back the inner store's boxed
/// future as it is (written out rather than through `#[async_trait]`, which
/// would box it a second time on every call).
impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    fn load<'a, 'b, 'f>(&'a self, key: &'b StorageKey) -> StoreFuture<'f, Option<Record>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).load(key)
    }
    fn create<'a, 'b, 'f>(&'a self, record: &'b Record) -> StoreFuture<'f, Cas>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).create(record)
    }
    fn save<'a, 'b, 'f>(&'a self, record: &'b Record, expected_version: i64) -> StoreFuture<'f, Cas>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).save(record, expected_version)
    }
    fn save_in_place<'a, 'b, 'f>(
        &'a self,
        record: &'b Record,
        expected_version: i64,
    ) -> StoreFuture<'f, Cas>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).save_in_place(record, expected_version)
    }
    fn touch<'a, 'b, 'f>(
        &'a self,
        key: &'b StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> StoreFuture<'f, Cas>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).touch(key, expected_version, last_activity, expires_at)
    }
    fn destroy<'a, 'b, 'f>(&'a self, key: &'b StorageKey) -> StoreFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).destroy(key)
    }
    fn retire<'a, 'b, 'c, 'f>(
        &'a self,
        key: &'b StorageKey,
        expected_version: i64,
        owner: Option<&'c str>,
    ) -> StoreFuture<'f, Cas>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        (**self).retire(key, expected_version, owner)
    }
    fn gc<'a, 'f>(&'a self, now: i64) -> StoreFuture<'f, u64>
    where
        'a: 'f,
        Self: 'f,
    {
        (**self).gc(now)
    }
    fn list_for_user<'a, 'b, 'f>(&'a self, user_id: &'b str) -> StoreFuture<'f, Vec<SessionInfo>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).list_for_user(user_id)
    }
    fn destroy_for_user<'a, 'b, 'c, 'f>(
        &'a self,
        user_id: &'b str,
        except: Option<&'c StorageKey>,
    ) -> StoreFuture<'f, u64>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        (**self).destroy_for_user(user_id, except)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn client_side(&self) -> Option<&dyn ClientSideStore> {
        (**self).client_side()
    }
}
