//! [`SessionService`]: loads lazily, writes once after the handler.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::Response;
use http::header::{CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderValue, Request};
use keepsake_core::commit::{self, Decided, Plan};
use keepsake_core::{
    CommitContext, Outcome, Report, Session, SessionFailure, SessionHandle, SessionStore,
    default_error_response,
};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Config, SessionLayer, SessionSource};
use super::request::start;
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
    pub(super) source: SessionSource,
    /// The request's fingerprint, when sessions are bound.
    pub(super) fingerprint: Option<String>,
    /// The URL to record as the previous URL, for a trackable GET.
    pub(super) previous_url: Option<String>,
    pub(super) ip_address: Option<String>,
    pub(super) user_agent: Option<String>,
}

pub(super) fn error_response(config: &Config, error: &SessionFailure) -> Response {
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
        if let Some(trust) = layer.config.trusted_proxies {
            // For inner middleware that needs the client's view of the
            // request (the CSRF origin check).
            request.extensions_mut().insert(trust);
        }

        // The inner service is called here, on the service `poll_ready` was
        // called on; its future then runs with the handle as the current one.
        let inner = handle.sync_scope(|| self.inner.call(request));
        ResponseFuture::new(handle.scope(inner), layer, info)
    }
}

/// After the handler, up to the store write: the cache headers, the
/// previous URL, the binding, and the commit's decision. A request that
/// has nothing to send to the store (most reads) ends here, with no
/// future built for the write.
pub(crate) fn begin(
    layer: &SessionLayer,
    session: Session,
    info: RequestInfo,
    mut response: Response,
) -> Begun {
    let config = &layer.config;
    let server_error = response.status().is_server_error();
    if config.cache_headers {
        add_cache_headers(config, &mut response);
    }
    if server_error && !config.save_on_server_error {
        return Begun::Done(response);
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

    let ctx = CommitContext {
        now: keepsake_core::now(),
        idle_lifetime: config.idle_lifetime.as_secs(),
        absolute_lifetime: config.absolute_lifetime.map(|d| d.as_secs()),
        touch_after: config.touch_after.as_secs(),
        ip_address: info.ip_address,
        user_agent: info.user_agent,
        max_save_attempts: config.max_save_attempts,
    };
    match commit::decide(&session, &*layer.store, &ctx) {
        Ok(Decided::Write(plan)) => Begun::Write(Write {
            session,
            source: info.source,
            ctx,
            plan,
            response,
        }),
        Ok(Decided::Done(outcome)) => {
            Begun::Done(respond(layer, info.source, ctx.now, Ok(outcome), response))
        }
        Err(error) => Begun::Done(respond(layer, info.source, ctx.now, Err(error), response)),
    }
}

/// Where [`begin`] left a request.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per request and moved at once into the response or the write future"
)]
pub(crate) enum Begun {
    /// The response, complete.
    Done(Response),
    /// A store write still to make, with [`Write::run`].
    Write(Write),
}

/// A request's store write, decided and not yet made.
pub(crate) struct Write {
    session: Session,
    source: SessionSource,
    ctx: CommitContext,
    plan: Plan,
    response: Response,
}

impl Write {
    /// Makes the write; the response carries its outcome.
    pub(crate) async fn run(self, layer: Arc<SessionLayer>) -> Response {
        let Self {
            session,
            source,
            ctx,
            plan,
            response,
        } = self;
        let outcome = commit::write(&session, &*layer.store, &*layer.commits, &ctx, plan).await;
        respond(&layer, source, ctx.now, outcome, response)
    }
}

/// The response for the commit's `outcome`: the cookie or id header it
/// sets or removes, or the error response; then the GC lottery.
fn respond(
    layer: &SessionLayer,
    source: SessionSource,
    now: i64,
    outcome: keepsake_core::Result<Outcome>,
    mut response: Response,
) -> Response {
    let config = &layer.config;
    let (via_cookie, via_header) = match (config.use_cookie, &config.id_header, source) {
        (true, Some(_), SessionSource::Header) => (false, true),
        (true, Some(_), SessionSource::Cookie) => (true, false),
        (use_cookie, header, _) => (use_cookie, header.is_some()),
    };
    match outcome {
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

    crate::gc::lottery(layer, now);
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
    /// The directive's name, without its argument.
    fn name(directive: &str) -> &str {
        directive.split('=').next().unwrap_or_default().trim()
    }
    let headers = response.headers_mut();
    let directives = || {
        headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
    };
    // The common case, checked without allocating: the layer's own
    // `private`, or a handler's `private` or `no-store`.
    if directives().any(|d| {
        let name = name(d);
        name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
    }) {
        return;
    }
    let mut kept = String::from("private");
    for directive in directives() {
        let name = name(directive);
        if !name.eq_ignore_ascii_case("public") && !name.eq_ignore_ascii_case("s-maxage") {
            kept.push_str(", ");
            kept.push_str(directive);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&kept) {
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
