/**
 * standby.power_off and standby.run_image: flush the file systems, then run the configured power
 * command (`powerOffCommand`, `rebootCommand`). When that command fails or says it ignored the
 * request (systemd does, e.g. without a running init), fall back to the kernel's sysrq trigger,
 * as IPA does, unless `sysrqTriggerFile` is empty.
 */
import { writeFile } from "node:fs/promises";
import { z } from "zod";
import { defineCommand, type CommandDefinition } from "../../core/command.js";
import { AgentError } from "../../core/errors.js";
import { systemRebootError } from "./errors.js";
import type { UtilityDeps } from "../part.js";

const NoParams = z.object({}).strict();

export type PowerAction = "poweroff" | "reboot";

/** What the fallback writes to the sysrq trigger: o powers off, b reboots at once. */
const SYSRQ: Record<PowerAction, string> = { poweroff: "o", reboot: "b" };

/** Flushes, then runs the configured command; returns what ran. */
export async function shutdown(deps: UtilityDeps, action: PowerAction, signal: AbortSignal): Promise<{ command: string[]; sysrq: boolean }> {
  const log = deps.log.child({ action });
  // IPA syncs first and only warns when that fails: powering off matters more.
  try {
    const synced = await deps.run("sync", [], { signal, timeoutMs: 120_000 });
    if (synced.code !== 0) log.warn({ code: synced.code, stderr: synced.stderr.trim() }, "sync failed; going on");
  } catch (err) {
    if (signal.aborted) throw err;
    log.warn({ err }, "sync could not run; going on");
  }
  signal.throwIfAborted();

  const argv = action === "poweroff" ? deps.config.powerOffCommand : deps.config.rebootCommand;
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new AgentError("CONFIG_INVALID", `${action} command is empty`);
  log.info({ command: argv }, "running the power command");
  let failure: string | undefined;
  try {
    const res = await deps.run(cmd, args, { signal, timeoutMs: 60_000 });
    if (res.code !== 0) failure = `Reboot script failed with exit code ${res.code}. stdout: ${res.stdout.trim()}. stderr: ${res.stderr.trim()}.`;
    else if (res.stderr.includes("ignoring request")) failure = `${cmd} ignored the request: ${res.stderr.trim()}`;
    else return { command: [...argv], sysrq: false };
  } catch (err) {
    if (signal.aborted) throw err;
    failure = `${cmd} could not run: ${(err as Error).message}`;
  }

  const trigger = deps.config.sysrqTriggerFile;
  if (trigger === "") throw systemRebootError(failure);
  log.warn({ failure, trigger }, "power command failed; falling back to sysrq");
  try {
    await writeFile(trigger, SYSRQ[action]);
  } catch (err) {
    throw systemRebootError(`${failure}; sysrq fallback (${trigger}) failed too: ${(err as Error).message}`, err);
  }
  return { command: [...argv], sysrq: true };
}

export function powerCommands(deps: UtilityDeps): Record<string, CommandDefinition> {
  const make = (action: PowerAction): CommandDefinition =>
    defineCommand({
      mode: "async",
      destructive: true,
      params: NoParams,
      timeoutMs: 300_000,
      run: async (_p, ctx) => {
        await shutdown(deps, action, ctx.signal);
        // IPA returns nothing: the machine is going down.
        return null;
      },
    });
  return { power_off: make("poweroff"), run_image: make("reboot") };
}
