/**
 * The guards around erasing, on real loop devices through the router: the DeviceGuard (a listed disk
 * it does not allow, allowDestructive off), IPA's protected contents (gfs2, MBR type 0xfb, GPT VMFS),
 * and what is skipped (software-RAID members, the virtual-media device, read-only disks). A refused
 * device is checked byte for byte (sha256 before and after).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import type { JsonObject } from "../core/envelope.js";
import { createLoopDevice } from "./helpers/loop.js";
import { cleanStep, diskAgent, nodeFor, sh, sha256, signatures, writeAt, writeGfs2Superblock, writeMbr, writeMdSuperblock } from "./fixtures/disk/harness.js";

const MiB = 1024 * 1024;

/** Runs cleanups newest first; one failing does not stop the others. */
function runCleanups(cleanups: readonly (() => void)[]): void {
  for (const fn of [...cleanups].reverse()) {
    try {
      fn();
    } catch {
      // best effort: the loop device is detached right after
    }
  }
}

function resultOf(rec: { result: unknown }): Record<string, JsonObject> {
  return (rec.result as { clean_result: Record<string, JsonObject> }).clean_result;
}

describe("DeviceGuard", () => {
  it("a listed disk outside the guard's set fails the step with DEVICE_NOT_ALLOWED and nothing is touched", async (t) => {
    const allowed = createLoopDevice(4, t);
    const refused = createLoopDevice(4, t);
    for (const d of [allowed, refused]) writeAt(d.path, 0, randomBytes(4 * MiB));
    const before = [sha256(allowed.path), sha256(refused.path)];
    // Both are listed (config.allowedDevices names them), the guard allows only the first: the
    // situation of a machine disk outside allowedDevices.
    const agent = await diskAgent({ allowedDevices: [allowed.path, refused.path], guardDevices: [allowed.path] });
    for (const step of ["erase_devices_metadata", "erase_devices", "erase_devices_express"]) {
      const rec = await cleanStep(agent, step, await nodeFor());
      assert.equal(rec.status, "FAILED", step);
      assert.equal(rec.error?.type, "DeviceNotAllowed", step);
      assert.equal(rec.error?.code, 403);
      assert.match(rec.error?.details ?? "", new RegExp(`${refused.path} refused: not in allowedDevices`));
    }
    assert.deepEqual([sha256(allowed.path), sha256(refused.path)], before, "both devices byte-identical: the step failed before touching anything");
  });

  it("a loop device not named in allowedDevices is never listed, so never touched", async (t) => {
    const mine = createLoopDevice(4, t);
    const other = createLoopDevice(4, t);
    writeAt(other.path, 0, randomBytes(4 * MiB));
    const before = sha256(other.path);
    const agent = await diskAgent({ allowedDevices: [mine.path] });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor({ agent_erase_devices_zeroize: true }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual(Object.keys(resultOf(rec)).filter((k) => k.startsWith("/dev/loop")), [mine.path]);
    assert.equal(sha256(other.path), before);
  });

  it("allowDestructive off refuses every erase step; the device is unchanged", async (t) => {
    const loop = createLoopDevice(4, t);
    writeAt(loop.path, 0, randomBytes(4 * MiB));
    const before = sha256(loop.path);
    const agent = await diskAgent({ allowDestructive: false, allowedDevices: [loop.path] });
    for (const step of ["erase_devices_metadata", "erase_devices", "erase_devices_express"]) {
      const rec = await cleanStep(agent, step, await nodeFor());
      assert.equal(rec.status, "FAILED");
      assert.equal(rec.error?.type, "DestructiveCommandRefused", step);
    }
    assert.equal(sha256(loop.path), before);
  });
});

describe("protected contents (IPA's ProtectedDeviceError)", () => {
  it("a disk with a gfs2 file system is refused, unless driver_internal_info.wipe_special_filesystems", async (t) => {
    const loop = createLoopDevice(32, t);
    writeGfs2Superblock(loop.path);
    assert.deepEqual(signatures(loop.path), ["gfs2"], "libblkid sees the crafted gfs2 superblock");
    const before = sha256(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    for (const step of ["erase_devices_metadata", "erase_devices"]) {
      const rec = await cleanStep(agent, step, await nodeFor());
      assert.equal(rec.status, "FAILED", step);
      assert.equal(rec.error?.type, "ProtectedDeviceError");
      assert.match(rec.error?.details ?? "", /GFS2/);
      assert.match(rec.error?.details ?? "", new RegExp(loop.path));
    }
    assert.equal(sha256(loop.path), before, "unchanged");

    const rec = await cleanStep(agent, "erase_devices_metadata", await nodeFor({ wipe_special_filesystems: true }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual(signatures(loop.path), []);
  });

  it("a disk with an MBR partition of type 0xfb (VMFS) is refused, the partition table read from the disk", async (t) => {
    const loop = createLoopDevice(8, t, { partscan: false });
    writeMbr(loop.path, 0xfb);
    const before = sha256(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices_metadata", await nodeFor());
    assert.equal(rec.status, "FAILED");
    assert.equal(rec.error?.type, "ProtectedDeviceError");
    assert.match(rec.error?.details ?? "", /VMFS partition \(MBR type 0xfb\)/);
    assert.equal(sha256(loop.path), before);
    // The same table with an ordinary Linux partition type is erased.
    writeMbr(loop.path, 0x83);
    const ok = await cleanStep(agent, "erase_devices_metadata", await nodeFor());
    assert.equal(ok.status, "SUCCEEDED", JSON.stringify(ok.error));
  });

  it("a GPT partition of VMware's VMFS type is refused", async (t) => {
    const loop = createLoopDevice(8, t);
    sh("sgdisk", ["-n", "1:2048:6143", "-t", "1:AA31E02A-400F-11DB-9590-000C2911D1B8", loop.path]);
    const before = sha256(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });
    const rec = await cleanStep(agent, "erase_devices_express", await nodeFor());
    assert.equal(rec.status, "FAILED");
    assert.equal(rec.error?.type, "ProtectedDeviceError");
    assert.match(rec.error?.details ?? "", /VMFS partition \(GPT\)/);
    assert.equal(sha256(loop.path), before);
  });
});

describe("skipped disks", () => {
  it("software-RAID members are skipped (mdadm --create where the kernel has md, else md 1.2 superblocks written by the test)", async (t) => {
    // Registered before the loop devices, so it runs before they are detached (t.after is FIFO):
    // once detached, another test may already own the same /dev/loopN.
    const cleanups: (() => void)[] = [];
    t.after(() => runCleanups(cleanups));
    const a = createLoopDevice(8, t);
    const b = createLoopDevice(8, t);
    const plain = createLoopDevice(8, t);
    const md = `/dev/md/ironbus-${process.pid}`;
    cleanups.push(() => execFileSync("mdadm", ["--zero-superblock", a.path, b.path], { stdio: "ignore" }));
    if (existsSync("/proc/mdstat")) {
      cleanups.push(() => execFileSync("mdadm", ["--stop", md], { stdio: "ignore" }));
      execFileSync("mdadm", ["--create", md, "--run", "--metadata=1.2", "--level=1", "--raid-devices=2", a.path, b.path], { stdio: "ignore", timeout: 20_000 });
    } else {
      // No md driver in this kernel: write the members' superblocks ourselves (mdadm --create would
      // fail, leaving /dev/mdN nodes behind).
      writeMdSuperblock(a.path, 0, (8 * MiB) / 512);
      writeMdSuperblock(b.path, 1, (8 * MiB) / 512);
    }
    assert.match(sh("mdadm", ["--examine", a.path]), /Raid Level : raid1/, "mdadm sees a RAID member");
    sh("parted", ["-s", plain.path, "mklabel", "gpt"]);
    const before = [sha256(a.path), sha256(b.path)];

    const agent = await diskAgent({ allowedDevices: [a.path, b.path, plain.path] });
    const rec = await cleanStep(agent, "erase_devices_metadata", await nodeFor());
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    const result = resultOf(rec);
    for (const member of [a, b]) {
      assert.equal(result[member.path]?.["action"], "skipped");
      assert.match(String(result[member.path]?.["reason"]), /software RAID member/);
    }
    assert.equal(result[plain.path]?.["method"], "metadata");
    assert.deepEqual([sha256(a.path), sha256(b.path)], before, "members untouched");
    assert.deepEqual(signatures(plain.path), []);
  });

  it("the virtual-media device (label ir-vfd-dev) is skipped", async (t) => {
    const vfd = createLoopDevice(4, t);
    sh("mkfs.vfat", ["-n", "ir-vfd-dev", vfd.path]);
    const before = sha256(vfd.path);
    const agent = await diskAgent({ allowedDevices: [vfd.path] });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor());
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.match(String(resultOf(rec)[vfd.path]?.["reason"]), /virtual media \(label ir-vfd-dev/);
    assert.equal(sha256(vfd.path), before);
  });

  it("a read-only disk fails erase_devices unless agent_erase_skip_read_only; the metadata erase skips it", async (t) => {
    const cleanups: (() => void)[] = [];
    t.after(() => runCleanups(cleanups)); // before the detach: see the RAID test
    const loop = createLoopDevice(4, t);
    writeAt(loop.path, 0, randomBytes(MiB));
    cleanups.push(() => execFileSync("blockdev", ["--setrw", loop.path]));
    execFileSync("blockdev", ["--setro", loop.path]);
    const before = sha256(loop.path);
    const agent = await diskAgent({ allowedDevices: [loop.path] });

    const refused = await cleanStep(agent, "erase_devices", await nodeFor());
    assert.equal(refused.status, "FAILED");
    assert.equal(refused.error?.type, "BlockDeviceEraseError");
    assert.match(refused.error?.details ?? "", /read-only; set driver_internal_info.agent_erase_skip_read_only/);

    const skipped = await cleanStep(agent, "erase_devices", await nodeFor({ agent_erase_skip_read_only: true }));
    assert.equal(skipped.status, "SUCCEEDED", JSON.stringify(skipped.error));
    assert.deepEqual(resultOf(skipped)[loop.path], { action: "skipped", reason: "read-only" });

    const meta = await cleanStep(agent, "erase_devices_metadata", await nodeFor());
    assert.equal(meta.status, "SUCCEEDED", JSON.stringify(meta.error));
    assert.deepEqual(resultOf(meta)[loop.path], { action: "skipped", reason: "read-only" });
    assert.equal(sha256(loop.path), before);
  });

  it("skip_block_devices hints keep a disk out of the erase", async (t) => {
    const keep = createLoopDevice(4, t);
    const wipe = createLoopDevice(4, t);
    writeAt(keep.path, 0, randomBytes(4 * MiB));
    const before = sha256(keep.path);
    const agent = await diskAgent({ allowedDevices: [keep.path, wipe.path] });
    const rec = await cleanStep(agent, "erase_devices", await nodeFor({}, { skip_block_devices: [{ name: keep.path }] }));
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.match(String(resultOf(rec)[keep.path]?.["reason"]), /in skip_block_devices/);
    assert.equal(resultOf(rec)[wipe.path]?.["method"], "shred");
    assert.equal(sha256(keep.path), before);
  });
});
