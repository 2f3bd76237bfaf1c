/**
 * The heartbeat loop. Ironic only moves a node on (next step, next command) when a heartbeat comes
 * in, so the timing here decides how fast a deploy or clean goes.
 *
 * - The first heartbeat goes out at start() (call it once the API listens).
 * - After a heartbeat Ironic accepted (202): the next in heartbeat_timeout × U(0.3, 0.6).
 *   After one that failed: in 5 × U(1, 2) s. Failures are logged, never thrown.
 * - force() (a command finished) sends one `forcedDelayMs` later (default 0.5 s; IPA: up to 5 s).
 *   Several within that window make one heartbeat.
 * - Ironic skips a heartbeat that arrives while the conductor still holds the node's lock (it is
 *   accepted, 202, but not acted on, "will retry on the next heartbeat"). So after a forced heartbeat
 *   a follow-up goes `followUpMs` later (default 5 s, IPA's own pace), unless another one went in
 *   between. The worst case is then IPA's, the usual case 4.5 s faster.
 * - The loop never sleeps more than `maxSleepMs` (5 s) at a time.
 * - stop() ends the loop and aborts a heartbeat in flight.
 */
import { type Clock, uniform } from "../core/clock.js";
import type { Logger } from "../core/log.js";
import type { HeartbeatPayload } from "./client.js";

export const MAX_SLEEP_MS = 5_000;
export const FORCED_DELAY_MS = 500;
export const FOLLOW_UP_MS = 5_000;
/** After success: heartbeat_timeout × U(0.3, 0.6). */
export const SUCCESS_FACTOR: readonly [number, number] = [0.3, 0.6];
/** After an error: 5 s × U(1, 2). */
export const ERROR_BASE_S = 5;
export const ERROR_FACTOR: readonly [number, number] = [1, 2];

export interface HeartbeatSender {
  heartbeat(nodeUuid: string, payload: HeartbeatPayload, signal?: AbortSignal): Promise<void>;
}

export type HeartbeatReason = "first" | "interval" | "forced" | "follow-up";

export type HeartbeatEvent =
  | {
      readonly type: "sent";
      /** Clock time the heartbeat went out. */
      readonly at: number;
      readonly reason: HeartbeatReason;
      readonly ok: boolean;
      readonly error?: string;
      /** Delay until the next regular heartbeat, as computed from the rules above. */
      readonly nextInMs: number;
    }
  | { readonly type: "forced"; readonly at: number; readonly dueInMs: number; readonly why: string }
  | { readonly type: "stopped"; readonly at: number };

export interface HeartbeaterOptions {
  readonly client: HeartbeatSender;
  readonly clock: Clock;
  readonly log: Logger;
  readonly nodeUuid: string;
  /** Ironic's heartbeat_timeout from lookup, in seconds. */
  readonly heartbeatTimeoutS: number;
  /** What each heartbeat carries, read when it goes out. */
  readonly payload: () => HeartbeatPayload;
  readonly maxSleepMs?: number;
  readonly forcedDelayMs?: number;
  /** 0: no follow-up. */
  readonly followUpMs?: number;
}

interface Pending {
  readonly kind: "forced" | "follow-up";
  readonly at: number;
  /** When it was asked for: any heartbeat that goes out after this covers it. */
  readonly requestedAt: number;
}

export class Heartbeater {
  private stopped = false;
  private running: Promise<void> | undefined;
  private wake = new AbortController();
  private readonly halt = new AbortController();
  private pending: Pending | undefined;
  private readonly listeners = new Set<(event: HeartbeatEvent) => void>();
  private readonly maxSleepMs: number;
  private readonly forcedDelayMs: number;
  private readonly followUpMs: number;
  private sentCount = 0;
  private lastFailed = false;

  constructor(private readonly opts: HeartbeaterOptions) {
    this.maxSleepMs = opts.maxSleepMs ?? MAX_SLEEP_MS;
    this.forcedDelayMs = opts.forcedDelayMs ?? FORCED_DELAY_MS;
    this.followUpMs = opts.followUpMs ?? FOLLOW_UP_MS;
  }

  /** Heartbeats sent so far (accepted or not). */
  get sent(): number {
    return this.sentCount;
  }

  onEvent(listener: (event: HeartbeatEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Sends the first heartbeat now and keeps going until stop(). */
  start(): void {
    if (this.running !== undefined) return;
    this.running = this.loop().catch((err: unknown) => {
      this.opts.log.error({ err }, "heartbeat loop crashed");
    });
  }

  /** Asks for a heartbeat soon (a command finished). */
  force(why = "command finished"): void {
    if (this.stopped) return;
    const now = this.opts.clock.now();
    const at = now + this.forcedDelayMs;
    if (this.pending === undefined || this.pending.kind === "follow-up" || this.pending.at > at) {
      this.pending = { kind: "forced", at, requestedAt: now };
    }
    this.emit({ type: "forced", at: now, dueInMs: this.pending.at - now, why });
    this.wake.abort();
  }

  async stop(): Promise<void> {
    if (this.stopped) {
      await this.running;
      return;
    }
    this.stopped = true;
    this.halt.abort();
    this.wake.abort();
    await this.running;
    this.emit({ type: "stopped", at: this.opts.clock.now() });
  }

  private emit(event: HeartbeatEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (err) {
        this.opts.log.warn({ err }, "heartbeat listener threw");
      }
    }
  }

  private async loop(): Promise<void> {
    const { clock } = this.opts;
    let nextAt = clock.now();
    let reason: HeartbeatReason = "first";
    while (!this.stopped) {
      for (;;) {
        if (this.stopped) return;
        const now = clock.now();
        const pending = this.pending;
        if (pending !== undefined && pending.at <= now) {
          reason = pending.kind;
          break;
        }
        if (now >= nextAt) break;
        const target = Math.min(nextAt, pending?.at ?? Number.POSITIVE_INFINITY);
        if (this.wake.signal.aborted) this.wake = new AbortController();
        await clock.sleep(Math.min(this.maxSleepMs, target - now), this.wake.signal);
      }
      if (this.stopped) return;
      const sentAt = clock.now();
      // A heartbeat going out now shows Ironic every command that finished before now.
      const covered = this.pending !== undefined && this.pending.requestedAt <= sentAt ? this.pending : undefined;
      if (covered !== undefined) {
        this.pending = undefined;
        if (reason === "interval" || reason === "first") reason = covered.kind;
      }
      let error: string | undefined;
      try {
        await this.opts.client.heartbeat(this.opts.nodeUuid, this.opts.payload(), this.halt.signal);
      } catch (err) {
        if (this.stopped) return;
        error = err instanceof Error ? err.message : String(err);
      }
      this.sentCount += 1;
      const ok = error === undefined;
      const nextInMs = ok
        ? Math.round(this.opts.heartbeatTimeoutS * uniform(clock, SUCCESS_FACTOR[0], SUCCESS_FACTOR[1]) * 1000)
        : Math.round(ERROR_BASE_S * uniform(clock, ERROR_FACTOR[0], ERROR_FACTOR[1]) * 1000);
      const doneAt = clock.now();
      nextAt = doneAt + nextInMs;
      if (ok && reason === "forced" && this.followUpMs > 0 && this.pending === undefined) {
        this.pending = { kind: "follow-up", at: doneAt + this.followUpMs, requestedAt: doneAt };
      }
      if (!ok) this.opts.log.warn({ reason, err: error, nextInMs }, "heartbeat failed");
      else if (reason === "first" || this.lastFailed) this.opts.log.info({ reason, nextInMs }, "heartbeat accepted");
      else this.opts.log.debug({ reason, nextInMs }, "heartbeat accepted");
      this.lastFailed = !ok;
      this.emit({ type: "sent", at: sentAt, reason, ok, nextInMs, ...(error === undefined ? {} : { error }) });
      reason = "interval";
    }
  }
}
