/**
 * Transport security with real brokers: TLS with CA verification, mutual TLS and broker credentials
 * on MQTT (mosquitto), NATS (nats-server) and WebSocket (our hub), through the real agent and
 * controller links, and once end to end through the agent bin's configuration keys.
 *
 * Certificates come from test/helpers/pki.ts (a test CA, a server certificate for 127.0.0.1 and a client
 * certificate it signed, and a second CA that signed nothing the servers use).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { createAccount, createOperator, createUser, type KeyPair } from "@nats-io/nkeys";
import type { AgentInbound, AgentLink, ControllerInbound, ControllerLink } from "../../core/bus.js";
import { CONTENT_TYPES } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import { silentLogger } from "../../core/log.js";
import { connectLink } from "../../controller/connect.js";
import { Controller } from "../../controller/controller.js";
import { MqttAgentLink, type MqttAgentLinkOptions } from "../../transports/mqtt/agent-link.js";
import { MqttControllerLink } from "../../transports/mqtt/controller-link.js";
import { NatsAgentLink, type NatsAgentLinkOptions } from "../../transports/nats/agent-link.js";
import { NatsControllerLink } from "../../transports/nats/controller-link.js";
import { WsAgentLink, type WsAgentLinkOptions } from "../../transports/ws/agent-link.js";
import { WsControllerLink } from "../../transports/ws/controller-link.js";
import { WsHub } from "../../transports/ws/hub.js";
import { until } from "../conformance/rig.js";
import { startMosquitto, type Mosquitto } from "../helpers/mosquitto.js";
import { startNatsServer, type NatsServer } from "../helpers/nats-server.js";
import { freePort } from "../helpers/net.js";
import { makePki, type Pki } from "../helpers/pki.js";
import { spawnNode } from "../helpers/process.js";

const log = silentLogger();
const JSON_TYPE = CONTENT_TYPES.json;
const AGENT_BIN = fileURLToPath(new URL("../../bin/ironbus-agent.ts", import.meta.url));
/** open() of a link that must fail gives up after this long. */
const REFUSE_MS = 1000;
const FAST = { reconnectMinMs: 50, reconnectMaxMs: 200 };

// ---- helpers ------------------------------------------------------------------------------------

/** Option changes for one link: a value replaces the default, undefined removes it. */
type Changes<T> = { readonly [K in keyof T]?: T[K] | undefined };

function changed<T extends object>(defaults: T, changes: Changes<T>): T {
  const out = new Map<string, unknown>(Object.entries(defaults));
  for (const [key, value] of Object.entries(changes)) {
    if (value === undefined) out.delete(key);
    else out.set(key, value);
  }
  return Object.fromEntries(out) as T;
}

/** Handles that keep the process busy: sockets and timers. */
const WATCHED = ["TCPSocketWrap", "TCPWrap", "TLSWrap", "Timeout", "Immediate"];

function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) if (WATCHED.includes(r)) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

function above(baseline: Map<string, number>): string[] {
  const now = resources();
  return WATCHED.filter((r) => (now.get(r) ?? 0) > (baseline.get(r) ?? 0)).map((r) => `${r}: ${now.get(r) ?? 0} (was ${baseline.get(r) ?? 0})`);
}

/** Nothing the failed links started is left: no socket, no timer, now and a little later (no redial). */
async function nothingLeft(baseline: Map<string, number>): Promise<void> {
  await until(() => above(baseline).length === 0, 1000, "the refused links' sockets and timers to go");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(above(baseline), [], "a refused link left a socket or a timer behind");
}

/** open() of `link` rejects, within REFUSE_MS and a margin; returns the error. */
async function refused(link: AgentLink | ControllerLink, code: string, message: RegExp): Promise<AgentError> {
  const started = Date.now();
  const events = { message: () => undefined, up: () => undefined, down: () => undefined };
  const err = await link.open(events).then(
    () => {
      void link.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  const elapsed = Date.now() - started;
  assert.ok(AgentError.is(err), `${link.kind}: open() should have been refused, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.match(err.message, message);
  assert.ok(elapsed < REFUSE_MS + 1500, `${link.kind}: refused after ${elapsed} ms`);
  return err;
}

/** Opens both links, sends a command to the node and an answer back: proves a working channel. */
async function roundTrip(agent: AgentLink, controller: ControllerLink, node: string): Promise<void> {
  const atAgent: AgentInbound[] = [];
  const atController: ControllerInbound[] = [];
  await controller.open({ message: (m) => atController.push(m) });
  try {
    await agent.open({ message: (m) => (m.ack(), atAgent.push(m)), up: () => undefined, down: () => undefined });
    try {
      const command = Buffer.from(JSON.stringify({ test: "command over TLS", node }));
      await controller.send({ node }, command, JSON_TYPE, `cmd-${node}`);
      await until(() => atAgent.length > 0, 5000, `${agent.kind}: the command to reach the agent`);
      assert.deepEqual(Buffer.from(atAgent[0]?.bytes ?? []), command);
      assert.equal(atAgent[0]?.source, "node");
      const answer = Buffer.from(JSON.stringify({ test: "answer over TLS", node }));
      await agent.publish("result", answer, JSON_TYPE);
      await until(() => atController.some((m) => m.node === node && m.kind === "result"), 5000, `${agent.kind}: the answer to reach the controller`);
      assert.deepEqual(Buffer.from(atController.find((m) => m.kind === "result")?.bytes ?? []), answer);
    } finally {
      await agent.close();
    }
  } finally {
    await controller.close();
  }
}

/** A NATS JWT (header, claims, ed25519 signature by `signer`), as nsc makes them. The server does not check jti. */
function natsJwt(signer: KeyPair, subject: string, name: string, nats: Record<string, unknown>): string {
  const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims: Record<string, unknown> = { iat: Math.floor(Date.now() / 1000) - 60, iss: signer.getPublicKey(), name, sub: subject, nats };
  claims["jti"] = createHash("sha256").update(JSON.stringify(claims)).digest("hex").slice(0, 52).toUpperCase();
  const signed = `${b64({ typ: "JWT", alg: "ed25519-nkey" })}.${b64(claims)}`;
  return `${signed}.${Buffer.from(signer.sign(new TextEncoder().encode(signed))).toString("base64url")}`;
}

function natsCreds(jwt: string, user: KeyPair): string {
  const seed = new TextDecoder().decode(user.getSeed());
  return `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n${seed}\n------END USER NKEY SEED------\n`;
}

// ---- the tests ----------------------------------------------------------------------------------

describe("transport security with real brokers", () => {
  let pki: Pki;
  before(() => {
    pki = makePki();
  });
  after(() => pki.dispose());

  describe("NATS: nats-server with TLS (client certificates verified) and users with passwords and nkeys", () => {
    let server: NatsServer;
    let url: string;
    const nkeyUser = createUser();
    const stranger = createUser();
    const seed = new TextDecoder().decode(nkeyUser.getSeed());
    let mtls: { ca: string; cert: string; key: string };
    before(async () => {
      mtls = { ca: pki.ca, cert: pki.client.cert, key: pki.client.key };
      server = await startNatsServer(undefined, {
        config: [
          `tls { cert_file: ${JSON.stringify(pki.server.certFile)}, key_file: ${JSON.stringify(pki.server.keyFile)}, ca_file: ${JSON.stringify(pki.caFile)}, verify: true, timeout: 2 }`,
          `authorization { users: [ { user: agent, password: agent-pw }, { user: controller, password: controller-pw }, { nkey: ${nkeyUser.getPublicKey()} } ] }`,
        ].join("\n"),
      });
      url = `tls://127.0.0.1:${server.port}`;
    });
    after(() => server.dispose());

    const agentLink = (node: string, o: Changes<NatsAgentLinkOptions>): NatsAgentLink =>
      new NatsAgentLink(changed({ servers: url, node, log, user: "agent", pass: "agent-pw", tls: mtls, connectTimeoutMs: REFUSE_MS, pingIntervalMs: 1000, ...FAST }, o));

    it("mutual TLS: the server refuses a client without a certificate and accepts the same link with one", async () => {
      // The server ends the TLS 1.3 handshake with a "certificate required" alert after the client's
      // side of it is done; nats.js 3.4 does not pass that on and waits for its own handshake timer, so
      // the link can only say that no connection came within the time (and that library timer, 10 s,
      // outlives open(): the one thing left behind, which is why this test runs first).
      await refused(agentLink("nats-no-cert", { tls: { ca: pki.ca } }), "BUS_UNAVAILABLE", /no connection to tls:\/\/127\.0\.0\.1:\d+ within 1000 ms: timeout/);
      const link = agentLink("nats-cert", { connectTimeoutMs: 10_000 });
      await link.open({ message: () => undefined, up: () => undefined, down: () => undefined });
      assert.equal(link.connected, true);
      await link.close();
    });

    it("tls:// verified by the CA, with a client certificate: agent and controller links connect and deliver both ways", async () => {
      const controller = new NatsControllerLink({ servers: url, log, user: "controller", pass: "controller-pw", tls: mtls, ...FAST });
      await roundTrip(agentLink("nats-tls", { connectTimeoutMs: 10_000 }), controller, "nats-tls");
    });

    it("refuses a server whose certificate the configured CA did not sign (and one only the system CAs would have to trust), leaving nothing running", async () => {
      const baseline = resources();
      const bad = /certificate/;
      await Promise.all([
        refused(agentLink("nats-other-ca", { tls: { ...mtls, ca: pki.otherCa } }), "BUS_UNAVAILABLE", bad),
        // nats:// with no TLS options at all: the server requires TLS, the client upgrades and checks with the system CAs.
        refused(agentLink("nats-system-cas", { servers: `nats://127.0.0.1:${server.port}`, tls: undefined }), "BUS_UNAVAILABLE", bad),
        refused(new NatsControllerLink({ servers: url, log, user: "controller", pass: "controller-pw", tls: { ...mtls, ca: pki.otherCa }, connectTimeoutMs: REFUSE_MS, ...FAST }), "BUS_UNAVAILABLE", bad),
      ]);
      await nothingLeft(baseline);
    });

    it("user/password: the right password connects, a wrong one is refused at once as an authorization failure", async () => {
      const link = agentLink("nats-password", { connectTimeoutMs: 10_000 });
      await link.open({ message: () => undefined, up: () => undefined, down: () => undefined });
      assert.equal(link.connected, true);
      await link.close();
      const err = await refused(agentLink("nats-wrong-password", { pass: "not-the-password" }), "CONFIG_INVALID", /authorization refused .*Authorization Violation/);
      assert.ok(err.message.includes(url));
    });

    it("nkey: the seed as text and as a file connect, another user's seed is refused", async () => {
      const seedFile = join(pki.dir, "agent.nk");
      writeFileSync(seedFile, `${seed}\n`, { mode: 0o600 });
      for (const [node, nkeySeed] of [["nats-seed-text", seed], ["nats-seed-file", seedFile]] as const) {
        const link = agentLink(node, { user: undefined, pass: undefined, nkeySeed, connectTimeoutMs: 10_000 });
        await link.open({ message: () => undefined, up: () => undefined, down: () => undefined });
        assert.equal(link.connected, true, node);
        await link.close();
      }
      const wrong = new TextDecoder().decode(stranger.getSeed());
      await refused(agentLink("nats-wrong-seed", { user: undefined, pass: undefined, nkeySeed: wrong }), "CONFIG_INVALID", /authorization refused .*Authorization Violation/);
    });

    it("creds file (operator mode: user JWT signed by a preloaded account, and its nkey seed): connects and delivers; a user of an unknown account is refused", async (t) => {
      const operator = createOperator();
      const account = createAccount();
      const system = createAccount();
      const limits = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };
      const userClaims = { type: "user", version: 2, pub: {}, sub: {}, subs: -1, data: -1, payload: -1 };
      const accountJwt = natsJwt(operator, account.getPublicKey(), "fleet", { type: "account", version: 2, limits: { ...limits, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 } });
      const systemJwt = natsJwt(operator, system.getPublicKey(), "SYS", { type: "account", version: 2, limits });
      const agentUser = createUser();
      const controllerUser = createUser();
      const rogueAccount = createAccount();
      const rogueUser = createUser();
      const credsServer = await startNatsServer(t, {
        config: [
          `operator: ${natsJwt(operator, operator.getPublicKey(), "ironbus-test", { type: "operator", version: 2 })}`,
          `system_account: ${system.getPublicKey()}`,
          "resolver: MEMORY",
          `resolver_preload: { ${account.getPublicKey()}: ${accountJwt}, ${system.getPublicKey()}: ${systemJwt} }`,
        ].join("\n"),
      });
      const credsFile = join(pki.dir, "agent.creds");
      writeFileSync(credsFile, natsCreds(natsJwt(account, agentUser.getPublicKey(), "agent", userClaims), agentUser), { mode: 0o600 });
      const controllerCreds = natsCreds(natsJwt(account, controllerUser.getPublicKey(), "controller", userClaims), controllerUser);
      const common = { servers: credsServer.url, log, pingIntervalMs: 1000, ...FAST };
      await roundTrip(
        new NatsAgentLink({ ...common, node: "nats-creds", creds: credsFile }),
        new NatsControllerLink({ ...common, creds: controllerCreds }),
        "nats-creds",
      );
      const rogue = natsCreds(natsJwt(rogueAccount, rogueUser.getPublicKey(), "rogue", userClaims), rogueUser);
      await refused(new NatsAgentLink({ ...common, node: "nats-rogue", creds: rogue, connectTimeoutMs: REFUSE_MS }), "CONFIG_INVALID", /authorization refused .*Authorization Violation/);
    });
  });

  describe("MQTT: mosquitto with TLS listeners and a password file", () => {
    let broker: Mosquitto;
    let tlsUrl: string;
    let mtlsUrl: string;
    before(async () => {
      const passwd = join(pki.dir, "mosquitto.passwd");
      execFileSync("mosquitto_passwd", ["-b", "-c", passwd, "agent", "agent-pw"]);
      execFileSync("mosquitto_passwd", ["-b", passwd, "controller", "controller-pw"]);
      const tlsPort = await freePort();
      const mtlsPort = await freePort();
      const serverTls = [`cafile ${pki.caFile}`, `certfile ${pki.server.certFile}`, `keyfile ${pki.server.keyFile}`];
      broker = await startMosquitto(undefined, {
        config: [
          // Global (per_listener_settings is false): no anonymous clients on any listener.
          "allow_anonymous false",
          `password_file ${passwd}`,
          `listener ${tlsPort} 127.0.0.1`,
          ...serverTls,
          `listener ${mtlsPort} 127.0.0.1`,
          ...serverTls,
          "require_certificate true",
        ].join("\n"),
      });
      tlsUrl = `mqtts://127.0.0.1:${tlsPort}`;
      mtlsUrl = `mqtts://127.0.0.1:${mtlsPort}`;
    });
    after(() => broker.dispose());

    const agentLink = (node: string, o: Changes<MqttAgentLinkOptions>): MqttAgentLink =>
      new MqttAgentLink(changed({ url: tlsUrl, node, log, username: "agent", password: "agent-pw", tls: { ca: pki.ca }, connectTimeoutMs: REFUSE_MS, ...FAST }, o));

    it("mqtts:// verified by the CA: agent and controller links connect and deliver both ways", async () => {
      const controller = new MqttControllerLink({ url: tlsUrl, log, username: "controller", password: "controller-pw", tls: { ca: pki.ca }, ...FAST });
      await roundTrip(agentLink("mqtt-tls", { connectTimeoutMs: 10_000 }), controller, "mqtt-tls");
    });

    it("refuses a broker whose certificate the configured CA did not sign (and one only the system CAs would have to trust), leaving nothing running", async () => {
      const baseline = resources();
      const bad = /certificate/;
      await Promise.all([
        refused(agentLink("mqtt-other-ca", { tls: { ca: pki.otherCa } }), "BUS_UNAVAILABLE", bad),
        refused(agentLink("mqtt-system-cas", { tls: undefined }), "BUS_UNAVAILABLE", bad),
        refused(new MqttControllerLink({ url: tlsUrl, log, username: "controller", password: "controller-pw", tls: { ca: pki.otherCa }, connectTimeoutMs: REFUSE_MS, ...FAST }), "BUS_UNAVAILABLE", bad),
      ]);
      await nothingLeft(baseline);
      assert.doesNotMatch(broker.log(), /New client connected from .* as ironbus-agent-mqtt-other-ca/);
    });

    it("mutual TLS: the broker refuses a client without a certificate and accepts one with a certificate the CA signed", async () => {
      await refused(agentLink("mqtt-no-cert", { url: mtlsUrl }), "BUS_UNAVAILABLE", /certificate required/);
      const controller = new MqttControllerLink({
        url: mtlsUrl,
        log,
        username: "controller",
        password: "controller-pw",
        tls: { ca: pki.ca, cert: pki.client.cert, key: pki.client.key },
        ...FAST,
      });
      await roundTrip(agentLink("mqtt-mtls", { url: mtlsUrl, tls: { ca: pki.ca, cert: pki.client.cert, key: pki.client.key }, connectTimeoutMs: 10_000 }), controller, "mqtt-mtls");
    });

    it("username/password: the right password connects, a wrong or missing one is refused as not authorized", async () => {
      const link = agentLink("mqtt-password", { connectTimeoutMs: 10_000 });
      await link.open({ message: () => undefined, up: () => undefined, down: () => undefined });
      assert.equal(link.connected, true);
      await link.close();
      await Promise.all([
        refused(agentLink("mqtt-wrong-password", { password: "not-the-password" }), "BUS_UNAVAILABLE", /Not authorized/i),
        refused(agentLink("mqtt-no-password", { username: undefined, password: undefined }), "BUS_UNAVAILABLE", /Not authorized/i),
      ]);
    });
  });

  describe("WebSocket: mutual TLS on the hub (clientCa)", () => {
    it("refuses an agent without a client certificate and accepts one signed by the CA", async () => {
      const hub = new WsHub();
      await hub.start({ host: "127.0.0.1", port: 0, log, tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca } });
      try {
        const base = { url: hub.url(), log, connectTimeoutMs: REFUSE_MS, ...FAST };
        await refused(new WsAgentLink({ ...base, node: "ws-mtls-none", tls: { ca: pki.ca } }), "BUS_UNAVAILABLE", /./);
        const controller = new WsControllerLink({ url: hub.url(), log, tls: { ca: pki.ca, cert: pki.client.cert, key: pki.client.key }, ...FAST });
        await roundTrip(new WsAgentLink({ ...base, connectTimeoutMs: 10_000, node: "ws-mtls", tls: { ca: pki.ca, cert: pki.client.cert, key: pki.client.key } }), controller, "ws-mtls");
      } finally {
        await hub.stop();
      }
    });
  });

  // Agents also prove who they are with a header the hub checks (authorizeAgent).
  describe("WebSocket: our hub on wss:// with an Authorization header check", () => {
    let hub: WsHub;
    let url: string;
    before(async () => {
      hub = new WsHub();
      await hub.start({
        host: "127.0.0.1",
        port: 0,
        log,
        tls: { cert: pki.server.cert, key: pki.server.key },
        authorizeAgent: (_node, headers) => headers.authorization === "Bearer agent-secret",
        authorizeController: (headers) => headers.authorization === "Bearer controller-secret",
      });
      url = hub.url();
    });
    after(() => hub.stop());

    const agentLink = (node: string, o: Changes<WsAgentLinkOptions>): WsAgentLink =>
      new WsAgentLink(changed({ url, node, log, headers: { authorization: "Bearer agent-secret" }, tls: { ca: pki.ca }, connectTimeoutMs: REFUSE_MS, ...FAST }, o));

    it("wss:// verified by the CA: agent and remote controller links connect and deliver both ways", async () => {
      assert.match(url, /^wss:\/\/127\.0\.0\.1:\d+$/);
      const controller = new WsControllerLink({ url, log, headers: { authorization: "Bearer controller-secret" }, tls: { ca: pki.ca }, ...FAST });
      await roundTrip(agentLink("ws-tls", { connectTimeoutMs: 10_000 }), controller, "ws-tls");
    });

    it("refuses a hub whose certificate the configured CA did not sign (and one only the system CAs would have to trust), leaving nothing running", async () => {
      const baseline = resources();
      const bad = /certificate/;
      await Promise.all([
        refused(agentLink("ws-other-ca", { tls: { ca: pki.otherCa } }), "BUS_UNAVAILABLE", bad),
        refused(agentLink("ws-system-cas", { tls: undefined }), "BUS_UNAVAILABLE", bad),
        refused(new WsControllerLink({ url, log, headers: { authorization: "Bearer controller-secret" }, tls: { ca: pki.otherCa }, connectTimeoutMs: REFUSE_MS, ...FAST }), "BUS_UNAVAILABLE", bad),
      ]);
      await nothingLeft(baseline);
    });

    it("credentials: a wrong or missing Authorization header is refused at once as UNAUTHORIZED (HTTP 401)", async () => {
      await Promise.all([
        refused(agentLink("ws-wrong-secret", { headers: { authorization: "Bearer not-the-secret" } }), "UNAUTHORIZED", /HTTP 401/),
        refused(agentLink("ws-no-secret", { headers: {} }), "UNAUTHORIZED", /HTTP 401/),
      ]);
    });
  });

  describe("the agent bin, configured with busCaFile, busUsername and busPassword", () => {
    it("dials mosquitto over mqtts:// with a password; a controller (connectLink, same CA) sees its hello and heartbeat and gets an answer", async (t) => {
      const passwd = join(pki.dir, "bin.passwd");
      execFileSync("mosquitto_passwd", ["-b", "-c", passwd, "u", "p"]);
      const tlsPort = await freePort();
      const broker = await startMosquitto(t, {
        config: ["allow_anonymous false", `password_file ${passwd}`, `listener ${tlsPort} 127.0.0.1`, `cafile ${pki.caFile}`, `certfile ${pki.server.certFile}`, `keyfile ${pki.server.keyFile}`].join("\n"),
      });
      const mqttsUrl = `mqtts://127.0.0.1:${tlsPort}`;
      const link = await connectLink({ transport: "mqtt", url: mqttsUrl, log, username: "u", password: "p", caFile: pki.caFile });
      const controller = new Controller({ link, log, secret: "tls-test-secret", heartbeatIntervalS: 1 });
      await controller.start();
      t.after(() => controller.stop());

      const { child: agent, output, exited } = spawnNode(t, ["--import", "tsx", AGENT_BIN, "--no-kernel-cmdline", "--standalone", "--transports", "mqtt", "--mqtt-url", mqttsUrl, "--bus-ca-file", pki.caFile, "--bus-username", "u", "--bus-password", "p", "--node", "tls-node", "--log-level", "warn"]);

      await until(() => controller.node("tls-node")?.hello !== undefined, 20_000, `the agent's hello (agent output: ${output()})`);
      await until(() => controller.node("tls-node")?.heartbeat !== undefined, 10_000, `the agent's heartbeat (agent output: ${output()})`);
      assert.equal(controller.node("tls-node")?.state, "alive");
      const answer = await controller.command({ node: "tls-node" }, "agent.get_command", { command_id: "none" }, { deadlineMs: 10_000 });
      // The agent ran the command and answered: no such command id (IPA's answer).
      const a = answer.answers.get("tls-node");
      assert.equal(a?.kind, "result", JSON.stringify(a));
      assert.equal(a.kind === "result" ? a.result.command_status : "", "FAILED");
      assert.equal(a.kind === "result" ? a.result.command_error?.type : "", "RequestedObjectNotFoundError");
      // The broker saw the agent authenticate as user u, on the TLS listener.
      const seen = /New client connected from 127\.0\.0\.1:(\d+) as ironbus-agent-tls-node \(.*u'u'\)/.exec(broker.log());
      assert.ok(seen !== null, broker.log());
      assert.ok(broker.log().includes(`New connection from 127.0.0.1:${seen[1]} on port ${tlsPort}.`), broker.log());

      agent.kill("SIGTERM");
      assert.equal(await exited, 0, output());
    });
  });
});
