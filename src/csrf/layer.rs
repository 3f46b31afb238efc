//! [`CsrfLayer`]: the builder and its one place of defaults.

use std::fmt;
use std::sync::Arc;

use axum_core::response::{IntoResponse, Response};
use http::{StatusCode, header};
use tower_layer::Layer;

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
        }
    }
}

impl Config {
    pub(crate) fn is_exempt(&self, path: &str) -> bool {
        self.exempt_paths.iter().any(|p| p == path)
            || self.exempt_prefixes.iter().any(|p| path.starts_with(p))
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
            .finish()
    }
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
///     .with_exempt_prefix("/api/")
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
    /// larger body (by its `Content-Length` or as it streams in) is answered
    /// with `413 Payload Too Large`. Defaults to 2 MiB, axum's own default
    /// body limit. Requests whose token travels in a header are not read at
    /// all, whatever their size.
    #[must_use]
    pub fn with_body_limit(self, bytes: usize) -> Self {
        self.config(|c| c.body_limit = bytes)
    }

    /// Exempts one path (compared exactly with the request's path, for
    /// example a webhook that a third party posts to). Defaults to none.
    #[must_use]
    pub fn with_exempt_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.config(|c| c.exempt_paths.push(path))
    }

    /// Exempts every path that starts with `prefix` (for example `/api/`,
    /// when its clients authenticate otherwise). Defaults to none.
    #[must_use]
    pub fn with_exempt_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.config(|c| c.exempt_prefixes.push(prefix))
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
