#!/usr/bin/env bash
# Fuzzes every decoder a client or a store can reach (see RELIABILITY.md),
# each target for a bounded time: with libFuzzer (cargo-fuzz on a nightly
# toolchain) when one is installed, otherwise with the property-based fuzzer
# on stable (`cargo test --test fuzz`). Both start from the seeds in
# fuzz/corpus/ and leave them untouched; a crash fails the script and is
# kept in fuzz/artifacts/TARGET/.
#
#   KEEPSAKE_FUZZ_SECONDS  seconds per target (default 20; 8 targets)
#   KEEPSAKE_FUZZ_ENGINE   auto | libfuzzer | proptest (default auto)
#   KEEPSAKE_FUZZ_INSTALL  1 to install cargo-fuzz when it is missing (auto)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${KEEPSAKE_FUZZ_SECONDS:-20}"
engine="${KEEPSAKE_FUZZ_ENGINE:-auto}"
targets=(session_id cookie_header cookie_open payload encrypted_payload dot_paths csrf_body proxy_headers)
root="$PWD"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"

libfuzzer_available() {
  rustup toolchain list 2>/dev/null | grep -q '^nightly' || return 1
  if ! cargo fuzz --version >/dev/null 2>&1; then
    # Installing cargo-fuzz takes minutes; CI keeps its time budget by
    # falling back to the property-based fuzzer unless asked to install.
    [ "${KEEPSAKE_FUZZ_INSTALL:-0}" = 1 ] || return 1
    echo "== installing cargo-fuzz"
    timeout 900 cargo install cargo-fuzz --locked >/dev/null 2>&1 || return 1
  fi
}

if [ "$engine" = auto ]; then
  if libfuzzer_available; then engine=libfuzzer; else engine=proptest; fi
fi

if [ "$engine" = proptest ]; then
  echo "== fuzz: property-based fuzzer (stable), ${seconds} s per target"
  log="$(mktemp)"
  set +e
  KEEPSAKE_FUZZ_SECONDS="$seconds" timeout $(( ${#targets[@]} * (seconds + 30) + 900 )) \
    cargo test --all-features --test fuzz -- --test-threads=1 --nocapture >"$log" 2>&1
  status=$?
  set -e
  grep -oE 'fuzz [a-z_]+: .*|test result: .*' "$log" || true
  [ "$status" -eq 0 ] || tail -80 "$log"
  rm -f "$log"
  exit "$status"
fi

echo "== fuzz: libFuzzer (cargo +nightly fuzz), ${seconds} s per target"
cd fuzz
timeout 1200 cargo +nightly fuzz build -O --target-dir "$target_dir"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  max_len=4096
  [ "$t" = cookie_header ] && max_len=70000
  log="$scratch/$t.log"
  # New inputs go to the scratch directory (the first one); the seeds are
  # only read.
  if timeout $(( seconds + 120 )) cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" \
      "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -dict="dict/$t.dict" -max_len="$max_len" \
      -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
    rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
    cov=$(grep -E 'DONE[[:space:]]+cov: [0-9]+' "$log" | grep -oE 'cov: [0-9]+' | tail -1 || true)
    echo "fuzz $t: libFuzzer, ${execs:-?} inputs in ${seconds} s (${rate:-?}/s, ${cov:-cov: ?}), no failure"
  else
    status=1
    echo "fuzz $t: FAILED"
    { grep -A4 'panicked' "$log" | head -12; grep 'Test unit written' "$log"; } || tail -40 "$log"
  fi
done
exit "$status"
