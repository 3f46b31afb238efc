//! The op log of a request and its replay: what a handler changed, what it
//! observed, and how both are carried onto a newer version of the record
//! when a concurrent request saved first.
//!
//! The rule the replay keeps (docs/semantics.md): the stored session, and
//! every response sent, match some serial order of the requests that is
//! consistent with what each handler read and returned. A request whose
//! save conflicted is placed after the request that won, so everything it
//! observed must still be what it would observe there; when something is
//! not, its commit fails instead of acting on a value it never saw.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::path;
use crate::record::Payload;

/// The persisted state of a session: its payload plus the owner column.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct State {
    pub(crate) payload: Payload,
    pub(crate) user_id: Option<String>,
}

/// One mutation, recorded so it can be replayed on top of a newer version of
/// the record when a concurrent request saved first.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put(String, Value),
    /// `remember` of an absent key: stores only if still absent when
    /// replayed (the first saver wins).
    PutIfAbsent(String, Value),
    PutFor(String, Value, i64),
    Forget(String),
    Flush,
    /// `invalidate`: flush, and a new clock for the absolute lifetime.
    Restart(i64),
    Push(String, Value),
    Increment(String, Step),
    Flash(String, Value),
    Now(String, Value),
    Reflash,
    Keep(Vec<String>),
    FlashInput(Map<String, Value>),
    SetToken(String),
    /// `token()` of a session without one: the first saver's token wins.
    EnsureToken(String),
    SetPreviousUrl(String),
    SetUserId(Option<String>),
    SetLifetime(Option<u64>),
    SetBinding(Option<String>),
}

/// An increment step.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Int(i64),
    Float(f64),
}

/// Something a handler read, recorded so a replay can tell whether the
/// request would still have read the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The value (or absence) at a dot path of the user data.
    Path(Box<str>),
    /// The whole user data (`all`, `except`).
    All,
    /// The CSRF token (an existing one, returned by `token`).
    Token,
    /// The previous URL.
    PreviousUrl,
    /// The flashed input.
    OldInput,
    /// The owner.
    UserId,
    /// The per-session lifetime.
    Lifetime,
}

/// A read, at its place in the op log: after `at` ops had been applied.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) at: usize,
    pub(crate) what: Observed,
}

/// How deep a value may be nested in a session, counting the segments of
/// its dot path: every payload at or under this depth decodes again (the
/// decoder stops at 128 levels; the payload wraps user data in two more).
pub const MAX_DEPTH: usize = 64;

impl Observed {
    /// The key named in errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Path(key) => key.to_string(),
            Self::All => "(all data)".to_owned(),
            Self::Token => "(csrf token)".to_owned(),
            Self::PreviousUrl => "(previous url)".to_owned(),
            Self::OldInput => "(old input)".to_owned(),
            Self::UserId => "(user id)".to_owned(),
            Self::Lifetime => "(lifetime)".to_owned(),
        }
    }

    /// True when `a` and `b` give the same answer to this read.
    fn same(&self, a: &State, b: &State) -> bool {
        let (ma, mb) = (&a.payload.meta, &b.payload.meta);
        match self {
            Self::Path(key) => path::get(a.data(), key) == path::get(b.data(), key),
            Self::All => a.payload.data == b.payload.data,
            Self::Token => ma.token == mb.token,
            Self::PreviousUrl => ma.previous_url == mb.previous_url,
            Self::OldInput => ma.old_input == mb.old_input,
            Self::UserId => a.user_id == b.user_id,
            Self::Lifetime => a.payload.lifetime == b.payload.lifetime,
        }
    }
}

impl Op {
    /// The user key an op works on, for the read a failed op implies (a
    /// `push` refused because the key holds a string observed that string).
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Self::Put(key, _)
            | Self::PutIfAbsent(key, _)
            | Self::PutFor(key, _, _)
            | Self::Forget(key)
            | Self::Push(key, _)
            | Self::Increment(key, _)
            | Self::Flash(key, _)
            | Self::Now(key, _) => Some(key),
            _ => None,
        }
    }

    /// Refuses values nested deeper than [`MAX_DEPTH`].
    pub(crate) fn check_depth(&self) -> Result<()> {
        let (key, value, extra) = match self {
            Self::Put(key, value)
            | Self::PutIfAbsent(key, value)
            | Self::PutFor(key, value, _)
            | Self::Flash(key, value)
            | Self::Now(key, value) => (key.as_str(), value, 0),
            Self::Push(key, value) => (key.as_str(), value, 1),
            Self::FlashInput(map) => {
                let depth = 1 + map.values().map(depth_of).max().unwrap_or(0);
                return too_deep("_old_input", depth);
            }
            _ => return Ok(()),
        };
        let segments = key.split('.').count();
        too_deep(key, segments + extra + depth_of(value))
    }
}

fn too_deep(key: &str, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            key: key.to_owned(),
            depth,
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

/// The nesting depth of a value (a scalar is 0), without recursion.
fn depth_of(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(list) => Box::new(list.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        if depth + 1 > MAX_DEPTH {
            // Deep enough to refuse: no need to walk the rest.
            return depth + 1;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

fn push_unique(list: &mut Vec<String>, key: &str) {
    if !list.iter().any(|k| k == key) {
        list.push(key.to_owned());
    }
}

fn float(key: &str, value: f64) -> Result<Value> {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
        })
}

impl State {
    pub(crate) fn data(&self) -> &Map<String, Value> {
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
    pub(crate) fn apply(&mut self, op: &Op) -> Result<Option<Value>> {
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
            Op::Restart(now) => {
                *self = Self {
                    payload: Payload {
                        created_at: *now,
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
                let next = increment(path::get(self.data(), key), key, *step)?;
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
    ///
    /// `seen` is `None` on a request's own record: every key in `old` goes.
    /// After a rebase it names what this request saw, and only that ages:
    /// a key flashed (or input flashed) by a concurrent request that this
    /// request never loaded stays for the next request to show.
    pub(crate) fn age(&mut self, now_ms: i64, seen: Option<&Seen>) {
        let meta = &mut self.payload.meta;
        let old = std::mem::take(&mut meta.flash_old);
        let new = std::mem::take(&mut meta.flash_new);
        let (gone, kept): (Vec<String>, Vec<String>) = match seen {
            None => (old, Vec::new()),
            Some(seen) => old
                .into_iter()
                .partition(|key| seen.flash_old.contains(key)),
        };
        meta.flash_old = kept;
        for key in new {
            push_unique(&mut meta.flash_old, &key);
        }
        if meta.old_input.is_some() {
            if meta.old_input_kept {
                meta.old_input_kept = false;
            } else if seen.is_none_or(|seen| seen.old_input.as_ref() == meta.old_input.as_ref()) {
                meta.old_input = None;
            }
        }
        for key in &gone {
            path::remove(&mut self.payload.data, key);
        }
        self.purge_expired(now_ms);
    }

    /// True when [`age`](Self::age) at `now_ms` would change nothing: no
    /// flash data, no flashed input, no `put_for` key due.
    pub(crate) fn ages_to_itself(&self, now_ms: i64) -> bool {
        let meta = &self.payload.meta;
        meta.flash_new.is_empty()
            && meta.flash_old.is_empty()
            && meta.old_input.is_none()
            && meta.expiring.values().all(|deadline| *deadline > now_ms)
    }

    /// Removes the `put_for` keys due at `now_ms`; true when there were any.
    pub(crate) fn purge_expired(&mut self, now_ms: i64) -> bool {
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
    /// binding fingerprint alone is not worth a record, nor a previous URL
    /// the layer recorded by itself).
    pub(crate) fn is_empty(&self) -> bool {
        let meta = &self.payload.meta;
        self.payload.data.is_empty()
            && self.user_id.is_none()
            && meta.token.is_none()
            && meta.flash_new.is_empty()
            && meta.old_input.is_none()
            && self.payload.lifetime.is_none()
    }
}

fn increment(current: Option<&Value>, key: &str, step: Step) -> Result<Value> {
    let current = current.filter(|v| !v.is_null());
    match (current, step) {
        (None, Step::Int(by)) => Ok(Value::from(by)),
        (None, Step::Float(by)) => float(key, by),
        (Some(Value::Number(n)), Step::Int(by)) => match n.as_i64() {
            Some(n) => n
                .checked_add(by)
                .map(Value::from)
                .ok_or_else(|| Error::Overflow {
                    key: key.to_owned(),
                }),
            None if n.is_u64() => Err(Error::Overflow {
                key: key.to_owned(),
            }),
            None => Err(Error::NotANumber {
                key: key.to_owned(),
                found: "float (increment it by an f64)",
            }),
        },
        (Some(Value::Number(n)), Step::Float(by)) => {
            float(key, n.as_f64().unwrap_or(f64::NAN) + by)
        }
        (Some(other), _) => Err(Error::NotANumber {
            key: key.to_owned(),
            found: path::type_name(other),
        }),
    }
}

/// What a request saw of the flash data when it loaded, so a replay ages
/// only that.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Keys in `old` at load, plus those this request's own `now` put there.
    pub(crate) flash_old: Vec<String>,
    /// The flashed input at load.
    pub(crate) old_input: Option<Map<String, Value>>,
}

impl Seen {
    pub(crate) fn new(origin: &State, ops: &[Op]) -> Self {
        let mut flash_old = origin.payload.meta.flash_old.clone();
        for op in ops {
            if let Op::Now(key, _) = op {
                push_unique(&mut flash_old, key);
            }
        }
        Self {
            flash_old,
            old_input: origin.payload.meta.old_input.clone(),
        }
    }
}

/// Replays `ops` onto `fresh`, checking each read against what the handler
/// saw (the same ops applied to `origin`, the state it loaded).
///
/// # Errors
///
/// [`Error::Stale`] when a read would now give another answer (the request
/// cannot be placed after the one that saved first), or
/// [`Error::Replay`] when an op no longer applies.
pub(crate) fn replay(
    origin: &State,
    mut fresh: State,
    ops: &[Op],
    reads: &[Read],
) -> Result<State> {
    let mut seen = origin.clone();
    let mut reads = reads.iter().peekable();
    for at in 0..=ops.len() {
        while let Some(read) = reads.next_if(|read| read.at == at) {
            if !read.what.same(&seen, &fresh) {
                return Err(Error::Stale {
                    key: read.what.describe(),
                });
            }
        }
        let Some(op) = ops.get(at) else { break };
        // The op applied when the handler made it, so it applies to what the
        // handler saw.
        let _ = seen.apply(op);
        if let Err(error) = fresh.apply(op) {
            return Err(Error::Replay {
                source: Box::new(error),
            });
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(data: Value) -> State {
        let Value::Object(data) = data else {
            panic!("test data is an object")
        };
        State {
            payload: Payload {
                data,
                ..Payload::default()
            },
            user_id: None,
        }
    }

    #[test]
    fn depth_counts_path_segments_and_nesting() {
        assert_eq!(depth_of(&json!(1)), 0);
        assert_eq!(depth_of(&json!([])), 1);
        assert_eq!(depth_of(&json!({"a": [1, {"b": 2}]})), 3);
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(Op::Put("k".into(), deep).check_depth().is_err());
        let path = vec!["a"; MAX_DEPTH].join(".");
        assert!(Op::Put(path.clone(), json!(1)).check_depth().is_ok());
        assert!(Op::Put(path, json!([])).check_depth().is_err());
    }

    #[test]
    fn a_replay_checks_what_was_read() {
        let origin = state(json!({"a": 1, "b": 2}));
        let ops = [Op::Put("c".into(), json!(3))];
        let reads = [Read {
            at: 0,
            what: Observed::Path("a".into()),
        }];
        let unchanged = replay(&origin, state(json!({"a": 1, "b": 9})), &ops, &reads)
            .expect("the read key did not change");
        assert_eq!(unchanged.data().get("c"), Some(&json!(3)));
        let changed = replay(&origin, state(json!({"a": 5})), &ops, &reads);
        assert!(matches!(changed, Err(Error::Stale { key }) if key == "a"));
    }

    #[test]
    fn a_read_of_the_requests_own_write_is_not_stale() {
        let origin = state(json!({"a": 1}));
        let ops = [Op::Put("a".into(), json!(7))];
        let reads = [Read {
            at: 1,
            what: Observed::Path("a".into()),
        }];
        let replayed = replay(&origin, state(json!({"a": 5})), &ops, &reads).expect("own write");
        assert_eq!(replayed.data().get("a"), Some(&json!(7)));
    }

    #[test]
    fn an_op_that_no_longer_applies_fails_the_replay() {
        let origin = state(json!({}));
        let ops = [Op::Push("l".into(), json!(1))];
        let result = replay(&origin, state(json!({"l": "text"})), &ops, &[]);
        assert!(matches!(result, Err(Error::Replay { .. })));
    }

    #[test]
    fn ageing_after_a_rebase_spares_what_was_not_seen() {
        let mut fresh = state(json!({"status": "saved", "old": 1}));
        fresh.payload.meta.flash_old = vec!["status".into(), "old".into()];
        let seen = Seen {
            flash_old: vec!["old".into()],
            old_input: None,
        };
        fresh.age(0, Some(&seen));
        assert_eq!(fresh.data().get("status"), Some(&json!("saved")));
        assert_eq!(fresh.data().get("old"), None);
        assert_eq!(fresh.payload.meta.flash_old, ["status"]);
    }
}
