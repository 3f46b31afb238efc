//! A closed-loop HTTP/1.1 load generator for loopback servers.
//!
//! ```text
//! load --addr 127.0.0.1:PORT --pid PID --variant NAME --rep N --routes none,read,write,login \
//!      [--connections 64] [--sessions 200] [--warmup 1] [--secs 3] [--out results.jsonl] \
//!      [--db-comm postgres]
//! ```
//!
//! Each connection first creates its own pool of `--sessions` sessions
//! (`GET /write` without a cookie, keeping whatever cookies come back), then,
//! route after route, sends one request at a time, rotating through its pool
//! and carrying each session's cookies back like a browser (a new id after
//! `/login` replaces the old one). Each route gets `--warmup` seconds
//! unmeasured, then `--secs` measured: requests completed, latency
//! percentiles, and the server's CPU time (user + system, from
//! `/proc/PID/stat`) over exactly that window, and with `--db-comm NAME` the
//! CPU time of the database server's processes (command name `NAME`) over
//! the same window. One JSON line per route goes to
//! `--out` (and a summary to stderr).

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{COOKIE, HOST, HeaderValue, SET_COOKIE};
use hyper_util::rt::TokioIo;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
/// Linux reports process times in USER_HZ, 100 per second on every architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// One session's cookies, as a browser would keep them.
#[derive(Default, Clone)]
struct Jar {
    cookies: Vec<(String, String)>,
    header: Option<HeaderValue>,
}

impl Jar {
    fn update(&mut self, headers: &hyper::HeaderMap) {
        let mut changed = false;
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
            changed = true;
        }
        if changed {
            let joined: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            self.header = (!joined.is_empty())
                .then(|| HeaderValue::from_str(&joined.join("; ")).ok())
                .flatten();
        }
    }
}

struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    jars: Vec<Jar>,
    next: usize,
}

struct Outcome {
    latencies: hdrhistogram::Histogram<u64>,
    completed: u64,
    errors: u64,
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

/// Sends one request and updates the jar; returns whether it succeeded.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    jar: &mut Jar,
) -> Result<bool> {
    sender.ready().await?;
    let mut builder = hyper::Request::get(path).header(HOST, "127.0.0.1");
    if let Some(cookie) = &jar.header {
        builder = builder.header(COOKIE, cookie.clone());
    }
    let response = sender.send_request(builder.body(Empty::new())?).await?;
    jar.update(response.headers());
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    Ok(ok)
}

async fn setup(addr: String, sessions: usize) -> Result<Connection> {
    let mut sender = connect(&addr).await?;
    let mut jars = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut jar = Jar::default();
        if !request(&mut sender, "/write", &mut jar).await? {
            return Err("setup request failed".into());
        }
        jars.push(jar);
    }
    Ok(Connection {
        sender,
        jars,
        next: 0,
    })
}

async fn run(mut conn: Connection, path: String, phase: Arc<AtomicU8>) -> (Connection, Outcome) {
    let mut outcome = Outcome {
        latencies: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
            .expect("valid histogram bounds"),
        completed: 0,
        errors: 0,
    };
    let mut empty = Jar::default();
    loop {
        if phase.load(Ordering::Relaxed) == STOP {
            break;
        }
        let started = Instant::now();
        let jar = if conn.jars.is_empty() {
            &mut empty
        } else {
            conn.next = (conn.next + 1) % conn.jars.len();
            &mut conn.jars[conn.next]
        };
        let ok = matches!(request(&mut conn.sender, &path, jar).await, Ok(true));
        // Counted when completed inside the measured window, like the CPU time.
        if phase.load(Ordering::Relaxed) == MEASURE {
            outcome.completed += 1;
            if !ok {
                outcome.errors += 1;
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = outcome.latencies.record(micros.max(1));
        }
        if !ok && conn.sender.is_closed() {
            break;
        }
    }
    (conn, outcome)
}

/// User + system CPU seconds of process `pid` (all its threads, dead ones too).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) / TICKS_PER_SEC)
}

/// User + system CPU seconds of every process whose command name is `comm`
/// (a database server's processes), by pid.
fn cpu_by_comm(comm: &str) -> HashMap<u32, f64> {
    let mut found = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm
            && let Ok(cpu) = cpu_seconds(pid)
        {
            found.insert(pid, cpu);
        }
    }
    found
}

/// CPU seconds spent between two snapshots by the processes in both.
fn cpu_delta(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .filter_map(|(pid, cpu)| before.get(pid).map(|b| cpu - b))
        .sum()
}

fn args() -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async_main())
}

async fn async_main() -> Result<()> {
    let args = args()?;
    let get = |name: &str, default: &str| {
        args.get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let addr = args.get("addr").ok_or("--addr is required")?.clone();
    let pid: u32 = args.get("pid").ok_or("--pid is required")?.parse()?;
    let variant = get("variant", "?");
    let rep = get("rep", "1");
    let routes = get("routes", "none,read,write,login");
    let connections: usize = get("connections", "64").parse()?;
    let sessions: usize = get("sessions", "200").parse()?;
    let warmup = Duration::from_secs_f64(get("warmup", "1").parse()?);
    let secs = Duration::from_secs_f64(get("secs", "3").parse()?);
    let out = args.get("out").cloned();
    let db_comm = args.get("db-comm").cloned().filter(|c| !c.is_empty());

    // Wait for the server (a database migration can take a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("{addr} did not come up").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        tasks.push(tokio::spawn(setup(addr.clone(), sessions)));
    }
    let mut conns = Vec::with_capacity(connections);
    for task in tasks {
        conns.push(task.await??);
    }
    eprintln!(
        "{variant}: {} sessions created in {:.1} s",
        connections * sessions,
        started.elapsed().as_secs_f64()
    );

    for route in routes.split(',') {
        let path = format!("/{route}");
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let handles: Vec<_> = conns
            .drain(..)
            .map(|c| tokio::spawn(run(c, path.clone(), Arc::clone(&phase))))
            .collect();
        tokio::time::sleep(warmup).await;
        let db0 = db_comm.as_deref().map(cpu_by_comm);
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        phase.store(MEASURE, Ordering::Relaxed);
        tokio::time::sleep(secs).await;
        let cpu1 = cpu_seconds(pid)?;
        phase.store(STOP, Ordering::Relaxed);
        let db_cpu = db0
            .zip(db_comm.as_deref().map(cpu_by_comm))
            .map(|(before, after)| cpu_delta(&before, &after));
        let elapsed = t0.elapsed().as_secs_f64();

        let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
        let (mut completed, mut errors) = (0u64, 0u64);
        for handle in handles {
            let (conn, outcome) = handle.await?;
            latencies.add(&outcome.latencies)?;
            completed += outcome.completed;
            errors += outcome.errors;
            conns.push(conn);
        }
        let cpu_us = if completed == 0 {
            f64::NAN
        } else {
            (cpu1 - cpu0) * 1e6 / completed as f64
        };
        let line = serde_json::json!({
            "variant": variant,
            "route": route,
            "rep": rep,
            "connections": connections,
            "sessions": connections * sessions,
            "secs": elapsed,
            "requests": completed,
            "errors": errors,
            "rps": completed as f64 / elapsed,
            "p50_us": latencies.value_at_quantile(0.5),
            "p99_us": latencies.value_at_quantile(0.99),
            "server_cpu_s": cpu1 - cpu0,
            "cpu_us_per_req": cpu_us,
            "db_cpu_us_per_req": db_cpu.map(|cpu| cpu * 1e6 / completed.max(1) as f64),
        });
        eprintln!(
            "{variant:>24} /{route:<6} {:>9.0} req/s  p99 {:>7} µs  cpu {:>6.1} µs/req  errors {errors}",
            completed as f64 / elapsed,
            latencies.value_at_quantile(0.99),
            cpu_us
        );
        if let Some(out) = &out {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)?;
            writeln!(file, "{line}")?;
        } else {
            println!("{line}");
        }
    }
    Ok(())
}
