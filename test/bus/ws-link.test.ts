import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, it } from "node:test";
import { WebSocket, WebSocketServer } from "ws";
import type { AgentInbound, ControllerInbound, ControllerLink } from "../../core/bus.js";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope } from "../../core/codec.js";
import type { Envelope } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import { type Logger, createLogger, silentLogger } from "../../core/log.js";
import { generateSelfSignedCertificate } from "../../transports/rest/autotls.js";
import { WsAgentLink, type WsAgentLinkOptions } from "../../transports/ws/agent-link.js";
import { WsControllerLink } from "../../transports/ws/controller-link.js";
import { MAX_FRAME_OVERHEAD } from "../../transports/ws/frames.js";
import { WsHub, type WsHubOptions } from "../../transports/ws/hub.js";

// ---- helpers ------------------------------------------------------------------------------------

/** Items pushed by callbacks, awaited one at a time (a test fails instead of hanging). */
class Inbox<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<(item: T) => void> = [];
  push = (item: T): void => {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  };
  get size(): number {
    return this.items.length;
  }
  next(timeoutMs = 5000): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`nothing arrived within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (v: T): void => {
        clearTimeout(timer);
        resolve(v);
      };
      this.waiters.push(waiter);
    });
  }
}

function command(id: string, node?: string): Envelope {
  return { v: 1, id, kind: "command", ...(node === undefined ? {} : { node }), body: { name: "t.echo", params: { value: id } } };
}
const json = (env: Envelope): Uint8Array => encodeEnvelope(env, "json");
const proto = (env: Envelope): Uint8Array => encodeEnvelope(env, "protobuf");
const idOf = (m: { bytes: Uint8Array; contentType: string | undefined }): string => decodeEnvelope(m.bytes, m.contentType).id;

function heartbeat(node: string, seq: number): Envelope {
  return { v: 1, id: `hb-${node}-${seq}`, kind: "heartbeat", node, body: { seq, status: "idle", uptime_s: 1, version: "test" } };
}
function hello(node: string): Envelope {
  return { v: 1, id: `hello-${node}`, kind: "hello", node, body: { version: "test", macs: [], hostname: node, summary: {}, transports: ["ws"] } };
}
function result(node: string, id: string): Envelope {
  return {
    v: 1,
    id: `r-${id}`,
    kind: "result",
    node,
    correlation_id: id,
    body: { id, command_name: "t.echo", command_status: "SUCCEEDED", command_error: null, command_result: { ok: true } },
  };
}

interface Agent {
  readonly link: WsAgentLink;
  readonly inbox: Inbox<AgentInbound>;
  readonly ups: Inbox<true>;
  readonly downs: Inbox<string>;
}

function agentLink(url: string, node: string, extra: Partial<WsAgentLinkOptions> = {}): Agent {
  const link = new WsAgentLink({
    url,
    node,
    log: silentLogger(),
    connectTimeoutMs: 2000,
    reconnectMinMs: 20,
    reconnectMaxMs: 100,
    pingIntervalMs: 0,
    ...extra,
  });
  return { link, inbox: new Inbox(), ups: new Inbox(), downs: new Inbox() };
}

async function openAgent(a: Agent): Promise<Agent> {
  await a.link.open({ message: a.inbox.push, up: () => a.ups.push(true), down: a.downs.push });
  return a;
}

async function agent(url: string, node: string, extra: Partial<WsAgentLinkOptions> = {}): Promise<Agent> {
  return openAgent(agentLink(url, node, extra));
}

interface Controller {
  readonly link: ControllerLink;
  readonly inbox: Inbox<ControllerInbound>;
  readonly gone: Inbox<{ node: string; reason: string }>;
}

async function controller(link: ControllerLink): Promise<Controller> {
  const c: Controller = { link, inbox: new Inbox(), gone: new Inbox() };
  await link.open({ message: c.inbox.push, gone: (node, reason) => c.gone.push({ node, reason }) });
  return c;
}

function remoteLink(url: string, extra: Partial<ConstructorParameters<typeof WsControllerLink>[0]> = {}): WsControllerLink {
  return new WsControllerLink({ url, log: silentLogger(), connectTimeoutMs: 2000, reconnectMinMs: 20, reconnectMaxMs: 100, pingIntervalMs: 0, ...extra });
}

/** A pino logger whose lines the test can read. */
function capturingLogger(): { log: Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) if (line) lines.push(JSON.parse(line) as { level: number; msg: string });
      cb();
    },
  });
  return { log: createLogger("debug", stream), lines };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    assert.ok(AgentError.is(err), `expected an AgentError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected a rejection with ${code}`);
}

// ---- tests --------------------------------------------------------------------------------------

describe("ws bus: hub and links", () => {
  let hub: WsHub;
  let url: string;
  const closers: Array<() => Promise<void>> = [];
  const track = <T extends { close(): Promise<void> }>(x: T): T => {
    closers.push(() => x.close());
    return x;
  };
  const startHub = async (extra: Partial<WsHubOptions> = {}): Promise<void> => {
    hub = new WsHub();
    await hub.start({ host: "127.0.0.1", port: 0, log: silentLogger(), ...extra });
    url = hub.url();
  };

  beforeEach(async () => {
    await startHub();
  });
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await hub.stop();
  });

  const controllers: Array<[string, () => ControllerLink]> = [
    ["in-process link", () => hub.link()],
    ["remote WsControllerLink", () => remoteLink(url)],
  ];

  for (const [name, make] of controllers) {
    it(`delivers to a node, a group and the fleet, JSON and protobuf, both ways (${name})`, async () => {
      const ctl = await controller(track(make()));
      const a1 = await agent(url, "a1", { groups: ["g1"] });
      track(a1.link);
      const a2 = await agent(url, "a2", { groups: ["g2"] });
      track(a2.link);

      await ctl.link.send({ node: "a1" }, json(command("c1", "a1")), CONTENT_TYPES.json, "c1");
      const m1 = await a1.inbox.next();
      assert.equal(m1.source, "node");
      assert.equal(m1.contentType, CONTENT_TYPES.json);
      assert.deepEqual(Buffer.from(m1.bytes), Buffer.from(json(command("c1", "a1"))));
      m1.ack();

      await ctl.link.send({ group: "g1" }, proto(command("c2")), CONTENT_TYPES.protobuf, "c2");
      const m2 = await a1.inbox.next();
      assert.equal(m2.source, "group");
      assert.equal(m2.contentType, CONTENT_TYPES.protobuf);
      assert.deepEqual(decodeEnvelope(m2.bytes, m2.contentType), command("c2"));
      m2.ack();

      await ctl.link.send({ fleet: true }, json(command("c3")), CONTENT_TYPES.json, "c3");
      for (const a of [a1, a2]) {
        const m = await a.inbox.next();
        assert.equal(m.source, "fleet");
        assert.equal(idOf(m), "c3", "a2 got neither the node nor the g1 message");
        m.ack();
      }

      // groups replaced on the live connection: no down/up
      await a2.link.setGroups(["g1", "g3"]);
      await ctl.link.send({ group: "g3" }, json(command("c4")), CONTENT_TYPES.json, "c4");
      const m4 = await a2.inbox.next();
      assert.equal(idOf(m4), "c4");
      assert.equal(m4.source, "group");
      assert.equal(a2.downs.size, 0);

      await a1.link.publish("result", json(result("a1", "c1")), CONTENT_TYPES.json);
      const r = await ctl.inbox.next();
      assert.equal(r.node, "a1");
      assert.equal(r.kind, "result");
      assert.equal(r.contentType, CONTENT_TYPES.json);
      assert.deepEqual(decodeEnvelope(r.bytes, r.contentType), result("a1", "c1"));

      await a2.link.publish("heartbeat", proto(heartbeat("a2", 1)), CONTENT_TYPES.protobuf);
      const h = await ctl.inbox.next();
      assert.equal(h.node, "a2");
      assert.equal(h.kind, "heartbeat");
      assert.equal(h.contentType, CONTENT_TYPES.protobuf);
      assert.equal(idOf(h), "hb-a2-1");
    });
  }

  it("keeps messages for a node that is offline or never connected, and delivers them in order", async () => {
    const ctl = await controller(track(hub.link()));
    for (const id of ["q1", "q2", "q3"]) await ctl.link.send({ node: "late" }, json(command(id, "late")), CONTENT_TYPES.json, id);
    // a repeat of a queued envelope id is taken but not queued twice
    await ctl.link.send({ node: "late" }, json(command("q2", "late")), CONTENT_TYPES.json, "q2");
    assert.equal(hub.queued("late"), 3);

    const a = await agent(url, "late");
    for (const id of ["q1", "q2", "q3"]) {
      const m = await a.inbox.next();
      assert.equal(idOf(m), id);
      m.ack();
    }
    await a.link.close(); // the acks go out before the close frame

    assert.equal((await ctl.gone.next()).node, "late");
    for (const id of ["q4", "q5"]) await ctl.link.send({ node: "late" }, proto(command(id, "late")), CONTENT_TYPES.protobuf, id);
    const b = await agent(url, "late");
    track(b.link);
    for (const id of ["q4", "q5"]) {
      const m = await b.inbox.next();
      assert.deepEqual([idOf(m), m.source, m.contentType], [id, "node", CONTENT_TYPES.protobuf]);
    }
  });

  it("sends the un-acknowledged messages again after a reconnect, and only those", async () => {
    const ctl = await controller(track(hub.link()));
    const first = await agent(url, "n1");
    for (const id of ["m1", "m2"]) await ctl.link.send({ node: "n1" }, json(command(id, "n1")), CONTENT_TYPES.json, id);
    const m1 = await first.inbox.next();
    const m2 = await first.inbox.next();
    assert.deepEqual([idOf(m1), idOf(m2)], ["m1", "m2"]);
    m1.ack();
    await first.link.close();
    assert.equal(hub.queued("n1"), 1);
    m2.ack(); // too late: that connection is gone

    const second = await agent(url, "n1");
    track(second.link);
    await ctl.link.send({ node: "n1" }, json(command("m3", "n1")), CONTENT_TYPES.json, "m3");
    const r2 = await second.inbox.next();
    const r3 = await second.inbox.next();
    assert.deepEqual([idOf(r2), idOf(r3)], ["m2", "m3"], "m1 was acknowledged, m2 was not");

    // acks are cumulative: acking m3 before m2 acknowledges nothing yet
    r3.ack();
    await second.link.close();
    assert.equal(hub.queued("n1"), 2);
    const third = await agent(url, "n1");
    track(third.link);
    const s2 = await third.inbox.next();
    const s3 = await third.inbox.next();
    assert.deepEqual([idOf(s2), idOf(s3)], ["m2", "m3"]);
    s3.ack();
    s2.ack();
    await third.link.close();
    assert.equal(hub.queued("n1"), 0);
  });

  it("comes back by itself when the hub restarts on the same port; publish rejects while down", async () => {
    const ctl = await controller(hub.link()); // in-process links survive a restart
    const a = await agent(url, "r1");
    track(a.link);
    await a.ups.next();
    const { port } = hub.address();

    await hub.stop();
    assert.match(await a.downs.next(), /1001/);
    assert.deepEqual(await ctl.gone.next(), { node: "r1", reason: "hub stopping" });
    assert.equal(a.link.connected, false);
    const started = Date.now();
    await rejectsWith(a.link.publish("heartbeat", json(heartbeat("r1", 1)), CONTENT_TYPES.json), "BUS_UNAVAILABLE");
    assert.ok(Date.now() - started < 100, "publish rejects at once while down");

    await hub.start({ host: "127.0.0.1", port, log: silentLogger() });
    await a.ups.next();
    assert.ok(a.link.connected);
    await a.link.publish("heartbeat", json(heartbeat("r1", 2)), CONTENT_TYPES.json);
    const h = await ctl.inbox.next();
    assert.equal(idOf(h), "hb-r1-2");
    await ctl.link.close();
  });

  it("hands a fresh controller the retained hello and heartbeat; gone() when an agent's socket closes", async () => {
    const first = await controller(track(hub.link()));
    const a = await agent(url, "k1");
    await a.link.publish("hello", json(hello("k1")), CONTENT_TYPES.json);
    await a.link.publish("heartbeat", proto(heartbeat("k1", 1)), CONTENT_TYPES.protobuf);
    await a.link.publish("heartbeat", proto(heartbeat("k1", 2)), CONTENT_TYPES.protobuf);
    await a.link.publish("result", json(result("k1", "x")), CONTENT_TYPES.json);
    for (let i = 0; i < 4; i++) await first.inbox.next(); // the hub has them all

    for (const make of [() => hub.link(), () => remoteLink(url)]) {
      const fresh = await controller(track(make()));
      assert.equal(fresh.inbox.size, 2, "delivered before open() resolved");
      const h = await fresh.inbox.next();
      const b = await fresh.inbox.next();
      assert.deepEqual([h.node, h.kind, idOf(h)], ["k1", "hello", "hello-k1"]);
      assert.deepEqual([b.node, b.kind, b.contentType, idOf(b)], ["k1", "heartbeat", CONTENT_TYPES.protobuf, "hb-k1-2"]);
      assert.equal(fresh.gone.size, 0);
    }

    await a.link.close();
    const gone = await first.gone.next();
    assert.equal(gone.node, "k1");
    assert.match(gone.reason, /socket closed \(1000/);

    const later = await controller(track(remoteLink(url)));
    assert.equal(later.inbox.size, 2);
    assert.equal((await later.gone.next()).node, "k1", "a fresh controller learns the node is offline");
  });

  it("open() rejects in bounded time when nothing listens, leaving nothing running", async () => {
    const port = await freePort();
    const before = process.getActiveResourcesInfo().filter((r) => r !== "CloseReq").length;
    const a = agentLink(`ws://127.0.0.1:${port}`, "nobody", { connectTimeoutMs: 300 });
    const started = Date.now();
    const err = await rejectsWith(openAgent(a), "BUS_UNAVAILABLE");
    const took = Date.now() - started;
    assert.ok(took >= 250 && took < 1500, `took ${took} ms`);
    assert.match(err.message, /no connection to the hub within 300 ms/);
    assert.equal(a.link.connected, false);
    assert.equal(a.ups.size, 0);
    await new Promise((r) => setImmediate(r));
    const after = process.getActiveResourcesInfo().filter((r) => r !== "CloseReq").length;
    assert.ok(after <= before, `resources before ${before}, after ${after}: ${process.getActiveResourcesInfo().join(",")}`);

    const c = remoteLink(`ws://127.0.0.1:${port}`, { connectTimeoutMs: 200 });
    await rejectsWith(c.open({ message: () => undefined }), "BUS_UNAVAILABLE");
  });

  it("refuses invalid node and group names, before dialling and at the hub", async () => {
    await rejectsWith(openAgent(agentLink(url, "bad/name")), "CONFIG_INVALID");
    await rejectsWith(openAgent(agentLink(url, "ok", { groups: ["a b"] })), "CONFIG_INVALID");
    await rejectsWith(openAgent(agentLink("http://127.0.0.1:1", "ok")), "CONFIG_INVALID");
    const a = await agent(url, "ok");
    track(a.link);
    await rejectsWith(a.link.setGroups(["x.y"]), "CONFIG_INVALID");
    const ctl = await controller(track(remoteLink(url)));
    await rejectsWith(ctl.link.send({ node: "no such/node" }, json(command("z")), CONTENT_TYPES.json), "INVALID_REQUEST");

    // a hand-made dial with a bad name is refused with 400
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${url}/ironbus/v1/agent/a%20b`);
      ws.on("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on("error", () => undefined);
    });
    assert.equal(status, 400);
  });

  it("runs the auth hooks: a refused agent or controller gets 401", async () => {
    await hub.stop();
    await startHub({
      authorizeAgent: (node, headers) => headers["authorization"] === `Bearer ${node}-token`,
      authorizeController: async (headers) => headers["authorization"] === "Bearer ctl",
    });
    const started = Date.now();
    await rejectsWith(openAgent(agentLink(url, "s1", { headers: { authorization: "Bearer wrong" } })), "UNAUTHORIZED");
    assert.ok(Date.now() - started < 1000, "a 401 fails open() at once");
    const ok = await agent(url, "s1", { headers: { authorization: "Bearer s1-token" } });
    track(ok.link);
    await rejectsWith(remoteLink(url).open({ message: () => undefined }), "UNAUTHORIZED");
    track(await controller(remoteLink(url, { headers: { authorization: "Bearer ctl" } })).then((c) => c.link));
  });

  it("refuses oversized frames without crashing, and logs them", async () => {
    await hub.stop();
    const { log, lines } = capturingLogger();
    await startHub({ log, maxMessageBytes: 1024 });
    const ctl = await controller(track(hub.link()));
    const remote = await controller(track(remoteLink(url)));
    const big = Buffer.alloc(2000, 0x41);

    // over ws's maxPayload: ws itself refuses the frame (1009)
    const raw = new WebSocket(`${url}/ironbus/v1/agent/raw`);
    await new Promise((resolve, reject) => {
      raw.once("open", resolve);
      raw.once("error", reject);
    });
    const code = await new Promise<number>((resolve) => {
      raw.once("close", (c) => resolve(c));
      raw.send(Buffer.alloc(1024 + MAX_FRAME_OVERHEAD + 100), { binary: true });
    });
    assert.equal(code, 1009);
    assert.equal((await ctl.gone.next()).node, "raw");
    assert.ok(lines.some((l) => l.level === 40 && /agent socket error/.test(l.msg)), "logged");

    // under maxPayload but over the envelope limit: the hub closes with 1009, the link reconnects
    const a = await agent(url, "big");
    track(a.link);
    await a.ups.next();
    await a.link.publish("event", big, CONTENT_TYPES.json).catch(() => undefined);
    assert.match(await a.downs.next(), /1009/);
    await a.ups.next();
    assert.ok(lines.some((l) => /over the size limit/.test(l.msg)));

    // refused before the wire by the links themselves
    const small = await agent(url, "small", { maxMessageBytes: 1024 });
    track(small.link);
    await rejectsWith(small.link.publish("event", big, CONTENT_TYPES.json), "MESSAGE_TOO_LARGE");
    await rejectsWith(ctl.link.send({ node: "small" }, big, CONTENT_TYPES.json), "MESSAGE_TOO_LARGE");
    await rejectsWith(remote.link.send({ node: "small" }, big, CONTENT_TYPES.json), "MESSAGE_TOO_LARGE"); // the hub's NACK

    // everything still works
    await remote.link.send({ node: "small" }, json(command("after", "small")), CONTENT_TYPES.json, "after");
    assert.equal(idOf(await small.inbox.next()), "after");
  });

  it("a second connection for the same node replaces the first", async () => {
    const ctl = await controller(track(hub.link()));
    const one = await agent(url, "dup", { reconnectMinMs: 5000, reconnectMaxMs: 5000 });
    track(one.link);
    const two = await agent(url, "dup");
    track(two.link);
    assert.match(await one.downs.next(), /4001: replaced/);
    await ctl.link.send({ node: "dup" }, json(command("d1", "dup")), CONTENT_TYPES.json, "d1");
    assert.equal(idOf(await two.inbox.next()), "d1");
    assert.equal(one.inbox.size, 0);
    assert.equal(ctl.gone.size, 0, "the node never went away");
    await one.link.close(); // it would otherwise come back after reconnectMaxMs and replace `two`
  });

  it("drops dead sockets: the hub pings agents, the agent link pings the hub", async () => {
    await hub.stop();
    await startHub({ pingIntervalMs: 40 });
    const ctl = await controller(track(hub.link()));
    const mute = new WebSocket(`${url}/ironbus/v1/agent/mute`, { autoPong: false });
    mute.on("error", () => undefined);
    const gone = await ctl.gone.next();
    assert.deepEqual(gone, { node: "mute", reason: "no pong from the agent" });

    const deaf = new WebSocketServer({ host: "127.0.0.1", port: 0, autoPong: false });
    await new Promise((resolve) => deaf.once("listening", resolve));
    const address = deaf.address();
    assert.ok(typeof address === "object" && address !== null);
    const a = await agent(`ws://127.0.0.1:${address.port}`, "d1", { pingIntervalMs: 40, reconnectMinMs: 5000, reconnectMaxMs: 5000 });
    track(a.link);
    assert.match(await a.downs.next(), /no pong from the hub/);
    await a.link.close();
    await new Promise((resolve) => deaf.close(resolve));
  });

  it("works over wss:// with a private CA, for an agent and a remote controller", async () => {
    await hub.stop();
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "hub" });
    await startHub({ tls: { cert: pair.certPem, key: pair.keyPem } });
    assert.match(url, /^wss:\/\//);
    const ctl = await controller(track(remoteLink(url, { tls: { ca: pair.certPem } })));
    const a = await agent(url, "t1", { tls: { ca: pair.certPem } });
    track(a.link);
    await ctl.link.send({ node: "t1" }, proto(command("tls1", "t1")), CONTENT_TYPES.protobuf, "tls1");
    assert.equal(idOf(await a.inbox.next()), "tls1");
    await a.link.publish("hello", proto(hello("t1")), CONTENT_TYPES.protobuf);
    assert.equal((await ctl.inbox.next()).kind, "hello");
    // without the CA the handshake fails until the connect timeout
    await rejectsWith(openAgent(agentLink(url, "t2", { connectTimeoutMs: 300 })), "BUS_UNAVAILABLE");
  });
});
