/**
 * What the two NATS links share: their options, the lazy loading of the NATS libraries, the connect
 * loop (bounded by connectTimeoutMs, paced reconnects with full jitter) and the "ensure" of the two
 * streams. The libraries are loaded by `loadNats()` only, from a link's open(): an agent that does
 * not use NATS never pays for them.
 */
import { readFile } from "node:fs/promises";
import { Socket } from "node:net";
import type { Authenticator, NatsConnection, NodeConnectionOptions, Server, ServerInfo } from "@nats-io/transport-node";
import type { JetStreamManager, StreamConfig } from "@nats-io/jetstream";
import { backoffMs } from "../../core/bus.js";
import { interop } from "../../core/interop.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import {
  CONTENT_TYPE_HEADER,
  DEFAULT_MAX_AGE_S,
  DUPLICATE_WINDOW_S,
  inStreamSubjects,
  natsLayout,
  stateStreamSubjects,
  type NatsLayout,
} from "./layout.js";

export type NatsCoreModule = typeof import("@nats-io/transport-node");
export type NatsJetStreamModule = typeof import("@nats-io/jetstream");

export interface NatsModules {
  readonly core: NatsCoreModule;
  readonly js: NatsJetStreamModule;
}

let loaded: Promise<NatsModules> | undefined;

/** Imports @nats-io/transport-node and @nats-io/jetstream (once). */
export function loadNats(): Promise<NatsModules> {
  loaded ??= Promise.all([import("@nats-io/transport-node"), import("@nats-io/jetstream")]).then(([core, js]) => ({
    core: interop(core, "connect"),
    js: interop(js, "jetstreamManager"),
  }));
  return loaded;
}

/** The content type a message's header names; undefined when it names none (the session sniffs). */
export function contentTypeOf(msg: { readonly headers?: { get(k: string): string } | undefined }): string | undefined {
  const value = msg.headers?.get(CONTENT_TYPE_HEADER);
  return value === undefined || value === "" ? undefined : value;
}

const GUARDED = Symbol.for("ironbus.nats.guardedWrites");

/**
 * nats.js 3.4 can write on a socket it has already ended: when the server half-closes a connection,
 * the transport ends its socket, and a flush already queued as a microtask then writes to it. Node
 * reports that (ERR_STREAM_WRITE_AFTER_END) as an 'error' event after the transport removed its
 * listeners: an uncaught exception. The transport class is patched once to drop writes on an ended
 * or destroyed socket; nothing is lost that the ended socket could still have carried.
 */
function guardWrites(nc: NatsConnection): void {
  const protocol: unknown = Reflect.get(nc, "protocol");
  const transport: unknown = typeof protocol === "object" && protocol !== null ? Reflect.get(protocol, "transport") : undefined;
  if (typeof transport !== "object" || transport === null) return;
  const proto: unknown = Object.getPrototypeOf(transport);
  if (typeof proto !== "object" || proto === null || Reflect.get(proto, GUARDED) === true) return;
  const send: unknown = Reflect.get(proto, "_send");
  if (typeof send !== "function") return;
  Reflect.set(proto, "_send", function guardedSend(this: object, frame: Uint8Array): unknown {
    const socket: unknown = Reflect.get(this, "socket");
    if (socket instanceof Socket && (socket.writableEnded || socket.destroyed)) return Promise.resolve();
    return Reflect.apply(send, this, [frame]);
  });
  Reflect.set(proto, GUARDED, true);
}

/** TLS material: each value is PEM text (it contains "-----BEGIN") or the path of a PEM file. */
export interface NatsTlsOptions {
  /** CA bundle that signs the server's certificate (default: the system's CAs). */
  readonly ca?: string;
  /** Client certificate, for servers that verify clients (with `key`). */
  readonly cert?: string;
  readonly key?: string;
}

export interface NatsCommonOptions {
  /** nats://host:port (tls://host:port), one or a list; the client picks among them and fails over. */
  readonly servers: string | readonly string[];
  readonly log?: Logger;
  /** Client name the server shows in its monitoring (default: "ironbus-agent-<node>" / "ironbus-controller"). */
  readonly name?: string;
  /** Authentication: at most one of user/pass, token, nkeySeed, creds. */
  readonly user?: string;
  readonly pass?: string;
  readonly token?: string;
  /** An nkey user seed ("SU..."), or the path of a file holding it. */
  readonly nkeySeed?: string;
  /** A decentralised-auth .creds file (user JWT + seed): its path, or its text. */
  readonly creds?: string;
  /** TLS to the server; `{}` requires TLS with the system's CAs. */
  readonly tls?: NatsTlsOptions;
  /** open() gives up after this long (default 10 s). */
  readonly connectTimeoutMs?: number;
  /** Reconnect delay: full jitter, exponential from min to max (defaults 1 s, 60 s), so a broker restart is no storm. */
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
  /** Client pings: a dead connection is noticed after about two intervals (default 30 s). */
  readonly pingIntervalMs?: number;
  /** Timeout of one JetStream API request or publish (default 5 s). */
  readonly requestTimeoutMs?: number;
  /** Subject prefix (default "ironbus.v1"). */
  readonly prefix?: string;
  /** Stream names (defaults IRONBUS_IN, IRONBUS_STATE). */
  readonly inStream?: string;
  readonly stateStream?: string;
  /** Age after which IRONBUS_IN drops a command (default 24 h). */
  readonly maxAgeS?: number;
  /** Age after which IRONBUS_STATE drops a node's latest hello/heartbeat/status (default 0: never). */
  readonly stateMaxAgeS?: number;
  /** Stream replicas when a link creates a stream (default 1; a cluster may want 3). */
  readonly replicas?: number;
}

/** The common options with defaults applied and checked. */
export interface NatsSettings {
  readonly servers: string[];
  readonly layout: NatsLayout;
  readonly connectTimeoutMs: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly pingIntervalMs: number;
  readonly requestTimeoutMs: number;
  readonly maxAgeS: number;
  readonly stateMaxAgeS: number;
  readonly replicas: number;
}

function positive(name: string, value: number | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < min) throw new AgentError("CONFIG_INVALID", `nats: ${name} must be a number >= ${min}`);
  return value;
}

export function natsSettings(options: NatsCommonOptions): NatsSettings {
  const servers = typeof options.servers === "string" ? [options.servers] : [...options.servers];
  if (servers.length === 0 || servers.some((s) => s.trim() === "")) throw new AgentError("CONFIG_INVALID", "nats: no servers");
  const methods = [options.user !== undefined, options.token !== undefined, options.nkeySeed !== undefined, options.creds !== undefined];
  if (methods.filter(Boolean).length > 1) {
    throw new AgentError("CONFIG_INVALID", "nats: give one of user/pass, token, nkeySeed, creds");
  }
  if (options.pass !== undefined && options.user === undefined) throw new AgentError("CONFIG_INVALID", "nats: pass without user");
  if ((options.tls?.cert === undefined) !== (options.tls?.key === undefined)) {
    throw new AgentError("CONFIG_INVALID", "nats: tls cert and key go together");
  }
  const reconnectMinMs = positive("reconnectMinMs", options.reconnectMinMs, 1000);
  return {
    servers,
    layout: natsLayout({ prefix: options.prefix, inStream: options.inStream, stateStream: options.stateStream }),
    connectTimeoutMs: positive("connectTimeoutMs", options.connectTimeoutMs, 10_000),
    reconnectMinMs,
    reconnectMaxMs: positive("reconnectMaxMs", options.reconnectMaxMs, Math.max(60_000, reconnectMinMs), reconnectMinMs),
    pingIntervalMs: positive("pingIntervalMs", options.pingIntervalMs, 30_000, 100),
    requestTimeoutMs: positive("requestTimeoutMs", options.requestTimeoutMs, 5000, 100),
    maxAgeS: positive("maxAgeS", options.maxAgeS, DEFAULT_MAX_AGE_S),
    stateMaxAgeS: positive("stateMaxAgeS", options.stateMaxAgeS, 0, 0),
    replicas: positive("replicas", options.replicas, 1),
  };
}

const PEM = "-----BEGIN";

async function pemOrFile(value: string): Promise<string> {
  return value.includes(PEM) ? value : readFile(value, "utf8");
}

async function textOrFile(value: string, looksInline: (v: string) => boolean): Promise<string> {
  return looksInline(value) ? value : readFile(value, "utf8");
}

/** Builds the library's connection options (reads key and certificate files). */
async function connectionOptions(
  mods: NatsModules,
  options: NatsCommonOptions,
  settings: NatsSettings,
  defaultName: string,
): Promise<NodeConnectionOptions> {
  const { core } = mods;
  let authenticator: Authenticator | undefined;
  try {
    if (options.user !== undefined) authenticator = core.usernamePasswordAuthenticator(options.user, options.pass);
    else if (options.token !== undefined) authenticator = core.tokenAuthenticator(options.token);
    else if (options.nkeySeed !== undefined) {
      const seed = (await textOrFile(options.nkeySeed, (v) => /^\s*S[A-Z2-7]{50,}\s*$/.test(v))).trim();
      authenticator = core.nkeyAuthenticator(new TextEncoder().encode(seed));
    } else if (options.creds !== undefined) {
      const creds = await textOrFile(options.creds, (v) => v.includes("-----BEGIN NATS USER JWT-----"));
      authenticator = core.credsAuthenticator(new TextEncoder().encode(creds));
    }
  } catch (err) {
    throw new AgentError("CONFIG_INVALID", `nats: cannot read credentials: ${errorText(err)}`, { cause: err });
  }
  const out: NodeConnectionOptions = {
    servers: settings.servers,
    name: options.name ?? defaultName,
    pingInterval: settings.pingIntervalMs,
    maxPingOut: 2,
    reconnect: true,
    maxReconnectAttempts: -1,
    // Pacing is done by reconnectToServer (see pacer()): the library's own wait is off.
    reconnectDelayHandler: () => 0,
  };
  if (authenticator !== undefined) out.authenticator = authenticator;
  if (options.tls !== undefined) {
    try {
      const tls: { ca?: string; cert?: string; key?: string } = {};
      if (options.tls.ca !== undefined) tls.ca = await pemOrFile(options.tls.ca);
      if (options.tls.cert !== undefined) tls.cert = await pemOrFile(options.tls.cert);
      if (options.tls.key !== undefined) tls.key = await pemOrFile(options.tls.key);
      out.tls = tls;
    } catch (err) {
      throw new AgentError("CONFIG_INVALID", `nats: cannot read TLS material: ${errorText(err)}`, { cause: err });
    }
  }
  return out;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Reconnect pacing: every reconnect attempt (the first one too) waits backoffMs(attempt) with full
 * jitter; reset() after a successful reconnect. The initial connect is not delayed.
 */
class Pacer {
  #attempt = 0;
  /** Set once connect() resolved: from then on every dial is a reconnect. */
  connected = false;
  constructor(
    private readonly minMs: number,
    private readonly maxMs: number,
  ) {}
  reset(): void {
    this.#attempt = 0;
  }
  // (The library passes the last ServerInfo, but clears it before each dial: it cannot tell a reconnect.)
  readonly handler = (pool: ReadonlyArray<Server>, _info: ServerInfo | null): { server: Server; delay: number } | null => {
    const server = pool[0];
    if (server === undefined || !this.connected) return null;
    return { server, delay: backoffMs(this.#attempt++, this.minMs, this.maxMs) };
  };
}

export interface NatsSession {
  readonly nc: NatsConnection;
  /** Call after each successful reconnect. */
  resetBackoff(): void;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Bound on one NATS handshake (TCP, INFO, TLS, CONNECT/PONG), at connect and at each reconnect. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/** `p`'s value, or undefined when the deadline passes or `signal` aborts first. */
async function raceDeadline<T>(p: Promise<T>, deadline: number, signal: AbortSignal): Promise<T | undefined> {
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    return await Promise.race([p, sleep(Math.max(0, deadline - Date.now()), stop.signal).then(() => undefined)]);
  } finally {
    stop.abort(); // ends the sleep's timer
    signal.removeEventListener("abort", onAbort);
  }
}

/**
 * Connects to one of the servers, retrying (paced) until `deadline`. Rejects at the deadline, at once
 * on an authorization failure, or when `signal` aborts (the link was closed).
 */
export async function connectNats(
  mods: NatsModules,
  options: NatsCommonOptions,
  settings: NatsSettings,
  defaultName: string,
  deadline: number,
  signal: AbortSignal,
  log: Logger,
): Promise<NatsSession> {
  const base = await connectionOptions(mods, options, settings, defaultName);
  const pacer = new Pacer(settings.reconnectMinMs, settings.reconnectMaxMs);
  let lastError: unknown;
  for (let attempt = 0; ; attempt++) {
    if (signal.aborted) throw new AgentError("SHUTTING_DOWN", "nats: link closed while connecting");
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    try {
      // `timeout` bounds each handshake, reconnects included; the deadline bounds this attempt.
      const connecting = mods.core.connect({ ...base, timeout: HANDSHAKE_TIMEOUT_MS, reconnectToServer: pacer.handler });
      const nc = await raceDeadline(connecting, deadline, signal);
      if (nc === undefined) {
        // Too late or closed meanwhile: a connection that still comes is closed at once.
        connecting.then((late) => late.close()).catch(() => undefined);
        if (signal.aborted) throw new AgentError("SHUTTING_DOWN", "nats: link closed while connecting");
        // The previous attempt's error, if any, tells why (a certificate the CA did not sign...).
        lastError = lastError === undefined ? new Error("timeout") : new Error(`timeout; previous attempt: ${errorText(lastError)}`, { cause: lastError });
        break;
      }
      pacer.connected = true;
      guardWrites(nc);
      return { nc, resetBackoff: () => pacer.reset() };
    } catch (err) {
      if (AgentError.is(err)) throw err;
      if (err instanceof mods.core.AuthorizationError) {
        throw new AgentError("CONFIG_INVALID", `nats: authorization refused by ${settings.servers.join(",")}: ${errorText(err)}`, {
          cause: err,
        });
      }
      lastError = err;
      log.debug({ err: errorText(err), attempt }, "nats connect attempt failed");
    }
    const pause = backoffMs(attempt, Math.min(settings.reconnectMinMs, 500), settings.reconnectMaxMs);
    await sleep(Math.min(pause, Math.max(0, deadline - Date.now())), signal);
  }
  throw new AgentError(
    "BUS_UNAVAILABLE",
    `nats: no connection to ${settings.servers.join(",")} within ${settings.connectTimeoutMs} ms` +
      (lastError === undefined ? "" : `: ${errorText(lastError)}`),
    lastError === undefined ? {} : { cause: lastError },
  );
}

/** Streams this layout needs, as a link creates them when they are missing. */
export function streamConfigs(settings: NatsSettings): Array<Partial<StreamConfig> & { name: string; subjects: string[] }> {
  const s = 1_000_000_000;
  const inAge = settings.maxAgeS * s;
  const stateAge = settings.stateMaxAgeS * s;
  const window = DUPLICATE_WINDOW_S * s;
  return [
    {
      name: settings.layout.inStream,
      description: "ironbus: commands to agents",
      subjects: inStreamSubjects(settings.layout),
      retention: "limits",
      storage: "file",
      discard: "old",
      max_age: inAge,
      duplicate_window: Math.min(window, inAge),
      num_replicas: settings.replicas,
    },
    {
      name: settings.layout.stateStream,
      description: "ironbus: latest hello, heartbeat and status of each agent",
      subjects: stateStreamSubjects(settings.layout),
      retention: "limits",
      storage: "file",
      discard: "old",
      max_msgs_per_subject: 1,
      max_age: stateAge,
      duplicate_window: stateAge === 0 ? window : Math.min(window, stateAge),
      num_replicas: settings.replicas,
    },
  ];
}

/**
 * Creates the stream when it is missing and tolerates it existing (another link made it first; its
 * configuration is the operator's and is not changed here, only checked for our subjects).
 */
export async function ensureStream(
  mods: NatsModules,
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string; subjects: string[] },
  log: Logger,
): Promise<void> {
  const { JetStreamApiError, JetStreamApiCodes } = mods.js;
  const check = (subjects: readonly string[] | undefined): void => {
    const missing = config.subjects.filter((s) => !(subjects ?? []).includes(s));
    if (missing.length > 0) log.warn({ stream: config.name, missing }, "nats stream exists without some of the ironbus subjects");
  };
  try {
    const info = await jsm.streams.info(config.name);
    check(info.config.subjects);
    return;
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
  }
  try {
    await jsm.streams.add(config);
    log.info({ stream: config.name, subjects: config.subjects }, "nats stream created");
  } catch (err) {
    // Created by another link between our info and add: fine. Anything else (overlapping subjects...) is not.
    if (err instanceof JetStreamApiError && /already in use|already exists/i.test(err.message)) {
      const info = await jsm.streams.info(config.name);
      check(info.config.subjects);
      return;
    }
    if (err instanceof JetStreamApiError && /overlap/i.test(err.message)) {
      throw new AgentError("CONFIG_INVALID", `nats: stream ${config.name}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/** True for failures worth retrying after a pause (JetStream not ready yet after a restart, timeouts). */
export function transient(mods: NatsModules, err: unknown): boolean {
  if (AgentError.is(err)) return false;
  if (err instanceof mods.core.AuthorizationError || err instanceof mods.core.PermissionViolationError) return false;
  return true;
}
