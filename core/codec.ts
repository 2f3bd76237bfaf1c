/**
 * The one codec: bytes ⇄ Envelope, in JSON or protobuf, chosen by content type. protobufjs is loaded
 * on first use only (a REST-only agent never pays for it) and its loosely typed objects never leave
 * this module: whatever it decodes is rebuilt as plain JSON and validated by EnvelopeSchema.
 */
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Root, Type } from "protobufjs";
import { AgentError } from "./errors.js";
import { type Envelope, EnvelopeSchema } from "./envelope.js";

export type WireFormat = "json" | "protobuf";

export const CONTENT_TYPES: Readonly<Record<WireFormat, string>> = {
  json: "application/vnd.ironbus.v1+json",
  protobuf: "application/vnd.ironbus.v1+protobuf",
};

const JSON_TYPES = new Set([CONTENT_TYPES.json, "application/json"]);
const PROTO_TYPES = new Set([CONTENT_TYPES.protobuf, "application/x-protobuf", "application/protobuf"]);

/** Which wire format a content type names; undefined when it names neither. */
export function formatOf(contentType: string | undefined): WireFormat | undefined {
  const base = (contentType ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  if (JSON_TYPES.has(base)) return "json";
  if (PROTO_TYPES.has(base)) return "protobuf";
  return undefined;
}

/**
 * The wire format of bytes that arrived without a content type (MQTT 3.1.1, a NATS message without
 * headers): JSON envelopes are objects, so they start with "{" (after optional whitespace); a protobuf
 * envelope starts with a field tag, never with "{" (0x7b would be field 15 with wire type 3, a
 * deprecated group start this schema never uses).
 */
export function sniffFormat(bytes: Uint8Array): WireFormat {
  for (let i = 0; i < bytes.byteLength && i < 64; i++) {
    const b = bytes[i];
    if (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d) continue;
    return b === 0x7b ? "json" : "protobuf";
  }
  return "protobuf";
}

/** The content type to decode bytes with: the wire's, or the sniffed one where the wire has none. */
export function contentTypeOf(bytes: Uint8Array, wireContentType: string | undefined): string {
  return wireContentType !== undefined && wireContentType !== "" ? wireContentType : CONTENT_TYPES[sniffFormat(bytes)];
}

export const DEFAULT_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Deepest nesting of arrays and objects a decoded envelope may have (free-form JSON included). Far
 * above anything IPA sends (under 20), far below what would exhaust the stack of the recursive code
 * that reads envelopes (validation, canonical form, JSON.stringify: a few thousand levels).
 */
export const MAX_JSON_DEPTH = 256;

/** Refuses a parsed value nested deeper than MAX_JSON_DEPTH; iterative, so it cannot overflow itself. */
function checkDepth(value: unknown): void {
  const stack: Array<{ v: unknown; d: number }> = [{ v: value, d: 1 }];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    const { v, d } = top;
    if (typeof v !== "object" || v === null) continue;
    if (d > MAX_JSON_DEPTH) throw new AgentError("INVALID_ENVELOPE", `nested deeper than ${MAX_JSON_DEPTH} levels`);
    for (const child of Array.isArray(v) ? v : Object.values(v)) if (typeof child === "object" && child !== null) stack.push({ v: child, d: d + 1 });
  }
}

// ---- protobuf (lazy) --------------------------------------------------------------------------

const require = createRequire(import.meta.url);
let envelopeType: Type | undefined;

function findProto(): string {
  const rel = join("proto", "ironbus", "v1", "envelope.proto");
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, rel);
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) throw new AgentError("INTERNAL", `envelope schema ${rel} not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

function protoType(): Type {
  if (envelopeType === undefined) {
    const protobuf = require("protobufjs") as { parse(source: string, options?: { keepCase?: boolean }): { root: Root } };
    const { root } = protobuf.parse(readFileSync(findProto(), "utf8"), { keepCase: true });
    envelopeType = root.lookupType("ironbus.v1.Envelope");
  }
  return envelopeType;
}

type Loose = { [key: string]: unknown };

function isLoose(v: unknown): v is Loose {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function parseJsonField(text: unknown, field: string): unknown {
  if (typeof text !== "string" || text === "") return null;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new AgentError("INVALID_ENVELOPE", `${field} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** Domain envelope → the object protobufjs encodes (JSON values as *_json strings). */
function toProtoObject(env: Envelope): Loose {
  const out: Loose = { v: env.v, id: env.id };
  if (env.node !== undefined) out["node"] = env.node;
  if (env.reply_to !== undefined) out["reply_to"] = env.reply_to;
  if (env.correlation_id !== undefined) out["correlation_id"] = env.correlation_id;
  if (env.token !== undefined) out["token"] = env.token;
  if (env.issued_at !== undefined) out["issued_at"] = env.issued_at;
  if (env.expires_at !== undefined) out["expires_at"] = env.expires_at;
  if (env.sig !== undefined) out["sig"] = { key_id: env.sig.key_id, alg: env.sig.alg, value: Buffer.from(env.sig.value, "base64") };
  switch (env.kind) {
    case "command": {
      const { params, ...rest } = env.body;
      out["command"] = { ...rest, params_json: JSON.stringify(params) };
      break;
    }
    case "result": {
      const { command_result, command_error, ...rest } = env.body;
      out["result"] = { ...rest, command_result_json: JSON.stringify(command_result), ...(command_error ? { command_error } : {}) };
      break;
    }
    case "progress":
      out["progress"] = env.body;
      break;
    case "heartbeat":
      out["heartbeat"] = env.body;
      break;
    case "hello": {
      const { summary, ...rest } = env.body;
      out["hello"] = { ...rest, summary_json: JSON.stringify(summary) };
      break;
    }
    case "error":
      out["error"] = env.body;
      break;
    case "event":
      out["event"] = { name: env.body.name, data_json: JSON.stringify(env.body.data) };
      break;
    default: {
      const never: never = env;
      throw new AgentError("INTERNAL", `unknown envelope kind ${String(never)}`);
    }
  }
  return out;
}

const PROTO_HEADER = ["node", "reply_to", "correlation_id", "token"] as const;

/** protobufjs's decoded object → the domain/JSON shape, still unvalidated. */
function fromProtoObject(o: Loose): Loose {
  const out: Loose = { v: o["v"], id: o["id"] };
  for (const k of PROTO_HEADER) if (typeof o[k] === "string" && o[k] !== "") out[k] = o[k];
  for (const k of ["issued_at", "expires_at"] as const) if (typeof o[k] === "number" && o[k] !== 0) out[k] = o[k];
  const sig = o["sig"];
  if (isLoose(sig)) out["sig"] = { ...sig, value: typeof sig["value"] === "string" ? sig["value"] : "" };
  const kind = o["body"];
  out["kind"] = kind;
  const body = typeof kind === "string" ? o[kind] : undefined;
  if (!isLoose(body)) return out;
  switch (kind) {
    case "command": {
      const { params_json, ...rest } = body;
      out["body"] = { ...rest, params: parseJsonField(params_json, "params_json") ?? {} };
      // proto3 cannot tell "absent" from its default: absent is what the JSON form says.
      if (rest["timeout_ms"] === 0) delete (out["body"] as Loose)["timeout_ms"];
      if (rest["wait"] === false) delete (out["body"] as Loose)["wait"];
      break;
    }
    case "result": {
      const { command_result_json, command_error, ...rest } = body;
      out["body"] = { ...rest, command_error: command_error ?? null, command_result: parseJsonField(command_result_json, "command_result_json") };
      break;
    }
    case "hello": {
      const { summary_json, ...rest } = body;
      out["body"] = { macs: [], transports: [], ...rest, summary: parseJsonField(summary_json, "summary_json") ?? {} };
      break;
    }
    case "event":
      out["body"] = { name: body["name"], data: parseJsonField(body["data_json"], "data_json") };
      break;
    default:
      out["body"] = body;
  }
  return out;
}

// ---- public API -------------------------------------------------------------------------------

export function encodeEnvelope(env: Envelope, format: WireFormat): Uint8Array {
  if (format === "json") return Buffer.from(JSON.stringify(env));
  const type = protoType();
  return type.encode(type.fromObject(toProtoObject(env))).finish();
}

/** Validates an already-parsed JSON value as an envelope. */
export function validateEnvelope(value: unknown): Envelope {
  const result = EnvelopeSchema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue === undefined ? "" : `${issue.path.join(".") || "(root)"}: `;
    throw new AgentError("INVALID_ENVELOPE", `${where}${issue?.message ?? "invalid"}`, { cause: result.error });
  }
  return result.data;
}

export function decodeEnvelope(bytes: Uint8Array, contentType: string | undefined, maxBytes = DEFAULT_MAX_BYTES): Envelope {
  if (bytes.byteLength > maxBytes) {
    throw new AgentError("MESSAGE_TOO_LARGE", `message of ${bytes.byteLength} bytes exceeds the limit of ${maxBytes}`);
  }
  const format = formatOf(contentType);
  if (format === undefined) {
    throw new AgentError("UNSUPPORTED_CONTENT_TYPE", `content type ${JSON.stringify(contentType ?? "")} is neither ${CONTENT_TYPES.json} nor ${CONTENT_TYPES.protobuf}`);
  }
  let raw: unknown;
  if (format === "json") {
    try {
      raw = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8"));
    } catch (err) {
      throw new AgentError("INVALID_ENVELOPE", `not valid JSON: ${(err as Error).message}`, { cause: err });
    }
  } else {
    const type = protoType();
    let decoded: Loose;
    try {
      const message = type.decode(bytes);
      decoded = type.toObject(message, { oneofs: true, bytes: String, defaults: true }) as Loose;
    } catch (err) {
      if (err instanceof AgentError) throw err;
      throw new AgentError("INVALID_ENVELOPE", `not a valid protobuf envelope: ${(err as Error).message}`, { cause: err });
    }
    raw = fromProtoObject(decoded);
  }
  checkDepth(raw);
  return validateEnvelope(raw);
}
