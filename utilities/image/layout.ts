/**
 * Partition images: the disk layout IPA makes for them, and making it.
 *
 * In order from the start of the disk (1 MiB in): the boot partition of the boot mode (UEFI: a
 * 550 MiB ESP, vfat labelled `efi-part`; BIOS on GPT: a 1 MiB bios_grub partition; BIOS on ppc64: an
 * 8 MiB PReP partition), then ephemeral (`ephemeral0`), swap (`swap1`), the configdrive, and the root
 * partition LAST (so that growroot can extend it). UEFI uses GPT; BIOS uses the `disk_label`
 * capability, msdos by default. GPT is written with sgdisk, msdos with parted.
 */
import type { Json, JsonObject } from "../../core/envelope.js";
import { deploymentError } from "./errors.js";
import { type PartitionEntry, runTool, type ToolContext } from "./device.js";

export type PartitionRole = "efi system partition" | "BIOS Boot partition" | "PReP Boot partition" | "ephemeral" | "swap" | "configdrive" | "root";

export interface PlannedPartition {
  readonly role: PartitionRole;
  readonly number: number;
  readonly startMiB: number;
  readonly sizeMiB: number;
}

export interface Layout {
  readonly label: "gpt" | "msdos";
  readonly bootMode: "uefi" | "bios";
  readonly partitions: readonly PlannedPartition[];
}

export const GPT_TYPES: Readonly<Record<PartitionRole, { code: string; guid: string }>> = {
  "efi system partition": { code: "ef00", guid: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" },
  "BIOS Boot partition": { code: "ef02", guid: "21686148-6449-6e6f-744e-656564454649" },
  "PReP Boot partition": { code: "4100", guid: "9e1a2d38-c612-4316-aa26-8b49521e5a8b" },
  swap: { code: "8200", guid: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" },
  ephemeral: { code: "8300", guid: "0fc63daf-8483-4772-8e79-3d69d8477de4" },
  configdrive: { code: "8300", guid: "0fc63daf-8483-4772-8e79-3d69d8477de4" },
  root: { code: "8300", guid: "0fc63daf-8483-4772-8e79-3d69d8477de4" },
};

/** GPT partition names we give (PARTLABEL); the filesystem labels are IPA's. */
const GPT_NAMES: Readonly<Record<PartitionRole, string>> = {
  "efi system partition": "efi-part",
  "BIOS Boot partition": "bios-boot",
  "PReP Boot partition": "prep-boot",
  ephemeral: "ephemeral0",
  swap: "swap1",
  configdrive: "config-2",
  root: "root",
};

export interface LayoutRequest {
  readonly bootMode: "uefi" | "bios";
  readonly label: "gpt" | "msdos";
  readonly cpuArch: string;
  readonly rootMb: number;
  readonly swapMb: number;
  readonly ephemeralMb: number;
  readonly configdriveMb: number;
  readonly diskBytes: number;
  readonly espMb?: number;
}

export function planLayout(req: LayoutRequest): Layout {
  const label = req.bootMode === "uefi" ? "gpt" : req.label;
  const sizes: Array<[PartitionRole, number]> = [];
  if (req.bootMode === "uefi") sizes.push(["efi system partition", req.espMb ?? 550]);
  else if (req.cpuArch.startsWith("ppc64")) sizes.push(["PReP Boot partition", 8]);
  else if (label === "gpt") sizes.push(["BIOS Boot partition", 1]);
  if (req.ephemeralMb > 0) sizes.push(["ephemeral", req.ephemeralMb]);
  if (req.swapMb > 0) sizes.push(["swap", req.swapMb]);
  if (req.configdriveMb > 0) sizes.push(["configdrive", req.configdriveMb]);
  sizes.push(["root", req.rootMb]);
  if (label === "msdos" && sizes.length > 4) {
    throw deploymentError(`An msdos partition table holds 4 primary partitions; this layout needs ${sizes.length} (${sizes.map(([r]) => r).join(", ")}).`);
  }
  let start = 1;
  const partitions = sizes.map(([role, size], i) => {
    const p = { role, number: i + 1, startMiB: start, sizeMiB: size };
    start += size;
    return p;
  });
  // Leave the last MiB for the backup GPT.
  const diskMiB = Math.floor(req.diskBytes / (1024 * 1024));
  if (start + 1 > diskMiB) throw deploymentError(`The partitions need ${start + 1} MiB but the disk has ${diskMiB} MiB.`);
  return { label, bootMode: req.bootMode, partitions };
}

/** Writes the partition table of `layout` onto `disk` (everything else on it is lost). */
export async function applyLayout(ctx: ToolContext, disk: string, layout: Layout, sectorBytes: number): Promise<void> {
  const perMiB = (1024 * 1024) / sectorBytes;
  if (layout.label === "gpt") {
    const args = ["-o"];
    for (const p of layout.partitions) {
      const first = p.startMiB * perMiB;
      const last = (p.startMiB + p.sizeMiB) * perMiB - 1;
      args.push("-n", `${p.number}:${first}:${last}`, "-t", `${p.number}:${GPT_TYPES[p.role].code}`, "-c", `${p.number}:${GPT_NAMES[p.role]}`);
    }
    await runTool(ctx, "sgdisk", [...args, disk]);
    return;
  }
  const args = ["-s", "-a", "optimal", "--", disk, "mklabel", "msdos"];
  for (const p of layout.partitions) {
    const fs = p.role === "swap" ? ["linux-swap"] : [];
    args.push("mkpart", "primary", ...fs, `${p.startMiB}MiB`, `${p.startMiB + p.sizeMiB}MiB`);
  }
  for (const p of layout.partitions) {
    if (p.role === "PReP Boot partition") args.push("set", String(p.number), "prep", "on", "set", String(p.number), "boot", "on");
    if (p.role === "root" && layout.bootMode === "bios" && !layout.partitions.some((q) => q.role === "PReP Boot partition")) {
      args.push("set", String(p.number), "boot", "on");
    }
  }
  await runTool(ctx, "parted", args);
}

/** mkfs for the ephemeral partition (IPA's utils.mkfs). */
export function mkfsCommand(format: string, device: string, label: string): [string, string[]] {
  switch (format) {
    case "ext2":
    case "ext3":
    case "ext4":
      return [`mkfs.${format}`, ["-F", "-q", "-L", label, device]];
    case "xfs":
    case "btrfs":
      return [`mkfs.${format}`, ["-f", "-L", label, device]];
    case "vfat":
    case "fat":
    case "fat32":
      return ["mkfs.vfat", ["-n", label.toUpperCase(), device]];
    case "ntfs":
      return ["mkfs.ntfs", ["-F", "-f", "-L", label, device]];
    case "swap":
      return ["mkswap", ["-L", label, device]];
    default:
      throw deploymentError(`Failed to create a file system. File system ${format} is not supported.`);
  }
}

/** The device of each planned partition, from what the kernel now shows. */
export function mapPartitions(layout: Layout, entries: readonly PartitionEntry[]): Map<PartitionRole, PartitionEntry> {
  const out = new Map<PartitionRole, PartitionEntry>();
  for (const p of layout.partitions) {
    const e = entries.find((x) => x.number === p.number);
    if (e === undefined) throw deploymentError(`'${p.role}' partition ${p.number} not found after partitioning`);
    out.set(p.role, e);
  }
  return out;
}

function capabilities(value: Json | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  let v: Json | undefined = value;
  if (typeof v === "string" && v.trim().startsWith("{")) {
    try {
      v = JSON.parse(v) as Json;
    } catch {
      // not JSON: the k:v,k:v form below
    }
  }
  if (typeof v === "string") {
    for (const pair of v.split(",")) {
      const i = pair.indexOf(":");
      if (i > 0) out[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
    }
  } else if (typeof v === "object" && v !== null && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) if (typeof x === "string" || typeof x === "boolean" || typeof x === "number") out[k] = String(x);
  }
  return out;
}

function sub(node: JsonObject | null, key: string): JsonObject {
  const v = node?.[key];
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : {};
}

/** The node's capabilities: instance_info's over properties'. */
export function nodeCapabilities(node: JsonObject | null): Record<string, string> {
  return { ...capabilities(sub(node, "properties")["capabilities"]), ...capabilities(sub(node, "instance_info")["capabilities"]) };
}

/**
 * IPA's boot mode of a partition image: image_info's deploy_boot_mode, the node's instance_info
 * deploy_boot_mode, the `boot_mode` capability (`secure_boot` forces UEFI), else the ramdisk's own.
 */
export function bootModeOf(deployBootMode: string | undefined, node: JsonObject | null, ramdiskIsUefi: boolean): "uefi" | "bios" {
  const caps = nodeCapabilities(node);
  if ((caps["secure_boot"] ?? "").toLowerCase() === "true") return "uefi";
  const instanceMode = sub(node, "instance_info")["deploy_boot_mode"];
  const asked = deployBootMode ?? (typeof instanceMode === "string" ? instanceMode : undefined) ?? caps["boot_mode"];
  if (asked !== undefined) return asked.toLowerCase() === "uefi" ? "uefi" : "bios";
  return ramdiskIsUefi ? "uefi" : "bios";
}

/** gpt for UEFI; else image_info's disk_label, the `disk_label` capability, msdos. */
export function diskLabelOf(bootMode: "uefi" | "bios", diskLabel: string | undefined, node: JsonObject | null): "gpt" | "msdos" {
  if (bootMode === "uefi") return "gpt";
  const asked = diskLabel ?? nodeCapabilities(node)["disk_label"];
  return asked?.toLowerCase() === "gpt" ? "gpt" : "msdos";
}
