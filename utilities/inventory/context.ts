import type { CommandResult, CommandRunner } from "../exec.js";
import { isAbortError } from "../exec.js";
import type { HostFs } from "./sysfs.js";

/** What every collector gets. */
export interface CollectContext {
  run: CommandRunner;
  fs: HostFs;
  signal: AbortSignal | undefined;
  /** Per-command time limit. */
  timeoutMs: number;
}

/** Locale-independent output for the tools we parse. */
const TOOL_ENV: Readonly<Record<string, string>> = { LC_ALL: "C", LANG: "C" };

/**
 * Run a tool and hand back its result (whatever its exit status), or null
 * when the tool is missing, cannot be started, times out or floods its
 * output. Only an abort of the caller's signal propagates.
 */
export async function tryRun(
  ctx: CollectContext,
  cmd: string,
  args: readonly string[],
  timeoutMs?: number,
): Promise<CommandResult | null> {
  ctx.signal?.throwIfAborted();
  try {
    return await ctx.run(cmd, args, {
      // A tool-specific limit can only shorten the configured one.
      timeoutMs: Math.min(timeoutMs ?? ctx.timeoutMs, ctx.timeoutMs),
      maxBuffer: 32 * 1024 * 1024,
      env: TOOL_ENV,
      ...(ctx.signal === undefined ? {} : { signal: ctx.signal }),
    });
  } catch (err) {
    if (isAbortError(err) && ctx.signal?.aborted === true) throw err;
    return null;
  }
}

/** stdout of a tool that exited 0, else null. */
export async function runOk(
  ctx: CollectContext,
  cmd: string,
  args: readonly string[],
  timeoutMs?: number,
): Promise<string | null> {
  const res = await tryRun(ctx, cmd, args, timeoutMs);
  return res !== null && res.code === 0 ? res.stdout : null;
}

/** Parse JSON without throwing. */
export function parseJson(text: string | null): unknown {
  if (text === null) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
