//! The fuzz targets of `fuzz/` as property tests on the stable toolchain:
//! every seed in `fuzz/corpus/TARGET/` is replayed, then proptest feeds each
//! target generated inputs: arbitrary bytes, corpus seeds with random edits,
//! and strings of the target's dictionary tokens (`fuzz/dict/TARGET.dict`).
//!
//! `cargo test --test fuzz` runs a fixed number of cases per target
//! (`KEEPSAKE_FUZZ_CASES`, 256 by default). With `KEEPSAKE_FUZZ_SECONDS=N`
//! each target keeps going for N seconds and prints how many inputs it ran
//! (`.ci/fuzz.sh` uses this when libFuzzer is not available). A failure
//! prints the shrunk input and writes it to `fuzz/artifacts/TARGET/`, where
//! `cargo +nightly fuzz run TARGET FILE` replays it too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The seeds of a target, sorted by file name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a corpus file"))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// The tokens of a libFuzzer dictionary file (`name="value"` lines with
/// `\\`, `\"` and `\xNN` escapes).
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let path = fuzz_dir().join("dict").join(format!("{target}.dict"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let start = line.find('"')? + 1;
            let end = line.rfind('"')?;
            let raw = line.get(start..end)?.as_bytes();
            let mut token = Vec::with_capacity(raw.len());
            let mut i = 0;
            while let Some(&b) = raw.get(i) {
                match (b, raw.get(i + 1)) {
                    (b'\\', Some(b'x')) => {
                        let hex = std::str::from_utf8(raw.get(i + 2..i + 4)?).ok()?;
                        token.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 4;
                    }
                    (b'\\', Some(&next)) => {
                        token.push(next);
                        i += 2;
                    }
                    _ => {
                        token.push(b);
                        i += 1;
                    }
                }
            }
            Some(token)
        })
        .collect()
}

/// One random edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, u8),
    Remove(usize),
    Replace(usize, u8),
    Truncate(usize),
    Token(usize, usize),
    Duplicate(usize, usize),
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit], tokens: &[Vec<u8>]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Edit::Remove(at) if len > 0 => {
                bytes.remove(at % len);
            }
            Edit::Replace(at, b) if len > 0 => bytes[at % len] = b,
            Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
            Edit::Token(at, which) if !tokens.is_empty() => {
                let at = at % (len + 1);
                let token = &tokens[which % tokens.len()];
                bytes.splice(at..at, token.iter().copied());
            }
            Edit::Duplicate(at, n) if len > 0 => {
                let start = at % len;
                let end = (start + 1 + n % 64).min(len);
                let chunk = bytes[start..end].to_vec();
                bytes.splice(end..end, chunk);
            }
            _ => {}
        }
    }
    bytes
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Insert(a, b)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Replace(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Token(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
    ]
}

/// Arbitrary bytes, edited seeds, and strings of dictionary tokens.
fn inputs(seeds: Vec<Vec<u8>>, tokens: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let seed_count = seeds.len();
    let edit_tokens = tokens.clone();
    let edited = (0..seed_count, prop::collection::vec(edit(), 0..12))
        .prop_map(move |(i, edits)| apply(seeds[i].clone(), &edits, &edit_tokens));
    let arbitrary = prop::collection::vec(any::<u8>(), 0..600);
    if tokens.is_empty() {
        return prop_oneof![arbitrary, edited].boxed();
    }
    let token_count = tokens.len();
    let soup = prop::collection::vec((0..token_count, any::<Option<u8>>()), 0..40).prop_map(
        move |picks| {
            let mut out = Vec::new();
            for (i, byte) in picks {
                out.extend_from_slice(&tokens[i]);
                out.extend(byte);
            }
            out
        },
    );
    prop_oneof![2 => arbitrary, 5 => edited, 3 => soup].boxed()
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn save_artifact(target: &str, input: &[u8]) -> PathBuf {
    let dir = fuzz_dir().join("artifacts").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let digest: u64 = input.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let path = dir.join(format!("proptest-crash-{digest:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

/// Replays the corpus of `target`, then runs generated inputs through it.
fn fuzz(target: &str) {
    let body = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, body)| *body)
        .unwrap_or_else(|| panic!("no target {target}"));
    let seeds = corpus(target);
    for (name, bytes) in &seeds {
        let replay = std::panic::catch_unwind(|| body(bytes));
        assert!(
            replay.is_ok(),
            "{target}: corpus seed {name} fails: {}",
            escape(bytes)
        );
    }

    let budget = env_number("KEEPSAKE_FUZZ_SECONDS").map(Duration::from_secs);
    let cases = env_number("KEEPSAKE_FUZZ_CASES").unwrap_or(256);
    let strategy = inputs(
        seeds.into_iter().map(|(_, bytes)| bytes).collect(),
        dictionary(target),
    );
    let started = Instant::now();
    let executed = AtomicU64::new(0);
    loop {
        let batch = if budget.is_some() { 512 } else { cases };
        let mut runner = TestRunner::new(Config {
            cases: u32::try_from(batch).unwrap_or(u32::MAX),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| {
            executed.fetch_add(1, Ordering::Relaxed);
            body(&input);
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                let path = save_artifact(target, &input);
                panic!(
                    "{target}: {reason}\nshrunk input ({} bytes, saved to {}): {}",
                    input.len(),
                    path.display(),
                    escape(&input)
                );
            }
            Err(TestError::Abort(reason)) => panic!("{target}: aborted: {reason}"),
        }
        if budget.is_none_or(|budget| started.elapsed() >= budget) {
            break;
        }
    }
    let executed = executed.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {} corpus seeds replayed, {executed} generated inputs in {elapsed:.1} s ({:.0}/s)",
        corpus(target).len(),
        executed as f64 / elapsed.max(1e-9)
    );
}

#[test]
fn session_id() {
    fuzz("session_id");
}

#[test]
fn cookie_header() {
    fuzz("cookie_header");
}

#[test]
fn cookie_open() {
    fuzz("cookie_open");
}

#[test]
fn payload() {
    fuzz("payload");
}

#[test]
fn encrypted_payload() {
    fuzz("encrypted_payload");
}

#[test]
fn dot_paths() {
    fuzz("dot_paths");
}

#[test]
fn csrf_body() {
    fuzz("csrf_body");
}

#[test]
fn proxy_headers() {
    fuzz("proxy_headers");
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    for (name, _) in harness::TARGETS {
        assert!(!corpus(name).is_empty());
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .exists(),
            "no libFuzzer target for {name}"
        );
    }
}
