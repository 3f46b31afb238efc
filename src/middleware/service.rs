//! [`SessionService`]: loads lazily, writes once after the handler.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use axum_core::response::Response;
use http::header::{CACHE_CONTROL, SET_COOKIE, USER_AGENT, VARY};
use http::{HeaderValue, Method, Request};
use keepsake_core::{
    CommitContext, Error, Loader, Outcome, Report, Session, SessionFailure, SessionHandle,
    SessionId, SessionStore, default_error_response,
};
use rand::Rng as _;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Config, SessionLayer, SessionSource};
use crate::cookie;

/// The service made by [`SessionLayer`].
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    /// Shared by every request: one reference count per request, not one
    /// per field.
    layer: Arc<SessionLayer>,
}

impl<S> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S> SessionService<S> {
    pub(crate) fn new(inner: S, layer: Arc<SessionLayer>) -> Self {
        Self { inner, layer }
    }
}

/// What the end of the request needs to know about its start.
pub(crate) struct RequestInfo {
    /// Where the id in use came from.
    source: SessionSource,
    /// The request's fingerprint, when sessions are bound.
    fingerprint: Option<String>,
    /// The URL to record as the previous URL, for a trackable GET.
    previous_url: Option<String>,
    ip_address: Option<String>,
    user_agent: Option<String>,
}

/// Loads the session of one request from what its cookie carried.
struct RequestLoader {
    layer: Arc<SessionLayer>,
    /// Server stores: the first well-formed id sent.
    id: Option<SessionId>,
    /// Client-side stores: every value of the session cookie, in order.
    sealed: Vec<Box<str>>,
    /// The request's fingerprint, when sessions are bound.
    fingerprint: Option<String>,
}

impl RequestLoader {
    /// A session bound to another fingerprint is invalidated.
    fn check_binding(&self, session: Session) -> Session {
        if let (Some(expected), Some(bound)) = (&self.fingerprint, session.binding())
            && *expected != bound
        {
            tracing::warn!(
                session = %session.storage_key().short(),
                "session presented by a different client than it is bound to; invalidating it"
            );
            session.invalidate();
        }
        session
    }
}

#[async_trait]
impl Loader for RequestLoader {
    async fn load(&self) -> Result<Session, Error> {
        let store: &dyn SessionStore = &*self.layer.store;
        if let Some(client) = store.client_side() {
            let opened = self.sealed.iter().find_map(|value| client.open(value));
            return Ok(opened.map_or_else(Session::new_detached, |(id, record)| {
                self.check_binding(Session::from_loaded(id, record))
            }));
        }
        if let Some(id) = &self.id {
            if let Some(record) = store.load(&id.storage_key()).await? {
                return Ok(self.check_binding(Session::from_loaded(id.clone(), record)));
            }
            tracing::debug!(session = %id, "unknown or expired session id; starting a new session");
        }
        Ok(Session::new_detached())
    }

    fn error_response(&self, error: &SessionFailure) -> Response {
        error_response(&self.layer.config, error)
    }
}

fn error_response(config: &Config, error: &SessionFailure) -> Response {
    let mut response = match &config.error_handler {
        Some(handler) => handler(error),
        None => default_error_response(error),
    };
    response.extensions_mut().insert(error.clone());
    response
}

impl<S, ReqBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = Arc::clone(&self.layer);
        let (loader, info) = start(&layer, &request);
        let handle = SessionHandle::new(loader);
        request.extensions_mut().insert(handle.clone());
        request.extensions_mut().insert(info.source);

        // The inner service is called here, on the service `poll_ready` was
        // called on; its future then runs with the handle as the current one.
        let inner = handle.sync_scope(|| self.inner.call(request));
        ResponseFuture::new(handle.scope(inner), layer, info)
    }
}

/// Reads what the request carries; touches no store.
fn start<B>(layer: &Arc<SessionLayer>, request: &Request<B>) -> (RequestLoader, RequestInfo) {
    let config = &layer.config;
    let headers = request.headers();
    let client_side = layer.store.client_side().is_some();

    // Server stores need the first well-formed id in precedence order; a
    // client-side store tries every value it was sent. No list is built for
    // the former: the common request pays for one parse.
    let mut id = None;
    let mut sealed = Vec::new();
    let mut source = SessionSource::None;
    let mut had_id = false;
    let mut consider = |origin: SessionSource, value: &[u8]| {
        had_id = true;
        if client_side {
            if source == SessionSource::None {
                source = origin;
            }
            sealed.push(Box::<str>::from(cookie::text(value)));
        } else if id.is_none()
            && let Some(parsed) = SessionId::parse_bytes(value)
        {
            id = Some(parsed);
            source = origin;
        }
    };
    let order = match config.precedence {
        SessionSource::Cookie => [SessionSource::Cookie, SessionSource::Header],
        _ => [SessionSource::Header, SessionSource::Cookie],
    };
    for origin in order {
        match origin {
            SessionSource::Cookie if config.use_cookie => {
                for value in cookie::values(headers, &config.cookie_name) {
                    consider(origin, value);
                }
            }
            SessionSource::Header => {
                if let Some(name) = &config.id_header {
                    let values = headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|v| !v.is_empty());
                    for value in values {
                        consider(origin, value.as_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    if had_id && !client_side && id.is_none() {
        tracing::warn!(
            cookie = %config.cookie_name,
            "malformed session id ignored; a new session will be started"
        );
    }

    let previous_url = (config.track_previous_url
        && request.method() == Method::GET
        && headers
            .get("x-requested-with")
            .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest")))
    .then(|| request.uri().to_string());

    let (ip_address, user_agent) = if config.record_client || config.binding.is_enabled() {
        let forwarded = config
            .trust_proxy
            .then(|| headers.get("x-forwarded-for")?.to_str().ok())
            .flatten()
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty() && v.len() <= 45);
        let ip = forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip().to_string())
        });
        let agent = headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect());
        (ip, agent)
    } else {
        (None, None)
    };

    let fingerprint = config
        .binding
        .is_enabled()
        .then(|| fingerprint(config.binding, ip_address.as_deref(), user_agent.as_deref()));
    let (ip_address, user_agent) = if config.record_client {
        (ip_address, user_agent)
    } else {
        (None, None)
    };
    let loader = RequestLoader {
        layer: Arc::clone(layer),
        id,
        sealed,
        fingerprint: fingerprint.clone(),
    };
    let info = RequestInfo {
        source,
        fingerprint,
        previous_url,
        ip_address,
        user_agent,
    };
    (loader, info)
}

/// The hex SHA-256 of what the session is bound to.
fn fingerprint(binding: super::Binding, ip: Option<&str>, agent: Option<&str>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    if binding.user_agent {
        hasher.update(b"ua:");
        hasher.update(agent.unwrap_or_default().as_bytes());
    }
    if binding.ipv4_prefix.is_some() || binding.ipv6_prefix.is_some() {
        hasher.update(b"|ip:");
        let masked = ip
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| match ip {
                std::net::IpAddr::V4(v4) => {
                    let bits = u32::from(binding.ipv4_prefix.unwrap_or(32).min(32));
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    std::net::IpAddr::V4((u32::from(v4) & mask).into())
                }
                std::net::IpAddr::V6(v6) => {
                    let bits = u32::from(binding.ipv6_prefix.unwrap_or(128).min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    std::net::IpAddr::V6((u128::from(v6) & mask).into())
                }
            });
        hasher.update(
            masked
                .map(|ip| ip.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    hex::encode(&hasher.finalize()[..16])
}

/// After the handler: the session's one write, the cookie, the lottery.
pub(crate) async fn finish(
    layer: &SessionLayer,
    session: Session,
    info: RequestInfo,
    mut response: Response,
) -> Response {
    let config = &layer.config;
    let server_error = response.status().is_server_error();
    if config.cache_headers {
        add_cache_headers(config, &mut response);
    }
    if server_error && !config.save_on_server_error {
        return response;
    }
    if let Some(url) = info.previous_url.as_deref()
        && response.status().is_success()
    {
        session.track_previous_url(url);
    }

    if let Some(fingerprint) = &info.fingerprint
        && session.binding().as_ref() != Some(fingerprint)
        && (!session.is_new() || session.is_modified())
    {
        session.set_binding(Some(fingerprint.clone()));
    }

    let now = keepsake_core::now();
    let (via_cookie, via_header) = match (config.use_cookie, &config.id_header, info.source) {
        (true, Some(_), SessionSource::Header) => (false, true),
        (true, Some(_), SessionSource::Cookie) => (true, false),
        (use_cookie, header, _) => (use_cookie, header.is_some()),
    };
    let ctx = CommitContext {
        now,
        idle_lifetime: config.idle_lifetime.as_secs(),
        absolute_lifetime: config.absolute_lifetime.map(|d| d.as_secs()),
        touch_after: config.touch_after.as_secs(),
        ip_address: info.ip_address,
        user_agent: info.user_agent,
        max_save_attempts: config.max_save_attempts,
    };
    match keepsake_core::commit::commit(&session, &*layer.store, &*layer.commits, &ctx).await {
        Ok(Outcome::Keep) => {}
        Ok(Outcome::Send { value, expires_at }) => {
            if via_cookie {
                let max_age = (!config.expire_on_close).then(|| expires_at - now);
                append_cookie(&mut response, &cookie::set(config, &value, max_age));
            }
            if via_header {
                set_id_header(config, &mut response, &value);
            }
            forbid_shared_caching(&mut response);
        }
        Ok(Outcome::Remove) => {
            if via_cookie {
                append_cookie(&mut response, &cookie::remove(config));
            }
            if via_header {
                set_id_header(config, &mut response, "");
            }
            forbid_shared_caching(&mut response);
        }
        Err(error) => {
            if error.is_concurrent() {
                tracing::warn!(
                    store = layer.store.kind(),
                    error = %Report(&error),
                    "a concurrent request of this session made this request's changes unsaveable"
                );
            } else {
                tracing::error!(
                    store = layer.store.kind(),
                    error = %Report(&error),
                    "saving the session failed"
                );
            }
            let mut failed = error_response(config, &SessionFailure::new(error));
            if config.cache_headers {
                add_cache_headers(config, &mut failed);
            }
            return failed;
        }
    }

    lottery(layer, now);
    response
}

fn set_id_header(config: &Config, response: &mut Response, value: &str) {
    if let (Some(name), Ok(value)) = (&config.id_header, HeaderValue::from_str(value)) {
        response.headers_mut().insert(name.clone(), value);
    }
}

/// `Vary` on what carries the id, and `Cache-Control: private` unless the
/// handler chose its own caching. Added to every response of a request that
/// used its session, error responses included.
fn add_cache_headers(config: &Config, response: &mut Response) {
    let headers = response.headers_mut();
    let varies_on = |name: &str| {
        headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|v| v == "*" || v.eq_ignore_ascii_case(name))
    };
    let cookie = config.use_cookie && !varies_on("cookie");
    let header = config
        .id_header
        .as_ref()
        .filter(|name| !varies_on(name.as_str()));
    if cookie {
        headers.append(VARY, HeaderValue::from_static("cookie"));
    }
    if let Some(name) = header {
        headers.append(VARY, HeaderValue::from(name.clone()));
    }
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// A response that sets or removes the session id must never be stored by a
/// shared cache, whatever the handler said: `private` (or `no-store`) wins,
/// and `public` and `s-maxage` go.
fn forbid_shared_caching(response: &mut Response) {
    let headers = response.headers_mut();
    let directives: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let name = |d: &str| {
        d.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    if directives
        .iter()
        .any(|d| matches!(name(d).as_str(), "private" | "no-store"))
    {
        return;
    }
    let mut kept: Vec<String> = directives
        .into_iter()
        .filter(|d| !matches!(name(d).as_str(), "public" | "s-maxage"))
        .collect();
    kept.insert(0, "private".to_owned());
    if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(CACHE_CONTROL, value);
    }
}

fn append_cookie(response: &mut Response, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            response.headers_mut().append(SET_COOKIE, value);
        }
        Err(_) => tracing::error!("session cookie is not a valid header value; not sent"),
    }
}

/// With probability `hits / out_of`, collects expired sessions on a spawned
/// task: never on the request's own latency path, and never more than one at
/// a time per layer.
fn lottery(layer: &SessionLayer, now: i64) {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Clears the in-flight flag when the gc task ends, however it ends.
    struct Running(Arc<AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }

    let (hits, out_of) = layer.config.lottery;
    if hits == 0 || !rand::rng().random_ratio(hits, out_of) {
        return;
    }
    // A win while a gc is still running is dropped: gc tasks piling up under
    // load would hold the store's connections that requests need.
    if layer.gc_running.swap(true, Ordering::AcqRel) {
        return;
    }
    let running = Running(Arc::clone(&layer.gc_running));
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
