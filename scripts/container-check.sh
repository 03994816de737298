#!/usr/bin/env bash
# Builds the image of Containerfile on this machine without a daemon (buildah,
# vfs storage, as root) and checks it by running it (podman with runc), all
# with the network off and nothing pulled from a registry:
#   - the runtime base is a Debian 12 minbase made here with debootstrap from
#     the Debian mirror (cached in target/container-check/ between runs), the
#     binary the host's `cargo build --release --locked` (BINARY_FROM=prebuilt);
#   - the image's user, entrypoint, default command, volume, working folder,
#     labels (the version is Cargo.toml's);
#   - `idsync --version` and the quickstart's `plan` inside the image (the
#     examples it ships) print what the host binary prints;
#   - a real sync as the image runs in production: config mounted read-only,
#     the token as a file, the state on a volume, a read-only root filesystem
#     with no writable /tmp, into a real scim2-server on 127.0.0.1; then
#     `plan` says "No changes.", the default command (the daemon) runs a cycle,
#     answers on /healthz and /readyz, exits 0 on SIGTERM, and the token
#     appears in no output;
#   - nothing baked in beyond the binary, the mappings and the examples: every
#     file the image adds to its base is listed and must be expected; the
#     build context holds no .git, .test-env, build output or state.
# Prints `container-check: SKIPPED: <reason>` and exits 0 where the tools
# cannot run here (not root, not installed, no namespaces); fails on anything
# else. The builder stage (rust image from a registry) is not built here.
#   bash scripts/container-check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${IDSYNC_CONTAINER_WORK:-$ROOT/target/container-check}"
MIRROR="${IDSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=localhost/idsync-check-base:bookworm
IMAGE=localhost/idsync:check
TOKEN="container-check-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
started=$SECONDS

log() { printf 'container-check: %s\n' "$*" >&2; }
skip() {
    printf 'container-check: SKIPPED: %s\n' "$*"
    exit 0
}
keep_scratch=0
fail() {
    printf 'container-check: FAILED: %s\n' "$*" >&2
    keep_scratch=1
    exit 1
}

# --- can the tools run here? -------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "not root (the check uses buildah's and podman's vfs storage as root; rootless needs subuid ranges it does not set up)"
for tool in buildah podman runc debootstrap python3 strip readelf; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (scripts/test-env.sh installs it)"
done

mkdir -p "$WORK"
exec 9>"$WORK/lock"
flock -w 600 9 || fail "another container check holds $WORK/lock"

STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
bah() { buildah "${STORE[@]}" "$@"; }
# runc, not crun: crun refuses cgroups in hybrid mode. Lower limits than
# podman's defaults: raising them needs CAP_SYS_RESOURCE, which root may lack.
pod() {
    podman "${STORE[@]}" --cgroup-manager cgroupfs --events-backend file \
        --tmpdir "$WORK/podman-tmp" --runtime runc "$@"
}
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
RUN=(run --rm "${LIMITS[@]}")

SCRATCH="$(mktemp -d "$WORK/scratch.XXXXXX")"
scim_port=""
scim_pid=""
cleanup() {
    if [ -n "$scim_pid" ]; then
        kill "$scim_pid" 2>/dev/null || true
        wait "$scim_pid" 2>/dev/null || true
    fi
    pod rm -f idsync-check-daemon >/dev/null 2>&1 || true
    bah rm --all >/dev/null 2>&1 || true
    pod rmi -f "$IMAGE" >/dev/null 2>&1 || true
    # The prebuilt stage's image, left untagged by the build.
    pod image prune -f >/dev/null 2>&1 || true
    if [ "$keep_scratch" -eq 1 ]; then
        log "logs and files of this run kept in $SCRATCH"
    else
        rm -rf "$SCRATCH"
    fi
}
trap cleanup EXIT

probe="$(bah from scratch 2>&1)" || skip "buildah cannot create a container here: ${probe##*$'\n'}"
bah rm "$probe" >/dev/null

# --- the runtime base: Debian 12 minbase with CA certificates ----------------
make_base_tar() {
    local rootfs="$SCRATCH/rootfs" t0=$SECONDS
    log "debootstrap --variant=minbase bookworm from $MIRROR"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" \
        >"$SCRATCH/debootstrap.log" 2>&1 || {
        tail -n 20 "$SCRATCH/debootstrap.log" >&2
        fail "debootstrap bookworm from $MIRROR failed (set IDSYNC_DEBIAN_MIRROR to a reachable mirror)"
    }
    # What debian:bookworm-slim leaves out too: downloaded packages, package
    # lists, documentation, manuals, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/usr/share/info/*
    tar -C "$rootfs" --numeric-owner -cf "$WORK/bookworm-minbase.tar.tmp" .
    mv "$WORK/bookworm-minbase.tar.tmp" "$WORK/bookworm-minbase.tar"
    rm -rf "$rootfs"
    log "base made in $((SECONDS - t0)) s ($(du -h "$WORK/bookworm-minbase.tar" | cut -f1))"
}
if ! pod image exists "$BASE"; then
    [ -s "$WORK/bookworm-minbase.tar" ] || make_base_tar
    pod import "$WORK/bookworm-minbase.tar" "$BASE" >"$SCRATCH/import.log" 2>&1 ||
        fail "podman import of the base: $(tail -n 5 "$SCRATCH/import.log")"
fi
probe="$(pod "${RUN[@]}" --network none "$BASE" true 2>&1)" ||
    skip "podman cannot run a container here: ${probe##*$'\n'}"

# --- the binary and the image ------------------------------------------------
t0=$SECONDS
(cd "$ROOT" && cargo build --release --locked --quiet)
log "cargo build --release: $((SECONDS - t0)) s"
HOST_BIN="$ROOT/target/release/idsync"

# The image is built from what the prebuilt stage copies, with the binary
# stripped as the README says to do first (the release profile keeps line
# tables: five times the size); the repository's own context is checked
# below (check_context).
CONTEXT="$SCRATCH/context"
mkdir -p "$CONTEXT/target/release"
cp -a "$ROOT/Containerfile" "$ROOT/.containerignore" "$ROOT/.dockerignore" \
    "$ROOT/mappings" "$ROOT/examples" "$CONTEXT/"
strip -o "$CONTEXT/target/release/idsync" "$HOST_BIN"
IMAGE_BIN="$CONTEXT/target/release/idsync"

t0=$SECONDS
revision="$(git -C "$ROOT" rev-parse HEAD)"
bah bud --isolation oci --runtime runc --network none --pull=never --layers=false \
    -f "$CONTEXT/Containerfile" --build-arg BINARY_FROM=prebuilt --build-arg RUNTIME_IMAGE="$BASE" \
    --build-arg IDSYNC_REVISION="$revision" -t "$IMAGE" "$CONTEXT" >"$SCRATCH/build.log" 2>&1 || {
    tail -n 30 "$SCRATCH/build.log" >&2
    fail "buildah bud -f Containerfile failed"
}
grep -q 'cargo build' "$SCRATCH/build.log" && fail "the build stage ran although BINARY_FROM=prebuilt (see $SCRATCH/build.log)"
log "image built in $((SECONDS - t0)) s; size $(pod image inspect --format '{{.Size}}' "$IMAGE") bytes (base $(pod image inspect --format '{{.Size}}' "$BASE"))"

# What the build context holds: everything .containerignore lets through is
# listed from inside a throw-away build of the same context.
check_context() {
    printf 'FROM %s\nCOPY . /ctx\nRUN find /ctx\n' "$BASE" >"$SCRATCH/context.containerfile"
    bah bud --isolation oci --runtime runc --network none --pull=never --layers=false \
        -f "$SCRATCH/context.containerfile" -t localhost/idsync-check-context "$ROOT" >"$SCRATCH/context.log" 2>&1 ||
        fail "listing the build context failed: $(tail -n 5 "$SCRATCH/context.log")"
    pod rmi -f localhost/idsync-check-context >/dev/null
    grep -q '^/ctx/Containerfile$' "$SCRATCH/context.log" || fail "the context listing is empty (see $SCRATCH/context.log)"
    local leaked
    leaked="$(grep -E '^/ctx/(\.git|\.test-env|fuzz/target|fuzz/artifacts|target)(/|$)|\.db(-wal|-shm|\.lock)?$' "$SCRATCH/context.log" |
        grep -v -x -E '/ctx/target(/release(/idsync)?)?' | head -n 10 || true)"
    [ -z "$leaked" ] || fail "the build context holds what .containerignore should keep out: $leaked"
}

# --- the image's configuration ------------------------------------------------
check_context
cmp -s "$ROOT/.containerignore" "$ROOT/.dockerignore" || fail ".containerignore and .dockerignore differ (docker reads only the latter): keep them the same"
cargo_field() { sed -n "s/^$1 = \"\\(.*\\)\"$/\\1/p" "$ROOT/Cargo.toml" | head -n 1; }
pod image inspect "$IMAGE" >"$SCRATCH/inspect.json"
python3 - "$SCRATCH/inspect.json" "$(cargo_field version)" "$(cargo_field license)" "$revision" <<'PY' || fail "the image's configuration is not as documented (README: Container image)"
import json, sys
config = json.load(open(sys.argv[1]))[0]["Config"]
version, license, revision = sys.argv[2:5]
labels = config.get("Labels") or {}
want = {
    "User": "10001:10001",
    "Entrypoint": ["idsync"],
    "Cmd": ["daemon"],
    "WorkingDir": "/var/lib/idsync",
    "Volumes": {"/var/lib/idsync": {}},
    "ExposedPorts": {"9184/tcp": {}},
}
bad = [f"{k}: {config.get(k)!r}, want {v!r}" for k, v in want.items() if config.get(k) != v]
if "IDSYNC_CONFIG=/etc/idsync/config.yaml" not in config.get("Env", []):
    bad.append(f"Env {config.get('Env')} lacks IDSYNC_CONFIG=/etc/idsync/config.yaml")
for key, value in [("version", version), ("licenses", license), ("revision", revision)]:
    got = labels.get(f"org.opencontainers.image.{key}")
    if got != value:
        bad.append(f"label org.opencontainers.image.{key}: {got!r}, want {value!r} (Containerfile's ARG default vs Cargo.toml)")
for line in bad:
    print("container-check:", line, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# --- what the image holds ------------------------------------------------------
bah from --pull-never --name idsync-check-files "$IMAGE" >/dev/null
bah from --pull-never --name idsync-check-base "$BASE" >/dev/null
python3 - "$(bah mount idsync-check-base)" "$(bah mount idsync-check-files)" "$ROOT" "$IMAGE_BIN" <<'PY' || fail "the image holds files it should not (above)"
import filecmp, os, re, stat, subprocess, sys
base, image, repo, binary = sys.argv[1:5]

def tree(top):
    """Every path under top but /dev (device nodes, which image commits drop)."""
    out = {}
    for folder, dirs, files in os.walk(top):
        if folder == top:
            dirs[:] = [d for d in dirs if d != "dev"]
        for name in dirs + files:
            path = os.path.join(folder, name)
            out["/" + os.path.relpath(path, top)] = os.lstat(path)
    return out

before, after = tree(base), tree(image)
# The user's entries and their backups; the binary, the mappings and the
# examples; the empty config and state folders.
accounts = {f"/etc/{n}{s}" for n in ("passwd", "group", "shadow", "gshadow") for s in ("", "-")}
shipped = ("/usr/share/idsync/mappings/", "/usr/share/idsync/examples/")
folders = ("/etc/idsync", "/var/lib/idsync", "/usr/share/idsync", "/usr/share/idsync/mappings",
           "/usr/share/idsync/examples")
bad = []
for path, st in sorted(after.items()):
    old = before.get(path)
    if old is None or stat.S_IFMT(old.st_mode) != stat.S_IFMT(st.st_mode):
        same = False
    elif stat.S_ISLNK(st.st_mode):
        same = os.readlink(base + path) == os.readlink(image + path)
    else:
        same = stat.S_ISDIR(st.st_mode) or (
            old.st_size == st.st_size and filecmp.cmp(base + path, image + path, shallow=False))
    if same or path in accounts or path in folders or path == "/usr/local/bin/idsync":
        continue
    if path.startswith(shipped):
        continue
    bad.append(f"added or changed: {path}")
for folder in ("/etc/idsync", "/var/lib/idsync"):
    if os.listdir(image + folder):
        bad.append(f"{folder} is not empty: {sorted(os.listdir(image + folder))}")
state = after["/var/lib/idsync"]
if (state.st_uid, state.st_gid, stat.S_IMODE(state.st_mode)) != (10001, 10001, 0o700):
    bad.append(f"/var/lib/idsync: uid {state.st_uid} gid {state.st_gid} mode {stat.S_IMODE(state.st_mode):o}, want 10001 10001 700")
# The shipped files are the repository's, byte for byte, and nothing else.
for sub, src in (("mappings", "mappings"), ("examples", "examples")):
    for folder, _, files in os.walk(os.path.join(image, "usr/share/idsync", sub)):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.join(image, "usr/share/idsync", sub))
            theirs = os.path.join(repo, src, rel)
            if not os.path.isfile(theirs) or not filecmp.cmp(path, theirs, shallow=False):
                bad.append(f"/usr/share/idsync/{sub}/{rel} is not {src}/{rel}")
if not filecmp.cmp(image + "/usr/local/bin/idsync", binary, shallow=False):
    bad.append(f"/usr/local/bin/idsync is not {binary}")
sections = subprocess.run(["readelf", "-S", "-W", image + "/usr/local/bin/idsync"],
                          capture_output=True, text=True, check=True).stdout
# .debug_gdb_scripts is loaded code, not debug info: kept by strip.
debug = sorted(set(re.findall(r"\.symtab|\.debug_(?:info|line|str|abbrev|aranges|ranges|loc)\b", sections)))
if debug:
    bad.append(f"/usr/local/bin/idsync is not stripped: {' '.join(debug)}")
for line in bad:
    print("container-check:", line, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
bah umount idsync-check-files idsync-check-base >/dev/null
bah rm idsync-check-files idsync-check-base >/dev/null

# scim2-server on a free loopback port, its log in the scratch folder; stopped
# by its PID on exit.
start_scim_server() {
    local server="${IDSYNC_SCIM2_SERVER:-$ROOT/.test-env/venv/bin/scim2-server}"
    [ -x "$server" ] || fail "scim2-server not found at $server (run scripts/test-env.sh or set IDSYNC_SCIM2_SERVER)"
    scim_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$server" --hostname 127.0.0.1 --port "$scim_port" --bearer-token "$TOKEN" >"$SCRATCH/scim2-server.log" 2>&1 &
    scim_pid=$!
    local tries=0
    until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1).read()' \
        "http://127.0.0.1:$scim_port/v2/ServiceProviderConfig" >/dev/null 2>&1; do
        kill -0 "$scim_pid" 2>/dev/null || fail "scim2-server exited: $(tail -n 5 "$SCRATCH/scim2-server.log")"
        [ "$tries" -lt 100 ] || fail "scim2-server did not answer on 127.0.0.1:$scim_port within 20 s"
        sleep 0.2
        tries=$((tries + 1))
    done
}

# A sync as the image runs in production, into a real scim2-server on the
# host's loopback (the container shares the host's network for this one): the
# config mounted read-only, the token a file of idsync's user (mode 0400, in a
# folder of its own), the state on a volume.
run_for_real() {
    start_scim_server
    local metrics_port
    metrics_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    local etc="$SCRATCH/etc" secrets="$SCRATCH/secrets" state="$SCRATCH/state"
    mkdir -p "$etc" "$secrets" "$state"
    cat >"$etc/config.yaml" <<EOF
source:
  kind: csv
  users: /usr/share/idsync/examples/data/users.csv
  groups: /usr/share/idsync/examples/data/groups.csv
mapping: /usr/share/idsync/mappings/csv.yaml
target:
  kind: scim
  base_url: http://127.0.0.1:$scim_port/v2
  token_file: /run/secrets/scim-token
policy:
  remove_action: disable
  groups: { provision: true, delete: false, on_rename: keep }
state: /var/lib/idsync/idsync.db
metrics_listen: 127.0.0.1:$metrics_port
EOF
    printf '%s\n' "$TOKEN" >"$secrets/scim-token"
    chown -R 10001:10001 "$secrets" "$state"
    chmod 0700 "$secrets" "$state"
    chmod 0400 "$secrets/scim-token"
    local opts=("${LIMITS[@]}" --network host "${RO[@]}" -v "$etc:/etc/idsync:ro"
        -v "$secrets:/run/secrets:ro" -v "$state:/var/lib/idsync")
    local in=(run --rm "${opts[@]}" "$IMAGE")
    pod "${in[@]}" validate >"$SCRATCH/validate.out" 2>&1 ||
        fail "validate of a mounted config: $(cat "$SCRATCH/validate.out")"
    pod "${in[@]}" sync >"$SCRATCH/sync.out" 2>&1 || fail "sync into scim2-server: $(tail -n 20 "$SCRATCH/sync.out")"
    pod "${in[@]}" plan >"$SCRATCH/plan.out" 2>"$SCRATCH/plan.err" || fail "plan after the sync: $(cat "$SCRATCH/plan.err")"
    [ "$(cat "$SCRATCH/plan.out")" = "No changes." ] ||
        fail "plan after the sync is not 'No changes.': $(head -n 5 "$SCRATCH/plan.out")"
    # The image's default command: the daemon, one cycle, then SIGTERM.
    pod run -d --name idsync-check-daemon "${opts[@]}" "$IMAGE" >/dev/null
    local waited=0
    until pod logs idsync-check-daemon 2>&1 | grep -q 'cycle done'; do
        [ "$waited" -lt 60 ] || fail "the daemon finished no cycle in 60 s: $(pod logs idsync-check-daemon 2>&1 | tail -n 5)"
        sleep 1
        waited=$((waited + 1))
    done
    local path
    for path in healthz readyz; do
        python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
            "http://127.0.0.1:$metrics_port/$path" >"$SCRATCH/$path.out" 2>&1 ||
            fail "the daemon's /$path on 127.0.0.1:$metrics_port: $(tail -n 3 "$SCRATCH/$path.out")"
    done
    pod stop -t 30 idsync-check-daemon >/dev/null
    local code
    code="$(pod inspect --format '{{.State.ExitCode}}' idsync-check-daemon)"
    pod logs idsync-check-daemon >"$SCRATCH/daemon.out" 2>&1
    pod rm idsync-check-daemon >/dev/null
    [ "$code" = 0 ] || fail "the daemon exited $code on SIGTERM: $(tail -n 5 "$SCRATCH/daemon.out")"
    [ "$(stat -c %u:%g "$state/idsync.db")" = "10001:10001" ] ||
        fail "the state DB on the volume: $(stat -c '%u:%g' "$state/idsync.db" 2>&1), want 10001:10001"
    if grep -l -F "$TOKEN" "$SCRATCH"/*.out "$SCRATCH/plan.err"; then
        fail "the token appears in idsync's output (files above)"
    fi
    log "validate, sync into scim2-server on 127.0.0.1:$scim_port, plan (No changes.), the daemon (a cycle, /healthz and /readyz 200, SIGTERM, exit 0): as expected"
}

# --- run it --------------------------------------------------------------------
# Every run: read-only root filesystem, no tmpfs on /tmp, /run or /var/tmp.
RO=(--read-only --read-only-tmpfs=false)
want_same() { # NAME WANT GOT
    [ "$2" = "$3" ] || fail "$1: the image printed '${3:0:400}', the host binary '${2:0:400}'"
}
want_same "idsync --version" "$("$HOST_BIN" --version)" \
    "$(pod "${RUN[@]}" --network none "${RO[@]}" "$IMAGE" --version)"
want_same "id" "uid=10001(idsync) gid=10001(idsync) groups=10001(idsync)" \
    "$(pod "${RUN[@]}" --network none "${RO[@]}" --entrypoint id "$IMAGE")"

# The default command is the daemon with the config at /etc/idsync/config.yaml,
# which the image does not hold.
rc=0
out="$(pod "${RUN[@]}" --network none "${RO[@]}" "$IMAGE" 2>&1)" || rc=$?
if [ "$rc" -ne 2 ] || [[ "$out" != *"cannot read /etc/idsync/config.yaml"* ]]; then
    fail "the default command without a config: exit $rc, '$out' (want exit 2, cannot read /etc/idsync/config.yaml)"
fi

# The README's quickstart, from the examples the image ships.
mkdir -p "$SCRATCH/host"
cp -r "$ROOT/examples" "$ROOT/mappings" "$SCRATCH/host/"
want_same "plan -c quickstart.yaml" "$("$HOST_BIN" plan -c "$SCRATCH/host/examples/quickstart.yaml" 2>/dev/null)" \
    "$(pod "${RUN[@]}" --network none "${RO[@]}" "$IMAGE" plan -c /usr/share/idsync/examples/quickstart.yaml 2>/dev/null)"
log "--version, id, default command, quickstart plan: as expected"

run_for_real
log "ok in $((SECONDS - started)) s"
