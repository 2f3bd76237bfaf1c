/**
 * The controller CLI and the agent bin over the buses, as users run them: real processes, a real hub
 * and a real mosquitto on loopback ports.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { silentLogger } from "../core/log.js";
import { Controller } from "../controller/controller.js";
import { MqttControllerLink } from "../transports/mqtt/controller-link.js";
import { WsHub } from "../transports/ws/hub.js";
import { until } from "./conformance/rig.js";
import { startMosquitto } from "./helpers/mosquitto.js";

const CLI = fileURLToPath(new URL("../bin/ironbus.ts", import.meta.url));
const AGENT = fileURLToPath(new URL("../bin/ironbus-agent.ts", import.meta.url));
const log = silentLogger();

function run(bin: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", bin, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, stdout, stderr })));
}

describe("ironbus CLI", () => {
  it("demo: runs hub, agent and controller on this machine and prints the machine's real inventory", async () => {
    const { code, stdout, stderr } = await run(CLI, ["demo"]);
    assert.equal(code, 0, stderr);
    assert.match(stdout, /demo-node\s+alive/);
    assert.match(stdout, /1 answered, 0 silent/);
    // The inventory is this machine's: its CPU count as Node sees it.
    const { cpus } = await import("node:os");
    assert.match(stdout, new RegExp(`cpu\\s+${cpus().length} x `));
  });

  it("an agent process on MQTT, driven by the CLI: nodes, send to a node, send by facts, a silent node, bad input", async (t) => {
    const broker = await startMosquitto(t);
    const secret = "fleet-secret-for-the-cli-test";
    // The fleet's long-running controller answers hellos (joins) with tokens derived from the secret.
    const controller = new Controller({ link: new MqttControllerLink({ url: broker.url, log }), log, secret, heartbeatIntervalS: 1 });
    await controller.start();
    const agent = spawn(process.execPath, ["--import", "tsx", AGENT, "--no-kernel-cmdline", "--standalone", "--transports", "mqtt", "--mqtt-url", broker.url, "--node", "cli-node", "--heartbeat-interval-s", "1", "--log-level", "warn"], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let agentErr = "";
    agent.stderr.on("data", (d: Buffer) => (agentErr += d.toString()));
    t.after(async () => {
      agent.kill("SIGKILL");
      await controller.stop();
    });
    await until(() => controller.node("cli-node")?.heartbeat !== undefined, 30_000, `the agent to join (${agentErr})`);

    const where = ["--transport", "mqtt", "--url", broker.url, "--secret", secret, "--discover", "1"];
    const nodes = await run(CLI, ["nodes", ...where]);
    assert.equal(nodes.code, 0, nodes.stderr);
    assert.match(nodes.stdout, /cli-node\s+alive/);

    const one = await run(CLI, ["send", "poll.get_hardware_info", "--node", "cli-node", "--deadline", "30", "--json", ...where]);
    assert.equal(one.code, 0, one.stderr);
    const parsed = JSON.parse(one.stdout) as { answers: Record<string, { result: { command_status: string; command_result: { cpu: { count: number } } } }> };
    assert.equal(parsed.answers["cli-node"]?.result.command_status, "SUCCEEDED");
    assert.ok((parsed.answers["cli-node"]?.result.command_result.cpu.count ?? 0) >= 1);

    const { cpus } = await import("node:os");
    const byFacts = await run(CLI, ["send", "agent.get_command", '{"command_id":"none"}', "--where", `cpu.count=${cpus().length}`, "--deadline", "10", ...where]);
    // The node answers (an error: no such command id) and is the only one selected.
    assert.match(byFacts.stdout, /cli-node: FAILED RequestedObjectNotFoundError/);
    assert.match(byFacts.stdout, /1 answered, 0 silent/);

    const ghost = await run(CLI, ["send", "poll.get_hardware_info", "--node", "no-such-node", "--deadline", "1", ...where]);
    assert.equal(ghost.code, 1);
    assert.match(ghost.stdout, /no-such-node: no answer/);

    const bad = await run(CLI, ["send", "poll.get_hardware_info", "not json", "--node", "cli-node", ...where]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /PARAMS is not JSON/);

    const noTarget = await run(CLI, ["send", "poll.get_hardware_info", ...where]);
    assert.equal(noTarget.code, 2);
    assert.match(noTarget.stderr, /exactly one target/);

    // Without the fleet secret the CLI's tokens are wrong: the agent refuses, and says so.
    const wrong = await run(CLI, ["send", "poll.get_hardware_info", "--node", "cli-node", "--deadline", "10", "--transport", "mqtt", "--url", broker.url, "--secret", "not-the-secret"]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stdout, /cli-node: ERROR Unauthorized/);

  });

  it("hub: serves agents and remote controllers until stopped", async () => {
    const hub = new WsHub();
    await hub.start({ host: "127.0.0.1", port: 0, log });
    const port = hub.address().port;
    await hub.stop();
    const child = spawn(process.execPath, ["--import", "tsx", CLI, "hub", "--listen", `127.0.0.1:${port}`], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    await until(() => err.includes("listening"), 20_000, "the hub to listen");
    const nodes = await run(CLI, ["nodes", "--transport", "ws", "--url", `ws://127.0.0.1:${port}`, "--discover", "0.2"]);
    assert.equal(nodes.code, 0, nodes.stderr);
    assert.match(nodes.stdout, /^NODE\s+STATE/);
    child.kill("SIGTERM");
    const code = await new Promise((r) => child.once("exit", r));
    assert.equal(code, 0);
  });
});
