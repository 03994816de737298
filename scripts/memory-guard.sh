#!/usr/bin/env bash
# A regression guard on the planning path's memory (README, "Performance"):
# the peak RSS a user adds to `idsync plan`, no-change and empty-state JSON,
# measured as the difference between two directory sizes (so the binary,
# the runtime and SQLite's fixed share cancel out) and held under a bound
# with slack. Memory does not move with the machine's load, unlike time, so
# this holds on busy CI cores; the debug build allocates the same records as
# the release one. About 15 s after `cargo test` has built the binaries.
#
#   bash scripts/memory-guard.sh            # the check
#   MEMORY_GUARD_SIZES="10000 50000" bash scripts/memory-guard.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Bytes a user may add to the peak RSS. Measured 2026-12-06 (seven runs of
# this script on the commit after 38fe485, at load average 8-15): no-change
# 313-352, empty state 412-477 (when short-lived buffers are handed back
# moves the peak by a megabyte or two); the bounds are 1.3 times the
# largest, so they catch a representation growing back (a key's own string
# costs 8-16 bytes a copy, and a user has four or more), not a few bytes.
NO_CHANGE_MAX=${MEMORY_GUARD_NO_CHANGE_MAX:-460}
EMPTY_STATE_MAX=${MEMORY_GUARD_EMPTY_STATE_MAX:-620}
read -r SMALL LARGE <<<"${MEMORY_GUARD_SIZES:-5000 25000}"

cargo build --quiet --bin idsync --example bench
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Peak RSS in KiB of one run of a command (its output discarded).
peak_kib() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
PY
}

declare -A no_change empty_state
for users in "$SMALL" "$LARGE"; do
    dir="$work/$users"
    # Generates the CSV directory and seeds the state DB as a first sync
    # leaves it (its own timings are not looked at here).
    BENCH_RUNS=1 BENCH_DIR="$dir" target/debug/examples/bench "$users" 100 >"$dir.log" 2>&1 || {
        cat "$dir.log" >&2
        exit 1
    }
    no_change[$users]=$(peak_kib target/debug/idsync plan -c "$dir/bench.yaml")
    empty_state[$users]=$(peak_kib target/debug/idsync plan --format json -c "$dir/bench-empty.yaml")
done

failed=0
check() {
    local what=$1 small=$2 large=$3 max=$4
    local per_user=$(((large - small) * 1024 / (LARGE - SMALL)))
    local verdict=ok
    if ((per_user > max)); then
        verdict="FAILED (more than $max)"
        failed=1
    fi
    printf '%s: %s bytes a user (peak %s KiB at %s users, %s KiB at %s): %s\n' \
        "$what" "$per_user" "$large" "$LARGE" "$small" "$SMALL" "$verdict"
}
check "no-change idsync plan" "${no_change[$SMALL]}" "${no_change[$LARGE]}" "$NO_CHANGE_MAX"
check "empty-state idsync plan --format json" "${empty_state[$SMALL]}" "${empty_state[$LARGE]}" "$EMPTY_STATE_MAX"
if ((failed)); then
    echo "memory-guard: the planning path's memory per user grew; see README, \"Performance\" (examples/bench.rs measures it at scale)" >&2
    exit 1
fi
