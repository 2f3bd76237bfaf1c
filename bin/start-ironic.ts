/** Start-up with Ironic (docs/ironic.md); loaded by the bin only when the agent is not standalone. */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { CommandContext } from "../core/command.js";
import type { AgentConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { callbackUrl } from "../ironic/advertise.js";
import { connectToIronic, type HeartbeatHandle, type IronicSession, startHeartbeats, useAutoTls } from "../ironic/link.js";
import { Agent } from "../router/agent.js";
import { RestTransport, type RestTlsOptions } from "../transports/rest/server.js";
import { execRunner } from "../utilities/exec.js";
import { createUtilities } from "../utilities/index.js";
import { collectInterfaces } from "../utilities/inventory/net.js";
import { HostFs } from "../utilities/inventory/sysfs.js";
import { collectSystemLogs } from "../utilities/logs/index.js";
import { tlsOptions } from "./tls.js";
import { busTransports, helloSource, internalContext, nodeId, wantsBus } from "./bus.js";
import { createAgentGuard } from "./guard.js";

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
export async function startWithIronic(
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
      inventory: (s) => utilities.registry.dispatch("list_hardware_info", { node: null, ports: [], args: {}, ctx: internalContext(log, s, "ironic.inspection") }),
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
  // With Ironic, REST always serves (Ironic calls it); configured buses serve besides.
  const node = wantsBus(config) ? await nodeId(config, log) : config.node;
  const buses = node === undefined ? [] : await busTransports(config, log, node);
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [rest, ...buses], ...(node !== undefined ? { node } : {}), hello: helloSource(utilities, log), guard: await createAgentGuard(config, log, node) });
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

