//! [`CsrfLayer`]: the builder and its one place of defaults.

use std::fmt;
use std::sync::Arc;

use axum_core::response::{IntoResponse, Response};
use http::{StatusCode, header};
use tower_layer::Layer;

use super::origin::Origin;
use super::service::CsrfService;

/// Makes the response for a request whose token is missing or wrong.
pub type RejectionHandler = Arc<dyn Fn() -> Response + Send + Sync>;

/// Everything the layer is configured with; the defaults are in one place,
/// `impl Default`.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) body_limit: usize,
    pub(crate) exempt_paths: Vec<String>,
    pub(crate) exempt_prefixes: Vec<String>,
    pub(crate) rejection: Option<RejectionHandler>,
    pub(crate) origin_check: bool,
    pub(crate) allowed_origins: Vec<Origin>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // axum's own default body limit (`DefaultBodyLimit`): a form that
            // axum's `Form` extractor would accept is never turned away here.
            body_limit: 2 * 1024 * 1024,
            exempt_paths: Vec::new(),
            exempt_prefixes: Vec::new(),
            rejection: None,
            // Defence in depth that costs nothing for a same-origin page.
            origin_check: true,
            // The request's own origin.
            allowed_origins: Vec::new(),
        }
    }
}

impl Config {
    /// Whether `path` (as the request carries it, percent-encoded) is
    /// exempt: compared segment by segment after percent-decoding each
    /// segment, so `/api` covers `/api` and `/api/x` but not `/api-keys`,
    /// and `%2F` inside a segment never splits it.
    pub(crate) fn is_exempt(&self, path: &str) -> bool {
        self.exempt_paths
            .iter()
            .any(|p| segments_match(p, path, true))
            || self
                .exempt_prefixes
                .iter()
                .any(|p| segments_match(p, path, false))
    }

    pub(crate) fn rejection(&self) -> Response {
        match &self.rejection {
            Some(handler) => handler(),
            None => default_rejection(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("body_limit", &self.body_limit)
            .field("exempt_paths", &self.exempt_paths)
            .field("exempt_prefixes", &self.exempt_prefixes)
            .field("rejection", &self.rejection.as_ref().map(|_| "…"))
            .field("origin_check", &self.origin_check)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// Whether the segments of `pattern` equal those of `path` (`exact`) or
/// begin them. A trailing `/` of the pattern is ignored.
fn segments_match(pattern: &str, path: &str, exact: bool) -> bool {
    let pattern = match pattern.strip_suffix('/') {
        Some(trimmed) if !exact || !trimmed.is_empty() => trimmed,
        _ => pattern,
    };
    let mut path_segments = path.split('/').map(percent_decode);
    let prefix = pattern
        .split('/')
        .map(percent_decode)
        .all(|expected| path_segments.next().is_some_and(|s| s == expected));
    if exact {
        // What is left of the path may only be one trailing `/`.
        prefix
            && path_segments.next().is_none_or(|s| s.is_empty())
            && path_segments.next().is_none()
    } else {
        prefix
    }
}

/// `%XX` escapes decoded (a malformed one kept as it is); `+` is literal in
/// a path.
fn percent_decode(segment: &str) -> std::borrow::Cow<'_, [u8]> {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).and_then(|&h| hex(h)),
                bytes.get(i + 2).and_then(|&l| hex(l)),
            )
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// `419`, the status Laravel answers a CSRF token mismatch with ("page
/// expired"). It has no name in the `http` crate.
pub(crate) fn token_mismatch_status() -> StatusCode {
    StatusCode::from_u16(419).unwrap_or(StatusCode::FORBIDDEN)
}

fn default_rejection() -> Response {
    (
        token_mismatch_status(),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "CSRF token mismatch",
    )
        .into_response()
}

/// CSRF protection: requests with an unsafe method must carry the session's
/// [`token`](crate::Session::token). See the [module docs](crate::csrf).
///
/// `CsrfLayer` is also the builder: every `with_*` method says what it
/// defaults to.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use keepsake::CsrfLayer;
///
/// let csrf = CsrfLayer::new()
///     .with_exempt_path("/webhooks/stripe")
///     .with_exempt_prefix("/api")
///     .with_allowed_origin("https://shop.example.com")
///     .with_body_limit(8 * 1024 * 1024)
///     .with_rejection(|| (StatusCode::FORBIDDEN, "Please reload the page").into_response());
/// # let _ = csrf;
/// ```
#[derive(Clone, Default)]
pub struct CsrfLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for CsrfLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl CsrfLayer {
    /// A layer with the default configuration: every unsafe request must
    /// carry the token; no path is exempt; form bodies up to 2 MiB are read.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The most bytes of a form body read to find its `_token` field; a
    /// body whose field has not arrived within them is answered with
    /// `413 Payload Too Large`. Reading stops once the field has arrived (a
    /// urlencoded field anywhere, a multipart field as the first part), so a
    /// larger body whose token comes first streams on to the handler (see
    /// the [module docs](crate::csrf#what-is-checked)). Defaults to 2 MiB,
    /// axum's own default body limit. Requests whose token travels in a
    /// header are not read at all, whatever their size.
    #[must_use]
    pub fn with_body_limit(self, bytes: usize) -> Self {
        self.config(|c| c.body_limit = bytes)
    }

    /// Exempts one path (for example a webhook that a third party posts
    /// to): the request's path, percent-decoded, must equal it (a trailing
    /// `/` aside). Under nested routers the path is the full one the outer
    /// router received (axum's `OriginalUri`). Defaults to none.
    #[must_use]
    pub fn with_exempt_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.config(|c| c.exempt_paths.push(path))
    }

    /// Exempts every path under `prefix` (for example `/api`, when its
    /// clients authenticate otherwise), matched on whole path segments of
    /// the percent-decoded path: `/api` exempts `/api` and `/api/v1/x` but
    /// not `/api-keys/delete`. Under nested routers the path is the full one
    /// the outer router received (axum's `OriginalUri`). Defaults to none.
    #[must_use]
    pub fn with_exempt_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.config(|c| c.exempt_prefixes.push(prefix))
    }

    /// The origin check, done before the token is looked at: a request with
    /// an unsafe method whose `Sec-Fetch-Site` header is `cross-site` is
    /// rejected, and one that carries an `Origin` header must come from an
    /// allowed origin (see [`with_allowed_origin`](Self::with_allowed_origin)).
    /// A request with neither header (older browsers, non-browser clients)
    /// goes on to the token check. Defaults to `true`.
    #[must_use]
    pub fn with_origin_check(self, yes: bool) -> Self {
        self.config(|c| c.origin_check = yes)
    }

    /// Allows requests from `origin` (`scheme://host[:port]`, for example
    /// `https://app.example.com`), even cross-site ones, through the
    /// [origin check](Self::with_origin_check); they still need the token.
    /// Defaults to none, which means the request's own origin: its `Host`
    /// (behind [trusted proxies](crate::SessionLayer::with_trusted_proxies),
    /// the host and scheme the client asked the outermost one for) with the
    /// request's scheme, or either of `http` and `https` when the request
    /// does not say which (HTTP/1.1 straight to the application). Once one
    /// origin is listed, only the listed origins are allowed: list the
    /// application's own too.
    ///
    /// # Panics
    ///
    /// When `origin` is not `scheme://host[:port]`; the message names it.
    #[must_use]
    pub fn with_allowed_origin(self, origin: &str) -> Self {
        let Some(parsed) = Origin::parse(origin) else {
            panic!(
                "CsrfLayer::with_allowed_origin({origin:?}): not an origin: expected \
                 scheme://host[:port], e.g. https://app.example.com"
            );
        };
        self.config(|c| c.allowed_origins.push(parsed))
    }

    /// The response for a missing or wrong token. Defaults to
    /// `419` with the text `CSRF token mismatch`.
    #[must_use]
    pub fn with_rejection<F>(self, handler: F) -> Self
    where
        F: Fn() -> Response + Send + Sync + 'static,
    {
        let handler: RejectionHandler = Arc::new(handler);
        self.config(|c| c.rejection = Some(handler))
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService::new(inner, Arc::clone(&self.config))
    }
}
