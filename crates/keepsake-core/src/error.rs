//! The one error type of keepsake.

use std::error::Error as StdError;

/// A boxed error from a backend driver, kept whole so the cause chain survives.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with keepsake's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in keepsake.
///
/// Store failures ([`Error::Backend`]) are answered by the layer with a 500 (or
/// the application's error response); data errors ([`Error::Deserialize`],
/// [`Error::NotAList`], …) are returned by [`Session`](crate::Session) methods and
/// leave the session unchanged. `Error` implements axum's `IntoResponse`, so a
/// handler can use `?` on session calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store's backend failed (connection lost, query error, I/O error …).
    #[error("session store `{store}` failed during `{operation}`")]
    Backend {
        /// The store kind (`"memory"`, `"postgres"`, …).
        store: &'static str,
        /// The store operation (`"load"`, `"save"`, …).
        operation: &'static str,
        /// What the backend reported.
        #[source]
        source: BoxError,
    },

    /// The store does not support this operation (for example listing a
    /// user's sessions when the whole session lives in a cookie).
    #[error("session store `{store}` does not support `{operation}`")]
    Unsupported {
        /// The store kind.
        store: &'static str,
        /// The operation it cannot do.
        operation: &'static str,
    },

    /// A saved session would be larger than the store accepts.
    #[error("session of {size} bytes exceeds the `{store}` store's limit of {limit} bytes")]
    TooLarge {
        /// The store kind.
        store: &'static str,
        /// The encoded size.
        size: usize,
        /// The store's limit.
        limit: usize,
    },

    /// A save kept conflicting with concurrent writers of the same session.
    #[error("session save still conflicted after {attempts} attempts")]
    Conflict {
        /// How many times the write was tried.
        attempts: u32,
    },

    /// A value this request read was changed by a concurrent request of the
    /// same session before this request's changes were saved: acting on it
    /// would break the serial order (docs/semantics.md). Nothing of this
    /// request was written. Answered with 409 by default.
    #[error("session value `{key}` read by this request was changed by a concurrent request")]
    Stale {
        /// The dot path (or the part of the session, in parentheses) that changed.
        key: String,
    },

    /// A change of this request no longer applies to the session as a
    /// concurrent request left it (a `push` onto a key that now holds a
    /// string). Nothing of this request was written. Answered with 409 by
    /// default.
    #[error("a change of this request no longer applies to the concurrently saved session")]
    Replay {
        /// Why the change no longer applies.
        #[source]
        source: Box<Error>,
    },

    /// The session was ended (logged out, destroyed, expired) or moved to a
    /// new id by a concurrent request before this request's changes were
    /// saved. Nothing of this request was written and no cookie is sent.
    /// Answered with 409 by default.
    #[error("the session was ended or moved to a new id by a concurrent request")]
    Ended,

    /// A value would be nested deeper than [`MAX_DEPTH`](crate::MAX_DEPTH)
    /// levels (counting its dot path): it could not be read back. The session
    /// is unchanged.
    #[error("session value at `{key}` is nested {depth} levels deep; the limit is {limit}")]
    TooDeep {
        /// The dot path.
        key: String,
        /// The nesting it would have.
        depth: usize,
        /// The limit.
        limit: usize,
    },

    /// A user id longer than [`MAX_USER_ID_LEN`](crate::MAX_USER_ID_LEN)
    /// bytes; refused before anything is written.
    #[error("user id of {len} bytes exceeds the limit of {limit} bytes")]
    UserIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// Creating a session kept colliding with existing ids (the CSPRNG is broken).
    #[error("could not find an unused session id after {attempts} attempts")]
    IdCollision {
        /// How many ids were tried.
        attempts: u32,
    },

    /// A stored value could not be read as the requested type.
    #[error("session value at `{key}` does not deserialize as the requested type")]
    Deserialize {
        /// The dot path that was read.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A value could not be turned into JSON.
    #[error("value for session key `{key}` does not serialize to JSON")]
    Serialize {
        /// The dot path that was written.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// `push` on a value that is neither absent, null nor a list.
    #[error("cannot push onto session key `{key}`: it holds a {found}, not a list")]
    NotAList {
        /// The dot path.
        key: String,
        /// The JSON type found there.
        found: &'static str,
    },

    /// `increment`/`decrement` on a value that is not a number.
    #[error("cannot increment session key `{key}`: it holds a {found}, not a number")]
    NotANumber {
        /// The dot path.
        key: String,
        /// The JSON type found there.
        found: &'static str,
    },

    /// `increment`/`decrement` would overflow (or leave the finite floats).
    #[error("incrementing session key `{key}` overflows")]
    Overflow {
        /// The dot path.
        key: String,
    },

    /// A session payload could not be encoded or decoded.
    #[error("session payload could not be {action}")]
    Payload {
        /// `"encoded"` or `"decoded"`.
        action: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The configuration is invalid.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong and what was expected.
        message: String,
    },
}

impl Error {
    /// Wraps a backend failure.
    pub fn backend(
        store: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            store,
            operation,
            source: source.into(),
        }
    }

    /// True for failures of the backing store (as opposed to misuse of the API).
    #[must_use]
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend { .. } | Self::Conflict { .. })
    }

    /// True when a concurrent request of the same session made this
    /// request's changes impossible to save as they are ([`Error::Stale`],
    /// [`Error::Replay`], [`Error::Ended`]): the client may retry.
    #[must_use]
    pub fn is_concurrent(&self) -> bool {
        matches!(self, Self::Stale { .. } | Self::Replay { .. } | Self::Ended)
    }

    /// The HTTP status the default error response uses: 409 Conflict for
    /// [`is_concurrent`](Self::is_concurrent) errors, 500 otherwise.
    #[must_use]
    pub fn status(&self) -> http::StatusCode {
        if self.is_concurrent() {
            http::StatusCode::CONFLICT
        } else {
            http::StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        tracing::error!(error = %crate::error::Report(&self), "session error");
        let status = self.status();
        let mut response = (status, status.canonical_reason().unwrap_or_default()).into_response();
        response
            .extensions_mut()
            .insert(crate::SessionFailure::new(self));
        response
    }
}

/// Displays an error with its whole `source()` chain: `a: b: c`.
#[derive(Debug)]
pub struct Report<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A session error attached to a response's extensions, so outer layers
/// (logging, metrics, error pages) can see why a request failed.
#[derive(Debug, Clone)]
pub struct SessionFailure(std::sync::Arc<Error>);

impl SessionFailure {
    /// Wraps an error.
    #[must_use]
    pub fn new(error: Error) -> Self {
        Self(std::sync::Arc::new(error))
    }

    /// The error.
    #[must_use]
    pub fn error(&self) -> &Error {
        &self.0
    }
}

impl std::fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Report(&*self.0).fmt(f)
    }
}

impl axum_core::response::IntoResponse for SessionFailure {
    fn into_response(self) -> axum_core::response::Response {
        crate::handle::default_error_response(&self)
    }
}
