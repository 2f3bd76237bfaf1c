/**
 * Software RAID with mdadm, after IPA's generic manager: `create_configuration` builds the node's
 * `target_raid_config`, `delete_configuration` removes every array on the allowed disks,
 * `apply_configuration` (deploy step) does both with a config passed in.
 *
 * Only disks the DeviceGuard allows take part: the physical disks are the allowed set (narrowed by
 * `physical_disks` hints), and deletion leaves alone any array with a member outside it.
 */
import { basename } from "node:path";
import { z } from "zod";
import type { JsonObject } from "../../core/envelope.js";
import {
  activeArrays,
  allowedDisks,
  type BlockEnv,
  listPartitions,
  partitionPath,
  rescan,
  runChecked,
  runLogged,
} from "./blockdev.js";
import { listBlockDevices } from "../disk/devices.js";
import { findDevicesByHints, type HintDevice, HintError } from "../disk/hints.js";
import { hintView } from "../disk/root.js";
import { asObject, nodeBootMode, partitionTableType } from "./node.js";
import { softwareRaidError } from "./errors.js";

/** IPA leaves this much room for an EFI system partition in front of the RAID partitions under UEFI. */
export const ESP_SIZE_MIB = 550;
const SECOND_DISK_LEVELS = new Set(["0", "1", "1+0", "5", "6"]);

const LogicalDisk = z.looseObject({
  size_gb: z.union([z.number(), z.string()]),
  raid_level: z.union([z.string(), z.number()]).transform(String),
  controller: z.string().nullish(),
  volume_name: z.string().nullish(),
  is_root_volume: z.boolean().nullish(),
  physical_disks: z.unknown().optional(),
});
type LogicalDisk = z.infer<typeof LogicalDisk>;
const RaidConfig = z.looseObject({ logical_disks: z.array(LogicalDisk).optional() });

const raidError = softwareRaidError;

function parseConfig(raw: unknown): LogicalDisk[] {
  const parsed = RaidConfig.safeParse(raw);
  if (!parsed.success) throw raidError(`RAID config is malformed: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return parsed.data.logical_disks ?? [];
}

/** IPA's validate_configuration: what the software RAID implementation supports. */
export function validateRaidConfig(raw: unknown, node: JsonObject | null, diskCount: number): void {
  const lds = parseConfig(raw);
  if (lds.length === 0) throw raidError("RAID config contains no logical disks");
  const errors: string[] = [];
  if (lds.length > 2) errors.push("Software RAID configuration requires one or two logical disks");
  const names = new Set<string>();
  let root = false;
  for (const ld of lds) {
    if (ld.controller !== "software") errors.push("Software RAID configuration requires all logical disks to have 'controller'='software'");
    if (ld.volume_name) {
      if (names.has(ld.volume_name)) errors.push(`Duplicate software RAID device name ${ld.volume_name} detected`);
      names.add(ld.volume_name);
    }
    if (ld.is_root_volume === true) {
      if (root) errors.push("Software RAID configuration allows only one logical disk to be marked as is_root_volume");
      root = true;
    }
    if (ld.physical_disks !== undefined) {
      if (!Array.isArray(ld.physical_disks) || ld.physical_disks.length < 2) {
        errors.push("The physical_disks parameter for software RAID must be a list with at least 2 items, each specifying a disk in the device hints format");
      } else if (ld.physical_disks.some((h) => typeof h !== "object" || h === null || Array.isArray(h))) {
        errors.push("The physical_disks parameter for software RAID must be a list of device hints (dictionaries)");
      }
    }
    if (ld.size_gb !== "MAX" && !(Number.isInteger(Number(ld.size_gb)) && Number(ld.size_gb) > 0)) errors.push(`size_gb must be a positive integer or "MAX", got ${JSON.stringify(ld.size_gb)}`);
  }
  if (lds[0]?.raid_level !== "1") errors.push("Software RAID Configuration requires RAID-1 for the first logical disk");
  const second = lds[1];
  if (lds.length === 2 && second !== undefined) {
    if (lds[0]?.size_gb === "MAX" && second.size_gb === "MAX") errors.push("Software RAID can have only one RAID device with size 'MAX'");
    if (!SECOND_DISK_LEVELS.has(second.raid_level)) errors.push(`Software RAID configuration does not support RAID level ${second.raid_level}`);
    if (second.raid_level === "5" && diskCount < 3) errors.push(`Software RAID configuration is not possible for RAID level 5 with only ${diskCount} block devices found.`);
    if (second.raid_level === "6" && diskCount < 4) errors.push(`Software RAID configuration is not possible for RAID level 6 with only ${diskCount} block devices found.`);
  }
  if (errors.length > 0) throw raidError(`Could not validate Software RAID config for ${String(node?.["uuid"] ?? "node")}: ${errors.join("; ")}`);
}

/** The allowed disks as the disk area lists them, for root-device-hint matching. */
async function hintDevices(env: BlockEnv, allowed: readonly string[]): Promise<HintDevice[]> {
  const listed = await listBlockDevices({ config: env.config, run: env.run }, env.signal === undefined ? {} : { signal: env.signal });
  return listed.filter((d) => allowed.includes(d.name)).map(hintView);
}

/** The physical disks of each logical disk (IPA's get_block_devices_for_raid, on the allowed set). */
async function blockDevicesForRaid(env: BlockEnv, disks: readonly string[], lds: readonly LogicalDisk[]): Promise<{ all: string[]; per: string[][] }> {
  const all: string[] = [];
  const per: string[][] = [];
  let views: HintDevice[] | undefined;
  for (const ld of lds) {
    let matching: string[];
    if (Array.isArray(ld.physical_disks)) {
      matching = [];
      views ??= await hintDevices(env, disks);
      for (const hint of ld.physical_disks as Record<string, unknown>[]) {
        // A disk named by plain path outside the allowed set is refused by the guard, not just left unmatched.
        const name = hint["name"];
        if (typeof name === "string" && /^[\w/.:-]+$/.test(name)) await env.guard.check(name.startsWith("/") ? name : `/dev/${name}`, "software RAID");
        let candidates: string[];
        try {
          candidates = findDevicesByHints(views, hint).map((d) => d.name);
        } catch (err) {
          if (err instanceof HintError) throw raidError(`physical_disks hint ${JSON.stringify(hint)} does not validate: ${err.message}`);
          throw err;
        }
        if (candidates.length === 0) throw raidError(`No candidates for physical disk ${JSON.stringify(hint)} from the allowed disks [${disks.join(", ")}]`);
        const pick = candidates.find((c) => !matching.includes(c));
        if (pick === undefined) throw raidError(`No candidates left for physical disk ${JSON.stringify(hint)} after picking [${matching.join(", ")}]`);
        matching.push(pick);
      }
    } else {
      matching = [...disks];
    }
    for (const d of matching) if (!all.includes(d)) all.push(d);
    per.push(matching);
  }
  return { all, per };
}

/** Where the first RAID partition starts on a freshly labelled disk (IPA's calculate_raid_start). */
async function raidStart(env: BlockEnv, disk: string, bootMode: string, table: string): Promise<string> {
  if (bootMode === "uefi") return `${ESP_SIZE_MIB + 1}MiB`;
  if (table === "gpt") return "8MiB";
  const out = await runChecked(env, "sgdisk", ["-F", disk]);
  const last = out.stdout.trim().split("\n").pop()?.trim() ?? "";
  if (!/^\d+$/.test(last)) throw raidError(`sgdisk -F ${disk} gave ${JSON.stringify(out.stdout.trim())}`);
  return `${last}s`;
}

/** md device names not in use (the kernel's active arrays), lowest first. */
async function freeMdNames(env: BlockEnv, count: number): Promise<string[]> {
  const used = new Set((await activeArrays(env)).map((a) => a.device));
  const out: string[] = [];
  for (let i = 0; i < 128 && out.length < count; i++) if (!used.has(`/dev/md${i}`)) out.push(`/dev/md${i}`);
  if (out.length < count) throw raidError("No free md (RAID) devices are left");
  return out;
}

/** Component devices `mdadm --detail` lists for an array. */
async function detailMembers(env: BlockEnv, md: string): Promise<string[]> {
  const res = await env.run("mdadm", ["--detail", md], env.signal === undefined ? {} : { signal: env.signal });
  if (res.code !== 0) {
    env.log.warn({ md, stderr: res.stderr.trim() }, "mdadm --detail failed");
    return [];
  }
  return res.stdout
    .split("\n")
    .slice(1)
    .flatMap((line) => line.match(/\/dev\/[\w/-]+/g) ?? []);
}

export interface CreatedArray {
  readonly device: string;
  readonly level: string;
  readonly name: string;
  readonly members: readonly string[];
}

export interface RaidPlan {
  readonly raw: unknown;
  readonly lds: readonly LogicalDisk[];
  /** Every disk taking part, in first-use order. */
  readonly disks: readonly string[];
  /** The disks of each logical disk. */
  readonly per: readonly (readonly string[])[];
}

/**
 * Validates a config and picks its disks from the allowed set, touching nothing; undefined when
 * it has no software RAID (IPA: nothing to do).
 */
export async function planRaid(env: BlockEnv, node: JsonObject | null, raw: unknown): Promise<RaidPlan | undefined> {
  const lds = parseConfig(raw).filter((ld) => ld.controller === "software");
  if (lds.length === 0) {
    env.log.info("no software RAID in the config");
    return undefined;
  }
  const allowed = await allowedDisks(env);
  validateRaidConfig(raw, node, allowed.length);
  const { all, per } = await blockDevicesForRaid(env, allowed, lds);
  if (all.length === 0) throw raidError("no allowed disks to build software RAID on");
  for (const d of all) await env.guard.check(d, "software RAID");
  return { raw, lds, disks: all, per };
}

/** Builds the software RAID part of a config; returns the config (what Ironic stores as raid_config). */
export async function createConfiguration(env: BlockEnv, node: JsonObject | null, raw: unknown): Promise<{ result: unknown; arrays: CreatedArray[] }> {
  const plan = await planRaid(env, node, raw);
  return plan === undefined ? { result: {}, arrays: [] } : buildRaid(env, node, plan);
}

/** Partitions the plan's disks and creates the md arrays. */
export async function buildRaid(env: BlockEnv, node: JsonObject | null, plan: RaidPlan): Promise<{ result: unknown; arrays: CreatedArray[] }> {
  const { lds, per, disks: blockDevices } = plan;
  const withParts: string[] = [];
  for (const d of blockDevices) {
    await env.guard.check(d, "software RAID");
    if ((await listPartitions(env, d)).length > 0) withParts.push(d);
  }
  if (withParts.length > 0) throw raidError(`Partitions detected on devices ${withParts.join(", ")} during RAID config`);

  const bootMode = nodeBootMode(node);
  const table = partitionTableType(node);
  const start = new Map<string, string | number>();
  for (const d of blockDevices) {
    await runChecked(env, "parted", [d, "-s", "--", "mklabel", table], { error: softwareRaidError });
    start.set(d, await raidStart(env, d, bootMode, table));
  }

  // MAX comes last; IPA's quirk kept: a first partition ends at size_gb GiB from the disk's start.
  const order = [...lds.keys()].sort((a, b) => Number(lds[a]?.size_gb === "MAX") - Number(lds[b]?.size_gb === "MAX"));
  for (const i of order) {
    const ld = lds[i];
    const members = per[i];
    if (ld === undefined || members === undefined) continue;
    const size = ld.size_gb === "MAX" ? -1 : Number(ld.size_gb);
    for (const d of members) {
      const s = start.get(d) ?? "1MiB";
      const startStr = typeof s === "number" ? `${s}GiB` : s;
      const end = size === -1 ? -1 : typeof s === "number" ? s + size : size;
      const endStr = end === -1 ? "-1" : `${end}GiB`;
      await runChecked(env, "parted", [d, "-s", "-a", "optimal", "--", "mkpart", "primary", startStr, endStr], { error: softwareRaidError });
      await rescan(env, d);
      start.set(d, end);
    }
  }

  const names = await freeMdNames(env, order.length);
  const used = new Map<string, number>();
  const arrays: CreatedArray[] = [];
  for (const [k, i] of order.entries()) {
    const ld = lds[i];
    const members = per[i];
    const md = names[k];
    if (ld === undefined || members === undefined || md === undefined) continue;
    const components = members.map((d) => {
      const n = (used.get(d) ?? 0) + 1;
      used.set(d, n);
      return partitionPath(d, n);
    });
    for (const c of components) await env.guard.check(c, "software RAID");
    const level = ld.raid_level === "1+0" ? "10" : ld.raid_level;
    const name = ld.volume_name ?? basename(md);
    await runChecked(env, "mdadm", ["--create", md, "--force", "--run", "--metadata=1", "--level", level, "--name", name, `--raid-devices=${components.length}`, ...components], {
      error: softwareRaidError,
    });
    const actual = await detailMembers(env, md);
    for (const missing of components.filter((c) => !actual.includes(c))) {
      env.log.warn({ md, missing }, "component missing from the new array; re-adding");
      await runChecked(env, "mdadm", ["--add", md, missing], { error: softwareRaidError });
    }
    env.log.info({ md, level, name, components }, "software RAID device created");
    arrays.push({ device: md, level, name, members: components });
  }
  return { result: plan.raw, arrays };
}

/** True when `mdadm --examine` finds an md superblock on the device. */
async function hasSuperblock(env: BlockEnv, device: string): Promise<boolean> {
  const res = await env.run("mdadm", ["--examine", device], env.signal === undefined ? {} : { signal: env.signal });
  return res.code === 0 && /Magic\s*:\s*a92b4efc/i.test(res.stdout);
}

/** The whole disk of a partition (sysfs), or the device itself. */
async function diskOf(env: BlockEnv, device: string): Promise<string> {
  return (await env.guard.parentDisk(device)) ?? device;
}

export interface DeleteSummary {
  readonly stopped: string[];
  readonly zeroed: string[];
  readonly wiped: string[];
  readonly kept: string[];
}

/**
 * Stops every array whose members all lie on allowed disks, zeroes md superblocks on the allowed
 * disks and their partitions, and wipes the holder disks' partition tables.
 */
export async function deleteConfiguration(env: BlockEnv): Promise<DeleteSummary> {
  const disks = await allowedDisks(env);
  const summary: DeleteSummary = { stopped: [], zeroed: [], wiped: [], kept: [] };
  const holders = new Set<string>();
  const keepMembers = new Set<string>();
  const keepDisks = new Set<string>();

  const zero = async (device: string, disk: string): Promise<void> => {
    await env.guard.check(device, "software RAID");
    if (!(await hasSuperblock(env, device))) return;
    await runChecked(env, "mdadm", ["--zero-superblock", device], { error: softwareRaidError });
    summary.zeroed.push(device);
    holders.add(disk);
  };

  for (const array of await activeArrays(env)) {
    const memberDisks = await Promise.all(array.members.map((m) => diskOf(env, m)));
    if (array.members.length === 0 || memberDisks.some((d) => !disks.includes(d))) {
      env.log.warn({ md: array.device, members: array.members }, "array has members outside the allowed devices; left alone");
      summary.kept.push(array.device);
      for (const m of array.members) keepMembers.add(m);
      for (const d of memberDisks) keepDisks.add(d);
      continue;
    }
    for (const m of array.members) await env.guard.check(m, "software RAID");
    env.log.info({ md: array.device, members: array.members }, "deleting software RAID device");
    await runLogged(env, "wipefs", ["-af", array.device]);
    await runLogged(env, "mdadm", ["--stop", array.device]);
    summary.stopped.push(array.device);
    for (const [i, m] of array.members.entries()) await zero(m, memberDisks[i] ?? m);
  }

  // Members of arrays that were never assembled: partitions first, then the disk itself.
  for (const disk of disks) {
    if (keepDisks.has(disk)) continue;
    const parts = await listPartitions(env, disk);
    for (const part of [...parts].reverse()) if (!keepMembers.has(part.path)) await zero(part.path, disk);
    await zero(disk, disk);
  }

  for (const disk of [...holders].sort()) {
    if (keepDisks.has(disk)) continue;
    await env.guard.check(disk, "software RAID");
    await runChecked(env, "wipefs", ["-af", disk], { error: softwareRaidError });
    await rescan(env, disk);
    summary.wiped.push(disk);
  }

  const remaining: string[] = [];
  for (const array of await activeArrays(env)) {
    if (summary.kept.includes(array.device)) continue;
    const memberDisks = await Promise.all(array.members.map((m) => diskOf(env, m)));
    if (memberDisks.some((d) => disks.includes(d))) remaining.push(array.device);
  }
  if (remaining.length > 0) throw raidError(`Unable to clean all softraid correctly. Remaining [${remaining.join(", ")}]`);
  return summary;
}

/** The node's target_raid_config, or undefined when it has none. */
export function targetRaidConfig(node: JsonObject | null): JsonObject | undefined {
  const cfg = asObject(node?.["target_raid_config"]);
  return cfg === undefined || Object.keys(cfg).length === 0 ? undefined : cfg;
}
