"""Builds $D/result.json from run.sh's facts and the logs, and prints what crossed the wire.

Sources: facts.json (run.sh and poll.py), logs/agent.out (the agent's pino JSON lines),
logs/conductor.log and logs/api.log (Ironic's), node-final.json, power-marker. Times are printed
relative to the deploy request. Standard library only.
"""
import argparse
import json
import os
import re
import time

p = argparse.ArgumentParser()
p.add_argument("--dir", required=True)
p.add_argument("--rc", type=int, required=True)
p.add_argument("--t0-ms", type=int, required=True)
a = p.parse_args()
D = a.dir


def load(path, default):
    try:
        with open(os.path.join(D, path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def lines(path):
    try:
        with open(os.path.join(D, path), errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


facts = load("facts.json", {})
node_final = load("node-final.json", {})
deploy_ms = facts.get("deploy_request_ms")
agent_start_ms = facts.get("agent_start_ms")
base = deploy_ms or a.t0_ms

# --- the agent's log ------------------------------------------------------------------------------
agent = []
for raw in lines("logs/agent.out"):
    try:
        agent.append(json.loads(raw))
    except ValueError:
        agent.append({"time": None, "msg": raw, "raw": True})


def first(msg, **match):
    for e in agent:
        if e.get("msg", "").startswith(msg) and all(e.get(k) == v for k, v in match.items()):
            return e
    return None


ready = first("agent ready") or {}
lookup = first("lookup succeeded")
heartbeats_ok = [e for e in agent if e.get("msg") == "heartbeat accepted"]
heartbeats_bad = [e for e in agent if e.get("msg") == "heartbeat failed"]
commands = [e for e in agent if e.get("msg") in ("command finished", "command failed")]
written = first("image written")

# --- Ironic's logs --------------------------------------------------------------------------------
TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) ")


def ts_ms(line):
    m = TS.match(line)
    if not m:
        return None
    return int(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) * 1000) + int(m.group(2))


conductor = lines("logs/conductor.log")
moves = []
for line in conductor:
    m = re.search(r'moved to provision state "([^"]+)" from state "([^"]+)"', line)
    if m:
        moves.append({"ms": ts_ms(line), "to": m.group(1), "from": m.group(2)})
sent = []
for line in conductor:
    m = re.search(r"Executing agent command (\S+) for node \S+ with params (\{[^}]*\})", line)
    if m:
        sent.append({"ms": ts_ms(line), "command": m.group(1), "params": m.group(2)})
conductor_errors = [l[:400] for l in conductor if " ERROR " in l]
api_ramdisk = []
for line in lines("logs/api.log"):
    m = re.search(r'"(GET|POST) (/v1/(?:lookup|heartbeat)[^ "]*)[^"]*" status: (\d+)', line)
    if m:
        api_ramdisk.append({"ms": ts_ms(line), "method": m.group(1), "path": m.group(2), "status": int(m.group(3))})


def move_ms(to, frm):
    for mv in moves:
        if mv["to"] == to and mv["from"] == frm:
            return mv["ms"]
    return None


deploying_ms = move_ms("deploying", "available")
active_ms = move_ms("active", "deploying")


def secs(x, y):
    return None if x is None or y is None else round((y - x) / 1000, 3)


timings = {
    "deploy_request_to_deploying_s": secs(deploy_ms, deploying_ms),
    "deploying_to_wait_callback_s": secs(deploying_ms, move_ms("wait call-back", "deploying")),
    "agent_launch_to_lookup_s": secs(agent_start_ms, lookup and lookup.get("time")),
    "agent_launch_to_first_heartbeat_s": secs(agent_start_ms, heartbeats_ok[0]["time"] if heartbeats_ok else None),
    "image_write_s": (written or {}).get("ms", 0) / 1000 if written else None,
    "deploying_to_active_s": secs(deploying_ms, active_ms),
    "deploy_request_to_active_s": secs(deploy_ms, active_ms),
}

result = {
    "ok": a.rc == 0,
    "rc": a.rc,
    "ironic_version": facts.get("ironic_version"),
    "node": facts.get("node"),
    "mac": facts.get("mac"),
    "loop": facts.get("loop"),
    "root_device": facts.get("root_device"),
    "callback_url": ready.get("callbackUrl"),
    "agent_locked_down": ready.get("lockedDown"),
    "lookup": {"node": lookup.get("node"), "attempts": lookup.get("attempts"), "ms": lookup.get("ms")} if lookup else None,
    "ironic_agent_url": facts.get("agent_url"),
    "ironic_agent_last_heartbeat": facts.get("agent_last_heartbeat") or (node_final.get("driver_internal_info") or {}).get("agent_last_heartbeat"),
    "ironic_agent_version": facts.get("agent_version"),
    "ironic_agent_verify_ca": bool(facts.get("agent_verify_ca")),
    "ironic_cached_deploy_steps": facts.get("cached_deploy_steps"),
    "heartbeats": {"accepted": len(heartbeats_ok), "refused": len(heartbeats_bad)},
    "agent_commands": [{"command": e.get("command"), "status": e.get("status"), "ms": e.get("ms")} for e in commands],
    "conductor_commands": [s["command"] for s in sent],
    "api_ramdisk_requests": api_ramdisk,
    "provision_state": node_final.get("provision_state", facts.get("provision_state")),
    "last_error": node_final.get("last_error", facts.get("last_error")),
    "image_sha256": facts.get("image_sha256"),
    "device_sha256": facts.get("device_sha256"),
    "marker": facts.get("marker"),
    "marker_expected": facts.get("marker_expected"),
    "power_commands_run": lines("power-marker"),
    "transitions": facts.get("transitions", []),
    "conductor_errors": conductor_errors[:20],
    "timings": timings,
}
with open(os.path.join(D, "result.json"), "w") as f:
    json.dump(result, f, indent=1)

# --- what crossed the wire -------------------------------------------------------------------------
events = []


def rel(ms):
    return f"{(ms - base) / 1000:7.3f}s" if ms is not None else "      ?"


for e in agent:
    msg = e.get("msg", "")
    if e.get("time") is None:
        continue
    if msg in ("lookup succeeded", "agent ready", "heartbeat accepted", "heartbeat failed", "image written", "image downloaded and verified", "request refused", "command failed", "command finished") or msg.startswith("root device") or msg.startswith("Ironic API version"):
        extra = {k: e[k] for k in ("command", "status", "ms", "reason", "callbackUrl", "node", "device", "bytes", "err", "attempts", "version", "path") if k in e}
        events.append((e["time"], "agent    ", f"{msg} {json.dumps(extra)[:220]}"))
for s in sent:
    events.append((s["ms"], "conductor", f"-> agent {s['command']} {s['params'][:120]}"))
for r in api_ramdisk:
    events.append((r["ms"], "ironic-api", f"{r['method']} {r['path'][:80]} -> {r['status']}"))
for mv in moves:
    if deploy_ms is None or (mv["ms"] or 0) >= deploy_ms - 1000:
        events.append((mv["ms"], "conductor", f'provision state {mv["from"]} -> {mv["to"]}'))
if agent_start_ms:
    events.append((agent_start_ms, "run.sh   ", "agent launched"))
if deploy_ms:
    events.append((deploy_ms, "run.sh   ", "PUT provision {target: active}"))
events.sort(key=lambda x: (x[0] or 0))

print("\n=== what crossed the wire (t = 0 at the deploy request) ===")
for ms, who, what in events:
    print(f"{rel(ms)} {who} {what}")
print("\n=== result ===")
for k in ("ok", "provision_state", "last_error", "callback_url", "ironic_agent_url", "ironic_agent_last_heartbeat",
          "heartbeats", "conductor_commands", "device_sha256", "image_sha256", "marker", "power_commands_run"):
    print(f"{k:28} {json.dumps(result[k])}")
print("\n=== timings ===")
for k, v in timings.items():
    print(f"{k:36} {v if v is not None else '-'}")
print(f"\nresult: {os.path.join(D, 'result.json')}")
