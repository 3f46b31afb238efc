#!/usr/bin/env bash
# The instruction-count gate: instructions per request through the layer
# (benches/callgrind.sh: bare axum, and keepsake's none / read / write through
# the memory store), compared with the committed baseline
# benches/callgrind-baseline.txt, which names the `rustc --version` it was
# recorded with.
#
#   .ci/callgrind-gate.sh            compare; exit 1 when a row grew by more than 5 %
#   .ci/callgrind-gate.sh --record   measure and write the baseline (then commit it)
#
# Instruction counts are exact only for one compiler: on another toolchain
# the gate re-records the baseline file (for a commit to pick up, or not),
# says so, and passes. A baseline file without rows (only comments) is
# recorded the same way. Installs valgrind with apt-get when it is missing.
#
# Environment: CALLGRIND_GATE_TOLERANCE (percent, default 5),
# CALLGRIND_REQUESTS (requests counted per variant, default 20000, see
# benches/callgrind.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=benches/callgrind-baseline.txt
variants=(bare/none keepsake/none keepsake/read keepsake/write)
tolerance=${CALLGRIND_GATE_TOLERANCE:-5}

record=0
case "${1:-}" in
    "") ;;
    --record) record=1 ;;
    *) echo "usage: .ci/callgrind-gate.sh [--record]" >&2; exit 2 ;;
esac

if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null \
    || ! command -v bc >/dev/null; then
    echo "callgrind gate: installing valgrind"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null
    "${sudo[@]}" apt-get install -y -qq valgrind bc >/dev/null
fi

toolchain=$(rustc --version)
measured=$(mktemp)
trap 'rm -f "$measured"' EXIT
started=$SECONDS
CALLGRIND_FEATURES= bash benches/callgrind.sh "${variants[@]}" | awk 'NR > 1 { print $1, $2 }' > "$measured"
elapsed=$(( SECONDS - started ))
for v in "${variants[@]}"; do
    if ! awk -v v="$v" '$1 == v && $2 ~ /^[0-9]+$/ && $2 > 0 { found = 1 } END { exit !found }' "$measured"; then
        echo "callgrind gate: no instruction count for $v from benches/callgrind.sh" >&2
        exit 1
    fi
done

write_baseline() {
    local header
    # Keep the file's comment header; replace what follows it.
    header=$(grep '^#' "$baseline" 2>/dev/null || true)
    {
        [[ -n "$header" ]] && echo "$header"
        echo "rustc: $toolchain"
        cat "$measured"
    } > "$baseline.tmp"
    mv "$baseline.tmp" "$baseline"
}

recorded_toolchain=$(sed -n 's/^rustc: //p' "$baseline" 2>/dev/null | head -1)
rows=$(grep -v -e '^#' -e '^rustc: ' -e '^[[:space:]]*$' "$baseline" 2>/dev/null || true)

if [[ $record -eq 1 || -z "$rows" || "$recorded_toolchain" != "$toolchain" ]]; then
    write_baseline
    if [[ $record -eq 1 ]]; then
        echo "callgrind gate: recorded $baseline with $toolchain (${elapsed} s):"
    elif [[ -z "$rows" ]]; then
        echo "callgrind gate: $baseline has no baseline yet; recorded one with $toolchain, NOT compared (commit it to arm the gate):"
    else
        echo "callgrind gate: the baseline was recorded with ${recorded_toolchain:-an unnamed toolchain}, this is $toolchain;"
        echo "callgrind gate: instruction counts differ between compilers, so $baseline was RE-RECORDED, NOT compared (commit it to compare against it):"
    fi
    sed 's/^/    /' "$measured"
    exit 0
fi

# Same toolchain: compare row by row.
status=0
printf '| %-16s | %10s | %10s | %9s |\n' variant baseline now change
printf '|%s|%s:|%s:|%s:|\n' ------------------ ----------- ----------- ----------
while read -r variant now; do
    before=$(awk -v v="$variant" '$1 == v { print $2 }' <<< "$rows")
    if [[ -z "$before" ]]; then
        printf '| %-16s | %10s | %10d | %9s |\n' "$variant" "—" "$now" "new"
        continue
    fi
    change=$(awk -v a="$before" -v b="$now" 'BEGIN { printf "%+.1f", (b - a) * 100 / a }')
    verdict=
    if awk -v a="$before" -v b="$now" -v t="$tolerance" 'BEGIN { exit !((b - a) * 100 > t * a) }'; then
        verdict=" over +$tolerance %"
        status=1
    fi
    printf '| %-16s | %10d | %10d | %7s %%%s |\n' "$variant" "$before" "$now" "$change" "$verdict"
done < "$measured"
echo "(instructions per request, $toolchain, ${elapsed} s)"
if [[ $status -ne 0 ]]; then
    echo "callgrind gate: FAILED: a row grew by more than $tolerance % over $baseline" >&2
    echo "callgrind gate: if the growth is intended, re-record: bash .ci/callgrind-gate.sh --record" >&2
fi
exit "$status"
