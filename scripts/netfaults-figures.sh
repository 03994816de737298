#!/usr/bin/env bash
# The README's network figures: the cycle time of an initial sync of N users
# (2,000 by default) into scim2-server over a link with a 150 ms round trip
# (75 ms ± 15 ms each way, some segments held longer), without loss and with
# 5 % of the segments dropped at random in each direction.
#
#   bash scripts/netfaults-figures.sh [USERS]
#
# Runs the two tests of tests/netfaults/figures.rs (release build, one at a
# time) with NETFAULTS_USERS=USERS and prints their `figure:` lines. Each run
# is also checked: the target must end exactly as the directory says, with
# no duplicate. Needs root (network namespaces, veth, iptables) and the test
# environment (scripts/test-env.sh). CI runs the same tests at 200 users.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
USERS="${1:-2000}"
case "$USERS" in '' | *[!0-9]*) echo "usage: $0 [USERS]" >&2; exit 2 ;; esac
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
netns_test_env "$ROOT"

NETFAULTS_USERS="$USERS" netfaults_figures "(figure|note): .*" figures::
