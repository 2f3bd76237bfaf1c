#!/usr/bin/env node
/**
 * `ironbus`: the controller CLI. Lists nodes and their last heartbeat, sends a command to one node or
 * many and waits, follows progress, runs a WebSocket hub, and runs the whole loop on this machine
 * (`ironbus demo`). docs/controller.md describes it.
 */
import { parseArgs } from "node:util";
import type { WireFormat } from "../core/codec.js";
import type { Json, JsonObject, ProgressBody } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import { createLogger, type Logger } from "../core/log.js";
import { connectLink, type ControllerTransport } from "../controller/connect.js";
import { Controller, type Selector } from "../controller/controller.js";
import { nodeTable, printAnswer } from "../controller/format.js";

const USAGE = `Usage: ironbus <command> [options]

Commands:
  demo                       run a hub, an agent and a controller on this machine, send a real command
  nodes                      list the nodes the bus knows, their state and last heartbeat
  send COMMAND [PARAMS]      send a command (PARAMS: a JSON object) and wait for the answers
  watch                      print hellos, heartbeats, progress and results as they arrive
  hub                        run a WebSocket hub agents and controllers dial (--listen HOST:PORT;
                             wss:// with --cert-file and --key-file; --ca-file then requires client
                             certificates signed by that CA)

Where:
  --transport ws|mqtt|nats|rest   (default ws; IRONBUS_TRANSPORT)
  --url URL                  hub, broker, NATS servers, or node=http://host:port pairs for rest
                             (IRONBUS_URL)
  --secret SECRET            the fleet secret node tokens derive from (IRONBUS_CONTROLLER_SECRET)
  --username U --password P  broker credentials;  --ca-file, --cert-file, --key-file  TLS
  --creds FILE               NATS credentials file;  --nkey-seed FILE  NATS nkey seed
  --agent-token T            REST: the agents' token

Targets (send):
  --node N (repeat)  --group G  --all  --where PATH=VALUE (repeat; VALUE as JSON, else text)
Send options:
  --no-wait                  the first answer is enough (RUNNING for a long command)
  --deadline SECONDS         how long to collect answers (default 30)
  --format json|protobuf     envelope encoding (default json)
  --json                     print the answers as JSON
  --discover SECONDS         time to learn the fleet before sending to a group, --all or --where
                             (default 2)
`;

function die(message: string): never {
  process.stderr.write(`ironbus: ${message}\n`);
  process.exit(2);
}

const OPTIONS = {
  transport: { type: "string" },
  url: { type: "string" },
  secret: { type: "string" },
  username: { type: "string" },
  password: { type: "string" },
  "ca-file": { type: "string" },
  "cert-file": { type: "string" },
  "key-file": { type: "string" },
  creds: { type: "string" },
  "nkey-seed": { type: "string" },
  "agent-token": { type: "string" },
  node: { type: "string", multiple: true },
  group: { type: "string" },
  all: { type: "boolean" },
  where: { type: "string", multiple: true },
  "no-wait": { type: "boolean" },
  deadline: { type: "string" },
  format: { type: "string" },
  json: { type: "boolean" },
  discover: { type: "string" },
  listen: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>["values"];

function seconds(value: string | undefined, fallback: number, what: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) die(`${what} must be a number of seconds`);
  return n;
}

function selector(v: Values): Selector {
  const nodes = v.node ?? [];
  const given = [nodes.length > 0, v.group !== undefined, v.all === true, (v.where ?? []).length > 0].filter(Boolean).length;
  if (given !== 1) die("name exactly one target: --node, --group, --all or --where");
  if (nodes.length === 1 && nodes[0] !== undefined) return { node: nodes[0] };
  if (nodes.length > 1) return { nodes };
  if (v.group !== undefined) return { group: v.group };
  if (v.all === true) return { fleet: true };
  const facts: Record<string, Json> = {};
  for (const w of v.where ?? []) {
    const eq = w.indexOf("=");
    if (eq <= 0) die(`--where wants PATH=VALUE, got ${w}`);
    const raw = w.slice(eq + 1);
    let value: Json;
    try {
      value = JSON.parse(raw) as Json;
    } catch {
      value = raw;
    }
    facts[w.slice(0, eq)] = value;
  }
  return { facts };
}

async function controllerFrom(v: Values, log: Logger): Promise<Controller> {
  const transport = (v.transport ?? process.env["IRONBUS_TRANSPORT"] ?? "ws") as ControllerTransport;
  if (!["ws", "mqtt", "nats", "rest"].includes(transport)) die(`unknown transport ${transport}`);
  const url = v.url ?? process.env["IRONBUS_URL"];
  if (url === undefined) die("--url is required (or IRONBUS_URL)");
  const secret = v.secret ?? process.env["IRONBUS_CONTROLLER_SECRET"];
  const link = await connectLink({
    transport,
    url,
    log,
    ...(v.username !== undefined ? { username: v.username } : {}),
    ...(v.password !== undefined ? { password: v.password } : {}),
    ...(v["ca-file"] !== undefined ? { caFile: v["ca-file"] } : {}),
    ...(v["cert-file"] !== undefined ? { certFile: v["cert-file"] } : {}),
    ...(v["key-file"] !== undefined ? { keyFile: v["key-file"] } : {}),
    ...(v.creds !== undefined ? { natsCreds: v.creds } : {}),
    ...(v["nkey-seed"] !== undefined ? { natsNkeySeed: v["nkey-seed"] } : {}),
    ...(v["agent-token"] !== undefined ? { agentToken: v["agent-token"] } : {}),
  });
  const token = v["agent-token"];
  const controller = new Controller({
    link,
    log,
    ...(secret !== undefined ? { secret } : {}),
    // A CLI is not the fleet's controller: it never answers hellos unless it holds the secret.
    join: secret !== undefined && transport !== "rest",
    ...(transport === "rest" ? { tokenFor: () => token } : {}),
  });
  await controller.start();
  return controller;
}

/** One line per node, redrawn in place on a terminal. */
class ProgressView {
  private readonly latest = new Map<string, ProgressBody>();
  private drawn = 0;
  constructor(private readonly tty: boolean) {}

  update(node: string, p: ProgressBody): void {
    this.latest.set(node, p);
    if (!this.tty) {
      process.stderr.write(`${node}: ${p.percent === undefined ? "" : `${p.percent.toFixed(0)}% `}${p.stage ?? p.message ?? ""}\n`);
      return;
    }
    if (this.drawn > 0) process.stderr.write(`\x1b[${this.drawn}A`);
    const lines = [...this.latest].map(([n, q]) => {
      const pct = q.percent ?? 0;
      const filled = Math.round(pct / 5);
      const rate = q.rate_bps === undefined ? "" : ` ${(q.rate_bps / 2 ** 20).toFixed(1)} MiB/s`;
      return `\x1b[2K${n} [${"#".repeat(filled)}${"-".repeat(20 - filled)}] ${pct.toFixed(0).padStart(3)}% ${q.stage ?? q.message ?? ""}${rate}`;
    });
    process.stderr.write(lines.join("\n") + "\n");
    this.drawn = lines.length;
  }
}

async function send(v: Values, positionals: string[], log: Logger): Promise<number> {
  const name = positionals[1];
  if (name === undefined) die("send needs a command name (e.g. poll.get_hardware_info)");
  let params: JsonObject = {};
  if (positionals[2] !== undefined) {
    try {
      const parsed = JSON.parse(positionals[2]) as Json;
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) die("PARAMS must be a JSON object");
      params = parsed;
    } catch (err) {
      die(`PARAMS is not JSON: ${(err as Error).message}`);
    }
  }
  const target = selector(v);
  const controller = await controllerFrom(v, log);
  try {
    if (!("node" in target) && !("nodes" in target)) await new Promise((r) => setTimeout(r, seconds(v.discover, 2, "--discover") * 1000));
    const view = new ProgressView(process.stderr.isTTY === true);
    const format = (v.format ?? "json") as WireFormat;
    if (format !== "json" && format !== "protobuf") die("--format is json or protobuf");
    const answer = await controller.command(target, name, params, {
      wait: v["no-wait"] !== true,
      deadlineMs: seconds(v.deadline, 30, "--deadline") * 1000,
      format,
      onProgress: (node, p) => view.update(node, p),
    });
    printAnswer(answer, v.json === true);
    const failed = [...answer.answers.values()].some((a) => a.kind === "error" || a.result.command_status === "FAILED");
    return answer.silent.length > 0 || failed ? 1 : 0;
  } finally {
    await controller.stop();
  }
}

async function nodes(v: Values, log: Logger): Promise<number> {
  const controller = await controllerFrom(v, log);
  try {
    await new Promise((r) => setTimeout(r, seconds(v.discover, 2, "--discover") * 1000));
    const list = controller.nodes();
    if (v.json === true) process.stdout.write(JSON.stringify(list, null, 2) + "\n");
    else process.stdout.write(nodeTable(list));
    return 0;
  } finally {
    await controller.stop();
  }
}

async function watch(v: Values, log: Logger): Promise<number> {
  const controller = await controllerFrom(v, log);
  controller.on((ev) => {
    const { type, node, ...rest } = ev;
    process.stdout.write(`${new Date().toISOString()} ${node} ${type} ${JSON.stringify(rest)}\n`);
  });
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await controller.stop();
  return 0;
}

async function hub(v: Values, log: Logger): Promise<number> {
  const listen = v.listen ?? "127.0.0.1:8765";
  const m = /^\[?([^\]]*?)\]?:(\d{1,5})$/.exec(listen);
  if (m === null) die("--listen must be HOST:PORT");
  const { WsHub } = await import("../transports/ws/hub.js");
  const { readFileSync } = await import("node:fs");
  const certFile = v["cert-file"];
  const keyFile = v["key-file"];
  if ((certFile === undefined) !== (keyFile === undefined)) die("--cert-file and --key-file go together");
  const tls =
    certFile !== undefined && keyFile !== undefined
      ? { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8"), ...(v["ca-file"] !== undefined ? { clientCa: readFileSync(v["ca-file"], "utf8") } : {}) }
      : undefined;
  const h = new WsHub();
  await h.start({ host: m[1] || "0.0.0.0", port: Number(m[2]), log, ...(tls !== undefined ? { tls } : {}) });
  process.stderr.write(`ironbus hub listening on ${h.url()}\n`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await h.stop();
  return 0;
}

async function main(argv: string[]): Promise<number> {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    die((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  if (v.help === true || positionals.length === 0) {
    process.stdout.write(USAGE);
    return positionals.length === 0 && v.help !== true ? 2 : 0;
  }
  const level = v["log-level"] ?? "warn";
  if (!["fatal", "error", "warn", "info", "debug", "trace", "silent"].includes(level)) die("bad --log-level");
  const log = createLogger(level as "warn", process.stderr);
  switch (positionals[0]) {
    case "demo": {
      const { demo } = await import("./demo.js");
      return demo(log);
    }
    case "send":
      return send(v, positionals, log);
    case "nodes":
      return nodes(v, log);
    case "watch":
      return watch(v, log);
    case "hub":
      return hub(v, log);
    default:
      die(`unknown command ${positionals[0] ?? ""}; see ironbus --help`);
  }
}

// `ironbus nodes | head`: a closed pipe ends the CLI quietly.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`ironbus: ${err instanceof AgentError ? `${err.code}: ${err.message}` : err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
