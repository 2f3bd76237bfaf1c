/**
 * The inject_files deploy step, after IPA's: write or delete files on the deployed disk. Each file
 * names its partition (a number on the install disk, or a device path), or the partition is found
 * by mounting each one in turn and looking for the path's top directory (`/etc/x/y` → a partition
 * with an `etc` directory). Files from node.properties.inject_files come first.
 *
 * Paths are resolved inside the mounted file system: a symlink in the image (even an absolute one)
 * never leads a write out of it.
 */
import { chmod, chown, lstat, mkdir, readlink, stat, unlink, writeFile } from "node:fs/promises";
import { join, normalize } from "node:path";
import type { Json, JsonObject } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { AgentState } from "../extensions/basic.js";
import { allowedDisks, type BlockEnv, isLvm, listPartitions, partitionPath, probe, rescan, withMount } from "./blockdev.js";
import { osInstallDevice } from "../disk/part.js";
import { rootHintsOf } from "../disk/root.js";
import { asObject } from "./node.js";
import { deviceNotFound } from "./errors.js";

const FIELDS = new Set(["path", "partition", "content", "deleted", "mode", "dirmode", "owner", "group"]);

export interface InjectedFile {
  readonly path: string;
  readonly partition?: string | number | undefined;
  readonly content?: string | undefined;
  readonly deleted?: boolean | undefined;
  readonly mode?: number | undefined;
  readonly dirmode?: number | undefined;
  readonly owner?: number | undefined;
  readonly group?: number | undefined;
}

const invalid = (details: string): AgentError => new AgentError("INVALID_PARAMS", details);

/** IPA's _validate_files: both lists, known fields, a path, numbers where numbers go. */
export function validateFiles(fromProperties: Json | undefined, fromArgs: Json | undefined): InjectedFile[] {
  const props = fromProperties ?? [];
  const args = fromArgs ?? [];
  if (!Array.isArray(props)) throw invalid(`The \`inject_files\` node property must be a list, got ${typeof props}`);
  if (!Array.isArray(args)) throw invalid(`The \`files\` argument must be a list, got ${typeof args}`);
  const failures: string[] = [];
  const out: InjectedFile[] = [];
  for (const item of [...props, ...args]) {
    const fl = asObject(item);
    const shown = JSON.stringify(item);
    if (fl === undefined) {
      failures.push(`expected an object, got ${shown}`);
      continue;
    }
    const unknown = Object.keys(fl).filter((k) => !FIELDS.has(k));
    if (unknown.length > 0) failures.push(`unexpected fields in ${shown}: ${unknown.join(", ")}`);
    const path = fl["path"];
    const partition = fl["partition"];
    if (typeof path !== "string" || path === "") failures.push(`expected a path in ${shown}`);
    else if (!path.startsWith("/")) failures.push(`${shown}: the path must be absolute`);
    else if (path.endsWith("/")) failures.push(`directories not supported for ${shown}`);
    else if (path.lastIndexOf("/") === 0 && (partition === undefined || partition === null || partition === "")) failures.push(`${shown} in root directory requires "partition"`);
    if (fl["content"] && fl["deleted"]) failures.push(`content cannot be used with deleted in ${shown}`);
    if (!fl["deleted"] && typeof fl["content"] !== "string") failures.push(`expected content (base64) or deleted in ${shown}`);
    for (const field of ["owner", "group", "mode", "dirmode"]) {
      if (field in fl && !Number.isInteger(fl[field])) failures.push(`${field} must be a number in ${shown}`);
    }
    if (partition !== undefined && partition !== null && typeof partition !== "string" && !Number.isInteger(partition)) failures.push(`partition must be a number or a device in ${shown}`);
    if (typeof fl["content"] === "string" && fl["content"].includes("://")) failures.push(`content URLs are not supported by ironbus, send base64 in ${shown}`);
    const opt = <T>(v: Json | undefined, f: (x: Json) => T): T | undefined => (v === undefined || v === null ? undefined : f(v));
    out.push({
      path: String(path),
      partition: opt(partition, (x) => (typeof x === "number" ? x : String(x))),
      content: opt(fl["content"], String),
      deleted: fl["deleted"] === true,
      mode: opt(fl["mode"], Number),
      dirmode: opt(fl["dirmode"], Number),
      owner: opt(fl["owner"], Number),
      group: opt(fl["group"], Number),
    });
  }
  if (failures.length > 0) throw invalid(`Validation of files failed: ${failures.join("; ")}`);
  return out;
}

/**
 * Resolves `rel` under `root` the way a chroot would: `..` stops at the root, and symlinks,
 * absolute ones included, are followed inside it. Components that do not exist are kept as given.
 */
export async function resolveInRoot(root: string, rel: string, followLast = true): Promise<string> {
  const pending = rel.split("/").filter((p) => p !== "" && p !== ".");
  const done: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const part = pending.shift() as string;
    if (part === "..") {
      done.pop();
      continue;
    }
    if (pending.length === 0 && !followLast) {
      done.push(part);
      break;
    }
    const here = join(root, ...done, part);
    const st = await lstat(here).catch(() => undefined);
    if (st?.isSymbolicLink() === true) {
      if (++hops > 40) throw new AgentError("COMMAND_FAILED", `too many symbolic links under ${join(root, rel)}`);
      const target = await readlink(here);
      if (target.startsWith("/")) done.length = 0;
      pending.unshift(...target.split("/").filter((p) => p !== "" && p !== "."));
      continue;
    }
    done.push(part);
  }
  return join(root, ...done);
}

/**
 * The install disk: where prepare_image put the root partition; else the disk area's choice
 * (get_os_install_device: root device hints, skip list) when the node has hints; else the one
 * allowed disk; else the disk area's default choice. Always one the guard allows.
 */
export async function installDisk(env: BlockEnv, state: AgentState, node: JsonObject | null): Promise<string> {
  const partitions = asObject(state.partitionUuids["partitions"]);
  const root = partitions?.["root"];
  if (typeof root === "string") {
    const disk = await env.guard.parentDisk(root);
    if (disk !== undefined) return env.guard.check(disk, "inject_files");
  }
  const choose = async (): Promise<string> => {
    const io = { run: env.run, signal: env.signal ?? new AbortController().signal, log: env.log };
    return env.guard.check((await osInstallDevice({ config: env.config, run: env.run }, io, node)).device, "inject_files");
  };
  if (rootHintsOf(node) !== null) return choose();
  const disks = await allowedDisks(env);
  if (disks.length === 1 && disks[0] !== undefined) return disks[0];
  return choose();
}

interface Located {
  readonly device: string;
  /** The path inside that file system, relative to its root. */
  readonly rel: string;
}

async function locate(env: BlockEnv, state: AgentState, node: JsonObject | null, fl: InjectedFile): Promise<Located> {
  const rel = normalize(fl.path).replace(/^\/+/, "");
  if (fl.partition !== undefined && fl.partition !== "") {
    const n = typeof fl.partition === "number" ? fl.partition : /^\d+$/.test(fl.partition) ? Number(fl.partition) : undefined;
    const device = n === undefined ? String(fl.partition) : partitionPath(await installDisk(env, state, node), n);
    return { device: await env.guard.check(device, "inject_files"), rel };
  }
  const slash = rel.indexOf("/");
  if (slash < 0) throw invalid(`Invalid path ${fl.path}, must be an absolute path to a file`);
  const top = rel.slice(0, slash);
  const scanned: string[] = [];
  const disks = await allowedDisks(env);
  for (const disk of disks) {
    await rescan(env, disk);
    for (const part of await listPartitions(env, disk)) {
      await env.guard.check(part.path, "inject_files");
      const info = await probe(env, part.path);
      if (isLvm(info) || info["TYPE"] === undefined || info["TYPE"] === "swap" || info["USAGE"] === "raid") continue;
      scanned.push(part.path);
      const found = await withMount(
        env,
        part.path,
        async (dir) => {
          const st = await stat(await resolveInRoot(dir, top)).catch(() => undefined);
          return st?.isDirectory() === true;
        },
        { readOnly: true },
      ).catch((err: unknown) => {
        env.log.warn({ partition: part.path, err }, "could not inspect partition");
        return false;
      });
      if (found) return { device: part.path, rel };
    }
  }
  throw deviceNotFound(`No partition found with path ${top}, scanned: [${scanned.join(", ")}]`);
}

async function injectOne(dir: string, fl: InjectedFile, rel: string): Promise<void> {
  if (fl.deleted === true) {
    const target = await resolveInRoot(dir, rel, false);
    await unlink(target).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
    return;
  }
  const target = await resolveInRoot(dir, rel);
  const parent = target.slice(0, target.lastIndexOf("/"));
  const existed = await stat(parent).then(
    () => true,
    () => false,
  );
  if (!existed) {
    await mkdir(parent, { recursive: true });
    // IPA sets dirmode on the leaf directory only, and only when it created it.
    if (fl.dirmode !== undefined) await chmod(parent, fl.dirmode);
  }
  await writeFile(target, Buffer.from(fl.content ?? "", "base64"));
  if (fl.mode !== undefined) await chmod(target, fl.mode);
  if (fl.owner !== undefined || fl.group !== undefined) await chown(target, fl.owner ?? -1, fl.group ?? -1);
}

/** Runs the step; returns what was written or deleted where. */
export async function injectFiles(env: BlockEnv, state: AgentState, node: JsonObject | null, files: Json | undefined): Promise<Array<{ path: string; device: string; deleted: boolean }>> {
  const list = validateFiles(asObject(node?.["properties"])?.["inject_files"], files);
  if (list.length === 0) {
    env.log.info("No files to inject");
    return [];
  }
  const done: Array<{ path: string; device: string; deleted: boolean }> = [];
  for (const fl of list) {
    const { device, rel } = await locate(env, state, node, fl);
    await withMount(env, device, async (dir) => {
      try {
        await injectOne(dir, fl, rel);
      } catch (err) {
        if (AgentError.is(err)) throw err;
        throw new AgentError("COMMAND_FAILED", `Failed to process file ${fl.path}: ${(err as Error).message}`, { cause: err });
      }
    });
    env.log.info({ path: fl.path, device, deleted: fl.deleted === true }, "file injected");
    done.push({ path: fl.path, device, deleted: fl.deleted === true });
  }
  return done;
}
