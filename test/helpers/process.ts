/** A child process a test starts: its combined output so far, its exit, and a kill after the test. */
import { spawn, type ChildProcess } from "node:child_process";
import type { TestContext } from "node:test";

export interface Child {
  readonly child: ChildProcess;
  /** stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
}

/** Runs `node ...args`; after the test it is killed (SIGKILL) if still running, and awaited. */
export function spawnNode(t: Pick<TestContext, "after">, args: readonly string[]): Child {
  const child = spawn(process.execPath, [...args], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  });
  return { child, output: () => output, exited };
}
