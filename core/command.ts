/**
 * The contract between the router and the utilities: what a command is, what it may use while it
 * runs. Utilities define commands with defineCommand(); the router never sees their parameter types.
 */
import type { z } from "zod";
import { AgentError } from "./errors.js";
import type { Json, JsonObject, ProgressBody } from "./envelope.js";
import type { Logger } from "./log.js";

export type ProgressUpdate = Omit<ProgressBody, "command_id" | "command_name">;

export interface CommandContext {
  /** The command id (also its idempotency key). */
  readonly id: string;
  /** `<extension>.<command>` */
  readonly name: string;
  /** Aborted on deadline, cancellation or shutdown; long work must watch it. */
  readonly signal: AbortSignal;
  readonly log: Logger;
  progress(update: ProgressUpdate): void;
  /** Runs another command inline, inside this one (its lock and deadline); used by flow.start_flow. */
  invoke(name: string, params: JsonObject): Promise<Json>;
}

export type CommandMode = "sync" | "async";

export interface CommandSpec<P> {
  /** sync: the answer carries the result; async: the answer is RUNNING and the result comes later. */
  readonly mode: CommandMode;
  /** Parameters, parsed before run(); a failure is IPA's TypeError (wrong or missing arguments). */
  readonly params: z.ZodType<P>;
  /** IPA's validators: refuse before anything is recorded (400 "Invalid command parameters"). */
  readonly validate?: (params: JsonObject) => void;
  /** Holds the agent's one hardware lock while running; default: true for async commands. */
  readonly exclusive?: boolean;
  /** Erases, writes, partitions, builds RAID or powers off: refused unless the config allows it. */
  readonly destructive?: boolean;
  /** Default deadline in ms. */
  readonly timeoutMs?: number;
  /** May run while a hardware command holds the lock (e.g. cancelling it); never takes the lock. */
  readonly whileBusy?: boolean;
  readonly run: (params: P, ctx: CommandContext) => Promise<unknown> | unknown;
}

/** A command with its parameter type erased: what the router holds. */
export interface CommandDefinition {
  readonly mode: CommandMode;
  readonly exclusive: boolean;
  readonly destructive: boolean;
  readonly timeoutMs: number | undefined;
  readonly whileBusy: boolean;
  readonly validate: ((params: JsonObject) => void) | undefined;
  /** Parses the parameters and runs the command: a value for a command done at once, else a promise. */
  execute(params: JsonObject, ctx: CommandContext): unknown;
}

export interface Extension {
  readonly name: string;
  readonly commands: Readonly<Record<string, CommandDefinition>>;
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const path = i.path.join(".");
      if (i.code === "unrecognized_keys") return `unexpected argument(s) ${i.keys.map((k) => `'${path ? `${path}.` : ""}${k}'`).join(", ")}`;
      return `${path ? `'${path}': ` : ""}${i.message}`;
    })
    .join("; ");
}

export function defineCommand<P>(spec: CommandSpec<P>): CommandDefinition {
  return {
    mode: spec.mode,
    exclusive: spec.whileBusy === true ? false : (spec.exclusive ?? (spec.mode === "async" || spec.destructive === true)),
    whileBusy: spec.whileBusy ?? false,
    destructive: spec.destructive ?? false,
    timeoutMs: spec.timeoutMs,
    validate: spec.validate,
    execute(params, ctx) {
      const parsed = spec.params.safeParse(params);
      if (!parsed.success) {
        // IPA: a sync command's wrong kwargs are a TypeError (Ironic treats it as fatal);
        // an async command's are a CommandExecutionError. Same information, IPA's two shapes.
        const details = `${ctx.name}() ${describeIssues(parsed.error)}`;
        throw spec.mode === "sync"
          ? new AgentError("BAD_ARGUMENTS", details)
          : new AgentError("BAD_ARGUMENTS", details, { ipaType: "CommandExecutionError", status: 500, message: "Command execution failed" });
      }
      return spec.run(parsed.data, ctx);
    },
  };
}

export function defineExtension(name: string, commands: Record<string, CommandDefinition>): Extension {
  return { name, commands };
}
