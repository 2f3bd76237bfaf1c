/**
 * The controller library: drives agents over any bus through a ControllerLink. It keeps a registry of
 * nodes (hello, last heartbeat, liveness), answers hellos with a join (identity, per-node token,
 * groups), sends commands to one node, a list, a group, the fleet or every node whose inventory
 * matches some facts, and collects the answers with a deadline: who answered, who did not.
 */
import { createHmac, randomUUID } from "node:crypto";
import { CONTENT_TYPES, contentTypeOf, decodeEnvelope, encodeEnvelope, type WireFormat } from "../core/codec.js";
import { backoffMs, type BusTarget, type ControllerInbound, type ControllerLink } from "../core/bus.js";
import {
  EVENTS,
  type CommandErrorBody,
  type Envelope,
  type HeartbeatBody,
  type HelloBody,
  type Json,
  type JsonObject,
  type ProgressBody,
  type ResultBody,
} from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";

export type NodeState = "alive" | "dead" | "offline" | "unknown";

export interface NodeView {
  readonly node: string;
  readonly state: NodeState;
  readonly hello: HelloBody | undefined;
  /** Epoch ms of the last heartbeat (or any message) from the node. */
  readonly lastSeen: number | undefined;
  readonly heartbeat: HeartbeatBody | undefined;
  readonly groups: readonly string[];
}

/** Which nodes a command is for. */
export type Selector =
  | { readonly node: string }
  | { readonly nodes: readonly string[] }
  | { readonly group: string }
  | { readonly fleet: true }
  /** Every known node whose hello summary matches: dotted paths into the summary → expected value. */
  | { readonly facts: Readonly<Record<string, Json>> };

export interface CommandOptions {
  /** Collect final results (default); false: the first answer (RUNNING for a long command) is enough. */
  readonly wait?: boolean;
  /** How long to collect answers, in ms. */
  readonly deadlineMs: number;
  /** The agent refuses to start the command after this many ms (envelope expires_at); default: deadlineMs. */
  readonly expiresInMs?: number;
  /** The command's own deadline on the agent. */
  readonly timeoutMs?: number;
  /** Command id (idempotency key); default: a new UUID. */
  readonly id?: string;
  readonly format?: WireFormat;
  readonly onProgress?: (node: string, progress: ProgressBody) => void;
  /** Where agents send the answers, when not to their usual address (e.g. a NATS inbox). */
  readonly replyTo?: string;
  /**
   * Sends the command again, addressed to each node that has not answered yet, every this many ms
   * (default 5000; 0: never). Same id: an agent that has it answers from its stored result and never
   * runs it twice, so an answer lost on the way (a broker restart, a hub with no controller attached)
   * is asked for again.
   */
  readonly resendMs?: number;
}

export type NodeAnswer =
  | { readonly node: string; readonly kind: "result"; readonly result: ResultBody }
  | { readonly node: string; readonly kind: "error"; readonly error: CommandErrorBody };

export interface FleetAnswer {
  readonly id: string;
  /** Nodes the command was expected to reach. */
  readonly expected: readonly string[];
  /** Every answer, final when `wait` was asked for (a node that only said RUNNING is in `pending`). */
  readonly answers: ReadonlyMap<string, NodeAnswer>;
  /** Expected nodes that said nothing before the deadline. */
  readonly silent: readonly string[];
  /** Nodes that accepted the command but had not finished by the deadline. */
  readonly pending: readonly string[];
  readonly elapsedMs: number;
}

export interface ControllerOptions {
  readonly link: ControllerLink;
  readonly log: Logger;
  /**
   * Shared by every controller of one fleet: node and broadcast tokens are derived from it, so a CLI
   * and a long-running controller agree without talking. Default: random (tokens good for this
   * process only).
   */
  readonly secret?: string;
  /**
   * The token commands to a node carry, when it is not the derived one (REST agents have the token
   * Ironic or their configuration gave them); undefined for broadcasts.
   */
  readonly tokenFor?: (node: string | undefined) => string | undefined;
  /** Answer hellos with a join (default true). */
  readonly join?: boolean;
  /** Groups to assign a node when it joins. */
  readonly groupsFor?: (node: string, hello: HelloBody) => readonly string[];
  /** Heartbeat interval agents are told to use (join answer), in seconds. */
  readonly heartbeatIntervalS?: number;
  /** A node is dead after this many missed heartbeats (default 3). */
  readonly missedBeats?: number;
  readonly format?: WireFormat;
  /** Signs each envelope before it is sent (signed commands). */
  readonly sign?: (env: Envelope) => Envelope;
  readonly now?: () => number;
}

interface Entry {
  node: string;
  hello: HelloBody | undefined;
  heartbeat: HeartbeatBody | undefined;
  lastSeen: number | undefined;
  offline: boolean;
  groups: readonly string[];
}

interface Collector {
  readonly id: string;
  readonly expected: Set<string>;
  /** Expected nodes without a final answer yet (kept so an answer costs O(1), not a scan). */
  readonly unsettled: Set<string>;
  readonly answers: Map<string, NodeAnswer>;
  readonly wait: boolean;
  readonly started: number;
  readonly onProgress: CommandOptions["onProgress"];
  finish(): void;
}

export type ControllerEvent =
  | { readonly type: "hello"; readonly node: string; readonly hello: HelloBody }
  | { readonly type: "heartbeat"; readonly node: string; readonly heartbeat: HeartbeatBody }
  | { readonly type: "offline"; readonly node: string; readonly reason: string }
  | { readonly type: "progress"; readonly node: string; readonly progress: ProgressBody }
  | { readonly type: "result"; readonly node: string; readonly result: ResultBody; readonly correlationId: string | undefined }
  | { readonly type: "error"; readonly node: string; readonly error: CommandErrorBody; readonly correlationId: string | undefined };

export class Controller {
  private readonly link: ControllerLink;
  private readonly log: Logger;
  private readonly secret: string;
  private readonly registry = new Map<string, Entry>();
  /** Derived node tokens, computed once each. */
  private readonly tokens = new Map<string, string>();
  private readonly collectors = new Map<string, Collector>();
  private readonly listeners = new Set<(event: ControllerEvent) => void>();
  private readonly now: () => number;
  private readonly format: WireFormat;
  private readonly heartbeatIntervalS: number;
  private readonly missedBeats: number;
  private closed = false;
  /** Messages the controller could not decode, for metrics. */
  dropped = 0;
  /** Heartbeats handled, for metrics. */
  heartbeats = 0;

  constructor(private readonly opts: ControllerOptions) {
    this.link = opts.link;
    this.log = opts.log.child({ component: "controller", transport: opts.link.kind });
    this.secret = opts.secret ?? randomUUID();
    this.now = opts.now ?? Date.now;
    this.format = opts.format ?? "json";
    this.heartbeatIntervalS = opts.heartbeatIntervalS ?? 30;
    this.missedBeats = opts.missedBeats ?? 3;
  }

  async start(): Promise<void> {
    await this.link.open({
      message: (msg) => this.inbound(msg),
      gone: (node, reason) => this.markOffline(node, reason),
    });
  }

  async stop(): Promise<void> {
    this.closed = true;
    for (const c of [...this.collectors.values()]) c.finish();
    await this.link.close();
  }

  on(listener: (event: ControllerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The token commands to `node` carry; derived from the fleet secret. */
  nodeToken(node: string): string {
    let token = this.tokens.get(node);
    if (token === undefined) {
      token = createHmac("sha256", this.secret).update(`node:${node}`).digest("base64url");
      this.tokens.set(node, token);
    }
    return token;
  }

  /** The token a command to `node` carries (undefined: a broadcast, or none). */
  tokenFor(node: string | undefined): string | undefined {
    if (this.opts.tokenFor !== undefined) return this.opts.tokenFor(node);
    return node === undefined ? this.broadcastToken() : this.nodeToken(node);
  }

  /** The token group and fleet commands carry. */
  broadcastToken(): string {
    return createHmac("sha256", this.secret).update("broadcast").digest("base64url");
  }

  nodes(): NodeView[] {
    return [...this.registry.values()].map((e) => this.view(e));
  }

  node(node: string): NodeView | undefined {
    const e = this.registry.get(node);
    return e === undefined ? undefined : this.view(e);
  }

  private view(e: Entry): NodeView {
    return { node: e.node, state: this.state(e), hello: e.hello, heartbeat: e.heartbeat, lastSeen: e.lastSeen, groups: e.groups };
  }

  private state(e: Entry): NodeState {
    if (e.offline) return "offline";
    if (e.lastSeen === undefined) return "unknown";
    return this.now() - e.lastSeen > this.missedBeats * this.heartbeatIntervalS * 1000 ? "dead" : "alive";
  }

  /**
   * Sends one command to the selected nodes and collects answers until every expected node has
   * answered or the deadline passes. Never throws for an agent's refusal: that is an answer.
   */
  async command(selector: Selector, name: string, params: JsonObject, opts: CommandOptions): Promise<FleetAnswer> {
    if (this.closed) throw new AgentError("SHUTTING_DOWN", "controller stopped");
    const id = opts.id ?? randomUUID();
    const wait = opts.wait ?? true;
    const started = this.now();
    const expected = new Set(this.expected(selector));
    const answers = new Map<string, NodeAnswer>();
    let resend: NodeJS.Timeout | undefined;
    const result = new Promise<FleetAnswer>((resolve) => {
      const timer = setTimeout(() => collector.finish(), opts.deadlineMs);
      const collector: Collector = {
        id,
        expected,
        unsettled: new Set(expected),
        answers,
        wait,
        started,
        onProgress: opts.onProgress,
        finish: () => {
          clearTimeout(timer);
          if (resend !== undefined) clearInterval(resend);
          this.collectors.delete(id);
          const pending: string[] = [];
          const silent: string[] = [];
          for (const n of expected) {
            const a = answers.get(n);
            if (a === undefined) silent.push(n);
            else if (wait && a.kind === "result" && a.result.command_status === "RUNNING") pending.push(n);
          }
          resolve({ id, expected: [...expected], answers, silent, pending, elapsedMs: this.now() - started });
        },
      };
      this.collectors.set(id, collector);
    });
    const issued = this.now();
    const env = (node: string | undefined, derived: string): Envelope => {
      const token = this.opts.tokenFor === undefined ? derived : this.opts.tokenFor(node);
      const e: Envelope = {
        v: 1,
        id,
        kind: "command",
        issued_at: issued,
        expires_at: issued + (opts.expiresInMs ?? opts.deadlineMs),
        body: { name, params, ...(wait ? { wait: true } : {}), ...(opts.timeoutMs !== undefined ? { timeout_ms: opts.timeoutMs } : {}) },
      };
      if (token !== undefined) e.token = token;
      if (node !== undefined) e.node = node;
      if (opts.replyTo !== undefined) e.reply_to = opts.replyTo;
      return e;
    };
    const deadline = started + opts.deadlineMs;
    const format = opts.format ?? this.format;
    if ("group" in selector || "fleet" in selector) {
      const target: BusTarget = "group" in selector ? { group: selector.group } : { fleet: true };
      await this.deliver(target, env(undefined, this.broadcastToken()), format, deadline);
    } else {
      await Promise.all([...expected].map((node) => this.deliver({ node }, env(node, this.nodeToken(node)), format, deadline)));
    }
    const collector = this.collectors.get(id);
    if (collector !== undefined && expected.size > 0 && collector.unsettled.size === 0) collector.finish();
    const resendMs = opts.resendMs ?? 5000;
    if (resendMs > 0 && this.collectors.has(id)) {
      resend = setInterval(() => {
        const c = this.collectors.get(id);
        if (c === undefined) return;
        for (const node of c.unsettled) {
          this.log.debug({ id, node }, "no answer yet: sending again");
          void this.deliver({ node }, env(node, this.nodeToken(node)), format, deadline);
        }
      }, resendMs);
      resend.unref();
    }
    return result;
  }

  /** One node, one command: the final result, or an AgentError naming what went wrong. */
  async run(node: string, name: string, params: JsonObject, opts: Omit<CommandOptions, "wait"> & { readonly wait?: boolean }): Promise<ResultBody> {
    const answer = await this.command({ node }, name, params, { wait: true, ...opts });
    const a = answer.answers.get(node);
    if (a === undefined) throw new AgentError("COMMAND_TIMEOUT", `node ${node} did not answer ${name} within ${opts.deadlineMs} ms`);
    if (a.kind === "error") throw new AgentError("COMMAND_FAILED", `${a.error.type}: ${a.error.message}: ${a.error.details}`, { ipaType: a.error.type, status: a.error.code });
    return a.result;
  }

  /** Sends raw bytes to a target (tests, tools): no envelope is built or checked. */
  sendRaw(target: BusTarget, bytes: Uint8Array, contentType: string): Promise<void> {
    return this.link.send(target, bytes, contentType);
  }

  /** Sends an envelope, signed when the controller signs, retrying while the broker is away. */
  async deliver(target: BusTarget, env: Envelope, format: WireFormat, deadline: number): Promise<void> {
    const sealed = this.opts.sign?.(env) ?? env;
    const bytes = encodeEnvelope(sealed, format);
    // The broker de-duplicates the retries of this one delivery (JetStream's Nats-Msg-Id), not a
    // deliberate second delivery of the same envelope: that one the agent answers from its history.
    const deliveryId = `${env.id}/${randomUUID()}`;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.link.send(target, bytes, CONTENT_TYPES[format], deliveryId);
        return;
      } catch (err) {
        const wait = backoffMs(attempt, 100, 2000);
        if (this.closed || this.now() + wait > deadline) {
          this.log.warn({ err, target, id: env.id }, "could not send before the deadline");
          return;
        }
        this.log.debug({ err, attempt, target }, "send failed; retrying");
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private settled(c: Collector | undefined, node: string): boolean {
    const a = c?.answers.get(node);
    if (a === undefined || c === undefined) return false;
    return !(c.wait && a.kind === "result" && a.result.command_status === "RUNNING");
  }

  private expected(selector: Selector): string[] {
    if ("node" in selector) return [selector.node];
    if ("nodes" in selector) return [...selector.nodes];
    const all = [...this.registry.values()];
    if ("group" in selector) return all.filter((e) => e.groups.includes(selector.group)).map((e) => e.node);
    if ("fleet" in selector) return all.map((e) => e.node);
    return all.filter((e) => e.hello !== undefined && matches(e.hello.summary, selector.facts)).map((e) => e.node);
  }

  // ---- inbound ---------------------------------------------------------------------------------

  private entry(node: string): Entry {
    let e = this.registry.get(node);
    if (e === undefined) {
      e = { node, hello: undefined, heartbeat: undefined, lastSeen: undefined, offline: false, groups: [] };
      this.registry.set(node, e);
    }
    return e;
  }

  private markOffline(node: string, reason: string): void {
    const e = this.entry(node);
    e.offline = true;
    this.emit({ type: "offline", node, reason });
  }

  private inbound(msg: ControllerInbound): void {
    let env: Envelope;
    try {
      env = decodeEnvelope(msg.bytes, contentTypeOf(msg.bytes, msg.contentType));
    } catch (err) {
      this.dropped++;
      this.log.warn({ err, node: msg.node, kind: msg.kind }, "undecodable message from an agent dropped");
      return;
    }
    const node = msg.node !== "" ? msg.node : env.node;
    if (node === undefined) {
      this.dropped++;
      this.log.warn({ kind: env.kind }, "message from an unnamed node dropped");
      return;
    }
    switch (env.kind) {
      case "heartbeat": {
        this.heartbeats++;
        const e = this.entry(node);
        e.heartbeat = env.body;
        e.lastSeen = this.now();
        e.offline = false;
        this.emit({ type: "heartbeat", node, heartbeat: env.body });
        return;
      }
      case "hello": {
        const e = this.entry(node);
        e.hello = env.body;
        e.lastSeen = this.now();
        e.offline = false;
        this.emit({ type: "hello", node, hello: env.body });
        if (this.opts.join !== false) void this.join(e, env.body);
        return;
      }
      case "event": {
        if (env.body.name === EVENTS.offline) this.markOffline(node, "agent said offline");
        else if (env.body.name === EVENTS.online) {
          const e = this.entry(node);
          e.offline = false;
        }
        return;
      }
      case "progress": {
        this.touch(node);
        const c = this.collectors.get(env.body.command_id);
        c?.onProgress?.(node, env.body);
        this.emit({ type: "progress", node, progress: env.body });
        return;
      }
      case "result": {
        this.touch(node);
        this.emit({ type: "result", node, result: env.body, correlationId: env.correlation_id });
        this.answer(node, env.correlation_id ?? env.body.id, { node, kind: "result", result: env.body });
        return;
      }
      case "error": {
        this.touch(node);
        this.emit({ type: "error", node, error: env.body, correlationId: env.correlation_id });
        if (env.correlation_id !== undefined) this.answer(node, env.correlation_id, { node, kind: "error", error: env.body });
        return;
      }
      default:
        this.dropped++;
        this.log.warn({ node, kind: env.kind }, "unexpected message kind from an agent dropped");
    }
  }

  private touch(node: string): void {
    const e = this.entry(node);
    e.lastSeen = this.now();
    e.offline = false;
  }

  private answer(node: string, id: string, answer: NodeAnswer): void {
    const c = this.collectors.get(id);
    if (c === undefined) return;
    const prior = c.answers.get(node);
    // A final answer is never replaced by a late RUNNING one (redelivery, reordering).
    if (prior !== undefined && !(prior.kind === "result" && prior.result.command_status === "RUNNING")) return;
    c.answers.set(node, answer);
    if (!c.expected.has(node)) {
      c.expected.add(node);
      c.unsettled.add(node);
    }
    if (this.settled(c, node)) c.unsettled.delete(node);
    if (c.unsettled.size === 0) c.finish();
  }

  private async join(e: Entry, hello: HelloBody): Promise<void> {
    const groups = this.opts.groupsFor?.(e.node, hello) ?? [];
    e.groups = groups;
    const env: Envelope = {
      v: 1,
      id: randomUUID(),
      kind: "event",
      node: e.node,
      issued_at: this.now(),
      token: this.nodeToken(e.node),
      body: {
        name: EVENTS.join,
        data: {
          identity: e.node,
          token: this.nodeToken(e.node),
          broadcast_token: this.broadcastToken(),
          groups: [...groups],
          heartbeat_interval_s: this.heartbeatIntervalS,
        },
      },
    };
    await this.deliver({ node: e.node }, env, this.format, this.now() + 30_000);
  }

  private emit(event: ControllerEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (err) {
        this.log.error({ err }, "controller listener threw");
      }
    }
  }
}

/** Does an inventory summary match every fact? Paths are dotted; values compare as JSON. */
export function matches(summary: JsonObject, facts: Readonly<Record<string, Json>>): boolean {
  for (const [path, want] of Object.entries(facts)) {
    let cur: Json | undefined = summary;
    for (const part of path.split(".")) {
      if (cur === null || typeof cur !== "object" || Array.isArray(cur)) {
        cur = undefined;
        break;
      }
      cur = cur[part];
    }
    if (JSON.stringify(cur) !== JSON.stringify(want)) return false;
  }
  return true;
}
