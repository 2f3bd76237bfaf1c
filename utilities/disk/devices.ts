/**
 * Block devices as the disk utilities see them: the inventory's disk list (`collectDisks`, IPA's
 * filtering) completed from sysfs (read-only and removable flags, holders, partitions) and udev
 * (every serial and WWN a disk is known by, for root device hints).
 *
 * Loop devices are listed only when `allowedDevices` names them (exactly or by a `*` pattern), so a
 * test sees its own loop devices and never anybody else's.
 */
import type { AgentConfig } from "../../core/config.js";
import type { CommandRunner } from "../exec.js";
import { collectDisks } from "../inventory/disks.js";
import type { Disk } from "../inventory/schema.js";
import { HostFs } from "../inventory/sysfs.js";
import { blockUdevProperties } from "../inventory/udev.js";

export interface PartitionInfo {
  /** /dev/sda1, /dev/nvme0n1p2, /dev/loop3p1 */
  readonly name: string;
  /** Partition number from sysfs. */
  readonly number: number;
  /** Bytes. */
  readonly size: number;
}

/** IPA's device fields (the inventory's disk) plus what erasing and choosing a root disk need. */
export interface BlockDevice extends Disk {
  /** /sys/block/X/ro */
  readonly read_only: boolean;
  /** /sys/block/X/removable */
  readonly removable: boolean;
  /** Kernel names of the devices built on this one (md127, dm-0): /sys/block/X/holders. */
  readonly holders: readonly string[];
  /** Partitions the kernel knows, by number. */
  readonly partitions: readonly PartitionInfo[];
  /** Every serial the disk is known by (lsblk, udev ID_SERIAL_SHORT, ID_SERIAL): list-valued hints. */
  readonly serials: readonly string[];
  /** Every WWN the disk is known by (lsblk, udev ID_WWN). */
  readonly wwns: readonly string[];
}

export interface ListOptions {
  readonly signal?: AbortSignal;
  /** Root of /sys, /dev, /run (tests point it at a fixture tree). */
  readonly fsRoot?: string;
  /** Per-tool limit, ms (default 30 s). */
  readonly timeoutMs?: number;
}

export interface ListDeps {
  readonly config: Pick<AgentConfig, "allowedDevices">;
  readonly run: CommandRunner;
}

/** True when `allowedDevices` names the path exactly or through a trailing-`*` prefix (the guard's syntax). */
export function namedIn(path: string, allowedDevices: readonly string[]): boolean {
  return allowedDevices.some((entry) => (entry.endsWith("*") ? path.startsWith(entry.slice(0, -1)) : path === entry));
}

function isLoop(name: string): boolean {
  return /^\/dev\/loop\d+$/.test(name);
}

function uniq(values: ReadonlyArray<string | null | undefined>): string[] {
  const out: string[] = [];
  for (const v of values) {
    if (v === null || v === undefined || v.trim() === "") continue;
    if (!out.includes(v)) out.push(v);
  }
  return out;
}

async function partitionsOf(fs: HostFs, kname: string): Promise<PartitionInfo[]> {
  const out: PartitionInfo[] = [];
  for (const entry of await fs.list(`/sys/block/${kname}`)) {
    if (!entry.startsWith(kname)) continue;
    const num = await fs.readTrim(`/sys/block/${kname}/${entry}/partition`);
    if (num === null || !/^\d+$/.test(num)) continue;
    const sectors = await fs.readTrim(`/sys/block/${kname}/${entry}/size`);
    out.push({ name: `/dev/${entry}`, number: Number(num), size: sectors !== null && /^\d+$/.test(sectors) ? Number(sectors) * 512 : 0 });
  }
  return out.sort((a, b) => a.number - b.number);
}

async function complete(fs: HostFs, disk: Disk): Promise<BlockDevice> {
  const kname = disk.name.replace(/^\/dev\//, "");
  const udev = await blockUdevProperties(fs, kname);
  return {
    ...disk,
    read_only: (await fs.readTrim(`/sys/block/${kname}/ro`)) === "1",
    removable: (await fs.readTrim(`/sys/block/${kname}/removable`)) === "1",
    holders: await fs.list(`/sys/block/${kname}/holders`),
    partitions: await partitionsOf(fs, kname),
    serials: uniq([disk.serial, udev["ID_SERIAL_SHORT"], udev["ID_SERIAL"]]),
    wwns: uniq([disk.wwn, udev["ID_WWN"]]),
  };
}

/**
 * The machine's disks in lsblk order (IPA's listing order: the first device matching root device
 * hints wins). Loop devices only when `allowedDevices` names them.
 */
export async function listBlockDevices(deps: ListDeps, opts: ListOptions = {}): Promise<BlockDevice[]> {
  const fs = new HostFs(opts.fsRoot ?? "/");
  const allowed = deps.config.allowedDevices;
  const includeLoop = allowed.some((entry) => entry.startsWith("/dev/loop"));
  const disks = await collectDisks(
    { run: deps.run, fs, signal: opts.signal, timeoutMs: opts.timeoutMs ?? 30_000 },
    { includeLoop },
  );
  const out: BlockDevice[] = [];
  for (const disk of disks) {
    if (isLoop(disk.name) && !namedIn(disk.name, allowed)) continue;
    out.push(await complete(fs, disk));
  }
  return out;
}

/** A device's logical sector size (512 when unknown). */
export function sectorSize(dev: Pick<Disk, "logical_sectors">): number {
  return dev.logical_sectors ?? 512;
}

export function isNvme(name: string): boolean {
  return name.startsWith("/dev/nvme");
}
