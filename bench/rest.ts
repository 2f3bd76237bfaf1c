/**
 * REST benchmarks against a spawned agent (`node dist/bin/ironbus-agent.js`), with the bare node:http
 * echo server as the baseline in the same run:
 *   - roundTrip: POST /v1/commands/?wait=true, a cheap sync command, at 1 and 64 in flight;
 *   - history:   throughput in windows while results accumulate (100,000 commands, and on to 200,000
 *                with the default config, past its idHistory bound), bounded vs unbounded history, each
 *                agent window followed by an echo window that tells how busy the machine was.
 */
import { spawnEcho } from "./echo-server.js";
import { type LoadResult, agentEntry, type RequestSpec, type Served, makePool, median, once, rssKiBOf, runLoad, shebangNodeFlags, spawnServed } from "./lib.js";

export const TOKEN = "bench-token-0123456789abcdef";
export const COMMAND_BODY = JSON.stringify({ name: "standby.get_partition_uuids", params: {} });
export const POST_COMMAND: RequestSpec = { method: "POST", path: `/v1/commands/?wait=true&agent_token=${TOKEN}`, body: COMMAND_BODY };
export const GET_STATUS: RequestSpec = { method: "GET", path: "/v1/status" };
export const GET_COMMANDS: RequestSpec = { method: "GET", path: `/v1/commands/?agent_token=${TOKEN}` };

export function agentArgs(extra: readonly string[] = []): string[] {
  return [...shebangNodeFlags(agentEntry()), agentEntry(), "--standalone", "--listen", "127.0.0.1:{PORT}", "--agent-token", TOKEN, "--no-kernel-cmdline", "--log-level", "warn", ...extra];
}

export function spawnAgent(extra: readonly string[] = [], pollMs = 5): Promise<Served> {
  return spawnServed({ name: "agent", args: agentArgs(extra), readyPath: "/v1/status", pollMs });
}

/** Fails loudly when a target does not answer the command as expected, before anything is timed. */
async function checkAnswers(served: Served): Promise<void> {
  const pool = makePool(served.origin, 1);
  try {
    const r = await once(pool, POST_COMMAND);
    const parsed: unknown = JSON.parse(r.body);
    const ok = r.status === 200 && typeof parsed === "object" && parsed !== null && (parsed as Record<string, unknown>)["command_status"] === "SUCCEEDED";
    if (!ok) throw new Error(`${served.name} answered ${r.status} ${r.body}`);
  } finally {
    await pool.close();
  }
}

function assertClean(name: string, r: LoadResult, served: Served): void {
  if (r.errors > 0) throw new Error(`${name}: ${r.errors} of ${r.requests} requests failed (first: ${r.firstError})\n${served.output()}`);
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip vs bare echo

export interface RoundTripOptions {
  readonly rounds: number;
  readonly warmupRequests: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  readonly inFlight: readonly number[];
}

export interface Summary {
  readonly perSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly serverCpuUsPerReq: number;
  readonly serverSysUsPerReq: number;
  readonly clientCpuShare: number;
}

export interface RoundTripCase {
  readonly inFlight: number;
  readonly agent: Summary;
  readonly echo: Summary;
  /**
   * agent msgs/s ÷ echo msgs/s: the median of the per-round ratios (agent and echo measured back to
   * back), which shrugs off load that other processes put on the machine for a while.
   */
  readonly ratio: number;
  /** The ratio in each round. */
  readonly roundRatios: number[];
  /** median agent msgs/s ÷ median echo msgs/s. */
  readonly ratioOfMedians: number;
  /** Most commands one fresh agent served in a round (warm-up included). */
  readonly agentCommandsPerRound: number;
  readonly agentRounds: LoadResult[];
  readonly echoRounds: LoadResult[];
}

function summarize(rounds: readonly LoadResult[]): Summary {
  return {
    perSecond: median(rounds.map((r) => r.perSecond)),
    p50Us: median(rounds.map((r) => r.p50Us)),
    p99Us: median(rounds.map((r) => r.p99Us)),
    serverCpuUsPerReq: median(rounds.map((r) => r.serverCpuUsPerReq ?? Number.NaN)),
    serverSysUsPerReq: median(rounds.map((r) => r.serverSysUsPerReq ?? Number.NaN)),
    clientCpuShare: median(rounds.map((r) => r.clientCpuShare)),
  };
}

export async function roundTrip(opts: RoundTripOptions, progress: (line: string) => void): Promise<RoundTripCase[]> {
  const cases: RoundTripCase[] = [];
  for (const inFlight of opts.inFlight) {
    const results: { agent: LoadResult[]; echo: LoadResult[] } = { agent: [], echo: [] };
    const served: number[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      // Fresh processes every round: each round measures per-request cost, not what the agent has
      // accumulated (at 64 in flight a few rounds would push it past its idHistory of 100,000 ids;
      // the history benchmark is the one about that).
      const agent = await spawnAgent();
      const echo = await spawnEcho();
      const pools = { agent: makePool(agent.origin, inFlight), echo: makePool(echo.origin, inFlight) };
      try {
        await checkAnswers(agent);
        await checkAnswers(echo);
        // Alternate who goes first, so drift in the machine does not favour one side.
        const order: ("agent" | "echo")[] = round % 2 === 0 ? ["echo", "agent"] : ["agent", "echo"];
        for (const who of order) {
          const target = who === "agent" ? agent : echo;
          const pool = pools[who];
          // Warm-up: at least warmupRequests and at least warmupMs. A fresh agent's CPU per command
          // keeps falling for 15,000-20,000 commands at 64 in flight (V8's optimising compiler runs on a
          // background thread, which competes with client and server for the two cores).
          const warm = await runLoad(pool, { request: POST_COMMAND, inFlight, maxRequests: opts.warmupRequests, maxMs: 20_000 });
          assertClean(`${who} warm-up`, warm, target);
          let warmed = warm.requests;
          if (warm.elapsedMs < opts.warmupMs) {
            const more = await runLoad(pool, { request: POST_COMMAND, inFlight, maxRequests: 1_000_000, maxMs: opts.warmupMs - warm.elapsedMs });
            assertClean(`${who} warm-up`, more, target);
            warmed += more.requests;
          }
          const r = await runLoad(pool, { request: POST_COMMAND, inFlight, maxRequests: 5_000_000, maxMs: opts.measureMs, serverPid: target.pid });
          assertClean(who, r, target);
          results[who].push(r);
          if (who === "agent") served.push(1 + warmed + r.requests);
          progress(`  rest  in-flight ${inFlight}  round ${round + 1}/${opts.rounds}  ${who.padEnd(5)} ${Math.round(r.perSecond)} msgs/s`);
        }
      } finally {
        await Promise.all([pools.agent.close(), pools.echo.close()]);
        await Promise.all([agent.stop(), echo.stop()]);
      }
    }
    const a = summarize(results.agent);
    const e = summarize(results.echo);
    const roundRatios = results.agent.map((r, i) => r.perSecond / (results.echo[i]?.perSecond ?? Number.NaN));
    cases.push({
      inFlight,
      agent: a,
      echo: e,
      ratio: median(roundRatios),
      roundRatios,
      ratioOfMedians: a.perSecond / e.perSecond,
      agentCommandsPerRound: Math.max(...served),
      agentRounds: results.agent,
      echoRounds: results.echo,
    });
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------
// 2. Throughput as results accumulate

export interface HistoryOptions {
  /** Commands pushed in all, warm-up included. */
  readonly total: number;
  /** Totals at which last/first is reported (and GET /v1/commands and RSS sampled); `total` always is. */
  readonly marks: readonly number[];
  readonly window: number;
  readonly inFlight: number;
  /** undefined: the agent's default (resultHistory 1000). */
  readonly resultHistory: number | undefined;
  readonly getSamples: number;
  /** Commands sent first to warm the JIT of both processes; part of the total, they count as held results. */
  readonly warmup: number;
  /** Windows on each side of a last/first ratio (their median). */
  readonly span: number;
}

export interface HistoryWindow {
  /** Commands sent before this window started (warm-up included): the results the agent held, up to its bound. */
  readonly before: number;
  readonly perSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly serverCpuUsPerReq: number | undefined;
  /**
   * The bare echo server, driven the same way right after this window: the machine's condition at
   * that moment (other processes come and go), so that drift is not mistaken for the agent slowing.
   */
  readonly echoPerSecond: number;
  readonly echoCpuUsPerReq: number | undefined;
}

export interface GetCommandsSample {
  /** Commands sent before the GETs. */
  readonly after: number;
  readonly resultsHeld: number;
  readonly bytes: number;
  readonly medianMs: number;
  readonly maxMs: number;
}

export interface HistoryMark {
  /** Commands sent so far. */
  readonly at: number;
  /**
   * msgs/s of the last windows up to here ÷ msgs/s of the first windows after warm-up, each side
   * the median of `span` windows (one window alone moves 20-50 % with whatever else the machine runs).
   */
  readonly lastOverFirst: number;
  /** The same with one window each side: the window ending here ÷ the first window. */
  readonly lastOverFirstSingle: number;
  /** Server CPU µs per command, last windows ÷ first windows, medians as above (1 = flat, 2 = twice the cost). */
  readonly cpuLastOverFirst: number;
  /** lastOverFirst with each window's msgs/s taken relative to the echo window next to it: the target figure. */
  readonly normalizedLastOverFirst: number;
  /** cpuLastOverFirst with each window's CPU per command relative to the echo's. */
  readonly normalizedCpuLastOverFirst: number;
  readonly span: number;
  readonly getCommands: GetCommandsSample;
  /** VmRSS right after the window (not idle: heap still grown from the load). */
  readonly rssMiB: number;
}

export interface HistoryRun {
  readonly resultHistory: number | "default (1000)";
  readonly inFlight: number;
  readonly total: number;
  readonly warmup: HistoryWindow;
  readonly afterWarmup: GetCommandsSample;
  readonly windows: HistoryWindow[];
  readonly marks: HistoryMark[];
}

async function sampleGetCommands(served: Served, after: number, samples: number): Promise<GetCommandsSample> {
  const pool = makePool(served.origin, 1);
  try {
    const times: number[] = [];
    let bytes = 0;
    let held = 0;
    for (let i = 0; i < samples; i++) {
      const r = await once(pool, GET_COMMANDS);
      if (r.status !== 200) throw new Error(`GET /v1/commands answered ${r.status}: ${r.body.slice(0, 300)}`);
      times.push(r.ms);
      bytes = Buffer.byteLength(r.body);
      if (i === 0) held = (JSON.parse(r.body) as { commands: unknown[] }).commands.length;
    }
    return { after, resultsHeld: held, bytes, medianMs: median(times), maxMs: Math.max(...times) };
  } finally {
    await pool.close();
  }
}

function asWindow(before: number, r: LoadResult, echo: LoadResult | undefined): HistoryWindow {
  return {
    before,
    perSecond: r.perSecond,
    p50Us: r.p50Us,
    p99Us: r.p99Us,
    serverCpuUsPerReq: r.serverCpuUsPerReq,
    echoPerSecond: echo?.perSecond ?? Number.NaN,
    echoCpuUsPerReq: echo?.serverCpuUsPerReq,
  };
}

export async function history(opts: HistoryOptions, progress: (line: string) => void): Promise<HistoryRun> {
  const extra = opts.resultHistory === undefined ? [] : ["--result-history", String(opts.resultHistory)];
  const agent = await spawnAgent(extra);
  const echo = await spawnEcho();
  const label = opts.resultHistory === undefined ? "default" : String(opts.resultHistory);
  const markAt = [...new Set([...opts.marks.filter((m) => m < opts.total), opts.total])].sort((a, b) => a - b);
  try {
    await checkAnswers(agent);
    let sent = 1; // checkAnswers sent one
    const pool = makePool(agent.origin, opts.inFlight);
    const echoPool = makePool(echo.origin, opts.inFlight);
    const echoWindow = async (): Promise<LoadResult> => {
      const e = await runLoad(echoPool, { request: POST_COMMAND, inFlight: opts.inFlight, maxRequests: opts.window, maxMs: 60_000, serverPid: echo.pid });
      assertClean("history echo window", e, echo);
      return e;
    };
    const windows: HistoryWindow[] = [];
    const marks: HistoryMark[] = [];
    let warmup: HistoryWindow;
    let afterWarmup: GetCommandsSample;
    try {
      const warm = await runLoad(pool, { request: POST_COMMAND, inFlight: opts.inFlight, maxRequests: opts.warmup, maxMs: 60_000, serverPid: agent.pid });
      assertClean("history warm-up", warm, agent);
      await echoWindow(); // the echo's own warm-up
      warmup = asWindow(sent, warm, await echoWindow());
      sent += warm.requests;
      afterWarmup = await sampleGetCommands(agent, sent, opts.getSamples);
      let w = 0;
      while (sent < opts.total) {
        // Windows never straddle a mark, so each mark is the end of a window.
        const nextMark = markAt.find((m) => m > sent) ?? opts.total;
        const size = Math.min(opts.window, nextMark - sent);
        const r = await runLoad(pool, { request: POST_COMMAND, inFlight: opts.inFlight, maxRequests: size, maxMs: 120_000, serverPid: agent.pid });
        assertClean(`history window ${w}`, r, agent);
        windows.push(asWindow(sent, r, await echoWindow()));
        sent += r.requests;
        w++;
        if (sent === nextMark) {
          const span = Math.max(1, Math.min(opts.span, Math.floor(windows.length / 2)));
          const head = windows.slice(0, span);
          const tail = windows.slice(-span);
          const med = (list: HistoryWindow[], f: (w: HistoryWindow) => number): number => median(list.map(f));
          const rate = (w: HistoryWindow): number => w.perSecond;
          const cpu = (w: HistoryWindow): number => w.serverCpuUsPerReq ?? Number.NaN;
          const relRate = (w: HistoryWindow): number => w.perSecond / w.echoPerSecond;
          const relCpu = (w: HistoryWindow): number => (w.serverCpuUsPerReq ?? Number.NaN) / (w.echoCpuUsPerReq ?? Number.NaN);
          marks.push({
            at: sent,
            lastOverFirst: med(tail, rate) / med(head, rate),
            lastOverFirstSingle: (windows[windows.length - 1]?.perSecond ?? Number.NaN) / (windows[0]?.perSecond ?? Number.NaN),
            cpuLastOverFirst: med(tail, cpu) / med(head, cpu),
            normalizedLastOverFirst: med(tail, relRate) / med(head, relRate),
            normalizedCpuLastOverFirst: med(tail, relCpu) / med(head, relCpu),
            span,
            getCommands: await sampleGetCommands(agent, sent, opts.getSamples),
            rssMiB: rssKiBOf(agent.pid) / 1024,
          });
        }
        if (w % 5 === 0 || sent >= opts.total) progress(`  history ${label.padEnd(7)} ${String(sent).padStart(7)} sent  window ${Math.round(r.perSecond)} msgs/s`);
      }
    } finally {
      await Promise.all([pool.close(), echoPool.close()]);
    }
    return { resultHistory: opts.resultHistory ?? "default (1000)", inFlight: opts.inFlight, total: sent, warmup, afterWarmup, windows, marks };
  } catch (err) {
    throw new Error(`${err instanceof Error ? err.message : String(err)}\nagent output:\n${agent.output()}`, { cause: err });
  } finally {
    await Promise.all([agent.stop(), echo.stop()]);
  }
}
