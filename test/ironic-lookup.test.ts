/**
 * The Ironic client and lookup against a fake Ironic (test/helpers/fake-ironic.ts): version discovery
 * and headers, failover between API URLs, IPA's lookup retry policy measured in virtual time, and
 * the token rules.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ManualClock, sequenceRandom } from "../core/clock.js";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { IronicClient, type LookupConfig, versionHeader } from "../ironic/client.js";
import { backoffMs, lookupNode } from "../ironic/lookup.js";
import { decideToken, MASKED_TOKEN } from "../ironic/token.js";
import { FAKE_NODE_UUID, fakeIronics, refusedUrl } from "./helpers/fake-ironic.js";

const MAC = "52:54:00:12:34:56";
const log = silentLogger();


const fake = fakeIronics([MAC]);

function client(urls: string[], extra: Partial<ConstructorParameters<typeof IronicClient>[0]> = {}): IronicClient {
  return new IronicClient({ apiUrls: urls, log, requestTimeoutMs: 5_000, ...extra });
}

describe("Ironic client: version discovery and headers", () => {
  it("reads default_version.version from GET / once, and caps the header at 1.62 on lookup and 1.68 on heartbeat", async () => {
    const f = await fake({ version: "1.82" });
    const c = client([f.url]);
    assert.deepEqual(await c.apiVersion(), { major: 1, minor: 82 });
    const res = await c.lookup([MAC], undefined);
    assert.ok(res.ok);
    await c.heartbeat(FAKE_NODE_UUID, { callback_url: "http://127.0.0.1:9999", agent_token: f.token ?? "", agent_version: "0.1.0" });
    assert.equal(f.received.filter((r) => r.path === "/").length, 1, "GET / is asked once");
    const [lookup] = f.lookups();
    assert.equal(lookup?.headers["x-openstack-ironic-api-version"], "1.62");
    assert.equal(lookup?.headers["accept"], "application/json");
    assert.equal(lookup?.query["addresses"], MAC);
    const [hb] = f.heartbeats();
    assert.equal(hb?.status, 202);
    assert.equal(hb?.headers["x-openstack-ironic-api-version"], "1.68");
    assert.equal(hb?.headers["content-type"], "application/json");
    assert.equal(hb?.headers["accept"], "application/json");
  });

  it("sends Ironic's own version when it is below the caps, and leaves out fields it does not know", async () => {
    const f = await fake({ version: "1.50" });
    const c = client([f.url]);
    await c.lookup([MAC, "52:54:00:ab:cd:ef"], FAKE_NODE_UUID);
    const [lookup] = f.lookups();
    assert.equal(lookup?.headers["x-openstack-ironic-api-version"], "1.50");
    assert.equal(lookup?.query["addresses"], `${MAC},52:54:00:ab:cd:ef`);
    assert.equal(lookup?.query["node_uuid"], FAKE_NODE_UUID);
    // Below 1.62 there is no token to send; below 1.68 no agent_verify_ca: Ironic would refuse them.
    await assert.rejects(
      c.heartbeat(FAKE_NODE_UUID, { callback_url: "http://127.0.0.1:9999", agent_token: "t".repeat(43), agent_version: "0.1.0", agent_verify_ca: "PEM" }),
      (e: unknown) => AgentError.is(e, "HEARTBEAT_FAILED") && /400/.test(e.message),
    );
    const [hb] = f.heartbeats();
    assert.equal(hb?.headers["x-openstack-ironic-api-version"], "1.50");
    assert.deepEqual(hb?.body, { callback_url: "http://127.0.0.1:9999", agent_version: "0.1.0" });
  });

  it("falls back to 1.31 while GET / gives no usable version, and asks again next time", async () => {
    const f = await fake({ version: "1.82" });
    f.script("/", [500, { status: 200, body: '{"default_version": {"id": "v1"}}' }, { status: 200, body: "not json" }]);
    const c = client([f.url]);
    for (let i = 0; i < 3; i++) assert.deepEqual(await c.apiVersion(), { major: 1, minor: 31 });
    assert.deepEqual(await c.apiVersion(), { major: 1, minor: 82 });
    await c.apiVersion();
    assert.equal(f.received.filter((r) => r.path === "/").length, 4);
    // At 1.31 the heartbeat carries neither agent_version (1.36) nor agent_token (1.62).
    assert.equal(versionHeader({ major: 1, minor: 31 }, 68), "1.31");
  });

  it("uses ironicApiVersion instead of asking", async () => {
    const f = await fake({ version: "1.82" });
    const c = client([f.url], { apiVersion: "1.70" });
    await c.lookup([MAC], undefined);
    assert.equal(f.received.filter((r) => r.path === "/").length, 0);
    assert.equal(f.lookups()[0]?.headers["x-openstack-ironic-api-version"], "1.62");
    assert.throws(() => client([f.url], { apiVersion: "latest" }), (e: unknown) => AgentError.is(e, "CONFIG_INVALID"));
  });
});

describe("Ironic client: several API URLs", () => {
  it("moves on after a connection error, and the URL that answered goes first", async () => {
    const dead = await refusedUrl();
    const f = await fake();
    const c = client([dead, f.url]);
    const res = await c.lookup([MAC], undefined);
    assert.ok(res.ok, "lookup went through the second URL");
    assert.deepEqual(c.urls, [f.url, dead]);
    const before = f.received.length;
    await c.lookup([MAC], undefined);
    assert.equal(f.received.length, before + 1);
  });

  it("does not move on after an HTTP error: that URL answered", async () => {
    const a = await fake();
    const b = await fake();
    a.script("/v1/lookup", [500]);
    const c = client([a.url, b.url], { apiVersion: "1.82" });
    const res = await c.lookup([MAC], undefined);
    assert.equal(res.ok, false);
    assert.equal(res.ok ? 0 : res.status, 500);
    assert.equal(b.received.length, 0);
    assert.deepEqual(c.urls, [a.url, b.url]);
  });

  it("reports every URL when none can be reached", async () => {
    const c = client([await refusedUrl(), await refusedUrl()], { apiVersion: "1.82" });
    await assert.rejects(c.request("GET", "/"), (e: unknown) => AgentError.is(e, "IRONIC_UNREACHABLE") && /ECONNREFUSED/.test(e.message) && e.details.split(";").length === 2);
    const res = await c.lookup([MAC], undefined);
    assert.equal(res.ok, false);
  });

  it("keeps only the URLs that answer for the advertise-address search", async () => {
    const dead = await refusedUrl();
    const f = await fake();
    const c = client([dead, f.url]);
    assert.deepEqual(await c.answeringUrls(2_000), [f.url]);
  });
});

describe("lookup: IPA's retry policy (virtual time)", () => {
  it("backs off exponentially with jitter between 1 and 60 s", () => {
    assert.equal(backoffMs(1, 0, 0.5), 1000);
    assert.equal(backoffMs(1, 0, 0), 1000, "0.75 s is raised to the 1 s floor");
    assert.equal(backoffMs(1, 3, 0), 6000);
    assert.equal(backoffMs(1, 3, 0.999999), 10000);
    assert.equal(backoffMs(1, 10, 0.5), 60000, "capped at 60 s");
    assert.equal(backoffMs(0, 1, 0.5), 2000, "the interval is at least 1 s");
    assert.equal(backoffMs(5, 0, 0.5), 5000);
  });

  it("retries on 404 until the node may be looked up", async () => {
    const f = await fake({ lookupAllowed: false });
    const clock = new ManualClock({ random: () => 0.5 });
    const retries: { waitMs: number; status?: number }[] = [];
    // Four 404s, then the node reaches a state that allows lookup (the conductor set DEPLOYWAIT).
    const onRetry = (i: { waitMs: number; status?: number }): void => {
      retries.push(i);
      if (retries.length === 4) f.allowLookup();
    };
    const result = await clock.drive(lookupNode({ client: client([f.url]), clock, log, macs: [MAC], timeoutS: 600, intervalS: 1, onRetry }));
    assert.equal(result.nodeUuid, FAKE_NODE_UUID);
    assert.deepEqual(
      retries.map((r) => [r.status, r.waitMs]),
      [
        [404, 1000],
        [404, 2000],
        [404, 4000],
        [404, 8000],
      ],
    );
    assert.deepEqual(
      clock.sleeps.map((s) => s.ms),
      retries.map((r) => r.waitMs),
    );
    assert.equal(f.lookups().length, retries.length + 1);
  });

  it("waits an extra 5, 10, then 30 s while the node is locked (409)", async () => {
    const f = await fake();
    f.lockFor(4);
    const clock = new ManualClock({ random: () => 0.5 });
    const retries: { waitMs: number; backoffMs: number; extraMs: number; status?: number }[] = [];
    await clock.drive(lookupNode({ client: client([f.url]), clock, log, macs: [MAC], timeoutS: 600, intervalS: 1, onRetry: (i) => retries.push(i) }));
    assert.deepEqual(
      retries.map((r) => [r.status, r.backoffMs, r.extraMs]),
      [
        [409, 1000, 5000],
        [409, 2000, 10000],
        [409, 4000, 30000],
        [409, 8000, 30000],
      ],
    );
    assert.deepEqual(
      clock.sleeps.map((s) => s.ms),
      [6000, 12000, 34000, 38000],
    );
  });

  it("retries on an answer that is not JSON, lacks node.uuid, or lacks config", async () => {
    const f = await fake();
    f.script("/v1/lookup", [
      { status: 200, body: "{not json" },
      { status: 200, body: JSON.stringify({ node: {}, config: { heartbeat_timeout: 30 } }) },
      { status: 200, body: JSON.stringify({ node: { uuid: FAKE_NODE_UUID } }) },
      503,
    ]);
    const clock = new ManualClock({ random: sequenceRandom([0.5]) });
    const reasons: string[] = [];
    const result = await clock.drive(lookupNode({ client: client([f.url]), clock, log, macs: [MAC], timeoutS: 600, intervalS: 1, onRetry: (i) => reasons.push(i.reason) }));
    assert.equal(result.nodeUuid, FAKE_NODE_UUID);
    assert.equal(reasons.length, 4);
    assert.match(reasons[0] ?? "", /not JSON/);
    assert.match(reasons[1] ?? "", /node\.uuid/);
    assert.match(reasons[2] ?? "", /neither config nor heartbeat_timeout/);
    assert.match(reasons[3] ?? "", /503/);
  });

  it("takes the old API's top-level heartbeat_timeout when there is no config", async () => {
    const f = await fake();
    f.script("/v1/lookup", [{ status: 200, body: JSON.stringify({ node: { uuid: FAKE_NODE_UUID }, heartbeat_timeout: 45 }) }]);
    const res = await client([f.url]).lookup([MAC], undefined);
    assert.ok(res.ok);
    assert.equal(res.result.config.heartbeatTimeoutS, 45);
    assert.equal(res.result.config.agentToken, null);
  });

  it("gives up with LOOKUP_FAILED when lookupTimeoutS is over, the last wait cut to the deadline", async () => {
    const f = await fake({ lookupAllowed: false });
    const clock = new ManualClock({ random: () => 0.5 });
    const started = clock.now();
    await assert.rejects(
      clock.drive(lookupNode({ client: client([f.url]), clock, log, macs: [MAC], timeoutS: 10, intervalS: 1 })),
      (e: unknown) => AgentError.is(e, "LOOKUP_FAILED") && e.message.includes(MAC) && /within 10 s \(5 attempts\)/.test(e.message) && /404/.test(e.message),
    );
    assert.deepEqual(
      clock.sleeps.map((s) => s.ms),
      [1000, 2000, 4000, 3000],
    );
    assert.equal(clock.now() - started, 10_000);
    assert.equal(f.lookups().length, 5);
  });

  it("retries on connection errors", async () => {
    const clock = new ManualClock({ random: () => 0.5 });
    const reasons: string[] = [];
    await assert.rejects(
      clock.drive(lookupNode({ client: client([await refusedUrl()], { apiVersion: "1.82" }), clock, log, macs: [MAC], timeoutS: 3, intervalS: 1, onRetry: (i) => reasons.push(i.reason) })),
      (e: unknown) => AgentError.is(e, "LOOKUP_FAILED") && /ECONNREFUSED/.test(e.message),
    );
    assert.equal(reasons.length, 2);
  });

  it("stops at once when its signal aborts", async () => {
    const f = await fake({ lookupAllowed: false });
    const clock = new ManualClock();
    const ac = new AbortController();
    const work = lookupNode({ client: client([f.url]), clock, log, macs: [MAC], timeoutS: 600, intervalS: 1, signal: ac.signal });
    await clock.waitForSleepers(1);
    ac.abort(new Error("SIGTERM"));
    await assert.rejects(work, /SIGTERM/);
  });
});

describe("lookup: the agent token", () => {
  const config = (agentToken: string | null): LookupConfig => ({ heartbeatTimeoutS: 300, agentToken, agentTokenRequired: true, tlsMinVersion: null, tlsCipherSuites: null, raw: {} });

  it("gets Ironic's token on the first lookup and ****** after", async () => {
    const f = await fake();
    const c = client([f.url]);
    const first = await c.lookup([MAC], undefined);
    const second = await c.lookup([MAC], undefined);
    assert.ok(first.ok && second.ok);
    assert.equal(first.result.config.agentToken?.length, 43);
    assert.equal(first.result.config.agentToken, f.token);
    assert.equal(first.result.config.agentTokenRequired, true);
    assert.equal(second.result.config.agentToken, MASKED_TOKEN);
    assert.deepEqual(decideToken(first.result.config, undefined), { kind: "use", token: f.token, source: "lookup" });
    assert.equal(decideToken(second.result.config, undefined).kind, "lockdown");
  });

  it("keeps a pregenerated token when Ironic answers ******", async () => {
    const pregenerated = "pregenerated-token-0123456789abcdefghijklmn";
    const f = await fake({ pregeneratedToken: pregenerated });
    const res = await client([f.url]).lookup([MAC], undefined);
    assert.ok(res.ok);
    assert.equal(res.result.config.agentToken, MASKED_TOKEN);
    assert.deepEqual(decideToken(res.result.config, pregenerated), { kind: "use", token: pregenerated, source: "pregenerated" });
  });

  it("prefers a fresh token from Ironic, ignores short ones, and locks down without any", () => {
    const fresh = "f".repeat(43);
    assert.deepEqual(decideToken(config(fresh), "pregenerated"), { kind: "use", token: fresh, source: "lookup" });
    assert.deepEqual(decideToken(config("short"), "pre"), { kind: "use", token: "pre", source: "pregenerated" });
    const masked = decideToken(config(MASKED_TOKEN), undefined);
    assert.equal(masked.kind, "lockdown");
    assert.match(masked.kind === "lockdown" ? masked.reason : "", /reboot the node/);
    assert.equal(decideToken(config(null), undefined).kind, "lockdown");
    assert.equal(decideToken(config("short"), undefined).kind, "lockdown");
  });

  it("gets no token from an Ironic older than 1.62", async () => {
    const f = await fake({ version: "1.61" });
    const res = await client([f.url]).lookup([MAC], undefined);
    assert.ok(res.ok);
    assert.equal(res.result.config.agentToken, null);
    assert.equal(f.token, undefined);
  });
});
