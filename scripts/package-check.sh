#!/usr/bin/env bash
# Builds the Debian package (`cargo deb`: a release build) and checks it:
#   - every path, mode and owner in it (`dpkg-deb -c`), the conffiles
#     (`dpkg-deb -e`), a stripped binary with its debug info in idsync-dbgsym;
#   - the packaged binary, run from a throwaway root (`dpkg-deb -x`):
#     `--version`, `version --format json`, the README's quickstart `plan`
#     against the packaged mappings, and the packaged config (refused, naming
#     its CHANGE-ME lines, until filled in; valid once filled in);
#   - `systemd-analyze verify --root` on the packaged units, warnings included;
#   - every man page rendered with `man --warnings` (any warning fails);
#   - every completion script loaded by its shell (zsh and fish when installed);
#   - as root, and unless IDSYNC_PACKAGE_INSTALL=0: a real `dpkg -i`, the files
#     landed, nothing enabled, `man idsync`, the config readable by the service
#     user, an edited conffile kept on reinstall, then `dpkg --purge` and
#     nothing left but the `idsync` system user.
# Every check runs; each failure is named, and the script exits 1 if any failed.
#
#   bash scripts/package-check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

failures=()
say() { printf 'package-check: %s\n' "$*" >&2; }
ok() { say "ok: $*"; }
fail() {
    say "FAIL: $*"
    failures+=("$*")
}
finish() {
    if [ "${#failures[@]}" -eq 0 ]; then
        say "all checks passed"
        exit 0
    fi
    say "${#failures[@]} check(s) failed:"
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
}

for tool in cargo-deb dpkg-deb man python3 systemd-analyze readelf; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "error: $tool is not installed; run bash scripts/test-env.sh (it installs cargo-deb, man-db, systemd, zsh and fish)"
        exit 1
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/idsync-package-check.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# --- build --------------------------------------------------------------------
rm -f target/debian/idsync_*.deb target/debian/idsync-dbgsym_*.ddeb
started=$(date +%s)
if ! cargo deb >"$WORK/cargo-deb.log" 2>&1; then
    cat "$WORK/cargo-deb.log" >&2
    say "error: cargo deb failed (its output is above)"
    exit 1
fi
say "cargo deb (release build + packaging): $(($(date +%s) - started)) s"
DEB="$(ls target/debian/idsync_*.deb)"
DBGSYM="$(ls target/debian/idsync-dbgsym_*.ddeb 2>/dev/null || true)"
say "package: $DEB ($(stat -c %s "$DEB") bytes)"

# --- contents: paths, modes, owners, conffiles --------------------------------
dpkg-deb -c "$DEB" >"$WORK/contents"
# `PERMS OWNER/GROUP SIZE DATE TIME ./PATH` -> `PATH PERMS OWNER`
awk '{ sub(/^\.\//, "/", $6); print $6, $1, $2 }' "$WORK/contents" >"$WORK/listing"

expect() { # PATH PERMS
    local line
    line="$(awk -v p="$1" '$1 == p' "$WORK/listing")"
    if [ -z "$line" ]; then
        fail "$1 is not in the package"
    elif [ "$line" != "$1 $2 0/0" ]; then
        fail "$1: expected $2 0/0 (root), the package has: ${line#* }"
    fi
}
expect /usr/bin/idsync -rwxr-xr-x
expect /etc/idsync/config.yaml -rw-r-----
for unit in idsync.service idsync.timer idsync@.service idsync@.timer idsync-daemon.service; do
    expect "/lib/systemd/system/$unit" -rw-r--r--
    if ! cmp -s "examples/systemd/$unit" <(dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - "./lib/systemd/system/$unit"); then
        fail "/lib/systemd/system/$unit differs from examples/systemd/$unit (the package must ship the examples as they are)"
    fi
done
for mapping in mappings/*.yaml; do
    expect "/usr/share/idsync/$mapping" -rw-r--r--
done
pages=0
for page in target/release/man/*.1; do
    expect "/usr/share/man/man1/$(basename "$page").gz" -rw-r--r--
    pages=$((pages + 1))
done
for page in idsync idsync-sync idsync-plan idsync-state idsync-state-check idsync-version; do
    [ -f "target/release/man/$page.1" ] || fail "build.rs wrote no $page(1)"
done
expect /usr/share/bash-completion/completions/idsync -rw-r--r--
expect /usr/share/zsh/vendor-completions/_idsync -rw-r--r--
expect /usr/share/fish/vendor_completions.d/idsync.fish -rw-r--r--
expect /usr/share/doc/idsync/copyright -rw-r--r--
expect /usr/share/doc/idsync/README.md -rw-r--r--
if awk '$3 != "0/0"' "$WORK/listing" | grep -q .; then
    fail "files not owned by root: $(awk '$3 != "0/0" { print $1 }' "$WORK/listing" | tr '\n' ' ')"
fi
dpkg-deb -e "$DEB" "$WORK/control"
if [ "$(cat "$WORK/control/conffiles" 2>/dev/null)" != "/etc/idsync/config.yaml" ]; then
    fail "conffiles should list exactly /etc/idsync/config.yaml; it has: $(cat "$WORK/control/conffiles" 2>/dev/null || echo nothing)"
fi
ok "contents: $(wc -l <"$WORK/listing") entries, $pages man pages, conffiles"

# --- the binary ---------------------------------------------------------------
dpkg-deb -x "$DEB" "$WORK/root"
BIN="$WORK/root/usr/bin/idsync"
# Stripped: no symbol table or DWARF left (.debug_gdb_scripts is loaded
# code, not debug info), and a .gnu_debuglink to the idsync-dbgsym file.
sections="$(readelf -S -W "$BIN")"
if grep -qE '\.symtab|\.debug_(info|line|str|abbrev|aranges|ranges|loc)' <<<"$sections"; then
    fail "/usr/bin/idsync is not stripped: $(grep -oE '\.symtab|\.debug_[a-z_]+' <<<"$sections" | tr '\n' ' ')"
fi
grep -q '\.gnu_debuglink' <<<"$sections" || fail "/usr/bin/idsync has no .gnu_debuglink to its debug info"
say "binary: $(stat -c %s "$BIN") bytes packaged (stripped), $(stat -c %s target/release/idsync) bytes in target/release (debug = \"line-tables-only\")"
if [ -z "$DBGSYM" ] || ! dpkg-deb -c "$DBGSYM" | grep -q '/usr/lib/debug/.build-id/.*\.debug$'; then
    fail "no idsync-dbgsym package with /usr/lib/debug/.build-id/*.debug"
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
long="$("$BIN" --version 2>&1)" || fail "idsync --version exited non-zero: $long"
case "$long" in
    "idsync $version (commit "*")"*features:*source-ldap*) ok "--version: ${long%%$'\n'*}" ;;
    *) fail "idsync --version should say 'idsync $version (commit …)' and the features; it said: $long" ;;
esac
if ! "$BIN" version --format json | python3 -c '
import json, sys
v = json.load(sys.stdin)
missing = [k for k in ("name", "version", "commit", "features", "target", "rustc", "sqlite") if k not in v]
assert not missing, f"missing fields {missing}: {v}"
assert v["version"] == sys.argv[1], v
assert "source-csv" in v["features"], v
' "$version"; then
    fail "idsync version --format json: not one JSON object with name, version, commit, features, target, rustc, sqlite"
fi

# The README's quickstart, against the packaged mappings.
mkdir -p "$WORK/quickstart"
cp -r examples/data "$WORK/quickstart/"
sed -e "s#^mapping: .*#mapping: $WORK/root/usr/share/idsync/mappings/csv.yaml#" \
    -e "s#^state: .*#state: $WORK/quickstart/state.db#" \
    examples/quickstart.yaml >"$WORK/quickstart/quickstart.yaml"
if "$BIN" plan -c "$WORK/quickstart/quickstart.yaml" >"$WORK/plan.txt" 2>"$WORK/plan.err" &&
    grep -Eq "^Plan: users [1-9][0-9]* to create" "$WORK/plan.txt"; then
    ok "quickstart plan with the packaged mappings: $(head -1 "$WORK/plan.txt")"
else
    fail "the quickstart plan against the packaged mappings: $(cat "$WORK/plan.err" "$WORK/plan.txt" | head -20)"
fi

# The packaged config: refused until filled in, naming each CHANGE-ME line...
CONFIG="$WORK/root/etc/idsync/config.yaml"
set +e
"$BIN" validate -c "$CONFIG" >"$WORK/unfilled.out" 2>&1
code=$?
set -e
if [ "$code" -eq 2 ] && grep -q "CHANGE-ME placeholder" "$WORK/unfilled.out" &&
    grep -q "line [0-9]*: base_url:" "$WORK/unfilled.out"; then
    ok "the unfilled packaged config is refused (exit 2), naming its CHANGE-ME lines"
else
    fail "validate on the unfilled packaged config: expected exit 2 naming the CHANGE-ME lines, got exit $code: $(cat "$WORK/unfilled.out")"
fi
# ...and valid with only those values given.
sed -e "s#/CHANGE-ME/#$ROOT/examples/data/#" -e "s#directory/CHANGE-ME#directory/0123-abcd#" \
    -e "s#CHANGE-ME.example.com#example.com#" \
    -e "s#/usr/share/idsync/mappings/#$WORK/root/usr/share/idsync/mappings/#" \
    -e "s#/var/lib/idsync/#$WORK/#" "$CONFIG" >"$WORK/filled.yaml"
if CREDENTIALS_DIRECTORY="$WORK" "$BIN" validate -c "$WORK/filled.yaml" >"$WORK/filled.out" 2>&1; then
    ok "the packaged config with its CHANGE-ME values filled in is valid"
else
    fail "the packaged config with its CHANGE-ME values filled in: $(cat "$WORK/filled.out")"
fi

# --- systemd units ------------------------------------------------------------
# `--root` resolves ExecStart=/usr/bin/idsync in the unpacked root; systemd's
# own units (sysinit.target, ...) are copied in beside ours for the
# dependencies to resolve. Templates are verified as an instance.
units="$WORK/root/lib/systemd/system"
cp -an /lib/systemd/system/. "$units/" 2>/dev/null || true
cp "$units/idsync@.service" "$units/idsync@corp.service"
cp "$units/idsync@.timer" "$units/idsync@corp.timer"
set +e
SYSTEMD_LOG_COLOR=0 SYSTEMD_PAGER='' systemd-analyze verify --man=no --root="$WORK/root" \
    /lib/systemd/system/idsync.service /lib/systemd/system/idsync.timer \
    /lib/systemd/system/idsync@corp.service /lib/systemd/system/idsync@corp.timer \
    /lib/systemd/system/idsync-daemon.service >"$WORK/verify.out" 2>&1
code=$?
set -e
if [ "$code" -ne 0 ] || grep -q idsync "$WORK/verify.out"; then
    fail "systemd-analyze verify on the packaged units (exit $code): $(cat "$WORK/verify.out")"
else
    ok "systemd-analyze verify --root: 5 units, no warnings"
fi

# --- man pages ----------------------------------------------------------------
for page in "$WORK"/root/usr/share/man/man1/*.1.gz; do
    warnings="$(MANWIDTH=80 man --warnings=w -l "$page" 2>&1 >/dev/null || echo "man exited non-zero")"
    if [ -n "$warnings" ]; then
        fail "man $(basename "$page"): $warnings"
    fi
done
if ! MANWIDTH=80 man -l "$WORK/root/usr/share/man/man1/idsync.1.gz" 2>/dev/null | grep -q "EXIT STATUS"; then
    fail "idsync(1) has no EXIT STATUS section"
fi
ok "man: $pages pages rendered without warnings"

# --- completions --------------------------------------------------------------
completions="$WORK/root/usr/share"
if out="$(bash -c 'source "$1" && complete -p idsync' _ "$completions/bash-completion/completions/idsync" 2>&1)"; then
    ok "bash completion loads: $out"
else
    fail "bash completion: $out"
fi
if command -v zsh >/dev/null 2>&1; then
    if out="$(zsh -n "$completions/zsh/vendor-completions/_idsync" 2>&1)"; then
        ok "zsh -n _idsync"
    else
        fail "zsh -n _idsync: $out"
    fi
else
    say "skipped: zsh is not installed (scripts/test-env.sh installs it)"
fi
if command -v fish >/dev/null 2>&1; then
    if out="$(fish -n "$completions/fish/vendor_completions.d/idsync.fish" 2>&1)" &&
        out="$(fish -c "source $completions/fish/vendor_completions.d/idsync.fish; complete -C 'idsync state '" 2>&1)" &&
        grep -q "forget-notes" <<<"$out"; then
        ok "fish completion loads and completes 'idsync state ' with forget-notes"
    else
        fail "fish completion: $out"
    fi
else
    say "skipped: fish is not installed (scripts/test-env.sh installs it)"
fi

# --- a real install (root only) -----------------------------------------------
if [ "$(id -u)" -ne 0 ] || [ "${IDSYNC_PACKAGE_INSTALL:-1}" = "0" ]; then
    say "skipped: the real install (needs root; IDSYNC_PACKAGE_INSTALL=0 turns it off)"
    finish
fi
if dpkg-query -W -f='${Status}' idsync 2>/dev/null | grep -q 'installed'; then
    say "skipped: the real install: an idsync package is already installed here, and this check would remove it"
    finish
fi
bash "$ROOT/scripts/package-install-check.sh" "$DEB" || fail "the real install (see the lines above)"
finish
