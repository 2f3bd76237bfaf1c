/**
 * The trust model on every transport, in both encodings: the security cases of test/helpers/keys.ts
 * (valid, unsigned, forged, altered, expired, replayed, wrongly authorised...) sent as raw envelopes
 * through each transport to an agent that requires signatures, with the answer each must get, and
 * proof that refused commands never ran.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CONTENT_TYPES, encodeEnvelope, type WireFormat } from "../../core/codec.js";
import { parseConfig } from "../../core/config.js";
import type { Envelope } from "../../core/envelope.js";
import { silentLogger } from "../../core/log.js";
import { signEnvelope } from "../../core/sign.js";
import { createGuard } from "../../core/trust.js";
import { answerMatches, describeAnswer, securityCases, securityExtension, trustFixture } from "../helpers/keys.js";
import { NODE, type Harness, type Rig } from "./rig.js";

/** The next answer the controller sees for `id`: the result or the refusal, as an envelope. */
function answerTo(rig: Rig, id: string, ms: number): Promise<Envelope> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no answer to ${id} within ${ms} ms`));
    }, ms);
    const off = rig.controller.on((ev) => {
      if (ev.type === "result" && ev.correlationId === id && ev.result.command_status !== "RUNNING") {
        clearTimeout(timer);
        off();
        resolve({ v: 1, id: "answer", kind: "result", correlation_id: id, body: ev.result });
      } else if (ev.type === "error" && ev.correlationId === id) {
        clearTimeout(timer);
        off();
        resolve({ v: 1, id: "answer", kind: "error", correlation_id: id, body: ev.error });
      }
    });
  });
}

export function securityConformance(harness: Harness): void {
  for (const format of ["json", "protobuf"] as const satisfies readonly WireFormat[]) {
    describe(`${harness.name} trust (${format}): signed commands only`, () => {
      const fixture = trustFixture();
      const sec = securityExtension();
      let rig: Rig;
      /** The cases with this rig's node token in them (signed over, like every header field). */
      let cases = new Map<string, ReturnType<typeof securityCases>[number]>();
      before(async () => {
        const log = silentLogger();
        const config = parseConfig({ standalone: true, node: NODE, ...fixture.config });
        rig = await harness.start({
          format,
          log,
          extensions: [sec.extension],
          config: fixture.config,
          guard: createGuard(config, log, { node: NODE }),
          // The controller signs what it sends itself (the join answer) with the provisioning key.
          controller: { sign: (env) => signEnvelope(env, fixture.prov.signer) },
        });
        cases = new Map(securityCases({ fixture, now: Date.now(), node: NODE, token: rig.controller.tokenFor(NODE) }).map((c) => [c.name, c]));
      });
      after(async () => {
        await rig?.close();
      });

      for (const { name } of securityCases({ fixture, now: Date.now() })) {
        it(name, async () => {
          const c = cases.get(name);
          assert.ok(c !== undefined);
          const before = { ...sec.runs };
          let peek = 0;
          let wipe = 0;
          for (const step of c.steps) {
            const env = step.env;
            const answer = answerTo(rig, env.id, 10_000);
            await rig.controller.sendRaw({ node: rig.node }, encodeEnvelope(env, format), CONTENT_TYPES[format]);
            const got = await answer;
            assert.ok(answerMatches(got, step.expect), `${step.expect} expected, got ${describeAnswer(got)}`);
            if (step.expect === "accepted" && step.runs === "peek") peek++;
            if (step.expect === "accepted" && step.runs === "wipe") wipe++;
          }
          assert.deepEqual(sec.runs, { peek: before.peek + peek, wipe: before.wipe + wipe }, "refused commands never ran");
        });
      }
    });
  }
}
