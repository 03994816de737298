#!/usr/bin/env bash
# The LDAP row of the performance targets, on a throw-away slapd loaded offline
# with slapadd (N users, G groups; release binary):
#
#   cargo build --release --bin idsync
#   bash examples/ldap/bench.sh [N_USERS] [N_GROUPS]      # default 100000 1000
#   bash examples/ldap/bench.sh 1000000 1000              # the memory target
#
# Each round runs `ldapsearch` and then `idsync plan` (empty state, JSON out),
# BENCH_RUNS rounds (default 3), interleaved. ldapsearch reads what idsync's
# read reads: the users, then the groups, with the same filters, attributes and
# page size (500), output to a file, each in its own process (connect + bind +
# paged search). It is timed against the read stage of idsync's log ("LDAP
# directory read ... elapsed_ms": connect, bind, rootDSE, both paged searches,
# member resolution; the read hands each user to the mapping as it arrives,
# and that time, logged as handed_over_ms, is not counted: the old, unstreamed
# read mapped after it). The table gives each pair, its ratio, the median ratio
# and the target (at most 1.2x ldapsearch, stated for 100,000 users); and the
# peak RSS of each `idsync plan` (wait4, via /usr/bin/time) against 512 MiB
# (stated for 1,000,000 users), and the peak RSS the read logs when it is
# done (VmHWM, `peak_rss_mib`: the users read and mapped, planning not yet
# begun) against the same 512 MiB.
#
# BENCH_COMPARE=OLD_BINARY adds the old binary to each round (ldapsearch, new,
# old; the order of new and old alternates) and prints new/old per pair: a
# side-by-side measurement of a change on the same slapd.
#
# With BENCH_SYNC=1 it also syncs everything into a local scim2-server
# (scripts/test-env.sh; minutes at 100,000 users) and then times no-change
# `plan` and `sync` cycles.
#
# Uses scripts/slapd.sh (the cn=sync account: 1000 entries per plain search,
# paged searches unlimited). Everything listens on 127.0.0.1, is stopped by its
# PID, and lives in a temp dir removed at the end.
set -euo pipefail
N="${1:-100000}"
G="${2:-1000}"
RUNS="${BENCH_RUNS:-3}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${IDSYNC_BIN:-$ROOT/target/release/idsync}"
OLD="${BENCH_COMPARE:-}"
[ -x "$BIN" ] || { echo "error: $BIN missing; run cargo build --release" >&2; exit 1; }
[ -z "$OLD" ] || [ -x "$OLD" ] || { echo "error: BENCH_COMPARE=$OLD is not an executable" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time missing (Debian package: time)" >&2; exit 1; }
WORK="$(mktemp -d /tmp/idsync-ldap-bench.XXXXXX)"
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
SCIM_PORT=$((PORT + 1))
SCIM_PID=""
cleanup() {
    [ -z "$SCIM_PID" ] || kill "$SCIM_PID" 2>/dev/null || true
    bash "$ROOT/scripts/slapd.sh" stop "$WORK/slapd" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 - "$N" "$G" >"$WORK/data.ldif" <<'PY'
import sys
n, g = int(sys.argv[1]), int(sys.argv[2])
names = [("J\u00f6rg", "M\u00fcller"), ("In\u00e9s", "Nu\u00f1ez"), ("S\u00f8ren", "\u00d8stergaard"), ("Ann", "Smith")]
import base64
def line(k, v):
    if v.isascii():
        return f"{k}: {v}"
    return f"{k}:: {base64.b64encode(v.encode()).decode()}"
out = sys.stdout
for i in range(1, n + 1):
    gn, sn = names[i % len(names)]
    out.write("\n".join([
        f"dn: uid=user{i:06},ou=people,dc=example,dc=com",
        "objectClass: inetOrgPerson", f"uid: user{i:06}",
        line("cn", f"{gn} {sn} {i}"), line("givenName", gn), line("sn", sn),
        f"mail: user{i:06}@example.com", "title: Engineer",
        f"departmentNumber: D{i % 50:02}", f"employeeNumber: {i}",
    ]) + "\n\n")
for k in range(g):
    members = [f"member: uid=user{i:06},ou=people,dc=example,dc=com" for i in range(k + 1, n + 1, g)]
    out.write("\n".join([f"dn: cn=group-{k:04},ou=groups,dc=example,dc=com",
                         "objectClass: groupOfNames", f"cn: group-{k:04}"] + members) + "\n\n")
PY

# MDB map size: about 4 KiB per user is ample (sparse), at least 1 GiB.
export SLAPD_MAXSIZE=$(( N * 4096 > 1073741824 ? N * 4096 : 1073741824 ))
t0=$(date +%s.%N)
bash "$ROOT/scripts/slapd.sh" start "$WORK/slapd" "$PORT" "$WORK/data.ldif" >/dev/null
t1=$(date +%s.%N)
rm -f "$WORK/data.ldif"
echo "slapadd $N users, $G groups + start: $(echo "$t1 - $t0" | bc) s"

URL="ldap://127.0.0.1:$PORT"
# What idsync asks for with mappings/ldap-inetorgperson.yaml: the mapping's
# attributes, the key (entryUUID) and uid; for groups the key, the name and the
# three member attributes.
USER_FILTER="(objectClass=inetOrgPerson)"
USER_ATTRS="mail givenName sn cn title departmentNumber ou employeeNumber entryUUID uid"
GROUP_FILTER="(objectClass=groupOfNames)"
GROUP_ATTRS="entryUUID cn member uniqueMember memberUid"
PAGE=500
search() {
    ldapsearch -x -LLL -H "$URL" -D cn=sync,dc=example,dc=com -w syncpass \
        -E "pr=$PAGE/noprompt" -b dc=example,dc=com "$@"
}

cat >"$WORK/config.yaml" <<YAML
source:
  kind: ldap
  url: $URL
  bind_dn: cn=sync,dc=example,dc=com
  bind_password_env: BENCH_LDAP_PASSWORD
  base_dn: dc=example,dc=com
  user_filter: "$USER_FILTER"
  group_filter: "$GROUP_FILTER"
  page_size: $PAGE
mapping: $ROOT/mappings/ldap-inetorgperson.yaml
target: { kind: scim, base_url: "http://127.0.0.1:$SCIM_PORT/v2", token_env: BENCH_TOKEN, concurrency: 8 }
policy: { max_removals: 100% }
state: $WORK/state/idsync.db
YAML
mkdir -p "$WORK/state"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ldapsearch of the users and of the groups, as idsync reads them; prints ms.
time_ldapsearch() {
    local t0 t1 users groups
    t0=$(now_ms)
    # shellcheck disable=SC2086
    search "$USER_FILTER" $USER_ATTRS >"$WORK/users.ldif"
    # shellcheck disable=SC2086
    search "$GROUP_FILTER" $GROUP_ATTRS >"$WORK/groups.ldif"
    t1=$(now_ms)
    users=$(grep -c '^dn: uid=' "$WORK/users.ldif" || true)
    groups=$(grep -c '^dn: cn=group-' "$WORK/groups.ldif" || true)
    [ "$users" = "$N" ] && [ "$groups" = "$G" ] || {
        echo "error: ldapsearch returned $users users and $groups groups" >&2
        exit 1
    }
    echo $((t1 - t0))
}

# `idsync plan` with binary $1; prints "read_ms total_ms peak_kib".
time_plan() {
    local bin="$1" t0 t1 read_ms
    t0=$(now_ms)
    BENCH_LDAP_PASSWORD=syncpass /usr/bin/time -f "%M" -o "$WORK/rss" \
        "$bin" plan -c "$WORK/config.yaml" --format json >/dev/null 2>"$WORK/plan.log" || {
        echo "error: $bin plan failed:" >&2
        cat "$WORK/plan.log" >&2
        exit 1
    }
    t1=$(now_ms)
    read_ms=$(grep -o 'LDAP directory read.*elapsed_ms=[0-9]*' "$WORK/plan.log" | grep -o '[0-9]*$')
    grep -q "users=$N groups=$G " "$WORK/plan.log" || {
        echo "error: $bin did not read $N users and $G groups:" >&2
        cat "$WORK/plan.log" >&2
        exit 1
    }
    [ "$bin" != "$BIN" ] || grep 'LDAP directory read' "$WORK/plan.log" >"$WORK/read.log"
    # The peak RSS when the read (users mapped as they arrived) was done,
    # before planning: VmHWM, logged with the read (0 when not logged).
    read_peak=$(grep -o 'LDAP directory read.*peak_rss_mib=[0-9]*' "$WORK/plan.log" | grep -o '[0-9]*$' || true)
    echo "$read_ms $((t1 - t0)) $(tail -n 1 "$WORK/rss") ${read_peak:-0}"
}

mib() { echo $(($1 / 1024)); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
results="$WORK/results"
: >"$results"
for run in $(seq 1 "$RUNS"); do
    # Called directly (not in $(...)) so that a failure ends the script.
    time_ldapsearch >"$WORK/ls.txt"
    if [ -n "$OLD" ] && [ $((run % 2)) = 0 ]; then
        time_plan "$OLD" >"$WORK/old.txt"
        time_plan "$BIN" >"$WORK/new.txt"
    else
        time_plan "$BIN" >"$WORK/new.txt"
        [ -z "$OLD" ] || time_plan "$OLD" >"$WORK/old.txt"
    fi
    ls_ms=$(cat "$WORK/ls.txt")
    read -r new_read new_total new_kib new_read_peak <"$WORK/new.txt"
    [ -z "$OLD" ] || read -r old_read old_total old_kib _ <"$WORK/old.txt"
    line="round $run: ldapsearch users+groups $ls_ms ms, idsync read $new_read ms"
    line="$line ($(ratio "$new_read" "$ls_ms")x); plan $new_total ms, peak RSS $(mib "$new_kib") MiB"
    line="$line (at the end of the read $new_read_peak MiB)"
    if [ -n "$OLD" ]; then
        line="$line | old: read $old_read ms, plan $old_total ms, peak RSS $(mib "$old_kib") MiB; new/old read $(ratio "$new_read" "$old_read")"
        echo "$ls_ms $new_read $new_kib $new_read_peak $old_read $old_kib" >>"$results"
    else
        echo "$ls_ms $new_read $new_kib $new_read_peak" >>"$results"
    fi
    echo "$line"
done
cat "$WORK/read.log"

python3 - "$N" "$G" "$results" <<'PY'
import statistics, sys
n, g, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = [list(map(int, l.split())) for l in open(path) if l.strip()]
ratios = [r[1] / r[0] for r in rows]
median = statistics.median(ratios)
peak = max(r[2] for r in rows) // 1024
mark = lambda ok: "\u2714" if ok else "\u2718"
print()
print(f"LDAP row, {n:,} users and {g:,} groups, {len(rows)} interleaved rounds:")
print("| ldapsearch users+groups | idsync LDAP read | ratio |")
print("|---|---|---|")
for r, q in zip(rows, ratios):
    print(f"| {r[0] / 1000:.2f} s | {r[1] / 1000:.2f} s | {q:.2f}x |")
note = "" if n == 100_000 else " (the target is stated for 100,000 users)"
print(f"median ratio {median:.2f}x, target <= 1.2x{note}: {mark(median <= 1.2)}")
note = "" if n == 1_000_000 else " (the target is stated for 1,000,000 users)"
print(f"peak RSS of idsync plan (largest of {len(rows)}): {peak} MiB, target < 512 MiB{note}: {mark(peak < 512)}")
read_peak = max(r[3] for r in rows)
print(f"peak RSS at the end of the read, before planning (VmHWM, largest of {len(rows)}): {read_peak} MiB, target < 512 MiB{note}: {mark(0 < read_peak < 512)}")
if len(rows[0]) > 4:
    new_old = [r[1] / r[4] for r in rows]
    print("side by side, new/old read per round: " + ", ".join(f"{q:.2f}" for q in new_old)
          + f"; median {statistics.median(new_old):.2f}; peak RSS new {peak} MiB,"
          + f" old {max(r[5] for r in rows) // 1024} MiB")
PY

[ "${BENCH_SYNC:-0}" = 1 ] || exit 0
SERVER="${IDSYNC_SCIM2_SERVER:-$ROOT/.test-env/venv/bin/scim2-server}"
"$SERVER" --hostname 127.0.0.1 --port "$SCIM_PORT" --bearer-token bench-token >"$WORK/scim.log" 2>&1 &
SCIM_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$SCIM_PORT/v2/ServiceProviderConfig" >/dev/null && break
    sleep 0.2
done
export BENCH_LDAP_PASSWORD=syncpass BENCH_TOKEN=bench-token
t0=$(date +%s.%N)
"$BIN" sync -c "$WORK/config.yaml" --format json >"$WORK/sync.json" 2>"$WORK/sync.log"
t1=$(date +%s.%N)
echo "initial sync into scim2-server: $(echo "$t1 - $t0" | bc) s: $(tr -d '\n ' <"$WORK/sync.json" | head -c 300)"
for run in 1 2 3; do
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" plan -c "$WORK/config.yaml" --format json >"$WORK/plan.json" 2>"$WORK/plan.log"
    t1=$(date +%s.%N)
    echo "no-change plan run $run: $(echo "$t1 - $t0" | bc) s, peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB, operations: $(grep -c '"op"' "$WORK/plan.json" || true)"
done
cat "$WORK/plan.log"
t0=$(date +%s.%N)
"$BIN" sync -c "$WORK/config.yaml" --format json >"$WORK/sync.json" 2>"$WORK/sync.log"
t1=$(date +%s.%N)
echo "no-change sync: $(echo "$t1 - $t0" | bc) s"
cat "$WORK/sync.log"
