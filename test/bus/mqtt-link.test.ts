/**
 * The MQTT links against a real mosquitto (test/helpers/mosquitto.ts): delivery both ways with and
 * without MQTT 5 content types, the persistent session, deferred PUBACKs, reconnects after a broker
 * restart, retained messages and the last will, bounded open(), name checks.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { createServer, type Socket } from "node:net";
import { Writable } from "node:stream";
import { describe, it, type TestContext } from "node:test";
import { AGENT_SENDS, type AgentInbound, type AgentLinkEvents, type ControllerInbound } from "../../core/bus.js";
import { CONTENT_TYPES } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import { createLogger } from "../../core/log.js";
import { MqttAgentLink, type MqttAgentLinkOptions } from "../../transports/mqtt/agent-link.js";
import { MqttControllerLink, type MqttControllerLinkEvents, type MqttControllerLinkOptions } from "../../transports/mqtt/controller-link.js";
import { mqttProxy, startMosquitto } from "../helpers/mosquitto.js";
import { freePort } from "../helpers/net.js";

const JSON_CT = CONTENT_TYPES.json;
const PROTO_CT = CONTENT_TYPES.protobuf;
const FAST = { reconnectMinMs: 20, reconnectMaxMs: 200, connectTimeoutMs: 3_000 } as const;

/** Items in arrival order; next() takes the first matching one, waiting for it if needed. */
class Inbox<T> {
  private readonly items: T[] = [];
  private readonly waiters: { match(item: T): boolean; resolve(item: T): void }[] = [];

  push(item: T): void {
    const i = this.waiters.findIndex((w) => w.match(item));
    if (i >= 0) this.waiters.splice(i, 1)[0]?.resolve(item);
    else this.items.push(item);
  }

  next(match: (item: T) => boolean = () => true, ms = 4_000): Promise<T> {
    const i = this.items.findIndex(match);
    if (i >= 0) return Promise.resolve(this.items.splice(i, 1)[0] as T);
    return new Promise<T>((resolve, reject) => {
      const waiter = {
        match,
        resolve: (item: T) => {
          clearTimeout(timer);
          resolve(item);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${ms} ms; pending: ${JSON.stringify(this.items)}`));
      }, ms);
      this.waiters.push(waiter);
    });
  }

  get pending(): readonly T[] {
    return this.items;
  }
}

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString();
const bytesOf = (s: string): Uint8Array => new Uint8Array(Buffer.from(s));

interface AgentProbe {
  readonly link: MqttAgentLink;
  /** open(), and takes its "up" off `states`. */
  open(): Promise<void>;
  readonly events: AgentLinkEvents;
  /** "up", "down", "msg:<payload>" in the order the link reported them. */
  readonly trail: string[];
  readonly messages: Inbox<AgentInbound>;
  readonly states: Inbox<"up" | "down">;
}

function agent(t: TestContext, options: MqttAgentLinkOptions): AgentProbe {
  const link = new MqttAgentLink({ ...FAST, ...options });
  const trail: string[] = [];
  const messages = new Inbox<AgentInbound>();
  const states = new Inbox<"up" | "down">();
  const events: AgentLinkEvents = {
    message: (m) => {
      trail.push(`msg:${text(m.bytes)}`);
      messages.push(m);
    },
    up: () => {
      trail.push("up");
      states.push("up");
    },
    down: () => {
      trail.push("down");
      states.push("down");
    },
  };
  t.after(() => link.close());
  const open = async (): Promise<void> => {
    await link.open(events);
    assert.equal(await states.next(), "up");
  };
  return { link, open, events, trail, messages, states };
}

interface ControllerProbe {
  readonly link: MqttControllerLink;
  /** open(), and takes its "up" off `states`. */
  open(): Promise<void>;
  readonly events: MqttControllerLinkEvents;
  readonly messages: Inbox<ControllerInbound>;
  readonly states: Inbox<"up" | "down">;
}

function controller(t: TestContext, options: MqttControllerLinkOptions): ControllerProbe {
  const link = new MqttControllerLink({ ...FAST, ...options });
  const messages = new Inbox<ControllerInbound>();
  const states = new Inbox<"up" | "down">();
  const events: MqttControllerLinkEvents = {
    message: (m) => messages.push(m),
    up: () => states.push("up"),
    down: () => states.push("down"),
  };
  t.after(() => link.close());
  const open = async (): Promise<void> => {
    await link.open(events);
    assert.equal(await states.next(), "up");
  };
  return { link, open, events, messages, states };
}

const withText = (s: string) => (m: { bytes: Uint8Array }) => text(m.bytes) === s;

describe("MQTT links", () => {
  it("loads mqtt.js only when a link opens", async (t) => {
    const cache = createRequire(import.meta.url).cache;
    const loaded = (): boolean => Object.keys(cache).some((k) => k.includes("/node_modules/mqtt/"));
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "lazy-1" });
    assert.equal(loaded(), false, "constructing a link must not load mqtt.js");
    await a.open();
    assert.equal(loaded(), true);
  });

  it("delivers controller → agent to node, group and fleet topics, with MQTT 5 content types", async (t) => {
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "node-1", groups: ["rack-1"] });
    const c = controller(t, { url: broker.url });
    await Promise.all([a.open(), c.open()]);
    assert.equal(a.link.connected, true);
    assert.equal(a.link.kind, "mqtt");

    await c.link.send({ node: "node-1" }, bytesOf("to-node"), JSON_CT);
    await c.link.send({ group: "rack-1" }, bytesOf("to-group"), PROTO_CT);
    await c.link.send({ fleet: true }, bytesOf("to-fleet"), JSON_CT);
    const got = [await a.messages.next(), await a.messages.next(), await a.messages.next()];
    assert.deepEqual(
      got.map((m) => [text(m.bytes), m.source, m.contentType]),
      [
        ["to-node", "node", JSON_CT],
        ["to-group", "group", PROTO_CT],
        ["to-fleet", "fleet", JSON_CT],
      ],
    );
    for (const m of got) m.ack();

    // Another node's and a left group's messages do not arrive: the next one is the one meant for us.
    await a.link.setGroups(["rack-2"]);
    await c.link.send({ node: "node-2" }, bytesOf("other-node"), JSON_CT);
    await c.link.send({ group: "rack-1" }, bytesOf("left-group"), JSON_CT);
    await c.link.send({ group: "rack-2" }, bytesOf("new-group"), JSON_CT);
    const next = await a.messages.next();
    assert.deepEqual([text(next.bytes), next.source], ["new-group", "group"]);
    next.ack();
    assert.deepEqual(a.messages.pending, []);
  });

  it("delivers agent → controller on one topic per kind; replies go to reply_to", async (t) => {
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "node-7" });
    const c = controller(t, { url: broker.url, replyTopic: "ironbus/v1/reply/ctl-1" });
    await Promise.all([a.open(), c.open()]);
    for (const kind of AGENT_SENDS) {
      await a.link.publish(kind, bytesOf(`a-${kind}`), PROTO_CT);
      const m = await c.messages.next();
      assert.deepEqual([m.node, m.kind, m.contentType, text(m.bytes)], ["node-7", kind, PROTO_CT, `a-${kind}`]);
    }
    await a.link.publish("result", bytesOf("reply"), JSON_CT, "ironbus/v1/reply/ctl-1");
    const reply = await c.messages.next();
    assert.deepEqual([reply.node, reply.kind, reply.contentType, text(reply.bytes)], ["", undefined, JSON_CT, "reply"]);
    // A reply_to naming an agent's inbound topic is not followed: the result goes to its own address.
    await a.link.publish("result", bytesOf("not-injected"), JSON_CT, "ironbus/v1/node/node-8/in");
    const safe = await c.messages.next();
    assert.deepEqual([safe.node, safe.kind, text(safe.bytes)], ["node-7", "result", "not-injected"]);
  });

  it("speaks MQTT 3.1.1 when asked: no content type on either side (the session sniffs)", async (t) => {
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "old-1", protocolVersion: 4 });
    const c = controller(t, { url: broker.url, protocolVersion: 4 });
    const c5 = controller(t, { url: broker.url });
    await Promise.all([a.open(), c.open(), c5.open()]);
    await c5.link.send({ node: "old-1" }, bytesOf("from-v5"), PROTO_CT);
    await c.link.send({ node: "old-1" }, bytesOf("from-v4"), PROTO_CT);
    for (const s of ["from-v5", "from-v4"]) {
      const m = await a.messages.next();
      assert.deepEqual([text(m.bytes), m.contentType], [s, undefined]);
      m.ack();
    }
    await a.link.publish("event", bytesOf("ev"), JSON_CT);
    for (const ctl of [c, c5]) {
      const m = await ctl.messages.next();
      assert.deepEqual([m.node, m.kind, m.contentType, text(m.bytes)], ["old-1", "event", undefined, "ev"]);
    }
  });

  for (const refusal of ["v3", "v5"] as const) {
    it(`falls back to MQTT 3.1.1 when the broker refuses 5 (${refusal} CONNACK) and logs it`, async (t) => {
      const broker = await startMosquitto(t);
      const proxy = await mqttProxy(broker.port, t, { refuseV5: refusal });
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString());
          done();
        },
      });
      const a = agent(t, { url: proxy.url, node: "fallback-1", log: createLogger("info", sink) });
      const c = controller(t, { url: broker.url });
      await Promise.all([a.open(), c.open()]);
      assert.equal(proxy.accepted, 2, "one refused v5 attempt, then 3.1.1");
      assert.ok(lines.some((l) => l.includes("falling back to MQTT 3.1.1")), lines.join(""));
      await c.link.send({ node: "fallback-1" }, bytesOf("hi"), JSON_CT);
      const m = await a.messages.next();
      assert.deepEqual([text(m.bytes), m.contentType], ["hi", undefined]);
      m.ack();
    });
  }

  for (const version of [5, 4] as const) {
    it(`keeps commands sent while the agent is away and delivers them when it returns (MQTT ${version})`, async (t) => {
      const broker = await startMosquitto(t);
      const c = controller(t, { url: broker.url });
      const first = agent(t, { url: broker.url, node: "away-1", groups: ["g1"], protocolVersion: version });
      await Promise.all([c.open(), first.open()]);
      await first.link.close();
      assert.equal(first.link.connected, false);

      await c.link.send({ node: "away-1" }, bytesOf("q1"), JSON_CT);
      await c.link.send({ group: "g1" }, bytesOf("q2"), JSON_CT);
      await c.link.send({ fleet: true }, bytesOf("q3"), JSON_CT);

      const again = agent(t, { url: broker.url, node: "away-1", groups: ["g1"], protocolVersion: version });
      await again.open();
      for (const s of ["q1", "q2", "q3"]) (await again.messages.next(withText(s))).ack();
      // What the broker kept is handed over after up(), never before.
      assert.deepEqual(again.trail, ["up", "msg:q1", "msg:q2", "msg:q3"]);
    });
  }

  it("redelivers a message whose ack() was never called after a reconnect; not an acked one", async (t) => {
    const broker = await startMosquitto(t);
    const proxy = await mqttProxy(broker.port, t);
    const c = controller(t, { url: broker.url });
    const a = agent(t, { url: proxy.url, node: "ack-1" });
    await Promise.all([c.open(), a.open()]);
    await c.link.send({ node: "ack-1" }, bytesOf("A"), JSON_CT);
    await c.link.send({ node: "ack-1" }, bytesOf("B"), JSON_CT);
    (await a.messages.next(withText("A"))).ack();
    await a.messages.next(withText("B")); // never acked
    // The broker handles one connection's packets in order: once this publish is acknowledged, so is A.
    await a.link.publish("event", bytesOf("barrier"), JSON_CT);

    proxy.cut(); // the connection fails under the link
    assert.equal(await a.states.next(), "down");
    assert.equal(await a.states.next(), "up");
    await c.link.send({ node: "ack-1" }, bytesOf("C"), JSON_CT);
    const b = await a.messages.next();
    const cMsg = await a.messages.next();
    assert.deepEqual([text(b.bytes), text(cMsg.bytes)], ["B", "C"]);
    b.ack();
    cMsg.ack();

    // Both acked now: a clean restart of the agent finds nothing left.
    await a.link.close();
    const again = agent(t, { url: broker.url, node: "ack-1" });
    await again.open();
    await c.link.send({ node: "ack-1" }, bytesOf("D"), JSON_CT);
    const d = await again.messages.next();
    assert.equal(text(d.bytes), "D");
    d.ack();
  });

  it("sends PUBACKs in arrival order: an ack waits for the unacked message before it", async (t) => {
    const broker = await startMosquitto(t);
    const proxy = await mqttProxy(broker.port, t);
    const c = controller(t, { url: broker.url });
    const a = agent(t, { url: proxy.url, node: "order-1" });
    await Promise.all([c.open(), a.open()]);
    await c.link.send({ node: "order-1" }, bytesOf("A"), JSON_CT);
    await c.link.send({ node: "order-1" }, bytesOf("B"), JSON_CT);
    await a.messages.next(withText("A")); // not acked
    (await a.messages.next(withText("B"))).ack(); // held back behind A (MQTT 4.6)
    await a.link.publish("event", bytesOf("barrier"), JSON_CT);
    proxy.cut();
    assert.equal(await a.states.next(), "down");
    assert.equal(await a.states.next(), "up");
    const again = [await a.messages.next(), await a.messages.next()];
    assert.deepEqual(again.map((m) => text(m.bytes)), ["A", "B"]);
    for (const m of again) m.ack();
  });

  it("drops messages for a group the agent left while away (its persistent session still has it)", async (t) => {
    const broker = await startMosquitto(t);
    const c = controller(t, { url: broker.url });
    const before = agent(t, { url: broker.url, node: "grp-1", groups: ["old"] });
    await Promise.all([c.open(), before.open()]);
    await before.link.close();
    const after = agent(t, { url: broker.url, node: "grp-1", groups: ["new"] });
    await after.open();
    await c.link.send({ group: "old" }, bytesOf("stale"), JSON_CT);
    await c.link.send({ group: "new" }, bytesOf("fresh"), JSON_CT);
    const m = await after.messages.next();
    assert.deepEqual([text(m.bytes), m.source], ["fresh", "group"]);
    m.ack();
    assert.deepEqual(after.messages.pending, []);
  });

  it("sets TCP_NODELAY on every connection: round trips are not held by Nagle's algorithm", async (t) => {
    const broker = await startMosquitto(t);
    const proxy = await mqttProxy(broker.port, t);
    const c = controller(t, { url: broker.url });
    const a = agent(t, { url: proxy.url, node: "nagle-1" });
    await Promise.all([c.open(), a.open()]);
    // Echo: the agent acks (PUBACK) and answers (PUBLISH) at once, two small writes in a row; with
    // Nagle on, the second waits for the broker's delayed ACK (~40-90 ms a round trip).
    a.events.message = (m) => {
      m.ack();
      a.link.publish("result", m.bytes, JSON_CT).catch(() => undefined); // a late one may meet the teardown
    };
    const roundTrips = async (n: number): Promise<number> => {
      const started = performance.now();
      for (let i = 0; i < n; i++) {
        await c.link.send({ node: "nagle-1" }, bytesOf(`rt-${i}`), JSON_CT);
        await c.messages.next(withText(`rt-${i}`));
      }
      return performance.now() - started;
    };
    const first = await roundTrips(20);
    assert.ok(first < 600, `20 round trips took ${first.toFixed(0)} ms`);
    proxy.cut();
    assert.equal(await a.states.next(), "down");
    assert.equal(await a.states.next(), "up");
    const again = await roundTrips(20);
    assert.ok(again < 600, `20 round trips after a reconnect took ${again.toFixed(0)} ms`);
  });

  it("comes back by itself after a broker restart; publish and send reject while down", async (t) => {
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "restart-1" });
    const c = controller(t, { url: broker.url });
    await Promise.all([a.open(), c.open()]);

    await broker.stop();
    assert.equal(await a.states.next(), "down");
    assert.equal(await c.states.next(), "down");
    assert.equal(a.link.connected, false);
    assert.equal(c.link.connected, false);
    const started = Date.now();
    await assert.rejects(a.link.publish("event", bytesOf("lost"), JSON_CT), (err) => AgentError.is(err));
    await assert.rejects(c.link.send({ node: "restart-1" }, bytesOf("lost"), JSON_CT), (err) => AgentError.is(err));
    assert.ok(Date.now() - started < 100, "rejects at once, does not queue");

    await broker.start();
    assert.equal(await a.states.next(), "up");
    assert.equal(await c.states.next(), "up");
    await c.link.send({ node: "restart-1" }, bytesOf("after"), JSON_CT);
    const m = await a.messages.next();
    assert.equal(text(m.bytes), "after");
    m.ack();
    await a.link.publish("event", bytesOf("back"), JSON_CT);
    assert.equal(text((await c.messages.next()).bytes), "back");
    assert.deepEqual(a.trail, ["up", "down", "up", "msg:after"]);
  });

  it("gives a later controller the retained hello, heartbeat and status; the will on abrupt loss", async (t) => {
    const broker = await startMosquitto(t);
    const proxy = await mqttProxy(broker.port, t);
    const will = { bytes: bytesOf("offline"), contentType: JSON_CT };
    const online = { bytes: bytesOf("online"), contentType: JSON_CT };
    const a = agent(t, { url: proxy.url, node: "ret-1", will, online });
    await a.open();
    await a.link.publish("hello", bytesOf("hello-1"), JSON_CT);
    await a.link.publish("heartbeat", bytesOf("hb-1"), JSON_CT);
    await a.link.publish("result", bytesOf("not-retained"), JSON_CT);

    const c = controller(t, { url: broker.url });
    await c.open();
    const retained = [await c.messages.next(), await c.messages.next(), await c.messages.next()];
    assert.deepEqual(
      retained.map((m) => `${m.node}/${String(m.kind)}=${text(m.bytes)}:${String(m.contentType)}`).sort(),
      [`ret-1/heartbeat=hb-1:${JSON_CT}`, `ret-1/hello=hello-1:${JSON_CT}`, `ret-1/status=online:${JSON_CT}`],
    );

    proxy.cut(); // the agent's connection dies without DISCONNECT: the broker publishes the will
    const gone = await c.messages.next();
    assert.deepEqual([gone.node, gone.kind, text(gone.bytes), gone.contentType], ["ret-1", "status", "offline", JSON_CT]);
    assert.equal(await a.states.next(), "down");
    assert.equal(await a.states.next(), "up");
    const back = await c.messages.next();
    assert.deepEqual([back.kind, text(back.bytes)], ["status", "online"]);

    // A clean close sends no will: the link publishes the offline status itself.
    await a.link.close();
    const closed = await c.messages.next();
    assert.deepEqual([closed.kind, text(closed.bytes)], ["status", "offline"]);
  });

  it("keeps backing off when connections do not last: two links with one node id do not trade the session at full speed", async (t) => {
    const broker = await startMosquitto(t);
    const twin = { url: broker.url, node: "twin-1", reconnectMinMs: 20, reconnectMaxMs: 5_000 };
    const older = agent(t, twin);
    const newer = agent(t, twin);
    await older.open();
    await newer.open(); // mosquitto closes the older connection; the older link reconnects and takes the session back...
    await new Promise((resolve) => setTimeout(resolve, 800));
    const ups = [...older.trail, ...newer.trail].filter((e) => e === "up").length;
    // ...but each time later: 10-20, 10-40, 10-80, 10-160 ms... so ~6 takeovers each here (11-14 ups
    // measured). Had the backoff restarted on every CONNACK, each link would be back within 20 ms:
    // about a hundred ups in this time.
    assert.ok(ups <= 30, `${ups} connections in 800 ms`);
  });

  it("gives a named persistent controller what agents sent while it was away", async (t) => {
    const broker = await startMosquitto(t);
    const a = agent(t, { url: broker.url, node: "p-1" });
    const first = controller(t, { url: broker.url, clientId: "ctl-main", persistent: true });
    await Promise.all([a.open(), first.open()]);
    await first.link.close();
    await a.link.publish("result", bytesOf("while-away"), JSON_CT);
    const again = controller(t, { url: broker.url, clientId: "ctl-main", persistent: true });
    await again.open();
    const m = await again.messages.next();
    assert.deepEqual([m.node, m.kind, text(m.bytes)], ["p-1", "result", "while-away"]);
  });

  it("open() rejects within its timeout when nothing listens, and keeps nothing running", async (t) => {
    const port = await freePort();
    const a = agent(t, { url: `mqtt://127.0.0.1:${port}`, node: "nowhere-1", connectTimeoutMs: 300 });
    const started = Date.now();
    await assert.rejects(a.open(), (err) => AgentError.is(err) && /within 300 ms/.test(err.message));
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 290 && elapsed < 1_000, `took ${elapsed} ms`);
    assert.deepEqual(a.trail, []);
  });

  it("open() gives up on a server that never answers CONNACK and closes its connection", async (t) => {
    const sockets: Socket[] = [];
    const closed: Promise<void>[] = [];
    const silent = createServer((socket) => {
      sockets.push(socket);
      closed.push(new Promise((resolve) => socket.on("close", () => resolve())));
      socket.on("error", () => undefined);
      socket.resume(); // read, so the client's FIN is seen
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    t.after(() => new Promise<void>((resolve) => silent.close(() => resolve())));
    const address = silent.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    const a = agent(t, { url: `mqtt://127.0.0.1:${port}`, node: "silent-1", connectTimeoutMs: 300 });
    await assert.rejects(a.open(), (err) => AgentError.is(err) && /no CONNACK/.test(err.message));
    await Promise.all(closed); // the attempt's socket is closed by the link
    const count = sockets.length;
    assert.equal(count, 1);
    // No attempt after the rejection (the backoff here would retry within 200 ms).
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(sockets.length, count);
  });

  it("refuses names that are not one safe token", async (t) => {
    const url = "mqtt://127.0.0.1:1";
    for (const node of ["", "a/b", "+", "#", "x y", "n".repeat(129)]) {
      assert.throws(() => new MqttAgentLink({ url, node }), (err) => AgentError.is(err, "CONFIG_INVALID"), node);
    }
    assert.throws(() => new MqttAgentLink({ url, node: "ok", groups: ["r/1"] }), (err) => AgentError.is(err, "CONFIG_INVALID"));
    assert.throws(() => new MqttAgentLink({ url: "http://x", node: "ok" }), (err) => AgentError.is(err, "CONFIG_INVALID"));
    assert.throws(() => new MqttAgentLink({ url, node: "ok", prefix: "a/#" }), (err) => AgentError.is(err, "CONFIG_INVALID"));
    const link = new MqttAgentLink({ url, node: "ok" });
    await assert.rejects(link.setGroups(["bad+"]), (err) => AgentError.is(err, "CONFIG_INVALID"));
    const c = controller(t, { url });
    await assert.rejects(c.link.send({ node: "a/+" }, bytesOf("x"), JSON_CT), (err) => AgentError.is(err, "INVALID_REQUEST"));
  });
});
