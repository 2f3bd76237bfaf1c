/**
 * Which digest the image must have, in IPA's order: os_hash_algo/os_hash_value; else a checksums file
 * named by an http(s) `checksum`; else the literal `checksum`, its algorithm told by its length.
 */
import { basename } from "node:path";
import type { Logger } from "../../core/log.js";
import { AgentError } from "../../core/errors.js";
import { downloadError } from "./errors.js";
import { algorithmByLength, type ImageInfo, isHttpUrl, nodeHashName } from "./info.js";

export interface ExpectedChecksum {
  /** node:crypto hash name. */
  readonly algorithm: string;
  /** Lower-case hex. */
  readonly value: string;
}

const HEX_LENGTHS = [32, 64, 128] as const;

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * The digest a checksums file gives for `filename`. Accepted lines: `<hash>  <file>` (and `<hash> *<file>`),
 * `<file> <hash>`, `ALGO (<file>) = <hash>`; a file of one lone hash applies to any image. `#` lines are
 * comments. Returns undefined (with the reason) when nothing matches.
 */
export function parseChecksumsFile(text: string, filename: string): { value: string } | { error: string } {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== "");
  if (lines.length === 0) return { error: "Empty checksum file" };
  const only = lines[0] ?? "";
  if (lines.length === 1 && !/\s/.test(only)) {
    if (/^[0-9a-fA-F]+$/.test(only) && (HEX_LENGTHS as readonly number[]).includes(only.length)) return { value: only.toLowerCase() };
    return { error: `Invalid checksum file (No valid checksum found) ${JSON.stringify(lines)}` };
  }
  const name = escapeRegExp(filename);
  const nameMatchers = [new RegExp(`\\s\\*?${name}$`), new RegExp(`\\s\\(${name}\\)\\s`), new RegExp(`^\\*?${name}\\s`)];
  for (const line of lines) {
    if (line.startsWith("#")) continue;
    if (!nameMatchers.some((m) => m.test(line))) continue;
    for (const len of HEX_LENGTHS) {
      const head = new RegExp(`^([0-9a-fA-F]{${len}})\\s`).exec(line);
      if (head?.[1] !== undefined) return { value: head[1].toLowerCase() };
      const tail = new RegExp(`\\s([0-9a-fA-F]{${len}})$`).exec(line);
      if (tail?.[1] !== undefined) return { value: tail[1].toLowerCase() };
    }
  }
  return { error: `Checksum file does not contain name ${filename}` };
}

/** The basename of the first image URL's path: the name looked up in a checksums file. */
export function imageFileName(url: string): string {
  return basename(decodeURIComponent(new URL(url).pathname));
}

export interface ChecksumDeps {
  readonly md5Allowed: boolean;
  /** Fetches the checksums file (with the image's own authentication and proxies). */
  fetchText(url: string): Promise<string>;
  readonly log: Logger;
}

function md5Refused(imageId: string): AgentError {
  return new AgentError(
    "COMMAND_FAILED",
    `Unable to proceed with image ${imageId} as the checksum indicator has been used but the algorithm could not be identified. Error: MD5 support is disabled.`,
  );
}

export async function resolveChecksum(info: ImageInfo, deps: ChecksumDeps): Promise<ExpectedChecksum> {
  const algo = info.osHashAlgo === undefined ? undefined : nodeHashName(info.osHashAlgo);
  if (algo !== undefined && info.osHashValue !== undefined) return { algorithm: algo, value: info.osHashValue.toLowerCase() };
  const checksum = info.checksum;
  if (checksum === undefined) {
    throw new AgentError(
      "COMMAND_FAILED",
      `Unable to verify image ${info.id} with available checksums. Please make sure the specified 'os_hash_algo' (currently ${String(info.osHashAlgo)}) is supported by this ramdisk, or provide a checksum via the 'checksum' field`,
    );
  }
  let value = checksum;
  if (isHttpUrl(checksum)) {
    const text = await deps.fetchText(checksum);
    const first = info.urls[0] ?? "";
    const parsed = parseChecksumsFile(text, imageFileName(first));
    if ("error" in parsed) throw downloadError(checksum, parsed.error, "fatal");
    value = parsed.value;
    if (algo !== undefined) return { algorithm: algo, value };
  }
  const byLength = algorithmByLength(value, deps.md5Allowed);
  if (byLength === undefined) {
    if (value.length === 32) throw md5Refused(info.id);
    throw new AgentError("COMMAND_FAILED", `Unable to identify the checksum algorithm of image ${info.id}: a ${value.length}-character checksum and no usable 'os_hash_algo'.`);
  }
  if (info.osHashAlgo !== undefined && nodeHashName(info.osHashAlgo) !== byLength) {
    deps.log.warn({ provided: info.osHashAlgo, detected: byLength }, "the checksum's length does not match os_hash_algo");
  }
  return { algorithm: byLength, value: value.toLowerCase() };
}
