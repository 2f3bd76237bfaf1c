/**
 * The image area's part of the agent: standby.prepare_image (async, destructive, IPA's image_info
 * validator), and the generic manager's write_image method, offered as a deploy and a service step
 * (priority 0, interface deploy) that runs prepare_image's logic and waits for it, as IPA's does.
 * After every write, AgentState.partitionUuids holds what the disk itself says (uuids.ts).
 */
import { z } from "zod";
import type { CommandContext } from "../../core/command.js";
import { defineCommand } from "../../core/command.js";
import { type Json, type JsonObject, JsonObjectSchema } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { ManagerMethod, Step } from "../managers.js";
import type { UtilityDeps, UtilityPart } from "../part.js";
import type { ImageDeployer, WriteRecord } from "./deploy.js";
import { readImageInfo, validateImageInfo } from "./info.js";
import { type ImageOptions, resolveImageOptions } from "./options.js";
import { type InstallDeviceResolver, resolveTargetDevice } from "./target.js";
import type { PartitionUuids } from "./uuids.js";

export interface ImagePartOptions extends Partial<ImageOptions> {
  /** Finds the install disk (default: resolveTargetDevice; point it at get_os_install_device). */
  readonly resolveDevice?: InstallDeviceResolver;
}

const PrepareParams = z.object({ image_info: JsonObjectSchema, configdrive: z.string().nullable().optional() }).strict();

const WRITE_IMAGE_STEP: Step = { step: "write_image", priority: 0, interface: "deploy", reboot_requested: false };

function configdriveOf(value: Json | undefined, info: JsonObject): string | undefined {
  if (typeof value === "string" && value !== "") return value;
  const fromInfo = info["configdrive"];
  return typeof fromInfo === "string" && fromInfo !== "" ? fromInfo : undefined;
}

export function imagePart(deps: UtilityDeps, given: ImagePartOptions = {}): UtilityPart {
  const { resolveDevice: resolver, ...rest } = given;
  const opts = resolveImageOptions({ insecure: deps.config.insecure, userAgent: `ironbus/${deps.config.version}`, ...rest });
  const resolveDevice: InstallDeviceResolver = resolver ?? ((node, info) => resolveTargetDevice(node, info, deps.config));
  const record: WriteRecord = { last: undefined };
  // The writing machinery loads on first use: an agent that never deploys does not pay for it.
  let deployer: Promise<ImageDeployer> | undefined;
  const getDeployer = (): Promise<ImageDeployer> => (deployer ??= import("./deploy.js").then((m) => new m.ImageDeployer(deps, opts, resolveDevice, record)));
  /** The node Ironic last sent with a step (IPA caches it the same way). */
  let cachedNode: JsonObject | null = null;

  const prepare = async (imageInfo: JsonObject, configdrive: Json | undefined, node: JsonObject | null, ctx: CommandContext): Promise<string> =>
    (await getDeployer()).prepare({ imageInfo: readImageInfo(imageInfo), configdrive: configdriveOf(configdrive, imageInfo), node }, ctx);

  const writeImage: ManagerMethod = {
    destructive: true,
    run: async ({ node, args, ctx }) => {
      const unexpected = Object.keys(args).filter((k) => k !== "image_info" && k !== "configdrive");
      if (unexpected.length > 0) throw new AgentError("BAD_ARGUMENTS", `write_image() got unexpected keyword argument(s) ${unexpected.map((k) => `'${k}'`).join(", ")}`);
      validateImageInfo(args["image_info"], opts);
      const info = args["image_info"] as JsonObject;
      const configdrive = args["configdrive"];
      if (configdrive !== undefined && configdrive !== null && typeof configdrive !== "string") {
        throw new AgentError("BAD_ARGUMENTS", "write_image() 'configdrive' must be a string or null");
      }
      if (node !== null) cachedNode = node;
      const message = await prepare(info, configdrive, node ?? cachedNode ?? deps.state.nodeInfo, ctx);
      // IPA's write_image returns prepare_image's command_result.
      return { result: `prepare_image: ${message}` };
    },
  };

  return {
    methods: { write_image: writeImage },
    steps: { deploy: [WRITE_IMAGE_STEP], service: [WRITE_IMAGE_STEP] },
    standby: {
      prepare_image: defineCommand({
        mode: "async",
        destructive: true,
        params: PrepareParams,
        validate: (params) => validateImageInfo(params["image_info"], opts),
        run: (p, ctx) => prepare(p.image_info, p.configdrive ?? undefined, cachedNode ?? deps.state.nodeInfo, ctx),
      }),
      get_partition_uuids: defineCommand({
        mode: "sync",
        params: z.object({}).strict(),
        // Nothing written by this agent yet: the stored answer, at once (no device to read).
        run: (_p, ctx) => (record.last === undefined ? deps.state.partitionUuids : answerPartitionUuids(deps, record, ctx.signal)),
      }),
    },
  };
}

/**
 * The answer to standby.get_partition_uuids, read again from the disk last written (and stored in
 * AgentState.partitionUuids); the stored answer (`{}` before any write) when no image was written by
 * this agent.
 */
async function answerPartitionUuids(deps: Pick<UtilityDeps, "run" | "state">, record: WriteRecord, signal: AbortSignal): Promise<PartitionUuids> {
  const last = record.last;
  if (last === undefined) return deps.state.partitionUuids;
  const { readPartitionUuids } = await import("./uuids.js");
  const fresh = await readPartitionUuids({ run: deps.run, signal }, last.device, last.imageType);
  deps.state.partitionUuids = fresh;
  return fresh;
}

export { resolveTargetDevice };
export type { InstallDeviceResolver, ImageOptions, PartitionUuids };
