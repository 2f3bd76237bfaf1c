/**
 * `tsx bench/image-write.ts [--size-mib N] [--rounds N] [--keep-direct-io]`: how fast the agent writes
 * a raw image from an HTTP server onto a block device, against `curl -s URL | dd of=DEV bs=1M
 * oflag=direct` in the same run, on the same loop device, from the same server. Also the agent
 * process's peak RSS during each write. Needs root (a loop device) and curl; loopback only; bounded.
 *
 * The agent under test is this checkout compiled to a private directory (never dist/), run as its own
 * process with the REST transport; the bench posts standby.prepare_image with wait=true and times it.
 * Two different random images alternate between the runs, and after every run the device is hashed
 * and compared with the image written, so a run that wrote nothing cannot pass.
 */
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { ROOT, round, spawnServed, type Served, table } from "./lib.js";

const MIB = 1024 * 1024;
const TOKEN = "image-write-bench-token-0123456789abcdef";
const RUN_TIMEOUT_MS = 300_000;

const { values } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "1024" },
    rounds: { type: "string", default: "3" },
    "buffered-loop": { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
});
const SIZE = Number(values["size-mib"]) * MIB;
const ROUNDS = Math.max(1, Math.min(10, Number(values.rounds)));

function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** A random image with an msdos table whose one partition starts at 1 MiB (the agent checks one is readable). */
function makeImage(path: string, size: number, seed: number): string {
  const hash = createHash("sha256");
  const fd = openSync(path, "w");
  try {
    const block = Buffer.allocUnsafe(16 * MIB);
    for (let off = 0; off < size; off += block.length) {
      randomFillSync(block);
      const n = Math.min(block.length, size - off);
      if (off === 0) {
        block.fill(0, 0, 512);
        block.writeUInt32LE(0x1000 + seed, 440);
        const entry = 446;
        block[entry + 4] = 0x83;
        block.writeUInt32LE(2048, entry + 8);
        block.writeUInt32LE(size / 512 - 2048, entry + 12);
        block[510] = 0x55;
        block[511] = 0xaa;
      }
      hash.update(block.subarray(0, n));
      writeSync(fd, block, 0, n, off);
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

function hashDevice(device: string, size: number): string {
  sh("blockdev", ["--flushbufs", device]);
  const hash = createHash("sha256");
  const fd = openSync(device, "r");
  try {
    const buf = Buffer.allocUnsafe(16 * MIB);
    for (let off = 0; off < size; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, size - off), off);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m?.[1] === undefined ? Number.NaN : Number(m[1]);
}

const AGENT_JS = (build: string): string => `
import { parseConfig } from "${build}/core/config.js";
import { silentLogger } from "${build}/core/log.js";
import { defineExtension } from "${build}/core/command.js";
import { Agent } from "${build}/router/agent.js";
import { RestTransport } from "${build}/transports/rest/server.js";
import { DeviceGuard } from "${build}/utilities/disk/guard.js";
import { execRunner } from "${build}/utilities/exec.js";
import { newAgentState, standbyReadOnly } from "${build}/utilities/extensions/basic.js";
import { imagePart } from "${build}/utilities/image/part.js";
const [port, device] = process.argv.slice(2);
const config = parseConfig({ standalone: true, listenHost: "127.0.0.1", listenPort: Number(port), agentToken: "${TOKEN}", allowDestructive: true, allowedDevices: [device] });
const log = silentLogger();
const state = newAgentState();
const part = imagePart({ config, run: execRunner, guard: new DeviceGuard({ allowDestructive: true, allowedDevices: [device] }), state, log });
const rest = new RestTransport({ host: "127.0.0.1", port: Number(port), log, requireTokenOnGet: false });
const agent = new Agent({ config, log, extensions: [defineExtension("standby", { ...standbyReadOnly(execRunner, state), ...part.standby })], transports: [rest] });
await agent.start();
process.on("SIGTERM", () => agent.stop().then(() => process.exit(0)));
`;

const SERVER_JS = `
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
const [port, dir] = process.argv.slice(2);
createServer((req, res) => {
  if (req.url === "/ready") return res.end("ok");
  const file = dir + req.url;
  let size;
  try { size = statSync(file).size; } catch { return res.writeHead(404).end(); }
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": size });
  createReadStream(file, { highWaterMark: 1024 * 1024 }).pipe(res);
}).listen(Number(port), "127.0.0.1");
`;

interface RunResult {
  readonly tool: "ironbus" | "curl|dd";
  readonly seconds: number;
  readonly mbps: number;
  readonly verified: boolean;
  readonly peakRssMiB?: number;
}

async function runAgent(agent: Served, url: string, image: string, checksum: string, device: string): Promise<RunResult> {
  // Reset the agent's high-water mark so VmHWM is this write's peak; sample VmRSS too.
  writeFileSync(`/proc/${agent.pid}/clear_refs`, "5");
  let peakKiB = 0;
  const sampler = setInterval(() => {
    peakKiB = Math.max(peakKiB, statusKiB(agent.pid, "VmRSS"));
  }, 20);
  const t0 = performance.now();
  const res = await fetch(`${agent.origin}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "standby.prepare_image", params: { image_info: { id: image, urls: [url], disk_format: "raw", stream_raw_images: true, os_hash_algo: "sha256", os_hash_value: checksum } } }),
    signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
  });
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  peakKiB = Math.max(peakKiB, statusKiB(agent.pid, "VmHWM"));
  const body = (await res.json()) as { command_status?: string; command_error?: unknown };
  if (body.command_status !== "SUCCEEDED") throw new Error(`prepare_image failed: ${JSON.stringify(body.command_error)}`);
  const verified = hashDevice(device, SIZE) === checksum;
  return { tool: "ironbus", seconds, mbps: SIZE / 1e6 / seconds, verified, peakRssMiB: peakKiB / 1024 };
}

async function runDd(url: string, checksum: string, device: string): Promise<RunResult> {
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn("sh", ["-c", 'curl -s "$0" | dd of="$1" bs=1M oflag=direct status=none', url, device], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.once("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`curl | dd exited ${code}: ${err}`));
    });
  });
  const seconds = (performance.now() - t0) / 1000;
  return { tool: "curl|dd", seconds, mbps: SIZE / 1e6 / seconds, verified: hashDevice(device, SIZE) === checksum };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("needs root: it attaches a loop device");
  const work = mkdtempSync(join(tmpdir(), "ironbus-image-bench-"));
  let loop: string | undefined;
  const served: Served[] = [];
  try {
    process.stderr.write("compiling the agent...\n");
    const build = join(work, "build");
    try {
      execFileSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", join(ROOT, "tsconfig.build.json"), "--outDir", build, "--declaration", "false"], { cwd: ROOT, stdio: "pipe" });
    } catch (err) {
      // Type errors elsewhere in a tree being worked on still emit JavaScript; a missing module does not.
      if (!existsSync(join(build, "utilities", "image", "part.js"))) throw err;
      process.stderr.write("(tsc reported errors; using what it emitted)\n");
    }
    // The compiled modules resolve their packages from the checkout.
    sh("ln", ["-s", join(ROOT, "node_modules"), join(work, "node_modules")]);
    writeFileSync(join(work, "agent.mjs"), AGENT_JS(build));
    writeFileSync(join(work, "server.mjs"), SERVER_JS);

    process.stderr.write(`making two ${SIZE / MIB} MiB images...\n`);
    const images = [
      { name: "a.raw", checksum: makeImage(join(work, "a.raw"), SIZE, 1) },
      { name: "b.raw", checksum: makeImage(join(work, "b.raw"), SIZE, 2) },
    ];
    const backing = join(work, "disk.img");
    writeFileSync(backing, "");
    truncateSync(backing, SIZE + 64 * MIB);
    loop = sh("losetup", ["-f", "--show", "-P", ...(values["buffered-loop"] ? [] : ["--direct-io=on"]), backing]).trim();
    if (!/^\/dev\/loop\d+$/.test(loop)) throw new Error(`losetup gave ${loop}`);

    const server = await spawnServed({ name: "image server", args: [join(work, "server.mjs"), "{PORT}", work], readyPath: "/ready" });
    served.push(server);
    const agent = await spawnServed({ name: "agent", args: [join(work, "agent.mjs"), "{PORT}", loop], readyPath: "/v1/status" });
    served.push(agent);
    const idleRssMiB = statusKiB(agent.pid, "VmRSS") / 1024;

    const results: RunResult[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      // Alternate the image and the order, so neither tool always follows the other.
      const first = images[r % 2];
      const second = images[(r + 1) % 2];
      if (first === undefined || second === undefined) throw new Error("no image");
      const ours = async (img: typeof first): Promise<void> => {
        results.push(await runAgent(agent, `${server.origin}/${img.name}`, img.name, img.checksum, loop ?? ""));
      };
      const theirs = async (img: typeof first): Promise<void> => {
        results.push(await runDd(`${server.origin}/${img.name}`, img.checksum, loop ?? ""));
      };
      if (r % 2 === 0) {
        await ours(first);
        await theirs(second);
      } else {
        await theirs(first);
        await ours(second);
      }
      const last2 = results.slice(-2);
      process.stderr.write(`round ${r + 1}: ${last2.map((x) => `${x.tool} ${round(x.mbps)} MB/s${x.verified ? "" : " NOT VERIFIED"}`).join(", ")}\n`);
      await sleep(200);
    }
    const oursRuns = results.filter((x) => x.tool === "ironbus");
    const ddRuns = results.filter((x) => x.tool === "curl|dd");
    const oursMbps = median(oursRuns.map((x) => x.mbps));
    const ddMbps = median(ddRuns.map((x) => x.mbps));
    const peak = Math.max(...oursRuns.map((x) => x.peakRssMiB ?? 0));
    const summary = {
      sizeMiB: SIZE / MIB,
      rounds: ROUNDS,
      loop: values["buffered-loop"] ? "buffered" : "direct-io=on",
      oursMBps: round(oursMbps, 1),
      ddMBps: round(ddMbps, 1),
      ratio: round(oursMbps / ddMbps, 3),
      targetRatio: 0.9,
      verified: results.every((x) => x.verified),
      agentIdleRssMiB: round(idleRssMiB, 1),
      agentPeakRssMiB: round(peak, 1),
      targetRssMiB: 100,
      runs: results.map((x) => ({ ...x, seconds: round(x.seconds, 3), mbps: round(x.mbps, 1), ...(x.peakRssMiB === undefined ? {} : { peakRssMiB: round(x.peakRssMiB, 1) }) })),
    };
    process.stdout.write(
      `${table(
        ["writer", "MB/s (median)", "runs", "verified", "peak RSS MiB"],
        [
          ["ironbus (prepare_image)", round(oursMbps, 1), oursRuns.map((x) => round(x.mbps)).join(" / "), String(oursRuns.every((x) => x.verified)), round(peak, 1)],
          ["curl -s | dd bs=1M oflag=direct", round(ddMbps, 1), ddRuns.map((x) => round(x.mbps)).join(" / "), String(ddRuns.every((x) => x.verified)), "-"],
        ],
      )}\nratio ironbus / curl|dd: ${summary.ratio} (target >= 0.9); agent RSS idle ${summary.agentIdleRssMiB} MiB, peak during writes ${summary.agentPeakRssMiB} MiB (target < 100)\n`,
    );
    if (values.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    if (!summary.verified) process.exitCode = 1;
  } finally {
    for (const s of served.reverse()) await s.stop().catch(() => undefined);
    if (loop !== undefined) {
      try {
        sh("losetup", ["-d", loop]);
      } catch {
        // already gone
      }
    }
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
