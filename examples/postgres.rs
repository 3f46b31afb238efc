//! Two app servers sharing one PostgreSQL session store: two instances of
//! one application in this process, on two ports, each with its own
//! connection pool. Sign in on one, and the other knows you.
//!
//! ```text
//! SESSION_CONNECTION=postgres://postgres@127.0.0.1:5432/postgres cargo run --example postgres
//! ```
//!
//! The store is configured as `keepsake::from_env` configures it: the
//! database from `SESSION_CONNECTION` (else `DATABASE_URL`), the table from
//! `SESSION_TABLE` (default `sessions`, created or upgraded at start-up),
//! `SESSION_LIFETIME` and the other `SESSION_*` variables, from the
//! environment or a `.env` file. `PORT` chooses the first port (default
//! 3001; the second instance takes the next one). The example prints the
//! curl lines to try:
//!
//! ```text
//! $ curl -s -b jar.txt -c jar.txt -d user=alice http://127.0.0.1:3001/login
//! instance a: signed in as alice
//! $ curl -s -b jar.txt -c jar.txt http://127.0.0.1:3002/me
//! instance b: signed in as alice (count 0)
//! $ curl -s -b jar.txt -c jar.txt -X POST http://127.0.0.1:3001/count
//! instance a: count 1
//! $ curl -s -b jar.txt -c jar.txt -X POST http://127.0.0.1:3002/count
//! instance b: count 2
//! $ curl -s -b jar.txt -c jar.txt -X POST http://127.0.0.1:3002/logout
//! instance b: signed out
//! $ curl -s -b jar.txt -c jar.txt http://127.0.0.1:3001/me
//! instance a: not signed in
//! ```

#[path = "shared/two_instances.rs"]
mod two_instances;

use std::process::ExitCode;

use keepsake::config::Driver;

#[tokio::main]
async fn main() -> ExitCode {
    two_instances::init_tracing();
    let mut config = match two_instances::config_from_env() {
        Ok(config) => config,
        Err(code) => return code,
    };
    config.driver = Driver::Postgres;
    if config.connection.is_none() {
        return two_instances::missing(
            "SESSION_CONNECTION",
            "it names the PostgreSQL database that keeps the sessions (DATABASE_URL is read when it is not set)",
            "postgres",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
    }
    two_instances::run(config, "PostgreSQL").await
}
