/**
 * The agent as npm installs it: the built bundle (dist/, split into chunks), over each bus, against
 * the real hub and brokers. Source-level tests run through tsx and would not see a bundling problem
 * (a CommonJS library whose named exports a split chunk hides behind `default`).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { spawnNode } from "./helpers/process.js";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { silentLogger } from "../core/log.js";
import { Controller } from "../controller/controller.js";
import { KITS, type Broker } from "./bus/kits.js";
import { until } from "./conformance/rig.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const AGENT = fileURLToPath(new URL("../dist/ironbus-agent.mjs", import.meta.url));
const log = silentLogger();

describe("the built agent (dist/) over every bus", () => {
  // The bundle of this checkout, whatever dist/ held before.
  execFileSync("npm", ["run", "--silent", "build"], { cwd: ROOT, stdio: "ignore" });

  for (const kit of KITS) {
    it(`${kit.name}: says hello, joins, heartbeats, answers, and stops cleanly`, async (t) => {
      const broker = await kit.start(t, log);
      const urlFlag = busUrl(kit.name, broker);
      const controller = new Controller({ link: broker.controllerLink(log), log, secret: "dist-test", heartbeatIntervalS: 1 });
      await controller.start();
      const node = `dist-${kit.name}`;
      t.after(async () => {
        await controller.stop();
        // nats.js 3.4 can still write on a socket it has just ended (ERR_STREAM_WRITE_AFTER_END, uncaught)
        // when the server goes at that moment: let the closed client settle before the broker goes.
        await new Promise((r) => setTimeout(r, 250));
        await broker.dispose();
      });
      const { child: agent, output: out, exited } = spawnNode(t, ["--max-semi-space-size=1", AGENT, "--no-kernel-cmdline", "--standalone", "--transports", kit.name, ...urlFlag, "--node", node, "--heartbeat-interval-s", "1", "--log-level", "warn"]);
      await until(() => controller.node(node)?.heartbeat !== undefined || agent.exitCode !== null, 30_000, `the agent's heartbeat (${out()})`);
      assert.equal(agent.exitCode, null, `the agent exited: ${out()}`);
      const result = await controller.run(node, "agent.get_command", { command_id: "none" }, { deadlineMs: 10_000 });
      assert.equal(result.command_error?.type, "RequestedObjectNotFoundError", out());
      agent.kill("SIGTERM");
      assert.equal(await exited, 0, out());
    });
  }
});

/** The agent's URL flag for a kit's broker, read from the controller link's own address. */
function busUrl(kind: string, broker: Broker): string[] {
  const url = broker.url;
  return kind === "ws" ? ["--ws-url", url] : kind === "mqtt" ? ["--mqtt-url", url] : ["--nats-url", url];
}

describe("the built agent with only a bus, whose broker is away at boot", () => {
  it("keeps running and joins once the broker is up", async (t) => {
    const { mqttKit } = await import("./bus/kits.js");
    const broker = await mqttKit.start(t, log);
    await broker.stop();
    t.after(() => broker.dispose());
    const { child: agent, output: out, exited } = spawnNode(t, [AGENT, "--no-kernel-cmdline", "--standalone", "--transports", "mqtt", "--mqtt-url", broker.url, "--node", "dist-late", "--bus-connect-timeout-s", "0.5", "--heartbeat-interval-s", "1", "--log-level", "warn"]);
    await until(() => out().includes("retrying in the background") || agent.exitCode !== null, 15_000, `the first attempt to fail (${out()})`);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(agent.exitCode, null, `the agent must keep running: ${out()}`);
    await broker.start();
    const controller = new Controller({ link: broker.controllerLink(log), log, secret: "dist-late", heartbeatIntervalS: 1 });
    await controller.start();
    t.after(() => controller.stop());
    await until(() => controller.node("dist-late")?.heartbeat !== undefined, 30_000, `the agent to join (${out()})`);
    agent.kill("SIGTERM");
    assert.equal(await exited, 0, out());
  });
});
