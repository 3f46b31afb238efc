//! Sessions for [axum] and [tower], with the API that Laravel users know
//! (`put`, `get`, `pull`, `push`, `flash`, `reflash`, `keep`, `increment`,
//! `regenerate`, `invalidate`, `token` …) and no lost updates when two
//! requests of one session overlap.
//!
//! ```
//! use axum::{Router, routing::get};
//! use keepsake::{MemoryStore, Session, SessionLayer};
//!
//! async fn counter(session: Session) -> Result<String, keepsake::Error> {
//!     let visits: i64 = session.increment("visits", 1)?;
//!     Ok(format!("{visits} visits"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(counter))
//!     .layer(SessionLayer::new(MemoryStore::new()));
//! # let _ = app;
//! ```
//!
//! # The request lifecycle
//!
//! 1. [`SessionLayer`] reads the session cookie. A value that is not a
//!    well-formed id (43 characters of base64url) is ignored, with a `warn`
//!    log, before any store is touched.
//! 2. Nothing is loaded yet: the layer puts a [`SessionHandle`] into the
//!    request extensions. A handler that never takes a [`Session`] costs no
//!    store round trip at all.
//! 3. The [`Session`] extractor (or [`SessionHandle::load`] in other
//!    middleware) loads the record once, on first use. An id the store does
//!    not know, or an expired one, gives a fresh, empty session with a **new**
//!    id: a client can never choose its session id.
//! 4. The handler uses a synchronous API. Every change is also appended to the
//!    request's change set.
//! 5. After the handler, if the session was loaded: flash data is aged, then
//!    exactly one of these happens —
//!    - the session changed → one compare-and-swap `save` (or a `create` for a
//!      new session or a new id);
//!    - it did not change, but its expiry would move by at least
//!      [`touch_after`](SessionLayer::with_touch_after) → one `touch` that moves
//!      the expiry without rewriting the payload;
//!    - otherwise → no write.
//!
//!    A response of 5xx saves nothing (see
//!    [`with_save_on_server_error`](SessionLayer::with_save_on_server_error)).
//!    A new session with nothing in it is never stored and sets no cookie.
//! 6. The cookie is sent when the session is new, its id changed, or its
//!    expiry moved; it is removed when this request destroyed the session. A
//!    cookie naming an unknown session, or a session another request
//!    destroyed meanwhile, is left alone: the browser may already hold a newer
//!    cookie from a concurrent response (a login in another tab) that a
//!    removal would delete.
//! 7. With the lottery's probability (2 in 100 by default) the store's `gc`
//!    runs on a spawned task, off the request's latency path, at most once a
//!    minute per layer by default
//!    ([`with_gc_min_interval`](SessionLayer::with_gc_min_interval)).
//!
//! A store failure never escapes the service as an `Err` and never panics:
//! the client gets a 500 (or the response of
//! [`with_error_handler`](SessionLayer::with_error_handler)), the cause is
//! logged with `tracing`, and a [`SessionFailure`] is attached to the response
//! extensions for outer layers.
//!
//! # Concurrency: no lost updates
//!
//! Every stored record has a version, and every save is compare-and-swap on
//! it. When two requests of one session overlap and the other one saved first,
//! the layer reloads the record, replays this request's change set on top of
//! it (puts, forgets, pushes, increments, flashes … in order), checks that
//! everything the handler read still reads the same, and tries again, a
//! bounded number of times. The rule, for every interleaving: the stored
//! session and every response sent match some serial order of the requests
//! consistent with what each handler read and returned
//! ([docs/semantics.md](https://github.com/keepsake-rs/keepsake/blob/main/docs/semantics.md)
//! has it op by op, with its three documented exceptions). So:
//!
//! - writes to different keys by concurrent requests all land;
//! - increments all count (two tabs incrementing a counter 100 times each end
//!   at 200);
//! - the same key ends with the value of the later save;
//! - a request that read a value another request changed meanwhile, or whose
//!   change no longer applies, is not saved and gets a 409
//!   ([`Error::Stale`], [`Error::Replay`]) instead of overwriting it;
//! - a session destroyed or moved to a new id meanwhile (a logout or a login
//!   in another tab) is never brought back by a late save, and the late
//!   request gets a 409 ([`Error::Ended`]), never a silent success;
//! - creating a session is insert-if-absent, so an id collision can never
//!   overwrite another user's session;
//! - [`regenerate`](Session::regenerate) stores the new record before it
//!   destroys the old one.
//!
//! # Security defaults
//!
//! - Session ids are 256 bits from the OS CSPRNG; stores keep SHA-256 of the
//!   id ([`StorageKey`]), never the id, so a leaked table hands out nothing.
//! - Unknown and malformed ids are replaced, never adopted (strict mode).
//! - The cookie is `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`, named
//!   `keepsake_session`.
//! - [`Session::regenerate`] on login and [`Session::invalidate`] on logout
//!   destroy the old record.
//! - [`Session::token`] is a CSRF token of 43 characters from the CSPRNG.
//!
//! # Where keepsake differs from Laravel
//!
//! keepsake follows Laravel's `Illuminate\Session\Store` method by method,
//! except:
//!
//! - **No reserved keys.** The CSRF token, flash bookkeeping, flashed input
//!   and previous URL live in metadata beside the user data, so
//!   [`Session::all`] returns only what the application put.
//! - **Ids** are 256-bit, stored hashed, and an id the store does not know is
//!   replaced by a fresh one (Laravel adopts it).
//! - **Saving** happens only when something changed or a touch is due;
//!   Laravel writes on every request. Concurrent saves are merged (above);
//!   Laravel's last write wins.
//! - **Flash ageing** happens only in requests that load the session, so an
//!   asset or API call that never takes `Session` does not eat a flash message.
//! - [`Session::push`] onto a value that is not a list, and
//!   [`Session::increment`] of a non-number (strings too) or past `i64`, are
//!   errors that leave the session unchanged.
//! - [`Session::flush`] also unties the session from its user and drops its
//!   own lifetime.
//!
//! # Stores and features
//!
//! [`MemoryStore`] is built in. The other drivers live in their own crates
//! and are re-exported here behind cargo features; features are additive.
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `sqlite` | `SqliteStore` (WAL, busy timeout; no server) | no |
//! | `postgres` | `PostgresStore` | no |
//! | `mysql` | `MySqlStore` (MySQL and MariaDB) | no |
//! | `file` | `FileStore` (one file per session, atomic writes, locks) | no |
//! | `cookie` | `CookieStore` (the session encrypted in the cookie), `Key`, `Keys` | no |
//! | `encryption` | `EncryptedStore` (XChaCha20-Poly1305 payloads at rest), `Key`, `Keys` | no |
//! | `redis` | `RedisStore` (Redis and Redis Cluster) | no |
//! | `memcached` | `MemcachedStore` | no |
//! | `testing` | the `testing` module: a test client and session assertions | no |
//! | `metrics` | counts and times every store operation and the layer's save retries through the `metrics` facade | no |
//!
//! On docs.rs every feature is enabled, and each item gated by one says
//! which.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod cookie;
pub mod csrf;
pub mod gc;
pub mod middleware;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{SessionConfig, from_env};
pub use csrf::CsrfLayer;
pub use gc::{GcHandle, spawn_gc};
pub use keepsake_core::{
    BoxError, Cas, ClientSideStore, Error, MAX_DEPTH, MAX_USER_ID_LEN, MemoryStore, Meta, Payload,
    Record, Result, SESSION_ID_LEN, STORAGE_KEY_LEN, Session, SessionFailure, SessionHandle,
    SessionId, SessionInfo, SessionRejection, SessionStore, StorageKey, async_trait, now,
};
pub use middleware::{SameSite, SessionLayer, SessionService, SessionSource};

#[cfg(feature = "cookie")]
pub use keepsake_cookie::CookieStore;
#[cfg(feature = "encryption")]
pub use keepsake_cookie::EncryptedStore;
#[cfg(any(feature = "cookie", feature = "encryption"))]
pub use keepsake_cookie::{Key, Keys};
#[cfg(feature = "file")]
pub use keepsake_file::FileStore;
#[cfg(feature = "memcached")]
pub use keepsake_memcached::MemcachedStore;
#[cfg(feature = "redis")]
pub use keepsake_redis::RedisStore;
#[cfg(feature = "mysql")]
pub use keepsake_sqlx::MySqlStore;
#[cfg(feature = "postgres")]
pub use keepsake_sqlx::PostgresStore;
#[cfg(feature = "sqlite")]
pub use keepsake_sqlx::SqliteStore;
/// The sqlx version the SQL stores use, for building pools to share with them.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use keepsake_sqlx::sqlx;

/// The store contract and helpers for writing a store of your own.
pub mod store {
    pub use keepsake_core::{Cas, ClientSideStore, Record, SessionInfo, SessionStore};
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The migration guide's examples (docs/migrating.md), compiled and run as
/// doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/migrating.md")]
struct MigratingDoctests;
