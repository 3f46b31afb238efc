//! The session middleware: [`SessionLayer`] and [`SessionService`].
//!
//! The layer reads the session cookie and puts a [`SessionHandle`](crate::SessionHandle)
//! into the request; the [`Session`](crate::Session) extractor loads the
//! record on first use; after the handler the layer ages flash data and
//! writes at most once. See the [crate docs](crate#the-request-lifecycle).

mod future;
mod layer;
mod proxy;
mod request;
mod service;

pub use future::ResponseFuture;
pub(crate) use layer::Config;
pub use layer::{Binding, ErrorHandler, SameSite, SessionLayer, SessionSource};
pub(crate) use proxy::is_host;
pub use proxy::{ProxyHeader, TrustedProxies};
pub use service::SessionService;
