/** The agent's own commands, served on every transport: `agent.cancel_command`, `agent.get_command`. */
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../core/command.js";
import type { ResultBody } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";

export interface ControlTarget {
  cancel(id: string, reason?: string): boolean;
  get(id: string): { toJSON(): ResultBody } | undefined;
}

export function controlExtension(router: ControlTarget): Extension {
  return defineExtension("agent", {
    cancel_command: defineCommand({
      mode: "sync",
      whileBusy: true,
      params: z.object({ command_id: z.string().min(1) }).strict(),
      run: ({ command_id }) => {
        if (router.get(command_id) === undefined) throw new AgentError("UNKNOWN_COMMAND_ID", `Command Result with id ${command_id} not found.`);
        return { cancelled: router.cancel(command_id, "cancelled by agent.cancel_command") };
      },
    }),
    get_command: defineCommand({
      mode: "sync",
      whileBusy: true,
      params: z.object({ command_id: z.string().min(1) }).strict(),
      run: ({ command_id }) => {
        const found = router.get(command_id);
        if (found === undefined) throw new AgentError("UNKNOWN_COMMAND_ID", `Command Result with id ${command_id} not found.`);
        return found.toJSON();
      },
    }),
  });
}
