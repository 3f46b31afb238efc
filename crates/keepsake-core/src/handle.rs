//! [`SessionHandle`]: the lazily loaded session of one request, and the axum
//! extractors built on it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use tokio::sync::OnceCell;

use crate::error::{Error, Report, SessionFailure};
use crate::session::Session;

/// Loads the session of one request. Implemented by the layer; the handle
/// calls it at most once.
#[doc(hidden)]
#[async_trait]
pub trait Loader: Send + Sync + 'static {
    /// Loads (or starts) the session.
    async fn load(&self) -> Result<Session, Error>;

    /// The response for a failed load (500 by default, or the application's).
    fn error_response(&self, error: &SessionFailure) -> Response;
}

/// The session of the request being served, loaded on first use.
///
/// The layer puts a `SessionHandle` into every request's extensions without
/// touching the store. The [`Session`] extractor, or any middleware that calls
/// [`SessionHandle::load`], loads the record once; a request that never asks
/// for its session costs no store round trip.
///
/// Code that was not handed the request can reach the handle of the request
/// being served with [`SessionHandle::current`].
#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<HandleInner<dyn Loader>>,
}

/// The loader sits inline, unsized last, so a handle is one allocation.
struct HandleInner<L: ?Sized> {
    cell: OnceCell<Result<Session, SessionFailure>>,
    loader: L,
}

tokio::task_local! {
    static CURRENT: SessionHandle;
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("loaded", &self.inner.cell.get().map(Result::is_ok))
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// A handle that loads through `loader`.
    #[doc(hidden)]
    #[must_use]
    pub fn new(loader: impl Loader) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                cell: OnceCell::new(),
                loader,
            }),
        }
    }

    /// A handle over an already loaded session (for tests and for code that
    /// builds its own).
    #[must_use]
    pub fn from_session(session: Session) -> Self {
        struct Ready;
        #[async_trait]
        impl Loader for Ready {
            async fn load(&self) -> Result<Session, Error> {
                Ok(Session::new_detached())
            }
            fn error_response(&self, error: &SessionFailure) -> Response {
                default_error_response(error)
            }
        }
        Self {
            inner: Arc::new(HandleInner {
                cell: OnceCell::new_with(Some(Ok(session))),
                loader: Ready,
            }),
        }
    }

    /// Loads the session (once; later calls return the same session).
    ///
    /// # Errors
    ///
    /// The store's failure, shared by every caller of this request.
    pub async fn load(&self) -> Result<Session, SessionFailure> {
        self.inner
            .cell
            .get_or_init(|| async {
                self.inner.loader.load().await.map_err(|error| {
                    tracing::error!(error = %Report(&error), "loading the session failed");
                    SessionFailure::new(error)
                })
            })
            .await
            .clone()
    }

    /// The session, if it was loaded successfully during this request.
    #[must_use]
    pub fn loaded(&self) -> Option<Session> {
        self.inner.cell.get().and_then(|r| r.as_ref().ok()).cloned()
    }

    /// True when loading was attempted (successfully or not).
    #[must_use]
    pub fn was_loaded(&self) -> bool {
        self.inner.cell.initialized()
    }

    /// The handle of the request being served by the current task, set by the
    /// layer; `None` outside a request (or on a task spawned from it).
    ///
    /// ```
    /// assert!(keepsake_core::SessionHandle::current().is_none());
    /// ```
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with this handle as [`SessionHandle::current`].
    #[doc(hidden)]
    pub fn scope<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` with this handle as [`SessionHandle::current`].
    #[doc(hidden)]
    pub fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    fn error_response(&self, error: &SessionFailure) -> Response {
        self.inner.loader.error_response(error)
    }
}

/// The default answer to a session failure: the error's
/// [`status`](Error::status) (409 for a concurrent request's interference,
/// 500 otherwise) with a short body, and the error in the response
/// extensions.
#[doc(hidden)]
#[must_use]
pub fn default_error_response(error: &SessionFailure) -> Response {
    let status = error.error().status();
    let mut response = (status, status.canonical_reason().unwrap_or_default()).into_response();
    response.extensions_mut().insert(error.clone());
    response
}

/// Why the [`Session`] extractor failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionRejection {
    /// No [`SessionHandle`] in the request: the layer is not applied to this route.
    MissingLayer,
    /// The store failed to load the session.
    Load {
        /// The failure.
        error: SessionFailure,
        /// The response the layer's configuration makes for it.
        response: Response,
    },
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingLayer => f.write_str(
                "no session in request extensions: is `SessionLayer` applied to this route? \
                 (add `.layer(SessionLayer::new(store))` to the router, after the routes that use `Session`)",
            ),
            Self::Load { error, .. } => write!(f, "the session could not be loaded: {error}"),
        }
    }
}

impl std::error::Error for SessionRejection {}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingLayer => {
                tracing::error!("{self}");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
            }
            Self::Load { response, .. } => response,
        }
    }
}

async fn extract(parts: &Parts) -> Result<Option<Session>, SessionRejection> {
    let Some(handle) = parts.extensions.get::<SessionHandle>() else {
        return Ok(None);
    };
    match handle.load().await {
        Ok(session) => Ok(Some(session)),
        Err(error) => Err(SessionRejection::Load {
            response: handle.error_response(&error),
            error,
        }),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        extract(parts).await?.ok_or(SessionRejection::MissingLayer)
    }
}

/// `Option<Session>`: `None` when the layer is not applied; a store failure
/// is still a rejection.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        extract(parts).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionHandle {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(SessionRejection::MissingLayer)
    }
}
