/**
 * What the image code needs to know about and do to a block device: its size and sector size, its
 * partitions (from sysfs, so no udev is needed), blkid's view of each, the MBR disk identifier, and
 * the small metadata operations (wipe, move the backup GPT, rescan).
 */
import { constants } from "node:fs";
import { access, open, readdir, readFile, realpath } from "node:fs/promises";
import { basename } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { AgentError } from "../../core/errors.js";
import { type CommandResult, type CommandRunner, hasErrorCode } from "../exec.js";

export interface ToolContext {
  readonly run: CommandRunner;
  readonly signal: AbortSignal;
  /** Where sysfs is (tests may point elsewhere). */
  readonly sysRoot?: string;
}

/** Runs a tool; a non-zero exit is TOOL_FAILED with its stderr. */
export async function runTool(ctx: ToolContext, cmd: string, args: readonly string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<string> {
  let res: CommandResult;
  try {
    res = await ctx.run(cmd, args, { signal: ctx.signal, ...(opts.env === undefined ? {} : { env: opts.env }), ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }) });
  } catch (err) {
    if (hasErrorCode(err, "ENOENT")) throw new AgentError("TOOL_FAILED", `${cmd}: command not found`, { cause: err });
    throw err;
  }
  if (res.code !== 0) {
    throw new AgentError("TOOL_FAILED", `${cmd} ${args.join(" ")} exited ${res.code}: ${(res.stderr.trim() || res.stdout.trim()).slice(0, 2000)}`);
  }
  return res.stdout;
}

function sys(ctx: ToolContext): string {
  return ctx.sysRoot ?? "/sys";
}

/** Size in bytes, from sysfs (512-byte units, whatever the sector size). */
export async function deviceSize(ctx: ToolContext, device: string): Promise<number> {
  const name = basename(await realpath(device));
  const sectors = Number((await readFile(`${sys(ctx)}/class/block/${name}/size`, "utf8")).trim());
  return sectors * 512;
}

/** Logical sector size of a whole disk, from sysfs; 512 when unknown. */
export async function logicalSectorSize(ctx: ToolContext, disk: string): Promise<number> {
  const name = basename(await realpath(disk));
  try {
    const n = Number((await readFile(`${sys(ctx)}/class/block/${name}/queue/logical_block_size`, "utf8")).trim());
    return Number.isFinite(n) && n > 0 ? n : 512;
  } catch {
    return 512;
  }
}

export interface PartitionEntry {
  readonly number: number;
  /** /dev/<name> */
  readonly path: string;
  /** Start, in bytes. */
  readonly start: number;
  /** Size, in bytes. */
  readonly size: number;
}

/** The partitions the kernel knows on a disk, by number. */
export async function listPartitions(ctx: ToolContext, disk: string): Promise<PartitionEntry[]> {
  const name = basename(await realpath(disk));
  const dir = `${sys(ctx)}/class/block/${name}`;
  const out: PartitionEntry[] = [];
  for (const child of await readdir(dir)) {
    if (!child.startsWith(name)) continue;
    try {
      const number = Number((await readFile(`${dir}/${child}/partition`, "utf8")).trim());
      const start = Number((await readFile(`${dir}/${child}/start`, "utf8")).trim()) * 512;
      const size = Number((await readFile(`${dir}/${child}/size`, "utf8")).trim()) * 512;
      out.push({ number, path: `/dev/${child}`, start, size });
    } catch {
      // not a partition
    }
  }
  return out.sort((a, b) => a.number - b.number);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path, constants.F_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes the kernel re-read the partition table (partprobe; blockdev --rereadpt if partprobe is missing),
 * lets udev settle when it runs, and waits until `expect` partitions have device nodes.
 */
/** True for the error runTool raises when the tool is not installed. */
export function isMissingTool(err: unknown): boolean {
  return err instanceof AgentError && hasErrorCode(err.cause, "ENOENT");
}

export async function rescan(ctx: ToolContext, disk: string, opts: { expect?: number; waitMs: number }): Promise<PartitionEntry[]> {
  try {
    await runTool(ctx, "partprobe", [disk]);
  } catch (err) {
    if (!isMissingTool(err)) throw err;
    await runTool(ctx, "blockdev", ["--rereadpt", disk]);
  }
  try {
    await ctx.run("udevadm", ["settle", "--timeout=30"], { signal: ctx.signal });
  } catch {
    // no udev in this ramdisk: the device nodes come from devtmpfs
  }
  const deadline = Date.now() + opts.waitMs;
  for (;;) {
    const parts = await listPartitions(ctx, disk);
    const present = await Promise.all(parts.map((p) => exists(p.path)));
    if (present.every(Boolean) && parts.length >= (opts.expect ?? 0)) return parts;
    if (Date.now() >= deadline) {
      throw new AgentError("COMMAND_FAILED", `partitions of ${disk} did not appear: expected ${opts.expect ?? 0}, found ${parts.length}`, {
        ipaType: "DeploymentError",
        message: "Deploy step failed",
      });
    }
    await sleep(100, undefined, { signal: ctx.signal });
  }
}

/** blkid's low-level probe of a device: TYPE, LABEL, UUID, PTTYPE, PART_ENTRY_* ... */
export async function blkidProbe(ctx: ToolContext, device: string): Promise<Record<string, string>> {
  const res = await ctx.run("blkid", ["-p", "-o", "export", device], { signal: ctx.signal });
  // 2: nothing found; anything else but 0 is an error.
  if (res.code !== 0 && res.code !== 2) throw new AgentError("TOOL_FAILED", `blkid -p ${device} exited ${res.code}: ${res.stderr.trim()}`);
  const out: Record<string, string> = {};
  for (const line of res.stdout.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** IPA's block_uuid: the filesystem UUID, else the partition UUID, else "". */
export async function blockUuid(ctx: ToolContext, device: string): Promise<string> {
  const info = await blkidProbe(ctx, device);
  return info["UUID"] ?? info["PART_ENTRY_UUID"] ?? "";
}

async function readAt(device: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(device, constants.O_RDONLY);
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, position);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The MBR disk signature at byte 440, as IPA's get_disk_identifier prints it (`0x%08x`). */
export async function diskIdentifier(device: string): Promise<string> {
  const buf = await readAt(device, 440, 4);
  const value = buf.length === 4 ? buf.readUInt32LE(0) : 0;
  return `0x${value.toString(16).padStart(8, "0")}`;
}

/** Reads the first bytes of a partition: proof the kernel can use it. */
export async function isReadable(device: string): Promise<boolean> {
  try {
    await readAt(device, 0, 4096);
    return true;
  } catch {
    return false;
  }
}

/** Zeroes `length` bytes at `position`, through the page cache, then fsyncs. */
export async function zeroRange(device: string, position: number, length: number): Promise<void> {
  if (length <= 0) return;
  const fh = await open(device, constants.O_WRONLY);
  try {
    const zeros = Buffer.alloc(Math.min(length, 1024 * 1024));
    let done = 0;
    while (done < length) {
      const n = Math.min(zeros.length, length - done);
      const { bytesWritten } = await fh.write(zeros, 0, n, position + done);
      done += bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * IPA's destroy_disk_metadata, whole disk: every signature wipefs knows, then both GPT areas (the first
 * and the last MiB, which hold the primary and backup headers and tables for any sector size).
 */
export async function wipeMetadata(ctx: ToolContext, disk: string): Promise<void> {
  await runTool(ctx, "wipefs", ["--force", "--all", disk]);
  const size = await deviceSize(ctx, disk);
  const span = Math.min(1024 * 1024, size);
  await zeroRange(disk, 0, span);
  if (size > span) await zeroRange(disk, size - span, span);
}

/**
 * Moves the backup GPT to the end of the disk (`sgdisk -e`) when the primary header says it is
 * elsewhere (an image smaller than the disk). Returns whether it ran.
 */
export async function fixGpt(ctx: ToolContext, disk: string): Promise<boolean> {
  const sector = await logicalSectorSize(ctx, disk);
  const header = await readAt(disk, sector, 92);
  if (header.length < 92 || header.toString("latin1", 0, 8) !== "EFI PART") return false;
  const lastLba = BigInt(Math.floor((await deviceSize(ctx, disk)) / sector) - 1);
  if (header.readBigUInt64LE(32) === lastLba) return false;
  await runTool(ctx, "sgdisk", ["-e", disk]);
  return true;
}

/** The partition table type blkid sees on a disk: "gpt", "dos" or undefined. */
export async function partitionTableType(ctx: ToolContext, disk: string): Promise<string | undefined> {
  return (await blkidProbe(ctx, disk))["PTTYPE"];
}
