/**
 * The disk area's part of the generic hardware manager: IPA's erase steps and the root-device
 * methods (docs/disks.md).
 */
import type { CommandContext } from "../../core/command.js";
import type { Json, JsonObject } from "../../core/envelope.js";
import type { MethodCall, Step } from "../managers.js";
import type { UtilityDeps, UtilityPart } from "../part.js";
import { listBlockDevices } from "./devices.js";
import { eraseDevices, eraseDevicesExpress, eraseDevicesMetadata, type PlanDeps, type StepIo } from "./erase.js";
import { explainRootDevice, type RootChoice } from "./root.js";
import type { DiskIo } from "./tools.js";

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The node a method works for: `args.node` when given (get_os_install_device(node=...)), else the call's. */
function nodeOf(call: MethodCall): JsonObject | null {
  const fromArgs = call.args["node"];
  return isObject(fromArgs) ? fromArgs : call.node;
}

function io(deps: UtilityDeps, ctx: CommandContext, component: string): StepIo {
  return {
    run: deps.run,
    signal: ctx.signal,
    log: ctx.log.child({ component }),
    progress: (update) => ctx.progress(update),
  };
}

const cleanStep = (step: string, priority: number): Step => ({ step, priority, interface: "deploy", reboot_requested: false, abortable: true });

/** IPA's generic clean steps for disks, same names and priorities. */
export const DISK_CLEAN_STEPS: readonly Step[] = [cleanStep("erase_devices", 10), cleanStep("erase_devices_metadata", 99), cleanStep("erase_devices_express", 0)];
/** IPA offers the metadata erase as a deploy step too (priority 0, run on request). */
export const DISK_DEPLOY_STEPS: readonly Step[] = [{ step: "erase_devices_metadata", priority: 0, interface: "deploy", reboot_requested: false }];

/** The root device choice with its explanation (for other utilities: image writing, RAID). */
export async function osInstallDevice(deps: Pick<UtilityDeps, "config" | "run">, diskIo: DiskIo, node: JsonObject | null): Promise<RootChoice> {
  const devices = await listBlockDevices(deps, { signal: diskIo.signal });
  return explainRootDevice(diskIo, devices, node);
}

export function diskPart(deps: UtilityDeps): UtilityPart {
  const planDeps: PlanDeps = { config: deps.config, run: deps.run, guard: deps.guard };
  return {
    methods: {
      erase_devices: { destructive: true, run: (call) => eraseDevices(planDeps, io(deps, call.ctx, "erase_devices"), call.node) },
      erase_devices_metadata: { destructive: true, run: (call) => eraseDevicesMetadata(planDeps, io(deps, call.ctx, "erase_devices_metadata"), call.node) },
      erase_devices_express: { destructive: true, run: (call) => eraseDevicesExpress(planDeps, io(deps, call.ctx, "erase_devices_express"), call.node) },
      get_os_install_device: {
        run: async (call) => (await osInstallDevice(deps, io(deps, call.ctx, "root_device"), nodeOf(call))).device,
      },
      explain_os_install_device: {
        run: async (call) => osInstallDevice(deps, io(deps, call.ctx, "root_device"), nodeOf(call)),
      },
      list_block_devices: {
        run: async (call) => listBlockDevices(deps, { signal: call.ctx.signal }),
      },
    },
    steps: { clean: DISK_CLEAN_STEPS, deploy: DISK_DEPLOY_STEPS },
  };
}

/**
 * A resolver of the image area's shape `(node, image_info, ctx) => device` backed by the root device
 * choice (hints, skip list, default policy), for `imagePart(deps, { resolveDevice })`.
 */
export function installDeviceResolver(deps: Pick<UtilityDeps, "config" | "run">): (node: JsonObject | null, info: unknown, ctx: CommandContext) => Promise<string> {
  return async (node, _info, ctx) => (await osInstallDevice(deps, { run: deps.run, signal: ctx.signal, log: ctx.log.child({ component: "root_device" }) }, node)).device;
}
