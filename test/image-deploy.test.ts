/**
 * Image deployment end to end: real images built here (sgdisk, mkfs.ext4, qemu-img, genisoimage),
 * served by a local HTTP server on 127.0.0.1, sent to a real agent over its REST API exactly as
 * Ironic sends them (standby.prepare_image, deploy.execute_deploy_step write_image), written onto real
 * loop devices; then the devices themselves are checked. Only loop devices made here are touched.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, request as httpRequest, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { gzipSync } from "node:zlib";
import { defineExtension } from "../core/command.js";
import { parseConfig } from "../core/config.js";
import type { Json, JsonObject, ProgressBody } from "../core/envelope.js";
import { silentLogger } from "../core/log.js";
import { Agent } from "../router/agent.js";
import { RestTransport } from "../transports/rest/server.js";
import { DeviceGuard } from "../utilities/disk/guard.js";
import { execRunner, hasTool } from "../utilities/exec.js";
import { newAgentState, standbyReadOnly } from "../utilities/extensions/basic.js";
import { stepExtension } from "../utilities/extensions/steps.js";
import { genericHardwareManager } from "../utilities/generic.js";
import { imagePart, type ImagePartOptions } from "../utilities/image/part.js";
import type { UtilityDeps } from "../utilities/part.js";
import { ManagerRegistry } from "../utilities/managers.js";
import { createLoopDevice, type LoopDevice } from "./helpers/loop.js";
import { startAgent, TOKEN } from "./helpers/agent.js";

const MIB = 1024 * 1024;
const TOOLS = ["losetup", "sgdisk", "parted", "partprobe", "wipefs", "blkid", "mkfs.ext4", "mkfs.vfat", "mkswap", "qemu-img", "genisoimage", "mount", "umount"];

async function missingTools(): Promise<string[]> {
  const out: string[] = [];
  for (const t of TOOLS) if (!(await hasTool(t))) out.push(t);
  return out;
}

const missing = await missingTools();
const skip = process.getuid?.() !== 0 ? "needs root (loop devices)" : missing.length > 0 ? `needs ${missing.join(", ")}` : false;

// ---------------------------------------------------------------------------------------------
// Fixtures: images built once

interface Fixtures {
  readonly dir: string;
  /** 8 MiB GPT disk, one ext4 partition holding hello.txt. */
  readonly wholeDisk: Buffer;
  /** 8 MiB msdos disk, one ext4 partition holding hello.txt (sgdisk -e leaves it as it is). */
  readonly mbrDisk: Buffer;
  readonly wholeDiskQcow2: Buffer;
  /** 8 MiB ext4 filesystem holding hello.txt (a partition image). */
  readonly partition: Buffer;
  readonly partitionQcow2: Buffer;
  /** ext4 labelled config-2 with openstack/latest/meta_data.json, gzip+base64. */
  readonly configdriveExt4: string;
  /** iso9660 labelled config-2, raw and gzip+base64. */
  readonly configdriveIso: Buffer;
  readonly configdriveIsoB64: string;
}

const META = JSON.stringify({ uuid: "7c0e8a4e-0000-4000-8000-000000000001", hostname: "ironbus-test" });

function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function sha256(buf: Uint8Array): string {
  return createHash("sha256").update(buf).digest("hex");
}

function finishFixtures(dir: string, partImg: string): Fixtures {
  const cdTree = join(dir, "cd");
  mkdirSync(join(cdTree, "openstack", "latest"), { recursive: true });
  writeFileSync(join(cdTree, "openstack", "latest", "meta_data.json"), META);
  const cdExt4 = join(dir, "cd.ext4");
  sh("mkfs.ext4", ["-q", "-F", "-L", "config-2", "-d", cdTree, cdExt4, "4M"]);
  const cdIso = join(dir, "cd.iso");
  sh("genisoimage", ["-quiet", "-V", "config-2", "-J", "-R", "-o", cdIso, cdTree]);
  const whole = readFileSync(join(dir, "whole.img"));
  const iso = readFileSync(cdIso);
  return {
    dir,
    wholeDisk: whole,
    mbrDisk: readFileSync(join(dir, "mbr.img")),
    wholeDiskQcow2: readFileSync(join(dir, "whole.qcow2")),
    partition: readFileSync(partImg),
    partitionQcow2: readFileSync(join(dir, "part.qcow2")),
    configdriveExt4: gzipSync(readFileSync(cdExt4)).toString("base64"),
    configdriveIso: iso,
    configdriveIsoB64: gzipSync(iso).toString("base64"),
  };
}

// ---------------------------------------------------------------------------------------------
// The image server

type Handler = (req: IncomingMessage, res: ServerResponse, hit: number) => void;

class ImageServer {
  private server: Server | undefined;
  readonly routes = new Map<string, Handler>();
  readonly hits = new Map<string, number>();
  readonly auth: Array<string | undefined> = [];
  url = "";

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const path = new URL(req.url ?? "/", "http://x").pathname;
      const hit = (this.hits.get(path) ?? 0) + 1;
      this.hits.set(path, hit);
      this.auth.push(req.headers.authorization);
      const handler = this.routes.get(path);
      if (handler === undefined) {
        res.writeHead(404).end("no such image");
        return;
      }
      handler(req, res, hit);
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Serves `body` with a Content-Length. */
  serve(path: string, body: Buffer | string): string {
    this.routes.set(path, (_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": Buffer.byteLength(body) }).end(body);
    });
    return `${this.url}${path}`;
  }

  hitsOf(path: string): number {
    return this.hits.get(path) ?? 0;
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

// ---------------------------------------------------------------------------------------------
// An agent with the image part and small retry delays

interface ImageAgent {
  readonly url: string;
  readonly progress: ProgressBody[];
  readonly deps: UtilityDeps;
}

async function imageAgent(t: TestContext, allowed: readonly string[], options: ImagePartOptions = {}): Promise<ImageAgent> {
  const config = parseConfig({ standalone: true, listenHost: "127.0.0.1", listenPort: 0, agentToken: TOKEN, allowDestructive: true, allowedDevices: [...allowed] });
  const log = silentLogger();
  const state = newAgentState();
  const deps = { config, run: execRunner, guard: new DeviceGuard({ allowDestructive: true, allowedDevices: [...allowed] }), state, log };
  const part = imagePart(deps, { retries: 2, retryDelayMs: 20, checksumRetries: 1, connectTimeoutMs: 2000, chunkTimeoutMs: 3000, progressIntervalMs: 0, ...options });
  const registry = await ManagerRegistry.create([genericHardwareManager({ run: execRunner, parts: [part] })], { log, allowDestructive: true });
  const extensions = [
    stepExtension("deploy", registry),
    stepExtension("service", registry),
    defineExtension("standby", {
      ...standbyReadOnly(execRunner, state),
      ...part.standby,
    }),
  ];
  const rest = new RestTransport({ host: "127.0.0.1", port: 0, log, requireTokenOnGet: false });
  const agent = new Agent({ config, log, extensions, transports: [rest] });
  await agent.start();
  t.after(() => agent.stop());
  const progress: ProgressBody[] = [];
  agent.onProgress((p) => progress.push(p));
  return { url: `http://127.0.0.1:${rest.address().port}`, progress, deps };
}

interface Reply {
  readonly status: number;
  readonly body: JsonObject;
}

async function command(url: string, name: string, params: JsonObject): Promise<Reply> {
  const res = await fetch(`${url}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, params }),
  });
  return { status: res.status, body: (await res.json()) as JsonObject };
}

function writeImageStep(imageInfo: JsonObject, node: JsonObject | null = null, configdrive: string | null = null): JsonObject {
  return { step: { interface: "deploy", step: "write_image", args: { image_info: imageInfo, configdrive } }, node, ports: [] };
}

function obj(v: Json | undefined): JsonObject {
  assert.ok(typeof v === "object" && v !== null && !Array.isArray(v), `expected an object, got ${JSON.stringify(v)}`);
  return v;
}

function assertSucceeded(r: Reply): JsonObject {
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body["command_status"], "SUCCEEDED", JSON.stringify(r.body["command_error"]));
  return obj(r.body["command_result"]);
}

function assertFailed(r: Reply, type: string): JsonObject {
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body["command_status"], "FAILED");
  const err = obj(r.body["command_error"]);
  assert.equal(err["type"], type, JSON.stringify(err));
  return err;
}

// ---------------------------------------------------------------------------------------------
// Looking at the devices

function readDevice(path: string, length: number, position = 0): Buffer {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

function deviceHash(path: string, bytes: number): string {
  return sha256(readDevice(path, bytes));
}

function blkid(path: string): Record<string, string> {
  let out = "";
  try {
    out = sh("blkid", ["-p", "-o", "export", path]);
  } catch {
    return {};
  }
  return Object.fromEntries(
    out
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

/**
 * A GPT whole-disk image on a larger device: `sgdisk -e` moved the backup GPT to the end, which rewrites
 * the protective MBR's size and the primary header (sectors 0-1); every other byte is the image's.
 */
function assertGptImageOnDevice(device: string, image: Buffer, opts: { partitionAdded?: boolean } = {}): void {
  const written = readDevice(device, image.length);
  // A configdrive partition added afterwards changes the partition entries too (sectors 2-33).
  const from = opts.partitionAdded === true ? 34 * 512 : 1024;
  assert.equal(sha256(written.subarray(from)), sha256(image.subarray(from)), "every byte after the primary GPT is the image's");
  if (opts.partitionAdded === true) assert.deepEqual(written.subarray(1024, 1024 + 128), image.subarray(1024, 1024 + 128), "first partition entry unchanged");
  assert.equal(sha256(written.subarray(0, 446)), sha256(image.subarray(0, 446)), "boot code unchanged");
  const verify = sgdiskVerify(device);
  assert.match(verify, /No problems found/, verify);
  assert.doesNotMatch(verify, /doesn't reside/);
}

function sgdiskVerify(path: string): string {
  return sh("sgdisk", ["-v", path]);
}

/** Mounts read-only in a temp dir, unmounted in t.after (also on failure). */
function mountRo(t: TestContext, device: string): string {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-image-mnt-"));
  sh("mount", ["-o", "ro", device, dir]);
  t.after(() => {
    try {
      sh("umount", [dir]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return dir;
}

function canMount(fs: string): boolean {
  return readFileSync("/proc/filesystems", "utf8").split("\n").some((l) => l.trim().split(/\s+/).pop() === fs);
}

function loop(t: TestContext, mib: number): LoopDevice {
  return createLoopDevice(mib, t);
}

function sha256Info(url: string, image: Buffer, extra: JsonObject = {}): JsonObject {
  return { id: url.split("/").pop() ?? "image", urls: [url], disk_format: "raw", stream_raw_images: true, os_hash_algo: "sha256", os_hash_value: sha256(image), ...extra };
}

// ---------------------------------------------------------------------------------------------

describe("image deployment onto loop devices", { skip }, () => {
  let fx: Fixtures;
  const server = new ImageServer();

  before(async () => {
    fx = buildAllFixtures();
    await server.start();
  });
  after(async () => {
    await server.close();
    if (fx !== undefined) rmSync(fx.dir, { recursive: true, force: true });
  });

  it("standby.prepare_image through the agent's own parts: raw whole-disk image streamed, backup GPT moved, partition readable, progress, get_partition_uuids", async (t) => {
    const dev = loop(t, 64);
    const url = server.serve("/whole.img", fx.wholeDisk);
    const a = await startAgent({ config: { allowDestructive: true, allowedDevices: [dev.path] } });
    t.after(() => a.close());
    const progress: ProgressBody[] = [];
    a.agent.onProgress((p) => progress.push(p));
    // With no root device hint the default policy picks this machine's own disk (our 64 MiB loop
    // device is under its 4 GiB floor): the guard refuses it and nothing is written anywhere.
    const before = deviceHash(dev.path, 64 * MIB);
    const unhinted = await command(a.url, "standby.prepare_image", { image_info: sha256Info(url, fx.wholeDisk) });
    assert.equal(unhinted.body["command_status"], "FAILED");
    assert.equal(deviceHash(dev.path, 64 * MIB), before);
    // Standalone, the node (and its root device hint) comes from poll.set_node_info.
    const set = await command(a.url, "poll.set_node_info", { node_info: { uuid: "n0", instance_info: { root_device: { name: dev.path } } } });
    assert.equal(set.body["command_status"], "SUCCEEDED");
    const result = assertSucceeded(await command(a.url, "standby.prepare_image", { image_info: sha256Info(url, fx.wholeDisk) }));
    const ident = `0x${readDevice(dev.path, 4, 440).readUInt32LE(0).toString(16).padStart(8, "0")}`;
    assert.equal(result["result"], `prepare_image: image (whole.img) written to device ${dev.path} root_uuid=${ident}`);
    assertGptImageOnDevice(dev.path, fx.wholeDisk);
    const p1 = blkid(`${dev.path}p1`);
    assert.equal(p1["TYPE"], "ext4");
    assert.equal(p1["LABEL"], "imgroot");
    const dir = mountRo(t, `${dev.path}p1`);
    assert.equal(readFileSync(join(dir, "hello.txt"), "utf8"), "written by ironbus\n");
    const uuids = assertSucceeded(await command(a.url, "standby.get_partition_uuids", {}));
    assert.deepEqual(uuids, { "root uuid": ident });
    const writes = progress.filter((p) => p.stage === "write" && (p.bytes_done ?? 0) > 0);
    assert.ok(writes.length > 0, "progress events of the write");
    const last = writes[writes.length - 1];
    assert.equal(last?.bytes_done, fx.wholeDisk.length);
    assert.equal(last?.bytes_total, fx.wholeDisk.length);
    assert.equal(last?.percent, 100);
    assert.ok((last?.rate_bps ?? 0) > 0);
    assert.ok(progress.some((p) => p.stage === "done"));
  });

  it("deploy.execute_deploy_step write_image: node name hint, checksums-file URL, configdrive (ext4 config-2) in the last 64 MiB, mountable", async (t) => {
    const dev = loop(t, 128);
    const other = loop(t, 16);
    const url = server.serve("/images/disk-1.img", fx.wholeDisk);
    const sums = server.serve(
      "/images/SHA256SUMS",
      `# checksums\n${sha256(Buffer.from("other"))}  other.img\n${sha256(fx.wholeDisk)}  disk-1.img\n`,
    );
    const agent = await imageAgent(t, [dev.path, other.path]);
    const info = { id: "disk-1", urls: [url], disk_format: "raw", container_format: null, stream_raw_images: true, checksum: sums, node_uuid: "n1" };
    const node = { uuid: "n1", properties: { root_device: { name: dev.path } }, instance_info: {} };
    const result = assertSucceeded(await command(agent.url, "deploy.execute_deploy_step", writeImageStep(info, node, fx.configdriveExt4)));
    const deployResult = obj(result["deploy_result"]);
    assert.match(String(deployResult["result"]), /^prepare_image: image \(disk-1\) written to device \/dev\/loop\d+ root_uuid=0x[0-9a-f]{8}$/);
    assert.deepEqual(obj(result["deploy_step"])["step"], "write_image");
    assertGptImageOnDevice(dev.path, fx.wholeDisk, { partitionAdded: true });
    // The configdrive partition: the last 64 MiB, labelled config-2, holding meta_data.json.
    const p2 = blkid(`${dev.path}p2`);
    assert.equal(p2["LABEL"], "config-2");
    assert.equal(p2["TYPE"], "ext4");
    const sectors = 512;
    const end = (Number(p2["PART_ENTRY_OFFSET"]) + Number(p2["PART_ENTRY_SIZE"])) * sectors;
    assert.ok(dev.sizeBytes - end < MIB, "ends at the end of the disk (before the backup GPT)");
    assert.ok(Number(p2["PART_ENTRY_SIZE"]) * sectors >= 63 * MIB);
    const dir = mountRo(t, `${dev.path}p2`);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, "openstack", "latest", "meta_data.json"), "utf8")), JSON.parse(META));
    assert.equal(server.hitsOf("/images/SHA256SUMS"), 1);
  });

  it("msdos whole-disk image, stream_raw_images false: cached then written; the configdrive (iso9660) goes into a new primary partition at the end", async (t) => {
    const dev = loop(t, 96);
    const url = server.serve("/mbr.img", fx.mbrDisk);
    const agent = await imageAgent(t, [dev.path], { cacheDir: join(fx.dir, "cache") });
    const info = sha256Info(url, fx.mbrDisk, { stream_raw_images: false, configdrive: fx.configdriveIsoB64 });
    const result = assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: info }));
    const ident = `0x${fx.mbrDisk.readUInt32LE(440).toString(16).padStart(8, "0")}`;
    assert.equal(result["result"], `prepare_image: image (mbr.img) written to device ${dev.path} root_uuid=${ident}`);
    // The configdrive's entry is added to the MBR's table (bytes 446-509); every other byte is the image's.
    const written = readDevice(dev.path, fx.mbrDisk.length);
    assert.equal(sha256(written.subarray(512)), sha256(fx.mbrDisk.subarray(512)));
    assert.deepEqual(written.subarray(0, 446 + 16), fx.mbrDisk.subarray(0, 446 + 16), "boot code, disk identifier and the first entry unchanged");
    const p2 = blkid(`${dev.path}p2`);
    assert.equal(p2["PART_ENTRY_SCHEME"], "dos");
    assert.equal(p2["LABEL"], "config-2");
    assert.equal(p2["TYPE"], "iso9660");
    const end = (Number(p2["PART_ENTRY_OFFSET"]) + Number(p2["PART_ENTRY_SIZE"])) * 512;
    assert.ok(dev.sizeBytes - end < MIB && Number(p2["PART_ENTRY_SIZE"]) * 512 >= 63 * MIB, "the last 64 MiB");
    assert.equal(sha256(readDevice(`${dev.path}p2`, fx.configdriveIso.length)), sha256(fx.configdriveIso));
    if (canMount("iso9660")) {
      const dir = mountRo(t, `${dev.path}p2`);
      assert.deepEqual(JSON.parse(readFileSync(join(dir, "openstack", "latest", "meta_data.json"), "utf8")), JSON.parse(META));
    } else {
      t.diagnostic("this kernel has no iso9660: the test-mount failed, the rebuild could not read the ISO either, so it was left as written (IPA's behaviour)");
    }
    assert.deepEqual(assertSucceeded(await command(agent.url, "standby.get_partition_uuids", {})), { "root uuid": ident });
    assert.ok(agent.progress.some((p) => p.stage === "download") && agent.progress.some((p) => p.stage === "configdrive"));
  });

  it("qcow2 whole-disk image: cached, inspected, converted by qemu-img onto the device", async (t) => {
    const dev = loop(t, 32);
    const url = server.serve("/whole.qcow2", fx.wholeDiskQcow2);
    const agent = await imageAgent(t, [dev.path], { cacheDir: join(fx.dir, "cache") });
    const info = { id: "whole.qcow2", urls: [url], disk_format: "qcow2", checksum: sha256(fx.wholeDiskQcow2) };
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: info }));
    assertGptImageOnDevice(dev.path, fx.wholeDisk);
    assert.ok(agent.progress.some((p) => p.stage === "convert"));
    assert.ok(agent.progress.some((p) => p.stage === "download" && p.bytes_done === fx.wholeDiskQcow2.length));
    assert.deepEqual(readdirSafe(join(fx.dir, "cache")), [], "the cached image is removed");
  });

  it("partition image, UEFI: ESP, ephemeral, swap, configdrive, root last; get_partition_uuids from the device", async (t) => {
    const dev = loop(t, 600);
    const url = server.serve("/part.img", fx.partition);
    const agent = await imageAgent(t, [dev.path]);
    const info = sha256Info(url, fx.partition, {
      image_type: "partition",
      root_mb: 16,
      swap_mb: 8,
      ephemeral_mb: 8,
      ephemeral_format: "ext4",
      deploy_boot_mode: "uefi",
      preserve_ephemeral: false,
    });
    const reply = await command(agent.url, "standby.prepare_image", { image_info: info, configdrive: fx.configdriveIsoB64 });
    const result = assertSucceeded(reply);
    const want: Array<[string, string, string | undefined, string | undefined]> = [
      ["p1", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "vfat", "efi-part"],
      ["p2", "0fc63daf-8483-4772-8e79-3d69d8477de4", "ext4", "ephemeral0"],
      ["p3", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "swap", "swap1"],
      ["p4", "0fc63daf-8483-4772-8e79-3d69d8477de4", "iso9660", "config-2"],
      ["p5", "0fc63daf-8483-4772-8e79-3d69d8477de4", "ext4", "rootfs"],
    ];
    for (const [p, type, fs, label] of want) {
      const b = blkid(`${dev.path}${p}`);
      assert.equal(b["PART_ENTRY_SCHEME"], "gpt");
      assert.equal(b["PART_ENTRY_TYPE"], type, p);
      assert.equal(b["TYPE"], fs, p);
      assert.equal(b["LABEL"], label, p);
    }
    assert.equal(blkid(`${dev.path}p6`)["PART_ENTRY_NUMBER"], undefined, "five partitions");
    assert.equal(Number(blkid(`${dev.path}p1`)["PART_ENTRY_SIZE"]) * 512, 550 * MIB);
    assert.equal(Number(blkid(`${dev.path}p5`)["PART_ENTRY_SIZE"]) * 512, 16 * MIB);
    assert.match(sgdiskVerify(dev.path), /No problems found/);
    assert.equal(deviceHash(`${dev.path}p5`, fx.partition.length), sha256(fx.partition), "root holds the image");
    assert.equal(sha256(readDevice(`${dev.path}p4`, fx.configdriveIso.length)), sha256(fx.configdriveIso), "configdrive written as is");
    const rootUuid = blkid(`${dev.path}p5`)["UUID"];
    const espUuid = blkid(`${dev.path}p1`)["UUID"];
    assert.equal(result["result"], `prepare_image: image (part.img) written to device ${dev.path} root_uuid=${rootUuid} efi_system_partition_uuid=${espUuid}`);
    const uuids = assertSucceeded(await command(agent.url, "standby.get_partition_uuids", {}));
    assert.deepEqual(uuids, {
      partitions: {
        "efi system partition": `${dev.path}p1`,
        ephemeral: `${dev.path}p2`,
        swap: `${dev.path}p3`,
        configdrive: `${dev.path}p4`,
        root: `${dev.path}p5`,
      },
      "root uuid": rootUuid ?? null,
      "efi system partition uuid": espUuid ?? null,
    });
    if (canMount("ext4")) {
      const dir = mountRo(t, `${dev.path}p5`);
      assert.equal(readFileSync(join(dir, "hello.txt"), "utf8"), "written by ironbus\n");
    }
  });

  it("partition image, BIOS (msdos, qcow2 image converted into the root partition): swap then root with the boot flag", async (t) => {
    const dev = loop(t, 48);
    const url = server.serve("/part.qcow2", fx.partitionQcow2);
    const agent = await imageAgent(t, [dev.path], { cacheDir: join(fx.dir, "cache") });
    const info = { id: "part.qcow2", urls: [url], disk_format: "qcow2", os_hash_algo: "sha512", os_hash_value: createHash("sha512").update(fx.partitionQcow2).digest("hex"), image_type: "partition", root_mb: 16, swap_mb: 4, deploy_boot_mode: "bios" };
    const result = assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: info }));
    const p1 = blkid(`${dev.path}p1`);
    const p2 = blkid(`${dev.path}p2`);
    assert.equal(p1["PART_ENTRY_SCHEME"], "dos");
    assert.equal(p1["PART_ENTRY_TYPE"], "0x82");
    assert.equal(p1["TYPE"], "swap");
    assert.equal(p1["LABEL"], "swap1");
    assert.equal(p2["PART_ENTRY_TYPE"], "0x83");
    assert.equal(p2["PART_ENTRY_FLAGS"], "0x80", "root is bootable");
    assert.equal(p2["TYPE"], "ext4");
    assert.equal(deviceHash(`${dev.path}p2`, fx.partition.length), sha256(fx.partition));
    assert.equal(result["result"], `prepare_image: image (part.qcow2) written to device ${dev.path} root_uuid=${p2["UUID"] ?? ""}`);
    const uuids = assertSucceeded(await command(agent.url, "standby.get_partition_uuids", {}));
    assert.deepEqual(uuids, { partitions: { swap: `${dev.path}p1`, root: `${dev.path}p2` }, "root uuid": p2["UUID"] ?? null, "efi system partition uuid": null });
  });

  it("partition image, BIOS on GPT (disk_label capability): bios_grub first", async (t) => {
    const dev = loop(t, 32);
    const url = server.serve("/part2.img", fx.partition);
    const agent = await imageAgent(t, [dev.path]);
    const node = { uuid: "n2", properties: { capabilities: "boot_mode:bios,disk_label:gpt" }, instance_info: {} };
    const info = sha256Info(url, fx.partition, { image_type: "partition", root_mb: 16 });
    assertSucceeded(await command(agent.url, "deploy.execute_deploy_step", writeImageStep(info, node)));
    const p1 = blkid(`${dev.path}p1`);
    assert.equal(p1["PART_ENTRY_TYPE"], "21686148-6449-6e6f-744e-656564454649");
    assert.equal(Number(p1["PART_ENTRY_SIZE"]) * 512, MIB);
    assert.equal(blkid(`${dev.path}p2`)["TYPE"], "ext4");
    assert.equal(deviceHash(`${dev.path}p2`, fx.partition.length), sha256(fx.partition));
  });

  it("a configdrive that does not mount (ext4 of 1 KiB blocks on a 4K-sector disk) is rebuilt as vfat CONFIG-2", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-4k-"));
    const file = join(dir, "disk.img");
    writeFileSync(file, "");
    execFileSync("truncate", ["-s", "64M", file]);
    const dev = sh("losetup", ["-f", "--show", "-P", "-b", "4096", file]).trim();
    assert.match(dev, /^\/dev\/loop\d+$/);
    t.after(() => {
      try {
        sh("losetup", ["-d", dev]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
    const url = server.serve("/part4k.img", fx.partition);
    const agent = await imageAgent(t, [dev]);
    const info = sha256Info(url, fx.partition, { image_type: "partition", root_mb: 16, deploy_boot_mode: "bios", disk_label: "gpt" });
    const reply = await command(agent.url, "standby.prepare_image", { image_info: info, configdrive: fx.configdriveExt4 });
    // p1 bios_grub, p2 configdrive, p3 root
    const cd = blkid(`${dev}p2`);
    assert.equal(cd["TYPE"], "vfat", "rebuilt as vfat");
    assert.equal(cd["LABEL"], "CONFIG-2");
    if (canMount("vfat")) {
      assertSucceeded(reply);
      const mnt = mountRo(t, `${dev}p2`);
      assert.deepEqual(JSON.parse(readFileSync(join(mnt, "openstack", "latest", "meta_data.json"), "utf8")), JSON.parse(META));
    } else {
      // This kernel cannot mount vfat: the copy into the new filesystem fails, and says so.
      const err = assertFailed(reply, "DeploymentError");
      assert.match(String(err["details"]), /re-create the configuration drive/);
      t.diagnostic("no vfat in this kernel: the rebuild's copy step failed as expected");
    }
  });

  it("a 503 then a 200: retried, and written (an image whose size is not a multiple of 4 KiB: the tail is written too)", async (t) => {
    const dev = loop(t, 16);
    const odd = Buffer.concat([fx.mbrDisk, randomBytes(1234)]);
    server.routes.set("/flaky.img", (_req, res, hit) => {
      if (hit <= 2) res.writeHead(503).end("busy");
      else res.writeHead(200, { "content-length": odd.length }).end(odd);
    });
    const agent = await imageAgent(t, [dev.path]);
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(`${server.url}/flaky.img`, odd) }));
    assert.equal(server.hitsOf("/flaky.img"), 3);
    assert.equal(deviceHash(dev.path, odd.length), sha256(odd));
  });

  it("a 404 fails at once, without touching the device; the next URL is never tried", async (t) => {
    const dev = loop(t, 16);
    execFileSync("dd", ["if=/dev/urandom", `of=${dev.path}`, "bs=1M", "count=16", "status=none"]);
    const before = deviceHash(dev.path, dev.sizeBytes);
    const spare = server.serve("/spare.img", fx.wholeDisk);
    const agent = await imageAgent(t, [dev.path]);
    const info = { ...sha256Info(`${server.url}/missing.img`, fx.wholeDisk), urls: [`${server.url}/missing.img`, spare] };
    const err = assertFailed(await command(agent.url, "standby.prepare_image", { image_info: info }), "ImageDownloadFatalError");
    assert.match(String(err["details"]), /Received status code 404/);
    assert.equal(server.hitsOf("/missing.img"), 1, "no retry");
    assert.equal(server.hitsOf("/spare.img"), 0);
    assert.equal(deviceHash(dev.path, dev.sizeBytes), before, "device untouched");
  });

  it("all URLs down: each retried, then the next URL; a working second URL is used", async (t) => {
    const dev = loop(t, 16);
    server.routes.set("/down.img", (_req, res) => res.writeHead(500).end("down"));
    const good = server.serve("/good.img", fx.wholeDisk);
    const agent = await imageAgent(t, [dev.path]);
    const info = { ...sha256Info(`${server.url}/down.img`, fx.wholeDisk), urls: [`${server.url}/down.img`, good] };
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: info }));
    assert.equal(server.hitsOf("/down.img"), 3, "1 + retries");
    assert.equal(server.hitsOf("/good.img"), 1);
  });

  it("checksum mismatch: the whole download is retried; when it never matches, ImageChecksumError after the bounded retries", async (t) => {
    const dev = loop(t, 16);
    const bad = Buffer.from(fx.mbrDisk);
    bad.writeUInt8((bad.readUInt8(bad.length - 1) ^ 0xff) & 0xff, bad.length - 1);
    server.routes.set("/once-bad.img", (_req, res, hit) => {
      res.writeHead(200, { "content-length": bad.length }).end(hit === 1 ? bad : fx.mbrDisk);
    });
    server.routes.set("/always-bad.img", (_req, res) => {
      res.writeHead(200, { "content-length": bad.length }).end(bad);
    });
    const agent = await imageAgent(t, [dev.path]);
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(`${server.url}/once-bad.img`, fx.mbrDisk) }));
    assert.equal(server.hitsOf("/once-bad.img"), 2);
    assert.equal(deviceHash(dev.path, fx.mbrDisk.length), sha256(fx.mbrDisk));
    const err = assertFailed(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(`${server.url}/always-bad.img`, fx.mbrDisk) }), "ImageChecksumError");
    assert.match(String(err["details"]), new RegExp(`image checksum: ${sha256(fx.mbrDisk)}; verification checksum: ${sha256(bad)}`));
    assert.equal(server.hitsOf("/always-bad.img"), 2, "1 + checksumRetries");
  });

  it("a stalled body hits the chunk timeout and the download starts again", async (t) => {
    const dev = loop(t, 16);
    server.routes.set("/stall.img", (_req, res, hit) => {
      res.writeHead(200, { "content-length": fx.mbrDisk.length });
      if (hit === 1) res.write(fx.mbrDisk.subarray(0, MIB)); // then nothing
      else res.end(fx.mbrDisk);
    });
    const agent = await imageAgent(t, [dev.path], { chunkTimeoutMs: 300 });
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(`${server.url}/stall.img`, fx.mbrDisk) }));
    assert.equal(server.hitsOf("/stall.img"), 2);
    assert.equal(deviceHash(dev.path, fx.mbrDisk.length), sha256(fx.mbrDisk));
  });

  it("max duration: ImageDownloadTimeoutError", async (t) => {
    const dev = loop(t, 16);
    server.routes.set("/slow.img", (_req, res) => {
      res.writeHead(200, { "content-length": fx.wholeDisk.length });
      res.write(fx.wholeDisk.subarray(0, 4096));
      setTimeout(() => res.destroy(), 3000).unref();
    });
    const agent = await imageAgent(t, [dev.path], { maxDurationMs: 300, chunkTimeoutMs: 10_000 });
    const err = assertFailed(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(`${server.url}/slow.img`, fx.wholeDisk) }), "ImageDownloadTimeoutError");
    assert.equal(err["code"], 408);
  });

  it("HTTP basic auth and image_request_authorization reach the server; a 401 is fatal", async (t) => {
    const dev = loop(t, 16);
    const basic = `Basic ${Buffer.from("glance:s3cret").toString("base64")}`;
    server.routes.set("/private.img", (req, res) => {
      if (req.headers.authorization !== basic && req.headers.authorization !== "Bearer tok-123") res.writeHead(401).end("who are you");
      else res.writeHead(200, { "content-length": fx.wholeDisk.length }).end(fx.wholeDisk);
    });
    const agent = await imageAgent(t, [dev.path]);
    const url = `${server.url}/private.img`;
    assertSucceeded(
      await command(agent.url, "standby.prepare_image", {
        image_info: sha256Info(url, fx.wholeDisk, { image_server_auth_strategy: "http_basic", image_server_user: "glance", image_server_password: "s3cret" }),
      }),
    );
    assertSucceeded(
      await command(agent.url, "standby.prepare_image", {
        image_info: sha256Info(url, fx.wholeDisk, { image_request_authorization: Buffer.from("Bearer tok-123").toString("base64") }),
      }),
    );
    const before = server.hitsOf("/private.img");
    assertFailed(
      await command(agent.url, "standby.prepare_image", {
        image_info: sha256Info(url, fx.wholeDisk, { image_server_auth_strategy: "http_basic", image_server_user: "glance", image_server_password: "wrong" }),
      }),
      "ImageDownloadFatalError",
    );
    assert.equal(server.hitsOf("/private.img") - before, 1);
  });

  it("an http proxy from image_info.proxies is used (and no_proxy bypasses it)", async (t) => {
    const dev = loop(t, 16);
    const seen: string[] = [];
    const proxy = createServer((req, res) => {
      seen.push(req.url ?? "");
      const target = new URL(req.url ?? "");
      const up = httpRequest({ host: target.hostname, port: target.port, path: target.pathname, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on("error", () => res.writeHead(502).end());
      req.pipe(up);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    t.after(() => new Promise<void>((resolve) => proxy.close(() => resolve())));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    const url = server.serve("/proxied.img", fx.wholeDisk);
    const agent = await imageAgent(t, [dev.path]);
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(url, fx.wholeDisk, { proxies: { http: proxyUrl } }) }));
    assert.deepEqual(seen, [url], "the request went through the proxy, in absolute form");
    assertSucceeded(await command(agent.url, "standby.prepare_image", { image_info: sha256Info(url, fx.wholeDisk, { proxies: { http: proxyUrl }, no_proxy: "localhost,127.0.0.1" }) }));
    assert.equal(seen.length, 1, "no_proxy went direct");
  });

  it("a target outside allowedDevices is refused and left untouched; nothing is downloaded", async (t) => {
    const allowed = loop(t, 16);
    const forbidden = loop(t, 16);
    execFileSync("dd", ["if=/dev/urandom", `of=${forbidden.path}`, "bs=1M", "count=16", "status=none"]);
    const before = deviceHash(forbidden.path, forbidden.sizeBytes);
    const url = server.serve("/guarded.img", fx.wholeDisk);
    const agent = await imageAgent(t, [allowed.path]);
    const node = { uuid: "n3", properties: {}, instance_info: { root_device: { name: forbidden.path } } };
    const err = assertFailed(await command(agent.url, "deploy.execute_deploy_step", writeImageStep(sha256Info(url, fx.wholeDisk), node)), "DeviceNotAllowed");
    assert.match(String(err["details"]), /not in allowedDevices/);
    assert.equal(deviceHash(forbidden.path, forbidden.sizeBytes), before, "the forbidden device is untouched");
    assert.equal(server.hitsOf("/guarded.img"), 0, "nothing was downloaded");
  });

  it("formats: not permitted, or not what disk_format says, is InvalidImage", async (t) => {
    const dev = loop(t, 16);
    const agent = await imageAgent(t, [dev.path], { permittedFormats: ["raw"], cacheDir: join(fx.dir, "cache") });
    const q = server.serve("/np.qcow2", fx.wholeDiskQcow2);
    const err = assertFailed(await command(agent.url, "standby.prepare_image", { image_info: { id: "np", urls: [q], disk_format: "qcow2", checksum: sha256(fx.wholeDiskQcow2) } }), "InvalidImage");
    assert.match(String(err["details"]), /qcow2 is not permitted/);
    const agent2 = await imageAgent(t, [dev.path], { cacheDir: join(fx.dir, "cache") });
    const liar = server.serve("/liar.qcow2", fx.wholeDisk);
    const err2 = assertFailed(await command(agent2.url, "standby.prepare_image", { image_info: { id: "liar", urls: [liar], disk_format: "qcow2", checksum: sha256(fx.wholeDisk) } }), "InvalidImage");
    assert.match(String(err2["details"]), /declared qcow2 but its content is gpt/);
  });

  it("validator: IPA's 400s before anything runs", async (t) => {
    const dev = loop(t, 16);
    const agent = await imageAgent(t, [dev.path]);
    const cases: Array<[JsonObject, string]> = [
      [{}, "Image is missing 'id' field."],
      [{ id: "x" }, "Image is missing 'urls' field."],
      [{ id: "x", urls: [] }, "Image 'urls' must be a list with at least one element."],
      [{ id: "x", urls: ["http://h/x"] }, "Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification."],
      [{ id: "x", urls: ["http://h/x"], checksum: "d41d8cd98f00b204e9800998ecf8427e" }, "Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification."],
      [{ id: "x", urls: ["http://h/x"], checksum: "nothex" }, "Image 'checksum' must be an md5 (32), sha256 (64) or sha512 (128) hex digest, or the http(s) URL of a checksums file."],
      [{ id: "x", urls: ["http://h/x"], os_hash_algo: "sha256", os_hash_value: "abc" }, "Image 'os_hash_value' must be a 64-character hex digest for sha256."],
    ];
    for (const [info, message] of cases) {
      const r = await command(agent.url, "standby.prepare_image", { image_info: info });
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.deepEqual(r.body, { faultcode: "Client", faultstring: `Invalid command parameters: ${message}` });
    }
    // The same validator inside the write_image step: the step fails, as IPA's does.
    const step = await command(agent.url, "deploy.execute_deploy_step", writeImageStep({ id: "x" }));
    assert.equal(assertFailed(step, "InvalidCommandParamsError")["details"], "Image is missing 'urls' field.");
    // write_image is offered as a deploy and a service step, IPA's dict.
    const want = { step: "write_image", priority: 0, interface: "deploy", reboot_requested: false };
    for (const kind of ["deploy", "service"]) {
      const steps = obj(assertSucceeded(await command(agent.url, `${kind}.get_${kind}_steps`, { node: null, ports: [] }))[`${kind}_steps`]);
      assert.deepEqual(
        (steps["GenericHardwareManager"] as Json[]).filter((x) => obj(x)["step"] === "write_image"),
        [want],
      );
    }
  });
});

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Builds every fixture (the whole-disk image via a loop device, read before it is detached). */
function buildAllFixtures(): Fixtures {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-image-fx-"));
  const tree = join(dir, "tree");
  mkdirSync(tree);
  writeFileSync(join(tree, "hello.txt"), "written by ironbus\n");
  const partImg = join(dir, "part.img");
  sh("mkfs.ext4", ["-q", "-F", "-L", "rootfs", "-d", tree, partImg, "8M"]);
  sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", partImg, join(dir, "part.qcow2")]);
  const dev = createLoopDevice(8);
  try {
    sh("sgdisk", ["-n", "1:2048:0", "-t", "1:8300", "-c", "1:root", dev.path]);
    sh("partprobe", [dev.path]);
    sh("mkfs.ext4", ["-q", "-F", "-L", "imgroot", "-d", tree, `${dev.path}p1`]);
    writeFileSync(join(dir, "whole.img"), readDevice(dev.path, 8 * MIB));
  } finally {
    dev.detach();
  }
  const mbr = createLoopDevice(8);
  try {
    sh("parted", ["-s", mbr.path, "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "100%"]);
    sh("partprobe", [mbr.path]);
    sh("mkfs.ext4", ["-q", "-F", "-L", "mbrroot", "-d", tree, `${mbr.path}p1`]);
    writeFileSync(join(dir, "mbr.img"), readDevice(mbr.path, 8 * MIB));
  } finally {
    mbr.detach();
  }
  sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", join(dir, "whole.img"), join(dir, "whole.qcow2")]);
  return finishFixtures(dir, partImg);
}

