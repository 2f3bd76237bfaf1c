/**
 * `log.collect_system_logs`: a base64 string of a gzipped tar holding the
 * journal, the kernel log and the output of the diagnostic commands IPA
 * runs, one member per command.
 *
 * - A command that is missing, fails to start, times out or exits non-zero
 *   adds a `<member>.error` note saying so (its output, if any, is kept too).
 * - Without journalctl the files under /var/log are bundled instead, as IPA
 *   does.
 * - Size is bounded: each member keeps at most `maxMemberBytes` (the newest
 *   part of logs, the start of everything else) and the whole tar, before
 *   gzip, stays within `maxBytes` (default 16 MiB). What did not fit is
 *   listed in `ironbus-truncated.txt`.
 */
import type { Dirent } from "node:fs";
import { open, readdir } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { gzip as gzipCb } from "node:zlib";

import type { CommandRunner } from "../exec.js";
import { CommandError, isAbortError } from "../exec.js";
import { parseUdevRecord } from "../inventory/udev.js";
import { HostFs } from "../inventory/sysfs.js";
import type { TarEntry } from "./tar.js";
import { END_SIZE, createTar, entrySize } from "./tar.js";

export { parseTar } from "./tar.js";
export type { TarEntry, TarMember } from "./tar.js";

const gzip = promisify(gzipCb);

export const DEFAULT_MAX_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_MEMBER_BYTES = 4 * 1024 * 1024;
/** Lines of the current boot's journal. */
export const JOURNAL_LINES = 10_000;
const TRUNCATION_NOTE = "ironbus-truncated.txt";
const NOTE_RESERVE = 512 + 4096;
const MAX_LOG_FILES = 256;

export interface CollectSystemLogsOptions {
  run: CommandRunner;
  /** More files (or directories, walked) to include, stored under their path without the leading "/". */
  extraFiles?: string[];
  signal?: AbortSignal;
  /** Bound on the tar before gzip. Default 16 MiB. */
  maxBytes?: number;
  /** Bound on one member's content. Default 4 MiB. */
  maxMemberBytes?: number;
  /** Time limit per command. Default 30 s. */
  commandTimeoutMs?: number;
  /** Root for /proc, /etc, /run, /sys and /var/log reads. Default "/". */
  sysRoot?: string;
}

type Keep = "head" | "tail";

interface CommandSpec {
  member: string;
  cmd: string;
  args: string[];
  keep: Keep;
}

/**
 * The command set, members named as IPA names them, plus dmidecode. The
 * order is the packing priority when the size budget runs out.
 */
export const LOG_COMMANDS: readonly CommandSpec[] = [
  { member: "ip_addr", cmd: "ip", args: ["addr"], keep: "head" },
  { member: "df", cmd: "df", args: ["-a"], keep: "head" },
  { member: "mount", cmd: "mount", args: [], keep: "head" },
  {
    member: "lsblk",
    cmd: "lsblk",
    args: ["--all", "-oKNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,LOG-SEC,PHY-SEC,TRAN"],
    keep: "head",
  },
  { member: "lsblk-full", cmd: "lsblk", args: ["--all", "--bytes", "--output-all", "--pairs"], keep: "head" },
  { member: "parted", cmd: "parted", args: ["-s", "-l"], keep: "head" },
  { member: "multipath", cmd: "multipath", args: ["-ll"], keep: "head" },
  { member: "efibootmgr", cmd: "efibootmgr", args: ["-v"], keep: "head" },
  { member: "iptables", cmd: "iptables", args: ["-L", "-n"], keep: "head" },
  { member: "dmesg", cmd: "dmesg", args: [], keep: "tail" },
  {
    member: "journal",
    cmd: "journalctl",
    args: ["-a", "--full", "--no-pager", "-b", "-n", String(JOURNAL_LINES)],
    keep: "tail",
  },
  { member: "ps", cmd: "ps", args: ["aux"], keep: "head" },
  { member: "dmidecode", cmd: "dmidecode", args: [], keep: "head" },
  { member: "lshw", cmd: "lshw", args: ["-quiet", "-json"], keep: "head" },
];

/** Small files copied as-is: member name -> host path. */
const LOG_FILES: ReadonlyArray<readonly [string, string]> = [
  ["cmdline", "/proc/cmdline"],
  ["os-release", "/etc/os-release"],
  ["mdstat", "/proc/mdstat"],
  ["meminfo", "/proc/meminfo"],
  ["cpuinfo", "/proc/cpuinfo"],
];

interface Member {
  name: string;
  data: Buffer;
  keep: Keep;
}

function marker(dropped: number, keep: Keep): Buffer {
  return Buffer.from(
    keep === "tail"
      ? `[ironbus: ${dropped} earlier bytes dropped]\n`
      : `\n[ironbus: ${dropped} further bytes dropped]\n`,
  );
}

/**
 * Cut `data` to at most `max` bytes, keeping its start or its end, with a
 * marker saying how much went. `total` is the size of the original when
 * `data` is already a window of it.
 */
function clip(data: Buffer, max: number, keep: Keep, total = data.length): Buffer {
  if (total <= max && data.length <= max) return data;
  // The marker cannot be longer than one naming `total` dropped bytes.
  const keepLen = Math.min(data.length, Math.max(0, max - marker(total, keep).length));
  const mark = marker(total - keepLen, keep);
  const out =
    keep === "tail"
      ? Buffer.concat([mark, data.subarray(data.length - keepLen)])
      : Buffer.concat([data.subarray(0, keepLen), mark]);
  return out.length > max ? out.subarray(0, max) : out;
}

function errorNote(spec: { member: string; cmd: string; args: readonly string[] }, lines: string[]): Member {
  const text = [`command: ${[spec.cmd, ...spec.args].join(" ")}`, ...lines, ""].join("\n");
  return { name: `${spec.member}.error`, data: Buffer.from(text), keep: "head" };
}

async function runSpec(
  run: CommandRunner,
  spec: CommandSpec,
  opts: { signal: AbortSignal | undefined; timeoutMs: number; maxMember: number },
): Promise<{ members: Member[]; missing: boolean }> {
  try {
    const res = await run(spec.cmd, spec.args, {
      timeoutMs: opts.timeoutMs,
      maxBuffer: Math.max(opts.maxMember * 4, 1024 * 1024),
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    });
    const members: Member[] = [];
    if (res.stdout !== "" || res.code === 0) {
      members.push({ name: spec.member, data: Buffer.from(res.stdout), keep: spec.keep });
    }
    if (res.code !== 0) {
      members.push(errorNote(spec, [`exit code: ${res.code}`, "stderr:", res.stderr.trimEnd()]));
    }
    return { members, missing: false };
  } catch (err) {
    if (isAbortError(err) && opts.signal?.aborted === true) throw err;
    const code = err instanceof CommandError ? err.code : "ERROR";
    const message = err instanceof Error ? err.message : String(err);
    const members: Member[] = [];
    if (err instanceof CommandError && err.stdout !== "") {
      members.push({ name: spec.member, data: Buffer.from(err.stdout), keep: spec.keep });
    }
    members.push(errorNote(spec, [`error: ${code}`, `message: ${message}`]));
    return { members, missing: code === "ENOENT" };
  }
}

/** Read at most `max` bytes of a file: its end for logs, its start otherwise. */
async function readBounded(file: string, max: number, keep: Keep): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${file}: not a regular file`);
    // /proc files report size 0: read them in chunks up to the limit.
    if (st.size === 0) {
      const chunks: Buffer[] = [];
      let total = 0;
      for (;;) {
        const chunk = Buffer.alloc(64 * 1024);
        const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        chunks.push(chunk.subarray(0, bytesRead));
        total += bytesRead;
        if (total > max) break;
      }
      return clip(Buffer.concat(chunks), max, keep);
    }
    const length = Math.min(st.size, max);
    const position = keep === "tail" ? st.size - length : 0;
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, position);
    const data = buf.subarray(0, bytesRead);
    return clip(data, max, keep, st.size);
  } finally {
    await fh.close();
  }
}

/** Regular files under a directory (or the file itself), depth-first, name order, bounded count. */
async function walkFiles(root: string, limit: number): Promise<string[]> {
  const out: string[] = [];
  const visit = async (p: string, depth: number): Promise<void> => {
    if (out.length >= limit || depth > 8) return;
    let entries: Dirent[];
    try {
      entries = await readdir(p, { withFileTypes: true });
    } catch {
      out.push(p); // not a directory (or unreadable): let the reader report it
      return;
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      if (out.length >= limit) return;
      const child = path.join(p, e.name);
      if (e.isDirectory()) await visit(child, depth + 1);
      else if (e.isFile()) out.push(child);
    }
  };
  await visit(root, 0);
  return out;
}

async function fileMembers(
  localPath: string,
  memberName: string,
  maxMember: number,
  keep: Keep,
): Promise<Member[]> {
  try {
    return [{ name: memberName, data: await readBounded(localPath, maxMember, keep), keep }];
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const note = `file: ${localPath}\nerror: ${message}\n`;
    return [{ name: `${memberName}.error`, data: Buffer.from(note), keep: "head" }];
  }
}

async function udevMembers(fs: HostFs): Promise<Member[]> {
  const members: Member[] = [];
  for (const kname of await fs.list("/sys/class/block")) {
    const devnum = await fs.readTrim(`/sys/class/block/${kname}/dev`);
    if (devnum === null) continue;
    const record = await fs.read(`/run/udev/data/b${devnum}`);
    if (record === null) continue;
    members.push({ name: `udev/${kname}`, data: Buffer.from(JSON.stringify(parseUdevRecord(record))), keep: "head" });
  }
  return members;
}

/** Map `items` through `fn` with at most `limit` calls in flight, keeping their order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Fit members into the byte budget; what does not fit is cut or listed in a note. */
function assemble(members: readonly Member[], maxBytes: number, mtime: number): Buffer {
  const entries: TarEntry[] = [];
  const omitted: string[] = [];
  const cut: string[] = [];
  let used = 0;
  const budget = maxBytes - END_SIZE - NOTE_RESERVE;
  for (const m of members) {
    const room = budget - used - 512;
    if (room < 1024) {
      omitted.push(m.name);
      continue;
    }
    let data = m.data;
    if (entrySize(data.length) > budget - used) {
      data = clip(data, Math.floor(room / 512) * 512, m.keep);
      cut.push(m.name);
    }
    entries.push({ name: m.name, data, mtime });
    used += entrySize(data.length);
  }
  if (omitted.length > 0 || cut.length > 0) {
    let text = `Bundle limited to ${maxBytes} bytes before compression.\n`;
    if (cut.length > 0) text += `Shortened: ${cut.join(", ")}\n`;
    if (omitted.length > 0) text += `Omitted: ${omitted.join(", ")}\n`;
    entries.push({ name: TRUNCATION_NOTE, data: clip(Buffer.from(text), 4096, "head"), mtime });
  }
  return createTar(entries);
}

/** Build the bundle; resolves to base64(gzip(tar)). Rejects only when `signal` aborts. */
export async function collectSystemLogs(opts: CollectSystemLogsOptions): Promise<string> {
  const { run, signal } = opts;
  const maxBytes = Math.max(opts.maxBytes ?? DEFAULT_MAX_BYTES, 16 * 1024);
  const maxMember = Math.max(1024, Math.min(opts.maxMemberBytes ?? DEFAULT_MAX_MEMBER_BYTES, maxBytes));
  const timeoutMs = opts.commandTimeoutMs ?? 30_000;
  const fs = new HostFs(opts.sysRoot ?? "/");
  signal?.throwIfAborted();

  const results = await mapLimit(LOG_COMMANDS, 4, (spec) => runSpec(run, spec, { signal, timeoutMs, maxMember }));
  signal?.throwIfAborted();

  const byName = new Map<string, Member[]>();
  let journalMissing = false;
  LOG_COMMANDS.forEach((spec, i) => {
    const r = results[i];
    if (r === undefined) return;
    byName.set(spec.member, r.members);
    if (spec.cmd === "journalctl" && r.missing) journalMissing = true;
  });

  const members: Member[] = [];
  for (const [name, hostPath] of LOG_FILES) {
    members.push(...(await fileMembers(fs.p(hostPath), name, maxMember, "head")));
  }
  // Small command outputs first, then the logs, the bulky lshw and extras last.
  for (const spec of LOG_COMMANDS) {
    if (spec.member === "lshw") continue;
    members.push(...(byName.get(spec.member) ?? []));
  }
  members.push(...(await udevMembers(fs)));
  if (journalMissing) {
    for (const file of await walkFiles(fs.p("/var/log"), MAX_LOG_FILES)) {
      const host = fs.toHost(file) ?? file;
      members.push(...(await fileMembers(file, host.replace(/^\/+/, ""), maxMember, "tail")));
    }
  }
  members.push(...(byName.get("lshw") ?? []));
  for (const extra of opts.extraFiles ?? []) {
    for (const file of await walkFiles(extra, MAX_LOG_FILES)) {
      members.push(...(await fileMembers(file, file.replace(/^\/+/, ""), maxMember, "tail")));
    }
  }
  signal?.throwIfAborted();

  const bounded = members.map((m) => ({ ...m, data: clip(m.data, maxMember, m.keep) }));
  const tar = assemble(bounded, maxBytes, Math.floor(Date.now() / 1000));
  const gz = await gzip(tar);
  return gz.toString("base64");
}
