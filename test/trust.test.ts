/**
 * Signed envelopes and the trust guard: the canonical form survives both encodings, the guard refuses
 * what it must (forged, altered, expired, replayed, wrongly authorised, unsigned, too many) with the
 * right code and accepts the rest, join answers may bring keys (trust on first use, then only signed
 * rotation), the agent signs what it sends, and all of it over the real REST transport in both
 * encodings, with the audit line of destructive commands.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { z } from "zod";
import { ManualClock } from "../core/clock.js";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope, type WireFormat } from "../core/codec.js";
import { defineCommand, defineExtension } from "../core/command.js";
import { parseConfig } from "../core/config.js";
import type { Envelope, EnvelopeOf, Json, JsonObject } from "../core/envelope.js";
import { AgentError, type ErrorCode } from "../core/errors.js";
import type { CommandFacts, InboundContext } from "../core/guard.js";
import { createLogger, silentLogger } from "../core/log.js";
import { canonicalJson, generateKeyPair, parseKeySpec, privateKeyFromPem, publicKeyFromPem, publicKeyFromRaw, publicKeyToRaw, signEnvelope, verifyEnvelope } from "../core/sign.js";
import { createGuard, Keyring, parseKeyScopes, parseScope, ReplayMemory, scopeAllows, TokenBucket, TrustGuard } from "../core/trust.js";
import type { ReceiveContext } from "../core/transport.js";
import { Agent } from "../router/agent.js";
import { startAgent, TOKEN, type TestAgent } from "./helpers/agent.js";
import { gate } from "./helpers/gate.js";
import { answerMatches, commandEnvelope, describeAnswer, joinAnswer, PEEK, securityCases, securityExtension, signedCommand, testKey, trustFixture, WIPE, type TestKey } from "./helpers/keys.js";

const FORMATS: readonly WireFormat[] = ["json", "protobuf"];
const NODE_CTX: InboundContext = { transport: "test", source: "node" };
const PEEK_FACTS: CommandFacts = { name: PEEK, destructive: false, exclusive: false };
const WIPE_FACTS: CommandFacts = { name: WIPE, destructive: true, exclusive: true };

function roundTrip(env: Envelope, format: WireFormat): Envelope {
  return decodeEnvelope(encodeEnvelope(env, format), CONTENT_TYPES[format]);
}

function throwsCode(fn: () => unknown, code: ErrorCode, details?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof AgentError, `AgentError expected, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (details !== undefined) assert.match(err.details, details);
    return true;
  });
}

// ---- core/sign.ts -----------------------------------------------------------------------------

describe("signing (core/sign.ts)", () => {
  const key = testKey("k1");
  const other = testKey("k2");

  it("signs and verifies; any change to the envelope, another key, another alg or a bad value fails", () => {
    const env = signedCommand(key, "standby.get_partition_uuids", { a: 1 }, 1_700_000_000_000, { node: "n1", token: "t".repeat(20) });
    assert.equal(env.sig?.key_id, "k1");
    assert.equal(env.sig?.alg, "ed25519");
    assert.ok(verifyEnvelope(env, key.publicKey));
    assert.ok(!verifyEnvelope(env, other.publicKey));
    const changes: Array<(e: EnvelopeOf<"command">) => EnvelopeOf<"command">> = [
      (e) => ({ ...e, id: `${e.id}x` }),
      (e) => ({ ...e, node: "n2" }),
      (e) => ({ ...e, token: "u".repeat(20) }),
      (e) => ({ ...e, reply_to: "somewhere" }),
      (e) => ({ ...e, issued_at: (e.issued_at ?? 0) + 1 }),
      (e) => ({ ...e, expires_at: (e.expires_at ?? 0) + 1 }),
      (e) => ({ ...e, body: { ...e.body, name: "standby.power_off" } }),
      (e) => ({ ...e, body: { ...e.body, params: { a: 2 } } }),
      (e) => ({ ...e, body: { ...e.body, params: { a: 1, b: false } } }),
      (e) => ({ ...e, body: { ...e.body, wait: true } }),
      (e) => ({ ...e, body: { ...e.body, timeout_ms: 5 } }),
      (e) => ({ ...e, sig: { key_id: "k1", alg: "EdDSA", value: e.sig?.value ?? "" } }),
      (e) => ({ ...e, sig: { key_id: "k1", alg: "ed25519", value: `${(e.sig?.value ?? "").slice(0, -4)}AA==` } }),
      (e) => ({ ...e, sig: { key_id: "k1", alg: "ed25519", value: "not base64!" } }),
      (e) => ({ ...e, sig: { key_id: "k1", alg: "ed25519", value: "" } }),
    ];
    for (const change of changes) assert.ok(!verifyEnvelope(change(env), key.publicKey), JSON.stringify(change(env)));
    const { sig: _sig, ...unsigned } = env;
    assert.ok(!verifyEnvelope(unsigned, key.publicKey));
  });

  it("the canonical form: sorted keys, no sig, proto3 defaults dropped from the envelope's own fields, free-form JSON kept exactly", () => {
    const env: Envelope = {
      v: 1,
      id: "i",
      kind: "command",
      token: "",
      issued_at: 0,
      body: { wait: false, name: "x.y", params: { z: false, a: 0, m: "", n: null, e: [], o: {} } },
      sig: { key_id: "k", alg: "ed25519", value: "" },
    };
    assert.equal(canonicalJson(env), '{"body":{"name":"x.y","params":{"a":0,"e":[],"m":"","n":null,"o":{},"z":false}},"id":"i","kind":"command","v":1}');
    const result: Envelope = { v: 1, id: "r", kind: "result", body: { id: "c", command_name: "n", command_status: "SUCCEEDED", command_error: null, command_result: { b: 0, a: [false] } } };
    assert.equal(canonicalJson(result), '{"body":{"command_name":"n","command_result":{"a":[false],"b":0},"command_status":"SUCCEEDED","id":"c"},"id":"r","kind":"result","v":1}');
  });

  it("a signature survives both encodings: sign, encode as JSON and protobuf, decode both, verify both (proto3 defaults included)", () => {
    const cases: Envelope[] = [
      { v: 1, id: "a", kind: "command", issued_at: 1_700_000_000_000.5, expires_at: 1_700_000_060_000, body: { name: "x.y", params: { force: false, n: 0, s: "" }, wait: false, timeout_ms: 5 } },
      { v: 1, id: "b", kind: "command", body: { name: "x.y", params: {}, wait: true, timeout_ms: 4_294_967_295 } },
      { v: 1, id: "c", kind: "heartbeat", body: { seq: 0, status: "idle", uptime_s: 0, version: "" } },
      { v: 1, id: "d", kind: "progress", correlation_id: "x", body: { command_id: "x", command_name: "y", percent: 0, message: "" } },
      { v: 1, id: "e", kind: "result", body: { id: "x", command_name: "", command_status: "FAILED", command_error: { type: "T", code: 0, message: "", details: "" }, command_result: null } },
      { v: 1, id: "f", kind: "hello", body: { version: "1", macs: [], hostname: "", summary: {}, transports: ["ws", ""] } },
      { v: 1, id: "g", kind: "event", token: "", body: { name: "ironbus.join", data: { token: "x".repeat(16), trusted_keys: ["a:b"] } } },
      { v: 1, id: "h", kind: "error", body: { type: "", code: 0, message: "", details: "" } },
    ];
    for (const env of cases) {
      const signed = signEnvelope(env, key.signer);
      for (const format of FORMATS) {
        const back = roundTrip(signed, format);
        assert.ok(verifyEnvelope(back, key.publicKey), `${format}: ${canonicalJson(signed)} vs ${canonicalJson(back)}`);
      }
    }
  });

  it("property: any command envelope, signed, verifies after a JSON and after a protobuf round trip", (t) => {
    const text = fc.string({ maxLength: 12 });
    // zod's record drops "__proto__" keys on decode (a command carrying one never verifies: safe).
    const params = fc
      .dictionary(text, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 })
      .filter((p) => !JSON.stringify(p).includes('"__proto__"')) as fc.Arbitrary<JsonObject>;
    const env = fc.record(
      {
        id: fc.string({ minLength: 1, maxLength: 40 }),
        node: text,
        reply_to: text,
        correlation_id: text,
        token: text,
        issued_at: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 4e12, noNaN: true }), fc.integer({ min: 0, max: 2 ** 45 })),
        expires_at: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 4e12, noNaN: true })),
        name: fc.string({ minLength: 1, maxLength: 30 }),
        params,
        wait: fc.boolean(),
        timeout_ms: fc.integer({ min: 1, max: 4_294_967_295 }),
      },
      { requiredKeys: ["id", "name", "params"] },
    );
    const runs = Number(process.env["IRONBUS_SIGN_RUNS"] ?? 300);
    fc.assert(
      fc.property(env, (r) => {
        const e: EnvelopeOf<"command"> = { v: 1, id: r.id, kind: "command", body: { name: r.name, params: r.params } };
        if (r.node !== undefined) e.node = r.node;
        if (r.reply_to !== undefined) e.reply_to = r.reply_to;
        if (r.correlation_id !== undefined) e.correlation_id = r.correlation_id;
        if (r.token !== undefined) e.token = r.token;
        if (r.issued_at !== undefined) e.issued_at = r.issued_at;
        if (r.expires_at !== undefined) e.expires_at = r.expires_at;
        if (r.wait !== undefined) e.body.wait = r.wait;
        if (r.timeout_ms !== undefined) e.body.timeout_ms = r.timeout_ms;
        const signed = signEnvelope(e, key.signer);
        for (const format of FORMATS) {
          const back = roundTrip(signed, format);
          if (!verifyEnvelope(back, key.publicKey)) throw new Error(`${format}: ${canonicalJson(signed)} != ${canonicalJson(back)}`);
        }
      }),
      { numRuns: runs },
    );
    t.diagnostic(`${runs} generated envelopes`);
  });

  it("a params key named __proto__ is dropped by validation, so such a command never verifies (fails closed)", () => {
    const env = JSON.parse('{"v":1,"id":"p","kind":"command","issued_at":1,"body":{"name":"a.b","params":{"x":{"__proto__":{"y":1}}}}}') as Envelope;
    const signed = signEnvelope(env, key.signer);
    assert.ok(verifyEnvelope(signed, key.publicKey));
    for (const format of FORMATS) assert.ok(!verifyEnvelope(roundTrip(signed, format), key.publicKey), format);
  });

  it("keys: keyId:base64 of the raw 32 bytes, PEM private and public keys, and refusals of anything else", () => {
    const pair = generateKeyPair();
    const spec = parseKeySpec(`prov:${pair.publicKeyRaw}`);
    assert.equal(spec.keyId, "prov");
    assert.equal(publicKeyToRaw(spec.publicKey), pair.publicKeyRaw);
    assert.equal(publicKeyToRaw(publicKeyFromRaw(pair.publicKeyRaw)), pair.publicKeyRaw);
    const priv = privateKeyFromPem(pair.privateKeyPem);
    const signed = signEnvelope(commandEnvelope("a.b", {}), { keyId: "prov", privateKey: priv });
    assert.ok(verifyEnvelope(signed, publicKeyFromPem(pair.publicKey.export({ format: "pem", type: "spki" }))));
    for (const bad of ["prov", ":abc", `prov:${pair.publicKeyRaw.slice(1)}`, "prov:AAAA", `pr ov:${pair.publicKeyRaw}`, `prov:${Buffer.alloc(33).toString("base64")}`]) {
      throwsCode(() => parseKeySpec(bad), "CONFIG_INVALID");
    }
    throwsCode(() => parseKeySpec("x", "INVALID_ENVELOPE"), "INVALID_ENVELOPE");
    const ec = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    throwsCode(() => privateKeyFromPem(ec.privateKey.export({ format: "pem", type: "pkcs8" })), "CONFIG_INVALID", /not ed25519/);
    throwsCode(() => privateKeyFromPem("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"), "CONFIG_INVALID");
  });
});

// ---- core/trust.ts pieces ---------------------------------------------------------------------

describe("scopes, keyring, replay memory, token bucket", () => {
  it("scopes: all, non-destructive, read-only (not exclusive, not destructive, not stateful), globs, alternatives", () => {
    const read: CommandFacts = { name: "standby.get_partition_uuids", destructive: false, exclusive: false };
    const lock: CommandFacts = { name: "image.fetch_something", destructive: false, exclusive: true };
    const erase: CommandFacts = { name: "deploy.erase_devices", destructive: true, exclusive: true };
    const cancel: CommandFacts = { name: "agent.cancel_command", destructive: false, exclusive: false };
    const setInfo: CommandFacts = { name: "poll.set_node_info", destructive: false, exclusive: false };
    const cleanStep: CommandFacts = { name: "clean.execute_clean_step", destructive: false, exclusive: true };
    const flow: CommandFacts = { name: "flow.start_flow", destructive: false, exclusive: true };
    const table: Array<[string, CommandFacts, boolean]> = [
      ["all", erase, true],
      ["non-destructive", lock, true],
      ["non-destructive", erase, false],
      ["read-only", read, true],
      ["read-only", lock, false],
      ["read-only", erase, false],
      ["read-only", cancel, false],
      ["read-only", setInfo, false],
      ["non-destructive", setInfo, true],
      ["non-destructive", cleanStep, false],
      ["non-destructive", flow, false],
      ["clean.*", cleanStep, true],
      ["standby.*", read, true],
      ["standby.*", lock, false],
      ["read-only|clean.*", cleanStep, true],
      ["deploy.erase_devices", erase, true],
      ["deploy.erase_*", erase, true],
      ["deploy.erase", erase, false],
      ["*", erase, true],
    ];
    for (const [text, facts, allowed] of table) assert.equal(scopeAllows(parseScope(text), facts.name, facts), allowed, `${text} / ${facts.name}`);
    // Unknown commands are left to the router (UNKNOWN_COMMAND), except where a glob says no.
    assert.ok(scopeAllows(parseScope("read-only"), "nope.nope", undefined));
    assert.ok(!scopeAllows(parseScope("standby.*"), "nope.nope", undefined));
    // "." in a glob is literal.
    assert.ok(!scopeAllows(parseScope("standby.get"), "standbyXget", undefined));
    const scopes = parseKeyScopes(["mon=read-only", "ops=non-destructive|deploy.erase_devices"]);
    assert.equal(scopes.get("ops")?.text, "non-destructive|deploy.erase_devices");
    for (const bad of [["mon"], ["=all"], ["mon=everything"], ["mon=read-only", "mon=all"], ["mon=a b"], ["mon="]]) throwsCode(() => parseKeyScopes(bad), "CONFIG_INVALID");
  });

  it("keyring: several keys at once, add, remove, replace; a key without a scope may run everything", () => {
    const a = testKey("a");
    const b = testKey("b");
    const ring = new Keyring([parseKeySpec(a.spec)], parseKeyScopes(["a=read-only"]));
    assert.equal(ring.get("a")?.scope.text, "read-only");
    ring.add(parseKeySpec(b.spec));
    assert.deepEqual(ring.ids(), ["a", "b"]);
    assert.equal(ring.get("b")?.scope.text, "all");
    assert.deepEqual(ring.describe()[0], { keyId: "a", publicKey: a.publicKeyRaw, scope: "read-only" });
    assert.ok(ring.remove("a"));
    assert.deepEqual(ring.ids(), ["b"]);
    ring.replace([parseKeySpec(a.spec)]);
    assert.deepEqual(ring.ids(), ["a"]);
    throwsCode(() => ring.replace([parseKeySpec(a.spec), parseKeySpec(a.spec)]), "CONFIG_INVALID");
  });

  it("replay memory: remembers until the window ends, evicts by expiry (not arrival), refuses when full of live entries", () => {
    const m = new ReplayMemory(3);
    assert.ok(m.remember("late", 300, 0));
    assert.ok(m.remember("early", 100, 0));
    assert.ok(m.remember("mid", 200, 0));
    assert.ok(m.has("early", 100), "still inside its window at its last millisecond");
    assert.ok(!m.has("early", 101));
    assert.ok(!m.remember("d", 400, 50), "full of unexpired entries: refused, nothing forgotten");
    assert.ok(m.has("early", 50) && m.has("mid", 50) && m.has("late", 50));
    assert.ok(m.remember("d", 400, 150), "the expired one left; room again");
    assert.ok(!m.has("early", 150));
    assert.equal(m.size, 3);
    m.forget("d");
    assert.ok(!m.has("d", 150));
    assert.ok(m.remember("d", 400, 150));
    // Heavy churn stays bounded.
    const big = new ReplayMemory(100);
    for (let i = 0; i < 10_000; i++) {
      assert.ok(big.remember(`k${i}`, i + 50, i));
      if (i % 3 === 0) big.forget(`k${i}`);
    }
    assert.ok(big.size <= 100);
  });

  it("token bucket: a burst, then the rate", () => {
    const b = new TokenBucket(2, 2, 0);
    assert.ok(b.take(0));
    assert.ok(b.take(0));
    assert.ok(!b.take(0));
    assert.ok(!b.take(400));
    assert.ok(b.take(500));
    assert.ok(!b.take(500));
    assert.ok(b.take(10_000));
    assert.ok(b.take(10_000));
    assert.ok(!b.take(10_000), "never more than the burst");
  });
});

// ---- the guard --------------------------------------------------------------------------------

describe("TrustGuard.check", () => {
  const prov = testKey("prov");
  const mon = testKey("mon");
  const stranger = testKey("stranger");
  const START = 1_700_000_000_000;

  function guard(opts: Partial<ConstructorParameters<typeof TrustGuard>[0]> = {}): { g: TrustGuard; clock: ManualClock } {
    const clock = new ManualClock({ start: START });
    const g = new TrustGuard({
      log: silentLogger(),
      keys: [parseKeySpec(prov.spec), parseKeySpec(mon.spec)],
      scopes: parseKeyScopes(["mon=read-only"]),
      clock,
      ...opts,
    });
    return { g, clock };
  }

  it("accepts a valid signed command and names its key; refuses unsigned ones while keys are trusted", () => {
    const { g } = guard();
    assert.deepEqual(g.check(signedCommand(prov, WIPE, {}, START), NODE_CTX, WIPE_FACTS), { keyId: "prov" });
    assert.ok(g.signaturesRequired());
    throwsCode(() => g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS), "SIGNATURE_REQUIRED");
  });

  it("forged, unknown key, altered, other alg: SIGNATURE_INVALID", () => {
    const { g } = guard();
    const forged = signEnvelope(commandEnvelope(PEEK, {}, { issuedAt: START }), { keyId: "prov", privateKey: stranger.privateKey });
    throwsCode(() => g.check(forged, NODE_CTX, PEEK_FACTS), "SIGNATURE_INVALID", /does not verify/);
    throwsCode(() => g.check(signedCommand(stranger, PEEK, {}, START), NODE_CTX, PEEK_FACTS), "SIGNATURE_INVALID", /not trusted/);
    const s = signedCommand(prov, PEEK, { what: "a" }, START);
    throwsCode(() => g.check({ ...s, body: { ...s.body, params: { what: "b" } } }, NODE_CTX, PEEK_FACTS), "SIGNATURE_INVALID");
    const t = signedCommand(prov, PEEK, {}, START);
    throwsCode(() => g.check({ ...t, sig: { key_id: "prov", alg: "rsa", value: t.sig?.value ?? "" } }, NODE_CTX, PEEK_FACTS), "SIGNATURE_INVALID", /not ed25519/);
  });

  it("the validity window, edge by edge", () => {
    const { g, clock } = guard({ maxClockSkewMs: 60_000, maxCommandTtlMs: 3_600_000 });
    const now = clock.now();
    const ok = (issuedAt: number | undefined, expiresAt: number | undefined): Envelope => signedCommand(prov, PEEK, {}, now, { issuedAt, expiresAt });
    assert.deepEqual(g.check(ok(now + 60_000, now + 120_000), NODE_CTX, PEEK_FACTS), { keyId: "prov" }, "issued exactly skew ahead: accepted");
    throwsCode(() => g.check(ok(now + 60_001, now + 120_000), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW", /ahead of this agent's clock/);
    throwsCode(() => g.check(ok(undefined, now + 1000), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW", /issued_at/);
    throwsCode(() => g.check(ok(now, now), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW", /not after/);
    assert.deepEqual(g.check(ok(now - 1000, now - 1000 + 3_600_000), NODE_CTX, PEEK_FACTS), { keyId: "prov" }, "a window of exactly the ttl");
    throwsCode(() => g.check(ok(now, now + 3_600_001), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW", /longer than/);
    assert.deepEqual(g.check(ok(now - 10_000, now), NODE_CTX, PEEK_FACTS), { keyId: "prov" }, "expiring this very millisecond: accepted");
    throwsCode(() => g.check(ok(now - 10_000, now - 1), NODE_CTX, PEEK_FACTS), "COMMAND_EXPIRED");
    // Without expires_at the window is issued_at + ttl.
    assert.deepEqual(g.check(ok(now - 3_600_000, undefined), NODE_CTX, PEEK_FACTS), { keyId: "prov" });
    throwsCode(() => g.check(ok(now - 3_600_001, undefined), NODE_CTX, PEEK_FACTS), "COMMAND_EXPIRED");
  });

  it("replays are refused while the window lasts, and expired (not remembered) after it", async () => {
    const { g, clock } = guard();
    const env = signedCommand(prov, PEEK, {}, clock.now(), { ttlMs: 30_000 });
    g.check(env, NODE_CTX, PEEK_FACTS);
    throwsCode(() => g.check(env, NODE_CTX, PEEK_FACTS), "REPLAYED");
    throwsCode(() => g.check(roundTrip(env, "protobuf"), NODE_CTX, PEEK_FACTS), "REPLAYED", /already received/);
    // The same id signed by another trusted key is another envelope (the router's idempotency still holds).
    g.check(signedCommand(mon, PEEK, {}, clock.now(), { id: env.id, ttlMs: 30_000 }), NODE_CTX, PEEK_FACTS);
    await clock.advance(30_001);
    throwsCode(() => g.check(env, NODE_CTX, PEEK_FACTS), "COMMAND_EXPIRED");
    g.replay.evict(clock.now());
    assert.equal(g.replay.size, 0, "expired entries leave the memory");
  });

  it("release forgets an accepted envelope, so the same one offered again is not a replay", () => {
    const { g, clock } = guard();
    const env = signedCommand(prov, PEEK, {}, clock.now());
    g.check(env, NODE_CTX, PEEK_FACTS);
    g.release(env);
    assert.deepEqual(g.check(env, NODE_CTX, PEEK_FACTS), { keyId: "prov" });
  });

  it("a full replay memory refuses (RATE_LIMITED) instead of forgetting", () => {
    const { g, clock } = guard({ replayCapacity: 2 });
    g.check(signedCommand(prov, PEEK, {}, clock.now()), NODE_CTX, PEEK_FACTS);
    g.check(signedCommand(prov, PEEK, {}, clock.now()), NODE_CTX, PEEK_FACTS);
    throwsCode(() => g.check(signedCommand(prov, PEEK, {}, clock.now()), NODE_CTX, PEEK_FACTS), "RATE_LIMITED", /validity window/);
  });

  it("scopes: the monitoring key runs read-only commands only", () => {
    const { g, clock } = guard();
    assert.deepEqual(g.check(signedCommand(mon, PEEK, {}, clock.now()), NODE_CTX, PEEK_FACTS), { keyId: "mon" });
    throwsCode(() => g.check(signedCommand(mon, WIPE, {}, clock.now()), NODE_CTX, WIPE_FACTS), "FORBIDDEN", /mon \(scope read-only\) may not run sectest.wipe/);
    throwsCode(() => g.check(signedCommand(mon, "agent.cancel_command", {}, clock.now()), NODE_CTX, { name: "agent.cancel_command", destructive: false, exclusive: false }), "FORBIDDEN");
  });

  it("rate: a token bucket per transport", async () => {
    const { g, clock } = guard({ ratePerS: 2, requireSignatures: false });
    const ws: InboundContext = { transport: "ws", source: "node" };
    g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS);
    g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS);
    throwsCode(() => g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS), "RATE_LIMITED", /2 commands a second on test/);
    g.check(commandEnvelope(PEEK, {}), ws, PEEK_FACTS);
    await clock.advance(500);
    g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS);
    throwsCode(() => g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS), "RATE_LIMITED");
  });

  it("signature policy: optional signatures still verify what is signed; no keys and no policy: open", () => {
    const { g, clock } = guard({ requireSignatures: false });
    assert.deepEqual(g.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS), {});
    throwsCode(() => g.check(signedCommand(stranger, PEEK, {}, clock.now()), NODE_CTX, PEEK_FACTS), "SIGNATURE_INVALID");
    const open = new TrustGuard({ log: silentLogger() });
    assert.ok(!open.signaturesRequired());
    assert.deepEqual(open.check(commandEnvelope(WIPE, {}), NODE_CTX, WIPE_FACTS), {});
    const strict = new TrustGuard({ log: silentLogger(), requireSignatures: true });
    throwsCode(() => strict.check(commandEnvelope(PEEK, {}), NODE_CTX, PEEK_FACTS), "SIGNATURE_REQUIRED");
  });

  it("a signed command for one node that arrives on a group or fleet address is refused", () => {
    const { g, clock } = guard();
    const env = signedCommand(prov, PEEK, {}, clock.now(), { node: "n1" });
    throwsCode(() => g.check(env, { transport: "mqtt", source: "fleet" }, PEEK_FACTS), "INVALID_ENVELOPE", /node n1 arrived on a fleet address/);
    assert.deepEqual(g.check(env, { transport: "mqtt", source: "node" }, PEEK_FACTS), { keyId: "prov" });
    assert.deepEqual(g.check(signedCommand(prov, PEEK, {}, clock.now()), { transport: "mqtt", source: "group" }, PEEK_FACTS), { keyId: "prov" });
  });

  it("seal signs what the agent sends (adding issued_at) when it has a key, and leaves it alone otherwise", () => {
    const agentKey = testKey("agent-n1");
    const { g, clock } = guard({ signer: agentKey.signer });
    const env: Envelope = { v: 1, id: randomUUID(), kind: "heartbeat", body: { seq: 1, status: "idle", uptime_s: 1, version: "1" } };
    const sealed = g.seal(env);
    assert.equal(sealed.issued_at, clock.now());
    assert.equal(sealed.sig?.key_id, "agent-n1");
    for (const format of FORMATS) assert.ok(verifyEnvelope(roundTrip(sealed, format), agentKey.publicKey));
    assert.equal(guard().g.seal(env), env);
  });
});

describe("createGuard(config, log)", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "ironbus-trust-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("takes keys, scopes, policy, window, rate and the agent's signing key from the configuration", () => {
    const prov = testKey("prov");
    const mon = testKey("mon");
    const agentKey = generateKeyPair();
    const keyFile = join(dir, "agent.pem");
    writeFileSync(keyFile, agentKey.privateKeyPem, { mode: 0o600 });
    const config = parseConfig({ trustedKeys: [prov.spec, mon.spec], keyScopes: ["mon=read-only"], maxClockSkewS: 5, maxCommandTtlS: 60, commandRatePerS: 100, signingKeyFile: keyFile, node: "n7" });
    const clock = new ManualClock({ start: 1_700_000_000_000 });
    const g = createGuard(config, silentLogger(), { clock });
    assert.deepEqual(g.keyring.ids(), ["prov", "mon"]);
    assert.equal(g.keyring.get("mon")?.scope.text, "read-only");
    assert.ok(g.signaturesRequired());
    throwsCode(() => g.check(signedCommand(prov, PEEK, {}, clock.now(), { issuedAt: clock.now() + 5_001 }), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW");
    throwsCode(() => g.check(signedCommand(prov, PEEK, {}, clock.now(), { ttlMs: 60_001 }), NODE_CTX, PEEK_FACTS), "INVALID_VALIDITY_WINDOW");
    const sealed = g.seal({ v: 1, id: "x", kind: "event", body: { name: "e", data: null } });
    assert.equal(sealed.sig?.key_id, "agent-n7");
    assert.ok(verifyEnvelope(sealed, agentKey.publicKey));
    assert.equal(createGuard(parseConfig({ signingKeyFile: keyFile, signingKeyId: "me" }), silentLogger()).seal(sealed).sig?.key_id, "me");
    assert.ok(!createGuard(parseConfig({}), silentLogger()).signaturesRequired());
    assert.ok(!createGuard(parseConfig({ trustedKeys: [prov.spec], requireSignatures: false }), silentLogger()).signaturesRequired());
    throwsCode(() => createGuard(parseConfig({ trustedKeys: ["prov:nope"] }), silentLogger()), "CONFIG_INVALID");
    throwsCode(() => createGuard(parseConfig({ keyScopes: ["prov=sometimes"] }), silentLogger()), "CONFIG_INVALID");
    throwsCode(() => createGuard(parseConfig({ signingKeyFile: join(dir, "missing.pem") }), silentLogger()), "CONFIG_INVALID", /cannot read/);
  });

  it("reads trusted keys from the kernel command line", async () => {
    const prov = testKey("prov");
    const { loadConfig } = await import("../core/config.js");
    const config = loadConfig({ kernelCmdline: `ipa-standalone=1 ironbus-trusted-keys=${prov.spec}` });
    assert.deepEqual(createGuard(config, silentLogger()).keyring.ids(), ["prov"]);
  });
});

// ---- through the agent (bus-like context) -----------------------------------------------------

describe("Agent with a TrustGuard: join answers, busy retries, signed answers", () => {
  const BUS: ReceiveContext = { transport: "test", source: "node", noWait: true };

  function makeAgent(guardOf: (log: ReturnType<typeof silentLogger>) => TrustGuard, extra: { blockGate?: ReturnType<typeof gate>; resultHistory?: number } = {}): { agent: Agent; guard: TrustGuard } {
    const log = silentLogger();
    const { extension } = securityExtension();
    const block = defineExtension("blocker", {
      hold: defineCommand({
        mode: "async",
        params: z.object({}).strict(),
        run: async () => {
          await extra.blockGate?.promise;
          return {};
        },
      }),
    });
    const guard = guardOf(log);
    const agent = new Agent({ config: parseConfig({ standalone: true, allowDestructive: true, resultHistory: extra.resultHistory ?? 1000 }), log, extensions: [extension, block], transports: [], guard, node: "n1" });
    return { agent, guard };
  }

  async function send(agent: Agent, env: Envelope, format: WireFormat = "json", ctx: ReceiveContext = BUS): Promise<Envelope | undefined> {
    const out = await agent.receiveEnvelope(encodeEnvelope(env, format), CONTENT_TYPES[format], ctx);
    return out.reply === undefined ? undefined : decodeEnvelope(out.reply.bytes, out.reply.contentType);
  }

  function expectError(answer: Envelope | undefined, code: ErrorCode): void {
    assert.ok(answer !== undefined, "an answer");
    assert.ok(answerMatches(answer, code), `${code} expected, got ${describeAnswer(answer)}`);
  }

  it("trust on first use: an unsigned join answer gives keys to an agent that has none; after that only a signed answer may change them", async () => {
    const prov = testKey("prov");
    const prov2 = testKey("prov-2");
    const mon = testKey("mon");
    const evil = testKey("evil");
    const { agent, guard } = makeAgent((log) => new TrustGuard({ log }));
    const now = Date.now();
    assert.equal(await send(agent, joinAnswer({ token: "t".repeat(20), trusted_keys: [prov.spec, mon.spec], key_scopes: ["mon=read-only"] })), undefined);
    assert.deepEqual(guard.keyring.ids(), ["prov", "mon"]);
    assert.ok(guard.signaturesRequired(), "signatures are required once keys are trusted");
    // Unsigned commands are refused now; signed ones run.
    expectError(await send(agent, commandEnvelope(PEEK, {}, { token: "t".repeat(20) })), "SIGNATURE_REQUIRED");
    assert.ok(answerMatches((await send(agent, signedCommand(prov, PEEK, {}, now, { token: "t".repeat(20) }))) as Envelope, "accepted"));
    // An unsigned answer that tries to bring other keys is refused (it carries the right token, even).
    expectError(await send(agent, joinAnswer({ token: "t".repeat(20), trusted_keys: [evil.spec] }, { token: "t".repeat(20) })), "SIGNATURE_REQUIRED");
    // So is one signed by a key without scope all, or by an untrusted key.
    expectError(await send(agent, signEnvelope(joinAnswer({ token: "t".repeat(20), trusted_keys: [evil.spec] }, { issuedAt: now }), mon.signer)), "FORBIDDEN");
    expectError(await send(agent, signEnvelope(joinAnswer({ token: "t".repeat(20), trusted_keys: [evil.spec] }, { issuedAt: now }), evil.signer)), "SIGNATURE_INVALID");
    assert.deepEqual(guard.keyring.ids(), ["prov", "mon"]);
    // A signed answer from the provisioning key rotates: prov-2 replaces prov, in protobuf too.
    const rotate = signEnvelope(joinAnswer({ token: "u".repeat(20), trusted_keys: [prov2.spec, mon.spec], key_scopes: ["mon=read-only"] }, { issuedAt: now }), prov.signer);
    assert.equal(await send(agent, rotate, "protobuf"), undefined);
    assert.deepEqual(guard.keyring.ids(), ["prov-2", "mon"]);
    // Replayed, it is refused: its signer is no longer trusted (and it is in the replay memory anyway).
    expectError(await send(agent, rotate), "SIGNATURE_INVALID");
    expectError(await send(agent, signedCommand(prov, PEEK, {}, now, { token: "u".repeat(20) })), "SIGNATURE_INVALID");
    assert.ok(answerMatches((await send(agent, signedCommand(prov2, PEEK, {}, now, { token: "u".repeat(20) }))) as Envelope, "accepted"));
    assert.equal(agent.token(), "u".repeat(20));
    // A signed answer may not empty the keyring (that would open the agent).
    expectError(await send(agent, signEnvelope(joinAnswer({ token: "u".repeat(20), trusted_keys: [] }, { issuedAt: now }), prov2.signer)), "INVALID_ENVELOPE");
    expectError(await send(agent, signEnvelope(joinAnswer({ token: "u".repeat(20), trusted_keys: [`x:${"A".repeat(43)}=`, "bad"] }, { issuedAt: now }), prov2.signer)), "INVALID_ENVELOPE");
  });

  it("trust on first use may be signed by one of the keys the answer gives", async () => {
    const prov = testKey("prov");
    const { agent, guard } = makeAgent((log) => new TrustGuard({ log, requireSignatures: true }));
    expectError(await send(agent, signEnvelope(joinAnswer({ token: "t".repeat(20), trusted_keys: [prov.spec] }, { issuedAt: Date.now() }), testKey("prov").signer)), "SIGNATURE_INVALID");
    assert.equal(guard.keyring.size, 0);
    assert.equal(await send(agent, signEnvelope(joinAnswer({ token: "t".repeat(20), trusted_keys: [prov.spec] }, { issuedAt: Date.now() }), prov.signer)), undefined);
    assert.deepEqual(guard.keyring.ids(), ["prov"]);
  });

  it("a signed command refused as busy is not a replay when the bus queue offers it again", async () => {
    const prov = testKey("prov");
    const g = gate();
    const { agent } = makeAgent((log) => new TrustGuard({ log, keys: [parseKeySpec(prov.spec)] }), { blockGate: g });
    const now = Date.now();
    const holder = await send(agent, signedCommand(prov, "blocker.hold", {}, now));
    assert.ok(holder !== undefined && answerMatches(holder, "accepted"), holder === undefined ? "" : describeAnswer(holder));
    const waiting = signedCommand(prov, WIPE, { device: "x" }, now);
    expectError(await send(agent, waiting), "AGENT_BUSY");
    g.open();
    for (let i = 0; i < 100 && agent.busyWith() !== undefined; i++) await new Promise((r) => setTimeout(r, 5));
    const answer = await send(agent, waiting);
    assert.ok(answer !== undefined && answerMatches(answer, "accepted"), answer === undefined ? "" : describeAnswer(answer));
    // A third copy is a replay: answered from the stored result, never run again.
    const again = await send(agent, waiting);
    assert.deepEqual(again?.kind === "result" ? again.body.command_result : again, { wiped: 1 });
    await agent.stop();
  });

  it("a replay whose result has left the history is refused as REPLAYED, and does not run", async () => {
    const prov = testKey("prov");
    const { agent } = makeAgent((log) => new TrustGuard({ log, keys: [parseKeySpec(prov.spec)] }), { resultHistory: 1 });
    const now = Date.now();
    const first = signedCommand(prov, WIPE, { device: "x" }, now);
    const firstAnswer = await send(agent, first);
    assert.deepEqual(firstAnswer?.kind === "result" ? firstAnswer.body.command_result : firstAnswer, { wiped: 1 });
    await send(agent, signedCommand(prov, PEEK, {}, now));
    await send(agent, signedCommand(prov, PEEK, {}, now));
    expectError(await send(agent, first), "REPLAYED");
    await agent.stop();
  });

  it("the agent signs its answers when it has a key: results and refusals verify with its public key, in both encodings", async () => {
    const prov = testKey("prov");
    const agentKey = testKey("agent-n1");
    const { agent } = makeAgent((log) => new TrustGuard({ log, keys: [parseKeySpec(prov.spec)], signer: agentKey.signer }));
    for (const format of FORMATS) {
      const ok = await send(agent, signedCommand(prov, PEEK, {}, Date.now()), format);
      assert.ok(ok !== undefined && ok.kind === "result" && ok.sig?.key_id === "agent-n1");
      assert.ok(verifyEnvelope(ok, agentKey.publicKey), format);
      const refused = await send(agent, commandEnvelope(PEEK, {}), format);
      assert.ok(refused !== undefined && refused.kind === "error");
      assert.ok(verifyEnvelope(refused, agentKey.publicKey), format);
    }
  });
});

// ---- over the real REST transport -------------------------------------------------------------

describe("signed envelopes over REST (POST /ironbus/v1/envelope), both encodings", () => {
  const fixture = trustFixture();
  const lines: Array<Record<string, Json>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString("utf8").split("\n")) if (line.trim() !== "") lines.push(JSON.parse(line) as Record<string, Json>);
      done();
    },
  });
  const sec = securityExtension();
  let a: TestAgent;

  before(async () => {
    a = await startAgent({ config: { ...fixture.config }, extensions: [sec.extension], log: createLogger("info", sink), guard: (config, log) => createGuard(config, log) });
  });
  after(() => a.close());

  async function post(env: Envelope, format: WireFormat): Promise<Envelope> {
    const res = await fetch(`${a.url}/ironbus/v1/envelope?agent_token=${TOKEN}`, { method: "POST", headers: { "Content-Type": CONTENT_TYPES[format] }, body: Buffer.from(encodeEnvelope(env, format)) });
    assert.equal(res.status, 200);
    return decodeEnvelope(new Uint8Array(await res.arrayBuffer()), res.headers.get("content-type") ?? undefined);
  }

  for (const format of FORMATS) {
    describe(format, () => {
      for (const c of securityCases({ fixture, now: Date.now() })) {
        it(c.name, async () => {
          const before = { ...sec.runs };
          let peek = 0;
          let wipe = 0;
          for (const step of c.steps) {
            const answer = await post(step.env, format);
            assert.ok(answerMatches(answer, step.expect), `${step.expect} expected, got ${describeAnswer(answer)}`);
            if (step.expect !== "accepted") assert.equal(answer.correlation_id, step.env.id, "the refusal names the envelope");
            if (step.expect === "accepted" && step.runs === "peek") peek++;
            if (step.expect === "accepted" && step.runs === "wipe") wipe++;
          }
          assert.deepEqual(sec.runs, { peek: before.peek + peek, wipe: before.wipe + wipe }, "refused commands never ran");
        });
      }
    });
  }

  it("every refusal is logged with its code; every destructive command gets an audit line with the key that signed it", async () => {
    const env = signedCommand(fixture.prov, WIPE, { device: "/dev/null-test" }, Date.now());
    assert.ok(answerMatches(await post(env, "protobuf"), "accepted"));
    const audit = lines.filter((l) => l["audit"] === true && l["commandId"] === env.id);
    assert.equal(audit.length, 1, JSON.stringify(lines.slice(-5)));
    assert.equal(audit[0]?.["keyId"], fixture.prov.keyId);
    assert.equal(audit[0]?.["command"], WIPE);
    assert.equal(audit[0]?.["transport"], "rest");
    const forged = signEnvelope(commandEnvelope(WIPE, { device: "x" }, { issuedAt: Date.now() }), { keyId: fixture.prov.keyId, privateKey: fixture.stranger.privateKey });
    await post(forged, "json");
    const refusal = lines.find((l) => l["envelopeId"] === forged.id);
    assert.equal(refusal?.["code"], "SIGNATURE_INVALID");
    assert.equal(refusal?.["msg"], "envelope refused");
  });

  it("IPA's POST /v1/commands cannot carry a signature: refused where signatures are required", async () => {
    const before = sec.runs.peek;
    const res = await fetch(`${a.url}/v1/commands?agent_token=${TOKEN}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: PEEK, params: {} }) });
    assert.equal(res.status, 401);
    assert.match(((await res.json()) as { faultstring: string }).faultstring, /^A signed envelope is required/);
    assert.equal(sec.runs.peek, before);
  });
});

describe("REST agent without keys: unchanged (IPA's route and unsigned envelopes run), destructive commands audited", () => {
  it("runs unsigned commands and audits destructive ones with keyId null", async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString("utf8").split("\n").filter((l) => l !== ""));
        done();
      },
    });
    const sec = securityExtension();
    const a = await startAgent({ config: { allowDestructive: true }, extensions: [sec.extension], log: createLogger("info", sink), guard: (config, log) => createGuard(config, log) });
    try {
      const res = await fetch(`${a.url}/v1/commands?agent_token=${TOKEN}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: WIPE, params: { device: "x" } }) });
      assert.equal(res.status, 200);
      assert.equal(sec.runs.wipe, 1);
      const audit = lines.map((l) => JSON.parse(l) as Record<string, Json>).filter((l) => l["audit"] === true);
      assert.equal(audit.length, 1);
      assert.equal(audit[0]?.["keyId"], null);
      assert.equal(audit[0]?.["command"], WIPE);
    } finally {
      await a.close();
    }
  });
});

export type { TestKey };
