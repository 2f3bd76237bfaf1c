/**
 * The agent's HTTP client for Ironic's ramdisk API: version discovery, one lookup attempt, one
 * heartbeat, and plain JSON posts (inspection). Several API URLs may be configured: a request tries
 * them in turn, moving on only after a connection error, and the URL that answered goes first from
 * then on. Every answer Ironic gives is parsed with zod before anything uses it.
 *
 * Retry policies (lookup backoff, heartbeat intervals, inspection retries) live with their callers;
 * this module does one request at a time.
 */
import type { IncomingHttpHeaders } from "node:http";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { z } from "zod";
import { type JsonObject, JsonObjectSchema } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";

/** Used when GET / cannot tell (IPA's floor). */
export const FALLBACK_API_VERSION: ApiVersion = { major: 1, minor: 31 };
/** Highest version the agent asks for on lookup: agent tokens. */
export const LOOKUP_API_CAP = 62;
/** Highest version the agent asks for on heartbeat: agent_verify_ca. */
export const HEARTBEAT_API_CAP = 68;
/** Feature gates (minor versions of API 1.x). */
export const GATES = { ramdiskEndpoints: 22, agentVersion: 36, agentToken: 62, verifyCa: 68, continueInspection: 84 } as const;

const DEFAULT_TIMEOUT_MS = 30_000;
const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

export interface ApiVersion {
  readonly major: number;
  readonly minor: number;
}

export function formatVersion(v: ApiVersion): string {
  return `${v.major}.${v.minor}`;
}

export function parseVersion(text: string): ApiVersion | undefined {
  const m = /^(\d+)\.(\d+)$/.exec(text.trim());
  if (m === null) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]) };
}

/** Whether `v` is at least 1.<minor>. */
export function atLeast(v: ApiVersion, minor: number): boolean {
  return v.major > 1 || (v.major === 1 && v.minor >= minor);
}

/** `X-OpenStack-Ironic-API-Version` value: min(ironic, 1.<cap>). */
export function versionHeader(v: ApiVersion, cap: number): string {
  return atLeast(v, cap) ? `1.${cap}` : formatVersion(v);
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  /** The base URL (one of apiUrls) or the absolute URL the answer came from. */
  readonly url: string;
}

export interface RequestOptions {
  readonly headers?: Readonly<Record<string, string>>;
  readonly query?: Readonly<Record<string, string>>;
  readonly body?: unknown;
  readonly signal?: AbortSignal | undefined;
  readonly timeoutMs?: number;
}

/** A request that never got an HTTP answer (refused, reset, timed out, TLS failure, DNS). */
export class ConnectionFailure extends Error {
  override readonly name = "ConnectionFailure";
  constructor(
    readonly url: string,
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface IronicClientOptions {
  readonly apiUrls: readonly string[];
  readonly log: Logger;
  /** Do not verify Ironic's certificate (ipa-insecure). */
  readonly insecure?: boolean;
  /** PEM CA bundle for Ironic's certificate. */
  readonly ca?: string | undefined;
  /** Per request; default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Use this version instead of asking GET / (ipa-ironic-api-version). */
  readonly apiVersion?: string | undefined;
  /** Sent as X-OpenStack-Request-ID when set. */
  readonly requestId?: string;
}

/** The `config` part of a lookup answer, the fields the agent acts on; `raw` has everything. */
export interface LookupConfig {
  readonly heartbeatTimeoutS: number;
  readonly agentToken: string | null;
  readonly agentTokenRequired: boolean;
  readonly tlsMinVersion: string | null;
  readonly tlsCipherSuites: string | null;
  readonly raw: JsonObject;
}

export interface LookupResult {
  readonly nodeUuid: string;
  /** The node as Ironic returned it (uuid, properties, instance_info, driver_internal_info, links). */
  readonly node: JsonObject;
  readonly config: LookupConfig;
}

export type LookupAttempt =
  | { readonly ok: true; readonly result: LookupResult }
  | { readonly ok: false; readonly status?: number; readonly reason: string };

export interface HeartbeatPayload {
  readonly callback_url: string;
  readonly agent_token?: string;
  readonly agent_version?: string;
  readonly agent_verify_ca?: string;
}

const VersionDocSchema = z.object({ default_version: z.object({ version: z.string() }) });

const LookupConfigSchema = z.looseObject({
  heartbeat_timeout: z.number().positive().optional(),
  agent_token: z.string().nullable().optional(),
  agent_token_required: z.boolean().optional(),
  tls_min_version: z.string().nullable().optional(),
  tls_cipher_suites: z.string().nullable().optional(),
});

const LookupAnswerSchema = z.object({
  node: z.object({ uuid: z.string().min(1) }).and(JsonObjectSchema),
  config: LookupConfigSchema.and(JsonObjectSchema).optional(),
  heartbeat_timeout: z.number().positive().optional(),
});

/** Ironic's default when neither config.heartbeat_timeout nor the old top-level field is given. */
export const DEFAULT_HEARTBEAT_TIMEOUT_S = 300;

/**
 * Parses a lookup answer (also what new Ironic returns from continue_inspection). Returns the reason
 * when it is not a usable answer: IPA retries on those.
 */
export function parseLookupAnswer(value: unknown): { ok: true; result: LookupResult } | { ok: false; reason: string } {
  const parsed = LookupAnswerSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, reason: `not a lookup answer: ${issue === undefined ? "invalid" : `${issue.path.join(".") || "(root)"}: ${issue.message}`}` };
  }
  const { node, config, heartbeat_timeout } = parsed.data;
  if (config === undefined && heartbeat_timeout === undefined) return { ok: false, reason: "lookup answer has neither config nor heartbeat_timeout" };
  const c = config ?? {};
  const raw: JsonObject = config === undefined ? { heartbeat_timeout: heartbeat_timeout ?? DEFAULT_HEARTBEAT_TIMEOUT_S } : (config as JsonObject);
  return {
    ok: true,
    result: {
      nodeUuid: node.uuid,
      node: node as JsonObject,
      config: {
        heartbeatTimeoutS: c.heartbeat_timeout ?? heartbeat_timeout ?? DEFAULT_HEARTBEAT_TIMEOUT_S,
        agentToken: c.agent_token ?? null,
        agentTokenRequired: c.agent_token_required ?? false,
        tlsMinVersion: c.tls_min_version ?? null,
        tlsCipherSuites: c.tls_cipher_suites ?? null,
        raw,
      },
    },
  };
}

const IronicErrorSchema = z.object({ error_message: z.string() });
const FaultSchema = z.object({ faultstring: z.string() });

/** The message of an Ironic error answer (`{"error_message": "<json with faultstring>"}`), else the text. */
export function ironicErrorText(body: Buffer): string {
  const text = body.toString("utf8");
  try {
    const outer = IronicErrorSchema.safeParse(JSON.parse(text));
    if (outer.success) {
      try {
        const inner = FaultSchema.safeParse(JSON.parse(outer.data.error_message));
        return inner.success ? inner.data.faultstring : outer.data.error_message;
      } catch {
        return outer.data.error_message;
      }
    }
  } catch {
    // not JSON
  }
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function parseJsonBody(body: Buffer): { ok: true; value: unknown } | { ok: false; reason: string } {
  try {
    return { ok: true, value: JSON.parse(body.toString("utf8")) as unknown };
  } catch (err) {
    return { ok: false, reason: `answer is not JSON: ${(err as Error).message}` };
  }
}

function isAbort(err: unknown): boolean {
  return typeof err === "object" && err !== null && "name" in err && (err as { name: unknown }).name === "AbortError";
}

export class IronicClient {
  private order: string[];
  private cachedVersion: ApiVersion | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: IronicClientOptions) {
    if (opts.apiUrls.length === 0) throw new AgentError("CONFIG_INVALID", "no Ironic API URL configured (ipa-api-url)");
    this.order = opts.apiUrls.map((u) => u.replace(/\/+$/, ""));
    this.log = opts.log;
    if (opts.apiVersion !== undefined) {
      const v = parseVersion(opts.apiVersion);
      if (v === undefined) throw new AgentError("CONFIG_INVALID", `ironicApiVersion must look like 1.68, got ${JSON.stringify(opts.apiVersion)}`);
      this.cachedVersion = v;
    }
  }

  /** The API URLs in the order they are tried (the last one that answered first). */
  get urls(): readonly string[] {
    return this.order;
  }

  /**
   * One HTTP request to one absolute URL. Rejects with ConnectionFailure when no HTTP answer came,
   * with the signal's reason when aborted; any HTTP status resolves.
   */
  send(method: string, url: string, options: RequestOptions = {}): Promise<HttpAnswer> {
    const target = new URL(url);
    for (const [k, v] of Object.entries(options.query ?? {})) target.searchParams.set(k, v);
    const payload = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
    const headers: Record<string, string> = { Accept: "application/json", ...(options.headers ?? {}) };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["Content-Length"] = String(payload.byteLength);
    }
    if (this.opts.requestId !== undefined) headers["X-OpenStack-Request-ID"] = this.opts.requestId;
    const timeoutMs = options.timeoutMs ?? this.opts.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    const signal = options.signal;
    return new Promise<HttpAnswer>((resolve, reject) => {
      if (signal?.aborted === true) {
        reject(signal.reason);
        return;
      }
      const common = { method, headers, timeout: timeoutMs, ...(signal === undefined ? {} : { signal }) };
      const req =
        target.protocol === "https:"
          ? httpsRequest(target, { ...common, rejectUnauthorized: this.opts.insecure !== true, minVersion: "TLSv1.2", ...(this.opts.ca === undefined ? {} : { ca: this.opts.ca }) })
          : httpRequest(target, common);
      let answered = false;
      req.on("timeout", () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: "ETIMEDOUT" })));
      req.on("error", (err: NodeJS.ErrnoException) => {
        if (signal?.aborted === true || isAbort(err)) {
          reject(signal?.reason ?? err);
          return;
        }
        const code = err.code ?? "ECONNECTION";
        reject(new ConnectionFailure(url, code, `${method} ${target.origin}${target.pathname}: ${answered ? "answer cut short: " : ""}${err.message}`, { cause: err }));
      });
      req.on("response", (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.byteLength;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy(Object.assign(new Error(`answer larger than ${MAX_ANSWER_BYTES} bytes`), { code: "ETOOBIG" }));
            return;
          }
          chunks.push(chunk);
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), url }));
        res.on("error", () => undefined); // surfaced through req's error
      });
      req.end(payload);
    });
  }

  /**
   * A request to `path` on the API URLs in turn: a connection failure moves on to the next URL, an
   * HTTP answer (any status) ends the walk and puts that URL first. Rejects with IRONIC_UNREACHABLE
   * when no URL answered.
   */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<HttpAnswer> {
    const failures: string[] = [];
    for (const base of [...this.order]) {
      try {
        const answer = await this.send(method, `${base}${path}`, options);
        if (this.order[0] !== base) {
          this.log.info({ url: base, skipped: failures }, "Ironic API URL answered; it goes first from now on");
          this.order = [base, ...this.order.filter((u) => u !== base)];
        }
        return { ...answer, url: base };
      } catch (err) {
        if (!(err instanceof ConnectionFailure)) throw err;
        this.log.warn({ url: base, code: err.code, err: err.message }, "Ironic API URL unreachable, trying the next one");
        failures.push(`${base}: ${err.message}`);
      }
    }
    throw new AgentError("IRONIC_UNREACHABLE", failures.join("; "));
  }

  /**
   * Ironic's API version, from GET / (`default_version.version`), asked until one answer parses and
   * remembered from then on; 1.31 while it cannot be told.
   */
  async apiVersion(signal?: AbortSignal): Promise<ApiVersion> {
    if (this.cachedVersion !== undefined) return this.cachedVersion;
    try {
      const answer = await this.request("GET", "/", { signal });
      if (answer.status !== 200) throw new Error(`GET / answered ${answer.status}`);
      const body = parseJsonBody(answer.body);
      if (!body.ok) throw new Error(body.reason);
      const doc = VersionDocSchema.safeParse(body.value);
      const version = doc.success ? parseVersion(doc.data.default_version.version) : undefined;
      if (version === undefined) throw new Error("GET / has no default_version.version of the form X.Y");
      this.cachedVersion = version;
      this.log.info({ version: formatVersion(version), url: answer.url }, "Ironic API version discovered");
      return version;
    } catch (err) {
      if (signal?.aborted === true) throw err;
      this.log.warn({ err: (err as Error).message, fallback: formatVersion(FALLBACK_API_VERSION) }, "cannot tell Ironic's API version, assuming the minimum");
      return FALLBACK_API_VERSION;
    }
  }

  /** The version if it is already known (discovered or configured). */
  knownVersion(): ApiVersion | undefined {
    return this.cachedVersion;
  }

  /** One lookup: GET /v1/lookup?addresses=<macs>[&node_uuid=]. Never throws but for an abort. */
  async lookup(macs: readonly string[], nodeUuid: string | undefined, signal?: AbortSignal): Promise<LookupAttempt> {
    const version = await this.apiVersion(signal);
    const query: Record<string, string> = { addresses: macs.join(",") };
    if (nodeUuid !== undefined) query["node_uuid"] = nodeUuid;
    let answer: HttpAnswer;
    try {
      answer = await this.request("GET", "/v1/lookup", { query, signal, headers: { "X-OpenStack-Ironic-API-Version": versionHeader(version, LOOKUP_API_CAP) } });
    } catch (err) {
      if (signal?.aborted === true) throw err;
      return { ok: false, reason: (err as Error).message };
    }
    if (answer.status !== 200) return { ok: false, status: answer.status, reason: `Ironic answered ${answer.status}: ${ironicErrorText(answer.body)}` };
    const body = parseJsonBody(answer.body);
    if (!body.ok) return { ok: false, status: answer.status, reason: body.reason };
    const parsed = parseLookupAnswer(body.value);
    return parsed.ok ? parsed : { ok: false, status: answer.status, reason: parsed.reason };
  }

  /**
   * One heartbeat. Fields Ironic's version does not know are left out (agent_version below 1.36,
   * agent_token below 1.62, agent_verify_ca below 1.68). Rejects with HEARTBEAT_FAILED unless 202.
   */
  async heartbeat(nodeUuid: string, payload: HeartbeatPayload, signal?: AbortSignal): Promise<void> {
    const version = await this.apiVersion(signal);
    const body: Record<string, string> = { callback_url: payload.callback_url };
    if (payload.agent_token !== undefined && atLeast(version, GATES.agentToken)) body["agent_token"] = payload.agent_token;
    if (payload.agent_version !== undefined && atLeast(version, GATES.agentVersion)) body["agent_version"] = payload.agent_version;
    if (payload.agent_verify_ca !== undefined && atLeast(version, GATES.verifyCa)) body["agent_verify_ca"] = payload.agent_verify_ca;
    let answer: HttpAnswer;
    try {
      answer = await this.request("POST", `/v1/heartbeat/${encodeURIComponent(nodeUuid)}`, {
        body,
        signal,
        headers: { "X-OpenStack-Ironic-API-Version": versionHeader(version, HEARTBEAT_API_CAP) },
      });
    } catch (err) {
      if (signal?.aborted === true) throw err;
      throw AgentError.from(err, "HEARTBEAT_FAILED");
    }
    if (answer.status !== 202) {
      const conflict = answer.status === 409 ? " (node locked)" : "";
      throw new AgentError("HEARTBEAT_FAILED", `Ironic answered ${answer.status}${conflict}: ${ironicErrorText(answer.body)}`);
    }
  }

  /**
   * GET / on every API URL independently (short timeout): the URLs that give any HTTP answer, in
   * configuration order.
   */
  async answeringUrls(timeoutMs = 10_000, signal?: AbortSignal): Promise<string[]> {
    const checks = await Promise.all(
      this.opts.apiUrls.map(async (raw) => {
        const base = raw.replace(/\/+$/, "");
        try {
          await this.send("GET", `${base}/`, { timeoutMs, signal });
          return base;
        } catch (err) {
          if (signal?.aborted === true) throw err;
          this.log.info({ url: base, err: (err as Error).message }, "Ironic API URL does not answer");
          return undefined;
        }
      }),
    );
    return checks.filter((u): u is string => u !== undefined);
  }
}
