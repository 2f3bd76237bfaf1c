/**
 * Software RAID steps over real HTTP on real loop disks: partitions made by parted, superblocks
 * checked and zeroed by the real mdadm. Where the kernel has the md driver, mdadm builds the arrays
 * for real and the test reads `mdadm --detail`. This VM's kernel has none (CONFIG_MD is off), so
 * there `mdadm --create` is simulated: the call is recorded and the superblocks it would write are
 * written by hand (real v1.2 superblocks, which the real `mdadm --examine` reads and the real
 * `mdadm --zero-superblock` removes).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import type { ConfigInput } from "../core/config.js";
import { startAgent, type TestAgent } from "./helpers/agent.js";
import type { LoopDevice } from "./helpers/loop.js";
import { requireSamples } from "./helpers/samples.js";
import {
  assertFailed,
  assertSucceeded,
  blkid,
  command,
  executeStep,
  HAVE_MD,
  loopDisks,
  mdExamine,
  mdExamineAt,
  parted,
  partitionsOf,
  recordingRunner,
  sha256,
  writeMdSuperblock,
} from "./helpers/system.js";

const MODE = HAVE_MD ? "mdadm for real" : "mdadm --create simulated: no md driver in this kernel";
const GIB = 2 ** 30;
const MIB = 2 ** 20;

/** mdadm --create/--detail faked where the kernel cannot build arrays; every other mdadm call is real. */
function mdadmFakes(): Parameters<typeof recordingRunner>[0] {
  if (HAVE_MD) return {};
  const arrays = new Map<string, { level: string; name: string; members: string[] }>();
  return {
    mdadm: (args) => {
      if (args[0] === "--create") {
        const md = args[1] ?? "";
        const level = args[args.indexOf("--level") + 1] ?? "";
        const name = args[args.indexOf("--name") + 1] ?? "";
        const members = args.slice(args.findIndex((a) => a.startsWith("--raid-devices=")) + 1);
        const uuid = randomBytes(16);
        members.forEach((m, role) => writeMdSuperblock(m, { name: `ironbus:${name}`, level: Number(level), raidDisks: members.length, role, arrayUuid: uuid }));
        arrays.set(md, { level, name, members });
        return { stderr: `mdadm: array ${md} started.\n` };
      }
      const known = args[0] === "--detail" ? arrays.get(args[1] ?? "") : undefined;
      if (known !== undefined) {
        const rows = known.members.map((m, i) => `       ${i}       7        ${i}        ${i}      active sync   ${m}`);
        return { stdout: `${args[1]}:\n        Raid Level : raid${known.level}\n              Name : ironbus:${known.name}\n\n    Number   Major   Minor   RaidDevice State\n${rows.join("\n")}\n` };
      }
      return undefined;
    },
  };
}

async function raidAgent(t: TestContext, allowed: readonly string[], config: Partial<ConfigInput> = {}): Promise<{ agent: TestAgent; calls: ReturnType<typeof recordingRunner>["calls"] }> {
  const { run, calls } = recordingRunner(mdadmFakes());
  const agent = await startAgent({ config: { allowDestructive: true, allowedDevices: [...allowed], ...config }, run });
  t.after(() => agent.close());
  return { agent, calls };
}

const mdCreates = (calls: ReturnType<typeof recordingRunner>["calls"]): string[][] => calls.filter((c) => c.cmd === "mdadm" && c.args[0] === "--create").map((c) => [...c.args]);

/** A disk that is someone else's RAID member: one partition with an md superblock. */
function foreignMember(disk: LoopDevice): string {
  parted(disk.path, "mklabel", "gpt", "mkpart", "other", "1MiB", "100%");
  const part = `${disk.path}p1`;
  writeMdSuperblock(part, { name: "other:keep", level: 1, raidDisks: 2, role: 0 });
  return part;
}

const TWO_VOLUMES = {
  logical_disks: [
    { size_gb: 1, raid_level: "1", controller: "software", volume_name: "root", is_root_volume: true },
    { size_gb: "MAX", raid_level: "0", controller: "software", volume_name: "data" },
  ],
};

describe(`system: software RAID (${MODE})`, () => {
  it("apply_configuration (deploy step) partitions every allowed disk with the UEFI gap and builds RAID-1 + RAID-0; delete_configuration leaves no superblock", async (t) => {
    const [a, b, other] = loopDisks(t, [2048, 2048, 64]) as [LoopDevice, LoopDevice, LoopDevice];
    const foreign = foreignMember(other);
    const otherBefore = sha256(other.file);
    const { agent, calls } = await raidAgent(t, [a.path, b.path]);
    const node = { uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", instance_info: { deploy_boot_mode: "uefi" } };

    const rec = assertSucceeded(await executeStep(agent, "deploy", "apply_configuration", "raid", node, { raid_config: TWO_VOLUMES, delete_existing: true }));
    assert.deepEqual((rec["command_result"] as Record<string, unknown>)["deploy_result"], TWO_VOLUMES);

    const creates = mdCreates(calls);
    assert.equal(creates.length, 2);
    const [md0, md1] = [creates[0]?.[1] ?? "", creates[1]?.[1] ?? ""];
    assert.deepEqual(creates[0], ["--create", md0, "--force", "--run", "--metadata=1", "--level", "1", "--name", "root", "--raid-devices=2", `${a.path}p1`, `${b.path}p1`]);
    assert.deepEqual(creates[1], ["--create", md1, "--force", "--run", "--metadata=1", "--level", "0", "--name", "data", "--raid-devices=2", `${a.path}p2`, `${b.path}p2`]);
    for (const disk of [a, b]) {
      assert.deepEqual(partitionsOf(disk.path), [`${disk.path}p1`, `${disk.path}p2`]);
      const p1 = blkid(`${disk.path}p1`);
      const p2 = blkid(`${disk.path}p2`);
      assert.equal(p1["PART_ENTRY_SCHEME"], "gpt");
      // 551 MiB left free for the ESP; the first volume ends at 1 GiB (IPA's arithmetic), the second fills the disk.
      assert.equal(Number(p1["PART_ENTRY_OFFSET"]) * 512, 551 * MIB);
      assert.equal((Number(p1["PART_ENTRY_OFFSET"]) + Number(p1["PART_ENTRY_SIZE"])) * 512, GIB);
      assert.equal(Number(p2["PART_ENTRY_OFFSET"]) * 512, GIB);
      for (const [part, level] of [
        [`${disk.path}p1`, "raid1"],
        [`${disk.path}p2`, "raid0"],
      ] as const) {
        const ex = mdExamine(part);
        assert.equal(ex.code, 0, ex.out);
        assert.match(ex.out, new RegExp(`Raid Level : ${level}`));
      }
    }
    if (HAVE_MD) {
      const detail = execFileSync("mdadm", ["--detail", md0], { encoding: "utf8" });
      assert.match(detail, /State : (clean|active)/);
      assert.match(detail, /Raid Level : raid1/);
      assert.ok(detail.includes(`${a.path}p1`) && detail.includes(`${b.path}p1`), detail);
    }

    const del = assertSucceeded(await executeStep(agent, "clean", "delete_configuration", "raid", node));
    assert.deepEqual(del["command_result"], { clean_result: null, clean_step: { step: "delete_configuration", interface: "raid", priority: 0, args: {} } });
    for (const disk of [a, b]) {
      // The holders' partition tables are gone, and where the members were there is no superblock left.
      assert.deepEqual(partitionsOf(disk.path), []);
      assert.equal(blkid(disk.path)["PTTYPE"], undefined);
      for (const offset of [551 * MIB, GIB]) {
        const ex = mdExamineAt(disk.file, offset);
        assert.notEqual(ex.code, 0);
        assert.match(ex.out, /No md superblock detected/);
      }
    }
    // The disk outside allowedDevices kept its own member superblock and every byte.
    assert.equal(mdExamine(foreign).code, 0);
    assert.equal(sha256(other.file), otherBefore);
  });

  it("create_configuration (clean step) builds the node's target_raid_config on msdos under BIOS", async (t) => {
    const [a, b] = loopDisks(t, [64, 64]) as [LoopDevice, LoopDevice];
    const { agent, calls } = await raidAgent(t, [a.path, b.path]);
    const target = { logical_disks: [{ size_gb: "MAX", raid_level: "1", controller: "software" }] };
    const node = { uuid: "n1", target_raid_config: target, instance_info: { deploy_boot_mode: "bios" } };
    const rec = assertSucceeded(await executeStep(agent, "clean", "create_configuration", "raid", node));
    assert.deepEqual((rec["command_result"] as Record<string, unknown>)["clean_result"], target);
    const creates = mdCreates(calls);
    assert.equal(creates.length, 1);
    const md = creates[0]?.[1] ?? "";
    assert.deepEqual(creates[0], ["--create", md, "--force", "--run", "--metadata=1", "--level", "1", "--name", md.replace("/dev/", ""), "--raid-devices=2", `${a.path}p1`, `${b.path}p1`]);
    for (const disk of [a, b]) {
      assert.equal(blkid(disk.path)["PTTYPE"], "dos");
      assert.equal(blkid(`${disk.path}p1`)["PART_ENTRY_OFFSET"], "2048");
    }
    // No target_raid_config: nothing to do.
    const none = assertSucceeded(await executeStep(agent, "clean", "create_configuration", "raid", { uuid: "n1", target_raid_config: {} }));
    assert.deepEqual((none["command_result"] as Record<string, unknown>)["clean_result"], {});
  });

  it("delete_configuration zeroes superblocks of arrays never assembled, on partitions and whole disks, and only on allowed disks", async (t) => {
    const [a, b, other] = loopDisks(t, [64, 64, 64]) as [LoopDevice, LoopDevice, LoopDevice];
    parted(a.path, "mklabel", "gpt", "mkpart", "r", "1MiB", "100%");
    writeMdSuperblock(`${a.path}p1`, { name: "x:vol", level: 1, raidDisks: 2, role: 0 });
    writeMdSuperblock(b.path, { name: "x:vol", level: 1, raidDisks: 2, role: 1 });
    const foreign = foreignMember(other);
    const before = sha256(other.file);
    const { agent } = await raidAgent(t, [a.path, b.path]);
    assertSucceeded(await executeStep(agent, "clean", "delete_configuration", "raid", { uuid: "n" }));
    assert.match(mdExamineAt(a.file, MIB).out, /No md superblock detected/);
    assert.match(mdExamine(b.path).out, /No md superblock detected/);
    assert.deepEqual(partitionsOf(a.path), []);
    assert.equal(mdExamine(foreign).code, 0);
    assert.equal(sha256(other.file), before);
  });

  it("refuses: destructive off, a physical disk outside allowedDevices, an invalid config, disks with partitions; nothing is touched", async (t) => {
    const [a, b, other] = loopDisks(t, [64, 64, 64]) as [LoopDevice, LoopDevice, LoopDevice];
    writeMdSuperblock(a.path, { name: "x:vol", level: 1, raidDisks: 2, role: 0 });
    const hashes = () => [a, b, other].map((d) => sha256(d.file));
    const before = hashes();

    const off = await raidAgent(t, [a.path, b.path], { allowDestructive: false });
    assertFailed(await executeStep(off.agent, "clean", "delete_configuration", "raid", { uuid: "n" }), "DestructiveCommandRefused");
    assertFailed(await executeStep(off.agent, "deploy", "apply_configuration", "raid", { uuid: "n" }, { raid_config: TWO_VOLUMES }), "DestructiveCommandRefused");

    const { agent, calls } = await raidAgent(t, [a.path, b.path]);
    const outside = {
      logical_disks: [{ size_gb: "MAX", raid_level: "1", controller: "software", physical_disks: [{ name: a.path }, { name: other.path }] }],
    };
    const e1 = assertFailed(await executeStep(agent, "deploy", "apply_configuration", "raid", { uuid: "n" }, { raid_config: outside }), "DeviceNotAllowed");
    assert.match(String(e1["details"]), new RegExp(other.path));
    const bad = { logical_disks: [{ size_gb: 1, raid_level: "0", controller: "software" }, { size_gb: 1, raid_level: "7", controller: "software" }] };
    const e2 = assertFailed(await executeStep(agent, "deploy", "apply_configuration", "raid", { uuid: "n9" }, { raid_config: bad }), "SoftwareRAIDError");
    assert.match(String(e2["details"]), /Could not validate Software RAID config for n9: .*RAID-1 for the first logical disk.*RAID level 7/);
    const e3 = assertFailed(await executeStep(agent, "deploy", "apply_configuration", "raid", { uuid: "n" }, { raid_config: TWO_VOLUMES, extra: 1 }), "CommandExecutionError");
    assert.match(String(e3["details"]), /unexpected keyword argument/);
    assert.deepEqual(hashes(), before);
    assert.deepEqual(calls.filter((c) => ["parted", "wipefs", "sgdisk"].includes(c.cmd) || (c.cmd === "mdadm" && c.args[0] !== "--examine")), []);

    parted(b.path, "mklabel", "gpt", "mkpart", "p", "1MiB", "10MiB");
    const target = { logical_disks: [{ size_gb: "MAX", raid_level: "1", controller: "software" }] };
    const e4 = assertFailed(await executeStep(agent, "clean", "create_configuration", "raid", { uuid: "n", target_raid_config: target }), "SoftwareRAIDError");
    assert.match(String(e4["details"]), new RegExp(`Partitions detected on devices ${b.path}`));
    assert.equal(sha256(a.file), before[0]);
  });

  it("lists the RAID steps as IPA does (argsinfo as in the captured get_deploy_steps)", async (t) => {
    const sample = JSON.parse(readFileSync(join(requireSamples(), "cmd-deploy-get_deploy_steps.json"), "utf8")) as {
      body: { command_result: { deploy_steps: { GenericHardwareManager: Array<Record<string, unknown>> } } };
    };
    const ipaSteps = sample.body.command_result.deploy_steps.GenericHardwareManager;
    const { agent } = await raidAgent(t, []);
    const deploy = assertSucceeded(await command(agent, "deploy.get_deploy_steps", { node: {}, ports: [] }));
    const ours = ((deploy["command_result"] as Record<string, unknown>)["deploy_steps"] as Record<string, Array<Record<string, unknown>>>)["GenericHardwareManager"] ?? [];
    for (const name of ["apply_configuration", "inject_files"]) {
      assert.deepEqual(
        ours.find((s) => s["step"] === name),
        ipaSteps.find((s) => s["step"] === name),
        name,
      );
    }
    const clean = assertSucceeded(await command(agent, "clean.get_clean_steps", { node: {}, ports: [] }));
    const cleanSteps = ((clean["command_result"] as Record<string, unknown>)["clean_steps"] as Record<string, Array<Record<string, unknown>>>)["GenericHardwareManager"] ?? [];
    for (const name of ["delete_configuration", "create_configuration"]) {
      assert.deepEqual(
        cleanSteps.find((s) => s["step"] === name),
        { step: name, priority: 0, interface: "raid", reboot_requested: false, abortable: true },
      );
    }
  });
});
