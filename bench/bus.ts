/**
 * The "bus" benchmark: a command's round trip over each bus transport (ws, mqtt, nats), held
 * against the bare transport echo measured in the same run, in the same layout:
 *
 *   requester  this process: the controller library (controller/controller.ts) over the real
 *              controller link, `command({node}, "standby.get_partition_uuids", {}, wait)`; or, for
 *              the baseline, a bare client of the same library sending a message of the same size.
 *   responder  the real agent (`dist/ironbus-agent.mjs --transports T`), or bench/bus-echo.ts, a
 *              bare echo with the same client library and the same delivery guarantees.
 *   broker     a private mosquitto / nats-server on a free loopback port (test/helpers fixtures);
 *              for ws the hub runs in this process, as it does beside a controller (the bare
 *              baseline: a plain `ws` server in this process, echoed by a plain `ws` client).
 *
 * Each round starts a fresh broker (or hub), agent and echo; at each in-flight count both sides are
 * warmed up, then measured back to back (who goes first alternates by round). The ratio reported is
 * the median of the per-round ratios. Also exports the process and broker helpers the fleet
 * benchmark (bench/fleet.ts) shares.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { createAgentGuard } from "../bin/guard.js";
import type { AgentLink, AgentLinkEvents, ControllerLink, ControllerLinkEvents } from "../core/bus.js";
import { parseConfig } from "../core/config.js";
import { createLogger, silentLogger, type Logger } from "../core/log.js";
import { Controller } from "../controller/controller.js";
import { Agent } from "../router/agent.js";
import { BusTransport } from "../transports/bus/session.js";
import { createUtilities } from "../utilities/index.js";
import { MqttControllerLink } from "../transports/mqtt/controller-link.js";
import { NatsControllerLink } from "../transports/nats/controller-link.js";
import { WsHub } from "../transports/ws/hub.js";
import { startMosquitto, type Mosquitto } from "../test/helpers/mosquitto.js";
import { startNatsServer, type NatsServer } from "../test/helpers/nats-server.js";
import {
  CONTENT_TYPE,
  type EchoTransport,
  MQTT_ECHO_IN,
  MQTT_ECHO_OUT,
  NATS_ECHO_IN,
  NATS_ECHO_OUT,
  NATS_ECHO_REQ,
} from "./bus-echo.js";
import { HOST, ROOT, agentEntry, cpuMsOf, median, memoryOf, percentile, round, shebangNodeFlags } from "./lib.js";

export const BUS_KINDS = ["ws", "mqtt", "nats"] as const;
export type BusKind = (typeof BUS_KINDS)[number];

/** The command both benchmarks send: sync, no device touched (`{}` before any image is written). */
export const BUS_COMMAND = "standby.get_partition_uuids";
const NODE = "bench-n1";

// ---------------------------------------------------------------------------------------------
// Child processes: never outlive the bench

const live = new Set<ChildProcess>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.once("exit", () => {
    for (const c of live) c.kill("SIGKILL");
  });
  // A signal's default action would skip the "exit" handlers (ours and the broker fixtures').
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      process.stderr.write(`\nbench: ${sig}: stopping children and brokers\n`);
      process.exit(130);
    });
  }
}

/**
 * Runs `argv` under `sh` with the open-files limit raised to the hard limit, and `exec`s it (same pid).
 * With `watchdog`, a background shell kills it when this process's end of stdin closes (this process
 * died, even by SIGKILL); the program then gets /dev/null as stdin. Without it, stdin is a pipe the
 * program reads (and should exit when it closes).
 */
const WRAPPER = [
  'ulimit -n "$(ulimit -Hn)" 2>/dev/null || true',
  'if [ "$WATCHDOG" = 1 ]; then',
  "  exec 3<&0 0</dev/null",
  '  ( read x <&3; kill -KILL $$ 2>/dev/null ) &',
  "  exec 3<&-",
  "fi",
  'exec "$@"',
].join("\n");

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Last few KiB of stdout and stderr, and how it exited, for error messages. */
  output(): string;
  readonly exited: boolean;
  /** stdout lines, for children that talk over stdout (set `lines` at spawn). */
  onLine(listener: (line: string) => void): void;
  /** Writes a line to the child's stdin (not for watchdog children). */
  send(line: string): void;
  /** SIGTERM, SIGKILL after `graceMs`; waits for the exit. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  readonly watchdog: boolean;
  /** Keep stdout to ourselves as lines (not only as the output tail). */
  readonly lines?: boolean;
  readonly env?: NodeJS.ProcessEnv;
}

function childEnv(extra: NodeJS.ProcessEnv | undefined, watchdog: boolean): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra, WATCHDOG: watchdog ? "1" : "0" };
  delete env["NODE_OPTIONS"];
  return env;
}

export function spawnChild(name: string, argv: readonly string[], opts: SpawnOptions): Child {
  hookExit();
  const proc = spawn("sh", ["-c", WRAPPER, "sh", ...argv], { cwd: ROOT, env: childEnv(opts.env, opts.watchdog), stdio: ["pipe", "pipe", "pipe"] });
  const pid = proc.pid;
  if (pid === undefined) throw new Error(`${name}: spawn failed`);
  live.add(proc);
  let tail = "";
  let exited = false;
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString("utf8")).slice(-8192);
  };
  const listeners: ((line: string) => void)[] = [];
  let partial = "";
  proc.stdout.on("data", (chunk: Buffer) => {
    if (opts.lines !== true) return keep(chunk);
    partial += chunk.toString("utf8");
    let nl = partial.indexOf("\n");
    while (nl >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (line.startsWith("{")) for (const l of listeners) l(line);
      else keep(Buffer.from(`${line}\n`));
      nl = partial.indexOf("\n");
    }
  });
  proc.stderr.on("data", keep);
  proc.stdin.on("error", () => undefined);
  const done = new Promise<void>((resolve) =>
    proc.once("exit", () => {
      exited = true;
      live.delete(proc);
      // Ends the watchdog shell too (it reads the other end of this pipe).
      proc.stdin.destroy();
      resolve();
    }),
  );
  return {
    name,
    proc,
    pid,
    output: () => (exited ? `${tail}\n[${name} exited: code ${proc.exitCode}, signal ${proc.signalCode}]` : tail),
    get exited() {
      return exited;
    },
    onLine: (l) => listeners.push(l),
    send: (line) => {
      if (!exited) proc.stdin.write(`${line}\n`);
    },
    stop: async (graceMs = 5000) => {
      if (exited) return;
      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      await done;
      clearTimeout(killer);
    },
  };
}

/** Resolves when the child prints `word` on a line of its own; rejects when it exits or after `ms`. */
export async function waitForWord(child: Child, word: string, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!child.output().split("\n").includes(word)) {
    if (child.exited) throw new Error(`${child.name} exited before saying ${JSON.stringify(word)}:\n${child.output()}`);
    if (performance.now() > deadline) throw new Error(`${child.name} did not say ${JSON.stringify(word)} within ${ms} ms:\n${child.output()}`);
    await sleep(10);
  }
}

/** `node --import tsx FILE ARGS`: a bench program run from its TypeScript source. */
export function tsxArgv(file: string, args: readonly string[], nodeFlags: readonly string[] = []): string[] {
  return [process.execPath, ...nodeFlags, "--import", "tsx", join(ROOT, "bench", file), ...args];
}

/** The open-files limit of this process (brokers started from here inherit it). */
export function openFilesLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
  const n = (s: string | undefined): number => (s === undefined || s === "unlimited" ? Number.POSITIVE_INFINITY : Number(s));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

// ---------------------------------------------------------------------------------------------
// Brokers

export interface Broker {
  readonly kind: "mqtt" | "nats";
  readonly url: string;
  /** The broker process (for CPU time and RSS). */
  readonly pid: number;
  dispose(): Promise<void>;
}

/** The pid of the `name` process whose command line mentions `needle` (the fixtures do not expose it). */
function findPid(name: string, needle: string): number {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if ((argv[0] ?? "").endsWith(name) && argv.some((a) => a.includes(needle))) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`no ${name} process with ${needle} in its command line`);
}

/**
 * A private broker on a free loopback port (the test fixtures: persistence in a temporary directory,
 * TCP_NODELAY on for mosquitto), plus `extraConfig` lines.
 */
export async function startBroker(kind: "mqtt" | "nats", extraConfig = ""): Promise<Broker> {
  hookExit();
  if (kind === "mqtt") {
    const m: Mosquitto = await startMosquitto(undefined, { config: extraConfig, readyTimeoutMs: 10_000 });
    return { kind, url: m.url, pid: findPid("mosquitto", m.dir), dispose: () => m.dispose() };
  }
  const n: NatsServer = await startNatsServer(undefined, { config: extraConfig });
  return { kind, url: n.url, pid: findPid("nats-server", dirname(n.storeDir)), dispose: () => n.dispose() };
}

// ---------------------------------------------------------------------------------------------
// Load

export interface BusLoad {
  readonly requests: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly elapsedMs: number;
  readonly perSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
  /** Responder process CPU (user + kernel) per round trip, µs (/proc, 10 ms ticks). */
  readonly responderCpuUs: number;
  /** Broker process CPU per round trip, µs; NaN for ws (the hub is in this process). */
  readonly brokerCpuUs: number;
  /** This process (requester, and for ws the hub) as a share of one core. */
  readonly clientCpuShare: number;
  /** This process's CPU per round trip, µs. */
  readonly requesterCpuUs: number;
}

interface DriveSpec {
  readonly inFlight: number;
  readonly maxRequests: number;
  readonly maxMs: number;
  readonly responderPid: number;
  readonly brokerPid: number | undefined;
}

function cpuOf(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const c = cpuMsOf(pid);
  return c.user + c.sys;
}

/** Runs `inFlight` loops of `request` until maxRequests or maxMs; latency of each. */
async function drive(request: () => Promise<void>, spec: DriveSpec): Promise<BusLoad> {
  const cap = Math.max(1, Math.min(spec.maxRequests, 5_000_000));
  const latencies = new Float64Array(cap);
  let issued = 0;
  let done = 0;
  let errors = 0;
  let firstError: string | undefined;
  const r0 = cpuOf(spec.responderPid);
  const b0 = cpuOf(spec.brokerPid);
  const c0 = process.cpuUsage();
  const start = performance.now();
  const stopAt = start + spec.maxMs;
  const loop = async (): Promise<void> => {
    while (issued < cap && performance.now() < stopAt && errors === 0) {
      issued++;
      const t0 = performance.now();
      try {
        await request();
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
      latencies[done++] = performance.now() - t0;
    }
  };
  await Promise.all(Array.from({ length: spec.inFlight }, loop));
  const elapsedMs = performance.now() - start;
  const c = process.cpuUsage(c0);
  const r1 = cpuOf(spec.responderPid);
  const b1 = cpuOf(spec.brokerPid);
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
    responderCpuUs: done === 0 ? Number.NaN : ((r1 - r0) * 1000) / done,
    brokerCpuUs: done === 0 ? Number.NaN : ((b1 - b0) * 1000) / done,
    clientCpuShare: (c.user + c.system) / 1000 / elapsedMs,
    requesterCpuUs: done === 0 ? Number.NaN : (c.user + c.system) / done,
  };
}

// ---------------------------------------------------------------------------------------------
// Requesters

/** One side of the comparison: something that sends one request and resolves on its answer. */
interface Side {
  readonly label: string;
  readonly responderPid: number;
  request(): Promise<void>;
  close(): Promise<void>;
}

/** Answers matched by a 12-digit sequence number at the head of the message; a watchdog fails stragglers. */
class Pending {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve(): void; reject(err: Error): void; at: number }>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly payloadTail: Buffer,
    timeoutMs: number,
  ) {
    this.timer = setInterval(() => {
      const now = performance.now();
      for (const [seq, w] of this.waiting) {
        if (now - w.at > timeoutMs) {
          this.waiting.delete(seq);
          w.reject(new Error(`no answer within ${timeoutMs} ms`));
        }
      }
    }, 500);
    this.timer.unref();
  }

  /** A new message, answered by other means (request/reply). */
  message(): Buffer {
    const seq = ++this.seq;
    const payload = Buffer.allocUnsafe(12 + this.payloadTail.length);
    payload.write(String(seq).padStart(12, "0"), 0, "latin1");
    this.payloadTail.copy(payload, 12);
    return payload;
  }

  /** A new message and the promise of its answer. */
  next(): { payload: Buffer; answered: Promise<void> } {
    const payload = this.message();
    const seq = this.seq;
    const answered = new Promise<void>((resolve, reject) => this.waiting.set(seq, { resolve, reject, at: performance.now() }));
    return { payload, answered };
  }

  answer(data: Uint8Array): void {
    const seq = Number(Buffer.from(data.buffer, data.byteOffset, 12).toString("latin1"));
    const w = this.waiting.get(seq);
    if (w === undefined) return;
    this.waiting.delete(seq);
    w.resolve();
  }

  close(): void {
    clearInterval(this.timer);
    for (const w of this.waiting.values()) w.reject(new Error("requester closed"));
    this.waiting.clear();
  }
}

/**
 * What the bare requesters send: 12 digits of sequence number, then a command envelope shaped like
 * the controller's (same size as what our requester sends, give or take the digits).
 */
function payloadTail(): Buffer {
  const now = Date.now();
  const env = {
    v: 1,
    id: randomUUID(),
    kind: "command",
    issued_at: now,
    expires_at: now + 10_000,
    body: { name: BUS_COMMAND, params: {}, wait: true },
    token: "x".repeat(43),
    node: NODE,
  };
  return Buffer.from(` ${JSON.stringify(env)}`);
}

async function oursSide(controller: Controller, responderPid: number): Promise<Side> {
  return {
    label: "ironbus",
    responderPid,
    request: async () => {
      const a = await controller.command({ node: NODE }, BUS_COMMAND, {}, { deadlineMs: 10_000, resendMs: 0 });
      const answer = a.answers.get(NODE);
      if (answer === undefined) throw new Error(`no answer within 10 s (${a.silent.length} silent)`);
      if (answer.kind !== "result" || answer.result.command_status !== "SUCCEEDED") throw new Error(`unexpected answer ${JSON.stringify(answer).slice(0, 300)}`);
    },
    close: () => controller.stop(),
  };
}

/** The bare ws baseline: a `ws` server here, the echo client in its own process. */
async function wsBareServer(): Promise<{ url: string; connection: Promise<import("ws").WebSocket>; close(): Promise<void> }> {
  const { WebSocketServer } = await import("ws");
  const wss = new WebSocketServer({ host: HOST, port: 0, perMessageDeflate: false, clientTracking: true });
  await new Promise<void>((resolve) => wss.once("listening", () => resolve()));
  const address = wss.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const connection = new Promise<import("ws").WebSocket>((resolve) => wss.once("connection", (ws) => resolve(ws)));
  return {
    url: `ws://${HOST}:${port}`,
    connection,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
}

async function bareSide(kind: EchoTransport, url: string, responderPid: number, ws?: import("ws").WebSocket): Promise<Side> {
  const pending = new Pending(payloadTail(), 10_000);
  if (kind === "ws") {
    if (ws === undefined) throw new Error("ws baseline without a connection");
    ws.on("message", (data) => pending.answer(data as Buffer));
    return {
      label: "bare ws echo",
      responderPid,
      request: () => {
        const { payload, answered } = pending.next();
        ws.send(payload, { binary: false });
        return answered;
      },
      close: async () => pending.close(),
    };
  }
  if (kind === "mqtt") {
    const mqtt = await import("mqtt");
    const client = mqtt.connect(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0, clientId: `bench-requester-${process.pid}` });
    const stream = client.stream as { setNoDelay?: (on: boolean) => void; once?: (e: string, f: () => void) => void };
    stream.setNoDelay?.(true);
    stream.once?.("connect", () => stream.setNoDelay?.(true));
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", reject);
    });
    client.on("message", (_topic, payload) => pending.answer(payload));
    await client.subscribeAsync(MQTT_ECHO_OUT, { qos: 1 });
    const opts = { qos: 1 as const, properties: { contentType: CONTENT_TYPE } };
    return {
      label: "bare mqtt.js QoS 1 echo",
      responderPid,
      request: async () => {
        const { payload, answered } = pending.next();
        // Like the controller link: the send counts once the broker's PUBACK is in.
        await new Promise<void>((resolve, reject) => client.publish(MQTT_ECHO_IN, payload, opts, (err) => (err ? reject(err) : resolve())));
        await answered;
      },
      close: async () => {
        pending.close();
        await client.endAsync();
      },
    };
  }
  const { connect, headers } = await import("@nats-io/transport-node");
  const nc = await connect({ servers: url, name: `bench-requester-${kind}` });
  if (kind === "nats-core") {
    return {
      label: "bare NATS core request/reply",
      responderPid,
      request: async () => {
        await nc.request(NATS_ECHO_REQ, pending.message(), { timeout: 10_000 });
      },
      close: async () => {
        pending.close();
        await nc.close();
      },
    };
  }
  const { jetstream } = await import("@nats-io/jetstream");
  const js = jetstream(nc, { timeout: 5000 });
  nc.subscribe(NATS_ECHO_OUT, { callback: (err, msg) => {
    if (err === null) pending.answer(msg.data);
  } });
  await nc.flush();
  return {
    label: "bare JetStream echo",
    responderPid,
    request: async () => {
      const { payload, answered } = pending.next();
      // Like the controller link: a JetStream publish with a de-dup id and a content type, then the
      // answer on a core subject.
      const h = headers();
      h.set("Content-Type", CONTENT_TYPE);
      await js.publish(NATS_ECHO_IN, payload, { headers: h, msgID: randomUUID() });
      await answered;
    },
    close: async () => {
      pending.close();
      await nc.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The benchmark

export interface BusOptions {
  readonly transports: readonly BusKind[];
  readonly rounds: number;
  readonly inFlight: readonly number[];
  /** Warm-up before each measurement: this many requests, stopping early after warmupMaxMs. */
  readonly warmupRequests: number;
  readonly warmupMaxMs: number;
  readonly measureMs: number;
  /** Also measure bare NATS core request/reply (reference; the like-for-like baseline is JetStream). */
  readonly natsCore: boolean;
  /** Extra node flags for the agent process (e.g. --cpu-prof for bench/results/profile/). */
  readonly agentNodeFlags?: readonly string[];
}

export interface BusSummary {
  readonly label: string;
  readonly perSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly responderCpuUs: number;
  readonly brokerCpuUs: number;
  readonly clientCpuShare: number;
  readonly requesterCpuUs: number;
}

export interface BusCase {
  readonly transport: BusKind;
  readonly inFlight: number;
  readonly ours: BusSummary;
  /** The like-for-like bare echo (ws; mqtt.js QoS 1; JetStream). */
  readonly bare: BusSummary;
  /** NATS only, with --nats-core: bare core request/reply, for reference. */
  readonly core: BusSummary | undefined;
  /** Median of the per-round ratios ours/bare (msgs/s). */
  readonly ratio: number;
  readonly roundRatios: number[];
  readonly ratioOfMedians: number;
  readonly coreRatio: number | undefined;
  readonly rounds: { ours: BusLoad[]; bare: BusLoad[]; core: BusLoad[] };
}

function summarize(label: string, rounds: readonly BusLoad[]): BusSummary {
  const m = (f: (r: BusLoad) => number): number => median(rounds.map(f));
  return {
    label,
    perSecond: m((r) => r.perSecond),
    p50Us: m((r) => r.p50Us),
    p99Us: m((r) => r.p99Us),
    responderCpuUs: m((r) => r.responderCpuUs),
    brokerCpuUs: m((r) => r.brokerCpuUs),
    clientCpuShare: m((r) => r.clientCpuShare),
    requesterCpuUs: m((r) => r.requesterCpuUs),
  };
}

export function benchLogger(level: "error" | "warn" = "error"): Logger {
  return createLogger(level, process.stderr);
}

/** The agent bin serving one bus, as users start it. */
function spawnBusAgent(kind: BusKind, url: string, nodeFlags: readonly string[]): Child {
  const entry = agentEntry();
  const urlFlag = kind === "ws" ? "--ws-url" : kind === "mqtt" ? "--mqtt-url" : "--nats-url";
  return spawnChild(
    "agent",
    [process.execPath, ...shebangNodeFlags(entry), ...nodeFlags, entry, "--standalone", "--no-kernel-cmdline", "--log-level", "warn", "--transports", kind, urlFlag, url, "--node", NODE],
    { watchdog: true },
  );
}

/** Waits for the agent's hello at the controller, then for one command answered SUCCEEDED. */
async function agentReady(controller: Controller, agent: Child, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (controller.node(NODE)?.hello === undefined) {
    if (agent.exited) throw new Error(`agent exited before its hello:\n${agent.output()}`);
    if (performance.now() > deadline) throw new Error(`no hello from the agent within ${ms} ms:\n${agent.output()}`);
    await sleep(20);
  }
  const a = await controller.command({ node: NODE }, BUS_COMMAND, {}, { deadlineMs: Math.max(1000, deadline - performance.now()), resendMs: 1000 });
  const answer = a.answers.get(NODE);
  if (answer?.kind !== "result" || answer.result.command_status !== "SUCCEEDED") {
    throw new Error(`the agent did not answer ${BUS_COMMAND} as expected: ${JSON.stringify(answer)}\n${agent.output()}`);
  }
}

interface RoundRig {
  readonly sides: Side[];
  readonly brokerPid: number | undefined;
  close(): Promise<void>;
}

/** Fresh broker (or hub), agent, controller, echo responder(s) and bare requesters for one round. */
async function rig(kind: BusKind, natsCore: boolean, agentNodeFlags: readonly string[]): Promise<RoundRig> {
  const log = benchLogger();
  const cleanups: (() => Promise<void>)[] = [];
  const close = async (): Promise<void> => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (err) {
        process.stderr.write(`  cleanup: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    }
  };
  try {
    let link: ControllerLink;
    let url: string;
    let brokerPid: number | undefined;
    if (kind === "ws") {
      const hub = new WsHub();
      await hub.start({ host: HOST, port: 0, log });
      cleanups.push(() => hub.stop());
      url = hub.url();
      link = hub.link();
    } else {
      const broker = await startBroker(kind);
      cleanups.push(() => broker.dispose());
      url = broker.url;
      brokerPid = broker.pid;
      link = kind === "mqtt" ? new MqttControllerLink({ url, log }) : new NatsControllerLink({ servers: url, log });
    }
    const controller = new Controller({ link, log });
    await controller.start();
    cleanups.push(() => controller.stop());
    const agent = spawnBusAgent(kind, url, agentNodeFlags);
    cleanups.push(() => agent.stop());
    await agentReady(controller, agent, 30_000);
    const sides: Side[] = [await oursSide(controller, agent.pid)];

    const echoKinds: EchoTransport[] = kind === "nats" ? (natsCore ? ["nats-js", "nats-core"] : ["nats-js"]) : [kind];
    for (const echoKind of echoKinds) {
      let server: Awaited<ReturnType<typeof wsBareServer>> | undefined;
      let echoUrl = url;
      if (echoKind === "ws") {
        server = await wsBareServer();
        const s = server;
        cleanups.push(() => s.close());
        echoUrl = server.url;
      }
      const echo = spawnChild(`${echoKind} echo`, tsxArgv("bus-echo.ts", ["--transport", echoKind, "--url", echoUrl]), { watchdog: false });
      cleanups.push(() => echo.stop());
      await waitForWord(echo, "ready", 20_000);
      const side = await bareSide(echoKind, echoUrl, echo.pid, server === undefined ? undefined : await server.connection);
      cleanups.push(() => side.close());
      sides.push(side);
    }
    return { sides, brokerPid, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export interface BusResult {
  readonly cases: BusCase[];
  /** The same round trip in one process with no transport (protocolCost). */
  readonly protocol: ProtocolCost[];
}

export async function busRoundTrip(opts: BusOptions, progress: (line: string) => void): Promise<BusResult> {
  const cases: BusCase[] = [];
  for (const kind of opts.transports) {
    const per = new Map<number, { ours: BusLoad[]; bare: BusLoad[]; core: BusLoad[] }>(opts.inFlight.map((n) => [n, { ours: [], bare: [], core: [] }]));
    for (let r = 0; r < opts.rounds; r++) {
      const rigged = await rig(kind, opts.natsCore, opts.agentNodeFlags ?? []);
      try {
        for (const inFlight of opts.inFlight) {
          const bucket = per.get(inFlight);
          if (bucket === undefined) continue;
          // Who goes first alternates by round, so drift in the machine favours no side.
          const order = r % 2 === 0 ? [...rigged.sides].reverse() : rigged.sides;
          for (const side of order) {
            const spec = { inFlight, responderPid: side.responderPid, brokerPid: rigged.brokerPid };
            const warm = await drive(() => side.request(), { ...spec, maxRequests: opts.warmupRequests, maxMs: opts.warmupMaxMs });
            if (warm.errors > 0) throw new Error(`${kind} ${side.label} warm-up at ${inFlight} in flight: ${warm.errors} failed (first: ${warm.firstError})`);
            const m = await drive(() => side.request(), { ...spec, maxRequests: 5_000_000, maxMs: opts.measureMs });
            if (m.errors > 0) throw new Error(`${kind} ${side.label} at ${inFlight} in flight: ${m.errors} of ${m.requests} failed (first: ${m.firstError})`);
            const which = side === rigged.sides[0] ? "ours" : side === rigged.sides[1] ? "bare" : "core";
            bucket[which].push(m);
            progress(`  bus ${kind.padEnd(4)} in-flight ${String(inFlight).padStart(2)}  round ${r + 1}/${opts.rounds}  ${side.label.padEnd(30)} ${Math.round(m.perSecond)} msgs/s`);
          }
        }
      } finally {
        await rigged.close();
      }
    }
    for (const inFlight of opts.inFlight) {
      const b = per.get(inFlight);
      if (b === undefined) continue;
      const roundRatios = b.ours.map((o, i) => o.perSecond / (b.bare[i]?.perSecond ?? Number.NaN));
      const ours = summarize("ironbus", b.ours);
      const bare = summarize(kind === "ws" ? "bare ws echo" : kind === "mqtt" ? "bare mqtt.js QoS 1 echo" : "bare JetStream echo", b.bare);
      const core = b.core.length > 0 ? summarize("bare NATS core request/reply", b.core) : undefined;
      const coreRatios = b.core.length > 0 ? b.ours.map((o, i) => o.perSecond / (b.core[i]?.perSecond ?? Number.NaN)) : [];
      cases.push({
        transport: kind,
        inFlight,
        ours,
        bare,
        core,
        ratio: median(roundRatios),
        roundRatios,
        ratioOfMedians: ours.perSecond / bare.perSecond,
        coreRatio: core === undefined ? undefined : median(coreRatios),
        rounds: b,
      });
    }
  }
  const protocol = await protocolCost(opts.inFlight, opts.warmupRequests, opts.measureMs);
  for (const p of protocol) progress(`  bus in-process, no transport: in-flight ${p.inFlight}  ${Math.round(p.perSecond)} msgs/s, ${p.cpuUsPerCommand.toFixed(1)} µs CPU per command`);
  return { cases, protocol };
}

/** RSS of a process in MiB (VmRSS), for the fleet benchmark's broker figures. */
export function rssMiB(pid: number): number {
  return round(memoryOf(pid).rssKiB / 1024, 1);
}

// ---------------------------------------------------------------------------------------------
// The same round trip with no transport at all

export interface ProtocolCost {
  readonly inFlight: number;
  readonly perSecond: number;
  /** Controller + agent CPU per command, µs (one process). */
  readonly cpuUsPerCommand: number;
  readonly requests: number;
}

/**
 * The controller library and a real agent (utilities, trust guard as on a bus, BusTransport) in this
 * process, joined by loopback links that hand each message over in a later turn of the event loop
 * (setImmediate), as a socket would: what the envelope protocol itself costs per command, with no
 * transport, broker or second process. Runs from the TypeScript sources (tsx), not the bundle.
 */
export async function protocolCost(inFlight: readonly number[], warmup: number, measureMs: number): Promise<ProtocolCost[]> {
  const log = silentLogger();
  let toAgent: AgentLinkEvents | undefined;
  let toController: ControllerLinkEvents | undefined;
  const agentLink: AgentLink = {
    kind: "loopback",
    node: NODE,
    connected: true,
    open: async (events) => {
      toAgent = events;
      setImmediate(() => events.up());
    },
    setGroups: async () => undefined,
    publish: (kind, bytes, contentType) => {
      setImmediate(() => toController?.message({ node: NODE, kind, bytes, contentType }));
      return Promise.resolve();
    },
    close: async () => undefined,
  };
  const controllerLink: ControllerLink = {
    kind: "loopback",
    open: async (events) => {
      toController = events;
    },
    send: async (_target, bytes, contentType) => {
      setImmediate(() => toAgent?.message({ bytes, contentType, source: "node", ack: () => undefined }));
    },
    close: async () => undefined,
  };
  const config = parseConfig({ standalone: true, transports: ["ws"], wsUrl: "ws://127.0.0.1:9", logLevel: "silent" });
  const utilities = await createUtilities({ config, log });
  const transport = new BusTransport({ link: agentLink, format: "json", heartbeatIntervalMs: 30_000, outboxLimit: 10_000, maxQueuedCommands: 100, log });
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [transport], node: NODE, guard: await createAgentGuard(config, log, NODE) });
  const controller = new Controller({ link: controllerLink, log });
  await controller.start();
  await agent.start();
  try {
    const deadline = performance.now() + 5000;
    while (controller.node(NODE)?.hello === undefined) {
      if (performance.now() > deadline) throw new Error("in-process agent sent no hello");
      await sleep(10);
    }
    const side = await oursSide(controller, process.pid);
    const out: ProtocolCost[] = [];
    for (const n of inFlight) {
      const spec = { inFlight: n, responderPid: process.pid, brokerPid: undefined };
      await drive(() => side.request(), { ...spec, maxRequests: warmup, maxMs: 5000 });
      const r = await drive(() => side.request(), { ...spec, maxRequests: 5_000_000, maxMs: measureMs });
      if (r.errors > 0) throw new Error(`in-process round trip: ${r.errors} failed (first: ${r.firstError})`);
      out.push({ inFlight: n, perSecond: r.perSecond, cpuUsPerCommand: r.requesterCpuUs, requests: r.requests });
    }
    return out;
  } finally {
    await agent.stop();
    await controller.stop();
  }
}
