//! The lost-update workload: concurrent increments of one counter in one
//! session, then the stored counter read back through the server.
//!
//! ```text
//! lost --addr 127.0.0.1:PORT --variant NAME [--out results.jsonl] [--clients 32] [--shared 400]
//!      [--tabs 2] [--per-tab 100] [--control 100] [--timeout 10]
//! lost table results.jsonl        # the Markdown table of BENCHMARKS.md
//! lost check results.jsonl        # exit 1 unless keepsake lost, refused and failed nothing
//! ```
//!
//! Against a `server VARIANT PORT`: one `GET /write` without a cookie
//! creates the session (its counter is then 1); every later request carries
//! that session's cookies, kept in one jar that every client shares, as the
//! tabs of one browser share theirs. Three phases, one after the other:
//!
//! 1. `--clients` connections at once share `--shared` increments (each takes
//!    the next one until none is left);
//! 2. `--tabs` connections at once, `--per-tab` increments each;
//! 3. a control: one connection, `--control` increments.
//!
//! Each increment is `GET /write`; a 2xx answer is an acknowledged increment.
//! Before and after each phase `GET /read` returns the stored counter, so a
//! phase's lost updates are its acknowledged increments minus what the
//! counter gained. A refused request (any other status) is not an
//! acknowledged increment and is counted apart; a request that gets no
//! answer within `--timeout` seconds (or whose connection fails) is counted
//! as an error, since it may or may not have been stored. Every request is
//! bounded, and so is their number: the phases above plus one read each.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{COOKIE, HOST, HeaderValue, SET_COOKIE};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const STORES: [&str; 5] = ["memory", "sqlite", "postgres", "mysql", "redis"];

/// One browser's cookies, shared by its tabs.
#[derive(Default)]
struct Jar {
    cookies: Vec<(String, String)>,
}

impl Jar {
    fn header(&self) -> Option<HeaderValue> {
        let joined: Vec<String> = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        (!joined.is_empty())
            .then(|| HeaderValue::from_str(&joined.join("; ")).ok())
            .flatten()
    }

    fn update(&mut self, headers: &hyper::HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';');
            let Some((name, val)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let removed =
                val.is_empty() || parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.cookies.retain(|(n, _)| n != name);
            if !removed {
                self.cookies.push((name.to_owned(), val.to_owned()));
            }
        }
    }
}

type SharedJar = Arc<Mutex<Jar>>;

fn lock(jar: &SharedJar) -> std::sync::MutexGuard<'_, Jar> {
    jar.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn connect(addr: &str) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request with the jar's cookies, keeps the cookies it sets;
/// returns the status and the body.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    jar: &SharedJar,
    timeout: Duration,
) -> Result<(u16, String)> {
    let exchange = async {
        sender.ready().await?;
        let mut builder = hyper::Request::get(path).header(HOST, "127.0.0.1");
        if let Some(cookie) = lock(jar).header() {
            builder = builder.header(COOKIE, cookie);
        }
        let response = sender.send_request(builder.body(Empty::new())?).await?;
        lock(jar).update(response.headers());
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn Error + Send + Sync>>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{path}: no answer within {timeout:?}"))?
}

/// The stored counter, read through the server on a connection of its own.
async fn stored(addr: &str, jar: &SharedJar, timeout: Duration) -> Result<i64> {
    let mut sender = connect(addr).await?;
    let (status, body) = request(&mut sender, "/read", jar, timeout).await?;
    if !(200..300).contains(&status) {
        return Err(format!("GET /read answered {status}: {body}").into());
    }
    Ok(body.trim().parse()?)
}

/// How a phase's increments are shared among its clients.
#[derive(Clone, Copy)]
enum Work {
    /// Each client takes the next increment until `total` were taken.
    Shared { total: usize },
    /// Each client makes this many.
    Each(usize),
}

#[derive(Default)]
struct Tally {
    acknowledged: u64,
    /// Refused requests by status.
    refused: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.acknowledged += other.acknowledged;
        for (status, n) in other.refused {
            *self.refused.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

async fn client(
    addr: String,
    jar: SharedJar,
    work: Work,
    taken: Arc<AtomicUsize>,
    start: Arc<tokio::sync::Barrier>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = connect(&addr).await;
    start.wait().await;
    let mut done = 0;
    loop {
        match work {
            Work::Shared { total } if taken.fetch_add(1, Ordering::Relaxed) >= total => break,
            Work::Each(n) if done >= n => break,
            _ => done += 1,
        }
        let answer = match &mut sender {
            Ok(sender) => request(sender, "/write", &jar, timeout).await,
            Err(e) => Err(e.to_string().into()),
        };
        match answer {
            Ok((status, _)) if (200..300).contains(&status) => tally.acknowledged += 1,
            Ok((status, _)) => *tally.refused.entry(status).or_default() += 1,
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
                // A failed exchange leaves an HTTP/1.1 connection unusable.
                sender = connect(&addr).await;
            }
        }
    }
    tally
}

struct Phase {
    name: &'static str,
    clients: usize,
    work: Work,
}

async fn phase(addr: &str, jar: &SharedJar, phase: &Phase, timeout: Duration) -> Result<Value> {
    let before = stored(addr, jar, timeout).await?;
    let taken = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(phase.clients));
    let started = Instant::now();
    let handles: Vec<_> = (0..phase.clients)
        .map(|_| {
            tokio::spawn(client(
                addr.to_owned(),
                Arc::clone(jar),
                phase.work,
                Arc::clone(&taken),
                Arc::clone(&start),
                timeout,
            ))
        })
        .collect();
    let mut tally = Tally::default();
    for handle in handles {
        tally.add(handle.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    let after = stored(addr, jar, timeout).await?;
    let gained = after - before;
    let requests = match phase.work {
        Work::Shared { total } => total,
        Work::Each(n) => n * phase.clients,
    };
    Ok(json!({
        "phase": phase.name,
        "clients": phase.clients,
        "requests": requests,
        "acknowledged": tally.acknowledged,
        "refused": tally.refused.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "before": before,
        "after": after,
        "lost": tally.acknowledged as i64 - gained,
        "secs": secs,
    }))
}

fn args() -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected {flag}"))?;
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        map.insert(name.to_owned(), value);
    }
    Ok(map)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.as_slice() {
        [cmd, file] if cmd == "table" => {
            print!("{}", table(&std::fs::read_to_string(file)?)?);
            return Ok(());
        }
        [cmd, file] if cmd == "check" => return check(&std::fs::read_to_string(file)?),
        _ => {}
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let args = args()?;
    let number = |name: &str, default: usize| -> Result<usize> {
        match args.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v}: not a number").into()),
            None => Ok(default),
        }
    };
    let addr = args.get("addr").ok_or("--addr is required")?.clone();
    let variant = args.get("variant").cloned().unwrap_or_else(|| "?".into());
    let timeout = Duration::from_secs(number("timeout", 10)? as u64);
    let phases = [
        Phase {
            name: "shared",
            clients: number("clients", 32)?,
            work: Work::Shared {
                total: number("shared", 400)?,
            },
        },
        Phase {
            name: "tabs",
            clients: number("tabs", 2)?,
            work: Work::Each(number("per-tab", 100)?),
        },
        Phase {
            name: "control",
            clients: 1,
            work: Work::Each(number("control", 100)?),
        },
    ];
    if phases.iter().any(|p| p.clients == 0) {
        return Err("--clients and --tabs must be at least 1".into());
    }

    // Wait for the server (a database migration can take a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("{addr} did not come up").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let jar = SharedJar::default();
    let (status, body) = request(&mut connect(&addr).await?, "/write", &jar, timeout).await?;
    if !(200..300).contains(&status) || lock(&jar).cookies.is_empty() {
        return Err(format!("creating the session: {status} {body}, no cookie").into());
    }
    let created = stored(&addr, &jar, timeout).await?;

    let mut results = Vec::new();
    for p in &phases {
        results.push(phase(&addr, &jar, p, timeout).await?);
    }
    let acknowledged: i64 = results
        .iter()
        .map(|r| r["acknowledged"].as_i64().unwrap_or(0))
        .sum();
    let expected = created + acknowledged;
    let stored = stored(&addr, &jar, timeout).await?;
    let (library, store) = variant.split_once('-').unwrap_or((&variant, ""));
    let line = json!({
        "variant": variant,
        "library": library,
        "store": store,
        "created": created,
        "phases": results,
        "expected": expected,
        "stored": stored,
        "lost": expected - stored,
    });
    for r in &results {
        eprintln!(
            "{variant:>18} {:<8} {:>3} clients: {:>4} acknowledged, {:>4} lost, refused {}, errors {}",
            r["phase"].as_str().unwrap_or("?"),
            r["clients"],
            r["acknowledged"],
            r["lost"],
            r["refused"],
            r["errors"],
        );
    }
    eprintln!(
        "{variant:>18} expected {expected}, stored {stored}, lost {}",
        expected - stored
    );
    match args.get("out") {
        Some(out) => {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)?;
            writeln!(file, "{line}")?;
        }
        None => println!("{line}"),
    }
    Ok(())
}

fn library_name(library: &str) -> &str {
    match library {
        "tower" => "tower-sessions",
        "axum" => "axum_session",
        other => other,
    }
}

fn store_name(store: &str) -> &str {
    match store {
        "memory" => "memory",
        "sqlite" => "SQLite",
        "postgres" => "PostgreSQL",
        "mysql" => "MariaDB",
        "redis" => "Redis",
        other => other,
    }
}

/// `lost of acknowledged`, with refusals and errors when there were any.
fn cell(phase: &Value) -> String {
    let mut text = format!("{} of {}", phase["lost"], phase["acknowledged"]);
    let refused: u64 = phase["refused"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if refused > 0 {
        text += &format!(" ({refused} refused)");
    }
    let errors = phase["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        text += &format!(" ({errors} errors)");
    }
    text
}

fn table(text: &str) -> Result<String> {
    let mut lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let rank = |line: &Value| {
        let store = line["store"].as_str().unwrap_or("");
        let library = line["library"].as_str().unwrap_or("");
        (
            STORES
                .iter()
                .position(|s| *s == store)
                .unwrap_or(STORES.len()),
            store.to_owned(),
            library != "keepsake",
            library.to_owned(),
        )
    };
    lines.sort_by_key(rank);
    let phase = |line: &Value, name: &str| {
        line["phases"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["phase"] == name))
            .map(cell)
            .unwrap_or_else(|| "—".into())
    };
    // The phases' sizes, from the first line (every run of one table uses the same).
    let size = |name: &str| {
        let p = lines.first().and_then(|l| {
            l["phases"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["phase"] == name))
        });
        let clients = p.and_then(|p| p["clients"].as_u64()).unwrap_or(0);
        let requests = p.and_then(|p| p["requests"].as_u64()).unwrap_or(0);
        (clients, requests)
    };
    let (shared_clients, shared) = size("shared");
    let (tabs, tab_total) = size("tabs");
    let (_, control) = size("control");
    let mut md = format!(
        "| store | library | {shared_clients} clients share {shared} increments: lost of acknowledged | {tabs} tabs × {} | 1 client × {control} (control) | expected | stored | lost |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        tab_total / tabs.max(1),
    );
    for line in &lines {
        let lost = line["lost"].as_i64().unwrap_or(0);
        let lost = if lost == 0 {
            "0".to_owned()
        } else {
            format!("**{lost}**")
        };
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            store_name(line["store"].as_str().unwrap_or("?")),
            library_name(line["library"].as_str().unwrap_or("?")),
            phase(line, "shared"),
            phase(line, "tabs"),
            phase(line, "control"),
            line["expected"],
            line["stored"],
            lost,
        );
    }
    Ok(md)
}

/// Fails unless every keepsake run lost nothing, was refused nothing and got
/// an answer to every request, in every phase.
fn check(text: &str) -> Result<()> {
    let mut failures = Vec::new();
    let mut runs = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let line: Value = serde_json::from_str(line)?;
        if line["library"] != "keepsake" {
            continue;
        }
        runs += 1;
        let variant = line["variant"].as_str().unwrap_or("?");
        if line["lost"] != 0 {
            failures.push(format!(
                "{variant}: expected {}, stored {}",
                line["expected"], line["stored"]
            ));
        }
        for p in line["phases"].as_array().into_iter().flatten() {
            let refused = p["refused"].as_object().is_some_and(|m| !m.is_empty());
            if p["lost"] != 0 || p["errors"] != 0 || refused {
                failures.push(format!("{variant}: {p}"));
            }
        }
    }
    if runs == 0 {
        return Err("no keepsake run in the results".into());
    }
    for failure in &failures {
        eprintln!("keepsake failed: {failure}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} keepsake failure(s)", failures.len()).into())
    }
}
