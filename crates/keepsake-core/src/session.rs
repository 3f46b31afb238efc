//! [`Session`]: the handler-facing API.

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

/// One session, as a handler sees it.
///
/// Every method is synchronous: the layer loads the record before the handler
/// runs and writes it back once afterwards. `Session` is cheap to clone (an
/// `Arc` inside) and every clone sees the same state, so it can be shared by
/// the tasks of one request.
///
/// Keys are dot paths (`"user.name"`); see the [crate docs](crate) and the
/// project's SEMANTICS document for the exact behaviour of every method.
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

/// The persisted state of a session: its payload plus the owner column.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    payload: Payload,
    user_id: Option<String>,
}

#[derive(Debug)]
struct Inner {
    id: SessionId,
    /// The record as loaded, `None` for a session that is not stored yet.
    base: Option<Base>,
    /// What the handler sees: `base` plus every op of this request.
    current: State,
    /// The change set of this request, replayed on a conflict.
    ops: Vec<Op>,
    /// The id changed (regenerate or invalidate): the base record is
    /// destroyed after the new one is stored.
    id_changed: bool,
    /// `current` differs from the base for a reason other than `ops`: keys
    /// stored with `put_for` expired between the save and this load.
    purged_at_load: bool,
}

/// The record a session was loaded from, kept to tell whether the request
/// changed anything. The payload is kept as the text that was stored rather
/// than as a second decoded copy: most requests change nothing, and for them
/// [`Session::commit_plan`] decides from the change set alone, without
/// cloning, comparing or encoding the state.
#[derive(Debug)]
struct Base {
    key: StorageKey,
    /// The payload as stored.
    payload: String,
    user_id: Option<String>,
    version: i64,
    last_activity: i64,
    expires_at: i64,
}

/// One mutation, recorded so it can be replayed on top of a newer version of
/// the record when a concurrent request saved first.
#[derive(Debug, Clone)]
enum Op {
    Put(String, Value),
    PutIfAbsent(String, Value),
    PutFor(String, Value, i64),
    Forget(String),
    Flush,
    Push(String, Value),
    Increment(String, Step),
    Flash(String, Value),
    Now(String, Value),
    Reflash,
    Keep(Vec<String>),
    FlashInput(Map<String, Value>),
    SetToken(String),
    EnsureToken(String),
    SetPreviousUrl(String),
    SetUserId(Option<String>),
    SetLifetime(Option<u64>),
    SetBinding(Option<String>),
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Int(i64),
    Float(f64),
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

fn push_unique(list: &mut Vec<String>, key: &str) {
    if !list.iter().any(|k| k == key) {
        list.push(key.to_owned());
    }
}

impl State {
    fn data(&self) -> &Map<String, Value> {
        &self.payload.data
    }

    fn put(&mut self, key: &str, value: Value) {
        self.payload.meta.expiring.remove(key);
        path::set(&mut self.payload.data, key, value);
    }

    fn forget(&mut self, key: &str) {
        self.payload.meta.expiring.remove(key);
        path::remove(&mut self.payload.data, key);
    }

    /// Applies one op. Returns the new value for increments.
    fn apply(&mut self, op: &Op) -> Result<Option<Value>> {
        let meta = &mut self.payload.meta;
        match op {
            Op::Put(key, value) => self.put(key, value.clone()),
            Op::PutIfAbsent(key, value) => {
                if path::get(self.data(), key).is_none_or(Value::is_null) {
                    self.put(key, value.clone());
                }
            }
            Op::PutFor(key, value, deadline) => {
                self.put(key, value.clone());
                self.payload.meta.expiring.insert(key.clone(), *deadline);
            }
            Op::Forget(key) => self.forget(key),
            Op::Flush => {
                *self = Self {
                    payload: Payload {
                        created_at: self.payload.created_at,
                        ..Payload::default()
                    },
                    user_id: None,
                };
            }
            Op::Push(key, value) => {
                let slot = path::get_mut(&mut self.payload.data, key);
                match slot {
                    Some(Value::Array(list)) => list.push(value.clone()),
                    None | Some(Value::Null) => self.put(key, Value::Array(vec![value.clone()])),
                    Some(other) => {
                        return Err(Error::NotAList {
                            key: key.clone(),
                            found: path::type_name(other),
                        });
                    }
                }
            }
            Op::Increment(key, step) => {
                let current = path::get(self.data(), key).filter(|v| !v.is_null());
                let next = match (current, step) {
                    (None, Step::Int(by)) => Value::from(*by),
                    (None, Step::Float(by)) => float(key, *by)?,
                    (Some(Value::Number(n)), Step::Int(by)) => match n.as_i64() {
                        Some(n) => Value::from(
                            n.checked_add(*by)
                                .ok_or_else(|| Error::Overflow { key: key.clone() })?,
                        ),
                        None if n.is_u64() => return Err(Error::Overflow { key: key.clone() }),
                        None => {
                            return Err(Error::NotANumber {
                                key: key.clone(),
                                found: "float (increment it by an f64)",
                            });
                        }
                    },
                    (Some(Value::Number(n)), Step::Float(by)) => {
                        float(key, n.as_f64().unwrap_or(f64::NAN) + by)?
                    }
                    (Some(other), _) => {
                        return Err(Error::NotANumber {
                            key: key.clone(),
                            found: path::type_name(other),
                        });
                    }
                };
                self.put(key, next.clone());
                return Ok(Some(next));
            }
            Op::Flash(key, value) => {
                push_unique(&mut meta.flash_new, key);
                meta.flash_old.retain(|k| k != key);
                self.put(key, value.clone());
            }
            Op::Now(key, value) => {
                push_unique(&mut meta.flash_old, key);
                self.put(key, value.clone());
            }
            Op::Reflash => {
                let old = std::mem::take(&mut meta.flash_old);
                for key in &old {
                    push_unique(&mut meta.flash_new, key);
                }
                if meta.old_input.is_some() {
                    meta.old_input_kept = true;
                }
            }
            Op::Keep(keys) => {
                for key in keys {
                    push_unique(&mut meta.flash_new, key);
                }
                meta.flash_old.retain(|k| !keys.contains(k));
            }
            Op::FlashInput(input) => {
                meta.old_input = Some(input.clone());
                meta.old_input_kept = true;
            }
            Op::SetToken(token) => meta.token = Some(token.clone()),
            Op::EnsureToken(token) => {
                if meta.token.is_none() {
                    meta.token = Some(token.clone());
                }
            }
            Op::SetPreviousUrl(url) => meta.previous_url = Some(url.clone()),
            Op::SetUserId(user) => self.user_id.clone_from(user),
            Op::SetLifetime(secs) => self.payload.lifetime = *secs,
            Op::SetBinding(binding) => meta.binding.clone_from(binding),
        }
        Ok(None)
    }

    /// End-of-request ageing: flash data, flashed input and `put_for` expiry.
    fn age(&mut self, now_ms: i64) {
        let meta = &mut self.payload.meta;
        let old = std::mem::take(&mut meta.flash_old);
        meta.flash_old = std::mem::take(&mut meta.flash_new);
        if meta.old_input.is_some() {
            if meta.old_input_kept {
                meta.old_input_kept = false;
            } else {
                meta.old_input = None;
            }
        }
        for key in &old {
            path::remove(&mut self.payload.data, key);
        }
        self.purge_expired(now_ms);
    }

    /// True when [`age`](Self::age) at `now_ms` would change nothing: no
    /// flash data, no flashed input, no `put_for` key due.
    fn ages_to_itself(&self, now_ms: i64) -> bool {
        let meta = &self.payload.meta;
        meta.flash_new.is_empty()
            && meta.flash_old.is_empty()
            && meta.old_input.is_none()
            && meta.expiring.values().all(|deadline| *deadline > now_ms)
    }

    /// Removes the `put_for` keys due at `now_ms`; true when there were any.
    fn purge_expired(&mut self, now_ms: i64) -> bool {
        let meta = &mut self.payload.meta;
        if meta.expiring.is_empty() {
            return false;
        }
        let expired: Vec<String> = meta
            .expiring
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(key, _)| key.clone())
            .collect();
        let purged = !expired.is_empty();
        for key in expired {
            meta.expiring.remove(&key);
            path::remove(&mut self.payload.data, &key);
        }
        purged
    }

    /// Nothing worth storing: no data, no token, no flash, no owner (a
    /// binding fingerprint alone is not worth a record).
    fn is_empty(&self) -> bool {
        let meta = &self.payload.meta;
        self.payload.data.is_empty()
            && self.user_id.is_none()
            && meta.token.is_none()
            && meta.flash_new.is_empty()
            && meta.old_input.is_none()
            && self.payload.lifetime.is_none()
    }
}

fn float(key: &str, value: f64) -> Result<Value> {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
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
        path::get(lock(&self.inner).current.data(), key).cloned()
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
        path::get(lock(&self.inner).current.data(), key).is_some_and(|v| !v.is_null())
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
        path::get(lock(&self.inner).current.data(), key).is_some()
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
        lock(&self.inner).current.payload.data.clone()
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
        let inner = lock(&self.inner);
        let data = inner.current.data();
        keys.into_iter()
            .filter_map(|k| {
                let k = k.as_ref();
                data.get(k).map(|v| (k.to_owned(), v.clone()))
            })
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
        let mut inner = lock(&self.inner);
        let result = inner.current.apply(&op)?;
        inner.ops.push(op);
        Ok(result)
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
        if let Some(value) = self.get_value(key).filter(|v| !v.is_null()) {
            return from_value(key, value);
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
    pub fn forget(&self, key: &str) {
        if self.exists(key)
            || lock(&self.inner)
                .current
                .payload
                .meta
                .expiring
                .contains_key(key)
        {
            // Forget cannot fail.
            let _ = self.mutate(Op::Forget(key.to_owned()));
        }
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
        let inner = lock(&self.inner);
        let input = inner.current.payload.meta.old_input.as_ref()?;
        path::get(input, key).cloned()
    }

    /// True when input was flashed.
    #[must_use]
    pub fn has_old_input(&self) -> bool {
        lock(&self.inner).current.payload.meta.old_input.is_some()
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

    /// A new id with the data kept and the CSRF token rotated; the old record
    /// is destroyed after the new one is stored. Call it on login.
    pub fn regenerate(&self) {
        let mut inner = lock(&self.inner);
        inner.id = SessionId::generate();
        inner.id_changed = true;
        let op = Op::SetToken(random_token::<32>());
        let _ = inner.current.apply(&op);
        inner.ops.push(op);
    }

    /// [`flush`](Self::flush) plus a new id; the old record is destroyed. Call
    /// it on logout.
    pub fn invalidate(&self) {
        let mut inner = lock(&self.inner);
        inner.id = SessionId::generate();
        inner.id_changed = true;
        let _ = inner.current.apply(&Op::Flush);
        inner.ops.push(Op::Flush);
    }

    /// The CSRF token: created on first call (43 characters from the CSPRNG),
    /// stable afterwards.
    #[must_use]
    pub fn token(&self) -> String {
        let mut inner = lock(&self.inner);
        if let Some(token) = &inner.current.payload.meta.token {
            return token.clone();
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
        lock(&self.inner).current.payload.meta.previous_url.clone()
    }

    /// Records the previous URL.
    pub fn set_previous_url(&self, url: impl Into<String>) {
        let _ = self.mutate(Op::SetPreviousUrl(url.into()));
    }

    /// Ties the session to a user, for the store's per-user index
    /// ("your devices", "log out other devices").
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
        lock(&self.inner).current.user_id.clone()
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
        lock(&self.inner)
            .current
            .payload
            .lifetime
            .map(Duration::from_secs)
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
        !lock(&self.inner).ops.is_empty()
    }

    /// Unix seconds when the session was created.
    #[must_use]
    pub fn created_at(&self) -> i64 {
        lock(&self.inner).current.payload.created_at
    }
}

/// What the layer needs to know to finish a request: passed to
/// [`Session::commit_plan`].
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct CommitContext {
    /// Unix seconds now.
    pub now: i64,
    /// The idle lifetime in seconds (unless the session sets its own).
    pub idle_lifetime: u64,
    /// The absolute lifetime in seconds, counted from creation.
    pub absolute_lifetime: Option<u64>,
    /// How old `last_activity` may get before an unmodified request touches.
    pub touch_after: u64,
    /// Client address to record, if the layer records it.
    pub ip_address: Option<String>,
    /// User agent to record, if the layer records it.
    pub user_agent: Option<String>,
    /// The store keeps records in the client: an expiry move rewrites the
    /// whole record ([`Commit::Save`]) instead of a [`Commit::Touch`].
    pub client_side: bool,
}

/// The one write a finished request needs, computed by [`Session::commit_plan`].
#[doc(hidden)]
#[derive(Debug)]
pub enum Commit {
    /// Nothing to write.
    Nothing,
    /// Insert a new record (a new session, or the new id after
    /// `regenerate`/`invalidate`); then destroy `replaces`, if any.
    Create {
        /// The record to insert.
        record: Record,
        /// The record of the old id, destroyed after the insert.
        replaces: Option<StorageKey>,
    },
    /// Compare-and-swap the loaded record.
    Save {
        /// The new record (version already bumped).
        record: Record,
        /// The version it was loaded at.
        expected: i64,
    },
    /// Move the expiry only.
    Touch {
        /// The record's key.
        key: StorageKey,
        /// New `last_activity`.
        last_activity: i64,
        /// New `expires_at`.
        expires_at: i64,
    },
    /// The session was invalidated and is empty: destroy the old record.
    Destroy {
        /// The record's key.
        key: StorageKey,
    },
}

/// Lifecycle hooks used by the layer. Not part of the handler API.
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
        let base = Base {
            key: record.key,
            payload: record.payload,
            user_id: record.user_id,
            version: record.version,
            last_activity: record.last_activity,
            expires_at: record.expires_at,
        };
        let session = Self::from_parts(id, Some(base), state, crate::now());
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
                id_changed: false,
                purged_at_load: false,
            })),
        }
    }

    /// Gives a session that is not stored yet a different id (after an id
    /// collision on create).
    #[doc(hidden)]
    pub fn reassign_id(&self) {
        lock(&self.inner).id = SessionId::generate();
    }

    /// The version of the record this session was loaded from.
    #[doc(hidden)]
    #[must_use]
    pub fn loaded_version(&self) -> Option<i64> {
        lock(&self.inner).base.as_ref().map(|b| b.version)
    }

    /// Replaces the base with a newer version of the record and replays this
    /// request's change set on top of it. Returns `false` when the record is
    /// gone (destroyed or expired meanwhile): the session must not be
    /// resurrected.
    #[doc(hidden)]
    pub fn rebase(&self, record: Option<&Record>) -> bool {
        let Some(record) = record else {
            return false;
        };
        let reloaded = Self::from_record(lock(&self.inner).id.clone(), record);
        let mut fresh = lock(&reloaded.inner);
        let mut inner = lock(&self.inner);
        let mut state = std::mem::take(&mut fresh.current);
        for op in &inner.ops {
            if let Err(error) = state.apply(op) {
                tracing::warn!(
                    error = %crate::error::Report(&error),
                    "a change could not be replayed on the concurrently saved session; skipped"
                );
            }
        }
        inner.current = state;
        inner.base = fresh.base.take();
        inner.purged_at_load = fresh.purged_at_load;
        true
    }

    /// Ends the request: ages flash data and works out the one write needed.
    /// Call once per attempt; after a conflict, [`rebase`](Self::rebase) and
    /// call again.
    #[doc(hidden)]
    #[must_use]
    pub fn commit_plan(&self, ctx: &CommitContext) -> Commit {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let now_ms = ctx.now.saturating_mul(1000).max(now_millis());
        // The common request reads and changes nothing: decided from the
        // change set alone, with no copy, comparison or encoding of the state.
        let untouched = !inner.id_changed
            && inner.ops.is_empty()
            && !inner.purged_at_load
            && inner.current.ages_to_itself(now_ms);
        if !untouched {
            inner.current.age(now_ms);
        }
        let state = &inner.current;

        let lifetime = state.payload.lifetime.unwrap_or(ctx.idle_lifetime);
        let lifetime = i64::try_from(lifetime).unwrap_or(i64::MAX);
        let mut expires_at = ctx.now.saturating_add(lifetime);
        if let Some(absolute) = ctx.absolute_lifetime {
            let absolute = i64::try_from(absolute).unwrap_or(i64::MAX);
            expires_at = expires_at.min(state.payload.created_at.saturating_add(absolute));
        }
        let encode = |state: &State| match state.payload.encode() {
            Ok(payload) => Some(payload),
            Err(error) => {
                tracing::error!(error = %crate::error::Report(&error), "session payload does not encode");
                None
            }
        };
        let record = |key: StorageKey, version: i64, payload: String| Record {
            key,
            payload,
            last_activity: ctx.now,
            expires_at,
            version,
            user_id: state.user_id.clone(),
            ip_address: ctx.ip_address.clone(),
            user_agent: ctx.user_agent.clone(),
        };

        if inner.id_changed || inner.base.is_none() {
            let replaces = inner.base.as_ref().map(|b| b.key.clone());
            if state.is_empty() {
                return replaces.map_or(Commit::Nothing, |key| Commit::Destroy { key });
            }
            return match encode(state) {
                Some(payload) => Commit::Create {
                    record: record(inner.id.storage_key(), 1, payload),
                    replaces,
                },
                None => Commit::Nothing,
            };
        }
        let Some(base) = &inner.base else {
            return Commit::Nothing;
        };
        if !untouched {
            let Some(payload) = encode(state) else {
                return Commit::Nothing;
            };
            // Changes that cancel out (a put of the value already stored)
            // leave the record as it is.
            if payload != base.payload || state.user_id != base.user_id {
                return Commit::Save {
                    record: record(base.key.clone(), base.version + 1, payload),
                    expected: base.version,
                };
            }
        }
        let stale = ctx.now.saturating_sub(base.last_activity)
            >= i64::try_from(ctx.touch_after).unwrap_or(i64::MAX);
        if !stale || expires_at == base.expires_at {
            Commit::Nothing
        } else if ctx.client_side {
            // A cookie carries its expiry inside the seal: resealed.
            match encode(state) {
                Some(payload) => Commit::Save {
                    record: record(base.key.clone(), base.version + 1, payload),
                    expected: base.version,
                },
                None => Commit::Nothing,
            }
        } else {
            Commit::Touch {
                key: base.key.clone(),
                last_activity: ctx.now,
                expires_at,
            }
        }
    }

    /// After a successful create or save: the record is now the base, so a
    /// second commit in the same request (not done by the layer) would diff
    /// against it.
    #[doc(hidden)]
    pub fn committed(&self, record: Record) {
        let mut inner = lock(&self.inner);
        inner.base = Some(Base {
            key: record.key,
            payload: record.payload,
            user_id: record.user_id,
            version: record.version,
            last_activity: record.last_activity,
            expires_at: record.expires_at,
        });
        inner.ops.clear();
        inner.id_changed = false;
        inner.purged_at_load = false;
    }

    /// Ages flash data as the end of a request would, without a store: for
    /// unit tests that step a detached session through several "requests".
    pub fn end_request(&self) {
        let mut inner = lock(&self.inner);
        inner.current.age(now_millis());
        let key = inner.id.storage_key();
        let version = inner.base.as_ref().map_or(1, |b| b.version + 1);
        inner.base = Some(Base {
            key,
            payload: inner.current.payload.encode().unwrap_or_default(),
            user_id: inner.current.user_id.clone(),
            version,
            last_activity: crate::now(),
            expires_at: i64::MAX,
        });
        inner.ops.clear();
        inner.id_changed = false;
        inner.purged_at_load = false;
    }

    /// The binding fingerprint (hijacking mitigation), if any.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(now: i64) -> CommitContext {
        CommitContext {
            now,
            idle_lifetime: 1_800,
            absolute_lifetime: None,
            touch_after: 60,
            ip_address: None,
            user_agent: None,
            client_side: false,
        }
    }

    /// A session as the layer would load it from a record holding `payload`.
    fn loaded(payload: &Payload, user_id: Option<&str>, now: i64) -> Session {
        let id = SessionId::generate();
        let record = Record {
            key: id.storage_key(),
            payload: payload.encode().expect("encodes"),
            last_activity: now,
            expires_at: now + 1_800,
            version: 7,
            user_id: user_id.map(str::to_owned),
            ip_address: None,
            user_agent: None,
        };
        Session::from_loaded(id, record)
    }

    fn with_counter() -> Payload {
        let mut payload = Payload {
            created_at: 1_700_000_000,
            ..Payload::default()
        };
        payload.data.insert("counter".into(), Value::from(3));
        payload
    }

    #[test]
    fn a_read_only_request_writes_nothing() {
        let now = crate::now();
        let session = loaded(&with_counter(), None, now);
        assert_eq!(session.get::<i64>("counter").expect("reads"), Some(3));
        assert!(matches!(
            session.commit_plan(&context(now)),
            Commit::Nothing
        ));
    }

    #[test]
    fn changes_that_cancel_out_write_nothing() {
        let now = crate::now();
        let session = loaded(&with_counter(), Some("ada"), now);
        session.put("counter", 3).expect("puts");
        session.set_user_id("ada");
        session.increment("counter", 1i64).expect("increments");
        session.decrement("counter", 1i64).expect("decrements");
        assert!(session.is_modified());
        assert!(matches!(
            session.commit_plan(&context(now)),
            Commit::Nothing
        ));
    }

    #[test]
    fn a_change_is_saved_against_the_loaded_version() {
        let now = crate::now();
        let session = loaded(&with_counter(), None, now);
        session.increment("counter", 1i64).expect("increments");
        let Commit::Save { record, expected } = session.commit_plan(&context(now)) else {
            panic!("expected a save");
        };
        assert_eq!((expected, record.version), (7, 8));
        let stored = Payload::decode(&record.payload).expect("decodes");
        assert_eq!(stored.data.get("counter"), Some(&Value::from(4)));
    }

    #[test]
    fn a_new_owner_alone_is_saved() {
        let now = crate::now();
        let session = loaded(&with_counter(), Some("ada"), now);
        session.set_user_id("grace");
        let Commit::Save { record, .. } = session.commit_plan(&context(now)) else {
            panic!("expected a save");
        };
        assert_eq!(record.user_id.as_deref(), Some("grace"));
    }

    #[test]
    fn flash_data_ages_on_a_request_that_changes_nothing() {
        let now = crate::now();
        let mut payload = with_counter();
        payload.data.insert("status".into(), Value::from("saved"));
        payload.meta.flash_new.push("status".into());
        let session = loaded(&payload, None, now);
        let Commit::Save { record, .. } = session.commit_plan(&context(now)) else {
            panic!("the flash ages: expected a save");
        };
        let aged = Payload::decode(&record.payload).expect("decodes");
        assert_eq!(aged.meta.flash_old, ["status"]);
        assert!(aged.meta.flash_new.is_empty());

        let next = loaded(&aged, None, now);
        assert!(next.has("status"), "still readable on the next request");
        let Commit::Save { record, .. } = next.commit_plan(&context(now)) else {
            panic!("the flash goes: expected a save");
        };
        let gone = Payload::decode(&record.payload).expect("decodes");
        assert!(gone.data.get("status").is_none());
        assert!(gone.meta.flash_old.is_empty());
    }

    #[test]
    fn a_put_for_key_due_at_load_is_removed_from_the_record() {
        let now = crate::now();
        let mut payload = with_counter();
        payload.data.insert("code".into(), Value::from(1234));
        payload
            .meta
            .expiring
            .insert("code".into(), now_millis() - 1);
        let session = loaded(&payload, None, now);
        assert!(!session.has("code"));
        assert!(!session.is_modified());
        let Commit::Save { record, .. } = session.commit_plan(&context(now)) else {
            panic!("expected a save");
        };
        let stored = Payload::decode(&record.payload).expect("decodes");
        assert!(stored.data.get("code").is_none());
        assert!(stored.meta.expiring.is_empty());
    }

    #[test]
    fn a_stale_unchanged_session_is_touched() {
        let now = crate::now();
        let session = loaded(&with_counter(), None, now - 120);
        let Commit::Touch { expires_at, .. } = session.commit_plan(&context(now)) else {
            panic!("expected a touch");
        };
        assert_eq!(expires_at, now + 1_800);
    }
}
