/**
 * The WebSocket bus: wire format shared by the hub and both links (docs/transport-ws.md is the
 * normative description), and the reconnecting client both links are built on.
 *
 * Nothing here loads `ws` at module load: the client imports it on first open().
 */
import type { ClientOptions, RawData, WebSocket } from "ws";
import { interop } from "../../core/interop.js";
import { type AgentSends, type BusTarget, type InboundSource, backoffMs } from "../../core/bus.js";
import { CONTENT_TYPES, type WireFormat } from "../../core/codec.js";
import { AgentError, ERROR_CODES, type ErrorCode } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";

export const AGENT_PATH = "/ironbus/v1/agent/";
export const CONTROLLER_PATH = "/ironbus/v1/controller";

/** Close codes the hub uses (besides the standard 1001 going away, 1002 protocol error, 1009 too big). */
export const CLOSE_REPLACED = 4001;
export const CLOSE_GROUPS_INVALID = 4002;
export const CLOSE_TOO_SLOW = 4003;

// ---- kind, source and format codes -------------------------------------------------------------

const KIND_TO_CODE: Readonly<Record<AgentSends, number>> = {
  hello: 0x48, // H
  heartbeat: 0x42, // B
  result: 0x52, // R
  progress: 0x50, // P
  event: 0x45, // E
  error: 0x58, // X
};
const CODE_TO_KIND = new Map<number, AgentSends>(Object.entries(KIND_TO_CODE).map(([k, c]) => [c, k as AgentSends]));

export function kindCode(kind: AgentSends): number {
  return KIND_TO_CODE[kind];
}
export function kindOfCode(code: number | undefined): AgentSends | undefined {
  return code === undefined ? undefined : CODE_TO_KIND.get(code);
}

const SOURCE_TO_CODE: Readonly<Record<InboundSource, number>> = { node: 0x4e, group: 0x47, fleet: 0x46 }; // N G F
export function sourceCode(source: InboundSource): number {
  return SOURCE_TO_CODE[source];
}
export function sourceOfCode(code: number | undefined): InboundSource | undefined {
  if (code === 0x4e) return "node";
  if (code === 0x47) return "group";
  if (code === 0x46) return "fleet";
  return undefined;
}

const FORMAT_JSON = 0x4a; // J
const FORMAT_PROTOBUF = 0x50; // P
export function formatCode(format: WireFormat): number {
  return format === "json" ? FORMAT_JSON : FORMAT_PROTOBUF;
}
export function formatOfCode(code: number | undefined): WireFormat | undefined {
  if (code === FORMAT_JSON) return "json";
  if (code === FORMAT_PROTOBUF) return "protobuf";
  return undefined;
}
export function contentTypeOfFormat(format: WireFormat): string {
  return CONTENT_TYPES[format];
}

/** A frame: one code byte followed by the envelope bytes (agent↔hub, both directions). */
export function prefixed(code: number, bytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(bytes.byteLength + 1);
  out[0] = code;
  out.set(bytes, 1);
  return out;
}

/**
 * Control frames (both directions between agent and hub) are text frames starting with a lower-case
 * word (`ack 12`, `groups a,b`); envelope frames start with an upper-case code.
 */
export function isControlByte(b: number | undefined): boolean {
  return b !== undefined && b >= 0x61 && b <= 0x7a;
}

// ---- hub ⇄ remote controller frames (all binary, integers big-endian) --------------------------

export const C_MESSAGE = 0x4d; // M  hub → controller: an agent's envelope
export const C_GONE = 0x47; // G     hub → controller: an agent's socket closed
export const C_READY = 0x59; // Y    hub → controller: retained frames delivered, live from here
export const C_ACK = 0x41; // A      hub → controller: send <seq> queued
export const C_NACK = 0x4e; // N     hub → controller: send <seq> refused
export const C_SEND = 0x53; // S     controller → hub: send an envelope to agents

export const TARGET_NODE = 0x4e; // N
export const TARGET_GROUP = 0x47; // G
export const TARGET_FLEET = 0x46; // F

/** Header bytes a controller frame may add on top of an envelope (send frame: 10 + name ≤ 255 + id ≤ 65535). */
export const MAX_FRAME_OVERHEAD = 10 + 255 + 65535;

export function encodeMessage(node: string, kind: AgentSends, format: WireFormat, bytes: Uint8Array): Buffer {
  const name = Buffer.from(node, "utf8");
  const out = Buffer.allocUnsafe(4 + name.length + bytes.byteLength);
  out[0] = C_MESSAGE;
  out[1] = kindCode(kind);
  out[2] = formatCode(format);
  out[3] = name.length;
  name.copy(out, 4);
  out.set(bytes, 4 + name.length);
  return out;
}

export function encodeGone(node: string, reason: string): Buffer {
  const name = Buffer.from(node, "utf8");
  return Buffer.concat([Buffer.from([C_GONE, name.length]), name, Buffer.from(reason, "utf8")]);
}

export function encodeAck(seq: number): Buffer {
  const out = Buffer.allocUnsafe(5);
  out[0] = C_ACK;
  out.writeUInt32BE(seq, 1);
  return out;
}

export function encodeNack(seq: number, code: ErrorCode, reason: string): Buffer {
  const head = Buffer.allocUnsafe(6);
  head[0] = C_NACK;
  head.writeUInt32BE(seq, 1);
  const c = Buffer.from(code, "utf8");
  head[5] = c.length;
  return Buffer.concat([head, c, Buffer.from(reason, "utf8")]);
}

export function encodeSend(seq: number, target: BusTarget, format: WireFormat, bytes: Uint8Array, id: string | undefined): Buffer {
  let type: number;
  let name: string;
  if ("node" in target) {
    type = TARGET_NODE;
    name = target.node;
  } else if ("group" in target) {
    type = TARGET_GROUP;
    name = target.group;
  } else {
    type = TARGET_FLEET;
    name = "";
  }
  const n = Buffer.from(name, "utf8");
  const i = Buffer.from(id ?? "", "utf8");
  if (n.length > 255) throw new AgentError("INVALID_REQUEST", `target name of ${n.length} bytes is too long`);
  if (i.length > 65535) throw new AgentError("INVALID_REQUEST", `envelope id of ${i.length} bytes is too long`);
  const out = Buffer.allocUnsafe(10 + n.length + i.length + bytes.byteLength);
  out[0] = C_SEND;
  out.writeUInt32BE(seq, 1);
  out[5] = type;
  out[6] = formatCode(format);
  out[7] = n.length;
  n.copy(out, 8);
  let at = 8 + n.length;
  out.writeUInt16BE(i.length, at);
  at += 2;
  i.copy(out, at);
  out.set(bytes, at + i.length);
  return out;
}

export type HubToController =
  | { readonly type: "message"; readonly node: string; readonly kind: AgentSends; readonly format: WireFormat; readonly bytes: Uint8Array }
  | { readonly type: "gone"; readonly node: string; readonly reason: string }
  | { readonly type: "ready" }
  | { readonly type: "ack"; readonly seq: number }
  | { readonly type: "nack"; readonly seq: number; readonly code: ErrorCode; readonly reason: string };

export interface SendFrame {
  readonly seq: number;
  readonly target: BusTarget;
  readonly format: WireFormat;
  readonly id: string | undefined;
  readonly bytes: Uint8Array;
}

function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CODES, code);
}

/** Parses a hub → controller frame; undefined when malformed. */
export function decodeHubToController(buf: Buffer): HubToController | undefined {
  switch (buf[0]) {
    case C_MESSAGE: {
      const kind = kindOfCode(buf[1]);
      const format = formatOfCode(buf[2]);
      const len = buf[3];
      if (kind === undefined || format === undefined || len === undefined || buf.length < 4 + len) return undefined;
      return { type: "message", kind, format, node: buf.toString("utf8", 4, 4 + len), bytes: buf.subarray(4 + len) };
    }
    case C_GONE: {
      const len = buf[1];
      if (len === undefined || buf.length < 2 + len) return undefined;
      return { type: "gone", node: buf.toString("utf8", 2, 2 + len), reason: buf.toString("utf8", 2 + len) };
    }
    case C_READY:
      return { type: "ready" };
    case C_ACK:
      return buf.length >= 5 ? { type: "ack", seq: buf.readUInt32BE(1) } : undefined;
    case C_NACK: {
      const len = buf[5];
      if (len === undefined || buf.length < 6 + len) return undefined;
      const code = buf.toString("utf8", 6, 6 + len);
      return { type: "nack", seq: buf.readUInt32BE(1), code: isErrorCode(code) ? code : "INTERNAL", reason: buf.toString("utf8", 6 + len) };
    }
    default:
      return undefined;
  }
}

/** Parses a controller → hub send frame; undefined when malformed. */
export function decodeSend(buf: Buffer): SendFrame | undefined {
  if (buf[0] !== C_SEND || buf.length < 10) return undefined;
  const seq = buf.readUInt32BE(1);
  const format = formatOfCode(buf[6]);
  const nameLen = buf[7] ?? 0;
  if (format === undefined || buf.length < 10 + nameLen) return undefined;
  const name = buf.toString("utf8", 8, 8 + nameLen);
  let at = 8 + nameLen;
  const idLen = buf.readUInt16BE(at);
  at += 2;
  if (buf.length < at + idLen) return undefined;
  const id = idLen === 0 ? undefined : buf.toString("utf8", at, at + idLen);
  const bytes = buf.subarray(at + idLen);
  let target: BusTarget;
  if (buf[5] === TARGET_NODE) target = { node: name };
  else if (buf[5] === TARGET_GROUP) target = { group: name };
  else if (buf[5] === TARGET_FLEET) target = { fleet: true };
  else return undefined;
  return { seq, target, format, id, bytes };
}

/** One Buffer from whatever `ws` handed over. */
export function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** `ws://host:port` (IPv6 literals bracketed). */
export function hostUrl(scheme: "ws" | "wss", host: string, port: number): string {
  return `${scheme}://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** The hub base URL with a path appended (keeps a path prefix the base may have). */
export function joinUrl(base: string, path: string, query?: Record<string, string>): string {
  const url = new URL(base);
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new AgentError("CONFIG_INVALID", `hub url ${base} must be ws:// or wss://`);
  }
  url.pathname = url.pathname.replace(/\/+$/, "") + path;
  url.search = "";
  for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
  return url.toString();
}

// ---- the reconnecting client (both links) -----------------------------------------------------

export interface WsTlsOptions {
  /** PEM CA bundle to trust (a private hub CA). */
  readonly ca?: string | undefined;
  /** PEM client certificate and key (mutual TLS). */
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  /** Default true. */
  readonly rejectUnauthorized?: boolean | undefined;
}

/** Connection options common to the agent link and the remote controller link. */
export interface WsClientOptions {
  /** The hub base URL, ws:// or wss:// (a path prefix is kept). */
  readonly url: string;
  readonly log: Logger;
  /** Extra HTTP headers on the upgrade request (e.g. Authorization). */
  readonly headers?: Readonly<Record<string, string>> | undefined;
  readonly tls?: WsTlsOptions | undefined;
  /** How long open() keeps trying (and each later handshake may take). Default 10 000. */
  readonly connectTimeoutMs?: number | undefined;
  /** Reconnect backoff, full jitter (core/bus.ts backoffMs). Defaults 500 / 30 000. */
  readonly reconnectMinMs?: number | undefined;
  readonly reconnectMaxMs?: number | undefined;
  /** A ping every this many ms; no pong before the next one: the socket is dropped. Default 15 000; 0 disables. */
  readonly pingIntervalMs?: number | undefined;
  /** Largest envelope accepted or sent. Default 16 MiB (core/codec.ts DEFAULT_MAX_BYTES). */
  readonly maxMessageBytes?: number | undefined;
}

export interface ClientHandlers {
  /** The URL of the next attempt (the agent's groups may have changed). */
  url(): string;
  onOpen(): void;
  onMessage(data: Buffer, isBinary: boolean): void;
  /** After a connection that was open closes (not after close()). Returns a delay to use instead of the backoff, if any. */
  onClose(code: number, reason: string, description: string): number | undefined;
}

type WsCtor = typeof WebSocket;

/** Why the hub refused a handshake, as an error of the right code. */
function refusal(status: number, what: string): AgentError {
  if (status === 401 || status === 403) return new AgentError("UNAUTHORIZED", `hub refused ${what} (HTTP ${status})`);
  if (status === 400 || status === 404) return new AgentError("CONFIG_INVALID", `hub refused ${what} (HTTP ${status})`);
  return new AgentError("BUS_UNAVAILABLE", `hub refused ${what} (HTTP ${status})`);
}

/**
 * One WebSocket, reopened with backoff until close(). open() resolves on the first connection and
 * rejects after connectTimeoutMs (or at once on a 4xx refusal), leaving no socket or timer behind.
 */
export class ReconnectingClient {
  private ws: WebSocket | undefined;
  private live = false;
  private attempt = 0;
  private stopped = true;
  private retryTimer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private opening: { resolve(): void; reject(err: Error): void; deadline: NodeJS.Timeout } | undefined;
  private lastError = "";
  private closed: Promise<void> | undefined;
  readonly maxMessageBytes: number;

  constructor(
    private readonly options: WsClientOptions,
    private readonly handlers: ClientHandlers,
    private readonly what: string,
  ) {
    this.maxMessageBytes = options.maxMessageBytes ?? 16 * 1024 * 1024;
  }

  get connected(): boolean {
    return this.live && this.ws !== undefined && this.ws.readyState === 1;
  }

  async open(): Promise<void> {
    if (!this.stopped) throw new AgentError("INTERNAL", `${this.what} is already open`);
    const { WebSocket: Ctor } = interop(await import("ws"), "WebSocket");
    this.stopped = false;
    this.attempt = 0;
    this.lastError = "";
    const timeoutMs = this.options.connectTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => {
        this.failOpen(new AgentError("BUS_UNAVAILABLE", `${this.what}: no connection to the hub within ${timeoutMs} ms${this.lastError ? ` (${this.lastError})` : ""}`));
      }, timeoutMs);
      this.opening = { resolve, reject, deadline };
      this.dial(Ctor);
    });
  }

  /** Sends one frame; resolves on the ws send callback. */
  send(frame: Buffer | string, binary: boolean): Promise<void> {
    const ws = this.ws;
    if (ws === undefined || !this.connected) {
      return Promise.reject(new AgentError("BUS_UNAVAILABLE", `${this.what} is not connected to the hub${this.lastError ? ` (${this.lastError})` : ""}`));
    }
    return new Promise((resolve, reject) => {
      ws.send(frame, { binary }, (err) => {
        if (err) reject(new AgentError("BUS_UNAVAILABLE", `${this.what}: send failed: ${err.message}`, { cause: err }));
        else resolve();
      });
    });
  }

  /** Sends without waiting (control frames); false when not connected. */
  sendNow(frame: string): boolean {
    if (!this.connected || this.ws === undefined) return false;
    this.ws.send(frame, { binary: false });
    return true;
  }

  async close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.stopPing();
    this.failOpen(new AgentError("BUS_UNAVAILABLE", `${this.what} was closed before it connected`));
    const ws = this.ws;
    if (ws === undefined || ws.readyState === 3) return;
    if (this.closed === undefined) {
      this.closed = new Promise<void>((resolve) => {
        ws.once("close", () => resolve());
        if (ws.readyState === 1) {
          ws.close(1000, "closing");
          const t = setTimeout(() => ws.terminate(), 2000);
          t.unref();
        } else ws.terminate();
      });
    }
    await this.closed;
  }

  private failOpen(err: Error): void {
    const o = this.opening;
    if (o === undefined) return;
    this.opening = undefined;
    clearTimeout(o.deadline);
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const ws = this.ws;
    if (ws !== undefined && ws.readyState !== 3) ws.terminate();
    o.reject(err);
  }

  private dial(Ctor: WsCtor): void {
    this.retryTimer = undefined;
    if (this.stopped) return;
    const tls = this.options.tls;
    const opts: ClientOptions = {
      perMessageDeflate: false,
      maxPayload: this.maxMessageBytes + MAX_FRAME_OVERHEAD,
      handshakeTimeout: this.options.connectTimeoutMs ?? 10_000,
      headers: { ...(this.options.headers ?? {}) },
      followRedirects: false,
    };
    if (tls?.ca !== undefined) opts.ca = tls.ca;
    if (tls?.cert !== undefined) opts.cert = tls.cert;
    if (tls?.key !== undefined) opts.key = tls.key;
    if (tls?.rejectUnauthorized !== undefined) opts.rejectUnauthorized = tls.rejectUnauthorized;
    let url: string;
    try {
      url = this.handlers.url();
    } catch (err) {
      this.failOpen(AgentError.from(err, "CONFIG_INVALID"));
      return;
    }
    const ws = new Ctor(url, opts);
    this.ws = ws;
    this.closed = undefined;
    let refusedStatus: number | undefined;
    let pongSeen = true;

    ws.on("unexpected-response", (_req, res) => {
      refusedStatus = res.statusCode ?? 0;
      res.resume();
      ws.terminate();
    });
    ws.on("error", (err) => {
      this.lastError = refusedStatus === undefined ? err.message : `HTTP ${refusedStatus}`;
      this.options.log.debug({ err: err.message, url }, `${this.what}: socket error`);
    });
    ws.on("pong", () => {
      pongSeen = true;
    });
    ws.on("open", () => {
      if (this.stopped || this.ws !== ws) {
        ws.terminate();
        return;
      }
      this.live = true;
      this.attempt = 0;
      this.lastError = "";
      const every = this.options.pingIntervalMs ?? 15_000;
      if (every > 0) {
        this.pingTimer = setInterval(() => {
          if (!pongSeen) {
            this.lastError = "no pong from the hub";
            this.options.log.warn(`${this.what}: no pong from the hub, dropping the connection`);
            ws.terminate();
            return;
          }
          pongSeen = false;
          ws.ping();
        }, every);
        this.pingTimer.unref();
      }
      try {
        this.handlers.onOpen();
      } catch (err) {
        this.options.log.error({ err }, `${this.what}: open handler threw`);
      }
      const o = this.opening;
      if (o !== undefined) {
        this.opening = undefined;
        clearTimeout(o.deadline);
        o.resolve();
      }
    });
    ws.on("message", (data, isBinary) => {
      pongSeen = true;
      try {
        this.handlers.onMessage(toBuffer(data), isBinary);
      } catch (err) {
        // A throwing listener must not take the socket (or the process) down with it.
        this.options.log.error({ err }, `${this.what}: message handler threw`);
      }
    });
    ws.on("close", (code, reasonBuf) => {
      if (this.ws !== ws) return;
      const wasLive = this.live;
      this.live = false;
      this.stopPing();
      const reason = reasonBuf.toString("utf8");
      let override: number | undefined;
      if (this.stopped) return;
      if (wasLive) {
        const text = reason ? `closed (${code}: ${reason})` : this.lastError ? `closed (${code}: ${this.lastError})` : `closed (${code})`;
        this.lastError = text;
        try {
          override = this.handlers.onClose(code, reason, text);
        } catch (err) {
          this.options.log.error({ err }, `${this.what}: close handler threw`);
        }
      }
      if (!wasLive && refusedStatus !== undefined && refusedStatus >= 400 && refusedStatus < 500 && this.opening !== undefined) {
        this.failOpen(refusal(refusedStatus, this.what));
        return;
      }
      if (refusedStatus !== undefined) {
        this.options.log.warn({ status: refusedStatus }, `${this.what}: the hub refused the connection`);
      }
      const delay = override ?? backoffMs(this.attempt++, this.options.reconnectMinMs ?? 500, this.options.reconnectMaxMs ?? 30_000);
      this.retryTimer = setTimeout(() => this.dial(Ctor), delay);
    });
  }

  private stopPing(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }
}
