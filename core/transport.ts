/**
 * What a transport may ask of the agent, and what the agent asks of a transport. A transport moves
 * bytes and knows its own wire; it never knows what a command does. The agent never knows which
 * transport carried a command. No library type appears here.
 */
import type { Envelope, HeartbeatBody, HelloBody, JoinData, JsonObject, ProgressBody, ResultBody } from "./envelope.js";
import type { WireFormat } from "./codec.js";
import type { AgentError } from "./errors.js";
import type { InboundContext } from "./guard.js";

export interface SubmitRequest {
  /** Command id; redelivering the same id returns the stored result and never runs the command again. */
  readonly id?: string | undefined;
  readonly name: string;
  readonly params: JsonObject;
  /** Resolve only once the command has finished (IPA's ?wait=true). */
  readonly wait?: boolean | undefined;
  readonly timeoutMs?: number | undefined;
  /** Epoch ms after which the command must not start. */
  readonly expiresAt?: number | undefined;
}

/** A command the agent accepted. */
export interface CommandHandle {
  readonly id: string;
  readonly finished: boolean;
  readonly done: Promise<void>;
  toJSON(): ResultBody;
}

export interface EnvelopeReply {
  readonly bytes: Uint8Array;
  readonly contentType: string;
}

export interface ReceiveContext extends InboundContext {
  /** Answer as soon as the command is accepted, even when it asks to wait (a bus sends the final result later). */
  readonly noWait?: boolean;
}

/** What became of one inbound envelope. */
export interface EnvelopeOutcome {
  /** The envelope to send back (in the request's encoding); undefined when nothing is to be answered. */
  readonly reply: EnvelopeReply | undefined;
  /** The decoded request, when it could be decoded (also when it was then refused). */
  readonly request: Envelope | undefined;
  /** The accepted command. */
  readonly handle: CommandHandle | undefined;
  /** Why the envelope was refused. */
  readonly error: AgentError | undefined;
  readonly format: WireFormat;
  /** A join answer the agent took. */
  readonly join?: JoinData;
}

/** The agent as a transport sees it. */
export interface AgentPort {
  readonly version: string;
  /** Epoch seconds (float), as IPA's /v1/status reports it. */
  readonly startedAt: number;
  /** The token commands must carry, once the agent has one. */
  token(): string | undefined;
  readonly standalone: boolean;
  readonly maxMessageBytes: number;
  /** Short name of the command holding the hardware lock, if any (IPA answers 409 meanwhile). */
  busyWith(): string | undefined;
  submit(req: SubmitRequest): Promise<CommandHandle>;
  get(id: string): CommandHandle | undefined;
  list(): CommandHandle[];
  /**
   * Decodes, validates and acts on one envelope; answers with the envelope to send back (in the
   * request's encoding), or undefined when nothing is to be answered. Never throws.
   */
  handleEnvelope(bytes: Uint8Array, contentType: string | undefined): Promise<EnvelopeReply | undefined>;
  /** Like handleEnvelope, with the context of a bus: token rule per source, and the whole outcome. Never throws. */
  receiveEnvelope(bytes: Uint8Array, contentType: string | undefined, ctx: ReceiveContext): Promise<EnvelopeOutcome>;
  /** The result envelope answering a command, in `format`. */
  answer(format: WireFormat, result: ResultBody, request: { readonly id: string }): EnvelopeReply;
  /** Encodes (and signs, when the agent signs) an envelope the agent sends. */
  seal(env: Envelope, format: WireFormat): EnvelopeReply;
  /** This agent's node id on the buses. */
  readonly node: string | undefined;
  hello(): Promise<HelloBody>;
  heartbeat(seq: number): HeartbeatBody;
  joinData(): JoinData | undefined;
  onProgress(listener: (progress: ProgressBody) => void): () => void;
  onFinished(listener: (result: ResultBody) => void): () => void;
}

export interface Transport {
  /** "rest", "ws", "mqtt", "nats" */
  readonly kind: string;
  /** Envelope encoding this transport sends unprompted (progress, results, heartbeats). */
  readonly format?: WireFormat;
  start(agent: AgentPort): Promise<void>;
  stop(): Promise<void>;
}
