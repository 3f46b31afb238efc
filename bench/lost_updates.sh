#!/usr/bin/env bash
# The lost-update workload (src/bin/lost.rs) against one server per library
# and store, on loopback: one session; 32 clients share 400 increments of one
# counter; 2 tabs × 100 increments; a 1-client control of 100; then the
# stored counter read back through the server. Prints a Markdown table and
# exits 1 when keepsake lost an update, was refused one, or a variant failed
# (tower-sessions losing updates is what the table shows, not a failure).
#
#   bench/lost_updates.sh                          every store, keepsake and tower-sessions
#   LOST_VARIANTS="keepsake-redis tower-redis" bench/lost_updates.sh
#
# Environment (defaults in brackets):
#   KEEPSAKE_TEST_POSTGRES_URL  [postgres://postgres@127.0.0.1:5432/test]
#   KEEPSAKE_TEST_MYSQL_URL     [mysql://root@127.0.0.1:3306/test]
#   KEEPSAKE_TEST_REDIS_URL     [redis://127.0.0.1:6379]
#   LOST_VARIANTS   space-separated `server` variants [keepsake-* and tower-* on every store]
#   LOST_ARGS       extra arguments for `lost` (e.g. "--clients 64 --shared 1000")
#   BENCH_PORT      [18472]
#
# Tables, schemas and key prefixes get the suffix `_lost`, so a load
# comparison (run.sh) against the same servers at the same time is left
# alone. Results: bench/results/lost-<timestamp>/{results.jsonl,table.md}.
set -euo pipefail

cd "$(dirname "$0")"
here=$(pwd)

port=${BENCH_PORT:-18472}
export KEEPSAKE_TEST_POSTGRES_URL=${KEEPSAKE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export KEEPSAKE_TEST_MYSQL_URL=${KEEPSAKE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
export KEEPSAKE_TEST_REDIS_URL=${KEEPSAKE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export BENCH_NAME_SUFFIX=_lost

all_variants="keepsake-memory tower-memory
    keepsake-sqlite tower-sqlite
    keepsake-postgres tower-postgres
    keepsake-mysql tower-mysql
    keepsake-redis tower-redis"
read -r -a variants <<< "$(echo ${LOST_VARIANTS:-$all_variants})"
read -r -a extra <<< "${LOST_ARGS:-}"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
cargo build --release --quiet --bin server --bin lost
bin=$CARGO_TARGET_DIR/release

out=$here/results/lost-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
results=$out/results.jsonl
export BENCH_DIR=$(mktemp -d)

server_pid=
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
finish() {
    stop_server
    "$bin/server" cleanup >/dev/null 2>&1 || true
    rm -rf "$BENCH_DIR"
}
trap finish EXIT

failed=()
for variant in "${variants[@]}"; do
    "$bin/server" "$variant" "$port" > "$out/server-$variant.log" 2>&1 &
    server_pid=$!
    # Every request is bounded by `lost --timeout`; the whole variant by this.
    if ! timeout 300 "$bin/lost" --addr "127.0.0.1:$port" --variant "$variant" \
        --out "$results" "${extra[@]}"; then
        echo "$variant failed; server log:" >&2
        tail -5 "$out/server-$variant.log" >&2 || true
        failed+=("$variant")
    fi
    stop_server
done

"$bin/lost" table "$results" > "$out/table.md"
echo
cat "$out/table.md"
echo
echo "results in $out"

status=0
# keepsake must lose nothing and refuse nothing, in every phase, on every store.
"$bin/lost" check "$results" || status=1
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "variants that did not finish: ${failed[*]}" >&2
    status=1
fi
exit "$status"
