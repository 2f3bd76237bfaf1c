/**
 * Read-only looks at a disk before anything is erased or chosen: the signatures on it and on its
 * partitions (`wipefs --json`, which lists every signature libblkid sees without changing anything),
 * and the partition types in its partition table, read from the disk itself (MBR, extended/logical
 * MBR partitions, GPT) so partitions the kernel has not scanned are seen too.
 *
 * From these come IPA's safety decisions: protected shared-disk contents (GPFS and VMFS partition
 * types, MBR type 0xfb, gfs2), Linux RAID members, and the virtual-media device.
 */
import { type FileHandle, open } from "node:fs/promises";
import { z } from "zod";
import type { BlockDevice } from "./devices.js";
import { sectorSize } from "./devices.js";
import { type DiskIo, runTool } from "./tools.js";

export interface Signature {
  /** The device it was found on (the disk or one of its partitions). */
  readonly device: string;
  readonly offset: string;
  readonly type: string;
  readonly label: string | null;
}

const WipefsSchema = z.object({
  signatures: z.array(
    z.looseObject({
      offset: z.union([z.string(), z.number()]).optional(),
      type: z.string().nullable().optional(),
      label: z.string().nullable().optional(),
    }),
  ),
});

/** Parses `wipefs --json` (no output at all means no signatures, as older wipefs print nothing). */
export function parseWipefsJson(device: string, text: string): Signature[] {
  if (text.trim() === "") return [];
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return [];
  }
  const parsed = WipefsSchema.safeParse(json);
  if (!parsed.success) return [];
  return parsed.data.signatures
    .filter((s) => typeof s.type === "string" && s.type !== "")
    .map((s) => ({ device, offset: String(s.offset ?? ""), type: s.type ?? "", label: s.label ?? null }));
}

/** Signatures on one device; listing only (wipefs without -a writes nothing). */
export async function listSignatures(io: DiskIo, device: string): Promise<Signature[]> {
  const res = await runTool(io, "wipefs", ["--json", device]);
  return parseWipefsJson(device, res.stdout);
}

function guid(bytes: Buffer): string {
  const hex = (b: Buffer): string => b.toString("hex").toUpperCase();
  const le = (b: Buffer): string => hex(Buffer.from(b).reverse());
  return `${le(bytes.subarray(0, 4))}-${le(bytes.subarray(4, 6))}-${le(bytes.subarray(6, 8))}-${hex(bytes.subarray(8, 10))}-${hex(bytes.subarray(10, 16))}`;
}

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);

/**
 * Partition type identifiers from the disk's own table: MBR types as "0xfb" (primary and logical),
 * GPT type GUIDs upper-case. Returns [] for a disk without a table or that cannot be read.
 */
export async function readPartitionTypes(device: string, logicalSector = 512): Promise<string[]> {
  let fh: FileHandle;
  try {
    fh = await open(device, "r");
  } catch {
    return [];
  }
  try {
    const read = async (offset: number, length: number): Promise<Buffer> => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    };
    const types: string[] = [];
    const mbr = await read(0, 512);
    if (mbr.length === 512 && mbr[510] === 0x55 && mbr[511] === 0xaa) {
      let gpt = false;
      for (let i = 0; i < 4; i++) {
        const e = 446 + 16 * i;
        const type = mbr[e + 4] ?? 0;
        if (type === 0) continue;
        if (type === 0xee) {
          gpt = true;
          continue;
        }
        types.push(`0x${type.toString(16).padStart(2, "0")}`);
        if (EXTENDED_TYPES.has(type)) {
          // Walk the chain of extended boot records (bounded: a loop in a broken chain stops).
          const extStart = mbr.readUInt32LE(e + 8);
          let next = extStart;
          for (let hops = 0; hops < 128 && next !== 0; hops++) {
            const ebr = await read(next * logicalSector, 512);
            if (ebr.length < 512 || ebr[510] !== 0x55 || ebr[511] !== 0xaa) break;
            const logical = ebr[446 + 4] ?? 0;
            if (logical !== 0) types.push(`0x${logical.toString(16).padStart(2, "0")}`);
            const link = ebr.readUInt32LE(446 + 16 + 8);
            next = (ebr[446 + 16 + 4] ?? 0) !== 0 && link !== 0 ? extStart + link : 0;
          }
        }
      }
      if (!gpt) return types;
    }
    // GPT: header at LBA 1 (checked for the 512 B and the device's own sector size).
    for (const sector of new Set([logicalSector, 512, 4096])) {
      const header = await read(sector, 92);
      if (header.length < 92 || header.toString("latin1", 0, 8) !== "EFI PART") continue;
      const entriesLba = Number(header.readBigUInt64LE(72));
      const count = Math.min(header.readUInt32LE(80), 1024);
      const size = header.readUInt32LE(84);
      if (size < 128 || size > 4096) continue;
      const entries = await read(entriesLba * sector, count * size);
      for (let i = 0; i + size <= entries.length; i += size) {
        const type = entries.subarray(i, i + 16);
        if (type.every((b) => b === 0)) continue;
        types.push(guid(type));
      }
      break;
    }
    return types;
  } catch {
    return [];
  } finally {
    await fh.close();
  }
}

/** Partition types IPA refuses to erase: shared-disk file systems may be in use by other machines. */
export const PROTECTED_PARTITION_TYPES: Readonly<Record<string, string>> = {
  "37AFFC90-EF7D-4E96-91C3-2D7AE055B174": "an IBM GPFS partition",
  "AA31E02A-400F-11DB-9590-000C2911D1B8": "a VMware VMFS partition (GPT)",
  "0xfb": "a VMware VMFS partition (MBR type 0xfb)",
};

/** File systems refused for the same reason (IPA guards gfs2; gfs and VMFS signatures are ours). */
export const PROTECTED_FS_TYPES: Readonly<Record<string, string>> = {
  gfs2: "a Red Hat GFS2 file system",
  gfs: "a Red Hat GFS file system",
  VMFS: "a VMware VMFS file system",
  VMFS_volume_member: "a VMware VMFS volume",
};

/** Label of the virtual floppy Ironic attaches with the agent's configuration (IPA's vmedia device). */
export const VMEDIA_LABEL = "ir-vfd-dev";

export interface DeviceFacts {
  readonly device: string;
  /** Signatures on the disk and its partitions. */
  readonly signatures: readonly Signature[];
  /** Partition types from the disk's table. */
  readonly partitionTypes: readonly string[];
}

/** Reads a disk's signatures (disk and partitions) and its partition table. */
export async function probeDevice(io: DiskIo, dev: BlockDevice): Promise<DeviceFacts> {
  const signatures: Signature[] = [];
  for (const name of [dev.name, ...dev.partitions.map((p) => p.name)]) signatures.push(...(await listSignatures(io, name)));
  return { device: dev.name, signatures, partitionTypes: await readPartitionTypes(dev.name, sectorSize(dev)) };
}

/** What protected content the disk holds ("a VMware VMFS partition (MBR type 0xfb) (table)"), or null. */
export function protectedContent(facts: DeviceFacts): { what: string; where: string } | null {
  for (const type of facts.partitionTypes) {
    const what = PROTECTED_PARTITION_TYPES[type];
    if (what !== undefined) return { what, where: facts.device };
  }
  for (const sig of facts.signatures) {
    const what = PROTECTED_FS_TYPES[sig.type];
    if (what !== undefined) return { what, where: sig.device };
  }
  return null;
}

/** Why the disk counts as a Linux software-RAID member (signature on it or a partition, or an md holder), or null. */
export function raidMembership(dev: Pick<BlockDevice, "name" | "holders">, facts: DeviceFacts | null): string | null {
  const md = dev.holders.find((h) => h.startsWith("md"));
  if (md !== undefined) return `member of the software RAID /dev/${md}`;
  const sig = facts?.signatures.find((s) => s.type === "linux_raid_member");
  if (sig !== undefined) return `linux_raid_member signature on ${sig.device}${sig.label === null ? "" : ` (array ${sig.label})`}`;
  return null;
}

/** Why the disk is the virtual-media device (label ir-vfd-dev on it or a partition), or null. */
export function virtualMediaLabel(facts: DeviceFacts | null): string | null {
  const sig = facts?.signatures.find((s) => s.label !== null && s.label.toLowerCase() === VMEDIA_LABEL);
  return sig === undefined ? null : `virtual media (label ${sig.label ?? VMEDIA_LABEL} on ${sig.device})`;
}

/** BMC virtual devices by model: floppy, CD/DVD, "HDisk" images. Deliberately not "Virtual disk" (VM and RAID volumes). */
const VMEDIA_MODEL = /\bvirtual[\s_-]*(floppy|cd|cdrom|cd-rom|dvd|dvd-rom|hdisk|media)|\bvmedia\b/i;

/** True when the model names a BMC virtual-media device (used by the default root choice only). */
export function virtualMediaModel(model: string | null): boolean {
  return model !== null && VMEDIA_MODEL.test(model);
}
