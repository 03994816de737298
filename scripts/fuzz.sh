#!/usr/bin/env bash
# The fuzzing campaign: every target (or those named) for SECONDS each (600 by
# default), one after the other, one job at a time, with a 10 s per-input
# timeout and a 512 MiB memory limit. New inputs go into fuzz/corpus/<target>/;
# a crash, hang or memory blow-up stops the script with the input under
# fuzz/artifacts/<target>/ (make it a regression test, then commit both).
# Each target's figures (seconds, executions, result) are appended to
# fuzz/campaign.log.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (scripts/test-env.sh installs it). On a stable toolchain
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_EACH="${1:-600}"
shift || true
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -O

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    log="$(mktemp)"
    started=$(date +%s)
    rc=0
    cargo fuzz run -O "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=512 \
        -jobs=1 -workers=1 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    ran=$(($(date +%s) - started))
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)"
    if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc)"; fi
    line="$(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores: $target ${ran}s ${execs:-?} execs peak ${rss:-?} MiB: $result"
    echo "$line" | tee -a campaign.log
    if [ "$rc" -ne 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|artifact' "$log" | head -20 >&2
        rm -f "$log"
        exit "$rc"
    fi
    rm -f "$log"
done
