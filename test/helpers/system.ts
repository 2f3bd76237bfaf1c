/**
 * Helpers for the system-area tests (test/system-*.test.ts): loop disks cleaned up in the right
 * order (md arrays stopped and superblocks zeroed, mounts undone, then detach), runners that record
 * chosen tools instead of running them, md superblocks written by hand where the kernel has no md
 * driver, and REST calls.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes, createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeSync } from "node:fs";
import { basename } from "node:path";
import type { TestContext } from "node:test";
import { type CommandResult, type CommandRunner, execRunner } from "../../utilities/exec.js";
import { TOKEN, type TestAgent } from "./agent.js";
import { createLoopDevice, type LoopDevice } from "./loop.js";

/** True when the kernel has the md driver (mdadm can really build arrays). */
export const HAVE_MD = existsSync("/proc/mdstat");

function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function quiet(cmd: string, args: readonly string[]): void {
  spawnSync(cmd, args, { stdio: "ignore" });
}

/** Partition devices the kernel shows for a disk (/dev/loop3p1, ...). */
export function partitionsOf(disk: string): string[] {
  const name = basename(disk);
  try {
    return readdirSync(`/sys/class/block/${name}`)
      .filter((n) => n.startsWith(name) && existsSync(`/sys/class/block/${name}/${n}/partition`))
      .sort()
      .map((n) => `/dev/${n}`);
  } catch {
    return [];
  }
}

/**
 * Loop disks for one test, torn down in t.after even when the test fails: unmount anything mounted
 * from them, stop md arrays built on them, zero md superblocks, detach.
 */
export function loopDisks(t: Pick<TestContext, "after">, sizesMiB: readonly number[]): LoopDevice[] {
  const disks = sizesMiB.map((size) => createLoopDevice(size));
  t.after(() => teardown(disks));
  return disks;
}

export function teardown(disks: readonly LoopDevice[]): void {
  const names = new Set(disks.map((d) => basename(d.path)));
  const ours = (dev: string): boolean => [...names].some((n) => basename(dev) === n || basename(dev).startsWith(`${n}p`));
  // Mounts first (innermost last in the table, so unmount in reverse).
  const mounts = readFileSync("/proc/self/mounts", "utf8").trim().split("\n").map((l) => l.split(" "));
  for (const [src, dir] of mounts.reverse()) if (src !== undefined && dir !== undefined && ours(src)) quiet("umount", ["-l", dir]);
  if (HAVE_MD) {
    for (const md of readdirSync("/sys/block").filter((n) => n.startsWith("md"))) {
      const slaves = readdirSync(`/sys/block/${md}/slaves`);
      if (slaves.some((s) => ours(s))) quiet("mdadm", ["--stop", `/dev/${md}`]);
    }
  }
  for (const d of disks) {
    for (const p of partitionsOf(d.path)) quiet("mdadm", ["--zero-superblock", p]);
    quiet("mdadm", ["--zero-superblock", d.path]);
    d.detach();
  }
}

export function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

/** One `parted -s` run (fast, unlike sgdisk's one-second settle), then partprobe. */
export function parted(disk: string, ...script: string[]): void {
  sh("parted", ["-s", "-a", "optimal", disk, "--", ...script]);
  sh("partprobe", [disk]);
}

/** `blkid -p -o export` as an object. */
export function blkid(dev: string): Record<string, string> {
  const res = spawnSync("blkid", ["-p", "-o", "export", dev], { encoding: "utf8" });
  const out: Record<string, string> = {};
  for (const line of res.stdout.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

export interface MdSuperblockSpec {
  readonly name: string;
  readonly level: number;
  readonly raidDisks: number;
  readonly role: number;
  readonly arrayUuid?: Buffer;
}

/**
 * Writes an md v1.2 superblock (4 KiB into the device, with a correct checksum) as `mdadm --create`
 * would: `mdadm --examine` and `--zero-superblock` treat it as real. For kernels without md.
 */
export function writeMdSuperblock(device: string, spec: MdSuperblockSpec): void {
  const maxDev = 128;
  const sb = Buffer.alloc(256 + maxDev * 2);
  const now = BigInt(Math.floor(Date.now() / 1000));
  sb.writeUInt32LE(0xa92b4efc, 0); // magic
  sb.writeUInt32LE(1, 4); // major version
  (spec.arrayUuid ?? randomBytes(16)).copy(sb, 16);
  sb.write(spec.name, 32, 32, "latin1");
  sb.writeBigUInt64LE(now, 64); // ctime
  sb.writeInt32LE(spec.level, 72);
  sb.writeBigUInt64LE(8192n, 80); // size in sectors
  sb.writeUInt32LE(spec.raidDisks, 92);
  sb.writeBigUInt64LE(2048n, 128); // data offset
  sb.writeBigUInt64LE(8192n, 136); // data size
  sb.writeBigUInt64LE(8n, 144); // super offset: 4 KiB (v1.2)
  sb.writeUInt32LE(spec.role, 160); // dev number
  randomBytes(16).copy(sb, 168); // device uuid
  sb.writeBigUInt64LE(now, 192); // utime
  sb.writeBigUInt64LE(1n, 200); // events
  sb.writeBigUInt64LE(0xffffffffffffffffn, 208); // resync offset: in sync
  sb.writeUInt32LE(maxDev, 220);
  for (let i = 0; i < maxDev; i++) sb.writeUInt16LE(i < spec.raidDisks ? i : 0xffff, 256 + 2 * i);
  let sum = 0n;
  for (let off = 0; off + 4 <= sb.length; off += 4) sum += BigInt(sb.readUInt32LE(off));
  sb.writeUInt32LE(Number(((sum & 0xffffffffn) + (sum >> 32n)) & 0xffffffffn), 216);
  const fd = openSync(device, "r+");
  try {
    writeSync(fd, sb, 0, sb.length, 4096);
  } finally {
    closeSync(fd);
  }
}

/** `mdadm --examine`: exit status and output. */
export function mdExamine(device: string): { code: number; out: string } {
  const res = spawnSync("mdadm", ["--examine", device], { encoding: "utf8" });
  return { code: res.status ?? -1, out: `${res.stdout}${res.stderr}` };
}

/** `mdadm --examine` at an offset of a backing file (a partition that is gone from the kernel). */
export function mdExamineAt(file: string, offsetBytes: number): { code: number; out: string } {
  const loop = sh("losetup", ["-f", "--show", "-r", "-o", String(offsetBytes), file]).trim();
  try {
    return mdExamine(loop);
  } finally {
    quiet("losetup", ["-d", loop]);
  }
}

export interface Recorded {
  readonly cmd: string;
  readonly args: readonly string[];
}

/**
 * A runner that hands the tools named in `fakes` to a fake (recorded, not run; a fake that returns
 * undefined lets that call run for real) and runs everything else for real. Every call is recorded, in order. Power tools are refused outright, whatever the test says.
 */
export function recordingRunner(fakes: Readonly<Record<string, (args: readonly string[]) => Partial<CommandResult> | undefined | Promise<Partial<CommandResult> | undefined>>>): {
  run: CommandRunner;
  calls: Recorded[];
} {
  const calls: Recorded[] = [];
  const run: CommandRunner = async (cmd, args, opts) => {
    calls.push({ cmd, args: [...args] });
    if (["poweroff", "reboot", "shutdown", "halt", "systemctl", "grub-install", "grub2-install"].includes(basename(cmd))) {
      throw new Error(`test runner refuses to run ${cmd}`);
    }
    const fake = fakes[basename(cmd)];
    const faked = fake === undefined ? undefined : await fake(args);
    if (faked !== undefined) return { stdout: "", stderr: "", code: 0, ...faked };
    if (basename(cmd) === "efibootmgr") throw new Error("efibootmgr must be faked in tests");
    return execRunner(cmd, args, opts);
  };
  return { run, calls };
}

export interface CommandReply {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** POST /v1/commands/?wait=true: the command's result (or the fault). */
export async function command(agent: TestAgent, name: string, params: Record<string, unknown>): Promise<CommandReply> {
  const res = await fetch(`${agent.url}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, params }),
  });
  const body = (await res.json()) as Record<string, unknown>;
  return { status: res.status, body };
}

/** Runs a step through `<kind>.execute_<kind>_step` and returns the result record. */
export async function executeStep(
  agent: TestAgent,
  kind: "clean" | "deploy" | "service",
  step: string,
  iface: string,
  node: Record<string, unknown>,
  args: Record<string, unknown> = {},
): Promise<CommandReply> {
  return command(agent, `${kind}.execute_${kind}_step`, { step: { step, interface: iface, priority: 0, args }, node, ports: [] });
}

/** Asserts a command record SUCCEEDED, showing its error otherwise. */
export function assertSucceeded(reply: CommandReply): Record<string, unknown> {
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  assert.equal(reply.body["command_status"], "SUCCEEDED", JSON.stringify(reply.body["command_error"]));
  return reply.body;
}

/** Asserts a command record FAILED with the IPA error type. */
export function assertFailed(reply: CommandReply, type: string): Record<string, unknown> {
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  assert.equal(reply.body["command_status"], "FAILED", JSON.stringify(reply.body));
  const error = reply.body["command_error"] as Record<string, unknown>;
  assert.equal(error["type"], type, JSON.stringify(error));
  return error;
}
