/**
 * Agent configuration: parsed once, from (lowest to highest precedence) defaults, a JSON config file,
 * the kernel command line (IPA's `ipa-*` keys), environment variables (`IRONBUS_*`) and flags.
 * docs/configuration.md documents every key; test/config.test.ts checks that it does.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { AgentError } from "./errors.js";


export const ConfigSchema = z
  .object({
    standalone: z.boolean().default(false).describe("Run without Ironic: no lookup, no heartbeats (IPA's --standalone)."),
    listenHost: z.string().default("0.0.0.0").describe("Address the REST API listens on (ipa-listen-host)."),
    listenPort: z.number().int().min(0).max(65535).default(9999).describe("Port the REST API listens on (ipa-listen-port); 0 picks a free port."),
    advertiseHost: z.string().optional().describe("Host put in the callback URL (ipa-advertise-host)."),
    advertisePort: z.number().int().min(1).max(65535).optional().describe("Port put in the callback URL (ipa-advertise-port); defaults to the listen port."),
    advertiseProtocol: z.enum(["http", "https"]).optional().describe("Scheme of the callback URL (ipa-advertise-protocol); https when TLS is on."),
    agentToken: z.string().min(1).optional().describe("The token every commands request must carry as ?agent_token= (ipa-agent-token)."),
    requireTokenOnGet: z.boolean().default(false).describe("Require the token on GET /v1/commands too; by default a GET may omit it (Ironic before 2023, Debian's 21.x included, never sends it on GET), and a GET with a wrong token is refused."),
    apiUrls: z.array(z.string().url()).default([]).describe("Ironic API URLs (ipa-api-url, comma separated)."),
    tlsCertFile: z.string().optional().describe("PEM certificate for the REST API (static TLS)."),
    tlsKeyFile: z.string().optional().describe("PEM private key for the REST API (static TLS)."),
    autoTls: z.boolean().optional().describe("Serve HTTPS with a self-signed EC certificate whose SAN holds the advertised IP; unset: on with Ironic API 1.68 or later, off standalone."),
    tlsCurve: z.enum(["prime256v1", "secp384r1", "secp521r1"]).default("secp384r1").describe("Curve of the auto-TLS key (IPA's default is P-384)."),
    tlsDir: z.string().default("/run/ironbus").describe("Where auto-TLS writes agent.crt and agent.key."),
    tlsMinVersion: z.enum(["TLSv1.2", "TLSv1.3"]).default("TLSv1.2").describe("Lowest TLS version the REST API accepts."),
    allowDestructive: z.boolean().default(false).describe("Allow commands that erase, write, partition, build RAID or power off."),
    allowedDevices: z.array(z.string()).default([]).describe("Block devices destructive utilities may touch (paths; a trailing * matches a prefix)."),
    maxMessageBytes: z.number().int().min(1024).default(16 * 1024 * 1024).describe("Largest request body or envelope accepted, in bytes."),
    resultHistory: z.number().int().min(1).default(1000).describe("Finished command results kept for GET /v1/commands (oldest dropped first)."),
    idHistory: z.number().int().min(1).default(100_000).describe("Command ids remembered so a redelivered command never runs twice."),
    commandTimeoutMs: z.number().int().min(1).default(6 * 3600 * 1000).describe("Default deadline of a command, in ms, when neither the command nor its definition sets one."),
    vendorManagers: z.array(z.string()).default([]).describe("npm packages to load hardware managers from (IPA's hardware_managers entry points)."),
    version: z.string().default("0.1.0").describe("Agent version reported on /v1/status and in heartbeats."),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info").describe("pino log level (ipa-debug=1 sets debug)."),
    bootInterface: z.string().optional().describe("MAC of the PXE interface (BOOTIF), reported in the inventory."),
    inspectionCallbackUrl: z.string().optional().describe("Where to post inspection data (ipa-inspection-callback-url)."),
    inspectionCollectors: z.array(z.string()).optional().describe("Inspection collectors (ipa-inspection-collectors); unset means default. Set without a callback URL: post to Ironic's /v1/continue_inspection (API 1.84+)."),
    lookupTimeoutS: z.number().min(0).default(600).describe("How long to retry lookup, in seconds (ipa-lookup-timeout)."),
    lookupIntervalS: z.number().min(0).default(1).describe("Initial lookup retry interval, in seconds (ipa-lookup-interval)."),
    insecure: z.boolean().default(false).describe("Skip certificate checks on calls to Ironic (ipa-insecure)."),
    ironicCaFile: z.string().optional().describe("PEM CA bundle that verifies Ironic's HTTPS certificate (IPA's cafile); default: the system CAs."),
    ironicApiVersion: z.string().regex(/^1\.\d+$/).optional().describe("Ironic API version to assume instead of asking GET / (ipa-ironic-api-version)."),
    nicWaitTimeoutS: z.number().min(0).max(600).default(60).describe("How long to wait at start for a network interface with a MAC and carrier, or an IP, in seconds; 0 skips the wait."),
    ipLookupAttempts: z.number().int().min(1).default(6).describe("Tries to find the advertise address with `ip route get` towards Ironic (ipa-ip-lookup-attempts)."),
    ipLookupSleepS: z.number().min(0).default(10).describe("Seconds between those tries (ipa-ip-lookup-timeout)."),
    powerOffCommand: z.array(z.string().min(1)).min(1).default(["poweroff"]).describe("Command and arguments standby.power_off runs after sync (a JSON array in the file; comma separated elsewhere)."),
    rebootCommand: z.array(z.string().min(1)).min(1).default(["reboot"]).describe("Command and arguments standby.run_image runs after sync (a JSON array in the file; comma separated elsewhere)."),
    sysrqTriggerFile: z.string().default("/proc/sysrq-trigger").describe("Where to write o (power off) or b (reboot) when the power command fails or is ignored; empty disables the fallback."),
    enableBiosBootloaderInstall: z.boolean().default(false).describe("Let image.install_bootloader run grub2-install/grub-install in the image's chroot for BIOS boot (IPA's enable_bios_bootloader_install; off as a CVE mitigation)."),
    ignoreBootloaderFailure: z.boolean().default(false).describe("image.install_bootloader logs a failure and succeeds, when the command does not say otherwise (ipa-ignore-bootloader-failure)."),
    injectFilesPriority: z.number().int().min(0).max(99).default(0).describe("Priority of the inject_files deploy step; 0 runs it only on request (ipa-inject-files-priority)."),
    transports: z.array(z.enum(["rest", "ws", "mqtt", "nats"])).min(1).default(["rest"]).describe("Transports the agent serves: rest listens; ws, mqtt and nats dial out to wsUrl, mqttUrl, natsUrl (comma separated)."),
    node: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/).optional().describe("The node id of this agent on the buses (topics and subjects); default: the MAC of the boot interface, else the first MAC, without colons."),
    groups: z.array(z.string().regex(/^[A-Za-z0-9_-]{1,128}$/)).default([]).describe("Bus groups the agent listens to besides its node and the fleet; a join answer may add more."),
    busFormat: z.enum(["json", "protobuf"]).default("json").describe("Envelope encoding the agent sends on the buses (it answers each command in the encoding of that command)."),
    heartbeatIntervalS: z.number().min(0.05).max(3600).default(30).describe("Seconds between bus heartbeats (a join answer may change it); controllers call a node dead after 3 missed beats."),
    wsUrl: z.string().url().optional().describe("WebSocket hub the agent dials (ws:// or wss://)."),
    mqttUrl: z.string().url().optional().describe("MQTT broker the agent dials (mqtt://, mqtts://, ws://, wss://)."),
    mqttProtocolVersion: z.union([z.literal(4), z.literal(5)]).default(5).describe("MQTT protocol: 5, falling back to 3.1.1 when the broker refuses it; 4 forces 3.1.1."),
    natsUrl: z.array(z.string().url()).default([]).describe("NATS servers the agent dials (nats://, tls://; comma separated)."),
    natsBroadcast: z.enum(["durable", "core"]).default("durable").describe("How NATS group and fleet commands reach the agent: durable JetStream consumers (kept while offline) or core subscriptions (at most once, cheapest)."),
    busUsername: z.string().optional().describe("Username for the broker (MQTT, NATS)."),
    busPassword: z.string().optional().describe("Password for the broker (MQTT, NATS)."),
    natsCredsFile: z.string().optional().describe("NATS credentials file (JWT and nkey seed) the agent authenticates with."),
    natsNkeySeedFile: z.string().optional().describe("File holding the NATS nkey seed (SU...) the agent authenticates with."),
    busCaFile: z.string().optional().describe("PEM CA bundle that verifies the TLS certificate of the broker or hub (default: the system CAs)."),
    busCertFile: z.string().optional().describe("PEM client certificate for mutual TLS with the broker or hub."),
    busKeyFile: z.string().optional().describe("PEM private key of busCertFile."),
    busConnectTimeoutS: z.number().min(0.1).default(10).describe("How long the first connection to a broker or hub may take before the agent gives up starting."),
    outboxLimit: z.number().int().min(1).default(10_000).describe("Results, progress and events kept per bus while its link is down (oldest progress dropped first)."),
    maxQueuedCommands: z.number().int().min(0).default(100).describe("Bus commands waiting for the hardware lock; past this a command is refused with AGENT_BUSY."),
    commandRatePerS: z.number().min(0).default(0).describe("Commands accepted per second from each transport, with a burst of the same size; 0: unlimited."),
    trustedKeys: z.array(z.string()).default([]).describe("Controller public keys commands may be signed with: keyId:base64 of the raw 32-byte ed25519 key (comma separated)."),
    requireSignatures: z.boolean().optional().describe("Refuse unsigned commands; unset: required as soon as trustedKeys is not empty."),
    keyScopes: z.array(z.string()).default([]).describe("What each key may run: keyId=all, keyId=non-destructive, keyId=read-only or keyId=<glob>|<glob> (comma separated); a key without a scope may run everything."),
    maxClockSkewS: z.number().min(0).default(60).describe("Clock difference tolerated between the issued_at of a command and the clock of the agent, in seconds."),
    maxCommandTtlS: z.number().min(1).default(3600).describe("Longest validity window (expires_at - issued_at) a signed command may claim, and the window of one without expires_at, in seconds."),
    signingKeyFile: z.string().optional().describe("Private ed25519 key (PEM) of the agent itself; when set the agent signs every envelope it sends."),
    signingKeyId: z.string().optional().describe("Key id put in the signatures of the agent (default: agent-<node>)."),
  })
  .strict();

export type AgentConfig = Readonly<z.infer<typeof ConfigSchema>>;
export type ConfigInput = z.input<typeof ConfigSchema>;
export type ConfigKey = keyof z.infer<typeof ConfigSchema>;

type Kind = "string" | "number" | "boolean" | "list";

/** How each key reads from a string source (kernel command line, environment, flag). */
const KINDS: Record<ConfigKey, Kind> = {
  standalone: "boolean",
  listenHost: "string",
  listenPort: "number",
  advertiseHost: "string",
  advertisePort: "number",
  advertiseProtocol: "string",
  agentToken: "string",
  requireTokenOnGet: "boolean",
  apiUrls: "list",
  tlsCertFile: "string",
  tlsKeyFile: "string",
  autoTls: "boolean",
  tlsCurve: "string",
  tlsDir: "string",
  tlsMinVersion: "string",
  allowDestructive: "boolean",
  allowedDevices: "list",
  maxMessageBytes: "number",
  resultHistory: "number",
  idHistory: "number",
  commandTimeoutMs: "number",
  vendorManagers: "list",
  version: "string",
  logLevel: "string",
  bootInterface: "string",
  inspectionCallbackUrl: "string",
  inspectionCollectors: "list",
  lookupTimeoutS: "number",
  lookupIntervalS: "number",
  insecure: "boolean",
  ironicCaFile: "string",
  ironicApiVersion: "string",
  nicWaitTimeoutS: "number",
  ipLookupAttempts: "number",
  ipLookupSleepS: "number",
  powerOffCommand: "list",
  rebootCommand: "list",
  sysrqTriggerFile: "string",
  enableBiosBootloaderInstall: "boolean",
  ignoreBootloaderFailure: "boolean",
  injectFilesPriority: "number",
  transports: "list",
  node: "string",
  groups: "list",
  busFormat: "string",
  heartbeatIntervalS: "number",
  wsUrl: "string",
  mqttUrl: "string",
  mqttProtocolVersion: "number",
  natsUrl: "list",
  natsBroadcast: "string",
  busUsername: "string",
  busPassword: "string",
  natsCredsFile: "string",
  natsNkeySeedFile: "string",
  busCaFile: "string",
  busCertFile: "string",
  busKeyFile: "string",
  busConnectTimeoutS: "number",
  outboxLimit: "number",
  maxQueuedCommands: "number",
  commandRatePerS: "number",
  trustedKeys: "list",
  requireSignatures: "boolean",
  keyScopes: "list",
  maxClockSkewS: "number",
  maxCommandTtlS: "number",
  signingKeyFile: "string",
  signingKeyId: "string",
};

export const CONFIG_KEYS = Object.keys(KINDS) as ConfigKey[];

/** IPA kernel command line keys → our keys. */
export const KERNEL_KEYS: Readonly<Record<string, ConfigKey>> = {
  "ipa-api-url": "apiUrls",
  "ipa-agent-token": "agentToken",
  "ipa-advertise-host": "advertiseHost",
  "ipa-advertise-port": "advertisePort",
  "ipa-advertise-protocol": "advertiseProtocol",
  "ipa-listen-host": "listenHost",
  "ipa-listen-port": "listenPort",
  "ipa-lookup-timeout": "lookupTimeoutS",
  "ipa-lookup-interval": "lookupIntervalS",
  "ipa-insecure": "insecure",
  "ipa-standalone": "standalone",
  "ipa-inspection-callback-url": "inspectionCallbackUrl",
  "ipa-inspection-collectors": "inspectionCollectors",
  "ipa-ironic-api-version": "ironicApiVersion",
  "ipa-ip-lookup-attempts": "ipLookupAttempts",
  "ipa-ip-lookup-timeout": "ipLookupSleepS",
  "ipa-ignore-bootloader-failure": "ignoreBootloaderFailure",
  "ipa-inject-files-priority": "injectFilesPriority",
  BOOTIF: "bootInterface",
  "ironbus-transports": "transports",
  "ironbus-node": "node",
  "ironbus-mqtt-url": "mqttUrl",
  "ironbus-nats-url": "natsUrl",
  "ironbus-ws-url": "wsUrl",
  "ironbus-trusted-keys": "trustedKeys",
};

/** Environment variable of a key: `listenPort` → `IRONBUS_LISTEN_PORT`. */
export function envName(key: ConfigKey): string {
  return `IRONBUS_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** Flag of a key: `listenPort` → `--listen-port`. */
export function flagName(key: ConfigKey): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

function coerce(key: ConfigKey, raw: string, source: string): unknown {
  switch (KINDS[key]) {
    case "string":
      return raw;
    case "number": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n)) {
        throw new AgentError("CONFIG_INVALID", `${source}: ${key} must be a number, got ${JSON.stringify(raw)}`);
      }
      return n;
    }
    case "boolean": {
      const v = raw.trim().toLowerCase();
      if (["1", "true", "yes", "on", ""].includes(v)) return true;
      if (["0", "false", "no", "off"].includes(v)) return false;
      throw new AgentError("CONFIG_INVALID", `${source}: ${key} must be a boolean, got ${JSON.stringify(raw)}`);
    }
    case "list":
      return raw
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
  }
}

/** Splits a kernel command line into key/value pairs, honouring double quotes. */
export function parseKernelCmdline(cmdline: string): Map<string, string> {
  const out = new Map<string, string>();
  const tokens = cmdline.match(/(?:[^\s"]+|"[^"]*")+/g) ?? [];
  for (const token of tokens) {
    const eq = token.indexOf("=");
    const key = eq < 0 ? token : token.slice(0, eq);
    const value = eq < 0 ? "" : token.slice(eq + 1).replace(/^"(.*)"$/s, "$1");
    out.set(key, value);
  }
  return out;
}

function fromKernel(cmdline: string): Partial<Record<ConfigKey, unknown>> {
  const out: Partial<Record<ConfigKey, unknown>> = {};
  const pairs = parseKernelCmdline(cmdline);
  for (const [kkey, key] of Object.entries(KERNEL_KEYS)) {
    const raw = pairs.get(kkey);
    if (raw === undefined) continue;
    // BOOTIF is `01-aa-bb-cc-dd-ee-ff` (ARP type prefix, dashes).
    out[key] = kkey === "BOOTIF" ? raw.replace(/^01-/, "").replace(/-/g, ":").toLowerCase() : coerce(key, raw, "kernel command line");
  }
  const debug = pairs.get("ipa-debug");
  if (debug !== undefined && coerce("standalone", debug, "kernel command line") === true) out.logLevel = "debug";
  return out;
}

function fromStrings(values: Readonly<Record<string, string | undefined>>, nameOf: (k: ConfigKey) => string, source: string): Partial<Record<ConfigKey, unknown>> {
  const out: Partial<Record<ConfigKey, unknown>> = {};
  for (const key of CONFIG_KEYS) {
    const raw = values[nameOf(key)];
    if (raw !== undefined) out[key] = coerce(key, raw, source);
  }
  return out;
}

export interface ConfigSources {
  /** Parsed flags, by flag name without dashes (`listen-port`), as strings; booleans as "true". */
  readonly flags?: Readonly<Record<string, string | undefined>>;
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Path of a JSON config file. */
  readonly file?: string;
  /** Kernel command line text (normally /proc/cmdline). */
  readonly kernelCmdline?: string;
}

function readConfigFile(path: string): Partial<Record<ConfigKey, unknown>> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new AgentError("CONFIG_INVALID", `cannot read config file ${path}: ${(err as Error).message}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new AgentError("CONFIG_INVALID", `config file ${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new AgentError("CONFIG_INVALID", `config file ${path} must hold a JSON object`);
  }
  return parsed as Partial<Record<ConfigKey, unknown>>;
}

/** Validates a finished object: the one place a config becomes typed. */
export function parseConfig(input: unknown): AgentConfig {
  const result = ConfigSchema.safeParse(input);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new AgentError("CONFIG_INVALID", issues);
  }
  return Object.freeze(result.data);
}

export function loadConfig(sources: ConfigSources): AgentConfig {
  const merged: Partial<Record<ConfigKey, unknown>> = {
    ...(sources.file === undefined ? {} : readConfigFile(sources.file)),
    ...(sources.kernelCmdline === undefined ? {} : fromKernel(sources.kernelCmdline)),
    ...(sources.env === undefined ? {} : fromStrings(sources.env, envName, "environment")),
    ...(sources.flags === undefined ? {} : fromStrings(sources.flags, flagName, "flags")),
  };
  return parseConfig(merged);
}
