/** flow.start_flow: run a list of commands in order, stopping at the first failure (IPA's flow extension). */
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import { JsonObjectSchema } from "../../core/envelope.js";

const FlowSchema = z.array(z.record(z.string(), JsonObjectSchema).refine((o) => Object.keys(o).length === 1, "each flow item holds exactly one command"));

export function flowExtension(): Extension {
  return defineExtension("flow", {
    start_flow: defineCommand({
      mode: "async",
      params: z.object({ flow: FlowSchema }).strict(),
      run: async ({ flow }, ctx) => {
        for (const [index, item] of flow.entries()) {
          for (const [name, params] of Object.entries(item)) {
            ctx.signal.throwIfAborted();
            ctx.progress({ percent: (index / flow.length) * 100, stage: name, message: `step ${index + 1} of ${flow.length}` });
            await ctx.invoke(name, params);
          }
        }
        return null;
      },
    }),
  });
}
