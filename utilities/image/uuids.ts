/**
 * standby.get_partition_uuids, read from the disk itself: for a whole-disk image the MBR disk
 * identifier as `root uuid` (what IPA answers); for a partition image each partition's role from its
 * type and label, and the filesystem UUID (else the partition UUID) of root and of the ESP.
 */
import type { Json } from "../../core/envelope.js";
import { blkidProbe, blockUuid, diskIdentifier, listPartitions, type PartitionEntry, type ToolContext } from "./device.js";
import type { ImageType } from "./info.js";
import { GPT_TYPES, type PartitionRole } from "./layout.js";

const BY_TYPE: ReadonlyMap<string, PartitionRole> = new Map<string, PartitionRole>([
  [GPT_TYPES["efi system partition"].guid, "efi system partition"],
  ["0xef", "efi system partition"],
  [GPT_TYPES["BIOS Boot partition"].guid, "BIOS Boot partition"],
  [GPT_TYPES["PReP Boot partition"].guid, "PReP Boot partition"],
  ["0x41", "PReP Boot partition"],
  [GPT_TYPES.swap.guid, "swap"],
  ["0x82", "swap"],
]);

/** Each partition's role in IPA's layout, judged from the disk. */
export async function partitionRoles(tools: ToolContext, disk: string): Promise<Map<PartitionRole, PartitionEntry>> {
  const roles = new Map<PartitionRole, PartitionEntry>();
  const rest: PartitionEntry[] = [];
  for (const p of await listPartitions(tools, disk)) {
    const info = await blkidProbe(tools, p.path);
    const label = (info["LABEL"] ?? "").toLowerCase();
    const role =
      BY_TYPE.get((info["PART_ENTRY_TYPE"] ?? "").toLowerCase()) ??
      (info["TYPE"] === "swap" ? "swap" : label === "config-2" ? "configdrive" : label === "ephemeral0" ? "ephemeral" : undefined);
    if (role !== undefined && !roles.has(role)) roles.set(role, p);
    else rest.push(p);
  }
  // Root is the last partition of IPA's layout.
  const root = rest.sort((a, b) => b.start - a.start)[0];
  if (root !== undefined) roles.set("root", root);
  return roles;
}

export type PartitionUuids = { [key: string]: Json };

export async function readPartitionUuids(tools: ToolContext, disk: string, imageType: ImageType): Promise<PartitionUuids> {
  if (imageType === "whole-disk") return { "root uuid": await diskIdentifier(disk) };
  const roles = await partitionRoles(tools, disk);
  const partitions: { [key: string]: Json } = {};
  for (const [role, p] of roles) partitions[role] = p.path;
  const uuidOf = async (role: PartitionRole): Promise<string | null> => {
    const p = roles.get(role);
    return p === undefined ? null : await blockUuid(tools, p.path);
  };
  const out: PartitionUuids = {
    partitions,
    "root uuid": await uuidOf("root"),
    "efi system partition uuid": await uuidOf("efi system partition"),
  };
  if (roles.has("PReP Boot partition")) out["PReP Boot partition uuid"] = await uuidOf("PReP Boot partition");
  return out;
}
