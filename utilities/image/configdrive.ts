/**
 * The configdrive: what Ironic sends (base64 of a gzipped ISO/vfat image, an http(s) URL of one, or
 * plain bytes from a URL), and where it goes. On a whole-disk image it goes into the partition
 * labelled `config-2` if the image has one, else into a new partition in the last 64 MiB of the disk
 * (GPT: sgdisk; msdos: parted, below 2 TiB, at most 3 primaries before). It is written byte for byte,
 * then test-mounted read-only; if the kernel cannot mount it (an ISO 9660 on a 4K-sector disk, say),
 * it is rebuilt as a vfat filesystem labelled CONFIG-2 holding the same files (IPA's behaviour).
 */
import { randomUUID } from "node:crypto";
import { cp, mkdtemp, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import type { Logger } from "../../core/log.js";
import type { DeviceGuard } from "../disk/guard.js";
import { blkidProbe, deviceSize, fixGpt, partitionTableType, rescan, runTool, type PartitionEntry, type ToolContext } from "./device.js";
import { deploymentError } from "./errors.js";
import { isHttpUrl } from "./info.js";
import { DeviceWriter } from "./writer.js";

export const CONFIGDRIVE_LABEL = "config-2";
const MIB = 1024 * 1024;
/** msdos tables address at most 2 TiB. */
const MBR_LIMIT_MIB = 2 * 1024 * 1024;

/**
 * The configdrive's bytes. `fetch` downloads a URL (with the image's retries). Base64 is decoded and
 * gzip inflated when present; bytes from a URL that are not base64 are taken as they are.
 */
export async function loadConfigdrive(value: string, fetch: (url: string) => Promise<Buffer>, maxBytes: number): Promise<Buffer> {
  const fromUrl = isHttpUrl(value);
  const raw = fromUrl ? await fetch(value) : Buffer.from(value, "utf8");
  const text = raw.length <= 4 * maxBytes ? raw.toString("latin1").replace(/\s+/g, "") : "";
  let decoded: Buffer;
  if (text.length > 0 && text.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(text)) {
    decoded = Buffer.from(text, "base64");
  } else if (fromUrl) {
    decoded = raw;
  } else {
    throw deploymentError("Config drive is not base64 encoded or the content is malformed.");
  }
  let data = decoded;
  if (decoded.length >= 2 && decoded[0] === 0x1f && decoded[1] === 0x8b) {
    try {
      data = gunzipSync(decoded, { maxOutputLength: maxBytes + 1 });
    } catch (err) {
      if ((err as { code?: unknown }).code === "ERR_BUFFER_TOO_LARGE") data = Buffer.alloc(maxBytes + 1);
      else throw deploymentError(`Encountered error while decompressing the config drive: ${(err as Error).message}`, err);
    }
  }
  if (data.length > maxBytes) {
    throw deploymentError(`Config drive size exceeds maximum limit of ${maxBytes / MIB}MiB. Size of the given config drive is more than ${Math.floor(maxBytes / MIB)} MiB.`);
  }
  if (data.length === 0) throw deploymentError("Config drive is empty.");
  return data;
}

export interface ConfigdriveDeps {
  readonly tools: ToolContext;
  readonly guard: DeviceGuard;
  readonly log: Logger;
  readonly cacheDir: string;
  readonly partitionWaitMs: number;
  readonly writeBlockBytes: number;
}

/** The partition labelled config-2 on a disk, if any (two of them is an error). */
export async function findLabelledPartition(deps: ConfigdriveDeps, disk: string, parts: readonly PartitionEntry[]): Promise<PartitionEntry | undefined> {
  const found: PartitionEntry[] = [];
  for (const p of parts) {
    const info = await blkidProbe(deps.tools, p.path);
    if ((info["LABEL"] ?? "").toUpperCase() === CONFIGDRIVE_LABEL.toUpperCase()) found.push(p);
  }
  if (found.length > 1) {
    throw deploymentError(`More than one partition with label "${CONFIGDRIVE_LABEL}" exists on device ${disk}: ${found.map((p) => p.path).join(" and ")}.`);
  }
  return found[0];
}

/** Whole-disk images: finds or makes the configdrive partition, writes the configdrive; returns the partition. */
export async function writeWholeDiskConfigdrive(deps: ConfigdriveDeps, disk: string, data: Buffer): Promise<string> {
  const tools = deps.tools;
  const before = await rescan(tools, disk, { waitMs: deps.partitionWaitMs });
  let target = await findLabelledPartition(deps, disk, before);
  if (target !== undefined) {
    deps.log.info({ disk, partition: target.path }, "reusing the image's config-2 partition");
  } else {
    const table = await partitionTableType(tools, disk);
    if (table === "gpt") {
      await fixGpt(tools, disk);
      const uuid = randomUUID();
      await runTool(tools, "sgdisk", ["-n", "0:-64M:0", "-u", `0:${uuid}`, "-c", `0:${CONFIGDRIVE_LABEL}`, disk]);
      const after = await rescan(tools, disk, { expect: before.length + 1, waitMs: deps.partitionWaitMs });
      for (const p of after) {
        if ((await blkidProbe(tools, p.path))["PART_ENTRY_UUID"]?.toLowerCase() === uuid) target = p;
      }
      if (target === undefined) throw deploymentError(`Failed to create config drive on disk ${disk}. Partition with UUID ${uuid} has not been found after creation.`);
    } else if (table === "dos") {
      const primaries = before.filter((p) => p.number <= 4).length;
      if (primaries > 3) {
        throw deploymentError(`Config drive cannot be created. Disk (${disk}) uses MBR partitioning and already has ${primaries} primary partitions.`);
      }
      const diskMiB = Math.floor((await deviceSize(tools, disk)) / MIB);
      const [start, end] =
        diskMiB > MBR_LIMIT_MIB ? [`${MBR_LIMIT_MIB - 64 - 1}MiB`, `${MBR_LIMIT_MIB - 1}MiB`] : ["-64MiB", "-0"];
      if (diskMiB > MBR_LIMIT_MIB) deps.log.warn({ disk }, "disk larger than 2 TiB: the config drive goes at the msdos limit");
      await runTool(tools, "parted", ["-a", "optimal", "-s", "--", disk, "mkpart", "primary", "fat32", start, end]);
      const after = await rescan(tools, disk, { expect: before.length + 1, waitMs: deps.partitionWaitMs });
      const known = new Set(before.map((p) => p.number));
      const added = after.filter((p) => !known.has(p.number));
      if (added.length !== 1) throw deploymentError(`Disk partitioning failed on device ${disk}. Unable to retrieve config drive partition information.`);
      target = added[0];
    } else {
      throw deploymentError(`Failed to create config drive on disk ${disk}: no partition table found (${String(table)}).`);
    }
  }
  if (target === undefined) throw deploymentError(`no config drive partition on ${disk}`);
  if (data.length > target.size) {
    throw deploymentError(`The config drive (${data.length} bytes) does not fit in ${target.path} (${target.size} bytes).`);
  }
  await writeConfigdrive(deps, target.path, data);
  return target.path;
}

async function tryMount(tools: ToolContext, args: readonly string[], dir: string): Promise<boolean> {
  const res = await tools.run("mount", [...args, dir], { signal: tools.signal });
  return res.code === 0;
}

async function umount(tools: ToolContext, dir: string, log: Logger): Promise<void> {
  const res = await tools.run("umount", [dir], { signal: tools.signal });
  if (res.code !== 0) log.warn({ dir, stderr: res.stderr.trim() }, "umount failed");
}

/** Writes the configdrive onto a partition (dd-equivalent), test-mounts it, rebuilds it as vfat if needed. */
export async function writeConfigdrive(deps: ConfigdriveDeps, partition: string, data: Buffer): Promise<void> {
  const device = await deps.guard.check(partition, "writing the config drive");
  const writer = await DeviceWriter.open(device, { blockBytes: deps.writeBlockBytes, depth: 1 });
  try {
    await writer.write(data);
  } catch (err) {
    await writer.abort();
    throw err;
  }
  await writer.finish();
  if (await configdriveMounts(deps, device)) return;
  deps.log.warn({ partition: device }, "the config drive does not mount as written: rebuilding it as vfat");
  await rebuildAsVfat(deps, device, data);
}

/** IPA's _does_config_drive_work: mount -o ro, then umount. */
export async function configdriveMounts(deps: Pick<ConfigdriveDeps, "tools" | "log">, partition: string): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), "ironbus-cd-check-"));
  try {
    if (!(await tryMount(deps.tools, ["-o", "ro", "-t", "auto", partition], dir))) return false;
    await umount(deps.tools, dir, deps.log);
    return true;
  } finally {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function rebuildAsVfat(deps: ConfigdriveDeps, partition: string, data: Buffer): Promise<void> {
  const file = join(deps.cacheDir, `ironbus-configdrive-${randomUUID()}`);
  const src = await mkdtemp(join(tmpdir(), "ironbus-cd-src-"));
  const dst = await mkdtemp(join(tmpdir(), "ironbus-cd-dst-"));
  let srcMounted = false;
  let dstMounted = false;
  try {
    await writeFile(file, data);
    srcMounted = await tryMount(deps.tools, ["-o", "loop,ro", "-t", "auto", file], src);
    if (!srcMounted) {
      // IPA: a config drive we cannot read ourselves is left as it was written.
      deps.log.warn({ partition }, "unable to examine the configuration drive either: leaving it as written");
      return;
    }
    try {
      await runTool(deps.tools, "mkfs.vfat", ["-n", "CONFIG-2", partition]);
      dstMounted = await tryMount(deps.tools, ["-t", "vfat", partition], dst);
      if (!dstMounted) throw new Error(`cannot mount the new vfat filesystem on ${partition}`);
      await cp(src, dst, { recursive: true });
    } catch (err) {
      throw deploymentError(
        `A failure occurred while attempting to format, copy, and re-create the configuration drive in a structure which is compatible with the underlying hardware and Operating System. Error: ${(err as Error).message}`,
        err,
      );
    }
  } finally {
    if (srcMounted) await umount(deps.tools, src, deps.log);
    if (dstMounted) await umount(deps.tools, dst, deps.log);
    await rm(src, { recursive: true, force: true }).catch(() => undefined);
    await rm(dst, { recursive: true, force: true }).catch(() => undefined);
    await unlink(file).catch(() => undefined);
  }
}

/** Size in MiB of a configdrive partition for `bytes` (partition images). */
export function configdriveMiB(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / MIB));
}

