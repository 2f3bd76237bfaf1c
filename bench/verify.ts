/**
 * The cost of signed envelopes, measured in one run against itself:
 *   - in process: commands per second through Agent.receiveEnvelope (a cheap sync command, one at a
 *     time), unsigned with the open guard, signed and verified by the trust guard, and signed with
 *     the agent signing its answers too; in both encodings;
 *   - over REST: POST /ironbus/v1/envelope on loopback, unsigned vs signed, with 1 and 16 in flight;
 *   - the bare ed25519 sign and verify of one canonical command.
 * Variants alternate round by round and the median round counts, so a busy machine hurts them alike.
 * Envelopes are made and signed before the clock starts (signing is the controller's cost). Prints JSON.
 *
 *   npx tsx bench/verify.ts [--rounds 5] [--commands 2000] [--rest-commands 2000]
 */
import { randomUUID, sign, verify } from "node:crypto";
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { z } from "zod";
import { CONTENT_TYPES, encodeEnvelope, type WireFormat } from "../core/codec.js";
import { defineCommand, defineExtension } from "../core/command.js";
import { parseConfig } from "../core/config.js";
import type { Envelope } from "../core/envelope.js";
import { OPEN_GUARD, type EnvelopeGuard } from "../core/guard.js";
import { silentLogger } from "../core/log.js";
import { generateKeyPair, parseKeySpec, signEnvelope, signingBytes, type SigningKey } from "../core/sign.js";
import type { ReceiveContext } from "../core/transport.js";
import { TrustGuard } from "../core/trust.js";
import { Agent } from "../router/agent.js";
import { RestTransport } from "../transports/rest/server.js";
import { makePool, median, round } from "./lib.js";

const { values: args } = parseArgs({
  options: { rounds: { type: "string", default: "5" }, commands: { type: "string", default: "2000" }, "rest-commands": { type: "string", default: "2000" } },
});
const ROUNDS = Number(args.rounds);
const COMMANDS = Number(args.commands);
const REST_COMMANDS = Number(args["rest-commands"]);

const TOKEN = "bench-token-0123456789abcdef";
const CTX: ReceiveContext = { transport: "bench", source: "node" };
const controller = generateKeyPair();
const controllerKey: SigningKey = { keyId: "prov", privateKey: controller.privateKey };
const agentKey: SigningKey = { keyId: "agent-bench", privateKey: generateKeyPair().privateKey };
const log = silentLogger();

type Variant = "unsigned" | "signed" | "signed+sealed";
const VARIANTS: readonly Variant[] = ["unsigned", "signed", "signed+sealed"];

function guardFor(variant: Variant): EnvelopeGuard {
  if (variant === "unsigned") return OPEN_GUARD;
  return new TrustGuard({ log, keys: [parseKeySpec(`prov:${controller.publicKeyRaw}`)], requireSignatures: true, replayCapacity: 1_000_000, ...(variant === "signed+sealed" ? { signer: agentKey } : {}) });
}

function makeAgent(guard: EnvelopeGuard, transports: RestTransport[] = []): Agent {
  const ext = defineExtension("bench", { noop: defineCommand({ mode: "sync", exclusive: false, params: z.object({}).strict(), run: () => ({ ok: true }) }) });
  const config = parseConfig({ standalone: true, agentToken: TOKEN, resultHistory: 1000, idHistory: 1_000_000 });
  return new Agent({ config, log, extensions: [ext], transports, guard });
}

/** `count` commands, encoded, signed when asked; made before anything is timed. */
function envelopes(count: number, format: WireFormat, signed: boolean): Uint8Array[] {
  const now = Date.now();
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    let env: Envelope = { v: 1, id: randomUUID(), kind: "command", token: TOKEN, issued_at: now, expires_at: now + 600_000, body: { name: "bench.noop", params: {} } };
    if (signed) env = signEnvelope(env, controllerKey);
    out.push(encodeEnvelope(env, format));
  }
  return out;
}

/** Commands per second through receiveEnvelope, one at a time. */
async function inProcess(variant: Variant, format: WireFormat): Promise<number> {
  const agent = makeAgent(guardFor(variant));
  const contentType = CONTENT_TYPES[format];
  const warm = envelopes(200, format, variant !== "unsigned");
  for (const bytes of warm) await agent.receiveEnvelope(bytes, contentType, CTX);
  const batch = envelopes(COMMANDS, format, variant !== "unsigned");
  const t0 = performance.now();
  for (const bytes of batch) {
    const out = await agent.receiveEnvelope(bytes, contentType, CTX);
    if (out.error !== undefined) throw new Error(`${variant}/${format}: ${out.error.code} ${out.error.message}`);
  }
  const ms = performance.now() - t0;
  await agent.stop();
  return (COMMANDS * 1000) / ms;
}

/** Commands per second over POST /ironbus/v1/envelope, `inFlight` at a time (JSON). */
async function overRest(variant: Variant, inFlight: number): Promise<number> {
  const rest = new RestTransport({ host: "127.0.0.1", port: 0, log });
  const agent = makeAgent(guardFor(variant), [rest]);
  await agent.start();
  const pool = makePool(`http://127.0.0.1:${rest.address().port}`, inFlight);
  const send = async (bytes: Uint8Array): Promise<void> => {
    const res = await pool.request({ path: `/ironbus/v1/envelope?agent_token=${TOKEN}`, method: "POST", body: Buffer.from(bytes), headers: { "content-type": CONTENT_TYPES.json } });
    const text = await res.body.text();
    if (res.statusCode !== 200 || !text.includes('"SUCCEEDED"')) throw new Error(`${variant}: ${res.statusCode} ${text.slice(0, 200)}`);
  };
  const drive = async (batch: Uint8Array[]): Promise<number> => {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        for (let i = next++; i < batch.length; i = next++) await send(batch[i] as Uint8Array);
      }),
    );
    return performance.now() - t0;
  };
  try {
    await drive(envelopes(300, "json", variant !== "unsigned"));
    const ms = await drive(envelopes(REST_COMMANDS, "json", variant !== "unsigned"));
    return (REST_COMMANDS * 1000) / ms;
  } finally {
    await pool.close();
    await agent.stop();
  }
}

/** µs per ed25519 sign and verify of one canonical command (what each signed command costs at least). */
function primitives(): { signUs: number; verifyUs: number; canonicalBytes: number } {
  const env: Envelope = { v: 1, id: randomUUID(), kind: "command", issued_at: Date.now(), expires_at: Date.now() + 60_000, body: { name: "bench.noop", params: {} } };
  const bytes = signingBytes(env);
  const sig = sign(null, bytes, controller.privateKey);
  const n = 2000;
  let t0 = performance.now();
  for (let i = 0; i < n; i++) sign(null, bytes, controller.privateKey);
  const signUs = ((performance.now() - t0) * 1000) / n;
  t0 = performance.now();
  for (let i = 0; i < n; i++) verify(null, bytes, controller.publicKey, sig);
  const verifyUs = ((performance.now() - t0) * 1000) / n;
  return { signUs: round(signUs, 1), verifyUs: round(verifyUs, 1), canonicalBytes: bytes.byteLength };
}

async function main(): Promise<void> {
  const started = new Date().toISOString();
  const inproc: Record<string, Record<Variant, number[]>> = {};
  for (const format of ["json", "protobuf"] as const) inproc[format] = { unsigned: [], signed: [], "signed+sealed": [] };
  const rest: Record<string, Record<"unsigned" | "signed", number[]>> = { "1": { unsigned: [], signed: [] }, "16": { unsigned: [], signed: [] } };
  for (let r = 0; r < ROUNDS; r++) {
    for (const format of ["json", "protobuf"] as const) {
      for (const variant of r % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()) (inproc[format] as Record<Variant, number[]>)[variant].push(await inProcess(variant, format));
    }
    for (const inFlight of [1, 16]) {
      for (const variant of r % 2 === 0 ? (["unsigned", "signed"] as const) : (["signed", "unsigned"] as const)) (rest[String(inFlight)] as Record<"unsigned" | "signed", number[]>)[variant].push(await overRest(variant, inFlight));
    }
  }
  const summary = (runs: Record<string, number[]>): Record<string, number> => {
    const base = median(runs["unsigned"] ?? []);
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(runs)) {
      out[`${k}_per_s`] = round(median(v));
      if (k !== "unsigned") out[`${k}_ratio`] = round(median(v) / base, 2);
    }
    return out;
  };
  const result = {
    benchmark: "signed envelopes (bench/verify.ts)",
    started,
    node: process.version,
    cpu: cpus()[0]?.model ?? "unknown",
    cpus: cpus().length,
    rounds: ROUNDS,
    commandsPerRound: { inProcess: COMMANDS, rest: REST_COMMANDS },
    primitives: primitives(),
    inProcess: { json: summary(inproc["json"] ?? {}), protobuf: summary(inproc["protobuf"] ?? {}) },
    rest: { json_inFlight1: summary(rest["1"] ?? {}), json_inFlight16: summary(rest["16"] ?? {}) },
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}

await main();
