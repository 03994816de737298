#!/usr/bin/env bash
# A real install of the Debian package, as root (scripts/package-check.sh runs
# it): `dpkg -i`, the files landed with their owners and modes, the idsync
# user exists and can read the config, no unit is enabled or started, `man
# idsync` finds the page, an edited conffile survives a reinstall; then
# `dpkg --purge` and nothing is left but the idsync system user and group
# (Debian removes no system user). Exits 1 naming what failed; the package is
# purged whatever happened.
#
#   bash scripts/package-install-check.sh target/debian/idsync_*.deb
set -euo pipefail

DEB="$1"
failures=0
say() { printf 'package-install-check: %s\n' "$*" >&2; }
fail() {
    say "FAIL: $*"
    failures=$((failures + 1))
}

# Before the install: what an earlier run or the administrator made, which the
# purge check below must not blame on the package.
enabled_links() {
    find /etc/systemd/system -name 'idsync*' 2>/dev/null | sort
}
links_before="$(enabled_links)"

purge() { dpkg --purge idsync >/dev/null 2>&1 || true; }
trap purge EXIT

log="$(mktemp)"
if ! dpkg -i "$DEB" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    fail "dpkg -i $DEB failed (output above)"
    exit 1
fi
rm -f "$log"

for path in /usr/bin/idsync /etc/idsync/config.yaml /lib/systemd/system/idsync.service \
    /lib/systemd/system/idsync.timer /lib/systemd/system/idsync@.service \
    /lib/systemd/system/idsync@.timer /lib/systemd/system/idsync-daemon.service \
    /usr/share/idsync/mappings/csv.yaml /usr/share/man/man1/idsync.1.gz \
    /usr/share/man/man1/idsync-state-check.1.gz \
    /usr/share/bash-completion/completions/idsync /usr/share/zsh/vendor-completions/_idsync \
    /usr/share/fish/vendor_completions.d/idsync.fish /usr/share/doc/idsync/copyright; do
    [ -e "$path" ] || fail "$path did not land"
done
getent passwd idsync >/dev/null || fail "postinst created no idsync user"
owner="$(stat -c '%U:%G %a' /etc/idsync/config.yaml)"
[ "$owner" = "root:idsync 640" ] || fail "/etc/idsync/config.yaml is $owner, expected root:idsync 640"
# The service user reads the config: it gets as far as the CHANGE-ME check.
set +e
out="$(setpriv --reuid=idsync --regid=idsync --clear-groups /usr/bin/idsync validate -c /etc/idsync/config.yaml 2>&1)"
set -e
grep -q "CHANGE-ME placeholder" <<<"$out" || fail "the idsync user cannot read the config: $out"
[ "$(enabled_links)" = "$links_before" ] || fail "the install enabled units: $(enabled_links)"
if [ -d /run/systemd/system ]; then
    for unit in idsync.timer idsync.service idsync-daemon.service; do
        ! systemctl is-active --quiet "$unit" || fail "$unit was started on install"
    done
fi
MANWIDTH=80 man idsync 2>/dev/null | grep -q "EXIT STATUS" || fail "man idsync does not show the page"
MANWIDTH=80 man idsync-state-check 2>/dev/null | grep -q "idsync-state-check" ||
    fail "man idsync-state-check does not show the page"
/usr/bin/idsync version >/dev/null || fail "the installed idsync version failed"

# An administrator's edit survives a reinstall (a conffile).
echo "# edited by package-install-check" >>/etc/idsync/config.yaml
dpkg -i --force-confold "$DEB" >/dev/null 2>&1 || fail "the reinstall failed"
grep -q "edited by package-install-check" /etc/idsync/config.yaml || fail "a reinstall replaced the edited /etc/idsync/config.yaml"
[ "$(stat -c '%U:%G %a' /etc/idsync/config.yaml)" = "root:idsync 640" ] ||
    fail "after a reinstall the config is $(stat -c '%U:%G %a' /etc/idsync/config.yaml)"

# State the units would have made, which a purge removes.
install -d -o idsync -g idsync -m 700 /var/lib/idsync
touch /var/lib/idsync/idsync.db
dpkg --purge idsync >/dev/null 2>&1 || fail "dpkg --purge idsync failed"
trap - EXIT
for path in /usr/bin/idsync /etc/idsync /usr/share/idsync /var/lib/idsync /usr/share/doc/idsync \
    /usr/share/man/man1/idsync.1.gz /usr/share/bash-completion/completions/idsync \
    /usr/share/zsh/vendor-completions/_idsync /usr/share/fish/vendor_completions.d/idsync.fish \
    /lib/systemd/system/idsync.service /lib/systemd/system/idsync@.service \
    /lib/systemd/system/idsync.timer /lib/systemd/system/idsync-daemon.service; do
    [ ! -e "$path" ] || fail "$path is left after the purge"
done
if dpkg-query -W idsync >/dev/null 2>&1; then
    fail "dpkg still lists idsync after the purge"
fi
getent passwd idsync >/dev/null && say "kept after the purge, as Debian does: the idsync system user and group"

if [ "$failures" -gt 0 ]; then
    exit 1
fi
say "ok: install, files, user, nothing enabled, man idsync, conffile kept, purge"
