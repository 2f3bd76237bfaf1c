/**
 * The agent: a router and its transports. It implements AgentPort, the only face transports see,
 * including the envelope path shared by every transport (decode, validate, submit, answer).
 */
import { randomUUID } from "node:crypto";
import type { Extension } from "../core/command.js";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope, formatOf, type WireFormat } from "../core/codec.js";
import type { AgentConfig } from "../core/config.js";
import type { Envelope, ProgressBody, ResultBody } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { AgentPort, CommandHandle, EnvelopeReply, SubmitRequest, Transport } from "../core/transport.js";
import { Router } from "./router.js";

export interface AgentOptions {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly extensions: readonly Extension[];
  readonly transports: readonly Transport[];
  readonly now?: () => number;
}

export class Agent implements AgentPort {
  readonly router: Router;
  readonly version: string;
  readonly startedAt: number;
  readonly standalone: boolean;
  readonly maxMessageBytes: number;
  private agentToken: string | undefined;
  private readonly log: Logger;
  private readonly transports: readonly Transport[];
  private started: Transport[] = [];

  constructor(opts: AgentOptions) {
    const now = opts.now ?? Date.now;
    this.log = opts.log;
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

  submit(req: SubmitRequest): Promise<CommandHandle> {
    return this.router.submit(req);
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
    const format: WireFormat = formatOf(contentType) ?? "json";
    let request: Envelope | undefined;
    try {
      request = decodeEnvelope(bytes, contentType, this.maxMessageBytes);
      if (request.kind !== "command") {
        throw new AgentError("INVALID_ENVELOPE", `the agent accepts command envelopes, not ${request.kind}`);
      }
      const { body } = request;
      const handle = await this.router.submit({
        id: request.id,
        name: body.name,
        params: body.params,
        wait: body.wait,
        timeoutMs: body.timeout_ms,
        expiresAt: request.expires_at,
      });
      return this.reply(format, { v: 1, id: randomUUID(), kind: "result", correlation_id: request.id, body: handle.toJSON() });
    } catch (err) {
      const error = AgentError.from(err);
      this.log.warn({ code: error.code, details: error.details, envelopeId: request?.id, bytes: bytes.byteLength }, "envelope refused");
      const answer: Envelope = { v: 1, id: randomUUID(), kind: "error", body: error.toCommandError() };
      if (request !== undefined) answer.correlation_id = request.id;
      return this.reply(format, answer);
    }
  }

  private reply(format: WireFormat, env: Envelope): EnvelopeReply {
    return { bytes: encodeEnvelope(env, format), contentType: CONTENT_TYPES[format] };
  }
}
