/** Reading Ironic's node object (what steps receive as `node`) the way IPA does. */
import { existsSync } from "node:fs";
import type { Json, JsonObject } from "../../core/envelope.js";

export function asObject(v: Json | undefined): JsonObject | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : undefined;
}

/** A field of a sub-object of the node: `field(node, "driver_info", "agent_burnin_cpu_timeout")`. */
export function nodeField(node: JsonObject | null, section: string, key: string): Json | undefined {
  return asObject(node?.[section])?.[key];
}

/** Ironic's capabilities: an object, or a `"k1:v1,k2:v2"` string. */
export function parseCapabilities(holder: JsonObject | undefined): Record<string, string> {
  const caps = holder?.["capabilities"];
  const out: Record<string, string> = {};
  if (typeof caps === "string") {
    for (const pair of caps.split(",")) {
      const i = pair.indexOf(":");
      if (i > 0) out[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
    }
  } else {
    for (const [k, v] of Object.entries(asObject(caps) ?? {})) if (v !== null && typeof v !== "object") out[k] = String(v);
  }
  return out;
}

/** The boot mode the instance will boot in (IPA's get_node_boot_mode). */
export function nodeBootMode(node: JsonObject | null, ramdiskIsUefi: boolean = existsSync("/sys/firmware/efi")): "uefi" | "bios" {
  const instanceInfo = asObject(node?.["instance_info"]);
  const iiCaps = parseCapabilities(instanceInfo);
  const nodeCaps = parseCapabilities(asObject(node?.["properties"]));
  const secure = (iiCaps["secure_boot"] ?? nodeCaps["secure_boot"] ?? "").toLowerCase() === "true";
  if (secure) return "uefi";
  const ramdisk = ramdiskIsUefi ? "uefi" : "bios";
  const raw = instanceInfo?.["deploy_boot_mode"] ?? nodeCaps["boot_mode"] ?? nodeField(node, "driver_internal_info", "deploy_boot_mode") ?? ramdisk;
  const mode = String(raw).toLowerCase();
  return mode === "uefi" || mode === "bios" ? mode : ramdisk;
}

/** gpt under UEFI, else the `disk_label` capability (instance_info first), msdos by default. */
export function partitionTableType(node: JsonObject | null, ramdiskIsUefi?: boolean): "gpt" | "msdos" {
  if (nodeBootMode(node, ramdiskIsUefi) === "uefi") return "gpt";
  const label = parseCapabilities(asObject(node?.["instance_info"]))["disk_label"] ?? parseCapabilities(asObject(node?.["properties"]))["disk_label"] ?? "msdos";
  return label === "gpt" ? "gpt" : "msdos";
}
