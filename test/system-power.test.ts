/**
 * standby.power_off / standby.run_image over real HTTP. Nothing is powered off: the configured
 * power command is a script that records its arguments, the sysrq fallback writes to a temporary
 * file, and the runner refuses the real power tools whatever the configuration says.
 */
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import { type ConfigInput, parseConfig } from "../core/config.js";
import { startAgent, type TestAgent } from "./helpers/agent.js";
import { assertFailed, assertSucceeded, command, recordingRunner } from "./helpers/system.js";

interface Setup {
  readonly agent: TestAgent;
  readonly dir: string;
  readonly marker: string;
  readonly sysrq: string;
  readonly calls: ReturnType<typeof recordingRunner>["calls"];
}

/** A script that appends its name and arguments to the marker, prints `stderr`, exits `code`. */
function script(dir: string, name: string, marker: string, code = 0, stderr = ""): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\necho "${name} $*" >> "${marker}"\n${stderr ? `echo "${stderr}" >&2\n` : ""}exit ${code}\n`);
  chmodSync(path, 0o755);
  return path;
}

async function setup(t: TestContext, opts: { code?: number; stderr?: string; sysrq?: boolean; config?: Partial<ConfigInput> } = {}): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-power-"));
  const marker = join(dir, "marker");
  const sysrq = join(dir, "sysrq-trigger");
  const config: Partial<ConfigInput> = {
    allowDestructive: true,
    powerOffCommand: [script(dir, "fake-poweroff", marker, opts.code, opts.stderr), "--no-wall", "now"],
    rebootCommand: [script(dir, "fake-reboot", marker, opts.code, opts.stderr), "-f"],
    sysrqTriggerFile: opts.sysrq === false ? "" : sysrq,
    ...opts.config,
  };
  // Never let a test reach the real defaults: check what the agent will use before starting it.
  const parsed = parseConfig(config);
  assert.ok(parsed.powerOffCommand[0]?.startsWith(dir) && parsed.rebootCommand[0]?.startsWith(dir));
  assert.ok(parsed.sysrqTriggerFile === "" || parsed.sysrqTriggerFile.startsWith(dir));
  const { run, calls } = recordingRunner({});
  const agent = await startAgent({ config, run });
  t.after(() => agent.close());
  return { agent, dir, marker, sysrq, calls };
}

describe("system: power", () => {
  it("power_off syncs, then runs the configured command with its arguments", async (t) => {
    const s = await setup(t);
    const reply = await command(s.agent, "standby.power_off", {});
    const rec = assertSucceeded(reply);
    assert.equal(rec["command_name"], "power_off");
    assert.equal(rec["command_result"], null);
    assert.equal(readFileSync(s.marker, "utf8"), "fake-poweroff --no-wall now\n");
    const order = s.calls.map((c) => c.cmd);
    assert.ok(order.indexOf("sync") >= 0 && order.indexOf("sync") < order.findIndex((c) => c.endsWith("fake-poweroff")), order.join(","));
    assert.equal(existsSync(s.sysrq), false);
  });

  it("run_image syncs, then runs the configured reboot command", async (t) => {
    const s = await setup(t);
    assertSucceeded(await command(s.agent, "standby.run_image", {}));
    assert.equal(readFileSync(s.marker, "utf8"), "fake-reboot -f\n");
    const order = s.calls.map((c) => c.cmd);
    assert.ok(order.indexOf("sync") < order.findIndex((c) => c.endsWith("fake-reboot")));
  });

  it("falls back to sysrq when the command fails or is ignored", async (t) => {
    const failing = await setup(t, { code: 3 });
    assertSucceeded(await command(failing.agent, "standby.power_off", {}));
    assert.equal(readFileSync(failing.sysrq, "utf8"), "o");
    const ignored = await setup(t, { stderr: "Running in chroot, ignoring request." });
    assertSucceeded(await command(ignored.agent, "standby.run_image", {}));
    assert.equal(readFileSync(ignored.sysrq, "utf8"), "b");
    assert.equal(readFileSync(ignored.marker, "utf8"), "fake-reboot -f\n");
  });

  it("fails with SystemRebootError when the command fails and sysrq is off", async (t) => {
    const s = await setup(t, { code: 2, sysrq: false });
    const error = assertFailed(await command(s.agent, "standby.power_off", {}), "SystemRebootError");
    assert.equal(error["code"], 500);
    assert.match(String(error["details"]), /exit code 2/);
  });

  it("is refused before anything runs when allowDestructive is off, and takes no parameters", async (t) => {
    const s = await setup(t, { config: { allowDestructive: false } });
    for (const name of ["standby.power_off", "standby.run_image"]) {
      const reply = await command(s.agent, name, {});
      assert.equal(reply.status, 403);
      assert.match(String(reply.body["faultstring"]), /allow_destructive is off/);
    }
    assert.equal(existsSync(s.marker), false);
    assert.equal(s.calls.length, 0);
    const on = await setup(t);
    assertFailed(await command(on.agent, "standby.power_off", { force: true }), "CommandExecutionError");
    assert.equal(existsSync(on.marker), false);
  });
});
