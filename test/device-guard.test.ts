import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AgentError } from "../core/errors.js";
import { DeviceGuard } from "../utilities/disk/guard.js";
import { createLoopDevice } from "./helpers/loop.js";

const refusedWith = (code: string) => (e: unknown) => AgentError.is(e) && e.code === code;

describe("device guard (real loop devices)", () => {
  it("allows the configured device and its partitions, through symlinks too", async (t) => {
    const loop = createLoopDevice(16, t);
    execFileSync("sgdisk", ["-n", "1:0:+4M", loop.path], { stdio: "ignore" });
    execFileSync("partprobe", [loop.path], { stdio: "ignore" });
    const guard = new DeviceGuard({ allowDestructive: true, allowedDevices: [loop.path] });
    assert.equal(await guard.check(loop.path), loop.path);
    assert.equal(await guard.check(`${loop.path}p1`), `${loop.path}p1`);
    const link = join(mkdtempSync(join(tmpdir(), "ironbus-link-")), "by-id");
    symlinkSync(loop.path, link);
    assert.equal(await guard.check(link), loop.path);
  });

  it("refuses devices outside the set, symlinks to them, and everything when destructive work is off", async (t) => {
    const mine = createLoopDevice(8, t);
    const other = createLoopDevice(8, t);
    const guard = new DeviceGuard({ allowDestructive: true, allowedDevices: [mine.path] });
    await assert.rejects(guard.check(other.path), refusedWith("DEVICE_NOT_ALLOWED"));
    await assert.rejects(guard.check("/dev/vda"), refusedWith("DEVICE_NOT_ALLOWED"));
    const link = join(mkdtempSync(join(tmpdir(), "ironbus-link-")), "sneaky");
    symlinkSync(other.path, link);
    await assert.rejects(guard.check(link), (e: unknown) => refusedWith("DEVICE_NOT_ALLOWED")(e) && (e as Error).message.includes(other.path));
    await assert.rejects(guard.check("/dev/does-not-exist"), refusedWith("DEVICE_NOT_ALLOWED"));
    await assert.rejects(guard.checkAll([mine.path, other.path]), refusedWith("DEVICE_NOT_ALLOWED"));
    const off = new DeviceGuard({ allowDestructive: false, allowedDevices: [mine.path] });
    await assert.rejects(off.check(mine.path), refusedWith("DESTRUCTIVE_NOT_ALLOWED"));
    const none = new DeviceGuard({ allowDestructive: true, allowedDevices: [] });
    await assert.rejects(none.check(mine.path), refusedWith("DEVICE_NOT_ALLOWED"));
  });

  it("accepts a configured symlink (by-id style) for the device it points to", async (t) => {
    const loop = createLoopDevice(8, t);
    const link = join(mkdtempSync(join(tmpdir(), "ironbus-link-")), "by-id-disk");
    symlinkSync(loop.path, link);
    const guard = new DeviceGuard({ allowDestructive: true, allowedDevices: [link] });
    assert.equal(await guard.check(loop.path), loop.path);
    await assert.rejects(guard.check("/dev/vda"), refusedWith("DEVICE_NOT_ALLOWED"));
  });

  it("matches a trailing * by prefix", async (t) => {
    const loop = createLoopDevice(8, t);
    const guard = new DeviceGuard({ allowDestructive: true, allowedDevices: ["/dev/loop*"] });
    assert.equal(await guard.check(loop.path), loop.path);
    await assert.rejects(guard.check("/dev/vda"), refusedWith("DEVICE_NOT_ALLOWED"));
  });
});
