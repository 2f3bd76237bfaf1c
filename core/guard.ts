/**
 * The checks every inbound envelope passes, whatever carried it, before anything acts on it; and the
 * seal every outbound envelope gets. The agent calls a guard; the guard never knows the transport
 * beyond the context it is given. core/trust.ts implements it (signatures, replay window, authorisation).
 */
import type { InboundSource } from "./bus.js";
import type { Envelope } from "./envelope.js";

/** How an envelope reached the agent. */
export interface InboundContext {
  /** "rest", "ws", "mqtt", "nats" */
  readonly transport: string;
  /** Addressed to this node, to one of its groups, or to the whole fleet (REST is always "node"). */
  readonly source: InboundSource;
  /** The transport has already checked the agent token (REST's ?agent_token=). */
  readonly tokenChecked?: boolean;
}

/** What the agent knows of a command before running it. */
export interface CommandFacts {
  readonly name: string;
  readonly destructive: boolean;
  /** Takes the hardware lock. */
  readonly exclusive: boolean;
}

export interface Verdict {
  /** The key that signed the envelope, when it was signed and verified. */
  readonly keyId?: string;
}

export interface EnvelopeGuard {
  /**
   * Throws AgentError when the envelope must not be acted on (bad or missing signature, outside its
   * validity window, replayed, the key may not run this command). `facts` is undefined for unknown
   * commands and for non-command envelopes (a join answer).
   */
  check(env: Envelope, ctx: InboundContext, facts: CommandFacts | undefined): Verdict;
  /** Signs an envelope the agent sends, when the agent is configured to; returns it unchanged otherwise. */
  seal(env: Envelope): Envelope;
  /**
   * The agent refused a command check() had accepted, before recording it (busy, not allowed, unknown):
   * the guard forgets it, so the same envelope offered again (a bus queue waiting for the lock) is not
   * taken for a replay.
   */
  release?(env: Envelope): void;
  /**
   * Takes the keys a join answer gives (`trusted_keys`, `key_scopes`); throws AgentError when this
   * answer may not change them. `verdict` is what check() said of the answer.
   */
  updateKeys?(update: { readonly trusted_keys?: readonly string[] | undefined; readonly key_scopes?: readonly string[] | undefined }, verdict: Verdict): void;
}

/** The guard of an agent that trusts its transports (no keys configured): checks nothing, signs nothing. */
export const OPEN_GUARD: EnvelopeGuard = {
  check: () => ({}),
  seal: (env) => env,
};
