//! The demo's JSON API, used with the session id in a header.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

#[path = "../examples/demo/app.rs"]
mod app;

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderName, Request};
use keepsake::{MemoryStore, SessionLayer, SessionStore};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const TOKEN: HeaderName = HeaderName::from_static("x-session-token");

async fn call(
    app: &axum::Router,
    method: &str,
    token: Option<&str>,
) -> (Option<String>, Value, u16) {
    let mut request = Request::builder().method(method).uri("/api/counter");
    if let Some(token) = token {
        request = request.header(&TOKEN, token);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(response.headers().get("set-cookie").is_none() || token.is_none());
    let header = response
        .headers()
        .get(&TOKEN)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        header,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        status,
    )
}

#[tokio::test]
async fn the_api_works_with_the_session_id_in_a_header() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::from_arc(Arc::clone(&store))
        .with_secure(false)
        .with_id_header(TOKEN);
    let app = app::app(store, layer);

    let (token, body, status) = call(&app, "GET", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["visits"], json!(0));
    let token = token.expect("a GET starts the API session and hands back its id");

    // POSTs with the header pass without a CSRF token and count.
    for expected in 1..=3 {
        let (again, body, status) = call(&app, "POST", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["visits"], json!(expected));
        // A save moves the expiry, so the id is re-sent (as the cookie would
        // be); it is the same id.
        assert!(again.is_none_or(|again| again == token));
    }

    // Without the header a POST is a browser's, and needs its CSRF token.
    let (_, _, status) = call(&app, "POST", None).await;
    assert_eq!(status, 419);
}
