//! Why a command failed, and the exit status scripts see.

use std::error::Error as StdError;
use std::fmt;

use keepsake_core::{BoxError, Error, Report};

/// Exit status of a usage or configuration error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status of a failure of the store.
pub(crate) const EXIT_RUNTIME: u8 = 1;

/// A failed command.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The invocation or configuration is wrong: fixing it is the way out.
    Usage(String),
    /// The store failed: the same command may work later.
    Runtime {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: BoxError,
    },
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    pub(crate) fn runtime(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Runtime {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A store error: configuration and unsupported operations are usage
    /// errors, the rest runtime failures.
    pub(crate) fn store(context: impl Into<String>, error: Error) -> Self {
        match error {
            Error::Config { message } => Self::Usage(message),
            Error::Unsupported { store, operation } => Self::Usage(format!(
                "{}: the {store} driver does not support `{operation}`",
                context.into()
            )),
            other => Self::runtime(context, other),
        }
    }

    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Runtime { .. } => EXIT_RUNTIME,
        }
    }

    /// A hint for a well-known cause, printed under the error.
    pub(crate) fn hint(&self) -> Option<&'static str> {
        let Self::Runtime { source, .. } = self else {
            return None;
        };
        let text = Report(source.as_ref()).to_string();
        let missing_table = ["no such table", "does not exist", "doesn't exist"]
            .iter()
            .any(|needle| text.contains(needle));
        missing_table.then_some("the session table may be missing: run `keepsake migrate`")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => f.write_str(message),
            Self::Runtime { context, .. } => f.write_str(context),
        }
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Usage(_) => None,
            Self::Runtime { source, .. } => Some(source.as_ref()),
        }
    }
}
