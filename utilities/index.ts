/** Builds the command extensions the agent serves, from its managers and configuration. */
import { defineExtension, type Extension } from "../core/command.js";
import type { AgentConfig } from "../core/config.js";
import type { Logger } from "../core/log.js";
import { type CommandRunner, execRunner } from "./exec.js";
import { type AgentState, logExtension, newAgentState, pollExtension, standbyReadOnly } from "./extensions/basic.js";
import { flowExtension } from "./extensions/flow.js";
import { stepExtension } from "./extensions/steps.js";
import { genericHardwareManager } from "./generic.js";
import { type HardwareManager, loadVendorManagers, ManagerRegistry } from "./managers.js";
import { DeviceGuard } from "./disk/guard.js";
import { diskPart, installDeviceResolver } from "./disk/part.js";
import { mergeParts, type UtilityDeps, type UtilityPart } from "./part.js";
import { imagePart } from "./image/part.js";
import { systemPart } from "./system/part.js";

/** The utility areas, each filling in its own part of the generic manager and of standby. */
const UTILITY_PARTS: ReadonlyArray<(deps: UtilityDeps) => UtilityPart> = [
  diskPart,
  systemPart,
  (deps) => imagePart(deps, { resolveDevice: installDeviceResolver(deps) }),
];

export interface UtilitiesOptions {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly run?: CommandRunner;
  /** Extra managers (tests, embedders); vendor packages from the config are loaded too. */
  readonly managers?: readonly HardwareManager[];
}

export interface Utilities {
  readonly extensions: Extension[];
  readonly registry: ManagerRegistry;
  readonly state: AgentState;
}

export async function createUtilities(opts: UtilitiesOptions): Promise<Utilities> {
  const run = opts.run ?? execRunner;
  const state = newAgentState();
  const guard = new DeviceGuard({ allowDestructive: opts.config.allowDestructive, allowedDevices: opts.config.allowedDevices });
  const deps: UtilityDeps = { config: opts.config, run, guard, state, log: opts.log };
  const parts = UTILITY_PARTS.map((make) => make(deps));
  const merged = mergeParts(parts);
  const managers = [
    genericHardwareManager({ run, bootInterface: opts.config.bootInterface, parts }),
    ...(await loadVendorManagers(opts.config.vendorManagers, opts.log)),
    ...(opts.managers ?? []),
  ];
  const registry = await ManagerRegistry.create(managers, { log: opts.log, allowDestructive: opts.config.allowDestructive });
  const extensions = [
    stepExtension("clean", registry),
    stepExtension("deploy", registry),
    stepExtension("service", registry),
    pollExtension(registry, state, opts.config.standalone),
    logExtension(run),
    defineExtension("standby", { ...standbyReadOnly(run, state), ...merged.standby }),
    flowExtension(),
    ...merged.extensions,
  ];
  return { extensions, registry, state };
}
