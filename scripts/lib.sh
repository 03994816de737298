# Shared by the project's server scripts (sourced, not run).

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
