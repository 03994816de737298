#!/usr/bin/env bash
# A short run of every fuzz target over its checked-in corpus (SECONDS each,
# 10 by default), for CI (scripts/test.sh). Fails only on a real finding: a
# crash, a hang past 10 s or memory past 512 MiB, whose input is left under
# fuzz/artifacts/<target>/. When fuzzing cannot run here (no cargo-fuzz, or a
# toolchain that cannot build the sanitizer-instrumented targets) it says it
# skipped fuzzing, and why, and succeeds. New inputs go to a temporary
# folder: the checked-in corpus is only read. Built unoptimised (--dev): in
# CI the build is most of the cost, and ten seconds find what they find.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_EACH="${1:-10}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

skip() {
    echo "fuzz-smoke: SKIPPED fuzzing: $*" >&2
    exit 0
}

command -v cargo-fuzz >/dev/null 2>&1 || skip "cargo-fuzz is not installed (scripts/test-env.sh installs it)"
[ "$(uname -s)" = Linux ] || skip "libFuzzer's sanitizer coverage is set up for Linux only"

build_log="$(mktemp)"
scratch="$(mktemp -d)"
trap 'rm -rf "$build_log" "$scratch"' EXIT
if ! cargo fuzz build --dev >"$build_log" 2>&1; then
    # idsync's own code (the fuzzing seam, a target) not compiling is a
    # failure, not a toolchain this run cannot use.
    if grep -qE '^error(\[E[0-9]+\])?: ' "$build_log" &&
        grep -qE -- "--> ($ROOT/)?(src/|fuzz/fuzz_targets/|fuzz_targets/)" "$build_log"; then
        grep -E -A12 '^error(\[E[0-9]+\])?: ' "$build_log" | head -60 >&2
        echo "fuzz-smoke: the fuzz targets or the fuzzing seam (src/fuzzing.rs) do not compile" >&2
        exit 1
    fi
    tail -15 "$build_log" >&2
    skip "the fuzz targets do not build with this toolchain ($(rustc --version 2>/dev/null))"
fi

mapfile -t targets < <(cargo fuzz list)
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "corpus/$target"
    log="$scratch/$target.log"
    rc=0
    cargo fuzz run --dev "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=512 \
        -jobs=1 -workers=1 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    if [ "$rc" -eq 0 ]; then
        echo "fuzz-smoke: $target: ${SECONDS_EACH}s, ${execs:-?} executions, no finding" >&2
    elif grep -qE '^==[0-9]+== ?ERROR: libFuzzer|^SUMMARY: libFuzzer|panicked at|^Test unit written to' "$log"; then
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -10 >&2
        echo "fuzz-smoke: $target: FOUND A CRASH, HANG OR MEMORY BLOW-UP (input under fuzz/artifacts/$target/)" >&2
        failed+=("$target")
    else
        tail -10 "$log" >&2
        echo "fuzz-smoke: $target: SKIPPED: the fuzzer did not run (exit $rc), see above" >&2
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: findings in: ${failed[*]}" >&2
    exit 1
fi
