/**
 * Shared pieces of the benchmarks: spawning the processes under test, a bounded load generator
 * (undici, keep-alive, pipelining 1), percentiles, and /proc readings (RSS, CPU time).
 * Everything talks to 127.0.0.1 only and every loop is bounded in count and in time.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { createServer } from "node:net";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { Pool } from "undici";

export const HOST = "127.0.0.1";
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const DEFAULT_AGENT_JS = join(ROOT, "dist", "ironbus-agent.mjs");
let agentJs = DEFAULT_AGENT_JS;

/** The agent entry point the benchmarks spawn (default: this checkout's dist/). */
export function agentEntry(): string {
  return agentJs;
}

/** Benchmarks another build of the agent (A/B comparisons): `--agent-js PATH`. */
export function setAgentEntry(path: string): void {
  agentJs = path;
}

// ---------------------------------------------------------------------------------------------
// Numbers

/** Nearest-rank percentile of an already sorted array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)));
  return sorted[rank - 1] ?? Number.NaN;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  const hi = sorted[mid] ?? Number.NaN;
  return sorted.length % 2 === 1 ? hi : ((sorted[mid - 1] ?? Number.NaN) + hi) / 2;
}

export function round(value: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

// ---------------------------------------------------------------------------------------------
// /proc

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User and system CPU time of a process, in ms (resolution 1/CLK_TCK, usually 10 ms). */
export function cpuMsOf(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const tick = 1000 / ticksPerSecond();
  return { user: Number(fields[11]) * tick, sys: Number(fields[12]) * tick };
}

/** VmRSS of a process, in KiB. */
export function rssKiBOf(pid: number): number {
  return memoryOf(pid).rssKiB;
}

export interface Memory {
  /** VmRSS: what the targets are stated in. */
  readonly rssKiB: number;
  /** RssAnon: heap, stacks, JIT code — what the process itself allocated. */
  readonly anonKiB: number;
  /** RssFile: pages of the node binary and other mapped files (shared between node processes). */
  readonly fileKiB: number;
}

export function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB$`, "m").exec(status);
    if (m === null || m[1] === undefined) throw new Error(`no ${name} for pid ${pid}`);
    return Number(m[1]);
  };
  return { rssKiB: field("VmRSS"), anonKiB: field("RssAnon"), fileKiB: field("RssFile") };
}

function cpuTimes(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

/** Share of all CPUs busy during the next `ms` milliseconds (whatever runs: this process included). */
export async function machineBusy(ms: number): Promise<number> {
  const a = cpuTimes();
  await sleep(ms);
  const b = cpuTimes();
  return b.total === a.total ? 0 : (b.busy - a.busy) / (b.total - a.total);
}

/**
 * Waits, at most maxWaitMs, until the machine is quieter than `threshold` (share of all CPUs busy,
 * sampled over a second) — other processes on a 2-core machine move the figures by 20-50 %.
 * Returns the last reading.
 */
export async function waitForQuiet(threshold: number, maxWaitMs: number, progress: (line: string) => void): Promise<number> {
  const deadline = performance.now() + maxWaitMs;
  let busy = await machineBusy(1000);
  let told = false;
  while (busy > threshold && performance.now() < deadline) {
    if (!told) progress(`  machine ${Math.round(busy * 100)} % busy with other work; waiting up to ${Math.round(maxWaitMs / 1000)} s for it to calm down`);
    told = true;
    busy = await machineBusy(1000);
  }
  if (told) progress(`  machine ${Math.round(busy * 100)} % busy: ${busy > threshold ? "going ahead anyway" : "going ahead"}`);
  return busy;
}

export function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    return m?.[1]?.trim() ?? "unknown";
  } catch {
    return "unknown";
  }
}

// ---------------------------------------------------------------------------------------------
// Build

/** The directories tsconfig.build.json compiles (read from it, so a new one is not missed). */
function sourceDirs(): string[] {
  try {
    const parsed: unknown = JSON.parse(readFileSync(join(ROOT, "tsconfig.build.json"), "utf8"));
    const include = typeof parsed === "object" && parsed !== null ? (parsed as { include?: unknown }).include : undefined;
    if (Array.isArray(include) && include.every((d): d is string => typeof d === "string")) return include;
  } catch {
    // fall through to the usual layout
  }
  return ["core", "router", "transports", "utilities", "ironic", "bin", "controller"];
}

function newestMtime(dir: string): number {
  if (!existsSync(dir)) return 0;
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path));
    else if (entry.name.endsWith(".ts")) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/** Whether dist/ is missing or older than any source file or build config. */
export function distIsStale(): boolean {
  if (!existsSync(DEFAULT_AGENT_JS)) return true;
  const built = statSync(DEFAULT_AGENT_JS).mtimeMs;
  const configs = ["tsconfig.json", "tsconfig.build.json"].map((f) => join(ROOT, f)).filter(existsSync);
  const newest = Math.max(...sourceDirs().map((d) => newestMtime(join(ROOT, d))), ...configs.map((f) => statSync(f).mtimeMs));
  return newest > built;
}

/**
 * Builds the agent as users get it (`npm run build`: the esbuild bundle). Returns false when the build
 * failed but an older bundle exists; throws when nothing runnable is there.
 */
export function build(): boolean {
  try {
    execFileSync("npm", ["run", "--silent", "build"], { cwd: ROOT, stdio: "inherit" });
    return true;
  } catch (err) {
    if (existsSync(DEFAULT_AGENT_JS)) return false;
    throw err;
  }
}

/** The node flags an entry point's shebang asks for (`#!/usr/bin/env -S node --flag`), as npx would run it. */
export function shebangNodeFlags(entry: string): string[] {
  const first = readFileSync(entry, "utf8").split("\n", 1)[0] ?? "";
  const m = /^#!.*\bnode\b(.*)$/.exec(first);
  return m?.[1]?.trim().split(/\s+/).filter((f) => f.startsWith("--")) ?? [];
}

// ---------------------------------------------------------------------------------------------
// Processes

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A child environment without the loader flags of the bench process itself. */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env["NODE_OPTIONS"];
  return env;
}

export interface Served {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly port: number;
  readonly origin: string;
  /** Milliseconds from spawn() to the first 200 on the ready path. */
  readonly readyMs: number;
  /** Last few KiB of the child's stdout and stderr (and how it exited, if it did), for error reports. */
  output(): string;
  stop(): Promise<void>;
}

export interface SpawnSpec {
  readonly name: string;
  /** Arguments to `node`; the string `{PORT}` is replaced by the chosen port. */
  readonly args: readonly string[];
  readonly readyPath: string;
  readonly pollMs?: number;
  readonly timeoutMs?: number;
}

/** Spawns `node ARGS`, polls GET readyPath (connection refused retried) until it answers 200. */
export async function spawnServed(spec: SpawnSpec): Promise<Served> {
  const port = await freePort();
  const args = spec.args.map((a) => a.replaceAll("{PORT}", String(port)));
  let tail = "";
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString("utf8")).slice(-4096);
  };
  const t0 = performance.now();
  const child = spawn(process.execPath, args, { cwd: ROOT, env: childEnv(), stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let exitedEarly = false;
  void exited.then(() => {
    exitedEarly = true;
  });
  const deadline = t0 + (spec.timeoutMs ?? 15_000);
  const pollMs = spec.pollMs ?? 5;
  let readyMs: number | undefined;
  while (readyMs === undefined) {
    if (exitedEarly) throw new Error(`${spec.name} exited before answering (code ${child.exitCode}):\n${tail}`);
    if (performance.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${spec.name} did not answer GET ${spec.readyPath} within ${spec.timeoutMs ?? 15_000} ms:\n${tail}`);
    }
    const status = await probe(port, spec.readyPath);
    if (status === 200) readyMs = performance.now() - t0;
    else await sleep(pollMs);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${spec.name}: no pid`);
  return {
    name: spec.name,
    child,
    pid,
    port,
    origin: `http://${HOST}:${port}`,
    readyMs,
    output: () => (child.exitCode === null && child.signalCode === null ? tail : `${tail}\n[${spec.name} exited: code ${child.exitCode}, signal ${child.signalCode}]`),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(killer);
    },
  };
}

/** One GET on a fresh connection; the status code, or 0 when the connection failed. */
function probe(port: number, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: HOST, port, path, method: "GET", agent: false, timeout: 2000 }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode ?? 0));
      res.once("error", () => resolve(0));
    });
    req.once("timeout", () => req.destroy(new Error("timeout")));
    req.once("error", () => resolve(0));
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// Load

export interface RequestSpec {
  readonly method: "GET" | "POST";
  readonly path: string;
  readonly body?: string;
}

export interface LoadSpec {
  readonly request: RequestSpec;
  readonly inFlight: number;
  /** Stop after this many requests... */
  readonly maxRequests: number;
  /** ...or after this long, whichever comes first. */
  readonly maxMs: number;
  /** Server process whose CPU time is sampled around the run. */
  readonly serverPid?: number;
}

export interface LoadResult {
  readonly requests: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly elapsedMs: number;
  readonly perSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
  /** Server CPU time (user + system) per request, µs (from /proc; coarse: 10 ms ticks over the whole run). */
  readonly serverCpuUsPerReq: number | undefined;
  /** The system (kernel) part of it: socket reads and writes, epoll. */
  readonly serverSysUsPerReq: number | undefined;
  /** Bench (client) process CPU use during the run, as a share of one core. */
  readonly clientCpuShare: number;
}

/** A keep-alive pool, one connection per request in flight, no pipelining. */
export function makePool(origin: string, connections: number): Pool {
  return new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000 });
}

const JSON_HEADERS = { "content-type": "application/json" };

/** Drives `inFlight` request loops over the pool until maxRequests or maxMs; latency per request. */
export async function runLoad(pool: Pool, spec: LoadSpec): Promise<LoadResult> {
  const cap = Math.max(1, Math.min(spec.maxRequests, 5_000_000));
  const latencies = new Float64Array(cap);
  let issued = 0;
  let done = 0;
  let errors = 0;
  let firstError: string | undefined;
  const opts = {
    path: spec.request.path,
    method: spec.request.method,
    ...(spec.request.body === undefined ? {} : { body: spec.request.body, headers: JSON_HEADERS }),
  };
  const cpu0 = spec.serverPid === undefined ? undefined : cpuMsOf(spec.serverPid);
  const client0 = process.cpuUsage();
  const start = performance.now();
  const stopAt = start + spec.maxMs;
  const loop = async (): Promise<void> => {
    while (issued < cap && performance.now() < stopAt) {
      issued++;
      const t0 = performance.now();
      try {
        const res = await pool.request(opts);
        await res.body.dump({ limit: 64 * 1024 * 1024 });
        if (res.statusCode !== 200) {
          errors++;
          firstError ??= `HTTP ${res.statusCode}`;
        }
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
      latencies[done++] = performance.now() - t0;
    }
  };
  await Promise.all(Array.from({ length: spec.inFlight }, loop));
  const elapsedMs = performance.now() - start;
  const clientUs = process.cpuUsage(client0);
  const cpu1 = spec.serverPid === undefined ? undefined : cpuMsOf(spec.serverPid);
  const serverCpuMs = cpu0 === undefined || cpu1 === undefined ? undefined : cpu1.user + cpu1.sys - cpu0.user - cpu0.sys;
  const serverSysMs = cpu0 === undefined || cpu1 === undefined ? undefined : cpu1.sys - cpu0.sys;
  const sorted = latencies.subarray(0, done).sort();
  return {
    requests: done,
    errors,
    firstError,
    elapsedMs,
    perSecond: (done * 1000) / elapsedMs,
    p50Us: percentile(sorted, 0.5) * 1000,
    p99Us: percentile(sorted, 0.99) * 1000,
    maxUs: percentile(sorted, 1) * 1000,
    serverCpuUsPerReq: serverCpuMs === undefined || done === 0 ? undefined : (serverCpuMs * 1000) / done,
    serverSysUsPerReq: serverSysMs === undefined || done === 0 ? undefined : (serverSysMs * 1000) / done,
    clientCpuShare: (clientUs.user + clientUs.system) / 1000 / elapsedMs,
  };
}

/** One request, its status, body and latency in ms. */
export async function once(pool: Pool, req: RequestSpec): Promise<{ status: number; body: string; ms: number }> {
  const t0 = performance.now();
  const res = await pool.request({
    path: req.path,
    method: req.method,
    ...(req.body === undefined ? {} : { body: req.body, headers: JSON_HEADERS }),
  });
  const body = await res.body.text();
  return { status: res.statusCode, body, ms: performance.now() - t0 };
}

// ---------------------------------------------------------------------------------------------
// Output

/** A plain-text table, columns padded; numbers right-aligned. */
export function table(headers: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === "number" ? fmt(c) : c)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? "").length)));
  const line = (r: readonly string[], numeric: readonly boolean[]): string =>
    r.map((c, i) => (numeric[i] === true ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join("  ").trimEnd();
  const numericCols = headers.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === "number"));
  return [line(headers, numericCols), widths.map((w) => "-".repeat(w)).join("  "), ...cells.map((r) => line(r, numericCols))].join("\n");
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return "n/a";
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en-US");
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}
