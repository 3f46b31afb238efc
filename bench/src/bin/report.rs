//! Turns measurements into the Markdown tables of BENCHMARKS.md.
//!
//! ```text
//! report e2e results.jsonl        # the load runs of bench/run.sh
//! report criterion DIR            # criterion's output (TARGET_DIR/criterion)
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const STORES: [&str; 5] = ["memory", "sqlite", "postgres", "mysql", "redis"];
const ROUTES: [&str; 4] = ["none", "read", "write", "login"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = match args.as_slice() {
        [cmd, file] if cmd == "e2e" => e2e(&std::fs::read_to_string(file)?)?,
        [cmd, dir] if cmd == "criterion" => criterion(Path::new(dir))?,
        _ => return Err("usage: report e2e results.jsonl | report criterion DIR".into()),
    };
    print!("{text}");
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// (max − min) / median, in percent.
fn spread(values: &mut [f64]) -> f64 {
    let m = median(values);
    match (values.first(), values.last()) {
        (Some(lo), Some(hi)) if m > 0.0 => (hi - lo) / m * 100.0,
        _ => f64::NAN,
    }
}

#[derive(Default, Clone)]
struct Cell {
    rps: f64,
    p99_ms: f64,
    cpu: f64,
    db_cpu: Option<f64>,
    rps_spread: f64,
    cpu_spread: f64,
    reps: usize,
    errors: u64,
}

fn cells(text: &str) -> Result<BTreeMap<(String, String), Cell>> {
    let mut raw: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        let key = (
            v["variant"].as_str().unwrap_or("?").to_owned(),
            v["route"].as_str().unwrap_or("?").to_owned(),
        );
        raw.entry(key).or_default().push(v);
    }
    let mut out = BTreeMap::new();
    for (key, runs) in raw {
        let field =
            |name: &str| -> Vec<f64> { runs.iter().filter_map(|r| r[name].as_f64()).collect() };
        let mut rps = field("rps");
        let mut p99 = field("p99_us");
        let mut cpu = field("cpu_us_per_req");
        let mut db = field("db_cpu_us_per_req");
        out.insert(
            key,
            Cell {
                rps: median(&mut rps),
                p99_ms: median(&mut p99) / 1000.0,
                cpu: median(&mut cpu),
                db_cpu: (!db.is_empty()).then(|| median(&mut db)),
                rps_spread: spread(&mut rps),
                cpu_spread: spread(&mut cpu),
                reps: runs.len(),
                errors: runs.iter().filter_map(|r| r["errors"].as_u64()).sum(),
            },
        );
    }
    Ok(out)
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".to_owned()
    }
}

fn e2e(text: &str) -> Result<String> {
    let cells = cells(text)?;
    let get = |variant: &str, route: &str| cells.get(&(variant.to_owned(), route.to_owned()));
    let bare = get("bare", "none").cloned();
    let bare_cpu = bare.as_ref().map_or(f64::NAN, |c| c.cpu);
    let mut md = String::new();

    for route in ROUTES {
        writeln!(md, "\n#### `/{route}`\n")?;
        writeln!(
            md,
            "| variant | req/s | p99 ms | CPU µs/req | CPU over bare µs | CPU ÷ tower-sessions | req/s ÷ tower-sessions | CPU ÷ axum_session | req/s ÷ axum_session | DB CPU µs/req | spread CPU / req/s | errors |"
        )?;
        writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        if let Some(b) = &bare {
            row(&mut md, "bare axum (`/none`)", b, bare_cpu, None, None)?;
        }
        for store in STORES {
            let tower = get(&format!("tower-{store}"), route);
            let axum_session = get(&format!("axum-session-{store}"), route);
            if let Some(k) = get(&format!("keepsake-{store}"), route) {
                row(
                    &mut md,
                    &format!("keepsake {store}"),
                    k,
                    bare_cpu,
                    tower,
                    axum_session,
                )?;
            }
            if let Some(k) = get(&format!("keepsake-{store}-nogc"), route) {
                let name = format!("keepsake {store}, GC lottery off");
                row(&mut md, &name, k, bare_cpu, tower, axum_session)?;
            }
            if let Some(t) = tower {
                row(
                    &mut md,
                    &format!("tower-sessions {store}"),
                    t,
                    bare_cpu,
                    None,
                    None,
                )?;
            }
            if let Some(a) = axum_session {
                row(
                    &mut md,
                    &format!("axum_session {store}"),
                    a,
                    bare_cpu,
                    None,
                    None,
                )?;
            }
        }
    }

    writeln!(md, "\n#### Sliding idle expiry: `/read`\n")?;
    writeln!(
        md,
        "keepsake moves the expiry with a `touch` at most once a minute per session; \
         tower-sessions needs `with_always_save(true)`, a full record rewrite per request.\n"
    )?;
    writeln!(
        md,
        "| store | keepsake req/s | tower-sessions always_save req/s | req/s ratio | keepsake CPU µs/req | tower-sessions CPU µs/req | CPU ratio | keepsake DB CPU µs/req | tower-sessions DB CPU µs/req |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for store in STORES {
        let (Some(k), Some(t)) = (
            get(&format!("keepsake-{store}"), "read"),
            get(&format!("tower-{store}-sliding"), "read"),
        ) else {
            continue;
        };
        writeln!(
            md,
            "| {store} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {} | {} | {} |",
            k.rps,
            t.rps,
            ratio(k.rps, t.rps),
            k.cpu,
            t.cpu,
            ratio(k.cpu, t.cpu),
            opt(k.db_cpu),
            opt(t.db_cpu),
        )?;
    }

    writeln!(
        md,
        "\n#### Targets (computed by `report` from these tables)\n"
    )?;
    writeln!(md, "| target | measured | verdict |")?;
    writeln!(md, "|---|---|---|")?;
    let over = |route: &str| get("keepsake-memory", route).map(|k| k.cpu - bare_cpu);
    for (route, limit) in [("none", 0.5), ("read", 2.0), ("write", 4.0)] {
        if let Some(extra) = over(route) {
            target(
                &mut md,
                &format!("memory `/{route}` ≤ +{limit} µs CPU over bare"),
                &format!("{extra:+.1} µs"),
                extra <= limit,
            )?;
        }
    }
    // keepsake ÷ tower-sessions on the same store and route: server CPU,
    // and database-server CPU where the database is a server of its own.
    let limits: [(&str, &str, f64, Option<f64>); 12] = [
        ("sqlite", "read", 0.85, None),
        ("sqlite", "write", 0.9, None),
        ("sqlite", "login", 1.0, None),
        ("postgres", "read", 0.67, None),
        ("postgres", "write", 0.9, Some(1.0)),
        ("postgres", "login", 1.0, None),
        ("mysql", "read", 0.67, None),
        ("mysql", "write", 0.9, Some(1.0)),
        ("mysql", "login", 1.0, None),
        ("redis", "read", 0.67, None),
        ("redis", "write", 0.9, Some(1.0)),
        ("redis", "login", 1.0, None),
    ];
    for (store, route, limit, db_limit) in limits {
        let (Some(k), Some(t)) = (
            get(&format!("keepsake-{store}"), route),
            get(&format!("tower-{store}"), route),
        ) else {
            continue;
        };
        let r = k.cpu / t.cpu;
        target(
            &mut md,
            &format!("{store} `/{route}` CPU ≤ {limit}× tower-sessions"),
            &format!("{r:.2}×"),
            r <= limit,
        )?;
        if let (Some(limit), Some(kd), Some(td)) = (db_limit, k.db_cpu, t.db_cpu) {
            let r = kd / td;
            target(
                &mut md,
                &format!("{store} `/{route}` DB CPU ≤ {limit}× tower-sessions"),
                &format!("{r:.2}×"),
                r <= limit,
            )?;
        }
    }
    // The lottery: `-nogc` rows against the default ones, within the
    // spread of the two.
    for store in STORES {
        for route in ["read", "write"] {
            let (Some(k), Some(n)) = (
                get(&format!("keepsake-{store}"), route),
                get(&format!("keepsake-{store}-nogc"), route),
            ) else {
                continue;
            };
            let differs = (k.cpu - n.cpu) / n.cpu * 100.0;
            let spread = k.cpu_spread.max(n.cpu_spread);
            target(
                &mut md,
                &format!("{store} `/{route}`: GC lottery on vs off within the spread"),
                &format!("{differs:+.0} % (spread {spread:.0} %)"),
                differs <= spread,
            )?;
        }
    }
    for store in STORES {
        if let (Some(k), Some(t)) = (
            get(&format!("keepsake-{store}"), "read"),
            get(&format!("tower-{store}-sliding"), "read"),
        ) {
            let r = k.rps / t.rps;
            target(
                &mut md,
                &format!("{store} sliding expiry req/s ≥ 2× tower-sessions (always_save)"),
                &format!("{r:.2}×"),
                r >= 2.0,
            )?;
        }
    }

    let reps = cells.values().map(|c| c.reps).max().unwrap_or(0);
    let mut cpu_spreads: Vec<f64> = cells
        .values()
        .map(|c| c.cpu_spread)
        .filter(|v| v.is_finite())
        .collect();
    let mut rps_spreads: Vec<f64> = cells
        .values()
        .map(|c| c.rps_spread)
        .filter(|v| v.is_finite())
        .collect();
    if reps > 1 {
        writeln!(
            md,
            "\nSpread between the {reps} repetitions ((max − min) / median): CPU per request median {:.1} %, worst {:.1} %; requests/s median {:.1} %, worst {:.1} %.",
            median(&mut cpu_spreads),
            cpu_spreads.last().copied().unwrap_or(f64::NAN),
            median(&mut rps_spreads),
            rps_spreads.last().copied().unwrap_or(f64::NAN),
        )?;
    }
    Ok(md)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn row(
    md: &mut String,
    name: &str,
    c: &Cell,
    bare_cpu: f64,
    tower: Option<&Cell>,
    axum_session: Option<&Cell>,
) -> Result<()> {
    let vs = |other: Option<&Cell>| {
        other.map_or(("".to_owned(), "".to_owned()), |o| {
            (ratio(c.cpu, o.cpu), ratio(c.rps, o.rps))
        })
    };
    let (tc, tr) = vs(tower);
    let (ac, ar) = vs(axum_session);
    writeln!(
        md,
        "| {name} | {:.0} | {:.2} | {:.1} | {:+.1} | {tc} | {tr} | {ac} | {ar} | {} | {:.0} % / {:.0} % | {} |",
        c.rps,
        c.p99_ms,
        c.cpu,
        c.cpu - bare_cpu,
        opt(c.db_cpu),
        c.cpu_spread,
        c.rps_spread,
        c.errors,
    )?;
    Ok(())
}

fn target(md: &mut String, what: &str, measured: &str, met: bool) -> Result<()> {
    writeln!(
        md,
        "| {what} | {measured} | {} |",
        if met { "met" } else { "**missed**" }
    )?;
    Ok(())
}

/// Median times of every criterion benchmark under `dir`, and the layer
/// group as ratios.
fn criterion(dir: &Path) -> Result<String> {
    let mut found: BTreeMap<String, f64> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    let bench: Value =
                        serde_json::from_str(&std::fs::read_to_string(p.join("benchmark.json"))?)?;
                    let estimates: Value =
                        serde_json::from_str(&std::fs::read_to_string(p.join("estimates.json"))?)?;
                    if let (Some(id), Some(ns)) = (
                        bench["full_id"].as_str(),
                        estimates["median"]["point_estimate"].as_f64(),
                    ) {
                        found.insert(id.to_owned(), ns);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    let mut md = String::new();
    let layer = |lib: &str, route: &str| found.get(&format!("layer/{lib}/{route}")).copied();
    writeln!(
        md,
        "\n#### In process, through the layer (median time per request)\n"
    )?;
    writeln!(
        md,
        "| route | bare | keepsake | tower-sessions | keepsake − bare | keepsake ÷ bare | tower-sessions ÷ bare | keepsake ÷ tower-sessions |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for route in ["none", "read", "write"] {
        let (Some(b), Some(k), Some(t)) = (
            layer("bare", route),
            layer("keepsake", route),
            layer("tower-sessions", route),
        ) else {
            continue;
        };
        writeln!(
            md,
            "| `{route}` | {} | {} | {} | {} | {} | {} | {} |",
            time(b),
            time(k),
            time(t),
            time(k - b),
            ratio(k, b),
            ratio(t, b),
            ratio(k, t)
        )?;
    }
    writeln!(md, "\n#### Everything else (median)\n")?;
    writeln!(md, "| benchmark | time |")?;
    writeln!(md, "|---|---:|")?;
    for (id, ns) in &found {
        if !id.starts_with("layer/") {
            writeln!(md, "| `{id}` | {} |", time(*ns))?;
        }
    }
    Ok(md)
}

fn time(ns: f64) -> String {
    if ns.abs() >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns.abs() >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
