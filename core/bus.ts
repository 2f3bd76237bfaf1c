/**
 * Contracts of the bus transports (WebSocket, MQTT, NATS): the thin "link" each transport implements
 * on the agent side and on the controller side. A link moves envelope bytes between one agent and its
 * broker or hub; it never decodes an envelope and never knows what a command does. Everything above a
 * link (announce, join, heartbeats, the outbox that keeps results while the link is down, waiting
 * for the hardware lock, fleet commands) is written once, in transports/bus/ and controller/.
 *
 * No library type appears here.
 */

/** Envelope kinds an agent sends; each has its own address on every bus (see docs/transports.md). */
export const AGENT_SENDS = ["hello", "heartbeat", "result", "progress", "event", "error"] as const;
export type AgentSends = (typeof AGENT_SENDS)[number];

/** Where a message to agents goes: one node, every member of a group, or the whole fleet. */
export type BusTarget = { readonly node: string } | { readonly group: string } | { readonly fleet: true };

/** How a message reached the agent, so the agent can apply the right token rule. */
export type InboundSource = "node" | "group" | "fleet";

/** One message a link delivered to the agent. */
export interface AgentInbound {
  readonly bytes: Uint8Array;
  /** The wire's content type when it has one (MQTT 5 property, NATS header); undefined: sniff. */
  readonly contentType: string | undefined;
  readonly source: InboundSource;
  /**
   * Tells the broker the message is safe with the agent (MQTT PUBACK, JetStream ack). The session
   * calls it once the command is recorded (or refused with an answer); a message never acked is
   * redelivered after a reconnect. A no-op where the wire has no acknowledgements.
   */
  ack(): void;
}

export interface AgentLinkEvents {
  message(msg: AgentInbound): void;
  /** Connected (again) and subscribed: the session announces itself and flushes what it kept. */
  up(): void;
  /** The connection is gone; the link reconnects on its own (backoff with jitter) until closed. */
  down(reason: string): void;
}

/** The agent's end of a bus: one connection, reconnecting by itself, subscribed for one node. */
export interface AgentLink {
  /** "ws", "mqtt", "nats" */
  readonly kind: string;
  /** The node id this link is subscribed for. */
  readonly node: string;
  /**
   * Starts connecting and subscribes for the node, its groups and the fleet. Resolves once the first
   * connection is up, rejects when it cannot be made before the link's connect timeout (the link
   * keeps no background work after a rejection).
   */
  open(events: AgentLinkEvents): Promise<void>;
  /** Replaces the groups the link listens to (a join answer may assign them). */
  setGroups(groups: readonly string[]): Promise<void>;
  /**
   * Sends one envelope the agent produced, to the address for its kind or to `replyTo` when the
   * command named one. Resolves once the broker or hub has taken it (QoS 1 PUBACK, flushed NATS
   * publish, ws send callback); rejects when the link is down or the send failed, and the caller
   * keeps the message to send again.
   */
  publish(kind: AgentSends, bytes: Uint8Array, contentType: string, replyTo?: string): Promise<void>;
  /** True while connected. */
  readonly connected: boolean;
  close(): Promise<void>;
}

/** One message a controller link delivered: something an agent sent. */
export interface ControllerInbound {
  /** The sending node, from the address the message came on. */
  readonly node: string;
  /** The kind, where the address tells it ("status": the broker's last will or the hub's close notice); undefined: decode to learn it. */
  readonly kind: AgentSends | "status" | undefined;
  readonly bytes: Uint8Array;
  readonly contentType: string | undefined;
}

export interface ControllerLinkEvents {
  message(msg: ControllerInbound): void;
  /** The broker says the agent's connection is gone (MQTT last will, hub saw the socket close). */
  gone?(node: string, reason: string): void;
}

/** The controller's end of a bus. */
export interface ControllerLink {
  readonly kind: string;
  /**
   * Connects and subscribes to what agents send. Where the bus keeps the latest hello and heartbeat
   * of each node (MQTT retained messages, a NATS stream with one message per subject, the hub's
   * memory), those are delivered first, so a fresh controller knows the fleet at once.
   */
  open(events: ControllerLinkEvents): Promise<void>;
  /**
   * Sends an envelope to agents. Durable where the bus allows: a command to a node that is offline
   * is delivered when it comes back (MQTT persistent session QoS 1, JetStream, the hub's queue).
   * Resolves once the broker or hub has taken it; rejects when it has not (the caller sends again:
   * the envelope id makes a repeat harmless). `id` is the envelope id, for brokers that de-duplicate
   * (JetStream's Nats-Msg-Id).
   */
  send(target: BusTarget, bytes: Uint8Array, contentType: string, id?: string): Promise<void>;
  close(): Promise<void>;
}

/** Reconnect delay: exponential from `minMs` to `maxMs`, with full jitter, so a broker restart does not become a storm. */
export function backoffMs(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(minMs / 2 + random() * Math.max(0, ceiling - minMs / 2));
}

/** Node and group names are used in topics and subjects: keep them to one safe token. */
export const BUS_NAME = /^[A-Za-z0-9_-]{1,128}$/;
