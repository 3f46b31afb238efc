//! The bodies of the fuzz targets, shared by the libFuzzer targets in
//! `fuzz_targets/` (`cargo +nightly fuzz run NAME`) and by the property-based
//! fuzzer in `proptest.rs` (`cargo test --test fuzz`), which also replays the
//! seeds in `corpus/NAME/`.
//!
//! Each target takes arbitrary bytes, drives one decoder that a client or a
//! store can reach, and panics when an invariant breaks: a panic inside the
//! code under test is a finding, and so is a broken promise (a client that
//! chooses its own session id, a tampered cookie that opens, a forged form
//! that passes the CSRF check, a session value that changes on its way
//! through the store).
//!
//! Markers in the input are replaced by values the fixture knows, so seeds
//! can reach the paths behind a valid credential: `{{id}}` (a stored session
//! id), `{{other}}` (a well-formed id that is not stored), `{{token}}` (that
//! session's CSRF token), `{{cookie}}` (a value sealed by the cookie driver)
//! and `{{sealed}}` (a payload encrypted at rest).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use keepsake::middleware::{ProxyHeader, TrustedProxies};
use keepsake::{
    Cas, CsrfLayer, MemoryStore, Payload, Record, Session, SessionId, SessionInfo, SessionLayer,
    SessionStore, StorageKey,
};
use keepsake_core::CommitContext;
use keepsake_core::commit::{Plan, plan};
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

/// The body of a fuzz target.
pub(crate) type Target = fn(&[u8]);

/// The targets by name: the libFuzzer binary and the corpus folder share it.
pub(crate) const TARGETS: &[(&str, Target)] = &[
    ("session_id", session_id),
    ("cookie_header", cookie_header),
    ("cookie_open", cookie_open),
    ("payload", payload),
    ("encrypted_payload", encrypted_payload),
    ("dot_paths", dot_paths),
    ("csrf_body", csrf_body),
    ("proxy_headers", proxy_headers),
];

// ---------------------------------------------------------------------------
// The fixture: one per thread (libFuzzer runs one; the test runner several).

/// A memory store that counts its loads.
#[derive(Debug)]
struct CountingStore {
    inner: MemoryStore,
    loads: Arc<AtomicUsize>,
}

#[keepsake::async_trait]
impl SessionStore for CountingStore {
    async fn load(&self, key: &StorageKey) -> keepsake::Result<Option<Record>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key).await
    }
    async fn create(&self, record: &Record) -> keepsake::Result<Cas> {
        self.inner.create(record).await
    }
    async fn save(&self, record: &Record, expected: i64) -> keepsake::Result<Cas> {
        self.inner.save(record, expected).await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        version: i64,
        last: i64,
        expires: i64,
    ) -> keepsake::Result<Cas> {
        self.inner.touch(key, version, last, expires).await
    }
    async fn destroy(&self, key: &StorageKey) -> keepsake::Result<()> {
        self.inner.destroy(key).await
    }
    async fn gc(&self, now: i64) -> keepsake::Result<u64> {
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

struct Fixture {
    rt: tokio::runtime::Runtime,
    loads: Arc<AtomicUsize>,
    /// `GET /probe` answers `id|known` and never writes.
    session_app: Router,
    /// `POST /submit` echoes its body, behind `CsrfLayer`.
    csrf_app: Router,
    known: SessionId,
    other: SessionId,
    token: String,
    #[cfg(feature = "cookie")]
    cookie_store: keepsake::CookieStore,
    #[cfg(feature = "cookie")]
    sealed_cookie: String,
    #[cfg(feature = "encryption")]
    encrypted: keepsake::EncryptedStore<MemoryStore>,
    #[cfg(feature = "encryption")]
    sealed_payload: String,
}

/// The payload that `{{sealed}}` decrypts to.
const SEALED_PLAIN: &str = r#"{"d":{"secret":"4111 1111 1111 1111"},"c":1700000000}"#;

fn record(id: &SessionId, payload: String) -> Record {
    let now = keepsake::now();
    Record {
        key: id.storage_key(),
        payload,
        last_activity: now,
        expires_at: now + 10 * 365 * 86_400,
        version: 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    }
}

async fn probe(session: Session) -> String {
    format!(
        "{}|{}",
        session.id().as_str(),
        session.get_value("known").is_some()
    )
}

async fn submit(body: Bytes) -> Bytes {
    body
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let loads = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(CountingStore {
            inner: MemoryStore::new(),
            loads: Arc::clone(&loads),
        });
        let known = SessionId::generate();
        let other = SessionId::generate();
        let token = SessionId::generate().as_str().to_owned();
        let payload = json!({"d": {"known": true}, "m": {"t": token}, "c": keepsake::now()});
        let created = rt.block_on(store.create(&record(&known, payload.to_string())));
        assert_eq!(created.expect("memory create"), Cas::Applied);

        let layer = SessionLayer::from_arc(store).with_lottery(0, 1);
        let session_app = Router::new()
            .route("/probe", get(probe))
            .layer(layer.clone());
        let csrf_app = Router::new()
            .route("/submit", post(submit))
            .layer(CsrfLayer::new().with_body_limit(64 * 1024))
            .layer(layer);

        #[cfg(feature = "cookie")]
        let (cookie_store, sealed_cookie) = {
            use keepsake::ClientSideStore as _;
            let store = keepsake::CookieStore::new(keepsake::Key::generate());
            let id = SessionId::generate();
            let sealed = store
                .seal(&id, &record(&id, r#"{"d":{"theme":"dark"}}"#.into()))
                .expect("a small session seals");
            (store, sealed)
        };
        #[cfg(feature = "encryption")]
        let (encrypted, sealed_payload) = {
            let store =
                keepsake::EncryptedStore::new(MemoryStore::new(), keepsake::Key::generate());
            let id = fixed_id();
            rt.block_on(async {
                let created = store.create(&record(&id, SEALED_PLAIN.into())).await;
                assert_eq!(created.expect("memory create"), Cas::Applied);
                let raw = store.inner().load(&id.storage_key()).await;
                let sealed = raw.expect("memory load").expect("just created").payload;
                (store, sealed)
            })
        };

        Self {
            rt,
            loads,
            session_app,
            csrf_app,
            known,
            other,
            token,
            #[cfg(feature = "cookie")]
            cookie_store,
            #[cfg(feature = "cookie")]
            sealed_cookie,
            #[cfg(feature = "encryption")]
            encrypted,
            #[cfg(feature = "encryption")]
            sealed_payload,
        }
    }
}

thread_local! {
    static FIXTURE: Fixture = Fixture::new();
}

fn with_fixture<T>(f: impl FnOnce(&Fixture) -> T) -> T {
    FIXTURE.with(f)
}

/// An id that is the same on every run (`A…A` is canonical base64url).
fn fixed_id() -> SessionId {
    SessionId::parse(&"A".repeat(43)).expect("43 × A is a well-formed id")
}

/// `data` with every `marker` replaced by `with`.
fn substitute(data: &[u8], markers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = data.to_vec();
    for (marker, with) in markers {
        let marker = marker.as_bytes();
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(marker) {
                next.extend_from_slice(with.as_bytes());
                i += marker.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

async fn body_bytes(body: Body) -> Bytes {
    body.collect().await.expect("an in-memory body").to_bytes()
}

// ---------------------------------------------------------------------------
// session_id: SessionId::parse and StorageKey::parse.

/// `SessionId::parse` and `StorageKey::parse` accept exactly their formats,
/// round-trip what they accept, and never print an id.
pub(crate) fn session_id(data: &[u8]) {
    let lossy = String::from_utf8_lossy(data);
    for text in [lossy.as_ref(), lossy.trim()] {
        let id = SessionId::parse(text);
        let key = StorageKey::parse(text);
        assert!(
            id.is_none() || key.is_none(),
            "one value parsed as both an id and a storage key"
        );
        if let Some(id) = id {
            assert_eq!(id.as_str(), text);
            assert_eq!(text.len(), keepsake::SESSION_ID_LEN);
            assert!(text.bytes().all(is_base64url), "{text:?}");
            assert!(!format!("{id:?}").contains(text));
            assert!(!id.to_string().contains(text));
            let key = id.storage_key();
            assert_eq!(StorageKey::parse(key.as_str()), Some(key.clone()));
            assert_eq!(SessionId::parse(id.as_str()), Some(id));
        }
        if let Some(key) = key {
            assert_eq!(key.as_str(), text);
            assert_eq!(text.len(), keepsake::STORAGE_KEY_LEN);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert_eq!(key.short().len(), 8);
            assert_eq!(StorageKey::from_bytes(key.to_bytes()), key);
        }
    }
}

// ---------------------------------------------------------------------------
// cookie_header: the layer's cookie reading, end to end.

/// The most ids of one request the layer tries against the store (several
/// cookies of the same name: a stale one for a parent domain sent first).
const MAX_LOADS_PER_REQUEST: usize = 3;

/// Arbitrary `Cookie` headers (one per line of the input) through
/// `SessionLayer`: always a 200, at most three loads, and a client never gets
/// a session id of its own choosing: the session is the stored one only when
/// its id was sent, and otherwise has an id that appears nowhere in the
/// request.
pub(crate) fn cookie_header(data: &[u8]) {
    with_fixture(|fx| {
        let text = substitute(
            data,
            &[
                ("{{id}}", fx.known.as_str()),
                ("{{other}}", fx.other.as_str()),
            ],
        );
        let mut request = Request::get("/probe").body(Body::empty()).expect("request");
        for line in text.split(|&b| b == b'\n').take(64) {
            if let Ok(value) = HeaderValue::from_bytes(line) {
                request.headers_mut().append(COOKIE, value);
            }
        }
        let before = fx.loads.load(Ordering::SeqCst);
        let (status, set_cookies, body) = fx.rt.block_on(async {
            let response = fx
                .session_app
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let (parts, body) = response.into_parts();
            let set_cookies: Vec<String> = parts
                .headers
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| v.to_str().expect("set-cookie is ASCII").to_owned())
                .collect();
            (parts.status, set_cookies, body_bytes(body).await)
        });
        let loads = fx.loads.load(Ordering::SeqCst) - before;
        assert_eq!(
            status,
            StatusCode::OK,
            "body: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            loads <= MAX_LOADS_PER_REQUEST,
            "{loads} loads for one request"
        );

        let body = String::from_utf8(body.to_vec()).expect("the probe answers text");
        let (id, known) = body.split_once('|').expect("id|known");
        let is_known = id == fx.known.as_str();
        assert_eq!(
            known == "true",
            is_known,
            "the data belongs to the known id"
        );
        if is_known {
            assert!(contains(&text, fx.known.as_str().as_bytes()));
            assert!(loads >= 1);
        } else {
            assert!(
                !contains(&text, id.as_bytes()),
                "the client chose its session id"
            );
        }
        assert!(SessionId::parse(id).is_some(), "{id:?}");
        for header in &set_cookies {
            let pair = header.split(';').next().unwrap_or_default();
            let value = pair.split_once('=').map(|(_, v)| v).unwrap_or_default();
            assert!(
                value.is_empty() || value == id,
                "a cookie for another session was set: {header}"
            );
        }
    });
}

// ---------------------------------------------------------------------------
// cookie_open: the cookie driver's decryption.

/// `CookieStore::open` on arbitrary strings opens only what the store sealed:
/// every other value, tampered copies included, opens as nothing.
pub(crate) fn cookie_open(data: &[u8]) {
    #[cfg(feature = "cookie")]
    with_fixture(|fx| {
        use keepsake::ClientSideStore as _;
        let text = substitute(data, &[("{{cookie}}", &fx.sealed_cookie)]);
        let text = String::from_utf8_lossy(&text);
        match fx.cookie_store.open(&text) {
            Some((id, record)) => {
                assert_eq!(
                    text, fx.sealed_cookie,
                    "a value the store never sealed opened"
                );
                assert_eq!(record.key, id.storage_key());
                assert_eq!(record.payload, r#"{"d":{"theme":"dark"}}"#);
            }
            None => assert_ne!(text, fx.sealed_cookie, "the sealed value did not open"),
        }
    });
    #[cfg(not(feature = "cookie"))]
    let _ = data;
}

// ---------------------------------------------------------------------------
// payload: the stored payload decoder.

fn commit_context() -> CommitContext {
    CommitContext {
        idle_lifetime: 3600,
        ..CommitContext::new(keepsake::now())
    }
}

/// What a session holds after its record made a round trip through a store:
/// the data of the session rebuilt from the record it would write.
fn round_trip(session: &Session) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let record = match plan(session, &commit_context(), false).ok()? {
        Plan::Create { record, .. } | Plan::Save { record, .. } => record,
        Plan::Nothing | Plan::Touch { .. } | Plan::Destroy { .. } => return None,
    };
    let back = Session::from_record(session.id(), &record);
    Some((session.all(), back.all()))
}

/// `Payload::decode` of arbitrary text: what decodes re-encodes to the same
/// payload, and a session loaded from any stored text never panics, is
/// usable, and saves what it holds.
pub(crate) fn payload(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(payload) = Payload::decode(&text) {
        let encoded = payload.encode().expect("a decoded payload encodes");
        let again = Payload::decode(&encoded).expect("an encoded payload decodes");
        assert_eq!(again, payload, "the payload changed on a round trip");
    }
    let id = fixed_id();
    let session = Session::from_record(id.clone(), &record(&id, text.into_owned()));
    let _ = session.all();
    session
        .put("fuzz.written", 1)
        .expect("put on a loaded session");
    assert_eq!(session.get_value("fuzz.written"), Some(json!(1)));
    if let Some((held, stored)) = round_trip(&session) {
        assert_eq!(
            held, stored,
            "the session changed on its way through the store"
        );
    }
}

// ---------------------------------------------------------------------------
// encrypted_payload: EncryptedStore's decryption of stored payloads.

/// `EncryptedStore::load` of an arbitrary stored payload: never an error,
/// never a panic; only what the store sealed decrypts, anything else loads
/// as an empty payload (an empty session).
pub(crate) fn encrypted_payload(data: &[u8]) {
    #[cfg(feature = "encryption")]
    with_fixture(|fx| {
        let text = substitute(data, &[("{{sealed}}", &fx.sealed_payload)]);
        let text = String::from_utf8_lossy(&text).into_owned();
        let id = SessionId::generate();
        let key = id.storage_key();
        let loaded = fx.rt.block_on(async {
            let raw = record(&id, text.clone());
            let created = fx.encrypted.inner().create(&raw).await;
            assert_eq!(created.expect("memory create"), Cas::Applied);
            let loaded = fx.encrypted.load(&key).await;
            fx.encrypted
                .inner()
                .destroy(&key)
                .await
                .expect("memory destroy");
            loaded
        });
        let loaded = loaded
            .expect("a stored payload never makes load fail")
            .expect("the record is there");
        // The sealed payload is bound to its own storage key: under any
        // other key even the genuine ciphertext must not decrypt.
        assert_eq!(
            loaded.payload, "",
            "a payload sealed for another key decrypted"
        );
        let session = Session::from_record(id, &loaded);
        assert!(session.all().is_empty());

        // Under the key it was sealed for, only the genuine value opens.
        let id = fixed_id();
        let key = id.storage_key();
        let loaded = fx.rt.block_on(async {
            fx.encrypted
                .inner()
                .destroy(&key)
                .await
                .expect("memory destroy");
            let created = fx
                .encrypted
                .inner()
                .create(&record(&id, text.clone()))
                .await;
            assert_eq!(created.expect("memory create"), Cas::Applied);
            fx.encrypted.load(&key).await
        });
        let loaded = loaded.expect("never an error").expect("present");
        if text == fx.sealed_payload {
            assert_eq!(loaded.payload, SEALED_PLAIN);
        } else {
            assert_eq!(
                loaded.payload, "",
                "a value the store never sealed decrypted"
            );
        }
        let _ = Session::from_record(id, &loaded).all();
    });
    #[cfg(not(feature = "encryption"))]
    let _ = data;
}

// ---------------------------------------------------------------------------
// dot_paths: the Session API on arbitrary paths and values.

/// Runs a program of session operations, one per line: `op<TAB>path<TAB>json`
/// (a value that is not JSON is taken as a string; an unknown op is chosen
/// by its first byte). Checks after every operation: what was put reads
/// back, a push appends, an increment reads back as its result, a failed
/// operation leaves the data unchanged, and at the end the whole session
/// survives a round trip through a stored record.
pub(crate) fn dot_paths(data: &[u8]) {
    const OPS: &[&str] = &[
        "put", "get", "pull", "push", "incr", "decr", "incrf", "forget", "flash", "now", "keep",
        "reflash", "flush", "has", "exists", "remember", "except", "only", "end",
    ];
    let session = Session::new_detached();
    for line in data.split(|&b| b == b'\n').take(64) {
        let mut fields = line.splitn(3, |&b| b == b'\t');
        let op = fields.next().unwrap_or_default();
        let path = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let arg = fields.next().map(|raw| {
            let raw = String::from_utf8_lossy(raw);
            serde_json::from_str::<Value>(&raw).unwrap_or(Value::String(raw.into_owned()))
        });
        let op = std::str::from_utf8(op)
            .ok()
            .and_then(|op| OPS.iter().find(|known| **known == op))
            .copied()
            .unwrap_or_else(|| OPS[usize::from(op.first().copied().unwrap_or(0)) % OPS.len()]);
        let value = arg.clone().unwrap_or(Value::Null);
        let before = session.all();
        let p = path.as_str();
        match op {
            "put" => {
                session.put(p, &value).expect("put of a JSON value");
                assert_eq!(
                    session.get_value(p).as_ref(),
                    Some(&value),
                    "put {p:?} then get"
                );
            }
            "get" => {
                let got = session.get::<Value>(p).expect("any value reads as a Value");
                assert_eq!(got, session.get_value(p));
                assert_eq!(session.has(p), got.as_ref().is_some_and(|v| !v.is_null()));
                assert_eq!(session.exists(p), got.is_some());
            }
            "pull" => {
                let got = session
                    .pull::<Value>(p)
                    .expect("any value reads as a Value");
                let id = fixed_id();
                let payload = json!({"d": before}).to_string();
                let reference = Session::from_record(id.clone(), &record(&id, payload));
                assert_eq!(got, reference.get_value(p));
                reference.forget(p);
                assert_eq!(
                    session.all(),
                    reference.all(),
                    "pull {p:?} forgets like forget"
                );
            }
            "push" => match session.push(p, &value) {
                Ok(()) => {
                    let list = session.get_value(p).expect("pushed onto");
                    let list = list.as_array().expect("a push leaves a list");
                    assert_eq!(list.last(), Some(&value));
                }
                Err(_) => assert_eq!(session.all(), before, "a failed push changed the data"),
            },
            "incr" | "decr" => {
                let by = value.as_i64().unwrap_or(1);
                let result = if op == "incr" {
                    session.increment(p, by)
                } else {
                    session.decrement(p, by)
                };
                match result {
                    Ok(n) => assert_eq!(session.get_value(p), Some(json!(n))),
                    Err(_) => {
                        assert_eq!(session.all(), before, "a failed increment changed the data");
                    }
                }
            }
            "incrf" => match session.increment(p, value.as_f64().unwrap_or(0.5)) {
                Ok(n) => assert_eq!(session.get_value(p).and_then(|v| v.as_f64()), Some(n)),
                Err(_) => assert_eq!(session.all(), before, "a failed increment changed the data"),
            },
            "forget" => session.forget(p),
            "flash" => {
                session.flash(p, &value).expect("flash of a JSON value");
                assert_eq!(session.get_value(p).as_ref(), Some(&value));
            }
            "now" => {
                session.now(p, &value).expect("now of a JSON value");
                assert_eq!(session.get_value(p).as_ref(), Some(&value));
            }
            "keep" => session.keep([p]),
            "reflash" => session.reflash(),
            "flush" => {
                session.flush();
                assert!(session.all().is_empty());
            }
            "has" => {
                let _ = session.has_all([p]) && session.has_any([p]) && session.exists_all([p]);
            }
            "exists" => assert_eq!(session.exists(p), !session.missing(p)),
            "remember" => match session.remember::<Value>(p, || value.clone()) {
                Ok(got) => assert_eq!(session.get_value(p).as_ref(), Some(&got)),
                Err(error) => panic!("remember of a Value failed: {error}"),
            },
            "except" => {
                let _ = session.except([p]);
                assert_eq!(session.all(), before, "except changed the session");
            }
            "only" => {
                let only = session.only([p]);
                assert!(only.len() <= 1);
            }
            _ => session.end_request(),
        }
    }
    let _ = session.token();
    if let Some((held, stored)) = round_trip(&session) {
        assert_eq!(
            held, stored,
            "the session changed on its way through the store"
        );
    }
}

// ---------------------------------------------------------------------------
// csrf_body: CsrfLayer's form parsing.

/// An arbitrary `Content-Type` (the first line) and body (the rest) posted
/// with a stored session through `CsrfLayer`: the answer is 200, 400, 413 or
/// 419; a request passes only if it carried the session's token (the input
/// held `{{token}}`), and then the handler receives the body byte for byte.
pub(crate) fn csrf_body(data: &[u8]) {
    with_fixture(|fx| {
        let text = substitute(data, &[("{{token}}", &fx.token)]);
        let (content_type, body) = match text.iter().position(|&b| b == b'\n') {
            Some(at) => (&text[..at], &text[at + 1..]),
            None => (&text[..], &[][..]),
        };
        let mut request = Request::post("/submit")
            .header(COOKIE, format!("keepsake_session={}", fx.known.as_str()))
            .body(Body::from(body.to_vec()))
            .expect("request");
        if let Ok(value) = HeaderValue::from_bytes(content_type) {
            request.headers_mut().insert(CONTENT_TYPE, value);
        }
        let (status, echoed) = fx.rt.block_on(async {
            let response = fx
                .csrf_app
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = response.status();
            (status, body_bytes(response.into_body()).await)
        });
        match status.as_u16() {
            200 => {
                assert!(
                    contains(data, b"{{token}}"),
                    "a request without the token passed the CSRF check"
                );
                assert_eq!(
                    &echoed[..],
                    body,
                    "the handler got another body than was sent"
                );
            }
            400 | 413 | 419 => {}
            other => panic!("unexpected status {other}"),
        }
    });
}

// ---------------------------------------------------------------------------
// proxy_headers: the client's address, host and scheme behind trusted proxies.

/// The first byte picks the header (`X-Forwarded-For` or `Forwarded`) and
/// the number of trusted hops (1 to 4); every further line is one header
/// line, sent as `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`
/// and `Forwarded` alike. Nothing panics; a forwarded host or scheme is
/// well-formed and lowercase; and the client, which controls only what comes
/// before the trusted proxies' entries, cannot change an answer: a line
/// prepended to an answered request changes nothing, and one more proxy
/// appending its entry (trusted as one more hop) changes nothing either.
pub(crate) fn proxy_headers(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let header = if selector & 1 == 0 {
        ProxyHeader::XForwardedFor
    } else {
        ProxyHeader::Forwarded
    };
    let hops = 1 + (selector >> 1) % 4;
    let trust = TrustedProxies::new().with_header(header).with_hops(hops);
    let lines: Vec<HeaderValue> = rest
        .split(|&b| b == b'\n')
        .take(32)
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    let names = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    ];
    let headers_of = |lines: &[HeaderValue]| {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            for name in names {
                headers.append(name, line.clone());
            }
        }
        headers
    };
    let headers = headers_of(&lines);
    let ip = trust.client_ip(&headers);
    if let Some(host) = trust.forwarded_host(&headers) {
        assert_eq!(host, host.to_ascii_lowercase());
        assert!(!host.is_empty() && host.len() <= 255, "{host:?}");
        assert!(
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)),
            "{host:?}"
        );
    }
    if let Some(proto) = trust.forwarded_proto(&headers) {
        assert_eq!(proto, proto.to_ascii_lowercase());
        assert!(
            proto.starts_with(|c: char| c.is_ascii_alphabetic()),
            "{proto:?}"
        );
    }
    // Only the configured header is believed.
    if header == ProxyHeader::XForwardedFor {
        let mut only = headers;
        only.remove("forwarded");
        assert_eq!(trust.client_ip(&only), ip);
    } else {
        let mut only = headers;
        only.remove("x-forwarded-for");
        assert_eq!(trust.client_ip(&only), ip);
    }

    if ip.is_some() {
        for forged in [
            &b"203.0.113.66"[..],
            b"for=203.0.113.66",
            b"\"",
            b"unknown, for=\"[::1]\"",
        ] {
            let mut prepended = vec![HeaderValue::from_bytes(forged).expect("a value")];
            prepended.extend(lines.iter().cloned());
            assert_eq!(
                trust.client_ip(&headers_of(&prepended)),
                ip,
                "a line the client prepended changed the address"
            );
        }
    }
    let appended = match header {
        ProxyHeader::XForwardedFor => "192.0.2.250",
        _ => "for=192.0.2.250",
    };
    let one_more = trust.with_hops(hops + 1);
    let mut headers = headers_of(&lines);
    headers.append(
        if header == ProxyHeader::XForwardedFor {
            "x-forwarded-for"
        } else {
            "forwarded"
        },
        HeaderValue::from_static(appended),
    );
    assert_eq!(
        one_more.client_ip(&headers),
        ip,
        "one more trusted proxy moved the address"
    );
}
