#!/bin/bash
# One deploy through the real Ironic (docs/ironic-e2e.md). After setup.sh:
#   start ironic-conductor, ironic-api (127.0.0.1:6385) and the image server (127.0.0.1:18080);
#   enroll a manual-management node (pxe boot, direct deploy, fake power, noop management) whose
#   port is this machine's MAC and whose root device hint is the loop device; manage -> provide
#   (no cleaning) -> instance_info (raw image + sha256) -> deploy; once Ironic waits for the agent,
#   start ironbus (allowed to write the loop device only, harmless power commands); wait for
#   active (or deploy failed, or IRONBUS_E2E_TIMEOUT s, default 120); check the device's bytes.
# Every process it starts is stopped when it exits, also on failure; the facts go to
# $D/result.json (read by test/e2e/ironic.e2e.test.ts) and a summary is printed.
# Environment: IRONBUS_E2E_AUTO_TLS=1 lets the agent use auto-TLS (HTTPS callback, agent_verify_ca)
# instead of --no-auto-tls; IRONBUS_E2E_NODE = the node binary (default: node on PATH).
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (the loop device)"
[ -f "$D/loop.dev" ] && [ -f "$D/ironic.conf" ] || die "run setup.sh first"
[ -f "$D/result.json" ] && die "$D/result.json exists: one run per setup (teardown.sh, setup.sh)"
LOOP=$(cat "$D/loop.dev")
SHA=$(cat "$D/image.sha256")
MAC=$(host_mac)
TIMEOUT=${IRONBUS_E2E_TIMEOUT:-120}
NODE_BIN=${IRONBUS_E2E_NODE:-node}
FACTS=$D/facts.json
T0=$(now_ms)
echo "{}" > "$FACTS"

finish() {
  local rc=$?
  set +e
  # the node as Ironic leaves it (agent_url and the token are wiped at active)
  [ -f "$D/node.uuid" ] && api GET "/v1/nodes/$(cat "$D/node.uuid")" > "$D/node-final.json" 2>/dev/null
  stop agent api conductor imgsrv
  $PY "$E2E_HERE/report.py" --dir "$D" --rc "$rc" --t0-ms "$T0"
  log "run.sh exit $rc"
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

fact() { # fact KEY JSON-VALUE: merge one fact into facts.json
  $PY -c 'import json,sys; f=sys.argv[1]; d=json.load(open(f)); d[sys.argv[2]]=json.loads(sys.argv[3]); json.dump(d,open(f,"w"),indent=1,sort_keys=True)' "$FACTS" "$1" "$2"
}
poll() { # poll STATES [TIMEOUT]
  $PY "$E2E_HERE/poll.py" --api "$IRONIC" --node "$N" --until "$1" --timeout "${2:-30}" --facts "$FACTS" --t0-ms "$T0"
}
jq_py() { $PY -c "import sys,json; d=json.load(sys.stdin); print($1)"; }

[ -n "$MAC" ] || die "no MAC address found for this machine (set IRONBUS_E2E_MAC)"
losetup -n -O BACK-FILE "$LOOP" | grep -qx "$D/target.img" || die "$LOOP is not backed by $D/target.img"
fact mac "\"$MAC\""; fact loop "\"$LOOP\""; fact image_sha256 "\"$SHA\""
fact ironic_version "\"$(dpkg-query -W -f '${Version}' ironic-conductor)\""

# --- Ironic ---------------------------------------------------------------------------------------
cd "$D"
log "starting ironic-conductor and ironic-api"
start conductor $PY /usr/bin/ironic-conductor --config-file "$D/ironic.conf" --log-file "$D/logs/conductor.log"
start api $PY /usr/bin/ironic-api --config-file "$D/ironic.conf" --log-file "$D/logs/api.log"
(cd "$D/imgsrv" && start imgsrv $PY -m http.server "$IMG_PORT" --bind 127.0.0.1)
for i in $(seq 1 120); do
  grep -q "Successfully started conductor" "$D/logs/conductor.log" 2>/dev/null \
    && curl -sf -o /dev/null "$IRONIC/" && curl -sf -o /dev/null "$IMG_URL/deploy.kernel" && break
  for n in conductor api imgsrv; do kill -0 "$(cat "$D/$n.pid")" 2>/dev/null || die "$n exited: $(tail -5 "$D/logs/$n.out" "$D/logs/$n.log" 2>/dev/null)"; done
  sleep 0.25
done
curl -sf -o /dev/null "$IRONIC/" || die "ironic-api does not answer on $IRONIC"
grep -q "Successfully started conductor" "$D/logs/conductor.log" || die "the conductor did not start: $(grep -m3 ERROR "$D/logs/conductor.log")"
log "Ironic ready in $(( $(now_ms) - T0 )) ms: API $(curl -s "$IRONIC/" | jq_py 'd["default_version"]["version"]')"

# --- the node ----------------------------------------------------------------------------------
N=$(api POST /v1/nodes "{\"name\":\"ironbus-e2e\",\"driver\":\"manual-management\",
  \"boot_interface\":\"pxe\",\"deploy_interface\":\"direct\",\"management_interface\":\"noop\",
  \"power_interface\":\"fake\",\"network_interface\":\"noop\",
  \"driver_info\":{\"deploy_forces_oob_reboot\":true,
    \"deploy_kernel\":\"$IMG_URL/deploy.kernel\",\"deploy_ramdisk\":\"$IMG_URL/deploy.initramfs\"},
  \"properties\":{\"root_device\":{\"name\":\"$LOOP\"},\"capabilities\":\"boot_mode:bios\",\"cpu_arch\":\"x86_64\"}}" \
  | jq_py 'd["uuid"]') || die "node create failed ($(cat "$D/last.status"))"
echo "$N" > "$D/node.uuid"; fact node "\"$N\""
log "node $N enrolled"
api POST /v1/ports "{\"node_uuid\":\"$N\",\"address\":\"$MAC\"}" > /dev/null
[ "$(cat "$D/last.status")" = 201 ] || die "port create failed ($(cat "$D/last.status"))"
log "port $MAC"
api PUT "/v1/nodes/$N/states/provision" '{"target":"manage"}' > /dev/null; poll manageable || die "manage failed"
api PUT "/v1/nodes/$N/states/provision" '{"target":"provide"}' > /dev/null; poll available || die "provide failed"
api PATCH "/v1/nodes/$N" "[
  {\"op\":\"add\",\"path\":\"/instance_info/image_source\",\"value\":\"$IMG_URL/disk.img\"},
  {\"op\":\"add\",\"path\":\"/instance_info/image_os_hash_algo\",\"value\":\"sha256\"},
  {\"op\":\"add\",\"path\":\"/instance_info/image_os_hash_value\",\"value\":\"$SHA\"},
  {\"op\":\"add\",\"path\":\"/instance_info/image_disk_format\",\"value\":\"raw\"}]" > /dev/null
[ "$(cat "$D/last.status")" = 200 ] || die "instance_info patch failed ($(cat "$D/last.status"))"
v=$(api GET "/v1/nodes/$N/validate" | jq_py '" ".join(k+"="+str(v["result"]) for k,v in d.items() if k in ("boot","deploy","management","network","power"))')
log "validate: $v"
echo "$v" | grep -q False && die "validation failed: $v"

# --- safety check, read back from Ironic: the agent may only ever be led to the loop device ------
api GET "/v1/nodes/$N" | $PY -c '
import sys, json
d = json.load(sys.stdin)
assert d["properties"]["root_device"] == {"name": sys.argv[1]}, d["properties"]
assert d["driver_info"]["deploy_forces_oob_reboot"] is True, d["driver_info"]
assert d["power_interface"] == "fake" and d["management_interface"] == "noop", (d["power_interface"], d["management_interface"])
assert "boot_mode:bios" in d["properties"]["capabilities"]
' "$LOOP" || die "safety check on the node failed"
log "safety check OK: root_device {name: $LOOP}, out-of-band (fake) power off, noop management, BIOS"

# --- deploy -----------------------------------------------------------------------------------
DEPLOY_MS=$(now_ms); fact deploy_request_ms "$DEPLOY_MS"
api PUT "/v1/nodes/$N/states/provision" '{"target":"active"}' > /dev/null
[ "$(cat "$D/last.status")" = 202 ] || die "deploy request refused ($(cat "$D/last.status"))"
log "deploy requested"
poll "wait call-back" 30 || die "the node never waited for the agent"

AGENT_ARGS=(--no-kernel-cmdline --api-url "$IRONIC" --listen "127.0.0.1:$AGENT_PORT" --advertise-host 127.0.0.1
  --allow-destructive --allowed-devices "$LOOP"
  --power-off-command "$D/fake-power.sh,poweroff" --reboot-command "$D/fake-power.sh,reboot" --sysrq-trigger-file ""
  --tls-dir "$D/agent-tls" --nic-wait-timeout-s 5 --log-level debug)
[ "${IRONBUS_E2E_AUTO_TLS:-0}" = 1 ] || AGENT_ARGS+=(--no-auto-tls)
AGENT_MS=$(now_ms); fact agent_start_ms "$AGENT_MS"
cd "$REPO"
start agent "$NODE_BIN" --import tsx "$REPO/bin/ironbus-agent.ts" "${AGENT_ARGS[@]}"
cd "$D"
log "agent started (pgid $(cat "$D/agent.pid")): ironbus-agent ${AGENT_ARGS[*]}"
poll "active" "$TIMEOUT"; prc=$?
kill -0 "$(cat "$D/agent.pid")" 2>/dev/null || log "the agent exited: $(tail -3 "$D/logs/agent.out")"
[ $prc = 0 ] || die "the node did not reach active (poll exit $prc)"
# Ironic drops the token at active; the agent's next heartbeats get 400. Let one happen, then stop.
sleep 1

# --- the device --------------------------------------------------------------------------------
SIZE=$(stat -c %s "$D/imgsrv/disk.img")
DEV_SHA=$(head -c "$SIZE" "$LOOP" | sha256sum | cut -d' ' -f1)
fact device_sha256 "\"$DEV_SHA\""
MARKER=$(debugfs -R "cat /MARKER" "${LOOP}p1" 2>/dev/null || true)
fact marker "$($PY -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$MARKER")"
fact marker_expected "$($PY -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$D/rootfs/MARKER")"
log "device sha256 (first $SIZE bytes) $DEV_SHA"
log "image  sha256                      $SHA"
log "MARKER on ${LOOP}p1: $MARKER"
[ "$DEV_SHA" = "$SHA" ] || die "the device does not hold the image"
exit 0
