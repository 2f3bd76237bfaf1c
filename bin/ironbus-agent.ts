#!/usr/bin/env node
/** The agent's composition root: flags → config → utilities → transports → agent. */
import { existsSync, readFileSync } from "node:fs";
import { networkInterfaces, hostname } from "node:os";
import { parseArgs } from "node:util";
import { CONFIG_KEYS, type AgentConfig, flagName, loadConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import { createLogger, type Logger } from "../core/log.js";
import { Agent } from "../router/agent.js";
import { RestTransport, type RestTlsOptions } from "../transports/rest/server.js";
import { createUtilities } from "../utilities/index.js";

const USAGE = `Usage: ironbus-agent [options]

  --standalone               run without Ironic (no lookup, no heartbeats)
  --listen HOST:PORT         where the REST API listens (default 0.0.0.0:9999)
  --agent-token TOKEN        token every commands request must carry (?agent_token=)
  --config FILE              JSON config file (keys as in docs/configuration.md)
  --no-kernel-cmdline        ignore /proc/cmdline (ipa-* keys)
  --allow-destructive        allow erase/write/partition/RAID/power commands
  --allowed-devices LIST     comma-separated devices destructive commands may touch
  --auto-tls                 HTTPS with a self-signed certificate for the advertised IP
  --tls-cert-file FILE       static TLS certificate (PEM), with --tls-key-file
  --log-level LEVEL          fatal|error|warn|info|debug|trace|silent
  -h, --help                 this text
Every configuration key is also a flag (--listen-port, --result-history, ...) and an
environment variable (IRONBUS_LISTEN_PORT, ...): see docs/configuration.md.
`;

type FlagSpec = { type: "string" | "boolean" };

function flagSpecs(): Record<string, FlagSpec> {
  const specs: Record<string, FlagSpec> = {
    listen: { type: "string" },
    config: { type: "string" },
    "no-kernel-cmdline": { type: "boolean" },
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

function firstExternalAddress(): string {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && a.family === "IPv4") return a.address;
  }
  return "127.0.0.1";
}

async function tlsOptions(config: AgentConfig, log: Logger): Promise<RestTlsOptions | undefined> {
  if (config.tlsCertFile !== undefined || config.tlsKeyFile !== undefined) {
    if (config.tlsCertFile === undefined || config.tlsKeyFile === undefined) {
      throw new AgentError("CONFIG_INVALID", "tlsCertFile and tlsKeyFile go together");
    }
    return { cert: readFileSync(config.tlsCertFile, "utf8"), key: readFileSync(config.tlsKeyFile, "utf8"), minVersion: config.tlsMinVersion };
  }
  if (!config.autoTls) return undefined;
  const { generateSelfSignedCertificate, writeAutoTlsFiles } = await import("../transports/rest/autotls.js");
  const wildcard = config.listenHost === "0.0.0.0" || config.listenHost === "::";
  const ip = config.advertiseHost ?? (wildcard ? firstExternalAddress() : config.listenHost);
  const pair = generateSelfSignedCertificate({ ip, hostname: hostname(), curve: config.tlsCurve });
  const files = await writeAutoTlsFiles(config.tlsDir, pair);
  log.info({ ip, ...files }, "auto-TLS certificate generated");
  return { cert: pair.certPem, key: pair.keyPem, minVersion: config.tlsMinVersion };
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: flagSpecs(), strict: true, allowPositionals: false });
  if (values["help"] === true) {
    process.stdout.write(USAGE);
    return;
  }
  const flags: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(values)) flags[k] = typeof v === "boolean" ? String(v) : v;
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

  if (!config.standalone) {
    throw new AgentError("CONFIG_INVALID", "looking up the node in Ironic is not implemented yet: start with --standalone");
  }
  if (config.agentToken === undefined) log.warn("standalone without --agent-token: the commands API is open to anyone who can reach it");

  const utilities = await createUtilities({ config, log });
  const rest = new RestTransport({ host: config.listenHost, port: config.listenPort, log, tls: await tlsOptions(config, log), requireTokenOnGet: config.requireTokenOnGet });
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [rest] });
  await agent.start();
  const { address, port } = rest.address();
  log.info({ url: `${rest.scheme}://${address}:${port}`, version: config.version, standalone: config.standalone }, "agent ready");

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    agent.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, "stop failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`ironbus-agent: ${message}\n`);
  process.exit(2);
});
