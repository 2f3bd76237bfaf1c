/**
 * How the disk utilities run their tools (always through the CommandRunner, with the command's abort
 * signal, in the C locale) and the IPA error shapes they report.
 */
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { type CommandResult, type CommandRunner, hasErrorCode, isAbortError } from "../exec.js";

/** What every disk operation needs: the runner, the command's abort signal and a logger. */
export interface DiskIo {
  readonly run: CommandRunner;
  readonly signal: AbortSignal;
  readonly log: Logger;
}

const TOOL_ENV: Readonly<Record<string, string>> = { LC_ALL: "C", LANG: "C" };

export interface ToolOptions {
  /** Exit codes that are not a failure (default: only 0). */
  readonly okCodes?: readonly number[];
  readonly timeoutMs?: number;
}

function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args.map((a) => (a === "" || /\s/.test(a) ? JSON.stringify(a) : a))].join(" ");
}

/** The abort reason when the signal fired, so the router reports a cancel or a deadline as such. */
function abortReason(io: DiskIo, err: unknown): unknown {
  return io.signal.aborted ? (io.signal.reason ?? err) : err;
}

/**
 * Runs a tool; null when it is not installed. Any exit status is returned; an abort rethrows the
 * signal's reason (the runner has already killed the child).
 */
export async function tryTool(io: DiskIo, cmd: string, args: readonly string[], opts: ToolOptions = {}): Promise<CommandResult | null> {
  io.signal.throwIfAborted();
  try {
    return await io.run(cmd, args, {
      signal: io.signal,
      env: TOOL_ENV,
      ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
    });
  } catch (err) {
    if (isAbortError(err) || io.signal.aborted) throw abortReason(io, err);
    if (hasErrorCode(err, "ENOENT")) return null;
    throw new AgentError("TOOL_FAILED", `${commandLine(cmd, args)}: ${(err as Error).message}`, { cause: err });
  }
}

/** Runs a tool that must exist and succeed; TOOL_FAILED (IPA's ProcessExecutionError) otherwise. */
export async function runTool(io: DiskIo, cmd: string, args: readonly string[], opts: ToolOptions = {}): Promise<CommandResult> {
  const res = await tryTool(io, cmd, args, opts);
  if (res === null) throw new AgentError("TOOL_FAILED", `${cmd}: command not found`);
  const ok = opts.okCodes ?? [0];
  if (!ok.includes(res.code)) {
    const why = (res.stderr.trim() || res.stdout.trim()).split("\n").slice(-3).join(" / ");
    throw new AgentError("TOOL_FAILED", `${commandLine(cmd, args)} exited with ${res.code}${why === "" ? "" : `: ${why}`}`);
  }
  return res;
}

/** IPA's DeviceNotFound (404): no disk to deploy onto, or hints that do not validate. */
export function deviceNotFound(details: string): AgentError {
  return new AgentError("NOT_FOUND", details, {
    ipaType: "DeviceNotFound",
    message: "Error finding the disk or partition device to deploy the image onto",
  });
}

/** IPA's BlockDeviceEraseError (500). */
export function blockDeviceEraseError(details: string, cause?: unknown): AgentError {
  return new AgentError("COMMAND_FAILED", details, {
    ipaType: "BlockDeviceEraseError",
    message: "Error erasing block device",
    ...(cause === undefined ? {} : { cause }),
  });
}

/** IPA's ProtectedDeviceError (500): a shared-disk file system or partition type was found. */
export function protectedDeviceError(device: string, what: string): AgentError {
  return new AgentError(
    "COMMAND_FAILED",
    `${device} holds ${what}, which may be shared with other machines; nothing was erased. ` +
      "Detach the volume, or set driver_internal_info.wipe_special_filesystems to true to erase it anyway (docs/disks.md).",
    { ipaType: "ProtectedDeviceError", message: "Protected device located, cleaning aborted." },
  );
}
