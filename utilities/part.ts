/**
 * A utility area (disks, images, system) contributes to the generic hardware manager (methods and
 * steps), to the standby extension (commands), and may add extensions of its own.
 */
import type { CommandDefinition, Extension } from "../core/command.js";
import type { AgentConfig } from "../core/config.js";
import type { Logger } from "../core/log.js";
import type { DeviceGuard } from "./disk/guard.js";
import type { CommandRunner } from "./exec.js";
import type { AgentState } from "./extensions/basic.js";
import type { ManagerMethod, StepKind, Step } from "./managers.js";

export interface UtilityDeps {
  readonly config: AgentConfig;
  readonly run: CommandRunner;
  readonly guard: DeviceGuard;
  readonly state: AgentState;
  readonly log: Logger;
}

export interface UtilityPart {
  /** Methods of the generic hardware manager (steps and helpers such as get_os_install_device). */
  readonly methods?: Readonly<Record<string, ManagerMethod>>;
  readonly steps?: Partial<Readonly<Record<StepKind, readonly Step[]>>>;
  /** Commands added to the standby extension (prepare_image, power_off, ...). */
  readonly standby?: Readonly<Record<string, CommandDefinition>>;
  readonly extensions?: readonly Extension[];
}

export interface MergedParts {
  readonly methods: Readonly<Record<string, ManagerMethod>>;
  readonly steps: Readonly<Record<StepKind, readonly Step[]>>;
  readonly standby: Readonly<Record<string, CommandDefinition>>;
  readonly extensions: readonly Extension[];
}

/** Merges parts; a name defined twice is a programming error. */
export function mergeParts(parts: readonly UtilityPart[]): MergedParts {
  const methods: Record<string, ManagerMethod> = {};
  const standby: Record<string, CommandDefinition> = {};
  const steps: Record<StepKind, Step[]> = { clean: [], deploy: [], service: [] };
  const extensions: Extension[] = [];
  for (const part of parts) {
    for (const [k, v] of Object.entries(part.methods ?? {})) {
      if (k in methods) throw new Error(`method ${k} defined twice`);
      methods[k] = v;
    }
    for (const [k, v] of Object.entries(part.standby ?? {})) {
      if (k in standby) throw new Error(`standby.${k} defined twice`);
      standby[k] = v;
    }
    for (const kind of ["clean", "deploy", "service"] as const) steps[kind].push(...(part.steps?.[kind] ?? []));
    extensions.push(...(part.extensions ?? []));
  }
  return { methods, standby, steps, extensions };
}
