//! The commit protocol: how a finished request writes its session.
//!
//! [`commit`] is the whole protocol, independent of HTTP: it takes the
//! session of a finished request and the store, makes the one write the
//! request needs (create, compare-and-swap save, touch, destroy, or nothing),
//! carries the request's changes onto a newer record when a concurrent
//! request saved first, retires the old record after an id change, and
//! answers what the response must carry ([`Outcome`]). The layer only turns
//! that answer into headers.
//!
//! The rule it keeps, for every interleaving of the requests of one session
//! (docs/semantics.md): the stored session, and every response sent, match
//! some serial order of the requests that is consistent with what each
//! handler read and returned. When a request's changes cannot be placed in
//! such an order (it read a value that changed, one of its changes no longer
//! applies, its session was ended or moved meanwhile), its commit fails with
//! a typed error and writes nothing: never a silent success.

use std::future::Future;
use std::time::Duration;

use rand::Rng as _;

use crate::error::{Error, Result};
use crate::id::StorageKey;
use crate::record::{Record, now_millis};
use crate::session::{Base, Inner, Session};
use crate::store::{Cas, SessionStore};

/// The longest user id a session may carry, in bytes (MySQL's indexed
/// `user_id` column holds 255).
pub const MAX_USER_ID_LEN: usize = 255;

/// How many times a retire of the old record after an id change is tried
/// while concurrent requests keep saving to it.
const MAX_RETIRE_ATTEMPTS: u32 = 16;

/// How many fresh ids a new session tries before giving up.
const MAX_ID_COLLISIONS: u32 = 3;

/// What a commit needs to know besides the session and the store.
#[derive(Debug, Clone)]
pub struct CommitContext {
    /// Unix seconds now.
    pub now: i64,
    /// The idle lifetime in seconds (unless the session sets its own).
    pub idle_lifetime: u64,
    /// The absolute lifetime in seconds, counted from creation.
    pub absolute_lifetime: Option<u64>,
    /// The step in seconds of a stored expiry: a request that changed
    /// nothing touches the record only when its expiry would move by at
    /// least this much, and a save whose expiry would move by less keeps the
    /// stored one (and saves in place). 0 moves the expiry on every request.
    pub touch_after: u64,
    /// Client address to record, if the layer records it.
    pub ip_address: Option<String>,
    /// User agent to record, if the layer records it.
    pub user_agent: Option<String>,
    /// How many compare-and-swap attempts a save makes before
    /// [`Error::Conflict`].
    pub max_save_attempts: u32,
}

impl CommitContext {
    /// A context at `now` with the layer's defaults: 2 hours idle, no
    /// absolute lifetime, touch after a minute, 16 attempts.
    #[must_use]
    pub fn new(now: i64) -> Self {
        Self {
            now,
            idle_lifetime: 7_200,
            absolute_lifetime: None,
            touch_after: 60,
            ip_address: None,
            user_agent: None,
            max_save_attempts: 16,
        }
    }
}

/// What the response of a committed request must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: the client's id (if any) is still right.
    Keep,
    /// Send this value as the session id (the id, or for a client-side
    /// store the sealed record), valid until `expires_at` (unix seconds).
    Send {
        /// The cookie or header value.
        value: String,
        /// When the record expires.
        expires_at: i64,
    },
    /// Remove the client's id: the request ended its session.
    Remove,
}

/// The in-process lock that serializes the writes of one session, so that
/// compare-and-swap conflicts come only from other processes.
///
/// The layer uses [`CommitLocks`]; tests use their own to decide who goes
/// first.
pub trait CommitLock: Send + Sync {
    /// What holds the lock until dropped.
    type Guard<'a>: Send
    where
        Self: 'a;

    /// Takes the lock of `key`.
    fn lock<'a>(&'a self, key: &StorageKey) -> impl Future<Output = Self::Guard<'a>> + Send;
}

/// Striped async locks keyed by storage key: 1,024 of them, taken only for
/// saves and id changes.
pub struct CommitLocks(Box<[tokio::sync::Mutex<()>]>);

impl CommitLocks {
    /// How many stripes.
    const STRIPES: usize = 1024;
}

impl Default for CommitLocks {
    fn default() -> Self {
        Self(
            (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for CommitLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLocks")
            .field("stripes", &self.0.len())
            .finish()
    }
}

impl CommitLock for CommitLocks {
    type Guard<'a> = tokio::sync::MutexGuard<'a, ()>;

    fn lock<'a>(&'a self, key: &StorageKey) -> impl Future<Output = Self::Guard<'a>> + Send {
        let bytes = key.as_str().as_bytes();
        // The key is a hex digest: its first characters are uniform.
        let stripe = bytes.iter().take(4).fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(usize::from(*b))
        });
        self.0[stripe % self.0.len()].lock()
    }
}

/// The one write a finished request needs.
#[doc(hidden)]
#[derive(Debug)]
pub enum Plan {
    /// Nothing to write.
    Nothing,
    /// Insert a new record (a new session, or the new id after an id
    /// change); then retire `replaces`, the old record at the version loaded.
    Create {
        /// The record to insert.
        record: Record,
        /// The record of the old id, as this request loaded it.
        replaces: Option<Loaded>,
    },
    /// Compare-and-swap the loaded record.
    Save {
        /// The new record (version already bumped).
        record: Record,
        /// The version it was loaded at.
        expected: i64,
        /// `record` keeps the loaded record's `expires_at` and `user_id`:
        /// [`SessionStore::save_in_place`].
        in_place: bool,
    },
    /// Move the expiry only, if the record is still at `version`.
    Touch {
        /// The record's key.
        key: StorageKey,
        /// The version this request loaded.
        version: i64,
        /// New `last_activity`.
        last_activity: i64,
        /// New `expires_at`.
        expires_at: i64,
    },
    /// The session was invalidated and is empty: retire the old record,
    /// if it is still at `version`.
    Destroy {
        /// The record, as this request loaded it.
        loaded: Loaded,
    },
}

/// The stored record a request loaded, as far as retiring it needs: its key,
/// its version, and its owner (which the compare-and-swap on that version
/// guarantees is still the owner when the retire applies).
#[doc(hidden)]
#[derive(Debug)]
pub struct Loaded {
    /// The record's key.
    pub key: StorageKey,
    /// The version this request loaded.
    pub version: i64,
    /// The record's `user_id` at that version.
    pub owner: Option<String>,
}

impl Loaded {
    fn of(base: &Base) -> Self {
        Self {
            key: base.key.clone(),
            version: base.version,
            owner: base.user_id.clone(),
        }
    }
}

/// Works out the one write `session` needs. Flash data is aged once per
/// record the request is based on, however often this is called.
///
/// # Errors
///
/// [`Error::UserIdTooLong`] and payload encoding failures.
#[doc(hidden)]
pub fn plan(session: &Session, ctx: &CommitContext, client_side: bool) -> Result<Plan> {
    let mut guard = session.lock();
    plan_locked(&mut guard, ctx, client_side)
}

fn plan_locked(inner: &mut Inner, ctx: &CommitContext, client_side: bool) -> Result<Plan> {
    let now_ms = ctx.now.saturating_mul(1000).max(now_millis());
    let untouched = match inner.untouched {
        Some(untouched) => untouched,
        None => {
            // The common request reads and changes nothing: decided from the
            // change set alone, with no copy, comparison or encoding.
            let untouched = !inner.id_changed
                && inner.ops.is_empty()
                && !inner.purged_at_load
                && inner.current.ages_to_itself(now_ms);
            if !untouched {
                let seen = inner.origin.as_ref().map(|origin| &origin.seen);
                inner.current.age(now_ms, seen);
            }
            inner.untouched = Some(untouched);
            untouched
        }
    };
    let state = &inner.current;
    let step = i64::try_from(ctx.touch_after).unwrap_or(i64::MAX);
    if let Some(user) = &state.user_id
        && user.len() > MAX_USER_ID_LEN
    {
        return Err(Error::UserIdTooLong {
            len: user.len(),
            limit: MAX_USER_ID_LEN,
        });
    }

    let lifetime = state.payload.lifetime.unwrap_or(ctx.idle_lifetime);
    let lifetime = i64::try_from(lifetime).unwrap_or(i64::MAX);
    let mut expires_at = ctx.now.saturating_add(lifetime);
    if let Some(absolute) = ctx.absolute_lifetime {
        let absolute = i64::try_from(absolute).unwrap_or(i64::MAX);
        expires_at = expires_at.min(state.payload.created_at.saturating_add(absolute));
    }
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
        let replaces = inner.base.as_ref().map(Loaded::of);
        if state.is_empty() && !inner.explicit_previous_url {
            return Ok(match replaces {
                Some(loaded) => Plan::Destroy { loaded },
                None => Plan::Nothing,
            });
        }
        return Ok(Plan::Create {
            record: record(inner.id.storage_key(), 1, state.payload.encode()?),
            replaces,
        });
    }
    let Some(base) = &inner.base else {
        return Ok(Plan::Nothing);
    };
    if !untouched {
        let payload = state.payload.encode()?;
        // Changes that cancel out (a put of the value already stored)
        // leave the record as it is.
        if payload != base.payload || state.user_id != base.user_id {
            let mut record = record(base.key.clone(), base.version + 1, payload);
            // The stored expiry moves in steps, as a touch moves it: one
            // less than a step behind stays, so most saves change no
            // indexed column. A cookie carries its own expiry: always exact.
            let keep_expiry = !client_side
                && expires_at >= base.expires_at
                && expires_at - base.expires_at < step;
            if keep_expiry {
                record.expires_at = base.expires_at;
            }
            return Ok(Plan::Save {
                record,
                expected: base.version,
                in_place: keep_expiry && state.user_id == base.user_id,
            });
        }
    }
    // Due when the expiry would move by a whole step (`touch_after`): the
    // stored expiry is then never more than a step behind the last request.
    let due = expires_at > base.expires_at && expires_at - base.expires_at >= step;
    if !due {
        Ok(Plan::Nothing)
    } else if client_side {
        // A cookie carries its expiry inside the seal: resealed.
        Ok(Plan::Save {
            record: record(base.key.clone(), base.version + 1, state.payload.encode()?),
            expected: base.version,
            in_place: false,
        })
    } else {
        Ok(Plan::Touch {
            key: base.key.clone(),
            version: base.version,
            last_activity: ctx.now,
            expires_at,
        })
    }
}

/// Ends a request: makes the session's one write and says what the response
/// must carry.
///
/// - A request that changed nothing writes nothing, or touches when the
///   expiry is due to slide; a touch of a record that is gone or moved on
///   sends no id.
/// - A change is a compare-and-swap save at the version loaded. On a
///   conflict the record is reloaded, the request's changes are replayed on
///   it (its reads checked: [`Error::Stale`]; its ops re-applied:
///   [`Error::Replay`]) and the save retried, up to
///   [`CommitContext::max_save_attempts`] ([`Error::Conflict`]). A record
///   that is gone meanwhile is never re-created: [`Error::Ended`].
/// - An id change creates the new record first, then retires the old one by
///   a compare-and-swap at the version loaded; writes that landed on the old
///   record meanwhile are carried into the new one first.
/// - Saves and id changes hold `locks` for the session's key, so requests in
///   one process conflict only with other processes.
///
/// # Errors
///
/// The store's failures, and the errors above; in every error case nothing
/// of this request is left written.
pub async fn commit<L: CommitLock>(
    session: &Session,
    store: &dyn SessionStore,
    locks: &L,
    ctx: &CommitContext,
) -> Result<Outcome> {
    match decide(session, store, ctx)? {
        Decided::Done(outcome) => Ok(outcome),
        Decided::Write(plan) => write(session, store, locks, ctx, plan).await,
    }
}

/// What [`decide`] found: the outcome, or the write still to make.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per request and moved straight into the write; boxing the plan would add an allocation to every write"
)]
pub enum Decided {
    /// Nothing to send to the store (or a client-side store, whose record
    /// is sealed at once): the request's outcome.
    Done(Outcome),
    /// The store write to make with [`write()`].
    Write(Plan),
}

/// The first half of [`commit`], with no await: decides the request's
/// write, and ends the request here when there is nothing to send to the
/// store. A caller can so skip building the future of [`write()`] for the
/// common request that only read its session.
///
/// # Errors
///
/// As [`commit`], for what is decided before any store call.
pub fn decide(session: &Session, store: &dyn SessionStore, ctx: &CommitContext) -> Result<Decided> {
    if let Some(client) = store.client_side() {
        return Ok(Decided::Done(match plan(session, ctx, true)? {
            Plan::Nothing | Plan::Touch { .. } => Outcome::Keep,
            Plan::Destroy { .. } => Outcome::Remove,
            Plan::Create { record, .. } | Plan::Save { record, .. } => {
                let value = client.seal(&session.id(), &record)?;
                let expires_at = record.expires_at;
                session.lock().committed(record);
                Outcome::Send { value, expires_at }
            }
        }));
    }
    Ok(match plan(session, ctx, false)? {
        Plan::Nothing => Decided::Done(Outcome::Keep),
        plan => Decided::Write(plan),
    })
}

/// The second half of [`commit`]: makes the write [`decide`] planned, for a
/// store that is not client-side.
///
/// # Errors
///
/// As [`commit`].
pub async fn write<L: CommitLock>(
    session: &Session,
    store: &dyn SessionStore,
    locks: &L,
    ctx: &CommitContext,
    mut plan: Plan,
) -> Result<Outcome> {
    let serialize = match &plan {
        Plan::Save { record, .. } => Some(record.key.clone()),
        Plan::Create {
            replaces: Some(loaded),
            ..
        }
        | Plan::Destroy { loaded } => Some(loaded.key.clone()),
        _ => None,
    };
    let _serialized = match &serialize {
        Some(key) => Some(locks.lock(key).await),
        None => None,
    };
    let mut collisions = 0;
    let mut attempts = 0;
    loop {
        match plan {
            // An unknown id that led to nothing stored is left alone rather
            // than removed: the browser may meanwhile hold a newer cookie from
            // a concurrent response (a login in another tab).
            Plan::Nothing => return Ok(Outcome::Keep),
            Plan::Touch {
                key,
                version,
                last_activity,
                expires_at,
            } => {
                return Ok(
                    match store
                        .touch(&key, version, last_activity, expires_at)
                        .await?
                    {
                        Cas::Applied => Outcome::Send {
                            value: session.id().as_str().to_owned(),
                            expires_at,
                        },
                        // Gone (a login or logout elsewhere retired it) or
                        // saved meanwhile (that request sent the cookie).
                        Cas::Conflict => Outcome::Keep,
                    },
                );
            }
            Plan::Destroy { loaded } => {
                attempts += 1;
                // Retired by a compare-and-swap at the version this request
                // loaded: a write that landed meanwhile is replayed first, so
                // what this request read still holds when it ends the session.
                let Loaded {
                    key,
                    version,
                    owner,
                } = &loaded;
                if store
                    .retire(key, *version, owner.as_deref())
                    .await?
                    .is_applied()
                {
                    return Ok(Outcome::Remove);
                }
                if attempts >= ctx.max_save_attempts {
                    return Err(Error::Conflict { attempts });
                }
                let Some(fresh) = store.load(key).await? else {
                    // Ended or moved to a new id by another request: this
                    // request's end of it did not happen as it saw it.
                    return Err(Error::Ended);
                };
                session.lock().rebase(fresh)?;
            }
            Plan::Create { record, replaces } => match store.create(&record).await? {
                Cas::Applied => {
                    let record = match replaces {
                        Some(old) => match retire(store, session, ctx, old, record).await? {
                            Some(record) => record,
                            None => return Ok(Outcome::Remove),
                        },
                        None => record,
                    };
                    let expires_at = record.expires_at;
                    session.lock().committed(record);
                    return Ok(Outcome::Send {
                        value: session.id().as_str().to_owned(),
                        expires_at,
                    });
                }
                Cas::Conflict => {
                    collisions += 1;
                    if collisions >= MAX_ID_COLLISIONS {
                        return Err(Error::IdCollision {
                            attempts: collisions,
                        });
                    }
                    session.lock().id = crate::SessionId::generate();
                }
            },
            Plan::Save {
                record,
                expected,
                in_place,
            } => {
                attempts += 1;
                let saved = if in_place {
                    store.save_in_place(&record, expected).await?
                } else {
                    store.save(&record, expected).await?
                };
                match saved {
                    Cas::Applied => {
                        let expires_at = record.expires_at;
                        let mut inner = session.lock();
                        // The id is the one the client sent, and the client's
                        // cookie already expires with the stored expiry when
                        // the save kept it: nothing to resend.
                        let moved = inner
                            .base
                            .as_ref()
                            .is_none_or(|base| base.expires_at != expires_at);
                        inner.committed(record);
                        return Ok(if moved {
                            Outcome::Send {
                                value: inner.id.as_str().to_owned(),
                                expires_at,
                            }
                        } else {
                            Outcome::Keep
                        });
                    }
                    Cas::Conflict if attempts >= ctx.max_save_attempts => {
                        return Err(Error::Conflict { attempts });
                    }
                    Cas::Conflict => {
                        tracing::debug!(session = %record.key.short(), attempts, "save conflicted; replaying");
                        crate::instrument::record_retry(store.kind());
                        if attempts > 1 {
                            // Another process keeps winning: spread the retries.
                            let cap = 1u64 << attempts.min(6);
                            let pause = rand::rng().random_range(0..=cap);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        let Some(fresh) = store.load(&record.key).await? else {
                            // Destroyed, expired or retired by a login
                            // meanwhile: never resurrected, and never a
                            // silent success.
                            return Err(Error::Ended);
                        };
                        session.lock().rebase(fresh)?;
                    }
                }
            }
        }
        plan = self::plan(session, ctx, false)?;
    }
}

/// Retires the record of the old id after an id change stored the new one.
///
/// The old record is retired ([`SessionStore::retire`]) at the version this
/// request loaded, not destroyed blindly: if a concurrent request of the same
/// session saved to it meanwhile (another tab adding to a cart while this one
/// logs in), the save conflicts, that request's changes are carried into the
/// new record, and the old one is retired again. A request that saves to the
/// old record after the retire finds it gone and fails with
/// [`Error::Ended`]. Returns the new record as finally stored, or `None`
/// when the carried changes left nothing worth storing (both records are then
/// gone); on an error the new record is removed again, so the client keeps
/// its old id.
async fn retire(
    store: &dyn SessionStore,
    session: &Session,
    ctx: &CommitContext,
    old: Loaded,
    new: Record,
) -> Result<Option<Record>> {
    let new_key = new.key.clone();
    let result = retire_inner(store, session, ctx, old, new).await;
    if result.is_err()
        && let Err(error) = store.destroy(&new_key).await
    {
        tracing::warn!(
            session = %new_key.short(),
            error = %crate::error::Report(&error),
            "removing the new record of a failed id change failed; it expires unused"
        );
    }
    result
}

async fn retire_inner(
    store: &dyn SessionStore,
    session: &Session,
    ctx: &CommitContext,
    mut old: Loaded,
    mut new: Record,
) -> Result<Option<Record>> {
    for _ in 0..MAX_RETIRE_ATTEMPTS {
        if store
            .retire(&old.key, old.version, old.owner.as_deref())
            .await?
            .is_applied()
        {
            return Ok(Some(new));
        }
        let Some(fresh) = store.load(&old.key).await? else {
            // Ended by another request meanwhile (a logout, a login in
            // another tab, expiry): this id change does not fork it.
            return Err(Error::Ended);
        };
        old.version = fresh.version;
        old.owner.clone_from(&fresh.user_id);
        session.lock().rebase(fresh)?;
        let record = match self::plan(session, ctx, false)? {
            Plan::Create { record, .. } => record,
            // The concurrent changes and this request's left nothing worth
            // storing: both records go.
            Plan::Destroy { .. } => {
                store.destroy(&new.key).await?;
                store.destroy(&old.key).await?;
                return Ok(None);
            }
            _ => return Err(Error::Ended),
        };
        let carried = Record {
            version: new.version + 1,
            ..record
        };
        if !store.save(&carried, new.version).await?.is_applied() {
            return Err(Error::Conflict { attempts: 1 });
        }
        new = carried;
    }
    Err(Error::Conflict {
        attempts: MAX_RETIRE_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    //! One test per interleaving that lost or corrupted data before the
    //! protocol lived here (docs/semantics.md), driven without HTTP: two
    //! "requests" are two sessions loaded from one store, committed in the
    //! order each test names.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::record::{Payload, SessionInfo};
    use crate::{MemoryStore, SessionId};

    fn ctx() -> CommitContext {
        CommitContext::new(crate::now())
    }

    /// Stores a session holding `data` (and, when given, flash keys in
    /// `old`) and returns its id.
    async fn seed(store: &dyn SessionStore, data: Value, old: &[&str]) -> SessionId {
        let id = SessionId::generate();
        let mut payload = Payload {
            created_at: crate::now() - 10,
            ..Payload::default()
        };
        payload.data = data.as_object().cloned().unwrap_or_default();
        payload.meta.flash_old = old.iter().map(|k| (*k).to_owned()).collect();
        let now = crate::now();
        let record = Record {
            key: id.storage_key(),
            payload: payload.encode().unwrap(),
            last_activity: now - 120,
            expires_at: now + 3_600,
            version: 1,
            user_id: None,
            ip_address: None,
            user_agent: None,
        };
        assert!(store.create(&record).await.unwrap().is_applied());
        id
    }

    async fn load(store: &dyn SessionStore, id: &SessionId) -> Session {
        let record = store
            .load(&id.storage_key())
            .await
            .unwrap()
            .expect("stored");
        Session::from_loaded(id.clone(), record)
    }

    async fn expiry(store: &dyn SessionStore, id: &SessionId) -> i64 {
        let record = store.load(&id.storage_key()).await.unwrap();
        record.expect("stored").expires_at
    }

    async fn stored(store: &dyn SessionStore, id: &SessionId) -> Option<Payload> {
        let record = store.load(&id.storage_key()).await.unwrap()?;
        Some(Payload::decode(&record.payload).unwrap())
    }

    async fn run(session: &Session, store: &dyn SessionStore) -> Result<Outcome> {
        commit(session, store, &CommitLocks::default(), &ctx()).await
    }

    #[tokio::test]
    async fn a_flash_saved_meanwhile_is_not_aged_away_unseen() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let a = load(&store, &id).await;
        let b = load(&store, &id).await;
        a.put("x", 1).unwrap();
        b.flash("status", "saved").unwrap();
        run(&b, &store).await.unwrap();
        run(&a, &store).await.unwrap();
        let payload = stored(&store, &id).await.unwrap();
        assert_eq!(payload.data.get("status"), Some(&json!("saved")));
        assert_eq!(payload.meta.flash_old, ["status"], "shown on the next page");
        assert_eq!(payload.data.get("x"), Some(&json!(1)));
    }

    #[tokio::test]
    async fn a_replayed_pull_never_removes_a_value_it_did_not_read() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"notice": "Welcome"}), &[]).await;
        let a = load(&store, &id).await;
        let b = load(&store, &id).await;
        assert_eq!(
            a.pull::<String>("notice").unwrap().as_deref(),
            Some("Welcome")
        );
        b.put("notice", "Saved").unwrap();
        run(&b, &store).await.unwrap();
        let error = run(&a, &store).await.unwrap_err();
        assert!(
            matches!(&error, Error::Stale { key } if key == "notice"),
            "{error}"
        );
        assert_eq!(error.status(), http::StatusCode::CONFLICT);
        let payload = stored(&store, &id).await.unwrap();
        assert_eq!(payload.data.get("notice"), Some(&json!("Saved")));

        // Still the value it returned: the pull applies.
        let c = load(&store, &id).await;
        let d = load(&store, &id).await;
        assert_eq!(
            c.pull::<String>("notice").unwrap().as_deref(),
            Some("Saved")
        );
        d.put("other", 1).unwrap();
        run(&d, &store).await.unwrap();
        run(&c, &store).await.unwrap();
        let payload = stored(&store, &id).await.unwrap();
        assert_eq!(payload.data.get("notice"), None);
        assert_eq!(payload.data.get("other"), Some(&json!(1)));
    }

    #[tokio::test]
    async fn the_stored_expiry_moves_in_steps() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let at = |seconds: i64| CommitContext {
            now: crate::now() + seconds,
            ..ctx()
        };
        let idle = i64::try_from(ctx().idle_lifetime).unwrap();

        // The seeded expiry is far behind: the first save moves it.
        let first = at(0);
        let a = load(&store, &id).await;
        a.put("n", 2).unwrap();
        let outcome = commit(&a, &store, &CommitLocks::default(), &first).await;
        assert_eq!(
            outcome.unwrap(),
            Outcome::Send {
                value: id.as_str().to_owned(),
                expires_at: first.now + idle
            },
            "a moved expiry is sent"
        );
        assert_eq!(expiry(&store, &id).await, first.now + idle);

        // Less than a step later, a save keeps the stored expiry and the
        // user, so it can be saved in place.
        let b = load(&store, &id).await;
        b.put("n", 3).unwrap();
        let plan_b = plan(&b, &at(30), false).unwrap();
        assert!(
            matches!(&plan_b, Plan::Save { record, in_place: true, .. }
                if record.expires_at == first.now + idle),
            "{plan_b:?}"
        );
        let outcome = commit(&b, &store, &CommitLocks::default(), &at(30)).await;
        assert_eq!(
            outcome.unwrap(),
            Outcome::Keep,
            "the client's cookie already expires with the kept expiry"
        );
        assert_eq!(expiry(&store, &id).await, first.now + idle);
        assert_eq!(
            stored(&store, &id).await.unwrap().data.get("n"),
            Some(&json!(3))
        );

        // A request that only reads is not due before the expiry would move
        // by a whole step, counted from the stored expiry (not from the
        // save's last_activity), so the expiry lags by less than one step.
        let c = load(&store, &id).await;
        assert!(matches!(plan(&c, &at(59), false).unwrap(), Plan::Nothing));
        let c = load(&store, &id).await;
        assert!(matches!(
            plan(&c, &at(60), false).unwrap(),
            Plan::Touch { expires_at, .. } if expires_at == first.now + 60 + idle
        ));

        // A save that sets a user writes the indexed columns.
        let d = load(&store, &id).await;
        d.set_user_id("u1");
        assert!(matches!(
            plan(&d, &at(30), false).unwrap(),
            Plan::Save { in_place: false, record, .. } if record.expires_at == first.now + idle
        ));

        // With no step, every save moves the expiry exactly.
        let e = load(&store, &id).await;
        e.put("n", 4).unwrap();
        let exact = CommitContext {
            touch_after: 0,
            ..at(30)
        };
        assert!(matches!(
            plan(&e, &exact, false).unwrap(),
            Plan::Save { in_place: false, record, .. } if record.expires_at == exact.now + idle
        ));

        // A shorter lifetime set by the request is never kept back.
        let f = load(&store, &id).await;
        f.set_lifetime(Duration::from_secs(600));
        assert!(matches!(
            plan(&f, &at(30), false).unwrap(),
            Plan::Save { in_place: false, record, .. } if record.expires_at == at(30).now + 600
        ));
    }

    #[tokio::test]
    async fn a_touch_of_a_retired_id_sends_no_id() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let reader = load(&store, &id).await;
        let login = load(&store, &id).await;
        login.regenerate();
        assert!(matches!(
            run(&login, &store).await.unwrap(),
            Outcome::Send { .. }
        ));
        let touch = CommitContext {
            touch_after: 0,
            ..ctx()
        };
        let plan = plan(&reader, &touch, false).unwrap();
        assert!(
            matches!(plan, Plan::Touch { .. }),
            "a touch is due: {plan:?}"
        );
        let outcome = commit(&reader, &store, &CommitLocks::default(), &touch).await;
        assert_eq!(outcome.unwrap(), Outcome::Keep, "no dead id handed back");
    }

    #[tokio::test]
    async fn a_touch_never_shortens_a_lifetime_set_meanwhile() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let reader = load(&store, &id).await;
        let remember = load(&store, &id).await;
        remember.set_lifetime(Duration::from_secs(30 * 86_400));
        run(&remember, &store).await.unwrap();
        let long = store
            .load(&id.storage_key())
            .await
            .unwrap()
            .unwrap()
            .expires_at;
        let touch = CommitContext {
            touch_after: 0,
            ..ctx()
        };
        let outcome = commit(&reader, &store, &CommitLocks::default(), &touch).await;
        assert_eq!(outcome.unwrap(), Outcome::Keep);
        let after = store.load(&id.storage_key()).await.unwrap().unwrap();
        assert_eq!(after.expires_at, long, "the 30-day expiry stays");
    }

    #[tokio::test]
    async fn a_write_after_a_login_retired_the_record_fails_with_409() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"cart": []}), &[]).await;
        let tab = load(&store, &id).await;
        let login = load(&store, &id).await;
        login.regenerate();
        login.set_user_id("ada");
        run(&login, &store).await.unwrap();
        tab.push("cart", "book").unwrap();
        let error = run(&tab, &store).await.unwrap_err();
        assert!(matches!(error, Error::Ended), "{error}");
        assert_eq!(error.status(), http::StatusCode::CONFLICT);
        assert!(stored(&store, &id).await.is_none(), "never resurrected");
        let new = stored(&store, &login.id()).await.unwrap();
        assert_eq!(new.data.get("cart"), Some(&json!([])));
    }

    #[tokio::test]
    async fn a_write_that_lands_during_a_login_is_carried_into_the_new_session() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"cart": []}), &[]).await;
        let tab = load(&store, &id).await;
        let login = load(&store, &id).await;
        tab.push("cart", "book").unwrap();
        run(&tab, &store).await.unwrap();
        login.regenerate();
        run(&login, &store).await.unwrap();
        let new = stored(&store, &login.id()).await.unwrap();
        assert_eq!(new.data.get("cart"), Some(&json!(["book"])));
        assert!(stored(&store, &id).await.is_none());
    }

    #[tokio::test]
    async fn a_write_after_a_logout_fails_with_409_and_removes_nothing() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let tab = load(&store, &id).await;
        let logout = load(&store, &id).await;
        logout.invalidate();
        assert_eq!(run(&logout, &store).await.unwrap(), Outcome::Remove);
        tab.put("n", 2).unwrap();
        assert!(matches!(run(&tab, &store).await, Err(Error::Ended)));
        assert!(stored(&store, &id).await.is_none());
    }

    /// Answers `Conflict` to the first `create`, as a store would for an id
    /// that is taken.
    #[derive(Debug)]
    struct CollidesOnce(MemoryStore, AtomicBool);

    #[async_trait]
    impl SessionStore for CollidesOnce {
        async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
            self.0.load(key).await
        }
        async fn create(&self, record: &Record) -> Result<Cas> {
            if self.1.swap(false, Ordering::SeqCst) {
                return Ok(Cas::Conflict);
            }
            self.0.create(record).await
        }
        async fn save(&self, record: &Record, expected: i64) -> Result<Cas> {
            self.0.save(record, expected).await
        }
        async fn touch(&self, key: &StorageKey, v: i64, last: i64, exp: i64) -> Result<Cas> {
            self.0.touch(key, v, last, exp).await
        }
        async fn destroy(&self, key: &StorageKey) -> Result<()> {
            self.0.destroy(key).await
        }
        async fn gc(&self, now: i64) -> Result<u64> {
            self.0.gc(now).await
        }
        async fn list_for_user(&self, user: &str) -> Result<Vec<SessionInfo>> {
            self.0.list_for_user(user).await
        }
        async fn destroy_for_user(&self, user: &str, except: Option<&StorageKey>) -> Result<u64> {
            self.0.destroy_for_user(user, except).await
        }
        fn kind(&self) -> &'static str {
            "collides-once"
        }
    }

    #[tokio::test]
    async fn an_id_collision_ages_flash_data_once() {
        let store = CollidesOnce(MemoryStore::new(), AtomicBool::new(true));
        let session = Session::new_detached();
        let first_id = session.id();
        session.flash("status", "welcome").unwrap();
        run(&session, &store).await.unwrap();
        assert_ne!(session.id(), first_id, "a fresh id after the collision");
        let payload = stored(&store, &session.id()).await.unwrap();
        assert_eq!(payload.data.get("status"), Some(&json!("welcome")));
        assert_eq!(payload.meta.flash_old, ["status"], "aged once, shown next");
    }

    #[tokio::test]
    async fn invalidate_starts_a_new_clock_and_migrate_keeps_it() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 1}), &[]).await;
        let absolute = CommitContext {
            absolute_lifetime: Some(60),
            ..ctx()
        };
        let migrated = load(&store, &id).await;
        let created = migrated.created_at();
        migrated.migrate();
        commit(&migrated, &store, &CommitLocks::default(), &absolute)
            .await
            .unwrap();
        assert_eq!(
            stored(&store, &migrated.id()).await.unwrap().created_at,
            created
        );

        let logout = load(&store, &migrated.id()).await;
        logout.invalidate();
        logout.put("bye", true).unwrap();
        let Outcome::Send { expires_at, .. } =
            commit(&logout, &store, &CommitLocks::default(), &absolute)
                .await
                .unwrap()
        else {
            panic!("the new session is stored");
        };
        let fresh = stored(&store, &logout.id()).await.unwrap();
        assert!(fresh.created_at >= absolute.now, "a new clock");
        assert_eq!(
            expires_at,
            fresh.created_at + 60,
            "the whole absolute lifetime"
        );
    }

    #[tokio::test]
    async fn migrate_keeps_data_and_token_and_regenerate_rotates_the_token() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"user": "ada"}), &[]).await;
        let session = load(&store, &id).await;
        let token = session.token();
        run(&session, &store).await.unwrap();
        let session = load(&store, &id).await;
        session.migrate();
        run(&session, &store).await.unwrap();
        assert_ne!(session.id(), id);
        assert!(
            stored(&store, &id).await.is_none(),
            "the old record is retired"
        );
        let moved = stored(&store, &session.id()).await.unwrap();
        assert_eq!(moved.data.get("user"), Some(&json!("ada")));
        assert_eq!(moved.meta.token.as_deref(), Some(token.as_str()));

        let again = load(&store, &session.id()).await;
        again.regenerate();
        run(&again, &store).await.unwrap();
        let rotated = stored(&store, &again.id()).await.unwrap();
        assert_eq!(rotated.data.get("user"), Some(&json!("ada")));
        assert_ne!(rotated.meta.token.as_deref(), Some(token.as_str()));
    }

    #[tokio::test]
    async fn a_value_too_deep_to_read_back_is_refused_at_write_time() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"login": "ada"}), &[]).await;
        let session = load(&store, &id).await;
        let mut deep = json!(1);
        for _ in 0..crate::MAX_DEPTH {
            deep = json!({ "x": deep });
        }
        assert!(matches!(
            session.put("deep", &deep),
            Err(Error::TooDeep { .. })
        ));
        let long_path = vec!["p"; crate::MAX_DEPTH + 1].join(".");
        assert!(matches!(
            session.put(&long_path, 1),
            Err(Error::TooDeep { .. })
        ));
        assert!(!session.is_modified(), "the session is unchanged");
        // At the limit it stores and loads back.
        let mut ok = json!(1);
        for _ in 0..crate::MAX_DEPTH - 1 {
            ok = json!([ok]);
        }
        session.put("ok", &ok).unwrap();
        run(&session, &store).await.unwrap();
        let back = load(&store, &id).await;
        assert_eq!(back.get::<String>("login").unwrap().as_deref(), Some("ada"));
        assert_eq!(back.get::<Value>("ok").unwrap(), Some(ok));
    }

    #[tokio::test]
    async fn an_explicit_previous_url_is_stored_on_an_otherwise_empty_session() {
        let store = MemoryStore::new();
        let session = Session::new_detached();
        session.set_previous_url("/cart");
        assert!(matches!(
            run(&session, &store).await.unwrap(),
            Outcome::Send { .. }
        ));
        let payload = stored(&store, &session.id()).await.unwrap();
        assert_eq!(payload.meta.previous_url.as_deref(), Some("/cart"));

        let tracked = Session::new_detached();
        tracked.track_previous_url("/page");
        assert_eq!(run(&tracked, &store).await.unwrap(), Outcome::Keep);
    }

    #[tokio::test]
    async fn a_replayed_op_that_no_longer_applies_fails_the_commit() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"tags": []}), &[]).await;
        let a = load(&store, &id).await;
        let b = load(&store, &id).await;
        a.push("tags", "x").unwrap();
        b.put("tags", "now a string").unwrap();
        run(&b, &store).await.unwrap();
        let error = run(&a, &store).await.unwrap_err();
        assert!(matches!(error, Error::Replay { .. }), "{error}");
        assert_eq!(error.status(), http::StatusCode::CONFLICT);
        assert_eq!(
            stored(&store, &id).await.unwrap().data.get("tags"),
            Some(&json!("now a string"))
        );
    }

    #[tokio::test]
    async fn a_user_id_over_255_bytes_is_refused_before_any_write() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({}), &[]).await;
        let session = load(&store, &id).await;
        session.set_user_id("u".repeat(MAX_USER_ID_LEN + 1));
        let error = run(&session, &store).await.unwrap_err();
        assert!(
            matches!(error, Error::UserIdTooLong { len: 256, .. }),
            "{error}"
        );
        let record = store.load(&id.storage_key()).await.unwrap().unwrap();
        assert_eq!((record.version, record.user_id), (1, None));
    }

    #[tokio::test]
    async fn concurrent_increments_add_up_and_distinct_keys_both_land() {
        let store = MemoryStore::new();
        let id = seed(&store, json!({"n": 0}), &[]).await;
        let a = load(&store, &id).await;
        let b = load(&store, &id).await;
        a.increment("n", 1i64).unwrap();
        a.put("a", true).unwrap();
        b.increment("n", 1i64).unwrap();
        b.put("b", true).unwrap();
        run(&b, &store).await.unwrap();
        run(&a, &store).await.unwrap();
        let payload = stored(&store, &id).await.unwrap();
        assert_eq!(payload.data.get("n"), Some(&json!(2)));
        assert_eq!(payload.data.get("a"), Some(&json!(true)));
        assert_eq!(payload.data.get("b"), Some(&json!(true)));
    }
}
