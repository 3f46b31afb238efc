//! [`spawn_gc`]: collect expired sessions on a timer, in the background,
//! instead of (or beside) the layer's lottery.
//!
//! # Lottery, background task or cron
//!
//! Expired sessions never load, whatever collects them; collecting only
//! frees their space. Pick one way per deployment:
//!
//! | how | when |
//! |---|---|
//! | the lottery (default, 2 in 100 requests, at most one collection a minute per layer) | nothing to set up; collection follows traffic |
//! | [`spawn_gc`] with [`with_lottery(0, 1)`](crate::SessionLayer::with_lottery) | a steady rhythm independent of traffic, no request ever pays for a gc |
//! | `keepsake prune` from cron, lottery off | collection outside the application processes (the `keepsake` CLI) |
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keepsake::{MemoryStore, SessionLayer, SessionStore, spawn_gc};
//!
//! let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
//! // The lottery off: the background task collects instead.
//! let layer = SessionLayer::from_arc(store).with_lottery(0, 1);
//! // The layer's own store, so the task's gc runs are traced and measured
//! // like the layer's operations.
//! let gc = spawn_gc(layer.store().clone(), Duration::from_secs(10 * 60));
//!
//! // … serve the application with `layer` …
//!
//! gc.shutdown().await; // waits for a gc in progress, then stops
//! # });
//! ```
//!
//! Running the task in every instance of a horizontally scaled application
//! is fine: each `gc` deletes what has expired by then, and the SQL stores
//! delete in small batches. Stores whose backend expires entries itself
//! (Redis, memcached) return 0 from `gc` and need no collection at all.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keepsake_core::{BoxError, Report, SessionStore, now};
use rand::Rng as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::SessionLayer;

/// The shortest interval [`spawn_gc`] accepts; shorter ones (zero included)
/// are raised to it.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a failing gc waits before its next try, unless the interval
/// itself is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);

/// Runs `store.gc(now)` in the background: once right away, then every
/// `interval` after the previous run ended, until the returned [`GcHandle`]
/// is dropped or [`shut down`](GcHandle::shutdown).
///
/// The first run is immediate so that a process restarted more often than
/// `interval` (frequent deploys, autoscaling) still collects. An interval
/// shorter than one second is taken as one second.
///
/// - Deletions are logged at `debug` (`store`, `deleted`).
/// - A failed run (an error, or a panic inside the store) is logged at
///   `error` and the next try backs off: after `n` failures in a row the task
///   waits `interval × 2ⁿ`, at most one hour (or `interval`, if that is
///   longer). The first success is logged at `info` and brings the rhythm
///   back to `interval`. The task never stops because of a failure.
///
/// Give it [`SessionLayer::store`](crate::SessionLayer::store) and turn the
/// layer's lottery off with
/// [`with_lottery(0, 1)`](crate::SessionLayer::with_lottery); see the
/// [module documentation](self) for an example.
///
/// # Panics
///
/// When called outside a Tokio runtime, as `tokio::spawn`.
pub fn spawn_gc(store: Arc<dyn SessionStore>, interval: Duration) -> GcHandle {
    spawn_with(store, Schedule::new(interval), tokio::time::sleep)
}

/// The background task of [`spawn_gc`].
///
/// Dropping the handle stops the task: a gc in progress finishes (each
/// store operation is atomic, so stopping it halfway would gain nothing),
/// and no other starts. [`GcHandle::shutdown`] does the same and waits for
/// the task to end.
#[derive(Debug)]
#[must_use = "dropping the handle stops the background gc"]
pub struct GcHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl GcHandle {
    /// Stops the task and waits until it has ended, including a gc in
    /// progress. Wrap it in `tokio::time::timeout` if the store may hang.
    pub async fn shutdown(self) {
        let Self { stop, task } = self;
        // The task may already have ended; nothing then listens.
        let _ = stop.send(());
        if let Err(error) = task.await {
            tracing::error!(error = %Report(&error), "session gc task ended abnormally");
        }
    }

    /// True once the task has ended (after a shutdown or a drop).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// When the task runs `gc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    interval: Duration,
    max_backoff: Duration,
}

impl Schedule {
    fn new(interval: Duration) -> Self {
        let interval = interval.max(MIN_INTERVAL);
        Self {
            interval,
            max_backoff: MAX_BACKOFF.max(interval),
        }
    }

    /// The wait before the next run, after `failures` failed runs in a row.
    fn delay(self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures);
        self.interval.saturating_mul(factor).min(self.max_backoff)
    }
}

/// [`spawn_gc`] with its schedule and its way of waiting given (tests wait
/// on a clock of their own).
fn spawn_with<S, F>(store: Arc<dyn SessionStore>, schedule: Schedule, sleep: S) -> GcHandle
where
    S: FnMut(Duration) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(store, schedule, stopped, sleep));
    GcHandle { stop, task }
}

async fn run<S, F>(
    store: Arc<dyn SessionStore>,
    schedule: Schedule,
    mut stopped: oneshot::Receiver<()>,
    mut sleep: S,
) where
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let kind = store.kind();
    let mut failures = 0u32;
    loop {
        // Each run on a task of its own, so that a panicking store is a
        // failed run rather than the end of the loop.
        let run = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.gc(now()).await }
        });
        let outcome: std::result::Result<u64, BoxError> = match run.await {
            Ok(result) => result.map_err(Into::into),
            Err(panicked) => Err(panicked.into()),
        };
        match outcome {
            Ok(deleted) => {
                if failures > 0 {
                    tracing::info!(store = kind, failures, "session gc succeeded again");
                }
                tracing::debug!(store = kind, deleted, "session gc");
                failures = 0;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::error!(
                    store = kind,
                    error = %Report(&*error),
                    failures,
                    retry_in = ?schedule.delay(failures),
                    "session gc failed; retrying later"
                );
            }
        }
        let delay = schedule.delay(failures);
        tokio::select! {
            biased;
            // A shutdown, or the handle dropped.
            _ = &mut stopped => break,
            () = sleep(delay) => {}
        }
    }
    tracing::debug!(store = kind, "session gc task stopped");
}

/// The layer's lottery state: whether a collection is running, and when the
/// last one started.
#[derive(Debug, Default)]
pub(crate) struct Lottery {
    running: Arc<AtomicBool>,
    last_start: Mutex<Option<Instant>>,
}

impl Lottery {
    /// Claims the right to collect at `at`: `None` while a collection runs
    /// or when the previous one started less than `min_interval` before
    /// `at`. The returned guard marks the collection as running until it is
    /// dropped.
    fn claim(&self, at: Instant, min_interval: Duration) -> Option<Running> {
        // A win while a gc is still running is dropped: gc tasks piling up
        // under load would hold the store's connections that requests need.
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let running = Running(Arc::clone(&self.running));
        // Only one claimant gets here at a time (the flag above), so the lock
        // is never contended; a poisoned one still holds a valid instant.
        let mut last = self
            .last_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = *last
            && at.saturating_duration_since(previous) < min_interval
        {
            return None;
        }
        *last = Some(at);
        Some(running)
    }
}

/// Clears the in-flight flag when the gc task ends, however it ends.
#[derive(Debug)]
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The layer's lottery, after a request that used its session: with
/// probability `hits / out_of`, collects expired sessions on a spawned task,
/// never on the request's own latency path, never more than one at a time
/// per layer, and never sooner than the layer's `gc_min_interval` after the
/// previous collection started.
pub(crate) fn lottery(layer: &SessionLayer, now: i64) {
    let (hits, out_of) = layer.config.lottery;
    if hits == 0 || !rand::rng().random_ratio(hits, out_of) {
        return;
    }
    let Some(running) = layer.gc.claim(Instant::now(), layer.config.gc_min_interval) else {
        return;
    };
    let store = Arc::clone(&layer.store);
    tokio::spawn(async move {
        let _running = running;
        match store.gc(now).await {
            Ok(deleted) => tracing::debug!(store = store.kind(), deleted, "session gc"),
            Err(error) => tracing::error!(
                store = store.kind(),
                error = %Report(&error),
                "session gc failed; the next lottery win tries again"
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use keepsake_core::{
        Cas, Error, MemoryStore, Record, Result, SessionInfo, StorageKey, async_trait,
    };
    use tokio::sync::Notify;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let schedule = Schedule::new(MINUTE);
        let delays: Vec<u64> = (0..9).map(|n| schedule.delay(n).as_secs() / 60).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(schedule.delay(u32::MAX), MAX_BACKOFF);
        // An interval beyond the cap does not grow: failures retry on it.
        let daily = Schedule::new(24 * 60 * MINUTE);
        assert_eq!(daily.delay(5), 24 * 60 * MINUTE);
        // Zero is raised to the minimum.
        assert_eq!(Schedule::new(Duration::ZERO).delay(0), MIN_INTERVAL);
    }

    /// What a scripted gc does.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Delete(u64),
        Fail,
        Panic,
    }

    /// A store whose `gc` follows a script (then deletes nothing).
    #[derive(Debug, Default)]
    struct Scripted {
        script: Mutex<VecDeque<Step>>,
        runs: AtomicUsize,
    }

    impl Scripted {
        fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
            Arc::new(Self {
                script: Mutex::new(steps.into_iter().collect()),
                runs: AtomicUsize::new(0),
            })
        }
    }

    fn unused<T>() -> Result<T> {
        Err(Error::Unsupported {
            store: "scripted",
            operation: "test",
        })
    }

    #[async_trait]
    impl SessionStore for Scripted {
        async fn load(&self, _: &StorageKey) -> Result<Option<Record>> {
            unused()
        }
        async fn create(&self, _: &Record) -> Result<Cas> {
            unused()
        }
        async fn save(&self, _: &Record, _: i64) -> Result<Cas> {
            unused()
        }
        async fn touch(&self, _: &StorageKey, _: i64, _: i64, _: i64) -> Result<Cas> {
            unused()
        }
        async fn destroy(&self, _: &StorageKey) -> Result<()> {
            unused()
        }
        async fn gc(&self, _: i64) -> Result<u64> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let step = self.script.lock().unwrap().pop_front();
            match step.unwrap_or(Step::Delete(0)) {
                Step::Delete(n) => Ok(n),
                Step::Fail => Err(Error::backend(
                    "scripted",
                    "gc",
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )),
                Step::Panic => panic!("a store bug"),
            }
        }
        async fn list_for_user(&self, _: &str) -> Result<Vec<SessionInfo>> {
            unused()
        }
        async fn destroy_for_user(&self, _: &str, _: Option<&StorageKey>) -> Result<u64> {
            unused()
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
    }

    /// Runs the task with a clock that returns at once and records every
    /// wait, for `waits` waits; then it waits for ever (until stopped).
    async fn waits_of(store: Arc<Scripted>, schedule: Schedule, waits: usize) -> Vec<Duration> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all_seen = Arc::new(Notify::new());
        let handle = spawn_with(store, schedule, {
            let seen = Arc::clone(&seen);
            let all_seen = Arc::clone(&all_seen);
            move |delay| {
                let mut seen = seen.lock().unwrap();
                let more = seen.len() < waits;
                if more {
                    seen.push(delay);
                }
                if seen.len() == waits {
                    all_seen.notify_one();
                }
                async move {
                    if !more {
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
        all_seen.notified().await;
        handle.shutdown().await;
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    #[test]
    fn the_floor_drops_a_claim_sooner_than_the_interval() {
        let lottery = Lottery::default();
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        drop(
            lottery
                .claim(start, minute)
                .expect("the first claim collects"),
        );
        assert!(
            lottery
                .claim(start + Duration::from_secs(59), minute)
                .is_none()
        );
        assert!(lottery.claim(start + minute, minute).is_some());
    }

    #[test]
    fn a_zero_floor_collects_on_every_claim_but_one_at_a_time() {
        let lottery = Lottery::default();
        let at = Instant::now();
        let first = lottery.claim(at, Duration::ZERO).expect("collects");
        assert!(lottery.claim(at, Duration::ZERO).is_none(), "one in flight");
        drop(first);
        assert!(lottery.claim(at, Duration::ZERO).is_some());
    }

    #[test]
    fn a_claim_dropped_for_a_running_gc_does_not_move_the_floor() {
        let lottery = Lottery::default();
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let running = lottery.claim(start, minute).expect("collects");
        assert!(lottery.claim(start + minute * 2, minute).is_none());
        drop(running);
        assert!(lottery.claim(start + minute, minute).is_some());
    }

    #[tokio::test]
    async fn runs_every_interval_while_gc_succeeds() {
        let store = Scripted::new([Step::Delete(3), Step::Delete(0), Step::Delete(7)]);
        let waits = waits_of(Arc::clone(&store), Schedule::new(MINUTE), 4).await;
        assert_eq!(waits, [MINUTE; 4]);
        // Right away, then once after each of the four waits.
        assert_eq!(store.runs.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn survives_consecutive_failures_with_growing_backoff_then_resets() {
        let mut script = vec![Step::Delete(1)];
        script.extend([Step::Fail; 8]);
        script.extend([Step::Delete(5), Step::Fail, Step::Delete(0)]);
        let store = Scripted::new(script);
        let waits = waits_of(Arc::clone(&store), Schedule::new(MINUTE), 13).await;
        let minutes: Vec<u64> = waits.iter().map(|d| d.as_secs() / 60).collect();
        assert_eq!(
            minutes,
            // ok, 8 failures (doubling, capped at an hour), ok, failure, ok, ok
            [1, 2, 4, 8, 16, 32, 60, 60, 60, 1, 2, 1, 1]
        );
        assert_eq!(store.runs.load(Ordering::SeqCst), 14);
    }

    #[tokio::test]
    async fn a_panicking_store_is_a_failed_run_not_the_end() {
        let store = Scripted::new([Step::Panic, Step::Panic, Step::Delete(2)]);
        let waits = waits_of(Arc::clone(&store), Schedule::new(MINUTE), 4).await;
        assert_eq!(waits, [2 * MINUTE, 4 * MINUTE, MINUTE, MINUTE]);
        assert_eq!(store.runs.load(Ordering::SeqCst), 5);
    }

    fn fast() -> Schedule {
        Schedule {
            interval: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        }
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn collects_a_real_store_on_the_real_clock() {
        let memory = Arc::new(MemoryStore::new());
        let expired = |offset: i64| {
            let mut record = keepsake_core::test_kit::record("{}");
            record.expires_at = now() + offset;
            record
        };
        assert!(memory.create(&expired(-5)).await.unwrap().is_applied());
        let live = expired(3600);
        assert!(memory.create(&live).await.unwrap().is_applied());
        let handle = spawn_with(memory.clone(), fast(), tokio::time::sleep);
        eventually("the expired record is collected", || memory.len() == 1).await;
        // And again later: a record that expires after the task started.
        assert!(memory.create(&expired(-1)).await.unwrap().is_applied());
        eventually("the next run collects too", || memory.len() == 1).await;
        assert!(memory.load(&live.key).await.unwrap().is_some());
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn survives_failures_on_the_real_clock() {
        let store = Scripted::new([Step::Fail; 5]);
        let handle = spawn_with(store.clone(), fast(), tokio::time::sleep);
        eventually("runs after five failures", || {
            store.runs.load(Ordering::SeqCst) >= 7
        })
        .await;
        assert!(!handle.is_finished());
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn stops_when_the_handle_is_dropped() {
        let store = Scripted::new([]);
        let weak = Arc::downgrade(&store);
        let handle = spawn_with(store.clone(), fast(), tokio::time::sleep);
        eventually("a first run", || store.runs.load(Ordering::SeqCst) >= 1).await;
        drop(store);
        drop(handle);
        // The task ends and lets go of the store.
        eventually("the task let go of the store", || weak.upgrade().is_none()).await;
    }

    /// A store whose `gc` waits for the test's permission.
    #[derive(Debug, Default)]
    struct Gated {
        entered: Notify,
        release: Notify,
        started: AtomicUsize,
        finished: AtomicUsize,
    }

    #[async_trait]
    impl SessionStore for Gated {
        async fn load(&self, _: &StorageKey) -> Result<Option<Record>> {
            unused()
        }
        async fn create(&self, _: &Record) -> Result<Cas> {
            unused()
        }
        async fn save(&self, _: &Record, _: i64) -> Result<Cas> {
            unused()
        }
        async fn touch(&self, _: &StorageKey, _: i64, _: i64, _: i64) -> Result<Cas> {
            unused()
        }
        async fn destroy(&self, _: &StorageKey) -> Result<()> {
            unused()
        }
        async fn gc(&self, _: i64) -> Result<u64> {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.entered.notify_one();
            self.release.notified().await;
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        }
        async fn list_for_user(&self, _: &str) -> Result<Vec<SessionInfo>> {
            unused()
        }
        async fn destroy_for_user(&self, _: &str, _: Option<&StorageKey>) -> Result<u64> {
            unused()
        }
        fn kind(&self) -> &'static str {
            "gated"
        }
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_gc_in_progress_then_stops() {
        let store = Arc::new(Gated::default());
        let handle = spawn_with(store.clone(), fast(), tokio::time::sleep);
        store.entered.notified().await;
        let shutdown = tokio::spawn(handle.shutdown());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shutdown.is_finished(), "shutdown did not wait for the gc");
        store.release.notify_one();
        shutdown.await.unwrap();
        assert_eq!(store.finished.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            store.started.load(Ordering::SeqCst),
            1,
            "a gc after shutdown"
        );
    }

    #[tokio::test]
    async fn spawn_gc_runs_at_once() {
        let store = Scripted::new([]);
        let handle = spawn_gc(store.clone(), Duration::from_secs(3600));
        eventually("the first run", || store.runs.load(Ordering::SeqCst) == 1).await;
        handle.shutdown().await;
        assert_eq!(store.runs.load(Ordering::SeqCst), 1);
    }
}
