//! The test application and store wrappers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod faults;
pub mod suite;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keepsake::testing::TestClient;
use keepsake::{Cas, Record, Session, SessionHandle, SessionInfo, SessionStore, StorageKey};
use serde_json::{Value, json};

/// Runs a list of session operations, each `[name, args…]`, and answers with
/// one result per operation: `{"ok": value}` or `{"err": message}`.
async fn run_ops(session: Session, Json(ops): Json<Vec<Vec<Value>>>) -> Json<Vec<Value>> {
    Json(ops.iter().map(|op| apply(&session, op)).collect())
}

/// [`run_ops`], then holds the request open for a while before the layer
/// commits: the other half of a race set up by a test.
async fn slow_run(session: Session, Json(ops): Json<Vec<Vec<Value>>>) -> Json<Vec<Value>> {
    let results = ops.iter().map(|op| apply(&session, op)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Json(results)
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn apply(s: &Session, op: &[Value]) -> Value {
    let name = op[0].as_str().unwrap();
    let key = op.get(1).and_then(Value::as_str).unwrap_or_default();
    let arg = op.get(2).cloned().unwrap_or(Value::Null);
    let arg1 = op.get(1).cloned().unwrap_or(Value::Null);
    let result: Result<Value, keepsake::Error> = match name {
        "get" => s.get::<Value>(key).map(|v| json!(v)),
        "get_or" => s.get_or::<Value>(key, arg),
        "has" => Ok(json!(s.has(key))),
        "has_all" => Ok(json!(s.has_all(keys(&arg1)))),
        "has_any" => Ok(json!(s.has_any(keys(&arg1)))),
        "exists" => Ok(json!(s.exists(key))),
        "exists_all" => Ok(json!(s.exists_all(keys(&arg1)))),
        "missing" => Ok(json!(s.missing(key))),
        "all" => Ok(Value::Object(s.all())),
        "only" => Ok(Value::Object(s.only(keys(&arg1)))),
        "except" => Ok(Value::Object(s.except(keys(&arg1)))),
        "put" => s.put(key, arg).map(|()| Value::Null),
        "put_many" => s
            .put_many(arg1.as_object().cloned().unwrap_or_default())
            .map(|()| Value::Null),
        "remember" => s.remember::<Value>(key, || arg),
        "push" => s.push(key, arg).map(|()| Value::Null),
        "increment" => s.increment(key, arg.as_i64().unwrap()).map(|v| json!(v)),
        "decrement" => s.decrement(key, arg.as_i64().unwrap()).map(|v| json!(v)),
        "increment_f" => s.increment(key, arg.as_f64().unwrap()).map(|v| json!(v)),
        "pull" => s.pull::<Value>(key).map(|v| json!(v)),
        "forget" => {
            s.forget(key);
            Ok(Value::Null)
        }
        "forget_many" => {
            s.forget_many(keys(&arg1));
            Ok(Value::Null)
        }
        "flush" => {
            s.flush();
            Ok(Value::Null)
        }
        "flash" => s.flash(key, arg).map(|()| Value::Null),
        "now" => s.now(key, arg).map(|()| Value::Null),
        "reflash" => {
            s.reflash();
            Ok(Value::Null)
        }
        "keep" => {
            s.keep(keys(&arg1));
            Ok(Value::Null)
        }
        "flash_input" => s.flash_input(arg1).map(|()| Value::Null),
        "old_input" => Ok(json!(s.old_input(key))),
        "id" => Ok(json!(s.id().as_str())),
        "regenerate" => {
            s.regenerate();
            Ok(Value::Null)
        }
        "migrate" => {
            s.migrate();
            Ok(Value::Null)
        }
        "invalidate" => {
            s.invalidate();
            Ok(Value::Null)
        }
        "token" => Ok(json!(s.token())),
        "regenerate_token" => Ok(json!(s.regenerate_token())),
        "previous_url" => Ok(json!(s.previous_url())),
        "set_previous_url" => {
            s.set_previous_url(key);
            Ok(Value::Null)
        }
        "set_user_id" => {
            s.set_user_id(key);
            Ok(Value::Null)
        }
        "user_id" => Ok(json!(s.user_id())),
        "set_lifetime" => {
            s.set_lifetime(Duration::from_secs(arg1.as_u64().unwrap()));
            Ok(Value::Null)
        }
        "put_for" => s
            .put_for(key, arg, Duration::from_millis(op[3].as_u64().unwrap()))
            .map(|()| Value::Null),
        other => panic!("unknown op {other}"),
    };
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(e) => json!({ "err": e.to_string() }),
    }
}

async fn none() -> &'static str {
    "none"
}

async fn read(session: Session) -> Json<Value> {
    Json(session.get_value("counter").unwrap_or(Value::Null))
}

async fn incr(session: Session) -> Result<String, keepsake::Error> {
    Ok(session.increment("counter", 1)?.to_string())
}

async fn write_key(session: Session, Path(key): Path<String>) -> Result<(), keepsake::Error> {
    session.put(&key, true)
}

async fn fail_after_write(session: Session) -> StatusCode {
    let _ = session.put("written_by_failing_request", true);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn current_handle() -> Result<String, keepsake::SessionFailure> {
    let handle = SessionHandle::current().expect("inside a request");
    let session = handle.load().await?;
    session.put("via_current", true).unwrap();
    Ok("ok".into())
}

/// Logs to the test's output (shown for failing tests).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,keepsake=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The application under test (without the session layer).
pub fn app() -> Router {
    init_tracing();
    Router::new()
        .route("/run", post(run_ops))
        .route("/slow_run", post(slow_run))
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/incr", post(incr))
        .route("/write/{key}", post(write_key))
        .route("/fail", post(fail_after_write))
        .route("/current", post(current_handle))
        .route("/slow/{key}", post(slow_write))
        .route("/slow_login", post(slow_login))
}

/// Runs ops through the layer and returns their results.
pub async fn run(client: &TestClient, ops: Value) -> Vec<Value> {
    let response = client.post_json("/run", &ops).await;
    response.assert_status(200);
    serde_json::from_value(response.json()).unwrap()
}

/// The `ok` value of a result.
pub fn ok(result: &Value) -> Value {
    assert!(result.get("err").is_none(), "unexpected error: {result}");
    result["ok"].clone()
}

/// Counts calls per operation, passing them through.
#[derive(Debug)]
pub struct Counting<S> {
    pub inner: S,
    pub calls: Arc<[AtomicUsize; 8]>,
}

pub const LOAD: usize = 0;
pub const CREATE: usize = 1;
pub const SAVE: usize = 2;
pub const TOUCH: usize = 3;
pub const DESTROY: usize = 4;
pub const GC: usize = 5;
/// In-place saves, counted here and among the saves (`SAVE`) too; not part
/// of `counts` or `total`.
pub const IN_PLACE: usize = 6;

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::new(Default::default()),
        }
    }
    pub fn counts(calls: &[AtomicUsize; 8]) -> [usize; 6] {
        std::array::from_fn(|i| calls[i].load(Ordering::SeqCst))
    }
    pub fn total(calls: &[AtomicUsize; 8]) -> usize {
        Self::counts(calls).iter().sum()
    }
}

#[keepsake::async_trait]
impl<S: SessionStore> SessionStore for Counting<S> {
    async fn load(&self, key: &StorageKey) -> keepsake::Result<Option<Record>> {
        self.calls[LOAD].fetch_add(1, Ordering::SeqCst);
        self.inner.load(key).await
    }
    async fn create(&self, record: &Record) -> keepsake::Result<Cas> {
        self.calls[CREATE].fetch_add(1, Ordering::SeqCst);
        self.inner.create(record).await
    }
    async fn save(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.calls[SAVE].fetch_add(1, Ordering::SeqCst);
        self.inner.save(record, expected).await
    }
    async fn save_in_place(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.calls[SAVE].fetch_add(1, Ordering::SeqCst);
        self.calls[IN_PLACE].fetch_add(1, Ordering::SeqCst);
        self.inner.save_in_place(record, expected).await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        version: i64,
        last: i64,
        expires: i64,
    ) -> keepsake::Result<Cas> {
        self.calls[TOUCH].fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key, version, last, expires).await
    }
    async fn destroy(&self, key: &StorageKey) -> keepsake::Result<()> {
        self.calls[DESTROY].fetch_add(1, Ordering::SeqCst);
        self.inner.destroy(key).await
    }
    async fn gc(&self, now: i64) -> keepsake::Result<u64> {
        self.calls[GC].fetch_add(1, Ordering::SeqCst);
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
        "counting"
    }
}

/// Fails the chosen operations with a backend error.
#[derive(Debug)]
pub struct Failing<S> {
    pub inner: S,
    pub fail: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl<S> Failing<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail: Arc::default(),
        }
    }
    fn check(&self, op: usize, name: &'static str) -> keepsake::Result<()> {
        if self.fail.lock().unwrap().contains(&op) {
            return Err(keepsake::Error::backend(
                "failing",
                name,
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "injected outage"),
            ));
        }
        Ok(())
    }
}

#[keepsake::async_trait]
impl<S: SessionStore> SessionStore for Failing<S> {
    async fn load(&self, key: &StorageKey) -> keepsake::Result<Option<Record>> {
        self.check(LOAD, "load")?;
        self.inner.load(key).await
    }
    async fn create(&self, record: &Record) -> keepsake::Result<Cas> {
        self.check(CREATE, "create")?;
        self.inner.create(record).await
    }
    async fn save(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.check(SAVE, "save")?;
        self.inner.save(record, expected).await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        version: i64,
        last: i64,
        expires: i64,
    ) -> keepsake::Result<Cas> {
        self.check(TOUCH, "touch")?;
        self.inner.touch(key, version, last, expires).await
    }
    async fn destroy(&self, key: &StorageKey) -> keepsake::Result<()> {
        self.check(DESTROY, "destroy")?;
        self.inner.destroy(key).await
    }
    async fn gc(&self, now: i64) -> keepsake::Result<u64> {
        self.check(GC, "gc")?;
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
        "failing"
    }
}

/// Logs in (`regenerate`), then holds the request open before the layer saves.
pub async fn slow_login(session: Session) -> Result<(), keepsake::Error> {
    session.regenerate();
    session.put("logged_in", true)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Writes `key`, then holds the request open for a while before the layer saves.
pub async fn slow_write(session: Session, Path(key): Path<String>) -> Result<(), keepsake::Error> {
    session.put(&key, true)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
