/**
 * The agent's end of the MQTT bus (docs/transport-mqtt.md): a persistent session under
 * `ironbus-agent-<node>`, subscribed QoS 1 to its node, its groups and the fleet; PUBACKs leave only
 * when the session acks a message; hello, heartbeat and status are published retained; a retained
 * last will on `.../out/status` tells controllers the agent is gone.
 */
import type { IClientOptions, IPublishPacket } from "mqtt";
import { BUS_NAME, type AgentInbound, type AgentLink, type AgentLinkEvents, type AgentSends } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { fleetInTopic, groupInTopic, nodeInTopic, outTopic, parseInTopic, RETAINED_KINDS, validReplyTopic } from "./layout.js";
import { MqttConnection, resolveMqttOptions, type MqttAgentLinkOptions, type MqttPayload, type MqttProtocolVersion, type MqttWire, type ResolvedMqttOptions } from "./options.js";

export type { MqttAgentLinkOptions } from "./options.js";

function checkName(what: string, name: string): void {
  if (!BUS_NAME.test(name)) throw new AgentError("CONFIG_INVALID", `mqtt: ${what} name ${JSON.stringify(name)} must match ${String(BUS_NAME)}`);
}

export class MqttAgentLink implements AgentLink {
  readonly kind = "mqtt";
  readonly node: string;
  private groups: readonly string[];
  private readonly options: ResolvedMqttOptions;
  private readonly will: MqttPayload | undefined;
  private readonly online: MqttPayload | undefined;
  private readonly statusTopic: string;
  private readonly log: Logger;
  private readonly conn: MqttConnection;
  private events: AgentLinkEvents | undefined;

  constructor(options: MqttAgentLinkOptions) {
    checkName("node", options.node);
    const groups = [...new Set(options.groups ?? [])];
    for (const group of groups) checkName("group", group);
    this.node = options.node;
    this.groups = groups;
    this.options = resolveMqttOptions(options);
    this.will = options.will;
    this.online = options.online;
    this.statusTopic = outTopic(this.options.prefix, options.node, "status");
    this.log = this.options.log.child({ transport: "mqtt", node: options.node });
    this.conn = new MqttConnection(
      this.options,
      options.clientId ?? `ironbus-agent-${options.node}`,
      {
        connectOptions: (version) => this.connectOptions(version),
        ready: (wire) => this.ready(wire),
        message: (wire, packet, ack) => this.message(wire, packet, ack),
        up: () => this.events?.up(),
        down: (reason) => this.events?.down(reason),
      },
      this.log,
    );
  }

  get connected(): boolean {
    return this.conn.connected;
  }

  open(events: AgentLinkEvents): Promise<void> {
    this.events = events;
    return this.conn.open();
  }

  async setGroups(groups: readonly string[]): Promise<void> {
    const next = [...new Set(groups)];
    for (const group of next) checkName("group", group);
    const prefix = this.options.prefix;
    const removed = this.groups.filter((g) => !next.includes(g)).map((g) => groupInTopic(prefix, g));
    const added = next.filter((g) => !this.groups.includes(g)).map((g) => groupInTopic(prefix, g));
    this.groups = next;
    const wire = this.conn.currentWire;
    // While down there is nothing to do: the next connection subscribes to the new list, and a
    // message still arriving for a dropped group (a persistent session remembers it) is filtered.
    if (wire === undefined) return;
    try {
      await Promise.all([this.conn.subscribe(wire, added), this.conn.unsubscribe(wire, removed)]);
    } catch (err) {
      if (!wire.closed) throw AgentError.from(err);
    }
  }

  publish(kind: AgentSends, bytes: Uint8Array, contentType: string, replyTo?: string): Promise<void> {
    const prefix = this.options.prefix;
    let topic = outTopic(prefix, this.node, kind);
    let retain = RETAINED_KINDS.has(kind);
    if (replyTo !== undefined && replyTo !== "") {
      if (validReplyTopic(prefix, replyTo)) {
        topic = replyTo;
        retain = false;
      } else {
        this.log.warn({ replyTo }, "mqtt: reply_to is not a topic an agent may publish to; using the default address");
      }
    }
    return this.conn.publish(topic, bytes, contentType, retain);
  }

  /** Publishes the offline status (the will, which a clean DISCONNECT does not trigger), then disconnects. */
  close(): Promise<void> {
    const will = this.will;
    return this.conn.close(will === undefined ? undefined : (wire) => this.conn.publishOn(wire, this.statusTopic, will.bytes, will.contentType, true));
  }

  private connectOptions(version: MqttProtocolVersion): IClientOptions {
    const will = this.will;
    return {
      clean: false,
      ...(version === 5 ? { properties: { sessionExpiryInterval: this.options.sessionExpiryS } } : {}),
      ...(will === undefined
        ? {}
        : {
            will: {
              topic: this.statusTopic,
              payload: Buffer.from(will.bytes),
              qos: 1,
              retain: true,
              ...(version === 5 ? { properties: { contentType: will.contentType } } : {}),
            },
          }),
    };
  }

  private async ready(wire: MqttWire): Promise<void> {
    const prefix = this.options.prefix;
    const topics = [nodeInTopic(prefix, this.node), ...this.groups.map((g) => groupInTopic(prefix, g)), fleetInTopic(prefix)];
    const online = this.online;
    await Promise.all([
      this.conn.subscribe(wire, topics),
      online === undefined ? undefined : this.conn.publishOn(wire, this.statusTopic, online.bytes, online.contentType, true),
    ]);
  }

  private message(wire: MqttWire, packet: IPublishPacket, ack: () => void): void {
    const events = this.events;
    const topic = packet.topic;
    const where = parseInTopic(this.options.prefix, topic);
    const mine =
      where !== undefined &&
      (where.source === "fleet" || (where.source === "node" && where.name === this.node) || (where.source === "group" && this.groups.includes(where.name)));
    if (!mine || events === undefined) {
      ack();
      this.log.debug({ topic }, "mqtt: dropped a message on a topic this link no longer listens to");
      // A group left while offline stays in the broker's persistent session until unsubscribed.
      if (where?.source === "group" && !this.groups.includes(where.name)) {
        this.conn.unsubscribe(wire, [topic]).catch(() => undefined);
      }
      return;
    }
    const payload = packet.payload;
    const inbound: AgentInbound = {
      bytes: typeof payload === "string" ? Buffer.from(payload) : payload,
      contentType: packet.properties?.contentType,
      source: where.source,
      ack,
    };
    events.message(inbound);
  }
}
