#!/usr/bin/env bash
# Instructions per request through the layer, counted by callgrind: exact and
# repeatable where wall-clock timings on a shared two-core machine are not.
#
#   benches/callgrind.sh                       every variant of benches/layer.rs
#   benches/callgrind.sh keepsake/read bare/none
#
# Runs the criterion binary of benches/layer.rs under
# `valgrind --tool=callgrind` in profile mode (no analysis) and divides the
# instructions spent inside criterion's measured loop by the requests it
# served (each request passes axum's MethodRouter once; the 1,000 requests of
# the set-up that creates the sessions are subtracted). Needs valgrind.
#
# valgrind hides the CPU's SHA extensions, so SHA-256 (one storage key per
# loaded request) runs in software here and costs about 3,000 instructions
# that it does not cost on a CPU with them.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
cargo bench --bench layer --no-run --quiet
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/layer-* | grep -v '\.d$' | head -1)
[[ $bin = /* ]] || bin=$PWD/$bin
variants=("$@")
if [[ ${#variants[@]} -eq 0 ]]; then
    variants=(bare/none noop-layer/none
        keepsake/none keepsake/read keepsake/write
        tower-sessions/none tower-sessions/read tower-sessions/write)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

printf '%-22s %12s %10s\n' variant "instr/req" requests
for name in "${variants[@]}"; do
    out=$scratch/$(echo "$name" | tr / _).out
    (cd "$scratch" && valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --bench --profile-time "${CALLGRIND_SECONDS:-3}" "layer/$name\$" >/dev/null 2>&1)
    callgrind_annotate --inclusive=yes "$out" >"$out.inclusive" 2>/dev/null
    callgrind_annotate --tree=calling "$out" >"$out.calls" 2>/dev/null
    measured=$(grep -m1 'AsyncBencher<A,M>::iter ' "$out.inclusive" | awk '{gsub(",", "", $1); print $1}')
    requests=$(grep '>   .*MethodRouter<S,E>::call_with_state (' "$out.calls" \
        | grep -o '([0-9,]*x)' | tr -d '(),x' | paste -sd+ | bc)
    requests=$(( requests - 1000 ))
    printf '%-22s %12d %10d\n' "$name" $(( measured / requests )) "$requests"
done
