/**
 * The system area: power (standby.power_off / run_image), the boot loader (image.install_bootloader),
 * software RAID, burn-in and inject_files. See docs/system.md.
 */
import { z } from "zod";
import type { CommandContext } from "../../core/command.js";
import { defineExtension } from "../../core/command.js";
import { JsonObjectSchema, JsonSchema } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { ManagerMethod, MethodCall, Step, StepArgInfo } from "../managers.js";
import type { UtilityDeps, UtilityPart } from "../part.js";
import { allowedDisks, type BlockEnv } from "./blockdev.js";
import { imageCommands } from "./bootloader.js";
import { fioDisk, networkBurnin, stressNg } from "./burnin.js";
import { injectFiles } from "./inject.js";
import { powerCommands } from "./power.js";
import { buildRaid, createConfiguration, deleteConfiguration, planRaid, targetRaidConfig, validateRaidConfig } from "./raid.js";

/** argsinfo of raid.apply_configuration, as IPA sends it. */
export const RAID_APPLY_ARGSINFO: Readonly<Record<string, StepArgInfo>> = {
  raid_config: { description: "The RAID configuration to apply.", required: true },
  delete_existing: {
    description:
      "Setting this to 'True' indicates to delete existing RAID configuration prior to creating the new configuration. Default value is 'True'.",
    required: false,
  },
};

/** argsinfo of deploy.inject_files, as IPA sends it. */
export const INJECT_FILES_ARGSINFO: Readonly<Record<string, StepArgInfo>> = {
  files: {
    description:
      "Files to inject, a list of file structures with keys: 'path' (path to the file), 'partition' (partition specifier), 'content' (base64 encoded string), 'mode' (new file mode) and 'dirmode' (mode for the leaf directory, if created). Merged with the values from node.properties[inject_files].",
    required: false,
  },
  verify_ca: { description: "Whether to verify TLS certificates. Global agent options are used by default.", required: false },
};

const NoArgs = z.object({}).strict();
const ApplyArgs = z.object({ raid_config: JsonObjectSchema, delete_existing: z.boolean().optional() }).strict();
const InjectArgs = z.object({ files: JsonSchema.optional(), verify_ca: z.boolean().optional() }).strict();

/** A step's args against its signature; a mismatch is IPA's TypeError, reported as the async failure it becomes. */
function parseArgs<T>(schema: z.ZodType<T>, call: MethodCall, step: string): T {
  const parsed = schema.safeParse(call.args);
  if (parsed.success) return parsed.data;
  const details = parsed.error.issues
    .map((i) => (i.code === "unrecognized_keys" ? `unexpected keyword argument(s) ${i.keys.map((k) => `'${k}'`).join(", ")}` : `'${i.path.join(".")}': ${i.message}`))
    .join("; ");
  throw new AgentError("BAD_ARGUMENTS", `${step}() ${details}`, { ipaType: "CommandExecutionError", status: 500, message: "Command execution failed" });
}

function step(name: string, iface: string, priority = 0, extra: Partial<Step> = {}): Step {
  return { step: name, priority, interface: iface, reboot_requested: false, ...extra };
}

export function systemPart(deps: UtilityDeps): UtilityPart {
  const env = (ctx: CommandContext): BlockEnv => ({ config: deps.config, run: deps.run, guard: deps.guard, log: ctx.log, signal: ctx.signal });

  const methods: Record<string, ManagerMethod> = {
    create_configuration: {
      destructive: true,
      run: async (call) => {
        parseArgs(NoArgs, call, "create_configuration");
        const cfg = targetRaidConfig(call.node);
        if (cfg === undefined) {
          call.ctx.log.info("No target_raid_config found");
          return {};
        }
        return (await createConfiguration(env(call.ctx), call.node, cfg)).result;
      },
    },
    delete_configuration: {
      destructive: true,
      run: async (call) => {
        parseArgs(NoArgs, call, "delete_configuration");
        await deleteConfiguration(env(call.ctx));
        return null;
      },
    },
    apply_configuration: {
      destructive: true,
      run: async (call) => {
        const args = parseArgs(ApplyArgs, call, "apply_configuration");
        const e = env(call.ctx);
        // Validate and pick the disks before deleting anything (IPA validates first too).
        const plan = await planRaid(e, call.node, args.raid_config);
        if (plan === undefined) {
          validateRaidConfig(args.raid_config, call.node, (await allowedDisks(e)).length);
          return {};
        }
        if (args.delete_existing ?? true) await deleteConfiguration(e);
        return (await buildRaid(e, call.node, plan)).result;
      },
    },
    burnin_cpu: {
      run: async (call) => {
        parseArgs(NoArgs, call, "burnin_cpu");
        return stressNg(env(call.ctx), call.node, "cpu");
      },
    },
    burnin_memory: {
      run: async (call) => {
        parseArgs(NoArgs, call, "burnin_memory");
        return stressNg(env(call.ctx), call.node, "vm");
      },
    },
    burnin_disk: {
      destructive: true,
      run: async (call) => {
        parseArgs(NoArgs, call, "burnin_disk");
        return fioDisk(env(call.ctx), call.node);
      },
    },
    burnin_network: {
      run: async (call) => {
        parseArgs(NoArgs, call, "burnin_network");
        return networkBurnin(env(call.ctx), call.node);
      },
    },
    inject_files: {
      destructive: true,
      run: async (call) => {
        const args = parseArgs(InjectArgs, call, "inject_files");
        return injectFiles(env(call.ctx), deps.state, call.node, args.files);
      },
    },
  };

  const abortable = { abortable: true };
  const del = step("delete_configuration", "raid", 0, abortable);
  const create = step("create_configuration", "raid", 0, abortable);
  const burnin = (names: readonly string[]): Step[] => names.map((n) => step(`burnin_${n}`, "deploy", 0, abortable));
  const apply = step("apply_configuration", "raid", 0, { argsinfo: RAID_APPLY_ARGSINFO });
  const inject = step("inject_files", "deploy", deps.config.injectFilesPriority, { argsinfo: INJECT_FILES_ARGSINFO });

  return {
    methods,
    steps: {
      clean: [del, create, ...burnin(["cpu", "disk", "memory", "network"])],
      deploy: [apply, inject],
      // IPA: service steps carry no disk burn-in (it would destroy the instance's data).
      service: [del, apply, create, ...burnin(["cpu", "memory", "network"]), inject],
    },
    standby: powerCommands(deps),
    extensions: [defineExtension("image", imageCommands(deps))],
  };
}
