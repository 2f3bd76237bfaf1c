/**
 * Keys and signed envelopes for tests of the trust model, whatever the transport: a provisioning key
 * (scope all), a monitoring key (scope read-only) and a stranger nobody trusts; a harmless extension
 * with a read-only and a destructive command that touch nothing; and the security cases (valid,
 * unsigned, forged, altered, expired, replayed, wrongly authorised, ...) as envelopes to send in order
 * with the outcome each must get. test/trust.test.ts runs them over REST; a bus conformance suite runs
 * the same cases over its own transport.
 */
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import type { Envelope, EnvelopeOf, JsonObject } from "../../core/envelope.js";
import { ERROR_CODES, type ErrorCode } from "../../core/errors.js";
import { generateKeyPair, signEnvelope, type GeneratedKeyPair, type SigningKey } from "../../core/sign.js";

export interface TestKey extends GeneratedKeyPair {
  readonly keyId: string;
  /** `keyId:base64`: a trustedKeys (or join answer trusted_keys) entry. */
  readonly spec: string;
  readonly signer: SigningKey;
}

export function testKey(keyId: string): TestKey {
  const pair = generateKeyPair();
  return { ...pair, keyId, spec: `${keyId}:${pair.publicKeyRaw}`, signer: { keyId, privateKey: pair.privateKey } };
}

export interface TrustFixture {
  /** Trusted, scope all: provisioning. */
  readonly prov: TestKey;
  /** Trusted, scope read-only: monitoring. */
  readonly mon: TestKey;
  /** Trusted by nobody. */
  readonly stranger: TestKey;
  /** Agent configuration that trusts prov and mon, with their scopes, and allows destructive commands. */
  readonly config: { trustedKeys: string[]; keyScopes: string[]; allowDestructive: true };
}

export function trustFixture(): TrustFixture {
  const prov = testKey("prov-1");
  const mon = testKey("monitor-1");
  const stranger = testKey("stranger");
  return { prov, mon, stranger, config: { trustedKeys: [prov.spec, mon.spec], keyScopes: [`${mon.keyId}=read-only`], allowDestructive: true } };
}

// ---- a harmless extension ---------------------------------------------------------------------

export const PEEK = "sectest.peek";
export const WIPE = "sectest.wipe";

export interface SecurityExtension {
  readonly extension: Extension;
  /** How often each command really ran. */
  readonly runs: { peek: number; wipe: number };
}

/** `sectest.peek` (read-only) and `sectest.wipe` (destructive, touches nothing); both count their runs. */
export function securityExtension(): SecurityExtension {
  const runs = { peek: 0, wipe: 0 };
  const extension = defineExtension("sectest", {
    peek: defineCommand({
      mode: "sync",
      exclusive: false,
      params: z.object({ what: z.string().optional() }).strict(),
      run: () => ({ peeked: ++runs.peek }),
    }),
    wipe: defineCommand({
      mode: "sync",
      destructive: true,
      params: z.object({ device: z.string() }).strict(),
      run: () => ({ wiped: ++runs.wipe }),
    }),
  });
  return { extension, runs };
}

// ---- envelopes --------------------------------------------------------------------------------

export interface CommandOptions {
  readonly id?: string;
  readonly node?: string | undefined;
  readonly token?: string | undefined;
  readonly issuedAt?: number | undefined;
  readonly expiresAt?: number | undefined;
  readonly wait?: boolean;
}

/** An unsigned command envelope. */
export function commandEnvelope(name: string, params: JsonObject, opts: CommandOptions = {}): EnvelopeOf<"command"> {
  const env: EnvelopeOf<"command"> = { v: 1, id: opts.id ?? randomUUID(), kind: "command", body: { name, params } };
  if (opts.wait !== undefined) env.body.wait = opts.wait;
  if (opts.node !== undefined) env.node = opts.node;
  if (opts.token !== undefined) env.token = opts.token;
  if (opts.issuedAt !== undefined) env.issued_at = opts.issuedAt;
  if (opts.expiresAt !== undefined) env.expires_at = opts.expiresAt;
  return env;
}

/** A command signed by `key`, valid from `now` for `ttlMs` (default one minute). */
export function signedCommand(key: TestKey, name: string, params: JsonObject, now: number, opts: CommandOptions & { ttlMs?: number } = {}): EnvelopeOf<"command"> {
  return signEnvelope(commandEnvelope(name, params, { issuedAt: now, expiresAt: now + (opts.ttlMs ?? 60_000), ...opts }), key.signer);
}

/** A join answer (an `ironbus.join` event), unsigned. */
export function joinAnswer(data: JsonObject, opts: { node?: string; issuedAt?: number; expiresAt?: number; token?: string } = {}): EnvelopeOf<"event"> {
  const env: EnvelopeOf<"event"> = { v: 1, id: randomUUID(), kind: "event", body: { name: "ironbus.join", data } };
  if (opts.node !== undefined) env.node = opts.node;
  if (opts.token !== undefined) env.token = opts.token;
  if (opts.issuedAt !== undefined) env.issued_at = opts.issuedAt;
  if (opts.expiresAt !== undefined) env.expires_at = opts.expiresAt;
  return env;
}

// ---- the security cases -----------------------------------------------------------------------

/** "accepted": a result envelope (the command ran or runs); otherwise the code it must be refused with. */
export type Expectation = "accepted" | ErrorCode;

export interface SecurityStep {
  readonly env: Envelope;
  readonly expect: Expectation;
  /** The command that runs when this step is accepted. */
  readonly runs?: "peek" | "wipe";
}

export interface SecurityCase {
  readonly name: string;
  readonly steps: readonly SecurityStep[];
}

export interface CaseOptions {
  readonly fixture: TrustFixture;
  /** The agent's clock now (epoch ms). */
  readonly now: number;
  /** Put in every envelope (buses address commands to a node). */
  readonly node?: string | undefined;
  /** Put in every envelope (buses carry the token in the envelope). */
  readonly token?: string | undefined;
  /** The agent's maxClockSkewS (default 60) and maxCommandTtlS (default 3600). */
  readonly maxClockSkewS?: number;
  readonly maxCommandTtlS?: number;
}

/**
 * Every case the trust model must decide, fresh ids each call. Run on an agent configured with
 * `fixture.config` (signatures required, destructive commands allowed) and the security extension.
 */
export function securityCases(o: CaseOptions): SecurityCase[] {
  const { prov, mon, stranger } = o.fixture;
  const skewMs = (o.maxClockSkewS ?? 60) * 1000;
  const ttlMs = (o.maxCommandTtlS ?? 3600) * 1000;
  const base = { node: o.node, token: o.token };
  const wipe = { device: "/dev/null-test" };
  const sign = (key: TestKey, name: string, params: JsonObject, extra: CommandOptions & { ttlMs?: number } = {}): EnvelopeOf<"command"> =>
    signedCommand(key, name, params, o.now, { ...base, ...extra });

  const valid = sign(prov, WIPE, wipe);
  const forged = signEnvelope(commandEnvelope(WIPE, wipe, { ...base, issuedAt: o.now, expiresAt: o.now + 60_000 }), { keyId: prov.keyId, privateKey: stranger.privateKey });
  const signedParams = sign(prov, WIPE, wipe);
  const alteredParams: EnvelopeOf<"command"> = { ...signedParams, body: { ...signedParams.body, params: { device: "/dev/sda" } } };
  const signedPeek = sign(mon, PEEK, {});
  const alteredName: EnvelopeOf<"command"> = { ...signedPeek, body: { ...signedPeek.body, name: WIPE, params: wipe } };
  const signedLate = sign(prov, PEEK, {});
  const alteredExpiry: EnvelopeOf<"command"> = { ...signedLate, expires_at: o.now + 120_000 };
  const replayed = sign(prov, PEEK, {});
  const unsignedButTimed = commandEnvelope(PEEK, {}, { ...base, issuedAt: o.now, expiresAt: o.now + 60_000 });
  const wrongAlg = sign(prov, PEEK, {});

  return [
    { name: "a valid read-only command signed by the monitoring key runs", steps: [{ env: sign(mon, PEEK, {}), expect: "accepted", runs: "peek" }] },
    { name: "a valid destructive command signed by the provisioning key runs", steps: [{ env: valid, expect: "accepted", runs: "wipe" }] },
    { name: "unsigned, where signatures are required", steps: [{ env: unsignedButTimed, expect: "SIGNATURE_REQUIRED" }] },
    { name: "forged: signed by another key under the provisioning key's id", steps: [{ env: forged, expect: "SIGNATURE_INVALID" }] },
    { name: "signed by a key nobody trusts", steps: [{ env: sign(stranger, PEEK, {}), expect: "SIGNATURE_INVALID" }] },
    { name: "altered: params changed after signing", steps: [{ env: alteredParams, expect: "SIGNATURE_INVALID" }] },
    { name: "altered: command changed after signing", steps: [{ env: alteredName, expect: "SIGNATURE_INVALID" }] },
    { name: "altered: expiry pushed back after signing", steps: [{ env: alteredExpiry, expect: "SIGNATURE_INVALID" }] },
    { name: "wrong algorithm", steps: [{ env: { ...wrongAlg, sig: { key_id: prov.keyId, alg: "hs256", value: wrongAlg.sig?.value ?? "" } }, expect: "SIGNATURE_INVALID" }] },
    { name: "expired", steps: [{ env: sign(prov, WIPE, wipe, { issuedAt: o.now - 120_000, expiresAt: o.now - 60_000 }), expect: "COMMAND_EXPIRED" }] },
    { name: "expired by the default window (no expires_at)", steps: [{ env: sign(prov, PEEK, {}, { issuedAt: o.now - ttlMs - 5_000, expiresAt: undefined }), expect: "COMMAND_EXPIRED" }] },
    { name: "issued in the future beyond the clock skew", steps: [{ env: sign(prov, PEEK, {}, { issuedAt: o.now + skewMs + 60_000 }), expect: "INVALID_VALIDITY_WINDOW" }] },
    { name: "validity window longer than allowed", steps: [{ env: sign(prov, PEEK, {}, { expiresAt: o.now + ttlMs + 60_000 }), expect: "INVALID_VALIDITY_WINDOW" }] },
    { name: "signed without issued_at", steps: [{ env: sign(prov, PEEK, {}, { issuedAt: undefined, expiresAt: undefined }), expect: "INVALID_VALIDITY_WINDOW" }] },
    {
      // The copy never runs: answered from the stored result while the agent holds it (a
      // controller may ask again that way), refused as REPLAYED once the result has left its history.
      name: "replayed: the same signed envelope twice runs once",
      steps: [
        { env: replayed, expect: "accepted", runs: "peek" },
        { env: replayed, expect: "accepted" },
      ],
    },
    { name: "wrongly authorised: the monitoring key runs a destructive command", steps: [{ env: sign(mon, WIPE, wipe), expect: "FORBIDDEN" }] },
    { name: "wrongly authorised: the monitoring key cancels a command", steps: [{ env: sign(mon, "agent.cancel_command", { command_id: "x" }), expect: "FORBIDDEN" }] },
  ];
}

/** Whether an answer envelope is what `expect` says (error envelopes carry IPA's type and status, not the code). */
export function answerMatches(answer: Envelope, expect: Expectation): boolean {
  if (expect === "accepted") return answer.kind === "result" && answer.body.command_status !== "FAILED";
  if (answer.kind !== "error") return false;
  const info = ERROR_CODES[expect];
  return answer.body.type === info.ipaType && answer.body.code === info.status;
}

/** A short description of an answer, for assertion messages. */
export function describeAnswer(answer: Envelope): string {
  if (answer.kind === "error") return `error ${answer.body.type} ${answer.body.code}: ${answer.body.details}`;
  if (answer.kind === "result") return `result ${answer.body.command_status} ${JSON.stringify(answer.body.command_result)}`;
  return answer.kind;
}
