/**
 * Heartbeats: the interval rules measured in virtual time (ManualClock) against a fake Ironic, the
 * forced heartbeat after a real command run through the agent's REST API, the token switch after
 * lookup, and auto-TLS at Ironic 1.68+ (the agent_verify_ca Ironic receives verifies the agent).
 */
import assert from "node:assert/strict";
import { createServer, request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { z } from "zod";
import { defineCommand, defineExtension } from "../core/command.js";
import { ManualClock, sequenceRandom } from "../core/clock.js";
import { parseConfig, type ConfigInput } from "../core/config.js";
import { silentLogger } from "../core/log.js";
import { callbackUrl } from "../ironic/advertise.js";
import { IronicClient } from "../ironic/client.js";
import type { CollectorDeps } from "../ironic/collectors.js";
import { FOLLOW_UP_MS, FORCED_DELAY_MS, Heartbeater, type HeartbeatEvent, MAX_SLEEP_MS } from "../ironic/heartbeat.js";
import { connectToIronic, startHeartbeats, useAutoTls } from "../ironic/link.js";
import { Agent } from "../router/agent.js";
import { generateSelfSignedCertificate } from "../transports/rest/autotls.js";
import { RestTransport, type RestTlsOptions } from "../transports/rest/server.js";
import { execRunner } from "../utilities/exec.js";
import { createUtilities } from "../utilities/index.js";
import { FAKE_NODE_UUID, FakeIronic, fakeIronics } from "./helpers/fake-ironic.js";

const MAC = "52:54:00:12:34:56";
const log = silentLogger();
const CALLBACK = "http://127.0.0.1:9999";

const fake = fakeIronics([MAC]);

/** A client that has looked the node up, and the token Ironic gave. */
async function lookedUp(f: FakeIronic): Promise<{ client: IronicClient; token: string }> {
  const client = new IronicClient({ apiUrls: [f.url], log, requestTimeoutMs: 5_000 });
  const res = await client.lookup([MAC], undefined);
  assert.ok(res.ok);
  assert.ok(f.token !== undefined);
  return { client, token: f.token };
}

function sentEvents(events: readonly HeartbeatEvent[]): Extract<HeartbeatEvent, { type: "sent" }>[] {
  return events.filter((e): e is Extract<HeartbeatEvent, { type: "sent" }> => e.type === "sent");
}

/** Advances virtual time, sleep by sleep, until `done()` holds. */
async function runUntil(clock: ManualClock, done: () => boolean, limit = 10_000): Promise<void> {
  for (let i = 0; !done(); i++) {
    if (i > limit) throw new Error("runUntil: too many steps");
    await clock.waitForSleepers(1);
    if (done()) break;
    await clock.advanceToNext();
  }
}

describe("heartbeat timing (virtual time)", () => {
  it("goes out at once, then every heartbeat_timeout × U(0.3, 0.6), never sleeping more than 5 s at a time", async () => {
    const f = await fake({ heartbeatTimeout: 300 });
    const { client, token } = await lookedUp(f);
    const clock = new ManualClock({ random: sequenceRandom([0, 0.5, 0.999]) });
    const hb = new Heartbeater({ client, clock, log, nodeUuid: FAKE_NODE_UUID, heartbeatTimeoutS: 300, payload: () => ({ callback_url: CALLBACK, agent_token: token, agent_version: "0.1.0" }) });
    const events: HeartbeatEvent[] = [];
    hb.onEvent((e) => events.push(e));
    const t0 = clock.now();
    hb.start();
    await runUntil(clock, () => sentEvents(events).length >= 3);
    await hb.stop();
    const sent = sentEvents(events);
    assert.deepEqual(
      sent.map((e) => [e.reason, e.ok, e.at - t0, e.nextInMs]),
      [
        ["first", true, 0, 90_000],
        ["interval", true, 90_000, 135_000],
        ["interval", true, 225_000, 179_910],
      ],
    );
    assert.ok(clock.sleeps.length > 0);
    for (const s of clock.sleeps) assert.ok(s.ms <= MAX_SLEEP_MS, `slept ${s.ms} ms at once`);
    assert.equal(clock.sleeps.filter((s) => s.at - t0 < 90_000).length, 18, "90 s in 5 s steps");
    assert.equal(f.accepted().length, 3);
    assert.deepEqual(f.heartbeats()[0]?.body, { callback_url: CALLBACK, agent_token: token, agent_version: "0.1.0" });
  });

  it("retries 5 × U(1, 2) s after an error, logs it and goes on", async () => {
    const f = await fake({ heartbeatTimeout: 60 });
    const { client, token } = await lookedUp(f);
    f.script(`/v1/heartbeat/${FAKE_NODE_UUID}`, [500, 409]);
    const clock = new ManualClock({ random: sequenceRandom([0, 0.5, 0.5]) });
    const hb = new Heartbeater({ client, clock, log, nodeUuid: FAKE_NODE_UUID, heartbeatTimeoutS: 60, payload: () => ({ callback_url: CALLBACK, agent_token: token }) });
    const events: HeartbeatEvent[] = [];
    hb.onEvent((e) => events.push(e));
    const t0 = clock.now();
    hb.start();
    await runUntil(clock, () => sentEvents(events).length >= 3);
    await hb.stop();
    const sent = sentEvents(events);
    assert.deepEqual(
      sent.map((e) => [e.ok, e.at - t0, e.nextInMs]),
      [
        [false, 0, 5_000],
        [false, 5_000, 7_500],
        [true, 12_500, 27_000],
      ],
    );
    assert.match(sent[0]?.error ?? "", /Error heartbeating to agent API: Ironic answered 500/);
    assert.match(sent[1]?.error ?? "", /409 \(node locked\)/);
  });

  it("a forced heartbeat goes 0.5 s after the request, several requests make one, and a follow-up goes 5 s later", async () => {
    const f = await fake({ heartbeatTimeout: 300 });
    const { client, token } = await lookedUp(f);
    const clock = new ManualClock({ random: () => 0 });
    const hb = new Heartbeater({ client, clock, log, nodeUuid: FAKE_NODE_UUID, heartbeatTimeoutS: 300, payload: () => ({ callback_url: CALLBACK, agent_token: token }) });
    const events: HeartbeatEvent[] = [];
    hb.onEvent((e) => events.push(e));
    const t0 = clock.now();
    hb.start();
    await runUntil(clock, () => sentEvents(events).length >= 1);
    await clock.waitForSleepers(1);
    await clock.advance(12_000);
    await clock.waitForSleepers(1);
    hb.force("a");
    hb.force("b");
    await clock.advance(200);
    hb.force("c"); // inside the window: no later heartbeat
    await clock.waitForSleepers(1);
    assert.deepEqual(clock.pending(), [FORCED_DELAY_MS - 200]);
    await runUntil(clock, () => sentEvents(events).length >= 3);
    await clock.waitForSleepers(1);
    const sent = sentEvents(events);
    assert.deepEqual(
      sent.map((e) => [e.reason, e.at - t0]),
      [
        ["first", 0],
        ["forced", 12_000 + FORCED_DELAY_MS],
        ["follow-up", 12_000 + FORCED_DELAY_MS + FOLLOW_UP_MS],
      ],
    );
    // After the follow-up the regular schedule resumes: 90 s after it.
    const last = sent[2];
    assert.equal(last?.nextInMs, 90_000);
    assert.deepEqual(
      events.filter((e) => e.type === "forced").map((e) => (e.type === "forced" ? e.dueInMs : -1)),
      [FORCED_DELAY_MS, FORCED_DELAY_MS, FORCED_DELAY_MS - 200],
    );
    await hb.stop();
    assert.equal(f.accepted().length, 3);
  });

  it("a regular heartbeat that goes out after the request covers it", async () => {
    const f = await fake({ heartbeatTimeout: 10 });
    const { client, token } = await lookedUp(f);
    const clock = new ManualClock({ random: () => 0 });
    const hb = new Heartbeater({ client, clock, log, nodeUuid: FAKE_NODE_UUID, heartbeatTimeoutS: 10, payload: () => ({ callback_url: CALLBACK, agent_token: token }), forcedDelayMs: 1000 });
    const events: HeartbeatEvent[] = [];
    hb.onEvent((e) => events.push(e));
    const t0 = clock.now();
    hb.start();
    await runUntil(clock, () => sentEvents(events).length >= 1);
    await clock.waitForSleepers(1);
    await clock.advance(2_500); // regular one due at 3 s
    hb.force();
    await runUntil(clock, () => sentEvents(events).length >= 3);
    await hb.stop();
    assert.deepEqual(
      sentEvents(events).map((e) => [e.reason, e.at - t0]),
      [
        ["first", 0],
        ["forced", 3_000],
        // The regular one 3 s later (10 s × 0.3) comes before the 5 s follow-up and stands for it.
        ["follow-up", 6_000],
      ],
    );
  });

  it("stops cleanly, also with a heartbeat in flight", async () => {
    const f = await fake();
    const { client, token } = await lookedUp(f);
    const clock = new ManualClock();
    const hb = new Heartbeater({ client, clock, log, nodeUuid: FAKE_NODE_UUID, heartbeatTimeoutS: 300, payload: () => ({ callback_url: CALLBACK, agent_token: token }) });
    const events: HeartbeatEvent[] = [];
    hb.onEvent((e) => events.push(e));
    hb.start();
    await runUntil(clock, () => sentEvents(events).length >= 1);
    await clock.waitForSleepers(1);
    await hb.stop();
    assert.equal(events.at(-1)?.type, "stopped");
    hb.force();
    await clock.advance(600_000);
    assert.equal(f.heartbeats().length, 1);

    // An Ironic that never answers: stop() aborts the request.
    const hang = createServer(() => undefined);
    await new Promise<void>((resolve) => hang.listen(0, "127.0.0.1", resolve));
    const hangClient = new IronicClient({ apiUrls: [`http://127.0.0.1:${(hang.address() as AddressInfo).port}`], log, apiVersion: "1.82", requestTimeoutMs: 60_000 });
    let attempts = 0;
    const stuck = new Heartbeater({
      client: { heartbeat: (u, p, s) => ((attempts += 1), hangClient.heartbeat(u, p, s)) },
      clock,
      log,
      nodeUuid: FAKE_NODE_UUID,
      heartbeatTimeoutS: 300,
      payload: () => ({ callback_url: CALLBACK }),
    });
    stuck.start();
    while (attempts === 0) await new Promise((r) => setTimeout(r, 5));
    const started = Date.now();
    await stuck.stop();
    assert.ok(Date.now() - started < 2_000);
    hang.closeAllConnections();
    await new Promise<void>((resolve) => hang.close(() => resolve()));
  });
});

interface HttpResult {
  readonly status: number;
  readonly body: unknown;
}

function call(url: string, method: string, body?: unknown, ca?: string): Promise<HttpResult> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const options = { method, headers: payload === undefined ? {} : { "Content-Type": "application/json", "Content-Length": String(Buffer.byteLength(payload)) } };
    const req = target.protocol === "https:" ? httpsRequest(target, { ...options, ...(ca === undefined ? {} : { ca }) }) : httpRequest(target, options);
    req.on("error", reject);
    req.on("response", (res) => {
      let text = "";
      res.on("data", (d: Buffer) => (text += d.toString()));
      res.on("end", () => {
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.end(payload);
  });
}

const noCollectors: CollectorDeps = { inventory: () => Promise.resolve({}), managers: () => [], systemLogs: () => Promise.resolve(""), run: execRunner, log };

/** A test-only async command that takes `ms`. */
const testExtension = defineExtension("test", {
  pause: defineCommand({
    mode: "async",
    params: z.object({ ms: z.number().int().min(0) }).strict(),
    run: async ({ ms }) => {
      await new Promise((r) => setTimeout(r, ms));
      return { paused: ms };
    },
  }),
});

/** Lookup against the fake, then the agent as the bin starts it (token before listening), then heartbeats. */
async function agentWithIronic(f: FakeIronic, configExtra: Partial<ConfigInput> = {}, tlsFor?: "auto") {
  const config = parseConfig({
    apiUrls: [f.url],
    listenHost: "127.0.0.1",
    listenPort: 0,
    advertiseHost: "127.0.0.1",
    nicWaitTimeoutS: 0,
    lookupTimeoutS: 5,
    ...configExtra,
  });
  const session = await connectToIronic({ config, log, run: execRunner, macs: () => Promise.resolve([MAC]), collectors: noCollectors });
  let tls: RestTlsOptions | undefined;
  let verifyCa: string | undefined;
  if (tlsFor === "auto" && useAutoTls(config, session, log)) {
    const pair = generateSelfSignedCertificate({ ip: session.advertiseHost, hostname: "ironbus-test" });
    tls = { cert: pair.certPem, key: pair.keyPem };
    verifyCa = pair.certPem;
  }
  const utilities = await createUtilities({ config, log });
  const rest = new RestTransport({ host: config.listenHost, port: config.listenPort, log, tls });
  const agent = new Agent({ config, log, extensions: [...utilities.extensions, testExtension], transports: [rest] });
  if (session.token.kind === "use") agent.setToken(session.token.token);
  await agent.start();
  const { port } = rest.address();
  const url = callbackUrl(tls === undefined ? "http" : "https", session.advertiseHost, port);
  const handle = startHeartbeats({ session, agent, callbackUrl: url, verifyCa, log });
  return {
    session,
    agent,
    url,
    verifyCa,
    handle,
    close: async () => {
      await handle?.stop();
      await agent.stop();
    },
  };
}

describe("heartbeats with the real agent", () => {
  it("sends the first heartbeat once the API listens, with callback_url, agent_token and agent_version", async (t) => {
    const f = await fake({ version: "1.82" });
    const a = await agentWithIronic(f, { version: "9.9.9" });
    t.after(() => a.close());
    const hb = await f.waitForAccepted(1);
    assert.deepEqual(hb.body, { callback_url: a.url, agent_token: f.token, agent_version: "9.9.9" });
    assert.equal(f.agentUrl, a.url);
    assert.ok(hb.at >= (f.lookups()[0]?.at ?? Infinity));
    assert.equal(a.session.lookup.config.heartbeatTimeoutS, 300);
  });

  it("requires the token from lookup on the REST API: 401 without it or with another", async (t) => {
    const f = await fake();
    const a = await agentWithIronic(f);
    t.after(() => a.close());
    const token = f.token ?? "";
    const body = { name: "standby.get_partition_uuids", params: {} };
    assert.equal((await call(`${a.url}/v1/commands/?wait=true`, "POST", body)).status, 401);
    assert.equal((await call(`${a.url}/v1/commands/?wait=true&agent_token=wrong-token`, "POST", body)).status, 401);
    assert.equal((await call(`${a.url}/v1/commands/?agent_token=wrong-token`, "GET")).status, 401);
    const ok = await call(`${a.url}/v1/commands/?wait=true&agent_token=${token}`, "POST", body);
    assert.equal(ok.status, 200);
    assert.equal((ok.body as { command_status: string }).command_status, "SUCCEEDED");
    // Status stays open, as in IPA.
    assert.equal((await call(`${a.url}/v1/status`, "GET")).status, 200);
  });

  it("heartbeats within a second of a command finishing (IPA: up to 5 s)", async (t) => {
    const f = await fake({ heartbeatTimeout: 300 });
    const a = await agentWithIronic(f);
    t.after(() => a.close());
    await f.waitForAccepted(1);
    let finishedAt = 0;
    a.agent.onFinished(() => (finishedAt = Date.now()));
    const started = await call(`${a.url}/v1/commands/?agent_token=${f.token ?? ""}`, "POST", { name: "test.pause", params: { ms: 150 } });
    assert.equal((started.body as { command_status: string }).command_status, "RUNNING");
    const forced = await f.waitForAccepted(2, 5_000);
    assert.ok(finishedAt > 0);
    const delay = forced.at - finishedAt;
    assert.ok(delay >= FORCED_DELAY_MS - 50 && delay < 1_000, `forced heartbeat ${delay} ms after the command finished`);
    // What the conductor sees when it acts on that heartbeat: the command done.
    const list = await call(`${a.url}/v1/commands/`, "GET");
    const last = (list.body as { commands: { command_name: string; command_status: string }[] }).commands.at(-1);
    assert.deepEqual([last?.command_name, last?.command_status], ["pause", "SUCCEEDED"]);
  });

  it("serves no commands and sends no heartbeats when the token was already handed out (locked down)", async () => {
    const f = await fake();
    f.token = "already-handed-out-token-0123456789abcdefg";
    const config = parseConfig({ apiUrls: [f.url], listenHost: "127.0.0.1", listenPort: 0, advertiseHost: "127.0.0.1", nicWaitTimeoutS: 0 });
    const session = await connectToIronic({ config, log, run: execRunner, macs: () => Promise.resolve([MAC]), collectors: noCollectors });
    assert.equal(session.token.kind, "lockdown");
    assert.equal(startHeartbeats({ session, agent: { version: "0", token: () => undefined, onFinished: () => () => undefined }, callbackUrl: CALLBACK, log }), undefined);
    const rest = new RestTransport({ host: "127.0.0.1", port: 0, log });
    const agent = new Agent({ config, log, extensions: [], transports: [rest] });
    await agent.start();
    try {
      const url = `http://127.0.0.1:${rest.address().port}`;
      assert.equal((await call(`${url}/v1/commands/?agent_token=anything`, "POST", { name: "x.y", params: {} })).status, 401);
      assert.equal((await call(`${url}/v1/commands/`, "GET")).status, 401);
      assert.equal((await call(`${url}/v1/status`, "GET")).status, 200);
    } finally {
      await agent.stop();
    }
    assert.equal(f.heartbeats().length, 0);
  });
});

describe("auto-TLS with Ironic", () => {
  it("is on by default from API 1.68: https callback, and the agent_verify_ca Ironic gets verifies the agent", async (t) => {
    const f = await fake({ version: "1.82" });
    const a = await agentWithIronic(f, {}, "auto");
    t.after(() => a.close());
    const hb = await f.waitForAccepted(1);
    const body = hb.body as { callback_url: string; agent_verify_ca?: string };
    assert.match(body.callback_url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(body.agent_verify_ca, a.verifyCa);
    assert.ok(f.agentVerifyCa?.startsWith("-----BEGIN CERTIFICATE-----"));
    // Ironic's side: the stored PEM as the only CA, the recorded agent_url as the address.
    const status = await call(`${f.agentUrl ?? ""}/v1/status`, "GET", undefined, f.agentVerifyCa);
    assert.equal(status.status, 200);
    const steps = await call(`${f.agentUrl ?? ""}/v1/commands/?wait=true&agent_token=${f.token ?? ""}`, "POST", { name: "standby.get_partition_uuids", params: {} }, f.agentVerifyCa);
    assert.equal(steps.status, 200);
    // Another certificate does not verify it.
    await assert.rejects(call(`${f.agentUrl ?? ""}/v1/status`, "GET", undefined, generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "other" }).certPem));
  });

  it("is off below 1.68, when turned off, and with static certificate files", async () => {
    const old = await fake({ version: "1.67" });
    const cfg = (extra: Partial<ConfigInput>) => parseConfig({ apiUrls: [old.url], advertiseHost: "127.0.0.1", nicWaitTimeoutS: 0, ...extra });
    const session = await connectToIronic({ config: cfg({}), log, run: execRunner, macs: () => Promise.resolve([MAC]), collectors: noCollectors });
    assert.equal(session.supportsAutoTls, false);
    assert.equal(useAutoTls(cfg({}), session, log), false);
    assert.equal(useAutoTls(cfg({ autoTls: true }), session, log), false);
    const recent = { ...session, supportsAutoTls: true };
    assert.equal(useAutoTls(cfg({}), recent, log), true);
    assert.equal(useAutoTls(cfg({ autoTls: false }), recent, log), false);
    assert.equal(useAutoTls(cfg({ tlsCertFile: "/c", tlsKeyFile: "/k" }), recent, log), false);
  });
});
