//! The session layer in process, no network: one request through an axum
//! router with `tower::ServiceExt::oneshot`, for a bare handler, the same
//! behind a layer that does nothing (what axum charges for any layer),
//! keepsake on `MemoryStore`, and tower-sessions on its `MemoryStore`.
//!
//! Routes: `none` (the handler never takes the session, the request carries a
//! session cookie), `read` (one key), `write` (increments a counter). Each
//! request uses the next of 1,000 sessions created beforehand.
//!
//! ```text
//! cargo bench --bench layer
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request};
use tower::ServiceExt as _;

const SESSIONS: usize = 1_000;

async fn none() -> &'static str {
    "ok"
}

fn bare() -> Router {
    Router::new()
        .route("/none", get(none))
        .route("/read", get(none))
        .route("/write", get(none))
}

/// The bare routes behind a layer that does nothing: what axum charges for
/// any layer (`Router::layer` boxes every route), before the layer's own work.
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

fn tower_sessions() -> Router {
    use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer};

    async fn read(session: Session) -> String {
        session
            .get::<i64>("counter")
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
            .to_string()
    }
    async fn write(session: Session) -> String {
        let n = session
            .get::<i64>("counter")
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
            + 1;
        session.insert("counter", n).await.unwrap();
        n.to_string()
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

/// Creates `SESSIONS` sessions through `/write` and returns their cookies.
async fn sessions(router: &Router) -> Vec<HeaderValue> {
    let mut cookies = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let response = router
            .clone()
            .oneshot(Request::get("/write").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(response.status().is_success());
        if let Some(set) = response.headers().get(SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            cookies.push(HeaderValue::from_str(&pair).unwrap());
        }
    }
    cookies
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("layer");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for (name, router) in [
        ("bare", bare()),
        ("noop-layer", noop_layer()),
        ("keepsake", keepsake()),
        ("tower-sessions", tower_sessions()),
    ] {
        let cookies = runtime.block_on(sessions(&router));
        assert!(
            matches!(name, "bare" | "noop-layer") || cookies.len() == SESSIONS,
            "{name}"
        );
        for route in ["none", "read", "write"] {
            let uri = format!("/{route}");
            let mut next = 0usize;
            group.bench_function(format!("{name}/{route}"), |b| {
                b.to_async(&runtime).iter(|| {
                    let mut request = Request::get(uri.as_str()).body(Body::empty()).unwrap();
                    if !cookies.is_empty() {
                        next = (next + 1) % cookies.len();
                        request.headers_mut().insert(COOKIE, cookies[next].clone());
                    }
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(request).await.unwrap();
                        debug_assert!(response.status().is_success());
                        response
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
