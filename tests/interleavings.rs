//! The interleaving explorer: "no lost updates" checked in every
//! interleaving of concurrent requests, not only in the ones picked by hand.
//!
//! Each simulated request loads the session, runs a random program of
//! session operations, and commits through `keepsake_core::commit::commit`,
//! with no HTTP in between. Every store call (load, create, save, touch,
//! destroy) and every take of the in-process commit lock first stops at a
//! gate (retire too), and the explorer decides which stopped request goes on next, so it
//! controls the order of every step (a request waiting for a lock that
//! another one holds is never chosen: nothing waits on a paused request).
//! Requests belong to one or two simulated app instances, each with its own
//! commit lock, sharing one store.
//!
//! After each schedule the outcome is checked against the rule of
//! docs/semantics.md: the stored session, and the value every successful
//! request's handler got from each operation, must equal what some serial
//! order of the successful requests gives in a plain reference model of the
//! session. The only allowed differences are the documented exceptions:
//! the value an `increment` returned, the value a losing first `remember`
//! returned, and the token a losing first `token()` returned.
//!
//! For every sampled pair of programs every schedule is explored; for
//! three requests, schedules are sampled. The memory store always runs;
//! SQLite and the file store with their features; PostgreSQL, MariaDB,
//! Redis and memcached when their URLs are set (under CI they must be).
//! `KEEPSAKE_EXPLORER_CASES` sets the number of program pairs per store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use keepsake::{Cas, Payload, Record, Session, SessionId, SessionInfo, SessionStore, StorageKey};
use keepsake_core::commit::{CommitLock, commit};
use keepsake_core::{CommitContext, MemoryStore, async_trait};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

// ---------------------------------------------------------------------------
// Programs.

const KEYS: &[&str] = &["a", "b", "n", "f"];

fn value(i: usize) -> Value {
    [json!(1), json!(2), json!("s"), json!([1]), json!({"x": 1})][i % 5].clone()
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, usize),
    Get(usize),
    Has(usize),
    Pull(usize),
    Push(usize, usize),
    Increment(usize),
    Forget(usize),
    Flash(usize, usize),
    Now(usize, usize),
    Reflash,
    Keep(usize),
    Remember(usize, usize),
    Token,
    RegenerateToken,
    SetUser(usize),
    All,
    Flush,
    Regenerate,
    Migrate,
    Invalidate,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    let v = 0..5usize;
    prop_oneof![
        4 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => k.clone().prop_map(Op::Get),
        1 => k.clone().prop_map(Op::Has),
        2 => k.clone().prop_map(Op::Pull),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Push(k, v)),
        3 => k.clone().prop_map(Op::Increment),
        2 => k.clone().prop_map(Op::Forget),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Flash(k, v)),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Now(k, v)),
        1 => Just(Op::Reflash),
        1 => k.clone().prop_map(Op::Keep),
        2 => (k, v).prop_map(|(k, v)| Op::Remember(k, v)),
        2 => Just(Op::Token),
        1 => Just(Op::RegenerateToken),
        1 => (0..2usize).prop_map(Op::SetUser),
        1 => Just(Op::All),
        1 => Just(Op::Flush),
        1 => Just(Op::Regenerate),
        1 => Just(Op::Migrate),
        1 => Just(Op::Invalidate),
    ]
}

fn program() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..=4)
}

/// What a handler got from one op. Tokens are symbols: `t0` the stored
/// token, `r{request}.{op}` one a request created.
#[derive(Debug, Clone, PartialEq)]
enum Ret {
    Unit,
    Value(Option<Value>),
    Bool(bool),
    Err,
    Token(String),
    Counted(Value),
    Remembered(Value),
}

// ---------------------------------------------------------------------------
// The reference model: a plain map and the flash lists, applied serially.

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    data: BTreeMap<String, Value>,
    flash_new: BTreeSet<String>,
    flash_old: BTreeSet<String>,
    token: Option<String>,
    user: Option<String>,
}

impl Model {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
            && self.token.is_none()
            && self.user.is_none()
            && self.flash_new.is_empty()
    }

    /// Ageing is a read-dependent step: it removes only the flash keys the
    /// request could show, those in `old` when it loaded (`seen`) or put
    /// there itself with `now`. A key flashed by a request that saved after
    /// this one loaded stays for the next page.
    fn age(&mut self, seen: &BTreeSet<String>) {
        let (gone, kept): (BTreeSet<String>, BTreeSet<String>) =
            std::mem::take(&mut self.flash_old)
                .into_iter()
                .partition(|key| seen.contains(key));
        for key in gone {
            self.data.remove(&key);
        }
        self.flash_old = kept;
        self.flash_old.extend(std::mem::take(&mut self.flash_new));
    }
}

/// The store as the model sees it: sessions by label (`s0`, or `r{n}` for
/// the id request `n` ended with).
type World = BTreeMap<String, Model>;

/// Runs request `r`'s program serially on `world`; `loaded_old` is what the
/// request actually found in `old` when it loaded.
fn model_request(
    world: &mut World,
    r: usize,
    program: &[Op],
    loaded_old: &BTreeSet<String>,
) -> Vec<Ret> {
    let (mut s, mut label) = match world.get("s0") {
        Some(s) => (s.clone(), "s0".to_owned()),
        None => (Model::default(), format!("r{r}")),
    };
    let original = label.clone();
    let mut out = Vec::new();
    for (i, op) in program.iter().enumerate() {
        let ret = match op {
            Op::Put(k, v) => {
                s.data.insert(KEYS[*k].into(), value(*v));
                Ret::Unit
            }
            Op::Get(k) => Ret::Value(s.data.get(KEYS[*k]).cloned()),
            Op::Has(k) => Ret::Bool(s.data.get(KEYS[*k]).is_some_and(|v| !v.is_null())),
            Op::Pull(k) => Ret::Value(s.data.remove(KEYS[*k])),
            Op::Push(k, v) => match s.data.get_mut(KEYS[*k]) {
                Some(Value::Array(list)) => {
                    list.push(value(*v));
                    Ret::Unit
                }
                None | Some(Value::Null) => {
                    s.data.insert(KEYS[*k].into(), json!([value(*v)]));
                    Ret::Unit
                }
                Some(_) => Ret::Err,
            },
            Op::Increment(k) => match s.data.get(KEYS[*k]).cloned() {
                None | Some(Value::Null) => {
                    s.data.insert(KEYS[*k].into(), json!(1));
                    Ret::Counted(json!(1))
                }
                Some(Value::Number(n)) if n.is_i64() => {
                    let next = json!(n.as_i64().unwrap() + 1);
                    s.data.insert(KEYS[*k].into(), next.clone());
                    Ret::Counted(next)
                }
                Some(_) => Ret::Err,
            },
            Op::Forget(k) => {
                s.data.remove(KEYS[*k]);
                Ret::Unit
            }
            Op::Flash(k, v) => {
                s.data.insert(KEYS[*k].into(), value(*v));
                s.flash_new.insert(KEYS[*k].into());
                s.flash_old.remove(KEYS[*k]);
                Ret::Unit
            }
            Op::Now(k, v) => {
                s.data.insert(KEYS[*k].into(), value(*v));
                s.flash_old.insert(KEYS[*k].into());
                Ret::Unit
            }
            Op::Reflash => {
                let old = std::mem::take(&mut s.flash_old);
                s.flash_new.extend(old);
                Ret::Unit
            }
            Op::Keep(k) => {
                s.flash_new.insert(KEYS[*k].into());
                s.flash_old.remove(KEYS[*k]);
                Ret::Unit
            }
            Op::Remember(k, v) => match s.data.get(KEYS[*k]).filter(|v| !v.is_null()) {
                Some(existing) => Ret::Remembered(existing.clone()),
                None => {
                    s.data.insert(KEYS[*k].into(), value(*v));
                    Ret::Remembered(value(*v))
                }
            },
            Op::Token => {
                let token = s.token.get_or_insert_with(|| format!("r{r}.{i}")).clone();
                Ret::Token(token)
            }
            Op::RegenerateToken => {
                let token = format!("r{r}.{i}");
                s.token = Some(token.clone());
                Ret::Token(token)
            }
            Op::SetUser(u) => {
                s.user = Some(format!("user{u}"));
                Ret::Unit
            }
            Op::All => Ret::Value(Some(json!(s.data))),
            Op::Flush => {
                s = Model::default();
                Ret::Unit
            }
            Op::Regenerate => {
                label = format!("r{r}");
                s.token = Some(format!("r{r}.{i}"));
                Ret::Unit
            }
            Op::Migrate => {
                label = format!("r{r}");
                Ret::Unit
            }
            Op::Invalidate => {
                label = format!("r{r}");
                s = Model::default();
                Ret::Unit
            }
        };
        out.push(ret);
    }
    let mut seen = loaded_old.clone();
    for op in program {
        if let Op::Now(k, _) = op {
            seen.insert(KEYS[*k].to_owned());
        }
    }
    s.age(&seen);
    if label != original {
        world.remove(&original);
    }
    if s.is_empty() && label != "s0" {
        world.remove(&label);
    } else {
        world.insert(label, s);
    }
    out
}

// ---------------------------------------------------------------------------
// The scheduler.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Paused,
    Done,
}

struct Slot {
    status: Status,
    gate: &'static str,
    wake: Option<oneshot::Sender<()>>,
}

struct Sched {
    state: Mutex<SchedState>,
    notify: Notify,
}

struct SchedState {
    slots: Vec<Slot>,
    /// Who holds each instance's commit lock.
    locks: Vec<Option<usize>>,
    instance: Vec<usize>,
    trace: Vec<String>,
}

impl Sched {
    async fn pause(&self, request: usize, gate: &'static str) {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap();
            let slot = &mut state.slots[request];
            slot.status = Status::Paused;
            slot.gate = gate;
            slot.wake = Some(tx);
        }
        self.notify.notify_one();
        let _ = rx.await;
    }

    fn done(&self, request: usize) {
        self.state.lock().unwrap().slots[request].status = Status::Done;
        self.notify.notify_one();
    }
}

/// Picks among the runnable requests: from a prefix of choices, then the
/// first (exhaustive search), or at random (sampling).
struct Chooser {
    prefix: Vec<usize>,
    taken: Vec<(usize, usize)>,
    rng: Option<StdRng>,
}

impl Chooser {
    fn choose(&mut self, options: usize) -> usize {
        let i = self.taken.len();
        let choice = match (self.prefix.get(i), &mut self.rng) {
            (Some(c), _) => *c,
            (None, Some(rng)) => rng.random_range(0..options),
            (None, None) => 0,
        };
        let choice = choice.min(options - 1);
        self.taken.push((choice, options));
        choice
    }

    /// The next schedule in depth-first order, if any.
    fn next_prefix(&self) -> Option<Vec<usize>> {
        let j = self.taken.iter().rposition(|(c, n)| c + 1 < *n)?;
        let mut prefix: Vec<usize> = self.taken[..j].iter().map(|(c, _)| *c).collect();
        prefix.push(self.taken[j].0 + 1);
        Some(prefix)
    }
}

/// The store as one request sees it: every call stops at a gate first.
struct Gated {
    inner: Arc<dyn SessionStore>,
    sched: Arc<Sched>,
    request: usize,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}

#[async_trait]
impl SessionStore for Gated {
    async fn load(&self, key: &StorageKey) -> keepsake::Result<Option<Record>> {
        self.sched.pause(self.request, "load").await;
        self.inner.load(key).await
    }
    async fn create(&self, record: &Record) -> keepsake::Result<Cas> {
        self.sched.pause(self.request, "create").await;
        self.inner.create(record).await
    }
    async fn save(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.sched.pause(self.request, "save").await;
        self.inner.save(record, expected).await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        version: i64,
        last: i64,
        expires: i64,
    ) -> keepsake::Result<Cas> {
        self.sched.pause(self.request, "touch").await;
        self.inner.touch(key, version, last, expires).await
    }
    async fn destroy(&self, key: &StorageKey) -> keepsake::Result<()> {
        self.sched.pause(self.request, "destroy").await;
        self.inner.destroy(key).await
    }
    async fn retire(
        &self,
        key: &StorageKey,
        version: i64,
        owner: Option<&str>,
    ) -> keepsake::Result<Cas> {
        self.sched.pause(self.request, "retire").await;
        self.inner.retire(key, version, owner).await
    }
    async fn gc(&self, now: i64) -> keepsake::Result<u64> {
        self.inner.gc(now).await
    }
    async fn list_for_user(&self, user: &str) -> keepsake::Result<Vec<SessionInfo>> {
        self.inner.list_for_user(user).await
    }
    async fn destroy_for_user(
        &self,
        user: &str,
        except: Option<&StorageKey>,
    ) -> keepsake::Result<u64> {
        self.inner.destroy_for_user(user, except).await
    }
    fn kind(&self) -> &'static str {
        "gated"
    }
}

/// The commit lock of one simulated instance; the scheduler only lets a
/// request past the lock gate when the lock is free.
struct InstanceLock {
    sched: Arc<Sched>,
    request: usize,
}

struct Held {
    sched: Arc<Sched>,
    request: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.sched.state.lock().unwrap();
        let instance = state.instance[self.request];
        state.locks[instance] = None;
    }
}

impl CommitLock for InstanceLock {
    type Guard<'a> = Held;

    async fn lock(&self, _key: &StorageKey) -> Held {
        self.sched.pause(self.request, "lock").await;
        Held {
            sched: Arc::clone(&self.sched),
            request: self.request,
        }
    }
}

// ---------------------------------------------------------------------------
// One schedule.

/// What one request did.
#[derive(Debug)]
struct Done {
    rets: Vec<Ret>,
    /// Tokens this request created, by symbol.
    created: Vec<(String, String)>,
    ok: bool,
    error: Option<String>,
    final_id: SessionId,
    /// The flash keys in `old` when the request loaded.
    loaded_old: BTreeSet<String>,
}

/// The initial session: data, a flash message shown once already, a token.
fn seed_payload() -> (Payload, String) {
    let mut payload = Payload {
        created_at: keepsake::now(),
        ..Payload::default()
    };
    payload.data.insert("a".into(), json!(1));
    payload.data.insert("n".into(), json!(5));
    payload.data.insert("f".into(), json!("hello"));
    payload.meta.flash_old.push("f".into());
    let token = "t0-token".to_owned();
    payload.meta.token = Some(token.clone());
    (payload, token)
}

fn seed_model() -> Model {
    Model {
        data: [("a", json!(1)), ("n", json!(5)), ("f", json!("hello"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        flash_old: ["f".to_owned()].into(),
        token: Some("t0".into()),
        ..Model::default()
    }
}

async fn run_request(
    store: Arc<dyn SessionStore>,
    sched: Arc<Sched>,
    request: usize,
    id: SessionId,
    program: Vec<Op>,
) -> Done {
    let gated = Gated {
        inner: store,
        sched: Arc::clone(&sched),
        request,
    };
    let (session, loaded_old) = match gated.load(&id.storage_key()).await {
        Ok(Some(record)) => {
            let old = Payload::decode(&record.payload)
                .map(|p| p.meta.flash_old.into_iter().collect())
                .unwrap_or_default();
            (Session::from_loaded(id, record), old)
        }
        Ok(None) => (Session::new_detached(), BTreeSet::new()),
        Err(e) => panic!("load failed: {e}"),
    };
    let mut rets = Vec::new();
    let mut created = Vec::new();
    for (i, op) in program.iter().enumerate() {
        let key = |k: &usize| KEYS[*k];
        let ret = match op {
            Op::Put(k, v) => session
                .put(key(k), value(*v))
                .map_or(Ret::Err, |()| Ret::Unit),
            Op::Get(k) => session.get::<Value>(key(k)).map_or(Ret::Err, Ret::Value),
            Op::Has(k) => Ret::Bool(session.has(key(k))),
            Op::Pull(k) => session.pull::<Value>(key(k)).map_or(Ret::Err, Ret::Value),
            Op::Push(k, v) => session
                .push(key(k), value(*v))
                .map_or(Ret::Err, |()| Ret::Unit),
            Op::Increment(k) => session
                .increment(key(k), 1i64)
                .map_or(Ret::Err, |n| Ret::Counted(json!(n))),
            Op::Forget(k) => {
                session.forget(key(k));
                Ret::Unit
            }
            Op::Flash(k, v) => session
                .flash(key(k), value(*v))
                .map_or(Ret::Err, |()| Ret::Unit),
            Op::Now(k, v) => session
                .now(key(k), value(*v))
                .map_or(Ret::Err, |()| Ret::Unit),
            Op::Reflash => {
                session.reflash();
                Ret::Unit
            }
            Op::Keep(k) => {
                session.keep([key(k)]);
                Ret::Unit
            }
            Op::Remember(k, v) => session
                .remember(key(k), || value(*v))
                .map_or(Ret::Err, Ret::Remembered),
            Op::Token => {
                let had = session.peek_token();
                let token = session.token();
                if had.is_none() {
                    created.push((token.clone(), format!("r{request}.{i}")));
                }
                Ret::Token(token)
            }
            Op::RegenerateToken => {
                let token = session.regenerate_token();
                created.push((token.clone(), format!("r{request}.{i}")));
                Ret::Token(token)
            }
            Op::SetUser(u) => {
                session.set_user_id(format!("user{u}"));
                Ret::Unit
            }
            Op::All => Ret::Value(Some(Value::Object(session.all()))),
            Op::Flush => {
                session.flush();
                Ret::Unit
            }
            Op::Regenerate => {
                session.regenerate();
                created.push((session.peek_token().unwrap(), format!("r{request}.{i}")));
                Ret::Unit
            }
            Op::Migrate => {
                session.migrate();
                Ret::Unit
            }
            Op::Invalidate => {
                session.invalidate();
                Ret::Unit
            }
        };
        rets.push(ret);
    }
    let lock = InstanceLock {
        sched: Arc::clone(&sched),
        request,
    };
    let ctx = CommitContext::new(keepsake::now());
    let result = commit(&session, &gated, &lock, &ctx).await;
    let error = result.as_ref().err().map(|e| format!("{e}"));
    if let Err(e) = &result {
        assert!(
            e.is_concurrent(),
            "request {request} failed with an error that is not a concurrency answer: {e}"
        );
    }
    sched.done(request);
    Done {
        rets,
        created,
        ok: result.is_ok(),
        error,
        final_id: session.id(),
        loaded_old,
    }
}

/// Runs the requests under the choices of `chooser`; returns what each did
/// and the trace of steps.
async fn run_schedule(
    store: &Arc<dyn SessionStore>,
    programs: &[Vec<Op>],
    instances: &[usize],
    chooser: &mut Chooser,
) -> (SessionId, Vec<Done>, Vec<String>) {
    let id = SessionId::generate();
    let (payload, _) = seed_payload();
    let now = keepsake::now();
    let seeded = Record {
        key: id.storage_key(),
        payload: payload.encode().unwrap(),
        last_activity: now,
        expires_at: now + 3600,
        version: 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    };
    assert!(store.create(&seeded).await.unwrap().is_applied());
    let sched = Arc::new(Sched {
        state: Mutex::new(SchedState {
            slots: programs
                .iter()
                .map(|_| Slot {
                    status: Status::Running,
                    gate: "",
                    wake: None,
                })
                .collect(),
            locks: vec![None; 2],
            instance: instances.to_vec(),
            trace: Vec::new(),
        }),
        notify: Notify::new(),
    });
    let tasks: Vec<_> = programs
        .iter()
        .enumerate()
        .map(|(r, program)| {
            tokio::spawn(run_request(
                Arc::clone(store),
                Arc::clone(&sched),
                r,
                id.clone(),
                program.clone(),
            ))
        })
        .collect();
    loop {
        // Wait until every request is stopped at a gate or done.
        loop {
            let notified = sched.notify.notified();
            if sched
                .state
                .lock()
                .unwrap()
                .slots
                .iter()
                .all(|s| s.status != Status::Running)
            {
                break;
            }
            notified.await;
        }
        let mut state = sched.state.lock().unwrap();
        let runnable: Vec<usize> = (0..state.slots.len())
            .filter(|r| {
                let slot = &state.slots[*r];
                slot.status == Status::Paused
                    && (slot.gate != "lock" || state.locks[state.instance[*r]].is_none())
            })
            .collect();
        if runnable.is_empty() {
            assert!(
                state.slots.iter().all(|s| s.status == Status::Done),
                "every request waits: {:?}",
                state.trace
            );
            break;
        }
        let r = runnable[chooser.choose(runnable.len())];
        let gate = state.slots[r].gate;
        if gate == "lock" {
            let instance = state.instance[r];
            state.locks[instance] = Some(r);
        }
        state.trace.push(format!("r{r}:{gate}"));
        let slot = &mut state.slots[r];
        slot.status = Status::Running;
        let _ = slot.wake.take().unwrap().send(());
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let trace = sched.state.lock().unwrap().trace.clone();
    (id, done, trace)
}

// ---------------------------------------------------------------------------
// The check.

/// The stored world after a schedule, in the model's terms.
async fn stored_world(
    store: &Arc<dyn SessionStore>,
    id: &SessionId,
    done: &[Done],
    tokens: &BTreeMap<String, String>,
) -> Result<World, String> {
    let mut world = World::new();
    let mut labels = vec![("s0".to_owned(), id.clone())];
    for (r, d) in done.iter().enumerate() {
        if d.final_id != *id {
            labels.push((format!("r{r}"), d.final_id.clone()));
        }
    }
    for (label, id) in labels {
        let Some(record) = store.load(&id.storage_key()).await.unwrap() else {
            continue;
        };
        let payload = Payload::decode(&record.payload).map_err(|e| e.to_string())?;
        let token = payload.meta.token.map(|t| {
            tokens
                .get(&t)
                .cloned()
                .unwrap_or_else(|| format!("unknown:{t}"))
        });
        world.insert(
            label,
            Model {
                data: payload.data.into_iter().collect(),
                flash_new: payload.meta.flash_new.into_iter().collect(),
                flash_old: payload.meta.flash_old.into_iter().collect(),
                token,
                user: record.user_id,
            },
        );
    }
    Ok(world)
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            out.push(tail);
        }
    }
    out
}

/// The handler's answer against the model's, with the closed list of
/// exceptions.
fn same_answer(actual: &Ret, model: &Ret, own_tokens: &[String], program_op: &Op) -> bool {
    match (actual, model) {
        // (a) an increment's returned value need not be unique.
        (Ret::Counted(_), Ret::Counted(_)) => true,
        // (b) two first `remember`s racing: the loser got its own value.
        (Ret::Remembered(a), Ret::Remembered(m)) => {
            a == m || matches!(program_op, Op::Remember(_, v) if *a == value(*v))
        }
        // (c) two first `token()`s racing: the loser got its own token.
        (Ret::Token(a), Ret::Token(m)) => a == m || own_tokens.contains(a),
        _ => actual == model,
    }
}

/// Checks one schedule's outcome; `Err` describes the violation.
async fn check(
    store: &Arc<dyn SessionStore>,
    programs: &[Vec<Op>],
    id: &SessionId,
    done: &[Done],
) -> Result<(), String> {
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    tokens.insert(seed_payload().1, "t0".into());
    for d in done {
        for (actual, symbol) in &d.created {
            tokens.insert(actual.clone(), symbol.clone());
        }
    }
    let actual = stored_world(store, id, done, &tokens).await?;
    let answers: Vec<Vec<Ret>> = done
        .iter()
        .map(|d| {
            d.rets
                .iter()
                .map(|ret| match ret {
                    Ret::Token(t) => Ret::Token(
                        tokens
                            .get(t)
                            .cloned()
                            .unwrap_or_else(|| format!("unknown:{t}")),
                    ),
                    other => other.clone(),
                })
                .collect()
        })
        .collect();
    let succeeded: Vec<usize> = (0..done.len()).filter(|r| done[*r].ok).collect();
    let mut tried = Vec::new();
    'orders: for order in permutations(&succeeded) {
        let mut world = World::new();
        world.insert("s0".into(), seed_model());
        for r in &order {
            let expected = model_request(&mut world, *r, &programs[*r], &done[*r].loaded_old);
            let own: Vec<String> = done[*r].created.iter().map(|(_, s)| s.clone()).collect();
            for (i, (a, m)) in answers[*r].iter().zip(&expected).enumerate() {
                if !same_answer(a, m, &own, &programs[*r][i]) {
                    tried.push(format!(
                        "order {order:?}: request {r} op {i} got {a:?}, serially {m:?}"
                    ));
                    continue 'orders;
                }
            }
        }
        if world == actual {
            return Ok(());
        }
        tried.push(format!(
            "order {order:?}: stored {actual:?}, serially {world:?}"
        ));
    }
    Err(tried.join("\n"))
}

// ---------------------------------------------------------------------------
// Driving it.

/// Explores `cases` pairs of programs on `store` (every schedule of each
/// pair) and `cases / 4` triples (`samples` schedules each). Returns how
/// many schedules were checked.
async fn explore(name: &str, store: Arc<dyn SessionStore>, cases: u32, samples: usize) -> usize {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let pairs = (program(), program(), any::<bool>());
    let mut pair_cases = Vec::new();
    for _ in 0..cases {
        pair_cases.push(pairs.new_tree(&mut runner).unwrap().current());
    }
    let mut checked = 0;
    for (a, b, same_instance) in pair_cases {
        let programs = vec![a, b];
        let instances = if same_instance {
            vec![0, 0]
        } else {
            vec![0, 1]
        };
        let mut prefix = Some(Vec::new());
        let mut schedules = 0;
        while let Some(p) = prefix.take() {
            let mut chooser = Chooser {
                prefix: p,
                taken: Vec::new(),
                rng: None,
            };
            let (id, done, trace) = run_schedule(&store, &programs, &instances, &mut chooser).await;
            if let Err(why) = check(&store, &programs, &id, &done).await {
                panic!(
                    "{name}: the serial-order rule is broken\nprograms: {programs:?}\n\
                     instances: {instances:?}\nschedule: {trace:?}\noutcomes: {:?}\n{why}",
                    done.iter()
                        .map(|d| (d.ok, d.error.clone()))
                        .collect::<Vec<_>>()
                );
            }
            checked += 1;
            schedules += 1;
            prefix = chooser.next_prefix();
            assert!(schedules < 5_000, "{name}: too many schedules for one pair");
        }
    }
    let triples = (program(), program(), program(), 0..4usize);
    let mut rng = StdRng::seed_from_u64(u64::from(cases));
    for _ in 0..cases / 4 {
        let (a, b, c, split) = triples.new_tree(&mut runner).unwrap().current();
        let programs = vec![a, b, c];
        let instances = (0..3).map(|r| usize::from(r < split)).collect::<Vec<_>>();
        for _ in 0..samples {
            let mut chooser = Chooser {
                prefix: Vec::new(),
                taken: Vec::new(),
                rng: Some(StdRng::seed_from_u64(rng.random())),
            };
            let (id, done, trace) = run_schedule(&store, &programs, &instances, &mut chooser).await;
            if let Err(why) = check(&store, &programs, &id, &done).await {
                panic!(
                    "{name}: the serial-order rule is broken\nprograms: {programs:?}\n\
                     instances: {instances:?}\nschedule: {trace:?}\n{why}"
                );
            }
            checked += 1;
        }
    }
    println!("{name}: {checked} schedules checked, none broke the serial-order rule");
    checked
}

fn cases(default: u32) -> u32 {
    std::env::var("KEEPSAKE_EXPLORER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn memory() {
    explore("memory", Arc::new(MemoryStore::new()), cases(400), 8).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("explore.db").display()
    );
    let store = keepsake::SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    explore("sqlite", Arc::new(store), cases(24), 4).await;
}

#[cfg(feature = "file")]
#[tokio::test]
async fn files() {
    let dir = tempfile::tempdir().unwrap();
    let store = keepsake::FileStore::new(dir.path()).unwrap();
    explore("file", Arc::new(store), cases(24), 4).await;
}

/// Explores an SQL store in a table of its own, dropped afterwards.
macro_rules! explore_sql {
    ($name:literal, $store:ty, $var:literal) => {{
        let Some(url) = keepsake_core::test_kit::server_url($var) else {
            return;
        };
        let table = format!("explore_{}", suffix());
        let store = <$store>::connect(&url)
            .await
            .unwrap()
            .with_table_name(&table)
            .unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        explore($name, Arc::new(store), cases(24), 4).await;
        let _ = keepsake_sqlx::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&pool)
            .await;
    }};
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres() {
    explore_sql!(
        "postgres",
        keepsake::PostgresStore,
        "KEEPSAKE_TEST_POSTGRES_URL"
    );
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mariadb() {
    explore_sql!("mariadb", keepsake::MySqlStore, "KEEPSAKE_TEST_MYSQL_URL");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis() {
    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_REDIS_URL") else {
        return;
    };
    let store = keepsake::RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(format!("keepsake-explore:{}:", suffix()));
    explore("redis", Arc::new(store), cases(24), 4).await;
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn memcached() {
    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_MEMCACHED_URL") else {
        return;
    };
    let store = keepsake::MemcachedStore::builder(url)
        .prefix(format!("keepsake-explore-{}-", suffix()))
        .connect()
        .await
        .unwrap();
    explore("memcached", Arc::new(store), cases(24), 4).await;
}
