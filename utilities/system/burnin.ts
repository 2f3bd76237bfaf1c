/**
 * Burn-in steps, after IPA's: CPU and memory with stress-ng, disks with fio (destructive: it writes
 * every allowed disk), the network with fio's net engine between two nodes. Options come from the
 * node's driver_info `agent_burnin_*` keys, with IPA's defaults (24 h for stress-ng, 4 fio loops,
 * 6 h per network direction). Each step returns what the tool measured.
 */
import { readFile } from "node:fs/promises";
import type { Json, JsonObject } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import { allowedDisks, type BlockEnv } from "./blockdev.js";
import { asObject } from "./node.js";
import { cleaningError, deviceNotFound } from "./errors.js";

function driverInfo(node: JsonObject | null): JsonObject {
  return asObject(node?.["driver_info"]) ?? {};
}

function scalar(v: Json | undefined, fallback: string | number): string {
  return v === undefined || v === null || typeof v === "object" ? String(fallback) : String(v);
}

function failed(details: string, type: "CommandExecutionError" | "CleaningError" = "CommandExecutionError"): AgentError {
  return type === "CleaningError" ? cleaningError(details) : new AgentError("COMMAND_FAILED", details);
}

export interface StressMetric {
  readonly stressor: string;
  readonly bogo_ops: number;
  readonly real_time_s: number;
  readonly usr_time_s: number;
  readonly sys_time_s: number;
  readonly bogo_ops_per_s_real: number;
  readonly bogo_ops_per_s_cpu: number;
}

/** stress-ng's `--metrics-brief` table (it prints it on stderr, as `info:` or `metrc:` lines). */
export function parseStressNgMetrics(text: string): StressMetric[] {
  const out: StressMetric[] = [];
  const re = /^stress-ng:\s*\w+:\s*\[\d+\]\s+([a-z][\w-]*)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (m === null) continue;
    const n = (i: number): number => Number(m[i]);
    out.push({ stressor: m[1] ?? "", bogo_ops: n(2), real_time_s: n(3), usr_time_s: n(4), sys_time_s: n(5), bogo_ops_per_s_real: n(6), bogo_ops_per_s_cpu: n(7) });
  }
  return out;
}

/** IPA's stress_ng(): `stress-ng --cpu N` or `--vm N --vm-bytes P`, for a timeout. */
export async function stressNg(env: BlockEnv, node: JsonObject | null, kind: "cpu" | "vm"): Promise<{ command: string[]; metrics: StressMetric[] }> {
  const info = driverInfo(node);
  const count = scalar(info[kind === "cpu" ? "agent_burnin_cpu_cpu" : "agent_burnin_vm_vm"], 0);
  const timeout = scalar(info[`agent_burnin_${kind}_timeout`], 86400);
  const args = [`--${kind}`, count, "--timeout", timeout];
  if (kind === "vm") args.push("--vm-bytes", scalar(info["agent_burnin_vm_vm-bytes"], "98%"));
  args.push("--metrics-brief");
  const outputfile = info[`agent_burnin_${kind}_outputfile`];
  if (typeof outputfile === "string" && outputfile !== "") args.push("--log-file", outputfile);
  env.log.info({ args }, `burn-in stress-ng (${kind})`);
  let res;
  try {
    res = await env.run("stress-ng", args, env.signal === undefined ? {} : { signal: env.signal });
  } catch (err) {
    throw failed(`stress-ng (${kind}) failed with error ${(err as Error).message}`);
  }
  const text = `${res.stderr}\n${res.stdout}`;
  if (res.code !== 0) throw failed(`stress-ng (${kind}) failed with error: exit code ${res.code}: ${text.trim().slice(-2000)}`);
  const metrics = parseStressNgMetrics(text);
  if (metrics.length === 0) env.log.warn({ output: text.slice(-2000) }, "stress-ng printed no metrics");
  return { command: ["stress-ng", ...args], metrics };
}

export interface FioJob {
  readonly name: string;
  readonly error: number;
  readonly read_bytes: number;
  readonly write_bytes: number;
  readonly read_iops: number;
  readonly write_iops: number;
  readonly read_bw_bytes: number;
  readonly write_bw_bytes: number;
  readonly runtime_ms: number;
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function rec(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/** fio's `--output-format json` (fio may print notices before the JSON object). */
export function parseFioJson(text: string): FioJob[] {
  const start = text.search(/^\{/m);
  if (start < 0) throw failed(`fio printed no JSON: ${text.slice(0, 500)}`);
  let doc: unknown;
  try {
    doc = JSON.parse(text.slice(start));
  } catch (err) {
    throw failed(`fio printed unreadable JSON: ${(err as Error).message}`);
  }
  const jobs = rec(doc)["jobs"];
  if (!Array.isArray(jobs)) throw failed("fio's JSON has no jobs");
  return jobs.map((j: unknown) => {
    const job = rec(j);
    const read = rec(job["read"]);
    const write = rec(job["write"]);
    return {
      name: String(job["jobname"] ?? ""),
      error: num(job["error"]),
      read_bytes: num(read["io_bytes"]),
      write_bytes: num(write["io_bytes"]),
      read_iops: num(read["iops"]),
      write_iops: num(write["iops"]),
      read_bw_bytes: num(read["bw_bytes"]),
      write_bw_bytes: num(write["bw_bytes"]),
      runtime_ms: num(job["job_runtime"]),
    };
  });
}

async function runFio(env: BlockEnv, args: string[], outputfile: string | undefined, what: string, timeoutMs?: number): Promise<{ code: number; jobs: FioJob[] | undefined; output: string }> {
  // --thread: jobs are threads, so stopping fio (deadline, cancel) stops all of them; forked job
  // processes would outlive it, keep their ports and hold its output pipes open.
  const full = ["--thread", ...args, "--output-format", "json", ...(outputfile === undefined ? [] : ["--output", outputfile])];
  env.log.info({ args: full }, `burn-in fio (${what})`);
  let res;
  try {
    res = await env.run("fio", full, { ...(env.signal === undefined ? {} : { signal: env.signal }), ...(timeoutMs === undefined ? {} : { timeoutMs }) });
  } catch (err) {
    if (env.signal?.aborted === true) throw err;
    throw failed(`fio (${what}) failed with error ${(err as Error).message}`);
  }
  const json = outputfile === undefined ? res.stdout : await readFile(outputfile, "utf8").catch(() => "");
  let jobs: FioJob[] | undefined;
  try {
    jobs = parseFioJson(json);
  } catch {
    jobs = undefined;
  }
  return { code: res.code, jobs, output: `${res.stderr}\n${res.stdout}`.trim() };
}

/** IPA's fio_disk(): a verified read/write run on every allowed disk at once (one job per disk). */
export async function fioDisk(env: BlockEnv, node: JsonObject | null): Promise<{ devices: string[]; jobs: FioJob[] }> {
  const info = driverInfo(node);
  if (info["agent_burnin_fio_disk_smart_test"] === true) throw failed("agent_burnin_fio_disk_smart_test (smartctl self tests) is not supported by ironbus", "CleaningError");
  const devices = await allowedDisks(env);
  if (devices.length === 0) throw deviceNotFound("no allowed disk to burn in (allowedDevices)");
  for (const d of devices) await env.guard.check(d, "burnin_disk");
  const loops = scalar(info["agent_burnin_fio_disk_loops"], 4);
  const runtime = Number(scalar(info["agent_burnin_fio_disk_runtime"], 0));
  const outputfile = typeof info["agent_burnin_fio_disk_outputfile"] === "string" ? info["agent_burnin_fio_disk_outputfile"] : undefined;
  const args = ["--rw", "readwrite", "--bs", "4k", "--direct", "1", "--ioengine", "libaio", "--iodepth", "32", "--verify", "crc32c", "--verify_dump", "1", "--continue_on_error", "verify", "--loops", loops];
  // Without this fio leaves a verify state file in its working directory when a time-based run ends.
  args.push("--verify_state_save", "0");
  // fio ignores time_based without a runtime; IPA passes both anyway.
  if (runtime > 0) args.push("--runtime", String(runtime), "--time_based");
  for (const d of devices) args.push("--name", d);
  const { code, jobs, output } = await runFio(env, args, outputfile, "disk");
  if (code !== 0) throw failed(`fio (disk) failed with error: exit code ${code}: ${output.slice(-2000)}`);
  if (jobs === undefined) throw failed(`fio (disk) printed no readable JSON: ${output.slice(-2000)}`);
  const bad = jobs.filter((j) => j.error !== 0);
  if (bad.length > 0) throw failed(`fio (disk) reported errors on ${bad.map((j) => `${j.name} (error ${j.error})`).join(", ")}`);
  return { devices, jobs };
}

/** IPA's fixed port; driver_info `agent_burnin_fio_network_port` may change it (an ironbus extension). */
const NET_PORT = 9000;
/** fio's exit status when the reader could not connect (the writer is not listening yet). */
const FIO_CONNECT_FAILED = 16;

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) return reject(signal.reason as Error);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

interface NetOptions {
  readonly runtime: string;
  readonly partner: string;
  readonly port: number;
  readonly retryMs: number;
  /** How long a reader keeps trying to reach its writer, and a writer waits for its reader. */
  readonly pairingMs: number;
  /** How long a reader waits before its first attempt. */
  readonly readerDelayMs: number;
}

async function fioNetwork(env: BlockEnv, writer: boolean, o: NetOptions, outputfile: string | undefined): Promise<{ role: string; jobs: FioJob[] }> {
  const role = writer ? "writer" : "reader";
  const args = ["--ioengine", "net", "--port", String(o.port), "--fill_device", "1", "--group_reporting", "--gtod_reduce", "1", "--numjobs", "16"];
  if (writer) args.push("--name", "writer", "--rw", "write", "--runtime", o.runtime, "--time_based", "--listen");
  else args.push("--name", "reader", "--rw", "read", "--hostname", o.partner);
  // fio waits for its peer without a limit of its own: bound each run by the pairing time plus the runtime.
  const limitMs = o.pairingMs + (Number(o.runtime) || 0) * 1000 + 60_000;
  const giveUp = Date.now() + o.pairingMs;
  // The 16 reader jobs connect to 16 writer ports; connecting while the writer is still opening them
  // strands the writer (some of its jobs served a reader that then gave up). Give it a head start.
  if (!writer) await sleep(o.readerDelayMs, env.signal);
  for (;;) {
    let run;
    try {
      run = await runFio(env, args, outputfile, `network ${role}`, limitMs);
    } catch (err) {
      if (env.signal?.aborted === true) throw err;
      throw failed(`fio (network) ${role} gave up: ${(err as Error).message}`, "CleaningError");
    }
    const { code, jobs, output } = run;
    if (code === 0) return { role, jobs: jobs ?? [] };
    // A writer that moved nothing has not paired yet (its ports still held from the direction before,
    // or a reader that connected too early and gave up): like a reader that could not connect, it tries
    // again until the pairing time is up.
    const moved = (jobs ?? []).reduce((n, j) => n + j.write_bytes + j.read_bytes, 0);
    const unpaired = writer ? moved === 0 : code === FIO_CONNECT_FAILED;
    if (!unpaired) throw failed(`fio (network) failed with error: exit code ${code}: ${output.slice(-2000)}`);
    if (Date.now() + o.retryMs > giveUp) throw failed(`fio (network) timed out to find partner ${o.partner}`, "CleaningError");
    env.log.info({ partner: o.partner, retryMs: o.retryMs, role, code }, "fio (network): not paired yet; retrying");
    await sleep(o.retryMs, env.signal);
  }
}

/**
 * IPA's fio_network() with a static pairing (`agent_burnin_fio_network_config: {role, partner}`):
 * one direction, then the roles swap. Dynamic pairing through tooz is not supported.
 */
export async function networkBurnin(env: BlockEnv, node: JsonObject | null): Promise<{ role: string; partner: string; directions: Array<{ role: string; jobs: FioJob[] }> }> {
  const info = driverInfo(node);
  const config = asObject(info["agent_burnin_fio_network_config"]);
  if (config === undefined) {
    throw failed("fio (network): set agent_burnin_fio_network_config {role, partner}; dynamic pairing (tooz) is not supported by ironbus", "CleaningError");
  }
  const role = config["role"];
  const partner = config["partner"];
  if (role !== "writer" && role !== "reader") throw failed(`fio (network) found an unknown role: ${String(role)}`, "CleaningError");
  if (typeof partner !== "string" || partner === "") throw failed("fio (network) failed to find partner", "CleaningError");
  const outputfile = typeof info["agent_burnin_fio_network_outputfile"] === "string" ? info["agent_burnin_fio_network_outputfile"] : undefined;
  const opts: NetOptions = {
    runtime: scalar(info["agent_burnin_fio_network_runtime"], 21600),
    partner,
    port: Number(scalar(info["agent_burnin_fio_network_port"], NET_PORT)),
    // IPA waits 30 s between reader attempts; ironbus lets driver_info shorten it.
    retryMs: Number(scalar(info["agent_burnin_fio_network_retry_interval"], 30)) * 1000,
    // IPA's pairing timeout (900 s) bounds how long the partners wait for each other.
    pairingMs: Number(scalar(info["agent_burnin_fio_network_pairing_timeout"], 900)) * 1000,
    readerDelayMs: Number(scalar(info["agent_burnin_fio_network_reader_delay"], 5)) * 1000,
  };
  if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) throw failed(`fio (network): bad port ${String(opts.port)}`, "CleaningError");
  const first = role === "writer";
  const directions = [];
  for (const writer of [first, !first]) {
    const name = writer ? "writer" : "reader";
    directions.push(await fioNetwork(env, writer, opts, outputfile === undefined ? undefined : `${outputfile}.${name}`));
  }
  return { role, partner, directions };
}
