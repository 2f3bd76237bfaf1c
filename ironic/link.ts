/**
 * The agent's life with Ironic, in IPA's order:
 *
 * 1. `connectToIronic` (before the REST API listens): wait for a network interface, learn Ironic's
 *    API version, find the advertise address, inspect if asked, look the node up, decide the token.
 * 2. The bin then starts the REST API: HTTPS with auto-TLS when Ironic is 1.68 or later (and it is
 *    not turned off), the token already set, so no command is ever served without it.
 * 3. `startHeartbeats`: the first heartbeat at once, then on Ironic's schedule, and soon after every
 *    command that finishes.
 *
 * Nothing here knows the transports or the router: the agent is seen through `AgentHooks`.
 */
import { readFileSync } from "node:fs";
import type { NetworkInterfaceInfo } from "node:os";
import { type Clock, systemClock } from "../core/clock.js";
import type { AgentConfig } from "../core/config.js";
import type { ResultBody } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { CommandRunner } from "../utilities/exec.js";
import { findAdvertiseAddress } from "./advertise.js";
import { type ApiVersion, atLeast, formatVersion, GATES, IronicClient, type LookupResult } from "./client.js";
import type { CollectorDeps } from "./collectors.js";
import { Heartbeater, type HeartbeaterOptions } from "./heartbeat.js";
import { inspect, inspectionTarget } from "./inspection.js";
import { lookupNode } from "./lookup.js";
import { waitForNic } from "./nic.js";
import { decideToken, type TokenDecision } from "./token.js";

export interface ConnectOptions {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly run: CommandRunner;
  /** MAC addresses sent on lookup (the inventory's interfaces). */
  readonly macs: (signal?: AbortSignal) => Promise<string[]>;
  /** What the inspection collectors read. */
  readonly collectors: CollectorDeps;
  readonly clock?: Clock;
  readonly signal?: AbortSignal | undefined;
  /** Root of /sys reads (NIC wait); default "/". */
  readonly sysRoot?: string;
  readonly networkInterfaces?: () => NodeJS.Dict<NetworkInterfaceInfo[]>;
  readonly resolve?: (host: string) => Promise<string[]>;
}

export interface IronicSession {
  readonly client: IronicClient;
  readonly apiVersion: ApiVersion;
  readonly lookup: LookupResult;
  readonly token: TokenDecision;
  /** The host for the callback URL: configured, or found with `ip route get`. */
  readonly advertiseHost: string;
  /** Ironic takes agent_verify_ca (1.68+): auto-TLS can be used. */
  readonly supportsAutoTls: boolean;
  /** From lookup's tls_min_version, when Ironic sent one ("1.2"/"1.3"). */
  readonly tlsMinVersion: "TLSv1.2" | "TLSv1.3" | undefined;
}

function tlsVersionFrom(value: string | null, log: Logger): "TLSv1.2" | "TLSv1.3" | undefined {
  if (value === null) return undefined;
  if (value === "1.2" || value === "TLSv1.2") return "TLSv1.2";
  if (value === "1.3" || value === "TLSv1.3") return "TLSv1.3";
  log.warn({ tls_min_version: value }, "Ironic sent a tls_min_version the agent does not know; ignored");
  return undefined;
}

/** Steps 1: everything before the REST API starts. Rejects with LOOKUP_FAILED (and a few others) when the agent cannot work. */
export async function connectToIronic(opts: ConnectOptions): Promise<IronicSession> {
  const { config, signal } = opts;
  const clock = opts.clock ?? systemClock;
  const log = opts.log.child({ component: "ironic" });
  if (config.apiUrls.length === 0) {
    throw new AgentError("CONFIG_INVALID", "no Ironic API URL: set ipa-api-url on the kernel command line (or --api-url), or start with --standalone");
  }
  let ca: string | undefined;
  if (config.ironicCaFile !== undefined) {
    try {
      ca = readFileSync(config.ironicCaFile, "utf8");
    } catch (err) {
      throw new AgentError("CONFIG_INVALID", `cannot read ironicCaFile ${config.ironicCaFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  const client = new IronicClient({ apiUrls: config.apiUrls, log, insecure: config.insecure, ca, apiVersion: config.ironicApiVersion });

  if (config.nicWaitTimeoutS > 0) {
    await waitForNic({
      clock,
      log,
      timeoutS: config.nicWaitTimeoutS,
      signal,
      ...(opts.sysRoot === undefined ? {} : { sysRoot: opts.sysRoot }),
      ...(opts.networkInterfaces === undefined ? {} : { networkInterfaces: opts.networkInterfaces }),
    });
  }

  let advertiseHost = config.advertiseHost;
  if (advertiseHost === undefined) {
    const answering = await client.answeringUrls(10_000, signal);
    advertiseHost = await findAdvertiseAddress({
      apiUrls: answering.length > 0 ? answering : config.apiUrls,
      run: opts.run,
      clock,
      log,
      attempts: config.ipLookupAttempts,
      sleepS: config.ipLookupSleepS,
      signal,
      ...(opts.resolve === undefined ? {} : { resolve: opts.resolve }),
    });
  }

  const apiVersion = await client.apiVersion(signal);

  let nodeUuid: string | undefined;
  let fromInspection: LookupResult | undefined;
  const target = inspectionTarget(config.inspectionCallbackUrl, config.inspectionCollectors, client.urls[0], apiVersion);
  if (target !== undefined) {
    const answer = await inspect({ target, collectors: config.inspectionCollectors, deps: opts.collectors, sender: client, clock, log, signal });
    if (answer?.kind === "lookup") fromInspection = answer.result;
    else if (answer?.kind === "uuid") nodeUuid = answer.nodeUuid;
  } else if (config.inspectionCollectors !== undefined && config.inspectionCallbackUrl === undefined) {
    log.info({ version: formatVersion(apiVersion) }, "inspection collectors are set but Ironic is older than 1.84 (no continue_inspection): no inspection");
  }

  let lookup: LookupResult;
  if (fromInspection !== undefined) {
    log.info({ node: fromInspection.nodeUuid }, "inspection answered in lookup's shape; it stands for the lookup");
    lookup = fromInspection;
  } else {
    const macs = await opts.macs(signal);
    if (macs.length === 0) log.warn("no MAC address to look the node up with");
    lookup = await lookupNode({ client, clock, log, macs, nodeUuid, timeoutS: config.lookupTimeoutS, intervalS: config.lookupIntervalS, signal });
  }

  const token = decideToken(lookup.config, config.agentToken);
  if (token.kind === "use") log.info({ source: token.source }, "agent token set: every command must carry it");
  else log.error({ reason: token.reason }, "no usable agent token: the agent serves no commands and sends no heartbeats (locked down)");
  return {
    client,
    apiVersion,
    lookup,
    token,
    advertiseHost,
    supportsAutoTls: atLeast(apiVersion, GATES.verifyCa),
    tlsMinVersion: tlsVersionFrom(lookup.config.tlsMinVersion, log),
  };
}

/** Whether to generate a certificate: `autoTls` unset means "if Ironic can take it". */
export function useAutoTls(config: AgentConfig, session: IronicSession, log: Logger): boolean {
  if (config.tlsCertFile !== undefined || config.tlsKeyFile !== undefined) return false;
  if (config.autoTls === false) return false;
  if (!session.supportsAutoTls) {
    if (config.autoTls === true) log.warn({ version: formatVersion(session.apiVersion) }, "auto-TLS needs Ironic API 1.68 (agent_verify_ca); serving plain HTTP");
    return false;
  }
  return true;
}

/** The agent as the heartbeats see it. */
export interface AgentHooks {
  readonly version: string;
  token(): string | undefined;
  onFinished(listener: (result: ResultBody) => void): () => void;
}

export interface HeartbeatStartOptions {
  readonly session: IronicSession;
  readonly agent: AgentHooks;
  readonly callbackUrl: string;
  /** The auto-TLS certificate's PEM, sent as agent_verify_ca. */
  readonly verifyCa?: string | undefined;
  readonly clock?: Clock;
  readonly log: Logger;
  /** Overrides for tests: forcedDelayMs, followUpMs, maxSleepMs. */
  readonly tuning?: Pick<HeartbeaterOptions, "forcedDelayMs" | "followUpMs" | "maxSleepMs">;
}

export interface HeartbeatHandle {
  readonly heartbeater: Heartbeater;
  stop(): Promise<void>;
}

/** Step 3: heartbeats until stop(); a finished command forces one. Undefined when locked down. */
export function startHeartbeats(opts: HeartbeatStartOptions): HeartbeatHandle | undefined {
  const log = opts.log.child({ component: "heartbeat" });
  if (opts.session.token.kind !== "use") {
    log.error("locked down: no heartbeats");
    return undefined;
  }
  const { agent, callbackUrl, verifyCa } = opts;
  const heartbeater = new Heartbeater({
    client: opts.session.client,
    clock: opts.clock ?? systemClock,
    log,
    nodeUuid: opts.session.lookup.nodeUuid,
    heartbeatTimeoutS: opts.session.lookup.config.heartbeatTimeoutS,
    payload: () => {
      const token = agent.token();
      return {
        callback_url: callbackUrl,
        agent_version: agent.version,
        ...(token === undefined ? {} : { agent_token: token }),
        ...(verifyCa === undefined ? {} : { agent_verify_ca: verifyCa }),
      };
    },
    ...opts.tuning,
  });
  const unsubscribe = agent.onFinished((result) => heartbeater.force(`${result.command_name} ${result.command_status}`));
  log.info({ callbackUrl, node: opts.session.lookup.nodeUuid, heartbeatTimeoutS: opts.session.lookup.config.heartbeatTimeoutS, verifyCa: verifyCa !== undefined }, "heartbeats start");
  heartbeater.start();
  return {
    heartbeater,
    stop: async () => {
      unsubscribe();
      await heartbeater.stop();
    },
  };
}
