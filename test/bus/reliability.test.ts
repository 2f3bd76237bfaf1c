/**
 * What the buses promise, on real brokers: commands sent while an agent is down arrive when it comes
 * back; a broker (or hub) stopped and restarted in the middle of a stream of commands loses none and
 * runs none twice; a fleet command reports every answer and every silence.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { AgentLink } from "../../core/bus.js";
import { parseConfig } from "../../core/config.js";
import type { JsonObject } from "../../core/envelope.js";
import { silentLogger } from "../../core/log.js";
import { Controller, type FleetAnswer } from "../../controller/controller.js";
import { Agent } from "../../router/agent.js";
import { BusTransport } from "../../transports/bus/session.js";
import { conformanceExtension, type ConformanceState } from "../conformance/extension.js";
import { until } from "../conformance/rig.js";
import { KITS } from "./kits.js";

const log = silentLogger();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface BusAgent {
  readonly agent: Agent;
  readonly state: ConformanceState;
  readonly transport: BusTransport;
}

async function startBusAgent(link: AgentLink, node: string, summary: JsonObject = {}): Promise<BusAgent> {
  const config = parseConfig({ standalone: true, node, heartbeatIntervalS: 0.2 });
  const { extension, state } = conformanceExtension();
  const transport = new BusTransport({ link, format: "json", heartbeatIntervalMs: 200, outboxLimit: 10_000, maxQueuedCommands: 100, log });
  const agent = new Agent({ config, log, extensions: [extension], transports: [transport], node, hello: () => Promise.resolve({ macs: [], hostname: node, summary }) });
  await agent.start();
  return { agent, state, transport };
}

function status(answer: FleetAnswer, node: string): string {
  const a = answer.answers.get(node);
  if (a === undefined) return "silent";
  return a.kind === "error" ? `error ${a.error.type}` : a.result.command_status;
}

for (const kit of KITS) {
  describe(`${kit.name}: nothing lost, nothing run twice`, () => {
    it("delivers commands sent while the agent was down once it is back (the broker kept them, no resend)", async (t) => {
      const broker = await kit.start(t, log);
      const controller = new Controller({ link: broker.controllerLink(log, `ctl-${randomUUID()}`), log, heartbeatIntervalS: 0.2 });
      await controller.start();
      const node = `n-${randomUUID().slice(0, 8)}`;
      const first = await startBusAgent(broker.agentLink(node, log), node);
      await until(() => first.agent.joinData() !== undefined, 10_000, "join");
      await first.agent.stop();

      const tags = Array.from({ length: 5 }, (_, i) => `offline-${i}`);
      const answers = tags.map((tag) => controller.command({ node }, "conf.count", { tag }, { deadlineMs: 20_000, resendMs: 0 }));
      await sleep(300);
      // The node comes back: a fresh agent, as after a reboot of the ramdisk.
      const second = await startBusAgent(broker.agentLink(node, log), node);
      const results = await Promise.all(answers);
      assert.deepEqual(results.map((r) => status(r, node)), tags.map(() => "SUCCEEDED"));
      for (const tag of tags) assert.equal(second.state.runs.get(tag), 1, tag);
      await second.agent.stop();
      await controller.stop();
      await broker.dispose();
    });

    it("loses no command and runs none twice when the broker stops and restarts mid-stream", async (t) => {
      const broker = await kit.start(t, log);
      const controller = new Controller({ link: broker.controllerLink(log, `ctl-${randomUUID()}`), log, heartbeatIntervalS: 0.2 });
      await controller.start();
      const node = `n-${randomUUID().slice(0, 8)}`;
      const bus = await startBusAgent(broker.agentLink(node, log), node);
      await until(() => bus.agent.joinData() !== undefined, 10_000, "join");

      const tags: string[] = [];
      const answers: Promise<FleetAnswer>[] = [];
      for (let i = 0; i < 60; i++) {
        if (i === 20) await broker.stop();
        if (i === 35) await broker.start();
        const tag = `stream-${i}`;
        tags.push(tag);
        answers.push(controller.command({ node }, "conf.count", { tag }, { deadlineMs: 30_000, resendMs: 1000 }));
        await sleep(10);
      }
      const results = await Promise.all(answers);
      const bad = tags.filter((tag, i) => status(results[i] as FleetAnswer, node) !== "SUCCEEDED");
      assert.deepEqual(bad, [], "every command answered SUCCEEDED");
      const runs = tags.map((tag) => bus.state.runs.get(tag) ?? 0);
      assert.deepEqual(runs, tags.map(() => 1), "each command ran exactly once");
      await bus.agent.stop();
      await controller.stop();
      await broker.dispose();
    });

    it("starts an agent while the broker is down; it joins and answers once the broker is up", async (t) => {
      const broker = await kit.start(t, log);
      await broker.stop();
      const node = `n-${randomUUID().slice(0, 8)}`;
      const config = parseConfig({ standalone: true, node, heartbeatIntervalS: 0.2 });
      const { extension } = conformanceExtension();
      const transport = new BusTransport({ link: broker.agentLink(node, log, [], 300), format: "json", heartbeatIntervalMs: 200, outboxLimit: 100, maxQueuedCommands: 10, log });
      const agent = new Agent({ config, log, extensions: [extension], transports: [transport], node });
      await agent.start();
      await broker.start();
      const controller = new Controller({ link: broker.controllerLink(log), log, heartbeatIntervalS: 0.2 });
      await controller.start();
      await until(() => agent.joinData() !== undefined, 30_000, "the agent to join once the broker is up");
      const result = await controller.run(node, "conf.echo", { value: "late" }, { deadlineMs: 10_000 });
      assert.equal(result.command_status, "SUCCEEDED");
      await agent.stop();
      await controller.stop();
      await broker.dispose();
    });

    it("reports every answer and every silence of a fleet command, and selects nodes by facts and group", async (t) => {
      const broker = await kit.start(t, log);
      const controller = new Controller({
        link: broker.controllerLink(log),
        log,
        heartbeatIntervalS: 0.2,
        groupsFor: (_n, hello) => [String(hello.summary["rack"])],
      });
      await controller.start();
      const run = randomUUID().slice(0, 6);
      const nodes = Array.from({ length: 12 }, (_, i) => `f${run}-${i}`);
      const agents = await Promise.all(nodes.map((n, i) => startBusAgent(broker.agentLink(n, log), n, { rack: i % 2 === 0 ? "even" : "odd" })));
      await until(() => agents.every((a) => a.agent.joinData()?.groups !== undefined) && controller.nodes().length === nodes.length, 15_000, "every agent to join");
      // Joined groups take effect on the link (setGroups) just after the join answer: give it a moment.
      await sleep(300);
      const down = [nodes[1], nodes[4], nodes[7]] as string[];
      for (const n of down) await agents[nodes.indexOf(n)]?.agent.stop();

      const all = await controller.command({ fleet: true }, "conf.echo", { value: "ping" }, { deadlineMs: 3000, resendMs: 0 });
      assert.deepEqual([...all.silent].sort(), [...down].sort(), "the silent are exactly the stopped nodes");
      assert.equal(all.answers.size, nodes.length - down.length);
      for (const a of all.answers.values()) assert.equal(a.kind === "result" ? a.result.command_status : a.kind, "SUCCEEDED");

      const even = await controller.command({ facts: { rack: "even" } }, "conf.echo", { value: "even" }, { deadlineMs: 3000, resendMs: 0 });
      const evenNodes = nodes.filter((_, i) => i % 2 === 0);
      assert.deepEqual([...even.expected].sort(), [...evenNodes].sort());
      assert.deepEqual(even.silent, down.filter((n) => evenNodes.includes(n)));

      const odd = await controller.command({ group: "odd" }, "conf.echo", { value: "odd" }, { deadlineMs: 3000, resendMs: 0 });
      const oddUp = nodes.filter((n, i) => i % 2 === 1 && !down.includes(n));
      assert.deepEqual([...odd.answers.keys()].sort(), [...oddUp].sort(), "only the group's members answered");
      assert.deepEqual([...odd.silent].sort(), down.filter((n) => !evenNodes.includes(n)).sort());

      for (const a of agents) await a.agent.stop();
      await controller.stop();
      await broker.dispose();
    });
  });
}
