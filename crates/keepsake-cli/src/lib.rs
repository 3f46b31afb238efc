//! `keepsake`: operate the session stores of an application that uses the
//! [keepsake](https://docs.rs/keepsake) session middleware.
//!
//! ```text
//! keepsake migrate                      create or upgrade the session table
//! keepsake prune                        delete expired sessions now (for cron)
//! keepsake stats [--json]               live/expired sessions, users, activity, payload sizes
//! keepsake revoke --user ID [--except STORAGE_KEY]
//!                                       sign a user out everywhere
//! ```
//!
//! Install with `cargo install keepsake-cli`; `keepsake --help` and
//! `keepsake <command> --help` describe every option.
//!
//! # Configuration
//!
//! The command reads the application's own environment exactly as the
//! library does ([`keepsake::config::SessionConfig`]: same variables, same
//! defaults), after loading `.env` from the current directory or a parent
//! (or the file given with `--env-file`) without overriding variables that
//! are already set. Flags override the environment.
//!
//! | variable | flag | meaning | default |
//! |---|---|---|---|
//! | `SESSION_DRIVER` | `--driver` | `sqlite`, `postgres`, `mysql` (MariaDB too), `file`, `redis`, `redis-cluster`, `memcached` | `file` |
//! | `SESSION_CONNECTION`, else `DATABASE_URL` | `--url` | the database URL of the SQL drivers | — |
//! | `SESSION_TABLE` | `--table` | the SQL table | `sessions` |
//! | `SESSION_FILES` | `--dir` | the session directory of the file driver | `storage/sessions` |
//! | `SESSION_REDIS_URL` | `--url` | `redis://…`; for `redis-cluster` several, comma-separated | `redis://127.0.0.1:6379` |
//! | `SESSION_MEMCACHED_SERVERS` | `--url` | `host:port[,host:port…]` | `127.0.0.1:11211` |
//! | `SESSION_PREFIX` | `--prefix` | the key prefix of redis and memcached | `keepsake:` |
//!
//! Every other `SESSION_*` variable is checked as the application checks it
//! (a bad `SESSION_LIFETIME` is an error here too) and otherwise ignored:
//! the command never decodes payloads, so encryption keys are not needed.
//! The `memory` and `cookie` drivers keep nothing the command could reach
//! (process memory, the visitor's browser): naming them is a configuration
//! error. Commands other than `migrate` refuse to create a missing SQLite
//! file or session directory: a typo is reported, not silently created.
//!
//! # Exit status
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the store failed: unreachable server, query or I/O error (retrying later may work) |
//! | 2 | usage or configuration error: bad flag, unknown driver, missing URL or directory, an operation the driver does not support (fix the invocation) |
//!
//! Results go to stdout (`pruned 42 expired sessions`), progress and errors
//! to stderr.
//!
//! # Commands
//!
//! - `migrate` runs the SQL driver's own `migrate()`: idempotent, safe at
//!   every deploy. The file driver creates its directory; redis and memcached
//!   have no schema.
//! - `prune` deletes what has expired, in batches of `--batch-size` rows on
//!   SQL (so a large backlog holds no long locks), and prints how many. On a
//!   terminal a progress bar follows the batches; otherwise (cron) a line on
//!   stderr every five seconds of a long prune. Redis and memcached expire
//!   sessions themselves: the count is 0. A cron line:
//!   `*/15 * * * * cd /srv/app && keepsake prune --quiet`.
//! - `stats` reads every session: SQL with two queries, files with a scan
//!   of the headers, Redis with `SCAN` over the key prefix (O(number of
//!   keys); on a cluster, on every master). Memcached cannot list its keys.
//! - `revoke --user ID` deletes every session of the user through the
//!   per-user index; `--except` keeps one (a 64-hex storage key).

mod backend;
mod cli;
mod config;
mod fail;
mod progress;
mod stats;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use keepsake_core::StorageKey;

use crate::backend::Purpose;
use crate::cli::{Cli, Command};
use crate::fail::Failure;
use crate::progress::Progress;

/// Runs the `keepsake` command with the process's arguments and
/// environment, and returns its [exit status](crate#exit-status).
///
/// This is the whole binary (`fn main() -> ExitCode { keepsake_cli::main() }`),
/// kept in the library so that its documentation is built with the crate's.
#[must_use]
pub fn main() -> ExitCode {
    // clap exits with 2 on a usage error and 0 for --help/--version.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&Failure::runtime("cannot start the async runtime", e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure),
    }
}

/// Prints `failure` with its causes on stderr and returns its exit status.
fn report(failure: &Failure) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "keepsake: error: {}", chain(failure));
    if let Some(hint) = failure.hint() {
        let _ = writeln!(stderr, "keepsake: hint: {hint}");
    }
    ExitCode::from(failure.exit_code())
}

/// The error and its causes, `a: b: c`, leaving out a cause whose text the
/// line already holds (drivers often repeat their source in their message).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn run(cli: Cli) -> Result<(), Failure> {
    load_env_file(cli.env_file.as_deref())?;
    init_logging(cli.verbose);
    let target = config::resolve(&cli.store, |name| std::env::var(name).ok())?;
    let purpose = match cli.command {
        Command::Migrate => Purpose::Migrate,
        _ => Purpose::Use,
    };
    // Checked before connecting: a typo is a usage error, not a round trip.
    let except = match &cli.command {
        Command::Revoke {
            except: Some(key), ..
        } => Some(StorageKey::parse(key.trim()).ok_or_else(|| {
            Failure::usage(
                "--except takes a storage key: 64 lowercase hex characters (not a session id)",
            )
        })?),
        _ => None,
    };
    let store = backend::open(&target, purpose).await?;
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock<'_>, text: &str| {
        writeln!(out, "{text}").map_err(|e| Failure::runtime("cannot write to stdout", e))
    };
    match cli.command {
        Command::Migrate => {
            let done = store.migrate().await?;
            print(&mut out, &done)
        }
        Command::Prune { batch_size } => {
            let mut progress = Progress::new(cli.quiet);
            let deleted = store
                .prune(keepsake_core::now(), batch_size.max(1), &mut progress)
                .await;
            progress.finish();
            let deleted = deleted?;
            print(&mut out, &format!("pruned {deleted} expired sessions"))?;
            if store.self_expiring() && !cli.quiet {
                eprintln!(
                    "keepsake: {} expires sessions itself; there is nothing to prune",
                    store.as_dyn().kind()
                );
            }
            Ok(())
        }
        Command::Stats { json } => {
            let stats = stats::collect(&store, keepsake_core::now()).await?;
            let text = if json {
                serde_json::to_string_pretty(&stats)
                    .map_err(|e| Failure::runtime("cannot encode the statistics", e))?
            } else {
                stats::render(&stats, store.self_expiring())
                    .trim_end()
                    .to_owned()
            };
            print(&mut out, &text)
        }
        Command::Revoke { user, .. } => {
            let revoked = store.revoke(&user, except.as_ref()).await?;
            let kept = if except.is_some() { " (one kept)" } else { "" };
            print(
                &mut out,
                &format!("revoked {revoked} sessions of user {user}{kept}"),
            )
        }
    }
}

/// Loads `.env` (from the current directory or a parent, as the library
/// does) or `path` into the environment, never overriding a variable that
/// is already set. A missing `.env` is fine; a missing `--env-file` or a
/// malformed file is a configuration error.
fn load_env_file(path: Option<&std::path::Path>) -> Result<(), Failure> {
    let loaded = match path {
        Some(path) => dotenvy::from_path(path).map_err(|e| (path.display().to_string(), e)),
        None => match dotenvy::dotenv() {
            Ok(_) => Ok(()),
            Err(e) if e.not_found() => Ok(()),
            Err(e) => Err((".env".to_owned(), e)),
        },
    };
    loaded.map_err(|(file, e)| Failure::usage(format!("cannot read {file}: {e}")))
}

/// Logs of the stores and drivers on stderr: warnings by default, more with
/// `-v` (keepsake at debug) and `-vv` (everything at debug). `RUST_LOG`
/// overrides.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => {
            "warn,keepsake=debug,keepsake_core=debug,keepsake_sqlx=debug,keepsake_file=debug,keepsake_redis=debug"
        }
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
