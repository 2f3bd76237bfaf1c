/**
 * `image_info`, as Ironic sends it: IPA's validator (the same messages, answered 400 before anything
 * is recorded) and a typed, lenient reading of the fields (Ironic sends `null` for absent ones).
 */
import { createHash, getHashes } from "node:crypto";
import type { Json, JsonObject } from "../../core/envelope.js";
import { invalidParams } from "./errors.js";

export type ImageType = "whole-disk" | "partition";

export interface ImageInfo {
  readonly id: string;
  readonly urls: readonly string[];
  /** `raw`, `qcow2`, ...; undefined when Ironic did not say. */
  readonly diskFormat: string | undefined;
  /** IPA streams raw images unless this is false. */
  readonly streamRawImages: boolean;
  readonly checksum: string | undefined;
  readonly osHashAlgo: string | undefined;
  readonly osHashValue: string | undefined;
  /** Value of the Authorization header: image_request_authorization (decoded), else http_basic credentials. */
  readonly authorization: string | undefined;
  readonly proxies: { readonly http?: string; readonly https?: string };
  readonly noProxy: string | undefined;
  readonly nodeUuid: string | undefined;
  readonly imageType: ImageType;
  readonly rootMb: number;
  readonly swapMb: number;
  readonly ephemeralMb: number;
  readonly ephemeralFormat: string | undefined;
  readonly preserveEphemeral: boolean;
  readonly deployBootMode: string | undefined;
  readonly diskLabel: string | undefined;
  readonly configdrive: string | undefined;
  /** Root device hints carried in image_info (not an IPA field; the node's are used otherwise). */
  readonly rootDevice: JsonObject | undefined;
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: Json | undefined): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}

function num(v: Json | undefined): number | undefined {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))) return Number(v);
  return undefined;
}

function bool(v: Json | undefined, fallback: boolean): boolean {
  if (typeof v === "boolean") return v;
  if (typeof v === "string") {
    const s = v.trim().toLowerCase();
    if (["1", "true", "yes", "on"].includes(s)) return true;
    if (["0", "false", "no", "off"].includes(s)) return false;
  }
  return fallback;
}

export function isHttpUrl(value: string): boolean {
  return /^https?:\/\//i.test(value);
}

const HEX = /^[0-9a-fA-F]+$/;
const DIGEST_LENGTHS = new Map<string, number>();

/** The node:crypto name of a hashlib algorithm name, or undefined when node:crypto lacks it. */
export function nodeHashName(algo: string): string | undefined {
  const wanted = algo.toLowerCase();
  const aliases: Record<string, string> = { sha3_256: "sha3-256", sha3_384: "sha3-384", sha3_512: "sha3-512", sha3_224: "sha3-224", blake2b: "blake2b512", blake2s: "blake2s256" };
  const name = aliases[wanted] ?? wanted;
  return getHashes().includes(name) ? name : undefined;
}

/** Hex length of a digest of that algorithm (shake* give their default length). */
export function digestHexLength(hashName: string): number {
  let n = DIGEST_LENGTHS.get(hashName);
  if (n === undefined) {
    n = createHash(hashName).digest("hex").length;
    DIGEST_LENGTHS.set(hashName, n);
  }
  return n;
}

/** The algorithm a literal checksum's length means, as IPA reads it; undefined when none fits. */
export function algorithmByLength(checksum: string, md5Allowed: boolean): "md5" | "sha256" | "sha512" | undefined {
  if (checksum.length === 128) return "sha512";
  if (checksum.length === 64) return "sha256";
  if (checksum.length === 32 && md5Allowed) return "md5";
  return undefined;
}

/**
 * IPA's `_validate_image_info`, plus the shape checks it leaves to the download: refuses (INVALID_PARAMS,
 * answered 400) an image_info without `id` or `urls`, without any usable checksum, or with a checksum that
 * cannot be one.
 */
export function validateImageInfo(imageInfo: Json | undefined, opts: { md5Allowed: boolean }): void {
  const info: JsonObject = isObject(imageInfo) ? imageInfo : {};
  for (const field of ["id", "urls"]) {
    if (!(field in info)) throw invalidParams(`Image is missing '${field}' field.`);
  }
  const urls = info["urls"];
  if (!Array.isArray(urls) || urls.length === 0) throw invalidParams("Image 'urls' must be a list with at least one element.");
  for (const url of urls) {
    if (typeof url !== "string" || !isHttpUrl(url)) throw invalidParams(`Image 'urls' must hold http:// or https:// URLs, got ${JSON.stringify(url)}.`);
    try {
      new URL(url);
    } catch {
      throw invalidParams(`Image 'urls' holds an invalid URL: ${url}`);
    }
  }
  if (typeof info["id"] !== "string" || info["id"] === "") throw invalidParams("Image 'id' must be a non-empty string.");

  let checksumUsable = false;
  const checksum = info["checksum"];
  let checksumProblem: string | undefined;
  if (checksum !== undefined && checksum !== null) {
    if (typeof checksum !== "string" || checksum === "") throw invalidParams("Image 'checksum' must be a non-empty string.");
    if (isHttpUrl(checksum)) {
      checksumUsable = true;
    } else if (!HEX.test(checksum) || ![32, 64, 128].includes(checksum.length)) {
      checksumProblem = "Image 'checksum' must be an md5 (32), sha256 (64) or sha512 (128) hex digest, or the http(s) URL of a checksums file.";
    } else if (checksum.length > 32 || opts.md5Allowed) {
      checksumUsable = true;
    }
  }

  let osHashUsable = false;
  const algo = info["os_hash_algo"];
  const value = info["os_hash_value"];
  if ((algo !== undefined && algo !== null && algo !== "") || (value !== undefined && value !== null && value !== "")) {
    if (typeof algo !== "string" || algo === "") throw invalidParams("Image 'os_hash_algo' must be a non-empty string.");
    if (typeof value !== "string" || value === "") throw invalidParams("Image 'os_hash_value' must be a non-empty string.");
    const name = nodeHashName(algo);
    if (name !== undefined) {
      const len = digestHexLength(name);
      if (!HEX.test(value) || value.length !== len) {
        throw invalidParams(`Image 'os_hash_value' must be a ${len}-character hex digest for ${algo}.`);
      }
      osHashUsable = true;
    } else if (!checksumUsable) {
      throw invalidParams(`Image 'os_hash_algo' ${algo} is not supported by this agent, and no other checksum is usable.`);
    }
  }

  if (!osHashUsable && checksumProblem !== undefined) throw invalidParams(checksumProblem);
  if (!(checksumUsable || osHashUsable)) {
    throw invalidParams(
      "Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification.",
    );
  }

  if (info["image_type"] === "partition") {
    const rootMb = num(info["root_mb"]) ?? (num(info["root_gb"]) === undefined ? undefined : (num(info["root_gb"]) ?? 0) * 1024);
    if (rootMb === undefined || rootMb <= 0) throw invalidParams("Image 'root_mb' must be a positive number for a partition image.");
    for (const key of ["swap_mb", "ephemeral_mb"]) {
      const v = info[key];
      if (v !== undefined && v !== null && (num(v) === undefined || (num(v) ?? 0) < 0)) throw invalidParams(`Image '${key}' must be a number of MiB.`);
    }
  }
  const auth = info["image_request_authorization"];
  if (typeof auth === "string" && auth !== "" && !/^[A-Za-z0-9+/]+={0,2}$/.test(auth)) {
    throw invalidParams("Image 'image_request_authorization' must be base64.");
  }
  if (info["image_server_auth_strategy"] === "http_basic" && (str(info["image_server_user"]) === undefined || str(info["image_server_password"]) === undefined)) {
    const missing = ["user", "password"].filter((k) => str(info[`image_server_${k}`]) === undefined);
    throw invalidParams(`Image ${String(info["id"])}: missing ${missing.map((m) => `'${m}'`).join(", ")} fields from HTTP(S) basic auth config.`);
  }
}

/** Reads a validated image_info. */
export function readImageInfo(info: JsonObject): ImageInfo {
  const urls = Array.isArray(info["urls"]) ? info["urls"].filter((u): u is string => typeof u === "string") : [];
  let authorization: string | undefined;
  const supplied = str(info["image_request_authorization"]);
  if (supplied !== undefined) {
    authorization = Buffer.from(supplied, "base64").toString("utf8");
  } else if (info["image_server_auth_strategy"] === "http_basic") {
    const user = str(info["image_server_user"]) ?? "";
    const password = str(info["image_server_password"]) ?? "";
    authorization = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
  }
  const proxiesRaw = info["proxies"];
  const proxies: { http?: string; https?: string } = {};
  if (isObject(proxiesRaw)) {
    const http = str(proxiesRaw["http"]);
    const https = str(proxiesRaw["https"]);
    if (http !== undefined) proxies.http = http;
    if (https !== undefined) proxies.https = https;
  }
  const rootGb = num(info["root_gb"]);
  const imageType: ImageType = info["image_type"] === "partition" ? "partition" : "whole-disk";
  return {
    id: str(info["id"]) ?? "",
    urls,
    diskFormat: str(info["disk_format"])?.toLowerCase(),
    streamRawImages: bool(info["stream_raw_images"], true),
    checksum: str(info["checksum"]),
    osHashAlgo: str(info["os_hash_algo"]),
    osHashValue: str(info["os_hash_value"]),
    authorization,
    proxies,
    noProxy: str(info["no_proxy"]),
    nodeUuid: str(info["node_uuid"]),
    imageType,
    rootMb: Math.floor(num(info["root_mb"]) ?? (rootGb === undefined ? 0 : rootGb * 1024)),
    swapMb: Math.floor(num(info["swap_mb"]) ?? 0),
    ephemeralMb: Math.floor(num(info["ephemeral_mb"]) ?? 0),
    ephemeralFormat: str(info["ephemeral_format"]),
    preserveEphemeral: bool(info["preserve_ephemeral"], false),
    deployBootMode: str(info["deploy_boot_mode"])?.toLowerCase(),
    diskLabel: str(info["disk_label"])?.toLowerCase(),
    configdrive: str(info["configdrive"]),
    rootDevice: isObject(info["root_device"]) ? info["root_device"] : undefined,
  };
}
