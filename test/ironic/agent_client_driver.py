#!/usr/bin/python3
"""Drive a running ironbus agent with Ironic's own agent client.

Usage:
    /usr/bin/python3 test/ironic/agent_client_driver.py [--plain] URL TOKEN

Runs Debian's python3-ironic (ironic.drivers.modules.agent_client.AgentClient)
against the agent over real HTTP and prints one JSON line per check on stdout:

    {"check": NAME, "ok": BOOL, "detail": ...}

Nothing here mocks the agent or the client: the only stand-ins are the node
and port objects, which are plain data holders (the conductor would load them
from its database).

Two checks need the caller's help, to finish a command that holds the
agent's hardware lock: the test-only command ``test.block`` (busy checks) and
the test-only clean step ``ironbus_test_hold``. The script then prints

    {"control": "release", "what": "block"}     (or "hold")

and waits for one line on stdin, which the caller writes once it has released
the command. The last line is {"check": "done", ...}.

test/ironic-client.test.ts starts the agent with these test-only parts: the
extension ``test`` (command ``block``) and a hardware manager offering the
clean steps ``ironbus_test_noop`` (harmless, returns at once) and
``ironbus_test_hold`` (waits for the caller). Against an agent without them
(e.g. bin/ironbus-agent started by hand) pass --plain: the checks that need
them (execute_clean_step-succeeded, busy-*, control-command-during-step) are
left out.

Exit status: 0 when every check passed, 1 when one failed, 3 when
ironic's agent client cannot be imported (install python3-ironic).
"""

import base64
import io
import json
import logging
import os
import select
import sys
import tarfile
import traceback
import types

CHECKS = []


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=repr) + "\n")
    sys.stdout.flush()


def record(name, ok, detail=None):
    CHECKS.append((name, bool(ok)))
    emit({"check": name, "ok": bool(ok), "detail": detail})


def exc_kwargs(exc):
    """IronicException.kwargs, decoded: ironic_lib JSON-encodes each value
    (so they cross RPC), e.g. status=400 is stored as the string '400'."""
    out = {}
    for key, value in (getattr(exc, "kwargs", None) or {}).items():
        try:
            out[key] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            out[key] = value
    return out


def describe_exc(exc):
    out = {"exception": type(exc).__name__, "message": str(exc)}
    kwargs = exc_kwargs(exc)
    if kwargs:
        out["kwargs"] = {k: v for k, v in kwargs.items() if k != "code"}
    return out


def main(argv):
    args = argv[1:]
    plain = "--plain" in args
    args = [a for a in args if a != "--plain"]
    if len(args) != 2:
        sys.stderr.write(
            "usage: agent_client_driver.py [--plain] AGENT_URL TOKEN\n")
        return 2
    agent_url, token = args[0].rstrip("/"), args[1]

    logging.basicConfig(
        stream=sys.stderr,
        level=(logging.DEBUG if os.environ.get("IRONBUS_IRONIC_DEBUG")
               else logging.CRITICAL),
        format="%(levelname)s %(name)s: %(message)s")

    # The retry decorators of AgentClient read CONF.agent.* when the module
    # is imported, so the overrides must come before that import.
    try:
        from ironic.conf import CONF
        CONF([], project="ironic", default_config_files=[],
             default_config_dirs=[])
        CONF.set_override("agent_api_version", "v1", "agent")
        CONF.set_override("command_timeout", 10, "agent")
        CONF.set_override("max_command_attempts", 1, "agent")
        CONF.set_override("command_wait_attempts", 20, "agent")
        CONF.set_override("command_wait_interval", 1, "agent")
        from ironic.common import exception
        from ironic.drivers.modules import agent_base
        from ironic.drivers.modules import agent_client
        from ironic import version as ironic_version
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        record("import", False, {
            "error": describe_exc(exc),
            "hint": ("install Debian's python3-ironic and run with "
                     "/usr/bin/python3"),
            "traceback": traceback.format_exc()})
        return 3
    record("import", True, {
        "ironic_version": ironic_version.version_info.release_string(),
        "module": agent_client.__file__})

    class FakeNode:
        """What the conductor's Node object offers the client: data only."""

        def __init__(self, **driver_internal_info):
            self.uuid = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
            self.driver = "ipmi"
            self.driver_info = {}
            self.instance_info = {}
            self.properties = {"cpu_arch": "x86_64"}
            self.clean_step = None
            self.deploy_step = None
            self.driver_internal_info = {
                "agent_url": agent_url,
                "agent_secret_token": token,
                **driver_internal_info,
            }

        def as_dict(self, secure=False, mask_configdrive=True):
            info = dict(self.driver_internal_info)
            if secure:
                info.pop("agent_secret_token", None)
            return {
                "uuid": self.uuid,
                "driver": self.driver,
                "driver_info": dict(self.driver_info),
                "driver_internal_info": info,
                "instance_info": dict(self.instance_info),
                "properties": dict(self.properties),
            }

    class FakePort:
        def __init__(self, address):
            self.uuid = "9c8a4f9e-5a47-4b3f-8d3a-0e3d3e6c0a11"
            self.address = address

        def as_dict(self):
            return {"uuid": self.uuid, "address": self.address,
                    "pxe_enabled": True, "extra": {}}

    client = agent_client.AgentClient()
    node = FakeNode()
    ports = [FakePort("52:54:00:12:34:56")]

    def check(name, fn):
        """Runs fn(); fn returns (ok, detail). Exceptions fail the check."""
        try:
            ok, detail = fn()
        except Exception as exc:  # noqa: BLE001
            record(name, False, {"unexpected": describe_exc(exc),
                                 "traceback": traceback.format_exc()})
            return
        record(name, ok, detail)

    def expect_raise(name, exc_type, fn, extra=None):
        """fn() must raise exc_type; extra(exc) may add (ok, detail)."""
        try:
            result = fn()
        except exc_type as exc:
            ok, detail = True, describe_exc(exc)
            if extra is not None:
                more_ok, more = extra(exc)
                ok = ok and more_ok
                detail["checked"] = more
            record(name, ok, detail)
            return
        except Exception as exc:  # noqa: BLE001
            record(name, False, {"expected": exc_type.__name__,
                                 "got": describe_exc(exc)})
            return
        record(name, False, {"expected": exc_type.__name__,
                             "got": "no exception", "result": result})

    def await_release(what):
        """Asks the caller to release a held test command; True once done."""
        emit({"control": "release", "what": what})
        ready, _, _ = select.select([sys.stdin], [], [], 15)
        return bool(ready) and bool(sys.stdin.readline().strip())

    def completed(step_type, step, commands):
        """Ironic's own conductor logic for 'is the step done?'."""
        task = types.SimpleNamespace(node=types.SimpleNamespace(
            uuid=node.uuid, clean_step=step, deploy_step=step))
        return agent_base._get_completed_command(task, commands, step_type)

    # --- reads -------------------------------------------------------------

    def commands_empty():
        commands = client.get_commands_status(node)
        return (isinstance(commands, list) and commands == [],
                {"commands": commands})
    check("get_commands_status-empty", commands_empty)

    versions = {}

    def steps_check(kind):
        def run():
            fn = getattr(client, "get_%s_steps" % kind)
            res = fn(node, ports)
            result = res.get("command_result") or {}
            steps = result.get("%s_steps" % kind)
            hmv = result.get("hardware_manager_version")
            bad = []
            if isinstance(steps, dict):
                for owner, lst in steps.items():
                    for st in lst:
                        # agent_base.refresh_steps refuses steps without these
                        missing = {"interface", "step", "priority"} - set(st)
                        if missing:
                            bad.append({"owner": owner, "step": st,
                                        "missing": sorted(missing)})
            ok = (res.get("command_status") == "SUCCEEDED"
                  and res.get("command_error") is None
                  and isinstance(steps, dict) and isinstance(hmv, dict)
                  and "generic_hardware_manager" in hmv and not bad)
            if kind == "clean" and isinstance(hmv, dict):
                versions.update(hmv)
            return ok, {"command_name": res.get("command_name"),
                        "command_status": res.get("command_status"),
                        "steps": {k: [s.get("step") for s in v]
                                  for k, v in (steps or {}).items()},
                        "hardware_manager_version": hmv,
                        "invalid_steps": bad}
        return run
    check("get_clean_steps", steps_check("clean"))
    check("get_deploy_steps", steps_check("deploy"))

    def partition_uuids():
        res = client.get_partition_uuids(node)
        return (res.get("command_status") == "SUCCEEDED"
                and res.get("command_result") == {},
                {"command_name": res.get("command_name"),
                 "command_result": res.get("command_result")})
    check("get_partition_uuids", partition_uuids)

    def sync():
        res = client.sync(node)
        return (res.get("command_status") == "SUCCEEDED"
                and res.get("command_result") is None
                and res.get("command_error") is None,
                {"command_name": res.get("command_name"),
                 "command_status": res.get("command_status"),
                 "command_result": res.get("command_result")})
    check("sync", sync)

    def system_logs():
        res = client.collect_system_logs(node)
        logs = (res.get("command_result") or {}).get("system_logs")
        # ironic.drivers.utils.store_ramdisk_logs writes
        # base64.decode(system_logs) to <name>.tar.gz: it must be one.
        raw = base64.b64decode(logs, validate=True)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            names = tar.getnames()
        return (res.get("command_status") == "SUCCEEDED" and len(names) > 0,
                {"command_name": res.get("command_name"),
                 "bytes": len(raw), "members": names})
    check("collect_system_logs", system_logs)

    # --- clean steps (async) ------------------------------------------------

    matching = FakeNode(hardware_manager_version=dict(versions))

    def clean_step_ok():
        step = {"step": "ironbus_test_noop", "interface": "deploy",
                "priority": 0, "args": {"note": "hello"}}
        started = client.execute_clean_step(step, matching, ports)
        # What the conductor does with it: poll until done.
        final = client._wait_for_command(matching,
                                         "clean.execute_clean_step")
        done = completed("clean", step,
                         client.get_commands_status(matching))
        result = final.get("command_result") or {}
        ok = (started.get("command_status") in ("RUNNING", "SUCCEEDED")
              and final.get("command_status") == "SUCCEEDED"
              and result.get("clean_step", {}).get("step") == step["step"]
              and "clean_result" in result
              and done is not None
              and done.get("command_status") == "SUCCEEDED")
        return ok, {"started": started.get("command_status"),
                    "final": final.get("command_status"),
                    "command_result": result,
                    "conductor_sees": done and done.get("command_status")}
    if not plain:
        check("execute_clean_step-succeeded", clean_step_ok)

    def clean_step_missing():
        step = {"step": "no_such_step", "interface": "deploy", "priority": 0}
        started = client.execute_clean_step(step, matching, ports)
        final = client._wait_for_command(matching,
                                         "clean.execute_clean_step")
        last = client.get_last_command_status(matching,
                                              "clean.execute_clean_step")
        error = (last or {}).get("command_error") or {}
        done = completed("clean", step,
                         client.get_commands_status(matching))
        ok = (last is not None
              and final.get("command_status") == "FAILED"
              and last.get("command_status") == "FAILED"
              and error.get("type") == "HardwareManagerMethodNotFound"
              and done is not None
              and done.get("command_status") == "FAILED")
        return ok, {"started": started.get("command_status"),
                    "last": (last or {}).get("command_status"),
                    "command_error": error,
                    "get_command_error": last and
                    agent_client.get_command_error(last)}
    check("execute_clean_step-not-found", clean_step_missing)

    def clean_step_mismatch():
        stale = {k: "0.0-stale" for k in versions} or {
            "generic_hardware_manager": "0.0-stale"}
        old = FakeNode(hardware_manager_version=stale)
        # A harmless step: if the check were wrongly passed, nothing is erased.
        step = {"step": "ironbus_test_noop", "interface": "deploy",
                "priority": 0}
        started = client.execute_clean_step(step, old, ports)
        final = client._wait_for_command(old, "clean.execute_clean_step")
        last = client.get_last_command_status(old,
                                              "clean.execute_clean_step")
        error = (last or {}).get("command_error") or {}
        done = completed("clean", step, client.get_commands_status(old))
        ok = (last is not None
              and final.get("command_status") == "CLEAN_VERSION_MISMATCH"
              and last.get("command_status") == "CLEAN_VERSION_MISMATCH"
              and done is not None
              and done.get("command_status") == "CLEAN_VERSION_MISMATCH")
        return ok, {"sent_clean_version": stale,
                    "started": started.get("command_status"),
                    "last": (last or {}).get("command_status"),
                    "command_error": error}
    check("execute_clean_step-version-mismatch", clean_step_mismatch)

    # --- error paths of the client ------------------------------------------

    def typeerror_extra(exc):
        status = exc_kwargs(exc).get("status")
        last = client.get_commands_status(node)[-1]
        ok = (status == 400 and last.get("command_status") == "FAILED"
              and (last.get("command_error") or {}).get("type") == "TypeError")
        return ok, {"status": status, "stored": last}
    # What client.sync() sends, plus an argument standby.sync does not take.
    expect_raise("bad-arguments-typeerror", exception.AgentAPIError,
                 lambda: client._command(node=node, method="standby.sync",
                                         params={"bogus": True}, wait=True),
                 typeerror_extra)

    def status_is(code):
        return lambda exc: (exc_kwargs(exc).get("status") == code,
                            {"status": exc_kwargs(exc).get("status")})
    wrong = FakeNode()
    wrong.driver_internal_info["agent_secret_token"] = "not-the-token"
    expect_raise("wrong-token", exception.AgentAPIError,
                 lambda: client.sync(wrong), status_is(401))
    tokenless = FakeNode()
    del tokenless.driver_internal_info["agent_secret_token"]
    expect_raise("missing-token", exception.AgentAPIError,
                 lambda: client.sync(tokenless), status_is(401))

    def unknown_extension():
        try:
            client._command(node=node, method="nosuch.thing", params={},
                            wait=True)
        except exception.AgentAPIError as exc:
            return exc_kwargs(exc).get("status") == 404, describe_exc(exc)
        return False, "no exception"
    check("unknown-extension", unknown_extension)

    # --- busy ---------------------------------------------------------------

    if not plain:
        def start_block():
            res = client._command(node=node, method="test.block", params={})
            return (res.get("command_status") == "RUNNING",
                    {"command_name": res.get("command_name"),
                     "command_status": res.get("command_status")})
        check("busy-start-block", start_block)

        busy_extra = (lambda exc: ("agent is busy" in str(exc).lower(),
                                   {"error": exc_kwargs(exc).get("error")}))
        expect_raise("busy-sync", exception.AgentInProgress,
                     lambda: client.sync(node), busy_extra)
        expect_raise("busy-get_clean_steps", exception.AgentInProgress,
                     lambda: client.get_clean_steps(node, ports), busy_extra)
        expect_raise("busy-execute_clean_step", exception.AgentInProgress,
                     lambda: client.execute_clean_step(
                         {"step": "ironbus_test_noop", "interface": "deploy",
                          "priority": 0}, matching, ports), busy_extra)

        def busy_status():
            commands = client.get_commands_status(node)
            last = commands[-1] if commands else {}
            match = client._status_if_last_command_matches(
                node, "test.block", {})
            return (last.get("command_name") == "block"
                    and last.get("command_status") == "RUNNING"
                    and match is not None,
                    {"last": last})
        check("busy-get_commands_status", busy_status)

        if not await_release("block"):
            record("busy-released", False,
                   "no release confirmation on stdin within 15 s")
        else:
            def released():
                final = client._wait_for_command(node, "test.block")
                after = client.sync(node)
                return (final.get("command_status") == "SUCCEEDED"
                        and after.get("command_status") == "SUCCEEDED",
                        {"block": final.get("command_status"),
                         "block_result": final.get("command_result"),
                         "sync_after": after.get("command_status")})
            check("busy-released", released)

    # --- an ironbus control command while a clean step runs ----------------
    # agent.get_command is ironbus's own (IPA has none) and is allowed while a
    # command holds the lock. Whatever it leaves in GET /v1/commands must not
    # hide the step from the conductor, which only looks at the last command.

    if not plain:
        hold = {"step": "ironbus_test_hold", "interface": "deploy",
                "priority": 0}
        started = None
        try:
            started = client.execute_clean_step(hold, matching, ports)
            peek = client._command(node=matching, method="agent.get_command",
                                   params={"command_id": started["id"]},
                                   wait=True)
        except Exception as exc:  # noqa: BLE001
            peek = {"unexpected": describe_exc(exc)}
        if not await_release("hold"):
            record("control-command-during-step", False,
                   "no release confirmation on stdin within 15 s")
        else:
            def control_during_step():
                final = client._wait_for_command(matching,
                                                 "clean.execute_clean_step")
                commands = client.get_commands_status(matching)
                done = completed("clean", hold, commands)
                return (final.get("command_status") == "SUCCEEDED"
                        and done is not None
                        and done.get("command_status") == "SUCCEEDED",
                        {"started": started and started.get("command_status"),
                         "agent.get_command": {
                             k: peek.get(k) for k in
                             ("command_name", "command_status", "unexpected")
                             if k in peek},
                         "final": final.get("command_status"),
                         "listed": [(c.get("command_name"),
                                     c.get("command_status"))
                                    for c in commands[-3:]],
                         "conductor_sees": done and
                         done.get("command_status")})
            check("control-command-during-step", control_during_step)

    failed = [name for name, ok in CHECKS if not ok]
    emit({"check": "done", "ok": not failed,
          "detail": {"checks": len(CHECKS), "failed": failed}})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
