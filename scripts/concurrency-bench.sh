#!/usr/bin/env bash
# The README's `concurrency: auto` figures: an initial sync of USERS users
# (3,000 by default) into scim2-server over a link with a 100 ms round trip,
# at fixed concurrency 1, 2, 4, 8, 16 and 32 and then with `concurrency:
# auto`; prints each rate, the best fixed one and auto's ratio to it
# (target: at least 90 %).
#
#   bash scripts/concurrency-bench.sh [USERS]
#
# Runs the ignored test tests/netfaults/pace.rs (release build). Concurrency
# 1 and 2 sync PACE_SLOW_USERS users (600 by default; at 3,000 they take
# ten and five minutes); PACE_POINTS=4,8,16 picks other fixed points. Each
# sync is checked: exit 0 and every active user on the target. Needs root (network
# namespaces) and the test environment (scripts/test-env.sh). The rates
# depend on the machine's load: run it more than once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
USERS="${1:-3000}"
case "$USERS" in '' | *[!0-9]*) echo "usage: $0 [USERS]" >&2; exit 2 ;; esac
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
netns_test_env "$ROOT"

PACE_USERS="$USERS" netfaults_figures "figure: .*" pace::concurrency_sweep --ignored
