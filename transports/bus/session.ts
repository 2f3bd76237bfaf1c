/**
 * The agent's side of every bus, written once over an AgentLink: announce (hello) and join, heartbeats,
 * commands in, results and progress out, an outbox that keeps what the agent produced while the link
 * was down, and a queue for commands that arrive while the hardware lock is held. The link moves
 * bytes; the agent (AgentPort) decodes, checks and runs. Neither knows the other's details.
 */
import { contentTypeOf, type WireFormat } from "../../core/codec.js";
import { backoffMs, type AgentInbound, type AgentLink, type AgentSends } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import type { Envelope, ProgressBody, ResultBody } from "../../core/envelope.js";
import type { Logger } from "../../core/log.js";
import type { AgentPort, Transport } from "../../core/transport.js";
import { randomUUID } from "node:crypto";

export interface BusTransportOptions {
  readonly link: AgentLink;
  /** Encoding of what the agent sends unprompted (hello, heartbeats); answers follow the command's. */
  readonly format: WireFormat;
  readonly heartbeatIntervalMs: number;
  /** Messages kept while the link is down; past it the oldest progress, then the oldest message, goes. */
  readonly outboxLimit: number;
  /** Commands waiting for the hardware lock; past it a command is refused with AGENT_BUSY. */
  readonly maxQueuedCommands: number;
  /** Groups from the configuration; a join answer adds its own. */
  readonly groups?: readonly string[];
  /** Results sent at once, without waiting for the previous broker acknowledgement. */
  readonly window?: number;
  readonly log: Logger;
}

interface Route {
  readonly replyTo: string | undefined;
  readonly format: WireFormat;
}

interface Outgoing {
  readonly kind: AgentSends;
  bytes: Uint8Array;
  contentType: string;
  readonly replyTo: string | undefined;
  /** Set for progress, which is coalesced per command while waiting. */
  readonly progressOf: string | undefined;
  sending: boolean;
}

interface Waiting {
  readonly msg: AgentInbound;
  readonly contentType: string;
}

export class BusTransport implements Transport {
  readonly kind: string;
  readonly format: WireFormat;
  private agent: AgentPort | undefined;
  private readonly link: AgentLink;
  private readonly log: Logger;
  private readonly routes = new Map<string, Route>();
  /** Insertion-ordered: the outbox, oldest first. */
  private readonly outbox = new Set<Outgoing>();
  private readonly pendingProgress = new Map<string, Outgoing>();
  private sendingCount = 0;
  private readonly waiting: Waiting[] = [];
  private draining = false;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private heartbeatMs: number;
  private seq = 0;
  private unsubscribe: (() => void)[] = [];
  private stopped = false;
  private readonly window: number;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly opts: BusTransportOptions) {
    this.link = opts.link;
    this.kind = opts.link.kind;
    this.format = opts.format;
    this.heartbeatMs = opts.heartbeatIntervalMs;
    this.window = opts.window ?? 64;
    this.log = opts.log.child({ transport: this.kind, node: opts.link.node });
  }

  async start(agent: AgentPort): Promise<void> {
    this.agent = agent;
    this.stopped = false;
    this.unsubscribe = [agent.onFinished((r) => this.finished(r)), agent.onProgress((p) => this.progress(p))];
    try {
      await this.open();
    } catch (err) {
      const error = AgentError.from(err);
      if (error.code === "CONFIG_INVALID") {
        for (const u of this.unsubscribe) u();
        this.unsubscribe = [];
        throw err;
      }
      // A ramdisk that boots while its broker is away keeps trying: the agent starts, its other
      // transports serve, and this one joins when the broker is back.
      this.log.warn({ err: error.message }, "bus not reachable at start; retrying in the background");
      this.retryOpen(0);
    }
  }

  private open(): Promise<void> {
    return this.link.open({
      message: (msg) => this.inbound(msg),
      up: () => this.up(),
      down: (reason) => this.log.warn({ reason, kept: this.outbox.size }, "bus link down"),
    });
  }

  private retryOpen(attempt: number): void {
    if (this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.open().then(
        () => this.log.info({ attempts: attempt + 1 }, "bus reachable"),
        (err: unknown) => {
          this.log.debug({ err: AgentError.from(err).message, attempt }, "bus still not reachable");
          this.retryOpen(attempt + 1);
        },
      );
    }, backoffMs(attempt, 1000, 30_000));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    for (const u of this.unsubscribe) u();
    this.unsubscribe = [];
    if (this.waiting.length > 0) this.log.warn({ dropped: this.waiting.length }, "stopping with commands still waiting for the lock; unanswered");
    this.waiting.length = 0;
    await this.flushed(1000);
    if (this.outbox.size > 0) this.log.warn({ lost: this.outbox.size }, "stopping with messages the link could not send");
    await this.link.close();
  }

  /** Messages produced and not yet taken by the broker (for tests and metrics). */
  get backlog(): number {
    return this.outbox.size;
  }

  /** Commands waiting for the hardware lock. */
  get queued(): number {
    return this.waiting.length;
  }

  // ---- link events ----------------------------------------------------------------------------

  private up(): void {
    const agent = this.agent;
    if (agent === undefined || this.stopped) return;
    this.log.info({ kept: this.outbox.size }, "bus link up");
    void agent.hello().then(
      (hello) => {
        const env: Envelope = { v: 1, id: randomUUID(), kind: "hello", body: hello, issued_at: Date.now() };
        if (agent.node !== undefined) env.node = agent.node;
        const { bytes, contentType } = agent.seal(env, this.format);
        // Hello first, then everything kept while the link was down, in order.
        return this.link.publish("hello", bytes, contentType).catch((err: unknown) => this.log.warn({ err }, "hello not sent"));
      },
      (err: unknown) => this.log.error({ err }, "could not build the hello"),
    ).finally(() => {
      this.heartbeat();
      this.pump();
    });
    this.armHeartbeat();
  }

  private armHeartbeat(): void {
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
    this.heartbeatTimer.unref();
  }

  private heartbeat(): void {
    const agent = this.agent;
    if (agent === undefined || this.stopped || !this.link.connected) return;
    const env: Envelope = { v: 1, id: randomUUID(), kind: "heartbeat", body: agent.heartbeat(this.seq++), issued_at: Date.now() };
    if (agent.node !== undefined) env.node = agent.node;
    const { bytes, contentType } = agent.seal(env, this.format);
    // A heartbeat that cannot go now is worthless later: never kept.
    this.link.publish("heartbeat", bytes, contentType).catch((err: unknown) => this.log.debug({ err }, "heartbeat not sent"));
  }

  private inbound(msg: AgentInbound): void {
    // Always offered to the agent first: commands that run while the lock is held (cancel, status)
    // must not wait behind the queue; those refused as busy join the queue's tail.
    void this.receive(msg, contentTypeOf(msg.bytes, msg.contentType), false);
  }

  /** Hands one message to the agent and answers it. Returns false when it must wait for the lock. */
  private async receive(msg: AgentInbound, contentType: string, retry: boolean): Promise<boolean> {
    const agent = this.agent;
    if (agent === undefined) return true;
    try {
      const outcome = await agent.receiveEnvelope(msg.bytes, contentType, { transport: this.kind, source: msg.source, noWait: true });
      const request = outcome.request;
      if (outcome.error?.code === "AGENT_BUSY" && request?.kind === "command") {
        if (retry) return false;
        if (this.waiting.length < this.opts.maxQueuedCommands) {
          // Safe with the agent from here on: acknowledged, and run when the lock is free.
          this.waiting.push({ msg, contentType });
          msg.ack();
          return true;
        }
        // The queue is full: the agent's own refusal (naming the command holding the lock) goes back.
        this.log.warn({ queued: this.waiting.length, id: request.id }, "command queue full: refused as busy");
      }
      if (outcome.join !== undefined) this.joined(outcome.join.groups, outcome.join.heartbeat_interval_s);
      const replyTo = request?.reply_to;
      const handle = outcome.handle;
      if (handle !== undefined && request?.kind === "command") {
        const route: Route = { replyTo, format: outcome.format };
        if (!handle.finished) {
          this.routes.set(handle.id, route);
          if (request.body.wait !== true && outcome.reply !== undefined) this.send("result", outcome.reply.bytes, outcome.reply.contentType, replyTo);
        } else {
          const reply = agent.answer(outcome.format, handle.toJSON(), request);
          this.send("result", reply.bytes, reply.contentType, replyTo);
        }
      } else if (outcome.reply !== undefined) {
        this.send(outcome.error !== undefined ? "error" : "result", outcome.reply.bytes, outcome.reply.contentType, replyTo);
      }
      if (this.log.isLevelEnabled("debug")) {
        this.log.debug({ id: request?.id, kind: request?.kind, code: outcome.error?.code, answered: outcome.reply !== undefined || handle !== undefined, source: msg.source }, "bus message handled");
      }
    } catch (err) {
      // receiveEnvelope never throws; this is a bug, logged and answered by nothing.
      this.log.error({ err }, "bus message handling failed");
    }
    msg.ack();
    return true;
  }

  /** A command finished: its result goes out, and commands waiting for the lock get their turn. */
  private finished(result: ResultBody): void {
    const route = this.routes.get(result.id);
    if (route !== undefined) {
      this.routes.delete(result.id);
      const agent = this.agent;
      if (agent !== undefined) {
        const reply = agent.answer(route.format, result, { id: result.id });
        this.pendingProgress.delete(result.id);
        this.send("result", reply.bytes, reply.contentType, route.replyTo);
      }
    }
    if (this.waiting.length > 0) void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.waiting.length > 0 && !this.stopped) {
        const head = this.waiting[0];
        if (head === undefined) break;
        // Acknowledged when it was queued: a second ack is a no-op on every link.
        const done = await this.receive(head.msg, head.contentType, true);
        if (!done) break;
        this.waiting.shift();
      }
    } finally {
      this.draining = false;
    }
  }

  private progress(p: ProgressBody): void {
    const route = this.routes.get(p.command_id);
    const agent = this.agent;
    if (route === undefined || agent === undefined) return;
    const env: Envelope = { v: 1, id: randomUUID(), kind: "progress", correlation_id: p.command_id, body: p };
    if (agent.node !== undefined) env.node = agent.node;
    const { bytes, contentType } = agent.seal(env, route.format);
    const pending = this.pendingProgress.get(p.command_id);
    if (pending !== undefined && !pending.sending) {
      // Still waiting to go: the newer figure replaces it in place.
      pending.bytes = bytes;
      pending.contentType = contentType;
      return;
    }
    this.send("progress", bytes, contentType, route.replyTo, p.command_id);
  }

  private joined(groups: readonly string[] | undefined, intervalS: number | undefined): void {
    if (groups !== undefined) {
      const all = [...new Set([...(this.opts.groups ?? []), ...groups])];
      this.link.setGroups(all).catch((err: unknown) => this.log.warn({ err, groups: all }, "could not listen to the joined groups"));
    }
    if (intervalS !== undefined && intervalS * 1000 !== this.heartbeatMs) {
      this.heartbeatMs = intervalS * 1000;
      this.armHeartbeat();
    }
  }

  // ---- outbox ---------------------------------------------------------------------------------

  private send(kind: AgentSends, bytes: Uint8Array, contentType: string, replyTo: string | undefined, progressOf?: string): void {
    if (this.outbox.size >= this.opts.outboxLimit) this.evict();
    const out: Outgoing = { kind, bytes, contentType, replyTo, progressOf, sending: false };
    this.outbox.add(out);
    if (progressOf !== undefined) this.pendingProgress.set(progressOf, out);
    this.pump();
  }

  private evict(): void {
    let victim: Outgoing | undefined;
    for (const out of this.outbox) {
      if (out.sending) continue;
      if (out.kind === "progress") {
        victim = out;
        break;
      }
      victim ??= out;
    }
    if (victim === undefined) return;
    this.outbox.delete(victim);
    if (victim.progressOf !== undefined && this.pendingProgress.get(victim.progressOf) === victim) this.pendingProgress.delete(victim.progressOf);
    this.log.error({ kind: victim.kind, limit: this.opts.outboxLimit }, "outbox full: oldest message dropped");
  }

  private pump(): void {
    if (!this.link.connected) return;
    for (const out of this.outbox) {
      if (this.sendingCount >= this.window) return;
      if (out.sending) continue;
      out.sending = true;
      this.sendingCount++;
      if (out.progressOf !== undefined && this.pendingProgress.get(out.progressOf) === out) this.pendingProgress.delete(out.progressOf);
      this.link.publish(out.kind, out.bytes, out.contentType, out.replyTo).then(
        () => {
          this.sendingCount--;
          this.outbox.delete(out);
          if (this.outbox.size === 0) this.idle();
          this.pump();
        },
        (err: unknown) => {
          // Kept, in place; the next "up" sends it again.
          this.sendingCount--;
          out.sending = false;
          this.log.debug({ err, kind: out.kind }, "send failed; kept for the next connection");
        },
      );
    }
  }

  private idle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when the outbox is empty, or after `ms`. */
  flushed(ms: number): Promise<void> {
    if (this.outbox.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      timer.unref();
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** The settings of a bus session that come from the agent's configuration. */
export interface BusConfig {
  readonly busFormat: WireFormat;
  readonly heartbeatIntervalS: number;
  readonly outboxLimit: number;
  readonly maxQueuedCommands: number;
  readonly groups: readonly string[];
}

/** A bus session over `link`, set up from the agent's configuration. */
export function busTransport(link: AgentLink, config: BusConfig, log: Logger): BusTransport {
  return new BusTransport({
    link,
    format: config.busFormat,
    heartbeatIntervalMs: config.heartbeatIntervalS * 1000,
    outboxLimit: config.outboxLimit,
    maxQueuedCommands: config.maxQueuedCommands,
    groups: config.groups,
    log,
  });
}

/** The status envelope an agent publishes when up, and leaves as its will (or sends on close) when gone. */
export function statusEnvelope(node: string, online: boolean, seal: (env: Envelope) => { bytes: Uint8Array; contentType: string }): { bytes: Uint8Array; contentType: string } {
  return seal({ v: 1, id: randomUUID(), node, kind: "event", issued_at: Date.now(), body: { name: online ? "ironbus.online" : "ironbus.offline", data: { node } } });
}
