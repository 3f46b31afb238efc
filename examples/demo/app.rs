//! The demo's router: pages, forms and templates. `main.rs` serves it; the
//! browser test serves the same router on a random port.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use keepsake::{CsrfLayer, Session, SessionLayer, SessionStore};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The demo's accounts. A real application checks a password hash.
const USERS: &[(&str, &str)] = &[("alice", "password"), ("bob", "password")];

const TITLE_MAX: usize = 60;
const BODY_MAX: usize = 500;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn SessionStore>,
    templates: Arc<Environment<'static>>,
}

/// The whole application: routes, CSRF protection inside the session layer.
pub(crate) fn app(store: Arc<dyn SessionStore>, session_layer: SessionLayer) -> Router {
    let templates = Arc::new(templates());
    let expired = Arc::clone(&templates);
    let csrf = CsrfLayer::new().with_rejection(move || {
        let page = render(&expired, "expired.html", json!({}))
            .unwrap_or_else(|_| Html("Page expired".to_owned()));
        (
            StatusCode::from_u16(419).unwrap_or(StatusCode::FORBIDDEN),
            page,
        )
            .into_response()
    });
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/notes", post(add_note))
        .route("/devices", get(devices))
        .route("/devices/sign-out-others", post(sign_out_others))
        .route("/api/counter", get(api_counter).post(api_increment))
        .with_state(AppState { store, templates })
        .layer(csrf)
        .layer(session_layer)
}

/// The JSON API, for clients that carry the session id in the
/// `x-session-token` header instead of a cookie: a `GET` starts (or reads)
/// the API session and hands its id back in that header; a `POST` with the
/// header counts. Header-carried requests skip the CSRF check, which only a
/// browser's cookie needs.
///
/// ```text
/// curl -si http://127.0.0.1:3000/api/counter            # note x-session-token
/// curl -s -X POST -H "x-session-token: …" http://127.0.0.1:3000/api/counter
/// ```
async fn api_counter(session: Session) -> Result<axum::Json<Value>, AppError> {
    let visits = session.remember("api_visits", || 0_i64)?;
    Ok(axum::Json(
        json!({ "visits": visits, "user": session.user_id() }),
    ))
}

async fn api_increment(session: Session) -> Result<axum::Json<Value>, AppError> {
    let visits: i64 = session.increment("api_visits", 1)?;
    Ok(axum::Json(
        json!({ "visits": visits, "user": session.user_id() }),
    ))
}

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("home.html", include_str!("templates/home.html")),
        ("login.html", include_str!("templates/login.html")),
        ("devices.html", include_str!("templates/devices.html")),
        ("expired.html", include_str!("templates/expired.html")),
    ] {
        if let Err(error) = env.add_template(name, source) {
            // The templates are part of the binary: a broken one is a bug
            // that every run would hit, so stop at once.
            panic!("template {name} does not parse: {error}");
        }
    }
    env
}

fn render(env: &Environment<'_>, name: &str, context: Value) -> Result<Html<String>, AppError> {
    let context = minijinja::value::Serde(context);
    Ok(Html(env.get_template(name)?.render(context)?))
}

/// Renders a page with what every page shows: the signed-in user, the flash
/// message, the CSRF token for its forms.
fn page(
    state: &AppState,
    session: &Session,
    name: &str,
    context: Value,
) -> Result<Response, AppError> {
    let mut base = Map::new();
    base.insert("user".into(), json!(session.user_id()));
    base.insert(
        "status".into(),
        session.get_value("status").unwrap_or(Value::Null),
    );
    base.insert("csrf_token".into(), json!(session.token()));
    if let Value::Object(extra) = context {
        base.extend(extra);
    }
    Ok(render(&state.templates, name, Value::Object(base))?.into_response())
}

async fn home(State(state): State<AppState>, session: Session) -> Result<Response, AppError> {
    let visits: i64 = session.increment("visits", 1)?;
    let old = json!({
        "title": session.old_input("title"),
        "body": session.old_input("body"),
    });
    let context = json!({
        "visits": visits,
        "notes": session.get_value("notes").unwrap_or(json!([])),
        "errors": session.get_value("errors").unwrap_or(json!({})),
        "old": old,
    });
    page(&state, &session, "home.html", context)
}

async fn login_page(State(state): State<AppState>, session: Session) -> Result<Response, AppError> {
    if session.user_id().is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    let context = json!({
        "error": session.get_value("error"),
        "old": { "username": session.old_input("username") },
    });
    page(&state, &session, "login.html", context)
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

async fn login(session: Session, Form(form): Form<Login>) -> Result<Redirect, AppError> {
    let username = form.username.trim();
    let known = USERS
        .iter()
        .any(|(name, password)| *name == username && *password == form.password);
    if !known {
        session.flash("error", "These credentials do not match our records.")?;
        // Never flash the password back.
        session.flash_input(json!({ "username": username }))?;
        return Ok(Redirect::to("/login"));
    }
    // A new id on login: an id planted before sign-in is worthless after it.
    session.regenerate();
    session.set_user_id(username);
    session.flash("status", format!("Signed in as {username}."))?;
    Ok(Redirect::to("/"))
}

async fn logout(session: Session) -> Result<Redirect, AppError> {
    // Drops the data, the token and the user, and destroys the stored record.
    session.invalidate();
    session.flash("status", "You have been signed out.")?;
    Ok(Redirect::to("/login"))
}

#[derive(Deserialize, serde::Serialize)]
struct Note {
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
}

async fn add_note(session: Session, Form(note): Form<Note>) -> Result<Redirect, AppError> {
    if session.user_id().is_none() {
        return Ok(Redirect::to("/login"));
    }
    let title = note.title.trim();
    let mut errors = Map::new();
    if title.is_empty() {
        errors.insert("title".into(), json!("Give the note a title."));
    } else if title.chars().count() > TITLE_MAX {
        errors.insert(
            "title".into(),
            json!(format!("Keep the title under {TITLE_MAX} characters.")),
        );
    }
    if note.body.chars().count() > BODY_MAX {
        errors.insert(
            "body".into(),
            json!(format!("Keep the text under {BODY_MAX} characters.")),
        );
    }
    if !errors.is_empty() {
        session.flash("errors", errors)?;
        session.flash_input(&note)?;
        return Ok(Redirect::to("/"));
    }
    session.push("notes", json!({ "title": title, "body": note.body.trim() }))?;
    session.flash("status", "Note saved.")?;
    Ok(Redirect::to("/"))
}

async fn devices(State(state): State<AppState>, session: Session) -> Result<Response, AppError> {
    let Some(user) = session.user_id() else {
        return Ok(Redirect::to("/login").into_response());
    };
    let current = session.storage_key();
    let now = keepsake::now();
    let context = match state.store.list_for_user(&user).await {
        Ok(list) => {
            let devices: Vec<Value> = list
                .iter()
                .map(|info| {
                    json!({
                        "current": info.key == current,
                        "user_agent": info.user_agent,
                        "ip_address": info.ip_address,
                        "last_active": ago(now - info.last_activity),
                    })
                })
                .collect();
            json!({ "devices": devices })
        }
        Err(keepsake::Error::Unsupported { .. }) => json!({ "unsupported": true }),
        Err(error) => return Err(error.into()),
    };
    page(&state, &session, "devices.html", context)
}

async fn sign_out_others(
    State(state): State<AppState>,
    session: Session,
) -> Result<Redirect, AppError> {
    let Some(user) = session.user_id() else {
        return Ok(Redirect::to("/login"));
    };
    let removed = state
        .store
        .destroy_for_user(&user, Some(&session.storage_key()))
        .await?;
    let noun = if removed == 1 { "device" } else { "devices" };
    session.flash("status", format!("Signed out {removed} other {noun}."))?;
    Ok(Redirect::to("/devices"))
}

fn ago(seconds: i64) -> String {
    match seconds {
        ..=9 => "just now".to_owned(),
        10..=59 => format!("{seconds} seconds ago"),
        60..=119 => "a minute ago".to_owned(),
        120..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=7199 => "an hour ago".to_owned(),
        _ => format!("{} hours ago", seconds / 3600),
    }
}

/// Any failure of a page: logged, answered with a plain 500.
struct AppError(Box<dyn std::error::Error + Send + Sync>);

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for AppError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.").into_response()
    }
}
