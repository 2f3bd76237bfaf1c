"""Polls the e2e node on the local Ironic until its provision_state is one of --until.

Prints each change (state | deploy step | power | last_error) with the time since --t0-ms, and
keeps in --facts (JSON, merged over calls) what Ironic later wipes: the agent_url it recorded at
the agent's first heartbeat, the steps it cached from deploy.get_deploy_steps, the agent's
version and its last heartbeat. Exit 0 on a wanted state, 1 on a failed one, 2 on timeout.
Standard library only (run with Debian's /usr/bin/python3).
"""
import argparse
import json
import os
import sys
import time
import urllib.request

FAILED = {"deploy failed", "clean failed", "error", "inspect failed", "rescue failed"}

p = argparse.ArgumentParser()
p.add_argument("--api", required=True)
p.add_argument("--node", required=True)
p.add_argument("--until", required=True, help="comma-separated provision states")
p.add_argument("--timeout", type=float, default=120)
p.add_argument("--interval", type=float, default=0.1)
p.add_argument("--facts", required=True)
p.add_argument("--t0-ms", type=int, required=True)
a = p.parse_args()

facts = {}
if os.path.exists(a.facts):
    with open(a.facts) as f:
        facts = json.load(f)


def now_ms():
    return int(time.time() * 1000)


def save():
    tmp = a.facts + ".tmp"
    with open(tmp, "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
    os.replace(tmp, a.facts)


def get_node():
    req = urllib.request.Request(
        f"{a.api}/v1/nodes/{a.node}", headers={"X-OpenStack-Ironic-API-Version": "1.82"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


until = set(a.until.split(","))
deadline = time.monotonic() + a.timeout
last = None
transitions = facts.setdefault("transitions", [])
while True:
    try:
        n = get_node()
    except Exception as e:  # the API busy for a moment: try again until the deadline
        n = None
        print(f"  poll error: {e}", flush=True)
    if n is not None:
        t = now_ms()
        dii = n.get("driver_internal_info") or {}
        step = (n.get("deploy_step") or {}).get("step")
        cur = (n["provision_state"], step, n["power_state"], n["last_error"])
        if cur != last:
            print(f"{(t - a.t0_ms) / 1000:7.2f}s {cur[0]} | step {cur[1]} | power {cur[2]} | last_error {cur[3]}", flush=True)
            transitions.append({"ms": t, "provision_state": cur[0], "step": cur[1], "power_state": cur[2], "last_error": cur[3]})
            last = cur
        if dii.get("agent_url") and "agent_url" not in facts:
            facts["agent_url"] = dii["agent_url"]
            facts["agent_url_seen_ms"] = t
        if dii.get("agent_cached_deploy_steps") and "cached_deploy_steps" not in facts:
            facts["cached_deploy_steps"] = dii["agent_cached_deploy_steps"]
        for k in ("agent_last_heartbeat", "agent_version", "agent_verify_ca"):
            if dii.get(k):
                facts[k] = dii[k]
        if dii.get("agent_secret_token"):
            facts["agent_token_recorded"] = True
        facts["provision_state"] = n["provision_state"]
        facts["last_error"] = n["last_error"]
        facts["root_device"] = (n.get("properties") or {}).get("root_device")
        save()
        if n["provision_state"] in until:
            sys.exit(0)
        if n["provision_state"] in FAILED:
            sys.exit(1)
    if time.monotonic() > deadline:
        print(f"  TIMEOUT after {a.timeout} s waiting for {a.until}", flush=True)
        facts["timeout"] = a.until
        save()
        sys.exit(2)
    time.sleep(a.interval)
