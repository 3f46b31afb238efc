//! The CPU work of one request, piece by piece: id generation and hashing,
//! the session cookie (reading the `Cookie` header, writing `Set-Cookie`),
//! payload (de)serialisation for sessions of 100 B, 1 KiB and 16 KiB, the
//! session's load and commit steps, and the cookie driver's seal/open.
//!
//! ```text
//! cargo bench --bench codec                       # without the cookie driver
//! cargo bench --bench codec --features cookie     # with it
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use http::header::COOKIE;
use keepsake::{Payload, Record, Session, SessionId};
use keepsake_core::CommitContext;
use keepsake_core::commit::plan;
use serde_json::Value;

const SIZES: [(&str, usize); 3] = [("100B", 100), ("1KiB", 1024), ("16KiB", 16 * 1024)];

/// A payload whose encoding is `size` bytes or a little more: a counter and
/// string values of 40 characters.
fn payload(size: usize) -> Payload {
    let mut payload = Payload {
        created_at: 1_700_000_000,
        ..Payload::default()
    };
    payload.data.insert("counter".into(), Value::from(7));
    let mut i = 0;
    while payload.encode().unwrap().len() < size {
        let len = (size - payload.encode().unwrap().len()).clamp(1, 40);
        payload
            .data
            .insert(format!("k{i}"), Value::from("x".repeat(len)));
        i += 1;
    }
    payload
}

fn record(id: &SessionId, payload: &Payload) -> Record {
    let now = keepsake::now();
    Record {
        key: id.storage_key(),
        payload: payload.encode().unwrap(),
        last_activity: now,
        expires_at: now + 1800,
        version: 3,
        user_id: None,
        ip_address: None,
        user_agent: None,
    }
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    group
}

fn ids(c: &mut Criterion) {
    let mut group = configure(c, "id");
    let id = SessionId::generate();
    group.bench_function("generate", |b| b.iter(SessionId::generate));
    group.bench_function("storage_key", |b| b.iter(|| black_box(&id).storage_key()));
    group.bench_function("parse", |b| {
        b.iter(|| SessionId::parse(black_box(id.as_str())));
    });
    group.finish();
}

/// What the layer does with cookies (the same steps as its private cookie
/// module): find the session cookie among the request's cookies and parse
/// the id; build the `Set-Cookie` value with its attributes.
fn cookies(c: &mut Criterion) {
    let mut group = configure(c, "cookie");
    let id = SessionId::generate();
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        format!(
            "theme=dark; keepsake_session={}; _ga=GA1.1.1234567890",
            id.as_str()
        )
        .parse()
        .unwrap(),
    );
    group.bench_function("decode", |b| {
        b.iter(|| {
            black_box(&headers)
                .get_all(COOKIE)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .flat_map(|h| h.split(';'))
                .filter_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k.trim() == "keepsake_session").then(|| v.trim().trim_matches('"'))
                })
                .find_map(SessionId::parse)
        });
    });
    group.bench_function("encode", |b| {
        b.iter(|| {
            let seconds = 1800;
            cookie::Cookie::build(("keepsake_session", black_box(id.as_str())))
                .path("/")
                .http_only(true)
                .secure(true)
                .same_site(cookie::SameSite::Lax)
                .max_age(time::Duration::seconds(seconds))
                .expires(time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
                .build()
                .to_string()
        });
    });
    group.finish();
}

fn payloads(c: &mut Criterion) {
    let mut group = configure(c, "payload");
    for (name, size) in SIZES {
        let payload = payload(size);
        let text = payload.encode().unwrap();
        group.bench_with_input(BenchmarkId::new("encode", name), &payload, |b, p| {
            b.iter(|| p.encode().unwrap());
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &text, |b, t| {
            b.iter(|| Payload::decode(t).unwrap());
        });
    }
    group.finish();
}

/// The session's own steps around the store: `load` turns the stored record
/// into a `Session` (decode + a copy kept as the base for the diff); `commit`
/// is the end of a request that incremented the counter (ageing, diff,
/// encode); `commit_unchanged` the end of a request that only read.
fn sessions(c: &mut Criterion) {
    let mut group = configure(c, "session");
    let ctx = CommitContext {
        idle_lifetime: 1800,
        ..CommitContext::new(keepsake::now())
    };
    for (name, size) in SIZES {
        let id = SessionId::generate();
        let record = record(&id, &payload(size));
        group.bench_with_input(BenchmarkId::new("load", name), &record, |b, r| {
            b.iter(|| Session::from_record(id.clone(), r));
        });
        group.bench_with_input(BenchmarkId::new("commit", name), &record, |b, r| {
            b.iter_batched(
                || Session::from_record(id.clone(), r),
                |session| {
                    session.increment("counter", 1i64).unwrap();
                    plan(&session, &ctx, false)
                },
                criterion::BatchSize::SmallInput,
            );
        });
        group.bench_with_input(
            BenchmarkId::new("commit_unchanged", name),
            &record,
            |b, r| {
                b.iter_batched(
                    || Session::from_record(id.clone(), r),
                    |session| {
                        let _ = session.get::<i64>("counter");
                        plan(&session, &ctx, false)
                    },
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

#[cfg(feature = "cookie")]
fn cookie_driver(c: &mut Criterion) {
    use keepsake::{CookieStore, Key, SessionStore as _};

    let mut group = configure(c, "cookie_driver");
    let store = CookieStore::new(Key::generate());
    let sealer = store.client_side().unwrap();
    // 16 KiB does not fit in a cookie: the driver refuses it.
    for (name, size) in [("100B", 100), ("1KiB", 1024), ("2KiB", 2 * 1024)] {
        let id = SessionId::generate();
        let record = record(&id, &payload(size));
        let sealed = sealer.seal(&id, &record).unwrap();
        group.bench_with_input(BenchmarkId::new("seal", name), &record, |b, r| {
            b.iter(|| sealer.seal(&id, r).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("open", name), &sealed, |b, s| {
            b.iter(|| sealer.open(s).unwrap());
        });
    }
    group.finish();
}

#[cfg(not(feature = "cookie"))]
fn cookie_driver(_: &mut Criterion) {
    eprintln!("cookie_driver: skipped (build with --features cookie)");
}

criterion_group!(benches, ids, cookies, payloads, sessions, cookie_driver);
criterion_main!(benches);
