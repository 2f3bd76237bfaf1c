#!/bin/bash
# Undoes setup.sh (and whatever run.sh left): stops every process recorded in the scratch dir (by
# its recorded process-group id, nothing else), detaches the loop device if it is still backed by
# our target file, keeps the logs and result.json in $IRONBUS_E2E_LOGS (default
# /tmp/ironbus-ironic-e2e-logs, replaced each time), removes the scratch dir. Safe to run twice.
# The Debian packages stay installed; their services are neither running nor enabled.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

[ -d "$D" ] || { log "nothing to tear down ($D does not exist)"; exit 0; }
stop agent api conductor imgsrv
if [ -f "$D/loop.dev" ]; then
  LOOP=$(cat "$D/loop.dev")
  if losetup -n -O BACK-FILE "$LOOP" 2>/dev/null | grep -qx "$D/target.img"; then
    losetup -d "$LOOP" && log "detached $LOOP"
  fi
fi
# Anything of ours still running? (looked up to report it, not to kill it)
left=$(pgrep -f -- "$D/ironic.conf" || true)
rm -rf "$LOGS_KEEP"; mkdir -p "$LOGS_KEEP"
cp -r "$D/logs/." "$LOGS_KEEP/" 2>/dev/null
for f in result.json facts.json node-final.json ironic.conf power-marker; do [ -f "$D/$f" ] && cp "$D/$f" "$LOGS_KEEP/"; done
rm -rf "$D" && log "removed $D (logs kept in $LOGS_KEEP)"
[ -z "$left" ] || { log "WARNING: processes still running with our config: $left"; exit 1; }
exit 0
