/**
 * Block devices: `lsblk -bia --json` filtered the way IPA filters them,
 * completed from sysfs, udev's database and /dev/disk/by-path.
 */
import path from "node:path";
import { z } from "zod";

import type { CollectContext } from "./context.js";
import { parseJson, runOk } from "./context.js";
import type { Disk } from "./schema.js";
import type { UdevProperties } from "./udev.js";
import { blockUdevProperties } from "./udev.js";

/** Columns IPA asks for, plus VENDOR and HCTL (fallbacks for sysfs). */
export const LSBLK_COLUMNS = [
  "KNAME",
  "MODEL",
  "SIZE",
  "ROTA",
  "TYPE",
  "UUID",
  "PARTUUID",
  "SERIAL",
  "WWN",
  "LOG-SEC",
  "PHY-SEC",
  "TRAN",
  "VENDOR",
  "HCTL",
] as const;
/** What IPA itself requests; used when an old lsblk rejects VENDOR or HCTL. */
const LSBLK_BASE_COLUMNS = LSBLK_COLUMNS.filter((c) => c !== "VENDOR" && c !== "HCTL");

const scalar = z.union([z.string(), z.number(), z.boolean(), z.null()]).optional();

const LsblkDeviceSchema = z.looseObject({
  kname: z.string().min(1),
  type: scalar,
  model: scalar,
  size: scalar,
  rota: scalar,
  serial: scalar,
  wwn: scalar,
  tran: scalar,
  vendor: scalar,
  hctl: scalar,
  "log-sec": scalar,
  "phy-sec": scalar,
  children: z.array(z.unknown()).optional(),
});
type LsblkDevice = z.infer<typeof LsblkDeviceSchema>;

const LsblkReportSchema = z.object({ blockdevices: z.array(z.unknown()) });

type Scalar = z.infer<typeof scalar>;

function str(v: Scalar): string | null {
  if (v === null || v === undefined) return null;
  return String(v);
}

/** Non-empty string or null (IPA treats '' like a missing value for serial, wwn, tran). */
function nonEmpty(v: Scalar): string | null {
  const s = str(v);
  return s === null || s.trim() === "" ? null : s;
}

function int(v: Scalar): number | null {
  if (typeof v === "number") return Number.isSafeInteger(v) ? v : null;
  if (typeof v === "string" && /^\s*\d+\s*$/.test(v)) {
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : null;
  }
  return null;
}

function bool(v: Scalar): boolean {
  if (typeof v === "boolean") return v;
  if (typeof v === "number") return v !== 0;
  if (typeof v === "string") return v.trim() === "1" || v.trim().toLowerCase() === "true";
  return false;
}

/**
 * Parse lsblk's JSON. lsblk prints a tree (children = partitions, holders)
 * when the NAME column is requested and a flat list otherwise; both are
 * walked depth-first. Malformed entries are skipped; unparsable output gives [].
 */
export function parseLsblk(text: string | null): LsblkDevice[] {
  const report = LsblkReportSchema.safeParse(parseJson(text));
  if (!report.success) return [];
  const out: LsblkDevice[] = [];
  const walk = (nodes: readonly unknown[]): void => {
    for (const node of nodes) {
      const dev = LsblkDeviceSchema.safeParse(node);
      if (!dev.success) continue;
      out.push(dev.data);
      if (dev.data.children !== undefined) walk(dev.data.children);
    }
  };
  walk(report.data.blockdevices);
  return out;
}

export interface DiskFilterOptions {
  /** Keep TYPE "loop" devices (IPA drops them). */
  includeLoop?: boolean;
}

/** IPA's selection: disks, RAID volumes and multipath maps; no RAM disks, floppies, empty devices. */
export function keepDevice(dev: LsblkDevice, opts: DiskFilterOptions = {}): boolean {
  const kname = dev.kname;
  if (kname.startsWith("fd")) return false;
  const type = str(dev.type);
  if (type === null) return false;
  const typeOk =
    type === "disk" || type.includes("raid") || type === "mpath" || (opts.includeLoop === true && type === "loop");
  if (!typeOk) return false;
  if (kname.startsWith("ram") || kname.startsWith("zram")) return false;
  const size = int(dev.size);
  return size !== null && size > 0;
}

/** Map "/dev/sda" -> "/dev/disk/by-path/pci-...". The first link in name order wins. */
async function byPathMapping(ctx: CollectContext): Promise<Map<string, string>> {
  const dir = "/dev/disk/by-path";
  const map = new Map<string, string>();
  for (const link of await ctx.fs.list(dir)) {
    const target = await ctx.fs.readlink(`${dir}/${link}`);
    if (target === null) continue;
    let dev: string;
    if (path.isAbsolute(target)) {
      // An absolute link inside a fixture tree points into that tree.
      dev = ctx.fs.toHost(target) ?? path.normalize(target);
    } else {
      dev = path.posix.resolve(dir, target);
    }
    if (!map.has(dev)) map.set(dev, `${dir}/${link}`);
  }
  return map;
}

/** True when the device is a path of a device-mapper multipath map (IPA lists the map instead). */
async function isMultipathMember(ctx: CollectContext, kname: string): Promise<boolean> {
  for (const holder of await ctx.fs.list(`/sys/block/${kname}/holders`)) {
    const uuid = await ctx.fs.readTrim(`/sys/block/${holder}/dm/uuid`);
    if (uuid?.startsWith("mpath-") === true) return true;
  }
  return false;
}

function udevValue(props: UdevProperties, key: string): string | null {
  const v = props[`ID_${key}`] ?? props[`DM_${key}`];
  return v === undefined || v === "" ? null : v;
}

async function toDisk(ctx: CollectContext, dev: LsblkDevice, byPath: ReadonlyMap<string, string>): Promise<Disk> {
  const kname = dev.kname;
  const name = `/dev/${kname}`;
  const udev = await blockUdevProperties(ctx.fs, kname);

  // lsblk's serial/wwn come first; udev fills the gaps (IPA's priority order).
  const serial = nonEmpty(dev.serial) ?? udevValue(udev, "SERIAL_SHORT") ?? udevValue(udev, "SERIAL");
  const wwn = nonEmpty(dev.wwn) ?? udevValue(udev, "WWN");

  const scsi = await ctx.fs.list(`/sys/block/${kname}/device/scsi_device`);
  const hctl = scsi[0] ?? nonEmpty(dev.hctl);

  const sysVendor = await ctx.fs.readTrim(`/sys/class/block/${kname}/device/vendor`);
  const lsblkVendor = nonEmpty(dev.vendor);
  const vendor = sysVendor ?? (lsblkVendor === null ? null : lsblkVendor.trim());

  return {
    name,
    model: str(dev.model),
    size: int(dev.size) ?? 0,
    rotational: bool(dev.rota),
    wwn,
    serial,
    vendor,
    wwn_with_extension: udevValue(udev, "WWN_WITH_EXTENSION"),
    wwn_vendor_extension: udevValue(udev, "WWN_VENDOR_EXTENSION"),
    hctl,
    by_path: byPath.get(name) ?? null,
    logical_sectors: positive(int(dev["log-sec"])),
    physical_sectors: positive(int(dev["phy-sec"])),
    tran: nonEmpty(dev.tran),
  };
}

function positive(n: number | null): number | null {
  return n !== null && n > 0 ? n : null;
}

export async function collectDisks(ctx: CollectContext, opts: DiskFilterOptions = {}): Promise<Disk[]> {
  let out = await runOk(ctx, "lsblk", ["-bia", "--json", `-o${LSBLK_COLUMNS.join(",")}`]);
  if (out === null) {
    // Older util-linux without VENDOR/HCTL columns.
    out = await runOk(ctx, "lsblk", ["-bia", "--json", `-o${LSBLK_BASE_COLUMNS.join(",")}`]);
  }
  const devices = parseLsblk(out);
  if (devices.length === 0) return [];

  const byPath = await byPathMapping(ctx);
  const seen = new Set<string>();
  const disks: Disk[] = [];
  for (const dev of devices) {
    if (seen.has(dev.kname)) continue;
    seen.add(dev.kname);
    if (!keepDevice(dev, opts)) continue;
    if (str(dev.type) === "disk" && (await isMultipathMember(ctx, dev.kname))) continue;
    disks.push(await toDisk(ctx, dev, byPath));
  }
  return disks;
}
