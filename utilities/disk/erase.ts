/**
 * Disk erasure, after IPA's generic hardware manager:
 *
 * - `erase_devices_metadata`: per disk, its partitions first, then the disk: `wipefs --force --all`,
 *   zero the first and last 33 sectors (5 on 4 KiB-sector disks) with dd, `sgdisk -Z`.
 * - `erase_devices`: per disk, in a pool of `disk_erasure_concurrency`: NVMe format (crypto erase when
 *   the controller supports it), else ATA security erase (hdparm), else `shred`.
 * - `erase_devices_express`: NVMe format where supported, else the metadata erase.
 *
 * Before anything is written: the skip list is applied, every remaining disk and partition passes the
 * DeviceGuard (one refused device fails the step, nothing touched), then each disk is probed (read
 * only) for the virtual-media label and RAID membership (skipped) and for shared-disk contents
 * (refused with ProtectedDeviceError unless `wipe_special_filesystems`).
 */
import type { Json, JsonObject } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { DeviceGuard } from "./guard.js";
import { type BlockDevice, isNvme, type ListDeps, listBlockDevices, sectorSize } from "./devices.js";
import { HintError, strictBool } from "./hints.js";
import { type DeviceFacts, probeDevice, protectedContent, raidMembership, virtualMediaLabel } from "./probe.js";
import { applySkipList, gib, hintView } from "./root.js";
import { blockDeviceEraseError, type DiskIo, protectedDeviceError, runTool, tryTool } from "./tools.js";

export type EraseStep = "erase_devices" | "erase_devices_metadata" | "erase_devices_express";

/** The node options erasing reads (from `driver_internal_info`, where Ironic puts them). */
export interface EraseOptions {
  /** agent_erase_devices_iterations (default 1): shred passes of random data. */
  readonly iterations: number;
  /** agent_erase_devices_zeroize (default true): a final pass of zeros. */
  readonly zeroize: boolean;
  /** agent_continue_if_secure_erase_failed (legacy agent_continue_if_ata_erase_failed; default false). */
  readonly continueIfSecureEraseFailed: boolean;
  /** agent_enable_ata_secure_erase (default true). */
  readonly enableAtaSecureErase: boolean;
  /** agent_enable_nvme_secure_erase (default true). */
  readonly enableNvmeSecureErase: boolean;
  /** disk_erasure_concurrency (default 1): disks erased at once by erase_devices. */
  readonly concurrency: number;
  /** agent_erase_skip_read_only (default false): skip read-only disks instead of failing. */
  readonly skipReadOnly: boolean;
  /** wipe_special_filesystems (default false): erase shared-disk contents instead of refusing. */
  readonly wipeSpecialFilesystems: boolean;
}

function objectField(obj: JsonObject | null, key: string): JsonObject | null {
  const v = obj?.[key];
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : null;
}

function optionError(key: string, want: string, got: Json | undefined): AgentError {
  return new AgentError("COMMAND_FAILED", `driver_internal_info.${key} must be ${want}, got ${JSON.stringify(got)}`);
}

function boolOption(info: JsonObject | null, key: string, fallback: boolean): boolean {
  const raw = info?.[key];
  if (raw === undefined || raw === null) return fallback;
  const value = strictBool(raw);
  if (value === undefined) throw optionError(key, "a boolean", raw);
  return value;
}

function intOption(info: JsonObject | null, key: string, fallback: number, min: number): number {
  const raw = info?.[key];
  if (raw === undefined || raw === null) return fallback;
  const value = typeof raw === "number" ? raw : typeof raw === "string" && /^\s*\d+\s*$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) throw optionError(key, `an integer ≥ ${min}`, raw);
  return value;
}

/** Reads the erase options of a node (IPA's keys and defaults). */
export function eraseOptionsOf(node: JsonObject | null): EraseOptions {
  const info = objectField(node, "driver_internal_info");
  const driverInfo = objectField(node, "driver_info");
  const legacyContinue = boolOption(info, "agent_continue_if_ata_erase_failed", false);
  return {
    iterations: intOption(info, "agent_erase_devices_iterations", 1, 0),
    zeroize: boolOption(info, "agent_erase_devices_zeroize", true),
    continueIfSecureEraseFailed: boolOption(info, "agent_continue_if_secure_erase_failed", legacyContinue),
    enableAtaSecureErase: boolOption(info, "agent_enable_ata_secure_erase", true),
    enableNvmeSecureErase: boolOption(info, "agent_enable_nvme_secure_erase", true),
    concurrency: intOption(info, "disk_erasure_concurrency", 1, 1),
    skipReadOnly: boolOption(info, "agent_erase_skip_read_only", false),
    // IPA's documentation has operators set it in driver_info; its code reads driver_internal_info.
    wipeSpecialFilesystems: boolOption(info, "wipe_special_filesystems", boolOption(driverInfo, "wipe_special_filesystems", false)),
  };
}

// ---------------------------------------------------------------------------------------------
// Metadata

/** Sectors zeroed at each end: the GPT's area (LBA 0-33 on 512 B sectors, 0-5 on 4 KiB ones). */
export function gptSectors(sector: number): number {
  return sector >= 4096 ? 5 : 33;
}

/**
 * Destroys the metadata of one device: its signatures (wipefs), both GPT areas (dd), then `sgdisk -Z`
 * when `zap` (whole disks: it also has the kernel re-read the table). On a partition sgdisk -Z would
 * only clear what dd already zeroed, and each call costs a second (sgdisk waits for the kernel).
 */
export async function destroyMetadata(io: DiskIo, device: string, sector: number, sizeBytes: number, zap = true): Promise<void> {
  const wiped = await tryTool(io, "wipefs", ["--force", "--all", device]);
  if (wiped === null) throw new AgentError("TOOL_FAILED", "wipefs: command not found");
  if (wiped.code !== 0) {
    // A wipefs too old for --force: without it, as IPA does; any other failure is the step's.
    if (/(unrecognized|invalid|unknown) option/i.test(wiped.stderr)) await runTool(io, "wipefs", ["--all", device]);
    else throw new AgentError("TOOL_FAILED", `wipefs --force --all ${device} exited with ${wiped.code}: ${wiped.stderr.trim()}`);
  }
  const n = gptSectors(sector);
  const total = Math.floor(sizeBytes / sector);
  const dd = (extra: readonly string[], count: number): Promise<unknown> =>
    runTool(io, "dd", [`bs=${sector}`, "if=/dev/zero", `of=${device}`, `count=${count}`, "oflag=direct", ...extra]);
  await dd([], Math.min(n, total));
  if (total > n) await dd([`seek=${total - n}`], n);
  if (zap) await runTool(io, "sgdisk", ["-Z", device]);
}

/** Metadata erase of a disk: its partitions (last first), then the disk itself. */
export async function destroyDiskMetadata(io: DiskIo, dev: BlockDevice): Promise<void> {
  const sector = sectorSize(dev);
  for (const part of [...dev.partitions].reverse()) await destroyMetadata(io, part.name, sector, part.size, false);
  await destroyMetadata(io, dev.name, sector, dev.size);
}

// ---------------------------------------------------------------------------------------------
// NVMe

/** id-ctrl `oacs` bit: the controller supports Format NVM. */
export const NVME_FORMAT_SUPPORTED = 0x2;
/** id-ctrl `fna` bit: cryptographic erase is supported as part of Format NVM. */
export const NVME_CRYPTO_FORMAT_SUPPORTED = 0x4;

function intField(obj: unknown, key: string): number | undefined {
  if (typeof obj !== "object" || obj === null) return undefined;
  const v = (obj as Record<string, unknown>)[key];
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "string" && /^(0x[0-9a-f]+|\d+)$/i.test(v.trim())) return Number(v.trim());
  return undefined;
}

/** The Secure Erase Setting `nvme format` gets: 2 (crypto erase), 1 (user data erase), or why neither. */
export function nvmeFormatMode(idCtrl: unknown): { mode: 1 | 2 } | { unsupported: string } {
  const oacs = intField(idCtrl, "oacs");
  if (oacs === undefined) return { unsupported: "nvme id-ctrl gave no oacs field" };
  if ((oacs & NVME_FORMAT_SUPPORTED) === 0) return { unsupported: `the controller does not support Format NVM (oacs=0x${oacs.toString(16)})` };
  const fna = intField(idCtrl, "fna") ?? 0;
  return { mode: (fna & NVME_CRYPTO_FORMAT_SUPPORTED) !== 0 ? 2 : 1 };
}

export interface EraseOutcome {
  readonly action: "erased";
  readonly method: "nvme_format" | "ata_secure_erase" | "shred" | "metadata";
  readonly [detail: string]: Json;
}

/** NVMe format with the strongest supported Secure Erase Setting; BlockDeviceEraseError when it cannot. */
export async function nvmeErase(io: DiskIo, device: string): Promise<EraseOutcome> {
  const res = await tryTool(io, "nvme", ["id-ctrl", device, "-o", "json"]);
  if (res === null) throw blockDeviceEraseError(`Failed to fetch NVMe capabilities for device ${device}: nvme-cli is not installed`);
  if (res.code !== 0) throw blockDeviceEraseError(`Failed to fetch NVMe capabilities for device ${device}: nvme id-ctrl exited with ${res.code}: ${res.stderr.trim()}`);
  let idCtrl: unknown;
  try {
    idCtrl = JSON.parse(res.stdout);
  } catch {
    throw blockDeviceEraseError(`nvme id-ctrl gave no JSON for device ${device}`);
  }
  const decision = nvmeFormatMode(idCtrl);
  if ("unsupported" in decision) throw blockDeviceEraseError(`NVMe secure erase is not possible on ${device}: ${decision.unsupported}`);
  io.log.info({ device, ses: decision.mode }, decision.mode === 2 ? "NVMe format with cryptographic erase" : "NVMe format with user data erase");
  const fmt = await tryTool(io, "nvme", ["format", device, "-s", String(decision.mode), "-f"]);
  if (fmt === null || fmt.code !== 0) {
    throw blockDeviceEraseError(`nvme format ${device} -s ${decision.mode} failed: ${fmt === null ? "nvme-cli is not installed" : fmt.stderr.trim() || `exit ${fmt.code}`}`);
  }
  return { action: "erased", method: "nvme_format", ses: decision.mode };
}

// ---------------------------------------------------------------------------------------------
// ATA

/** The lines of `hdparm -I`'s Security section, whitespace collapsed ("not frozen", "supported: enhanced erase"). */
export function parseAtaSecurity(hdparmOutput: string): string[] {
  const lines = hdparmOutput.split("\n");
  const start = lines.findIndex((l) => /^Security:\s*$/.test(l));
  if (start < 0) return [];
  const out: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith("\t")) break;
    out.push(line.trim().replace(/\s+/g, " "));
  }
  return out;
}

async function ataSecurityLines(io: DiskIo, device: string): Promise<{ lines: string[] } | { failed: string }> {
  const res = await tryTool(io, "hdparm", ["-I", device]);
  if (res === null) return { failed: "hdparm is not installed" };
  if (res.code !== 0) return { failed: `hdparm -I exited with ${res.code}: ${res.stderr.trim()}` };
  return { lines: parseAtaSecurity(res.stdout) };
}

/** Whether `smartctl -d ata -g security` can talk ATA to the device (true when smartctl is absent, as IPA). */
async function smartctlSecurityOk(io: DiskIo, device: string): Promise<{ ok: boolean; why: string }> {
  const res = await tryTool(io, "smartctl", ["-d", "ata", device, "-g", "security"]);
  if (res === null) return { ok: true, why: "smartctl is not installed" };
  if (res.code !== 0) return { ok: false, why: `smartctl -d ata cannot query ${device} (exit ${res.code})` };
  if (/Unavailable/.test(res.stdout)) return { ok: false, why: "smartctl reports ATA security Unavailable" };
  return { ok: true, why: "smartctl reports ATA security" };
}

export type AtaResult = { readonly erased: EraseOutcome } | { readonly unsupported: string };

/**
 * ATA security erase, following the drive's security state machine:
 * not supported → unsupported (the caller falls back); frozen → error; locked → unlock with "NULL",
 * then "" (hdparm before 9.51 sent "NULL" literally); still locked → error; not enabled → set the user
 * password "NULL"; erase (enhanced when supported); afterwards security must be "not enabled" again.
 */
export async function ataErase(io: DiskIo, device: string): Promise<AtaResult> {
  const first = await ataSecurityLines(io, device);
  if ("failed" in first) return { unsupported: first.failed };
  const smart = await smartctlSecurityOk(io, device);
  if (!smart.ok) return { unsupported: smart.why };
  let lines = first.lines;
  if (!lines.includes("supported")) return { unsupported: lines.length === 0 ? "hdparm -I shows no Security section" : "ATA security is not supported" };
  if (!lines.includes("not frozen")) throw blockDeviceEraseError(`Block device ${device} is frozen and cannot be erased`);

  const reread = async (): Promise<string[]> => {
    const again = await ataSecurityLines(io, device);
    return "failed" in again ? [] : again.lines;
  };
  const unlock = async (current: string[]): Promise<string[]> => {
    let state = current;
    for (const password of ["NULL", ""]) {
      if (state.includes("not locked")) break;
      const res = await tryTool(io, "hdparm", ["--user-master", "u", "--security-unlock", password, device]);
      if (res === null || res.code !== 0) io.log.info({ device, password, stderr: res?.stderr.trim() }, "ATA security unlock failed");
      state = await reread();
    }
    return state;
  };

  lines = await unlock(lines);
  if (!lines.includes("not locked")) throw blockDeviceEraseError(`Block device ${device} already has a security password set`);
  if (lines.includes("not enabled")) {
    const set = await tryTool(io, "hdparm", ["--user-master", "u", "--security-set-pass", "NULL", device]);
    if (set === null || set.code !== 0) throw blockDeviceEraseError(`Security password set failed for device ${device}: ${set?.stderr.trim() ?? "hdparm is not installed"}`);
  }
  const enhanced = !lines.includes("not supported: enhanced erase");
  const option = enhanced ? "--security-erase-enhanced" : "--security-erase";
  io.log.info({ device, option }, "ATA security erase");
  const erase = await tryTool(io, "hdparm", ["--user-master", "u", option, "NULL", device]);
  if (erase === null || erase.code !== 0) {
    // Unlock so that a fallback (shred) can still write to the disk.
    await unlock(await reread());
    throw blockDeviceEraseError(`Erase failed for device ${device}: ${erase?.stderr.trim() ?? "hdparm is not installed"}`);
  }
  if (!(await reread()).includes("not enabled")) throw blockDeviceEraseError(`ATA security is still enabled on ${device} after the erase`);
  return { erased: { action: "erased", method: "ata_secure_erase", enhanced } };
}

// ---------------------------------------------------------------------------------------------
// shred and the per-disk decision

export async function shredDevice(io: DiskIo, device: string, opts: Pick<EraseOptions, "iterations" | "zeroize">): Promise<void> {
  const args = ["--force", ...(opts.zeroize ? ["--zero"] : []), "--verbose", "--iterations", String(opts.iterations), device];
  const res = await tryTool(io, "shred", args);
  if (res === null || res.code !== 0) {
    throw blockDeviceEraseError(`Unable to erase block device ${device} with shred: ${res === null ? "shred is not installed" : res.stderr.trim().split("\n").pop() ?? `exit ${res.code}`}`);
  }
}

/**
 * Erases one disk: NVMe format or ATA security erase when enabled and supported, else shred. A
 * secure erase that is supported but fails is an error unless `agent_continue_if_secure_erase_failed`.
 */
export async function eraseBlockDevice(io: DiskIo, device: string, opts: EraseOptions): Promise<EraseOutcome> {
  let fallback: string;
  try {
    if (isNvme(device)) {
      if (opts.enableNvmeSecureErase) return await nvmeErase(io, device);
      fallback = "NVMe secure erase disabled (agent_enable_nvme_secure_erase)";
    } else if (opts.enableAtaSecureErase) {
      const ata = await ataErase(io, device);
      if ("erased" in ata) return ata.erased;
      fallback = `no ATA secure erase: ${ata.unsupported}`;
    } else {
      fallback = "ATA secure erase disabled (agent_enable_ata_secure_erase)";
    }
  } catch (err) {
    if (io.signal.aborted || !AgentError.is(err) || err.ipaType !== "BlockDeviceEraseError") throw err;
    if (!opts.continueIfSecureEraseFailed) {
      throw blockDeviceEraseError(`Failed to invoke secure erase on ${device}, and agent_continue_if_secure_erase_failed is not set: ${err.details}`, err);
    }
    fallback = `secure erase failed (${err.details}); agent_continue_if_secure_erase_failed is set`;
  }
  io.log.info({ device, reason: fallback, iterations: opts.iterations, zeroize: opts.zeroize }, "erasing with shred");
  await shredDevice(io, device, opts);
  return { action: "erased", method: "shred", iterations: opts.iterations, zeroize: opts.zeroize, fallback_reason: fallback };
}

// ---------------------------------------------------------------------------------------------
// Planning: which disks, checked how

export interface PlanDeps extends ListDeps {
  readonly guard: DeviceGuard;
}

export interface ErasePlan {
  readonly targets: readonly { readonly dev: BlockDevice; readonly facts: DeviceFacts }[];
  /** Disks left alone, with why. */
  readonly skipped: Readonly<Record<string, string>>;
}

/**
 * Lists the disks and decides, before anything is written, which are erased. Throws DEVICE_NOT_ALLOWED
 * (a disk or partition the guard refuses), BlockDeviceEraseError (a read-only disk erase_devices may
 * not skip) or ProtectedDeviceError.
 */
export async function planErase(deps: PlanDeps, io: DiskIo, node: JsonObject | null, step: EraseStep, opts: EraseOptions): Promise<ErasePlan> {
  const devices = await listBlockDevices(deps, { signal: io.signal });
  const skipped: Record<string, string> = {};
  let kept: Set<string>;
  try {
    const skip = applySkipList(devices.map(hintView), node);
    for (const s of skip.skipped) skipped[s.name] = `in skip_block_devices (${JSON.stringify(s.hint)})`;
    kept = new Set(skip.kept.map((d) => d.name));
  } catch (err) {
    if (err instanceof HintError) throw blockDeviceEraseError(`properties.skip_block_devices does not validate: ${err.message}`, err);
    throw err;
  }
  const candidates: BlockDevice[] = [];
  const readOnly: string[] = [];
  for (const dev of devices) {
    if (!kept.has(dev.name)) continue;
    if (dev.read_only) {
      // IPA: erase_devices fails on a read-only disk unless told to skip it; the metadata and
      // express erases always skip them.
      if (step === "erase_devices" && !opts.skipReadOnly) readOnly.push(dev.name);
      else skipped[dev.name] = "read-only";
      continue;
    }
    candidates.push(dev);
  }
  // The guard sees every disk and partition before anything is read or written.
  for (const dev of candidates) {
    await deps.guard.check(dev.name, step);
    for (const part of dev.partitions) await deps.guard.check(part.name, step);
  }
  if (readOnly.length > 0) {
    throw blockDeviceEraseError(
      `${readOnly.join(", ")} ${readOnly.length === 1 ? "is" : "are"} read-only; set driver_internal_info.agent_erase_skip_read_only to skip read-only disks`,
    );
  }
  const targets: { dev: BlockDevice; facts: DeviceFacts }[] = [];
  for (const dev of candidates) {
    const facts = await probeDevice(io, dev);
    const vmedia = virtualMediaLabel(facts);
    if (vmedia !== null) {
      skipped[dev.name] = vmedia;
      continue;
    }
    const raid = raidMembership(dev, facts);
    if (raid !== null) {
      skipped[dev.name] = `software RAID member: ${raid}`;
      continue;
    }
    targets.push({ dev, facts });
  }
  if (!opts.wipeSpecialFilesystems) {
    for (const { dev, facts } of targets) {
      const found = protectedContent(facts);
      if (found !== null) throw protectedDeviceError(found.where === dev.name ? dev.name : `${found.where} (on ${dev.name})`, found.what);
    }
  }
  for (const [name, why] of Object.entries(skipped)) io.log.info({ device: name, reason: why }, `${step}: skipping ${name}`);
  return { targets, skipped };
}

// ---------------------------------------------------------------------------------------------
// The three steps

export interface StepIo extends DiskIo {
  progress(update: { percent: number; stage: string; message: string; bytes_done: number; bytes_total: number }): void;
}

/** Runs `fn` over the items with at most `limit` at once; stops taking new items once aborted. */
export async function inPool<T, R>(items: readonly T[], limit: number, signal: AbortSignal, fn: (item: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length && !signal.aborted) {
      const i = next++;
      try {
        results[i] = { status: "fulfilled", value: await fn(items[i] as T) };
      } catch (reason) {
        results[i] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  signal.throwIfAborted();
  return results;
}

function reportOf(plan: ErasePlan): Record<string, Json> {
  const report: Record<string, Json> = {};
  for (const [name, reason] of Object.entries(plan.skipped)) report[name] = { action: "skipped", reason };
  return report;
}

async function runPlan(
  io: StepIo,
  step: EraseStep,
  plan: ErasePlan,
  concurrency: number,
  eraseOne: (dev: BlockDevice) => Promise<EraseOutcome>,
): Promise<Record<string, Json>> {
  const total = plan.targets.reduce((n, t) => n + t.dev.size, 0);
  const count = plan.targets.length;
  let done = 0;
  let bytes = 0;
  io.progress({ percent: 0, stage: step, message: count === 0 ? "no disk to erase" : `erasing ${plan.targets.map((t) => t.dev.name).join(", ")}`, bytes_done: 0, bytes_total: total });
  const results = await inPool(plan.targets, concurrency, io.signal, async ({ dev }) => {
    const started = Date.now();
    io.log.info({ device: dev.name, size: dev.size }, `${step}: erasing ${dev.name} (${gib(dev.size)})`);
    try {
      const outcome = await eraseOne(dev);
      io.log.info({ device: dev.name, ...outcome, ms: Date.now() - started }, `${step}: ${dev.name} erased (${outcome.method})`);
      return outcome;
    } finally {
      done += 1;
      bytes += dev.size;
      io.progress({
        percent: Math.round((done / count) * 100),
        stage: step,
        message: `${dev.name}: done (${done}/${count})`,
        bytes_done: bytes,
        bytes_total: total,
      });
    }
  });
  const report = reportOf(plan);
  const failures: string[] = [];
  results.forEach((r, i) => {
    const name = plan.targets[i]?.dev.name ?? "?";
    if (r.status === "fulfilled") report[name] = r.value;
    else failures.push(`"${name}": ${r.reason instanceof AgentError ? r.reason.message : String(r.reason)}`);
  });
  if (failures.length > 0) {
    const first = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    throw blockDeviceEraseError(`${step} failed on ${failures.length} of ${count} device(s): ${failures.join("; ")}`, first?.reason);
  }
  return report;
}

export async function eraseDevicesMetadata(deps: PlanDeps, io: StepIo, node: JsonObject | null): Promise<Record<string, Json>> {
  const opts = eraseOptionsOf(node);
  const plan = await planErase(deps, io, node, "erase_devices_metadata", opts);
  return runPlan(io, "erase_devices_metadata", plan, 1, async (dev) => {
    await destroyDiskMetadata(io, dev);
    return { action: "erased", method: "metadata", partitions: dev.partitions.map((p) => p.name) };
  });
}

export async function eraseDevices(deps: PlanDeps, io: StepIo, node: JsonObject | null): Promise<Record<string, Json>> {
  const opts = eraseOptionsOf(node);
  const plan = await planErase(deps, io, node, "erase_devices", opts);
  return runPlan(io, "erase_devices", plan, opts.concurrency, (dev) => eraseBlockDevice(io, dev.name, opts));
}

/** erase_devices_express for one disk: NVMe format when enabled and it works, else the metadata erase. */
export async function expressEraseDisk(io: DiskIo, dev: BlockDevice, opts: EraseOptions): Promise<EraseOutcome> {
  let why = "not an NVMe device";
  if (isNvme(dev.name)) {
    if (!opts.enableNvmeSecureErase) why = "NVMe secure erase disabled (agent_enable_nvme_secure_erase)";
    else {
      try {
        return await nvmeErase(io, dev.name);
      } catch (err) {
        if (io.signal.aborted || !AgentError.is(err) || err.ipaType !== "BlockDeviceEraseError") throw err;
        why = `NVMe format failed: ${err.details}`;
        io.log.warn({ device: dev.name, err }, "NVMe format failed; erasing the metadata instead");
      }
    }
  }
  await destroyDiskMetadata(io, dev);
  return { action: "erased", method: "metadata", partitions: dev.partitions.map((p) => p.name), fallback_reason: why };
}

export async function eraseDevicesExpress(deps: PlanDeps, io: StepIo, node: JsonObject | null): Promise<Record<string, Json>> {
  const opts = eraseOptionsOf(node);
  const plan = await planErase(deps, io, node, "erase_devices_express", opts);
  return runPlan(io, "erase_devices_express", plan, 1, (dev) => expressEraseDisk(io, dev, opts));
}
