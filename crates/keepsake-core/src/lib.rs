//! The contract of [keepsake](https://docs.rs/keepsake): the [`Session`] API,
//! the [`SessionStore`] trait that every backend implements, the [`Record`]
//! it stores, [`SessionId`]s, [`MemoryStore`], and the store conformance kit.
//!
//! Applications depend on the `keepsake` crate, which re-exports all of this
//! together with the axum layer. Driver crates depend on this crate only.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod batch;
pub mod commit;
mod error;
mod handle;
mod id;
pub mod instrument;
mod memory;
mod path;
mod record;
mod session;
mod store;

#[cfg(feature = "test-kit")]
pub mod test_kit;

pub use commit::{CommitContext, CommitLock, CommitLocks, MAX_USER_ID_LEN, Outcome};
pub use error::{BoxError, Error, Report, Result, SessionFailure};
pub use handle::{Loader, SessionHandle, SessionRejection, default_error_response};
pub use id::{SESSION_ID_LEN, STORAGE_KEY_LEN, SessionId, StorageKey};
pub use instrument::Instrumented;
pub use memory::MemoryStore;
pub use record::{Meta, Payload, Record, SessionInfo, now, now_millis};
pub use session::{Counter, MAX_DEPTH, Session};
pub use store::{Cas, ClientSideStore, SessionStore};

#[doc(hidden)]
pub use async_trait::async_trait;
