//! [`Session`]: the handler-facing API.
//!
//! The module has three parts: this file is the API a handler calls;
//! [`ops`] is the op log a request builds and its replay onto a newer
//! record; the commit protocol that ends a request is [`crate::commit`].

mod ops;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::id::{SessionId, StorageKey, random_token};
use crate::path;
use crate::record::{Payload, Record, now_millis};

pub use ops::MAX_DEPTH;
pub(crate) use ops::{Observed, Op, Read, Seen, State, Step};

/// One session, as a handler sees it.
///
/// Every method is synchronous: the layer loads the record before the handler
/// runs and writes it back once afterwards. `Session` is cheap to clone (an
/// `Arc` inside) and every clone sees the same state, so it can be shared by
/// the tasks of one request.
///
/// Keys are dot paths (`"user.name"`); see the [crate docs](crate) for the
/// exact behaviour of every method, and the project's `docs/semantics.md` for
/// what each one means when requests of one session overlap.
///
/// # Concurrent requests
///
/// When another request of the same session saved first, this request's
/// changes are replayed on the newer record: blind writes (`put`, `forget`,
/// `flash` …) as if this request ran second, `increment` and `push` on the
/// newer value. Reads (`get`, `has`, `all`, the value `pull` returned …) are
/// checked: a request that wrote something and read a value the other
/// request changed fails with [`Error::Stale`] (409 by default) rather than
/// act on a value that is gone. A request that only reads never fails this
/// way. The three documented exceptions are the values returned by
/// `increment`, by a first `remember` and by a first `token()` that raced.
///
/// ```
/// use keepsake_core::Session;
///
/// let session = Session::new_detached();
/// session.put("user.name", "Ada").unwrap();
/// assert_eq!(session.get::<String>("user.name").unwrap().as_deref(), Some("Ada"));
/// assert_eq!(session.increment("visits", 1).unwrap(), 1);
/// session.flash("status", "saved").unwrap();
/// assert!(session.has("status"));
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) id: SessionId,
    /// The record as loaded (or as last rebased onto), `None` for a session
    /// that is not stored yet.
    pub(crate) base: Option<Base>,
    /// What the handler sees: `base` plus every op of this request.
    pub(crate) current: State,
    /// The change set of this request, replayed on a conflict.
    pub(crate) ops: Vec<Op>,
    /// What the handler read of a stored session, checked on a replay.
    pub(crate) reads: Vec<Read>,
    /// The id changed (`regenerate`, `migrate`, `invalidate`): the base
    /// record is retired after the new one is stored.
    pub(crate) id_changed: bool,
    /// `current` differs from the base for a reason other than `ops`: keys
    /// stored with `put_for` expired between the save and this load.
    pub(crate) purged_at_load: bool,
    /// Whether the commit found nothing to write, decided once per base:
    /// `current` is aged in place when this is first set, and never twice.
    pub(crate) untouched: Option<bool>,
    /// The state the handler loaded and what it saw of the flash data, kept
    /// from the first rebase on.
    pub(crate) origin: Option<Box<Origin>>,
    /// The handler called `set_previous_url` itself: a change worth storing
    /// even on a session that holds nothing else.
    pub(crate) explicit_previous_url: bool,
}

/// What the handler loaded, for checking its reads on every replay.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) state: State,
    pub(crate) seen: Seen,
}

/// The record a session was loaded from, kept to tell whether the request
/// changed anything. The payload is kept as the text that was stored rather
/// than as a second decoded copy: most requests change nothing, and for them
/// the commit decides from the change set alone, without cloning, comparing
/// or encoding the state.
#[derive(Debug)]
pub(crate) struct Base {
    pub(crate) key: StorageKey,
    /// The payload as stored.
    pub(crate) payload: String,
    pub(crate) user_id: Option<String>,
    pub(crate) version: i64,
    pub(crate) last_activity: i64,
    pub(crate) expires_at: i64,
}

impl Base {
    pub(crate) fn of(record: Record) -> Self {
        Self {
            key: record.key,
            payload: record.payload,
            user_id: record.user_id,
            version: record.version,
            last_activity: record.last_activity,
            expires_at: record.expires_at,
        }
    }
}

/// A number that [`Session::increment`] and [`Session::decrement`] can count
/// with: `i64` (checked integer math) or `f64`.
pub trait Counter: Copy + sealed::Sealed {
    #[doc(hidden)]
    fn step(self) -> Option<StepRepr>;
    #[doc(hidden)]
    fn negate(self) -> Option<Self>;
    #[doc(hidden)]
    fn from_value(value: &Value) -> Option<Self>;
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StepRepr(Step);

mod sealed {
    pub trait Sealed {}
    impl Sealed for i64 {}
    impl Sealed for f64 {}
}

impl Counter for i64 {
    fn step(self) -> Option<StepRepr> {
        Some(StepRepr(Step::Int(self)))
    }
    fn negate(self) -> Option<Self> {
        self.checked_neg()
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_i64()
    }
}

impl Counter for f64 {
    fn step(self) -> Option<StepRepr> {
        self.is_finite().then_some(StepRepr(Step::Float(self)))
    }
    fn negate(self) -> Option<Self> {
        Some(-self)
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_f64()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every mutation is applied to a copy-free state in one step under the
    // lock and cannot leave it half-updated, so a poisoned lock is usable.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_value(key: &str, value: impl Serialize) -> Result<Value> {
    serde_json::to_value(value).map_err(|source| Error::Serialize {
        key: key.to_owned(),
        source,
    })
}

fn from_value<T: DeserializeOwned>(key: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| Error::Deserialize {
        key: key.to_owned(),
        source,
    })
}

fn keys_of<I, K>(keys: I) -> Vec<String>
where
    I: IntoIterator<Item = K>,
    K: AsRef<str>,
{
    keys.into_iter().map(|k| k.as_ref().to_owned()).collect()
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("Session")
            .field("id", &inner.id)
            .field("data", &inner.current.payload.data)
            .field("user_id", &inner.current.user_id)
            .finish_non_exhaustive()
    }
}

// Reading.
impl Session {
    /// The value at `key`: `Ok(None)` when absent; an `Err` naming the key when
    /// it does not deserialize as `T`. A present JSON `null` deserializes as `T`
    /// would (`Some(None)` for `Option<U>`).
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// session.put("n", 5).unwrap();
    /// assert_eq!(session.get::<i64>("n").unwrap(), Some(5));
    /// assert_eq!(session.get::<i64>("missing").unwrap(), None);
    /// assert!(session.get::<String>("n").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let value = self.get_value(key);
        value.map(|v| from_value(key, v)).transpose()
    }

    /// The raw JSON value at `key`, if present.
    #[must_use]
    pub fn get_value(&self, key: &str) -> Option<Value> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::Path(key.into()));
        path::get(inner.current.data(), key).cloned()
    }

    /// The value at `key`, or `default` when the key is absent (a present
    /// `null` is not absent).
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// assert_eq!(session.get_or("theme", "light".to_owned()).unwrap(), "light");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] when the stored value is not a `T`.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The value at `key`, or `f()` when the key is absent; `f` runs only then.
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] when the stored value is not a `T`.
    pub fn get_or_else<T: DeserializeOwned>(&self, key: &str, f: impl FnOnce() -> T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or_else(f))
    }

    /// Present and not null. `0`, `false`, `""`, `{}` and `[]` all count.
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// session.put("zero", 0).unwrap();
    /// session.put("nothing", None::<()>).unwrap();
    /// assert!(session.has("zero"));
    /// assert!(!session.has("nothing"));
    /// assert!(session.exists("nothing"));
    /// ```
    #[must_use]
    pub fn has(&self, key: &str) -> bool {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::Path(key.into()));
        path::get(inner.current.data(), key).is_some_and(|v| !v.is_null())
    }

    /// Every key [`has`](Self::has).
    #[must_use]
    pub fn has_all<I, K>(&self, keys: I) -> bool
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        keys.into_iter().all(|k| self.has(k.as_ref()))
    }

    /// At least one key [`has`](Self::has).
    #[must_use]
    pub fn has_any<I, K>(&self, keys: I) -> bool
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        keys.into_iter().any(|k| self.has(k.as_ref()))
    }

    /// Present, null allowed.
    #[must_use]
    pub fn exists(&self, key: &str) -> bool {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::Path(key.into()));
        path::get(inner.current.data(), key).is_some()
    }

    /// Every key [`exists`](Self::exists).
    #[must_use]
    pub fn exists_all<I, K>(&self, keys: I) -> bool
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        keys.into_iter().all(|k| self.exists(k.as_ref()))
    }

    /// `!exists(key)`.
    #[must_use]
    pub fn missing(&self, key: &str) -> bool {
        !self.exists(key)
    }

    /// The whole user object: only what the application put, no bookkeeping.
    #[must_use]
    pub fn all(&self) -> Map<String, Value> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::All);
        inner.current.payload.data.clone()
    }

    /// The listed top-level keys (no dot paths) that are present.
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// session.put_many([("a", 1), ("b", 2)]).unwrap();
    /// assert_eq!(session.only(["a", "zzz"]), serde_json::json!({"a": 1}).as_object().unwrap().clone());
    /// ```
    #[must_use]
    pub fn only<I, K>(&self, keys: I) -> Map<String, Value>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut inner = lock(&self.inner);
        let keys = keys_of(keys);
        for key in &keys {
            inner.observe(Observed::Path(key.as_str().into()));
        }
        let data = inner.current.data();
        keys.into_iter()
            .filter_map(|k| data.get(&k).map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// A copy of the user object with the listed dot paths forgotten.
    #[must_use]
    pub fn except<I, K>(&self, keys: I) -> Map<String, Value>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut data = self.all();
        for key in keys {
            path::remove(&mut data, key.as_ref());
        }
        data
    }
}

// Writing.
impl Session {
    fn mutate(&self, op: Op) -> Result<Option<Value>> {
        op.check_depth()?;
        let mut inner = lock(&self.inner);
        match inner.current.apply(&op) {
            Ok(result) => {
                inner.ops.push(op);
                Ok(result)
            }
            Err(error) => {
                // A refusal observed what the key holds (a `push` onto a
                // string saw the string).
                if let Some(key) = op.key() {
                    inner.observe(Observed::Path(key.into()));
                }
                Err(error)
            }
        }
    }

    /// Sets the dot path `key`; `put(k, None::<()>)` stores an explicit null.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when `value` does not serialize to JSON.
    pub fn put(&self, key: &str, value: impl Serialize) -> Result<()> {
        let value = to_value(key, value)?;
        self.mutate(Op::Put(key.to_owned(), value)).map(drop)
    }

    /// [`put`](Self::put) for several pairs.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`]; the pairs before the failing one are stored.
    pub fn put_many<I, K, V>(&self, pairs: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        for (key, value) in pairs {
            self.put(key.as_ref(), value)?;
        }
        Ok(())
    }

    /// Stores `value` at `key` for `ttl` only: it disappears at the first end
    /// of request after `ttl` has passed, even if the session lives on.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when `value` does not serialize to JSON.
    pub fn put_for(&self, key: &str, value: impl Serialize, ttl: Duration) -> Result<()> {
        let value = to_value(key, value)?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let deadline = now_millis().saturating_add(ttl_ms);
        self.mutate(Op::PutFor(key.to_owned(), value, deadline))
            .map(drop)
    }

    /// The stored value when present and not null; otherwise stores and
    /// returns `f()`.
    ///
    /// Under concurrency: when two requests of one session both find the key
    /// absent, the first to save stores its value and the other's handler
    /// keeps the one it computed (see docs/semantics.md). A value that was
    /// present is a read like [`get`](Self::get).
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// assert_eq!(session.remember("n", || 1).unwrap(), 1);
    /// assert_eq!(session.remember("n", || 2).unwrap(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] when the stored value is not a `T`,
    /// [`Error::Serialize`] when `f()` does not serialize.
    pub fn remember<T>(&self, key: &str, f: impl FnOnce() -> T) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        {
            let mut inner = lock(&self.inner);
            if let Some(value) = path::get(inner.current.data(), key).filter(|v| !v.is_null()) {
                let value = value.clone();
                inner.observe(Observed::Path(key.into()));
                drop(inner);
                return from_value(key, value);
            }
        }
        let fresh = f();
        let value = to_value(key, &fresh)?;
        self.mutate(Op::PutIfAbsent(key.to_owned(), value))?;
        Ok(fresh)
    }

    /// Appends `value` to the list at `key` (absent or null start a new list).
    ///
    /// # Errors
    ///
    /// [`Error::NotAList`] when `key` holds anything else (the session is left
    /// unchanged); [`Error::Serialize`].
    pub fn push(&self, key: &str, value: impl Serialize) -> Result<()> {
        let value = to_value(key, value)?;
        self.mutate(Op::Push(key.to_owned(), value)).map(drop)
    }

    /// Adds `by` to the number at `key` (absent or null count as 0) and
    /// returns the new value. `i64` uses checked integer math, `f64` float math.
    ///
    /// ```
    /// # let session = keepsake_core::Session::new_detached();
    /// assert_eq!(session.increment("n", 1).unwrap(), 1);
    /// assert_eq!(session.increment("n", 5).unwrap(), 6);
    /// assert_eq!(session.decrement("n", 2).unwrap(), 4);
    /// assert_eq!(session.increment("f", 0.5).unwrap(), 0.5);
    /// session.put("s", "ten").unwrap();
    /// assert!(session.increment("s", 1).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotANumber`] for a non-number (strings too) and
    /// [`Error::Overflow`]; the session is left unchanged.
    pub fn increment<N: Counter>(&self, key: &str, by: N) -> Result<N> {
        let step = by.step().ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
        })?;
        let value = self.mutate(Op::Increment(key.to_owned(), step.0))?;
        value
            .as_ref()
            .and_then(N::from_value)
            .ok_or_else(|| Error::Overflow {
                key: key.to_owned(),
            })
    }

    /// Subtracts `by`; see [`increment`](Self::increment).
    ///
    /// # Errors
    ///
    /// As [`increment`](Self::increment).
    pub fn decrement<N: Counter>(&self, key: &str, by: N) -> Result<N> {
        let by = by.negate().ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
        })?;
        self.increment(key, by)
    }

    /// [`get`](Self::get), then [`forget`](Self::forget).
    ///
    /// Under concurrency the forget applies only while the value is still the
    /// one returned: when another request changed or removed it before this
    /// request saved, this request's commit fails with [`Error::Stale`]
    /// (409) and the other request's value stays (docs/semantics.md).
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`]; the key is forgotten only on success.
    pub fn pull<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let value = self.get(key)?;
        self.forget(key);
        Ok(value)
    }

    /// Removes the dot path `key`; a missing path is a no-op, and the parent
    /// of a forgotten leaf stays.
    ///
    /// A blind write: it reads nothing, so under concurrency it applies as if
    /// this request ran after the one that saved first, and removes a value
    /// another request stored meanwhile. (A forget that removes nothing still
    /// writes nothing.)
    pub fn forget(&self, key: &str) {
        let mut inner = lock(&self.inner);
        let op = Op::Forget(key.to_owned());
        let _ = inner.current.apply(&op);
        inner.ops.push(op);
    }

    /// [`forget`](Self::forget) for several keys.
    pub fn forget_many<I, K>(&self, keys: I)
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        for key in keys {
            self.forget(key.as_ref());
        }
    }

    /// Empties the user data and the metadata: CSRF token, flash data,
    /// previous URL, old input, the owner ([`user_id`](Self::user_id)) and the
    /// per-session lifetime.
    pub fn flush(&self) {
        let _ = self.mutate(Op::Flush);
    }
}

// Flash data.
impl Session {
    /// Stores `value` for this request and the next one.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`].
    pub fn flash(&self, key: &str, value: impl Serialize) -> Result<()> {
        let value = to_value(key, value)?;
        self.mutate(Op::Flash(key.to_owned(), value)).map(drop)
    }

    /// Stores `value` for this request only.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`].
    pub fn now(&self, key: &str, value: impl Serialize) -> Result<()> {
        let value = to_value(key, value)?;
        self.mutate(Op::Now(key.to_owned(), value)).map(drop)
    }

    /// Keeps every flashed key for one more request.
    pub fn reflash(&self) {
        let _ = self.mutate(Op::Reflash);
    }

    /// Keeps the listed keys for one more request (a key that was never
    /// flashed becomes flash data). An empty list does nothing.
    pub fn keep<I, K>(&self, keys: I)
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys = keys_of(keys);
        if !keys.is_empty() {
            let _ = self.mutate(Op::Keep(keys));
        }
    }

    /// Flashes submitted form input, for re-populating the form on the next
    /// request with [`old_input`](Self::old_input).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when `input` does not serialize to a JSON object.
    pub fn flash_input(&self, input: impl Serialize) -> Result<()> {
        match to_value("_old_input", input)? {
            Value::Object(map) => self.mutate(Op::FlashInput(map)).map(drop),
            other => Err(Error::Serialize {
                key: "_old_input".into(),
                source: serde::ser::Error::custom(format!(
                    "form input must serialize to an object, not a {}",
                    path::type_name(&other)
                )),
            }),
        }
    }

    /// A field of the flashed input (dot paths allowed).
    #[must_use]
    pub fn old_input(&self, key: &str) -> Option<Value> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::OldInput);
        let input = inner.current.payload.meta.old_input.as_ref()?;
        path::get(input, key).cloned()
    }

    /// True when input was flashed.
    #[must_use]
    pub fn has_old_input(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::OldInput);
        inner.current.payload.meta.old_input.is_some()
    }
}

// Identity.
impl Session {
    /// The current session id (it changes after [`regenerate`](Self::regenerate)
    /// and [`invalidate`](Self::invalidate)). Treat it as a secret.
    #[must_use]
    pub fn id(&self) -> SessionId {
        lock(&self.inner).id.clone()
    }

    /// The storage key of the current id (safe to show or log).
    #[must_use]
    pub fn storage_key(&self) -> StorageKey {
        lock(&self.inner).id.storage_key()
    }

    /// A new id with the data and the CSRF token kept; the old record is
    /// retired after the new one is stored. The session's clock (its
    /// `created_at`, for the absolute lifetime) goes on: it is the same
    /// visit under a new id.
    ///
    /// keepsake differs from Laravel: `migrate()` always retires the old
    /// record (Laravel's `migrate(false)` keeps it, and with it a second
    /// live id for the same data).
    ///
    /// Writes of another request that land on the old record before the
    /// retire are carried into the new one; writes that arrive after it fail
    /// with [`Error::Ended`] (409) instead of being lost silently
    /// (docs/semantics.md).
    pub fn migrate(&self) {
        let mut inner = lock(&self.inner);
        inner.id = SessionId::generate();
        inner.id_changed = true;
    }

    /// [`migrate`](Self::migrate) plus a new CSRF token: a new id with the
    /// data kept, the old record retired after the new one is stored, and
    /// the clock kept. Call it on login.
    pub fn regenerate(&self) {
        self.migrate();
        let _ = self.mutate(Op::SetToken(random_token::<32>()));
    }

    /// [`flush`](Self::flush) plus a new id and a new clock: the old record is
    /// destroyed, and the next session starts its absolute lifetime afresh.
    /// Call it on logout.
    pub fn invalidate(&self) {
        let mut inner = lock(&self.inner);
        inner.id = SessionId::generate();
        inner.id_changed = true;
        let op = Op::Restart(crate::now());
        let _ = inner.current.apply(&op);
        inner.ops.push(op);
    }

    /// The CSRF token: created on first call (43 characters from the CSPRNG),
    /// stable afterwards.
    ///
    /// Under concurrency: when two requests of a session without a token both
    /// create one, the first to save wins and the other's page carries a token
    /// that will not match (docs/semantics.md). An existing token is a read.
    #[must_use]
    pub fn token(&self) -> String {
        let mut inner = lock(&self.inner);
        if let Some(token) = inner.current.payload.meta.token.clone() {
            inner.observe(Observed::Token);
            return token;
        }
        let token = random_token::<32>();
        let op = Op::EnsureToken(token.clone());
        let _ = inner.current.apply(&op);
        inner.ops.push(op);
        token
    }

    /// The CSRF token if the session has one, without creating it (a check
    /// that only compares must not cause a write).
    #[must_use]
    pub fn peek_token(&self) -> Option<String> {
        lock(&self.inner).current.payload.meta.token.clone()
    }

    /// Replaces the CSRF token and returns the new one.
    pub fn regenerate_token(&self) -> String {
        let token = random_token::<32>();
        let _ = self.mutate(Op::SetToken(token.clone()));
        token
    }

    /// The last page recorded, for "back" redirects.
    #[must_use]
    pub fn previous_url(&self) -> Option<String> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::PreviousUrl);
        inner.current.payload.meta.previous_url.clone()
    }

    /// Records the previous URL. An explicit call is a change like any
    /// other: it is stored even on a session that holds nothing else.
    pub fn set_previous_url(&self, url: impl Into<String>) {
        let _ = self.mutate(Op::SetPreviousUrl(url.into()));
        lock(&self.inner).explicit_previous_url = true;
    }

    /// Ties the session to a user, for the store's per-user index
    /// ("your devices", "log out other devices").
    ///
    /// A user id is at most [`MAX_USER_ID_LEN`](crate::MAX_USER_ID_LEN) bytes
    /// (MySQL's indexed column holds 255): a longer one makes the commit fail
    /// with [`Error::UserIdTooLong`] before anything is written, on every
    /// store.
    pub fn set_user_id(&self, user_id: impl Into<String>) {
        let _ = self.mutate(Op::SetUserId(Some(user_id.into())));
    }

    /// Unties the session from its user.
    pub fn clear_user_id(&self) {
        let _ = self.mutate(Op::SetUserId(None));
    }

    /// The user the session is tied to.
    #[must_use]
    pub fn user_id(&self) -> Option<String> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::UserId);
        inner.current.user_id.clone()
    }

    /// A per-session idle lifetime ("remember me"), persisted with the record
    /// and used instead of the layer's lifetime. Whole seconds; the absolute
    /// timeout, when configured, still applies.
    pub fn set_lifetime(&self, lifetime: Duration) {
        let _ = self.mutate(Op::SetLifetime(Some(lifetime.as_secs())));
    }

    /// The per-session lifetime, if one was set.
    #[must_use]
    pub fn lifetime(&self) -> Option<Duration> {
        let mut inner = lock(&self.inner);
        inner.observe(Observed::Lifetime);
        inner.current.payload.lifetime.map(Duration::from_secs)
    }

    /// True when this session is not stored yet (a first visit, or after a
    /// stored session expired or was not found).
    #[must_use]
    pub fn is_new(&self) -> bool {
        lock(&self.inner).base.is_none()
    }

    /// True when this request changed the session.
    #[must_use]
    pub fn is_modified(&self) -> bool {
        let inner = lock(&self.inner);
        !inner.ops.is_empty() || inner.id_changed
    }

    /// Unix seconds when the session was created.
    #[must_use]
    pub fn created_at(&self) -> i64 {
        lock(&self.inner).current.payload.created_at
    }
}

/// Lifecycle hooks used by the layer and the commit protocol. Not part of
/// the handler API.
impl Session {
    /// A new, empty, unstored session with a fresh id.
    #[must_use]
    pub fn new_detached() -> Self {
        Self::from_parts(SessionId::generate(), None, State::default(), crate::now())
    }

    /// A detached session whose user data is `data` as given (top-level keys
    /// are not split on dots), for test helpers.
    #[doc(hidden)]
    #[must_use]
    pub fn new_detached_with(data: Map<String, Value>) -> Self {
        let session = Self::new_detached();
        lock(&session.inner).current.payload.data = data;
        session
    }

    /// A session for `id` from its loaded record. A payload that does not
    /// decode gives an empty session and a `warn` log (it is overwritten by
    /// the next save).
    #[doc(hidden)]
    #[must_use]
    pub fn from_record(id: SessionId, record: &Record) -> Self {
        Self::from_loaded(id, record.clone())
    }

    /// [`from_record`](Self::from_record), taking the record: its payload
    /// text is kept without a copy.
    #[doc(hidden)]
    #[must_use]
    pub fn from_loaded(id: SessionId, record: Record) -> Self {
        let (state, purged) = decode_state(&record);
        let session = Self::from_parts(id, Some(Base::of(record)), state, crate::now());
        lock(&session.inner).purged_at_load = purged;
        session
    }

    fn from_parts(id: SessionId, base: Option<Base>, mut current: State, now: i64) -> Self {
        if base.is_none() {
            current.payload.created_at = now;
        }
        Self {
            inner: Arc::new(Mutex::new(Inner {
                id,
                base,
                current,
                ops: Vec::new(),
                reads: Vec::new(),
                id_changed: false,
                purged_at_load: false,
                untouched: None,
                origin: None,
                explicit_previous_url: false,
            })),
        }
    }

    /// The inner state, for the commit protocol.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Ages flash data as the end of a request would, without a store: for
    /// unit tests that step a detached session through several "requests".
    pub fn end_request(&self) {
        let mut inner = lock(&self.inner);
        inner.current.age(now_millis(), None);
        let key = inner.id.storage_key();
        let version = inner.base.as_ref().map_or(1, |b| b.version + 1);
        let record = Record {
            key,
            payload: inner.current.payload.encode().unwrap_or_default(),
            last_activity: crate::now(),
            expires_at: i64::MAX,
            version,
            user_id: inner.current.user_id.clone(),
            ip_address: None,
            user_agent: None,
        };
        inner.committed(record);
    }

    /// The binding fingerprint (hijacking mitigation), if any. Not recorded
    /// as a read of the handler.
    #[doc(hidden)]
    #[must_use]
    pub fn binding(&self) -> Option<String> {
        lock(&self.inner).current.payload.meta.binding.clone()
    }

    /// Sets the binding fingerprint.
    #[doc(hidden)]
    pub fn set_binding(&self, binding: Option<String>) {
        let _ = self.mutate(Op::SetBinding(binding));
    }

    /// Records `url` as the previous URL on the layer's own account: unlike
    /// [`set_previous_url`](Self::set_previous_url), it never makes an
    /// otherwise empty session worth storing, and reads nothing.
    #[doc(hidden)]
    pub fn track_previous_url(&self, url: &str) {
        let mut inner = lock(&self.inner);
        if inner.current.payload.meta.previous_url.as_deref() != Some(url) {
            let op = Op::SetPreviousUrl(url.to_owned());
            let _ = inner.current.apply(&op);
            inner.ops.push(op);
        }
    }
}

/// Decodes a stored record's state, with the `put_for` keys due now removed
/// (true when there were any). A payload that does not decode gives an
/// empty state and a `warn` log.
pub(crate) fn decode_state(record: &Record) -> (State, bool) {
    let payload = match Payload::decode(&record.payload) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::warn!(
                session = %record.key.short(),
                error = %crate::error::Report(&error),
                "stored session payload is corrupt; starting an empty session"
            );
            Payload {
                created_at: record.last_activity,
                ..Payload::default()
            }
        }
    };
    let mut state = State {
        payload,
        user_id: record.user_id.clone(),
    };
    let purged = state.purge_expired(now_millis());
    (state, purged)
}

impl Inner {
    /// Records a read of a stored session, once per place in the op log.
    /// A session that is not stored yet has nothing another request could
    /// change, so nothing is recorded.
    fn observe(&mut self, what: Observed) {
        if self.base.is_none() {
            return;
        }
        let at = self.ops.len();
        if !self
            .reads
            .iter()
            .rev()
            .take_while(|read| read.at == at)
            .any(|read| read.what == what)
        {
            self.reads.push(Read { at, what });
        }
    }

    /// Replaces the base with a newer version of the record and replays this
    /// request's change set on top of it, checking every read.
    pub(crate) fn rebase(&mut self, fresh: Record) -> Result<()> {
        if self.origin.is_none() {
            let Some(base) = &self.base else {
                return Err(Error::Ended);
            };
            let (state, _) = decode_state(&Record {
                key: base.key.clone(),
                payload: base.payload.clone(),
                last_activity: base.last_activity,
                expires_at: base.expires_at,
                version: base.version,
                user_id: base.user_id.clone(),
                ip_address: None,
                user_agent: None,
            });
            let seen = Seen::new(&state, &self.ops);
            self.origin = Some(Box::new(Origin { state, seen }));
        }
        let Some(origin) = &self.origin else {
            return Err(Error::Ended);
        };
        let (state, purged) = decode_state(&fresh);
        self.current = ops::replay(&origin.state, state, &self.ops, &self.reads)?;
        self.base = Some(Base::of(fresh));
        self.purged_at_load = purged;
        self.untouched = None;
        Ok(())
    }

    /// After a successful create or save: the record is now the base, so a
    /// second commit in the same request would diff against it.
    pub(crate) fn committed(&mut self, record: Record) {
        self.base = Some(Base::of(record));
        self.ops.clear();
        self.reads.clear();
        self.id_changed = false;
        self.purged_at_load = false;
        self.untouched = None;
        self.origin = None;
        self.explicit_previous_url = false;
    }
}
