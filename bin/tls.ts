/** TLS for the REST API from the configuration: static files, or auto-TLS for the advertised IP. */
import { readFileSync } from "node:fs";
import { hostname, networkInterfaces } from "node:os";
import type { AgentConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { RestTlsOptions } from "../transports/rest/server.js";

function firstExternalAddress(): string {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && a.family === "IPv4") return a.address;
  }
  return "127.0.0.1";
}

export async function tlsOptions(config: AgentConfig, log: Logger): Promise<RestTlsOptions | undefined> {
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

