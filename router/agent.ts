/**
 * The agent: a router and its transports. It implements AgentPort, the only face transports see,
 * including the envelope path shared by every transport (decode, validate, submit, answer).
 */
import { randomUUID } from "node:crypto";
import type { Extension } from "../core/command.js";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope, formatOf, type WireFormat } from "../core/codec.js";
import type { AgentConfig } from "../core/config.js";
import { EVENTS, JoinDataSchema, type Envelope, type EnvelopeOf, type HeartbeatBody, type HelloBody, type JoinData, type ProgressBody, type ResultBody } from "../core/envelope.js";
import { OPEN_GUARD, type EnvelopeGuard } from "../core/guard.js";
import { hostname } from "node:os";
import { timingSafeEqual } from "node:crypto";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { AgentPort, CommandHandle, EnvelopeOutcome, EnvelopeReply, ReceiveContext, SubmitRequest, Transport } from "../core/transport.js";
import { Router } from "./router.js";

export interface AgentOptions {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly extensions: readonly Extension[];
  readonly transports: readonly Transport[];
  readonly now?: () => number;
  /** Checks and seals envelopes (signatures, replay window, authorisation); default: trusts the transports. */
  readonly guard?: EnvelopeGuard;
  /** This agent's node id on the buses; envelopes it sends carry it. */
  readonly node?: string;
  /** What the agent announces when it joins a bus (MACs, inventory summary); default: hostname only. */
  readonly hello?: () => Promise<Omit<HelloBody, "transports" | "version">>;
}

const REST_CONTEXT: ReceiveContext = { transport: "rest", source: "node", tokenChecked: true };

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.byteLength === y.byteLength && timingSafeEqual(x, y);
}

export class Agent implements AgentPort {
  readonly router: Router;
  readonly version: string;
  readonly startedAt: number;
  readonly standalone: boolean;
  readonly maxMessageBytes: number;
  readonly node: string | undefined;
  private agentToken: string | undefined;
  private broadcastToken: string | undefined;
  private joined: JoinData | undefined;
  private readonly guard: EnvelopeGuard;
  private readonly audit: Logger;
  private readonly helloSource: AgentOptions["hello"];
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly transports: readonly Transport[];
  private started: Transport[] = [];

  constructor(opts: AgentOptions) {
    const now = opts.now ?? Date.now;
    this.log = opts.log;
    this.now = now;
    this.guard = opts.guard ?? OPEN_GUARD;
    this.audit = opts.log.child({ audit: true });
    this.node = opts.node;
    this.helloSource = opts.hello;
    this.version = opts.config.version;
    this.startedAt = now() / 1000;
    this.standalone = opts.config.standalone;
    this.maxMessageBytes = opts.config.maxMessageBytes;
    this.agentToken = opts.config.agentToken;
    this.transports = opts.transports;
    this.router = new Router({
      extensions: opts.extensions,
      log: opts.log,
      allowDestructive: opts.config.allowDestructive,
      resultHistory: opts.config.resultHistory,
      idHistory: opts.config.idHistory,
      defaultTimeoutMs: opts.config.commandTimeoutMs,
      now,
    });
  }

  token(): string | undefined {
    return this.agentToken;
  }

  /** Sets the token once the agent learns it (lookup); commands must carry it from then on. */
  setToken(token: string): void {
    this.agentToken = token;
  }

  /** The join answer this agent took last, if any. */
  joinData(): JoinData | undefined {
    return this.joined;
  }

  async hello(): Promise<HelloBody> {
    const base = this.helloSource === undefined ? { macs: [], hostname: hostname(), summary: {} } : await this.helloSource();
    return { ...base, version: this.version, transports: this.transports.map((t) => t.kind) };
  }

  heartbeat(seq: number): HeartbeatBody {
    const busy = this.router.busyWith();
    const body: HeartbeatBody = { seq, status: busy === undefined ? "idle" : "busy", uptime_s: Math.max(0, this.now() / 1000 - this.startedAt), version: this.version };
    if (busy !== undefined) body.current_command = busy.fullName;
    return body;
  }

  async start(): Promise<void> {
    for (const transport of this.transports) {
      try {
        await transport.start(this);
        this.started.push(transport);
      } catch (err) {
        this.log.error({ err, transport: transport.kind }, "transport failed to start");
        await this.stop();
        throw err;
      }
    }
  }

  async stop(): Promise<void> {
    const started = this.started.reverse();
    this.started = [];
    for (const transport of started) {
      try {
        await transport.stop();
      } catch (err) {
        this.log.warn({ err, transport: transport.kind }, "transport failed to stop cleanly");
      }
    }
    await this.router.close();
  }

  busyWith(): string | undefined {
    return this.router.busyWith()?.shortName;
  }

  /**
   * IPA's POST /v1/commands: an unsigned command, so the guard refuses it where signatures are
   * required. Not async: the answer must not wait extra turns (an async command answers RUNNING).
   */
  submit(req: SubmitRequest): Promise<CommandHandle> {
    const facts = this.router.describe(req.name);
    try {
      this.guard.check({ v: 1, id: req.id ?? randomUUID(), kind: "command", body: { name: req.name, params: req.params } }, REST_CONTEXT, facts);
    } catch (err) {
      return Promise.reject(err);
    }
    const pending = this.router.submit(req);
    if (facts?.destructive !== true) return pending;
    return pending.then((handle) => {
      this.audit.info({ commandId: handle.id, command: req.name, keyId: null, transport: "rest", source: "node" }, "command accepted");
      return handle;
    });
  }

  get(id: string): CommandHandle | undefined {
    return this.router.get(id);
  }

  list(): CommandHandle[] {
    return this.router.list();
  }

  onProgress(listener: (progress: ProgressBody) => void): () => void {
    return this.router.on("progress", (_record, progress) => listener(progress));
  }

  onFinished(listener: (result: ResultBody) => void): () => void {
    return this.router.on("finished", (record) => listener(record.toJSON()));
  }

  async handleEnvelope(bytes: Uint8Array, contentType: string | undefined): Promise<EnvelopeReply | undefined> {
    return (await this.receiveEnvelope(bytes, contentType, REST_CONTEXT)).reply;
  }

  async receiveEnvelope(bytes: Uint8Array, contentType: string | undefined, ctx: ReceiveContext): Promise<EnvelopeOutcome> {
    const format: WireFormat = formatOf(contentType) ?? "json";
    let request: Envelope | undefined;
    try {
      request = decodeEnvelope(bytes, contentType, this.maxMessageBytes);
      if (request.kind === "event" && request.body.name === EVENTS.join) return this.join(request, ctx, format);
      if (request.kind !== "command") {
        throw new AgentError("INVALID_ENVELOPE", `the agent accepts command envelopes and join answers, not ${request.kind}`);
      }
      if (request.node !== undefined && this.node !== undefined && request.node !== this.node && ctx.source === "node") {
        throw new AgentError("INVALID_ENVELOPE", `command addressed to node ${request.node}, this is ${this.node}`);
      }
      this.checkToken(request, ctx);
      const { body } = request;
      const facts = this.router.describe(body.name);
      const verdict = this.guard.check(request, ctx, facts);
      let handle: CommandHandle;
      try {
        handle = await this.router.submit({
          id: request.id,
          name: body.name,
          params: body.params,
          wait: ctx.noWait === true ? false : body.wait,
          timeoutMs: body.timeout_ms,
          expiresAt: request.expires_at,
        });
      } catch (err) {
        // Refused before it was recorded: the same envelope may come again (a bus queue) and is no replay.
        this.guard.release?.(request);
        throw err;
      }
      if (verdict.keyId !== undefined || facts?.destructive === true) {
        this.audit.info({ commandId: handle.id, command: body.name, keyId: verdict.keyId ?? null, transport: ctx.transport, source: ctx.source }, "command accepted");
      }
      return { reply: this.answer(format, handle.toJSON(), request), request, handle, error: undefined, format };
    } catch (err) {
      const error = AgentError.from(err);
      if (error.code === "REPLAYED" && request?.kind === "command") {
        // A replay never runs. While the agent still holds the command it answers with what it has
        // (RUNNING or the result), so a controller that lost an answer may ask again with the very
        // same signed envelope; an attacker replaying it learns only what the original reply said.
        const known = this.router.get(request.id);
        if (known !== undefined) {
          this.log.info({ envelopeId: request.id, transport: ctx.transport }, "replayed command answered from its stored result, not run");
          return { reply: this.answer(format, known.toJSON(), request), request, handle: known, error: undefined, format };
        }
      }
      this.log.warn({ code: error.code, details: error.details, envelopeId: request?.id, transport: ctx.transport, bytes: bytes.byteLength }, "envelope refused");
      const answer: Envelope = { v: 1, id: randomUUID(), kind: "error", body: error.toCommandError() };
      if (request !== undefined) answer.correlation_id = request.id;
      if (this.node !== undefined) answer.node = this.node;
      return { reply: this.reply(format, answer), request, handle: undefined, error, format };
    }
  }

  /** The result envelope answering a command (a bus sends one again when the command finishes). */
  answer(format: WireFormat, result: ResultBody, request: { readonly id: string }): EnvelopeReply {
    const env: Envelope = { v: 1, id: randomUUID(), kind: "result", correlation_id: request.id, body: result };
    if (this.node !== undefined) env.node = this.node;
    return this.reply(format, env);
  }

  /** Encodes an envelope the agent sends, signed when the agent signs. */
  seal(env: Envelope, format: WireFormat): EnvelopeReply {
    return this.reply(format, env);
  }

  private checkToken(request: Envelope, ctx: ReceiveContext): void {
    const expected = ctx.source === "node" ? this.agentToken : this.broadcastToken;
    if (ctx.tokenChecked === true) {
      // The transport checked its own token; one the envelope carries as well must be right too.
      if (request.token !== undefined && (expected === undefined || !safeEqual(request.token, expected))) {
        throw new AgentError("UNAUTHORIZED", "wrong agent token in the envelope");
      }
      return;
    }
    if (expected === undefined) {
      // No token for this source: a node token alone does not open the broadcast path.
      if (ctx.source !== "node" && this.agentToken !== undefined) {
        throw new AgentError("UNAUTHORIZED", `${ctx.source} commands need the broadcast token, and this agent has none`);
      }
      return;
    }
    if (request.token === undefined || !safeEqual(request.token, expected)) {
      throw new AgentError("UNAUTHORIZED", request.token === undefined ? "the envelope carries no agent token" : "wrong agent token");
    }
  }

  /**
   * A controller's answer to this agent's hello: takes the tokens it gives. Accepted while the agent
   * has no token yet, when it carries the current one (rotation), or when the guard verified its
   * signature (a trusted key may always re-key the agent).
   */
  private join(request: EnvelopeOf<"event">, ctx: ReceiveContext, format: WireFormat): EnvelopeOutcome {
    if (ctx.source !== "node") throw new AgentError("INVALID_ENVELOPE", "a join answer must be addressed to this node");
    // REST agents get their token from Ironic's lookup (or the configuration), never from a join.
    if (ctx.tokenChecked === true) throw new AgentError("INVALID_ENVELOPE", `join answers come over a bus, not ${ctx.transport}`);
    const parsed = JoinDataSchema.safeParse(request.body.data);
    if (!parsed.success) throw new AgentError("INVALID_ENVELOPE", `join answer: ${parsed.error.issues[0]?.message ?? "invalid"}`);
    const verdict = this.guard.check(request, ctx, undefined);
    if (verdict.keyId === undefined && this.agentToken !== undefined) this.checkToken(request, ctx);
    if (parsed.data.trusted_keys !== undefined) {
      if (this.guard.updateKeys !== undefined) this.guard.updateKeys(parsed.data, verdict);
      else this.log.warn({ keys: parsed.data.trusted_keys.length }, "join answer carries trusted_keys, and this agent's guard takes no keys");
    }
    this.agentToken = parsed.data.token;
    if (parsed.data.broadcast_token !== undefined) this.broadcastToken = parsed.data.broadcast_token;
    this.joined = parsed.data;
    this.log.info({ identity: parsed.data.identity, groups: parsed.data.groups, keyId: verdict.keyId }, "joined");
    return { reply: undefined, request, handle: undefined, error: undefined, format, join: parsed.data };
  }

  private reply(format: WireFormat, env: Envelope): EnvelopeReply {
    return { bytes: encodeEnvelope(this.guard.seal(env), format), contentType: CONTENT_TYPES[format] };
  }
}
