/**
 * Tunables of image deployment. IPA keeps these in its own config file (image_download_*,
 * md5_enabled, permitted_image_formats...); here they are options of imagePart(), with IPA's
 * defaults, so that tests can make the retry delays tiny and an embedder can wire them to its config.
 */
import { tmpdir } from "node:os";

export interface ImageOptions {
  /** Retries after a connection error or a 5xx, per URL, and of the whole download after a broken stream (IPA: 9). */
  readonly retries: number;
  /** Pause between those retries, ms (IPA: 10 s). */
  readonly retryDelayMs: number;
  /** Whole-download retries after a checksum mismatch (bounded separately: each costs a full download). */
  readonly checksumRetries: number;
  /** TCP (and TLS) connect timeout, ms (IPA: 60 s). */
  readonly connectTimeoutMs: number;
  /** Longest wait for the response headers and then for each chunk of the body, ms (IPA: 60 s). */
  readonly chunkTimeoutMs: number;
  /** Give up on the whole download after this long, ms; 0 = no limit (IPA's image_download_max_duration). */
  readonly maxDurationMs: number;
  /** A 32-character literal checksum means md5 only when this is on (Ironic's agent_md5_checksum_enable). */
  readonly md5Allowed: boolean;
  /** Formats the agent may write (Ironic's permitted_image_formats). */
  readonly permittedFormats: readonly string[];
  /** Where images that are not streamed are downloaded first (IPA: /tmp). */
  readonly cacheDir: string;
  /** Address-space limit of qemu-img, bytes (IPA: 2 GiB). */
  readonly qemuImgAddressSpace: number;
  /** qemu-img attempts when it fails for lack of memory (IPA: 3). */
  readonly qemuImgAttempts: number;
  /** Size of each write to the device, bytes (a multiple of 4096). */
  readonly writeBlockBytes: number;
  /** Writes in flight at once (2 = one fills while one is written). */
  readonly writeDepth: number;
  /** Least time between two progress events of one stage, ms. */
  readonly progressIntervalMs: number;
  /** Largest configdrive, bytes (IPA: 64 MiB). */
  readonly configdriveMaxBytes: number;
  /** How long to wait for partition device nodes after a rescan, ms. */
  readonly partitionWaitMs: number;
  /** Where the ramdisk's own boot mode shows (UEFI when it exists). */
  readonly efiFirmwareDir: string;
  /** CPU architecture, for the PReP partition of ppc64 partition images. */
  readonly cpuArch: string;
  /** Skip TLS certificate checks on image downloads. */
  readonly insecure: boolean;
  /** User-Agent of image downloads. */
  readonly userAgent: string;
}

export const DEFAULT_IMAGE_OPTIONS: ImageOptions = {
  retries: 9,
  retryDelayMs: 10_000,
  checksumRetries: 2,
  connectTimeoutMs: 60_000,
  chunkTimeoutMs: 60_000,
  maxDurationMs: 0,
  md5Allowed: false,
  permittedFormats: ["raw", "gpt", "qcow2"],
  cacheDir: tmpdir(),
  qemuImgAddressSpace: 2 * 1024 ** 3,
  qemuImgAttempts: 3,
  writeBlockBytes: 4 * 1024 * 1024,
  writeDepth: 2,
  progressIntervalMs: 1000,
  configdriveMaxBytes: 64 * 1024 * 1024,
  partitionWaitMs: 10_000,
  efiFirmwareDir: "/sys/firmware/efi",
  cpuArch: process.arch,
  insecure: false,
  userAgent: "ironbus",
};

export function resolveImageOptions(given: Partial<ImageOptions> = {}): ImageOptions {
  const opts = { ...DEFAULT_IMAGE_OPTIONS, ...given };
  if (opts.writeBlockBytes % 4096 !== 0 || opts.writeBlockBytes <= 0) throw new RangeError("writeBlockBytes must be a positive multiple of 4096");
  if (opts.writeDepth < 1) throw new RangeError("writeDepth must be at least 1");
  return opts;
}
