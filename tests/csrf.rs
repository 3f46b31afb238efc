//! `CsrfLayer` end to end inside `SessionLayer`: where the token may travel,
//! what is rejected and how, what passes untouched, and that the handler
//! gets the body it was sent.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::Form;
use axum::http::{HeaderMap, HeaderName, Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use common::{Counting, Failing, LOAD};
use keepsake::testing::{TestClient, TestResponse};
use keepsake::{CsrfLayer, MemoryStore, Session, SessionHandle, SessionLayer, SessionStore};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Echoes what the handler received: the content type and the raw body.
async fn echo(headers: HeaderMap, body: Bytes) -> Json<Value> {
    Json(json!({
        "content_type": headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap()),
        "body": String::from_utf8_lossy(&body),
    }))
}

fn routes() -> Router {
    Router::new()
        .route(
            "/token",
            get(|session: Session| async move { session.token() }),
        )
        .route("/echo", any(echo))
        .route(
            "/form",
            post(|Form(form): Form<HashMap<String, String>>| async move { Json(form) }),
        )
        // Whether the session was loaded before the handler ran.
        .route(
            "/loaded",
            any(|handle: SessionHandle| async move { handle.was_loaded().to_string() }),
        )
        .route(
            "/webhooks/stripe",
            post(|handle: SessionHandle| async move { handle.was_loaded().to_string() }),
        )
        .route(
            "/api/{*rest}",
            post(|handle: SessionHandle| async move { handle.was_loaded().to_string() }),
        )
}

fn layer(store: impl SessionStore) -> SessionLayer {
    SessionLayer::new(store).with_lottery(0, 1)
}

fn client_with(csrf: CsrfLayer) -> TestClient {
    TestClient::new(routes().layer(csrf), layer(MemoryStore::new()))
}

fn client() -> TestClient {
    client_with(CsrfLayer::new())
}

/// Visits a page that shows the token, as a browser would first.
async fn token(client: &TestClient) -> String {
    client.get("/token").await.assert_status(200).text()
}

async fn send(
    client: &TestClient,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> TestResponse {
    let mut request = client.request(method, uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send(request.body(body.into()).unwrap()).await
}

fn multipart(boundary: &str, fields: &[(&str, Option<&str>, &str)]) -> String {
    let mut body = String::new();
    for (name, filename, value) in fields {
        body.push_str(&format!("--{boundary}\r\n"));
        match filename {
            Some(file) => body.push_str(&format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                 Content-Type: text/plain\r\n"
            )),
            None => body.push_str(&format!(
                "Content-Disposition: form-data; name=\"{name}\"\r\n"
            )),
        }
        body.push_str(&format!("\r\n{value}\r\n"));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body
}

fn assert_mismatch(response: &TestResponse) {
    response.assert_status(419);
    assert_eq!(response.text(), "CSRF token mismatch");
}

#[tokio::test]
async fn header_token_passes() {
    let c = client();
    let token = token(&c).await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let r = send(&c, method.clone(), "/echo", &[("x-csrf-token", &token)], "").await;
        r.assert_status(200);
        let r = send(&c, method, "/echo", &[("x-xsrf-token", &token)], "").await;
        r.assert_status(200);
    }
}

#[tokio::test]
async fn form_field_passes_and_the_form_reaches_the_handler() {
    let c = client();
    let token = token(&c).await;
    let r = c
        .post(
            "/form",
            &[("title", "a & b = c"), ("_token", &token), ("n", "1")],
        )
        .await;
    r.assert_status(200);
    assert_eq!(
        r.json(),
        json!({"title": "a & b = c", "_token": token, "n": "1"})
    );
}

#[tokio::test]
async fn urlencoded_body_is_handed_on_byte_for_byte() {
    let c = client();
    let token = token(&c).await;
    let body = format!("first=%E2%9C%93+ok&_token={token}&last=x%26y");
    let ct = "application/x-www-form-urlencoded; charset=UTF-8";
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", ct)],
        body.clone(),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json(), json!({"content_type": ct, "body": body}));
}

#[tokio::test]
async fn multipart_field_passes_and_the_body_is_intact() {
    let c = client();
    let token = token(&c).await;
    let body = multipart(
        "----WebKitFormBoundary7MA4YWxkTrZu0gW",
        &[
            ("upload", Some("notes.txt"), "line one\r\nline two"),
            ("_token", None, &token),
            ("title", None, "hello"),
        ],
    );
    let ct = "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", ct)],
        body.clone(),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json(), json!({"content_type": ct, "body": body}));

    // A quoted boundary, and the token first.
    let body = multipart("a b", &[("_token", None, &token)]);
    let r = send(
        &c,
        Method::PUT,
        "/echo",
        &[("content-type", "multipart/form-data; boundary=\"a b\"")],
        body,
    )
    .await;
    r.assert_status(200);
}

#[tokio::test]
async fn a_file_named_token_is_not_the_token() {
    let c = client();
    let token = token(&c).await;
    let body = multipart("b", &[("_token", Some("t.txt"), &token)]);
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", "multipart/form-data; boundary=b")],
        body,
    )
    .await;
    assert_mismatch(&r);
}

#[tokio::test]
async fn missing_token_is_419() {
    let c = client();
    let _ = token(&c).await;
    assert_mismatch(&c.post("/echo", &[("title", "x")]).await);
    assert_mismatch(&send(&c, Method::DELETE, "/echo", &[], "").await);
    assert_mismatch(&c.post_json("/echo", &json!({"_token": "x"})).await);
    let body = multipart("b", &[("title", None, "x")]);
    let ct = [("content-type", "multipart/form-data; boundary=b")];
    assert_mismatch(&send(&c, Method::POST, "/echo", &ct, body).await);
}

#[tokio::test]
async fn wrong_token_is_419() {
    let c = client();
    let token = token(&c).await;
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [wrong.as_str(), "", &token[..10], &format!("{token}x")] {
        assert_mismatch(&send(&c, Method::POST, "/echo", &[("x-csrf-token", bad)], "").await);
        assert_mismatch(&c.post("/echo", &[("_token", bad)]).await);
    }
}

#[tokio::test]
async fn a_wrong_header_does_not_hide_a_right_field() {
    let c = client();
    let token = token(&c).await;
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[
            ("x-csrf-token", "nope"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("_token={token}"),
    )
    .await;
    r.assert_status(200);
}

#[tokio::test]
async fn token_of_another_session_is_419() {
    let alice = client();
    let mallory = alice.new_browser();
    let alice_token = token(&alice).await;
    let mallory_token = token(&mallory).await;
    assert_ne!(alice_token, mallory_token);
    let r = send(
        &mallory,
        Method::POST,
        "/echo",
        &[("x-csrf-token", &alice_token)],
        "",
    )
    .await;
    assert_mismatch(&r);
    assert_mismatch(&mallory.post("/echo", &[("_token", &alice_token)]).await);
    // And a browser with no session at all gets no session from trying.
    let stranger = alice.new_browser();
    let r = stranger.post("/echo", &[("_token", &alice_token)]).await;
    assert_mismatch(&r);
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
}

#[tokio::test]
async fn a_regenerated_session_rotates_the_token() {
    let c = TestClient::new(
        routes()
            .route(
                "/login",
                post(|session: Session| async move {
                    session.regenerate();
                    session.token()
                }),
            )
            .layer(CsrfLayer::new()),
        layer(MemoryStore::new()),
    );
    let before = token(&c).await;
    let after = c.post("/login", &[("_token", &before)]).await;
    after.assert_status(200);
    let after = after.text();
    assert_ne!(before, after);
    assert_mismatch(&c.post("/echo", &[("_token", &before)]).await);
    c.post("/echo", &[("_token", &after)])
        .await
        .assert_status(200);
}

#[tokio::test]
async fn safe_methods_pass_without_loading_the_session() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let c = TestClient::new(routes().layer(CsrfLayer::new()), layer(store));
    let _ = token(&c).await;
    let loads = calls[LOAD].load(Ordering::SeqCst);
    for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
        let r = send(&c, method.clone(), "/loaded", &[], "").await;
        r.assert_status(200);
        if method != Method::HEAD {
            assert_eq!(r.text(), "false", "{method}");
        }
    }
    assert_eq!(calls[LOAD].load(Ordering::SeqCst), loads);
    // An unsafe method does load it.
    let r = send(&c, Method::POST, "/loaded", &[], "").await;
    assert_mismatch(&r);
    assert_eq!(calls[LOAD].load(Ordering::SeqCst), loads + 1);
}

#[tokio::test]
async fn exempt_paths_and_prefixes_pass_untouched() {
    let c = client_with(
        CsrfLayer::new()
            .with_exempt_path("/webhooks/stripe")
            .with_exempt_prefix("/api/"),
    );
    let r = c.post("/webhooks/stripe", &[("event", "paid")]).await;
    r.assert_status(200);
    assert_eq!(r.text(), "false");
    let r = c.post("/api/v1/things", &[]).await;
    r.assert_status(200);
    assert_eq!(r.text(), "false");
    // Exact paths are exact.
    assert_mismatch(&c.post("/webhooks/stripe/other", &[]).await);
    assert_mismatch(&c.post("/echo", &[]).await);
}

#[tokio::test]
async fn an_exempt_prefix_matches_whole_segments_of_the_decoded_path() {
    let app = Router::new()
        .route("/{*rest}", post(|| async { "reached" }))
        .layer(
            CsrfLayer::new()
                .with_exempt_prefix("/api")
                .with_exempt_path("/hook"),
        )
        .layer(layer(MemoryStore::new()));
    let status = |path: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::post(path).body(Body::empty()).unwrap();
            app.oneshot(request).await.unwrap().status().as_u16()
        }
    };
    for exempt in [
        "/api",
        "/api/",
        "/api/x",
        "/api/keys/delete",
        "/%61pi/x",
        "/hook",
        "/hook/",
        "/h%6Fok",
    ] {
        assert_eq!(status(exempt).await, 200, "{exempt}");
    }
    for checked in [
        "/api-keys/delete",
        "/apix",
        "/ap",
        "/api%2Fkeys",
        "/v1/api/x",
        "/hook/x",
        "/hooks",
        "/",
    ] {
        assert_eq!(status(checked).await, 419, "{checked}");
    }
}

#[tokio::test]
async fn exemptions_under_a_nested_router_see_the_full_path() {
    // The CSRF layer sits on the nested router, which sees `/keys`; the
    // exemption is written for the path the application serves.
    let api = Router::new()
        .route("/keys", post(|| async { "keys" }))
        .layer(CsrfLayer::new().with_exempt_prefix("/api"));
    let admin = Router::new()
        .route("/keys", post(|| async { "keys" }))
        .layer(CsrfLayer::new().with_exempt_prefix("/api"));
    let app = Router::new()
        .nest("/api", api)
        .nest("/admin", admin)
        .layer(layer(MemoryStore::new()));
    let status = |path: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::post(path).body(Body::empty()).unwrap();
            app.oneshot(request).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(status("/api/keys").await, 200);
    assert_eq!(status("/admin/keys").await, 419);
}

#[tokio::test]
async fn body_over_the_limit_is_413_unless_the_token_came_first() {
    let c = client_with(CsrfLayer::new().with_body_limit(64));
    let token = token(&c).await;
    let big = "x".repeat(100);
    // The token last: the whole body would have to be buffered.
    let r = c.post("/echo", &[("big", &big), ("_token", &token)]).await;
    r.assert_status(413);
    // The token first: reading stops there, and the handler gets every byte.
    let r = c.post("/echo", &[("_token", &token), ("big", &big)]).await;
    r.assert_status(200);
    assert_eq!(r.json()["body"], json!(format!("_token={token}&big={big}")));

    // Without a Content-Length, as the body streams in.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(Bytes::from_static(b"aaaaaaaaaaaaaaaaaaaa")))
        .collect();
    let stream = Body::from_stream(futures_util::stream::iter(chunks));
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", "application/x-www-form-urlencoded")],
        stream,
    )
    .await;
    r.assert_status(413);

    // Within the limit it passes; a header token skips reading entirely.
    c.post("/echo", &[("_token", &token)])
        .await
        .assert_status(200);
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[
            ("x-csrf-token", &token),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        big.clone(),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json()["body"], json!(big));
}

/// A large upload whose token comes first streams through: the layer reads
/// only up to the token, and the rest reaches the handler unread, however
/// far past the limit, whatever the chunking.
#[tokio::test]
async fn a_large_form_with_the_token_first_streams_past_the_limit() {
    let c = client_with(CsrfLayer::new().with_body_limit(1024));
    let token = token(&c).await;
    let file = "0123456789abcdef".repeat(64 * 1024); // 1 MiB
    let cases = [
        (
            "application/x-www-form-urlencoded".to_owned(),
            format!("_token={token}&file={file}"),
        ),
        (
            "multipart/form-data; boundary=XyZ".to_owned(),
            multipart(
                "XyZ",
                &[("_token", None, &token), ("file", Some("big.bin"), &file)],
            ),
        ),
    ];
    for (content_type, body) in cases {
        for chunk in [1, 7, 1000, 64 * 1024, body.len()] {
            let chunks: Vec<Result<Bytes, std::io::Error>> = body
                .as_bytes()
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            // Chunks of one byte are slow to echo through JSON: check the
            // length and the ends.
            if chunk == 1 && body.len() > 100_000 {
                let head = body[..200].to_owned();
                let stream =
                    Body::from_stream(futures_util::stream::iter(chunks.into_iter().take(200)));
                let r = send(
                    &c,
                    Method::POST,
                    "/echo",
                    &[("content-type", &content_type)],
                    stream,
                )
                .await;
                r.assert_status(200);
                assert_eq!(r.json()["body"], json!(head));
                continue;
            }
            let stream = Body::from_stream(futures_util::stream::iter(chunks));
            let r = send(
                &c,
                Method::POST,
                "/echo",
                &[("content-type", &content_type)],
                stream,
            )
            .await;
            r.assert_status(200);
            assert!(
                r.json()["body"] == json!(body),
                "{content_type} in chunks of {chunk}"
            );
        }
    }

    // A multipart token after the file is still found, within the limit
    // only: the order that streams is the token first.
    let late = multipart(
        "XyZ",
        &[("file", Some("big.bin"), &file), ("_token", None, &token)],
    );
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        late,
    )
    .await;
    r.assert_status(413);
    let small = multipart(
        "XyZ",
        &[("file", Some("a.txt"), "tiny"), ("_token", None, &token)],
    );
    let r = send(
        &c,
        Method::POST,
        "/echo",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        small.clone(),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json()["body"], json!(small));

    // A wrong token first is refused without reading the rest.
    let r = c
        .post("/echo", &[("_token", "forged"), ("file", &file)])
        .await;
    assert_mismatch(&r);
}

/// Requests from the application's own pages, as browsers send them.
fn browser_headers<'a>(site: &'a str, origin: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("host", "example.com"), ("sec-fetch-site", site)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    headers
}

#[tokio::test]
async fn the_origin_check_refuses_cross_site_requests_even_with_the_token() {
    let c = client();
    let token = token(&c).await;
    let form = format!("_token={token}");
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let c = &c;
        let form = form.clone();
        async move {
            let mut headers = headers;
            headers.push(ct);
            send(c, Method::POST, "/echo", &headers, form)
                .await
                .status
                .as_u16()
        }
    };
    // The application's own forms.
    assert_eq!(
        post(browser_headers("same-origin", Some("https://example.com"))).await,
        200
    );
    assert_eq!(
        post(browser_headers("same-origin", Some("http://example.com"))).await,
        200
    );
    assert_eq!(post(browser_headers("none", None)).await, 200);
    assert_eq!(
        post(vec![("host", "example.com")]).await,
        200,
        "neither header"
    );
    // A page of another site that got hold of the token.
    assert_eq!(
        post(browser_headers("cross-site", Some("https://evil.test"))).await,
        419
    );
    assert_eq!(post(browser_headers("cross-site", None)).await, 419);
    assert_eq!(
        post(vec![
            ("host", "example.com"),
            ("origin", "https://evil.test")
        ])
        .await,
        419
    );
    assert_eq!(
        post(vec![("host", "example.com"), ("origin", "null")]).await,
        419
    );
    // A sibling subdomain is same-site but not the same origin.
    assert_eq!(
        post(browser_headers(
            "same-site",
            Some("https://blog.example.com")
        ))
        .await,
        419
    );
    assert_eq!(
        post(vec![
            ("host", "example.com:8080"),
            ("origin", "http://example.com")
        ])
        .await,
        419
    );
    // Safe methods are not checked.
    let r = send(
        &c,
        Method::GET,
        "/echo",
        &browser_headers("cross-site", Some("https://evil.test")),
        "",
    )
    .await;
    r.assert_status(200);

    // The switch.
    let off = client_with(CsrfLayer::new().with_origin_check(false));
    let token = token_of(&off).await;
    let r = send(
        &off,
        Method::POST,
        "/echo",
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.test"),
            ("x-csrf-token", &token),
        ],
        "",
    )
    .await;
    r.assert_status(200);
}

#[tokio::test]
async fn allowed_origins_and_trusted_proxies() {
    let c = client_with(
        CsrfLayer::new()
            .with_allowed_origin("https://example.com")
            .with_allowed_origin("https://partner.test:8443"),
    );
    let token = token(&c).await;
    let status = |headers: Vec<(&'static str, &'static str)>| {
        let c = &c;
        let token = token.clone();
        async move {
            let mut request = c
                .request(Method::POST, "/echo")
                .header("x-csrf-token", token);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            c.send(request.body(Body::empty()).unwrap())
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(
        status(vec![
            ("host", "internal:3000"),
            ("origin", "https://example.com")
        ])
        .await,
        200
    );
    assert_eq!(
        status(vec![
            ("origin", "https://partner.test:8443"),
            ("sec-fetch-site", "cross-site")
        ])
        .await,
        200
    );
    assert_eq!(
        status(vec![
            ("host", "internal:3000"),
            ("origin", "http://internal:3000")
        ])
        .await,
        419
    );
    assert_eq!(status(vec![("origin", "https://partner.test")]).await, 419);

    // Behind a trusted proxy the origin the client asked for is the
    // proxy's forwarded host and scheme.
    let proxied = TestClient::new(
        routes().layer(CsrfLayer::new()),
        layer(MemoryStore::new()).with_trusted_proxies(keepsake::middleware::TrustedProxies::new()),
    );
    let token = token_of(&proxied).await;
    let send_with = |headers: Vec<(&'static str, &'static str)>| {
        let c = &proxied;
        let token = token.clone();
        async move {
            let mut request = c
                .request(Method::POST, "/echo")
                .header("x-csrf-token", token);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            c.send(request.body(Body::empty()).unwrap())
                .await
                .status
                .as_u16()
        }
    };
    let behind = vec![
        ("host", "10.0.0.5:8080"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-host", "example.com"),
        ("x-forwarded-proto", "https"),
    ];
    let with_origin = |origin: &'static str| {
        let mut headers = behind.clone();
        headers.push(("origin", origin));
        headers
    };
    assert_eq!(send_with(with_origin("https://example.com")).await, 200);
    assert_eq!(send_with(with_origin("http://example.com")).await, 419);
    assert_eq!(send_with(with_origin("http://10.0.0.5:8080")).await, 419);
    // Without trust, the forwarded headers are the client's and ignored.
    let direct = client();
    let token = token_of(&direct).await;
    let mut request = direct
        .request(Method::POST, "/echo")
        .header("x-csrf-token", token);
    for (name, value) in with_origin("https://example.com") {
        request = request.header(name, value);
    }
    let r = direct.send(request.body(Body::empty()).unwrap()).await;
    r.assert_status(419);
}

async fn token_of(client: &TestClient) -> String {
    token(client).await
}

#[test]
#[should_panic(expected = "CsrfLayer::with_allowed_origin(\"example.com\")")]
fn an_allowed_origin_must_be_an_origin() {
    let _ = CsrfLayer::new().with_allowed_origin("example.com");
}

#[tokio::test]
async fn custom_rejection() {
    let c = client_with(
        CsrfLayer::new()
            .with_rejection(|| (StatusCode::FORBIDDEN, "please reload the page").into_response()),
    );
    let _ = token(&c).await;
    let r = c.post("/echo", &[("_token", "forged")]).await;
    r.assert_status(403);
    assert_eq!(r.text(), "please reload the page");
}

#[tokio::test]
async fn garbage_bodies_and_content_types_never_panic() {
    let c = client();
    let token = token(&c).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("multipart/form-data", b"--x\r\n\r\n".to_vec()),
        ("multipart/form-data; boundary=", b"--\r\n".to_vec()),
        ("multipart/form-data; boundary=x", b"--x".to_vec()),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"_token".to_vec(),
        ),
        (
            "multipart/form-data; boundary=\"x",
            b"\xff\xfe\x00--x--".to_vec(),
        ),
        ("multipart/form-data; boundary=x", vec![0xff; 5000]),
        (
            "application/x-www-form-urlencoded",
            b"%%%&&&===_token=%f".to_vec(),
        ),
        ("application/x-www-form-urlencoded", vec![0x80, b'=', 0xff]),
        ("application/x-www-form-urlencoded", Vec::new()),
        (";;;", b"_token=abc".to_vec()),
        ("text/html; charset=\"x", b"_token=abc".to_vec()),
        ("application/octet-stream", vec![0; 100]),
    ];
    for (ct, body) in cases {
        let r = send(&c, Method::POST, "/echo", &[("content-type", ct)], body).await;
        assert_mismatch(&r);
    }
    // Headers that are not UTF-8 at all.
    let request = c
        .request(Method::POST, "/echo")
        .header(
            header::CONTENT_TYPE,
            header::HeaderValue::from_bytes(b"multipart/form-data; boundary=\xff").unwrap(),
        )
        .header(
            "x-csrf-token",
            header::HeaderValue::from_bytes(b"\xfe\xff").unwrap(),
        )
        .body(Body::from(format!("--\u{fffd}\r\n_token={token}")))
        .unwrap();
    assert_mismatch(&c.send(request).await);
}

#[tokio::test]
async fn a_store_failure_gets_the_session_layers_error_response() {
    let store = Failing::new(MemoryStore::new());
    let fail = Arc::clone(&store.fail);
    let c = TestClient::new(
        routes().layer(CsrfLayer::new()),
        layer(store)
            .with_error_handler(|_| (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()),
    );
    let token = token(&c).await;
    fail.lock().unwrap().push(LOAD);
    let r = c.post("/echo", &[("_token", &token)]).await;
    r.assert_status(503);
    assert_eq!(r.text(), "down");
}

#[tokio::test]
async fn without_the_session_layer_the_answer_says_how_to_fix_it() {
    let app = routes().layer(CsrfLayer::new());
    let response = app
        .oneshot(Request::post("/echo").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("SessionLayer") && text.contains("CsrfLayer"),
        "{text}"
    );

    // Safe methods need no session at all.
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(CsrfLayer::new());
    let response = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_carried_in_a_header_are_not_checked() {
    let id_header = HeaderName::from_static("x-session-token");
    let app = routes()
        .layer(CsrfLayer::new())
        .layer(layer(MemoryStore::new()).with_id_header(id_header.clone()));
    let call = |request: Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap() }
    };

    let first = call(Request::get("/token").body(Body::empty()).unwrap()).await;
    let id = first.headers()[&id_header].to_str().unwrap().to_owned();
    assert!(!id.is_empty());

    // An API client: the id in the header, no CSRF token, and (a script
    // on another origin, allowed by CORS) a foreign origin.
    let r = call(
        Request::post("/loaded")
            .header(&id_header, &id)
            .header("origin", "https://spa.example.net")
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The check did not even load the session.
    let body = axum::body::to_bytes(r.into_body(), 64).await.unwrap();
    assert_eq!(&body[..], b"false");

    // The same session through the cookie, as a browser sends it: checked.
    let r = call(
        Request::post("/echo")
            .header(header::COOKIE, format!("keepsake_session={id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 419);
    // No id at all: checked.
    let r = call(Request::post("/echo").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status().as_u16(), 419);
}

#[cfg(feature = "cookie")]
#[tokio::test]
async fn works_with_the_cookie_store() {
    let store = keepsake::CookieStore::new(keepsake::Key::generate());
    let c = TestClient::new(routes().layer(CsrfLayer::new()), layer(store));
    let mine = token(&c).await;
    assert!(c.cookie().is_some());
    c.post("/echo", &[("_token", &mine)])
        .await
        .assert_status(200);
    let r = send(&c, Method::PATCH, "/echo", &[("x-csrf-token", &mine)], "").await;
    r.assert_status(200);
    assert_mismatch(&c.post("/echo", &[("_token", "forged")]).await);
    let other = c.new_browser();
    let _ = token(&other).await;
    assert_mismatch(&other.post("/echo", &[("_token", &mine)]).await);
}

#[tokio::test]
async fn a_session_without_a_token_is_rejected_without_a_write() {
    let store = Counting::new(MemoryStore::new());
    let calls = Arc::clone(&store.calls);
    let client = TestClient::new(
        routes()
            .route(
                "/put",
                get(|session: Session| async move { session.put("a", 1) }),
            )
            .layer(CsrfLayer::new()),
        layer(store),
    );
    client.get("/put").await.assert_status(200);
    let writes = |calls: &[std::sync::atomic::AtomicUsize; 8]| {
        calls[common::CREATE].load(Ordering::SeqCst) + calls[common::SAVE].load(Ordering::SeqCst)
    };
    let before = writes(&calls);
    let response = send(
        &client,
        Method::POST,
        "/echo",
        &[("x-csrf-token", "guess")],
        "",
    )
    .await;
    assert_mismatch(&response);
    assert_eq!(
        writes(&calls),
        before,
        "the check created no token and wrote nothing"
    );
    client.session().await.assert_has_value("a", 1);
}
