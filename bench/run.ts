/**
 * `npm run bench [-- SECTION...] [--options]`: the agent's speed and memory figures, each held
 * against a bare baseline measured in the same run. Sections: rest, history, launch, rss, bus
 * (default: these five) and fleet (only when named: it starts 1,000 and then 10,000 agents and needs
 * ~20,000 open files). Writes a table to stdout and JSON to bench/results/ (latest.json for a full
 * run; bus.json, fleet.json or bus-fleet.json for a run of just those). See docs/benchmarks.md.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ROOT, agentEntry, build, cpuModel, distIsStale, machineBusy, median, round, setAgentEntry, table, waitForQuiet } from "./lib.js";
import { BUS_COMMAND as BUS_COMMAND_NAME, BUS_KINDS, type BusResult, busRoundTrip } from "./bus.js";
import { CHORIA_US_PER_NODE, FLEET_KINDS, type FleetRun, fleet } from "./fleet.js";
import { type HistoryRun, type HistoryWindow, type RoundTripCase, history, roundTrip } from "./rest.js";
import { type LaunchResult, type RssResult, launch, rss } from "./startup.js";

const SECTIONS = ["rest", "history", "launch", "rss", "bus", "fleet"] as const;
type Section = (typeof SECTIONS)[number];
/** What a run without section names does ("fleet" takes minutes, GiBs and ~20,000 open files: ask for it). */
const DEFAULT_SECTIONS: readonly Section[] = ["rest", "history", "launch", "rss", "bus"];

const TARGETS = {
  restRatio: 0.8,
  historyFlat: 0.9,
  launchMs: 300,
  rssMiB: 60,
  busRatio: 0.8,
  /** Choria's fleet-wide ping: 50,000 nodes in < 3.5 s. */
  fleetUsPerNode: CHORIA_US_PER_NODE,
} as const;

const USAGE = `Usage: npm run bench -- [SECTION...] [options]

Sections (default: ${DEFAULT_SECTIONS.join(", ")}): ${SECTIONS.join(", ")}

  --rounds N              rounds of the rest benchmark, median reported (5)
  --warmup N              warm-up requests before each rest measurement (20000)
  --warmup-ms MS          ...and at least this long (500)
  --measure-ms MS         length of each rest measurement (1500)
  --in-flight LIST        requests in flight for the rest benchmark (1,64)
  --total N               commands pushed by the history benchmark (100000)
  --window N              commands per history window (5000)
  --history-warmup N      commands sent before the first history window, part of --total (20000)
  --span N                history windows on each side of the last/first ratio, median taken (3)
  --extend N              the default-config history run goes on to N commands (200000: past the
                          agent's idHistory of 100,000; 0 or ≤ --total: stop at --total)
  --history-in-flight N   requests in flight during the history benchmark (64)
  --unbounded N           --result-history of the second history run (200000; 0 skips it)
  --launches N            launches of each process for the launch benchmark (10)
  --rss-samples N         processes measured for the rss benchmark (3)
  --bus-transports LIST   buses of the bus benchmark (${BUS_KINDS.join(",")})
  --bus-rounds N          rounds of the bus benchmark, each with a fresh broker, agent and echo (3)
  --bus-in-flight LIST    commands in flight for the bus benchmark (1,64)
  --bus-warmup N          warm-up round trips before each bus measurement (10000)...
  --bus-warmup-ms MS      ...stopping early after this long (5000)
  --bus-measure-ms MS     length of each bus measurement (2000)
  --bus-no-core           skip the bare NATS core request/reply reference
  --fleet-transports LIST buses of the fleet benchmark (${FLEET_KINDS.join(",")})
  --fleet-sizes LIST      simulated agents, one fresh broker each (1000,10000)
  --fleet-per-sim N       agents per simulator process (5000)
  --fleet-batch N         agents each simulator starts at once during the ramp (200)
  --fleet-rounds N        fleet-wide commands timed per size, median reported (5)
  --fleet-heartbeat-rate N  heartbeats per second offered in the heartbeat phase (10000)
  --fleet-window-ms MS    length of the heartbeat measurement (10000)
  --fleet-nats-broadcast core|durable  how NATS agents take fleet commands (core)
  --fleet-ramp-s S        longest ramp per size; the run goes on with the agents that are up (600)
  --fleet-mosquitto LINES extra mosquitto configuration lines, separated by a literal \\n
  --quiet-wait S          before each section, wait up to S seconds for the machine to be less than
                          25 % busy with other work (60; 0: do not wait). Readings go to the JSON.
  --quick                 short everything (smoke test; figures are rough)
  --skip-build            do not rebuild dist/ even when it looks stale
  --agent-js PATH         benchmark another build of the agent (implies --skip-build)
  --out FILE              JSON output (bench/results/latest.json for a full run)
  -h, --help
`;

/** A mistake on the command line: reported without a stack trace. */
class UsageError extends Error {}

function int(value: string | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  return n;
}

function pass(ok: boolean): string {
  return ok ? "met" : "MISSED";
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    strict: true,
    options: {
      rounds: { type: "string" },
      warmup: { type: "string" },
      "warmup-ms": { type: "string" },
      "measure-ms": { type: "string" },
      "in-flight": { type: "string" },
      total: { type: "string" },
      window: { type: "string" },
      "history-warmup": { type: "string" },
      extend: { type: "string" },
      span: { type: "string" },
      "history-in-flight": { type: "string" },
      unbounded: { type: "string" },
      launches: { type: "string" },
      "rss-samples": { type: "string" },
      "bus-transports": { type: "string" },
      "bus-rounds": { type: "string" },
      "bus-in-flight": { type: "string" },
      "bus-warmup": { type: "string" },
      "bus-warmup-ms": { type: "string" },
      "bus-measure-ms": { type: "string" },
      "bus-no-core": { type: "boolean" },
      "fleet-transports": { type: "string" },
      "fleet-sizes": { type: "string" },
      "fleet-per-sim": { type: "string" },
      "fleet-batch": { type: "string" },
      "fleet-rounds": { type: "string" },
      "fleet-heartbeat-rate": { type: "string" },
      "fleet-window-ms": { type: "string" },
      "fleet-nats-broadcast": { type: "string" },
      "fleet-ramp-s": { type: "string" },
      "fleet-mosquitto": { type: "string" },
      quick: { type: "boolean" },
      "quiet-wait": { type: "string" },
      "skip-build": { type: "boolean" },
      "agent-js": { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  for (const p of positionals) {
    if (!(SECTIONS as readonly string[]).includes(p)) throw new UsageError(`unknown section ${JSON.stringify(p)}; expected ${SECTIONS.join(", ")}`);
  }
  const selected = new Set<Section>(positionals.length === 0 ? DEFAULT_SECTIONS : (positionals as Section[]));
  const quick = values.quick === true;
  const cfg = {
    rounds: int(values.rounds, quick ? 1 : 5, "rounds"),
    warmupRequests: int(values.warmup, quick ? 3000 : 20_000, "warmup"),
    warmupMs: int(values["warmup-ms"], quick ? 300 : 500, "warmup-ms"),
    measureMs: int(values["measure-ms"], quick ? 700 : 1500, "measure-ms"),
    inFlight: (values["in-flight"] ?? "1,64").split(",").map((s) => int(s.trim(), 1, "in-flight")),
    total: int(values.total, quick ? 10_000 : 100_000, "total"),
    window: int(values.window, quick ? 1000 : 5000, "window"),
    historyWarmup: int(values["history-warmup"], quick ? 3000 : 20_000, "history-warmup"),
    span: int(values.span, 3, "span"),
    extend: int(values.extend, quick ? 0 : 200_000, "extend"),
    historyInFlight: int(values["history-in-flight"], 64, "history-in-flight"),
    unbounded: int(values.unbounded, 200_000, "unbounded"),
    launches: int(values.launches, quick ? 3 : 10, "launches"),
    rssSamples: int(values["rss-samples"], quick ? 1 : 3, "rss-samples"),
    quietWaitS: int(values["quiet-wait"], quick ? 0 : 60, "quiet-wait"),
    busTransports: list(values["bus-transports"], BUS_KINDS, "bus-transports"),
    busRounds: int(values["bus-rounds"], quick ? 1 : 3, "bus-rounds"),
    busInFlight: (values["bus-in-flight"] ?? "1,64").split(",").map((s) => int(s.trim(), 1, "bus-in-flight")),
    busWarmup: int(values["bus-warmup"], quick ? 2000 : 10_000, "bus-warmup"),
    busWarmupMs: int(values["bus-warmup-ms"], quick ? 1000 : 5000, "bus-warmup-ms"),
    busMeasureMs: int(values["bus-measure-ms"], quick ? 700 : 2000, "bus-measure-ms"),
    busNatsCore: values["bus-no-core"] !== true,
    fleetTransports: list(values["fleet-transports"], FLEET_KINDS, "fleet-transports"),
    fleetSizes: (values["fleet-sizes"] ?? (quick ? "200" : "1000,10000")).split(",").map((s) => int(s.trim(), 1000, "fleet-sizes")),
    fleetPerSim: int(values["fleet-per-sim"], 5000, "fleet-per-sim"),
    fleetBatch: int(values["fleet-batch"], 200, "fleet-batch"),
    fleetRounds: int(values["fleet-rounds"], quick ? 2 : 5, "fleet-rounds"),
    fleetHeartbeatRate: int(values["fleet-heartbeat-rate"], 10_000, "fleet-heartbeat-rate"),
    fleetWindowMs: int(values["fleet-window-ms"], quick ? 3000 : 10_000, "fleet-window-ms"),
    fleetNatsBroadcast: oneOf(values["fleet-nats-broadcast"] ?? "core", ["core", "durable"] as const, "fleet-nats-broadcast"),
    fleetRampS: int(values["fleet-ramp-s"], 600, "fleet-ramp-s"),
    fleetMosquitto: (values["fleet-mosquitto"] ?? "").replaceAll("\\n", "\n"),
  };
  if (cfg.inFlight.some((n) => n < 1) || cfg.rounds < 1 || cfg.window < 1 || cfg.historyInFlight < 1) throw new UsageError("counts must be ≥ 1");
  if (cfg.busInFlight.some((n) => n < 1) || cfg.busRounds < 1 || cfg.busMeasureMs < 1) throw new UsageError("bus counts must be ≥ 1");
  if (cfg.fleetSizes.some((n) => n < 1) || cfg.fleetPerSim < 1 || cfg.fleetBatch < 1 || cfg.fleetRounds < 1 || cfg.fleetHeartbeatRate < 1 || cfg.fleetWindowMs < 1) {
    throw new UsageError("fleet counts must be ≥ 1");
  }

  let buildClean: boolean | undefined;
  if (values["agent-js"] !== undefined) setAgentEntry(resolve(values["agent-js"]));
  // The fleet simulators run the TypeScript sources: only the other sections need dist/.
  else if (values["skip-build"] !== true && [...selected].some((s) => s !== "fleet") && distIsStale()) {
    process.stderr.write("dist/ is missing or older than the sources: building (npm run build)\n");
    buildClean = build();
    if (!buildClean) process.stderr.write("warning: the build failed (above); benchmarking the older bundle in dist/\n");
  }

  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  const started = new Date();
  const machine = {
    cpus: cpus().length,
    cpuModel: cpuModel(),
    memGiB: round(totalmem() / 2 ** 30, 1),
    kernel: release(),
    node: process.version,
    loadAverageAtStart: loadavg().map((l) => round(l, 2)),
  };
  log(`ironbus bench: ${[...selected].join(", ")} on ${machine.cpus} × ${machine.cpuModel}, Node ${machine.node}`);
  const load1 = machine.loadAverageAtStart[0] ?? 0;
  if (load1 > 0.5) log(`  warning: load average ${load1} before starting — something else is using the CPUs; figures will be noisy`);

  let rest: RoundTripCase[] | undefined;
  const histories: HistoryRun[] = [];
  let launchResult: LaunchResult | undefined;
  let rssResult: RssResult | undefined;
  let bus: BusResult | undefined;
  let fleetRuns: FleetRun[] | undefined;

  /** Share of the CPUs other work kept busy just before each section. */
  const busyBefore: Partial<Record<Section, number>> = {};
  const settle = async (section: Section): Promise<void> => {
    busyBefore[section] = round(cfg.quietWaitS > 0 ? await waitForQuiet(0.25, cfg.quietWaitS * 1000, log) : await machineBusy(1000), 3);
  };

  if (selected.has("rest")) {
    await settle("rest");
    rest = await roundTrip({ rounds: cfg.rounds, warmupRequests: cfg.warmupRequests, warmupMs: cfg.warmupMs, measureMs: cfg.measureMs, inFlight: cfg.inFlight }, log);
  }
  if (selected.has("history")) {
    await settle("history");
    const base = { window: cfg.window, inFlight: cfg.historyInFlight, getSamples: 5, warmup: cfg.historyWarmup, span: cfg.span };
    // The default-config run goes on past `total` (to --extend), across the agent's idHistory bound.
    const extended = Math.max(cfg.total, cfg.extend);
    histories.push(await history({ ...base, total: extended, marks: [cfg.total, extended], resultHistory: undefined }, log));
    if (cfg.unbounded > 0) histories.push(await history({ ...base, total: cfg.total, marks: [cfg.total], resultHistory: cfg.unbounded }, log));
  }
  if (selected.has("launch")) await settle("launch");
  if (selected.has("launch")) launchResult = await launch({ launches: cfg.launches, pollMs: 5 }, log);
  if (selected.has("rss")) await settle("rss");
  if (selected.has("rss")) rssResult = await rss({ samples: cfg.rssSamples, requests: 100, idleMs: 2000 }, log);
  if (selected.has("bus")) {
    await settle("bus");
    bus = await busRoundTrip(
      {
        transports: cfg.busTransports,
        rounds: cfg.busRounds,
        inFlight: cfg.busInFlight,
        warmupRequests: cfg.busWarmup,
        warmupMaxMs: cfg.busWarmupMs,
        measureMs: cfg.busMeasureMs,
        natsCore: cfg.busNatsCore,
      },
      log,
    );
  }
  if (selected.has("fleet")) {
    await settle("fleet");
    fleetRuns = await fleet(
      {
        transports: cfg.fleetTransports,
        sizes: cfg.fleetSizes,
        perSim: cfg.fleetPerSim,
        batch: cfg.fleetBatch,
        commandRounds: cfg.fleetRounds,
        commandDeadlineMs: 60_000,
        heartbeatRate: cfg.fleetHeartbeatRate,
        heartbeatWindowMs: cfg.fleetWindowMs,
        natsBroadcast: cfg.fleetNatsBroadcast,
        rampMs: cfg.fleetRampS * 1000,
        mosquittoConfig: cfg.fleetMosquitto,
      },
      log,
    );
  }

  // ---- Report
  const out: string[] = [];
  out.push(`\nironbus benchmarks — ${started.toISOString()} — ${machine.cpus} vCPU ${machine.cpuModel}, Node ${machine.node}${quick ? " — QUICK (rough)" : ""}`);
  const busyText = Object.entries(busyBefore)
    .map(([k, v]) => `${k} ${Math.round(v * 100)} %`)
    .join(", ");
  out.push(
    `load average at start ${machine.loadAverageAtStart.join(" ")}, at end ${loadavg().map((l) => l.toFixed(2)).join(" ")}; ` +
      `CPUs busy with other work before each section: ${busyText}${buildClean === false ? "; dist/ built WITH TYPE ERRORS" : ""}`,
  );
  if (rest !== undefined) {
    out.push(
      `\n1. POST /v1/commands/?wait=true (standby.get_partition_uuids) vs bare node:http echo — fresh processes each round, ` +
        `${cfg.warmupRequests.toLocaleString("en-US")} requests warm-up, median of ${cfg.rounds} rounds × ${cfg.measureMs} ms (ratio row: ratio of the medians)`,
    );
    const rows: (string | number)[][] = [];
    for (const c of rest) {
      for (const [who, s] of [["agent", c.agent], ["echo", c.echo]] as const) {
        rows.push([String(c.inFlight), who, s.perSecond, s.p50Us, s.p99Us, s.serverCpuUsPerReq, s.serverSysUsPerReq, round(s.clientCpuShare * 100)]);
      }
      rows.push([
        String(c.inFlight),
        "ratio agent/echo",
        round(c.ratio, 2),
        round(c.agent.p50Us / c.echo.p50Us, 2),
        round(c.agent.p99Us / c.echo.p99Us, 2),
        round(c.agent.serverCpuUsPerReq / c.echo.serverCpuUsPerReq, 2),
        round(c.agent.serverSysUsPerReq / c.echo.serverSysUsPerReq, 2),
        "",
      ]);
    }
    out.push(table(["in flight", "target", "msgs/s", "p50 µs", "p99 µs", "server CPU µs/req", "of which kernel", "client CPU %"], rows));
    for (const c of rest) {
      out.push(
        `   in flight ${c.inFlight}: ratio ${c.ratio.toFixed(2)} = median of rounds ${c.roundRatios.map((r) => r.toFixed(2)).join(", ")} (ratio of medians ${c.ratioOfMedians.toFixed(2)}) — target ≥ ${TARGETS.restRatio}: ${pass(c.ratio >= TARGETS.restRatio)}`,
      );
    }
  }
  for (const h of histories) {
    const warmN = ((h.windows[0]?.before ?? 1) - 1).toLocaleString("en-US");
    out.push(`\n2. ${h.total.toLocaleString("en-US")} commands into one agent (the first ${warmN} as warm-up), resultHistory ${h.resultHistory}, ${h.inFlight} in flight`);
    const row = (label: string, w: HistoryWindow): (string | number)[] => [
      label,
      w.before.toLocaleString("en-US"),
      w.perSecond,
      w.p50Us,
      w.p99Us,
      w.serverCpuUsPerReq ?? Number.NaN,
      w.echoPerSecond,
      round(w.perSecond / w.echoPerSecond, 2),
    ];
    const markEnds = new Set(h.marks.map((m) => h.windows.findIndex((w) => w.before + cfg.window >= m.at)));
    out.push(
      table(
        ["window", "sent before", "msgs/s", "p50 µs", "p99 µs", "server CPU µs/req", "echo msgs/s next to it", "agent/echo"],
        [
          row("warm-up", h.warmup),
          ...pickWindows(h.windows.length, markEnds).flatMap((i) => {
            const w = h.windows[i];
            return w === undefined ? [] : [row(`${i + 1}/${h.windows.length}`, w)];
          }),
        ],
      ),
    );
    if (h.marks.length > 1) {
      // Between marks: the median CPU per command of the windows in each stretch.
      const stretches: string[] = [];
      let from = h.windows[0]?.before ?? 0;
      for (const m of h.marks) {
        const inside = h.windows.filter((w) => w.before >= from && w.before < m.at).map((w) => w.serverCpuUsPerReq ?? Number.NaN);
        stretches.push(`${from.toLocaleString("en-US")}-${m.at.toLocaleString("en-US")}: ${median(inside).toFixed(0)} µs`);
        from = m.at;
      }
      out.push(`   median server CPU per command, ${stretches.join("; ")}`);
    }
    const g0 = h.afterWarmup;
    out.push(`   GET /v1/commands after warm-up: ${g0.resultsHeld.toLocaleString("en-US")} results, ${g0.bytes.toLocaleString("en-US")} bytes, median ${g0.medianMs.toFixed(1)} ms`);
    for (const m of h.marks) {
      const g = m.getCommands;
      out.push(
        `   at ${m.at.toLocaleString("en-US")}: last/first ${m.normalizedLastOverFirst.toFixed(2)} (agent/echo, median of ${m.span} windows each side), ` +
          `CPU per command ×${m.normalizedCpuLastOverFirst.toFixed(2)} — target ≈ 1 (≥ ${TARGETS.historyFlat}): ${pass(m.normalizedLastOverFirst >= TARGETS.historyFlat)}\n     ` +
          `raw msgs/s last/first ${m.lastOverFirst.toFixed(2)} (single windows ${m.lastOverFirstSingle.toFixed(2)}), raw CPU per command ×${m.cpuLastOverFirst.toFixed(2)}\n     ` +
          `GET /v1/commands: ${g.resultsHeld.toLocaleString("en-US")} results, ${g.bytes.toLocaleString("en-US")} bytes, median ${g.medianMs.toFixed(1)} ms (max ${g.maxMs.toFixed(1)}); RSS ${m.rssMiB.toFixed(0)} MiB`,
      );
    }
  }
  if (launchResult !== undefined) {
    const l = launchResult;
    out.push(`\n3. Launch to first 200 on GET /v1/status (poll every ${l.pollMs} ms), ${l.launches} launches each`);
    out.push(
      table(
        ["process", "median ms", "min ms", "max ms"],
        [
          ["agent (dist/ironbus-agent.mjs)", l.agentMs.median, l.agentMs.min, l.agentMs.max],
          ["bare node -e http server", l.echoMs.median, l.echoMs.min, l.echoMs.max],
        ],
      ),
    );
    out.push(`   ratio agent/bare ${l.ratio.toFixed(2)} — target < ${TARGETS.launchMs} ms: ${pass(l.agentMs.median < TARGETS.launchMs)} (IPA: 1,570 ms median)`);
  }
  if (rssResult !== undefined) {
    const r = rssResult;
    out.push(`\n4. Idle RSS after ${r.requests} requests and ${r.idleMs} ms idle, ${r.samples} processes each`);
    out.push(
      table(
        ["process", "VmRSS median MiB", "min", "max", "of which anon", "of which file"],
        [
          ["agent", r.agentMiB.median, r.agentMiB.min, r.agentMiB.max, r.agentAnonMiB, r.agentFileMiB],
          ["bare node http server", r.echoMiB.median, r.echoMiB.min, r.echoMiB.max, r.echoAnonMiB, r.echoFileMiB],
        ],
      ),
    );
    out.push(`   ratio agent/bare ${r.ratio.toFixed(2)} — target < ${TARGETS.rssMiB} MiB: ${pass(r.agentMiB.median < TARGETS.rssMiB)} (IPA: 94 MB)`);
  }
  if (bus !== undefined) out.push(busReport(bus, cfg.busRounds, cfg.busWarmup, cfg.busMeasureMs));
  if (fleetRuns !== undefined) out.push(fleetReport(fleetRuns));
  process.stdout.write(`${out.join("\n")}\n`);

  const full = DEFAULT_SECTIONS.every((s) => selected.has(s));
  const own = [...selected].every((s) => s === "bus" || s === "fleet");
  const name = full ? "latest.json" : own ? `${[...selected].join("-")}.json` : `latest-${[...selected].join("-")}.json`;
  const file = values.out ?? join(ROOT, "bench", "results", quick ? `latest-${[...selected].join("-")}-quick.json` : name);
  mkdirSync(join(file, ".."), { recursive: true });
  const json = {
    started: started.toISOString(),
    finished: new Date().toISOString(),
    machine,
    loadAverageAtEnd: loadavg().map((l) => round(l, 2)),
    machineBusyBeforeSection: busyBefore,
    config: { ...cfg, quick, sections: [...selected], agent: relative(ROOT, agentEntry()), buildHadTypeErrors: buildClean === false ? true : undefined },
    git: gitState(),
    targets: TARGETS,
    rest,
    history: histories.length > 0 ? histories : undefined,
    launch: launchResult,
    rss: rssResult,
    bus,
    fleet: fleetRuns,
  };
  writeFileSync(file, `${JSON.stringify(json, (_k, v: unknown) => (typeof v === "number" ? roundForJson(v) : v), 2)}\n`);
  process.stderr.write(`\nJSON written to ${file}\n`);
}

function list<T extends string>(value: string | undefined, allowed: readonly T[], name: string): T[] {
  if (value === undefined) return [...allowed];
  const items = value.split(",").map((s) => s.trim());
  for (const item of items) if (!(allowed as readonly string[]).includes(item)) throw new UsageError(`--${name}: ${JSON.stringify(item)} is none of ${allowed.join(", ")}`);
  return items as T[];
}

function oneOf<T extends string>(value: string, allowed: readonly T[], name: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${allowed.join(", ")}, got ${JSON.stringify(value)}`);
  return value as T;
}

function busReport(result: BusResult, rounds: number, warmup: number, measureMs: number): string {
  const bus = result.cases;
  const out: string[] = [];
  out.push(
    `\n5. Bus command round trip (controller library → broker → agent process → broker → controller, ${BUS_COMMAND_NAME}) vs the bare transport echo in the same layout — ` +
      `fresh broker, agent and echo each round, up to ${warmup.toLocaleString("en-US")} round trips warm-up, median of ${rounds} rounds × ${measureMs} ms`,
  );
  const rows: (string | number)[][] = [];
  for (const c of bus) {
    for (const s of [c.ours, c.bare, ...(c.core === undefined ? [] : [c.core])]) {
      rows.push([c.transport, String(c.inFlight), s.label, s.perSecond, s.p50Us, s.p99Us, s.requesterCpuUs, s.responderCpuUs, s.brokerCpuUs, round(s.clientCpuShare * 100)]);
    }
    const r = (a: number, b: number): number => round(a / b, 2);
    rows.push([c.transport, String(c.inFlight), "ratio ironbus/bare", round(c.ratio, 2), r(c.ours.p50Us, c.bare.p50Us), r(c.ours.p99Us, c.bare.p99Us), r(c.ours.requesterCpuUs, c.bare.requesterCpuUs), r(c.ours.responderCpuUs, c.bare.responderCpuUs), r(c.ours.brokerCpuUs, c.bare.brokerCpuUs), ""]);
  }
  out.push(
    table(["bus", "in flight", "what", "msgs/s", "p50 µs", "p99 µs", "requester CPU µs/msg", "responder CPU µs/msg", "broker CPU µs/msg", "requester % of a core"], rows),
  );
  for (const c of bus) {
    const core = c.coreRatio === undefined ? "" : `; vs NATS core request/reply ${c.coreRatio.toFixed(2)}`;
    out.push(
      `   ${c.transport} at ${c.inFlight} in flight: ratio ${c.ratio.toFixed(2)} = median of rounds ${c.roundRatios.map((r) => r.toFixed(2)).join(", ")} (ratio of medians ${c.ratioOfMedians.toFixed(2)})${core} — target ≥ ${TARGETS.busRatio}: ${pass(c.ratio >= TARGETS.busRatio)}`,
    );
  }
  for (const p of result.protocol) {
    out.push(`   the same round trip in one process with no transport (controller + agent, loopback links): ${p.inFlight} in flight ${Math.round(p.perSecond).toLocaleString("en-US")} msgs/s, ${p.cpuUsPerCommand.toFixed(1)} µs CPU per command`);
  }
  return out.join("\n");
}

function fleetReport(runs: readonly FleetRun[]): string {
  const out: string[] = [];
  out.push(`\n6. Fleet: simulated agents (real agent code, many per simulator process) on one controller; fleet-wide ${BUS_COMMAND_NAME}, heartbeats, memory`);
  out.push(
    table(
      ["bus", "agents", "simulators", "ramp s", "fleet command median ms", "µs per node", "vs Choria 70 µs/node", "heartbeats/s handled", "produced", "nominal", "sim KiB/agent", "broker MiB", "broker KiB/agent"],
      runs.map((r) => [
        `${r.transport}${r.natsBroadcast === undefined ? "" : ` (${r.natsBroadcast})`}`,
        r.reachedTarget ? r.nodes : `${r.nodes} of ${r.target}`,
        String(r.sims),
        round(r.rampMs / 1000, 1),
        r.command.medianMs,
        r.command.usPerNode,
        `${r.command.vsChoria.toFixed(2)}×`,
        r.heartbeats.handledPerS,
        r.heartbeats.producedPerS,
        r.heartbeats.nominalPerS,
        r.memory.simRssKiBPerAgent,
        r.memory.brokerRssMiB,
        r.memory.brokerRssKiBPerAgent,
      ]),
    ),
  );
  for (const r of runs) {
    const rounds = r.command.rounds.map((x) => `${x.elapsedMs} ms${x.answered === x.expected ? "" : ` (${x.answered}/${x.expected})`}`).join(", ");
    out.push(
      `   ${r.transport} ${r.target.toLocaleString("en-US")}: fleet command rounds ${rounds} (warm-up ${r.command.warmup.elapsedMs} ms); ${r.command.allAnswered ? "every node answered every round" : "SOME NODES DID NOT ANSWER"}; ` +
        `${r.command.vsChoria >= 1 ? "beats" : "does not beat"} Choria per node (${r.command.usPerNode} vs ${TARGETS.fleetUsPerNode} µs)`,
    );
    const cpu = r.command.cpuUsPerNode;
    out.push(
      `     CPU per node during a fleet command (medians): simulated agents ${cpu.sims} µs, broker ${cpu.broker} µs, controller ${cpu.controller} µs ` +
        `(central part, broker + controller: ${round(cpu.broker + cpu.controller, 1)} µs); controller link: ${r.controllerSends.sends} sends, ${r.controllerSends.failures} not confirmed in time and retried` +
        `${r.controllerSends.firstFailure === undefined ? "" : ` (first: ${r.controllerSends.firstFailure})`}, slowest ${r.controllerSends.maxSendMs} ms`,
    );
    out.push(
      `     heartbeats every ${r.heartbeats.intervalS} s: CPU during the window sims ${r.heartbeats.cpu.sims}, broker ${r.heartbeats.cpu.broker}, controller ${r.heartbeats.cpu.controller} cores ` +
        `(per heartbeat: agents ${r.heartbeats.cpuUsPerHeartbeat.sims} µs, broker ${r.heartbeats.cpuUsPerHeartbeat.broker} µs, controller ${r.heartbeats.cpuUsPerHeartbeat.controller} µs); ` +
        `simulator event-loop lag mean ${r.heartbeats.simLagMeanMs} ms, max ${r.heartbeats.simLagMaxMs} ms; ${r.heartbeats.aliveAfter} nodes alive after`,
    );
    if (!r.reachedTarget || r.rampFailures > 0) out.push(`     ramp: ${r.rampFailures} agents failed to start${r.rampStopped === undefined ? "" : `, stopped: ${r.rampStopped}`}; first error: ${r.rampFirstError ?? "none"}`);
  }
  return out.join("\n");
}

/** The commit benchmarked and whether the work tree had changes (other engineers' edits in progress). */
function gitState(): { commit: string; dirty: boolean } | undefined {
  try {
    const commit = execFileSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: ROOT, encoding: "utf8" }).trim() !== "";
    return { commit, dirty };
  } catch {
    return undefined;
  }
}

/** First, last, a few in between, and the given ones. */
function pickWindows(count: number, also: ReadonlySet<number>): number[] {
  if (count <= 8) return Array.from({ length: count }, (_, i) => i);
  const picks = new Set([0, 1, Math.round((count - 1) * 0.25), Math.round((count - 1) * 0.5), Math.round((count - 1) * 0.75), count - 1, ...also]);
  return [...picks].filter((i) => i >= 0 && i < count).sort((a, b) => a - b);
}

function roundForJson(v: number): number | null {
  if (!Number.isFinite(v)) return null;
  return Number.isInteger(v) ? v : round(v, 3);
}

main().catch((err: unknown) => {
  const usage = err instanceof UsageError || (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS") === true);
  if (usage) process.stderr.write(`bench: ${err.message}\n${USAGE}`);
  else process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = usage ? 2 : 1;
});

