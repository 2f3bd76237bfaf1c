/**
 * The NATS links (transports/nats/) against a real nats-server 2.9 with JetStream
 * (test/helpers/nats-server.ts). Each test uses its own subject prefix and stream names, so tests
 * sharing a server never see each other's messages.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer as createTcpServer, type Socket } from "node:net";
import { after, afterEach, before, describe, it } from "node:test";
import { createUser } from "@nats-io/nkeys";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { AGENT_SENDS, type AgentInbound, type AgentLinkEvents, type ControllerInbound, type ControllerLinkEvents } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import { NatsAgentLink, type NatsAgentLinkOptions } from "../../transports/nats/agent-link.js";
import { NatsControllerLink, type NatsControllerLinkOptions } from "../../transports/nats/controller-link.js";
import { groupConsumer, nodeConsumer, nodeSubject, outSubject, natsLayout } from "../../transports/nats/layout.js";
import { startNatsServer, type NatsServer } from "../helpers/nats-server.js";
import { freePort } from "../helpers/net.js";

const te = new TextEncoder();
const td = new TextDecoder();
const JSON_CT = "application/json";
const PROTO_CT = "application/x-protobuf";

// ---- recorders: wait on events, never on fixed sleeps ----

class Waitable {
  readonly #waiters = new Set<() => void>();
  protected notify(): void {
    for (const w of [...this.#waiters]) w();
  }
  /** Resolves once `pred()` holds (checked after every event), rejects after `ms`. */
  until(pred: () => boolean, what: string, ms = 8000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!pred()) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, ms);
      this.#waiters.add(check);
    });
  }
}

interface Got {
  readonly text: string;
  readonly inbound: AgentInbound;
}

class AgentEvents extends Waitable implements AgentLinkEvents {
  readonly got: Got[] = [];
  ups = 0;
  readonly downs: string[] = [];
  /** Ack everything on arrival. */
  autoAck = true;
  onMessage: ((g: Got) => void) | undefined;
  message(inbound: AgentInbound): void {
    const g = { text: td.decode(inbound.bytes), inbound };
    this.got.push(g);
    if (this.autoAck) inbound.ack();
    this.onMessage?.(g);
    this.notify();
  }
  up(): void {
    this.ups++;
    this.notify();
  }
  down(reason: string): void {
    this.downs.push(reason);
    this.notify();
  }
  texts(): string[] {
    return this.got.map((g) => g.text);
  }
  has(text: string): boolean {
    return this.got.some((g) => g.text === text);
  }
  count(text: string): number {
    return this.got.filter((g) => g.text === text).length;
  }
  waitFor(text: string, ms?: number): Promise<void> {
    return this.until(() => this.has(text), `agent message ${text}`, ms);
  }
}

class ControllerEvents extends Waitable implements ControllerLinkEvents {
  readonly got: Array<ControllerInbound & { readonly text: string }> = [];
  message(msg: ControllerInbound): void {
    this.got.push({ ...msg, text: td.decode(msg.bytes) });
    this.notify();
  }
  waitFor(text: string, ms?: number): Promise<void> {
    return this.until(() => this.got.some((g) => g.text === text), `controller message ${text}`, ms);
  }
  find(text: string): (ControllerInbound & { readonly text: string }) | undefined {
    return this.got.find((g) => g.text === text);
  }
}

// ---- fixtures ----

let server: NatsServer;
let seq = 0;

/** A fresh prefix and pair of stream names for one test. */
function space(): { prefix: string; inStream: string; stateStream: string } {
  seq++;
  return { prefix: `t${seq}.v1`, inStream: `T${seq}_IN`, stateStream: `T${seq}_STATE` };
}

type Space = ReturnType<typeof space>;
const FAST = { connectTimeoutMs: 5000, reconnectMinMs: 100, reconnectMaxMs: 500 } as const;

/** What a test opened, undone after it in reverse order (links before the servers they use). */
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (let undo = cleanups.pop(); undo !== undefined; undo = cleanups.pop()) await undo();
});

async function openAgent(
  url: string,
  sp: Space,
  node: string,
  extra: Partial<NatsAgentLinkOptions> = {},
  events = new AgentEvents(),
): Promise<{ link: NatsAgentLink; events: AgentEvents }> {
  const link = new NatsAgentLink({ servers: url, node, ...sp, ...FAST, ...extra });
  cleanups.push(() => link.close());
  await link.open(events);
  return { link, events };
}

async function openController(
  url: string,
  sp: Space,
  extra: Partial<NatsControllerLinkOptions> = {},
  events = new ControllerEvents(),
): Promise<{ link: NatsControllerLink; events: ControllerEvents }> {
  const link = new NatsControllerLink({ servers: url, ...sp, ...FAST, ...extra });
  cleanups.push(() => link.close());
  await link.open(events);
  return { link, events };
}

async function rawClient(url: string): Promise<NatsConnection> {
  const nc = await connect({ servers: url });
  cleanups.push(() => nc.close());
  return nc;
}

before(async () => {
  server = await startNatsServer();
});
after(async () => {
  await server.dispose();
});

// ---- tests ----

describe("NATS links", () => {
  it("carries node, group and fleet commands to the agent, and every kind back, with the content type", async () => {
    const sp = space();
    const ctl = await openController(server.url, sp);
    const { link, events } = await openAgent(server.url, sp, "n1", {
      groups: ["rack-a"],
      online: { bytes: te.encode("online-n1"), contentType: JSON_CT },
      offline: { bytes: te.encode("offline-n1"), contentType: JSON_CT },
    });
    assert.equal(link.connected, true);
    assert.equal(events.ups, 1);
    await ctl.events.waitFor("online-n1");

    await ctl.link.send({ node: "n1" }, te.encode("to-node"), JSON_CT, "id-1");
    await ctl.link.send({ group: "rack-a" }, te.encode("to-group"), PROTO_CT, "id-2");
    await ctl.link.send({ fleet: true }, te.encode("to-fleet"), JSON_CT, "id-3");
    await ctl.link.send({ group: "rack-b" }, te.encode("to-other-group"), JSON_CT, "id-4");
    await ctl.link.send({ node: "n2" }, te.encode("to-other-node"), JSON_CT, "id-5");
    await events.until(() => events.got.length >= 3, "three commands");
    const by = (t: string): AgentInbound | undefined => events.got.find((g) => g.text === t)?.inbound;
    assert.equal(by("to-node")?.source, "node");
    assert.equal(by("to-node")?.contentType, JSON_CT);
    assert.equal(by("to-group")?.source, "group");
    assert.equal(by("to-group")?.contentType, PROTO_CT);
    assert.equal(by("to-fleet")?.source, "fleet");

    // A command without a Content-Type header arrives with contentType undefined.
    const nc = await rawClient(server.url);
    await jetstream(nc).publish(nodeSubject(natsLayout(sp), "n1"), te.encode("no-header"));
    await events.waitFor("no-header");
    assert.equal(by("no-header")?.contentType, undefined);

    // A repeat of an envelope id within the duplicate window is stored once.
    await ctl.link.send({ node: "n1" }, te.encode("to-node"), JSON_CT, "id-1");
    await ctl.link.send({ node: "n1" }, te.encode("after-repeat"), JSON_CT, "id-6");
    await events.waitFor("after-repeat");
    assert.equal(events.count("to-node"), 1);
    assert.ok(!events.has("to-other-group") && !events.has("to-other-node"));

    // Every kind, to its own subject; replyTo instead when given.
    for (const kind of AGENT_SENDS) await link.publish(kind, te.encode(`k-${kind}`), kind === "result" ? PROTO_CT : JSON_CT);
    await ctl.events.until(() => AGENT_SENDS.every((k) => ctl.events.find(`k-${k}`) !== undefined), "every kind");
    for (const kind of AGENT_SENDS) {
      const got = ctl.events.find(`k-${kind}`);
      assert.equal(got?.node, "n1");
      assert.equal(got?.kind, kind);
      assert.equal(got?.contentType, kind === "result" ? PROTO_CT : JSON_CT);
    }
    const inbox = nc.subscribe("reply.here.1", { max: 1 });
    await nc.flush();
    await link.publish("result", te.encode("replied"), JSON_CT, "reply.here.1");
    for await (const m of inbox) {
      assert.equal(td.decode(m.data), "replied");
      assert.equal(m.headers?.get("Content-Type"), JSON_CT);
    }
    assert.equal(ctl.events.find("replied"), undefined);

    // Something on an out subject without a header: contentType undefined; an unknown kind: kind undefined.
    nc.publish(outSubject(natsLayout(sp), "n9", "event"), te.encode("bare"));
    nc.publish(`${sp.prefix}.out.n9.custom`, te.encode("custom"));
    await ctl.events.waitFor("custom");
    assert.equal(ctl.events.find("bare")?.contentType, undefined);
    assert.equal(ctl.events.find("custom")?.kind, undefined);

    // 64 publishes in one turn share flushes and all resolve.
    await Promise.all(Array.from({ length: 64 }, (_, i) => link.publish("progress", te.encode(`p${i}`), JSON_CT)));
    await ctl.events.until(() => ctl.events.got.filter((g) => g.text.startsWith("p")).length === 64, "64 progress");

    // Over the server's max_payload (1 MiB by default): refused, not sent.
    const big = new Uint8Array(2 * 1024 * 1024);
    await assert.rejects(link.publish("result", big, JSON_CT), (e: unknown) => AgentError.is(e, "MESSAGE_TOO_LARGE"));
    await assert.rejects(ctl.link.send({ node: "n1" }, big, JSON_CT, "big"), (e: unknown) => AgentError.is(e, "MESSAGE_TOO_LARGE"));
    const jsm = await jetstreamManager(nc);
    const ci = await jsm.consumers.info(sp.inStream, groupConsumer("n1", "rack-a"));
    assert.equal(ci.config.inactive_threshold, 24 * 3600 * 1e9);
    assert.equal(ci.config.max_deliver, -1);
    assert.equal(ci.config.ack_policy, "explicit");
    const streams = await jsm.streams.info(sp.stateStream);
    assert.equal(streams.config.max_msgs_per_subject, 1);

    // close() says offline (NATS has no last will).
    await link.close();
    assert.equal(link.connected, false);
    await ctl.events.waitFor("offline-n1");
    assert.equal(ctl.events.find("offline-n1")?.kind, "status");
    await assert.rejects(link.publish("event", te.encode("late"), JSON_CT));
    assert.equal(events.downs.length, 0, "close() is not a down");
  });

  it("keeps node commands for an agent that is away or has never connected; late nodes get no old broadcasts", async () => {
    const sp = space();
    const ctl = await openController(server.url, sp);
    // Before the node ever connected (no consumer exists yet).
    await ctl.link.send({ node: "fresh" }, te.encode("before-first-connect"), JSON_CT, "a1");
    await ctl.link.send({ fleet: true }, te.encode("old-fleet"), JSON_CT, "a2");
    await ctl.link.send({ group: "g1" }, te.encode("old-group"), JSON_CT, "a3");
    const first = await openAgent(server.url, sp, "fresh", { groups: ["g1"] });
    await first.events.waitFor("before-first-connect");

    // While the link is closed.
    await first.link.close();
    await ctl.link.send({ node: "fresh" }, te.encode("while-away"), JSON_CT, "a4");
    await ctl.link.send({ group: "g1" }, te.encode("group-while-away"), JSON_CT, "a5");
    await ctl.link.send({ fleet: true }, te.encode("fleet-while-away"), JSON_CT, "a6");
    const second = await openAgent(server.url, sp, "fresh", { groups: ["g1"] });
    await second.events.until(() => ["while-away", "group-while-away", "fleet-while-away"].every((t) => second.events.has(t)), "kept commands");
    assert.ok(!second.events.has("before-first-connect"), "acked before: not again");

    // A node that appears now does not replay old broadcasts, but gets new ones.
    const late = await openAgent(server.url, sp, "late", { groups: ["g1"] });
    await ctl.link.send({ fleet: true }, te.encode("new-fleet"), JSON_CT, "a7");
    await ctl.link.send({ group: "g1" }, te.encode("new-group"), JSON_CT, "a8");
    await late.events.until(() => late.events.has("new-fleet") && late.events.has("new-group"), "new broadcasts");
    assert.deepEqual(late.events.texts().sort(), ["new-fleet", "new-group"]);
    assert.ok(!first.events.has("old-fleet") && !first.events.has("old-group"));
  });

  it("redelivers what was not acked (after ack_wait, and at once after the link comes back), never what was", async () => {
    const sp = space();
    const ctl = await openController(server.url, sp);
    const events = new AgentEvents();
    events.autoAck = false;
    const a = await openAgent(server.url, sp, "r1", { ackWaitMs: 700 }, events);
    await ctl.link.send({ node: "r1" }, te.encode("acked"), JSON_CT, "r-1");
    await ctl.link.send({ node: "r1" }, te.encode("unacked"), JSON_CT, "r-2");
    await events.until(() => events.has("acked") && events.has("unacked"), "both");
    events.got.find((g) => g.text === "acked")?.inbound.ack();
    const t0 = Date.now();
    await events.until(() => events.count("unacked") === 2, "redelivery after ack_wait", 5000);
    assert.ok(Date.now() - t0 >= 400, "not before ack_wait");
    assert.equal(events.count("acked"), 1);

    // Closing releases what is not acked: the next link gets it at once (not after ack_wait).
    await a.link.close();
    const b = await openAgent(server.url, sp, "r1", { ackWaitMs: 60_000 });
    await b.events.waitFor("unacked", 3000);
    await ctl.link.send({ node: "r1" }, te.encode("marker"), JSON_CT, "r-3");
    await b.events.waitFor("marker");
    assert.ok(!b.events.has("acked"));
  });

  it("gives the latest hello, heartbeat and status of each node to a controller that opens later", async () => {
    const sp = space();
    const { link } = await openAgent(server.url, sp, "s1", { offline: { bytes: te.encode("s1-offline"), contentType: JSON_CT } });
    const other = await openAgent(server.url, sp, "s2");
    await link.publish("hello", te.encode("s1-hello"), JSON_CT);
    await link.publish("heartbeat", te.encode("s1-hb-1"), JSON_CT);
    await link.publish("heartbeat", te.encode("s1-hb-2"), PROTO_CT);
    await link.publish("result", te.encode("s1-result"), JSON_CT);
    await other.link.publish("hello", te.encode("s2-hello"), JSON_CT);
    await link.close();

    const events = new ControllerEvents();
    await openController(server.url, sp, {}, events);
    // Delivered before open() resolved.
    assert.deepEqual(events.got.map((g) => g.text).sort(), ["s1-hb-2", "s1-hello", "s1-offline", "s2-hello"]);
    assert.equal(events.find("s1-hb-2")?.kind, "heartbeat");
    assert.equal(events.find("s1-hb-2")?.contentType, PROTO_CT);
    assert.equal(events.find("s1-offline")?.kind, "status");
    // Then live traffic.
    await other.link.publish("event", te.encode("s2-live"), JSON_CT);
    await events.waitFor("s2-live");
  });

  it("changes groups: joins start delivery, leaves stop it", async () => {
    const sp = space();
    const ctl = await openController(server.url, sp);
    const { link, events } = await openAgent(server.url, sp, "j1");
    await link.setGroups(["x", "y"]);
    await ctl.link.send({ group: "x" }, te.encode("x1"), JSON_CT, "j-1");
    await ctl.link.send({ group: "y" }, te.encode("y1"), JSON_CT, "j-2");
    await events.until(() => events.has("x1") && events.has("y1"), "x1 y1");
    await link.setGroups(["y"]);
    await ctl.link.send({ group: "x" }, te.encode("x2"), JSON_CT, "j-3");
    await ctl.link.send({ group: "y" }, te.encode("y2"), JSON_CT, "j-4");
    await events.waitFor("y2");
    await ctl.link.send({ node: "j1" }, te.encode("marker"), JSON_CT, "j-5");
    await events.waitFor("marker");
    assert.ok(!events.has("x2"));
    const nc = await rawClient(server.url);
    const jsm = await jetstreamManager(nc);
    await assert.rejects(jsm.consumers.info(sp.inStream, groupConsumer("j1", "x")), /consumer not found/);
    assert.equal((await jsm.consumers.info(sp.inStream, nodeConsumer("j1"))).config.deliver_policy, "all");
    assert.equal((await jsm.consumers.info(sp.inStream, groupConsumer("j1", "y"))).config.deliver_policy, "new");
    await assert.rejects(link.setGroups(["bad.group"]), (e: unknown) => AgentError.is(e, "CONFIG_INVALID"));
  });

  it('broadcast "core": group and fleet by plain subscription (at most once), node still durable', async () => {
    const sp = space();
    const ctl = await openController(server.url, sp);
    const { link, events } = await openAgent(server.url, sp, "c1", { broadcast: "core", groups: ["g"] });
    await ctl.link.send({ fleet: true }, te.encode("f1"), JSON_CT, "c-1");
    await ctl.link.send({ group: "g" }, te.encode("g1"), PROTO_CT, "c-2");
    await ctl.link.send({ node: "c1" }, te.encode("n1"), JSON_CT, "c-3");
    await events.until(() => ["f1", "g1", "n1"].every((t) => events.has(t)), "three");
    assert.equal(events.got.find((g) => g.text === "f1")?.inbound.source, "fleet");
    assert.equal(events.got.find((g) => g.text === "g1")?.inbound.contentType, PROTO_CT);
    const nc = await rawClient(server.url);
    const jsm = await jetstreamManager(nc);
    const names: string[] = [];
    for await (const ci of jsm.consumers.list(sp.inStream)) names.push(ci.name);
    assert.deepEqual(names, [nodeConsumer("c1")], "no broadcast consumers in core mode");

    await link.setGroups(["h"]);
    await ctl.link.send({ group: "h" }, te.encode("h1"), JSON_CT, "c-4");
    await events.waitFor("h1");

    // The trade-off: what is broadcast while the agent is away is lost to it; node commands are not.
    await link.close();
    await ctl.link.send({ fleet: true }, te.encode("f-away"), JSON_CT, "c-5");
    await ctl.link.send({ node: "c1" }, te.encode("n-away"), JSON_CT, "c-6");
    const again = await openAgent(server.url, sp, "c1", { broadcast: "core", groups: ["g"] });
    await again.events.waitFor("n-away");
    await ctl.link.send({ fleet: true }, te.encode("f-now"), JSON_CT, "c-7");
    await again.events.waitFor("f-now");
    assert.ok(!again.events.has("f-away"));
  });

  it("refuses bad node and group names, bad options and bad targets (CONFIG_INVALID)", async () => {
    const isConfig = (e: unknown): boolean => AgentError.is(e, "CONFIG_INVALID");
    for (const node of ["", "a.b", "a*", "a>", "a b", "x".repeat(129), "nöde"]) {
      assert.throws(() => new NatsAgentLink({ servers: server.url, node }), isConfig, node);
    }
    assert.throws(() => new NatsAgentLink({ servers: server.url, node: "ok", groups: ["g.1"] }), isConfig);
    assert.throws(() => new NatsAgentLink({ servers: server.url, node: "ok", prefix: "a..b" }), isConfig);
    assert.throws(() => new NatsAgentLink({ servers: server.url, node: "ok", inStream: "A.B" }), isConfig);
    assert.throws(() => new NatsAgentLink({ servers: server.url, node: "ok", user: "u", token: "t" }), isConfig);
    assert.throws(() => new NatsAgentLink({ servers: [], node: "ok" }), isConfig);
    const sp = space();
    const ctl = await openController(server.url, sp);
    await assert.rejects(ctl.link.send({ node: "a.b" }, te.encode("x"), JSON_CT), isConfig);
    await assert.rejects(ctl.link.send({ group: "*" }, te.encode("x"), JSON_CT), isConfig);
  });

  it("open() rejects in bounded time when nothing listens, and leaves nothing running", async () => {
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const sp = space();
    const link = new NatsAgentLink({ servers: url, node: "nobody", ...sp, connectTimeoutMs: 600, reconnectMinMs: 100 });
    const t0 = Date.now();
    await assert.rejects(link.open(new AgentEvents()), (e: unknown) => AgentError.is(e) && /within 600 ms/.test(e.message));
    const took = Date.now() - t0;
    assert.ok(took >= 500 && took < 2000, `took ${took} ms`);
    assert.equal(link.connected, false);
    const ctl = new NatsControllerLink({ servers: url, ...sp, connectTimeoutMs: 400 });
    await assert.rejects(ctl.open(new ControllerEvents()), /within 400 ms/);
    // Nothing dials the port afterwards.
    const sockets: Socket[] = [];
    const tcp = createTcpServer((s) => sockets.push(s));
    await new Promise<void>((r) => tcp.listen(port, "127.0.0.1", r));
    await new Promise((r) => setTimeout(r, 400));
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => tcp.close(() => r()));
    assert.equal(sockets.length, 0);

    // A server that accepts TCP but never speaks NATS: bounded too.
    const accepted: Socket[] = [];
    const silent = createTcpServer((s) => accepted.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const address = silent.address();
    const silentPort = typeof address === "object" && address !== null ? address.port : 0;
    const stuck = new NatsAgentLink({ servers: `nats://127.0.0.1:${silentPort}`, node: "nobody", ...sp, connectTimeoutMs: 500 });
    const t1 = Date.now();
    await assert.rejects(stuck.open(new AgentEvents()));
    assert.ok(Date.now() - t1 < 2000);
    // (The library keeps its half-open socket until the peer closes it: nats-io/nats.js#64.)
    for (const s of accepted) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  });

  it("open() rejects in bounded time when the server has no JetStream", async () => {
    const plain = await startNatsServer(undefined, { jetstream: false });
    cleanups.push(() => plain.dispose());
    const sp = space();
    const link = new NatsAgentLink({ servers: plain.url, node: "nojs", ...sp, connectTimeoutMs: 800 });
    await assert.rejects(link.open(new AgentEvents()), /not subscribed within 800 ms: .*jetstream/i);
    const ctl = new NatsControllerLink({ servers: plain.url, ...sp, connectTimeoutMs: 800 });
    await assert.rejects(ctl.open(new ControllerEvents()), /within 800 ms: .*jetstream/i);
  });

  it("loads the NATS libraries lazily (type-only imports at top level)", () => {
    for (const file of ["agent-link.ts", "controller-link.ts", "options.ts", "layout.ts"]) {
      const text = readFileSync(new URL(`../../transports/nats/${file}`, import.meta.url), "utf8");
      for (const line of text.split("\n").filter((l) => /^import .*@nats-io/.test(l))) {
        assert.match(line, /^import type /, `${file}: ${line}`);
      }
    }
  });
});

describe("NATS links across a server restart", () => {
  it("come back by themselves (down, up), lose nothing acked, resume the consumers; publish rejects while down", async () => {
    const own = await startNatsServer();
    cleanups.push(() => own.dispose());
    const sp = space();
    const ctl = await openController(own.url, sp);
    const events = new AgentEvents();
    const online = { bytes: te.encode("k1-online"), contentType: JSON_CT };
    const { link } = await openAgent(own.url, sp, "k1", { ackWaitMs: 1000, groups: ["g"], online }, events);
    const nc = await rawClient(own.url);
    const jsm = await jetstreamManager(nc);
    const settled = async (): Promise<void> => {
      for (;;) {
        const ci = await jsm.consumers.info(sp.inStream, nodeConsumer("k1"));
        if (ci.num_ack_pending === 0 && ci.num_pending === 0) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    // Sends like the controller's outbox: again until the broker takes it (the id makes a repeat harmless).
    const sendSure = async (text: string, target: { node: string } | { group: string } = { node: "k1" }): Promise<void> => {
      for (;;) {
        try {
          await ctl.link.send(target, te.encode(text), JSON_CT, `id-${text}`);
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 25));
        }
      }
    };

    // 1. A clean stop and start: the consumer resumes where it was, nothing acked comes again.
    for (let i = 0; i < 5; i++) await sendSure(`m${i}`);
    await events.until(() => [0, 1, 2, 3, 4].every((i) => events.has(`m${i}`)), "m0..m4");
    await settled();
    await own.restart();
    await events.until(() => events.downs.length === 1 && events.ups === 2, "down, up", 15_000);
    await sendSure("after-clean-restart");
    await events.waitFor("after-clean-restart");
    assert.deepEqual(events.texts(), ["m0", "m1", "m2", "m3", "m4", "after-clean-restart"]);
    // (After its own reconnect the controller reads the fleet state again: repeats are expected.)
    await ctl.events.until(() => ctl.events.got.filter((g) => g.text === "k1-online").length >= 2, "online again");

    // 2. One command delivered and not acked, then the broker is killed in the middle of a stream.
    events.autoAck = false;
    await sendSure("unacked");
    await events.waitFor("unacked");
    events.autoAck = true;
    let killed: Promise<void> | undefined;
    events.onMessage = (g) => {
      if (g.text === "s10" && killed === undefined) killed = own.kill();
    };
    const sender = (async () => {
      for (let i = 0; i < 30; i++) await sendSure(`s${i}`, i % 3 === 0 ? { group: "g" } : { node: "k1" });
    })();
    await events.until(() => events.downs.length === 2, "down");
    assert.equal(link.connected, false);
    await assert.rejects(link.publish("heartbeat", te.encode("while-down"), JSON_CT), /down/);
    await killed;
    await own.start();
    await events.until(() => events.ups === 3, "up again", 15_000);
    assert.equal(link.connected, true);
    await sender;
    // Every command the broker took arrives (a SIGKILL may lose the server's record of recent acks:
    // then acked commands come again too, at least once; the session drops repeats by envelope id).
    await events.until(() => Array.from({ length: 30 }, (_, i) => `s${i}`).every((t) => events.has(t)), "s0..s29", 15_000);
    await events.until(() => events.count("unacked") >= 2, "the un-acked command again");
    // The controller's subscription is back too.
    await link.publish("heartbeat", te.encode("after-crash"), JSON_CT);
    await ctl.events.waitFor("after-crash");
  });
});

describe("NATS reconnect pacing", () => {
  it("spaces reconnect attempts (backoff with jitter), then comes back", async () => {
    const own = await startNatsServer();
    cleanups.push(() => own.dispose());
    const sp = space();
    const { link, events } = await openAgent(own.url, sp, "p1", { reconnectMinMs: 100, reconnectMaxMs: 400 });
    await own.kill();
    await events.until(() => events.downs.length === 1, "down");
    // Something on the port that refuses every handshake: count the attempts for a while.
    const attempts: number[] = [];
    const counter = createTcpServer((s) => {
      attempts.push(Date.now());
      s.destroy();
    });
    await new Promise<void>((r) => counter.listen(own.port, "127.0.0.1", r));
    await new Promise((r) => setTimeout(r, 1500));
    await new Promise<void>((r) => counter.close(() => r()));
    // Without pacing this would be hundreds; with 50-400 ms of jittered backoff it is a handful.
    assert.ok(attempts.length >= 2 && attempts.length <= 30, `${attempts.length} attempts`);
    const gaps = attempts.slice(1).map((t, i) => t - (attempts[i] ?? t));
    assert.ok(gaps.every((g) => g >= 40), `gaps ${gaps.join(",")}`);
    await own.start();
    await events.until(() => events.ups === 2, "up again", 10_000);
    assert.equal(link.connected, true);
  });
});

describe("NATS links with authentication", () => {
  it("user/password, token and nkey; a wrong password is refused at once", async () => {
    const nkey = createUser();
    const seed = td.decode(nkey.getSeed());
    const own = await startNatsServer(undefined, {
      config: `authorization { users = [ { user: "agent", password: "s3cret" }, { nkey: "${nkey.getPublicKey()}" } ] }`,
    });
    cleanups.push(() => own.dispose());
    const sp = space();
    const ctl = await openController(own.url, sp, { user: "agent", pass: "s3cret" });
    const a = await openAgent(own.url, sp, "u1", { nkeySeed: seed });
    await ctl.link.send({ node: "u1" }, te.encode("hi"), JSON_CT, "u-1");
    await a.events.waitFor("hi");
    const bad = new NatsAgentLink({ servers: own.url, node: "u2", ...sp, user: "agent", pass: "wrong", connectTimeoutMs: 5000 });
    const t0 = Date.now();
    await assert.rejects(bad.open(new AgentEvents()), (e: unknown) => AgentError.is(e, "CONFIG_INVALID"));
    assert.ok(Date.now() - t0 < 2000);

    const tokenServer = await startNatsServer(undefined, { config: `authorization { token: "tok-123" }` });
    cleanups.push(() => tokenServer.dispose());
    const t = await openAgent(tokenServer.url, space(), "u3", { token: "tok-123" });
    assert.equal(t.link.connected, true);
  });
});
