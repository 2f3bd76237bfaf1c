#!/usr/bin/env -S node --max-semi-space-size=1
/**
 * The agent's composition root: flags → config → utilities → (Ironic: lookup) → transports → agent
 * → (Ironic: heartbeats). docs/ironic.md tells the start-up with Ironic step by step.
 */
import { existsSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { CONFIG_KEYS, type AgentConfig, flagName, loadConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import { createLogger, type Logger } from "../core/log.js";
import { Agent } from "../router/agent.js";
import { RestTransport } from "../transports/rest/server.js";
import { createUtilities } from "../utilities/index.js";
import { tlsOptions } from "./tls.js";
import type { Transport } from "../core/transport.js";
import { busTransports, helloSource, nodeId, wantsBus } from "./bus.js";
import { createAgentGuard } from "./guard.js";

const USAGE = `Usage: ironbus-agent [options]

  --api-url URL              Ironic API URL; repeat it for several (kernel: ipa-api-url=A,B)
  --standalone               run without Ironic (no lookup, no heartbeats)
  --listen HOST:PORT         where the REST API listens (default 0.0.0.0:9999)
  --agent-token TOKEN        token every commands request must carry (?agent_token=)
  --config FILE              JSON config file (keys as in docs/configuration.md)
  --no-kernel-cmdline        ignore /proc/cmdline (ipa-* keys)
  --allow-destructive        allow erase/write/partition/RAID/power commands
  --allowed-devices LIST     comma-separated devices destructive commands may touch
  --auto-tls, --no-auto-tls  HTTPS with a self-signed certificate for the advertised IP
                             (default: on with Ironic API 1.68 or later, off standalone)
  --tls-cert-file FILE       static TLS certificate (PEM), with --tls-key-file
  --log-level LEVEL          fatal|error|warn|info|debug|trace|silent
  -h, --help                 this text
Every configuration key is also a flag (--listen-port, --result-history, ...) and an
environment variable (IRONBUS_LISTEN_PORT, ...): see docs/configuration.md.
Without --standalone the agent looks its node up in Ironic and heartbeats: see docs/ironic.md.
`;

type FlagSpec = { type: "string" | "boolean"; multiple?: boolean };

function flagSpecs(): Record<string, FlagSpec> {
  const specs: Record<string, FlagSpec> = {
    listen: { type: "string" },
    config: { type: "string" },
    "no-kernel-cmdline": { type: "boolean" },
    "api-url": { type: "string", multiple: true },
    "no-auto-tls": { type: "boolean" },
    help: { type: "boolean" },
  };
  for (const key of CONFIG_KEYS) specs[flagName(key)] = { type: "string" };
  for (const b of ["standalone", "allow-destructive", "auto-tls", "insecure"]) specs[b] = { type: "boolean" };
  return specs;
}

function splitHostPort(value: string): { host: string; port: string } {
  const m = /^\[?([^\]]*?)\]?:(\d{1,5})$/.exec(value);
  if (m === null || m[1] === undefined || m[2] === undefined) throw new AgentError("CONFIG_INVALID", `--listen must be HOST:PORT, got ${JSON.stringify(value)}`);
  return { host: m[1] === "" ? "0.0.0.0" : m[1], port: m[2] };
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: flagSpecs(), strict: true, allowPositionals: false });
  if (values["help"] === true) {
    process.stdout.write(USAGE);
    return;
  }
  const flags: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(values)) {
    if (typeof v === "boolean") flags[k] = String(v);
    else if (typeof v === "string") flags[k] = v;
  }
  const apiUrlFlags = values["api-url"];
  if (Array.isArray(apiUrlFlags) && apiUrlFlags.length > 0) {
    flags["api-urls"] = [...(flags["api-urls"] ?? "").split(","), ...apiUrlFlags.map(String)].filter((u) => u.trim() !== "").join(",");
  }
  if (values["no-auto-tls"] === true) flags["auto-tls"] = "false";
  if (typeof values["listen"] === "string") {
    const { host, port } = splitHostPort(values["listen"]);
    flags["listen-host"] = host;
    flags["listen-port"] = port;
  }
  const cmdlinePath = "/proc/cmdline";
  const kernelCmdline = values["no-kernel-cmdline"] !== true && existsSync(cmdlinePath) ? readFileSync(cmdlinePath, "utf8") : undefined;
  const configFile = typeof values["config"] === "string" ? values["config"] : process.env["IRONBUS_CONFIG"];
  const config = loadConfig({ flags, env: process.env, ...(configFile === undefined ? {} : { file: configFile }), ...(kernelCmdline === undefined ? {} : { kernelCmdline }) });
  const log = createLogger(config.logLevel);

  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled promise rejection (kept running)"));
  process.on("uncaughtException", (err) => log.error({ err }, "uncaught exception (kept running)"));

  // Signals are handled from here on: a SIGTERM during a long lookup ends the start-up cleanly.
  const startup = new AbortController();
  let cleanup: (() => Promise<void>) | undefined;
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    startup.abort(new AgentError("SHUTTING_DOWN", `${signal} received during start-up`));
    (cleanup ?? (() => Promise.resolve()))().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, "stop failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));

  try {
    if (config.standalone) cleanup = await startStandalone(config, log);
    else {
      // Loaded only when working with Ironic: a standalone agent starts without it.
      const { startWithIronic } = await import("./start-ironic.js");
      cleanup = await startWithIronic(config, log, startup.signal, (c) => (cleanup = c));
    }
  } catch (err) {
    // Stopped during start-up: stop() exits the process.
    if (startup.signal.aborted) return;
    throw err;
  }
}

async function startStandalone(config: AgentConfig, log: Logger): Promise<() => Promise<void>> {
  if (config.agentToken === undefined) log.warn("standalone without --agent-token: the commands API is open to anyone who can reach it");
  const utilities = await createUtilities({ config, log });
  const transports: Transport[] = [];
  let rest: RestTransport | undefined;
  if (config.transports.includes("rest")) {
    rest = new RestTransport({
      host: config.listenHost,
      port: config.listenPort,
      log,
      tls: await tlsOptions(config, log),
      requireTokenOnGet: config.requireTokenOnGet,
      heartbeatIntervalMs: config.heartbeatIntervalS * 1000,
    });
    transports.push(rest);
  }
  const node = wantsBus(config) ? await nodeId(config, log) : config.node;
  if (node !== undefined && wantsBus(config)) transports.push(...(await busTransports(config, log, node)));
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports, ...(node !== undefined ? { node } : {}), hello: helloSource(utilities, log), guard: await createAgentGuard(config, log, node) });
  await agent.start();
  const where = rest === undefined ? {} : { url: `${rest.scheme}://${rest.address().address}:${rest.address().port}` };
  log.info({ ...where, node, transports: config.transports, version: config.version, standalone: config.standalone }, "agent ready");
  // An agent that only dials out (no REST) has nothing holding the event loop while its broker is
  // away and every reconnect timer is idle: the process must not end then.
  const alive = setInterval(() => undefined, 3_600_000);
  return async () => {
    clearInterval(alive);
    await agent.stop();
  };
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`ironbus-agent: ${message}\n`);
  process.exit(2);
});
