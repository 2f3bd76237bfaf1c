/**
 * The NATS layout of the bus (docs/transport-nats.md): subjects, streams and consumer names. Pure
 * functions, no NATS library: the agent link, the controller link and anything else that speaks
 * this layout (another implementation, a test, an operator's tool) derive every name from here.
 *
 *   to agents     <prefix>.in.node.<node> | <prefix>.in.group.<group> | <prefix>.in.fleet
 *                 stream IRONBUS_IN captures <prefix>.in.>
 *   from agents   <prefix>.out.<node>.<kind>   kind: hello heartbeat result progress event error status
 *                 stream IRONBUS_STATE captures <prefix>.out.*.{hello,heartbeat,status}, 1 per subject
 */
import { AGENT_SENDS, BUS_NAME, type AgentSends, type BusTarget, type InboundSource } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";

export const DEFAULT_PREFIX = "ironbus.v1";
export const DEFAULT_IN_STREAM = "IRONBUS_IN";
export const DEFAULT_STATE_STREAM = "IRONBUS_STATE";
/** Commands older than this are dropped from IRONBUS_IN (and never delivered). */
export const DEFAULT_MAX_AGE_S = 24 * 3600;
/** JetStream's de-duplication window on IRONBUS_IN (Nats-Msg-Id = envelope id). */
export const DUPLICATE_WINDOW_S = 120;
/** The NATS header that carries the envelope's content type. */
export const CONTENT_TYPE_HEADER = "Content-Type";

/** What an agent sends, by address: the envelope kinds plus "status" (online/offline notices). */
export type OutKind = AgentSends | "status";
export const OUT_KINDS: readonly OutKind[] = [...AGENT_SENDS, "status"];
/** The kinds IRONBUS_STATE keeps (the latest one per node). */
export const STATE_KINDS = ["hello", "heartbeat", "status"] as const satisfies readonly OutKind[];

/** One or more dot-separated tokens, no wildcards, no whitespace. */
const PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
/** JetStream stream names: one token, no path separators. */
const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

export interface NatsLayout {
  readonly prefix: string;
  readonly inStream: string;
  readonly stateStream: string;
}

export interface NatsLayoutOptions {
  readonly prefix?: string | undefined;
  readonly inStream?: string | undefined;
  readonly stateStream?: string | undefined;
}

/** The layout with defaults filled in; CONFIG_INVALID for a bad prefix or stream name. */
export function natsLayout(options: NatsLayoutOptions = {}): NatsLayout {
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  const inStream = options.inStream ?? DEFAULT_IN_STREAM;
  const stateStream = options.stateStream ?? DEFAULT_STATE_STREAM;
  if (!PREFIX.test(prefix)) throw new AgentError("CONFIG_INVALID", `nats: bad subject prefix ${JSON.stringify(prefix)}`);
  for (const name of [inStream, stateStream]) {
    if (!STREAM_NAME.test(name)) throw new AgentError("CONFIG_INVALID", `nats: bad stream name ${JSON.stringify(name)}`);
  }
  if (inStream === stateStream) throw new AgentError("CONFIG_INVALID", "nats: the two streams need different names");
  return { prefix, inStream, stateStream };
}

/** CONFIG_INVALID unless `name` is one safe token (core/bus.ts BUS_NAME). */
export function checkBusName(what: "node" | "group", name: string): string {
  if (!BUS_NAME.test(name)) throw new AgentError("CONFIG_INVALID", `nats: bad ${what} name ${JSON.stringify(name)}`);
  return name;
}

export function nodeSubject(layout: NatsLayout, node: string): string {
  return `${layout.prefix}.in.node.${node}`;
}

export function groupSubject(layout: NatsLayout, group: string): string {
  return `${layout.prefix}.in.group.${group}`;
}

export function fleetSubject(layout: NatsLayout): string {
  return `${layout.prefix}.in.fleet`;
}

/** What IRONBUS_IN captures. */
export function inStreamSubjects(layout: NatsLayout): string[] {
  return [`${layout.prefix}.in.>`];
}

/** The subject a controller sends to for a target. */
export function targetSubject(layout: NatsLayout, target: BusTarget): string {
  if ("node" in target) return nodeSubject(layout, checkBusName("node", target.node));
  if ("group" in target) return groupSubject(layout, checkBusName("group", target.group));
  return fleetSubject(layout);
}

export function outSubject(layout: NatsLayout, node: string, kind: OutKind): string {
  return `${layout.prefix}.out.${node}.${kind}`;
}

/** Everything every agent sends (the controller's live subscription). */
export function outWildcard(layout: NatsLayout): string {
  return `${layout.prefix}.out.*.*`;
}

/** What IRONBUS_STATE captures. */
export function stateStreamSubjects(layout: NatsLayout): string[] {
  return STATE_KINDS.map((kind) => `${layout.prefix}.out.*.${kind}`);
}

/** Node and kind from a `<prefix>.out.<node>.<kind>` subject; kind undefined when it is not one we know. */
export function parseOutSubject(
  layout: NatsLayout,
  subject: string,
): { readonly node: string; readonly kind: OutKind | undefined } | undefined {
  const head = `${layout.prefix}.out.`;
  if (!subject.startsWith(head)) return undefined;
  const rest = subject.slice(head.length).split(".");
  if (rest.length !== 2) return undefined;
  const [node, kind] = rest as [string, string];
  if (!BUS_NAME.test(node)) return undefined;
  return { node, kind: (OUT_KINDS as readonly string[]).includes(kind) ? (kind as OutKind) : undefined };
}

/**
 * Durable consumer names. BUS_NAME allows "-", so `ironbus-<node>-g-<group>` could be the node
 * consumer of a node called `<node>-g-<group>`: the derived names use "~", which no node or group
 * name may contain (and which JetStream allows in a consumer name).
 */
export function nodeConsumer(node: string): string {
  return `ironbus-${node}`;
}

export function groupConsumer(node: string, group: string): string {
  return `ironbus-${node}~g~${group}`;
}

export function fleetConsumer(node: string): string {
  return `ironbus-${node}~fleet`;
}

/** The consumer of a node for one source (group needed for "group"). */
export function consumerFor(node: string, source: InboundSource, group?: string): string {
  if (source === "node") return nodeConsumer(node);
  if (source === "fleet") return fleetConsumer(node);
  if (group === undefined) throw new AgentError("INTERNAL", "nats: group consumer without a group");
  return groupConsumer(node, group);
}
