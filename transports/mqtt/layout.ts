/**
 * The MQTT topic layout of ironbus (docs/transport-mqtt.md is its prose form). Pure functions, no
 * library: the agent link, the controller link and any other implementation share these names.
 *
 *   to agents:   <prefix>/node/<node>/in   <prefix>/group/<group>/in   <prefix>/fleet/in
 *   from agents: <prefix>/node/<node>/out/<kind>   kind: hello heartbeat result progress event error status
 */
import { AGENT_SENDS, type AgentSends, type BusTarget, type InboundSource } from "../../core/bus.js";

export const DEFAULT_PREFIX = "ironbus/v1";

/** Kinds an agent publishes: what the session sends, plus "status" (online notice and last will). */
export type MqttOutKind = AgentSends | "status";

/** Published retained, so a controller that connects later learns the fleet at once. */
export const RETAINED_KINDS: ReadonlySet<MqttOutKind> = new Set<MqttOutKind>(["hello", "heartbeat", "status"]);

const OUT_KINDS: ReadonlySet<string> = new Set<string>([...AGENT_SENDS, "status"]);

/** A prefix is one or more topic levels without wildcards, without a leading or trailing "/". */
export function validPrefix(prefix: string): boolean {
  return prefix.length > 0 && !/[+#\0]/.test(prefix) && !prefix.startsWith("/") && !prefix.endsWith("/") && !prefix.startsWith("$") && !prefix.includes("//");
}

export function nodeInTopic(prefix: string, node: string): string {
  return `${prefix}/node/${node}/in`;
}

export function groupInTopic(prefix: string, group: string): string {
  return `${prefix}/group/${group}/in`;
}

export function fleetInTopic(prefix: string): string {
  return `${prefix}/fleet/in`;
}

export function targetTopic(prefix: string, target: BusTarget): string {
  if ("node" in target) return nodeInTopic(prefix, target.node);
  if ("group" in target) return groupInTopic(prefix, target.group);
  return fleetInTopic(prefix);
}

export function outTopic(prefix: string, node: string, kind: MqttOutKind): string {
  return `${prefix}/node/${node}/out/${kind}`;
}

/** The one filter a controller subscribes to for everything agents send. */
export function allOutFilter(prefix: string): string {
  return `${prefix}/node/+/out/+`;
}

/** Where an inbound topic of an agent came from; undefined when it is none of the agent's addresses. */
export function parseInTopic(prefix: string, topic: string): { source: InboundSource; name: string } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const parts = topic.slice(prefix.length + 1).split("/");
  if (parts.length === 2 && parts[0] === "fleet" && parts[1] === "in") return { source: "fleet", name: "" };
  if (parts.length === 3 && parts[2] === "in" && parts[1] !== undefined && parts[1] !== "") {
    if (parts[0] === "node") return { source: "node", name: parts[1] };
    if (parts[0] === "group") return { source: "group", name: parts[1] };
  }
  return undefined;
}

/**
 * The sender and kind of a topic under `<prefix>/node/+/out/+`; undefined when the topic is not one.
 * An unknown kind (a newer agent) gives kind undefined: the controller decodes to learn it.
 */
export function parseOutTopic(prefix: string, topic: string): { node: string; kind: MqttOutKind | undefined } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const parts = topic.slice(prefix.length + 1).split("/");
  if (parts.length !== 4 || parts[0] !== "node" || parts[2] !== "out" || !parts[1] || !parts[3]) return undefined;
  const kind = parts[3];
  return { node: parts[1], kind: OUT_KINDS.has(kind) ? (kind as MqttOutKind) : undefined };
}

/** MQTT topic-filter matching ("+" one level, "#" the rest), for the controller's reply filter. */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith("$") && !filter.startsWith("$")) return false;
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === "#") return true;
    if (i >= t.length) return false;
    if (level !== "+" && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** A topic an agent may publish a reply to: a plain topic name that is not any agent's inbound address. */
export function validReplyTopic(prefix: string, topic: string): boolean {
  if (topic.length === 0 || Buffer.byteLength(topic) > 65535 || /[+#\0]/.test(topic) || topic.startsWith("$")) return false;
  return parseInTopic(prefix, topic) === undefined;
}
