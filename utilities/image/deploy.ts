/**
 * standby.prepare_image: puts an image on the install disk, IPA's way.
 *
 * Whole-disk images: the disk's metadata is wiped (wipefs, both GPT areas zeroed); a raw image with
 * stream_raw_images (the default) is streamed straight onto the disk, hashed on the way; any other is
 * downloaded into the cache directory, hashed, inspected, then written byte for byte (raw/gpt) or
 * converted by qemu-img (qcow2...) under an address-space limit. Then the backup GPT is moved to the
 * end of the disk, the partition table re-read and one partition read, and the configdrive written.
 * Partition images: the layout of layout.ts is made first, the image goes into the root partition.
 */
import { createReadStream } from "node:fs";
import { mkdir, stat, statfs, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { CommandContext } from "../../core/command.js";
import type { JsonObject } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { hasTool } from "../exec.js";
import type { UtilityDeps } from "../part.js";
import { type ExpectedChecksum, resolveChecksum } from "./checksum.js";
import { configdriveMiB, type ConfigdriveDeps, loadConfigdrive, writeConfigdrive, writeWholeDiskConfigdrive } from "./configdrive.js";
import { deviceSize, exists, fixGpt, isReadable, logicalSectorSize, rescan, runTool, type ToolContext, wipeMetadata } from "./device.js";
import { deploymentError, downloadError, downloadTimeoutError, invalidImage, invalidParams, outOfSpaceError, writeError } from "./errors.js";
import { ImageHttp } from "./http.js";
import type { ImageInfo, ImageType } from "./info.js";
import { type Inspection, inspectImage, isRawLike } from "./inspect.js";
import { applyLayout, bootModeOf, diskLabelOf, type Layout, mapPartitions, mkfsCommand, planLayout } from "./layout.js";
import type { ImageOptions } from "./options.js";
import { ProgressReporter } from "./progress.js";
import { downloadVerified, type Sink } from "./stream.js";
import type { InstallDeviceResolver } from "./target.js";
import { type PartitionUuids, readPartitionUuids } from "./uuids.js";
import { DeviceWriter } from "./writer.js";

const MIB = 1024 * 1024;

/** Size of the root partition of a layout, in bytes. */
function rootBytes(layout: Layout): number {
  const root = layout.partitions.find((p) => p.role === "root");
  return (root?.sizeMiB ?? 0) * MIB;
}

export interface DeployRequest {
  readonly imageInfo: ImageInfo;
  /** The configdrive parameter (else image_info's). */
  readonly configdrive: string | undefined;
  /** The node Ironic sent with the step, or the one the agent knows. */
  readonly node: JsonObject | null;
}

export interface LastWrite {
  readonly device: string;
  readonly imageType: ImageType;
  readonly imageId: string;
}

interface Job {
  readonly info: ImageInfo;
  readonly expected: ExpectedChecksum;
  readonly http: ImageHttp;
  readonly log: Logger;
  readonly progress: ProgressReporter;
  /** The download's signal: the command's, plus the max duration. */
  readonly signal: AbortSignal;
  readonly tools: ToolContext;
}

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function safeName(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 200) || "image";
}

/** IPA's result message of prepare_image. */
export function resultMessage(info: ImageInfo, device: string, uuids: PartitionUuids): string {
  const root = uuids["root uuid"];
  const esp = uuids["efi system partition uuid"];
  const base = `image (${info.id}) written to device ${device} root_uuid=${String(root ?? null)}`;
  return info.deployBootMode === "uefi" && typeof esp === "string" && esp !== "" ? `${base} efi_system_partition_uuid=${esp}` : base;
}

/** Where the deployer records the last image written (for get_partition_uuids). */
export interface WriteRecord {
  last: LastWrite | undefined;
}

export class ImageDeployer {
  constructor(
    private readonly deps: UtilityDeps,
    readonly opts: ImageOptions,
    private readonly resolveDevice: InstallDeviceResolver,
    private readonly record: WriteRecord = { last: undefined },
  ) {}

  get last(): LastWrite | undefined {
    return this.record.last;
  }

  async prepare(req: DeployRequest, ctx: CommandContext): Promise<string> {
    const info = req.imageInfo;
    const log = ctx.log.child({ image: info.id, ...(info.nodeUuid === undefined ? {} : { node: info.nodeUuid }) });
    const progress = new ProgressReporter((u) => ctx.progress(u), this.opts.progressIntervalMs);
    const deadline = this.opts.maxDurationMs > 0 ? AbortSignal.timeout(this.opts.maxDurationMs) : undefined;
    const signal = deadline === undefined ? ctx.signal : AbortSignal.any([ctx.signal, deadline]);
    const tools: ToolContext = { run: this.deps.run, signal: ctx.signal };
    const http = new ImageHttp(this.opts, log);
    const started = performance.now();
    try {
      progress.stage("resolve", "finding the install device");
      const asked = await this.resolveDevice(req.node, info, ctx);
      const device = await this.deps.guard.check(asked, `writing image ${info.id}`);
      if (info.diskFormat !== undefined && !this.opts.permittedFormats.includes(info.diskFormat)) {
        throw invalidImage(`The image format ${info.diskFormat} is not permitted (permitted: ${this.opts.permittedFormats.join(", ")}).`);
      }
      progress.stage("checksum", "finding the image checksum");
      const expected = await resolveChecksum(info, {
        md5Allowed: this.opts.md5Allowed,
        log,
        fetchText: async (url) => (await http.fetchBytes(url, info, url, 4 * MIB, signal)).toString("utf8"),
      });
      const configdrive =
        req.configdrive === undefined
          ? undefined
          : await loadConfigdrive(
              req.configdrive,
              (url) => http.fetchBytes(url, { authorization: undefined, proxies: info.proxies, noProxy: info.noProxy }, "configdrive", Math.ceil(this.opts.configdriveMaxBytes * 1.4) + MIB, signal),
              this.opts.configdriveMaxBytes,
            );
      this.deps.state.partitionUuids = {};
      this.record.last = undefined;
      const job: Job = { info, expected, http, log, progress, signal, tools };
      const stream = info.streamRawImages && info.diskFormat === "raw";
      let uuids: PartitionUuids;
      if (info.imageType === "partition") {
        uuids = await this.writePartitionImage(job, device, stream, configdrive, req.node);
      } else {
        await this.writeWholeDiskImage(job, device, stream);
        if (configdrive !== undefined) {
          progress.stage("configdrive", `writing the config drive (${configdrive.length} bytes)`);
          const part = await writeWholeDiskConfigdrive(this.configdriveDeps(tools, log), device, configdrive);
          log.info({ partition: part }, "config drive written");
        }
        uuids = await readPartitionUuids(tools, device, "whole-disk");
      }
      this.deps.state.partitionUuids = uuids;
      this.record.last = { device, imageType: info.imageType, imageId: info.id };
      const message = resultMessage(info, device, uuids);
      progress.stage("done", message);
      log.info({ device, ms: Math.round(performance.now() - started), uuids }, "image written");
      return message;
    } catch (err) {
      if (deadline?.aborted === true && !ctx.signal.aborted) {
        throw downloadTimeoutError(info.id, `Download exceeded max allowed time (${this.opts.maxDurationMs / 1000} seconds)`);
      }
      throw err;
    } finally {
      await http.close();
    }
  }

  private configdriveDeps(tools: ToolContext, log: Logger): ConfigdriveDeps {
    return { tools, guard: this.deps.guard, log, cacheDir: this.opts.cacheDir, partitionWaitMs: this.opts.partitionWaitMs, writeBlockBytes: this.opts.writeBlockBytes };
  }

  private async writeWholeDiskImage(job: Job, device: string, stream: boolean): Promise<void> {
    const size = await deviceSize(job.tools, device);
    if (stream) {
      job.progress.stage("write", `streaming image ${job.info.id} to ${device}`);
      // The disk is wiped only once the server has answered 200: a 4xx leaves it untouched.
      let wiped = false;
      await this.streamTo(job, size, async () => {
        if (!wiped) await wipeMetadata(job.tools, device);
        wiped = true;
        return device;
      });
    } else {
      await this.cachedWrite(job, size, () => Promise.resolve(device), device);
    }
    try {
      await fixGpt(job.tools, device);
    } catch (err) {
      // IPA logs a failure to move the backup GPT and carries on.
      job.log.error({ device, err }, "failed to move the backup GPT to the end of the disk");
    }
    job.progress.stage("verify", `checking the partition table of ${device}`);
    await this.validatePartitioning(job.tools, device);
  }

  private async writePartitionImage(job: Job, device: string, stream: boolean, configdrive: Buffer | undefined, node: JsonObject | null): Promise<PartitionUuids> {
    const { info, tools, progress } = job;
    const bootMode = bootModeOf(info.deployBootMode, node, await exists(this.opts.efiFirmwareDir));
    const label = diskLabelOf(bootMode, info.diskLabel, node);
    const layout = planLayout({
      bootMode,
      label,
      cpuArch: this.opts.cpuArch,
      rootMb: info.rootMb,
      swapMb: info.swapMb,
      ephemeralMb: info.ephemeralMb,
      configdriveMb: configdrive === undefined ? 0 : configdriveMiB(configdrive.length),
      diskBytes: await deviceSize(tools, device),
    });
    // Partitioning waits until the image server has answered (streaming) or the image is in the cache.
    let made: Promise<{ path: string; size: number }> | undefined;
    const makeTarget = (): Promise<{ path: string; size: number }> => (made ??= this.makePartitions(job, device, layout, configdrive));
    if (stream) {
      job.progress.stage("write", `streaming image ${info.id} to the root partition of ${device}`);
      await this.streamTo(job, rootBytes(layout), async () => (await makeTarget()).path);
    } else {
      await this.cachedWrite(job, rootBytes(layout), async () => (await makeTarget()).path, undefined);
    }
    progress.stage("verify", `checking the partition table of ${device}`);
    await this.validatePartitioning(tools, device);
    return await readPartitionUuids(tools, device, "partition");
  }

  /** Partitions the disk, makes the filesystems, writes the configdrive; returns the root partition. */
  private async makePartitions(job: Job, device: string, layout: Layout, configdrive: Buffer | undefined): Promise<{ path: string; size: number }> {
    const { info, tools, progress } = job;
    progress.stage("partition", `partitioning ${device}: ${layout.label}, ${layout.partitions.map((p) => `${p.role} ${p.sizeMiB} MiB`).join(", ")}`);
    if (!info.preserveEphemeral) await wipeMetadata(tools, device);
    await applyLayout(tools, device, layout, await logicalSectorSize(tools, device));
    const parts = mapPartitions(layout, await rescan(tools, device, { expect: layout.partitions.length, waitMs: this.opts.partitionWaitMs }));
    for (const p of parts.values()) await this.deps.guard.check(p.path, `formatting ${p.path}`);
    const esp = parts.get("efi system partition");
    if (esp !== undefined) await runTool(tools, "mkfs.vfat", ["-n", "efi-part", esp.path]);
    const swap = parts.get("swap");
    if (swap !== undefined) await runTool(tools, "mkswap", ["-L", "swap1", swap.path]);
    const ephemeral = parts.get("ephemeral");
    if (ephemeral !== undefined && !info.preserveEphemeral) {
      const [cmd, args] = mkfsCommand(info.ephemeralFormat ?? "ext4", ephemeral.path, "ephemeral0");
      await runTool(tools, cmd, args);
    }
    const cd = parts.get("configdrive");
    if (cd !== undefined && configdrive !== undefined) {
      progress.stage("configdrive", `writing the config drive to ${cd.path}`);
      await writeConfigdrive(this.configdriveDeps(tools, job.log), cd.path, configdrive);
    }
    const root = parts.get("root");
    if (root === undefined) throw deploymentError(`Root device not found on ${device}`);
    progress.stage(info.diskFormat === "raw" && info.streamRawImages ? "write" : "convert", `writing image ${info.id} to ${root.path}`);
    return { path: root.path, size: root.size };
  }

  private deviceSinkError(target: string): (err: unknown) => AgentError {
    return (err) => {
      if (err instanceof AgentError) return err;
      if (errnoOf(err) === "ENOSPC") return writeError(target, "the image is larger than the device", err);
      return writeError(target, (err as Error).message, err);
    };
  }

  /** Streams the image onto the device `target()` gives once the server has answered 200. */
  private async streamTo(job: Job, size: number, target: () => Promise<string>): Promise<void> {
    let location = "the install device";
    await downloadVerified({
      info: job.info,
      expected: job.expected,
      http: job.http,
      opts: this.opts,
      log: job.log,
      progress: job.progress,
      signal: job.signal,
      get location() {
        return location;
      },
      maxBytes: size,
      openSink: async (): Promise<Sink> => {
        location = await target();
        return DeviceWriter.open(location, { blockBytes: this.opts.writeBlockBytes, depth: this.opts.writeDepth });
      },
      sinkError: (err) => this.deviceSinkError(location)(err),
    });
  }

  private async openCacheSink(file: string, id: string, length: number | undefined): Promise<Sink> {
    await mkdir(this.opts.cacheDir, { recursive: true });
    if (length !== undefined) {
      const fs = await statfs(this.opts.cacheDir);
      const free = Number(fs.bavail) * Number(fs.bsize);
      if (length > free) throw outOfSpaceError(id, `${this.opts.cacheDir} has ${free} bytes free, the image needs ${length}`);
    }
    await writeFile(file, "");
    return DeviceWriter.open(file, { blockBytes: this.opts.writeBlockBytes, depth: this.opts.writeDepth, direct: false });
  }

  /** Download into the cache, check the format, then write (dd-equivalent) or convert onto `target`. */
  private async cachedWrite(job: Job, targetSize: number, targetOf: () => Promise<string>, wipeDisk: string | undefined): Promise<void> {
    const { info, progress } = job;
    const file = join(this.opts.cacheDir, `ironbus-image-${safeName(info.id)}`);
    try {
      progress.stage("download", `downloading image ${info.id} to ${file}`);
      await downloadVerified({
        info,
        expected: job.expected,
        http: job.http,
        opts: this.opts,
        log: job.log,
        progress,
        signal: job.signal,
        location: file,
        openSink: (length) => this.openCacheSink(file, info.id, length),
        sinkError: (err) => {
          if (err instanceof AgentError) return err;
          if (errnoOf(err) === "ENOSPC") return outOfSpaceError(info.id, `Unable to write image to ${file}. Error: ${(err as Error).message}`, err);
          return downloadError(info.id, `Unable to write image to ${file}. Error: ${(err as Error).message}`, "fatal", err);
        },
      });
      const inspection = await this.checkFormat(file, info);
      if (inspection.virtualSize > targetSize) {
        throw invalidParams(`Image ${info.id} needs ${Math.ceil(inspection.virtualSize / MIB)} MiB but the target has ${Math.floor(targetSize / MIB)} MiB.`);
      }
      if (wipeDisk !== undefined) await wipeMetadata(job.tools, wipeDisk);
      const target = await targetOf();
      if (isRawLike(inspection.format)) {
        progress.stage("write", `writing image ${info.id} to ${target}`, inspection.virtualSize);
        await this.copyFile(file, target, progress);
      } else {
        progress.stage("convert", `qemu-img convert -f ${inspection.format} onto ${target}`);
        await this.convert(job, file, inspection.format, target);
      }
    } finally {
      await unlink(file).catch(() => undefined);
    }
  }

  private async checkFormat(file: string, info: ImageInfo): Promise<Inspection> {
    if (info.diskFormat === "raw") {
      // IPA: raw images are never inspected or converted.
      return { format: "raw", virtualSize: (await stat(file)).size, problems: [] };
    }
    const ins = await inspectImage(file);
    if (info.diskFormat !== undefined && info.diskFormat !== ins.format) {
      throw invalidImage(`Image ${info.id} is declared ${info.diskFormat} but its content is ${ins.format}.`);
    }
    if (!this.opts.permittedFormats.includes(ins.format)) {
      throw invalidImage(`The image format ${ins.format} is not permitted (permitted: ${this.opts.permittedFormats.join(", ")}).`);
    }
    if (ins.problems.length > 0) throw invalidImage(`Image ${info.id} failed the safety check: ${ins.problems.join("; ")}.`);
    return ins;
  }

  private async copyFile(file: string, target: string, progress: ProgressReporter): Promise<void> {
    const writer = await DeviceWriter.open(target, { blockBytes: this.opts.writeBlockBytes, depth: this.opts.writeDepth });
    let done = 0;
    try {
      for await (const chunk of createReadStream(file, { highWaterMark: MIB })) {
        const buf = chunk as Buffer;
        await writer.write(buf);
        done += buf.length;
        progress.bytes(done);
      }
    } catch (err) {
      await writer.abort();
      throw err instanceof AgentError ? err : writeError(target, (err as Error).message, err);
    }
    try {
      await writer.finish();
    } catch (err) {
      throw writeError(target, (err as Error).message, err);
    }
    progress.bytes(done, true);
  }

  /** qemu-img convert onto the device under prlimit --as (IPA's limits), retried on ENOMEM/EAGAIN. */
  private async convert(job: Job, file: string, format: string, target: string): Promise<void> {
    const qemu = ["qemu-img", "convert", "-f", format, "-O", "host_device", "-t", "directsync", "-S", "0", "-W", file, target];
    const limited = await hasTool("prlimit");
    if (!limited) job.log.warn("prlimit not found: qemu-img runs without an address-space limit");
    const [cmd, args] = limited ? ["prlimit", [`--as=${this.opts.qemuImgAddressSpace}`, "--", ...qemu]] : [qemu[0] ?? "qemu-img", qemu.slice(1)];
    for (let attempt = 1; ; attempt++) {
      const res = await job.tools.run(cmd, args, { signal: job.tools.signal, env: { MALLOC_ARENA_MAX: "3" } });
      if (res.code === 0) return;
      const stderr = res.stderr.trim();
      if (attempt < this.opts.qemuImgAttempts && /Cannot allocate memory|Resource temporarily unavailable/i.test(stderr)) {
        job.log.warn({ attempt, stderr }, "qemu-img ran out of memory, trying again");
        continue;
      }
      throw writeError(target, `qemu-img convert exited ${res.code}. stdout: ${res.stdout.trim()}. stderr: ${stderr}`);
    }
  }

  /** IPA's _validate_partitioning: the table can be read, has a partition, and one of them reads. */
  private async validatePartitioning(tools: ToolContext, disk: string): Promise<void> {
    let parts;
    try {
      parts = await rescan(tools, disk, { waitMs: this.opts.partitionWaitMs });
    } catch (err) {
      throw deploymentError(
        `Unable to find a valid partition table on the disk after writing the image. The image may be corrupted or it uses a different sector size than the device. Error: ${(err as Error).message}`,
        err,
      );
    }
    if (parts.length === 0) throw deploymentError(`No partitions found on the device ${disk} after writing the image.`);
    for (const p of parts) if (await isReadable(p.path)) return;
    throw deploymentError(`None of the ${parts.length} partitions of ${disk} can be read after writing the image.`);
  }
}
