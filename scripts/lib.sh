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
