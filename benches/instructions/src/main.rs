//! One variant's requests through an axum router, in process, for callgrind:
//!
//! ```text
//! instructions VARIANT [REQUESTS]
//! ```
//!
//! VARIANT is `bare/none`, `noop-layer/none`, `keepsake/{none,read,write}`
//! or, with the `tower-sessions` feature, `tower-sessions/{none,read,write}`.
//! The binary creates 1,000 sessions, serves 2,000 warm-up requests, then
//! serves REQUESTS (default 20,000) more inside `measured_requests`, rotating
//! through the sessions. Run it under
//! `valgrind --tool=callgrind --toggle-collect='*measured_requests*'` and
//! divide the instructions collected by REQUESTS: set-up and warm-up are not
//! counted. Routes as in `benches/layer.rs`: `none` never takes the session
//! (the request carries a cookie), `read` reads one key, `write` increments
//! a counter.

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request};
use tokio::runtime::Runtime;
use tower::ServiceExt as _;

const SESSIONS: usize = 1_000;
const WARM_UP: usize = 2_000;

async fn none() -> &'static str {
    "ok"
}

fn bare() -> Router {
    Router::new()
        .route("/none", get(none))
        .route("/read", get(none))
        .route("/write", get(none))
}

/// What axum charges for any layer (`Router::layer` boxes every route).
fn noop_layer() -> Router {
    bare().layer(tower::layer::layer_fn(|service| service))
}

fn keepsake() -> Router {
    use keepsake::{MemoryStore, Session, SessionLayer};

    async fn read(session: Session) -> String {
        session
            .get::<i64>("counter")
            .ok()
            .flatten()
            .unwrap_or(0)
            .to_string()
    }
    async fn write(session: Session) -> Result<String, keepsake::Error> {
        Ok(session.increment("counter", 1i64)?.to_string())
    }
    Router::new()
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/write", get(write))
        .layer(SessionLayer::new(MemoryStore::new()).with_lifetime(Duration::from_secs(1800)))
}

#[cfg(feature = "tower-sessions")]
fn tower_sessions() -> Router {
    use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer};

    async fn counter(session: &Session) -> i64 {
        session
            .get::<i64>("counter")
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }
    async fn read(session: Session) -> String {
        counter(&session).await.to_string()
    }
    async fn write(session: Session) -> Result<String, http::StatusCode> {
        let n = counter(&session).await + 1;
        session
            .insert("counter", n)
            .await
            .map_err(|_| http::StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok(n.to_string())
    }
    Router::new()
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/write", get(write))
        .layer(
            SessionManagerLayer::new(MemoryStore::default())
                .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30))),
        )
}

fn router(library: &str) -> Option<Router> {
    match library {
        "bare" => Some(bare()),
        "noop-layer" => Some(noop_layer()),
        "keepsake" => Some(keepsake()),
        #[cfg(feature = "tower-sessions")]
        "tower-sessions" => Some(tower_sessions()),
        _ => None,
    }
}

/// One request; the next session's cookie when there are sessions.
async fn request(router: &Router, uri: &str, cookie: Option<&HeaderValue>) -> Result<(), String> {
    let mut request = Request::get(uri)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    if let Some(cookie) = cookie {
        request.headers_mut().insert(COOKIE, cookie.clone());
    }
    let response = router
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{uri}: {}", response.status()));
    }
    Ok(())
}

/// Creates the sessions through `/write`; none when the router keeps none.
async fn sessions(router: &Router) -> Result<Vec<HeaderValue>, String> {
    let mut cookies = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let response = router
            .clone()
            .oneshot(
                Request::get("/write")
                    .body(Body::empty())
                    .map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(set) = response.headers().get(SET_COOKIE) {
            let set = set.to_str().map_err(|e| e.to_string())?;
            let pair = set.split(';').next().unwrap_or(set);
            cookies.push(HeaderValue::from_str(pair).map_err(|e| e.to_string())?);
        }
    }
    Ok(cookies)
}

async fn serve(
    router: &Router,
    uri: &str,
    cookies: &[HeaderValue],
    n: usize,
    next: &mut usize,
) -> Result<(), String> {
    for _ in 0..n {
        let cookie = if cookies.is_empty() {
            None
        } else {
            *next = (*next + 1) % cookies.len();
            Some(&cookies[*next])
        };
        request(router, uri, cookie).await?;
    }
    Ok(())
}

/// The requests callgrind counts (`--toggle-collect`): keep the name.
#[inline(never)]
fn measured_requests(
    runtime: &Runtime,
    router: &Router,
    uri: &str,
    cookies: &[HeaderValue],
    n: usize,
    next: &mut usize,
) -> Result<(), String> {
    runtime.block_on(serve(router, uri, cookies, n, next))
}

fn run(variant: &str, requests: usize) -> Result<(), String> {
    let (library, route) = variant
        .split_once('/')
        .ok_or_else(|| format!("not LIBRARY/ROUTE: {variant}"))?;
    if !matches!(route, "none" | "read" | "write") {
        return Err(format!("unknown route: {route}"));
    }
    let router = router(library).ok_or_else(|| format!("unknown library: {library}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cookies = runtime.block_on(sessions(&router))?;
    if !matches!(library, "bare" | "noop-layer") && cookies.len() != SESSIONS {
        return Err(format!(
            "{library}: {} sessions created of {SESSIONS}",
            cookies.len()
        ));
    }
    let uri = format!("/{route}");
    let mut next = 0;
    runtime.block_on(serve(&router, &uri, &cookies, WARM_UP, &mut next))?;
    measured_requests(&runtime, &router, &uri, &cookies, requests, &mut next)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(variant), requests) = (args.next(), args.next()) else {
        eprintln!("usage: instructions LIBRARY/ROUTE [REQUESTS]");
        return ExitCode::from(2);
    };
    let requests = match requests.map(|n| n.parse::<usize>()) {
        None => 20_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("instructions: REQUESTS must be a positive number");
            return ExitCode::from(2);
        }
    };
    match run(&variant, requests) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("instructions: {variant}: {error}");
            ExitCode::FAILURE
        }
    }
}
