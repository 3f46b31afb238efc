#!/usr/bin/env bash
# The soak (tests/soak.rs) at full size: 64 clients on 1,000 sessions per
# store, through two app instances, on memory, SQLite, PostgreSQL, MariaDB
# and Redis; then every acknowledged write is checked. Bounded: each store's
# load stops after KEEPSAKE_SOAK_REQUESTS requests or KEEPSAKE_SOAK_SECONDS,
# whichever comes first. Needs the servers of .ci/services.sh and their
# KEEPSAKE_TEST_*_URL variables (under CI=true a missing one fails).
set -euo pipefail
cd "$(dirname "$0")/.."

export KEEPSAKE_SOAK_CLIENTS="${KEEPSAKE_SOAK_CLIENTS:-64}"
export KEEPSAKE_SOAK_SESSIONS="${KEEPSAKE_SOAK_SESSIONS:-1000}"
export KEEPSAKE_SOAK_REQUESTS="${KEEPSAKE_SOAK_REQUESTS:-100000}"
export KEEPSAKE_SOAK_SECONDS="${KEEPSAKE_SOAK_SECONDS:-35}"

echo "== soak: ${KEEPSAKE_SOAK_CLIENTS} clients, ${KEEPSAKE_SOAK_SESSIONS} sessions, up to ${KEEPSAKE_SOAK_REQUESTS} requests or ${KEEPSAKE_SOAK_SECONDS} s per store"
log="$(mktemp)"
set +e
timeout 900 cargo test --all-features --test soak -- --test-threads=1 --nocapture >"$log" 2>&1
status=$?
set -e
grep -oE 'soak [a-z]+: .*|test result: .*|skipped: .*' "$log" || true
[ "$status" -eq 0 ] || tail -80 "$log"
rm -f "$log"
exit "$status"
