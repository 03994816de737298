#!/usr/bin/env bash
# Measures, on a throw-away slapd loaded offline with slapadd, what reading N
# users costs with ldapsearch, with idsync's LDAP reader, and for a whole
# `idsync plan` (read + map + plan against an empty state; release binary).
#
#   cargo build --release
#   bash examples/ldap/bench.sh [N_USERS] [N_GROUPS]      # default 100000 1000
#
# With BENCH_SYNC=1 it also syncs everything into a local scim2-server
# (scripts/test-env.sh; minutes at 100,000 users) and then times no-change
# `plan` and `sync` cycles.
#
# Uses scripts/slapd.sh (the cn=sync account: 1000 entries per plain search,
# paged searches unlimited). Everything lives in a temp dir removed at the end.
set -euo pipefail
N="${1:-100000}"
G="${2:-1000}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${IDSYNC_BIN:-$ROOT/target/release/idsync}"
[ -x "$BIN" ] || { echo "error: $BIN missing; run cargo build --release" >&2; exit 1; }
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

t0=$(date +%s.%N)
bash "$ROOT/scripts/slapd.sh" start "$WORK/slapd" "$PORT" "$WORK/data.ldif" >/dev/null
t1=$(date +%s.%N)
echo "slapadd $N users, $G groups + start: $(echo "$t1 - $t0" | bc) s"

URL="ldap://127.0.0.1:$PORT"
ATTRS="mail givenName sn cn title departmentNumber ou employeeNumber entryUUID uid"
search() {
    ldapsearch -x -LLL -H "$URL" -D cn=sync,dc=example,dc=com -w syncpass \
        -E pr=500/noprompt -b dc=example,dc=com "$@" >"$WORK/out.ldif"
}
for run in 1 2 3; do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    search "(objectClass=inetOrgPerson)" $ATTRS
    t1=$(date +%s.%N)
    search "(objectClass=groupOfNames)" cn member entryUUID
    t2=$(date +%s.%N)
    echo "ldapsearch -E pr=500 run $run: users $(echo "$t1 - $t0" | bc) s, groups $(echo "$t2 - $t1" | bc) s"
done

cat >"$WORK/config.yaml" <<YAML
source:
  kind: ldap
  url: $URL
  bind_dn: cn=sync,dc=example,dc=com
  bind_password_env: BENCH_LDAP_PASSWORD
  base_dn: dc=example,dc=com
  group_filter: "(objectClass=groupOfNames)"
mapping: $ROOT/mappings/ldap-inetorgperson.yaml
target: { kind: scim, base_url: "http://127.0.0.1:$SCIM_PORT/v2", token_env: BENCH_TOKEN, concurrency: 8 }
policy: { max_removals: 100% }
state: $WORK/state/idsync.db
YAML
mkdir -p "$WORK/state"
for run in 1 2 3; do
    t0=$(date +%s.%N)
    BENCH_LDAP_PASSWORD=syncpass /usr/bin/time -f "%M" -o "$WORK/rss" \
        "$BIN" plan -c "$WORK/config.yaml" --format json >"$WORK/plan.json" 2>"$WORK/plan.log"
    t1=$(date +%s.%N)
    read_ms=$(grep -o 'LDAP directory read.*elapsed_ms=[0-9]*' "$WORK/plan.log" | grep -o '[0-9]*$')
    echo "idsync plan run $run: total $(echo "$t1 - $t0" | bc) s (LDAP read ${read_ms} ms), peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB, $(grep -o '"create_users": *[0-9]*' "$WORK/plan.json")"
done
cat "$WORK/plan.log"

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
