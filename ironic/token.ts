/**
 * Which agent token the agent uses after lookup. Ironic makes the token on the first lookup of a boot
 * and returns it once; later lookups get "******". A token given beforehand (ipa-agent-token, a
 * "pregenerated" token) stays valid when Ironic answers "******".
 */
import type { LookupConfig } from "./client.js";

/** What Ironic answers instead of the token once it has handed it out. */
export const MASKED_TOKEN = "******";
/** IPA ignores anything shorter (Ironic's tokens are 43 characters). */
export const MIN_TOKEN_LENGTH = 32;

export type TokenDecision =
  /** Use this token: Ironic's new one, or the pregenerated one. */
  | { readonly kind: "use"; readonly token: string; readonly source: "lookup" | "pregenerated" }
  /** No token can be had: serve no commands and send no heartbeats (IPA locks itself down). */
  | { readonly kind: "lockdown"; readonly reason: string };

export function decideToken(config: LookupConfig, pregenerated: string | undefined): TokenDecision {
  const given = config.agentToken;
  if (given !== null && given !== MASKED_TOKEN && given.length >= MIN_TOKEN_LENGTH) return { kind: "use", token: given, source: "lookup" };
  if (pregenerated !== undefined) return { kind: "use", token: pregenerated, source: "pregenerated" };
  if (given === MASKED_TOKEN) {
    return {
      kind: "lockdown",
      reason:
        "Ironic already handed this node's agent token to an earlier lookup (it answered \"******\") and no token was " +
        "configured (ipa-agent-token): reboot the node into the ramdisk so Ironic makes a new one",
    };
  }
  if (given === null) {
    return {
      kind: "lockdown",
      reason: "Ironic sent no agent token (its API is older than 1.62, or tokens are off) and none was configured (ipa-agent-token)",
    };
  }
  return { kind: "lockdown", reason: `Ironic sent an agent token of ${given.length} characters; at least ${MIN_TOKEN_LENGTH} are required` };
}
