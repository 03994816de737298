#!/usr/bin/env bash
# Idempotent set-up of everything idsync's tests need on a fresh Debian machine:
#   - Debian packages: slapd + ldap-utils (LDAP e2e tests), openssl (a throwaway CA for the
#     LDAPS tests), ca-certificates (rustls reads the system store), wrk (benchmarks),
#     systemd (its `systemd-analyze verify` checks examples/systemd/; nothing is started,
#     and it works in a container without systemd as PID 1), chromium (the HTML report
#     is opened headless in a test), samba (a throw-away Active Directory DC for
#     tests/ad), iproute2 and iptables (tests/netfaults: network namespaces, veth
#     pairs, iptables rules inside them; the nft or legacy backend, whichever
#     the kernel has)
#   - a Python venv at .test-env/venv with scim2-server (SCIM e2e tests),
#     aiosmtpd (the mail server the alert e2e tests send to) and
#     kubernetes-validate (scripts/kube-check.sh)
#   - cargo-fuzz (the fuzz smoke run in scripts/test.sh; skipped without it)
# The packaged slapd service is never left running: tests start their own slapd
# on a loopback port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="$ROOT/.test-env"
VENV="$ENV_DIR/venv"
SCIM2_SERVER_VERSION="0.8.3"
AIOSMTPD_VERSION="1.4.6"

log() { printf 'test-env: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            log "$pkg: already installed"
        else
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --- slapd / ldap-utils --------------------------------------------------------
install_slapd() {
    if dpkg-query -W -f='${Status}' slapd 2>/dev/null | grep -q 'install ok installed' &&
        dpkg-query -W -f='${Status}' ldap-utils 2>/dev/null | grep -q 'install ok installed'; then
        log "slapd, ldap-utils: already installed"
        return 0
    fi
    # Keep the package's postinst from starting the packaged instance: a
    # policy-rc.d that answers 101 ("action forbidden") for the duration of the
    # install. Only when none exists already, and removed afterwards.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    apt_install slapd ldap-utils || rc=$?
    if [ "$made_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || return "$rc"
}

stop_packaged_slapd() {
    # If the packaged service runs anyway, stop it (by its own pid file).
    local pidfile pid
    for pidfile in /run/slapd/slapd.pid /var/run/slapd/slapd.pid; do
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "stopping the packaged slapd service (pid $pid)"
            if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet slapd 2>/dev/null; then
                as_root systemctl stop slapd || as_root kill "$pid" || true
                as_root systemctl disable slapd >/dev/null 2>&1 || true
            else
                as_root kill "$pid" || true
            fi
        fi
    done
}

install_slapd
stop_packaged_slapd
apt_install wrk openssl ca-certificates systemd chromium iproute2 iptables
# The container image check (scripts/container-check.sh): buildah builds, podman
# runs with runc, debootstrap makes the local Debian base; no daemon.
apt_install buildah podman runc debootstrap

# --- samba (the Active Directory tests) ----------------------------------------
# tests/ad runs its own Samba AD DC (scripts/samba-ad.sh) from a folder of its own;
# the packaged services must not start (they would take ports 389/636 and read
# /etc/samba): the same policy-rc.d guard as for slapd.
install_samba() {
    # Provisioning reads the AD schema files and sets ACLs through the
    # acl_xattr VFS module: on Debian 12 and later both are in packages of
    # their own (samba-ad-provision, samba-vfs-modules) that samba only
    # recommends.
    local schema=/usr/share/samba/setup/ad-schema
    local vfs=(/usr/lib/*/samba/vfs/acl_xattr.so)
    if command -v samba-tool >/dev/null 2>&1 && [ -x /usr/sbin/samba ] && [ -d "$schema" ] && [ -e "${vfs[0]}" ]; then
        log "samba: already installed"
        return 0
    fi
    local extra=()
    local pkg
    for pkg in samba-ad-provision samba-vfs-modules; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then
            extra+=("$pkg")
        fi
    done
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    # samba-tool needs python3-samba; the AD DC's LDB modules are in samba-dsdb-modules.
    apt_install samba samba-dsdb-modules python3-samba "${extra[@]}" || rc=$?
    if [ "$made_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || return "$rc"
}
install_samba

# --- Python venv with scim2-server -------------------------------------------
python_bin=""
for cand in python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        python_bin="$cand"
        break
    fi
done
if [ -z "$python_bin" ]; then
    apt_install python3 python3-venv
    python_bin=/usr/bin/python3
fi

mkdir -p "$ENV_DIR"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv $VENV (with $("$python_bin" --version 2>&1))"
    rm -rf "$VENV"
    "$python_bin" -m venv "$VENV"
else
    log "venv $VENV: exists"
fi

installed_version="$("$VENV/bin/python" -m pip show scim2-server 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed_version" = "$SCIM2_SERVER_VERSION" ] && [ -x "$VENV/bin/scim2-server" ]; then
    log "scim2-server $SCIM2_SERVER_VERSION: already installed"
else
    log "installing scim2-server==$SCIM2_SERVER_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "scim2-server==$SCIM2_SERVER_VERSION"
fi

installed_version="$("$VENV/bin/python" -m pip show aiosmtpd 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed_version" = "$AIOSMTPD_VERSION" ]; then
    log "aiosmtpd $AIOSMTPD_VERSION: already installed"
else
    log "installing aiosmtpd==$AIOSMTPD_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION"
fi

# kubernetes-validate (scripts/kube-check.sh): the Kubernetes schemas ship in
# its wheel, so the manifests are validated offline.
KUBERNETES_VALIDATE_VERSION="1.37.0"
installed_version="$("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed_version" = "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION: already installed"
else
    log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# --- cargo-fuzz (scripts/fuzz-smoke.sh, scripts/fuzz.sh) --------------------
# Best effort: without it the fuzz smoke run is skipped (and says so), so a
# failed install must not fail the set-up.
if command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo-fuzz: already installed"
else
    log "installing cargo-fuzz (cargo install --locked)"
    cargo install cargo-fuzz --locked --quiet || log "cargo-fuzz: install failed; fuzzing will be skipped"
fi

log "ready: IDSYNC_SCIM2_SERVER=$VENV/bin/scim2-server; aiosmtpd in $VENV; slapd=$(command -v slapd || echo /usr/sbin/slapd); wrk=$(command -v wrk); chromium=$(command -v chromium)"
