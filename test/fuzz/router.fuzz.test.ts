/**
 * Fuzz: Agent.receiveEnvelope, the path every transport hands its messages to, with random command
 * names and params, join answers, signed and unsigned, in both encodings, from every kind of source.
 * Every input is answered with a valid envelope (a result, or an error naming the envelope) or taken
 * as a join answer; every refusal is logged with its code; nothing throws, hangs or leaves an
 * unhandled rejection. Commands are harmless (a fuzz extension, the security test extension, and the
 * real utilities with a runner that runs nothing); destructive ones are refused on one of the agents.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeEnvelope } from "../../core/codec.js";
import { parseConfig } from "../../core/config.js";
import { parseKeySpec } from "../../core/sign.js";
import type { ReceiveContext } from "../../core/transport.js";
import { parseKeyScopes, TrustGuard } from "../../core/trust.js";
import { Agent } from "../../router/agent.js";
import { createUtilities } from "../../utilities/index.js";
import { securityExtension, testKey } from "../helpers/keys.js";
import { fuzzEntryPoint, fuzzExtension, fuzzSettings, LogProbe, NOTHING_RUNNER, wireInputArb } from "./fuzz.js";

const TOKEN = "fuzz-agent-token-0123456789";
const NODE = "fuzz-node";

const NAMES = [
  "fz.echo",
  "fz.sleep",
  "fz.hang",
  "fz.fail",
  "fz.crash",
  "fz.reject",
  "fz.nonjson",
  "sectest.peek",
  "sectest.wipe",
  "agent.cancel_command",
  "agent.get_command",
  "standby.get_partition_uuids",
  "standby.sync",
  "clean.get_clean_steps",
  "deploy.get_deploy_steps",
  "poll.set_node_info",
  "clean.execute_clean_step",
  "flow.start_flow",
  "standby.power_off",
  "nope.nope",
  "nodot",
];


describe("fuzz: Agent.receiveEnvelope", () => {
  it("answers or takes every input, logs every refusal, never throws, hangs or leaks a rejection", async (t) => {
    const prov = testKey("prov");
    const mon = testKey("mon");
    const stranger = testKey("stranger");
    const probe = new LogProbe("info");
    const settings = fuzzSettings("router");

    async function makeAgents(): Promise<Agent[]> {
      const guardOf = (required: boolean): TrustGuard =>
        new TrustGuard({ log: probe.log, keys: [parseKeySpec(prov.spec), parseKeySpec(mon.spec)], scopes: parseKeyScopes(["mon=read-only"]), requireSignatures: required, replayCapacity: 10_000 });
      const configA = parseConfig({ standalone: true, agentToken: TOKEN, commandTimeoutMs: 50, maxMessageBytes: 256 * 1024 });
      const utilities = await createUtilities({ config: configA, log: probe.log, run: NOTHING_RUNNER });
      const a = new Agent({ config: configA, log: probe.log, extensions: [...utilities.extensions, fuzzExtension(), securityExtension().extension], transports: [], guard: guardOf(false), node: NODE });
      const configB = parseConfig({ standalone: true, allowDestructive: true, commandTimeoutMs: 50, maxMessageBytes: 256 * 1024 });
      const b = new Agent({ config: configB, log: probe.log, extensions: [fuzzExtension(), securityExtension().extension], transports: [], guard: guardOf(true), node: NODE });
      return [a, b];
    }

    const contexts: ReceiveContext[] = [];
    for (const transport of ["ws", "mqtt", "nats", "rest"]) {
      for (const source of ["node", "node", "node", "group", "fleet"] as const) contexts.push({ transport, source, noWait: transport !== "rest", ...(transport === "rest" ? { tokenChecked: true } : {}) });
    }

    let agents = await makeAgents();
    let n = 0;
    const outcomes = new Map<string, number>();
    const entry = async (bytes: Uint8Array, contentType: string | undefined): Promise<void> => {
      // Joins change tokens and keys: fresh agents now and then keep the run from drifting into refusals only.
      if (n > 0 && n % 2000 === 0) {
        await Promise.all(agents.map((a) => a.stop()));
        agents = await makeAgents();
      }
      const agent = agents[n % 2] as Agent;
      const ctx = contexts[Math.floor(n / 2) % contexts.length] as ReceiveContext;
      n++;
      const mark = probe.mark();
      const outcome = await agent.receiveEnvelope(bytes, contentType, ctx);
      const key = outcome.error?.code ?? (outcome.join !== undefined ? "joined" : "accepted");
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (outcome.error !== undefined) {
        if (outcome.error.code === "INTERNAL") throw new Error(`INTERNAL refusal (a bug): ${outcome.error.message}`);
        const logged = probe.since(mark).some((l) => l.msg === "envelope refused" && l.fields["code"] === outcome.error?.code);
        if (!logged) throw new Error(`refusal ${outcome.error.code} was not logged`);
      }
      if (outcome.reply === undefined) {
        if (outcome.join === undefined) throw new Error("neither answered nor taken as a join answer");
        return;
      }
      const answer = decodeEnvelope(outcome.reply.bytes, outcome.reply.contentType);
      if (answer.kind !== "result" && answer.kind !== "error") throw new Error(`answered with a ${answer.kind} envelope`);
      if (answer.kind === "result" && outcome.request !== undefined && answer.correlation_id !== outcome.request.id) throw new Error("the result does not name its command");
    };
    const input = wireInputArb({
      names: NAMES,
      signers: [prov.signer, mon.signer, stranger.signer],
      nodes: [NODE],
      tokens: [TOKEN],
      hugeChars: 300_000,
      plausible: 0.5,
      trustedSigners: 2,
      joins: [{ token: TOKEN }, { token: TOKEN, groups: ["g1"], heartbeat_interval_s: 30 }, { token: TOKEN, trusted_keys: [prov.spec, mon.spec], key_scopes: ["mon=read-only"] }],
    });
    try {
      const runs = await fuzzEntryPoint({ t, name: "Agent.receiveEnvelope", settings, input, entry });
      assert.ok(runs >= settings.runs);
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
      t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries([...outcomes].sort((x, y) => y[1] - x[1])))}`);
    }
    assert.ok((outcomes.get("accepted") ?? 0) > settings.runs / 50, "enough inputs reach the router");
  });
});
