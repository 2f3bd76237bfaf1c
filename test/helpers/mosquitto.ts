/**
 * A private mosquitto for tests, bound to 127.0.0.1 on a free port, with persistence in a fresh
 * directory under os.tmpdir() (so a restart keeps sessions, subscriptions, queued and retained
 * messages), TCP_NODELAY on, a deep queue and its log in a file.
 *
 * No process outlives the test process: the broker runs under a small shell that kills it when its
 * stdin closes, which happens when the test process exits however it exits (SIGKILL included). Every
 * broker is also stopped when the test that started it ends (pass `t`).
 *
 * `mqttProxy()` puts a TCP relay between a client and the broker: the test can cut every relayed
 * connection abruptly (the broker then publishes the client's last will, as when a machine vanishes)
 * and can answer MQTT 5 CONNECTs with a refusal like an MQTT 3.1.1-only broker.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { canConnect, exited, freePort } from "./net.js";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

export const MOSQUITTO_BIN = process.env["MOSQUITTO"] ?? "/usr/sbin/mosquitto";

export interface Mosquitto {
  /** mqtt://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** Config, persistence and log live here. */
  readonly dir: string;
  readonly running: boolean;
  /** Starts the broker again (same port, same persistence) after stop() or kill(). */
  start(): Promise<void>;
  /** Sends `signal` (default SIGTERM: persistence is saved) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
  /** Ends the broker and removes its directory. */
  dispose(): Promise<void>;
  /** The broker's log so far (for failure messages). */
  log(): string;
}

export interface MosquittoOptions {
  /** Extra configuration lines. */
  readonly config?: string;
  readonly readyTimeoutMs?: number;
}

const WATCHDOG = [
  "exec 3<&0", // background jobs get /dev/null as stdin: keep the pipe from the test process on fd 3
  '"$0" -c "$1" &',
  "p=$!",
  'echo "$p"',
  '( read x <&3; kill -KILL "$p" 2>/dev/null ) &',
  "w=$!",
  'wait "$p"; rc=$?',
  'kill "$w" 2>/dev/null',
  'exit "$rc"',
].join("\n");

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL"); // the watchdog then kills the broker too (stdin closes)
});

export async function startMosquitto(t?: Pick<TestContext, "after">, options: MosquittoOptions = {}): Promise<Mosquitto> {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-mosquitto-"));
  const port = await freePort();
  const configFile = join(dir, "mosquitto.conf");
  const logFile = join(dir, "mosquitto.log");
  const lines = [
    `listener ${port} 127.0.0.1`,
    "allow_anonymous true",
    "persistence true",
    `persistence_location ${dir}/`,
    "set_tcp_nodelay true",
    "max_queued_messages 100000",
    "max_inflight_messages 20",
    `log_dest file ${logFile}`,
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
    "connection_messages true",
    // Running as root, mosquitto would switch to the "mosquitto" user and lose access to `dir`.
    ...(process.getuid?.() === 0 ? ["user root"] : []),
    options.config ?? "",
  ];
  writeFileSync(configFile, `${lines.join("\n")}\n`);
  const readyTimeoutMs = options.readyTimeoutMs ?? 5_000;

  let child: ChildProcess | undefined;
  let brokerPid = 0;

  const readLog = (): string => {
    try {
      return readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };

  const start = async (): Promise<void> => {
    if (child !== undefined) throw new Error("mosquitto already running");
    const proc = spawn("sh", ["-c", WATCHDOG, MOSQUITTO_BIN, configFile], { stdio: ["pipe", "pipe", "pipe"] });
    child = proc;
    live.add(proc);
    let stderr = "";
    proc.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    proc.once("exit", () => {
      live.delete(proc);
      proc.stdin?.destroy();
      if (child === proc) child = undefined;
    });
    brokerPid = await new Promise<number>((resolve, reject) => {
      let out = "";
      proc.stdout?.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        const line = out.split("\n")[0];
        if (out.includes("\n") && line !== undefined) resolve(Number(line));
      });
      proc.once("exit", (code) => reject(new Error(`mosquitto wrapper exited (${code}) before starting: ${stderr}`)));
    });
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`mosquitto exited (${proc.exitCode}): ${stderr}\n${readLog()}`);
      if (await canConnect(port)) return;
      if (Date.now() > deadline) throw new Error(`mosquitto not listening on ${port} after ${readyTimeoutMs} ms: ${stderr}\n${readLog()}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };

  const stop = async (signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
    const proc = child;
    if (proc === undefined) return;
    try {
      process.kill(brokerPid, signal);
    } catch {
      // already gone
    }
    await exited(proc);
  };

  await start();
  const broker: Mosquitto = {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    dir,
    get running() {
      return child !== undefined;
    },
    start,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    kill: () => stop("SIGKILL"),
    dispose: async () => {
      await stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
    log: readLog,
  };
  t?.after(() => broker.dispose());
  return broker;
}

export interface MqttProxy {
  /** mqtt://127.0.0.1:PORT, relaying to the broker. */
  readonly url: string;
  /** Connections relayed so far. */
  readonly accepted: number;
  /** Destroys every relayed connection at once, on both sides (no DISCONNECT reaches the broker). */
  cut(): void;
  close(): Promise<void>;
}

export interface MqttProxyOptions {
  /** Answer MQTT 5 CONNECTs as a 3.1.1-only broker does ("v3": return code 1) or as a v5 broker refusing v5 ("v5": reason 0x84). */
  readonly refuseV5?: "v3" | "v5";
}

/** The protocol level of a CONNECT packet at the start of `buf`; undefined until enough bytes arrived. */
function connectLevel(buf: Buffer): number | undefined {
  // Fixed header: type byte, then the remaining length in 1-4 bytes (high bit: more follow).
  let i = 1;
  while (i < buf.length && i < 4 && ((buf[i] ?? 0) & 0x80) !== 0) i++;
  i++;
  // Variable header: protocol name (2-byte length + "MQTT"), then the protocol level.
  if (buf.length < i + 2) return undefined;
  const at = i + 2 + buf.readUInt16BE(i);
  return at < buf.length ? buf[at] : undefined;
}

export async function mqttProxy(targetPort: number, t?: Pick<TestContext, "after">, options: MqttProxyOptions = {}): Promise<MqttProxy> {
  const pairs = new Set<[Socket, Socket | undefined]>();
  let accepted = 0;
  const server: Server = createServer((client) => {
    accepted++;
    const pair: [Socket, Socket | undefined] = [client, undefined];
    pairs.add(pair);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const level = connectLevel(head);
      if (level === undefined) return;
      client.off("data", onData);
      client.pause();
      if (level === 5 && options.refuseV5 !== undefined) {
        client.end(options.refuseV5 === "v3" ? Buffer.from([0x20, 0x02, 0x00, 0x01]) : Buffer.from([0x20, 0x03, 0x00, 0x84, 0x00]));
        return;
      }
      const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
      upstream.setNoDelay(true);
      pair[1] = upstream;
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
      upstream.on("error", () => client.destroy());
      upstream.on("close", () => client.destroy());
    };
    client.setNoDelay(true);
    client.on("data", onData);
    client.on("error", () => pair[1]?.destroy());
    client.on("close", () => {
      pair[1]?.destroy();
      pairs.delete(pair);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const cut = (): void => {
    // A plain destroy: the broker sees the connection end without DISCONNECT, which is what fires a
    // will. (resetAndDestroy() here could leave Node 20 spinning at exit, in Environment::CleanupHandles.)
    for (const [client, upstream] of pairs) {
      upstream?.destroy();
      client.destroy();
    }
    pairs.clear();
  };
  const proxy: MqttProxy = {
    url: `mqtt://127.0.0.1:${port}`,
    get accepted() {
      return accepted;
    },
    cut,
    close: () =>
      new Promise<void>((resolve) => {
        cut();
        server.close(() => resolve());
      }),
  };
  t?.after(() => proxy.close());
  return proxy;
}
