/**
 * Choosing the disk the OS is installed on (`get_os_install_device`).
 *
 * Hints come from the node's `instance_info.root_device`, else `properties.root_device`; disks matching
 * an entry of `properties.skip_block_devices` are never candidates. With hints, the first listed disk
 * matching all of them wins (IPA's rule). Without hints IPA takes the smallest disk of at least 4 GiB;
 * ours (docs/disks.md, "Default choice") first rejects disks nobody wants an OS on: read-only disks,
 * the BMC's virtual media, software-RAID members; then prefers fixed disks to removable or USB ones,
 * and only then takes the smallest of at least 4 GiB (ties by name, numbers compared as numbers).
 *
 * Every choice comes with its explanation: the rule that decided, and each other disk with why it was
 * not taken. It is logged, and returned by `explainRootDevice` (method `explain_os_install_device`).
 */
import type { Json, JsonObject } from "../../core/envelope.js";
import type { Logger } from "../../core/log.js";
import type { BlockDevice } from "./devices.js";
import { HintError, type HintDevice, matchHint, parseHints, type ParsedHint } from "./hints.js";
import { type DeviceFacts, probeDevice, raidMembership, virtualMediaLabel, virtualMediaModel } from "./probe.js";
import { type DiskIo, deviceNotFound } from "./tools.js";

export const MIN_ROOT_SIZE = 4 * 2 ** 30;

/** What the choice looks at: the hint fields plus the facts the default policy weighs. */
export interface RootFacts extends HintDevice {
  readonly read_only: boolean;
  readonly removable: boolean;
  readonly model: string | null;
  readonly tran: string | null;
  /** Why the disk is virtual media (label found by probing), or null. */
  readonly virtualMedia: string | null;
  /** Why the disk is a software-RAID member, or null. */
  readonly raidMember: string | null;
}

export interface RootCandidate {
  readonly name: string;
  readonly size: number;
  readonly verdict: "chosen" | "eligible" | "rejected" | "skipped";
  readonly reasons: readonly string[];
}

export interface RootChoice {
  readonly device: string;
  readonly source: "hints" | "default";
  readonly hints: JsonObject | null;
  /** One sentence: the rule that decided. */
  readonly reason: string;
  /** Every disk considered, the chosen one first, each with why (not). */
  readonly candidates: readonly RootCandidate[];
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function field(obj: JsonObject | null | undefined, key: string): JsonObject | null {
  const v = obj?.[key];
  return isObject(v) ? v : null;
}

/** `instance_info.root_device`, else `properties.root_device`; null when neither has any hint. */
export function rootHintsOf(node: JsonObject | null): JsonObject | null {
  for (const source of [field(node, "instance_info"), field(node, "properties")]) {
    const hints = field(source, "root_device");
    if (hints !== null && Object.keys(hints).length > 0) return hints;
  }
  return null;
}

/** `properties.skip_block_devices` entries that name disks (entries with volume_name are RAID volumes). */
export function skipListOf(node: JsonObject | null): JsonObject[] {
  const list = field(node, "properties")?.["skip_block_devices"];
  if (!Array.isArray(list)) return [];
  return list.filter((e): e is JsonObject => isObject(e) && !("volume_name" in e));
}

export interface SkipResult<D> {
  readonly kept: D[];
  readonly skipped: { readonly name: string; readonly size: number; readonly hint: JsonObject }[];
}

/** Removes the disks matching any skip-list entry. Throws HintError for an entry that does not validate. */
export function applySkipList<D extends HintDevice>(devices: readonly D[], node: JsonObject | null): SkipResult<D> {
  const entries = skipListOf(node).map((hint) => ({ hint, parsed: parseHints(hint) }));
  const kept: D[] = [];
  const skipped: { name: string; size: number; hint: JsonObject }[] = [];
  for (const dev of devices) {
    const hit = entries.find((e) => e.parsed.every((h) => matchHint(h, dev)));
    if (hit === undefined) kept.push(dev);
    else skipped.push({ name: dev.name, size: dev.size, hint: hit.hint });
  }
  return { kept, skipped };
}

/** Sizes in explanations: GiB (one decimal), MiB below 1 GiB. */
export function gib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

const byName = (a: string, b: string): number => a.localeCompare(b, "en", { numeric: true });

function hintText(parsed: ParsedHint, raw: JsonObject): string {
  return `${parsed.key}=${JSON.stringify(raw[parsed.key])}`;
}

function shownValue(dev: HintDevice, key: string): string {
  const v = (dev as unknown as Readonly<Record<string, unknown>>)[key];
  if (key === "size" && typeof v === "number") return gib(v);
  return JSON.stringify(v ?? null);
}

/** What makes a disk a poor place for an OS, even when a hint picked it (reported, not enforced). */
function cautions(dev: RootFacts): string[] {
  const out: string[] = [];
  if (dev.read_only) out.push("read-only");
  if (dev.virtualMedia !== null) out.push(dev.virtualMedia);
  else if (virtualMediaModel(dev.model)) out.push(`virtual media (model ${JSON.stringify(dev.model)})`);
  if (dev.raidMember !== null) out.push(dev.raidMember);
  return out;
}

function chooseByHints(devices: readonly RootFacts[], hints: JsonObject, skipped: SkipResult<RootFacts>["skipped"]): RootChoice {
  let parsed: ParsedHint[];
  try {
    parsed = parseHints(hints);
  } catch (err) {
    if (err instanceof HintError) {
      throw deviceNotFound(`No devices could be found using the root device hints ${JSON.stringify(hints)} because they failed to validate. Error: ${err.message}`);
    }
    throw err;
  }
  const candidates: RootCandidate[] = [];
  let chosen: RootFacts | undefined;
  for (const dev of devices) {
    const failed = parsed.filter((h) => !matchHint(h, dev));
    if (failed.length > 0) {
      candidates.push({
        name: dev.name,
        size: dev.size,
        verdict: "rejected",
        reasons: failed.map((h) => `does not match hint ${hintText(h, hints)} (device ${h.key}: ${shownValue(dev, h.key)})`),
      });
    } else if (chosen === undefined) {
      chosen = dev;
    } else {
      candidates.push({ name: dev.name, size: dev.size, verdict: "eligible", reasons: [`also matches; the first matching disk (${chosen.name}) wins`] });
    }
  }
  const skippedRows = skipped.map((s) => ({ name: s.name, size: s.size, verdict: "skipped" as const, reasons: [`in skip_block_devices (${JSON.stringify(s.hint)})`] }));
  if (chosen === undefined) {
    const why = [...candidates, ...skippedRows].map((c) => `${c.name}: ${c.reasons.join("; ")}`).join(" | ");
    throw deviceNotFound(`No suitable device was found for deployment using these hints ${JSON.stringify(hints)}${why === "" ? " (no disks found)" : ` [${why}]`}`);
  }
  const warn = cautions(chosen);
  const reason =
    `first disk matching root device hints ${JSON.stringify(hints)}: ${chosen.name} (${gib(chosen.size)})` +
    (warn.length > 0 ? `; note: it is ${warn.join(", ")}` : "");
  return {
    device: chosen.name,
    source: "hints",
    hints,
    reason,
    candidates: [{ name: chosen.name, size: chosen.size, verdict: "chosen", reasons: [reason] }, ...candidates, ...skippedRows],
  };
}

function chooseByDefault(devices: readonly RootFacts[], skipped: SkipResult<RootFacts>["skipped"]): RootChoice {
  const rejected: RootCandidate[] = [];
  const eligible: { dev: RootFacts; tier: number; demoted: string[] }[] = [];
  for (const dev of devices) {
    const reasons: string[] = [];
    if (dev.size < MIN_ROOT_SIZE) reasons.push(`smaller than 4 GiB (${gib(dev.size)})`);
    reasons.push(...cautions(dev));
    if (reasons.length > 0) {
      rejected.push({ name: dev.name, size: dev.size, verdict: "rejected", reasons });
      continue;
    }
    const demoted: string[] = [];
    if (dev.removable) demoted.push("removable");
    if (dev.tran === "usb") demoted.push("on USB");
    eligible.push({ dev, tier: demoted.length > 0 ? 1 : 0, demoted });
  }
  eligible.sort((a, b) => a.tier - b.tier || a.dev.size - b.dev.size || byName(a.dev.name, b.dev.name));
  const skippedRows = skipped.map((s) => ({ name: s.name, size: s.size, verdict: "skipped" as const, reasons: [`in skip_block_devices (${JSON.stringify(s.hint)})`] }));
  const first = eligible[0];
  if (first === undefined) {
    const why = [...rejected, ...skippedRows].map((c) => `${c.name}: ${c.reasons.join("; ")}`).join(" | ");
    throw deviceNotFound(
      `No suitable device was found for deployment - root device hints were not provided and no disk qualifies${why === "" ? " (no disks found)" : ` [${why}]`}`,
    );
  }
  const chosen = first.dev;
  const reason =
    first.tier === 0
      ? `no root device hints: smallest fixed (not removable, not USB), writable disk of at least 4 GiB that is neither virtual media nor a RAID member: ${chosen.name} (${gib(chosen.size)})`
      : `no root device hints and no fixed disk qualifies: smallest ${first.demoted.join(", ")} writable disk of at least 4 GiB: ${chosen.name} (${gib(chosen.size)})`;
  const others: RootCandidate[] = eligible.slice(1).map(({ dev, tier, demoted }) => ({
    name: dev.name,
    size: dev.size,
    verdict: "eligible",
    reasons: [
      tier > first.tier
        ? `${demoted.join(", ")}: used only when no fixed disk qualifies`
        : dev.size > chosen.size
          ? `larger than ${chosen.name} (${gib(dev.size)})`
          : `same size as ${chosen.name}, which sorts first by name`,
    ],
  }));
  return {
    device: chosen.name,
    source: "default",
    hints: null,
    reason,
    candidates: [{ name: chosen.name, size: chosen.size, verdict: "chosen", reasons: [reason] }, ...others, ...rejected, ...skippedRows],
  };
}

/**
 * The root device for a node, from facts about each disk (pure: tests give it device lists).
 * Throws DeviceNotFound (with every disk and why it was not taken) when none qualifies or the hints
 * or skip list do not validate.
 */
export function chooseRootDevice(devices: readonly RootFacts[], node: JsonObject | null): RootChoice {
  let skip: SkipResult<RootFacts>;
  try {
    skip = applySkipList(devices, node);
  } catch (err) {
    if (err instanceof HintError) throw deviceNotFound(`properties.skip_block_devices does not validate: ${err.message}`);
    throw err;
  }
  const hints = rootHintsOf(node);
  return hints === null ? chooseByDefault(skip.kept, skip.skipped) : chooseByHints(skip.kept, hints, skip.skipped);
}

/** The hint view of a listed disk: list-valued serial and wwn (every value the disk is known by). */
export function hintView(dev: BlockDevice): HintDevice {
  return {
    name: dev.name,
    size: dev.size,
    rotational: dev.rotational,
    model: dev.model,
    vendor: dev.vendor,
    serial: dev.serials.length > 0 ? dev.serials : null,
    wwn: dev.wwns.length > 0 ? dev.wwns : null,
    wwn_with_extension: dev.wwn_with_extension,
    wwn_vendor_extension: dev.wwn_vendor_extension,
    hctl: dev.hctl,
    by_path: dev.by_path,
    tran: dev.tran,
  };
}

/** Facts for the choice: the listed disk, probed for virtual-media labels and RAID signatures. */
export async function rootFacts(io: DiskIo, dev: BlockDevice): Promise<RootFacts> {
  let facts: DeviceFacts | null = null;
  try {
    facts = await probeDevice(io, dev);
  } catch (err) {
    if (io.signal.aborted) throw err;
    io.log.warn({ device: dev.name, err }, "could not probe disk signatures; choosing without them");
  }
  return {
    ...hintView(dev),
    read_only: dev.read_only,
    removable: dev.removable,
    model: dev.model,
    tran: dev.tran,
    virtualMedia: virtualMediaLabel(facts),
    raidMember: raidMembership(dev, facts),
  };
}

/** Logs a choice: the device, the rule, and every disk not taken with why. */
export function logChoice(log: Logger, choice: RootChoice): void {
  log.info(
    {
      device: choice.device,
      source: choice.source,
      hints: choice.hints,
      reason: choice.reason,
      notChosen: choice.candidates.filter((c) => c.verdict !== "chosen").map((c) => `${c.name}: ${c.reasons.join("; ")}`),
    },
    `root device ${choice.device}: ${choice.reason}`,
  );
}

/** Lists, skips, probes and chooses; logs the choice (or why there is none). */
export async function explainRootDevice(io: DiskIo, devices: readonly BlockDevice[], node: JsonObject | null): Promise<RootChoice> {
  // Skipped disks are not even probed.
  let keptNames: Set<string>;
  try {
    keptNames = new Set(applySkipList(devices.map(hintView), node).kept.map((d) => d.name));
  } catch (err) {
    if (err instanceof HintError) throw deviceNotFound(`properties.skip_block_devices does not validate: ${err.message}`);
    throw err;
  }
  const facts: RootFacts[] = [];
  for (const dev of devices) {
    const unprobed: RootFacts = { ...hintView(dev), read_only: dev.read_only, removable: dev.removable, model: dev.model, tran: dev.tran, virtualMedia: null, raidMember: null };
    facts.push(keptNames.has(dev.name) ? await rootFacts(io, dev) : unprobed);
  }
  try {
    const choice = chooseRootDevice(facts, node);
    logChoice(io.log, choice);
    return choice;
  } catch (err) {
    io.log.warn({ err, hints: rootHintsOf(node) }, "no root device");
    throw err;
  }
}
