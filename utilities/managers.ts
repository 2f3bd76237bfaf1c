/**
 * The hardware-manager plugin model, after IPA's: managers declare how well they support this
 * machine, the best one that implements a method handles it (or every one, for dispatchAll), and
 * clean / deploy / service steps are collected from all of them.
 */
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { z } from "zod";
import type { CommandContext } from "../core/command.js";
import type { Json, JsonObject } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";

export const SupportLevel = { NONE: 0, GENERIC: 1, MAINLINE: 2, SERVICE_PROVIDER: 3 } as const;

export type StepKind = "clean" | "deploy" | "service";

export interface StepArgInfo {
  readonly description: string;
  readonly required: boolean;
}

/** IPA's step dict. */
export interface Step {
  readonly step: string;
  readonly priority: number;
  readonly interface: string;
  readonly reboot_requested: boolean;
  readonly abortable?: boolean;
  readonly argsinfo?: Readonly<Record<string, StepArgInfo>>;
}

export interface MethodCall {
  readonly node: JsonObject | null;
  readonly ports: readonly Json[];
  /** The step's args (or the method's keyword arguments). */
  readonly args: JsonObject;
  readonly ctx: CommandContext;
}

export interface ManagerMethod {
  /** Erases, writes, partitions, builds RAID or powers off. */
  readonly destructive?: boolean;
  run(call: MethodCall): Promise<unknown> | unknown;
}

export interface HardwareManager {
  /** HARDWARE_MANAGER_NAME, the key of hardware_manager_version (`generic_hardware_manager`). */
  readonly name: string;
  readonly version: string;
  /** The key steps are listed under in get_*_steps (IPA uses the class name). Defaults to name. */
  readonly className?: string;
  evaluateHardwareSupport(): Promise<number> | number;
  initialize?(log: Logger): Promise<void> | void;
  readonly methods: Readonly<Record<string, ManagerMethod>>;
  readonly steps?: Partial<Readonly<Record<StepKind, readonly Step[]>>>;
}

const fn = z.custom<(...args: never[]) => unknown>((v) => typeof v === "function", "must be a function");

const StepListSchema = z.array(z.object({ step: z.string(), priority: z.number(), interface: z.string(), reboot_requested: z.boolean() }).passthrough()).optional();

/** Shape check for managers that come from vendor packages: their types are not trusted. */
export const HardwareManagerSchema = z.object({
  name: z.string().min(1),
  version: z.string().min(1),
  className: z.string().min(1).optional(),
  evaluateHardwareSupport: fn,
  initialize: fn.optional(),
  methods: z.record(z.string(), z.object({ destructive: z.boolean().optional(), run: fn })),
  steps: z.object({ clean: StepListSchema, deploy: StepListSchema, service: StepListSchema }).optional(),
});

/** Thrown by a manager method that exists but does not apply to this hardware: try the next manager. */
export function incompatible(details: string): AgentError {
  return new AgentError("INCOMPATIBLE_HARDWARE_METHOD", details);
}

interface Ranked {
  readonly manager: HardwareManager;
  readonly support: number;
}

export class ManagerRegistry {
  private constructor(
    private readonly ranked: readonly Ranked[],
    private readonly allowDestructive: boolean,
  ) {}

  /** Evaluates support, drops NONE, sorts best first (ties by name), initialises each. */
  static async create(managers: readonly HardwareManager[], opts: { log: Logger; allowDestructive: boolean }): Promise<ManagerRegistry> {
    const ranked: Ranked[] = [];
    for (const manager of managers) {
      const support = await manager.evaluateHardwareSupport();
      if (!Number.isFinite(support) || support <= SupportLevel.NONE) {
        opts.log.info({ manager: manager.name, support }, "hardware manager does not support this machine");
        continue;
      }
      ranked.push({ manager, support });
    }
    ranked.sort((a, b) => b.support - a.support || a.manager.name.localeCompare(b.manager.name));
    for (const { manager, support } of ranked) {
      await manager.initialize?.(opts.log.child({ manager: manager.name }));
      opts.log.info({ manager: manager.name, version: manager.version, support }, "hardware manager loaded");
    }
    return new ManagerRegistry(ranked, opts.allowDestructive);
  }

  managers(): readonly HardwareManager[] {
    return this.ranked.map((r) => r.manager);
  }

  /** `{name: version}` of every loaded manager: what Ironic passes back as clean_version. */
  versions(): Record<string, string> {
    return Object.fromEntries(this.ranked.map(({ manager }) => [manager.name, manager.version]));
  }

  private guard(manager: HardwareManager, method: string, impl: ManagerMethod): void {
    if (impl.destructive === true && !this.allowDestructive) {
      throw new AgentError("DESTRUCTIVE_NOT_ALLOWED", `${manager.name}.${method} is destructive and allow_destructive is off`);
    }
  }

  /** The first manager, best first, whose method handles the call wins; its return value is the result. */
  async dispatch(method: string, call: MethodCall): Promise<unknown> {
    for (const { manager } of this.ranked) {
      const impl = Object.hasOwn(manager.methods, method) ? manager.methods[method] : undefined;
      if (impl === undefined) continue;
      this.guard(manager, method, impl);
      try {
        return await impl.run(call);
      } catch (err) {
        if (AgentError.is(err, "INCOMPATIBLE_HARDWARE_METHOD")) {
          call.ctx.log.debug({ manager: manager.name, method, reason: err.details }, "manager declined, trying the next");
          continue;
        }
        throw err;
      }
    }
    throw new AgentError("HARDWARE_METHOD_NOT_FOUND", `Could not find method: ${method}`);
  }

  /** Every manager that implements the method runs it; `{className: result}`. */
  async dispatchAll(method: string, call: MethodCall): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    for (const { manager } of this.ranked) {
      const impl = Object.hasOwn(manager.methods, method) ? manager.methods[method] : undefined;
      if (impl === undefined) continue;
      this.guard(manager, method, impl);
      try {
        out[manager.className ?? manager.name] = await impl.run(call);
      } catch (err) {
        if (AgentError.is(err, "INCOMPATIBLE_HARDWARE_METHOD")) continue;
        throw err;
      }
    }
    if (Object.keys(out).length === 0) throw new AgentError("HARDWARE_METHOD_NOT_FOUND", `Could not find method: ${method}`);
    return out;
  }

  /**
   * Steps of one kind from every manager, `{className: [steps]}`. When two managers offer a step of
   * the same name, the better-supported manager keeps it, then the higher priority, then the name
   * that sorts first (IPA's rule).
   */
  steps(kind: StepKind): Record<string, Step[]> {
    const winners = new Map<string, { owner: string; support: number; step: Step }>();
    for (const { manager, support } of this.ranked) {
      const owner = manager.className ?? manager.name;
      for (const step of manager.steps?.[kind] ?? []) {
        const prev = winners.get(step.step);
        const better =
          prev === undefined ||
          support > prev.support ||
          (support === prev.support && (step.priority > prev.step.priority || (step.priority === prev.step.priority && owner < prev.owner)));
        if (better) winners.set(step.step, { owner, support, step });
      }
    }
    const out: Record<string, Step[]> = {};
    for (const { manager } of this.ranked) out[manager.className ?? manager.name] = [];
    for (const { owner, step } of winners.values()) (out[owner] ??= []).push(step);
    return out;
  }
}

/**
 * Loads hardware managers from npm packages (IPA's entry points): each exports `hardwareManagers`.
 * Names resolve as Node resolves them from `from` (default: the agent's own install), so a vendor
 * package installed next to the agent is found.
 */
export async function loadVendorManagers(packages: readonly string[], log: Logger, from: string = import.meta.url): Promise<HardwareManager[]> {
  const out: HardwareManager[] = [];
  const resolver = createRequire(from);
  for (const pkg of packages) {
    let mod: unknown;
    try {
      mod = await import(pathToFileURL(resolver.resolve(pkg)).href);
    } catch (err) {
      throw new AgentError("PLUGIN_INVALID", `cannot load hardware manager package ${pkg}: ${(err as Error).message}`, { cause: err });
    }
    const list = typeof mod === "object" && mod !== null && "hardwareManagers" in mod ? mod.hardwareManagers : undefined;
    if (!Array.isArray(list)) throw new AgentError("PLUGIN_INVALID", `package ${pkg} does not export a hardwareManagers array`);
    for (const candidate of list as unknown[]) {
      const checked = HardwareManagerSchema.safeParse(candidate);
      if (!checked.success) {
        throw new AgentError("PLUGIN_INVALID", `package ${pkg}: ${checked.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
      }
      // The shape is checked; the functions' own signatures are the plugin's contract (docs/plugins.md).
      out.push(candidate as HardwareManager);
      log.info({ package: pkg, manager: checked.data.name }, "vendor hardware manager found");
    }
  }
  return out;
}
