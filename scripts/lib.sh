# shellcheck shell=bash
# Shared by the project's scripts (sourced, not run).

# Prints the path of the program NAME: from PATH, else from the sbin and bin
# folders Debian installs servers into. Exits 1 naming it (and $TOOLS_HINT,
# what installs it) when it is nowhere.
find_tool() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in /usr/sbin /usr/bin /sbin; do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done
    echo "error: $name not found" >&2
    echo "hint: run scripts/test-env.sh (${TOOLS_HINT:-installs what the tests need})" >&2
    exit 1
}

# For the scripts that run tests in network namespaces (netfaults-figures.sh,
# concurrency-bench.sh): exits 1 unless run as root, and exports
# IDSYNC_SCIM2_SERVER (the test environment's, under ROOT, unless set),
# exiting 1 when it is not there.
netns_test_env() {
    local root="$1"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: network namespaces need root" >&2
        exit 1
    fi
    export IDSYNC_SCIM2_SERVER="${IDSYNC_SCIM2_SERVER:-$root/.test-env/venv/bin/scim2-server}"
    if [ ! -x "$IDSYNC_SCIM2_SERVER" ]; then
        echo "error: scim2-server not found at $IDSYNC_SCIM2_SERVER (run scripts/test-env.sh)" >&2
        exit 1
    fi
}

# Runs the release netfaults tests FILTER (one at a time, with LIBTEST_ARGS
# such as --ignored) after a header line naming the date, machine, commit,
# cores and load; prints the output's lines matching the extended regex
# PATTERN, or all of it (and exits 1) when a test fails. Call after
# netns_test_env, from the project's root.
#   netfaults_figures PATTERN FILTER [LIBTEST_ARGS...]
netfaults_figures() {
    local pattern="$1" filter="$2" log
    shift 2
    echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -n) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'): $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    log="$(mktemp)"
    if ! cargo test --release --test netfaults "$filter" -- "$@" --test-threads=1 --nocapture >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    grep -oE "$pattern" "$log"
    rm -f "$log"
}
