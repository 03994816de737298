#!/usr/bin/env bash
# Where the time of one `idsync plan` goes, thread by thread, and the wall
# time it would take on two cores of its own (README, "Performance"): the
# CPU each stage used, from `perf` samples with call stacks (one sample a
# millisecond of a thread's CPU), put together along the planning path's
# known joins:
#
#   read + map (main)  ‖ state load (its own thread)  -> joined
#   mapping's checks and groups (main)
#   attribute hash check (one thread a core)          -> joined
#   planning and the rest (main)
#
# critical path = max(read, load) + groups + slowest hash slice + the rest
#
# Samples count CPU time, not waiting, so the estimate moves far less with
# other jobs' load than the wall time does (it still grows a little: caches
# and memory bandwidth are shared). Needs `perf` and a release build with
# debug info (the default profile here).
#
#   bash scripts/critical-path.sh target/release/idsync path/to/config.yaml
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 IDSYNC_BINARY CONFIG" >&2
    exit 2
fi
binary=$1
config=$2
command -v perf >/dev/null || {
    echo "perf is not installed (Debian: apt-get install linux-perf)" >&2
    exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

perf record --quiet -F 1000 --call-graph dwarf,8192 -o "$work/perf.data" -- \
    "$binary" plan -c "$config" >/dev/null 2>"$work/stderr" || {
    cat "$work/stderr" >&2
    exit 1
}
perf script -i "$work/perf.data" -F pid,tid,time,ip,sym 2>/dev/null >"$work/samples"

python3 - "$work/samples" <<'PY'
import collections
import sys

HZ = 1000.0
samples = []
for block in open(sys.argv[1]).read().split("\n\n"):
    lines = [l for l in block.strip().splitlines() if l.strip()]
    if not lines:
        continue
    head = lines[0].split()
    pid, tid = (int(x) for x in head[0].split("/"))
    time = float(next(x for x in head if x.endswith(":"))[:-1])
    samples.append((pid, tid, time, " ".join(lines[1:])))
if not samples:
    sys.exit("perf recorded no samples")
main = samples[0][0]

# The hash check's threads: any thread with a sample under it. All their
# samples count (blake3's assembly leaves some stacks without callers).
hash_threads = collections.Counter()
for _, tid, _, stack in samples:
    if tid != main and "keys_needing_attrs" in stack:
        hash_threads[tid] = 0
last_hash = max((t for _, tid, t, _ in samples if tid in hash_threads), default=0.0)

ms = collections.Counter()
for _, tid, time, stack in samples:
    if tid in hash_threads:
        hash_threads[tid] += 1
    elif tid == main:
        if "build_groups" in stack:
            ms["groups"] += 1
        elif any(s in stack for s in ("stream_mapped", "each_user", "read_groups")):
            ms["read"] += 1
        elif time > last_hash:
            ms["rest"] += 1
        else:
            ms["other"] += 1
    elif "StateDb>::load" in stack:
        ms["load"] += 1
    else:
        ms["unattributed"] += 1

slowest_hash = max(hash_threads.values(), default=0)
path = (
    max(ms["read"] + ms["other"], ms["load"])
    + ms["groups"]
    + slowest_hash
    + ms["rest"]
)
def f(n):
    return f"{n / HZ * 1000:.0f} ms"
print(f"read + map (main)      {f(ms['read'] + ms['other'])}")
print(f"state load             {f(ms['load'])}")
print(f"groups (main)          {f(ms['groups'])}")
print(f"hash check, per thread {', '.join(f(n) for n in hash_threads.values()) or '-'}")
print(f"the rest (main)        {f(ms['rest'])}")
print(f"unattributed           {f(ms['unattributed'])}")
print(f"critical path          {f(path)}")
PY
