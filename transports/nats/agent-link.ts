/**
 * The agent's end of the NATS bus (core/bus.ts AgentLink; layout in docs/transport-nats.md).
 *
 * - Commands for the node come through a durable pull consumer on IRONBUS_IN (deliver all, explicit
 *   ack): what was published while the agent was away (or before it first came) arrives when it comes.
 *   Group and fleet commands come through durable consumers with deliver policy "new", or, with
 *   `broadcast: "core"`, through plain subscriptions (at most once, nothing kept while away).
 * - ack() is the JetStream ack. A message delivered and not acked is released (nak) when the
 *   connection comes back or the link closes, so it is delivered again at once; the server also
 *   redelivers it after ack_wait. An ack given while disconnected is sent after the reconnect.
 * - publish() is a core publish to `<prefix>.out.<node>.<kind>` (or to replyTo) with the content type
 *   in a `Content-Type` header; it resolves when a flush (shared by the publishes of the same turn of
 *   the event loop) comes back, and rejects at once while the link is down.
 * - NATS has no last will: close() publishes the `offline` notice, every up publishes `online`.
 */
import type { NatsConnection, Subscription, Msg } from "@nats-io/transport-node";
import type { ConsumerConfig, ConsumerInfo, ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { backoffMs, type AgentInbound, type AgentLink, type AgentLinkEvents, type AgentSends, type InboundSource } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/log.js";
import {
  checkBusName,
  CONTENT_TYPE_HEADER,
  fleetConsumer,
  fleetSubject,
  groupConsumer,
  groupSubject,
  nodeConsumer,
  nodeSubject,
  outSubject,
  type OutKind,
} from "./layout.js";
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

/** A status notice the link publishes on `<prefix>.out.<node>.status` (NATS has no last will). */
export interface NatsStatusNotice {
  readonly bytes: Uint8Array;
  readonly contentType: string;
}

export interface NatsAgentLinkOptions extends NatsCommonOptions {
  readonly node: string;
  readonly groups?: readonly string[];
  /**
   * "durable" (default): group and fleet commands through durable consumers (kept while the agent is
   * away). "core": plain subscriptions, at most once and nothing kept, but no per-node server state.
   */
  readonly broadcast?: "durable" | "core";
  /** Published on every up. */
  readonly online?: NatsStatusNotice;
  /** Published by close(). */
  readonly offline?: NatsStatusNotice;
  /** The server redelivers a command not acked within this (default 30 s). */
  readonly ackWaitMs?: number;
  /** Commands one pull request asks for (default 64). */
  readonly batch?: number;
}

interface Wanted {
  readonly source: InboundSource;
  readonly consumer: string;
  readonly subject: string;
  readonly deliver: "all" | "new";
}

function linkDown(): AgentError {
  return new AgentError("BUS_UNAVAILABLE", "nats: link is down");
}

export class NatsAgentLink implements AgentLink {
  readonly kind = "nats";
  readonly node: string;
  readonly #options: NatsAgentLinkOptions;
  readonly #settings: NatsSettings;
  readonly #log: Logger;
  readonly #broadcast: "durable" | "core";
  readonly #ackWaitMs: number;
  readonly #batch: number;
  #groups: string[];

  #state: "new" | "opening" | "open" | "closed" = "new";
  #events: AgentLinkEvents | undefined;
  #mods: NatsModules | undefined;
  #session: NatsSession | undefined;
  #js: JetStreamClient | undefined;
  #jsm: JetStreamManager | undefined;
  /** Up: connected, consumers attached, up() emitted. */
  #up = false;
  /** Bumped by every disconnect and by close(): async work begun for an older generation stops. */
  #gen = 0;
  #abort = new AbortController();
  /** Running pull consumers by consumer name. */
  readonly #pulls = new Map<string, ConsumerMessages>();
  /** Core broadcast subscriptions by subject. */
  readonly #coreSubs = new Map<string, Subscription>();
  readonly #unacked = new Set<JsMsg>();
  readonly #ackLater = new Set<JsMsg>();
  /** Acks written but not yet confirmed by a flush: a disconnect moves them to #ackLater. */
  readonly #acksInFlight = new Set<JsMsg>();
  #flushing: Promise<void> | undefined;
  readonly #flushWaiters = new Set<(err?: Error) => void>();
  /** Serialises attach and group changes. */
  #lock: Promise<void> = Promise.resolve();
  #firstUp: { resolve(): void; reject(err: unknown): void } | undefined;
  #lastAttachError: unknown;

  constructor(options: NatsAgentLinkOptions) {
    this.node = checkBusName("node", options.node);
    this.#groups = [...new Set((options.groups ?? []).map((g) => checkBusName("group", g)))];
    this.#settings = natsSettings(options);
    this.#options = options;
    this.#log = (options.log ?? silentLogger()).child({ transport: "nats", node: this.node });
    this.#broadcast = options.broadcast ?? "durable";
    if (this.#broadcast !== "durable" && this.#broadcast !== "core") {
      throw new AgentError("CONFIG_INVALID", `nats: broadcast must be "durable" or "core"`);
    }
    this.#ackWaitMs = options.ackWaitMs ?? 30_000;
    this.#batch = options.batch ?? 64;
    if (!Number.isInteger(this.#ackWaitMs) || this.#ackWaitMs < 100) throw new AgentError("CONFIG_INVALID", "nats: ackWaitMs must be >= 100");
    if (!Number.isInteger(this.#batch) || this.#batch < 1) throw new AgentError("CONFIG_INVALID", "nats: batch must be >= 1");
  }

  get connected(): boolean {
    return this.#up;
  }

  async open(events: AgentLinkEvents): Promise<void> {
    if (this.#state !== "new") throw new AgentError("INTERNAL", `nats: open() on a link that is ${this.#state}`);
    this.#state = "opening";
    this.#events = events;
    const deadline = Date.now() + this.#settings.connectTimeoutMs;
    try {
      const mods = await loadNats();
      this.#mods = mods;
      const session = await connectNats(mods, this.#options, this.#settings, this.#clientName(), deadline, this.#abort.signal, this.#log);
      this.#useSession(session);
      const up = new Promise<void>((resolve, reject) => (this.#firstUp = { resolve, reject }));
      void this.#attachLoop(this.#gen);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => {
            const last = this.#lastAttachError === undefined ? "" : `: ${errorText(this.#lastAttachError)}`;
            reject(new AgentError("BUS_UNAVAILABLE", `nats: connected but not subscribed within ${this.#settings.connectTimeoutMs} ms${last}`));
          },
          Math.max(0, deadline - Date.now()),
        );
      });
      try {
        await Promise.race([up, timeout]);
      } finally {
        clearTimeout(timer);
        this.#firstUp = undefined;
      }
      if (this.#state !== "opening") throw new AgentError("SHUTTING_DOWN", "nats: link closed while opening");
      this.#state = "open";
    } catch (err) {
      await this.#shutdown(false);
      // A failed open leaves the link as new: the session tries again later (a broker away at boot).
      if (this.#state === "opening") {
        this.#state = "new";
        this.#abort = new AbortController();
      }
      throw AgentError.from(err);
    }
  }

  async setGroups(groups: readonly string[]): Promise<void> {
    const next = [...new Set(groups.map((g) => checkBusName("group", g)))];
    this.#groups = next;
    if (this.#state !== "open" || !this.#up) return; // the next attach applies them
    const gen = this.#gen;
    try {
      await this.#locked(() => this.#applyGroups(gen));
    } catch (err) {
      if (gen !== this.#gen) return; // disconnected meanwhile: the reconnect applies them
      throw AgentError.from(err);
    }
  }

  publish(kind: AgentSends, bytes: Uint8Array, contentType: string, replyTo?: string): Promise<void> {
    return this.#publish(replyTo ?? outSubject(this.#settings.layout, this.node, kind), bytes, contentType);
  }

  async close(): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    await this.#shutdown(true);
  }

  #clientName(): string {
    return `ironbus-agent-${this.node}`;
  }

  #isClosed(): boolean {
    return this.#state === "closed";
  }

  // ---- connection ----

  #useSession(session: NatsSession): void {
    this.#session = session;
    const mods = this.#mods;
    if (mods === undefined) return;
    this.#js = mods.js.jetstream(session.nc, { timeout: this.#settings.requestTimeoutMs });
    this.#jsm = undefined;
    void this.#watch(session);
  }

  async #watch(session: NatsSession): Promise<void> {
    const { nc } = session;
    for await (const status of nc.status()) {
      if (this.#session !== session) return;
      switch (status.type) {
        case "disconnect":
          this.#onDisconnect(`disconnected from ${status.server}`);
          break;
        case "reconnect":
          session.resetBackoff();
          this.#log.info({ server: status.server }, "nats reconnected");
          void this.#attachLoop(this.#gen);
          break;
        case "error":
          this.#log.warn({ err: errorText(status.error) }, "nats server error");
          break;
        case "ldm":
          this.#log.info({ server: status.server }, "nats server entering lame duck mode");
          break;
        case "staleConnection":
          this.#log.warn("nats connection stale");
          break;
        default:
          break;
      }
    }
    // The status iterator ends when the connection closes. Unless we closed it, start over.
    if (this.#session !== session || this.#isClosed()) return;
    this.#onDisconnect(`connection closed: ${errorText((await nc.closed()) ?? "no reason given")}`);
    this.#session = undefined;
    void this.#redial();
  }

  /** The library gave up on its connection (e.g. authorization refused twice): dial again, paced, until closed. */
  async #redial(): Promise<void> {
    const mods = this.#mods;
    if (mods === undefined) return;
    for (let attempt = 0; !this.#isClosed(); attempt++) {
      await sleep(backoffMs(attempt, this.#settings.reconnectMinMs, this.#settings.reconnectMaxMs), this.#abort.signal);
      if (this.#isClosed()) return;
      try {
        const deadline = Date.now() + this.#settings.connectTimeoutMs;
        const session = await connectNats(mods, this.#options, this.#settings, this.#clientName(), deadline, this.#abort.signal, this.#log);
        if (this.#isClosed()) {
          await session.nc.close().catch(() => undefined);
          return;
        }
        for (const sub of this.#coreSubs.values()) sub.unsubscribe();
        this.#coreSubs.clear();
        this.#unacked.clear();
        this.#ackLater.clear();
        this.#acksInFlight.clear();
        this.#useSession(session);
        void this.#attachLoop(this.#gen);
        return;
      } catch (err) {
        this.#log.warn({ err: errorText(err), attempt }, "nats redial failed");
      }
    }
  }

  #onDisconnect(reason: string): void {
    this.#gen++;
    for (const m of this.#acksInFlight) this.#ackLater.add(m);
    this.#acksInFlight.clear();
    this.#stopPulls();
    for (const settle of this.#flushWaiters) settle(linkDown());
    this.#flushWaiters.clear();
    this.#flushing = undefined;
    if (this.#up) {
      this.#up = false;
      this.#log.warn({ reason }, "nats link down");
      this.#events?.down(reason);
    }
  }

  // ---- attach: streams, consumers, subscriptions ----

  async #attachLoop(gen: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (gen !== this.#gen || this.#isClosed()) return;
      try {
        await this.#locked(() => this.#attach(gen));
        return;
      } catch (err) {
        if (gen !== this.#gen || this.#isClosed()) return;
        this.#lastAttachError = err;
        const mods = this.#mods;
        if (this.#firstUp !== undefined && (mods === undefined || !transient(mods, err))) {
          this.#firstUp.reject(err);
          return;
        }
        this.#log.warn({ err: errorText(err), attempt }, "nats attach failed; retrying");
        await sleep(backoffMs(attempt, 200, Math.min(5000, this.#settings.reconnectMaxMs)), this.#abort.signal);
      }
    }
  }

  #locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn);
    this.#lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  #wanted(): Wanted[] {
    const layout = this.#settings.layout;
    const out: Wanted[] = [{ source: "node", consumer: nodeConsumer(this.node), subject: nodeSubject(layout, this.node), deliver: "all" }];
    if (this.#broadcast === "durable") {
      out.push({ source: "fleet", consumer: fleetConsumer(this.node), subject: fleetSubject(layout), deliver: "new" });
      for (const group of this.#groups) {
        out.push({ source: "group", consumer: groupConsumer(this.node, group), subject: groupSubject(layout, group), deliver: "new" });
      }
    }
    return out;
  }

  async #manager(): Promise<JetStreamManager> {
    if (this.#jsm !== undefined) return this.#jsm;
    const js = this.#js;
    if (js === undefined) throw linkDown();
    this.#jsm = await js.jetstreamManager(true);
    return this.#jsm;
  }

  async #attach(gen: number): Promise<void> {
    const mods = this.#mods;
    const session = this.#session;
    if (mods === undefined || session === undefined) throw linkDown();
    const jsm = await this.#manager();
    for (const config of streamConfigs(this.#settings)) await ensureStream(mods, jsm, config, this.#log);
    const infos: Array<{ want: Wanted; info: ConsumerInfo }> = [];
    for (const want of this.#wanted()) infos.push({ want, info: await this.#ensureConsumer(jsm, want) });
    if (gen !== this.#gen || this.#isClosed()) return;
    if (this.#syncCoreSubs(session.nc)) {
      await session.nc.flush(); // the server has the subscriptions before up()
      if (gen !== this.#gen || this.#isClosed()) return;
    }
    // What the last connection left: acks to send now, deliveries to release for redelivery.
    for (const m of this.#unacked) this.#safely(() => m.nak());
    this.#unacked.clear();
    this.#up = true;
    const acks = [...this.#ackLater];
    this.#ackLater.clear();
    for (const m of acks) this.#sendAck(m);
    this.#log.info({ consumers: infos.map((i) => i.info.name), broadcast: this.#broadcast }, "nats link up");
    const online = this.#options.online;
    if (online !== undefined) {
      this.#publish(outSubject(this.#settings.layout, this.node, "status"), online.bytes, online.contentType).catch((err: unknown) =>
        this.#log.debug({ err: errorText(err) }, "nats online notice not sent"),
      );
    }
    this.#firstUp?.resolve();
    this.#events?.up();
    // The session may have closed the link or lost it inside up().
    if (gen !== this.#gen || this.#isClosed()) return;
    for (const { want, info } of infos) this.#startPull(want, info, gen);
  }

  async #ensureConsumer(jsm: JetStreamManager, want: Wanted): Promise<ConsumerInfo> {
    const mods = this.#mods;
    if (mods === undefined) throw linkDown();
    const { JetStreamApiError, JetStreamApiCodes } = mods.js;
    const stream = this.#settings.layout.inStream;
    const ackWait = this.#ackWaitMs * 1_000_000;
    const checked = async (info: ConsumerInfo): Promise<ConsumerInfo> => {
      if (info.config.filter_subject !== want.subject) {
        throw new AgentError(
          "CONFIG_INVALID",
          `nats: consumer ${want.consumer} on ${stream} filters ${String(info.config.filter_subject)}, not ${want.subject}`,
        );
      }
      if (info.config.ack_wait !== ackWait) return jsm.consumers.update(stream, want.consumer, { ack_wait: ackWait });
      return info;
    };
    try {
      return await checked(await jsm.consumers.info(stream, want.consumer));
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) throw err;
    }
    const config: Partial<ConsumerConfig> = {
      durable_name: want.consumer,
      description: `ironbus ${want.source} commands for ${this.node}`,
      filter_subject: want.subject,
      deliver_policy: want.deliver,
      ack_policy: "explicit",
      ack_wait: ackWait,
      max_deliver: -1,
      replay_policy: "instant",
      // A consumer nobody pulled from for as long as commands are kept is dropped by the server.
      inactive_threshold: this.#settings.maxAgeS * 1_000_000_000,
    };
    try {
      const info = await jsm.consumers.add(stream, config);
      this.#log.debug({ consumer: want.consumer, deliver: want.deliver }, "nats consumer created");
      return info;
    } catch (err) {
      if (err instanceof JetStreamApiError && /already (exists|in use)/i.test(err.message)) {
        return checked(await jsm.consumers.info(stream, want.consumer));
      }
      throw err;
    }
  }

  #startPull(want: Wanted, info: ConsumerInfo, gen: number): void {
    const js = this.#js;
    if (js === undefined || gen !== this.#gen || this.#pulls.has(want.consumer)) return;
    const consumer = js.consumers.getConsumerFromInfo(info);
    void consumer
      .consume({ bind: true, max_messages: this.#batch, callback: (m) => this.#deliverJs(m, want.source, gen) })
      .then((messages) => {
        if (gen !== this.#gen || this.#isClosed() || this.#pulls.has(want.consumer)) {
          messages.stop();
          return;
        }
        this.#pulls.set(want.consumer, messages);
        void (async () => {
          for await (const note of messages.status()) {
            if (note.type === "heartbeats_missed" || note.type === "consumer_deleted" || note.type === "exceeded_limits") {
              this.#log.warn({ consumer: want.consumer, note }, "nats consumer notice");
            }
          }
        })();
      })
      .catch((err: unknown) => this.#log.error({ err: errorText(err), consumer: want.consumer }, "nats consume failed"));
  }

  #stopPulls(): void {
    for (const messages of this.#pulls.values()) messages.stop();
    this.#pulls.clear();
  }

  /** Core broadcast mode: subscriptions for the fleet and the current groups. The library resubscribes after reconnects. */
  #syncCoreSubs(nc: NatsConnection): boolean {
    if (this.#broadcast !== "core") return false;
    const layout = this.#settings.layout;
    const want = new Map<string, InboundSource>([[fleetSubject(layout), "fleet"]]);
    for (const group of this.#groups) want.set(groupSubject(layout, group), "group");
    for (const [subject, sub] of this.#coreSubs) {
      if (!want.has(subject)) {
        sub.unsubscribe();
        this.#coreSubs.delete(subject);
      }
    }
    for (const [subject, source] of want) {
      if (this.#coreSubs.has(subject)) continue;
      const sub = nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err === null) this.#deliverCore(msg, source);
        },
      });
      this.#coreSubs.set(subject, sub);
    }
    return true;
  }

  async #applyGroups(gen: number): Promise<void> {
    const session = this.#session;
    if (session === undefined || gen !== this.#gen) return;
    if (this.#broadcast === "core") {
      if (this.#syncCoreSubs(session.nc)) {
      await session.nc.flush(); // the server has the subscriptions before up()
      if (gen !== this.#gen || this.#isClosed()) return;
    }
      await session.nc.flush();
      return;
    }
    const jsm = await this.#manager();
    const wanted = this.#wanted().filter((w) => w.source === "group");
    const names = new Set(wanted.map((w) => w.consumer));
    const prefix = groupConsumer(this.node, "");
    for (const [name, messages] of [...this.#pulls]) {
      if (!name.startsWith(prefix) || names.has(name)) continue;
      messages.stop();
      this.#pulls.delete(name);
      await jsm.consumers.delete(this.#settings.layout.inStream, name).catch((err: unknown) =>
        this.#log.debug({ err: errorText(err), consumer: name }, "nats consumer delete failed"),
      );
    }
    for (const want of wanted) {
      if (this.#pulls.has(want.consumer)) continue;
      const info = await this.#ensureConsumer(jsm, want);
      this.#startPull(want, info, gen);
    }
  }

  // ---- delivery ----

  #deliverJs(m: JsMsg, source: InboundSource, gen: number): void {
    if (gen !== this.#gen || this.#isClosed()) return; // released by the reconnect or close
    this.#unacked.add(m);
    let acked = false;
    const inbound: AgentInbound = {
      bytes: m.data,
      contentType: contentTypeOf(m),
      source,
      ack: () => {
        if (acked) return;
        acked = true;
        if (!this.#unacked.delete(m)) return; // released (nak) already: it comes again
        this.#sendAck(m);
      },
    };
    this.#hand(inbound);
  }

  #deliverCore(msg: Msg, source: InboundSource): void {
    if (this.#isClosed()) return;
    this.#hand({ bytes: msg.data, contentType: contentTypeOf(msg), source, ack: () => undefined });
  }

  #hand(inbound: AgentInbound): void {
    try {
      this.#events?.message(inbound);
    } catch (err) {
      this.#log.error({ err: errorText(err), source: inbound.source }, "nats: message handler threw");
    }
  }

  /** Acks `m` now when up (confirmed by a shared flush), else after the next reconnect. */
  #sendAck(m: JsMsg): void {
    const session = this.#session;
    if (!this.#up || session === undefined) {
      this.#ackLater.add(m);
      return;
    }
    this.#acksInFlight.add(m);
    this.#safely(() => m.ack());
    this.#flush(session.nc).then(
      () => this.#acksInFlight.delete(m),
      () => {
        // The connection went before the server confirmed it: ack again after the reconnect.
        if (this.#acksInFlight.delete(m)) this.#ackLater.add(m);
      },
    );
  }

  #safely(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.debug({ err: errorText(err) }, "nats ack/nak not sent");
    }
  }

  // ---- publishing ----

  #publish(subject: string, bytes: Uint8Array, contentType: string): Promise<void> {
    const mods = this.#mods;
    const session = this.#session;
    if (!this.#up || mods === undefined || session === undefined) return Promise.reject(linkDown());
    try {
      const h = mods.core.headers();
      h.set(CONTENT_TYPE_HEADER, contentType);
      session.nc.publish(subject, bytes, { headers: h });
    } catch (err) {
      const tooLarge = /max_payload|too large/i.test(errorText(err));
      const code = tooLarge ? "MESSAGE_TOO_LARGE" : "BUS_UNAVAILABLE";
      return Promise.reject(new AgentError(code, `nats: publish to ${subject}: ${errorText(err)}`, { cause: err }));
    }
    return this.#flush(session.nc);
  }

  /** One flush for all the publishes of this turn of the event loop; rejected at once by a disconnect. */
  #flush(nc: NatsConnection): Promise<void> {
    if (this.#flushing !== undefined) return this.#flushing;
    const p = new Promise<void>((resolve, reject) => {
      const settle = (err?: Error): void => {
        if (!this.#flushWaiters.delete(settle)) return;
        if (err === undefined) resolve();
        else reject(err);
      };
      this.#flushWaiters.add(settle);
      setImmediate(() => {
        if (this.#flushing === p) this.#flushing = undefined;
        if (!this.#flushWaiters.has(settle)) return;
        nc.flush().then(
          () => settle(),
          (err: unknown) => settle(new AgentError("BUS_UNAVAILABLE", `nats: flush failed: ${errorText(err)}`, { cause: err })),
        );
      });
    });
    this.#flushing = p;
    return p;
  }

  // ---- shutdown ----

  async #shutdown(graceful: boolean): Promise<void> {
    const wasUp = this.#up;
    this.#up = false;
    this.#gen++;
    this.#firstUp?.reject(new AgentError("SHUTTING_DOWN", "nats: link closed while opening"));
    this.#stopPulls();
    for (const sub of this.#coreSubs.values()) sub.unsubscribe();
    this.#coreSubs.clear();
    const session = this.#session;
    this.#session = undefined;
    this.#abort.abort();
    if (session === undefined) return;
    const { nc } = session;
    if (graceful && wasUp) {
      for (const m of this.#unacked) this.#safely(() => m.nak());
      const offline = this.#options.offline;
      const mods = this.#mods;
      if (offline !== undefined && mods !== undefined) {
        this.#safely(() => {
          const h = mods.core.headers();
          h.set(CONTENT_TYPE_HEADER, offline.contentType);
          nc.publish(outSubject(this.#settings.layout, this.node, "status" satisfies OutKind), offline.bytes, { headers: h });
        });
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([nc.flush().catch(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
    }
    this.#unacked.clear();
    this.#ackLater.clear();
    this.#acksInFlight.clear();
    for (const settle of this.#flushWaiters) settle(new AgentError("SHUTTING_DOWN", "nats: link closed"));
    this.#flushWaiters.clear();
    await nc.close().catch(() => undefined);
  }
}

export function createNatsAgentLink(options: NatsAgentLinkOptions): NatsAgentLink {
  return new NatsAgentLink(options);
}
