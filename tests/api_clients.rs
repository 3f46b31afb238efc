//! Session ids in a header for API clients, and cache headers.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use common::app;
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderName, Request, Response};
use keepsake::{MemoryStore, SessionId, SessionLayer, SessionSource};
use serde_json::json;
use tower::ServiceExt as _;

const TOKEN: HeaderName = HeaderName::from_static("x-session-token");

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

fn post_run() -> http::request::Builder {
    Request::post("/run").header("content-type", "application/json")
}

fn body(ops: &serde_json::Value) -> Body {
    Body::from(serde_json::to_vec(ops).unwrap())
}

async fn json(response: Response<Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The id in `response`'s header, checked against the one its ops reported
/// (an `["id"]` op at index `at`).
async fn header_id(response: Response<Body>, at: usize) -> String {
    let id = response.headers()[&TOKEN].to_str().unwrap().to_owned();
    assert_eq!(json(response).await[at]["ok"], json!(id));
    id
}

#[tokio::test]
async fn header_only_mode_never_sets_a_cookie() {
    let app = app().layer(SessionLayer::new(MemoryStore::new()).with_header_only(TOKEN));
    let put = json!([["put", "a", 1]]);
    let response = send(&app, post_run().body(body(&put)).unwrap()).await;
    assert!(response.headers().get(SET_COOKIE).is_none());
    let id = response.headers()[&TOKEN].to_str().unwrap().to_owned();
    assert!(SessionId::parse(&id).is_some());

    // The id comes back in the header; an unchanged session sends nothing.
    let get = json!([["get", "a"], ["id"]]);
    let response = send(
        &app,
        post_run().header(&TOKEN, &id).body(body(&get)).unwrap(),
    )
    .await;
    assert!(response.headers().get(&TOKEN).is_none());
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(json(response).await, json!([{"ok": 1}, {"ok": id}]));

    // A cookie is ignored in header-only mode.
    let get = json!([["get", "a"]]);
    let response = send(
        &app,
        post_run()
            .header(COOKIE, format!("keepsake_session={id}"))
            .body(body(&get))
            .unwrap(),
    )
    .await;
    assert_eq!(json(response).await, json!([{"ok": null}]));

    // regenerate hands back the new id; invalidate empties the header.
    let regen = json!([["regenerate"], ["id"]]);
    let response = send(
        &app,
        post_run().header(&TOKEN, &id).body(body(&regen)).unwrap(),
    )
    .await;
    let new_id = response.headers()[&TOKEN].to_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(json(response).await[1]["ok"], json!(new_id));
    let inv = json!([["invalidate"]]);
    let response = send(
        &app,
        post_run().header(&TOKEN, &new_id).body(body(&inv)).unwrap(),
    )
    .await;
    assert_eq!(response.headers()[&TOKEN], "");
}

#[tokio::test]
async fn unknown_and_malformed_header_ids_are_replaced() {
    let app = app().layer(SessionLayer::new(MemoryStore::new()).with_header_only(TOKEN));
    for sent in [
        SessionId::generate().as_str().to_owned(),
        "../../etc/passwd".to_owned(),
    ] {
        let put = json!([["put", "a", 1], ["id"]]);
        let response = send(
            &app,
            post_run().header(&TOKEN, &sent).body(body(&put)).unwrap(),
        )
        .await;
        assert_ne!(header_id(response, 1).await, sent);
    }
}

#[tokio::test]
async fn both_transports_answer_in_the_one_used() {
    let app = app().layer(SessionLayer::new(MemoryStore::new()).with_id_header(TOKEN));
    let put = json!([["put", "a", 1]]);
    let response = send(&app, post_run().body(body(&put)).unwrap()).await;
    // A new session goes out both ways.
    assert!(response.headers().get(SET_COOKIE).is_some());
    let id = response.headers()[&TOKEN].to_str().unwrap().to_owned();

    // A new id goes out only the way the old one came.
    let put = json!([["put", "b", 2], ["regenerate"], ["id"]]);
    let response = send(
        &app,
        post_run()
            .header(COOKIE, format!("keepsake_session={id}"))
            .body(body(&put))
            .unwrap(),
    )
    .await;
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(response.headers().get(&TOKEN).is_none());
    let id = json(response).await[2]["ok"].as_str().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("keepsake_session={id};")));

    let put = json!([["put", "c", 3], ["regenerate"], ["id"]]);
    let response = send(
        &app,
        post_run().header(&TOKEN, &id).body(body(&put)).unwrap(),
    )
    .await;
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_ne!(header_id(response, 2).await, id);
}

#[tokio::test]
async fn a_save_that_keeps_id_and_expiry_sends_neither() {
    // The client already holds the id, and a cookie that expires with the
    // stored expiry: a save within the expiry step changes neither.
    let app = app().layer(SessionLayer::new(MemoryStore::new()).with_id_header(TOKEN));
    let response = send(
        &app,
        post_run().body(body(&json!([["put", "a", 1]]))).unwrap(),
    )
    .await;
    let id = response.headers()[&TOKEN].to_str().unwrap().to_owned();
    for (request, expected) in [
        (
            post_run().header(COOKIE, format!("keepsake_session={id}")),
            2,
        ),
        (post_run().header(&TOKEN, &id), 3),
    ] {
        let add = json!([["increment", "a", 1]]);
        let response = send(&app, request.body(body(&add)).unwrap()).await;
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert!(response.headers().get(&TOKEN).is_none());
        assert_eq!(json(response).await[0]["ok"], json!(expected));
    }
}

#[tokio::test]
async fn disagreeing_cookie_and_header_follow_the_precedence() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let base = SessionLayer::from_arc(store.clone()).with_id_header(TOKEN);
    let app = app().layer(base.clone());
    let mut ids = Vec::new();
    for value in ["cookie", "header"] {
        let put = json!([["put", "who", value], ["id"]]);
        let response = send(&app, post_run().body(body(&put)).unwrap()).await;
        ids.push(json(response).await[1]["ok"].as_str().unwrap().to_owned());
    }
    let ask = json!([["get", "who"]]);
    let request = |app: Router| {
        let ask = ask.clone();
        let (cookie_id, header_id) = (ids[0].clone(), ids[1].clone());
        async move {
            let request = post_run()
                .header(COOKIE, format!("keepsake_session={cookie_id}"))
                .header(&TOKEN, header_id)
                .body(body(&ask))
                .unwrap();
            json(send(&app, request).await).await
        }
    };
    assert_eq!(
        request(app).await,
        json!([{"ok": "header"}]),
        "the header wins by default"
    );
    let app = common::app().layer(base.with_id_precedence(SessionSource::Cookie));
    assert_eq!(request(app).await, json!([{"ok": "cookie"}]));
}

#[tokio::test]
async fn the_source_is_in_the_request_extensions() {
    async fn source(Extension(source): Extension<SessionSource>) -> String {
        format!("{source:?}")
    }
    let app = Router::new()
        .route("/source", get(source))
        .layer(SessionLayer::new(MemoryStore::new()).with_id_header(TOKEN));
    let id = SessionId::generate();
    for (header, expected) in [
        (None, "None"),
        (Some(&TOKEN), "Header"),
        (Some(&COOKIE), "Cookie"),
    ] {
        let mut request = Request::get("/source");
        if let Some(name) = header {
            let value = if name == COOKIE {
                format!("keepsake_session={}", id.as_str())
            } else {
                id.as_str().to_owned()
            };
            request = request.header(name, value);
        }
        let response = send(&app, request.body(Body::empty()).unwrap()).await;
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&bytes[..], expected.as_bytes());
    }
}

#[tokio::test]
async fn cache_headers_only_when_the_session_was_used() {
    let app = app().layer(SessionLayer::new(MemoryStore::new()));
    let response = send(&app, Request::get("/none").body(Body::empty()).unwrap()).await;
    assert!(response.headers().get(VARY).is_none());
    assert!(response.headers().get(CACHE_CONTROL).is_none());

    let response = send(&app, Request::get("/read").body(Body::empty()).unwrap()).await;
    assert_eq!(response.headers()[VARY], "cookie");
    assert_eq!(response.headers()[CACHE_CONTROL], "private");

    let with_header =
        common::app().layer(SessionLayer::new(MemoryStore::new()).with_id_header(TOKEN));
    let response = send(
        &with_header,
        Request::get("/read").body(Body::empty()).unwrap(),
    )
    .await;
    let vary: Vec<_> = response
        .headers()
        .get_all(VARY)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(vary, ["cookie", "x-session-token"]);

    let off = common::app().layer(SessionLayer::new(MemoryStore::new()).with_cache_headers(false));
    let response = send(&off, Request::get("/read").body(Body::empty()).unwrap()).await;
    assert!(response.headers().get(VARY).is_none());
    assert!(response.headers().get(CACHE_CONTROL).is_none());
}

#[tokio::test]
async fn a_handlers_own_cache_control_is_kept() {
    async fn cached(_session: keepsake::Session) -> impl axum::response::IntoResponse {
        (
            [
                (CACHE_CONTROL, "no-store"),
                (VARY, "Accept-Encoding, Cookie"),
            ],
            "x",
        )
    }
    let app = Router::new()
        .route("/", get(cached))
        .layer(SessionLayer::new(MemoryStore::new()));
    let response = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(
        response.headers().get_all(VARY).iter().count(),
        1,
        "Cookie is already in Vary"
    );
}
