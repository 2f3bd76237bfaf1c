/** Commands the conformance suite runs: cheap, observable, touching no hardware. */
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import { AgentError } from "../../core/errors.js";
import { gate, type Gate } from "../helpers/gate.js";

export interface ConformanceState {
  /** How many times conf.count ran, per tag. */
  readonly runs: Map<string, number>;
  /** conf.hold waits on this gate; replace it to hold again. */
  hold: Gate;
}

export function conformanceExtension(): { extension: Extension; state: ConformanceState } {
  const state: ConformanceState = { runs: new Map(), hold: gate() };
  const extension = defineExtension("conf", {
    echo: defineCommand({ mode: "sync", params: z.object({ value: z.unknown() }).strict(), run: (p) => ({ echoed: p.value === undefined ? null : (p.value as never) }) }),
    count: defineCommand({
      mode: "sync",
      params: z.object({ tag: z.string() }).strict(),
      run: (p) => {
        const n = (state.runs.get(p.tag) ?? 0) + 1;
        state.runs.set(p.tag, n);
        return { tag: p.tag, runs: n };
      },
    }),
    work: defineCommand({
      mode: "async",
      params: z.object({ steps: z.number().int().min(1).max(10), ms: z.number().int().min(0).max(1000) }).strict(),
      run: async (p, ctx) => {
        for (let i = 1; i <= p.steps; i++) {
          await new Promise((r) => setTimeout(r, p.ms));
          ctx.progress({ percent: (100 * i) / p.steps, stage: `step ${i}` });
        }
        return { steps: p.steps };
      },
    }),
    hold: defineCommand({
      mode: "async",
      params: z.object({ tag: z.string() }).strict(),
      run: async (p) => {
        const g = state.hold;
        g.enter();
        await g.promise;
        state.runs.set(p.tag, (state.runs.get(p.tag) ?? 0) + 1);
        return { held: p.tag };
      },
    }),
    fail: defineCommand({
      mode: "sync",
      params: z.object({}).strict(),
      run: () => {
        throw new AgentError("COMMAND_FAILED", "failing on purpose");
      },
    }),
    wipe: defineCommand({ mode: "async", destructive: true, params: z.object({}).strict(), run: () => ({ wiped: false }) }),
  });
  return { extension, state };
}
