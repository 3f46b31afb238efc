//! Faults: a store that fails, stalls, lies or keeps losing the race, and
//! real outages (PostgreSQL connections killed, a Redis server killed and
//! restarted under load). Every failure is a clean response (500 or the
//! application's error handler) with its cause logged; nothing
//! acknowledged is lost; no record is ever half written; `regenerate` never
//! loses the session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse as _;
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use keepsake::testing::TestClient;
use keepsake::{
    Error, MemoryStore, Payload, SessionFailure, SessionId, SessionLayer, SessionStore,
};
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use common::faults::{
    FaultHandle, Faulty, Ledger, LoadSpec, Logs, create_sessions, run_load, verify,
    wait_until_served,
};
use common::{CREATE, DESTROY, LOAD, SAVE};

/// A faulty memory store, its handle, and the layer over it.
fn faulty_memory() -> (Arc<Faulty<MemoryStore>>, FaultHandle, SessionLayer) {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let handle = store.handle();
    let layer = SessionLayer::from_arc(store.clone() as Arc<dyn SessionStore>).with_lottery(0, 1);
    (store, handle, layer)
}

struct Answer {
    status: StatusCode,
    failure: Option<SessionFailure>,
    set_cookie: Vec<String>,
    body: String,
}

async fn send(app: &Router, id: Option<&str>, ops: Value) -> Answer {
    let mut request = Request::post("/run").header(CONTENT_TYPE, "application/json");
    if let Some(id) = id {
        request = request.header(COOKIE, format!("keepsake_session={id}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(ops.to_string())).unwrap())
        .await
        .unwrap();
    let failure = response.extensions().get::<SessionFailure>().cloned();
    let set_cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        failure,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn cookie_value(answer: &Answer) -> Option<String> {
    answer.set_cookie.iter().find_map(|c| {
        let value = c.split(';').next()?.strip_prefix("keepsake_session=")?;
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// A stored session holding `data`; returns its id.
async fn stored(app: &Router, data: Value) -> String {
    let ops: Vec<Value> = data
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| json!(["put", k, v]))
        .collect();
    let answer = send(app, None, Value::Array(ops)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    cookie_value(&answer).expect("a new session's cookie")
}

/// The raw stored record's data and version.
async fn raw(store: &dyn SessionStore, id: &str) -> Option<(Map<String, Value>, i64)> {
    let key = SessionId::parse(id).unwrap().storage_key();
    let record = store.load(&key).await.unwrap()?;
    Some((
        Payload::decode(&record.payload).unwrap().data,
        record.version,
    ))
}

// ---------------------------------------------------------------------------
// Errors surface as the configured response, with the cause logged.

#[tokio::test]
async fn a_load_failure_answers_500_with_the_cause_logged() {
    let (_store, handle, layer) = faulty_memory();
    let app = common::app().layer(layer);
    let id = stored(&app, json!({"user": "ada"})).await;
    let (logs, _guard) = Logs::capture();
    handle.outage(LOAD);
    let answer = send(&app, Some(&id), json!([["get", "user"]])).await;
    assert_eq!(answer.status, 500);
    assert!(answer.set_cookie.is_empty(), "an error sets no cookie");
    let failure = answer
        .failure
        .expect("the failure is attached to the response");
    assert!(
        matches!(
            failure.error(),
            Error::Backend {
                operation: "load",
                ..
            }
        ),
        "{failure}"
    );
    assert!(
        failure
            .to_string()
            .contains("injected fault: load call failed"),
        "{failure}"
    );
    let errors = logs.at("ERROR").join("\n");
    assert!(
        errors.contains("injected fault: load call failed"),
        "the cause is logged: {}",
        logs.text()
    );
    assert!(!logs.text().contains(&id), "the id is never logged");

    handle.heal();
    let answer = send(&app, Some(&id), json!([["get", "user"]])).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains("ada"),
        "the session survived the outage"
    );
}

#[tokio::test]
async fn a_save_failure_answers_with_the_custom_error_handler() {
    let (store, handle, layer) = faulty_memory();
    let layer = layer.with_error_handler(|failure| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("please try again ({})", failure.error()),
        )
            .into_response()
    });
    let app = common::app().layer(layer);
    let id = stored(&app, json!({"user": "ada"})).await;
    let before = raw(&*store, &id).await;
    let (logs, _guard) = Logs::capture();
    handle.outage(SAVE);
    let answer = send(&app, Some(&id), json!([["put", "cart", 3]])).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer.body.starts_with("please try again"),
        "{}",
        answer.body
    );
    assert!(
        answer.failure.is_some(),
        "the failure is attached to the custom response too"
    );
    assert!(
        logs.at("ERROR")
            .join("\n")
            .contains("injected fault: save call failed")
    );
    assert_eq!(
        raw(&*store, &id).await,
        before,
        "the failed save changed nothing"
    );
}

#[tokio::test]
async fn a_failed_create_answers_500_and_sets_no_cookie() {
    let (_store, handle, layer) = faulty_memory();
    let app = common::app().layer(layer);
    handle.outage(CREATE);
    let answer = send(&app, None, json!([["put", "user", "ada"]])).await;
    assert_eq!(answer.status, 500);
    assert!(answer.set_cookie.is_empty());
    handle.heal();
    let answer = send(&app, None, json!([["put", "user", "ada"]])).await;
    assert_eq!(answer.status, 200);
    assert!(cookie_value(&answer).is_some());
}

// ---------------------------------------------------------------------------
// Compare-and-swap retries are bounded.

#[tokio::test]
async fn cas_retries_stop_at_the_bound_with_a_conflict_error() {
    let (store, handle, layer) = faulty_memory();
    let app = common::app().layer(layer.with_max_save_attempts(4));
    let id = stored(&app, json!({"user": "ada"})).await;
    let (_, version) = raw(&*store, &id).await.unwrap();
    let (logs, _guard) = Logs::capture();
    let saves = handle.calls(SAVE);
    handle.rival_always_wins(true);
    let answer = send(&app, Some(&id), json!([["put", "mine", 1]])).await;
    handle.heal();

    assert_eq!(answer.status, 500);
    let failure = answer.failure.expect("the failure is attached");
    assert!(
        matches!(failure.error(), Error::Conflict { attempts: 4 }),
        "{failure}"
    );
    assert_eq!(
        handle.calls(SAVE) - saves,
        4,
        "exactly the configured attempts"
    );
    assert!(
        logs.at("ERROR")
            .join("\n")
            .contains("still conflicted after 4 attempts")
    );
    let (data, now) = raw(&*store, &id).await.unwrap();
    assert_eq!(
        data.get("rival"),
        Some(&json!(4)),
        "the concurrent writer's saves all landed"
    );
    assert!(
        !data.contains_key("mine"),
        "the request that gave up wrote nothing"
    );
    assert_eq!(now, version + 4);
}

/// `SessionLayer::with_max_save_attempts` documents a default of 16.
#[tokio::test]
async fn the_default_save_attempt_bound_is_the_documented_sixteen() {
    let (_store, handle, layer) = faulty_memory();
    let app = common::app().layer(layer);
    let id = stored(&app, json!({"user": "ada"})).await;
    let saves = handle.calls(SAVE);
    handle.rival_always_wins(true);
    let answer = send(&app, Some(&id), json!([["put", "mine", 1]])).await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        handle.calls(SAVE) - saves,
        16,
        "the doc of with_max_save_attempts says \"Defaults to 16\""
    );
}

// ---------------------------------------------------------------------------
// No half-applied record.

/// The request of the all-or-nothing checks: twenty new keys, a forget, an
/// increment and a push.
fn big_change() -> Value {
    let mut ops: Vec<Value> = (0..20)
        .map(|i| json!(["put", format!("n{i}"), i]))
        .collect();
    ops.push(json!(["forget", "k0"]));
    ops.push(json!(["increment", "counter", 5]));
    ops.push(json!(["push", "list", "x"]));
    Value::Array(ops)
}

/// The stored data holds all of `big_change` or none of it.
fn all_or_nothing(data: &Map<String, Value>) -> Result<bool, String> {
    let new_keys = (0..20)
        .filter(|i| data.contains_key(&format!("n{i}")))
        .count();
    let applied = (
        new_keys == 20,
        !data.contains_key("k0"),
        data.get("counter") == Some(&json!(15)),
        data.get("list") == Some(&json!(["a", "x"])),
    );
    match applied {
        (true, true, true, true) => Ok(true),
        (false, false, false, false) if new_keys == 0 => {
            if data.get("counter") == Some(&json!(10)) && data.get("list") == Some(&json!(["a"])) {
                Ok(false)
            } else {
                Err(format!(
                    "the record was damaged: {}",
                    Value::Object(data.clone())
                ))
            }
        }
        _ => Err(format!(
            "half of a request's changes were stored: {}",
            Value::Object(data.clone())
        )),
    }
}

#[tokio::test]
async fn a_failed_save_never_leaves_a_half_applied_record() {
    // What goes wrong, the status the client gets, and whether the
    // request's changes are stored.
    type Setup = fn(&FaultHandle);
    let scenarios: [(&str, Setup, u16, bool); 5] = [
        ("the save fails", |h| h.fail_call(SAVE, 1), 500, false),
        (
            "a concurrent save wins, then the retry fails",
            |h| {
                h.rival_always_wins(true);
                h.fail_call(SAVE, 2);
            },
            500,
            false,
        ),
        (
            "a concurrent save wins, then the reload fails",
            |h| {
                h.rival_always_wins(true);
                h.fail_call(LOAD, 2);
            },
            500,
            false,
        ),
        (
            "the save is applied but its reply is lost",
            |h| h.fail_after_apply(SAVE),
            500,
            true,
        ),
        (
            "every call is slow",
            |h| h.set_latency(Duration::from_millis(20)),
            200,
            true,
        ),
    ];
    for (name, setup, status, stored_changes) in scenarios {
        let (store, handle, layer) = faulty_memory();
        let app = common::app().layer(layer);
        let id = stored(
            &app,
            json!({"k0": 0, "k1": 1, "counter": 10, "list": ["a"]}),
        )
        .await;
        setup(&handle);
        let answer = send(&app, Some(&id), big_change()).await;
        handle.heal();
        assert_eq!(answer.status.as_u16(), status, "{name}: {}", answer.body);
        let (data, _) = raw(&*store, &id)
            .await
            .expect("the session is still stored");
        let applied = all_or_nothing(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(applied, stored_changes, "{name}");
        assert!(data.contains_key("k1"), "{name}: untouched data survives");
    }
}

// ---------------------------------------------------------------------------
// regenerate never loses the session.

#[tokio::test]
async fn regenerate_keeps_the_session_when_destroying_the_old_record_fails() {
    let (store, handle, layer) = faulty_memory();
    let client = TestClient::new(common::app(), layer);
    common::run(&client, json!([["put", "user", "ada"]])).await;
    let old = client.cookie().unwrap();
    handle.outage(DESTROY);
    let response = client
        .post_json("/run", &json!([["regenerate"], ["put", "logged_in", true]]))
        .await;
    handle.heal();
    println!(
        "regenerate with a failing destroy of the old record: status {}",
        response.status
    );
    let held = client.cookie().unwrap();
    let r = common::run(&client, json!([["get", "user"], ["get", "logged_in"]])).await;
    assert_eq!(common::ok(&r[0]), json!("ada"), "the session is not lost");
    if response.status == 200 {
        assert_ne!(held, old, "a 200 hands out the new id");
        assert_eq!(common::ok(&r[1]), json!(true));
    } else {
        assert_eq!(response.status, 500);
        assert_eq!(held, old, "a failed regenerate keeps the old cookie");
        assert!(
            raw(&*store, &old).await.is_some(),
            "the old record is still there"
        );
    }
    // With the store healthy again, regenerate completes.
    common::run(&client, json!([["regenerate"]])).await;
    client
        .session()
        .await
        .assert_regenerated()
        .assert_has_value("user", "ada");
}

#[tokio::test]
async fn regenerate_keeps_the_session_when_storing_the_new_record_fails() {
    let (store, handle, layer) = faulty_memory();
    let client = TestClient::new(common::app(), layer);
    common::run(&client, json!([["put", "user", "ada"]])).await;
    let old = client.cookie().unwrap();
    let destroys = handle.calls(DESTROY);
    handle.outage(CREATE);
    let response = client
        .post_json("/run", &json!([["regenerate"], ["put", "logged_in", true]]))
        .await;
    handle.heal();
    assert_eq!(response.status, 500);
    assert_eq!(
        handle.calls(DESTROY),
        destroys,
        "the old record is not touched"
    );
    assert_eq!(client.cookie(), Some(old.clone()));
    let (data, _) = raw(&*store, &old)
        .await
        .expect("the old record is still there");
    assert_eq!(Value::Object(data), json!({"user": "ada"}));
}

/// Two tabs: one logs in (`regenerate`) while the other adds to the cart,
/// and the cart is saved while the login is still running. The login retires
/// the old record by compare-and-swap, sees the cart write, and carries it
/// into the logged-in session (docs/semantics.md: distinct keys
/// written by concurrent requests all land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_saved_while_another_tab_logs_in_is_carried_into_the_new_session() {
    let (_store, _handle, layer) = faulty_memory();
    let client = TestClient::new(common::app(), layer);
    common::run(&client, json!([["put", "user", "ada"]])).await;
    let login_tab = client.fork();
    let login = tokio::spawn(async move { login_tab.post("/slow_login", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cart = client.fork().post("/write/cart", &[]).await;
    assert_eq!(cart.status, 200, "the cart write is acknowledged");
    assert_eq!(login.await.unwrap(), 200);
    client
        .session()
        .await
        .assert_regenerated()
        .assert_has_value("logged_in", true)
        .assert_has("cart");
}

/// The other order: a request that loaded the session before a login and
/// saves after the login retired the old record is not carried into the
/// logged-in session, does not bring the old record back, and is not
/// answered with a silent success: it fails with 409 (`Error::Ended`) and
/// sends no cookie (docs/semantics.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_saved_after_another_tab_logged_in_fails_with_409() {
    let (store, _handle, layer) = faulty_memory();
    let client = TestClient::new(common::app(), layer);
    common::run(&client, json!([["put", "user", "ada"]])).await;
    let old = client.cookie().unwrap();
    let slow_tab = client.fork();
    let slow = tokio::spawn(async move {
        let response = slow_tab.post("/slow/late", &[]).await;
        (response.status.as_u16(), response.set_cookies().len())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::run(&client, json!([["regenerate"], ["put", "logged_in", true]])).await;
    assert_eq!(
        slow.await.unwrap(),
        (409, 0),
        "a late write is refused, and the browser keeps the new id"
    );
    assert!(
        raw(&*store, &old).await.is_none(),
        "the old record stays retired"
    );
    client
        .session()
        .await
        .assert_has_value("logged_in", true)
        .assert_missing("late");
}

// ---------------------------------------------------------------------------
// A store that lies, and the ledger that catches it.

#[tokio::test]
async fn a_created_session_the_store_lost_gives_a_fresh_session() {
    let (_store, handle, layer) = faulty_memory();
    let app = common::app().layer(layer);
    handle.drop_writes(true);
    let answer = send(&app, None, json!([["put", "user", "ada"]])).await;
    handle.heal();
    assert_eq!(answer.status, 200, "the store acknowledged the write");
    assert_eq!(handle.dropped(), 1);
    let id = cookie_value(&answer).unwrap();
    let answer = send(&app, Some(&id), json!([["all"], ["id"]])).await;
    assert_eq!(answer.status, 200);
    let results: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(results[0]["ok"], json!({}));
    assert_ne!(results[1]["ok"], json!(id), "the lost id is not adopted");
}

/// The check the soak and the outage tests rely on is not vacuous: a store
/// that drops writes after acknowledging them is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_catches_writes_a_store_dropped_after_acknowledging_them() {
    let (store, handle, layer) = faulty_memory();
    let apps = Arc::new(vec![common::app().layer(layer)]);
    let ids = Arc::new(create_sessions(&apps, 8).await);
    let ledger = Arc::new(Ledger::default());
    let spec = LoadSpec {
        clients: 4,
        requests: 200,
        until: None,
        hot_every: 0,
    };
    let stats = run_load(spec, apps.clone(), ids.clone(), ledger.clone()).await;
    assert_eq!(stats.acked, 200);
    verify(&*store, &ids, &ledger)
        .await
        .expect("nothing lost yet");

    handle.drop_writes(true);
    let stats = run_load(spec, apps, ids.clone(), ledger.clone()).await;
    assert_eq!(stats.acked, 200, "the store acknowledged every write");
    assert!(handle.dropped() > 0);
    let caught = verify(&*store, &ids, &ledger).await;
    assert!(
        caught
            .as_ref()
            .is_err_and(|e| e.contains("missing") || e.contains("counter")),
        "{caught:?}"
    );
}

// ---------------------------------------------------------------------------
// Latency widens every race; nothing is lost.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_calls_and_two_instances_lose_nothing() {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let handle = store.handle();
    let apps: Vec<Router> = (0..2)
        .map(|_| {
            let layer =
                SessionLayer::from_arc(store.clone() as Arc<dyn SessionStore>).with_lottery(0, 1);
            common::app().layer(layer)
        })
        .collect();
    let apps = Arc::new(apps);
    let ids = Arc::new(create_sessions(&apps, 4).await);
    handle.set_latency(Duration::from_millis(3));
    let ledger = Arc::new(Ledger::default());
    let spec = LoadSpec {
        clients: 16,
        requests: 400,
        until: None,
        hot_every: 2,
    };
    let stats = run_load(spec, apps, ids.clone(), ledger.clone()).await;
    handle.heal();
    assert_eq!(stats.failed, 0, "{:?}", stats.statuses);
    let verified = verify(&*store, &ids, &ledger).await.unwrap();
    println!(
        "slow store: {} requests, {} save conflicts retried, {} keys and {} increments verified",
        stats.requests,
        handle.conflicts(),
        verified.keys,
        verified.increments
    );
    assert!(
        handle.conflicts() > 0,
        "two instances on hot sessions conflict"
    );
}

// ---------------------------------------------------------------------------
// Real outages.

/// Runs `load` while `outage` happens, then checks the failures were clean,
/// the service recovers, and nothing acknowledged is missing.
async fn survive(
    name: &str,
    store: Arc<dyn SessionStore>,
    outage: impl std::future::Future<Output = String> + Send + 'static,
    seconds: u64,
) {
    let apps: Vec<Router> = (0..2)
        .map(|_| {
            let layer = SessionLayer::from_arc(Arc::clone(&store)).with_lottery(0, 1);
            common::app().layer(layer)
        })
        .collect();
    let apps = Arc::new(apps);
    let ids = Arc::new(create_sessions(&apps, 16).await);
    let ledger = Arc::new(Ledger::default());
    let spec = LoadSpec {
        clients: 8,
        requests: usize::MAX,
        until: Some(Instant::now() + Duration::from_secs(seconds)),
        hot_every: 4,
    };
    let load = tokio::spawn(run_load(spec, apps.clone(), ids.clone(), ledger.clone()));
    let what = tokio::spawn(outage).await.expect("the outage task");
    let stats = load.await.expect("the load");

    let unexpected: Vec<_> = stats
        .statuses
        .keys()
        .filter(|s| **s != 200 && **s != 500)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{name}: statuses {:?}",
        stats.statuses
    );
    let recovery = wait_until_served(&apps[0], &ids[0], Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{name}: no recovery: {e}"));
    for id in ids.iter() {
        for app in apps.iter() {
            let response = app
                .clone()
                .oneshot(
                    Request::post("/run")
                        .header(COOKIE, format!("keepsake_session={id}"))
                        .header(CONTENT_TYPE, "application/json")
                        .body(Body::from(r#"[["get","init"]]"#))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                200,
                "{name}: a request after the outage failed"
            );
        }
    }
    let verified = verify(&*store, &ids, &ledger)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "{name}: {what}; {} requests in {:.1} s: {} acknowledged, {} failed cleanly (500), slowest {:.0} ms; \
         recovered {:.0} ms after; {} acknowledged keys and {} increments all present ({} unacknowledged writes applied)",
        stats.requests,
        stats.elapsed.as_secs_f64(),
        stats.acked,
        stats.failed,
        stats.max_latency().as_secs_f64() * 1000.0,
        recovery.as_secs_f64() * 1000.0,
        verified.keys,
        verified.increments,
        verified.unacked_applied,
    );
    assert!(stats.acked > 0, "{name}: the load made progress");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_load_lose_no_acknowledged_write() {
    use keepsake_sqlx::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use keepsake_sqlx::sqlx::{Connection as _, PgConnection};

    let Some(url) = keepsake_core::test_kit::server_url("KEEPSAKE_TEST_POSTGRES_URL") else {
        return;
    };
    let key = SessionId::generate().storage_key();
    let suffix = &key.as_str()[..12];
    let table = format!("faults_{suffix}");
    // Only this test's own connections are killed: they carry its name.
    let app_name = format!("keepsake-faults-{suffix}");
    let options: PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options.clone().application_name(&app_name))
        .await
        .unwrap();
    let pg = keepsake::PostgresStore::new(pool.clone())
        .with_table_name(&table)
        .unwrap();
    pg.migrate().await.unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(pg);

    let killer_options = options.application_name(&format!("{app_name}-killer"));
    let outage = async move {
        let mut conn = PgConnection::connect_with(&killer_options).await.unwrap();
        let mut killed = 0i64;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let n: i64 = keepsake_sqlx::sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&app_name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            killed += n;
        }
        assert!(killed > 0, "no connection of the test was found to kill");
        format!("{killed} connections killed in 6 rounds")
    };
    survive("postgres", store, outage, 4).await;
    let _ = keepsake_sqlx::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_loses_no_acknowledged_write() {
    use common::faults::RedisServer;

    if keepsake_core::test_kit::server_url("KEEPSAKE_TEST_REDIS_URL").is_none() {
        return;
    }
    let server = RedisServer::start().expect("redis-server is installed where Redis is tested");
    let url = server.url();
    let server = Arc::new(std::sync::Mutex::new(server));
    let store: Arc<dyn SessionStore> = Arc::new(
        keepsake::RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix("keepsake-faults:"),
    );
    let controlled = Arc::clone(&server);
    let outage = async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let down = Instant::now();
        tokio::task::block_in_place(|| controlled.lock().unwrap().kill());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| controlled.lock().unwrap().restart());
        format!(
            "redis-server killed (SIGKILL) and restarted on the same port after {:.1} s",
            down.elapsed().as_secs_f64()
        )
    };
    survive("redis", Arc::clone(&store), outage, 5).await;
    // Dropping the last handle kills the server.
    drop(server);
}
