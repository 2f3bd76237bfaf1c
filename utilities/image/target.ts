/**
 * Which disk the image goes to. IPA asks the hardware managers (get_os_install_device, root device
 * hints). Until the hint matcher is wired in here (point imagePart's `resolveDevice` at it), this
 * resolver knows two cases:
 *  - a `name` hint (`{"name": "/dev/sda"}` or `"sda"`) in image_info.root_device, the node's
 *    instance_info.root_device or properties.root_device;
 *  - no hints at all, and exactly one device (not a pattern) in the configuration's allowedDevices.
 * Any other hint is refused rather than ignored. The device guard still checks the result.
 */
import type { CommandContext } from "../../core/command.js";
import type { AgentConfig } from "../../core/config.js";
import type { Json, JsonObject } from "../../core/envelope.js";
import { deviceNotFound } from "./errors.js";
import type { ImageInfo } from "./info.js";

export type InstallDeviceResolver = (node: JsonObject | null, info: ImageInfo, ctx: CommandContext) => Promise<string>;

function objectAt(v: Json | undefined): JsonObject | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : undefined;
}

/** Root device hints, IPA's order: instance_info over properties (image_info's first, an ironbus extra). */
export function rootDeviceHints(node: JsonObject | null, info: Pick<ImageInfo, "rootDevice">): JsonObject | undefined {
  const candidates = [info.rootDevice, objectAt(objectAt(node?.["instance_info"])?.["root_device"]), objectAt(objectAt(node?.["properties"])?.["root_device"])];
  return candidates.find((h) => h !== undefined && Object.keys(h).length > 0);
}

export async function resolveTargetDevice(node: JsonObject | null, info: Pick<ImageInfo, "rootDevice">, config: Pick<AgentConfig, "allowedDevices">): Promise<string> {
  const hints = rootDeviceHints(node, info);
  if (hints !== undefined) {
    const name = hints["name"];
    const others = Object.keys(hints).filter((k) => k !== "name");
    if (typeof name === "string" && name !== "" && others.length === 0) {
      // IPA's name hint may omit /dev/ and may carry the s== operator.
      const bare = name.replace(/^s==\s*/, "").trim();
      return bare.startsWith("/") ? bare : `/dev/${bare}`;
    }
    throw deviceNotFound(
      `No suitable device was found for deployment using these hints ${JSON.stringify(hints)}: only the 'name' hint is understood until the root device hint matcher is wired in.`,
    );
  }
  const exact = config.allowedDevices.filter((d) => !d.endsWith("*"));
  if (exact.length === 1 && exact[0] !== undefined) return exact[0];
  throw deviceNotFound(
    `No root device hints, and allowedDevices names ${exact.length} devices: give the node a root_device hint {"name": "/dev/..."}.`,
  );
}
