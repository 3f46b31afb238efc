//! A small web application on keepsake: sign in and out, flash messages,
//! form validation that keeps the input, CSRF-protected forms, a visit
//! counter, and a "your devices" page that signs out other browsers.
//!
//! ```text
//! cargo run --example demo --features sqlite
//! ```
//!
//! Then open the printed URL. `HOST` and `PORT` choose where it listens
//! (default `127.0.0.1:3000`). Sessions go to SQLite in `keepsake-demo.db`
//! unless `SESSION_DRIVER` (and what that driver needs, e.g.
//! `SESSION_CONNECTION`) says otherwise: `SESSION_DRIVER=memory`,
//! `SESSION_DRIVER=redis`, `SESSION_DRIVER=postgres
//! SESSION_CONNECTION=postgres://…` (with the matching cargo feature).

mod app;

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use keepsake::config::{Driver, SessionConfig};
use keepsake::{SessionLayer, SessionStore};

/// Where the demo keeps sessions when `SESSION_DRIVER` is not set: SQLite in
/// a file in the current directory, created and migrated on first run.
const DEFAULT_DATABASE: &str = "sqlite://keepsake-demo.db?mode=rwc";

/// The session store and a layer over it, configured from the environment
/// (`SESSION_DRIVER`, `SESSION_CONNECTION`, `SESSION_LIFETIME` … and a `.env`
/// file, as Laravel reads them).
async fn store_and_layer() -> Result<(Arc<dyn SessionStore>, SessionLayer), Box<dyn Error>> {
    let mut config = SessionConfig::from_env()?;
    if std::env::var_os("SESSION_DRIVER").is_none() {
        config.driver = Driver::Sqlite;
        // Not `DATABASE_URL`: that may well be the application's own database.
        config.connection = Some(
            std::env::var("SESSION_CONNECTION").unwrap_or_else(|_| DEFAULT_DATABASE.to_owned()),
        );
    }
    let layer = config.build().await?;
    println!("sessions: {} driver", config.driver.name());
    Ok((Arc::clone(layer.store()), layer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keepsake=debug".into()),
        )
        .init();

    let (store, layer) = store_and_layer().await?;
    let layer = layer
        // The demo serves plain HTTP on loopback, and a `Secure` cookie is
        // only ever sent over HTTPS: without this the browser would drop the
        // session cookie. Keep the default (`true`) in production.
        .with_secure(false)
        // Record the address and browser of each session for the devices page.
        .with_client_info(true)
        // The JSON API's clients carry the session id in this header.
        .with_id_header(axum::http::HeaderName::from_static("x-session-token"));
    let app = app::app(store, layer);

    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().map_err(|e| format!("PORT={port}: {e}"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!("keepsake demo on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
