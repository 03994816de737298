#!/usr/bin/env bash
# Start or stop a local scim2-server for manual testing.
#   scripts/scim-server.sh start PORT [TOKEN]   -> http://127.0.0.1:PORT/v2
#   scripts/scim-server.sh stop PORT
# The PID is kept in .test-env/scim-server-PORT.pid, the log in .test-env/scim-server-PORT.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="$ROOT/.test-env"
SERVER="${IDSYNC_SCIM2_SERVER:-$ENV_DIR/venv/bin/scim2-server}"

usage() {
    echo "usage: $0 start|stop PORT [TOKEN]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd="$1"
port="$2"
token="${3:-}"
case "$port" in '' | *[!0-9]*) usage ;; esac
pidfile="$ENV_DIR/scim-server-$port.pid"
logfile="$ENV_DIR/scim-server-$port.log"

is_running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

case "$cmd" in
start)
    if [ ! -x "$SERVER" ]; then
        echo "error: $SERVER not found" >&2
        echo "hint: run scripts/test-env.sh" >&2
        exit 1
    fi
    if is_running; then
        echo "scim2-server already running on port $port (pid $(cat "$pidfile"))" >&2
        exit 0
    fi
    if ! python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.close()' "$port" 2>/dev/null; then
        echo "error: port $port on 127.0.0.1 is already in use" >&2
        exit 1
    fi
    mkdir -p "$ENV_DIR"
    args=(--hostname 127.0.0.1 --port "$port")
    [ -n "$token" ] && args+=(--bearer-token "$token")
    "$SERVER" "${args[@]}" >"$logfile" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    # Wait (bounded: 20 s) until the server answers.
    for _ in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: scim2-server exited; see $logfile" >&2
            rm -f "$pidfile"
            exit 1
        fi
        if python3 - "$port" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/ServiceProviderConfig", timeout=1).read()
PY
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "error: scim2-server exited (port taken?); see $logfile" >&2
                rm -f "$pidfile"
                exit 1
            fi
            echo "scim2-server running: http://127.0.0.1:$port/v2 (pid $pid, log $logfile)"
            exit 0
        fi
        sleep 0.2
    done
    echo "error: scim2-server did not answer within 20 s; see $logfile" >&2
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
    ;;
stop)
    if is_running; then
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        echo "scim2-server on port $port stopped (pid $pid)"
    else
        echo "no scim2-server recorded on port $port" >&2
    fi
    rm -f "$pidfile"
    ;;
*) usage ;;
esac
