/**
 * One way for a controller to reach agents over any transport: the link factory the CLI and
 * embedders use. Transport libraries load only for the transport asked for.
 */
import { readFileSync } from "node:fs";
import type { ControllerLink } from "../core/bus.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";

export type ControllerTransport = "ws" | "mqtt" | "nats" | "rest";

export interface ConnectOptions {
  readonly transport: ControllerTransport;
  /**
   * ws: the hub (ws://host:port); mqtt: the broker (mqtt://host:1883); nats: servers (nats://host:4222,
   * comma separated); rest: node=http://host:9999 pairs, comma separated.
   */
  readonly url: string;
  readonly log: Logger;
  readonly username?: string;
  readonly password?: string;
  /** PEM files for TLS to the broker or hub. */
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  /** NATS creds file or nkey seed file. */
  readonly natsCreds?: string;
  readonly natsNkeySeed?: string;
  /** REST: the agents' token. */
  readonly agentToken?: string;
  readonly connectTimeoutMs?: number;
  /** MQTT: keep a named session so results published while away arrive on return. */
  readonly clientId?: string;
}

function tlsOf(opts: ConnectOptions): { ca?: string; cert?: string; key?: string } | undefined {
  const read = (f: string | undefined): string | undefined => (f === undefined ? undefined : readFileSync(f, "utf8"));
  const ca = read(opts.caFile);
  const cert = read(opts.certFile);
  const key = read(opts.keyFile);
  if (ca === undefined && cert === undefined) return undefined;
  return { ...(ca !== undefined ? { ca } : {}), ...(cert !== undefined ? { cert } : {}), ...(key !== undefined ? { key } : {}) };
}

export async function connectLink(opts: ConnectOptions): Promise<ControllerLink> {
  const tls = tlsOf(opts);
  const common = { log: opts.log, ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}) };
  switch (opts.transport) {
    case "ws": {
      const { WsControllerLink } = await import("../transports/ws/controller-link.js");
      return new WsControllerLink({ url: opts.url, ...common, ...(tls !== undefined ? { tls } : {}) });
    }
    case "mqtt": {
      const { MqttControllerLink } = await import("../transports/mqtt/controller-link.js");
      return new MqttControllerLink({
        url: opts.url,
        ...common,
        ...(opts.username !== undefined ? { username: opts.username } : {}),
        ...(opts.password !== undefined ? { password: opts.password } : {}),
        ...(opts.clientId !== undefined ? { clientId: opts.clientId, persistent: true } : {}),
        ...(tls !== undefined ? { tls } : {}),
      });
    }
    case "nats": {
      const { NatsControllerLink } = await import("../transports/nats/controller-link.js");
      return new NatsControllerLink({
        servers: opts.url.split(",").map((s) => s.trim()),
        ...common,
        ...(opts.username !== undefined ? { user: opts.username } : {}),
        ...(opts.password !== undefined ? { pass: opts.password } : {}),
        ...(opts.natsCreds !== undefined ? { creds: opts.natsCreds } : {}),
        ...(opts.natsNkeySeed !== undefined ? { nkeySeed: opts.natsNkeySeed } : {}),
        ...(tls !== undefined ? { tls } : {}),
      });
    }
    case "rest": {
      const { RestControllerLink } = await import("../transports/rest/controller-link.js");
      const agents: Record<string, { url: string; token?: string }> = {};
      for (const pair of opts.url.split(",")) {
        const eq = pair.indexOf("=");
        if (eq <= 0) throw new AgentError("CONFIG_INVALID", `rest targets are node=http://host:port pairs, got ${JSON.stringify(pair)}`);
        agents[pair.slice(0, eq).trim()] = { url: pair.slice(eq + 1).trim(), ...(opts.agentToken !== undefined ? { token: opts.agentToken } : {}) };
      }
      return new RestControllerLink({ agents, log: opts.log });
    }
    default: {
      const never: never = opts.transport;
      throw new AgentError("CONFIG_INVALID", `unknown transport ${String(never)}`);
    }
  }
}
