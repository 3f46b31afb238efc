//! A JSON API whose clients (a mobile app, a CLI, a single-page app on
//! another origin) carry the session id in the `x-session-token` header
//! only: no cookie is read or set. Such requests skip the CSRF check, since
//! a browser cannot add a custom header to a cross-site request.
//!
//! ```text
//! cargo run --example api_token
//! ```
//!
//! Sessions are kept in memory unless `SESSION_DRIVER` (and what that
//! driver needs, read as `keepsake::from_env` reads it) says otherwise.
//! `PORT` chooses the port (default 3000). A session:
//!
//! ```text
//! $ curl -si -X POST -H 'content-type: application/json' -d '{"user":"alice"}' http://127.0.0.1:3000/api/login
//! HTTP/1.1 200 OK
//! content-type: application/json
//! vary: x-session-token
//! cache-control: private
//! x-session-token: cevGeObp7cmjf3hQ5CU1_30G8y8iWGmey2gXgsHimTk
//! content-length: 16
//! date: Mon, 30 Nov 2026 18:59:23 GMT
//!
//! {"user":"alice"}
//! $ TOKEN=cevGeObp7cmjf3hQ5CU1_30G8y8iWGmey2gXgsHimTk
//! $ curl -s -X POST -H "x-session-token: $TOKEN" -H 'content-type: application/json' \
//!     -d '{"text":"buy milk"}' http://127.0.0.1:3000/api/notes
//! {"notes":["buy milk"]}
//! $ curl -s -H "x-session-token: $TOKEN" http://127.0.0.1:3000/api/me
//! {"notes":["buy milk"],"user":"alice"}
//! $ curl -s -H 'x-session-token: not-a-token' http://127.0.0.1:3000/api/me
//! {"error":"not signed in"}
//! $ curl -s -X POST -H "x-session-token: $TOKEN" -H 'content-type: application/json' \
//!     -d '{"text":' http://127.0.0.1:3000/api/notes
//! {"error":"Failed to parse the request body as JSON: text: EOF while parsing a value at line 1 column 8"}
//! $ curl -si -X POST -H "x-session-token: $TOKEN" http://127.0.0.1:3000/api/logout
//! HTTP/1.1 200 OK
//! content-type: application/json
//! vary: x-session-token
//! cache-control: private
//! x-session-token:
//! content-length: 19
//! date: Mon, 30 Nov 2026 18:59:23 GMT
//!
//! {"signed_out":true}
//! $ curl -s -H "x-session-token: $TOKEN" http://127.0.0.1:3000/api/me
//! {"error":"not signed in"}
//! ```
//!
//! No `set-cookie` anywhere: a client that sends no header gets a new
//! session each time, and `Vary: x-session-token` with `Cache-Control:
//! private` keeps shared caches from mixing sessions up.
//!
//! The login answers with a new id (`regenerate`), so a token a client held
//! before it signs nobody in; the logout answers with an empty header, the
//! client's cue to drop its token.

use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keepsake::config::{ConfigError, SessionConfig};
use keepsake::{MemoryStore, Session, SessionLayer};
use serde::Deserialize;
use serde_json::{Value, json};

/// The header that carries the session id, both ways.
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-session-token");

/// The longest note kept, in bytes.
const MAX_NOTE: usize = 500;

/// The most notes kept per session.
const MAX_NOTES: usize = 20;

#[derive(Deserialize)]
struct Login {
    user: String,
}

#[derive(Deserialize)]
struct Note {
    text: String,
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The answer to a request that needs a signed-in user and has none.
fn not_signed_in() -> Response {
    error(StatusCode::UNAUTHORIZED, "not signed in")
}

/// `POST /api/login {"user": "…"}`: signs in (no password: the point is the
/// session) and answers with the new id in `x-session-token`.
async fn login(session: Session, body: Result<Json<Login>, JsonRejection>) -> Response {
    let Json(login) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let user = login.user.trim();
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !valid {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user must be 1 to 64 letters, digits, '-', '_', '.' or '@'",
        );
    }
    session.regenerate();
    session.set_user_id(user);
    match session.put("user", user) {
        Ok(()) => Json(json!({ "user": user })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/me`: the user and their notes.
async fn me(session: Session) -> Response {
    let user = match session.get::<String>("user") {
        Ok(Some(user)) => user,
        Ok(None) => return not_signed_in(),
        Err(e) => return e.into_response(),
    };
    let notes = session.get_value("notes").unwrap_or_else(|| json!([]));
    Json(json!({ "user": user, "notes": notes })).into_response()
}

/// `POST /api/notes {"text": "…"}`: appends a note. Two requests adding
/// notes at once both land: the layer merges concurrent pushes.
async fn add_note(session: Session, body: Result<Json<Note>, JsonRejection>) -> Response {
    match session.get::<String>("user") {
        Ok(Some(_)) => {}
        Ok(None) => return not_signed_in(),
        Err(e) => return e.into_response(),
    }
    let Json(note) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    if note.text.trim().is_empty() || note.text.len() > MAX_NOTE {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("text must be 1 to {MAX_NOTE} bytes"),
        );
    }
    let count = session
        .get_value("notes")
        .and_then(|notes| notes.as_array().map(Vec::len))
        .unwrap_or(0);
    if count >= MAX_NOTES {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("at most {MAX_NOTES} notes"),
        );
    }
    if let Err(e) = session.push("notes", note.text) {
        return e.into_response();
    }
    let notes: Value = session.get_value("notes").unwrap_or_else(|| json!([]));
    (StatusCode::CREATED, Json(json!({ "notes": notes }))).into_response()
}

/// `POST /api/logout`: destroys the session; the response carries an empty
/// `x-session-token`.
async fn logout(session: Session) -> Json<Value> {
    session.invalidate();
    Json(json!({ "signed_out": true }))
}

fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/me", get(me))
        .route("/api/notes", post(add_note))
        .route("/api/logout", post(logout))
        .layer(layer.with_header_only(TOKEN_HEADER))
}

/// The layer as `keepsake::from_env` configures it (`SESSION_LIFETIME` …),
/// over memory unless `SESSION_DRIVER` chooses a store.
async fn layer() -> Result<SessionLayer, ConfigError> {
    // Reads `.env` too, so a driver chosen there counts.
    let config = SessionConfig::from_env()?;
    if std::env::var_os("SESSION_DRIVER").is_none() {
        return Ok(config.layer(Arc::new(MemoryStore::new())));
    }
    config.build().await
}

fn fail(error: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    eprintln!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::from(code)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keepsake=debug".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let layer = match layer().await {
        Ok(layer) => layer,
        Err(e) => return fail(&e, 2),
    };
    let port = match std::env::var("PORT") {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("PORT={text:?} is invalid: expected a port number");
                return ExitCode::from(2);
            }
        },
        Err(_) => 3000,
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => return fail(&e, 1),
    };
    let base = format!("http://127.0.0.1:{port}");
    println!("JSON API on {base}; the session id travels in `{TOKEN_HEADER}` only. Try:");
    println!(
        "  curl -si -X POST -H 'content-type: application/json' -d '{{\"user\":\"alice\"}}' {base}/api/login"
    );
    println!("  curl -s -H \"{TOKEN_HEADER}: <the header's value>\" {base}/api/me");
    let app = app(layer);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}
