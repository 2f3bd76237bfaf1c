# Shared by setup.sh, run.sh and teardown.sh (sourced, not run).
# Everything lives in one scratch dir; processes are recorded there as <name>.pid and started with
# setsid, so each is the leader of its own process group and is stopped by that id only.

E2E_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_HERE/../../.." && pwd)
D=${IRONBUS_E2E_DIR:-/tmp/ironbus-ironic-e2e}
LOGS_KEEP=${IRONBUS_E2E_LOGS:-/tmp/ironbus-ironic-e2e-logs}
IRONIC_PORT=6385
JSONRPC_PORT=${IRONBUS_E2E_JSONRPC_PORT:-8089}
IMG_PORT=${IRONBUS_E2E_IMG_PORT:-18080}
AGENT_PORT=${IRONBUS_E2E_AGENT_PORT:-9999}
IRONIC=http://127.0.0.1:$IRONIC_PORT
IMG_URL=http://127.0.0.1:$IMG_PORT
# Debian's python, not a pyenv shim: ironic lives in /usr/lib/python3/dist-packages.
PY=/usr/bin/python3

log() { printf '%s %s\n' "$(date -u +%H:%M:%S.%3N)" "$*"; }
die() { log "FAIL: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# api METHOD PATH [JSON]: one REST call to the local Ironic (noauth). Prints the body; the status
# goes to $D/last.status. Every call is appended to $D/logs/api-calls.log.
api() {
  local m=$1 p=$2 b=${3:-} out code
  if [ -n "$b" ]; then
    out=$(curl -sS -w '\n%{http_code}' -X "$m" -H 'Content-Type: application/json' \
      -H 'X-OpenStack-Ironic-API-Version: 1.82' -d "$b" "$IRONIC$p")
  else
    out=$(curl -sS -w '\n%{http_code}' -X "$m" -H 'X-OpenStack-Ironic-API-Version: 1.82' "$IRONIC$p")
  fi
  code=$(printf '%s\n' "$out" | tail -n1)
  printf '%s' "$code" > "$D/last.status"
  printf '%s %s %s -> %s\n' "$(date -u +%H:%M:%S.%3N)" "$m" "$p" "$code" >> "$D/logs/api-calls.log"
  printf '%s\n' "$out" | sed '$d'
}

# start NAME CMD...: run CMD in its own session (process group), output to $D/logs/NAME.out.
start() {
  local name=$1; shift
  setsid "$@" > "$D/logs/$name.out" 2>&1 < /dev/null &
  echo $! > "$D/$name.pid"
}

# stop NAME...: SIGTERM to the recorded process group, SIGKILL after 10 s. Only recorded ids.
stop() {
  local name pid i
  for name in "$@"; do
    [ -f "$D/$name.pid" ] || continue
    pid=$(cat "$D/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null; log "killed $name ($pid)"; fi
      # children that outlived the leader (ironic-api's worker) are still in its group
      kill -0 -- "-$pid" 2>/dev/null && { sleep 1; kill -KILL -- "-$pid" 2>/dev/null; }
      log "stopped $name (pgid $pid)"
    fi
    rm -f "$D/$name.pid"
  done
}

# the MAC the agent reports for this machine: the default route's interface, else the first
# interface that is up, has a carrier and is not loopback.
host_mac() {
  if [ -n "${IRONBUS_E2E_MAC:-}" ]; then echo "$IRONBUS_E2E_MAC"; return; fi
  local dev
  dev=$(ip -j route show default 2>/dev/null | $PY -c 'import sys,json; r=json.load(sys.stdin); print(r[0]["dev"] if r else "")' 2>/dev/null)
  ip -j link | $PY -c '
import sys, json
dev = sys.argv[1]
links = json.load(sys.stdin)
pick = [l for l in links if l["ifname"] == dev] or [l for l in links if "LOOPBACK" not in l["flags"] and "LOWER_UP" in l["flags"] and l.get("link_type") == "ether"]
print(pick[0]["address"] if pick else "")' "$dev"
}
