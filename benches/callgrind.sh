#!/usr/bin/env bash
# Instructions per request through the layer, counted by callgrind: exact and
# repeatable where wall-clock timings on a shared two-core machine are not.
#
#   benches/callgrind.sh                       every variant
#   benches/callgrind.sh keepsake/read bare/none
#
# Builds benches/instructions (a workspace of its own: the memory store, and
# tower-sessions' for the comparison rows) and runs it once per variant under
# `valgrind --tool=callgrind`, collecting only inside `measured_requests`:
# REQUESTS requests after the set-up (1,000 sessions) and a warm-up. The
# instructions collected divided by REQUESTS is the cost of one request,
# router and `oneshot` included; subtract the `bare/none` row for the
# layer's own cost. Needs valgrind.
#
# Environment: CALLGRIND_REQUESTS (default 20000), CALLGRIND_FEATURES
# (cargo features of benches/instructions; default `tower-sessions`, empty
# for keepsake and bare axum only, as the CI gate builds it).
#
# valgrind hides the CPU's SHA extensions, so SHA-256 (one storage key per
# loaded request) runs in software here and costs about 3,000 instructions
# that it does not cost on a CPU with them.
set -euo pipefail
cd "$(dirname "$0")/instructions"

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
features=${CALLGRIND_FEATURES-tower-sessions}
requests=${CALLGRIND_REQUESTS:-20000}
cargo build --release --quiet --locked --features "$features"
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/keepsake-instructions
variants=("$@")
if [[ ${#variants[@]} -eq 0 ]]; then
    variants=(bare/none noop-layer/none keepsake/none keepsake/read keepsake/write)
    [[ $features == *tower-sessions* ]] \
        && variants+=(tower-sessions/none tower-sessions/read tower-sessions/write)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

printf '%-22s %12s %10s\n' variant "instr/req" requests
for name in "${variants[@]}"; do
    out=$scratch/$(echo "$name" | tr / _).out
    if ! valgrind --tool=callgrind --callgrind-out-file="$out" \
        --toggle-collect='*measured_requests*' "$bin" "$name" "$requests" >"$out.log" 2>&1; then
        echo "callgrind.sh: $name failed:" >&2
        tail -5 "$out.log" >&2
        exit 1
    fi
    total=$(awk '/^totals:/ { print $2; exit }' "$out")
    [[ -n "$total" && $total -gt 0 ]] || { echo "callgrind.sh: nothing measured for $name" >&2; exit 1; }
    printf '%-22s %12d %10d\n' "$name" $(( total / requests )) "$requests"
done
