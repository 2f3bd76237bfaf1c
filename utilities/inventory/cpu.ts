/** CPU facts from `lscpu` (JSON, else text) with /proc/cpuinfo as fallback. */
import os from "node:os";
import { z } from "zod";

import type { CollectContext } from "./context.js";
import { parseJson, runOk } from "./context.js";
import type { Cpu } from "./schema.js";

type KeyValues = Map<string, string>;

const LscpuJsonSchema = z.object({ lscpu: z.array(z.unknown()) });
const LscpuEntrySchema = z.object({
  field: z.string(),
  data: z.union([z.string(), z.null()]).optional(),
  children: z.array(z.unknown()).optional(),
});

function normKey(k: string): string {
  return k.trim().replace(/:$/, "").trim().toLowerCase();
}

/** `lscpu --json` (flat in old util-linux, nested "children" in new) -> lower-cased key map. */
export function parseLscpuJson(text: string | null): KeyValues | null {
  const parsed = LscpuJsonSchema.safeParse(parseJson(text));
  if (!parsed.success) return null;
  const map: KeyValues = new Map();
  const walk = (entries: readonly unknown[]): void => {
    for (const raw of entries) {
      const e = LscpuEntrySchema.safeParse(raw);
      if (!e.success) continue;
      const key = normKey(e.data.field);
      if (e.data.data !== undefined && e.data.data !== null && !map.has(key)) map.set(key, e.data.data.trim());
      if (e.data.children !== undefined) walk(e.data.children);
    }
  };
  walk(parsed.data.lscpu);
  return map.size > 0 ? map : null;
}

/** "Key: value" lines -> lower-cased key map (first occurrence wins). */
export function parseColonLines(text: string): KeyValues {
  const map: KeyValues = new Map();
  for (const line of text.split("\n")) {
    const idx = line.indexOf(":");
    if (idx <= 0) continue;
    const key = normKey(line.slice(0, idx));
    if (key === "" || map.has(key)) continue;
    map.set(key, line.slice(idx + 1).trim());
  }
  return map;
}

/** /proc/cpuinfo -> one key map per logical CPU (blank-line separated). */
export function parseCpuinfo(text: string | null): KeyValues[] {
  if (text === null) return [];
  return text
    .replace(/\t/g, "")
    .split(/\n\s*\n/)
    .map((section) => parseColonLines(section))
    .filter((m) => m.size > 0);
}

function toCount(v: string | undefined): number | null {
  if (v === undefined || !/^\d+$/.test(v.trim())) return null;
  return Number(v.trim());
}

function splitFlags(v: string | undefined): string[] | null {
  if (v === undefined) return null;
  // IPA's sanity check: real flag lists are lower-case words.
  if (/[A-Z!@#$%^&*()+{}|:"<>?]/.test(v)) return null;
  const flags = v.split(/\s+/).filter((f) => f !== "");
  return flags.length > 0 ? flags : null;
}

export async function collectCpu(ctx: CollectContext): Promise<Cpu> {
  let lscpu = parseLscpuJson(await runOk(ctx, "lscpu", ["--json"]));
  if (lscpu === null) {
    const text = await runOk(ctx, "lscpu", []);
    lscpu = text === null ? null : parseColonLines(text);
    if (lscpu !== null && lscpu.size === 0) lscpu = null;
  }
  const cores = parseCpuinfo(await ctx.fs.read("/proc/cpuinfo"));
  const first = cores[0];
  const l = lscpu ?? new Map<string, string>();

  const model = l.get("model name") ?? first?.get("model name") ?? "";

  // Max MHz first: modern CPUs scale their current clock. Like the sampled
  // IPA, null when lscpu has neither; /proc/cpuinfo only stands in when
  // lscpu itself is unavailable.
  const frequency =
    l.get("cpu max mhz") ?? l.get("cpu mhz") ?? (lscpu === null ? first?.get("cpu mhz") : undefined) ?? null;

  const processors = cores.filter((c) => c.has("processor")).length;
  const count = toCount(l.get("cpu(s)")) ?? (processors > 0 ? processors : os.cpus().length);

  let architecture = l.get("architecture") ?? "";
  if (architecture === "") architecture = os.machine();

  const flags = splitFlags(l.get("flags")) ?? splitFlags(first?.get("flags")) ?? [];

  const physicalIds = new Set(cores.map((c) => c.get("physical id")).filter((v) => v !== undefined));
  const socketCount = toCount(l.get("socket(s)")) ?? physicalIds.size;

  return {
    model_name: model,
    frequency: frequency === "" ? null : frequency,
    count,
    architecture,
    flags,
    socket_count: socketCount,
  };
}
