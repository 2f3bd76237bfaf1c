/**
 * Envelope signatures (ed25519, node:crypto only).
 *
 * What is signed is the envelope's *canonical form*, the same bytes whichever encoding carried it:
 *
 * - the domain (JSON) envelope without its `sig` field;
 * - in the envelope's own fields (header, body, and objects nested in the body such as
 *   `command_error`), properties that proto3 cannot tell from absent are dropped: `""`, `0`, `false`,
 *   `null`, `[]` (and undefined). `{"wait": false}` and no `wait` sign the same, as they decode the same;
 * - the free-form JSON values (command `params`, `command_result`, hello `summary`, event `data`) are
 *   kept exactly, defaults included (`{"force": false}` is not `{}`);
 * - serialised as RFC 8785 (JCS) JSON: object keys sorted by UTF-16 code units, no whitespace,
 *   numbers and strings as ECMAScript's JSON.stringify writes them; encoded as UTF-8.
 *
 * docs/security.md explains the choice; test/trust.test.ts checks that JSON and protobuf round trips
 * keep the canonical form.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from "node:crypto";
import type { Envelope } from "./envelope.js";
import { AgentError, type ErrorCode } from "./errors.js";

/** The one signature algorithm. */
export const SIGNATURE_ALG = "ed25519";

/** A private key and the id the signatures name it by. */
export interface SigningKey {
  readonly keyId: string;
  readonly privateKey: KeyObject;
}

/** Fields holding free-form JSON, by envelope kind: serialised exactly, nothing dropped. */
const FREE_FORM: Readonly<Record<string, string>> = { command: "params", result: "command_result", hello: "summary", event: "data" };

function isProto3Default(value: unknown): boolean {
  return value === undefined || value === null || value === "" || value === 0 || value === false || (Array.isArray(value) && value.length === 0);
}

function writeNumber(n: number): string {
  return Number.isFinite(n) ? JSON.stringify(n) : "null";
}

/** JCS (RFC 8785) of a JSON value; undefined members are skipped as JSON.stringify skips them. */
function writeJson(value: unknown, out: string[]): void {
  if (value === null || value === undefined) {
    out.push("null");
  } else if (typeof value === "string") {
    out.push(JSON.stringify(value));
  } else if (typeof value === "number") {
    out.push(writeNumber(value));
  } else if (typeof value === "boolean") {
    out.push(value ? "true" : "false");
  } else if (Array.isArray(value)) {
    out.push("[");
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out.push(",");
      const item: unknown = value[i];
      writeJson(item === undefined ? null : item, out);
    }
    out.push("]");
  } else if (typeof value === "object") {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).sort();
    out.push("{");
    let first = true;
    for (const k of keys) {
      const v = obj[k];
      if (v === undefined || typeof v === "function" || typeof v === "symbol") continue;
      if (!first) out.push(",");
      first = false;
      out.push(JSON.stringify(k), ":");
      writeJson(v, out);
    }
    out.push("}");
  } else {
    // bigint, function, symbol: not JSON; never in a validated envelope.
    out.push("null");
  }
}

/** An envelope field or body object: proto3 defaults dropped, free-form members kept as they are. */
function writeStructural(obj: Record<string, unknown>, freeForm: string | undefined, skip: string | undefined, out: string[]): void {
  const keys = Object.keys(obj).sort();
  out.push("{");
  let first = true;
  for (const k of keys) {
    if (k === skip) continue;
    const v = obj[k];
    const free = k === freeForm;
    if (free ? v === undefined : isProto3Default(v)) continue;
    if (!first) out.push(",");
    first = false;
    out.push(JSON.stringify(k), ":");
    if (free || typeof v !== "object" || v === null || Array.isArray(v)) writeJson(v, out);
    else writeStructural(v as Record<string, unknown>, undefined, undefined, out);
  }
  out.push("}");
}

/** The canonical form of an envelope as text (see the module comment). */
export function canonicalJson(env: Envelope): string {
  const out: string[] = [];
  const top = env as unknown as Record<string, unknown>;
  const keys = Object.keys(top).sort();
  out.push("{");
  let first = true;
  for (const k of keys) {
    if (k === "sig") continue;
    const v = top[k];
    if (isProto3Default(v)) continue;
    if (!first) out.push(",");
    first = false;
    out.push(JSON.stringify(k), ":");
    if (k === "body" && typeof v === "object" && v !== null && !Array.isArray(v)) {
      writeStructural(v as Record<string, unknown>, FREE_FORM[env.kind], undefined, out);
    } else if (typeof v === "object" && v !== null && !Array.isArray(v)) {
      writeStructural(v as Record<string, unknown>, undefined, undefined, out);
    } else {
      writeJson(v, out);
    }
  }
  out.push("}");
  return out.join("");
}

/** The bytes a signature covers. */
export function signingBytes(env: Envelope): Buffer {
  return Buffer.from(canonicalJson(env), "utf8");
}

/** A copy of `env` signed with `key` (any signature it had is replaced). */
export function signEnvelope<E extends Envelope>(env: E, key: SigningKey): E {
  const value = sign(null, signingBytes(env), key.privateKey).toString("base64");
  return { ...env, sig: { key_id: key.keyId, alg: SIGNATURE_ALG, value } };
}

/** Standard base64 of exactly 64 bytes, padded. */
const SIG_VALUE = /^[A-Za-z0-9+/]{86}==$/;

/**
 * True when `env` carries an ed25519 signature that `publicKey` verifies over its canonical form.
 * Never throws: a missing, malformed or foreign signature is simply false.
 */
export function verifyEnvelope(env: Envelope, publicKey: KeyObject): boolean {
  const sig = env.sig;
  if (sig === undefined || sig.alg !== SIGNATURE_ALG || !SIG_VALUE.test(sig.value)) return false;
  try {
    return verify(null, signingBytes(env), publicKey, Buffer.from(sig.value, "base64"));
  } catch {
    return false;
  }
}

// ---- keys -------------------------------------------------------------------------------------

/** Strict standard base64 of a 32-byte value. */
const RAW_KEY = /^[A-Za-z0-9+/]{43}=$/;

/** An ed25519 public key from the base64 of its raw 32 bytes. */
export function publicKeyFromRaw(base64: string, code: ErrorCode = "CONFIG_INVALID"): KeyObject {
  const text = base64.trim();
  if (!RAW_KEY.test(text)) throw new AgentError(code, "an ed25519 public key is the standard base64 of 32 bytes (44 characters)");
  const x = Buffer.from(text, "base64");
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: x.toString("base64url") }, format: "jwk" });
  } catch (err) {
    throw new AgentError(code, `not an ed25519 public key: ${(err as Error).message}`, { cause: err });
  }
}

/** The base64 of the raw 32 bytes of an ed25519 public key (what trustedKeys holds). */
export function publicKeyToRaw(key: KeyObject): string {
  const jwk = key.export({ format: "jwk" });
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.x !== "string") throw new AgentError("CONFIG_INVALID", "not an ed25519 key");
  return Buffer.from(jwk.x, "base64url").toString("base64");
}

/** A trusted-key entry: `keyId:base64` (the syntax of trustedKeys and of a join answer's trusted_keys). */
export interface KeySpec {
  readonly keyId: string;
  readonly publicKey: KeyObject;
}

const KEY_ID = /^[A-Za-z0-9._@+-]{1,256}$/;

/** Parses `keyId:base64-raw-public-key`. */
export function parseKeySpec(entry: string, code: ErrorCode = "CONFIG_INVALID"): KeySpec {
  const colon = entry.indexOf(":");
  if (colon <= 0) throw new AgentError(code, `trusted key ${JSON.stringify(entry.slice(0, 80))} is not keyId:base64`);
  const keyId = entry.slice(0, colon).trim();
  if (!KEY_ID.test(keyId)) throw new AgentError(code, `key id ${JSON.stringify(keyId.slice(0, 80))} must be 1-256 of A-Z a-z 0-9 . _ @ + -`);
  return { keyId, publicKey: publicKeyFromRaw(entry.slice(colon + 1), code) };
}

/** An ed25519 private key from PEM (PKCS#8, as `openssl genpkey -algorithm ed25519` writes it). */
export function privateKeyFromPem(pem: string | Buffer): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new AgentError("CONFIG_INVALID", `signing key: ${(err as Error).message}`, { cause: err });
  }
  if (key.asymmetricKeyType !== "ed25519") throw new AgentError("CONFIG_INVALID", `signing key is ${key.asymmetricKeyType ?? "not asymmetric"}, not ed25519`);
  return key;
}

/** An ed25519 public key from PEM (SPKI). */
export function publicKeyFromPem(pem: string | Buffer): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (err) {
    throw new AgentError("CONFIG_INVALID", `public key: ${(err as Error).message}`, { cause: err });
  }
  if (key.asymmetricKeyType !== "ed25519") throw new AgentError("CONFIG_INVALID", `public key is ${key.asymmetricKeyType ?? "not asymmetric"}, not ed25519`);
  return key;
}

export interface GeneratedKeyPair {
  readonly publicKey: KeyObject;
  readonly privateKey: KeyObject;
  /** base64 of the raw public key: `${keyId}:${publicKeyRaw}` is a trustedKeys entry. */
  readonly publicKeyRaw: string;
  /** PKCS#8 PEM of the private key (what signingKeyFile holds). */
  readonly privateKeyPem: string;
}

/** A fresh ed25519 key pair (tests, the CLI). */
export function generateKeyPair(): GeneratedKeyPair {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  return {
    publicKey,
    privateKey,
    publicKeyRaw: publicKeyToRaw(publicKey),
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
  };
}
