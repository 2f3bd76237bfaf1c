/**
 * The controller's end of the NATS bus (core/bus.ts ControllerLink; layout in docs/transport-nats.md).
 *
 * - open() ensures both streams, subscribes (core) to `<prefix>.out.*.*`, then reads IRONBUS_STATE
 *   (an ordered consumer, deliver last per subject) and delivers each node's latest hello, heartbeat
 *   and status before the live traffic that arrived meanwhile. After a reconnect it reads the state
 *   again (the controller may have missed hellos while away): expect repeats.
 * - send() publishes with JetStream to `<prefix>.in.{node.<n>|group.<g>|fleet}`, Nats-Msg-Id = the
 *   envelope id (IRONBUS_IN drops a repeat within its 2 min window), content type in a
 *   `Content-Type` header; it resolves on the PubAck and rejects at once while disconnected.
 * - NATS has no last will: `gone` is never called; dead agents show as missed heartbeats (and
 *   the `offline` status an agent link publishes when it closes).
 */
import type { Msg, Subscription } from "@nats-io/transport-node";
import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import type { BusTarget, ControllerInbound, ControllerLink, ControllerLinkEvents } from "../../core/bus.js";
import { backoffMs } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/log.js";
import { CONTENT_TYPE_HEADER, outWildcard, parseOutSubject, targetSubject } from "./layout.js";
import {
  connectNats,
  contentTypeOf,
  ensureStream,
  errorText,
  loadNats,
  natsSettings,
  sleep,
  streamConfigs,
  transient,
  type NatsCommonOptions,
  type NatsModules,
  type NatsSession,
  type NatsSettings,
} from "./options.js";

export type NatsControllerLinkOptions = NatsCommonOptions;

/** Messages one pull asks for while reading IRONBUS_STATE. */
const STATE_BATCH = 1000;

export class NatsControllerLink implements ControllerLink {
  readonly kind = "nats";
  readonly #options: NatsControllerLinkOptions;
  readonly #settings: NatsSettings;
  readonly #log: Logger;
  #state: "new" | "opening" | "open" | "closed" = "new";
  #events: ControllerLinkEvents | undefined;
  #mods: NatsModules | undefined;
  #session: NatsSession | undefined;
  #js: JetStreamClient | undefined;
  #sub: Subscription | undefined;
  #connected = false;
  #gen = 0;
  readonly #abort = new AbortController();
  /** Live messages held while the state stream is being read (undefined: deliver at once). */
  #held: Msg[] | undefined;
  #lastError: unknown;
  #firstReady: { resolve(): void; reject(err: unknown): void } | undefined;
  /** Sends waiting for their PubAck: a disconnect rejects them at once (the library would wait for its timeout). */
  readonly #inflight = new Set<(err: Error) => void>();

  constructor(options: NatsControllerLinkOptions) {
    this.#settings = natsSettings(options);
    this.#options = options;
    this.#log = (options.log ?? silentLogger()).child({ transport: "nats", side: "controller" });
  }

  /** True while connected. */
  get connected(): boolean {
    return this.#connected;
  }

  async open(events: ControllerLinkEvents): Promise<void> {
    if (this.#state !== "new") throw new AgentError("INTERNAL", `nats: open() on a controller link that is ${this.#state}`);
    this.#state = "opening";
    this.#events = events;
    const deadline = Date.now() + this.#settings.connectTimeoutMs;
    try {
      const mods = await loadNats();
      this.#mods = mods;
      const session = await connectNats(mods, this.#options, this.#settings, "ironbus-controller", deadline, this.#abort.signal, this.#log);
      this.#session = session;
      this.#js = mods.js.jetstream(session.nc, { timeout: this.#settings.requestTimeoutMs });
      this.#connected = true;
      void this.#watch(session);
      this.#held = [];
      this.#sub = this.#subscribe(session);
      await session.nc.flush();
      const ready = new Promise<void>((resolve, reject) => (this.#firstReady = { resolve, reject }));
      void this.#prepare(this.#gen);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => {
            const last = this.#lastError === undefined ? "" : `: ${errorText(this.#lastError)}`;
            reject(new AgentError("BUS_UNAVAILABLE", `nats: connected but JetStream not ready within ${this.#settings.connectTimeoutMs} ms${last}`));
          },
          Math.max(0, deadline - Date.now()),
        );
      });
      try {
        await Promise.race([ready, timeout]);
      } finally {
        clearTimeout(timer);
        this.#firstReady = undefined;
      }
      if (this.#state !== "opening") throw new AgentError("SHUTTING_DOWN", "nats: link closed while opening");
      this.#state = "open";
    } catch (err) {
      await this.#shutdown();
      this.#state = "closed";
      throw AgentError.from(err);
    }
  }

  async send(target: BusTarget, bytes: Uint8Array, contentType: string, id?: string): Promise<void> {
    const subject = targetSubject(this.#settings.layout, target);
    const mods = this.#mods;
    const js = this.#js;
    if (this.#state !== "open" || !this.#connected || mods === undefined || js === undefined) {
      throw new AgentError("BUS_UNAVAILABLE", "nats: controller link is down");
    }
    const h = mods.core.headers();
    h.set(CONTENT_TYPE_HEADER, contentType);
    const published = js.publish(subject, bytes, id === undefined ? { headers: h } : { headers: h, msgID: id });
    let cancel: ((err: Error) => void) | undefined;
    const cut = new Promise<never>((_, reject) => {
      cancel = reject;
    });
    if (cancel !== undefined) this.#inflight.add(cancel);
    try {
      await Promise.race([published, cut]);
    } catch (err) {
      published.catch(() => undefined);
      const tooLarge = /max_payload|too large|maximum message size/i.test(errorText(err));
      throw new AgentError(tooLarge ? "MESSAGE_TOO_LARGE" : "BUS_UNAVAILABLE", `nats: send to ${subject}: ${errorText(err)}`, { cause: err });
    } finally {
      if (cancel !== undefined) this.#inflight.delete(cancel);
    }
  }

  #cutInflight(reason: string): void {
    const err = new Error(reason);
    for (const cancel of this.#inflight) cancel(err);
    this.#inflight.clear();
  }

  async close(): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    await this.#shutdown();
  }

  #isClosed(): boolean {
    return this.#state === "closed";
  }

  // ---- connection ----

  async #watch(session: NatsSession): Promise<void> {
    const { nc } = session;
    for await (const status of nc.status()) {
      if (this.#session !== session) return;
      switch (status.type) {
        case "disconnect":
          this.#gen++;
          this.#connected = false;
          this.#cutInflight("disconnected before the broker confirmed it");
          this.#log.warn({ server: status.server }, "nats controller link disconnected");
          break;
        case "reconnect": {
          session.resetBackoff();
          this.#connected = true;
          this.#log.info({ server: status.server }, "nats controller link reconnected");
          this.#held ??= [];
          void this.#prepare(this.#gen);
          break;
        }
        case "error":
          this.#log.warn({ err: errorText(status.error) }, "nats server error");
          break;
        default:
          break;
      }
    }
    if (this.#session !== session || this.#isClosed()) return;
    // The library gave up (e.g. authorization refused twice): dial again, paced, until closed.
    this.#connected = false;
    this.#cutInflight("connection closed before the broker confirmed it");
    this.#gen++;
    this.#session = undefined;
    this.#log.error({ reason: errorText((await nc.closed()) ?? "closed") }, "nats controller connection closed; redialling");
    const mods = this.#mods;
    if (mods === undefined) return;
    for (let attempt = 0; !this.#isClosed(); attempt++) {
      await sleep(backoffMs(attempt, this.#settings.reconnectMinMs, this.#settings.reconnectMaxMs), this.#abort.signal);
      if (this.#isClosed()) return;
      try {
        const deadline = Date.now() + this.#settings.connectTimeoutMs;
        const next = await connectNats(mods, this.#options, this.#settings, "ironbus-controller", deadline, this.#abort.signal, this.#log);
        if (this.#isClosed()) {
          await next.nc.close().catch(() => undefined);
          return;
        }
        this.#session = next;
        this.#js = mods.js.jetstream(next.nc, { timeout: this.#settings.requestTimeoutMs });
        this.#connected = true;
        void this.#watch(next);
        this.#held ??= [];
        this.#sub = this.#subscribe(next);
        void this.#prepare(this.#gen);
        return;
      } catch (err) {
        this.#log.warn({ err: errorText(err), attempt }, "nats controller redial failed");
      }
    }
  }

  /** Ensures the streams, then replays IRONBUS_STATE and releases the held live messages; retries transient failures. */
  #subscribe(session: NatsSession): Subscription {
    return session.nc.subscribe(outWildcard(this.#settings.layout), {
      callback: (err, msg) => {
        if (err === null) this.#live(msg);
      },
    });
  }

  async #prepare(gen: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (gen !== this.#gen || this.#isClosed()) return;
      try {
        const mods = this.#mods;
        const js = this.#js;
        if (mods === undefined || js === undefined) throw new AgentError("BUS_UNAVAILABLE", "nats: not connected");
        const jsm = await js.jetstreamManager(true);
        for (const config of streamConfigs(this.#settings)) await ensureStream(mods, jsm, config, this.#log);
        await this.#replayState(js, gen);
        if (gen !== this.#gen) return;
        this.#release();
        this.#firstReady?.resolve();
        return;
      } catch (err) {
        if (gen !== this.#gen || this.#isClosed()) return;
        this.#lastError = err;
        const mods = this.#mods;
        if (this.#firstReady !== undefined && (mods === undefined || !transient(mods, err))) {
          this.#firstReady.reject(err);
          return;
        }
        this.#log.warn({ err: errorText(err), attempt }, "nats controller: reading the fleet state failed; retrying");
        await sleep(backoffMs(attempt, 200, Math.min(5000, this.#settings.reconnectMaxMs)), this.#abort.signal);
      }
    }
  }

  async #replayState(js: JetStreamClient, gen: number): Promise<void> {
    const consumer = await js.consumers.get(this.#settings.layout.stateStream, { deliver_policy: "last_per_subject" });
    try {
      const info = await consumer.info(true);
      let left = info.num_pending;
      let count = 0;
      while (left > 0 && gen === this.#gen) {
        const batch = await consumer.fetch({ max_messages: Math.min(STATE_BATCH, left), expires: Math.max(1000, this.#settings.requestTimeoutMs) });
        let got = 0;
        for await (const m of batch) {
          got++;
          count++;
          if (gen === this.#gen) this.#deliver(m);
          left = m.info.pending;
          if (left === 0) break;
        }
        if (got === 0) break;
      }
      this.#log.debug({ count }, "nats controller: fleet state read");
    } finally {
      consumer.delete().catch(() => undefined);
    }
  }

  #release(): void {
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const msg of held) this.#deliver(msg);
  }

  #live(msg: Msg): void {
    if (this.#held !== undefined) this.#held.push(msg);
    else this.#deliver(msg);
  }

  #deliver(msg: Msg | JsMsg): void {
    if (this.#isClosed()) return;
    const where = parseOutSubject(this.#settings.layout, msg.subject);
    if (where === undefined) return;
    const inbound: ControllerInbound = { node: where.node, kind: where.kind, bytes: msg.data, contentType: contentTypeOf(msg) };
    try {
      this.#events?.message(inbound);
    } catch (err) {
      this.#log.error({ err: errorText(err), node: where.node }, "nats controller: message handler threw");
    }
  }

  async #shutdown(): Promise<void> {
    this.#gen++;
    this.#firstReady?.reject(new AgentError("SHUTTING_DOWN", "nats: link closed while opening"));
    this.#connected = false;
    this.#cutInflight("link closed");
    this.#abort.abort();
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#held = undefined;
    const session = this.#session;
    this.#session = undefined;
    if (session !== undefined) await session.nc.close().catch(() => undefined);
  }
}

export function createNatsControllerLink(options: NatsControllerLinkOptions): NatsControllerLink {
  return new NatsControllerLink(options);
}
