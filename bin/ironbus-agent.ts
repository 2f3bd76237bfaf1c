#!/usr/bin/env node
/**
 * The agent's composition root: flags → config → utilities → (Ironic: lookup) → transports → agent
 * → (Ironic: heartbeats). docs/ironic.md tells the start-up with Ironic step by step.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { networkInterfaces, hostname } from "node:os";
import { parseArgs } from "node:util";
import type { CommandContext } from "../core/command.js";
import { CONFIG_KEYS, type AgentConfig, flagName, loadConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import { createLogger, type Logger } from "../core/log.js";
import { callbackUrl } from "../ironic/advertise.js";
import { connectToIronic, type HeartbeatHandle, type IronicSession, startHeartbeats, useAutoTls } from "../ironic/link.js";
import { Agent } from "../router/agent.js";
import { RestTransport, type RestTlsOptions } from "../transports/rest/server.js";
import { execRunner } from "../utilities/exec.js";
import { createUtilities } from "../utilities/index.js";
import { collectInterfaces } from "../utilities/inventory/net.js";
import { HostFs } from "../utilities/inventory/sysfs.js";
import { collectSystemLogs } from "../utilities/logs/index.js";

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
  if (config.autoTls !== true) return undefined;
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
    else cleanup = await startWithIronic(config, log, startup.signal, (c) => (cleanup = c));
  } catch (err) {
    // Stopped during start-up: stop() exits the process.
    if (startup.signal.aborted) return;
    throw err;
  }
}

async function startStandalone(config: AgentConfig, log: Logger): Promise<() => Promise<void>> {
  if (config.agentToken === undefined) log.warn("standalone without --agent-token: the commands API is open to anyone who can reach it");
  const utilities = await createUtilities({ config, log });
  const rest = new RestTransport({ host: config.listenHost, port: config.listenPort, log, tls: await tlsOptions(config, log), requireTokenOnGet: config.requireTokenOnGet });
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [rest] });
  await agent.start();
  const { address, port } = rest.address();
  log.info({ url: `${rest.scheme}://${address}:${port}`, version: config.version, standalone: config.standalone }, "agent ready");
  return () => agent.stop();
}

/** A command context for manager calls the agent makes on its own (inspection), outside any command. */
function internalContext(log: Logger, signal: AbortSignal | undefined): CommandContext {
  return {
    id: randomUUID(),
    name: "ironic.inspection",
    signal: signal ?? new AbortController().signal,
    log,
    progress: () => undefined,
    invoke: () => Promise.reject(new AgentError("INTERNAL", "commands cannot be invoked during inspection")),
  };
}

/** TLS for the API when working with Ironic: static files, auto-TLS (its PEM goes out as agent_verify_ca), or none. */
async function ironicTls(config: AgentConfig, session: IronicSession, log: Logger): Promise<{ tls: RestTlsOptions | undefined; verifyCa: string | undefined }> {
  const minVersion = config.tlsMinVersion === "TLSv1.3" || session.tlsMinVersion === "TLSv1.3" ? "TLSv1.3" : "TLSv1.2";
  if (config.tlsCertFile !== undefined || config.tlsKeyFile !== undefined) {
    const fixed = await tlsOptions(config, log);
    return { tls: fixed === undefined ? undefined : { ...fixed, minVersion }, verifyCa: undefined };
  }
  if (!useAutoTls(config, session, log)) return { tls: undefined, verifyCa: undefined };
  const { generateSelfSignedCertificate, parseIpAddress, writeAutoTlsFiles } = await import("../transports/rest/autotls.js");
  try {
    parseIpAddress(session.advertiseHost);
  } catch (err) {
    throw new AgentError(
      "CONFIG_INVALID",
      `auto-TLS certifies an IP address, and the advertise host ${JSON.stringify(session.advertiseHost)} is not one (${(err as Error).message}): ` +
        "set ipa-advertise-host to an IP address, or turn autoTls off",
      { cause: err },
    );
  }
  const pair = generateSelfSignedCertificate({ ip: session.advertiseHost, hostname: hostname(), curve: config.tlsCurve });
  const files = await writeAutoTlsFiles(config.tlsDir, pair);
  log.info({ ip: session.advertiseHost, ...files }, "auto-TLS certificate generated; it goes to Ironic as agent_verify_ca");
  return { tls: { cert: pair.certPem, key: pair.keyPem, minVersion }, verifyCa: pair.certPem };
}

/**
 * Start-up with Ironic (docs/ironic.md): lookup before the API listens, the token set before the first
 * request can come in, heartbeats once it listens.
 */
async function startWithIronic(
  config: AgentConfig,
  log: Logger,
  signal: AbortSignal,
  setCleanup: (cleanup: () => Promise<void>) => void,
): Promise<() => Promise<void>> {
  if (config.apiUrls.length === 0) {
    throw new AgentError("CONFIG_INVALID", "no Ironic API URL: set ipa-api-url on the kernel command line (or --api-url), or start with --standalone");
  }
  const run = execRunner;
  const utilities = await createUtilities({ config, log });
  const session = await connectToIronic({
    config,
    log,
    run,
    signal,
    macs: async (s) => (await collectInterfaces({ run, fs: new HostFs("/"), signal: s, timeoutMs: 10_000 })).map((i) => i.mac_address),
    collectors: {
      inventory: (s) => utilities.registry.dispatch("list_hardware_info", { node: null, ports: [], args: {}, ctx: internalContext(log, s) }),
      managers: () => utilities.registry.managers(),
      systemLogs: (s) => collectSystemLogs({ run, ...(s === undefined ? {} : { signal: s }) }),
      run,
      log,
    },
  });
  // Hardware managers see the node as Ironic gave it (root device hints, ...), as IPA caches it.
  utilities.state.nodeInfo = session.lookup.node;
  const { tls, verifyCa } = await ironicTls(config, session, log);
  const rest = new RestTransport({ host: config.listenHost, port: config.listenPort, log, tls, requireTokenOnGet: config.requireTokenOnGet });
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [rest] });
  // Set before the API listens: no command is ever served without the token.
  if (session.token.kind === "use") agent.setToken(session.token.token);
  await agent.start();
  setCleanup(() => agent.stop());
  signal.throwIfAborted();
  const { address, port } = rest.address();
  if (tls !== undefined && config.advertiseProtocol === "http") log.warn("advertiseProtocol is http but the API serves HTTPS: the callback URL says https");
  const protocol = tls !== undefined ? "https" : (config.advertiseProtocol ?? "http");
  const callback = callbackUrl(protocol, session.advertiseHost, config.advertisePort ?? port);
  const heartbeats: HeartbeatHandle | undefined = startHeartbeats({ session, agent, callbackUrl: callback, verifyCa, log });
  log.info(
    {
      url: `${rest.scheme}://${address}:${port}`,
      callbackUrl: callback,
      node: session.lookup.nodeUuid,
      version: config.version,
      standalone: false,
      lockedDown: session.token.kind !== "use",
    },
    "agent ready",
  );
  return async () => {
    await heartbeats?.stop();
    await agent.stop();
  };
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`ironbus-agent: ${message}\n`);
  process.exit(2);
});
