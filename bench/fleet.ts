/**
 * The "fleet" benchmark: simulated agents (real agent code, many per simulator process,
 * bench/fleet-sim.ts) on one controller (this process) over NATS and over MQTT, 1,000 then 10,000:
 *
 *   - ramp:       agents started in batches; time until the controller knows them all and every
 *                 agent took its join answer;
 *   - command:    `controller.command({fleet: true}, "standby.get_partition_uuids", {}, wait)` until
 *                 every node answered, several rounds (median), per node against Choria's published
 *                 ping of 50,000 nodes in < 3.5 s (70 µs per node);
 *   - heartbeats: the controller re-joins every node with a short heartbeat interval (offered load
 *                 = nodes / interval), and counts the heartbeats it handles per second against those
 *                 the agents produced in the same window;
 *   - memory:     simulator RSS growth per agent (after a GC), broker RSS growth per agent.
 *
 * Each size runs on a fresh private broker. Everything stays on 127.0.0.1.
 */
import { randomUUID } from "node:crypto";
import { cpus } from "node:os";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import type { BusTarget, ControllerLink, ControllerLinkEvents } from "../core/bus.js";
import { EVENTS, type Envelope } from "../core/envelope.js";
import { Controller } from "../controller/controller.js";
import { MqttControllerLink } from "../transports/mqtt/controller-link.js";
import { NatsControllerLink } from "../transports/nats/controller-link.js";
import { BUS_COMMAND, type Broker, type Child, benchLogger, openFilesLimit, rssMiB, spawnChild, startBroker, tsxArgv } from "./bus.js";
import { cpuMsOf, median, memoryOf, round } from "./lib.js";

export const FLEET_KINDS = ["nats", "mqtt"] as const;
export type FleetKind = (typeof FLEET_KINDS)[number];

/** Choria: 51,152 nodes, a fleet-wide ping answered in < 3.5 s (limits.md, peers.md). */
export const CHORIA_US_PER_NODE = (3.5 * 1e6) / 50_000;

export interface FleetOptions {
  readonly transports: readonly FleetKind[];
  readonly sizes: readonly number[];
  /** Agents per simulator process. */
  readonly perSim: number;
  /** Agents started at once in each simulator (the next batch starts when this one is up). */
  readonly batch: number;
  /** Fleet-wide commands timed per size (after one warm-up command). */
  readonly commandRounds: number;
  readonly commandDeadlineMs: number;
  /** Heartbeats per second offered in the heartbeat phase (interval = nodes / rate, at least 0.05 s). */
  readonly heartbeatRate: number;
  readonly heartbeatWindowMs: number;
  /** How NATS agents take fleet commands: "core" subscriptions or "durable" consumers. */
  readonly natsBroadcast: "core" | "durable";
  /** Longest ramp per size. */
  readonly rampMs: number;
  /** Extra mosquitto configuration lines (e.g. max_inflight_messages). */
  readonly mosquittoConfig: string;
}

interface SimStats {
  readonly agents: number;
  readonly joined: number;
  readonly heartbeatsProduced: number;
  readonly rssKiB: number;
  readonly heapUsedKiB: number;
  readonly externalKiB: number;
  readonly arrayBuffersKiB: number;
  readonly cpuMs: number;
  readonly lagMeanMs: number;
  readonly lagMaxMs: number;
}

interface Added {
  readonly started: number;
  readonly failed: number;
  readonly firstError: string | undefined;
  readonly stoppedBecause: string | undefined;
  readonly ms: number;
}

/** One simulator child and its JSON-lines protocol. */
class Sim {
  private readonly waiters = new Map<string, ((event: Record<string, unknown>) => void)[]>();
  progress: { started: number; failed: number } = { started: 0, failed: 0 };

  constructor(readonly child: Child) {
    child.onLine((line) => {
      let event: Record<string, unknown>;
      try {
        event = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      const ev = String(event["ev"]);
      if (ev === "progress") this.progress = { started: Number(event["started"]), failed: Number(event["failed"]) };
      const list = this.waiters.get(ev);
      const first = list?.shift();
      if (first !== undefined) first(event);
      if (ev === "error") process.stderr.write(`  ${child.name}: ${String(event["message"])}\n`);
    });
  }

  /** The next event named `ev` (sending `op` first, if given). */
  async next(ev: string, ms: number, op?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const got = new Promise<Record<string, unknown>>((resolve) => {
      const list = this.waiters.get(ev) ?? [];
      list.push(resolve);
      this.waiters.set(ev, list);
    });
    if (op !== undefined) this.child.send(JSON.stringify(op));
    const deadline = performance.now() + ms;
    for (;;) {
      const r = await Promise.race([got, sleep(200).then(() => undefined)]);
      if (r !== undefined) return r;
      if (this.child.exited) throw new Error(`${this.child.name} exited while waiting for "${ev}":\n${this.child.output()}`);
      if (performance.now() > deadline) throw new Error(`${this.child.name}: no "${ev}" within ${ms} ms:\n${this.child.output()}`);
    }
  }

  async stats(): Promise<SimStats> {
    return (await this.next("stats", 60_000, { op: "stats" })) as unknown as SimStats;
  }
}

export interface FleetCommandRound {
  readonly elapsedMs: number;
  readonly expected: number;
  readonly answered: number;
  readonly silent: number;
  /** Time to the first answer, ms. */
  readonly firstMs: number;
  /** CPU spent from the send to the last answer, per node, µs: all simulators, the broker, this process (controller). */
  readonly cpuUsPerNode: { readonly sims: number; readonly broker: number; readonly controller: number };
}

export interface FleetRun {
  readonly transport: FleetKind;
  readonly target: number;
  /** Nodes the controller knew when measuring (below target when the ramp stopped short). */
  readonly nodes: number;
  readonly reachedTarget: boolean;
  readonly rampStopped: string | undefined;
  readonly rampFailures: number;
  readonly rampFirstError: string | undefined;
  readonly sims: number;
  readonly natsBroadcast: "core" | "durable" | undefined;
  /** Start of the ramp until every node said hello to the controller and took its join answer. */
  readonly rampMs: number;
  readonly command: {
    readonly rounds: FleetCommandRound[];
    readonly warmup: FleetCommandRound;
    readonly medianMs: number;
    readonly usPerNode: number;
    /** Medians over the rounds of the CPU per node, µs. */
    readonly cpuUsPerNode: { readonly sims: number; readonly broker: number; readonly controller: number };
    /** CHORIA_US_PER_NODE ÷ ours: above 1 beats it per node. */
    readonly vsChoria: number;
    readonly allAnswered: boolean;
  };
  /** Sends through the controller's link (joins, commands): how many the broker did not confirm (then retried). */
  readonly controllerSends: { readonly sends: number; readonly failures: number; readonly firstFailure: string | undefined; readonly maxSendMs: number };
  readonly heartbeats: {
    readonly intervalS: number;
    /** nodes ÷ interval. */
    readonly nominalPerS: number;
    /** Produced by the agents during the window. */
    readonly producedPerS: number;
    /** Handled by the controller during the window. */
    readonly handledPerS: number;
    readonly windowMs: number;
    /** CPU use during the window, share of one core. */
    readonly cpu: { readonly sims: number; readonly broker: number; readonly controller: number };
    /** CPU per heartbeat during the window, µs: simulators per heartbeat produced, broker and controller per heartbeat handled. */
    readonly cpuUsPerHeartbeat: { readonly sims: number; readonly broker: number; readonly controller: number };
    readonly simLagMeanMs: number;
    readonly simLagMaxMs: number;
    /** Nodes the controller counted alive right after the window. */
    readonly aliveAfter: number;
  };
  readonly memory: {
    /** (simulator RSS after the ramp − before any agent) ÷ nodes, KiB. */
    readonly simRssKiBPerAgent: number;
    readonly simHeapKiBPerAgent: number;
    readonly simRssMiB: number;
    readonly brokerRssMiB: number;
    readonly brokerRssKiBPerAgent: number;
    readonly controllerRssMiB: number;
  };
}

/** The controller's link, counting what the broker refused or did not confirm in time (the controller retries those). */
class CountingLink implements ControllerLink {
  readonly kind: string;
  sends = 0;
  failures = 0;
  firstFailure: string | undefined;
  maxSendMs = 0;

  constructor(private readonly inner: ControllerLink) {
    this.kind = inner.kind;
  }

  open(events: ControllerLinkEvents): Promise<void> {
    return this.inner.open(events);
  }

  async send(target: BusTarget, bytes: Uint8Array, contentType: string, id?: string): Promise<void> {
    this.sends++;
    const t0 = performance.now();
    try {
      await this.inner.send(target, bytes, contentType, id);
    } catch (err) {
      this.failures++;
      this.firstFailure ??= err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      this.maxSendMs = Math.max(this.maxSendMs, performance.now() - t0);
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The join answer Controller.join() sends, with another heartbeat interval (the agent re-arms its timer). */
function rejoin(controller: Controller, node: string, intervalS: number): Promise<void> {
  const env: Envelope = {
    v: 1,
    id: randomUUID(),
    kind: "event",
    node,
    issued_at: Date.now(),
    token: controller.nodeToken(node),
    body: { name: EVENTS.join, data: { identity: node, token: controller.nodeToken(node), broadcast_token: controller.broadcastToken(), heartbeat_interval_s: intervalS } },
  };
  return controller.deliver({ node }, env, "json", Date.now() + 60_000);
}

async function inBatches<T>(items: readonly T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

function cpuMs(pid: number): number {
  const c = cpuMsOf(pid);
  return c.user + c.sys;
}

async function fleetCommand(controller: Controller, deadlineMs: number, pids: { sims: readonly number[]; broker: number }): Promise<FleetCommandRound> {
  let first: number | undefined;
  const sims0 = pids.sims.reduce((n, p) => n + cpuMs(p), 0);
  const broker0 = cpuMs(pids.broker);
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  const off = controller.on((e) => {
    if (first === undefined && (e.type === "result" || e.type === "error")) first = performance.now() - t0;
  });
  try {
    const a = await controller.command({ fleet: true }, BUS_COMMAND, {}, { deadlineMs, resendMs: 0 });
    const self = process.cpuUsage(self0);
    const perNode = (ms: number): number => round((ms * 1000) / Math.max(1, a.expected.length), 1);
    let answered = 0;
    for (const ans of a.answers.values()) if (ans.kind === "result" && ans.result.command_status === "SUCCEEDED") answered++;
    return {
      elapsedMs: a.elapsedMs,
      expected: a.expected.length,
      answered,
      silent: a.silent.length,
      firstMs: round(first ?? Number.NaN, 1),
      cpuUsPerNode: {
        sims: perNode(pids.sims.reduce((n, p) => n + cpuMs(p), 0) - sims0),
        broker: perNode(cpuMs(pids.broker) - broker0),
        controller: perNode((self.user + self.system) / 1000),
      },
    };
  } finally {
    off();
  }
}

async function runOne(kind: FleetKind, target: number, opts: FleetOptions, progress: (line: string) => void): Promise<FleetRun> {
  const log = benchLogger();
  const mosquittoExtra = ["max_connections -1", opts.mosquittoConfig].join("\n");
  const broker: Broker = await startBroker(kind, kind === "mqtt" ? mosquittoExtra : "max_connections: 100000");
  const sims: Sim[] = [];
  let controller: Controller | undefined;
  try {
    const brokerRss0 = memoryOf(broker.pid).rssKiB;
    const link = new CountingLink(kind === "mqtt" ? new MqttControllerLink({ url: broker.url, log }) : new NatsControllerLink({ servers: broker.url, log }));
    // Agents beat every 30 s (the join answer says so) until the heartbeat phase.
    const c = new Controller({ link, log, heartbeatIntervalS: 30 });
    controller = c;
    await c.start();
    const controllerRss0 = process.memoryUsage().rss;

    const count = Math.ceil(target / opts.perSim);
    for (let i = 0; i < count; i++) {
      const args = ["--transport", kind, "--url", broker.url, "--prefix", `s${i}-`, "--nats-broadcast", opts.natsBroadcast];
      const child = spawnChild(`sim${i}`, tsxArgv("fleet-sim.ts", args, ["--expose-gc", "--max-old-space-size=8192"]), { watchdog: false, lines: true });
      sims.push(new Sim(child));
    }
    const before = await Promise.all(sims.map((s) => s.next("ready", 60_000) as Promise<unknown> as Promise<SimStats>));

    // ---- ramp
    progress(`  fleet ${kind} ${target.toLocaleString("en-US")}: starting agents in ${count} simulator(s), batches of ${opts.batch}`);
    const t0 = performance.now();
    const shares = sims.map((_, i) => Math.min(opts.perSim, target - i * opts.perSim));
    const ticker = setInterval(() => {
      const started = sims.reduce((n, s) => n + s.progress.started, 0);
      const failed = sims.reduce((n, s) => n + s.progress.failed, 0);
      progress(`    ${Math.round((performance.now() - t0) / 1000)} s: ${started.toLocaleString("en-US")} agents up, ${failed} failed, controller knows ${c.nodes().length.toLocaleString("en-US")}`);
    }, 10_000);
    let added: Added[];
    try {
      added = (await Promise.all(
        sims.map((s, i) =>
          s.next("added", opts.rampMs + 120_000, { op: "add", from: 0, count: shares[i], batch: opts.batch, deadlineMs: opts.rampMs, maxFailures: Math.max(10, Math.round(target * 0.01)) }),
        ),
      )) as unknown as Added[];
    } finally {
      clearInterval(ticker);
    }
    const up = added.reduce((n, a) => n + a.started, 0);
    const rampFailures = added.reduce((n, a) => n + a.failed, 0);
    const rampFirstError = added.find((a) => a.firstError !== undefined)?.firstError;
    const rampStopped = added.find((a) => a.stoppedBecause !== undefined)?.stoppedBecause;
    // Every agent up has said hello and takes its join answer (give the controller time to catch up).
    const joinDeadline = performance.now() + 120_000;
    let joined = 0;
    for (;;) {
      const stats = await Promise.all(sims.map((s) => s.stats()));
      joined = stats.reduce((n, s) => n + s.joined, 0);
      if (c.nodes().length >= up && joined >= up) break;
      if (performance.now() > joinDeadline) {
        progress(`    warning: after 120 s the controller knows ${c.nodes().length} and ${joined} agents joined, of ${up} up`);
        break;
      }
      await sleep(500);
    }
    const rampMs = performance.now() - t0;
    const nodes = c.nodes().length;
    progress(`    ${up.toLocaleString("en-US")} agents up in ${(rampMs / 1000).toFixed(1)} s (${rampFailures} failed${rampStopped === undefined ? "" : `; ramp stopped: ${rampStopped}`}), controller knows ${nodes.toLocaleString("en-US")}, ${joined.toLocaleString("en-US")} joined`);

    // ---- memory, after the ramp has settled
    await sleep(3000);
    const after = await Promise.all(sims.map((s) => s.stats()));
    const simRss = after.reduce((n, s) => n + s.rssKiB, 0);
    const simRssGrowth = simRss - before.reduce((n, s) => n + s.rssKiB, 0);
    const simHeapGrowth = after.reduce((n, s) => n + s.heapUsedKiB + s.externalKiB, 0) - before.reduce((n, s) => n + s.heapUsedKiB + s.externalKiB, 0);
    const brokerRss = memoryOf(broker.pid).rssKiB;
    const memory = {
      simRssKiBPerAgent: round(simRssGrowth / Math.max(1, up), 1),
      simHeapKiBPerAgent: round(simHeapGrowth / Math.max(1, up), 1),
      simRssMiB: round(simRss / 1024, 1),
      brokerRssMiB: rssMiB(broker.pid),
      brokerRssKiBPerAgent: round((brokerRss - brokerRss0) / Math.max(1, up), 1),
      controllerRssMiB: round((process.memoryUsage().rss - controllerRss0) / 2 ** 20, 1),
    };
    progress(`    memory: simulators +${memory.simRssKiBPerAgent} KiB RSS per agent (heap +${memory.simHeapKiBPerAgent}), broker ${memory.brokerRssMiB} MiB (+${memory.brokerRssKiBPerAgent} KiB per agent)`);

    // ---- fleet-wide command
    const pids = { sims: sims.map((s) => s.child.pid), broker: broker.pid };
    const warmup = await fleetCommand(c, opts.commandDeadlineMs, pids);
    progress(`    fleet command warm-up: ${warmup.answered}/${warmup.expected} answered in ${warmup.elapsedMs} ms`);
    const rounds: FleetCommandRound[] = [];
    for (let i = 0; i < opts.commandRounds; i++) {
      await sleep(1000);
      const r = await fleetCommand(c, opts.commandDeadlineMs, pids);
      rounds.push(r);
      progress(
        `    fleet command ${i + 1}/${opts.commandRounds}: ${r.answered}/${r.expected} answered in ${r.elapsedMs} ms (first after ${r.firstMs} ms); ` +
          `CPU per node: simulators ${r.cpuUsPerNode.sims} µs, broker ${r.cpuUsPerNode.broker} µs, controller ${r.cpuUsPerNode.controller} µs`,
      );
    }
    const medianMs = median(rounds.map((r) => r.elapsedMs));
    const usPerNode = (medianMs * 1000) / Math.max(1, nodes);

    // ---- heartbeats
    const intervalS = Math.max(0.05, round(nodes / opts.heartbeatRate, 3));
    progress(`    heartbeats: re-joining ${nodes.toLocaleString("en-US")} nodes with a ${intervalS} s interval (${Math.round(nodes / intervalS).toLocaleString("en-US")}/s offered)`);
    await inBatches(
      c.nodes().map((n) => n.node),
      500,
      (node) => rejoin(c, node, intervalS),
    );
    await sleep(Math.max(3000, intervalS * 3000));
    const s0 = await Promise.all(sims.map((s) => s.stats()));
    const h0 = c.heartbeats;
    const cpu0 = { sims: sims.map((s) => cpuMs(s.child.pid)), broker: cpuMs(broker.pid), controller: process.cpuUsage() };
    const w0 = performance.now();
    await sleep(opts.heartbeatWindowMs);
    const h1 = c.heartbeats;
    const windowMs = performance.now() - w0;
    const cpuSims = sims.reduce((n, s, i) => n + cpuMs(s.child.pid) - (cpu0.sims[i] ?? 0), 0);
    const cpuBroker = cpuMs(broker.pid) - cpu0.broker;
    const cpuController = process.cpuUsage(cpu0.controller);
    const s1 = await Promise.all(sims.map((s) => s.stats()));
    const produced = s1.reduce((n, s) => n + s.heartbeatsProduced, 0) - s0.reduce((n, s) => n + s.heartbeatsProduced, 0);
    const aliveAfter = c.nodes().filter((n) => n.state === "alive").length;
    const handled = h1 - h0;
    const controllerMs = (cpuController.user + cpuController.system) / 1000;
    const heartbeats = {
      intervalS,
      nominalPerS: Math.round(nodes / intervalS),
      producedPerS: Math.round((produced * 1000) / windowMs),
      handledPerS: Math.round((handled * 1000) / windowMs),
      windowMs: Math.round(windowMs),
      cpu: {
        sims: round(cpuSims / windowMs, 2),
        broker: round(cpuBroker / windowMs, 2),
        controller: round(controllerMs / windowMs, 2),
      },
      cpuUsPerHeartbeat: {
        sims: round((cpuSims * 1000) / Math.max(1, produced), 1),
        broker: round((cpuBroker * 1000) / Math.max(1, handled), 1),
        controller: round((controllerMs * 1000) / Math.max(1, handled), 1),
      },
      simLagMeanMs: round(median(s1.map((s) => s.lagMeanMs)), 2),
      simLagMaxMs: Math.max(...s1.map((s) => s.lagMaxMs)),
      aliveAfter,
    };
    progress(
      `    heartbeats: ${heartbeats.handledPerS.toLocaleString("en-US")}/s handled, ${heartbeats.producedPerS.toLocaleString("en-US")}/s produced, ${heartbeats.nominalPerS.toLocaleString("en-US")}/s nominal; CPU sims ${heartbeats.cpu.sims}, broker ${heartbeats.cpu.broker}, controller ${heartbeats.cpu.controller} cores`,
    );
    return {
      transport: kind,
      target,
      nodes,
      reachedTarget: nodes >= target,
      rampStopped,
      rampFailures,
      rampFirstError,
      sims: count,
      natsBroadcast: kind === "nats" ? opts.natsBroadcast : undefined,
      rampMs: Math.round(rampMs),
      command: {
        rounds,
        warmup,
        medianMs,
        usPerNode: round(usPerNode, 1),
        cpuUsPerNode: {
          sims: median(rounds.map((r) => r.cpuUsPerNode.sims)),
          broker: median(rounds.map((r) => r.cpuUsPerNode.broker)),
          controller: median(rounds.map((r) => r.cpuUsPerNode.controller)),
        },
        vsChoria: round(CHORIA_US_PER_NODE / usPerNode, 2),
        allAnswered: rounds.every((r) => r.answered === r.expected && r.expected === nodes),
      },
      heartbeats,
      memory,
      controllerSends: { sends: link.sends, failures: link.failures, firstFailure: link.firstFailure, maxSendMs: Math.round(link.maxSendMs) },
    };
  } finally {
    // Agents first (their goodbyes need the broker), then the controller, then the broker.
    await Promise.all(
      sims.map(async (s) => {
        try {
          if (!s.child.exited) await s.next("stopped", 60_000, { op: "stop" });
        } catch (err) {
          progress(`    ${s.child.name} did not stop cleanly: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`);
        }
        await s.child.stop(2000);
      }),
    );
    await controller?.stop().catch(() => undefined);
    await broker.dispose();
  }
}

export async function fleet(opts: FleetOptions, progress: (line: string) => void): Promise<FleetRun[]> {
  const need = Math.max(...opts.sizes) + 1000;
  const { soft } = openFilesLimit();
  // The broker, started from this process, holds one descriptor per agent.
  if (soft < need) throw new Error(`the open-files limit is ${soft}; the broker needs about ${need} for ${Math.max(...opts.sizes)} agents: raise it (ulimit -n) before running the fleet benchmark`);
  if (Math.min(opts.perSim, Math.max(...opts.sizes)) + 500 > soft) throw new Error(`--fleet-per-sim ${opts.perSim} needs more descriptors than the limit of ${soft}`);
  progress(`  fleet: ${cpus().length} CPUs; sizes ${opts.sizes.join(", ")}; up to ${opts.perSim} agents per simulator`);
  const runs: FleetRun[] = [];
  for (const kind of opts.transports) {
    for (const size of opts.sizes) runs.push(await runOne(kind, size, opts, progress));
  }
  return runs;
}
