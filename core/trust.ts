/**
 * The trust guard: what stands between a transport and a command that runs. It implements
 * EnvelopeGuard (core/guard.ts) and never knows which transport carried an envelope beyond its context.
 *
 * For every inbound command (and join answer) the agent hands it, in this order:
 *   1. rate: a token bucket per transport (commandRatePerS; burst of the same size)  → RATE_LIMITED
 *   2. signature: unsigned while signatures are required                             → SIGNATURE_REQUIRED
 *      unknown key id, other alg, or a signature that does not verify              → SIGNATURE_INVALID
 *   3. validity window of a signed envelope (issued_at I, expires_at E, skew S, ttl T):
 *      no I, I > now + S, E <= I, or E - I > T                                       → INVALID_VALIDITY_WINDOW
 *      now > E  (E defaults to I + T)                                                → COMMAND_EXPIRED
 *      a signed envelope naming one node that arrived on a group or fleet address   → INVALID_ENVELOPE
 *   4. scope: what the signing key may run (keyScopes)                               → FORBIDDEN
 *   5. replay: (key id, envelope id) seen before and still inside its window         → REPLAYED
 *      replay memory full of unexpired entries (fail closed)                         → RATE_LIMITED
 * and it signs what the agent sends when the agent has a key (seal). docs/security.md is the prose.
 */
import type { KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { Clock } from "./clock.js";
import type { AgentConfig } from "./config.js";
import { EVENTS, JoinDataSchema, type Envelope, type JoinData } from "./envelope.js";
import { AgentError, type ErrorCode } from "./errors.js";
import type { CommandFacts, EnvelopeGuard, InboundContext, Verdict } from "./guard.js";
import type { Logger } from "./log.js";
import { parseKeySpec, privateKeyFromPem, publicKeyToRaw, signEnvelope, verifyEnvelope, type KeySpec, type SigningKey } from "./sign.js";

// ---- scopes -----------------------------------------------------------------------------------

/** One alternative of a scope: a class of commands, or a glob on the command name (`*` = anything). */
export type ScopeTerm = { readonly kind: "all" } | { readonly kind: "non-destructive" } | { readonly kind: "read-only" } | { readonly kind: "glob"; readonly pattern: string; readonly re: RegExp };

/** What a key may run: any of its terms. */
export interface Scope {
  readonly terms: readonly ScopeTerm[];
  /** The text it was parsed from. */
  readonly text: string;
}

export const SCOPE_ALL: Scope = { terms: [{ kind: "all" }], text: "all" };

/**
 * Commands that are neither exclusive nor destructive but still change what the agent does: never
 * "read-only" (a monitoring key must not cancel a deployment).
 */
export const STATEFUL_COMMANDS: ReadonlySet<string> = new Set(["agent.cancel_command", "poll.set_node_info"]);

/**
 * Commands that run the steps or commands their parameters name (erase_devices through
 * clean.execute_clean_step, anything through flow.start_flow): as destructive as what they are asked
 * to run, so never "non-destructive" or "read-only". Only `all` or a glob naming them lets a key run them.
 */
export const DISPATCHING_COMMANDS: ReadonlySet<string> = new Set(["clean.execute_clean_step", "deploy.execute_deploy_step", "service.execute_service_step", "flow.start_flow"]);

const GLOB = /^[A-Za-z0-9_.*-]{1,256}$/;

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\-]/g, "\\$&").replace(/\*/g, ".*")}$`, "s");
}

/** Parses a scope: `all`, `non-destructive`, `read-only`, or globs, alternatives joined by `|`. */
export function parseScope(text: string, code: ErrorCode = "CONFIG_INVALID"): Scope {
  const terms: ScopeTerm[] = [];
  for (const raw of text.split("|")) {
    const t = raw.trim();
    if (t === "all" || t === "non-destructive" || t === "read-only") terms.push({ kind: t });
    // A glob names commands, `<extension>.<command>`: without a dot or a star it is a typo of a class.
    else if (GLOB.test(t) && (t.includes(".") || t.includes("*"))) terms.push({ kind: "glob", pattern: t, re: globToRegExp(t) });
    else throw new AgentError(code, `scope term ${JSON.stringify(t.slice(0, 80))} is none of all, non-destructive, read-only, or a command glob like standby.* (A-Z a-z 0-9 _ . - *)`);
  }
  return { terms, text: terms.map((t) => (t.kind === "glob" ? t.pattern : t.kind)).join("|") };
}

/** Parses `keyId=scope` entries (keyScopes, a join answer's key_scopes). */
export function parseKeyScopes(entries: readonly string[], code: ErrorCode = "CONFIG_INVALID"): Map<string, Scope> {
  const out = new Map<string, Scope>();
  for (const entry of entries) {
    const eq = entry.indexOf("=");
    if (eq <= 0) throw new AgentError(code, `key scope ${JSON.stringify(entry.slice(0, 80))} is not keyId=scope`);
    const keyId = entry.slice(0, eq).trim();
    if (out.has(keyId)) throw new AgentError(code, `key ${keyId} has two scopes; join the alternatives with |`);
    out.set(keyId, parseScope(entry.slice(eq + 1), code));
  }
  return out;
}

/** Whether `scope` lets a key run the command `name` (facts undefined: the agent does not know it). */
export function scopeAllows(scope: Scope, name: string, facts: CommandFacts | undefined): boolean {
  const full = facts?.name ?? name;
  for (const term of scope.terms) {
    switch (term.kind) {
      case "all":
        return true;
      case "non-destructive":
        // An unknown command goes on to be refused as unknown, with its own error.
        if (facts === undefined || (!facts.destructive && !DISPATCHING_COMMANDS.has(facts.name))) return true;
        break;
      case "read-only":
        if (facts === undefined || (!facts.destructive && !facts.exclusive && !STATEFUL_COMMANDS.has(facts.name) && !DISPATCHING_COMMANDS.has(facts.name))) return true;
        break;
      case "glob":
        if (term.re.test(full) || term.re.test(name)) return true;
        break;
    }
  }
  return false;
}

function isAll(scope: Scope): boolean {
  return scope.terms.some((t) => t.kind === "all");
}

// ---- keyring ----------------------------------------------------------------------------------

export interface TrustedKey {
  readonly keyId: string;
  readonly publicKey: KeyObject;
  readonly scope: Scope;
}

/** The keys the agent trusts, by id. Several may be valid at once (rotation). */
export class Keyring {
  private readonly keys = new Map<string, TrustedKey>();

  constructor(keys: readonly KeySpec[] = [], scopes: ReadonlyMap<string, Scope> = new Map()) {
    this.replace(keys, scopes);
  }

  get size(): number {
    return this.keys.size;
  }

  get(keyId: string): TrustedKey | undefined {
    return this.keys.get(keyId);
  }

  ids(): string[] {
    return [...this.keys.keys()];
  }

  /** Adds a key, or replaces the one with the same id. */
  add(key: KeySpec, scope: Scope = SCOPE_ALL): void {
    this.keys.set(key.keyId, { keyId: key.keyId, publicKey: key.publicKey, scope });
  }

  remove(keyId: string): boolean {
    return this.keys.delete(keyId);
  }

  /** Makes `keys` the whole keyring; a key without an entry in `scopes` may run everything. */
  replace(keys: readonly KeySpec[], scopes: ReadonlyMap<string, Scope> = new Map()): void {
    const seen = new Set<string>();
    for (const k of keys) {
      if (seen.has(k.keyId)) throw new AgentError("CONFIG_INVALID", `key id ${k.keyId} is trusted twice`);
      seen.add(k.keyId);
    }
    this.keys.clear();
    for (const k of keys) this.add(k, scopes.get(k.keyId) ?? SCOPE_ALL);
  }

  /** `keyId:base64` entries with their scopes, as configuration would spell them. */
  describe(): Array<{ keyId: string; publicKey: string; scope: string }> {
    return [...this.keys.values()].map((k) => ({ keyId: k.keyId, publicKey: publicKeyToRaw(k.publicKey), scope: k.scope.text }));
  }
}

// ---- replay memory ----------------------------------------------------------------------------

interface HeapItem {
  readonly expiresAt: number;
  readonly key: string;
}

/**
 * Ids seen while their validity window lasts. Bounded: entries leave once expired (oldest expiry
 * first, a binary heap); when every slot holds an unexpired entry a new one is refused rather than
 * an old one forgotten (forgetting would reopen a replay).
 */
export class ReplayMemory {
  private readonly expiry = new Map<string, number>();
  private heap: HeapItem[] = [];

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError("replay memory capacity must be at least 1");
  }

  get size(): number {
    return this.expiry.size;
  }

  /** True when `key` was remembered and its window has not ended at `now`. */
  has(key: string, now: number): boolean {
    const exp = this.expiry.get(key);
    return exp !== undefined && exp >= now;
  }

  /** Remembers `key` until `expiresAt`; false (and nothing remembered) when the memory is full. */
  remember(key: string, expiresAt: number, now: number): boolean {
    this.evict(now);
    if (!this.expiry.has(key) && this.expiry.size >= this.capacity) return false;
    this.expiry.set(key, expiresAt);
    this.push({ expiresAt, key });
    if (this.heap.length > 2 * this.capacity + 16) this.rebuild();
    return true;
  }

  /** Forgets `key` (the agent refused the envelope before recording it). */
  forget(key: string): void {
    this.expiry.delete(key);
  }

  /** Drops every entry whose window ended before `now`. */
  evict(now: number): void {
    for (;;) {
      const top = this.heap[0];
      if (top === undefined || top.expiresAt >= now) return;
      this.pop();
      if (this.expiry.get(top.key) === top.expiresAt) this.expiry.delete(top.key);
    }
  }

  private rebuild(): void {
    this.heap = [];
    for (const [key, expiresAt] of this.expiry) this.push({ expiresAt, key });
  }

  private push(item: HeapItem): void {
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = h[parent] as HeapItem;
      if (p.expiresAt <= item.expiresAt) break;
      h[i] = p;
      i = parent;
    }
    h[i] = item;
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop();
    if (last === undefined || h.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && (h[r] as HeapItem).expiresAt < (h[l] as HeapItem).expiresAt ? r : l;
      const child = h[c] as HeapItem;
      if (child.expiresAt >= last.expiresAt) break;
      h[i] = child;
      i = c;
    }
    h[i] = last;
  }
}

// ---- rate -------------------------------------------------------------------------------------

/** A token bucket: `ratePerS` tokens a second, holding at most `burst`. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerS: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  take(now: number): boolean {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.ratePerS) / 1000);
      this.last = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

// ---- the guard --------------------------------------------------------------------------------

/** Keys a join answer gives: the same syntax as the trustedKeys and keyScopes configuration keys. */
export interface KeyUpdate {
  readonly trusted_keys?: readonly string[] | undefined;
  readonly key_scopes?: readonly string[] | undefined;
}

export interface TrustOptions {
  readonly log: Logger;
  readonly keys?: readonly KeySpec[];
  readonly scopes?: ReadonlyMap<string, Scope>;
  /** Refuse unsigned commands; undefined: required while the keyring is not empty. */
  readonly requireSignatures?: boolean | undefined;
  /** Default 60 s. */
  readonly maxClockSkewMs?: number;
  /** Default 3600 s. */
  readonly maxCommandTtlMs?: number;
  /** Commands a second per transport, burst of the same size; 0 (default): unlimited. */
  readonly ratePerS?: number;
  /** Signed envelopes remembered at once (default 100,000). */
  readonly replayCapacity?: number;
  /** The agent's own key: what it sends is signed with it. */
  readonly signer?: SigningKey | undefined;
  /** Wall-clock time (default Date.now): windows compare with the controller's clock, not a monotonic one. */
  readonly clock?: Pick<Clock, "now">;
}

const DEFAULT_SKEW_MS = 60_000;
const DEFAULT_TTL_MS = 3_600_000;

function isJoinAnswer(env: Envelope): env is Extract<Envelope, { kind: "event" }> {
  return env.kind === "event" && env.body.name === EVENTS.join;
}

function iso(ms: number): string {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString();
}

export class TrustGuard implements EnvelopeGuard {
  readonly keyring: Keyring;
  readonly replay: ReplayMemory;
  private readonly log: Logger;
  private readonly required: boolean | undefined;
  private readonly skewMs: number;
  private readonly ttlMs: number;
  private readonly ratePerS: number;
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly signer: SigningKey | undefined;
  private readonly clock: Pick<Clock, "now">;

  constructor(opts: TrustOptions) {
    this.log = opts.log.child({ component: "trust" });
    this.keyring = new Keyring(opts.keys ?? [], opts.scopes ?? new Map());
    this.required = opts.requireSignatures;
    this.skewMs = opts.maxClockSkewMs ?? DEFAULT_SKEW_MS;
    this.ttlMs = opts.maxCommandTtlMs ?? DEFAULT_TTL_MS;
    this.ratePerS = opts.ratePerS ?? 0;
    this.replay = new ReplayMemory(opts.replayCapacity ?? 100_000);
    this.signer = opts.signer;
    this.clock = opts.clock ?? { now: Date.now };
    for (const keyId of (opts.scopes ?? new Map()).keys()) {
      if (this.keyring.get(keyId) === undefined) this.log.warn({ keyId }, "a scope names a key that is not trusted");
    }
  }

  /** Whether an unsigned command is refused now. */
  signaturesRequired(): boolean {
    return this.required ?? this.keyring.size > 0;
  }

  check(env: Envelope, ctx: InboundContext, facts: CommandFacts | undefined): Verdict {
    const now = this.clock.now();
    this.takeToken(ctx.transport, now);
    const join = isJoinAnswer(env);
    const sig = env.sig;
    if (sig === undefined) {
      // A join answer can be unsigned while the agent trusts no key: that is how it learns one.
      if (this.signaturesRequired() && !(join && this.keyring.size === 0)) {
        throw new AgentError("SIGNATURE_REQUIRED", `this agent runs signed ${join ? "join answers" : "commands"} only`);
      }
      return {};
    }
    const key = this.keyFor(env, sig.key_id, join);
    if (!verifyEnvelope(env, key.publicKey)) {
      throw new AgentError("SIGNATURE_INVALID", sig.alg !== "ed25519" ? `signature algorithm ${JSON.stringify(sig.alg.slice(0, 32))} is not ed25519` : `the signature of key ${key.keyId} does not verify`);
    }
    const expiresAt = this.checkWindow(env, now);
    if (env.node !== undefined && env.node !== "" && ctx.source !== "node") {
      throw new AgentError("INVALID_ENVELOPE", `a signed envelope for node ${env.node} arrived on a ${ctx.source} address`);
    }
    const name = env.kind === "command" ? env.body.name : undefined;
    if (join) {
      if (!isAll(key.scope)) throw new AgentError("FORBIDDEN", `key ${key.keyId} (scope ${key.scope.text}) may not sign join answers; that takes scope all`);
    } else if (name !== undefined && !scopeAllows(key.scope, name, facts)) {
      throw new AgentError("FORBIDDEN", `key ${key.keyId} (scope ${key.scope.text}) may not run ${facts?.name ?? name}`);
    }
    const memo = replayKey(key.keyId, env.id);
    if (this.replay.has(memo, now)) throw new AgentError("REPLAYED", `envelope ${env.id} signed by ${key.keyId} was already received`);
    if (!this.replay.remember(memo, expiresAt, now)) {
      this.log.warn({ capacity: this.replay.capacity }, "replay memory full: refusing signed envelopes until some expire");
      throw new AgentError("RATE_LIMITED", `${this.replay.capacity} signed envelopes are inside their validity window; retry later`);
    }
    return { keyId: key.keyId };
  }

  /**
   * Forgets an envelope check() accepted, because the agent refused it before recording it (busy, not
   * allowed, unknown): the same envelope may come again (a bus queue offers it again once the lock is
   * free) and is then no replay.
   */
  release(env: Envelope): void {
    if (env.sig !== undefined) this.replay.forget(replayKey(env.sig.key_id, env.id));
  }

  /**
   * Takes the keys of a join answer. An agent that trusts no key yet takes them from any join answer
   * (trust on first use); one that trusts keys takes them only from a join answer signed by one of
   * them (check() already required its scope to be all), and then they replace the whole keyring.
   */
  updateKeys(update: KeyUpdate, verdict: Verdict): void {
    if (update.trusted_keys === undefined) return;
    const keys = update.trusted_keys.map((entry) => parseKeySpec(entry, "INVALID_ENVELOPE"));
    if (keys.length === 0) throw new AgentError("INVALID_ENVELOPE", "a join answer's trusted_keys may not be empty");
    const scopes = parseKeyScopes(update.key_scopes ?? [], "INVALID_ENVELOPE");
    const ids = keys.map((k) => k.keyId);
    for (const keyId of scopes.keys()) if (!ids.includes(keyId)) throw new AgentError("INVALID_ENVELOPE", `key_scopes names ${keyId}, which trusted_keys does not give`);
    if (this.keyring.size === 0) {
      this.keyring.replace(keys, scopes);
      this.log.warn({ keyIds: ids, signedBy: verdict.keyId ?? null }, "trusting keys on first use, from a join answer");
      return;
    }
    if (verdict.keyId === undefined || this.keyring.get(verdict.keyId) === undefined) {
      throw new AgentError("FORBIDDEN", "only a join answer signed by a trusted key may change the keys of an agent that trusts some");
    }
    const before = this.keyring.ids();
    this.keyring.replace(keys, scopes);
    this.log.info({ keyIds: ids, previous: before, signedBy: verdict.keyId }, "trusted keys rotated by a join answer");
  }

  seal(env: Envelope): Envelope {
    if (this.signer === undefined) return env;
    return signEnvelope(env.issued_at === undefined ? { ...env, issued_at: this.clock.now() } : env, this.signer);
  }

  private takeToken(transport: string, now: number): void {
    if (this.ratePerS <= 0) return;
    let bucket = this.buckets.get(transport);
    if (bucket === undefined) {
      bucket = new TokenBucket(this.ratePerS, Math.max(1, this.ratePerS), now);
      this.buckets.set(transport, bucket);
    }
    if (!bucket.take(now)) throw new AgentError("RATE_LIMITED", `more than ${this.ratePerS} commands a second on ${transport}`);
  }

  private keyFor(env: Envelope, keyId: string, join: boolean): TrustedKey {
    const known = this.keyring.get(keyId);
    if (known !== undefined) return known;
    // Trust on first use may be signed too: by one of the keys the answer itself gives (that proves
    // possession of the key, not trust; updateKeys then takes the keys as on first use).
    if (join && this.keyring.size === 0 && env.kind === "event") {
      const data = JoinDataSchema.safeParse(env.body.data);
      const own = data.success ? ownKey(data.data, keyId) : undefined;
      if (own !== undefined) return { keyId, publicKey: own.publicKey, scope: SCOPE_ALL };
    }
    throw new AgentError("SIGNATURE_INVALID", `key ${JSON.stringify(keyId.slice(0, 80))} is not trusted`);
  }

  /** Checks the validity window of a signed envelope; returns the end of its window. */
  private checkWindow(env: Envelope, now: number): number {
    const issued = env.issued_at;
    if (issued === undefined || issued === 0) throw new AgentError("INVALID_VALIDITY_WINDOW", "a signed envelope must carry issued_at");
    if (issued > now + this.skewMs) {
      throw new AgentError("INVALID_VALIDITY_WINDOW", `issued_at ${iso(issued)} is more than ${this.skewMs / 1000} s ahead of this agent's clock (${iso(now)})`);
    }
    const expires = env.expires_at ?? issued + this.ttlMs;
    if (expires <= issued) throw new AgentError("INVALID_VALIDITY_WINDOW", "expires_at is not after issued_at");
    if (expires - issued > this.ttlMs) {
      throw new AgentError("INVALID_VALIDITY_WINDOW", `validity window of ${(expires - issued) / 1000} s is longer than the ${this.ttlMs / 1000} s allowed`);
    }
    if (now > expires) throw new AgentError("COMMAND_EXPIRED", `expired at ${iso(expires)}; this agent's clock reads ${iso(now)}`);
    return expires;
  }
}

function replayKey(keyId: string, id: string): string {
  return `${keyId}\n${id}`;
}

function ownKey(data: JoinData & KeyUpdate, keyId: string): KeySpec | undefined {
  for (const entry of data.trusted_keys ?? []) {
    try {
      const spec = parseKeySpec(entry, "INVALID_ENVELOPE");
      if (spec.keyId === keyId) return spec;
    } catch {
      // A malformed entry is refused by updateKeys with its own message.
    }
  }
  return undefined;
}

export interface CreateGuardOptions {
  /** The agent's node id: the default signing key id is agent-<node>. */
  readonly node?: string | undefined;
  readonly clock?: Pick<Clock, "now">;
}

/**
 * The guard the configuration asks for: trustedKeys (with keyScopes), requireSignatures,
 * maxClockSkewS, maxCommandTtlS, commandRatePerS, and signingKeyFile/signingKeyId (read now,
 * synchronously). Throws CONFIG_INVALID for a key or scope that does not parse.
 */
export function createGuard(config: AgentConfig, log: Logger, opts: CreateGuardOptions = {}): TrustGuard {
  const keys = config.trustedKeys.map((entry) => parseKeySpec(entry));
  const scopes = parseKeyScopes(config.keyScopes);
  let signer: SigningKey | undefined;
  if (config.signingKeyFile !== undefined) {
    let pem: Buffer;
    try {
      pem = readFileSync(config.signingKeyFile);
    } catch (err) {
      throw new AgentError("CONFIG_INVALID", `cannot read signingKeyFile ${config.signingKeyFile}: ${(err as Error).message}`, { cause: err });
    }
    signer = { keyId: config.signingKeyId ?? `agent-${opts.node ?? config.node ?? hostname()}`, privateKey: privateKeyFromPem(pem) };
  }
  const guard = new TrustGuard({
    log,
    keys,
    scopes,
    requireSignatures: config.requireSignatures,
    maxClockSkewMs: config.maxClockSkewS * 1000,
    maxCommandTtlMs: config.maxCommandTtlS * 1000,
    ratePerS: config.commandRatePerS,
    replayCapacity: config.idHistory,
    signer,
    ...(opts.clock === undefined ? {} : { clock: opts.clock }),
  });
  log.info(
    { trustedKeys: guard.keyring.ids(), signaturesRequired: guard.signaturesRequired(), signingKeyId: signer?.keyId ?? null, commandRatePerS: config.commandRatePerS },
    "trust configured",
  );
  return guard;
}
