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
# served. Each request passes axum's MethodRouter once; the set-up creates
# the sessions of every router whatever the filter, so its requests are
# counted once, by a run whose filter matches no benchmark, and subtracted.
# Needs valgrind.
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

# Profiles the bench binary with FILTER; leaves $out, $out.inclusive, $out.calls.
profile() {
    local filter=$1
    out=$scratch/$(echo "$filter" | tr / _).out
    (cd "$scratch" && valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --bench --profile-time "${CALLGRIND_SECONDS:-3}" "layer/$filter\$" >/dev/null 2>&1)
    callgrind_annotate --inclusive=yes "$out" >"$out.inclusive" 2>/dev/null
    callgrind_annotate --threshold=100 --tree=calling "$out" >"$out.calls" 2>/dev/null
}
# Requests that passed axum's MethodRouter in the last profile.
routed() {
    grep '>   .*MethodRouter<S,E>::call_with_state (' "$out.calls" \
        | grep -o '([0-9,]*x)' | tr -d '(),x' | paste -sd+ | bc
}

profile "no-benchmark-matches-this"
setup=$(routed)
[[ $setup -gt 0 ]] || { echo "callgrind.sh: found no set-up requests" >&2; exit 1; }

printf '%-22s %12s %10s\n' variant "instr/req" requests
for name in "${variants[@]}"; do
    profile "$name"
    measured=$(grep -m1 'AsyncBencher<A,M>::iter ' "$out.inclusive" | awk '{gsub(",", "", $1); print $1}')
    requests=$(( $(routed) - setup ))
    [[ -n "$measured" && $requests -gt 0 ]] || { echo "callgrind.sh: nothing measured for $name" >&2; exit 1; }
    printf '%-22s %12d %10d\n' "$name" $(( measured / requests )) "$requests"
done
