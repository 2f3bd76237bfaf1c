/**
 * The envelope in its domain (and JSON) form, with the zod schemas that validate every decoded message
 * before anything acts on it. proto/ironbus/v1/envelope.proto is the protobuf form of the same thing.
 */
import { z } from "zod";

export const ENVELOPE_VERSION = 1;

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export const JsonSchema: z.ZodType<Json> = z.lazy(() =>
  z.union([z.null(), z.boolean(), z.number(), z.string(), z.array(JsonSchema), z.record(z.string(), JsonSchema)]),
);
export type JsonObject = { [key: string]: Json };
export const JsonObjectSchema: z.ZodType<JsonObject> = z.record(z.string(), JsonSchema);

const id = z.string().min(1).max(256);

export const CommandStatusSchema = z.enum(["RUNNING", "SUCCEEDED", "FAILED", "CLEAN_VERSION_MISMATCH"]);
export type CommandStatus = z.infer<typeof CommandStatusSchema>;

export const CommandErrorSchema = z.object({
  type: z.string(),
  code: z.number().int(),
  message: z.string(),
  details: z.string(),
});

export const CommandBodySchema = z.object({
  name: z.string().min(1).max(256),
  params: JsonObjectSchema,
  wait: z.boolean().optional(),
  timeout_ms: z.number().int().positive().optional(),
});

/** IPA's result object, field for field. */
export const ResultBodySchema = z.object({
  id,
  command_name: z.string(),
  command_status: CommandStatusSchema,
  command_error: CommandErrorSchema.nullable(),
  command_result: JsonSchema,
});

export const ProgressBodySchema = z.object({
  command_id: id,
  command_name: z.string(),
  percent: z.number().min(0).max(100).optional(),
  message: z.string().optional(),
  bytes_done: z.number().nonnegative().optional(),
  bytes_total: z.number().nonnegative().optional(),
  rate_bps: z.number().nonnegative().optional(),
  stage: z.string().optional(),
});

export const HeartbeatBodySchema = z.object({
  seq: z.number().int().nonnegative(),
  status: z.enum(["idle", "busy"]),
  current_command: z.string().optional(),
  uptime_s: z.number().nonnegative(),
  version: z.string(),
});

export const HelloBodySchema = z.object({
  version: z.string(),
  macs: z.array(z.string()),
  hostname: z.string(),
  summary: JsonObjectSchema,
  transports: z.array(z.string()),
});

export const EventBodySchema = z.object({ name: z.string().min(1), data: JsonSchema });

export const SignatureSchema = z.object({
  key_id: z.string().min(1).max(256),
  alg: z.string().min(1).max(32),
  /** base64 */
  value: z.string().max(1024),
});

const headerShape = {
  v: z.literal(ENVELOPE_VERSION),
  id,
  node: z.string().max(256).optional(),
  reply_to: z.string().max(1024).optional(),
  correlation_id: z.string().max(256).optional(),
  /** The node's agent token, on transports that carry it in the envelope (buses; REST has ?agent_token=). */
  token: z.string().max(1024).optional(),
  issued_at: z.number().nonnegative().optional(),
  expires_at: z.number().nonnegative().optional(),
  sig: SignatureSchema.optional(),
};

export const EnvelopeSchema = z.discriminatedUnion("kind", [
  z.object({ ...headerShape, kind: z.literal("command"), body: CommandBodySchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("result"), body: ResultBodySchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("progress"), body: ProgressBodySchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("heartbeat"), body: HeartbeatBodySchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("hello"), body: HelloBodySchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("error"), body: CommandErrorSchema }).strict(),
  z.object({ ...headerShape, kind: z.literal("event"), body: EventBodySchema }).strict(),
]);

export type Envelope = z.infer<typeof EnvelopeSchema>;
export type EnvelopeKind = Envelope["kind"];
export type EnvelopeOf<K extends EnvelopeKind> = Extract<Envelope, { kind: K }>;
export type CommandBody = z.infer<typeof CommandBodySchema>;
export type ResultBody = z.infer<typeof ResultBodySchema>;
export type ProgressBody = z.infer<typeof ProgressBodySchema>;
export type HeartbeatBody = z.infer<typeof HeartbeatBodySchema>;
export type HelloBody = z.infer<typeof HelloBodySchema>;
export type EventBody = z.infer<typeof EventBodySchema>;
export type CommandErrorBody = z.infer<typeof CommandErrorSchema>;
export type Signature = z.infer<typeof SignatureSchema>;

/** Event names with a meaning on every bus (docs/transports.md). */
export const EVENTS = {
  /** Controller → agent: the answer to a hello (JoinData). */
  join: "ironbus.join",
  /** Agent → controller, on the status address: the agent is up. */
  online: "ironbus.online",
  /** Agent → controller, on the status address (MQTT last will, graceful close): the agent is gone. */
  offline: "ironbus.offline",
} as const;

const busName = z.string().regex(/^[A-Za-z0-9_-]{1,128}$/);

/** What a controller answers to an agent's hello. */
export const JoinDataSchema = z
  .object({
    /** The node's identity as the controller knows it (e.g. an Ironic node UUID); informative. */
    identity: z.string().max(256).optional(),
    /** The token commands addressed to this node must carry from now on. */
    token: z.string().min(16).max(1024),
    /** The token group and fleet commands must carry (one per fleet: a broadcast cannot carry per-node tokens). */
    broadcast_token: z.string().min(16).max(1024).optional(),
    groups: z.array(busName).max(64).optional(),
    heartbeat_interval_s: z.number().min(0.05).max(3600).optional(),
    /**
     * Controller keys the agent trusts from now on ("keyId:base64", as the trustedKeys setting): taken on
     * first use by an agent that trusts none, else only from an answer signed by a trusted key, and then
     * they replace the agent's keys (rotation). docs/security.md.
     */
    trusted_keys: z.array(z.string().max(512)).min(1).max(32).optional(),
    /** Scopes of those keys ("keyId=scope", as the keyScopes setting); a key without one may run everything. */
    key_scopes: z.array(z.string().max(2048)).max(32).optional(),
  })
  .strict();
export type JoinData = z.infer<typeof JoinDataSchema>;
