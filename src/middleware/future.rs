//! The response future of [`SessionService`](super::SessionService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum_core::response::Response;
use keepsake_core::SessionHandle;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::layer::SessionLayer;
use super::service::{Begun, RequestInfo, begin};

pin_project! {
    /// The response future of [`SessionService`](super::SessionService): the
    /// inner service's response, then the session's one write.
    ///
    /// The inner future is held inline, not boxed: a request whose handler
    /// never took its session, or whose session has nothing to send to the
    /// store, costs no allocation here. Only a store write is boxed.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// The inner service runs, with the handle as the current one.
        Inner {
            #[pin]
            future: TaskLocalFuture<SessionHandle, F>,
            finish: Option<(Arc<SessionLayer>, RequestInfo)>,
        },
        /// The session is being written.
        Commit {
            future: Pin<Box<dyn Future<Output = Response> + Send>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        future: TaskLocalFuture<SessionHandle, F>,
        layer: Arc<SessionLayer>,
        info: RequestInfo,
    ) -> Self {
        Self {
            state: State::Inner {
                future,
                finish: Some((layer, info)),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Inner {
                    mut future,
                    finish: pending,
                } => {
                    let response = ready!(future.as_mut().poll(cx))?;
                    let session = future.take_value().and_then(|handle| handle.loaded());
                    let (Some(session), Some((layer, info))) = (session, pending.take()) else {
                        // The handler never took its session: nothing to write.
                        return Poll::Ready(Ok(response));
                    };
                    let write = match begin(&layer, session, info, response) {
                        Begun::Done(response) => return Poll::Ready(Ok(response)),
                        Begun::Write(write) => write,
                    };
                    let commit = Box::pin(write.run(layer));
                    self.as_mut()
                        .project()
                        .state
                        .set(State::Commit { future: commit });
                }
                StateProj::Commit { future } => return future.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
