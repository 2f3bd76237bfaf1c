/**
 * Block-device helpers of the system area: which disks the configuration lets us touch, their
 * partitions, what blkid says about each, and temporary mounts that are always undone.
 *
 * Nothing here probes or touches a disk outside `allowedDevices`: disks are enumerated by name
 * (lsblk, no probing), then every one is passed through the DeviceGuard before it is read.
 */
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { z } from "zod";
import type { AgentConfig } from "../../core/config.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import type { DeviceGuard } from "../disk/guard.js";
import { type CommandResult, type CommandRunner, hasTool, type RunOptions } from "../exec.js";

/** The GPT type GUID of an EFI system partition, and its MBR type. */
export const ESP_GPT_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
export const ESP_MBR_TYPE = "0xef";
const LVM_TYPES = new Set(["e6d6d379-f507-44c2-a23c-238f2a3df928", "0x8e"]);

/** What the system area needs from its surroundings. */
export interface BlockEnv {
  readonly config: AgentConfig;
  readonly run: CommandRunner;
  readonly guard: DeviceGuard;
  readonly log: Logger;
  readonly signal?: AbortSignal | undefined;
  /** Where sysfs is (tests may point it elsewhere). */
  readonly sysRoot?: string;
}

function runOpts(env: BlockEnv, extra: RunOptions = {}): RunOptions {
  return env.signal === undefined ? extra : { ...extra, signal: env.signal };
}

/** Runs a tool and throws TOOL_FAILED (or `error(details)`) with its stderr when it exits non-zero. */
export async function runChecked(env: BlockEnv, cmd: string, args: readonly string[], opts: RunOptions & { error?: (details: string) => AgentError } = {}): Promise<CommandResult> {
  const { error = (d: string) => new AgentError("TOOL_FAILED", d), ...rest } = opts;
  const res = await env.run(cmd, args, runOpts(env, rest));
  if (res.code !== 0) throw error(`${cmd} ${args.join(" ")} exited ${res.code}: ${(res.stderr.trim() || res.stdout.trim()).slice(0, 2000)}`);
  return res;
}

/** Runs a tool whose failure is only worth a warning. */
export async function runLogged(env: BlockEnv, cmd: string, args: readonly string[]): Promise<CommandResult> {
  const res = await env.run(cmd, args, runOpts(env));
  if (res.code !== 0) env.log.warn({ cmd, args, code: res.code, stderr: res.stderr.trim() }, `${cmd} failed`);
  return res;
}

const LsblkNode: z.ZodType<{ name: string; type?: string | null | undefined; size?: number | string | null | undefined; children?: LsblkEntry[] | undefined }> = z.lazy(() =>
  z.looseObject({
    name: z.string(),
    type: z.string().nullish(),
    size: z.union([z.number(), z.string()]).nullish(),
    children: z.array(LsblkNode).optional(),
  }),
);
type LsblkEntry = z.infer<typeof LsblkNode>;
const LsblkReport = z.object({ blockdevices: z.array(LsblkNode) });

async function lsblk(env: BlockEnv, args: readonly string[]): Promise<LsblkEntry[]> {
  const res = await runChecked(env, "lsblk", ["--json", "--bytes", "--paths", "-o", "NAME,TYPE,SIZE", ...args]);
  try {
    return LsblkReport.parse(JSON.parse(res.stdout)).blockdevices;
  } catch (err) {
    throw new AgentError("TOOL_FAILED", `lsblk gave unreadable output: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Whole disks (disk and loop devices with a size) that the guard allows, by canonical path.
 * DESTRUCTIVE_NOT_ALLOWED propagates: without it no disk is ours.
 */
export async function allowedDisks(env: BlockEnv): Promise<string[]> {
  const out: string[] = [];
  for (const dev of await lsblk(env, ["--nodeps"])) {
    if (dev.type !== "disk" && dev.type !== "loop") continue;
    if (Number(dev.size ?? 0) <= 0) continue;
    try {
      out.push(await env.guard.check(dev.name, "system utilities"));
    } catch (err) {
      if (AgentError.is(err, "DEVICE_NOT_ALLOWED")) continue;
      throw err;
    }
  }
  return [...new Set(out)].sort();
}

export interface PartitionInfo {
  readonly path: string;
  readonly disk: string;
  readonly number: number;
}

/** Reads a sysfs attribute, or undefined. */
export async function sysAttr(env: BlockEnv, ...parts: string[]): Promise<string | undefined> {
  try {
    return (await readFile(join(env.sysRoot ?? "/sys", ...parts), "utf8")).trim();
  } catch {
    return undefined;
  }
}

/** The partition number of a partition device (sysfs), or undefined for anything else. */
export async function partitionNumber(env: BlockEnv, device: string): Promise<number | undefined> {
  const raw = await sysAttr(env, "class", "block", basename(device), "partition");
  const n = raw === undefined ? NaN : Number(raw);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** Partitions of an (already guard-checked) disk, by partition number. */
export async function listPartitions(env: BlockEnv, disk: string): Promise<PartitionInfo[]> {
  const [top] = await lsblk(env, [disk]);
  const out: PartitionInfo[] = [];
  for (const child of top?.children ?? []) {
    if (child.type !== "part") continue;
    const number = await partitionNumber(env, child.name);
    if (number !== undefined) out.push({ path: child.name, disk, number });
  }
  return out.sort((a, b) => a.number - b.number);
}

/** `/dev/sda` + 2 → `/dev/sda2`; `/dev/nvme0n1` or `/dev/loop3` + 2 → `...p2`. */
export function partitionPath(disk: string, n: number): string {
  return `${disk}${/\d$/.test(disk) ? "p" : ""}${n}`;
}

/** `blkid -p -o export`: low-level probe (no cache, no udev), as KEY → value. */
export async function probe(env: BlockEnv, device: string): Promise<Record<string, string>> {
  const res = await env.run("blkid", ["-p", "-o", "export", device], runOpts(env));
  // 2: nothing found on the device.
  if (res.code === 2) return {};
  if (res.code !== 0) throw new AgentError("TOOL_FAILED", `blkid -p ${device} exited ${res.code}: ${res.stderr.trim()}`);
  const out: Record<string, string> = {};
  for (const line of res.stdout.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** True when the probe says the partition is an EFI system partition. */
export function isEsp(info: Record<string, string>): boolean {
  const type = (info["PART_ENTRY_TYPE"] ?? "").toLowerCase();
  return type === ESP_GPT_TYPE || type === ESP_MBR_TYPE;
}

export function isLvm(info: Record<string, string>): boolean {
  return LVM_TYPES.has((info["PART_ENTRY_TYPE"] ?? "").toLowerCase());
}

/** Does a probe match a UUID as Ironic passes it: filesystem UUID or partition UUID, any case. */
export function matchesUuid(info: Record<string, string>, uuid: string): boolean {
  const want = uuid.toLowerCase();
  return [info["UUID"], info["PART_ENTRY_UUID"]].some((v) => v !== undefined && v.toLowerCase() === want);
}

/** Re-reads a disk's partition table so partition nodes match it (failure is only logged). */
export async function rescan(env: BlockEnv, disk: string): Promise<void> {
  await runLogged(env, "partprobe", [disk]);
}

/** Finds the partition holding a UUID (filesystem or partition UUID) on the allowed disks. */
export async function findPartitionByUuid(env: BlockEnv, uuid: string, disks?: readonly string[]): Promise<PartitionInfo | undefined> {
  for (const disk of disks ?? (await allowedDisks(env))) {
    for (const part of await listPartitions(env, disk)) {
      await env.guard.check(part.path, "system utilities");
      if (matchesUuid(await probe(env, part.path), uuid)) return part;
    }
  }
  return undefined;
}

export interface MountOptions {
  readonly readOnly?: boolean;
  readonly fsType?: string;
}

/**
 * Mounts a (guard-checked) device on a fresh temporary directory, runs `fn` with its path, and
 * always unmounts (three tries, then lazily) and removes the directory.
 */
export async function withMount<T>(env: BlockEnv, device: string, fn: (dir: string) => Promise<T>, opts: MountOptions = {}): Promise<T> {
  await env.guard.check(device, "mount");
  const dir = await mkdtemp(join(tmpdir(), "ironbus-mnt-"));
  try {
    if (opts.fsType === "vfat" && opts.readOnly === true && !(await kernelHasFilesystem("vfat")) && (await hasTool("fusefat"))) {
      // A kernel without FAT (some minimal or virtual ones): read the ESP through FUSE instead.
      env.log.info({ device }, "kernel has no vfat; mounting read-only with fusefat");
      await runChecked(env, "fusefat", ["-o", "ro", device, dir]);
    } else {
      await runChecked(env, "mount", [...(opts.fsType === undefined ? [] : ["-t", opts.fsType]), ...(opts.readOnly === true ? ["-o", "ro"] : []), device, dir]);
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  try {
    return await fn(dir);
  } finally {
    await unmount(env, dir);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Whether /proc/filesystems lists a file system type. */
export async function kernelHasFilesystem(type: string): Promise<boolean> {
  try {
    return (await readFile("/proc/filesystems", "utf8")).split("\n").some((l) => l.split("\t").pop()?.trim() === type);
  } catch {
    return true;
  }
}

/** Unmounts a directory: three tries a second apart (without the command's signal), then `umount -l`. */
export async function unmount(env: BlockEnv, dir: string): Promise<void> {
  for (let attempt = 1; attempt <= 3; attempt++) {
    // Never abandon a mount because the command was cancelled: cleanup runs without the signal.
    const res = await env.run("umount", [dir]);
    if (res.code === 0) return;
    env.log.warn({ dir, attempt, stderr: res.stderr.trim() }, "umount failed");
    await new Promise((r) => setTimeout(r, 1000));
  }
  await env.run("umount", ["-l", dir]);
}

/** md arrays the kernel runs now (`/sys/block/md*`), with the block devices under each. */
export async function activeArrays(env: BlockEnv): Promise<Array<{ device: string; members: string[] }>> {
  let names: string[];
  try {
    names = (await readdir(join(env.sysRoot ?? "/sys", "block"))).filter((n) => /^md\d+$/.test(n));
  } catch {
    return [];
  }
  const out: Array<{ device: string; members: string[] }> = [];
  for (const name of names.sort()) {
    let slaves: string[] = [];
    try {
      slaves = await readdir(join(env.sysRoot ?? "/sys", "block", name, "slaves"));
    } catch {
      // no members listed
    }
    out.push({ device: `/dev/${name}`, members: slaves.sort().map((s) => `/dev/${s}`) });
  }
  return out;
}
