//! CSRF protection: [`CsrfLayer`] and [`CsrfService`].
//!
//! A forged request is one that another site makes a signed-in user's
//! browser send: the browser attaches the session cookie, so the session
//! alone cannot tell it from a real one. Pages that the application serves
//! can read the session's [`token`](crate::Session::token) and send it back;
//! another site cannot. `CsrfLayer` rejects every request with an unsafe
//! method that does not carry it, as Laravel's `VerifyCsrfToken` does.
//!
//! # What is checked
//!
//! - `GET`, `HEAD`, `OPTIONS` and `TRACE` pass untouched, without loading
//!   the session. Keep them free of side effects.
//! - `POST`, `PUT`, `PATCH`, `DELETE` (and any other method) first pass the
//!   origin check ([`with_origin_check`](CsrfLayer::with_origin_check), on
//!   by default): a request whose `Sec-Fetch-Site` header is `cross-site` is
//!   rejected, and a request with an `Origin` header must come from an
//!   allowed origin, by default the request's own (scheme, host and port,
//!   from `Host`, or from the forwarded host and scheme behind
//!   [trusted proxies](crate::SessionLayer::with_trusted_proxies)); see
//!   [`with_allowed_origin`](CsrfLayer::with_allowed_origin). A request with
//!   neither header goes on to the token check: the origin check adds to the
//!   token, it never replaces it.
//! - They must then carry the session's token, compared in constant time, in
//!   one of:
//!   - the `X-CSRF-TOKEN` header (for scripts; `X-XSRF-TOKEN` is accepted
//!     too, for clients that copy an `XSRF-TOKEN` cookie the application sets
//!     to the token);
//!   - the `_token` field of an `application/x-www-form-urlencoded` or
//!     `multipart/form-data` body (a hidden input in an HTML form).
//!
//!   To find the field, the body is read until the field has arrived whole,
//!   and the handler gets every byte as it was sent (the bytes read, then
//!   the rest of the stream), so `Form`, `Multipart` or `Bytes` extractors
//!   see the same body. How far that is depends on where the field is:
//!   - **urlencoded, anywhere**, and **multipart, as the first part**: the
//!     reading stops right after the field, and only the bytes before that
//!     point count against [`with_body_limit`](CsrfLayer::with_body_limit)
//!     (2 MiB by default). A large upload streams on to the handler
//!     unbuffered: put the hidden `_token` input **first** in the form
//!     (browsers send fields in document order).
//!   - **multipart, after another part**: the body is buffered whole, up to
//!     the limit, and a larger one is answered `413`.
//!
//!   A request whose header token matches is not read at all.
//! - A missing or wrong token is answered `419` with the text
//!   `CSRF token mismatch` (Laravel's "page expired" status), or with the
//!   response of [`with_rejection`](CsrfLayer::with_rejection). A request
//!   without a stored session has no token to match and is rejected without
//!   creating one.
//! - A session whose id came in a header
//!   ([`SessionLayer::with_id_header`](crate::SessionLayer::with_id_header),
//!   for API clients) is not checked: a browser cannot attach a custom header
//!   to a cross-site request, so such a session cannot be ridden by a forged
//!   one. It skips the origin check too (an API client on another origin is
//!   what the header is for). The same browser's cookie-carried session is
//!   still checked.
//! - Paths given to [`with_exempt_path`](CsrfLayer::with_exempt_path) and
//!   [`with_exempt_prefix`](CsrfLayer::with_exempt_prefix) (webhooks, APIs
//!   that authenticate otherwise) are not checked. They match whole segments
//!   of the percent-decoded path (`/api` covers `/api/x`, not `/api-keys`),
//!   the full path under nested routers.
//!
//! # Where it goes
//!
//! `CsrfLayer` reads the session, so [`SessionLayer`](crate::SessionLayer)
//! must wrap it: with axum's `.layer(..)` calls, the one added last is the
//! outermost, so add `CsrfLayer` first. Without a session in the request the
//! layer answers `500` and logs how to fix the order; a store failure while
//! loading the session gets the session layer's error response. It works
//! with every store, the cookie driver included.
//!
//! # Example
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode, header};
//! use axum::response::Html;
//! use axum::routing::{get, post};
//! use axum::Router;
//! use keepsake::{CsrfLayer, MemoryStore, Session, SessionLayer};
//! use tower::ServiceExt as _;
//!
//! async fn form(session: Session) -> Html<String> {
//!     // The hidden input carries the token back with the form.
//!     Html(format!(
//!         r#"<form method="post" action="/transfer">
//!              <input type="hidden" name="_token" value="{}">
//!              <button>Send</button>
//!            </form>"#,
//!         session.token()
//!     ))
//! }
//!
//! let app = Router::new()
//!     .route("/", get(form))
//!     .route("/transfer", post(|| async { "sent" }))
//!     .layer(CsrfLayer::new())
//!     .layer(SessionLayer::new(MemoryStore::new()));
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // A forged request: no token.
//! let response = app
//!     .clone()
//!     .oneshot(Request::post("/transfer").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status().as_u16(), 419);
//!
//! // The application's own page: the session cookie and the token it shows.
//! let page = app
//!     .clone()
//!     .oneshot(Request::get("/").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! let cookie = page.headers()[header::SET_COOKIE].to_str().unwrap();
//! let cookie = cookie.split(';').next().unwrap().to_owned();
//! let html = axum::body::to_bytes(page.into_body(), usize::MAX).await.unwrap();
//! let html = String::from_utf8(html.to_vec()).unwrap();
//! let token = html.split(r#"name="_token" value=""#).nth(1).unwrap();
//! let token = &token[..token.find('"').unwrap()];
//!
//! let response = app
//!     .oneshot(
//!         Request::post("/transfer")
//!             .header(header::COOKIE, cookie)
//!             .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
//!             .body(Body::from(format!("_token={token}&amount=10")))
//!             .unwrap(),
//!     )
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # });
//! ```

mod form;
mod future;
mod layer;
mod origin;
mod service;

pub use future::ResponseFuture;
pub use layer::{CsrfLayer, RejectionHandler};
pub use service::CsrfService;
