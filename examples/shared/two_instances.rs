//! The application the `postgres` and `redis_cluster` examples run twice, as
//! two app servers would: two instances in one process, each with its own
//! layer and its own connections to the shared store, on two ports. A login
//! on one instance is seen by the other, because the session lives in the
//! store, not in either process.

use std::process::ExitCode;

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, serve};
use keepsake::config::SessionConfig;
use keepsake::{Session, SessionLayer};
use serde::Deserialize;

/// Where the first instance listens when `PORT` is not set; the second one
/// listens on the next port.
const DEFAULT_PORT: u16 = 3001;

/// Which instance answered, so that each reply says it.
#[derive(Clone, Copy)]
struct Instance(&'static str);

#[derive(Deserialize)]
struct Login {
    user: String,
}

/// Logs to stderr; `RUST_LOG` chooses what (default: keepsake's debug
/// lines).
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keepsake=debug".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The configuration from the environment and `.env`, read by keepsake as an
/// application reads it. The examples serve plain HTTP on loopback, where a
/// `Secure` cookie would never come back: unless `SESSION_SECURE_COOKIE` is
/// set, the cookie goes without `Secure` (keep it on in production).
pub(crate) fn config_from_env() -> Result<SessionConfig, ExitCode> {
    let mut config = SessionConfig::from_env().map_err(|error| fail(&error, 2))?;
    if std::env::var_os("SESSION_SECURE_COOKIE").is_none() {
        config.secure = false;
    }
    Ok(config)
}

/// Prints `error` with its causes and returns `code`.
pub(crate) fn fail(error: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    eprintln!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::from(code)
}

/// One instance's routes (plain-text answers, easy to read in a terminal).
fn app(instance: &'static str, layer: SessionLayer) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/login", post(login))
        .route("/count", post(count))
        .route("/logout", post(logout))
        .with_state(Instance(instance))
        .layer(layer)
}

/// Who is signed in, as this instance sees it.
async fn me(State(Instance(name)): State<Instance>, session: Session) -> Response {
    match session.get::<String>("user") {
        Ok(Some(user)) => {
            let count = session.get::<i64>("count").ok().flatten().unwrap_or(0);
            format!("instance {name}: signed in as {user} (count {count})\n").into_response()
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            format!("instance {name}: not signed in\n"),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Signs in as the form's `user` (no password: the point is the session).
/// A real application also checks a CSRF token here (see the demo).
async fn login(
    State(Instance(name)): State<Instance>,
    session: Session,
    Form(form): Form<Login>,
) -> Response {
    let user = form.user.trim();
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !valid {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "instance {name}: user must be 1 to 64 letters, digits, '-', '_', '.' or '@'\n"
            ),
        )
            .into_response();
    }
    // A new id on login: a session id known before it (fixation) is worthless.
    session.regenerate();
    session.set_user_id(user);
    match session.put("user", user) {
        Ok(()) => format!("instance {name}: signed in as {user}\n").into_response(),
        Err(error) => error.into_response(),
    }
}

/// Counts in the shared session: requests to either instance add up.
async fn count(State(Instance(name)): State<Instance>, session: Session) -> Response {
    match session.increment("count", 1_i64) {
        Ok(count) => format!("instance {name}: count {count}\n").into_response(),
        Err(error) => error.into_response(),
    }
}

/// Signs out: the session is emptied and its record destroyed, for both
/// instances.
async fn logout(State(Instance(name)): State<Instance>, session: Session) -> String {
    session.invalidate();
    format!("instance {name}: signed out\n")
}

/// Builds one layer per instance from `config` (each with its own
/// connections to the store), binds `PORT` and the port after it, prints the
/// curl lines to try, and serves both until Ctrl-C.
pub(crate) async fn run(config: SessionConfig, store: &str) -> ExitCode {
    let port = match std::env::var("PORT") {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(port) if port < u16::MAX => port,
            _ => {
                eprintln!("PORT={text:?} is invalid: expected a port number below 65535");
                return ExitCode::from(2);
            }
        },
        Err(_) => DEFAULT_PORT,
    };
    let mut layers = Vec::with_capacity(2);
    for _ in 0..2 {
        match config.build().await {
            Ok(layer) => layers.push(layer),
            Err(error) => return fail(&error, 1),
        }
    }
    let (Some(layer_b), Some(layer_a)) = (layers.pop(), layers.pop()) else {
        return ExitCode::FAILURE;
    };
    let bind = |port: u16| tokio::net::TcpListener::bind(("127.0.0.1", port));
    let (listener_a, listener_b) = match (bind(port).await, bind(port + 1).await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!(
                "error: cannot listen on 127.0.0.1:{port} and :{}: {error}",
                port + 1
            );
            return ExitCode::FAILURE;
        }
    };
    let a = format!("http://127.0.0.1:{port}");
    let b = format!("http://127.0.0.1:{}", port + 1);
    println!("instance a on {a} and instance b on {b}, sharing sessions in {store}");
    println!("try (the cookie jar `jar.txt` is the browser; cookies do not depend on the port):");
    println!("  curl -s -b jar.txt -c jar.txt -d user=alice {a}/login");
    println!("  curl -s -b jar.txt -c jar.txt {b}/me");
    println!("  curl -s -b jar.txt -c jar.txt -X POST {a}/count");
    println!("  curl -s -b jar.txt -c jar.txt -X POST {b}/count");
    println!("  curl -s -b jar.txt -c jar.txt -X POST {b}/logout");
    println!("  curl -s -b jar.txt -c jar.txt {a}/me");
    let served = tokio::select! {
        served = serve(listener_a, app("a", layer_a)).into_future() => served,
        served = serve(listener_b, app("b", layer_b)).into_future() => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error, 1),
    }
}

/// Says which variable to set, with a command line that sets it, and
/// returns the exit code for a configuration error.
pub(crate) fn missing(variable: &str, what: &str, example: &str, value: &str) -> ExitCode {
    eprintln!("error: {variable} is not set: {what}.");
    eprintln!("Set it, for example:\n\n  {variable}={value} cargo run --example {example}\n");
    eprintln!("(a .env file in the current directory works too)");
    ExitCode::from(2)
}
