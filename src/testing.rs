//! Test helpers for applications that use keepsake (feature `testing`).
//!
//! Two tools, in the spirit of Laravel's `withSession` and
//! `assertSessionHas`:
//!
//! - [`Session::new_detached`] gives a standalone [`Session`] for unit tests
//!   of code that takes one, with no layer, no HTTP and no store;
//!   [`Session::end_request`] steps its flash ageing so code can be tested
//!   across "requests". [`session_with`] makes one pre-filled.
//! - [`TestClient`] drives any [`Router`] through a [`SessionLayer`] with
//!   `tower::ServiceExt::oneshot` (no network), carries the session cookie
//!   from response to request like a browser, can be forked to act as a
//!   second tab, can start with a pre-filled session, and asserts on the
//!   stored session after a request.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use axum::{Router, routing::post};
//! use keepsake::{MemoryStore, Session, SessionLayer};
//! use keepsake::testing::TestClient;
//!
//! async fn save(session: Session) -> Result<&'static str, keepsake::Error> {
//!     session.flash("status", "Saved!")?;
//!     Ok("ok")
//! }
//!
//! let app = Router::new().route("/save", post(save));
//! let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
//! client.post("/save", &[]).await.assert_status(200);
//! client.session().await.assert_flashed("status").assert_has_value("status", "Saved!");
//! # })
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use keepsake_core::{Cas, Payload, Record, Session, SessionId, SessionStore};
use serde::Serialize;
use serde_json::{Map, Value};
use tower::ServiceExt as _;

use crate::SessionLayer;

/// A detached session pre-filled with `data` (a JSON object), for unit tests.
///
/// ```
/// use keepsake::testing::session_with;
/// use serde_json::json;
///
/// let session = session_with(json!({"cart": {"items": 2}}));
/// assert_eq!(session.get::<i64>("cart.items").unwrap(), Some(2));
/// session.flash("status", "added").unwrap();
/// session.end_request();
/// assert!(session.has("status"));
/// session.end_request();
/// assert!(!session.has("status"));
/// ```
///
/// # Panics
///
/// When `data` is not a JSON object.
#[must_use]
pub fn session_with(data: Value) -> Session {
    let Value::Object(map) = data else {
        panic!("session_with takes a JSON object, got {data}");
    };
    // Top-level keys as given: a key with a dot is one key here.
    Session::new_detached_with(map)
}

#[derive(Debug, Default)]
struct Jar {
    /// The session cookie's current value.
    value: Option<String>,
    /// Its value before the last request.
    before: Option<String>,
}

/// A browser-like client over a [`Router`], with the session layer applied.
#[derive(Clone)]
pub struct TestClient {
    app: Router,
    layer: SessionLayer,
    jar: Arc<Mutex<Jar>>,
    headers: HeaderMap,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl TestClient {
    /// A client for `app` with `layer` applied to it (pass the router without
    /// the session layer; the client needs the layer to reach its store).
    #[must_use]
    pub fn new(app: Router, layer: SessionLayer) -> Self {
        Self {
            app: app.layer(layer.clone()),
            layer,
            jar: Arc::default(),
            headers: HeaderMap::new(),
        }
    }

    /// A second tab of the same browser: shares this client's cookie.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new().route("/n", post(|s: Session| async move { s.increment("n", 1).map(|n| n.to_string()) }));
    /// let tab = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
    /// tab.post("/n", &[]).await;
    /// let other_tab = tab.fork();
    /// assert_eq!(other_tab.post("/n", &[]).await.text(), "2");
    /// let other_device = tab.new_browser();
    /// assert_eq!(other_device.post("/n", &[]).await.text(), "1");
    /// # })
    /// ```
    #[must_use]
    pub fn fork(&self) -> Self {
        self.clone()
    }

    /// Another browser (another device): same app, no cookie.
    #[must_use]
    pub fn new_browser(&self) -> Self {
        Self {
            jar: Arc::default(),
            ..self.clone()
        }
    }

    /// Adds a header to every request this client sends.
    ///
    /// # Panics
    ///
    /// When the name or value is not a valid header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let value = http::HeaderValue::from_str(value).expect("a valid header value");
        self.headers.insert(name, value);
        self
    }

    /// Starts the browser with a stored session holding `data` (a JSON
    /// object; top-level keys as given), as Laravel's `withSession`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new().route("/cart", post(|s: Session| async move {
    ///     s.get::<i64>("cart.items").map(|n| n.unwrap_or(0).to_string())
    /// }));
    /// let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()))
    ///     .with_session(serde_json::json!({"cart": {"items": 3}}))
    ///     .await;
    /// assert_eq!(client.post("/cart", &[]).await.text(), "3");
    /// # })
    /// ```
    ///
    /// # Panics
    ///
    /// When `data` is not an object or the store fails.
    pub async fn with_session(self, data: Value) -> Self {
        let Value::Object(map) = data else {
            panic!("with_session takes a JSON object, got {data}");
        };
        let id = SessionId::generate();
        let now = keepsake_core::now();
        let payload = Payload {
            data: map,
            created_at: now,
            ..Payload::default()
        };
        let record = Record {
            key: id.storage_key(),
            payload: payload.encode().expect("JSON encodes"),
            last_activity: now,
            expires_at: now + 3600,
            version: 1,
            user_id: None,
            ip_address: None,
            user_agent: None,
        };
        let value = match self.layer.store.client_side() {
            Some(client) => client
                .seal(&id, &record)
                .expect("the session fits in a cookie"),
            None => {
                let created = self.layer.store.create(&record).await;
                assert_eq!(created.expect("store create"), Cas::Applied);
                id.as_str().to_owned()
            }
        };
        self.set_cookie(Some(value));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jar> {
        self.jar.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session cookie's value, if the browser holds one.
    #[must_use]
    pub fn cookie(&self) -> Option<String> {
        self.lock().value.clone()
    }

    /// Replaces the session cookie's value (to send a forged or stale one).
    pub fn set_cookie(&self, value: Option<String>) {
        self.lock().value = value;
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> TestResponse {
        self.send(
            self.request(Method::GET, uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    /// `POST uri` with a form body.
    pub async fn post(&self, uri: &str, form: &[(&str, &str)]) -> TestResponse {
        let body = form_urlencode(form);
        let request = self
            .request(Method::POST, uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request");
        self.send(request).await
    }

    /// `POST uri` with a JSON body.
    pub async fn post_json(&self, uri: &str, json: &impl Serialize) -> TestResponse {
        let body = serde_json::to_vec(json).expect("JSON encodes");
        let request = self
            .request(Method::POST, uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        self.send(request).await
    }

    /// A request builder with this client's headers (not yet its cookie).
    #[must_use]
    pub fn request(&self, method: Method, uri: &str) -> http::request::Builder {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
    }

    /// Sends `request` with the session cookie, and keeps the cookie the
    /// response sets (or removes).
    pub async fn send(&self, mut request: Request<Body>) -> TestResponse {
        let name = &self.layer.config.cookie_name;
        let sent = self.cookie();
        if let Some(value) = &sent {
            let header = format!("{name}={value}");
            request
                .headers_mut()
                .append(COOKIE, header.parse().expect("cookie header"));
        }
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();

        let mut jar = self.lock();
        jar.before.clone_from(&sent);
        for header in parts.headers.get_all(SET_COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            let Some((pair, attributes)) = text.split_once(';').or(Some((text, ""))) else {
                continue;
            };
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if key.trim() != name {
                continue;
            }
            let removed = value.is_empty() || attributes.contains("Max-Age=0");
            jar.value = (!removed).then(|| value.to_owned());
        }
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The session as stored now (not a request: nothing ages), for
    /// assertions.
    ///
    /// # Panics
    ///
    /// When the store fails.
    pub async fn session(&self) -> SessionSnapshot {
        let (value, before) = {
            let jar = self.lock();
            (jar.value.clone(), jar.before.clone())
        };
        let store = &self.layer.store;
        let current = self.load(value.as_deref()).await;
        // A client-side store (the cookie driver) has no record to destroy:
        // the browser dropping the old value is all there is.
        let previous_exists = match (store.client_side(), before.as_deref()) {
            (Some(_), _) | (_, None) => false,
            (None, Some(before)) => self.load(Some(before)).await.is_some(),
        };
        SessionSnapshot {
            id_changed: before.is_some() && before != value,
            had_session: before.is_some(),
            previous_exists,
            exists: current.is_some(),
            payload: current.unwrap_or_default(),
        }
    }

    async fn load(&self, value: Option<&str>) -> Option<Payload> {
        let value = value?;
        let store = &self.layer.store;
        let record = match store.client_side() {
            Some(client) => client.open(value).map(|(_, record)| record),
            None => {
                let id = SessionId::parse(value)?;
                store.load(&id.storage_key()).await.expect("store load")
            }
        }?;
        Some(Payload::decode(&record.payload).unwrap_or_default())
    }
}

fn form_urlencode(form: &[(&str, &str)]) -> String {
    fn encode(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(char::from(byte));
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    }
    form.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A response collected by [`TestClient`].
#[derive(Debug)]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as UTF-8 text (lossy).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }

    /// Every `Set-Cookie` header.
    #[must_use]
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// Asserts the status code.
    ///
    /// # Panics
    ///
    /// When it differs, showing the body.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected status {status}, got {}; body: {}",
            self.status,
            self.text()
        );
        self
    }
}

/// The stored session after a request, with Laravel-style assertions. Every
/// failing assertion shows what the session held.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    payload: Payload,
    exists: bool,
    had_session: bool,
    id_changed: bool,
    previous_exists: bool,
}

impl SessionSnapshot {
    /// The user data.
    #[must_use]
    pub fn data(&self) -> &Map<String, Value> {
        &self.payload.data
    }

    /// The value at a dot path.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Value> {
        self.payload.get(key).cloned()
    }

    /// True when a stored session exists for the browser's cookie.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.exists
    }

    fn held(&self) -> String {
        format!(
            "the session held {} (flash new: {:?}, old: {:?})",
            Value::Object(self.payload.data.clone()),
            self.payload.meta.flash_new,
            self.payload.meta.flash_old
        )
    }

    /// Asserts `key` is present and not null.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new().route("/", post(|s: Session| async move { s.put("user.name", "Ada") }));
    /// let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
    /// client.post("/", &[]).await;
    /// client.session().await.assert_has("user.name").assert_missing("user.email");
    /// # })
    /// ```
    ///
    /// # Panics
    ///
    /// Otherwise, showing what the session held.
    #[track_caller]
    pub fn assert_has(&self, key: &str) -> &Self {
        assert!(
            self.get(key).is_some_and(|v| !v.is_null()),
            "expected the session to have `{key}`; {}",
            self.held()
        );
        self
    }

    /// Asserts `key` holds `value`.
    ///
    /// # Panics
    ///
    /// Otherwise, showing what the session held.
    #[track_caller]
    pub fn assert_has_value(&self, key: &str, value: impl Serialize) -> &Self {
        let expected = serde_json::to_value(value).expect("JSON encodes");
        assert_eq!(
            self.get(key).as_ref(),
            Some(&expected),
            "expected session `{key}` to be {expected}; {}",
            self.held()
        );
        self
    }

    /// Asserts `key` is absent.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new().route("/", post(|s: Session| async move { s.put("a", 1)?; s.pull::<i64>("a").map(|_| ()) }));
    /// let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
    /// client.post("/", &[]).await;
    /// client.session().await.assert_missing("a");
    /// # })
    /// ```
    ///
    /// # Panics
    ///
    /// Otherwise, showing what the session held.
    #[track_caller]
    pub fn assert_missing(&self, key: &str) -> &Self {
        assert!(
            self.get(key).is_none(),
            "expected the session not to have `{key}`; {}",
            self.held()
        );
        self
    }

    /// Asserts `key` is flash data that the next request will see.
    ///
    /// # Panics
    ///
    /// Otherwise, showing what the session held.
    #[track_caller]
    pub fn assert_flashed(&self, key: &str) -> &Self {
        let meta = &self.payload.meta;
        assert!(
            (meta.flash_old.iter().any(|k| k == key) || meta.flash_new.iter().any(|k| k == key))
                && self.get(key).is_some(),
            "expected `{key}` to be flashed; {}",
            self.held()
        );
        self
    }

    /// Asserts the last request gave the session a new id and kept it stored,
    /// and that the old id no longer loads.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new()
    ///     .route("/visit", post(|s: Session| async move { s.put("cart", 1) }))
    ///     .route("/login", post(|s: Session| async move { s.regenerate(); s.set_user_id("42"); }));
    /// let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
    /// client.post("/visit", &[]).await;
    /// client.post("/login", &[]).await;
    /// client.session().await.assert_regenerated().assert_has_value("cart", 1);
    /// # })
    /// ```
    ///
    /// # Panics
    ///
    /// Otherwise.
    #[track_caller]
    pub fn assert_regenerated(&self) -> &Self {
        assert!(
            self.had_session && self.id_changed && self.exists,
            "expected the session id to change with the session kept (had a session: {}, id changed: {}, new one stored: {})",
            self.had_session,
            self.id_changed,
            self.exists
        );
        assert!(
            !self.previous_exists,
            "expected the old session record to be destroyed"
        );
        self
    }

    /// Asserts the last request destroyed the old session: its id no longer
    /// loads, and whatever the browser holds now is a different, empty
    /// session.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use axum::{Router, routing::post};
    /// # use keepsake::{MemoryStore, Session, SessionLayer, testing::TestClient};
    /// let app = Router::new()
    ///     .route("/login", post(|s: Session| async move { s.put("user", "ada") }))
    ///     .route("/logout", post(|s: Session| async move { s.invalidate() }));
    /// let client = TestClient::new(app, SessionLayer::new(MemoryStore::new()));
    /// client.post("/login", &[]).await;
    /// client.post("/logout", &[]).await;
    /// client.session().await.assert_invalidated().assert_missing("user");
    /// # })
    /// ```
    ///
    /// # Panics
    ///
    /// Otherwise, showing what the session held.
    #[track_caller]
    pub fn assert_invalidated(&self) -> &Self {
        assert!(
            self.had_session && self.id_changed && !self.previous_exists,
            "expected the old session to be destroyed (had a session: {}, id changed: {}, old one still stored: {})",
            self.had_session,
            self.id_changed,
            self.previous_exists
        );
        assert!(
            self.payload.data.is_empty(),
            "expected an empty session after invalidation; {}",
            self.held()
        );
        self
    }
}
