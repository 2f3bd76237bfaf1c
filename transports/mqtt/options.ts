/**
 * Options of the MQTT links and the one connection driver both links share (docs/transport-mqtt.md).
 *
 * The driver makes one mqtt.js client per connection attempt with mqtt.js's own reconnect turned off
 * (reconnectPeriod 0) and reconnects itself with `backoffMs` (exponential, full jitter), so a broker
 * restart does not bring every agent back at the same instant. A fresh client per attempt also means
 * nothing of a dead connection (pending acks, in-flight publishes, packet ids) leaks into the next:
 * the durable state is the broker's persistent session, keyed by the client id.
 *
 * mqtt.js is imported on first open() only: a REST-only agent never loads it.
 */
import type { IClientOptions, IConnackPacket, IPublishPacket, MqttClient } from "mqtt";
import { backoffMs } from "../../core/bus.js";
import { interop } from "../../core/interop.js";
import { AgentError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/log.js";
import { DEFAULT_PREFIX, validPrefix } from "./layout.js";

export type MqttProtocolVersion = 4 | 5;

/** Bytes published as is, with their MQTT 5 content type (dropped on 3.1.1). */
export interface MqttPayload {
  readonly bytes: Uint8Array;
  readonly contentType: string;
}

export interface MqttTlsOptions {
  /** PEM: the CA bundle the broker's certificate is checked against. */
  readonly ca?: string;
  /** PEM: client certificate (mutual TLS). */
  readonly cert?: string;
  /** PEM: client key. */
  readonly key?: string;
  /** Default true. */
  readonly rejectUnauthorized?: boolean;
}

export interface MqttCommonOptions {
  /** mqtt://host:1883, mqtts://host:8883, ws://host/mqtt, wss://host/mqtt */
  readonly url: string;
  readonly log?: Logger;
  /** 5 (default; falls back to 4 by itself when the broker refuses 5) or 4 (MQTT 3.1.1). */
  readonly protocolVersion?: MqttProtocolVersion;
  readonly username?: string;
  readonly password?: string;
  readonly tls?: MqttTlsOptions;
  /** open() gives up after this long (default 10,000); also the limit for one attempt (CONNACK and SUBACK). */
  readonly connectTimeoutMs?: number;
  /** Reconnect backoff floor (default 500). */
  readonly reconnectMinMs?: number;
  /** Reconnect backoff ceiling (default 30,000). */
  readonly reconnectMaxMs?: number;
  /** MQTT keepalive in seconds (default 30). */
  readonly keepaliveS?: number;
  /** MQTT 5 session expiry of a persistent session, in seconds (default 86,400). */
  readonly sessionExpiryS?: number;
  /** Topic prefix (default "ironbus/v1"). */
  readonly prefix?: string;
  /** Overrides the default client id. */
  readonly clientId?: string;
}

export interface MqttAgentLinkOptions extends MqttCommonOptions {
  readonly node: string;
  readonly groups?: readonly string[];
  /** Last will, published retained on `.../out/status` by the broker when the connection is lost, and by close(). */
  readonly will?: MqttPayload;
  /** Published retained on `.../out/status` on every (re)connect. */
  readonly online?: MqttPayload;
}

export interface MqttControllerLinkOptions extends MqttCommonOptions {
  /** Keep the broker session while away (clean false): results published meanwhile are delivered on return. Needs a stable `clientId`. */
  readonly persistent?: boolean;
  /** A topic filter replies addressed with reply_to arrive on; subscribed too. */
  readonly replyTopic?: string;
}

export const MQTT_DEFAULTS = {
  protocolVersion: 5,
  connectTimeoutMs: 10_000,
  reconnectMinMs: 500,
  reconnectMaxMs: 30_000,
  keepaliveS: 30,
  sessionExpiryS: 86_400,
} as const;

export interface ResolvedMqttOptions {
  readonly url: string;
  readonly log: Logger;
  readonly protocolVersion: MqttProtocolVersion;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly tls: MqttTlsOptions | undefined;
  readonly connectTimeoutMs: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly keepaliveS: number;
  readonly sessionExpiryS: number;
  readonly prefix: string;
}

const URL_SCHEMES = new Set(["mqtt:", "mqtts:", "tcp:", "ssl:", "ws:", "wss:"]);

function positive(name: string, value: number | undefined, fallback: number, allowZero = false): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) throw new AgentError("CONFIG_INVALID", `mqtt: ${name} must be a ${allowZero ? "non-negative" : "positive"} number, got ${value}`);
  return value;
}

/** Checks and completes the options both links share; throws AgentError CONFIG_INVALID. */
export function resolveMqttOptions(options: MqttCommonOptions): ResolvedMqttOptions {
  let scheme: string;
  try {
    scheme = new URL(options.url).protocol;
  } catch {
    throw new AgentError("CONFIG_INVALID", `mqtt: url ${JSON.stringify(options.url)} is not a URL`);
  }
  if (!URL_SCHEMES.has(scheme)) throw new AgentError("CONFIG_INVALID", `mqtt: url scheme ${scheme} is none of mqtt:, mqtts:, ws:, wss:`);
  const protocolVersion = options.protocolVersion ?? MQTT_DEFAULTS.protocolVersion;
  if (protocolVersion !== 4 && protocolVersion !== 5) throw new AgentError("CONFIG_INVALID", `mqtt: protocolVersion must be 4 or 5, got ${String(protocolVersion)}`);
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  if (!validPrefix(prefix)) throw new AgentError("CONFIG_INVALID", `mqtt: prefix ${JSON.stringify(prefix)} must be topic levels without wildcards or a leading/trailing "/"`);
  if (options.clientId !== undefined && (options.clientId.length === 0 || Buffer.byteLength(options.clientId) > 65535)) {
    throw new AgentError("CONFIG_INVALID", "mqtt: clientId must be 1 to 65535 bytes");
  }
  const reconnectMinMs = positive("reconnectMinMs", options.reconnectMinMs, MQTT_DEFAULTS.reconnectMinMs);
  const reconnectMaxMs = positive("reconnectMaxMs", options.reconnectMaxMs, MQTT_DEFAULTS.reconnectMaxMs);
  if (reconnectMaxMs < reconnectMinMs) throw new AgentError("CONFIG_INVALID", `mqtt: reconnectMaxMs ${reconnectMaxMs} is below reconnectMinMs ${reconnectMinMs}`);
  const keepaliveS = positive("keepaliveS", options.keepaliveS, MQTT_DEFAULTS.keepaliveS, true);
  const sessionExpiryS = positive("sessionExpiryS", options.sessionExpiryS, MQTT_DEFAULTS.sessionExpiryS, true);
  if (!Number.isInteger(keepaliveS) || keepaliveS > 65535) throw new AgentError("CONFIG_INVALID", `mqtt: keepaliveS must be an integer up to 65535, got ${keepaliveS}`);
  if (!Number.isInteger(sessionExpiryS) || sessionExpiryS > 0xffffffff) throw new AgentError("CONFIG_INVALID", `mqtt: sessionExpiryS must be an integer up to 4294967295, got ${sessionExpiryS}`);
  return {
    url: options.url,
    log: options.log ?? silentLogger(),
    protocolVersion,
    username: options.username,
    password: options.password,
    tls: options.tls,
    connectTimeoutMs: positive("connectTimeoutMs", options.connectTimeoutMs, MQTT_DEFAULTS.connectTimeoutMs),
    reconnectMinMs,
    reconnectMaxMs,
    keepaliveS,
    sessionExpiryS,
    prefix,
  };
}

// ---- the connection driver ------------------------------------------------------------------------

type MqttModule = typeof import("mqtt");
let mqttModule: Promise<MqttModule> | undefined;

function loadMqtt(): Promise<MqttModule> {
  mqttModule ??= import("mqtt").then((m) => interop(m, "connect"));
  return mqttModule;
}

/** One connection (one mqtt.js client). Handed to the hooks; never outlives its socket. */
export interface MqttWire {
  readonly client: MqttClient;
  readonly version: MqttProtocolVersion;
  /** True once the socket is gone. */
  readonly closed: boolean;
}

interface WireState extends MqttWire {
  closed: boolean;
  up: boolean;
  /** The broker refused MQTT 5: the next attempt speaks 3.1.1. */
  refusedV5: boolean;
  /** When the wire went up (performance.now()). */
  upAt: number;
  error: string | undefined;
  timer: NodeJS.Timeout | undefined;
  /** Inbound QoS 1 packet ids in arrival order; PUBACKs leave in this order (MQTT 4.6). */
  readonly acks: { readonly id: number; acked: boolean }[];
  /** Messages that arrived before the wire was up (the broker's queue for a resumed session). */
  readonly held: (() => void)[];
  /** Rejecters of publishes waiting for their PUBACK. */
  readonly publishes: Set<(err: Error) => void>;
}

export interface MqttConnectionHooks {
  /** clean / will / properties of the CONNECT packet for this protocol version. */
  connectOptions(version: MqttProtocolVersion): IClientOptions;
  /** After CONNACK: subscribe (and announce). The wire goes up when this resolves; a rejection drops it. */
  ready(wire: MqttWire): Promise<void>;
  /** One inbound PUBLISH, only while the wire is up. `ack` sends the PUBACK (idempotent). */
  message(wire: MqttWire, packet: IPublishPacket, ack: () => void): void;
  up(): void;
  down(reason: string): void;
}

/** What mqtt.js's QoS 1 path gets from handleMessage so that it skips its own (immediate) PUBACK. */
const PUBACK_DEFERRED = new Error("PUBACK deferred to ack()");
const GRACEFUL_CLOSE_MS = 2_000;

function payloadBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function reasonCodeOf(err: Error): number | undefined {
  const code: unknown = (err as { code?: unknown }).code;
  return typeof code === "number" ? code : undefined;
}

/** TCP_NODELAY on a TCP or TLS socket (without it a QoS 1 round trip waits ~40-90 ms for Nagle). ws sets it itself. */
function setNoDelay(stream: unknown): void {
  const socket = stream as { setNoDelay?: (on: boolean) => unknown; once?: (event: string, fn: () => void) => unknown };
  if (typeof socket.setNoDelay !== "function") return;
  socket.setNoDelay(true);
  socket.once?.("connect", () => socket.setNoDelay?.(true));
}

/**
 * One logical MQTT connection: the first connection within connectTimeoutMs, then reconnects with
 * backoff until close(). Inbound QoS 1 messages are acknowledged only when the hook's `ack` is called.
 */
export class MqttConnection {
  private version: MqttProtocolVersion;
  private wire: WireState | undefined;
  private current: WireState | undefined;
  private attempt = 0;
  private running = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private lastError = "no attempt made";
  private opening: { resolve(): void; reject(err: Error): void; timer: NodeJS.Timeout } | undefined;
  private lib: MqttModule | undefined;

  constructor(
    private readonly options: ResolvedMqttOptions,
    readonly clientId: string,
    private readonly hooks: MqttConnectionHooks,
    private readonly log: Logger,
  ) {
    this.version = options.protocolVersion;
  }

  /** True while a connection is up (connected and subscribed). */
  get connected(): boolean {
    return this.current !== undefined;
  }

  async open(): Promise<void> {
    if (this.running) throw new AgentError("INTERNAL", "mqtt: link already open");
    this.running = true;
    this.version = this.options.protocolVersion;
    this.attempt = 0;
    this.lastError = "no attempt made";
    const ms = this.options.connectTimeoutMs;
    const deadline = Date.now() + ms;
    try {
      this.lib ??= await loadMqtt();
    } catch (err) {
      this.running = false;
      throw new AgentError("INTERNAL", `mqtt: cannot load the mqtt library: ${errorText(err)}`, { cause: err });
    }
    if (!this.running) throw new AgentError("SHUTTING_DOWN", "mqtt: link closed while opening");
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const attempt = this.wire;
        // An attempt still under way has no error yet: the previous one's (a TLS or password refusal) tells why.
        const previous = this.attempt > 0 ? `; previous attempt: ${this.lastError}` : "";
        const last = attempt === undefined ? this.lastError : (attempt.error ?? `no CONNACK and SUBACK yet${previous}`);
        this.stop();
        this.settleOpen(new AgentError("BUS_UNAVAILABLE", `mqtt: no connection to ${this.options.url} within ${ms} ms (last error: ${last})`));
      }, Math.max(0, deadline - Date.now()));
      this.opening = { resolve, reject, timer };
      this.connect();
    });
  }

  /** Publishes QoS 1 on the current connection; resolves on PUBACK, rejects at once when down. */
  publish(topic: string, bytes: Uint8Array, contentType: string, retain: boolean): Promise<void> {
    const wire = this.current;
    if (wire === undefined) return Promise.reject(new AgentError("BUS_UNAVAILABLE", `mqtt: not connected to ${this.options.url}`));
    return this.publishOn(wire, topic, bytes, contentType, retain);
  }

  /** Publishes QoS 1 on one given connection (used while it is not up yet, and by close()). */
  publishOn(wire: MqttWire, topic: string, bytes: Uint8Array, contentType: string, retain: boolean): Promise<void> {
    const state = wire as WireState;
    if (state.closed) return Promise.reject(new AgentError("BUS_UNAVAILABLE", `mqtt: connection to ${this.options.url} is closed`));
    return new Promise<void>((resolve, reject) => {
      // Settles once: on the PUBACK, or earlier when the connection is lost (onClose calls `fail`).
      const fail = (err: Error): void => {
        if (state.publishes.delete(fail)) reject(err);
      };
      state.publishes.add(fail);
      const opts = state.version === 5 ? { qos: 1 as const, retain, properties: { contentType } } : { qos: 1 as const, retain };
      state.client.publish(topic, payloadBuffer(bytes), opts, (err) => {
        if (err) fail(new AgentError("INTERNAL", `mqtt: publish to ${topic} failed: ${err.message}`, { cause: err }));
        else if (state.publishes.delete(fail)) resolve();
      });
    });
  }

  /** Subscribes QoS 1; rejects when the broker refuses any of them. */
  async subscribe(wire: MqttWire, topics: readonly string[]): Promise<void> {
    if (topics.length === 0) return;
    const granted = await wire.client.subscribeAsync([...topics], { qos: 1 });
    const refused = granted.filter((g) => (g.qos & 0x80) !== 0);
    if (refused.length > 0) throw new AgentError("INTERNAL", `mqtt: broker refused subscription to ${refused.map((g) => g.topic).join(", ")}`);
  }

  async unsubscribe(wire: MqttWire, topics: readonly string[]): Promise<void> {
    if (topics.length > 0) await wire.client.unsubscribeAsync([...topics]);
  }

  /** The up connection, if any. */
  get currentWire(): MqttWire | undefined {
    return this.current;
  }

  /**
   * Stops reconnecting and disconnects cleanly (DISCONNECT, so the broker discards the will).
   * `beforeDisconnect` runs on the up connection first (the agent publishes its offline status).
   */
  async close(beforeDisconnect?: (wire: MqttWire) => Promise<void>): Promise<void> {
    const wire = this.wire;
    const up = this.current;
    this.stop(false);
    this.settleOpen(new AgentError("SHUTTING_DOWN", "mqtt: link closed while opening"));
    if (wire === undefined || wire.closed) return;
    if (up !== undefined && beforeDisconnect !== undefined) {
      try {
        await withTimeout(beforeDisconnect(up), GRACEFUL_CLOSE_MS);
      } catch (err) {
        this.log.warn({ err: errorText(err) }, "mqtt: could not publish before disconnecting");
      }
    }
    if (wire.closed) return;
    if (up === undefined) {
      wire.client.end(true);
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        wire.client.end(true);
        resolve();
      }, GRACEFUL_CLOSE_MS);
      wire.client.end(false, {}, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // ---- internals ----------------------------------------------------------------------------------

  private settleOpen(err?: Error): void {
    const opening = this.opening;
    if (opening === undefined) return;
    this.opening = undefined;
    clearTimeout(opening.timer);
    if (err === undefined) opening.resolve();
    else opening.reject(err);
  }

  /** No more reconnects; drops the connection in progress (`drop`: also the up one, abruptly). */
  private stop(drop = true): void {
    this.running = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.current = undefined;
    const wire = this.wire;
    if (drop && wire !== undefined && !wire.closed) this.drop(wire, "link stopped");
  }

  private connect(): void {
    this.retryTimer = undefined;
    const lib = this.lib;
    if (!this.running || lib === undefined) return;
    const o = this.options;
    const version = this.version;
    const tls = o.tls;
    const options: IClientOptions = {
      ...this.hooks.connectOptions(version),
      protocolVersion: version,
      clientId: this.clientId,
      keepalive: o.keepaliveS,
      reconnectPeriod: 0,
      connectTimeout: o.connectTimeoutMs,
      resubscribe: false,
      queueQoSZero: false,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
      ...(tls?.cert !== undefined ? { cert: tls.cert } : {}),
      ...(tls?.key !== undefined ? { key: tls.key } : {}),
      ...(tls?.rejectUnauthorized !== undefined ? { rejectUnauthorized: tls.rejectUnauthorized } : {}),
    };
    let client: MqttClient;
    try {
      client = lib.connect(o.url, options);
    } catch (err) {
      this.lastError = errorText(err);
      this.log.warn({ err: this.lastError }, "mqtt: cannot start a connection");
      this.schedule(backoffMs(this.attempt++, o.reconnectMinMs, o.reconnectMaxMs));
      return;
    }
    const wire: WireState = {
      client,
      version,
      closed: false,
      up: false,
      refusedV5: false,
      upAt: 0,
      error: undefined,
      timer: undefined,
      acks: [],
      held: [],
      publishes: new Set(),
    };
    this.wire = wire;
    setNoDelay(client.stream);
    client.handleMessage = (packet, done) => this.inbound(wire, packet, done);
    client.on("error", (err) => this.onError(wire, err));
    client.on("disconnect", (packet) => {
      wire.error = `broker sent DISCONNECT (reason ${packet.reasonCode ?? 0})`;
    });
    client.on("connect", (connack) => void this.onConnack(wire, connack));
    client.on("close", () => this.onClose(wire));
    wire.timer = setTimeout(() => {
      wire.error ??= `no CONNACK and SUBACK within ${o.connectTimeoutMs} ms`;
      this.drop(wire, wire.error);
    }, o.connectTimeoutMs);
  }

  private onError(wire: WireState, err: Error): void {
    wire.error = err.message;
    this.lastError = err.message;
    const code = reasonCodeOf(err);
    // A 3.1.1-only broker answers a v5 CONNECT with return code 1 (unacceptable protocol level), a
    // v5 broker that disallows 5 with reason code 0x84 (unsupported protocol version).
    if (wire.version === 5 && !wire.up && (code === 1 || code === 0x84)) wire.refusedV5 = true;
    this.log.debug({ err: err.message, code }, "mqtt: client error");
  }

  private async onConnack(wire: WireState, connack: IConnackPacket): Promise<void> {
    if (wire.closed) return;
    this.log.debug({ sessionPresent: connack.sessionPresent, version: wire.version }, "mqtt: connected");
    try {
      await this.hooks.ready(wire);
    } catch (err) {
      wire.error = `setup after CONNACK failed: ${errorText(err)}`;
      this.lastError = wire.error;
      this.log.warn({ err: errorText(err) }, "mqtt: setup after connect failed; dropping the connection");
      this.drop(wire, wire.error);
      return;
    }
    if (wire.closed || !this.running || this.wire !== wire) return;
    clearTimeout(wire.timer);
    wire.up = true;
    wire.upAt = performance.now();
    this.current = wire;
    this.log.info({ url: this.options.url, version: wire.version }, "mqtt: link up");
    this.settleOpen();
    this.hooks.up();
    for (const deliver of wire.held.splice(0)) deliver();
  }

  private inbound(wire: WireState, packet: IPublishPacket, done: (err?: Error) => void): void {
    let ack: () => void = noop;
    if (packet.qos === 1 && packet.messageId !== undefined) {
      const entry = { id: packet.messageId, acked: false };
      wire.acks.push(entry);
      ack = () => this.ack(wire, entry);
      // mqtt.js would PUBACK once this callback is called without an error, and would not read the next
      // packet before it is called at all; an error skips its PUBACK and lets it read on.
      done(PUBACK_DEFERRED);
    } else {
      done();
    }
    const deliver = (): void => {
      if (wire.closed) return;
      try {
        this.hooks.message(wire, packet, ack);
      } catch (err) {
        this.log.error({ err: errorText(err), topic: packet.topic }, "mqtt: message handler threw");
      }
    };
    if (wire.up) deliver();
    else wire.held.push(deliver);
  }

  /** Marks one message acknowledged and sends the PUBACKs that may leave now, in arrival order. */
  private ack(wire: WireState, entry: { readonly id: number; acked: boolean }): void {
    if (entry.acked) return;
    entry.acked = true;
    if (wire.closed) return;
    const stream = wire.client.stream;
    while (wire.acks.length > 0 && wire.acks[0]?.acked === true) {
      const head = wire.acks.shift();
      if (head === undefined || !stream.writable) break;
      // PUBACK: type 4, remaining length 2, packet id (reason code "success" omitted, valid in 3.1.1 and 5).
      stream.write(Buffer.from([0x40, 0x02, head.id >> 8, head.id & 0xff]));
    }
  }

  private drop(wire: WireState, reason: string): void {
    wire.error ??= reason;
    if (!wire.closed) wire.client.end(true);
  }

  private onClose(wire: WireState): void {
    if (wire.closed) return;
    wire.closed = true;
    clearTimeout(wire.timer);
    const reason = wire.error ?? "connection closed";
    this.lastError = reason;
    for (const fail of [...wire.publishes]) fail(new AgentError("INTERNAL", `mqtt: connection lost before PUBACK: ${reason}`));
    wire.held.length = 0;
    wire.client.end(true);
    if (this.wire === wire) this.wire = undefined;
    if (this.current === wire) {
      this.current = undefined;
      this.log.warn({ reason }, "mqtt: link down");
      this.hooks.down(reason);
    }
    if (!this.running) return;
    if (wire.refusedV5) {
      this.version = 4;
      this.log.warn({ url: this.options.url }, "mqtt: broker refused MQTT 5; falling back to MQTT 3.1.1");
      this.schedule(0);
      return;
    }
    // The backoff starts again only after a connection that lasted: one dropped soon after CONNACK
    // (a broker that accepts and then fails, or two processes taking one client id from each other:
    // mosquitto 2.0 closes the older connection without a reason) keeps it growing.
    if (wire.up && performance.now() - wire.upAt >= this.options.reconnectMaxMs) this.attempt = 0;
    const delay = backoffMs(this.attempt++, this.options.reconnectMinMs, this.options.reconnectMaxMs);
    this.log.debug({ delay, reason }, "mqtt: reconnecting");
    this.schedule(delay);
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }
}

function noop(): void {}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
