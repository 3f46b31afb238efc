//! Observability for any store: [`Instrumented`] puts a `tracing` span
//! around every store operation and, with the `metrics` feature, records
//! counters and a latency histogram through the [`metrics`] facade.
//!
//! The session layer wraps its store in [`Instrumented`] itself, so an
//! application only installs a `tracing` subscriber and, with the `metrics`
//! feature, a `metrics` recorder (a Prometheus exporter, StatsD …). Wrap a
//! store yourself only when you use it outside the layer; wrapping twice
//! counts every operation twice.
//!
//! # Spans
//!
//! Every operation runs inside a `DEBUG` span named `keepsake.store` with the
//! fields
//!
//! | field | value |
//! |---|---|
//! | `operation` | `load`, `create`, `save`, `touch`, `destroy`, `gc`, `list_for_user`, `destroy_for_user` |
//! | `store` | the store's [`kind`](SessionStore::kind): `memory`, `postgres`, `redis` … |
//! | `key` | the first 8 characters of the [`StorageKey`] ([`StorageKey::short`]), for operations on one session |
//! | `outcome` | `ok`, `conflict` (a `create` or `save` that was not applied) or `error`, recorded when the operation ends |
//!
//! A session id never appears in a span: stores only ever see storage keys,
//! and of those only the short prefix is recorded. A user id is not recorded
//! either. With no subscriber interested in `DEBUG` spans of this crate, a
//! span costs one cached check of the callsite's interest.
//!
//! # Metrics (feature `metrics`)
//!
//! | name | type | labels | counts |
//! |---|---|---|---|
//! | `keepsake_store_loads_total` | counter | `store` | `load` calls |
//! | `keepsake_store_creates_total` | counter | `store` | `create` calls |
//! | `keepsake_store_saves_total` | counter | `store` | `save` calls (compare-and-swap writes) |
//! | `keepsake_store_cas_conflicts_total` | counter | `store`, `operation` | `create` (`operation="create"`, an id collision) and `save` (`operation="save"`, a concurrent writer saved first) calls that were not applied |
//! | `keepsake_store_touches_total` | counter | `store` | `touch` calls (expiry moved without a rewrite) |
//! | `keepsake_store_destroys_total` | counter | `store` | sessions destroyed: `destroy` calls plus the sessions deleted by `destroy_for_user` |
//! | `keepsake_gc_deleted_total` | counter | `store` | expired sessions deleted by `gc` |
//! | `keepsake_store_errors_total` | counter | `store`, `operation` | operations that returned an error |
//! | `keepsake_store_latency_seconds` | histogram | `store`, `operation` | the duration of every operation, whatever its outcome |
//! | `keepsake_save_retries_total` | counter | `store` | saves retried by the layer after a conflict ([`record_retry`]) |
//!
//! Calls are counted whatever their outcome, so an error rate is
//! `keepsake_store_errors_total / (the operation's total)` and a conflict
//! rate `keepsake_store_cas_conflicts_total{operation="save"} /
//! keepsake_store_saves_total`. [`describe_metrics`] registers a unit and a
//! description for each, for exporters that show them.
//!
//! Without the feature nothing is measured and the `metrics` crate is not
//! compiled in.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use keepsake_core::instrument::Instrumented;
//! use keepsake_core::{MemoryStore, SessionId, SessionStore};
//!
//! let store = Instrumented::new(MemoryStore::new());
//! assert_eq!(store.kind(), "memory");
//! let key = SessionId::generate().storage_key();
//! assert_eq!(store.load(&key).await?, None); // inside a `keepsake.store` span
//! # Ok::<(), keepsake_core::Error>(())
//! # }).unwrap();
//! ```

use std::future::Future;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::error::Result;
use crate::id::StorageKey;
use crate::record::{Record, SessionInfo};
use crate::store::{Cas, ClientSideStore, SessionStore};

/// A store that traces (and, with the `metrics` feature, measures) every
/// operation of the store it wraps, then delegates to it unchanged.
///
/// See the [module documentation](self) for the span fields and metric names.
///
/// ```
/// use std::sync::Arc;
/// use keepsake_core::instrument::Instrumented;
/// use keepsake_core::{MemoryStore, SessionStore};
///
/// // Any store, shared ones too:
/// let shared: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
/// let store: Arc<dyn SessionStore> = Arc::new(Instrumented::new(shared));
/// assert_eq!(store.kind(), "memory");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Instrumented<S> {
    inner: S,
}

impl<S: SessionStore> Instrumented<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Runs one operation inside its span, then records its outcome (and,
    /// with the `metrics` feature, its counters and latency).
    async fn observe<T, F>(
        &self,
        operation: Operation,
        key: Option<&StorageKey>,
        future: F,
        summary: fn(&T) -> Summary,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let store = self.inner.kind();
        let span = tracing::debug_span!(
            "keepsake.store",
            operation = operation.name(),
            store,
            key = key.map(StorageKey::short),
            outcome = tracing::field::Empty,
        );
        // Nobody listens and nothing is measured: run the operation bare.
        #[cfg(not(feature = "metrics"))]
        if span.is_disabled() {
            return future.await;
        }
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let result = future.instrument(span.clone()).await;
        let summary = match &result {
            Ok(value) => summary(value),
            Err(_) => Summary::error(),
        };
        span.record("outcome", summary.outcome.name());
        #[cfg(feature = "metrics")]
        measure::operation(store, operation, summary, started.elapsed());
        result
    }
}

/// The layer calls this each time it retries a save after a conflict
/// (reloading the record and replaying the request's changes): it counts
/// `keepsake_save_retries_total{store}` with the `metrics` feature, and does
/// nothing without it.
///
/// ```
/// keepsake_core::instrument::record_retry("memory");
/// ```
#[inline]
pub fn record_retry(store_kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(measure::SAVE_RETRIES, "store" => store_kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = store_kind;
}

/// Registers the unit and description of every keepsake metric with the
/// installed `metrics` recorder, for exporters that show them (Prometheus'
/// `# HELP` lines). Call it once, after installing the recorder.
///
/// ```
/// keepsake_core::instrument::describe_metrics();
/// ```
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    measure::describe();
}

/// The store operations, as named in spans and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Load,
    Create,
    Save,
    Touch,
    Destroy,
    Retire,
    Gc,
    ListForUser,
    DestroyForUser,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Create => "create",
            Self::Save => "save",
            Self::Touch => "touch",
            Self::Destroy => "destroy",
            Self::Retire => "retire",
            Self::Gc => "gc",
            Self::ListForUser => "list_for_user",
            Self::DestroyForUser => "destroy_for_user",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Conflict,
    Error,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

/// How an operation ended, as far as spans and metrics care.
#[derive(Debug, Clone, Copy)]
struct Summary {
    outcome: Outcome,
    /// Sessions deleted, for the operations that delete several.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    deleted: u64,
}

impl Summary {
    fn error() -> Self {
        Self {
            outcome: Outcome::Error,
            deleted: 0,
        }
    }
}

fn ok<T>(_: &T) -> Summary {
    Summary {
        outcome: Outcome::Ok,
        deleted: 0,
    }
}

fn cas(cas: &Cas) -> Summary {
    Summary {
        outcome: match cas {
            Cas::Applied => Outcome::Ok,
            Cas::Conflict => Outcome::Conflict,
        },
        deleted: 0,
    }
}

fn deleted(count: &u64) -> Summary {
    Summary {
        outcome: Outcome::Ok,
        deleted: *count,
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Instrumented<S> {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        self.observe(Operation::Load, Some(key), self.inner.load(key), ok)
            .await
    }

    async fn create(&self, record: &Record) -> Result<Cas> {
        self.observe(
            Operation::Create,
            Some(&record.key),
            self.inner.create(record),
            cas,
        )
        .await
    }

    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        self.observe(
            Operation::Save,
            Some(&record.key),
            self.inner.save(record, expected_version),
            cas,
        )
        .await
    }

    async fn save_in_place(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        self.observe(
            Operation::Save,
            Some(&record.key),
            self.inner.save_in_place(record, expected_version),
            cas,
        )
        .await
    }

    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        self.observe(
            Operation::Touch,
            Some(key),
            self.inner
                .touch(key, expected_version, last_activity, expires_at),
            cas,
        )
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        self.observe(Operation::Destroy, Some(key), self.inner.destroy(key), ok)
            .await
    }

    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        owner: Option<&str>,
    ) -> Result<Cas> {
        self.observe(
            Operation::Retire,
            Some(key),
            self.inner.retire(key, expected_version, owner),
            cas,
        )
        .await
    }

    async fn gc(&self, now: i64) -> Result<u64> {
        self.observe(Operation::Gc, None, self.inner.gc(now), deleted)
            .await
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        self.observe(
            Operation::ListForUser,
            None,
            self.inner.list_for_user(user_id),
            ok,
        )
        .await
    }

    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64> {
        self.observe(
            Operation::DestroyForUser,
            None,
            self.inner.destroy_for_user(user_id, except),
            deleted,
        )
        .await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn client_side(&self) -> Option<&dyn ClientSideStore> {
        self.inner.client_side()
    }
}

#[cfg(feature = "metrics")]
mod measure {
    //! The `metrics` side of [`Instrumented`](super::Instrumented).

    use std::time::Duration;

    use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

    use super::{Operation, Outcome, Summary};

    pub(super) const LOADS: &str = "keepsake_store_loads_total";
    pub(super) const CREATES: &str = "keepsake_store_creates_total";
    pub(super) const SAVES: &str = "keepsake_store_saves_total";
    pub(super) const CAS_CONFLICTS: &str = "keepsake_store_cas_conflicts_total";
    pub(super) const TOUCHES: &str = "keepsake_store_touches_total";
    pub(super) const DESTROYS: &str = "keepsake_store_destroys_total";
    pub(super) const GC_DELETED: &str = "keepsake_gc_deleted_total";
    pub(super) const ERRORS: &str = "keepsake_store_errors_total";
    pub(super) const LATENCY: &str = "keepsake_store_latency_seconds";
    pub(super) const SAVE_RETRIES: &str = "keepsake_save_retries_total";

    /// Records one finished operation.
    pub(super) fn operation(
        store: &'static str,
        operation: Operation,
        summary: Summary,
        elapsed: Duration,
    ) {
        let name = operation.name();
        histogram!(LATENCY, "store" => store, "operation" => name).record(elapsed.as_secs_f64());
        match operation {
            Operation::Load => counter!(LOADS, "store" => store).increment(1),
            Operation::Create => counter!(CREATES, "store" => store).increment(1),
            Operation::Save => counter!(SAVES, "store" => store).increment(1),
            Operation::Touch => counter!(TOUCHES, "store" => store).increment(1),
            Operation::Destroy | Operation::Retire => {
                counter!(DESTROYS, "store" => store).increment(1);
            }
            Operation::DestroyForUser => {
                counter!(DESTROYS, "store" => store).increment(summary.deleted);
            }
            Operation::Gc => counter!(GC_DELETED, "store" => store).increment(summary.deleted),
            Operation::ListForUser => {}
        }
        match summary.outcome {
            Outcome::Ok => {}
            Outcome::Conflict => {
                counter!(CAS_CONFLICTS, "store" => store, "operation" => name).increment(1);
            }
            Outcome::Error => counter!(ERRORS, "store" => store, "operation" => name).increment(1),
        }
    }

    pub(super) fn describe() {
        describe_counter!(LOADS, Unit::Count, "Session loads.");
        describe_counter!(
            CREATES,
            Unit::Count,
            "Session creations (insert if absent)."
        );
        describe_counter!(SAVES, Unit::Count, "Compare-and-swap session saves.");
        describe_counter!(
            CAS_CONFLICTS,
            Unit::Count,
            "Creates and saves not applied: the id existed, or a concurrent writer saved first."
        );
        describe_counter!(
            TOUCHES,
            Unit::Count,
            "Expiry moves without a payload rewrite."
        );
        describe_counter!(
            DESTROYS,
            Unit::Count,
            "Sessions destroyed (logout, regenerate, sign-out everywhere)."
        );
        describe_counter!(GC_DELETED, Unit::Count, "Expired sessions deleted by gc.");
        describe_counter!(ERRORS, Unit::Count, "Store operations that failed.");
        describe_histogram!(LATENCY, Unit::Seconds, "Duration of store operations.");
        describe_counter!(
            SAVE_RETRIES,
            Unit::Count,
            "Saves retried after a conflict (reload, replay, save again)."
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing::span;
    use tracing_subscriber::layer::{Context, SubscriberExt as _};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;
    use crate::error::Error;
    use crate::id::SessionId;
    use crate::memory::MemoryStore;

    fn record(user: Option<&str>) -> Record {
        let now = crate::now();
        Record {
            key: SessionId::generate().storage_key(),
            payload: r#"{"d":{}}"#.into(),
            last_activity: now,
            expires_at: now + 3600,
            version: 1,
            user_id: user.map(str::to_owned),
            ip_address: None,
            user_agent: None,
        }
    }

    /// A store whose every operation fails, as a backend that is down.
    #[derive(Debug)]
    struct Down;

    fn down<T>(operation: &'static str) -> Result<T> {
        Err(Error::backend(
            "down",
            operation,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))
    }

    #[async_trait]
    impl SessionStore for Down {
        async fn load(&self, _: &StorageKey) -> Result<Option<Record>> {
            down("load")
        }
        async fn create(&self, _: &Record) -> Result<Cas> {
            down("create")
        }
        async fn save(&self, _: &Record, _: i64) -> Result<Cas> {
            down("save")
        }
        async fn touch(&self, _: &StorageKey, _: i64, _: i64, _: i64) -> Result<Cas> {
            down("touch")
        }
        async fn destroy(&self, _: &StorageKey) -> Result<()> {
            down("destroy")
        }
        async fn gc(&self, _: i64) -> Result<u64> {
            down("gc")
        }
        async fn list_for_user(&self, _: &str) -> Result<Vec<SessionInfo>> {
            down("list_for_user")
        }
        async fn destroy_for_user(&self, _: &str, _: Option<&StorageKey>) -> Result<u64> {
            down("destroy_for_user")
        }
        fn kind(&self) -> &'static str {
            "down"
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn delegates_every_operation() {
        block_on(async {
            let store = Instrumented::new(MemoryStore::new());
            let record = record(Some("1"));
            assert!(store.create(&record).await.unwrap().is_applied());
            assert_eq!(store.load(&record.key).await.unwrap(), Some(record.clone()));
            assert_eq!(store.list_for_user("1").await.unwrap().len(), 1);
            assert_eq!(store.destroy_for_user("1", None).await.unwrap(), 1);
            assert_eq!(store.kind(), "memory");
            assert!(store.client_side().is_none());
            assert!(store.inner().is_empty());
            assert!(store.into_inner().is_empty());
        });
    }

    /// Every span and every value recorded on it, as `name` → field → value.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    struct Index(usize);

    impl<S> tracing_subscriber::Layer<S> for Capture
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            fields.insert("name".to_owned(), attrs.metadata().name().to_owned());
            fields.insert("level".to_owned(), attrs.metadata().level().to_string());
            attrs.record(&mut Fields(&mut fields));
            let mut spans = self.0.lock().unwrap();
            spans.push(fields);
            ctx.span(id)
                .unwrap()
                .extensions_mut()
                .insert(Index(spans.len() - 1));
        }

        fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
            let span = ctx.span(id).unwrap();
            let extensions = span.extensions();
            let index = extensions.get::<Index>().unwrap().0;
            values.record(&mut Fields(&mut self.0.lock().unwrap()[index]));
        }
    }

    #[test]
    fn spans_carry_operation_store_outcome_and_only_a_short_key() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let id = SessionId::generate();
        let key = id.storage_key();
        tracing::subscriber::with_default(subscriber, || {
            block_on(async {
                let store = Instrumented::new(MemoryStore::new());
                let mut record = record(Some("user-secret-42"));
                record.key = key.clone();
                assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
                assert_eq!(store.create(&record).await.unwrap(), Cas::Conflict);
                assert!(store.load(&key).await.unwrap().is_some());
                store
                    .destroy_for_user("user-secret-42", None)
                    .await
                    .unwrap();
                Instrumented::new(Down).load(&key).await.unwrap_err();
            });
        });
        let spans = capture.0.lock().unwrap().clone();
        let summary: Vec<(&str, &str, &str)> = spans
            .iter()
            .map(|s| {
                (
                    s["operation"].as_str(),
                    s["store"].as_str(),
                    s["outcome"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("create", "memory", "ok"),
                ("create", "memory", "conflict"),
                ("load", "memory", "ok"),
                ("destroy_for_user", "memory", "ok"),
                ("load", "down", "error"),
            ]
        );
        for span in &spans {
            assert_eq!(span["name"], "keepsake.store");
            assert_eq!(span["level"], "DEBUG");
            for value in span.values() {
                assert!(!value.contains(id.as_str()), "{span:?}");
                assert!(!value.contains(key.as_str()), "{span:?}");
                assert!(!value.contains("user-secret"), "{span:?}");
            }
        }
        assert_eq!(spans[0]["key"], key.short());
        assert!(!spans[3].contains_key("key"), "{:?}", spans[3]);
    }

    #[cfg(feature = "test-kit")]
    #[test]
    fn conformance() {
        block_on(crate::test_kit::run_all(
            || async { Instrumented::new(MemoryStore::new()) },
            crate::test_kit::Options::default(),
        ));
    }

    #[test]
    fn record_retry_without_a_recorder_is_harmless() {
        record_retry("memory");
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn counters_after_a_few_operations() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            block_on(async {
                describe_metrics();
                let store = Instrumented::new(MemoryStore::new());
                let first = record(Some("7"));
                let second = record(Some("7"));
                assert!(store.create(&first).await.unwrap().is_applied());
                assert!(store.create(&second).await.unwrap().is_applied());
                assert_eq!(store.create(&first).await.unwrap(), Cas::Conflict);
                assert!(store.load(&first.key).await.unwrap().is_some());
                let mut next = first.clone();
                next.version = 2;
                assert!(store.save(&next, 1).await.unwrap().is_applied());
                assert_eq!(store.save(&next, 1).await.unwrap(), Cas::Conflict);
                assert!(
                    store
                        .touch(&first.key, 2, 1, crate::now() + 60)
                        .await
                        .unwrap()
                        .is_applied()
                );
                store.destroy(&first.key).await.unwrap();
                assert_eq!(store.destroy_for_user("7", None).await.unwrap(), 1);
                let mut expired = record(None);
                expired.expires_at = crate::now() - 1;
                assert!(store.create(&expired).await.unwrap().is_applied());
                assert_eq!(store.gc(crate::now()).await.unwrap(), 1);
                record_retry("memory");

                let down = Instrumented::new(Down);
                down.load(&first.key).await.unwrap_err();
                down.save(&next, 1).await.unwrap_err();
                down.save(&next, 1).await.unwrap_err();
            });
        });

        let mut counters = BTreeMap::new();
        let mut latencies = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            match value {
                DebugValue::Counter(n) => {
                    counters.insert(name, n);
                }
                DebugValue::Histogram(samples) => {
                    latencies.insert(name, samples.len());
                }
                DebugValue::Gauge(_) => panic!("no gauges expected: {name}"),
            }
        }
        let expected: BTreeMap<String, u64> = [
            ("keepsake_store_creates_total{store=memory}", 4),
            (
                "keepsake_store_cas_conflicts_total{operation=create,store=memory}",
                1,
            ),
            (
                "keepsake_store_cas_conflicts_total{operation=save,store=memory}",
                1,
            ),
            ("keepsake_store_loads_total{store=memory}", 1),
            ("keepsake_store_saves_total{store=memory}", 2),
            ("keepsake_store_touches_total{store=memory}", 1),
            ("keepsake_store_destroys_total{store=memory}", 2),
            ("keepsake_gc_deleted_total{store=memory}", 1),
            ("keepsake_save_retries_total{store=memory}", 1),
            ("keepsake_store_loads_total{store=down}", 1),
            ("keepsake_store_saves_total{store=down}", 2),
            ("keepsake_store_errors_total{operation=load,store=down}", 1),
            ("keepsake_store_errors_total{operation=save,store=down}", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(counters, expected);
        assert_eq!(
            latencies.get("keepsake_store_latency_seconds{operation=create,store=memory}"),
            Some(&4)
        );
        assert_eq!(
            latencies.get("keepsake_store_latency_seconds{operation=save,store=down}"),
            Some(&2)
        );
        assert_eq!(latencies.values().sum::<usize>(), 14);
    }
}
