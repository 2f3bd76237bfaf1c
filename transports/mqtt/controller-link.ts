/**
 * The controller's end of the MQTT bus (docs/transport-mqtt.md): subscribes QoS 1 to
 * `<prefix>/node/+/out/+` (retained hello, heartbeat and status arrive first) and to an optional reply
 * filter, and sends QoS 1 to node, group and fleet topics. It never decodes an envelope: a message on
 * `.../out/status` (online notice or last will alike) is passed on as kind "status", and `gone` is
 * never called, because only the decoded envelope tells an offline notice from an online one.
 */
import { randomBytes } from "node:crypto";
import type { IClientOptions, IPublishPacket } from "mqtt";
import { BUS_NAME, type BusTarget, type ControllerInbound, type ControllerLink, type ControllerLinkEvents } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import { allOutFilter, parseOutTopic, targetTopic, topicMatches } from "./layout.js";
import { MqttConnection, resolveMqttOptions, type MqttControllerLinkOptions, type MqttProtocolVersion, type ResolvedMqttOptions } from "./options.js";

export type { MqttControllerLinkOptions } from "./options.js";

/** The contract's events plus what only this link reports: its own connection going up and down. */
export interface MqttControllerLinkEvents extends ControllerLinkEvents {
  up?(): void;
  down?(reason: string): void;
}

/** A subscription filter: "+" and "#" only as whole levels, "#" only last. */
function validFilter(filter: string): boolean {
  if (filter.length === 0 || Buffer.byteLength(filter) > 65535 || filter.includes("\0")) return false;
  const levels = filter.split("/");
  return levels.every((level, i) => (level.includes("+") || level.includes("#") ? level === "+" || (level === "#" && i === levels.length - 1) : true));
}

export class MqttControllerLink implements ControllerLink {
  readonly kind = "mqtt";
  readonly clientId: string;
  private readonly options: ResolvedMqttOptions;
  private readonly persistent: boolean;
  private readonly replyTopic: string | undefined;
  private readonly conn: MqttConnection;
  private events: MqttControllerLinkEvents | undefined;

  constructor(options: MqttControllerLinkOptions) {
    this.options = resolveMqttOptions(options);
    this.persistent = options.persistent ?? false;
    if (this.persistent && options.clientId === undefined) throw new AgentError("CONFIG_INVALID", "mqtt: a persistent controller needs a stable clientId");
    if (options.replyTopic !== undefined && !validFilter(options.replyTopic)) throw new AgentError("CONFIG_INVALID", `mqtt: replyTopic ${JSON.stringify(options.replyTopic)} is not a valid topic filter`);
    this.replyTopic = options.replyTopic;
    this.clientId = options.clientId ?? `ironbus-controller-${randomBytes(6).toString("hex")}`;
    this.conn = new MqttConnection(
      this.options,
      this.clientId,
      {
        connectOptions: (version) => this.connectOptions(version),
        ready: (wire) => this.conn.subscribe(wire, this.filters()),
        message: (_wire, packet, ack) => this.message(packet, ack),
        up: () => this.events?.up?.(),
        down: (reason) => this.events?.down?.(reason),
      },
      this.options.log.child({ transport: "mqtt", controller: this.clientId }),
    );
  }

  /** True while connected and subscribed. */
  get connected(): boolean {
    return this.conn.connected;
  }

  open(events: MqttControllerLinkEvents): Promise<void> {
    this.events = events;
    return this.conn.open();
  }

  /** QoS 1 to the target's topic; resolves on PUBACK. `id` is unused: MQTT brokers do not de-duplicate. */
  send(target: BusTarget, bytes: Uint8Array, contentType: string, _id?: string): Promise<void> {
    const name = "node" in target ? target.node : "group" in target ? target.group : undefined;
    if (name !== undefined && !BUS_NAME.test(name)) return Promise.reject(new AgentError("INVALID_REQUEST", `mqtt: target name ${JSON.stringify(name)} must match ${String(BUS_NAME)}`));
    return this.conn.publish(targetTopic(this.options.prefix, target), bytes, contentType, false);
  }

  close(): Promise<void> {
    return this.conn.close();
  }

  private filters(): string[] {
    const all = allOutFilter(this.options.prefix);
    return this.replyTopic === undefined || this.replyTopic === all ? [all] : [all, this.replyTopic];
  }

  private connectOptions(version: MqttProtocolVersion): IClientOptions {
    const expiry = this.persistent ? this.options.sessionExpiryS : 0;
    return { clean: !this.persistent, ...(version === 5 ? { properties: { sessionExpiryInterval: expiry } } : {}) };
  }

  private message(packet: IPublishPacket, ack: () => void): void {
    ack();
    const events = this.events;
    const payload = packet.payload;
    // A zero-length retained message is a deletion, never an envelope.
    if (events === undefined || payload.length === 0) return;
    const bytes = typeof payload === "string" ? Buffer.from(payload) : payload;
    const contentType = packet.properties?.contentType;
    const out = parseOutTopic(this.options.prefix, packet.topic);
    let msg: ControllerInbound;
    if (out !== undefined) msg = { node: out.node, kind: out.kind, bytes, contentType };
    else if (this.replyTopic !== undefined && topicMatches(this.replyTopic, packet.topic)) msg = { node: "", kind: undefined, bytes, contentType };
    else return;
    events.message(msg);
  }
}
