/**
 * Memory: `total` is the kernel's MemTotal in bytes (what psutil reports to
 * IPA); `physical_mb` is installed RAM in MiB.
 *
 * IPA sums the DIMMs lshw finds and reports null when lshw fails. We sum the
 * DIMMs dmidecode finds, and when DMI is unavailable (VMs without SMBIOS,
 * containers, missing dmidecode) estimate instead of reporting null, since
 * Ironic copies physical_mb into the node's memory_mb. See docs/inventory.md.
 */
import os from "node:os";

import type { CollectContext } from "./context.js";
import { runOk } from "./context.js";
import type { Memory } from "./schema.js";

const MIB = 1024 * 1024;

export type PhysicalMemorySource = "dmi" | "memmap" | "meminfo" | "none";

/** MemTotal from /proc/meminfo, in bytes. */
export function parseMemTotal(meminfo: string | null): number | null {
  const m = meminfo === null ? null : /^MemTotal:\s+(\d+)\s*kB/m.exec(meminfo);
  if (m === null || m[1] === undefined) return null;
  return Number(m[1]) * 1024;
}

const UNIT_TO_MIB: Readonly<Record<string, number>> = {
  bytes: 1 / MIB,
  kb: 1 / 1024,
  mb: 1,
  gb: 1024,
  tb: 1024 * 1024,
};

/**
 * Sum of the `Size:` of every "Memory Device" (DMI type 17) in
 * `dmidecode -t memory` output, in MiB; each bank truncated to whole MiB as
 * IPA does. Empty slots ("No Module Installed") count 0.
 */
export function parseDmidecodeMemory(text: string | null): number {
  if (text === null) return 0;
  let total = 0;
  for (const block of text.split(/\n\s*\n/)) {
    const lines = block.split("\n").map((l) => l.trim());
    if (!lines.includes("Memory Device")) continue;
    for (const line of lines) {
      const m = /^Size:\s*(\d+)\s*(bytes|[kKMGT]B)\b/.exec(line);
      if (m === null || m[1] === undefined || m[2] === undefined) continue;
      const factor = UNIT_TO_MIB[m[2].toLowerCase()];
      if (factor !== undefined) total += Math.floor(Number(m[1]) * factor);
      break;
    }
  }
  return total;
}

/** Bytes of "System RAM" in the firmware memory map (/sys/firmware/memmap). */
async function firmwareRamBytes(ctx: CollectContext): Promise<number | null> {
  let total = 0;
  for (const entry of await ctx.fs.list("/sys/firmware/memmap")) {
    const dir = `/sys/firmware/memmap/${entry}`;
    if ((await ctx.fs.readTrim(`${dir}/type`)) !== "System RAM") continue;
    const start = await ctx.fs.readTrim(`${dir}/start`);
    const end = await ctx.fs.readTrim(`${dir}/end`);
    if (start === null || end === null) continue;
    const s = Number.parseInt(start, 16);
    const e = Number.parseInt(end, 16);
    if (Number.isFinite(s) && Number.isFinite(e) && e >= s) total += e - s + 1;
  }
  return total > 0 ? total : null;
}

/**
 * Round a slightly-short RAM figure up to a plausible installed size: a
 * multiple of 1/16 of its power-of-two octave (64 MiB steps for 1-2 GiB,
 * 1 GiB steps for 16-32 GiB, 8 GiB steps for 128-256 GiB).
 */
export function roundInstalledMib(mib: number): number {
  if (!(mib > 0)) return 0;
  const octave = 2 ** Math.floor(Math.log2(mib));
  const step = Math.max(1, octave / 16);
  return Math.ceil(mib / step - 1e-9) * step;
}

export interface MemoryResult {
  memory: Memory;
  physicalSource: PhysicalMemorySource;
}

export async function collectMemory(ctx: CollectContext, estimatePhysical = true): Promise<MemoryResult> {
  const fromProc = parseMemTotal(await ctx.fs.read("/proc/meminfo"));
  const total = fromProc ?? os.totalmem();

  const dmi = parseDmidecodeMemory(await runOk(ctx, "dmidecode", ["-t", "memory"]));
  if (dmi > 0) return { memory: { total, physical_mb: dmi }, physicalSource: "dmi" };
  if (!estimatePhysical) return { memory: { total, physical_mb: null }, physicalSource: "none" };

  const memmap = await firmwareRamBytes(ctx);
  if (memmap !== null) {
    return { memory: { total, physical_mb: roundInstalledMib(memmap / MIB) }, physicalSource: "memmap" };
  }
  if (total > 0) {
    return { memory: { total, physical_mb: roundInstalledMib(total / MIB) }, physicalSource: "meminfo" };
  }
  return { memory: { total, physical_mb: null }, physicalSource: "none" };
}
