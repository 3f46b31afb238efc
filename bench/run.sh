#!/usr/bin/env bash
# End-to-end comparison on loopback: keepsake against bare axum,
# tower-sessions and axum_session, route by route, store by store.
#
#   bench/run.sh                    full run: 3 repetitions (about 15 minutes)
#   BENCH_QUICK=1 bench/run.sh      1 short repetition, small session pools
#
# Environment (defaults in brackets):
#   KEEPSAKE_TEST_POSTGRES_URL  [postgres://postgres@127.0.0.1:5432/test]
#   KEEPSAKE_TEST_MYSQL_URL     [mysql://root@127.0.0.1:3306/test]
#   KEEPSAKE_TEST_REDIS_URL     [redis://127.0.0.1:6379]
#   BENCH_VARIANTS   space-separated variants to run [all of them]
#   BENCH_REPS, BENCH_SECS, BENCH_WARMUP, BENCH_SESSIONS, BENCH_CONNECTIONS
#   BENCH_PORT       [18471]
#
# The servers listen on 127.0.0.1 only. The server is pinned to the last
# core and the load generator to the first (taskset), when there are two or
# more. Results: bench/results/<timestamp>/{results.jsonl,report.md,machine.txt}.
set -euo pipefail

cd "$(dirname "$0")"
here=$(pwd)

if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    reps=${BENCH_REPS:-1} secs=${BENCH_SECS:-1} warmup=${BENCH_WARMUP:-0.5} sessions=${BENCH_SESSIONS:-20}
else
    reps=${BENCH_REPS:-3} secs=${BENCH_SECS:-3} warmup=${BENCH_WARMUP:-1} sessions=${BENCH_SESSIONS:-100}
fi
connections=${BENCH_CONNECTIONS:-64}
port=${BENCH_PORT:-18471}

export KEEPSAKE_TEST_POSTGRES_URL=${KEEPSAKE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export KEEPSAKE_TEST_MYSQL_URL=${KEEPSAKE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
export KEEPSAKE_TEST_REDIS_URL=${KEEPSAKE_TEST_REDIS_URL:-redis://127.0.0.1:6379}

# Competitors of one store side by side, so each comparison is made minutes apart.
# The `-nogc` variants are keepsake with its GC lottery off (`/read` and
# `/write` only), to show what the lottery costs.
all_variants="bare
    keepsake-memory tower-memory tower-memory-sliding keepsake-memory-nogc
    keepsake-sqlite tower-sqlite axum-session-sqlite tower-sqlite-sliding keepsake-sqlite-nogc
    keepsake-postgres tower-postgres axum-session-postgres tower-postgres-sliding keepsake-postgres-nogc
    keepsake-mysql tower-mysql tower-mysql-sliding keepsake-mysql-nogc
    keepsake-redis tower-redis tower-redis-sliding keepsake-redis-nogc"
read -r -a variants <<< "$(echo ${BENCH_VARIANTS:-$all_variants})"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
cargo build --release --quiet --bins
bin=$CARGO_TARGET_DIR/release

out=$here/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
results=$out/results.jsonl
export BENCH_DIR=$(mktemp -d)

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cores: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "commit: $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$here" diff --quiet HEAD -- .. 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: reps=$reps secs=$secs warmup=$warmup connections=$connections sessions/connection=$sessions"
} > "$out/machine.txt"
cat "$out/machine.txt"

if [[ $(nproc) -ge 2 ]]; then
    server_pin=(taskset -c "$(( $(nproc) - 1 ))")
    load_pin=(taskset -c 0)
else
    server_pin=() load_pin=()
fi

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
    "$bin/server" cleanup || true
    rm -rf "$BENCH_DIR"
}
trap finish EXIT

for rep in $(seq 1 "$reps"); do
    # Every other repetition runs the list backwards, so no variant always
    # comes first after a database warmed up for its competitor.
    order=("${variants[@]}")
    if (( rep % 2 == 0 )); then
        order=()
        for (( i=${#variants[@]}-1; i>=0; i-- )); do order+=("${variants[i]}"); done
    fi
    for variant in "${order[@]}"; do
        case "$variant" in
            bare) routes=none ;;
            *-sliding) routes=read ;;
            *-nogc) routes=read,write ;;
            *) routes=none,read,write,login ;;
        esac
        case "$variant" in
            *postgres*) db=postgres ;;
            *mysql*) db=mariadbd ;;
            *redis*) db=redis-server ;;
            *) db= ;;
        esac
        "${server_pin[@]}" "$bin/server" "$variant" "$port" > "$out/server-$variant.log" 2>&1 &
        server_pid=$!
        if ! "${load_pin[@]}" "$bin/load" --addr "127.0.0.1:$port" --pid "$server_pid" \
            --variant "$variant" --rep "$rep" --routes "$routes" \
            --connections "$connections" --sessions "$sessions" \
            --warmup "$warmup" --secs "$secs" --db-comm "$db" --out "$results"; then
            echo "$variant failed (rep $rep); server log:" >&2
            tail -5 "$out/server-$variant.log" >&2 || true
        fi
        stop_server
    done
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
"$bin/report" e2e "$results" > "$out/report.md"
echo
cat "$out/report.md"
echo
echo "results in $out"
