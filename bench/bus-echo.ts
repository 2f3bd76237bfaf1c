/**
 * The bare baselines of the bus benchmark (bench/bus.ts): one responder process per transport that
 * answers every request with the same bytes, through the same client library and the same delivery
 * guarantees as the agent's link, and nothing else (no envelope decoding, no agent):
 *
 *   ws         `ws` client dialling the bench's own WebSocket server; every frame is echoed as it came
 *              (text stays text). The agent's link: the same library, one socket to the hub.
 *   mqtt       mqtt.js, MQTT 5, TCP_NODELAY, subscribed QoS 1 to `bench/echo/in`, answering QoS 1 on
 *              `bench/echo/out` with a content-type property. The agent's link: QoS 1 both ways.
 *   nats-js    JetStream, as the NATS links use it: the requester publishes to stream BENCH_ECHO
 *              (file storage, limits retention, de-dup window, Nats-Msg-Id); this responder pulls
 *              from a durable consumer (explicit ack, 64 per pull), acks, and core-publishes the
 *              answer with a Content-Type header to `bench.echo.out`.
 *   nats-core  plain NATS request/reply (`bench.echo.req`, msg.respond): what limits.md measured; a
 *              reference only, since the agent's link uses JetStream.
 *
 *   node --import tsx bench/bus-echo.ts --transport ws|mqtt|nats-js|nats-core --url URL
 *
 * Prints "ready" on stdout once it can answer. Exits on SIGTERM, or when its stdin closes (the bench
 * process that started it is gone), so it never outlives the bench.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

export const ECHO_TRANSPORTS = ["ws", "mqtt", "nats-js", "nats-core"] as const;
export type EchoTransport = (typeof ECHO_TRANSPORTS)[number];

export const MQTT_ECHO_IN = "bench/echo/in";
export const MQTT_ECHO_OUT = "bench/echo/out";
export const NATS_ECHO_STREAM = "BENCH_ECHO";
export const NATS_ECHO_IN = "bench.echo.in";
export const NATS_ECHO_OUT = "bench.echo.out";
export const NATS_ECHO_CONSUMER = "bench-echo";
export const NATS_ECHO_REQ = "bench.echo.req";
export const CONTENT_TYPE = "application/json";

type Stop = () => Promise<void>;

async function wsEcho(url: string): Promise<Stop> {
  const { WebSocket } = await import("ws");
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  ws.on("message", (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
  ws.on("close", () => process.exit(0));
  return async () => ws.close();
}

async function mqttEcho(url: string): Promise<Stop> {
  const mqtt = await import("mqtt");
  const client = mqtt.connect(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0, clientId: `bench-echo-${process.pid}` });
  // mqtt.js leaves Nagle on; the agent's link turns it off (limits.md: ~88 ms per QoS 1 round trip otherwise).
  const stream = client.stream as { setNoDelay?: (on: boolean) => void; once?: (e: string, f: () => void) => void };
  stream.setNoDelay?.(true);
  stream.once?.("connect", () => stream.setNoDelay?.(true));
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => resolve());
    client.once("error", reject);
  });
  client.on("message", (_topic, payload) => {
    client.publish(MQTT_ECHO_OUT, payload, { qos: 1, properties: { contentType: CONTENT_TYPE } });
  });
  await client.subscribeAsync(MQTT_ECHO_IN, { qos: 1 });
  client.on("close", () => process.exit(0));
  return () => client.endAsync();
}

async function natsJsEcho(url: string): Promise<Stop> {
  const { connect, headers } = await import("@nats-io/transport-node");
  const { jetstream, jetstreamManager } = await import("@nats-io/jetstream");
  const nc = await connect({ servers: url, name: "bench-echo" });
  const jsm = await jetstreamManager(nc);
  // The same stream settings as IRONBUS_IN (transports/nats/options.ts streamConfigs).
  await jsm.streams.add({
    name: NATS_ECHO_STREAM,
    subjects: [NATS_ECHO_IN],
    retention: "limits",
    storage: "file",
    discard: "old",
    max_age: 24 * 3600 * 1e9,
    duplicate_window: 120 * 1e9,
    num_replicas: 1,
  });
  await jsm.consumers.add(NATS_ECHO_STREAM, {
    durable_name: NATS_ECHO_CONSUMER,
    filter_subject: NATS_ECHO_IN,
    deliver_policy: "all",
    ack_policy: "explicit",
    ack_wait: 30 * 1e9,
    max_deliver: -1,
    replay_policy: "instant",
  });
  const js = jetstream(nc);
  const consumer = await js.consumers.get(NATS_ECHO_STREAM, NATS_ECHO_CONSUMER);
  const messages = await consumer.consume({
    max_messages: 64,
    callback: (m) => {
      m.ack();
      const h = headers();
      h.set("Content-Type", CONTENT_TYPE);
      nc.publish(NATS_ECHO_OUT, m.data, { headers: h });
    },
  });
  void nc.closed().then(() => process.exit(0));
  return async () => {
    messages.stop();
    await nc.drain();
  };
}

async function natsCoreEcho(url: string): Promise<Stop> {
  const { connect } = await import("@nats-io/transport-node");
  const nc = await connect({ servers: url, name: "bench-echo-core" });
  nc.subscribe(NATS_ECHO_REQ, { callback: (err, msg) => {
    if (err === null) msg.respond(msg.data);
  } });
  await nc.flush();
  void nc.closed().then(() => process.exit(0));
  return () => nc.drain();
}

async function main(): Promise<void> {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { transport: { type: "string" }, url: { type: "string" } }, strict: true });
  const transport = values.transport;
  const url = values.url;
  if (url === undefined || !(ECHO_TRANSPORTS as readonly string[]).includes(transport ?? "")) {
    throw new Error(`usage: bus-echo.ts --transport ${ECHO_TRANSPORTS.join("|")} --url URL`);
  }
  const t = transport as EchoTransport;
  const stop = t === "ws" ? await wsEcho(url) : t === "mqtt" ? await mqttEcho(url) : t === "nats-js" ? await natsJsEcho(url) : await natsCoreEcho(url);
  let stopping = false;
  const end = (): void => {
    if (stopping) return;
    stopping = true;
    const killer = setTimeout(() => process.exit(0), 2000);
    killer.unref();
    stop().then(
      () => process.exit(0),
      () => process.exit(0),
    );
  };
  process.on("SIGTERM", end);
  process.on("SIGINT", end);
  process.stdin.on("end", end);
  process.stdin.on("close", end);
  process.stdin.resume();
  process.stdout.write("ready\n");
}

// Run as a program (the bench imports the names above without starting a responder).
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main().catch((err: unknown) => {
    process.stderr.write(`bus-echo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
