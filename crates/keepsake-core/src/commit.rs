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
use crate::session::{Inner, Session};
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
    /// How old `last_activity` may get before an unmodified request touches.
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
        /// The record of the old id and the version this request loaded.
        replaces: Option<(StorageKey, i64)>,
    },
    /// Compare-and-swap the loaded record.
    Save {
        /// The new record (version already bumped).
        record: Record,
        /// The version it was loaded at.
        expected: i64,
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
        /// The record's key.
        key: StorageKey,
        /// The version this request loaded.
        version: i64,
    },
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
        let replaces = inner.base.as_ref().map(|b| (b.key.clone(), b.version));
        if state.is_empty() && !inner.explicit_previous_url {
            return Ok(match replaces {
                Some((key, version)) => Plan::Destroy { key, version },
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
            return Ok(Plan::Save {
                record: record(base.key.clone(), base.version + 1, payload),
                expected: base.version,
            });
        }
    }
    let stale = ctx.now.saturating_sub(base.last_activity)
        >= i64::try_from(ctx.touch_after).unwrap_or(i64::MAX);
    if !stale || expires_at <= base.expires_at {
        Ok(Plan::Nothing)
    } else if client_side {
        // A cookie carries its expiry inside the seal: resealed.
        Ok(Plan::Save {
            record: record(base.key.clone(), base.version + 1, state.payload.encode()?),
            expected: base.version,
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
    if let Some(client) = store.client_side() {
        return match plan(session, ctx, true)? {
            Plan::Nothing | Plan::Touch { .. } => Ok(Outcome::Keep),
            Plan::Destroy { .. } => Ok(Outcome::Remove),
            Plan::Create { record, .. } | Plan::Save { record, .. } => {
                let value = client.seal(&session.id(), &record)?;
                let expires_at = record.expires_at;
                session.lock().committed(record);
                Ok(Outcome::Send { value, expires_at })
            }
        };
    }
    let mut plan = plan(session, ctx, false)?;
    let serialize = match &plan {
        Plan::Save { record, .. } => Some(record.key.clone()),
        Plan::Create {
            replaces: Some((old, _)),
            ..
        }
        | Plan::Destroy { key: old, .. } => Some(old.clone()),
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
            Plan::Destroy { key, version } => {
                attempts += 1;
                // Retired by a compare-and-swap at the version this request
                // loaded: a write that landed meanwhile is replayed first, so
                // what this request read still holds when it ends the session.
                if store
                    .save(&tombstone(&key, version, ctx.now), version)
                    .await?
                    .is_applied()
                {
                    remove_retired(store, &key).await;
                    return Ok(Outcome::Remove);
                }
                if attempts >= ctx.max_save_attempts {
                    return Err(Error::Conflict { attempts });
                }
                let Some(fresh) = store.load(&key).await? else {
                    // Ended or moved to a new id by another request: this
                    // request's end of it did not happen as it saw it.
                    return Err(Error::Ended);
                };
                session.lock().rebase(fresh)?;
            }
            Plan::Create { record, replaces } => match store.create(&record).await? {
                Cas::Applied => {
                    let record = match replaces {
                        Some((old, version)) => {
                            match retire(store, session, ctx, old, version, record).await? {
                                Some(record) => record,
                                None => return Ok(Outcome::Remove),
                            }
                        }
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
            Plan::Save { record, expected } => {
                attempts += 1;
                match store.save(&record, expected).await? {
                    Cas::Applied => {
                        let expires_at = record.expires_at;
                        session.lock().committed(record);
                        return Ok(Outcome::Send {
                            value: session.id().as_str().to_owned(),
                            expires_at,
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

/// An expired record that replaces `key` at `version`: after it is saved the
/// old id no longer loads, and no save at an older version applies.
fn tombstone(key: &StorageKey, version: i64, now: i64) -> Record {
    Record {
        key: key.clone(),
        payload: String::new(),
        last_activity: now,
        expires_at: now - 1,
        version: version + 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    }
}

/// Removes a retired record. It no longer loads, so this only frees the
/// space (gc would do it too), and a failure does not fail the request.
async fn remove_retired(store: &dyn SessionStore, key: &StorageKey) {
    if let Err(error) = store.destroy(key).await {
        tracing::warn!(
            session = %key.short(),
            error = %crate::error::Report(&error),
            "removing the retired session record failed; gc will remove it"
        );
    }
}

/// Retires the record of the old id after an id change stored the new one.
///
/// The old record is expired by a compare-and-swap save at the version this
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
    old: StorageKey,
    expected: i64,
    new: Record,
) -> Result<Option<Record>> {
    let new_key = new.key.clone();
    let result = retire_inner(store, session, ctx, &old, expected, new).await;
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
    old: &StorageKey,
    mut expected: i64,
    mut new: Record,
) -> Result<Option<Record>> {
    for _ in 0..MAX_RETIRE_ATTEMPTS {
        if store
            .save(&tombstone(old, expected, ctx.now), expected)
            .await?
            .is_applied()
        {
            remove_retired(store, old).await;
            return Ok(Some(new));
        }
        let Some(fresh) = store.load(old).await? else {
            // Ended by another request meanwhile (a logout, a login in
            // another tab, expiry): this id change does not fork it.
            return Err(Error::Ended);
        };
        expected = fresh.version;
        session.lock().rebase(fresh)?;
        let record = match self::plan(session, ctx, false)? {
            Plan::Create { record, .. } => record,
            // The concurrent changes and this request's left nothing worth
            // storing: both records go.
            Plan::Destroy { .. } => {
                store.destroy(&new.key).await?;
                store.destroy(old).await?;
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
