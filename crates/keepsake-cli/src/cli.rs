//! The command line: options and subcommands, as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ENVIRONMENT: &str = "\
Configuration: the application's own variables, read as the keepsake library
reads them (a .env file in the current directory or a parent is loaded first,
without overriding variables already set); flags override them.
  SESSION_DRIVER             sqlite, postgres, mysql (also MariaDB), file,
                             redis, redis-cluster, memcached (default: file)
  SESSION_CONNECTION         database URL of the SQL drivers (else DATABASE_URL)
  SESSION_TABLE              table of the SQL drivers (default: sessions)
  SESSION_FILES              directory of the file driver (default: storage/sessions)
  SESSION_REDIS_URL          default redis://127.0.0.1:6379; for redis-cluster
                             several, comma-separated
  SESSION_MEMCACHED_SERVERS  default 127.0.0.1:11211; several comma-separated
  SESSION_PREFIX             key prefix of redis and memcached (default: keepsake:)

Exit status:
  0  success
  1  the store failed (unreachable server, query error, I/O error)
  2  usage or configuration error (bad flag, unknown driver, missing URL,
     an operation the driver does not support)";

/// Operate keepsake's session stores: create the table, prune expired
/// sessions, look at what is stored, sign a user out everywhere.
#[derive(Debug, Parser)]
#[command(name = "keepsake", version, after_long_help = ENVIRONMENT)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) store: StoreArgs,

    /// Read this file instead of .env (it must exist).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) env_file: Option<PathBuf>,

    /// No progress bar or progress lines; only the result.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,

    /// Log what the stores do on stderr (repeat for more: -vv).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Which store to open: every flag overrides its environment variable.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct StoreArgs {
    /// The session driver [env: SESSION_DRIVER; default: file].
    #[arg(long, global = true, value_name = "DRIVER")]
    pub(crate) driver: Option<String>,

    /// The store's URL [env: SESSION_CONNECTION, DATABASE_URL, SESSION_REDIS_URL or
    /// SESSION_MEMCACHED_SERVERS, by driver].
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) url: Option<String>,

    /// The SQL table [env: SESSION_TABLE; default: sessions].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) table: Option<String>,

    /// The session directory of the file driver [env: SESSION_FILES; default:
    /// storage/sessions].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,

    /// The key prefix of redis and memcached [env: SESSION_PREFIX; default: keepsake:].
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the session table, or bring it up to date (SQL drivers).
    ///
    /// Safe to run at every deploy: it only creates what is missing. The
    /// file driver creates its directory; redis and memcached have no schema.
    Migrate,

    /// Delete the expired sessions now and print how many.
    ///
    /// For cron. SQL stores delete in batches, so a large backlog never holds
    /// long locks; on a terminal a progress bar follows them, otherwise a
    /// line on stderr every few seconds. Redis and memcached expire sessions
    /// themselves: nothing to delete.
    Prune {
        /// Rows deleted per statement (SQL drivers).
        #[arg(long, value_name = "ROWS", default_value_t = 1000)]
        batch_size: u64,
    },

    /// What the store holds: live and expired sessions, users, activity,
    /// payload sizes.
    ///
    /// Reads every session (SQL: two queries; files: a directory scan;
    /// redis: SCAN over the key prefix, O(number of keys)), so run it off
    /// peak on a large store.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Sign a user out everywhere: delete all of the user's sessions and
    /// print how many.
    Revoke {
        /// The user id the application stored with `set_user_id`.
        #[arg(long, value_name = "ID")]
        user: String,

        /// Keep this session (its 64-hex storage key, as listed by the
        /// application's "your devices" page).
        #[arg(long, value_name = "STORAGE_KEY")]
        except: Option<String>,
    },
}
