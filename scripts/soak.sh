#!/usr/bin/env bash
# Months of running, compressed (README, "Months of running"): the long forms
# of the tests in tests/soak, which CI runs in a short form.
#
#   scripts/soak.sh daemon [CYCLES]   `idsync daemon` on a 1 s interval for CYCLES
#                                     cycles (default 1000; about 35 min here), its
#                                     CSV source churned, its target faulty
#   scripts/soak.sh kills [KILLS]     KILLS SIGKILLs (default 100) spread over CSV,
#                                     LDAP and Entra cycles, each resumed
#   scripts/soak.sh all [CYCLES] [KILLS]
#
# IDSYNC_SOAK_SEED picks another random history. The figures are printed and
# appended, under a header naming the date, the machine and the commit, to
# target/soak-report.txt (or $IDSYNC_SOAK_REPORT). Needs what scripts/test.sh
# installs (scripts/test-env.sh): scim2-server, slapd and ldap-utils.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() {
    echo "usage: $0 daemon [CYCLES] | kills [KILLS] | all [CYCLES] [KILLS]" >&2
    exit 2
}

number() {
    case "$1" in '' | *[!0-9]*) echo "error: $2 must be a number, not '$1'" >&2; exit 2 ;; esac
    if [ "$1" -lt 1 ]; then echo "error: $2 must be at least 1" >&2; exit 2; fi
}

export IDSYNC_SCIM2_SERVER="${IDSYNC_SCIM2_SERVER:-$ROOT/.test-env/venv/bin/scim2-server}"
if [ ! -x "$IDSYNC_SCIM2_SERVER" ]; then
    echo "error: scim2-server not found at $IDSYNC_SCIM2_SERVER" >&2
    echo "hint: run scripts/test-env.sh, or set IDSYNC_SCIM2_SERVER" >&2
    exit 1
fi
export IDSYNC_SOAK_REPORT="${IDSYNC_SOAK_REPORT:-$ROOT/target/soak-report.txt}"
mkdir -p "$(dirname "$IDSYNC_SOAK_REPORT")"

header() {
    local cpu mem
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
    mem="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)"
    {
        echo
        echo "== scripts/soak.sh $* — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "machine: $(nproc) cores (${cpu:-unknown CPU}), $mem, Linux $(uname -r)"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    } | tee -a "$IDSYNC_SOAK_REPORT" >&2
}

run_daemon() {
    number "$1" CYCLES
    IDSYNC_SOAK_CYCLES="$1" cargo test --test soak -- --ignored --exact --nocapture daemon::soak_long
}

run_kills() {
    number "$1" KILLS
    IDSYNC_SOAK_KILLS="$1" cargo test --test soak -- --ignored --exact --nocapture kills::kills_long
}

[ $# -ge 1 ] || usage
mode="$1"
shift
case "$mode" in
daemon)
    [ $# -le 1 ] || usage
    header daemon "$@"
    run_daemon "${1:-1000}"
    ;;
kills)
    [ $# -le 1 ] || usage
    header kills "$@"
    run_kills "${1:-100}"
    ;;
all)
    [ $# -le 2 ] || usage
    header all "$@"
    run_daemon "${1:-1000}"
    run_kills "${2:-100}"
    ;;
*) usage ;;
esac
echo "figures appended to $IDSYNC_SOAK_REPORT" >&2
