/**
 * Fuzz: the codec, the signature check and the trust guard take malformed input of every kind. Each
 * input either decodes to a valid envelope or is refused with an AgentError of a decoding code; never
 * anything else. A decoded envelope re-encodes and decodes again to the same canonical form (JSON),
 * its signature check never throws, and the guard refuses it with an AgentError or accepts it.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { contentTypeOf, decodeEnvelope, encodeEnvelope, CONTENT_TYPES } from "../../core/codec.js";
import { EnvelopeSchema, type Envelope } from "../../core/envelope.js";
import { AgentError, type ErrorCode } from "../../core/errors.js";
import { silentLogger } from "../../core/log.js";
import { canonicalJson, parseKeySpec, verifyEnvelope } from "../../core/sign.js";
import { parseKeyScopes, TrustGuard } from "../../core/trust.js";
import { testKey } from "../helpers/keys.js";
import { describeWire, fuzzSync, fuzzSettings, wireInputArb, type WireInput } from "./fuzz.js";

const MAX_BYTES = 256 * 1024;
const DECODE_CODES: ReadonlySet<ErrorCode> = new Set(["INVALID_ENVELOPE", "MESSAGE_TOO_LARGE", "UNSUPPORTED_CONTENT_TYPE"]);
const GUARD_CODES: ReadonlySet<ErrorCode> = new Set(["SIGNATURE_REQUIRED", "SIGNATURE_INVALID", "INVALID_VALIDITY_WINDOW", "COMMAND_EXPIRED", "REPLAYED", "FORBIDDEN", "RATE_LIMITED", "INVALID_ENVELOPE"]);

function expectAgentError(err: unknown, codes: ReadonlySet<ErrorCode>, where: string): void {
  if (!(err instanceof AgentError)) throw new Error(`${where} threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}, not an AgentError`, { cause: err });
  if (!codes.has(err.code)) throw new Error(`${where} refused with ${err.code}: ${err.message}`, { cause: err });
}

describe("fuzz: codec, signatures, guard", () => {
  it("every malformed input is decoded or refused with a decoding AgentError; nothing else escapes", { timeout: 300_000 }, (t) => {
    const prov = testKey("prov");
    const mon = testKey("mon");
    const stranger = testKey("stranger");
    const guard = new TrustGuard({ log: silentLogger(), keys: [parseKeySpec(prov.spec), parseKeySpec(mon.spec)], scopes: parseKeyScopes(["mon=read-only"]), requireSignatures: false, ratePerS: 1_000_000, replayCapacity: 1000 });
    const settings = fuzzSettings("codec");
    const input = wireInputArb({ names: ["standby.get_partition_uuids", "sectest.wipe", "agent.cancel_command", "clean.execute_clean_step"], signers: [prov.signer, mon.signer, stranger.signer], nodes: ["n1"], tokens: ["token-0123456789abcdef"] });
    let decoded = 0;
    let accepted = 0;
    const sources = ["node", "group", "fleet"] as const;
    const entry = ({ bytes, contentType }: WireInput): void => {
      const sniffed = contentTypeOf(bytes, contentType);
      for (const ct of sniffed === contentType ? [contentType] : [contentType, sniffed]) {
        let env: Envelope;
        try {
          env = decodeEnvelope(bytes, ct, MAX_BYTES);
        } catch (err) {
          expectAgentError(err, DECODE_CODES, "decodeEnvelope");
          continue;
        }
        decoded++;
        assert.ok(EnvelopeSchema.safeParse(env).success, "a decoded envelope is valid");
        // Re-encoded, it decodes to the same canonical form (what a relaying controller or broker would do).
        const again = decodeEnvelope(encodeEnvelope(env, "json"), CONTENT_TYPES.json, Number.MAX_SAFE_INTEGER);
        assert.equal(canonicalJson(again), canonicalJson(env), "JSON round trip keeps the canonical form");
        try {
          decodeEnvelope(encodeEnvelope(env, "protobuf"), CONTENT_TYPES.protobuf, Number.MAX_SAFE_INTEGER);
        } catch (err) {
          // JSON can hold numbers protobuf's uint32 cannot; that is a refusal, never a crash.
          expectAgentError(err, DECODE_CODES, "protobuf round trip");
        }
        const named = [prov, mon, stranger].find((k) => k.keyId === env.sig?.key_id);
        if (named !== undefined) verifyEnvelope(env, named.publicKey);
        const facts = env.kind === "command" ? { name: env.body.name, destructive: env.body.name.endsWith("wipe"), exclusive: false } : undefined;
        try {
          guard.check(env, { transport: "fuzz", source: sources[bytes.byteLength % 3] ?? "node" }, facts);
          accepted++;
        } catch (err) {
          expectAgentError(err, GUARD_CODES, "guard.check");
        }
      }
    };
    // Synchronous all the way: no promise or timer per input (a hang would stop the test, and its timeout reports it).
    const runs = fuzzSync({ t, name: "codec+guard", settings, input, run: entry, describe: describeWire });
    t.diagnostic(`${decoded} decodes succeeded, ${accepted} envelopes accepted by the guard`);
    assert.ok(runs >= settings.runs);
    assert.ok(decoded > settings.runs / 10, `enough inputs decode to exercise what follows (${decoded})`);
  });
});
