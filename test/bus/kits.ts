/**
 * One "kit" per bus: a real broker (mosquitto, nats-server) or hub (ours) the test can stop and start,
 * and the links that reach it. The reliability tests and the bus conformance files use these.
 */
import type { TestContext } from "node:test";
import type { AgentLink, ControllerLink } from "../../core/bus.js";
import type { Logger } from "../../core/log.js";
import { MqttAgentLink } from "../../transports/mqtt/agent-link.js";
import { MqttControllerLink } from "../../transports/mqtt/controller-link.js";
import { NatsAgentLink } from "../../transports/nats/agent-link.js";
import { NatsControllerLink } from "../../transports/nats/controller-link.js";
import { WsAgentLink } from "../../transports/ws/agent-link.js";
import { WsHub } from "../../transports/ws/hub.js";
import { startMosquitto } from "../helpers/mosquitto.js";
import { startNatsServer } from "../helpers/nats-server.js";

export interface Broker {
  /** Where agents dial it (ws://, mqtt://, nats://). */
  readonly url: string;
  /** Stops the broker or hub (its clients lose their connections). */
  stop(): Promise<void>;
  /** Starts it again on the same port, with what it had kept. */
  start(): Promise<void>;
  agentLink(node: string, log: Logger, groups?: readonly string[], connectTimeoutMs?: number): AgentLink;
  /** `name` makes a durable controller session where the bus has one (MQTT). */
  controllerLink(log: Logger, name?: string): ControllerLink;
  dispose(): Promise<void>;
}

export interface Kit {
  readonly name: string;
  start(t: Pick<TestContext, "after"> | undefined, log: Logger): Promise<Broker>;
}

const FAST = { reconnectMinMs: 50, reconnectMaxMs: 400, connectTimeoutMs: 10_000 };

export const wsKit: Kit = {
  name: "ws",
  async start(_t, log) {
    const hub = new WsHub();
    await hub.start({ host: "127.0.0.1", port: 0, log, pingIntervalMs: 1000 });
    const { port } = hub.address();
    const url = `ws://127.0.0.1:${port}`;
    return {
      url,
      stop: () => hub.stop(),
      start: () => hub.start({ host: "127.0.0.1", port, log, pingIntervalMs: 1000 }),
      agentLink: (node, l, groups, connectTimeoutMs) => new WsAgentLink({ url, node, log: l, groups, pingIntervalMs: 1000, ...FAST, ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}) }),
      // The in-process link survives the hub's restarts: it is the hub's own controller.
      controllerLink: () => hub.link(),
      dispose: () => hub.stop(),
    };
  },
};

export const mqttKit: Kit = {
  name: "mqtt",
  async start(t) {
    const broker = await startMosquitto(t);
    return {
      url: broker.url,
      stop: () => broker.stop(),
      start: () => broker.start(),
      agentLink: (node, log, groups, connectTimeoutMs) =>
        new MqttAgentLink({ url: broker.url, node, log, groups: groups ?? [], keepaliveS: 5, ...FAST, ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}) }),
      controllerLink: (log, name) => new MqttControllerLink({ url: broker.url, log, keepaliveS: 5, ...FAST, ...(name !== undefined ? { clientId: name, persistent: true } : {}) }),
      dispose: () => broker.dispose(),
    };
  },
};

export const natsKit: Kit = {
  name: "nats",
  async start(t) {
    const server = await startNatsServer(t);
    return {
      url: server.url,
      stop: () => server.kill(),
      start: () => server.start(),
      agentLink: (node, log, groups, connectTimeoutMs) =>
        new NatsAgentLink({ servers: server.url, node, log, groups: groups ?? [], pingIntervalMs: 1000, ...FAST, ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}) }),
      controllerLink: (log) => new NatsControllerLink({ servers: server.url, log, pingIntervalMs: 1000, ...FAST }),
      // nats.js 3.4 can still write on a socket it has just ended (ERR_STREAM_WRITE_AFTER_END, uncaught)
      // when the server goes at that moment: let closed clients settle before the server goes.
      dispose: async () => {
        await new Promise((r) => setTimeout(r, 250));
        await server.dispose();
      },
    };
  },
};

export const KITS: readonly Kit[] = [wsKit, mqttKit, natsKit];
