/**
 * The erase steps on real loop devices, run through the router exactly as Ironic sends them
 * (clean.execute_clean_step with a node), then checked on the device itself.
 *
 * Loop devices have neither NVMe format nor ATA security: erase_devices falls back to shred here,
 * which the tests assert (the secure-erase decisions are tested on captured tool output in
 * disk-secure-erase.test.ts). Each test's node skips this machine's own disks, and allowedDevices
 * holds only the test's loop devices.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import type { JsonObject } from "../core/envelope.js";
import { type CommandRunner, execRunner } from "../utilities/exec.js";
import { startAgent, TOKEN } from "./helpers/agent.js";
import { createLoopDevice } from "./helpers/loop.js";
import { cleanStep, diskAgent, isZero, looksRandom, nodeFor, partprobe, readAt, sh, signatures, writeAt } from "./fixtures/disk/harness.js";

const MiB = 1024 * 1024;

function resultOf(rec: { result: unknown }): Record<string, JsonObject> {
  return (rec.result as { clean_result: Record<string, JsonObject> }).clean_result;
}

/** A GPT with two partitions (vfat, ext4) and a marker in the middle of the disk. */
function preparedDisk(path: string): Buffer {
  sh("parted", ["-s", path, "mklabel", "gpt", "mkpart", "esp", "fat32", "1MiB", "3MiB", "mkpart", "root", "ext4", "3MiB", "7MiB", "set", "1", "esp", "on"]);
  partprobe(path, 2);
  sh("mkfs.vfat", ["-n", "ESP", `${path}p1`]);
  sh("mkfs.ext4", ["-q", "-F", "-L", "root", `${path}p2`]);
  const marker = randomBytes(4096);
  writeAt(path, 5 * MiB + 512, marker);
  return marker;
}

describe("erase_devices_metadata (real loop devices)", () => {
  it("wipes partitions then the disk: no signature, both GPT areas zero, GPT gone, data in the middle untouched", async (t) => {
    const loop = createLoopDevice(8, t);
    const marker = preparedDisk(loop.path);
    assert.deepEqual(signatures(loop.path).sort(), ["PMBR", "gpt", "gpt"].sort(), "the disk starts with a GPT");
    assert.ok(signatures(`${loop.path}p2`).includes("ext4"));

    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices_metadata", await nodeFor());
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual(resultOf(rec)[loop.path], { action: "erased", method: "metadata", partitions: [`${loop.path}p1`, `${loop.path}p2`] });

    assert.deepEqual(signatures(loop.path), [], "wipefs finds nothing");
    assert.throws(() => sh("blkid", ["-p", loop.path]), (e: { status?: number }) => e.status === 2, "blkid finds nothing");
    assert.ok(isZero(readAt(loop.path, 0, 33 * 512)), "first 33 sectors zero");
    assert.ok(isZero(readAt(loop.path, loop.sizeBytes - 33 * 512, 33 * 512)), "last 33 sectors zero");
    assert.doesNotMatch(sh("sgdisk", ["-p", loop.path]), /^\s+\d+\s+\d+\s+\d+/m, "sgdisk lists no partition");
    assert.ok(!existsSync(`/sys/block/${loop.path.slice(5)}/${loop.path.slice(5)}p1`), "the kernel dropped the partitions");
    assert.deepEqual(readAt(loop.path, 5 * MiB + 512, 4096), marker, "only metadata went: the data in the middle is intact");

    const last = agent.progress.at(-1);
    assert.equal(last?.stage, "erase_devices_metadata");
    assert.equal(last?.percent, 100);
    assert.match(last?.message ?? "", new RegExp(loop.path));
  });

  it("also runs as the deploy step erase_devices_metadata (IPA offers it at priority 0)", async (t) => {
    const loop = createLoopDevice(8, t);
    preparedDisk(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await agent.router.submit({
      name: "deploy.execute_deploy_step",
      params: { step: { step: "erase_devices_metadata", interface: "deploy", priority: 0, args: {} }, node: await nodeFor(), ports: [] },
      wait: true,
    });
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual(signatures(loop.path), []);
  });

  it("over real HTTP: POST /v1/commands/ clean.execute_clean_step erase_devices_metadata", async (t) => {
    const loop = createLoopDevice(8, t);
    preparedDisk(loop.path);
    const a = await startAgent({ config: { allowDestructive: true, allowedDevices: [loop.path] } });
    t.after(() => a.close());
    const node = await nodeFor();
    const res = await fetch(`${a.url}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: "clean.execute_clean_step", params: { step: { step: "erase_devices_metadata", interface: "deploy", priority: 99 }, node, ports: [] } }),
    });
    const body = (await res.json()) as { command_status: string; command_error: unknown; command_result: { clean_result: Record<string, JsonObject> } };
    assert.equal(body.command_status, "SUCCEEDED", JSON.stringify(body.command_error));
    assert.equal(body.command_result.clean_result[loop.path]?.["method"], "metadata");
    assert.deepEqual(signatures(loop.path), []);
    assert.ok(isZero(readAt(loop.path, 0, 33 * 512)));
  });
});

describe("erase_devices (real loop devices: no secure erase, so shred)", () => {
  it("falls back to shred (loop devices have no ATA security) and, with zeroize, leaves zeros", async (t) => {
    const loop = createLoopDevice(4, t);
    writeAt(loop.path, 0, randomBytes(4 * MiB));
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor({ agent_erase_devices_iterations: 1, agent_erase_devices_zeroize: true }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    const outcome = resultOf(rec)[loop.path];
    assert.equal(outcome?.["method"], "shred", "fell back to shred");
    assert.match(String(outcome?.["fallback_reason"]), /no ATA secure erase/);
    assert.ok(isZero(readAt(loop.path, 0, 4 * MiB)), "the whole device reads back as zeros");
  });

  it("without zeroize the device holds random data", async (t) => {
    const loop = createLoopDevice(4, t);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor({ agent_erase_devices_zeroize: false }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual({ ...resultOf(rec)[loop.path], fallback_reason: "-" }, { action: "erased", method: "shred", iterations: 1, zeroize: false, fallback_reason: "-" });
    const head = readAt(loop.path, 0, MiB);
    assert.ok(!isZero(head));
    assert.ok(looksRandom(head), "random-looking bytes");
  });

  it("disk_erasure_concurrency 2 erases two loop devices at once, with a progress event per disk", async (t) => {
    const a = createLoopDevice(4, t);
    const b = createLoopDevice(4, t);
    let inFlight = 0;
    let maxInFlight = 0;
    const counting: CommandRunner = async (cmd, args, opts) => {
      if (cmd !== "shred") return execRunner(cmd, args, opts);
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        return await execRunner(cmd, args, opts);
      } finally {
        inFlight -= 1;
      }
    };
    const agent = await diskAgent({ allowedDevices: [a.path, b.path], run: counting });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor({ disk_erasure_concurrency: 2, agent_erase_devices_iterations: 2 }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.equal(maxInFlight, 2, "both shreds ran at the same time");
    for (const dev of [a, b]) {
      assert.equal(resultOf(rec)[dev.path]?.["method"], "shred");
      assert.ok(isZero(readAt(dev.path, 0, 4 * MiB)));
    }
    const steps = agent.progress.filter((p) => p.stage === "erase_devices").map((p) => p.percent);
    assert.deepEqual(steps, [0, 50, 100]);
    assert.equal(agent.progress.at(-1)?.bytes_done, 8 * MiB);
  });

  it("a cancel kills the running shred and frees the agent", async (t) => {
    const loop = createLoopDevice(32, t);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const started = new Promise<void>((resolve) => agent.router.on("progress", () => resolve()));
    const rec = await agent.router.submit({
      id: "erase-to-cancel",
      name: "clean.execute_clean_step",
      params: { step: { step: "erase_devices", interface: "deploy", priority: 10 }, node: await nodeFor({ agent_erase_devices_iterations: 1000 }), ports: [] },
    });
    await started;
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    const cancel = await agent.router.submit({ name: "agent.cancel_command", params: { command_id: "erase-to-cancel" } });
    assert.deepEqual(cancel.result, { cancelled: true });
    await rec.done;
    assert.equal(rec.status, "FAILED");
    assert.equal(rec.error?.type, "CommandCancelled");
    while (agent.router.busyWith() !== undefined) await new Promise((r) => setTimeout(r, 10));
    assert.ok(Date.now() - t0 < 2000, "the lock is released promptly: shred was killed, not waited for");
    assert.doesNotMatch(sh("ps", ["-eo", "args"]), new RegExp(`shred .*${loop.path}\\b`), "no shred left running");
  });
});

describe("erase_devices_express (real loop device: not NVMe, so metadata)", () => {
  it("erases the metadata of a disk without NVMe format", async (t) => {
    const loop = createLoopDevice(8, t);
    const marker = preparedDisk(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices_express", await nodeFor());
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.equal(resultOf(rec)[loop.path]?.["method"], "metadata");
    assert.equal(resultOf(rec)[loop.path]?.["fallback_reason"], "not an NVMe device");
    assert.deepEqual(signatures(loop.path), []);
    assert.deepEqual(readAt(loop.path, 5 * MiB + 512, 4096), marker);
  });
});

describe("clean steps offered", () => {
  it("get_clean_steps lists IPA's erase steps with IPA's priorities, abortable, interface deploy", async () => {
    const agent = await diskAgent({ allowedDevices: [] });
    const rec = await agent.router.submit({ name: "clean.get_clean_steps", params: { node: {}, ports: [] } });
    const steps = (rec.result as { clean_steps: Record<string, JsonObject[]> }).clean_steps["GenericHardwareManager"] ?? [];
    const erase = steps.filter((s) => String(s["step"]).startsWith("erase_devices"));
    assert.deepEqual(erase, [
      { step: "erase_devices", priority: 10, interface: "deploy", reboot_requested: false, abortable: true },
      { step: "erase_devices_metadata", priority: 99, interface: "deploy", reboot_requested: false, abortable: true },
      { step: "erase_devices_express", priority: 0, interface: "deploy", reboot_requested: false, abortable: true },
    ]);
  });
});
