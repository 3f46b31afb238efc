//! No server-side state at all: the whole session, encrypted and
//! authenticated, travels in the cookie (`CookieStore`). Any number of app
//! servers can answer, with nothing shared but the key.
//!
//! ```text
//! SESSION_KEY=base64:$(openssl rand -base64 32) cargo run --example cookie_only
//! ```
//!
//! The key comes from `SESSION_KEY` (else `APP_KEY`), read as
//! `keepsake::from_env` reads it: base64 of at least 32 bytes, a `base64:`
//! prefix allowed. `PORT` chooses the port (default 3000).
//!
//! # Rotating the key
//!
//! `SESSION_KEY` takes a comma-separated list (and `APP_PREVIOUS_KEYS` adds
//! more): the first key seals every cookie written from now on, and every
//! listed key opens cookies. To rotate without signing anyone out, put the
//! new key first and keep the old one second; once every cookie sealed by the
//! old key has expired (the session lifetime, `SESSION_LIFETIME`), drop it.
//!
//! ```text
//! $ OLD=$(openssl rand -base64 32) NEW=$(openssl rand -base64 32)
//! $ SESSION_KEY=$OLD cargo run --example cookie_only &
//! $ curl -s -b jar.txt -c jar.txt -d item=apple http://127.0.0.1:3000/cart
//! cart: apple
//! # restart with SESSION_KEY=$NEW,$OLD: the cookie sealed by OLD still opens
//! $ curl -s -b jar.txt -c jar.txt http://127.0.0.1:3000/
//! cart: apple
//! $ curl -s -b jar.txt -c jar.txt -d item=pear http://127.0.0.1:3000/cart
//! cart: apple, pear
//! # that write sealed the cookie with NEW; restart with SESSION_KEY=$NEW only
//! $ curl -s -b jar.txt -c jar.txt http://127.0.0.1:3000/
//! cart: apple, pear
//! ```
//!
//! A cookie sealed by a key that is no longer listed does not open: that
//! visitor starts a new, empty session (`cart: empty`).
//!
//! The trade-offs of keeping nothing on the server: a session must fit in a
//! 4 KiB cookie (a bigger one is refused when saved, never truncated); two
//! tabs saving at once end with the later response's cookie; and a session
//! cannot be revoked before it expires, since there is no record to delete.

use std::process::ExitCode;

use axum::Router;
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keepsake::config::{Driver, SessionConfig};
use keepsake::{Key, Session, SessionLayer};
use serde::Deserialize;

/// The most items a cart holds: the session must fit in the cookie.
const MAX_ITEMS: usize = 20;

#[derive(Deserialize)]
struct Item {
    item: String,
}

/// The cart, as text.
fn show(session: &Session) -> Response {
    match session.get::<Vec<String>>("cart") {
        Ok(Some(items)) if !items.is_empty() => {
            format!("cart: {}\n", items.join(", ")).into_response()
        }
        Ok(_) => "cart: empty\n".into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /`: the cart.
async fn cart(session: Session) -> Response {
    show(&session)
}

/// `POST /cart item=…`: adds an item.
async fn add(session: Session, Form(form): Form<Item>) -> Response {
    let item = form.item.trim();
    let valid = !item.is_empty()
        && item.len() <= 40
        && item
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '-');
    if !valid {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "item must be 1 to 40 bytes of letters, digits, spaces and '-'\n",
        )
            .into_response();
    }
    let count = session
        .get_value("cart")
        .and_then(|cart| cart.as_array().map(Vec::len))
        .unwrap_or(0);
    if count >= MAX_ITEMS {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the cart holds at most {MAX_ITEMS} items\n"),
        )
            .into_response();
    }
    if let Err(e) = session.push("cart", item) {
        return e.into_response();
    }
    show(&session)
}

/// `POST /cart/clear`: empties the session; the cookie is removed.
async fn clear(session: Session) -> &'static str {
    session.invalidate();
    "cart: empty\n"
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

    let mut config = match SessionConfig::from_env() {
        Ok(config) => config,
        Err(e) => return fail(&e, 2),
    };
    config.driver = Driver::Cookie;
    if config.keys.is_empty() {
        eprintln!("error: SESSION_KEY is not set: it holds the key that seals the session cookie.");
        eprintln!("Set it to base64 of 32 random bytes, for example this freshly generated one:\n");
        eprintln!(
            "  SESSION_KEY=base64:{} cargo run --example cookie_only\n",
            Key::generate().to_base64()
        );
        eprintln!("(a .env file in the current directory works too)");
        return ExitCode::from(2);
    }
    // Plain HTTP on loopback: a `Secure` cookie would never come back. Keep
    // it on in production (`SESSION_SECURE_COOKIE` decides when set).
    if std::env::var_os("SESSION_SECURE_COOKIE").is_none() {
        config.secure = false;
    }
    let layer: SessionLayer = match config.build().await {
        Ok(layer) => layer,
        Err(e) => return fail(&e, 2),
    };
    // Never print a key; its fingerprint is safe to show.
    let fingerprints: Vec<String> = config
        .keys
        .iter()
        .filter_map(|text| Key::from_base64(text).ok())
        .map(|key| key.fingerprint())
        .collect();
    if let Some((sealing, opening)) = fingerprints.split_first() {
        println!("sealing cookies with key {sealing}");
        if !opening.is_empty() {
            println!("also opening cookies sealed by {}", opening.join(", "));
        }
    }

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
    println!("cookie-only sessions on {base}; nothing is stored on the server. Try:");
    println!("  curl -s -b jar.txt -c jar.txt -d item=apple {base}/cart");
    println!("  curl -s -b jar.txt -c jar.txt {base}/");
    let app = Router::new()
        .route("/", get(cart))
        .route("/cart", post(add))
        .route("/cart/clear", post(clear))
        .layer(layer);
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
