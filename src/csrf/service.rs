//! [`CsrfService`]: checks the token of unsafe requests.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::OriginalUri;
use axum_core::BoxError;
use axum_core::extract::FromRequestParts as _;
use axum_core::response::{IntoResponse as _, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderName, Method, Request, StatusCode};
use keepsake_core::{Session, SessionRejection};
use subtle::ConstantTimeEq as _;
use tower_service::Service;

use super::form::{self, FirstPart, FormKind};
use super::future::ResponseFuture;
use super::layer::Config;
use super::origin;
use crate::middleware::SessionSource;

/// The header that carries the token for scripts (Laravel's name).
const X_CSRF_TOKEN: HeaderName = HeaderName::from_static("x-csrf-token");
/// The header Angular and axios send from an `XSRF-TOKEN` cookie, accepted
/// when it holds the token itself.
const X_XSRF_TOKEN: HeaderName = HeaderName::from_static("x-xsrf-token");
/// The form field that carries the token.
const FIELD: &str = "_token";
/// At most this much is reserved up front from a claimed `Content-Length`:
/// a client can claim a size without sending it.
const MAX_PREALLOCATION: usize = 64 * 1024;

/// The service made by [`CsrfLayer`](super::CsrfLayer).
#[derive(Clone)]
pub struct CsrfService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for CsrfService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> CsrfService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }
}

impl<S, B> Service<Request<B>> for CsrfService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        // The ready service is the one `poll_ready` was called on; leave the
        // clone in its place (tower's "be careful when cloning" rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        if !needs_check(&self.config, &request) {
            return ResponseFuture {
                inner: Box::pin(inner.call(request)),
            };
        }
        let config = Arc::clone(&self.config);
        ResponseFuture {
            inner: Box::pin(async move {
                match verify(&config, request).await {
                    Ok(request) => inner.call(request).await,
                    Err(response) => Ok(response),
                }
            }),
        }
    }
}

/// Safe methods, exempt paths and sessions carried in a header pass without
/// a check (and without loading the session).
fn needs_check(config: &Config, request: &Request<Body>) -> bool {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    // The path the outermost router received, under nested routers.
    let path = match request.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path(),
        None => request.uri().path(),
    };
    if safe || config.is_exempt(path) {
        return false;
    }
    // A browser cannot attach a custom header to a cross-site request, so a
    // session that travels in one cannot be ridden by a forged request.
    request.extensions().get::<SessionSource>() != Some(&SessionSource::Header)
}

/// Passes the request on (with its body as it was sent, partly read or
/// not) or answers it.
async fn verify(config: &Config, request: Request<Body>) -> Result<Request<Body>, Response> {
    let (mut parts, body) = request.into_parts();
    if config.origin_check
        && let Err(refusal) = origin::check(&parts, &config.allowed_origins)
    {
        return Err(reject(config, &parts, refusal.reason()));
    }
    let session = match Session::from_request_parts(&mut parts, &()).await {
        Ok(session) => session,
        Err(SessionRejection::MissingLayer) => return Err(missing_layer()),
        Err(rejection) => return Err(rejection.into_response()),
    };
    // A session without a token (not stored yet, or never asked for one) has
    // no token the client could know; creating one here would cause a write
    // for every rejected request.
    let Some(expected) = session.peek_token() else {
        return Err(reject(config, &parts, "the session has no CSRF token"));
    };
    let matches = |candidate: &[u8]| bool::from(expected.as_bytes().ct_eq(candidate));

    let in_header = [X_CSRF_TOKEN, X_XSRF_TOKEN]
        .iter()
        .flat_map(|name| parts.headers.get_all(name))
        .any(|value| matches(value.as_bytes()));
    if in_header {
        return Ok(Request::from_parts(parts, body));
    }

    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let Some(kind) = form::form_kind(&content_type) else {
        return Err(reject(config, &parts, "no token header and no form body"));
    };
    let (found, body) = read_form(config, &parts, body, kind, &content_type).await?;
    let valid = found.as_deref().is_some_and(matches);
    if valid {
        Ok(Request::from_parts(parts, body))
    } else {
        let reason = match (found, kind) {
            (None, FormKind::UrlEncoded) => "no token header and no `_token` field in the form",
            (None, FormKind::Multipart) => {
                "no token header and no `_token` field in the multipart form"
            }
            (Some(_), _) => "the token does not match the session's",
        };
        Err(reject(config, &parts, reason))
    }
}

fn reject(config: &Config, parts: &Parts, reason: &str) -> Response {
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        reason,
        "CSRF check failed"
    );
    config.rejection()
}

fn missing_layer() -> Response {
    let message = "CsrfLayer found no session in the request: apply `SessionLayer` outside \
                   `CsrfLayer`, i.e. `router.layer(CsrfLayer::new()).layer(SessionLayer::new(store))`";
    tracing::error!("{message}");
    (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
}

/// Reads the form body until its `_token` field is known, and returns the
/// field (if any) with the body to hand on, byte for byte as it was sent.
///
/// A urlencoded `_token` field, and a multipart one in the first part, is
/// known as soon as it has arrived whole: reading stops there, and the
/// handler gets the bytes read so far chained with the rest of the stream,
/// unread. Only the bytes before that point count against the body limit.
/// Otherwise the whole body is buffered, up to the limit (`413` beyond it).
async fn read_form(
    config: &Config,
    parts: &Parts,
    mut body: Body,
    kind: FormKind,
    content_type: &[u8],
) -> Result<(Option<Vec<u8>>, Body), Response> {
    let limit = config.body_limit;
    let too_large = || {
        tracing::debug!(
            path = parts.uri.path(),
            limit,
            "form body over the CSRF layer's limit before its token"
        );
        (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response()
    };
    let claimed = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let capacity = claimed.map_or(0, |len| {
        usize::try_from(len).map_or(MAX_PREALLOCATION, |len| {
            len.min(MAX_PREALLOCATION).min(limit.saturating_add(1))
        })
    });
    let mut buffer = Vec::with_capacity(capacity);
    // Urlencoded: where the pairs not yet checked start. Multipart: whether
    // the first part may still turn out to be the token.
    let mut scanned = 0;
    let mut first_part_pending = kind == FormKind::Multipart;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "reading the form body failed");
                return Err((StatusCode::BAD_REQUEST, "Bad Request").into_response());
            }
        };
        // Trailers are not kept: forms do not send them.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        // At most one byte over the limit is buffered; the rest of the
        // frame waits, unread, in case the token comes first.
        let room = limit.saturating_add(1).saturating_sub(buffer.len());
        let held = data.split_off(data.len().min(room));
        buffer.extend_from_slice(&data);
        let found = match kind {
            FormKind::UrlEncoded => form::urlencoded_prefix_field(&buffer, &mut scanned, FIELD),
            FormKind::Multipart if first_part_pending => {
                match form::multipart_first_part(content_type, &buffer, FIELD) {
                    FirstPart::Field(value) => Some(value),
                    FirstPart::Other => {
                        first_part_pending = false;
                        None
                    }
                    FirstPart::Incomplete => None,
                }
            }
            FormKind::Multipart => None,
        };
        if let Some(value) = found {
            let prefix = [Bytes::from(buffer), held];
            return Ok((Some(value), Body::new(Chained::new(prefix, body))));
        }
        if buffer.len() > limit {
            return Err(too_large());
        }
    }
    let found = form::field(kind, content_type, &buffer, FIELD);
    Ok((found, Body::from(buffer)))
}

/// The bytes already read, then the rest of the body as it streams in.
struct Chained {
    /// Read already, in order; empty ones are skipped.
    read: std::collections::VecDeque<Bytes>,
    rest: Body,
}

impl Chained {
    fn new(read: impl IntoIterator<Item = Bytes>, rest: Body) -> Self {
        Self {
            read: read.into_iter().filter(|b| !b.is_empty()).collect(),
            rest,
        }
    }
}

impl HttpBody for Chained {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(bytes) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let read: u64 = self.read.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}
