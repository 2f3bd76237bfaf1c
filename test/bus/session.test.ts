/**
 * The agent's bus session on a real hub (the fastest bus to start): results kept while the link is
 * down, the queue for the hardware lock and its limit, liveness as the controller sees it.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { parseConfig } from "../../core/config.js";
import type { ControllerEvent } from "../../controller/controller.js";
import { Controller } from "../../controller/controller.js";
import { silentLogger } from "../../core/log.js";
import { Agent } from "../../router/agent.js";
import { BusTransport } from "../../transports/bus/session.js";
import { conformanceExtension } from "../conformance/extension.js";
import { until } from "../conformance/rig.js";
import { gate } from "../helpers/gate.js";
import { wsKit, type Broker } from "./kits.js";

const log = silentLogger();

async function rig(broker: Broker, node: string, opts: { maxQueuedCommands?: number; now?: () => number } = {}) {
  const controller = new Controller({ link: broker.controllerLink(log), log, heartbeatIntervalS: 0.2, ...(opts.now ? { now: opts.now } : {}) });
  await controller.start();
  const { extension, state } = conformanceExtension();
  const transport = new BusTransport({ link: broker.agentLink(node, log), format: "json", heartbeatIntervalMs: 200, outboxLimit: 100, maxQueuedCommands: opts.maxQueuedCommands ?? 100, log });
  const agent = new Agent({ config: parseConfig({ standalone: true, node }), log, extensions: [extension], transports: [transport], node });
  await agent.start();
  await until(() => agent.joinData() !== undefined, 10_000, "join");
  return { controller, agent, state, transport };
}

describe("bus session", () => {
  it("keeps a result produced while the link is down and sends it when the link is back", async (t) => {
    const broker = await wsKit.start(t, log);
    const node = `s-${randomUUID().slice(0, 8)}`;
    const { controller, agent, state, transport } = await rig(broker, node);
    state.hold = gate();
    const id = randomUUID();
    const answer = controller.command({ node }, "conf.hold", { tag: "kept" }, { deadlineMs: 15_000, id, resendMs: 0 });
    await state.hold.entered;
    await broker.stop();
    state.hold.open();
    await until(() => agent.get(id)?.finished === true, 5000, "the command to finish");
    assert.ok(transport.backlog >= 1, "the result waits in the outbox while the link is down");
    await broker.start();
    const done = await answer;
    const a = done.answers.get(node);
    assert.equal(a?.kind === "result" ? a.result.command_status : a?.kind, "SUCCEEDED");
    assert.deepEqual(a?.kind === "result" ? a.result.command_result : undefined, { held: "kept" });
    await until(() => transport.backlog === 0, 5000, "the outbox to drain");
    await agent.stop();
    await controller.stop();
    await broker.dispose();
  });

  it("queues commands refused as busy, and refuses with AGENT_BUSY once the queue is full", async (t) => {
    const broker = await wsKit.start(t, log);
    const node = `s-${randomUUID().slice(0, 8)}`;
    const { controller, agent, state, transport } = await rig(broker, node, { maxQueuedCommands: 1 });
    state.hold = gate();
    const first = controller.command({ node }, "conf.hold", { tag: "a" }, { deadlineMs: 15_000, resendMs: 0 });
    await state.hold.entered;
    const second = controller.command({ node }, "conf.hold", { tag: "b" }, { deadlineMs: 15_000, resendMs: 0 });
    await until(() => transport.queued === 1, 5000, "the second command to wait");
    const busy = new Promise<ControllerEvent>((resolve) => {
      const off = controller.on((ev) => {
        if (ev.type === "error" && ev.error.type === "AgentIsBusy") {
          off();
          resolve(ev);
        }
      });
    });
    const thirdId = randomUUID();
    const third = controller.command({ node }, "conf.hold", { tag: "c" }, { deadlineMs: 3000, resendMs: 0, id: thirdId });
    const refusal = await busy;
    assert.match(refusal.type === "error" ? refusal.error.message + refusal.error.details : "", /hold/);
    assert.equal(refusal.type === "error" ? refusal.correlationId : undefined, thirdId);
    const thirdAnswer = await third;
    assert.equal(thirdAnswer.answers.get(node)?.kind, "error");
    state.hold.open();
    await first;
    state.hold.open();
    const b = await second;
    const bAnswer = b.answers.get(node);
    assert.equal(bAnswer?.kind === "result" ? bAnswer.result.command_status : bAnswer?.kind, "SUCCEEDED");
    assert.equal(state.runs.get("c"), undefined, "the refused command never ran");
    await agent.stop();
    await controller.stop();
    await broker.dispose();
  });

  it("starts while the hub is away, keeps trying, and joins once it is back", async (t) => {
    const broker = await wsKit.start(t, log);
    await broker.stop();
    const node = `s-${randomUUID().slice(0, 8)}`;
    const { extension } = conformanceExtension();
    const link = broker.agentLink(node, log, [], 300);
    const transport = new BusTransport({ link, format: "json", heartbeatIntervalMs: 200, outboxLimit: 100, maxQueuedCommands: 10, log });
    const agent = new Agent({ config: parseConfig({ standalone: true, node }), log, extensions: [extension], transports: [transport], node });
    // The link's first connection attempt gives up (its connect timeout); the agent starts anyway.
    await agent.start();
    assert.equal(link.connected, false);
    await broker.start();
    const controller = new Controller({ link: broker.controllerLink(log), log, heartbeatIntervalS: 0.2 });
    await controller.start();
    await until(() => agent.joinData() !== undefined, 20_000, "the agent to join once the hub is back");
    const result = await controller.run(node, "conf.echo", { value: 1 }, { deadlineMs: 5000 });
    assert.equal(result.command_status, "SUCCEEDED");
    await agent.stop();
    await controller.stop();
    await broker.dispose();
  });

  it("marks a node offline when its connection goes, and dead after three silent heartbeat intervals", async (t) => {
    const broker = await wsKit.start(t, log);
    const node = `s-${randomUUID().slice(0, 8)}`;
    let clock = Date.now();
    const { controller, agent } = await rig(broker, node, { now: () => clock });
    await until(() => controller.node(node)?.heartbeat !== undefined, 5000, "a heartbeat");
    assert.equal(controller.node(node)?.state, "alive");
    clock += 3 * 200 + 50;
    assert.equal(controller.node(node)?.state, "dead", "three intervals without a word");
    clock = Date.now() + 1;
    await until(() => controller.node(node)?.state === "alive", 5000, "the next heartbeat to revive it");
    await agent.stop();
    await until(() => controller.node(node)?.state === "offline", 5000, "offline after the agent left");
    await controller.stop();
    await broker.dispose();
  });
});
