/**
 * The download loop: open (with the per-URL retries of http.ts), hash every chunk as it arrives, hand
 * it to a sink (the device, or the cache file), then compare the digest. A stream that breaks half
 * way, or a digest that does not match, restarts the whole download (bounded: `retries` and
 * `checksumRetries`); a 4xx, a full cache or a device write error do not.
 */
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../core/log.js";
import { AgentError } from "../../core/errors.js";
import type { ExpectedChecksum } from "./checksum.js";
import { checksumError, downloadError, isRetryable } from "./errors.js";
import { describeError, type ImageHttp } from "./http.js";
import type { ImageInfo } from "./info.js";
import type { ImageOptions } from "./options.js";
import type { ProgressReporter } from "./progress.js";

export interface Sink {
  /** Copies the chunk at once; a promise means "wait before the next one" (see DeviceWriter.push). */
  push(chunk: Uint8Array): Promise<void> | undefined;
  /** Flushes and closes; returns the bytes written. */
  finish(): Promise<number>;
  abort(): Promise<void>;
}

export interface DownloadJob {
  readonly info: ImageInfo;
  readonly expected: ExpectedChecksum;
  readonly http: ImageHttp;
  readonly opts: ImageOptions;
  readonly log: Logger;
  readonly progress: ProgressReporter;
  readonly signal: AbortSignal;
  /** Where the bytes go, for messages. */
  readonly location: string;
  /** Refuse an image larger than this (the target's size). */
  readonly maxBytes?: number;
  /** Opens the sink of one attempt; `length` is the Content-Length when known. */
  openSink(length: number | undefined): Promise<Sink>;
  /** Turns a sink failure into the command's error (never retried). */
  sinkError(err: unknown): AgentError;
}

export interface DownloadResult {
  readonly url: string;
  readonly bytes: number;
  readonly digest: string;
}

function tooLarge(job: DownloadJob, size: number): AgentError {
  return new AgentError(
    "INVALID_PARAMS",
    `Image ${job.info.id} (${size} bytes) does not fit on ${job.location} (${String(job.maxBytes)} bytes).`,
  );
}

export async function downloadVerified(job: DownloadJob): Promise<DownloadResult> {
  let failures = 0;
  let mismatches = 0;
  for (;;) {
    let sink: Sink | undefined;
    try {
      const opened = await job.http.open(job.info.urls, job.info, job.info.id, job.signal);
      if (job.maxBytes !== undefined && opened.length !== undefined && opened.length > job.maxBytes) {
        opened.response.discard();
        throw tooLarge(job, opened.length);
      }
      try {
        sink = await job.openSink(opened.length);
      } catch (err) {
        opened.response.discard();
        throw job.sinkError(err);
      }
      job.progress.setTotal(opened.length);
      const hash = createHash(job.expected.algorithm);
      const target = sink;
      let done = 0;
      try {
        await opened.response.consume((chunk) => {
          hash.update(chunk);
          done += chunk.length;
          if (job.maxBytes !== undefined && done > job.maxBytes) throw tooLarge(job, done);
          let wait: Promise<void> | undefined;
          try {
            wait = target.push(chunk);
          } catch (err) {
            throw job.sinkError(err);
          }
          job.progress.bytes(done);
          return wait?.catch((err: unknown) => {
            throw job.sinkError(err);
          });
        });
      } catch (err) {
        opened.response.discard();
        if (err instanceof AgentError) throw err;
        if (job.signal.aborted) throw job.signal.reason;
        throw downloadError(job.info.id, `reading ${opened.url} after ${done} bytes: ${describeError(err)}`, "retry", err);
      }
      const current = sink;
      sink = undefined;
      try {
        await current.finish();
      } catch (err) {
        throw job.sinkError(err);
      }
      job.progress.bytes(done, true);
      if (opened.length !== undefined && done !== opened.length) {
        throw downloadError(job.info.id, `${opened.url} sent ${done} of ${opened.length} bytes`, "retry");
      }
      const digest = hash.digest("hex");
      if (digest !== job.expected.value) throw checksumError(job.info.id, job.location, job.expected.value, digest);
      job.log.info({ image: job.info.id, url: opened.url, bytes: done, algorithm: job.expected.algorithm }, "image downloaded and verified");
      return { url: opened.url, bytes: done, digest };
    } catch (err) {
      if (sink !== undefined) await sink.abort().catch(() => undefined);
      if (job.signal.aborted) throw job.signal.reason;
      if (!isRetryable(err)) throw err;
      const isMismatch = AgentError.is(err) && err.ipaType === "ImageChecksumError";
      if (isMismatch) mismatches++;
      else failures++;
      if (isMismatch ? mismatches > job.opts.checksumRetries : failures > job.opts.retries) throw err;
      job.log.warn({ image: job.info.id, error: (err as Error).message, mismatches, failures }, "image download failed, starting again");
      await sleep(job.opts.retryDelayMs, undefined, { signal: job.signal });
    }
  }
}
