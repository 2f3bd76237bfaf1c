/**
 * Fuzz: each bus transport's entry point, through the real hub and real brokers. Malformed and
 * hostile inputs (the generators of fuzz.ts) are published to the agent's node address as a
 * controller would; for each, the agent must log that it handled it (answered, or refused with a
 * logged reason) before the next is sent, never crash, hang or leak a rejection, and still answer a
 * valid command at the end. IRONBUS_FUZZ_BUS_RUNS inputs per transport (default 1,500), seed as in
 * fuzz.ts (IRONBUS_FUZZ_SEED).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CONTENT_TYPES, encodeEnvelope, formatOf } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import { parseConfig } from "../../core/config.js";
import { signEnvelope } from "../../core/sign.js";
import { createGuard } from "../../core/trust.js";
import { KITS } from "../bus/kits.js";
import { busRig, NODE, until, type Rig } from "../conformance/rig.js";
import { securityExtension, signedCommand, trustFixture } from "../helpers/keys.js";
import { fuzzEntryPoint, fuzzExtension, fuzzSettings, LogProbe, wireInputArb } from "./fuzz.js";

const NAMES = ["sectest.peek", "sectest.wipe", "fz.echo", "fz.sleep", "fz.fail", "fz.crash", "fz.reject", "fz.nonjson", "agent.get_command", "agent.cancel_command", "conf.echo", "nope.nope"];
const RUNS = Number(process.env["IRONBUS_FUZZ_BUS_RUNS"] ?? "1500");

for (const kit of KITS) {
  describe(`fuzz: the ${kit.name} entry point`, () => {
    const fixture = trustFixture();
    const probe = new LogProbe("debug");
    let rig: Rig;
    before(async () => {
      const broker = await kit.start(undefined, probe.log);
      const config = parseConfig({ standalone: true, node: NODE, ...fixture.config, maxMessageBytes: 256 * 1024 });
      rig = await busRig(
        kit.name,
        { agentLink: (node) => broker.agentLink(node, probe.log), controllerLink: () => broker.controllerLink(probe.log), close: () => broker.dispose() },
        {
          format: "json",
          log: probe.log,
          config: { ...fixture.config, maxMessageBytes: 256 * 1024 },
          extensions: [securityExtension().extension, fuzzExtension()],
          guard: createGuard(config, probe.log, { node: NODE }),
          controller: { sign: (env) => signEnvelope(env, fixture.prov.signer) },
        },
      );
    });
    after(async () => {
      await rig?.close();
    });

    it(`answers or logs every malformed input, and still works after (${RUNS} inputs)`, async (t) => {
      const settings = { ...fuzzSettings("rest"), runs: RUNS };
      const token = rig.controller.tokenFor(NODE);
      const input = wireInputArb({
        names: NAMES,
        signers: [fixture.prov.signer, fixture.mon.signer, fixture.stranger.signer],
        nodes: [NODE, "other-node"],
        tokens: token === undefined ? [] : [token],
        plausible: 0.3,
        trustedSigners: 2,
        hugeChars: 300_000,
      });
      await fuzzEntryPoint({
        t,
        name: `${kit.name} entry point`,
        settings,
        input,
        shrink: false,
        timeoutMs: 10_000,
        entry: async (bytes, contentType) => {
          const mark = probe.mark();
          // A bus carries only our two content types, or none (the agent sniffs): anything else is
          // sent without one, as an MQTT 3.1.1 client or a bare NATS publish would.
          const wire = formatOf(contentType) === undefined ? undefined : contentType;
          try {
            await rig.controller.sendRaw({ node: NODE }, bytes, wire ?? "");
          } catch (err) {
            // Refused on the way in (the hub will not put non-UTF-8 in a text frame): a structured
            // refusal to the sender, and the agent never sees it.
            assert.ok(err instanceof AgentError, `a structured refusal, got ${String(err)}`);
            return;
          }
          await until(() => probe.since(mark).some((l) => l.msg === "bus message handled" || l.msg === "envelope refused"), 9_000, "the agent to handle the input");
        },
      });
      // Still serving. A fuzzed join answer signed by a trusted key may have re-keyed the agent (as it
      // may), so the check carries whatever token the agent holds now.
      const current = rig.agent.token();
      const env = signedCommand(fixture.prov, "conf.echo", { value: "still here" }, Date.now(), { node: NODE, ...(current !== undefined ? { token: current } : {}) });
      const answered = new Promise<string>((resolve) => {
        const off = rig.controller.on((ev) => {
          if ((ev.type === "result" || ev.type === "error") && ev.correlationId === env.id) {
            off();
            resolve(ev.type === "result" ? ev.result.command_status : `${ev.error.type}: ${ev.error.details}`);
          }
        });
      });
      await rig.controller.sendRaw({ node: NODE }, encodeEnvelope(env, "json"), CONTENT_TYPES.json);
      assert.equal(await answered, "SUCCEEDED");
    });
  });
}
