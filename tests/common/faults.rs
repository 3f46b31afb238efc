//! Reliability helpers: a fault-injecting store wrapper, a ledger of
//! acknowledged writes, a log capture, and a Redis server of the test's own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keepsake::{Cas, Error, Payload, Record, SessionInfo, SessionStore, StorageKey};
use serde_json::{Map, Value};

use super::{CREATE, DESTROY, GC, LOAD, SAVE, TOUCH};

/// The operation names, by the index constants of `common` (`LOAD` …).
pub const OPS: [&str; 6] = ["load", "create", "save", "touch", "destroy", "gc"];

/// What the wrapper is told to do.
#[derive(Debug, Default)]
struct Plan {
    /// `(op, call number)`: that call of that operation fails.
    fail_at: Vec<(usize, usize)>,
    /// Operations that fail on every call (an outage).
    down: [bool; 6],
    /// Writes that are applied, then reported as failed (the reply was lost).
    fail_after_apply: [bool; 6],
    /// Added to every call.
    latency: Duration,
    /// Added to every call of one operation.
    op_latency: [Duration; 6],
    /// `create` and `save` report `Applied` without storing anything.
    drop_writes: bool,
    /// Before every `save`, another writer saves the record first.
    rival: bool,
}

/// Controls and counters of a [`Faulty`] store, kept after the store moved
/// into a layer.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    plan: Arc<Mutex<Plan>>,
    calls: Arc<[AtomicUsize; 6]>,
    /// `create`/`save` calls answered `Conflict` by the inner store.
    conflicts: Arc<AtomicUsize>,
    /// Calls that failed, injected or not.
    failures: Arc<AtomicUsize>,
    /// Saves made by the rival writer.
    rival_writes: Arc<AtomicUsize>,
    /// Writes acknowledged and dropped.
    dropped: Arc<AtomicUsize>,
}

impl FaultHandle {
    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `n`th call of `op` from now on fails (`n = 1`: the next one).
    pub fn fail_call(&self, op: usize, n: usize) {
        let at = self.calls(op) + n;
        self.plan().fail_at.push((op, at));
    }

    /// Every call of `op` fails until [`heal`](Self::heal).
    pub fn outage(&self, op: usize) {
        self.plan().down[op] = true;
    }

    /// Every call fails until [`heal`](Self::heal).
    pub fn outage_all(&self) {
        self.plan().down = [true; 6];
    }

    /// Writes of `op` are applied, then reported as failed.
    pub fn fail_after_apply(&self, op: usize) {
        self.plan().fail_after_apply[op] = true;
    }

    /// Every call waits `latency` first.
    pub fn set_latency(&self, latency: Duration) {
        self.plan().latency = latency;
    }

    /// Every call of `op` waits `latency` first.
    pub fn set_op_latency(&self, op: usize, latency: Duration) {
        self.plan().op_latency[op] = latency;
    }

    /// `create` and `save` report `Applied` and store nothing.
    pub fn drop_writes(&self, yes: bool) {
        self.plan().drop_writes = yes;
    }

    /// A concurrent writer saves the record before each of our saves, so
    /// every save conflicts.
    pub fn rival_always_wins(&self, yes: bool) {
        self.plan().rival = yes;
    }

    /// Back to a healthy store (counters are kept).
    pub fn heal(&self) {
        *self.plan() = Plan::default();
    }

    /// Calls of `op` so far.
    pub fn calls(&self, op: usize) -> usize {
        self.calls[op].load(Ordering::SeqCst)
    }

    /// Conflicts answered by the inner store so far.
    pub fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::SeqCst)
    }

    /// Failed calls so far.
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// Saves made by the rival writer so far.
    pub fn rival_writes(&self) -> usize {
        self.rival_writes.load(Ordering::SeqCst)
    }

    /// Writes dropped after being acknowledged so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A store wrapper that injects faults on command (see [`FaultHandle`]) and
/// counts calls, conflicts and failures. Without faults it is a pass-through
/// tally.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    handle: FaultHandle,
}

/// The error an injected fault reports.
pub fn injected(op: usize) -> Error {
    Error::backend(
        "faulty",
        OPS[op],
        std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("injected fault: {} call failed", OPS[op]),
        ),
    )
}

impl<S: SessionStore> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            handle: FaultHandle::default(),
        }
    }

    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn enter(&self, op: usize) -> keepsake::Result<()> {
        let n = self.handle.calls[op].fetch_add(1, Ordering::SeqCst) + 1;
        let (latency, fail) = {
            let plan = self.handle.plan();
            (
                plan.latency + plan.op_latency[op],
                plan.down[op] || plan.fail_at.contains(&(op, n)),
            )
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if fail {
            self.handle.failures.fetch_add(1, Ordering::SeqCst);
            return Err(injected(op));
        }
        Ok(())
    }

    fn leave<T>(&self, op: usize, result: keepsake::Result<T>) -> keepsake::Result<T> {
        if result.is_err() {
            self.handle.failures.fetch_add(1, Ordering::SeqCst);
        } else if self.handle.plan().fail_after_apply[op] {
            self.handle.failures.fetch_add(1, Ordering::SeqCst);
            return Err(injected(op));
        }
        result
    }

    fn count_conflict(&self, cas: &keepsake::Result<Cas>) {
        if matches!(cas, Ok(Cas::Conflict)) {
            self.handle.conflicts.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Another writer saves the record first: one more key in its data.
    async fn rival_write(&self, key: &StorageKey) -> keepsake::Result<()> {
        let Some(mut record) = self.inner.load(key).await? else {
            return Ok(());
        };
        let mut payload = Payload::decode(&record.payload).unwrap_or_default();
        let n = self.handle.rival_writes.fetch_add(1, Ordering::SeqCst) + 1;
        payload.data.insert("rival".into(), Value::from(n));
        record.payload = payload.encode()?;
        let expected = record.version;
        record.version += 1;
        let _ = self.inner.save(&record, expected).await?;
        Ok(())
    }
}

#[keepsake::async_trait]
impl<S: SessionStore> SessionStore for Faulty<S> {
    async fn load(&self, key: &StorageKey) -> keepsake::Result<Option<Record>> {
        self.enter(LOAD).await?;
        let result = self.inner.load(key).await;
        self.leave(LOAD, result)
    }
    async fn create(&self, record: &Record) -> keepsake::Result<Cas> {
        self.enter(CREATE).await?;
        if self.handle.plan().drop_writes {
            self.handle.dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(Cas::Applied);
        }
        let result = self.inner.create(record).await;
        self.count_conflict(&result);
        self.leave(CREATE, result)
    }
    async fn save(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.enter(SAVE).await?;
        let (rival, drop) = {
            let plan = self.handle.plan();
            (plan.rival, plan.drop_writes)
        };
        if rival {
            self.rival_write(&record.key).await?;
        }
        if drop {
            self.handle.dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(Cas::Applied);
        }
        let result = self.inner.save(record, expected).await;
        self.count_conflict(&result);
        self.leave(SAVE, result)
    }
    async fn touch(
        &self,
        key: &StorageKey,
        version: i64,
        last: i64,
        expires: i64,
    ) -> keepsake::Result<Cas> {
        self.enter(TOUCH).await?;
        let result = self.inner.touch(key, version, last, expires).await;
        self.leave(TOUCH, result)
    }
    async fn destroy(&self, key: &StorageKey) -> keepsake::Result<()> {
        self.enter(DESTROY).await?;
        let result = self.inner.destroy(key).await;
        self.leave(DESTROY, result)
    }
    async fn gc(&self, now: i64) -> keepsake::Result<u64> {
        self.enter(GC).await?;
        let result = self.inner.gc(now).await;
        self.leave(GC, result)
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
        self.inner.kind()
    }
}

// ---------------------------------------------------------------------------
// The ledger of acknowledged writes.

/// What one session was sent.
#[derive(Debug, Default, Clone)]
struct Account {
    acked_keys: BTreeSet<String>,
    unacked_keys: BTreeSet<String>,
    acked_increments: u64,
    unacked_increments: u64,
}

/// Every write sent to each session, acknowledged (200) or not, and the check
/// that nothing acknowledged is missing.
#[derive(Debug, Default)]
pub struct Ledger {
    accounts: Mutex<BTreeMap<usize, Account>>,
}

/// What [`Ledger::verify`] counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub sessions: usize,
    pub keys: usize,
    pub increments: u64,
    /// Writes answered with an error that were applied all the same (their
    /// reply was lost): allowed, never required.
    pub unacked_applied: u64,
}

impl Ledger {
    fn with<T>(&self, session: usize, f: impl FnOnce(&mut Account) -> T) -> T {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        f(accounts.entry(session).or_default())
    }

    /// A write of `key` to `session`, acknowledged or not.
    pub fn write(&self, session: usize, key: &str, acked: bool) {
        self.with(session, |a| {
            if acked {
                a.acked_keys.insert(key.to_owned());
            } else {
                a.unacked_keys.insert(key.to_owned());
            }
        });
    }

    /// An increment of `session`'s counter, acknowledged or not.
    pub fn increment(&self, session: usize, acked: bool) {
        self.with(session, |a| {
            if acked {
                a.acked_increments += 1;
            } else {
                a.unacked_increments += 1;
            }
        });
    }

    /// The sessions with an account.
    pub fn sessions(&self) -> Vec<usize> {
        self.accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Checks one session's stored data (`None`: no record): every
    /// acknowledged key is present, no key appears that was never sent, and
    /// the counter (from `base`) counts every acknowledged increment and at
    /// most the unacknowledged ones besides.
    pub fn verify_one(
        &self,
        session: usize,
        data: Option<&Map<String, Value>>,
        base: u64,
        verified: &mut Verified,
    ) -> Result<(), String> {
        let account = self.with(session, |a| a.clone());
        let empty = Map::new();
        let data = data.unwrap_or(&empty);
        let missing: Vec<&String> = account
            .acked_keys
            .iter()
            .filter(|k| !data.contains_key(k.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "session {session}: {} acknowledged writes missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        for key in data.keys() {
            let ours = key.starts_with('w');
            if ours && !account.acked_keys.contains(key) && !account.unacked_keys.contains(key) {
                return Err(format!("session {session}: key {key} was never written"));
            }
        }
        let applied_unacked = account
            .unacked_keys
            .iter()
            .filter(|k| data.contains_key(k.as_str()))
            .count() as u64;
        let counter = data.get("counter").and_then(Value::as_u64).unwrap_or(0);
        let counted = counter.saturating_sub(base);
        if counter < base + account.acked_increments
            || counted > account.acked_increments + account.unacked_increments
        {
            return Err(format!(
                "session {session}: counter is {counter}, expected {} acknowledged increments (+ at most {} unacknowledged) on top of {base}",
                account.acked_increments, account.unacked_increments
            ));
        }
        verified.sessions += 1;
        verified.keys += account.acked_keys.len();
        verified.increments += account.acked_increments;
        verified.unacked_applied += applied_unacked + (counted - account.acked_increments);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Log capture.

/// Everything logged on this thread while the guard of [`Logs::capture`]
/// lives (use a current-thread runtime).
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

/// The writer of [`Logs`].
#[derive(Debug)]
pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(Arc::clone(&self.0))
    }
}

impl Logs {
    /// Captures this thread's logs, `debug` and up, until the guard drops.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// The lines logged at `level` (`"WARN"`, `"ERROR"` …).
    pub fn at(&self, level: &str) -> Vec<String> {
        let tag = format!(" {level} ");
        self.text()
            .lines()
            .filter(|line| line.contains(&tag))
            .map(str::to_owned)
            .collect()
    }

    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

// ---------------------------------------------------------------------------
// A Redis server of the test's own.

/// A `redis-server` child process on a free 127.0.0.1 port, with an
/// append-only file synced on every write (so a `SIGKILL` loses nothing that
/// was acknowledged). Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one; `None` (with a note) when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with `SIGKILL` and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and data directory, and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 16];
        matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Load: many clients writing unique keys and incrementing counters.

/// How a load is shaped.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests in all (the load also stops at `until`).
    pub requests: usize,
    /// When to stop at the latest.
    pub until: Option<Instant>,
    /// Every `hot_every`th request increments the counter of one of 4 hot
    /// sessions (0: none), so that requests of one session overlap.
    pub hot_every: usize,
}

/// What a load did.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub requests: usize,
    pub acked: usize,
    pub failed: usize,
    pub statuses: BTreeMap<u16, usize>,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl LoadStats {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let at = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[at]
    }

    pub fn max_latency(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn mix(n: u64) -> u64 {
    // splitmix64: a cheap, well-spread hash of the request number.
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn send(
    app: &axum::Router,
    uri: &str,
    cookie: Option<&str>,
    body: &str,
) -> http::Response<axum::body::Body> {
    use tower::ServiceExt as _;
    let mut request =
        http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        request = request.header(http::header::COOKIE, format!("keepsake_session={cookie}"));
    }
    let request = request
        .body(axum::body::Body::from(body.to_owned()))
        .expect("a request");
    app.clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {})
}

/// Creates `n` sessions through `apps` (round robin) and returns their ids.
pub async fn create_sessions(apps: &[axum::Router], n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let response = send(
            &apps[i % apps.len()],
            "/run",
            None,
            r#"[["put","init",true]]"#,
        )
        .await;
        assert_eq!(response.status(), 200, "creating session {i}");
        let id = response
            .headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .find_map(|v| {
                let v = v.to_str().ok()?;
                let value = v.split(';').next()?.strip_prefix("keepsake_session=")?;
                (!value.is_empty()).then(|| value.to_owned())
            })
            .expect("a new session sets its cookie");
        ids.push(id);
    }
    ids
}

/// One request of a load: request `n` writes the unique key `w{n}` when `n`
/// is even and increments the session's counter when odd (always, on a hot
/// session). Records the outcome in `ledger`.
pub async fn load_request(
    apps: &[axum::Router],
    ids: &[String],
    ledger: &Ledger,
    n: usize,
    hot_every: usize,
) -> (u16, Duration) {
    let h = mix(n as u64);
    let hot = hot_every > 0 && n.is_multiple_of(hot_every);
    let session = if hot {
        (n / hot_every) % ids.len().min(4)
    } else {
        (h % ids.len() as u64) as usize
    };
    let app = &apps[((h >> 32) % apps.len() as u64) as usize];
    let started = Instant::now();
    // Hot sessions only count, so they stay small however long the load.
    let (uri, key) = if n.is_multiple_of(2) && !hot {
        (format!("/write/w{n}"), Some(format!("w{n}")))
    } else {
        ("/incr".to_owned(), None)
    };
    let response = send(app, &uri, Some(&ids[session]), "").await;
    let status = response.status().as_u16();
    // Read the body: the response is complete only then.
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    let elapsed = started.elapsed();
    let acked = status == 200;
    match key {
        Some(key) => ledger.write(session, &key, acked),
        None => ledger.increment(session, acked),
    }
    (status, elapsed)
}

/// Runs a load of `spec.requests` requests from `spec.clients` concurrent
/// clients over `apps` (app instances sharing one backend).
pub async fn run_load(
    spec: LoadSpec,
    apps: Arc<Vec<axum::Router>>,
    ids: Arc<Vec<String>>,
    ledger: Arc<Ledger>,
) -> LoadStats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..spec.clients)
        .map(|_| {
            let (apps, ids, ledger, next) =
                (apps.clone(), ids.clone(), ledger.clone(), next.clone());
            tokio::spawn(async move {
                let mut stats = LoadStats::default();
                loop {
                    if spec.until.is_some_and(|until| Instant::now() >= until) {
                        break;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= spec.requests {
                        break;
                    }
                    let (status, latency) =
                        load_request(&apps, &ids, &ledger, n, spec.hot_every).await;
                    stats.requests += 1;
                    if status == 200 {
                        stats.acked += 1;
                    } else {
                        stats.failed += 1;
                    }
                    *stats.statuses.entry(status).or_default() += 1;
                    stats.latencies.push(latency);
                }
                stats
            })
        })
        .collect();
    let mut total = LoadStats::default();
    for task in tasks {
        let stats = task.await.expect("a load client panicked");
        total.requests += stats.requests;
        total.acked += stats.acked;
        total.failed += stats.failed;
        for (status, count) in stats.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
        total.latencies.extend(stats.latencies);
    }
    total.latencies.sort_unstable();
    total.elapsed = started.elapsed();
    total
}

/// Checks every session of `ids` in `store` against `ledger`.
pub async fn verify(
    store: &dyn SessionStore,
    ids: &[String],
    ledger: &Ledger,
) -> Result<Verified, String> {
    let mut verified = Verified::default();
    for (i, id) in ids.iter().enumerate() {
        let key = keepsake::SessionId::parse(id)
            .ok_or("a malformed id")?
            .storage_key();
        let record = store
            .load(&key)
            .await
            .map_err(|e| format!("loading session {i}: {e}"))?;
        let payload = record
            .map(|r| Payload::decode(&r.payload).map_err(|e| format!("session {i}: {e}")))
            .transpose()?;
        ledger.verify_one(i, payload.as_ref().map(|p| &p.data), 0, &mut verified)?;
    }
    Ok(verified)
}

/// Waits until a request of session `id` succeeds (the backend is back),
/// for at most `within`.
pub async fn wait_until_served(
    app: &axum::Router,
    id: &str,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let response = send(app, "/run", Some(id), r#"[["get","init"]]"#).await;
        if response.status() == 200 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("still {} after {within:?}", response.status()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
