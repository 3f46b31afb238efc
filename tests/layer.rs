//! The layer end to end on the memory store: every Session method through
//! real requests, cookies, security, failure paths and store call counts.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::{Counting, Failing, app, ok, run};
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use keepsake::middleware::{ProxyHeader, TrustedProxies};
use keepsake::testing::TestClient;
use keepsake::{
    MemoryStore, SameSite, Session, SessionFailure, SessionId, SessionLayer, SessionStore,
};
use serde_json::json;
use tower::ServiceExt as _;

fn client() -> TestClient {
    TestClient::new(
        app(),
        SessionLayer::new(MemoryStore::new()).with_lottery(0, 1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_layer_suite() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    common::suite::run_suite(|| {
        let store = Arc::clone(&store);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn reading_methods() {
    let c = client();
    run(
        &c,
        json!([
            ["put", "user.name", "x"],
            ["put", "teams", [{"name": "a"}, {"name": "b"}]],
            ["put", "zero", 0], ["put", "f", false], ["put", "e", ""], ["put", "o", {}], ["put", "l", []],
            ["put", "nul", null]
        ]),
    )
    .await;
    let r = run(
        &c,
        json!([
            ["get", "user.name"],
            ["get", "teams.1.name"],
            ["get", "missing"],
            ["get", "nul"],
            ["get_or", "missing", "d"],
            ["get_or", "nul", "d"],
            ["has", "zero"],
            ["has", "f"],
            ["has", "e"],
            ["has", "o"],
            ["has", "l"],
            ["has", "nul"],
            ["has", "missing"],
            ["exists", "nul"],
            ["exists", "missing"],
            ["missing", "missing"],
            ["missing", "nul"],
            ["has_all", ["zero", "f"]],
            ["has_all", ["zero", "nul"]],
            ["has_any", ["nul", "missing"]],
            ["has_any", ["nul", "e"]],
            ["exists_all", ["nul", "zero"]],
            ["exists_all", ["nul", "missing"]],
            ["only", ["zero", "user.name", "missing"]],
            ["except", ["user.name", "teams", "zero", "f", "e", "o", "l"]]
        ]),
    )
    .await;
    let values: Vec<_> = r.iter().map(ok).collect();
    assert_eq!(
        values,
        vec![
            json!("x"),
            json!("b"),
            json!(null),
            json!(null),
            json!("d"),
            json!(null),
            json!(true),
            json!(true),
            json!(true),
            json!(true),
            json!(true),
            json!(false),
            json!(false),
            json!(true),
            json!(false),
            json!(true),
            json!(false),
            json!(true),
            json!(false),
            json!(false),
            json!(true),
            json!(true),
            json!(false),
            json!({"zero": 0}),
            json!({"user": {}, "nul": null}),
        ]
    );
}

#[tokio::test]
async fn writing_methods() {
    let c = client();
    let r = run(
        &c,
        json!([
            ["put", "s", "abc"], ["put", "s.sub", 1], ["get", "s"],
            ["put", "u.name", "x"], ["forget", "u.name"], ["get", "u"], ["has", "u"], ["forget", "nope.deeper"],
            ["put_many", {"a": 1, "b": 2}],
            ["remember", "r", 5], ["remember", "r", 6], ["put", "rn", null], ["remember", "rn", 7],
            ["push", "list", 1], ["push", "list", 2], ["push", "s", 3], ["put", "pn", null], ["push", "pn", "x"],
            ["increment", "n", 1], ["increment", "n", 5], ["decrement", "n", 2], ["increment", "absent", 3],
            ["increment", "list", 1], ["put", "str", "10"], ["increment", "str", 1],
            ["put", "big", 9_223_372_036_854_775_807_i64], ["increment", "big", 1], ["get", "big"],
            ["increment_f", "fl", 0.5], ["increment_f", "fl", 0.25],
            ["pull", "a"], ["has", "a"], ["pull", "missing"],
            ["forget_many", ["b", "r"]], ["exists_all", ["b"]], ["exists", "r"]
        ]),
    )
    .await;
    assert_eq!(ok(&r[2]), json!({"sub": 1}));
    assert_eq!(ok(&r[5]), json!({}));
    assert_eq!(ok(&r[6]), json!(true));
    assert_eq!(
        (ok(&r[9]), ok(&r[10]), ok(&r[12])),
        (json!(5), json!(5), json!(7))
    );
    assert!(
        r[15]["err"].as_str().unwrap().contains("not a list"),
        "{}",
        r[15]
    );
    assert_eq!(
        (ok(&r[18]), ok(&r[19]), ok(&r[20]), ok(&r[21])),
        (json!(1), json!(6), json!(4), json!(3))
    );
    assert!(
        r[22]["err"].is_string() && r[24]["err"].is_string(),
        "non-numbers are errors"
    );
    assert!(
        r[26]["err"].as_str().unwrap().contains("overflow"),
        "{}",
        r[26]
    );
    assert_eq!(
        ok(&r[27]),
        json!(i64::MAX),
        "an overflow leaves the value unchanged"
    );
    assert_eq!((ok(&r[28]), ok(&r[29])), (json!(0.5), json!(0.75)));
    assert_eq!(
        (ok(&r[30]), ok(&r[31]), ok(&r[32])),
        (json!(1), json!(false), json!(null))
    );
    assert_eq!((ok(&r[34]), ok(&r[35])), (json!(false), json!(false)));

    // Everything above persisted.
    let snapshot = c.session().await;
    snapshot
        .assert_has_value("list", [1, 2])
        .assert_has_value("pn", ["x"])
        .assert_has_value("s", json!({"sub": 1}))
        .assert_has_value("n", 4)
        .assert_missing("a");

    // flush empties data and metadata.
    let r = run(
        &c,
        json!([
            ["token"],
            ["flash", "f", 1],
            ["set_previous_url", "/x"],
            ["flush"],
            ["all"],
            ["previous_url"],
            ["token"]
        ]),
    )
    .await;
    assert_eq!(ok(&r[4]), json!({}));
    assert_eq!(ok(&r[5]), json!(null));
    assert_ne!(ok(&r[6]), ok(&r[0]), "flush drops the CSRF token");
}

#[tokio::test]
async fn no_key_is_reserved() {
    let c = client();
    run(&c, json!([["put", "_token", "mine"], ["put", "_flash", {"new": []}], ["token"], ["flash", "f", 1], ["flash_input", {"email": "a@b"}]])).await;
    let r = run(&c, json!([["all"], ["old_input", "email"]])).await;
    assert_eq!(
        ok(&r[0]),
        json!({"_token": "mine", "_flash": {"new": []}, "f": 1})
    );
    assert_eq!(ok(&r[1]), json!("a@b"));
    let r = run(&c, json!([["old_input", "email"]])).await;
    assert_eq!(ok(&r[0]), json!(null), "old input lasts one more request");
}

#[tokio::test]
async fn token_identity_and_user() {
    let c = client();
    let r = run(
        &c,
        json!([
            ["token"],
            ["token"],
            ["id"],
            ["user_id"],
            ["set_user_id", "42"],
            ["user_id"]
        ]),
    )
    .await;
    let token = ok(&r[0]);
    assert!(token.as_str().unwrap().len() >= 40);
    assert_eq!(ok(&r[1]), token, "the token is stable");
    assert_eq!(
        ok(&r[2]),
        json!(c.cookie().unwrap()),
        "id() is the cookie's id"
    );
    assert_eq!((ok(&r[3]), ok(&r[5])), (json!(null), json!("42")));
    let r = run(
        &c,
        json!([["token"], ["regenerate_token"], ["token"], ["user_id"]]),
    )
    .await;
    assert_eq!(ok(&r[0]), token);
    assert_ne!(ok(&r[1]), token);
    assert_eq!(ok(&r[2]), ok(&r[1]));
    assert_eq!(ok(&r[3]), json!("42"));
}

#[tokio::test]
async fn put_for_disappears_after_its_ttl() {
    let c = client();
    run(
        &c,
        json!([["put_for", "otp", "123", 300], ["put", "stay", 1]]),
    )
    .await;
    assert_eq!(ok(&run(&c, json!([["get", "otp"]])).await[0]), json!("123"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = run(&c, json!([["get", "otp"], ["get", "stay"]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!(null), json!(1)));
}

#[tokio::test]
async fn per_session_lifetime_sets_the_cookie_max_age() {
    let c = client();
    let response = c
        .post_json("/run", &json!([["put", "a", 1], ["set_lifetime", 86400]]))
        .await;
    let cookie = response.set_cookies().join("\n");
    assert!(cookie.contains("Max-Age=86400"), "{cookie}");
}

#[tokio::test]
async fn anonymous_requests_set_no_cookie_and_store_nothing() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let c = TestClient::new(app(), SessionLayer::new(store).with_lottery(0, 1));
    let response = c
        .post_json("/run", &json!([["get", "x"], ["has", "y"], ["all"]]))
        .await;
    assert!(response.set_cookies().is_empty());
    assert_eq!(
        Counting::<MemoryStore>::counts(&calls),
        [0; 6],
        "no id sent: nothing to load, nothing to store"
    );
}

#[tokio::test]
async fn cookie_attributes_follow_the_config() {
    let c = client();
    let response = c.post_json("/run", &json!([["put", "a", 1]])).await;
    let cookie = &response.set_cookies()[0];
    let id = c.cookie().unwrap();
    assert!(SessionId::parse(&id).is_some());
    for part in [
        "keepsake_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=7200",
        "Expires=",
    ] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }

    let layer = SessionLayer::new(MemoryStore::new())
        .with_cookie_name("app")
        .with_path("/app")
        .with_domain("example.com")
        .with_secure(false)
        .with_http_only(false)
        .with_same_site(SameSite::Strict)
        .with_expire_on_close(true);
    let c = TestClient::new(app(), layer);
    let response = c.post_json("/run", &json!([["put", "a", 1]])).await;
    let cookie = &response.set_cookies()[0];
    assert!(cookie.starts_with("app="), "{cookie}");
    for part in ["Path=/app", "Domain=example.com", "SameSite=Strict"] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    for part in ["HttpOnly", "Secure", "Max-Age", "Expires"] {
        assert!(!cookie.contains(part), "{part} present in {cookie}");
    }
}

#[tokio::test]
async fn malformed_and_unknown_ids_are_never_adopted() {
    let store = Arc::new(MemoryStore::new());
    let layer = SessionLayer::from_arc(store.clone()).with_lottery(0, 1);
    let c = TestClient::new(app(), layer);
    let unknown = SessionId::generate();
    for value in [
        "../../etc/passwd",
        "short",
        &"!".repeat(43),
        unknown.as_str(),
        "",
    ] {
        c.set_cookie(Some(value.to_owned()));
        let r = run(&c, json!([["put", "a", 1], ["id"]])).await;
        let id = ok(&r[1]);
        assert_ne!(id, json!(value), "{value:?} was adopted");
        assert!(SessionId::parse(id.as_str().unwrap()).is_some());
        assert_eq!(c.cookie(), Some(id.as_str().unwrap().to_owned()));
    }
    assert!(store.load(&unknown.storage_key()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_stale_cookie_is_left_alone() {
    // Removing it could delete a newer cookie that a concurrent response (a
    // login in another tab) has just set.
    let c = client();
    c.set_cookie(Some(SessionId::generate().as_str().to_owned()));
    let response = c.post_json("/run", &json!([["get", "a"]])).await;
    assert!(response.set_cookies().is_empty());
}

#[tokio::test]
async fn store_calls_are_counted() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let c = TestClient::new(app(), SessionLayer::new(store).with_lottery(0, 1));
    c.post("/incr", &[]).await.assert_status(200);
    let before = Counting::<MemoryStore>::total(&calls);

    c.get("/none").await.assert_status(200);
    assert_eq!(
        Counting::<MemoryStore>::total(&calls) - before,
        0,
        "untouched handler: no store call"
    );

    let response = c.get("/read").await;
    assert_eq!(response.json(), json!(1));
    assert_eq!(
        Counting::<MemoryStore>::total(&calls) - before,
        1,
        "read within touch_after: one load"
    );
    assert!(
        response.set_cookies().is_empty(),
        "nothing moved: no cookie"
    );

    c.post("/incr", &[]).await.assert_status(200);
    assert_eq!(
        Counting::<MemoryStore>::total(&calls) - before,
        3,
        "write: load + save"
    );
    let counts = Counting::<MemoryStore>::counts(&calls);
    assert_eq!(
        (
            counts[common::LOAD],
            counts[common::CREATE],
            counts[common::SAVE]
        ),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_stale_session_is_touched_not_rewritten() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let c = TestClient::new(
        app(),
        SessionLayer::new(store)
            .with_lottery(0, 1)
            .with_touch_after(Duration::ZERO),
    );
    c.post("/incr", &[]).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = c.get("/read").await;
    let counts = Counting::<MemoryStore>::counts(&calls);
    assert_eq!((counts[common::SAVE], counts[common::TOUCH]), (0, 1));
    assert_eq!(
        response.set_cookies().len(),
        1,
        "the expiry moved: the cookie is re-sent"
    );
}

#[tokio::test]
async fn server_errors_save_nothing_unless_configured() {
    let c = client();
    run(&c, json!([["put", "a", 1]])).await;
    c.post("/fail", &[]).await.assert_status(500);
    c.session()
        .await
        .assert_missing("written_by_failing_request");

    let c = TestClient::new(
        app(),
        SessionLayer::new(MemoryStore::new()).with_save_on_server_error(true),
    );
    run(&c, json!([["put", "a", 1]])).await;
    c.post("/fail", &[]).await.assert_status(500);
    c.session().await.assert_has("written_by_failing_request");
}

/// A logout whose record was retired (it no longer loads) succeeds even when
/// removing the retired record fails: gc removes it later.
#[tokio::test]
async fn a_failed_removal_after_a_retired_logout_still_logs_out() {
    let store = Failing::new(MemoryStore::new());
    let fail = Arc::clone(&store.fail);
    let client = TestClient::new(common::app(), SessionLayer::new(store).with_lottery(0, 1));
    run(&client, json!([["put", "user", "ada"]])).await;
    let old = client.cookie().unwrap();
    fail.lock().unwrap().push(common::DESTROY);
    let response = client.post_json("/run", &json!([["invalidate"]])).await;
    response.assert_status(200);
    fail.lock().unwrap().clear();
    let browser = client.new_browser();
    browser.set_cookie(Some(old));
    browser.session().await.assert_missing("user");
}

#[tokio::test]
async fn store_failures_become_500s_with_the_error_attached() {
    for (op, request) in [
        (common::LOAD, "read"),
        (common::SAVE, "incr"),
        (common::CREATE, "fresh"),
        (common::TOUCH, "touch"),
        // A logout retires the record by a compare-and-swap save; the
        // destroy after it only frees space (see below).
        (common::SAVE, "invalidate"),
    ] {
        let store = Failing::new(MemoryStore::new());
        let fail = Arc::clone(&store.fail);
        let layer = SessionLayer::new(store)
            .with_lottery(0, 1)
            .with_touch_after(Duration::ZERO);
        let app = app().layer(layer.clone());
        let client = TestClient::new(common::app(), layer);
        if request != "fresh" {
            client.post("/incr", &[]).await.assert_status(200);
        }
        if request == "touch" {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        fail.lock().unwrap().push(op);
        let (method, uri, body) = match request {
            "read" | "touch" => ("GET", "/read", Body::empty()),
            "invalidate" => ("POST", "/run", Body::from(r#"[["invalidate"]]"#)),
            _ => ("POST", "/incr", Body::empty()),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(id) = client.cookie() {
            builder = builder.header(COOKIE, format!("keepsake_session={id}"));
        }
        let response = app.oneshot(builder.body(body).unwrap()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{request}"
        );
        let failure = response
            .extensions()
            .get::<SessionFailure>()
            .expect("error attached");
        assert!(
            failure.to_string().contains("injected outage"),
            "{request}: {failure}"
        );
        assert!(
            response.headers().get(SET_COOKIE).is_none(),
            "{request}: no cookie on failure"
        );
    }
}

#[tokio::test]
async fn a_custom_error_handler_answers_failures() {
    let store = Failing::new(MemoryStore::new());
    store.fail.lock().unwrap().push(common::CREATE);
    let layer = SessionLayer::new(store).with_error_handler(|failure| {
        axum::response::IntoResponse::into_response((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("sessions down: {failure}"),
        ))
    });
    let c = TestClient::new(app(), layer);
    let response = c.post("/incr", &[]).await;
    response.assert_status(503);
    assert!(response.text().contains("injected outage"));
}

#[tokio::test]
async fn a_regenerate_never_loses_the_session_when_a_step_fails() {
    let store = Arc::new(Failing::new(MemoryStore::new()));
    let c = TestClient::new(
        app(),
        SessionLayer::from_arc(store.clone()).with_lottery(0, 1),
    );
    run(&c, json!([["put", "user", "ada"]])).await;
    let old = c.cookie().unwrap();

    // Retiring the old record fails: a 500, and the client keeps its old,
    // intact session.
    store.fail.lock().unwrap().push(common::SAVE);
    c.post_json("/run", &json!([["regenerate"]]))
        .await
        .assert_status(500);
    assert_eq!(c.cookie().as_deref(), Some(old.as_str()));
    store.fail.lock().unwrap().clear();
    c.session().await.assert_has_value("user", "ada");

    // Only the clean-up of the already retired record fails: the regenerate
    // stands, and the old id no longer loads.
    store.fail.lock().unwrap().push(common::DESTROY);
    c.post_json("/run", &json!([["regenerate"]]))
        .await
        .assert_status(200);
    store.fail.lock().unwrap().clear();
    c.session()
        .await
        .assert_regenerated()
        .assert_has_value("user", "ada");
    let old_key = SessionId::parse(&old).unwrap().storage_key();
    assert!(store.load(&old_key).await.unwrap().is_none());
}

#[tokio::test]
async fn extractor_without_the_layer() {
    async fn optional(session: Option<Session>) -> String {
        format!("{}", session.is_some())
    }
    async fn required(_session: Session) -> &'static str {
        "unreachable"
    }
    let app = Router::new()
        .route("/optional", get(optional))
        .route("/required", get(required));
    let response = app
        .clone()
        .oneshot(Request::get("/optional").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"false");
    let response = app
        .oneshot(Request::get("/required").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("is `SessionLayer` applied"));
}

#[tokio::test]
async fn the_current_handle_reaches_the_session() {
    let c = client();
    c.post("/current", &[]).await.assert_status(200);
    c.session().await.assert_has_value("via_current", true);
    assert!(keepsake::SessionHandle::current().is_none());
}

#[tokio::test]
async fn previous_url_tracking() {
    let layer = SessionLayer::new(MemoryStore::new()).with_previous_url_tracking(true);
    let c = TestClient::new(app(), layer);
    c.post("/incr", &[]).await;
    c.get("/read?page=2").await.assert_status(200);
    let xhr = c.fork().with_header("x-requested-with", "XMLHttpRequest");
    xhr.get("/read?ajax=1").await;
    let r = run(&c, json!([["previous_url"]])).await;
    assert_eq!(ok(&r[0]), json!("/read?page=2"));
}

#[tokio::test]
async fn the_absolute_lifetime_caps_the_expiry() {
    let layer =
        SessionLayer::new(MemoryStore::new()).with_absolute_lifetime(Duration::from_secs(60));
    let c = TestClient::new(app(), layer);
    let response = c.post("/incr", &[]).await;
    let cookie = &response.set_cookies()[0];
    assert!(cookie.contains("Max-Age=60"), "{cookie}");
}

#[tokio::test]
async fn the_lottery_collects_garbage_off_the_request() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let c = TestClient::new(app(), SessionLayer::new(store).with_lottery(1, 1));
    c.post("/incr", &[]).await.assert_status(200);
    for _ in 0..50 {
        if Counting::<MemoryStore>::counts(&calls)[common::GC] > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gc never ran");
}

/// Waits (by yielding, not by time) until the counting store has seen `n`
/// collections; false if it never does.
async fn gc_count_reaches(calls: &[std::sync::atomic::AtomicUsize; 8], n: usize) -> bool {
    for _ in 0..10_000 {
        if Counting::<MemoryStore>::counts(calls)[common::GC] >= n {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test]
async fn the_gc_floor_lets_one_collection_through_per_interval() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    // The default floor (a minute) with a lottery that always wins.
    let c = TestClient::new(app(), SessionLayer::new(store).with_lottery(1, 1));
    c.post("/incr", &[]).await.assert_status(200);
    assert!(gc_count_reaches(&calls, 1).await, "the first win collects");
    c.post("/incr", &[]).await.assert_status(200);
    c.post("/incr", &[]).await.assert_status(200);
    // Give a (wrongly) spawned collection every chance to run.
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(Counting::<MemoryStore>::counts(&calls)[common::GC], 1);
}

#[tokio::test]
async fn a_zero_gc_floor_collects_on_every_win() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let layer = SessionLayer::new(store)
        .with_lottery(1, 1)
        .with_gc_min_interval(Duration::ZERO);
    let c = TestClient::new(app(), layer);
    c.post("/incr", &[]).await.assert_status(200);
    assert!(gc_count_reaches(&calls, 1).await, "the first win collects");
    c.post("/incr", &[]).await.assert_status(200);
    assert!(gc_count_reaches(&calls, 2).await, "the second win collects");
}

#[tokio::test]
async fn a_failing_gc_is_logged_and_tried_again() {
    let store = Failing::new(Counting::new(MemoryStore::new()));
    store.fail.lock().unwrap().push(common::GC);
    let layer = SessionLayer::new(store)
        .with_lottery(1, 1)
        .with_gc_min_interval(Duration::ZERO);
    let c = TestClient::new(app(), layer);
    c.post("/incr", &[]).await.assert_status(200);
    c.post("/incr", &[]).await.assert_status(200);
    c.session().await.assert_has_value("counter", 2);
}

#[tokio::test]
async fn client_info_is_recorded_behind_a_trusted_proxy() {
    let store = Arc::new(MemoryStore::new());
    let layer = SessionLayer::from_arc(store.clone())
        .with_client_info(true)
        .with_trusted_proxies(TrustedProxies::new());
    // The client forged the first entry; the proxy appended what it saw.
    let c = TestClient::new(app(), layer)
        .with_header("x-forwarded-for", "10.9.9.9, 203.0.113.7")
        .with_header("user-agent", "Firefox/1");
    run(&c, json!([["put", "a", 1], ["set_user_id", "u1"]])).await;
    let listed = store.list_for_user("u1").await.unwrap();
    assert_eq!(listed[0].ip_address.as_deref(), Some("203.0.113.7"));
    assert_eq!(listed[0].user_agent.as_deref(), Some("Firefox/1"));
}

/// The address recorded for one request sent with `headers` from the
/// socket address 192.0.2.200.
async fn recorded_address(trust: Option<TrustedProxies>, headers: &[(&str, &str)]) -> String {
    let store = Arc::new(MemoryStore::new());
    let mut layer = SessionLayer::from_arc(store.clone())
        .with_client_info(true)
        .with_lottery(0, 1);
    if let Some(trust) = trust {
        layer = layer.with_trusted_proxies(trust);
    }
    let mut request = Request::post("/run")
        .header("content-type", "application/json")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 200],
            41_000,
        ))))
        .body(Body::from(r#"[["put","a",1],["set_user_id","u1"]]"#))
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let response = app().layer(layer).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let listed = store.list_for_user("u1").await.unwrap();
    listed[0].ip_address.clone().unwrap()
}

#[tokio::test]
async fn a_forged_forwarding_header_never_becomes_the_client_address() {
    let one = Some(TrustedProxies::new());
    let two = Some(TrustedProxies::new().with_hops(2));
    let forwarded = Some(TrustedProxies::new().with_header(ProxyHeader::Forwarded));
    let xff = "x-forwarded-for";
    type Case<'a> = (Option<TrustedProxies>, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        // No trusted proxy: the header is the client's own invention.
        (None, &[(xff, "203.0.113.7")], "192.0.2.200"),
        (one, &[(xff, "203.0.113.7")], "203.0.113.7"),
        // A thief replays a cookie claiming the victim's address.
        (one, &[(xff, "198.51.100.1, 203.0.113.7")], "203.0.113.7"),
        (
            one,
            &[(xff, "198.51.100.1"), (xff, "203.0.113.7")],
            "203.0.113.7",
        ),
        (
            two,
            &[(xff, "198.51.100.1, 203.0.113.7, 10.0.0.2")],
            "203.0.113.7",
        ),
        // Fewer entries than trusted hops, or not an address: the socket.
        (two, &[(xff, "203.0.113.7")], "192.0.2.200"),
        (one, &[(xff, "203.0.113.7, unknown")], "192.0.2.200"),
        (
            one,
            &[(xff, "203.0.113.7, <script>alert(1)</script>")],
            "192.0.2.200",
        ),
        (one, &[(xff, "[2001:db8::7]:443")], "2001:db8::7"),
        // RFC 7239, and only the configured header is believed.
        (
            forwarded,
            &[("forwarded", r#"for=198.51.100.1, for="[2001:db8::7]:4711""#)],
            "2001:db8::7",
        ),
        (
            forwarded,
            &[("forwarded", "for=_hidden"), (xff, "203.0.113.7")],
            "192.0.2.200",
        ),
        (one, &[("forwarded", "for=198.51.100.1")], "192.0.2.200"),
    ];
    for (trust, headers, expected) in cases {
        assert_eq!(
            recorded_address(*trust, headers).await,
            *expected,
            "{trust:?} {headers:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_duplicate_cookie_sent_first_does_not_lose_the_session() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let layer = SessionLayer::new(store).with_lottery(0, 1);
    let c = TestClient::new(app(), layer.clone());
    run(&c, json!([["put", "user", "ada"]])).await;
    let live = c.cookie().unwrap();
    let stale = SessionId::generate();

    // The browser sends a stale cookie of a parent domain first, then junk,
    // then the live one.
    let send = |cookies: String| {
        let layer = layer.clone();
        async move {
            let request = Request::post("/run")
                .header(COOKIE, cookies)
                .header("content-type", "application/json")
                .body(Body::from(r#"[["get","user"],["id"]]"#))
                .unwrap();
            let response = common::app().layer(layer).oneshot(request).await.unwrap();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            serde_json::from_slice::<Vec<serde_json::Value>>(&body).unwrap()
        }
    };
    let before = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst);
    let r = send(format!(
        "keepsake_session={}; keepsake_session=junk; keepsake_session={live}",
        stale.as_str()
    ))
    .await;
    assert_eq!(ok(&r[0]), json!("ada"));
    assert_eq!(ok(&r[1]), json!(live));
    let loads = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(loads, 2, "the stale id, then the live one");

    // At most three candidates are tried: a fourth is never loaded.
    let others: Vec<String> = (0..3)
        .map(|_| SessionId::generate().as_str().to_owned())
        .collect();
    let before = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst);
    let r = send(format!(
        "keepsake_session={}; keepsake_session={}; keepsake_session={}; keepsake_session={live}",
        others[0], others[1], others[2]
    ))
    .await;
    assert_eq!(ok(&r[0]), json!(null));
    assert_ne!(ok(&r[1]), json!(live));
    let loads = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(loads, 3);

    // The same id twice is loaded once.
    let before = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst);
    let r = send(format!("keepsake_session={live}; keepsake_session={live}")).await;
    assert_eq!(ok(&r[0]), json!("ada"));
    let loads = calls[common::LOAD].load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(loads, 1);
}

#[tokio::test]
async fn a_session_bound_to_its_client_is_invalidated_elsewhere() {
    use keepsake::middleware::Binding;
    let store = Arc::new(MemoryStore::new());
    let layer = SessionLayer::from_arc(store.clone())
        .with_trusted_proxies(TrustedProxies::new())
        .with_binding(Binding::user_agent().with_ip_prefix(24, 64));
    let browser = TestClient::new(app(), layer.clone())
        .with_header("user-agent", "Firefox/1")
        .with_header("x-forwarded-for", "203.0.113.7");
    run(&browser, json!([["put", "user", "ada"]])).await;
    let mut id = browser.cookie().unwrap();

    // Same agent, same /24: the same session.
    let nearby = TestClient::new(app(), layer.clone())
        .with_header("user-agent", "Firefox/1")
        .with_header("x-forwarded-for", "203.0.113.99");
    nearby.set_cookie(Some(id.clone()));
    assert_eq!(
        ok(&run(&nearby, json!([["get", "user"]])).await[0]),
        json!("ada")
    );

    // Another agent, or another network: invalidated, the record destroyed.
    for (agent, address) in [("curl/8", "203.0.113.7"), ("Firefox/1", "198.51.100.1")] {
        let thief = TestClient::new(app(), layer.clone())
            .with_header("user-agent", agent)
            .with_header("x-forwarded-for", address);
        thief.set_cookie(Some(id.clone()));
        let r = run(&thief, json!([["get", "user"], ["id"]])).await;
        assert_eq!(ok(&r[0]), json!(null), "{agent} {address}");
        assert_ne!(ok(&r[1]), json!(id));
        assert_eq!(thief.cookie(), None, "nothing stored for the thief");
        assert!(
            store
                .load(&SessionId::parse(&id).unwrap().storage_key())
                .await
                .unwrap()
                .is_none()
        );
        // The victim signs in again for the next round.
        run(&browser, json!([["put", "user", "ada"]])).await;
        let fresh = browser.cookie().unwrap();
        assert_ne!(fresh, id);
        id = fresh;
        assert_eq!(
            ok(&run(&browser, json!([["get", "user"]])).await[0]),
            json!("ada")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lottery_wins_during_a_running_gc_start_no_second_one() {
    #[derive(Debug)]
    struct SlowGc(MemoryStore, Arc<std::sync::atomic::AtomicUsize>);
    #[keepsake::async_trait]
    impl SessionStore for SlowGc {
        async fn load(
            &self,
            key: &keepsake::StorageKey,
        ) -> keepsake::Result<Option<keepsake::Record>> {
            self.0.load(key).await
        }
        async fn create(&self, record: &keepsake::Record) -> keepsake::Result<keepsake::Cas> {
            self.0.create(record).await
        }
        async fn save(
            &self,
            record: &keepsake::Record,
            expected: i64,
        ) -> keepsake::Result<keepsake::Cas> {
            self.0.save(record, expected).await
        }
        async fn touch(
            &self,
            key: &keepsake::StorageKey,
            version: i64,
            last: i64,
            expires: i64,
        ) -> keepsake::Result<keepsake::Cas> {
            self.0.touch(key, version, last, expires).await
        }
        async fn destroy(&self, key: &keepsake::StorageKey) -> keepsake::Result<()> {
            self.0.destroy(key).await
        }
        async fn gc(&self, now: i64) -> keepsake::Result<u64> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.0.gc(now).await
        }
        async fn list_for_user(&self, user: &str) -> keepsake::Result<Vec<keepsake::SessionInfo>> {
            self.0.list_for_user(user).await
        }
        async fn destroy_for_user(
            &self,
            user: &str,
            except: Option<&keepsake::StorageKey>,
        ) -> keepsake::Result<u64> {
            self.0.destroy_for_user(user, except).await
        }
        fn kind(&self) -> &'static str {
            "slow-gc"
        }
    }
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = TestClient::new(
        app(),
        SessionLayer::new(SlowGc(MemoryStore::new(), Arc::clone(&runs)))
            .with_lottery(1, 1)
            .with_gc_min_interval(Duration::ZERO),
    );
    for _ in 0..10 {
        c.post("/incr", &[]).await.assert_status(200);
    }
    // The first win's task may not have been scheduled yet on a busy machine;
    // the wins after it were dropped all the same (the flag is set before
    // the spawn).
    for _ in 0..40 {
        if runs.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one gc at a time"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.post("/incr", &[]).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the next win after it ends runs again"
    );
}

/// The panic message of `f`.
fn panic_message(f: impl FnOnce() -> SessionLayer + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("the configuration was accepted");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn an_invalid_cookie_setting_panics_naming_the_setting_and_the_value() {
    let layer = || SessionLayer::new(MemoryStore::new());
    type Build = Box<dyn FnOnce() -> SessionLayer + std::panic::UnwindSafe>;
    let cases: Vec<(Build, &str, &str)> = vec![
        (
            Box::new(move || layer().with_cookie_name("my session")),
            "with_cookie_name",
            "\"my session\"",
        ),
        (
            Box::new(move || layer().with_cookie_name("a;b")),
            "with_cookie_name",
            "\"a;b\"",
        ),
        (
            Box::new(move || layer().with_cookie_name("")),
            "with_cookie_name",
            "\"\"",
        ),
        (
            Box::new(move || layer().with_path("app")),
            "with_path",
            "\"app\"",
        ),
        (
            Box::new(move || layer().with_path("/a;Domain=evil.test")),
            "with_path",
            "\"/a;Domain=evil.test\"",
        ),
        (
            Box::new(move || layer().with_domain("evil.test; x")),
            "with_domain",
            "\"evil.test; x\"",
        ),
        // `__Host-` demands Secure, no Domain and Path=/: whichever setting
        // breaks that, in whichever order, is the one named.
        (
            Box::new(move || layer().with_cookie_name("__Host-s").with_secure(false)),
            "with_secure",
            "false",
        ),
        (
            Box::new(move || layer().with_secure(false).with_cookie_name("__Host-s")),
            "with_cookie_name",
            "\"__Host-s\"",
        ),
        (
            Box::new(move || {
                layer()
                    .with_cookie_name("__Host-s")
                    .with_domain("example.com")
            }),
            "with_domain",
            "\"example.com\"",
        ),
        (
            Box::new(move || {
                layer()
                    .with_domain("example.com")
                    .with_cookie_name("__Host-s")
            }),
            "with_cookie_name",
            "__Host-",
        ),
        (
            Box::new(move || layer().with_cookie_name("__Host-s").with_path("/app")),
            "with_path",
            "\"/app\"",
        ),
        (
            Box::new(move || layer().with_path("/app").with_cookie_name("__host-s")),
            "with_cookie_name",
            "\"__host-s\"",
        ),
        (
            Box::new(move || layer().with_cookie_name("__Secure-s").with_secure(false)),
            "with_secure",
            "__Secure-",
        ),
        (
            Box::new(move || layer().with_secure(false).with_partitioned(true)),
            "with_partitioned",
            "Partitioned",
        ),
        (
            Box::new(move || layer().with_partitioned(true).with_secure(false)),
            "with_secure",
            "Partitioned",
        ),
    ];
    for (build, setting, value) in cases {
        let message = panic_message(build);
        assert!(
            message.contains(&format!("SessionLayer::{setting}(")) && message.contains(value),
            "{setting} {value}: {message}"
        );
    }
}

#[tokio::test]
async fn host_prefixed_and_partitioned_cookies() {
    let layer = SessionLayer::new(MemoryStore::new())
        .with_lottery(0, 1)
        .with_cookie_name("__Host-session")
        .with_partitioned(true)
        .with_domain("");
    let c = TestClient::new(app(), layer);
    let response = c.post("/incr", &[]).await;
    response.assert_status(200);
    let set_cookie = response.set_cookies().join("\n");
    assert!(set_cookie.starts_with("__Host-session="), "{set_cookie}");
    for attribute in ["; Secure", "; Path=/", "; Partitioned"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");
    // The cookie comes back and the session continues.
    c.post("/incr", &[]).await.assert_status(200);
    c.session().await.assert_has_value("counter", 2);

    // Off by default.
    let plain = client().post("/incr", &[]).await.set_cookies().join("\n");
    assert!(!plain.contains("Partitioned"), "{plain}");
}

// ---------------------------------------------------------------------------
// The commit protocol end to end (docs/semantics.md): a slow request loads,
// another request commits meanwhile, then the slow one commits.

/// Starts `ops` on a forked tab through `/slow_run`, gives it time to load,
/// runs `meanwhile` on the main tab, and answers the slow tab's status and
/// `Set-Cookie` headers.
async fn race(
    client: &TestClient,
    ops: serde_json::Value,
    meanwhile: serde_json::Value,
) -> (u16, Vec<String>) {
    let slow_tab = client.fork();
    let slow = tokio::spawn(async move {
        let response = slow_tab.post_json("/slow_run", &ops).await;
        (response.status.as_u16(), response.set_cookies())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    run(client, meanwhile).await;
    slow.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_value_replaced_meanwhile_fails_and_keeps_the_new_value() {
    let client = TestClient::new(common::app(), SessionLayer::new(MemoryStore::new()));
    run(&client, json!([["put", "notice", "Welcome"]])).await;
    let (status, cookies) = race(
        &client,
        json!([["pull", "notice"]]),
        json!([["put", "notice", "Saved"]]),
    )
    .await;
    assert_eq!(status, 409, "the pull read a value that is gone");
    assert!(cookies.is_empty(), "no cookie on a refused commit");
    client.session().await.assert_has_value("notice", "Saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_saved_meanwhile_survives_a_concurrent_write() {
    let client = TestClient::new(common::app(), SessionLayer::new(MemoryStore::new()));
    run(&client, json!([["put", "n", 1]])).await;
    let (status, _) = race(
        &client,
        json!([["put", "x", 1]]),
        json!([["flash", "status", "saved"]]),
    )
    .await;
    assert_eq!(status, 200);
    let results = run(&client, json!([["get", "status"], ["get", "x"]])).await;
    assert_eq!(
        common::ok(&results[0]),
        json!("saved"),
        "shown on the next page"
    );
    assert_eq!(common::ok(&results[1]), json!(1));
    let results = run(&client, json!([["get", "status"]])).await;
    assert_eq!(
        common::ok(&results[0]),
        serde_json::Value::Null,
        "and only there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_racing_a_login_never_hands_back_the_dead_id() {
    let client = TestClient::new(
        common::app(),
        SessionLayer::new(MemoryStore::new()).with_touch_after(Duration::ZERO),
    );
    run(&client, json!([["put", "user", "ada"]])).await;
    // The expiry moves only when a whole second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, cookies) = race(&client, json!([["get", "user"]]), json!([["regenerate"]])).await;
    assert_eq!(status, 200, "a read-only request never fails");
    assert!(
        cookies.is_empty(),
        "the touch found the old record retired: no id sent, got {cookies:?}"
    );
    client
        .session()
        .await
        .assert_regenerated()
        .assert_has_value("user", "ada");
}

#[tokio::test]
async fn a_logout_starts_a_new_absolute_lifetime() {
    let client = TestClient::new(
        common::app(),
        SessionLayer::new(MemoryStore::new()).with_absolute_lifetime(Duration::from_secs(4)),
    );
    run(&client, json!([["put", "user", "ada"]])).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = client
        .post_json("/run", &json!([["invalidate"], ["put", "bye", true]]))
        .await;
    response.assert_status(200);
    let cookie = response.set_cookies().join("; ");
    let max_age: i64 = cookie
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .expect("a Max-Age");
    assert!(
        max_age >= 3,
        "the new session has the whole lifetime: {cookie}"
    );
}

#[tokio::test]
async fn migrate_moves_the_session_and_keeps_the_token() {
    let client = TestClient::new(common::app(), SessionLayer::new(MemoryStore::new()));
    let before = run(&client, json!([["put", "user", "ada"], ["token"]])).await;
    let old = client.cookie().unwrap();
    let after = run(&client, json!([["migrate"], ["token"]])).await;
    assert_ne!(client.cookie().unwrap(), old, "a new id");
    assert_eq!(
        common::ok(&after[1]),
        common::ok(&before[1]),
        "the token stays"
    );
    client.session().await.assert_has_value("user", "ada");
    let stale = client.new_browser();
    stale.set_cookie(Some(old));
    stale.session().await.assert_missing("user");
}

#[tokio::test]
async fn a_shared_store_gets_in_place_saves() {
    // A store behind an `Arc` (as `from_arc` and `Arc<dyn SessionStore>`
    // take it) must see the in-place saves the commit plans, not their
    // plain fallback: the SQL stores write no indexed column in them.
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let shared: Arc<dyn SessionStore> = Arc::new(store);
    let layers = [
        SessionLayer::from_arc(Arc::clone(&shared)),
        SessionLayer::new(Arc::clone(&shared)),
    ];
    for layer in layers {
        let c = TestClient::new(app(), layer.with_lottery(0, 1));
        c.post("/incr", &[]).await.assert_status(200);
        let before = calls[common::IN_PLACE].load(std::sync::atomic::Ordering::SeqCst);
        c.post("/incr", &[]).await.assert_status(200);
        c.post("/incr", &[]).await.assert_status(200);
        assert_eq!(
            calls[common::IN_PLACE].load(std::sync::atomic::Ordering::SeqCst),
            before + 2
        );
    }
}
