/**
 * Where the agent's time goes:
 *   npx tsx bench/profile.ts [--in-flight N] [--ms MS] [--target agent|echo] [--top N] [--agent-js PATH]
 * Spawns the server with --cpu-prof, drives the same POST as the rest benchmark, stops it, and prints
 * the functions with the most self time and a breakdown by origin (our code, node internals, pino,
 * zod, GC...). The raw .cpuprofile stays in bench/results/profile/ (open it in Chrome DevTools).
 */
import { mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ECHO_SERVER_SOURCE } from "./echo-server.js";
import { ROOT, build, distIsStale, makePool, runLoad, setAgentEntry, spawnServed, table } from "./lib.js";
import { POST_COMMAND, agentArgs } from "./rest.js";

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly hitCount?: number;
}

interface CpuProfile {
  readonly nodes: ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: number[];
}

function origin(url: string, fn: string): string {
  if (url === "") return fn.startsWith("(") ? fn : "(native)";
  if (url.includes("/node_modules/")) {
    const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
    return m?.[1] ?? "node_modules";
  }
  if (url.startsWith("node:")) {
    const m = /^node:(?:internal\/)?([^/]+)/.exec(url);
    return `node:${m?.[1] ?? "?"}`;
  }
  const dist = url.indexOf("/dist/");
  if (dist >= 0) return `ironbus ${url.slice(dist + 6).replace(/\/[^/]+$/, "")}`;
  return url;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { "in-flight": { type: "string" }, ms: { type: "string" }, target: { type: "string" }, top: { type: "string" }, "agent-js": { type: "string" } },
  });
  const inFlight = Number(values["in-flight"] ?? "1");
  const ms = Number(values.ms ?? "5000");
  const top = Number(values.top ?? "30");
  const target = values.target ?? "agent";
  if (target !== "agent" && target !== "echo") throw new Error("--target is agent or echo");
  if (values["agent-js"] !== undefined) setAgentEntry(resolve(values["agent-js"]));
  else if (distIsStale() && !build()) process.stderr.write("warning: tsc reported type errors; profiling the emitted dist/\n");
  const dir = join(ROOT, "bench", "results", "profile");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const profArgs = ["--cpu-prof", "--cpu-prof-dir", dir, "--cpu-prof-interval", "100"];
  const served = await spawnServed({
    name: target,
    args: target === "agent" ? [...profArgs, ...agentArgs()] : [...profArgs, "-e", ECHO_SERVER_SOURCE, "{PORT}"],
    readyPath: "/v1/status",
  });
  const pool = makePool(served.origin, inFlight);
  try {
    await runLoad(pool, { request: POST_COMMAND, inFlight, maxRequests: 1_000_000, maxMs: 1000 });
    const r = await runLoad(pool, { request: POST_COMMAND, inFlight, maxRequests: 5_000_000, maxMs: ms, serverPid: served.pid });
    process.stdout.write(`${target}: ${Math.round(r.perSecond)} msgs/s at ${inFlight} in flight, server CPU ${r.serverCpuUsPerReq?.toFixed(0)} µs/req\n`);
  } finally {
    await pool.close();
    await served.stop();
  }
  const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
  if (file === undefined) throw new Error(`no .cpuprofile in ${dir}`);
  const profile = JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile;
  const usPerSample = (profile.endTime - profile.startTime) / Math.max(1, profile.samples.length);
  const total = profile.samples.length;
  const byFn = new Map<string, number>();
  const byOrigin = new Map<string, number>();
  let idle = 0;
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === "(idle)") {
      idle += hits;
      continue;
    }
    const short = url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, "$1/");
    const key = `${functionName || "(anonymous)"}  ${short}:${lineNumber + 1}`;
    byFn.set(key, (byFn.get(key) ?? 0) + hits);
    const o = origin(url, functionName);
    byOrigin.set(o, (byOrigin.get(o) ?? 0) + hits);
  }
  const busy = total - idle;
  process.stdout.write(`\n${file}: ${total} samples of ~${usPerSample.toFixed(0)} µs, ${((busy / total) * 100).toFixed(0)} % busy\n\nBy origin (share of busy time):\n`);
  const pct = (n: number): string => `${((n / busy) * 100).toFixed(1)} %`;
  process.stdout.write(`${table(["origin", "share"], [...byOrigin].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([k, v]) => [k, pct(v)]))}\n`);
  process.stdout.write(`\nTop ${top} functions by self time:\n`);
  process.stdout.write(`${table(["function", "share"], [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) => [k, pct(v)]))}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`profile failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
