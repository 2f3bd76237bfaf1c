/**
 * The agent's end of the WebSocket bus: one socket to the hub, reopened with backoff until close().
 * Hub → agent frames are [source byte][envelope]; agent → hub frames are [kind byte][envelope]; a text
 * frame carries a JSON envelope, a binary frame a protobuf one (docs/transport-ws.md). `ws` is loaded
 * on open() only.
 */
import { isUtf8 } from "node:buffer";
import { type AgentInbound, type AgentLink, type AgentLinkEvents, type AgentSends, BUS_NAME } from "../../core/bus.js";
import { formatOf, sniffFormat } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import {
  AGENT_PATH,
  CLOSE_REPLACED,
  ReconnectingClient,
  type WsClientOptions,
  contentTypeOfFormat,
  isControlByte,
  joinUrl,
  kindCode,
  prefixed,
  sourceOfCode,
} from "./frames.js";

export type { WsTlsOptions } from "./frames.js";

export interface WsAgentLinkOptions extends WsClientOptions {
  /** The node id; a BUS_NAME token. */
  readonly node: string;
  /** Groups to receive messages for (BUS_NAME tokens); setGroups() replaces them. */
  readonly groups?: readonly string[] | undefined;
}

function checkName(what: string, name: string): void {
  if (!BUS_NAME.test(name)) throw new AgentError("CONFIG_INVALID", `ws link: invalid ${what} name ${JSON.stringify(name)} (expected ${BUS_NAME.source})`);
}

export class WsAgentLink implements AgentLink {
  readonly kind = "ws";
  readonly node: string;
  private groups: readonly string[];
  private readonly log: Logger;
  private readonly options: WsAgentLinkOptions;
  private readonly client: ReconnectingClient;
  private events: AgentLinkEvents | undefined;
  /** Connection generation, so an ack() for a message of an earlier connection does nothing. */
  private gen = 0;
  /** Messages received on the current connection. */
  private received = 0;
  /** All of messages 1..acked of the current connection are acknowledged. */
  private acked = 0;
  private ackedSent = 0;
  private readonly ackedAhead = new Set<number>();
  private ackFlush: NodeJS.Immediate | undefined;
  /** setGroups() calls waiting for the hub's echo, in order. */
  private readonly groupWaiters: Array<() => void> = [];

  constructor(options: WsAgentLinkOptions) {
    this.node = options.node;
    this.options = options;
    this.groups = [...(options.groups ?? [])];
    this.log = options.log.child({ transport: "ws", node: options.node });
    this.client = new ReconnectingClient({ ...options, log: this.log }, {
      url: () => this.url(),
      onOpen: () => this.onOpen(),
      onMessage: (data, isBinary) => this.onMessage(data, isBinary),
      onClose: (code, _reason, description) => this.onClose(code, description),
    }, "ws agent link");
  }

  get connected(): boolean {
    return this.client.connected;
  }

  async open(events: AgentLinkEvents): Promise<void> {
    checkName("node", this.node);
    for (const g of this.groups) checkName("group", g);
    this.url();
    this.events = events;
    await this.client.open();
  }

  /**
   * Replaces the groups: sent to the hub as a `groups a,b` control frame on the live connection (no
   * reconnect, no down/up) and used in the URL of every later connection. Resolves once the hub has
   * applied them (its echo of the frame), or at once while disconnected (the next connection's URL
   * carries them); a connection lost while waiting resolves it too, for the same reason.
   */
  async setGroups(groups: readonly string[]): Promise<void> {
    for (const g of groups) checkName("group", g);
    const next = [...new Set(groups)];
    if (next.length === this.groups.length && next.every((g, i) => g === this.groups[i])) return;
    this.groups = next;
    if (!this.client.connected) return; // the next connection's URL carries them
    let timer: NodeJS.Timeout | undefined;
    const applied = new Promise<void>((resolve) => {
      this.groupWaiters.push(resolve);
      timer = setTimeout(() => {
        this.log.warn("the hub did not confirm the group change in time");
        resolve();
      }, this.options.connectTimeoutMs ?? 10_000);
    });
    // A failed send means the connection is going: the next one's URL carries the groups.
    await this.client.send(`groups ${next.join(",")}`, false).catch(() => undefined);
    await applied;
    clearTimeout(timer);
  }

  publish(kind: AgentSends, bytes: Uint8Array, contentType: string, _replyTo?: string): Promise<void> {
    // replyTo is ignored: the hub routes everything an agent sends to every attached controller.
    if (bytes.byteLength > this.client.maxMessageBytes) {
      return Promise.reject(new AgentError("MESSAGE_TOO_LARGE", `message of ${bytes.byteLength} bytes exceeds the limit of ${this.client.maxMessageBytes}`));
    }
    const format = formatOf(contentType) ?? sniffFormat(bytes);
    // A JSON envelope goes in a text frame: invalid UTF-8 would make the hub close the socket on every retry.
    if (format === "json" && !isUtf8(bytes)) return Promise.reject(new AgentError("INVALID_ENVELOPE", "a JSON envelope must be UTF-8"));
    return this.client.send(prefixed(kindCode(kind), bytes), format === "protobuf");
  }

  async close(): Promise<void> {
    this.flushAcks();
    this.releaseGroupWaiters();
    await this.client.close();
    this.events = undefined;
  }

  private url(): string {
    return joinUrl(this.options.url, AGENT_PATH + this.node, this.groups.length > 0 ? { groups: this.groups.join(",") } : {});
  }

  private onOpen(): void {
    this.gen += 1;
    this.received = 0;
    this.acked = 0;
    this.ackedSent = 0;
    this.ackedAhead.clear();
    this.log.info({ groups: this.groups }, "connected to the ws hub");
    this.events?.up();
  }

  private releaseGroupWaiters(): void {
    for (const w of this.groupWaiters.splice(0)) w();
  }

  private onClose(code: number, description: string): number | undefined {
    this.releaseGroupWaiters();
    if (this.ackFlush !== undefined) clearImmediate(this.ackFlush);
    this.ackFlush = undefined;
    this.log.warn({ code, reason: description }, "ws hub connection lost");
    try {
      this.events?.down(`ws ${description}`);
    } catch (err) {
      this.log.error({ err }, "down listener threw");
    }
    if (code === CLOSE_REPLACED) {
      // Another live process uses this node id: do not fight over it at the fastest pace.
      this.log.error("another connection for this node replaced this one; is the node id used twice?");
      return this.options.reconnectMaxMs ?? 30_000;
    }
    return undefined;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (!isBinary && isControlByte(data[0])) {
      // Hub control frames are not messages: they are not counted for acks.
      const text = data.toString("utf8");
      if (text === "groups" || text.startsWith("groups ")) this.groupWaiters.shift()?.();
      else this.log.warn({ frame: text.slice(0, 64) }, "unknown control frame from the hub; ignored");
      return;
    }
    this.received += 1;
    const index = this.received;
    const gen = this.gen;
    const source = sourceOfCode(data[0]);
    if (source === undefined) {
      this.log.warn({ byte: data[0] }, "hub sent a frame with an unknown source code; ignored");
      this.ack(gen, index);
      return;
    }
    const msg: AgentInbound = {
      bytes: data.subarray(1),
      contentType: contentTypeOfFormat(isBinary ? "protobuf" : "json"),
      source,
      ack: () => this.ack(gen, index),
    };
    this.events?.message(msg);
  }

  /** Cumulative acknowledgements: `ack n` once every message 1..n of this connection is acked. */
  private ack(gen: number, index: number): void {
    if (gen !== this.gen || index <= this.acked) return;
    this.ackedAhead.add(index);
    while (this.ackedAhead.delete(this.acked + 1)) this.acked += 1;
    if (this.acked > this.ackedSent && this.ackFlush === undefined) {
      this.ackFlush = setImmediate(() => this.flushAcks());
    }
  }

  private flushAcks(): void {
    if (this.ackFlush !== undefined) clearImmediate(this.ackFlush);
    this.ackFlush = undefined;
    if (this.acked > this.ackedSent && this.client.sendNow(`ack ${this.acked}`)) this.ackedSent = this.acked;
  }
}
