/**
 * The bus side of the composition root: the node id, what the agent announces (hello), and one
 * BusTransport per configured bus (ws, mqtt, nats), each over its link. Transport libraries are
 * imported only for the buses configured, so a REST-only agent never loads them.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { AgentLink } from "../core/bus.js";
import type { CommandContext } from "../core/command.js";
import type { AgentConfig } from "../core/config.js";
import type { Envelope, HelloBody, JsonObject } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { Transport } from "../core/transport.js";
import { busTransport, statusEnvelope } from "../transports/bus/session.js";
import { encodeEnvelope, CONTENT_TYPES } from "../core/codec.js";
import type { Utilities } from "../utilities/index.js";
import { execRunner } from "../utilities/exec.js";
import { collectInterfaces } from "../utilities/inventory/net.js";
import { HostFs } from "../utilities/inventory/sysfs.js";
import type { Inventory } from "../utilities/inventory/schema.js";

/** A command context for manager calls the agent makes on its own (inspection, hello), outside any command. */
export function internalContext(log: Logger, signal: AbortSignal | undefined, name: string): CommandContext {
  return {
    id: randomUUID(),
    name,
    signal: signal ?? new AbortController().signal,
    log,
    progress: () => undefined,
    invoke: () => Promise.reject(new AgentError("INTERNAL", `commands cannot be invoked from ${name}`)),
  };
}

export const BUSES = ["ws", "mqtt", "nats"] as const;

export function wantsBus(config: AgentConfig): boolean {
  return config.transports.some((t) => t !== "rest");
}

/** The node id: configured, else the boot interface's MAC, else the first MAC, else the hostname. */
export async function nodeId(config: AgentConfig, log: Logger): Promise<string> {
  if (config.node !== undefined) return config.node;
  let macs: string[] = [];
  try {
    macs = (await collectInterfaces({ run: execRunner, fs: new HostFs("/"), signal: undefined, timeoutMs: 10_000 })).map((i) => i.mac_address).filter((m): m is string => typeof m === "string");
  } catch (err) {
    log.warn({ err }, "could not list interfaces for the node id");
  }
  const mac = config.bootInterface ?? macs[0];
  const id = (mac ?? hostname()).replace(/[^A-Za-z0-9_-]/g, "").slice(0, 128);
  if (id === "") throw new AgentError("CONFIG_INVALID", "no node id: set --node");
  return id;
}

/** The hello's inventory summary: the facts fleet commands select on (docs/transports.md). */
export function summarize(inv: Inventory): JsonObject {
  return {
    cpu: { count: inv.cpu.count, architecture: inv.cpu.architecture, model_name: inv.cpu.model_name },
    memory_mb: inv.memory.physical_mb ?? (inv.memory.total === null ? null : Math.round(inv.memory.total / 2 ** 20)),
    disks: { count: inv.disks.length, total_bytes: inv.disks.reduce((n, d) => n + d.size, 0) },
    system_vendor: { manufacturer: inv.system_vendor.manufacturer, product_name: inv.system_vendor.product_name, serial_number: inv.system_vendor.serial_number },
    boot_mode: inv.boot.current_boot_mode,
  };
}

/** What the agent announces: MACs, hostname and the inventory summary (collected once). */
export function helloSource(utilities: Utilities, log: Logger): () => Promise<Omit<HelloBody, "transports" | "version">> {
  let cached: Promise<Omit<HelloBody, "transports" | "version">> | undefined;
  return () => {
    cached ??= (async () => {
      try {
        const inv = (await utilities.registry.dispatch("list_hardware_info", { node: null, ports: [], args: {}, ctx: internalContext(log, undefined, "bus.hello") })) as Inventory;
        return { macs: inv.interfaces.map((i) => i.mac_address).filter((m): m is string => typeof m === "string"), hostname: inv.hostname, summary: summarize(inv) };
      } catch (err) {
        log.warn({ err }, "inventory for the hello failed; announcing without it");
        cached = undefined;
        return { macs: [], hostname: hostname(), summary: {} };
      }
    })();
    return cached;
  };
}

function readPem(file: string | undefined): string | undefined {
  return file === undefined ? undefined : readFileSync(file, "utf8");
}

/** The configured bus transports, each over its link. */
export async function busTransports(config: AgentConfig, log: Logger, node: string): Promise<Transport[]> {
  const out: Transport[] = [];
  const status = (online: boolean): { bytes: Uint8Array; contentType: string } =>
    statusEnvelope(node, online, (env: Envelope) => ({ bytes: encodeEnvelope(env, config.busFormat), contentType: CONTENT_TYPES[config.busFormat] }));
  const ca = readPem(config.busCaFile);
  const cert = readPem(config.busCertFile);
  const key = readPem(config.busKeyFile);
  const tls = { ...(ca !== undefined ? { ca } : {}), ...(cert !== undefined ? { cert } : {}), ...(key !== undefined ? { key } : {}) };
  const hasTls = ca !== undefined || cert !== undefined;
  const connectTimeoutMs = config.busConnectTimeoutS * 1000;
  for (const kind of BUSES) {
    if (!config.transports.includes(kind)) continue;
    let link: AgentLink;
    if (kind === "ws") {
      if (config.wsUrl === undefined) throw new AgentError("CONFIG_INVALID", "transport ws needs wsUrl");
      const { WsAgentLink } = await import("../transports/ws/agent-link.js");
      link = new WsAgentLink({ url: config.wsUrl, node, groups: config.groups, log, connectTimeoutMs, maxMessageBytes: config.maxMessageBytes, ...(hasTls ? { tls } : {}) });
    } else if (kind === "mqtt") {
      if (config.mqttUrl === undefined) throw new AgentError("CONFIG_INVALID", "transport mqtt needs mqttUrl");
      const { MqttAgentLink } = await import("../transports/mqtt/agent-link.js");
      link = new MqttAgentLink({
        url: config.mqttUrl,
        node,
        groups: config.groups,
        log,
        protocolVersion: config.mqttProtocolVersion,
        connectTimeoutMs,
        will: status(false),
        online: status(true),
        ...(config.busUsername !== undefined ? { username: config.busUsername } : {}),
        ...(config.busPassword !== undefined ? { password: config.busPassword } : {}),
        ...(hasTls ? { tls } : {}),
      });
    } else {
      if (config.natsUrl.length === 0) throw new AgentError("CONFIG_INVALID", "transport nats needs natsUrl");
      const { NatsAgentLink } = await import("../transports/nats/agent-link.js");
      link = new NatsAgentLink({
        servers: config.natsUrl,
        node,
        groups: config.groups,
        log,
        connectTimeoutMs,
        broadcast: config.natsBroadcast,
        online: status(true),
        offline: status(false),
        ...(config.busUsername !== undefined ? { user: config.busUsername } : {}),
        ...(config.busPassword !== undefined ? { pass: config.busPassword } : {}),
        ...(config.natsCredsFile !== undefined ? { creds: config.natsCredsFile } : {}),
        ...(config.natsNkeySeedFile !== undefined ? { nkeySeed: config.natsNkeySeedFile } : {}),
        ...(hasTls ? { tls } : {}),
      });
    }
    out.push(busTransport(link, config, log));
  }
  return out;
}
