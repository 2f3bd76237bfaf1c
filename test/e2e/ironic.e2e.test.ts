/**
 * ironbus under a REAL Ironic (Debian bookworm's ironic-api + ironic-conductor 21.4, standalone,
 * noauth, sqlite, json-rpc, all on 127.0.0.1): lookup, heartbeats, deploy.get_deploy_steps and a
 * whole deploy of a 64 MiB raw image onto a loop device, to `active`. docs/ironic-e2e.md.
 *
 * Skipped unless IRONBUS_E2E_IRONIC=1. When enabled, anything missing (root, apt, Ironic, the
 * tools) is a failure, not a skip. It runs test/e2e/ironic/{setup,run,teardown}.sh; teardown runs
 * whatever happened before, and leaves the logs in /tmp/ironbus-ironic-e2e-logs.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const ENABLED = process.env["IRONBUS_E2E_IRONIC"] === "1";
const HERE = fileURLToPath(new URL("./ironic/", import.meta.url));
const SCRATCH = process.env["IRONBUS_E2E_DIR"] ?? "/tmp/ironbus-ironic-e2e";

interface AgentCommand {
  command: string | undefined;
  status: string | undefined;
}
interface E2eResult {
  ok: boolean;
  node: string | null;
  loop: string | null;
  root_device: Record<string, unknown> | null;
  callback_url: string | undefined;
  agent_locked_down: boolean | undefined;
  lookup: { node: string; attempts: number } | null;
  ironic_agent_url: string | null;
  ironic_agent_last_heartbeat: string | null;
  ironic_agent_version: string | null;
  ironic_cached_deploy_steps: { deploy?: Array<{ step: string }> } | null;
  heartbeats: { accepted: number; refused: number };
  agent_commands: AgentCommand[];
  conductor_commands: string[];
  provision_state: string | null;
  last_error: string | null;
  image_sha256: string | null;
  device_sha256: string | null;
  marker: string | null;
  marker_expected: string | null;
  power_commands_run: string[];
  timings: Record<string, number | null>;
}

function script(name: string, timeoutMs: number): { status: number | null; output: string } {
  const r = spawnSync("bash", [join(HERE, name)], {
    encoding: "utf8",
    timeout: timeoutMs,
    killSignal: "SIGTERM",
    env: { ...process.env, IRONBUS_E2E_NODE: process.execPath },
  });
  const output = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  process.stdout.write(output.replace(/^/gm, `# [${name}] `) + "\n");
  return { status: r.status, output };
}

const SKIP = ENABLED ? false : "set IRONBUS_E2E_IRONIC=1 to run (root, Debian bookworm, installs ironic-api/ironic-conductor)";

describe("ironbus driven by a real Ironic 21.4", () => {
  it("looks up, heartbeats, runs get_deploy_steps and deploys a raw image onto a loop device to active", { skip: SKIP, timeout: 900_000 }, (t) => {
    assert.equal(process.getuid?.(), 0, "the Ironic e2e needs root (apt-get, losetup); enabled without it is a failure");
    assert.ok(existsSync("/usr/bin/apt-get"), "the Ironic e2e needs Debian's apt-get (bookworm's ironic-api/ironic-conductor)");
    t.after(() => {
      const down = script("teardown.sh", 120_000);
      assert.equal(down.status, 0, `teardown.sh failed:\n${down.output}`);
    });
    const setup = script("setup.sh", 900_000);
    assert.equal(setup.status, 0, `setup.sh failed:\n${setup.output}`);
    const run = script("run.sh", 300_000);
    const resultFile = join(SCRATCH, "result.json");
    assert.ok(existsSync(resultFile), `run.sh wrote no result.json (exit ${run.status}):\n${run.output}`);
    const r = JSON.parse(readFileSync(resultFile, "utf8")) as E2eResult;

    // safety: Ironic only ever pointed the agent at our loop device; no power command ran
    assert.ok(r.loop !== null && /^\/dev\/loop\d+$/.test(r.loop), `target ${r.loop}`);
    assert.deepEqual(r.root_device, { name: r.loop });
    assert.deepEqual(r.power_commands_run, [], "the agent must not run its power commands (out-of-band fake power)");

    // lookup: the agent found its node by MAC and got a token
    assert.ok(r.lookup !== null, "the agent logged no successful lookup");
    assert.equal(r.lookup.node, r.node);
    assert.equal(r.agent_locked_down, false, "the agent got no usable token from lookup");

    // heartbeats: Ironic recorded our callback URL and the heartbeat
    assert.ok(r.callback_url !== undefined && /^https?:\/\/127\.0\.0\.1:\d+$/.test(r.callback_url), `callback ${r.callback_url}`);
    assert.equal(r.ironic_agent_url, r.callback_url, "driver_internal_info.agent_url is not our callback URL");
    assert.ok(r.ironic_agent_last_heartbeat, "driver_internal_info.agent_last_heartbeat is not set");
    assert.ok(r.heartbeats.accepted >= 1, "no heartbeat was accepted");
    assert.ok(r.ironic_agent_version, "Ironic recorded no agent_version");

    // get_deploy_steps: sent by the conductor, served by the agent, cached by Ironic
    assert.ok(r.conductor_commands.includes("deploy.get_deploy_steps"), `conductor sent ${r.conductor_commands.join(", ")}`);
    assert.ok(
      r.agent_commands.some((c) => c.command === "deploy.get_deploy_steps" && c.status === "SUCCEEDED"),
      `agent ran ${JSON.stringify(r.agent_commands)}`,
    );
    const cached = (r.ironic_cached_deploy_steps?.deploy ?? []).map((s) => s.step);
    assert.ok(cached.includes("write_image"), `Ironic cached deploy steps ${cached.join(", ")}`);

    // the whole deploy
    assert.equal(r.last_error, null, `last_error: ${r.last_error}`);
    assert.equal(r.provision_state, "active", `provision_state ${r.provision_state}\n${run.output}`);
    assert.deepEqual(
      r.agent_commands.map((c) => `${c.command} ${c.status}`),
      ["deploy.get_deploy_steps SUCCEEDED", "deploy.execute_deploy_step SUCCEEDED", "standby.get_partition_uuids SUCCEEDED", "standby.sync SUCCEEDED"],
    );
    assert.ok(!r.conductor_commands.includes("standby.power_off"), "power off must be out of band");
    assert.ok(!r.conductor_commands.includes("image.install_bootloader"), "BIOS whole-disk: no install_bootloader");
    assert.ok(r.image_sha256 !== null && /^[0-9a-f]{64}$/.test(r.image_sha256));
    assert.equal(r.device_sha256, r.image_sha256, "the loop device does not hold the image");
    assert.equal(r.marker, r.marker_expected, "the marker file is not readable from the written partition");
    assert.equal(run.status, 0, `run.sh failed:\n${run.output}`);
    t.diagnostic(`timings: ${JSON.stringify(r.timings)}`);
  });
});
