/**
 * The agent's envelope guard from its configuration: signatures, validity window, replay memory and
 * key scopes (core/trust.ts) when any of them is configured, else the open guard. Loaded lazily so an
 * agent without keys never loads it.
 */
import type { AgentConfig } from "../core/config.js";
import { OPEN_GUARD, type EnvelopeGuard } from "../core/guard.js";
import type { Logger } from "../core/log.js";

export async function createAgentGuard(config: AgentConfig, log: Logger, node: string | undefined): Promise<EnvelopeGuard> {
  // On a bus the trust guard is always there: a join answer may hand it keys (trust on first use).
  const wanted =
    config.transports.some((t) => t !== "rest") || config.trustedKeys.length > 0 || config.requireSignatures === true || config.signingKeyFile !== undefined || config.commandRatePerS > 0;
  if (!wanted) return OPEN_GUARD;
  const { createGuard } = await import("../core/trust.js");
  return createGuard(config, log, node === undefined ? {} : { node });
}
