/**
 * The inject_files deploy step over real HTTP on a real loop disk with two ext4 partitions; the
 * result is checked by mounting the partitions read-only afterwards.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import type { ConfigInput } from "../core/config.js";
import { resolveInRoot } from "../utilities/system/inject.js";
import { startAgent, type TestAgent } from "./helpers/agent.js";
import type { LoopDevice } from "./helpers/loop.js";
import { assertFailed, assertSucceeded, command, executeStep, loopDisks, parted, recordingRunner, sha256 } from "./helpers/system.js";

const b64 = (s: string): string => Buffer.from(s).toString("base64");

/** Mounts a partition (read-only unless asked), runs fn, unmounts. */
function onPartition<T>(dev: string, fn: (dir: string) => T, readOnly = true): T {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-check-"));
  execFileSync("mount", [...(readOnly ? ["-o", "ro"] : []), dev, dir]);
  try {
    return fn(dir);
  } finally {
    execFileSync("umount", [dir]);
    rmSync(dir, { recursive: true });
  }
}

/** GPT: p1 ext4 "data" volume with /data, p2 ext4 root with /etc (hostname, resolv.conf -> /run/resolv.conf). */
function deployedDisk(disk: LoopDevice): { p1: string; p2: string } {
  parted(disk.path, "mklabel", "gpt", "mkpart", "data", "ext4", "1MiB", "16MiB", "mkpart", "root", "ext4", "16MiB", "100%");
  const p1 = `${disk.path}p1`;
  const p2 = `${disk.path}p2`;
  for (const p of [p1, p2]) execFileSync("mkfs.ext4", ["-q", "-F", p], { stdio: "ignore" });
  onPartition(p1, (dir) => mkdirSync(join(dir, "data")), false);
  onPartition(
    p2,
    (dir) => {
      mkdirSync(join(dir, "etc"));
      writeFileSync(join(dir, "etc/hostname"), "old-name\n");
      symlinkSync("/run/resolv.conf", join(dir, "etc/resolv.conf"));
    },
    false,
  );
  return { p1, p2 };
}

async function agentWith(t: TestContext, config: Partial<ConfigInput>): Promise<TestAgent> {
  const { run } = recordingRunner({});
  const agent = await startAgent({ config, run });
  t.after(() => agent.close());
  return agent;
}

describe("system: inject_files", () => {
  it("writes and deletes files found by directory or by partition number, with modes, owners, merged node properties", async (t) => {
    const [disk, other] = loopDisks(t, [48, 16]) as [LoopDevice, LoopDevice];
    const { p1, p2 } = deployedDisk(disk);
    const otherBefore = sha256(other.file);
    const hostResolv = existsSync("/run/resolv.conf") ? readFileSync("/run/resolv.conf") : undefined;
    const agent = await agentWith(t, { allowDestructive: true, allowedDevices: [disk.path] });
    const node = { uuid: "n", properties: { inject_files: [{ path: "/data/from-properties.txt", content: b64("from properties\n"), mode: 0o640 }] } };
    const files = [
      { path: "/etc/ironbus/agent.conf", content: b64("hello\n"), mode: 0o600, dirmode: 0o750, owner: 1234, group: 5678 },
      { path: "/etc/hostname", deleted: true },
      { path: "/etc/resolv.conf", content: b64("nameserver 192.0.2.1\n") },
      { path: "/marker", partition: 1, content: b64("on partition 1\n") },
    ];
    const rec = assertSucceeded(await executeStep(agent, "deploy", "inject_files", "deploy", node, { files }));
    assert.deepEqual((rec["command_result"] as Record<string, unknown>)["deploy_result"], [
      { path: "/data/from-properties.txt", device: p1, deleted: false },
      { path: "/etc/ironbus/agent.conf", device: p2, deleted: false },
      { path: "/etc/hostname", device: p2, deleted: true },
      { path: "/etc/resolv.conf", device: p2, deleted: false },
      { path: "/marker", device: p1, deleted: false },
    ]);

    onPartition(p1, (dir) => {
      assert.equal(readFileSync(join(dir, "data/from-properties.txt"), "utf8"), "from properties\n");
      assert.equal(statSync(join(dir, "data/from-properties.txt")).mode & 0o777, 0o640);
      assert.equal(readFileSync(join(dir, "marker"), "utf8"), "on partition 1\n");
    });
    onPartition(p2, (dir) => {
      const conf = statSync(join(dir, "etc/ironbus/agent.conf"));
      assert.equal(readFileSync(join(dir, "etc/ironbus/agent.conf"), "utf8"), "hello\n");
      assert.equal(conf.mode & 0o777, 0o600);
      assert.deepEqual([conf.uid, conf.gid], [1234, 5678]);
      assert.equal(statSync(join(dir, "etc/ironbus")).mode & 0o777, 0o750);
      assert.equal(existsSync(join(dir, "etc/hostname")), false);
      // The image's absolute symlink was followed inside the image, never onto this machine's /run.
      assert.equal(readFileSync(join(dir, "run/resolv.conf"), "utf8"), "nameserver 192.0.2.1\n");
    });
    assert.deepEqual(existsSync("/run/resolv.conf") ? readFileSync("/run/resolv.conf") : undefined, hostResolv);
    assert.ok(!readFileSync("/proc/self/mounts", "utf8").includes(disk.path), "left mounted");
    assert.equal(sha256(other.file), otherBefore);

    const none = assertSucceeded(await executeStep(agent, "deploy", "inject_files", "deploy", { uuid: "n", properties: {} }));
    assert.deepEqual((none["command_result"] as Record<string, unknown>)["deploy_result"], []);
  });

  it("refuses partitions outside allowedDevices, bad file lists, and everything when allowDestructive is off", async (t) => {
    const [disk, other] = loopDisks(t, [48, 48]) as [LoopDevice, LoopDevice];
    deployedDisk(disk);
    const { p2: otherRoot } = deployedDisk(other);
    const before = [sha256(disk.file), sha256(other.file)];
    const agent = await agentWith(t, { allowDestructive: true, allowedDevices: [disk.path] });
    const node = { uuid: "n", properties: {} };
    assertFailed(await executeStep(agent, "deploy", "inject_files", "deploy", node, { files: [{ path: "/etc/x", partition: otherRoot, content: b64("x") }] }), "DeviceNotAllowed");
    const e = assertFailed(
      await executeStep(agent, "deploy", "inject_files", "deploy", node, { files: [{ path: "relative/x", content: b64("x") }, { path: "/top", content: b64("x") }, { path: "/etc/y", content: "eA==", colour: "red" }] }),
      "InvalidCommandParamsError",
    );
    assert.equal(e["code"], 400);
    assert.match(String(e["details"]), /must be absolute.*requires "partition".*unexpected fields/);
    assertFailed(await executeStep(agent, "deploy", "inject_files", "deploy", node, { files: [{ path: "/nowhere/x", content: b64("x") }] }), "DeviceNotFound");
    const off = await agentWith(t, { allowDestructive: false, allowedDevices: [disk.path] });
    assertFailed(await executeStep(off, "deploy", "inject_files", "deploy", node, { files: [{ path: "/etc/x", content: b64("x") }] }), "DestructiveCommandRefused");
    assert.deepEqual([sha256(disk.file), sha256(other.file)], before);
  });

  it("a partition number is on the install disk: the one chosen by root device hints among several allowed disks", async (t) => {
    const [first, second] = loopDisks(t, [48, 48]) as [LoopDevice, LoopDevice];
    deployedDisk(first);
    const { p1 } = deployedDisk(second);
    const before = sha256(first.file);
    const agent = await agentWith(t, { allowDestructive: true, allowedDevices: [first.path, second.path] });
    const files = [{ path: "/chosen", partition: "1", content: b64("by hint\n") }];
    const node = { uuid: "n", properties: {}, instance_info: { root_device: { name: second.path } } };
    const rec = assertSucceeded(await executeStep(agent, "deploy", "inject_files", "deploy", node, { files }));
    assert.deepEqual((rec["command_result"] as Record<string, unknown>)["deploy_result"], [{ path: "/chosen", device: p1, deleted: false }]);
    onPartition(p1, (dir) => assert.equal(readFileSync(join(dir, "chosen"), "utf8"), "by hint\n"));
    assert.equal(sha256(first.file), before);
    // Without hints the disk area's default policy (smallest disk of at least 4 GiB) takes neither small
    // loop disk: it finds this machine's own disk, which the guard refuses, or none at all.
    const reply = await executeStep(agent, "deploy", "inject_files", "deploy", { uuid: "n", properties: {} }, { files });
    assert.equal(reply.body["command_status"], "FAILED");
    assert.ok(["DeviceNotAllowed", "DeviceNotFound"].includes(String((reply.body["command_error"] as Record<string, unknown>)["type"])), JSON.stringify(reply.body));
    assert.equal(sha256(first.file), before);
  });

  it("uses the configured priority (injectFilesPriority) in get_deploy_steps", async (t) => {
    const agent = await agentWith(t, { injectFilesPriority: 42 });
    const rec = assertSucceeded(await command(agent, "deploy.get_deploy_steps", { node: {}, ports: [] }));
    const steps = ((rec["command_result"] as Record<string, unknown>)["deploy_steps"] as Record<string, Array<Record<string, unknown>>>)["GenericHardwareManager"] ?? [];
    assert.equal(steps.find((s) => s["step"] === "inject_files")?.["priority"], 42);
  });

  it("resolves paths inside the root: .. stops at the root, absolute symlinks are re-rooted", async () => {
    const root = mkdtempSync(join(tmpdir(), "ironbus-root-"));
    mkdirSync(join(root, "etc"));
    symlinkSync("/var/lib/x", join(root, "etc/abs"));
    symlinkSync("../../../../../../outside", join(root, "etc/rel"));
    assert.equal(await resolveInRoot(root, "etc/abs/file"), join(root, "var/lib/x/file"));
    assert.equal(await resolveInRoot(root, "etc/rel"), join(root, "outside"));
    assert.equal(await resolveInRoot(root, "../../etc/../x"), join(root, "x"));
    assert.equal(await resolveInRoot(root, "etc/abs", false), join(root, "etc/abs"));
    rmSync(root, { recursive: true });
  });
});
