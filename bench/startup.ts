/**
 * Process-level figures, agent vs a bare `node -e` http server, same procedure for both:
 *   - launch: spawn → first 200 on GET /v1/status, polled every few ms (connection refused retried);
 *   - rss:    VmRSS after start, a few requests, and 2 s idle.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { spawnEcho } from "./echo-server.js";
import { type Memory, type Served, makePool, median, memoryOf, once } from "./lib.js";
import { GET_STATUS, POST_COMMAND, spawnAgent } from "./rest.js";

export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly samples: number[];
}

function spread(samples: number[]): Spread {
  return { median: median(samples), min: Math.min(...samples), max: Math.max(...samples), samples };
}

export interface LaunchResult {
  readonly launches: number;
  readonly pollMs: number;
  readonly agentMs: Spread;
  readonly echoMs: Spread;
  /** agent median ÷ echo median */
  readonly ratio: number;
}

export async function launch(opts: { launches: number; pollMs: number }, progress: (line: string) => void): Promise<LaunchResult> {
  const agent: number[] = [];
  const echo: number[] = [];
  for (let i = 0; i < opts.launches; i++) {
    // Interleaved, alternating order.
    const order = i % 2 === 0 ? (["agent", "echo"] as const) : (["echo", "agent"] as const);
    for (const who of order) {
      const served = who === "agent" ? await spawnAgent([], opts.pollMs) : await spawnEcho(opts.pollMs);
      (who === "agent" ? agent : echo).push(served.readyMs);
      await served.stop();
    }
  }
  progress(`  launch  agent median ${Math.round(median(agent))} ms, echo median ${Math.round(median(echo))} ms`);
  return { launches: opts.launches, pollMs: opts.pollMs, agentMs: spread(agent), echoMs: spread(echo), ratio: median(agent) / median(echo) };
}

export interface RssResult {
  readonly samples: number;
  readonly requests: number;
  readonly idleMs: number;
  /** VmRSS */
  readonly agentMiB: Spread;
  readonly echoMiB: Spread;
  /** RssAnon (heap, JIT code, stacks) and RssFile (node binary pages), medians. */
  readonly agentAnonMiB: number;
  readonly agentFileMiB: number;
  readonly echoAnonMiB: number;
  readonly echoFileMiB: number;
  readonly ratio: number;
}

async function exercise(served: Served, requests: number): Promise<void> {
  const pool = makePool(served.origin, 1);
  try {
    for (let i = 0; i < requests; i++) {
      const r = await once(pool, i % 10 === 0 ? GET_STATUS : POST_COMMAND);
      if (r.status !== 200) throw new Error(`${served.name} answered ${r.status}: ${r.body.slice(0, 300)}`);
    }
  } finally {
    await pool.close();
  }
}

export async function rss(opts: { samples: number; requests: number; idleMs: number }, progress: (line: string) => void): Promise<RssResult> {
  const agentMem: Memory[] = [];
  const echoMem: Memory[] = [];
  for (let i = 0; i < opts.samples; i++) {
    const [a, e] = [await spawnAgent(), await spawnEcho()];
    try {
      await exercise(a, opts.requests);
      await exercise(e, opts.requests);
      await sleep(opts.idleMs);
      agentMem.push(memoryOf(a.pid));
      echoMem.push(memoryOf(e.pid));
    } finally {
      await Promise.all([a.stop(), e.stop()]);
    }
  }
  const mib = (list: Memory[], key: keyof Memory): number[] => list.map((m) => m[key] / 1024);
  const agent = mib(agentMem, "rssKiB");
  const echo = mib(echoMem, "rssKiB");
  progress(`  rss     agent median ${median(agent).toFixed(1)} MiB, echo median ${median(echo).toFixed(1)} MiB`);
  return {
    samples: opts.samples,
    requests: opts.requests,
    idleMs: opts.idleMs,
    agentMiB: spread(agent),
    echoMiB: spread(echo),
    agentAnonMiB: median(mib(agentMem, "anonKiB")),
    agentFileMiB: median(mib(agentMem, "fileKiB")),
    echoAnonMiB: median(mib(echoMem, "anonKiB")),
    echoFileMiB: median(mib(echoMem, "fileKiB")),
    ratio: median(agent) / median(echo),
  };
}
