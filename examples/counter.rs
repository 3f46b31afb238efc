//! A page whose visit counter survives reloads.
//!
//! ```text
//! cargo run --example counter
//! ```

use axum::{Router, response::Html, routing::get};
use keepsake::{MemoryStore, Session, SessionLayer};

async fn counter(session: Session) -> Result<Html<String>, keepsake::Error> {
    let visits: i64 = session.increment("visits", 1)?;
    Ok(Html(format!(
        "<!doctype html><title>keepsake counter</title>\
         <p>You have been here {visits} time{}.</p><p><a href=\"/\">Reload</a></p>",
        if visits == 1 { "" } else { "s" }
    )))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keepsake=debug".into()),
        )
        .init();

    let app = Router::new().route("/", get(counter)).layer(
        // Plain HTTP on localhost: the cookie must not require HTTPS here.
        SessionLayer::new(MemoryStore::new()).with_secure(false),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("counter listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
