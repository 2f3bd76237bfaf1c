/**
 * A private nats-server for tests: JetStream on, file storage in a fresh directory under os.tmpdir(),
 * bound to 127.0.0.1 on a free port. `stop()`/`kill()` end the process, `start()` brings it back on
 * the same port with the same store (streams and consumers survive), `restart()` is both, `dispose()`
 * ends it and removes the store. Every process started here is killed when the test that asked for it
 * ends (pass `t`), when the test process exits, and (by a watchdog) when it is killed.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { canConnect, exited, freePort } from "./net.js";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

export const NATS_SERVER_BIN = process.env["NATS_SERVER"] ?? "/usr/sbin/nats-server";

export interface NatsServerOptions {
  /** Extra lines for the server's configuration file (authorization blocks, limits...). */
  readonly config?: string;
  /** JetStream on (default true). */
  readonly jetstream?: boolean;
  /** Milliseconds to wait for "Server is ready"; default 10 s. */
  readonly readyTimeoutMs?: number;
}

export interface NatsServer {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** True while the process runs. */
  readonly running: boolean;
  /** Starts the server again (same port, same store) after stop() or kill(). */
  start(): Promise<void>;
  /** SIGTERM, and waits for the process to exit. */
  stop(): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** SIGKILL (no clean shutdown), and waits for the process to exit. */
  kill(): Promise<void>;
  /** Ends the process and removes the store directory. */
  dispose(): Promise<void>;
}

/**
 * nats-server runs under a small shell that prints its pid and kills it when its stdin (a pipe from
 * this process) closes: the server dies with the test process even when that is killed outright.
 */
const WATCHDOG = [
  "exec 3<&0",
  '"$1" -c "$2" </dev/null &',
  "pid=$!",
  'echo "$pid"',
  '( read _ <&3; kill -KILL "$pid" 2>/dev/null ) &',
  "watcher=$!",
  'wait "$pid"',
  "rc=$?",
  'kill "$watcher" 2>/dev/null',
  "exit $rc",
].join("\n");

interface Running {
  readonly wrapper: ChildProcess;
  /** The nats-server's own pid (from the wrapper's first line). */
  pid: number | undefined;
}

function signal(running: Running, sig: NodeJS.Signals): void {
  try {
    if (running.pid !== undefined) process.kill(running.pid, sig);
    else running.wrapper.kill("SIGKILL");
  } catch {
    // already gone
  }
}

const live = new Set<Running>();
process.once("exit", () => {
  for (const running of live) signal(running, "SIGKILL");
});

export async function startNatsServer(t?: Pick<TestContext, "after">, options: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-nats-"));
  const storeDir = join(dir, "store");
  const port = await freePort();
  const configFile = join(dir, "nats.conf");
  writeFileSync(
    configFile,
    [
      `listen: "127.0.0.1:${port}"`,
      options.jetstream === false ? "" : `jetstream { store_dir: ${JSON.stringify(storeDir)} }`,
      options.config ?? "",
    ].join("\n"),
  );
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  let child: Running | undefined;
  let disposed = false;

  async function start(): Promise<void> {
    if (disposed) throw new Error("nats-server fixture disposed");
    if (child !== undefined) throw new Error("nats-server already running");
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      const proc = spawn("sh", ["-c", WATCHDOG, "sh", NATS_SERVER_BIN, configFile], { stdio: ["pipe", "pipe", "pipe"] });
      const running: Running = { wrapper: proc, pid: undefined };
      live.add(running);
      child = running;
      let log = "";
      const ready = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
        proc.stdout?.setEncoding("utf8");
        proc.stdout?.once("data", (line: string) => {
          const pid = Number.parseInt(line, 10);
          if (Number.isInteger(pid) && pid > 0) running.pid = pid;
        });
        proc.stderr?.setEncoding("utf8");
        proc.stderr?.on("data", (chunk: string) => {
          log += chunk;
          if (log.includes("Server is ready") && running.pid !== undefined) {
            clearTimeout(timer);
            resolve(true);
          }
        });
        proc.once("exit", () => {
          clearTimeout(timer);
          resolve(false);
        });
        proc.once("error", () => {
          clearTimeout(timer);
          resolve(false);
        });
      });
      proc.stderr?.removeAllListeners("data");
      proc.stderr?.resume();
      proc.stdout?.resume();
      proc.once("exit", () => {
        live.delete(running);
        if (child === running) child = undefined;
      });
      if (ready && (await canConnect(port))) return;
      signal(running, "SIGKILL");
      await exited(proc);
      live.delete(running);
      if (child === running) child = undefined;
      // The port may still be held by the previous process for a moment: retry until the deadline.
      if (Date.now() >= deadline || !/address already in use/i.test(log)) {
        throw new Error(`nats-server did not become ready on port ${port}: ${log.slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function end(sig: NodeJS.Signals): Promise<void> {
    const running = child;
    if (running === undefined) return;
    signal(running, sig);
    await exited(running.wrapper);
    live.delete(running);
    if (child === running) child = undefined;
  }

  const server: NatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    get running() {
      return child !== undefined;
    },
    start,
    stop: () => end("SIGTERM"),
    kill: () => end("SIGKILL"),
    async restart() {
      await end("SIGTERM");
      await start();
    },
    async dispose() {
      if (disposed) return;
      await end("SIGKILL");
      disposed = true;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  t?.after(() => server.dispose());
  await start();
  return server;
}
