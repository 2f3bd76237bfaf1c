/**
 * Running external tools without a shell.
 *
 * The agent shells out to many small Linux tools (lsblk, lscpu, dmidecode,
 * ipmitool, journalctl, ...). Everything that does so goes through a
 * {@link CommandRunner} so that tests can substitute a fake and so that the
 * rules are the same everywhere:
 *
 * - no shell is ever involved: `cmd` is an executable name, `args` are passed
 *   verbatim;
 * - a non-zero exit status is *not* an error: the promise resolves and the
 *   caller looks at `code`;
 * - a missing executable rejects with a {@link CommandError} whose `code` is
 *   `'ENOENT'`;
 * - a timeout, an abort or output beyond `maxBuffer` rejects with a
 *   {@link CommandError} (`'ETIMEDOUT'`, `'ABORT_ERR'`,
 *   `'ERR_CHILD_PROCESS_STDIO_MAXBUFFER'`) that still carries the output
 *   captured so far.
 */
import { spawn } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import path from "node:path";

export interface RunOptions {
  /** Aborting kills the child (SIGKILL) and rejects with code `ABORT_ERR`. */
  signal?: AbortSignal;
  /** Bytes written to the child's stdin, which is then closed. Without it stdin is /dev/null. */
  input?: Buffer;
  /** Kill the child (SIGKILL) after this many milliseconds and reject with code `ETIMEDOUT`. */
  timeoutMs?: number;
  /** Limit for stdout and for stderr, each, in bytes. Default {@link DEFAULT_MAX_BUFFER}. */
  maxBuffer?: number;
  /** Extra environment variables, merged over `process.env`. */
  env?: Readonly<Record<string, string>>;
}

export interface CommandResult {
  stdout: string;
  stderr: string;
  /** Exit status; 128 + signal number when the child died from a signal. */
  code: number;
}

/** Runs one executable. See the module comment for the contract. */
export type CommandRunner = (
  cmd: string,
  args: readonly string[],
  opts?: RunOptions,
) => Promise<CommandResult>;

export type CommandErrorCode =
  | "ENOENT"
  | "EACCES"
  | "ETIMEDOUT"
  | "ABORT_ERR"
  | "ERR_CHILD_PROCESS_STDIO_MAXBUFFER"
  | "ESPAWN";

/** Why a command could not be run to completion. */
export class CommandError extends Error {
  override readonly name = "CommandError";
  readonly code: CommandErrorCode;
  readonly cmd: string;
  /** Output captured before the failure (empty when the command never started). */
  readonly stdout: string;
  readonly stderr: string;

  constructor(
    message: string,
    code: CommandErrorCode,
    cmd: string,
    output: { stdout?: string; stderr?: string } = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.code = code;
    this.cmd = cmd;
    this.stdout = output.stdout ?? "";
    this.stderr = output.stderr ?? "";
  }
}

/** True when `err` is a {@link CommandError} (or any error) with the given code. */
export function hasErrorCode(err: unknown, code: string): boolean {
  return typeof err === "object" && err !== null && "code" in err && (err as { code: unknown }).code === code;
}

/** True for the error a runner raises when its signal was aborted. */
export function isAbortError(err: unknown): boolean {
  return (
    hasErrorCode(err, "ABORT_ERR") ||
    (typeof err === "object" && err !== null && "name" in err && (err as { name: unknown }).name === "AbortError")
  );
}

export const DEFAULT_MAX_BUFFER = 64 * 1024 * 1024;

/**
 * Directories searched after `$PATH`. Ramdisks and service units frequently
 * run with a PATH lacking the sbin directories where dmidecode, ipmitool,
 * losetup, blockdev... live.
 */
const FALLBACK_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

const toolCache = new Map<string, string | null>();

async function isExecutableFile(p: string): Promise<boolean> {
  try {
    await access(p, fsConstants.X_OK);
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/**
 * Absolute path of an executable, searching `$PATH` then the usual sbin/bin
 * directories; `null` when there is none. A name containing a slash is
 * checked as given. Results are cached per process (a tool installed while
 * the agent runs is found once {@link clearToolCache} has been called).
 */
export async function whichTool(name: string): Promise<string | null> {
  if (name.includes("/")) {
    return (await isExecutableFile(name)) ? name : null;
  }
  const cached = toolCache.get(name);
  if (cached !== undefined) return cached;
  const dirs = [...(process.env["PATH"] ?? "").split(":").filter((d) => d !== ""), ...FALLBACK_DIRS];
  let found: string | null = null;
  for (const dir of new Set(dirs)) {
    const candidate = path.join(dir, name);
    if (await isExecutableFile(candidate)) {
      found = candidate;
      break;
    }
  }
  // Only remember hits: a tool may still be being installed.
  if (found !== null) toolCache.set(name, found);
  return found;
}

/** True when an executable of that name can be found (see {@link whichTool}). */
export async function hasTool(name: string): Promise<boolean> {
  return (await whichTool(name)) !== null;
}

/** Forget resolved tool paths. */
export function clearToolCache(): void {
  toolCache.clear();
}

class OutputBuffer {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  overflowed = false;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    if (this.overflowed) return;
    const room = this.limit - this.size;
    if (chunk.length > room) {
      if (room > 0) this.chunks.push(chunk.subarray(0, room));
      this.size = this.limit;
      this.overflowed = true;
      return;
    }
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }
}

function signalExitCode(signal: NodeJS.Signals | null): number {
  if (signal === null) return 1;
  const n = osConstants.signals[signal];
  return typeof n === "number" ? 128 + n : 1;
}

/** The real runner: `node:child_process.spawn`, no shell. */
export const execRunner: CommandRunner = async (cmd, args, opts = {}) => {
  const { signal, input, timeoutMs, maxBuffer = DEFAULT_MAX_BUFFER, env } = opts;
  if (signal?.aborted === true) {
    throw new CommandError(`${cmd}: aborted before start`, "ABORT_ERR", cmd, {}, { cause: signal.reason });
  }
  const resolved = await whichTool(cmd);
  if (resolved === null) {
    throw new CommandError(`${cmd}: command not found`, "ENOENT", cmd);
  }

  return await new Promise<CommandResult>((resolve, reject) => {
    const child = spawn(resolved, [...args], {
      shell: false,
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      env: env === undefined ? process.env : { ...process.env, ...env },
      argv0: cmd,
    });
    const out = new OutputBuffer(maxBuffer);
    const err = new OutputBuffer(maxBuffer);
    let failure: CommandError | null = null;
    let timer: NodeJS.Timeout | undefined;

    const fail = (e: CommandError): void => {
      if (failure !== null) return;
      failure = e;
      child.kill("SIGKILL");
    };
    const onAbort = (): void => {
      fail(
        new CommandError(`${cmd}: aborted`, "ABORT_ERR", cmd, { stdout: out.text(), stderr: err.text() }, {
          cause: signal?.reason,
        }),
      );
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted === true) onAbort();
    if (timeoutMs !== undefined && timeoutMs > 0) {
      timer = setTimeout(() => {
        fail(
          new CommandError(`${cmd}: timed out after ${timeoutMs} ms`, "ETIMEDOUT", cmd, {
            stdout: out.text(),
            stderr: err.text(),
          }),
        );
      }, timeoutMs);
    }

    const onData = (buf: OutputBuffer) => (chunk: Buffer) => {
      buf.push(chunk);
      if (buf.overflowed) {
        fail(
          new CommandError(
            `${cmd}: output exceeded maxBuffer (${maxBuffer} bytes)`,
            "ERR_CHILD_PROCESS_STDIO_MAXBUFFER",
            cmd,
            { stdout: out.text(), stderr: err.text() },
          ),
        );
      }
    };
    child.stdout?.on("data", onData(out));
    child.stderr?.on("data", onData(err));

    if (input !== undefined && child.stdin !== null) {
      // EPIPE when the child exits without reading is not our concern.
      child.stdin.on("error", () => undefined);
      child.stdin.end(input);
    }

    const cleanup = (): void => {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };

    child.on("error", (e: NodeJS.ErrnoException) => {
      cleanup();
      const code: CommandErrorCode = e.code === "ENOENT" ? "ENOENT" : e.code === "EACCES" ? "EACCES" : "ESPAWN";
      reject(failure ?? new CommandError(`${cmd}: ${e.message}`, code, cmd, {}, { cause: e }));
    });
    child.on("close", (exitCode, exitSignal) => {
      cleanup();
      if (failure !== null) {
        reject(failure);
        return;
      }
      resolve({
        stdout: out.text(),
        stderr: err.text(),
        code: exitCode ?? signalExitCode(exitSignal),
      });
    });
  });
};
