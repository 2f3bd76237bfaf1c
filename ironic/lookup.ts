/**
 * Lookup with IPA's retry policy: random exponential backoff between 1 and 60 s for up to
 * `timeoutS`, retrying on connection errors, any status but 200, an answer that is not JSON and an
 * answer without node.uuid; on 409 (the node is locked) an extra 5, then 10, then 30 s. When the time
 * is up the agent cannot work: LOOKUP_FAILED, and the bin exits non-zero.
 */
import type { Clock } from "../core/clock.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { LookupAttempt, LookupResult } from "./client.js";

export const MIN_BACKOFF_S = 1;
export const MAX_BACKOFF_S = 60;
/** The n-th wait is interval × 2^n × U(1 − JITTER, 1 + JITTER), kept within [1, 60] s. */
export const BACKOFF_JITTER = 0.25;
/** Extra waits after the first, second and later 409 answers. */
export const CONFLICT_EXTRA_S: readonly number[] = [5, 10, 30];

export interface LookupClient {
  lookup(macs: readonly string[], nodeUuid: string | undefined, signal?: AbortSignal): Promise<LookupAttempt>;
}

export interface LookupOptions {
  readonly client: LookupClient;
  readonly clock: Clock;
  readonly log: Logger;
  readonly macs: readonly string[];
  readonly nodeUuid?: string | undefined;
  /** Give up after this long (ipa-lookup-timeout). */
  readonly timeoutS: number;
  /** The first backoff before jitter (ipa-lookup-interval); never below 1 s. */
  readonly intervalS: number;
  readonly signal?: AbortSignal | undefined;
  /** Called before each wait (tests read the computed delays). */
  readonly onRetry?: (info: { attempt: number; waitMs: number; backoffMs: number; extraMs: number; status?: number; reason: string }) => void;
}

/** The backoff before try n+1 (n = 0 for the wait after the first failure), in ms. */
export function backoffMs(intervalS: number, n: number, random: number): number {
  const base = Math.max(MIN_BACKOFF_S, intervalS) * 2 ** Math.min(n, 30);
  const jittered = base * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * random);
  return Math.round(Math.min(MAX_BACKOFF_S, Math.max(MIN_BACKOFF_S, jittered)) * 1000);
}

export async function lookupNode(opts: LookupOptions): Promise<LookupResult> {
  const { clock, log } = opts;
  const started = clock.now();
  const deadline = started + opts.timeoutS * 1000;
  let attempt = 0;
  let conflicts = 0;
  let lastReason = "no attempt made";
  for (;;) {
    opts.signal?.throwIfAborted();
    attempt += 1;
    const res = await opts.client.lookup(opts.macs, opts.nodeUuid, opts.signal);
    if (res.ok) {
      log.info({ node: res.result.nodeUuid, attempts: attempt, ms: Math.round(clock.now() - started) }, "lookup succeeded");
      return res.result;
    }
    lastReason = res.reason;
    const now = clock.now();
    if (now >= deadline) break;
    const backoff = backoffMs(opts.intervalS, attempt - 1, clock.random());
    let extra = 0;
    if (res.status === 409) {
      extra = (CONFLICT_EXTRA_S[Math.min(conflicts, CONFLICT_EXTRA_S.length - 1)] ?? 30) * 1000;
      conflicts += 1;
    }
    const waitMs = Math.min(backoff + extra, deadline - now);
    log.warn({ attempt, status: res.status, reason: res.reason, waitMs }, "lookup failed, retrying");
    opts.onRetry?.({ attempt, waitMs, backoffMs: backoff, extraMs: extra, reason: res.reason, ...(res.status === undefined ? {} : { status: res.status }) });
    await clock.sleep(waitMs, opts.signal);
  }
  opts.signal?.throwIfAborted();
  throw new AgentError(
    "LOOKUP_FAILED",
    `no node found for MAC addresses [${opts.macs.join(", ")}]${opts.nodeUuid === undefined ? "" : ` / node ${opts.nodeUuid}`} ` +
      `within ${opts.timeoutS} s (${attempt} attempts); last: ${lastReason}`,
  );
}
