/**
 * The simulator child of the fleet benchmark (bench/fleet.ts): many REAL agents in one process. Each
 * is what the agent bin builds (bin/ironbus-agent.ts startStandalone): its own utilities (command
 * handlers and agent state), the bus transports of bin/bus.ts `busTransports` (BusTransport over the
 * real MqttAgentLink or NatsAgentLink, with the bin's link options, online/offline notices and will),
 * its envelope guard (bin/guard.ts: the trust guard, with its replay memory), and an Agent. Each agent has its own broker connection. Only the
 * hello's inventory is shared: collected once per process instead of once per agent.
 *
 *   node --expose-gc --import tsx bench/fleet-sim.ts --transport nats|mqtt --url URL --prefix s0-
 *        [--nats-broadcast core|durable] [--heartbeat-interval-s S]
 *
 * Talks JSON lines: commands on stdin, events on stdout (logs go to stderr). Exits when stdin closes.
 *   {"op":"add","from":0,"count":5000,"batch":200,"deadlineMs":600000,"maxFailures":50}
 *        → {"ev":"progress",...} after each batch, then {"ev":"added",...}
 *   {"op":"stats"}        → {"ev":"stats",...} (after a GC: RSS, heap, agents, joined, heartbeats produced)
 *   {"op":"stop"}         → {"ev":"stopped",...}, then exit
 */
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { busTransports, helloSource } from "../bin/bus.js";
import { createAgentGuard } from "../bin/guard.js";
import { parseConfig, type AgentConfig } from "../core/config.js";
import type { HeartbeatBody } from "../core/envelope.js";
import { createLogger, type Logger } from "../core/log.js";
import { Agent, type AgentOptions } from "../router/agent.js";
import { createUtilities } from "../utilities/index.js";

/** Counts the heartbeats the agents produce (BusTransport asks the agent for each one it sends). */
let heartbeatsProduced = 0;

class CountingAgent extends Agent {
  constructor(opts: AgentOptions) {
    super(opts);
  }

  override heartbeat(seq: number): HeartbeatBody {
    heartbeatsProduced++;
    return super.heartbeat(seq);
  }
}

interface AddOp {
  readonly op: "add";
  readonly from: number;
  readonly count: number;
  readonly batch: number;
  readonly deadlineMs: number;
  readonly maxFailures: number;
}

type Op = AddOp | { readonly op: "stats" } | { readonly op: "stop" };

function emit(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      transport: { type: "string" },
      url: { type: "string" },
      prefix: { type: "string" },
      "nats-broadcast": { type: "string" },
      "heartbeat-interval-s": { type: "string" },
      "connect-timeout-s": { type: "string" },
    },
  });
  const transport = values.transport;
  const url = values.url;
  if ((transport !== "nats" && transport !== "mqtt") || url === undefined) throw new Error("usage: fleet-sim.ts --transport nats|mqtt --url URL --prefix P");
  const prefix = values.prefix ?? "sim-";
  const config: AgentConfig = parseConfig({
    standalone: true,
    transports: [transport],
    ...(transport === "nats" ? { natsUrl: [url], natsBroadcast: values["nats-broadcast"] ?? "core" } : { mqttUrl: url }),
    heartbeatIntervalS: Number(values["heartbeat-interval-s"] ?? "30"),
    busConnectTimeoutS: Number(values["connect-timeout-s"] ?? "60"),
    logLevel: "warn",
  });
  const log: Logger = createLogger("warn", process.stderr);
  // One inventory for the process (a real agent collects its own, once).
  const hello = helloSource(await createUtilities({ config, log }), log);
  await hello();

  const agents: Agent[] = [];
  let stopping = false;

  const stats = (): Record<string, unknown> => {
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const m = process.memoryUsage();
    const cpu = process.cpuUsage();
    const out = {
      ev: "stats",
      agents: agents.length,
      joined: agents.filter((a) => a.joinData() !== undefined).length,
      heartbeatsProduced,
      rssKiB: Math.round(m.rss / 1024),
      heapUsedKiB: Math.round(m.heapUsed / 1024),
      externalKiB: Math.round(m.external / 1024),
      arrayBuffersKiB: Math.round(m.arrayBuffers / 1024),
      cpuMs: Math.round((cpu.user + cpu.system) / 1000),
      lagMeanMs: Number((lag.mean / 1e6).toFixed(2)),
      lagMaxMs: Number((lag.max / 1e6).toFixed(2)),
      at: performance.now(),
    };
    lag.reset();
    return out;
  };

  const add = async (op: AddOp): Promise<void> => {
    const t0 = performance.now();
    const deadline = t0 + op.deadlineMs;
    let started = 0;
    let failed = 0;
    let firstError: string | undefined;
    let stoppedBecause: string | undefined;
    for (let i = 0; i < op.count && !stopping; i += op.batch) {
      if (performance.now() > deadline) {
        stoppedBecause = `ramp deadline of ${op.deadlineMs} ms passed`;
        break;
      }
      if (failed > op.maxFailures) {
        stoppedBecause = `${failed} agents failed to start`;
        break;
      }
      const batch: Agent[] = [];
      for (let j = i; j < Math.min(op.count, i + op.batch); j++) {
        const node = `${prefix}${op.from + j}`;
        const utilities = await createUtilities({ config, log });
        const transports = await busTransports(config, log, node);
        const guard = await createAgentGuard(config, log, node);
        batch.push(new CountingAgent({ config, log, extensions: utilities.extensions, transports, node, hello, guard }));
      }
      const results = await Promise.allSettled(batch.map((a) => a.start()));
      results.forEach((r, k) => {
        const a = batch[k];
        if (r.status === "fulfilled" && a !== undefined) {
          agents.push(a);
          started++;
        } else if (r.status === "rejected") {
          failed++;
          firstError ??= errorText(r.reason);
        }
      });
      emit({ ev: "progress", started, failed, ms: Math.round(performance.now() - t0) });
    }
    emit({ ev: "added", started, failed, firstError, stoppedBecause, ms: Math.round(performance.now() - t0) });
  };

  const stop = async (): Promise<void> => {
    stopping = true;
    const t0 = performance.now();
    // A bounded number of closes at a time: each ends its connection politely (offline notice).
    for (let i = 0; i < agents.length; i += 500) {
      await Promise.allSettled(agents.slice(i, i + 500).map((a) => a.stop()));
    }
    emit({ ev: "stopped", agents: agents.length, ms: Math.round(performance.now() - t0) });
  };

  let queue: Promise<void> = Promise.resolve();
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    let op: Op;
    try {
      op = JSON.parse(line) as Op;
    } catch {
      emit({ ev: "error", message: `not JSON: ${line.slice(0, 100)}` });
      return;
    }
    // One op at a time, in order; "stats" answers at once even while agents are being added.
    if (op.op === "stats") {
      emit(stats());
      return;
    }
    queue = queue
      .then(async () => {
        if (op.op === "add") await add(op);
        else if (op.op === "stop") {
          await stop();
          process.exit(0);
        }
      })
      .catch((err: unknown) => emit({ ev: "error", message: errorText(err) }));
  });
  // The bench is gone (or done): no agent outlives it.
  lines.on("close", () => process.exit(0));
  emit({ ...stats(), ev: "ready" });
}

main().catch((err: unknown) => {
  process.stderr.write(`fleet-sim failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
