/**
 * The fuzz harness shared by test/fuzz/*.fuzz.test.ts: run counts and seed from the environment
 * (IRONBUS_FUZZ_RUNS is the total over every fuzz file, IRONBUS_FUZZ_SEED replays a run), generators of
 * malformed wire input (raw bytes, random JSON, valid envelopes in both encodings, signed or not, then
 * mutated: bit flips, truncation, spliced bytes, wrong types, huge strings, deep nesting), a watch on
 * unhandled rejections and uncaught exceptions, a per-input deadline, and a log probe that tells
 * whether a refusal was logged.
 *
 * An entry point is `(bytes, contentType) => Promise<void>`: fuzzEntryPoint throws its inputs at it.
 * The entry point itself checks that its input was answered or dropped with a logged reason (a
 * LogProbe helps), and throws otherwise.
 */
import type { KeyObject } from "node:crypto";
import { Writable } from "node:stream";
import type { TestContext } from "node:test";
import fc from "fast-check";
import { z } from "zod";
import { CONTENT_TYPES, encodeEnvelope, type WireFormat } from "../../core/codec.js";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import { AgentError } from "../../core/errors.js";
import type { CommandRunner } from "../../utilities/exec.js";
import type { Envelope, Json, JsonObject } from "../../core/envelope.js";
import { createLogger, type Logger } from "../../core/log.js";
import { signEnvelope } from "../../core/sign.js";

// ---- settings ---------------------------------------------------------------------------------

/** Total inputs over every fuzz file unless IRONBUS_FUZZ_RUNS says otherwise. */
export const DEFAULT_TOTAL_RUNS = 100_000;

/** The share of the total each fuzz file takes (sums to 1). */
export const SHARES = { codec: 0.8, router: 0.15, rest: 0.05 } as const;

export interface FuzzSettings {
  readonly total: number;
  readonly runs: number;
  readonly seed: number;
}

function envInt(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** One seed per process, shared by the files that run in it; printed so a failure can be replayed. */
const SEED = envInt("IRONBUS_FUZZ_SEED") ?? (Date.now() ^ (process.pid << 8)) >>> 0;

export function fuzzSettings(file: keyof typeof SHARES): FuzzSettings {
  const total = envInt("IRONBUS_FUZZ_RUNS") ?? DEFAULT_TOTAL_RUNS;
  return { total, runs: Math.max(1, Math.round(total * SHARES[file])), seed: SEED };
}

/** The line a test prints (t.diagnostic): how many inputs, the seed, how to replay. */
export function describeRun(name: string, s: FuzzSettings, done: number, ms: number): string {
  return `fuzz ${name}: ${done} inputs in ${(ms / 1000).toFixed(1)} s, seed ${s.seed} (replay: IRONBUS_FUZZ_SEED=${s.seed} IRONBUS_FUZZ_RUNS=${s.total})`;
}

// ---- process watch ----------------------------------------------------------------------------

/** Records unhandled rejections and uncaught exceptions while installed. */
export class ProcessWatch {
  readonly problems: string[] = [];
  private readonly onRejection = (reason: unknown): void => {
    this.problems.push(`unhandledRejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
  };
  private readonly onException = (err: Error): void => {
    this.problems.push(`uncaughtException: ${err.stack ?? err.message}`);
  };

  install(): this {
    process.on("unhandledRejection", this.onRejection);
    process.on("uncaughtException", this.onException);
    return this;
  }

  uninstall(): void {
    process.off("unhandledRejection", this.onRejection);
    process.off("uncaughtException", this.onException);
  }

  /** Throws when anything was recorded. */
  check(): void {
    if (this.problems.length > 0) throw new Error(`${this.problems.length} unhandled: ${this.problems.slice(0, 3).join("\n---\n")}`);
  }
}

/** `work`, or a rejection after `ms` (a hang). */
export async function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: ${what} not done within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- logs -------------------------------------------------------------------------------------

export interface LogLine {
  readonly seq: number;
  readonly level: number;
  readonly msg: string;
  readonly fields: Record<string, unknown>;
}

/** A logger whose lines the test can look at: mark() before an input, since(mark) after it. */
export class LogProbe {
  readonly log: Logger;
  private lines: LogLine[] = [];
  private seq = 0;

  constructor(level: "debug" | "info" | "warn" = "debug") {
    const sink = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        for (const text of chunk.toString("utf8").split("\n")) {
          if (text === "") continue;
          const fields = JSON.parse(text) as Record<string, unknown>;
          this.lines.push({ seq: ++this.seq, level: Number(fields["level"]), msg: String(fields["msg"]), fields });
        }
        // Keep memory flat over a long run.
        if (this.lines.length > 10_000) this.lines = this.lines.slice(-1_000);
        done();
      },
    });
    this.log = createLogger(level, sink);
  }

  mark(): number {
    return this.seq;
  }

  since(mark: number): LogLine[] {
    return this.lines.filter((l) => l.seq > mark);
  }
}

// ---- harmless commands ----------------------------------------------------------------------

/** Commands that do nothing real but cover every way a handler can end. */
export function fuzzExtension(): Extension {
  return defineExtension("fz", {
    echo: defineCommand({ mode: "sync", exclusive: false, params: z.object({ value: z.unknown() }).strict(), run: (p) => ({ echoed: (p.value ?? null) as never }) }),
    sleep: defineCommand({
      mode: "async",
      exclusive: false,
      params: z.object({ ms: z.number().int().min(0).max(20) }).strict(),
      run: async (p, ctx) => {
        await new Promise((r) => setTimeout(r, p.ms));
        ctx.progress({ percent: 50, message: "half" });
        return { slept: p.ms };
      },
    }),
    hang: defineCommand({
      mode: "async",
      exclusive: false,
      params: z.object({}).passthrough(),
      // Stalls until aborted (deadline, cancel, shutdown), or 30 ms at most: a fuzz run does not wait out long deadlines.
      run: (_p, ctx) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => resolve({ stalled: true }), 30);
          ctx.signal.addEventListener("abort", () => (clearTimeout(timer), reject(ctx.signal.reason)), { once: true });
        }),
    }),
    fail: defineCommand({ mode: "sync", params: z.object({}).passthrough(), run: () => { throw new AgentError("TOOL_FAILED", "fuzz failure"); } }),
    crash: defineCommand({ mode: "sync", params: z.object({}).passthrough(), run: () => { throw new TypeError("fuzz crash"); } }),
    reject: defineCommand({ mode: "async", params: z.object({}).passthrough(), run: () => Promise.reject("a string, not an Error") }),
    nonjson: defineCommand({ mode: "sync", params: z.object({}).passthrough(), run: () => ({ big: BigInt(1), f: () => 1 }) }),
  });
}

/** A runner that runs nothing: every tool "fails" at once (the real utilities, fuzzed, touch nothing). */
export const NOTHING_RUNNER: CommandRunner = async () => ({ code: 1, stdout: "", stderr: "fuzz: not run" });

// ---- generators -------------------------------------------------------------------------------

export interface WireInput {
  readonly bytes: Uint8Array;
  readonly contentType: string | undefined;
  /** What made it, for failure messages. */
  readonly label: string;
}

export interface GeneratorOptions {
  /** Command names to use besides random ones (the agent's real commands). */
  readonly names: readonly string[];
  /** Keys to sign with (trusted and not). */
  readonly signers: ReadonlyArray<{ readonly keyId: string; readonly privateKey: KeyObject }>;
  /** Node ids and tokens worth trying. */
  readonly nodes?: readonly string[];
  readonly tokens?: readonly string[];
  /** Epoch ms around which issued_at values are drawn (default: now at generator creation). */
  readonly now?: number;
  /** Largest "huge string" (default 65,536 characters). */
  readonly hugeChars?: number;
  /**
   * Share of inputs that are plausible: a well-formed command for the agent (a known name, the right
   * token and node, signed by a trusted signer when there is one, a current window, its own content
   * type, no mutation), so that a fuzz run reaches past the first checks. Default 0.15.
   */
  readonly plausible?: number;
  /** How many of `signers` (the first ones) the agent trusts; default all but the last. */
  readonly trustedSigners?: number;
  /** Join answers (their data) the plausible inputs include now and then; none by default. */
  readonly joins?: readonly JsonObject[];
}

// Small values: a fuzz run is many inputs, not big ones (huge and deep inputs have mutations of their own).
const smallText = fc.string({ maxLength: 24 });
const jsonValue = fc.jsonValue({ maxDepth: 2, depthSize: "xsmall" }) as fc.Arbitrary<Json>;
const jsonObject = fc.dictionary(smallText, jsonValue, { maxKeys: 3, size: "xsmall" }) as fc.Arbitrary<JsonObject>;
const maybe = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(arb, { nil: undefined, freq: 2 });

function withHeader(b: { kind: Envelope["kind"]; body: unknown }, h: Record<string, unknown>): Envelope {
  const env: Record<string, unknown> = { v: 1, kind: b.kind, body: b.body, id: h["id"] };
  for (const k of ["node", "token", "reply_to", "correlation_id", "issued_at", "expires_at"]) if (h[k] !== undefined) env[k] = h[k];
  const body = b.body as Record<string, unknown>;
  if (b.kind === "command") for (const k of ["wait", "timeout_ms"]) if (body[k] === undefined) delete body[k];
  return env as unknown as Envelope;
}

/** A valid domain envelope, mostly commands, sometimes join answers and the kinds an agent refuses. */
export function envelopeArb(o: GeneratorOptions): fc.Arbitrary<Envelope> {
  const now = o.now ?? Date.now();
  const name = fc.oneof({ arbitrary: fc.constantFrom(...(o.names.length > 0 ? o.names : ["a.b"])), weight: 4 }, { arbitrary: fc.string({ minLength: 1, maxLength: 40 }), weight: 1 });
  const id = fc.oneof({ arbitrary: fc.uuid(), weight: 4 }, { arbitrary: fc.string({ minLength: 1, maxLength: 64 }), weight: 1 });
  const header = fc.record({
    id,
    node: maybe(fc.constantFrom(...(o.nodes ?? ["node-1"]), "other-node", "")),
    token: maybe(fc.constantFrom(...(o.tokens ?? []), "wrong-token-0123456789", "")),
    reply_to: maybe(smallText),
    correlation_id: maybe(smallText),
    issued_at: maybe(fc.oneof(fc.integer({ min: now - 7_200_000, max: now + 120_000 }), fc.constant(now), fc.double({ min: 0, max: 1e13, noNaN: true }))),
    expires_at: maybe(fc.oneof(fc.integer({ min: now - 60_000, max: now + 7_200_000 }), fc.double({ min: 0, max: 1e13, noNaN: true }))),
  });
  const command = fc.record({ name, params: jsonObject, wait: maybe(fc.boolean()), timeout_ms: maybe(fc.integer({ min: 1, max: 60_000 })) });
  const joinData = fc.oneof(
    jsonValue,
    fc.record({
      token: fc.string({ minLength: 16, maxLength: 40 }),
      broadcast_token: maybe(fc.string({ minLength: 16, maxLength: 40 })),
      groups: maybe(fc.array(fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/), { maxLength: 3 })),
      heartbeat_interval_s: maybe(fc.integer({ min: 1, max: 60 })),
    }) as fc.Arbitrary<Json>,
  );
  const body = fc.oneof(
    { arbitrary: command.map((c) => ({ kind: "command" as const, body: c })), weight: 10 },
    { arbitrary: joinData.map((data) => ({ kind: "event" as const, body: { name: "ironbus.join", data } })), weight: 1 },
    { arbitrary: fc.record({ name: fc.string({ minLength: 1, maxLength: 20 }), data: jsonValue }).map((b) => ({ kind: "event" as const, body: b })), weight: 1 },
    {
      arbitrary: fc.record({ seq: fc.nat(), status: fc.constantFrom("idle" as const, "busy" as const), uptime_s: fc.nat(), version: smallText }).map((b) => ({ kind: "heartbeat" as const, body: b })),
      weight: 1,
    },
    { arbitrary: fc.record({ type: smallText, code: fc.nat(999), message: smallText, details: smallText }).map((b) => ({ kind: "error" as const, body: b })), weight: 1 },
  );
  return fc.tuple(header, body).map(([h, b]) => withHeader(b, h));
}

/** A command the agent should take up to the router: known name, right token and node, current window. */
export function plausibleCommandArb(o: GeneratorOptions): fc.Arbitrary<Envelope> {
  const now = o.now ?? Date.now();
  const names = o.names.length > 0 ? o.names : ["a.b"];
  const command = fc
    .record({
      id: fc.uuid(),
      name: fc.constantFrom(...names),
      params: fc.oneof({ arbitrary: fc.constant({}), weight: 2 }, { arbitrary: jsonObject, weight: 1 }),
      node: fc.constantFrom<string | undefined>(undefined, undefined, ...(o.nodes ?? [])),
      token: fc.constantFrom<string | undefined>(...(o.tokens ?? [undefined])),
      wait: fc.constantFrom<boolean | undefined>(undefined, true, false),
      skew: fc.integer({ min: -5_000, max: 5_000 }),
    })
    .map((r) => withHeader({ kind: "command", body: { name: r.name, params: r.params, wait: r.wait } }, { id: r.id, node: r.node, token: r.token, issued_at: now + r.skew, expires_at: now + 600_000 }));
  const joins = o.joins ?? [];
  if (joins.length === 0) return command;
  const join = fc
    .record({ id: fc.uuid(), data: fc.constantFrom(...joins), token: fc.constantFrom<string | undefined>(...(o.tokens ?? [undefined])) })
    .map((r) => withHeader({ kind: "event", body: { name: "ironbus.join", data: r.data } }, { id: r.id, token: r.token, issued_at: now, expires_at: now + 600_000 }));
  return fc.oneof({ arbitrary: command, weight: 9 }, { arbitrary: join, weight: 1 });
}

/** An envelope, signed by one of the signers, by nobody, or with a garbage signature. */
export function maybeSigned(o: GeneratorOptions): fc.Arbitrary<Envelope> {
  const signers = o.signers;
  return fc.tuple(envelopeArb(o), fc.nat(signers.length + 1), fc.string({ maxLength: 90 })).map(([env, pick, garbage]) => {
    if (pick < signers.length) return signEnvelope(env, signers[pick] as (typeof signers)[number]);
    if (pick === signers.length) return env;
    return { ...env, sig: { key_id: signers[0]?.keyId ?? "k", alg: "ed25519", value: garbage } };
  });
}

/** A plausible command signed by a trusted signer (or unsigned when none is trusted). */
function plausibleSigned(o: GeneratorOptions): fc.Arbitrary<Envelope> {
  const trusted = o.signers.slice(0, o.trustedSigners ?? Math.max(0, o.signers.length - 1));
  if (trusted.length === 0) return plausibleCommandArb(o);
  return fc.tuple(plausibleCommandArb(o), fc.nat(trusted.length - 1)).map(([env, pick]) => signEnvelope(env, trusted[pick] as (typeof trusted)[number]));
}

type Mutation =
  | { readonly kind: "none" }
  | { readonly kind: "flip"; readonly at: readonly number[] }
  | { readonly kind: "truncate"; readonly at: number }
  | { readonly kind: "splice"; readonly at: number; readonly insert: Uint8Array }
  | { readonly kind: "retype"; readonly path: readonly string[]; readonly value: Json }
  | { readonly kind: "huge"; readonly path: readonly string[]; readonly chars: number }
  | { readonly kind: "deep"; readonly depth: number };

const PATHS: ReadonlyArray<readonly string[]> = [
  ["v"],
  ["id"],
  ["kind"],
  ["node"],
  ["token"],
  ["issued_at"],
  ["expires_at"],
  ["sig"],
  ["sig", "value"],
  ["sig", "key_id"],
  ["sig", "alg"],
  ["body"],
  ["body", "name"],
  ["body", "params"],
  ["body", "wait"],
  ["body", "timeout_ms"],
  ["body", "data"],
  ["body", "params", "x"],
  ["extra"],
];

function mutationArb(hugeChars: number): fc.Arbitrary<Mutation> {
  const fraction = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });
  return fc.oneof(
    { arbitrary: fc.constant<Mutation>({ kind: "none" }), weight: 3 },
    { arbitrary: fc.array(fraction, { minLength: 1, maxLength: 8 }).map((at): Mutation => ({ kind: "flip", at })), weight: 3 },
    { arbitrary: fraction.map((at): Mutation => ({ kind: "truncate", at })), weight: 2 },
    { arbitrary: fc.tuple(fraction, fc.uint8Array({ minLength: 1, maxLength: 16 })).map(([at, insert]): Mutation => ({ kind: "splice", at, insert })), weight: 2 },
    { arbitrary: fc.tuple(fc.constantFrom(...PATHS), jsonValue).map(([path, value]): Mutation => ({ kind: "retype", path, value })), weight: 3 },
    { arbitrary: fc.tuple(fc.constantFrom(...PATHS), fc.integer({ min: 1000, max: hugeChars })).map(([path, chars]): Mutation => ({ kind: "huge", path, chars })), weight: 1 },
    { arbitrary: fc.integer({ min: 2, max: 5_000 }).map((depth): Mutation => ({ kind: "deep", depth })), weight: 1 },
  );
}

function setPath(root: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node: Record<string, unknown> = root;
  for (let i = 0; i < path.length - 1; i++) {
    const k = path[i] as string;
    const next = node[k];
    if (typeof next !== "object" || next === null || Array.isArray(next)) {
      const fresh: Record<string, unknown> = {};
      node[k] = fresh;
      node = fresh;
    } else {
      node = next as Record<string, unknown>;
    }
  }
  node[path[path.length - 1] as string] = value;
}

function deepValue(depth: number): string {
  return `${"[".repeat(depth)}0${"]".repeat(depth)}`;
}

function mutate(env: Envelope, format: WireFormat, m: Mutation): { bytes: Uint8Array; label: string } {
  switch (m.kind) {
    case "none":
      return { bytes: encodeEnvelope(env, format), label: "valid" };
    case "flip": {
      const bytes = Uint8Array.from(encodeEnvelope(env, format));
      if (bytes.byteLength === 0) return { bytes, label: "flip(empty)" };
      for (const at of m.at) {
        const bit = Math.floor(at * bytes.byteLength * 8);
        const i = bit >> 3;
        bytes[i] = (bytes[i] as number) ^ (1 << (bit & 7));
      }
      return { bytes, label: `flip x${m.at.length}` };
    }
    case "truncate": {
      const bytes = encodeEnvelope(env, format);
      return { bytes: bytes.slice(0, Math.floor(m.at * bytes.byteLength)), label: "truncate" };
    }
    case "splice": {
      const bytes = encodeEnvelope(env, format);
      const at = Math.floor(m.at * bytes.byteLength);
      return { bytes: Buffer.concat([bytes.subarray(0, at), m.insert, bytes.subarray(at)]), label: "splice" };
    }
    case "retype":
    case "huge": {
      // Wrong types and huge strings go in through the JSON form (protobuf has no wrong types to
      // offer: a protobuf field that does not fit is a decode error, which flips and splices reach).
      const obj = JSON.parse(JSON.stringify(env)) as Record<string, unknown>;
      setPath(obj, m.path, m.kind === "retype" ? m.value : "x".repeat(m.chars));
      return { bytes: Buffer.from(JSON.stringify(obj)), label: `${m.kind} ${m.path.join(".")}` };
    }
    case "deep": {
      // In a command's params (valid but for its depth), or as an unknown top-level field.
      const text = JSON.stringify(env);
      const deep = env.kind === "command" ? text.replace('"params":{', `"params":{"deep":${deepValue(m.depth)},`) : `${text.slice(0, -1)},"deep":${deepValue(m.depth)}}`;
      return { bytes: Buffer.from(deep), label: `deep ${m.depth}` };
    }
  }
}

const CONTENT_TYPE_POOL = [CONTENT_TYPES.json, CONTENT_TYPES.protobuf, "application/json", "application/x-protobuf", "application/json; charset=utf-8", "text/plain", "", "APPLICATION/VND.IRONBUS.V1+JSON"];

/** Bytes and a content type: mostly mutated envelopes with their own content type, sometimes anything. */
export function wireInputArb(o: GeneratorOptions): fc.Arbitrary<WireInput> {
  const hugeChars = o.hugeChars ?? 65_536;
  // 0-7: the format's own content type; 8-15: one of the pool (or none); else a random string.
  const ctPick = fc.tuple(fc.nat(17), fc.string({ maxLength: 30 }));
  const fromEnvelope = fc.tuple(maybeSigned(o), fc.boolean(), mutationArb(hugeChars), ctPick).map(([env, proto, m, [pick, random]]): WireInput => {
    const format: WireFormat = proto && m.kind !== "retype" && m.kind !== "huge" && m.kind !== "deep" ? "protobuf" : "json";
    const { bytes, label } = mutate(env, format, m);
    const ct = pick < 8 ? CONTENT_TYPES[format] : pick < 8 + CONTENT_TYPE_POOL.length ? CONTENT_TYPE_POOL[pick - 8] : pick === 17 ? undefined : random;
    return { bytes, contentType: ct, label: `${format} ${env.kind} ${env.sig === undefined ? "unsigned" : "signed"} ${label}` };
  });
  const pool = fc.constantFrom<string | undefined>(...CONTENT_TYPE_POOL, undefined);
  const rawBytes = fc.tuple(fc.uint8Array({ maxLength: 512 }), pool).map(([bytes, ct]): WireInput => ({ bytes, contentType: ct, label: "raw bytes" }));
  const randomJson = fc.tuple(fc.jsonValue({ maxDepth: 4 }), pool).map(([v, ct]): WireInput => ({ bytes: Buffer.from(JSON.stringify(v) ?? "null"), contentType: ct, label: "random JSON" }));
  const randomText = fc.tuple(fc.string({ maxLength: 200, unit: "binary" }), pool).map(([s, ct]): WireInput => ({ bytes: Buffer.from(s), contentType: ct, label: "random text" }));
  const plausible = fc.tuple(plausibleSigned(o), fc.boolean()).map(([env, proto]): WireInput => {
    const format: WireFormat = proto ? "protobuf" : "json";
    return { bytes: encodeEnvelope(env, format), contentType: CONTENT_TYPES[format], label: `${format} plausible ${env.kind === "command" ? env.body.name : env.kind}` };
  });
  const hostile = fc.oneof({ arbitrary: fromEnvelope, weight: 14 }, { arbitrary: rawBytes, weight: 2 }, { arbitrary: randomJson, weight: 2 }, { arbitrary: randomText, weight: 1 });
  const share = Math.round(100 * (o.plausible ?? 0.15));
  if (share <= 0) return hostile;
  return fc.oneof({ arbitrary: plausible, weight: share }, { arbitrary: hostile, weight: Math.max(1, 100 - share) });
}

// ---- running ----------------------------------------------------------------------------------

/** A transport's (or the agent's) entry point: takes one inbound message; resolves once it was handled. */
export type EntryPoint = (bytes: Uint8Array, contentType: string | undefined) => Promise<void>;

export interface FuzzOptions<T> {
  readonly t: TestContext;
  readonly name: string;
  readonly settings: FuzzSettings;
  readonly input: fc.Arbitrary<T>;
  /** Handles one input; throws when it was mishandled (not answered, not logged, ...). */
  readonly run: (input: T) => Promise<void>;
  /** What an input was, for failure messages. */
  readonly describe: (input: T) => string;
  /** Per-input deadline (a hang fails the run). Default 5 s. */
  readonly timeoutMs?: number;
  /** Shrink a failure (slow for network entry points). Default true. */
  readonly shrink?: boolean;
}

/**
 * Throws `settings.runs` inputs at `run`, with the process watch installed; fails on the first input
 * that throws, hangs, or leaves an unhandled rejection. Prints the count, the time and the seed.
 */
export async function fuzz<T>(o: FuzzOptions<T>): Promise<number> {
  const watch = new ProcessWatch().install();
  const started = performance.now();
  let done = 0;
  try {
    await fc.assert(
      fc.asyncProperty(o.input, async (input) => {
        done++;
        try {
          await withDeadline(o.run(input), o.timeoutMs ?? 5_000, `${o.name} (${o.describe(input)})`);
        } catch (err) {
          throw new Error(`${o.name}: ${o.describe(input)}: ${(err as Error).message}`, { cause: err });
        }
        if (watch.problems.length > 0) watch.check();
      }),
      { numRuns: o.settings.runs, seed: o.settings.seed, endOnFailure: o.shrink === false, verbose: 0 },
    );
    // A rejection left behind by the last inputs shows up a turn later.
    await new Promise((r) => setImmediate(r));
    watch.check();
  } finally {
    watch.uninstall();
    o.t.diagnostic(describeRun(o.name, o.settings, done, performance.now() - started));
  }
  return done;
}

/**
 * fuzz() for synchronous code (the codec, the guard): no promise and no timer per input. A hang there
 * would stop the whole test, which the test runner's timeout then reports.
 */
export function fuzzSync<T>(o: Omit<FuzzOptions<T>, "run" | "timeoutMs"> & { readonly run: (input: T) => void }): number {
  const watch = new ProcessWatch().install();
  const started = performance.now();
  let done = 0;
  try {
    fc.assert(
      fc.property(o.input, (input) => {
        done++;
        try {
          o.run(input);
        } catch (err) {
          throw new Error(`${o.name}: ${o.describe(input)}: ${(err as Error).message}`, { cause: err });
        }
      }),
      { numRuns: o.settings.runs, seed: o.settings.seed, endOnFailure: o.shrink === false, verbose: 0 },
    );
    watch.check();
  } finally {
    watch.uninstall();
    o.t.diagnostic(describeRun(o.name, o.settings, done, performance.now() - started));
  }
  return done;
}

/** How a wire input is named in failure messages. */
export function describeWire(input: WireInput): string {
  return `${input.label}, ${input.bytes.byteLength} bytes, content type ${JSON.stringify(input.contentType)}`;
}

export interface EntryPointOptions {
  readonly t: TestContext;
  readonly name: string;
  readonly settings: FuzzSettings;
  readonly input: fc.Arbitrary<WireInput>;
  readonly entry: EntryPoint;
  readonly timeoutMs?: number;
  readonly shrink?: boolean;
}

/** fuzz() for a transport's entry point: wire inputs, (bytes, contentType) => Promise<void>. */
export function fuzzEntryPoint(o: EntryPointOptions): Promise<number> {
  return fuzz({
    ...o,
    run: (input: WireInput) => o.entry(input.bytes, input.contentType),
    describe: describeWire,
  });
}
