/**
 * The WebSocket hub: the small broker the agents dial, run by the controller side. It keeps, per node,
 * every message sent to it until the agent acknowledges it (so a dying socket loses nothing), the
 * latest hello and heartbeat of each node (so a fresh controller knows the fleet), and routes what
 * agents send to every attached controller: in-process ones (link()) and remote ones that dial
 * /ironbus/v1/controller (controller-link.ts). It never decodes an envelope. docs/transport-ws.md
 * describes the wire; `ws` is loaded on start() only.
 */
import { isUtf8 } from "node:buffer";
import { type IncomingHttpHeaders, type IncomingMessage, type Server, STATUS_CODES, createServer as createHttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Duplex } from "node:stream";
import type { WebSocket, WebSocketServer } from "ws";
import { interop } from "../../core/interop.js";
import { type AgentSends, BUS_NAME, type BusTarget, type ControllerLink, type ControllerLinkEvents, type InboundSource } from "../../core/bus.js";
import { DEFAULT_MAX_BYTES, type WireFormat, contentTypeOf, formatOf } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import { type Logger, silentLogger } from "../../core/log.js";
import {
  AGENT_PATH,
  CLOSE_GROUPS_INVALID,
  CLOSE_REPLACED,
  CLOSE_TOO_SLOW,
  CONTROLLER_PATH,
  C_READY,
  MAX_FRAME_OVERHEAD,
  contentTypeOfFormat,
  decodeSend,
  encodeAck,
  encodeGone,
  encodeMessage,
  encodeNack,
  hostUrl,
  isControlByte,
  kindOfCode,
  prefixed,
  sourceCode,
  toBuffer,
} from "./frames.js";

export interface WsHubTls {
  /** PEM certificate chain and key: the hub then serves wss://. */
  readonly cert: string;
  readonly key: string;
  /** PEM CA(s) client certificates must chain to: mutual TLS, for agents and controllers alike. */
  readonly clientCa?: string | undefined;
}

export interface WsHubOptions {
  readonly host: string;
  /** 0: any free port (see address()). */
  readonly port: number;
  readonly tls?: WsHubTls | undefined;
  readonly log: Logger;
  /** Largest envelope taken from an agent or a controller. Default 16 MiB. */
  readonly maxMessageBytes?: number | undefined;
  /** Unacknowledged messages kept per node; the oldest is dropped (and logged) beyond it. Default 1000. */
  readonly queueLimit?: number | undefined;
  /** A message not acknowledged within this many ms is dropped (and logged). Default 24 h. */
  readonly queueMaxAgeMs?: number | undefined;
  /** The hub pings every socket this often; one without a pong by the next round is dropped. Default 30 000; 0 disables. */
  readonly pingIntervalMs?: number | undefined;
  /** Messages sent to one agent and not yet acknowledged, at most. Default 1000. */
  readonly maxInFlight?: number | undefined;
  /** A remote controller whose socket has this many bytes waiting is dropped as too slow. Default 64 MiB. */
  readonly controllerBufferLimit?: number | undefined;
  /** Called before an agent's upgrade; false refuses it with HTTP 401. */
  readonly authorizeAgent?: ((node: string, headers: IncomingHttpHeaders) => boolean | Promise<boolean>) | undefined;
  /** Called before a remote controller's upgrade; false refuses it with HTTP 401. */
  readonly authorizeController?: ((headers: IncomingHttpHeaders) => boolean | Promise<boolean>) | undefined;
}

interface Limits {
  maxMessageBytes: number;
  queueLimit: number;
  queueMaxAgeMs: number;
  maxInFlight: number;
  controllerBufferLimit: number;
}

/** One message waiting for one node's acknowledgement. The frame is shared by every node a group or fleet message went to. */
interface Entry {
  readonly frame: Buffer;
  readonly binary: boolean;
  readonly id: string | undefined;
  readonly at: number;
  /** Its number on the node's current connection; 0: not sent on it yet. */
  seq: number;
}

interface Retained {
  readonly kind: AgentSends;
  readonly format: WireFormat;
  readonly bytes: Buffer;
}

interface AgentConn {
  readonly ws: WebSocket;
  readonly node: NodeState;
  /** Messages sent on this connection. */
  sent: number;
  alive: boolean;
  /** Why the hub closed it, for gone(). */
  reason: string | undefined;
}

interface NodeState {
  readonly name: string;
  groups: readonly string[];
  /** Has connected at least once: a member of the fleet and of its groups. */
  seen: boolean;
  readonly queue: Entry[];
  /** queue[0 .. inflight) were sent on the current connection. */
  inflight: number;
  readonly ids: Set<string>;
  conn: AgentConn | undefined;
  hello: Retained | undefined;
  heartbeat: Retained | undefined;
  goneReason: string;
}

interface Controller {
  deliver(node: string, kind: AgentSends, format: WireFormat, bytes: Buffer): void;
  gone(node: string, reason: string): void;
}

interface RemoteController extends Controller {
  readonly ws: WebSocket;
  alive: boolean;
}

const DEFAULT_LIMITS: Limits = {
  maxMessageBytes: DEFAULT_MAX_BYTES,
  queueLimit: 1000,
  queueMaxAgeMs: 24 * 3600 * 1000,
  maxInFlight: 1000,
  controllerBufferLimit: 64 * 1024 * 1024,
};

function refuse(socket: Duplex, status: number, text: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = `${text}\n`;
  socket.once("finish", () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

function parseGroups(list: string): string[] | undefined {
  const groups = [...new Set(list.split(",").filter((g) => g !== ""))];
  return groups.every((g) => BUS_NAME.test(g)) ? groups : undefined;
}

export class WsHub {
  private log: Logger = silentLogger();
  private limits: Limits = { ...DEFAULT_LIMITS };
  private options: WsHubOptions | undefined;
  private server: Server | undefined;
  private wss: WebSocketServer | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly nodes = new Map<string, NodeState>();
  private readonly groups = new Map<string, Set<NodeState>>();
  private readonly controllers = new Set<Controller>();
  private readonly remotes = new Set<RemoteController>();

  /** Listens for agents and remote controllers. Queues and retained frames survive stop() and a later start(). */
  async start(options: WsHubOptions): Promise<void> {
    if (this.server !== undefined) throw new AgentError("INTERNAL", "the ws hub is already started");
    const { WebSocketServer: Wss } = interop(await import("ws"), "WebSocketServer");
    this.options = options;
    this.log = options.log.child({ transport: "ws-hub" });
    this.limits = {
      maxMessageBytes: options.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes,
      queueLimit: options.queueLimit ?? DEFAULT_LIMITS.queueLimit,
      queueMaxAgeMs: options.queueMaxAgeMs ?? DEFAULT_LIMITS.queueMaxAgeMs,
      maxInFlight: options.maxInFlight ?? DEFAULT_LIMITS.maxInFlight,
      controllerBufferLimit: options.controllerBufferLimit ?? DEFAULT_LIMITS.controllerBufferLimit,
    };
    const wss = new Wss({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload: this.limits.maxMessageBytes + MAX_FRAME_OVERHEAD,
    });
    const tls = options.tls;
    const server = tls
      ? createHttpsServer({
          cert: tls.cert,
          key: tls.key,
          // Mutual TLS: with a client CA, a client without a certificate signed by it never gets past the handshake.
          ...(tls.clientCa !== undefined ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
        })
      : createHttpServer();
    server.on("request", (req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/";
      const status = path === CONTROLLER_PATH || path.startsWith(AGENT_PATH) ? 426 : 404;
      res.writeHead(status, { "content-type": "text/plain", connection: "close" }).end(`${STATUS_CODES[status] ?? ""}\n`);
    });
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      void this.onUpgrade(req, socket, head);
    });
    server.on("clientError", (_err, socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, options.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => this.log.error({ err }, "ws hub server error"));
    this.server = server;
    this.wss = wss;
    const ping = options.pingIntervalMs ?? 30_000;
    if (ping > 0) {
      this.pingTimer = setInterval(() => this.pingRound(), ping);
      this.pingTimer.unref();
    }
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(1000, Math.min(this.limits.queueMaxAgeMs, 60_000)));
    this.sweepTimer.unref();
    this.log.info({ url: this.url() }, "ws hub listening");
  }

  /** Where the hub listens. */
  address(): { host: string; port: number } {
    const a = this.server?.address();
    if (a === undefined || a === null || typeof a === "string") throw new AgentError("INTERNAL", "the ws hub is not listening");
    return { host: a.address, port: a.port };
  }

  /** The base URL agents and remote controllers dial (ws:// or wss://). */
  url(): string {
    const { host, port } = this.address();
    return hostUrl(this.options?.tls ? "wss" : "ws", host, port);
  }

  /** Messages kept for a node and not yet acknowledged by it. */
  queued(node: string): number {
    return this.nodes.get(node)?.queue.length ?? 0;
  }

  /** Closes every socket (agents see 1001) and the listener. In-process links stay attached. */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    this.wss = undefined;
    clearInterval(this.pingTimer);
    clearInterval(this.sweepTimer);
    const sockets: WebSocket[] = [];
    for (const n of this.nodes.values()) {
      if (n.conn !== undefined) {
        n.conn.reason = "hub stopping";
        sockets.push(n.conn.ws);
      }
    }
    for (const r of this.remotes) sockets.push(r.ws);
    await Promise.all(
      sockets.map(
        (ws) =>
          new Promise<void>((resolve) => {
            if (ws.readyState === 3) {
              resolve();
              return;
            }
            const t = setTimeout(() => ws.terminate(), 1000);
            ws.once("close", () => {
              clearTimeout(t);
              resolve();
            });
            ws.close(1001, "hub stopping");
          }),
      ),
    );
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    this.log.info("ws hub stopped");
  }

  /** An in-process controller link: no socket, same semantics as a remote WsControllerLink. */
  link(): ControllerLink {
    let controller: Controller | undefined;
    let closed = false;
    return {
      kind: "ws",
      open: async (events: ControllerLinkEvents) => {
        if (closed) throw new AgentError("INTERNAL", "this ws hub link is closed");
        if (controller !== undefined) throw new AgentError("INTERNAL", "this ws hub link is already open");
        const c: Controller = {
          deliver: (node, kind, format, bytes) => {
            try {
              events.message({ node, kind, bytes, contentType: contentTypeOfFormat(format) });
            } catch (err) {
              this.log.error({ err, node, kind }, "in-process controller threw on a message");
            }
          },
          gone: (node, reason) => {
            try {
              events.gone?.(node, reason);
            } catch (err) {
              this.log.error({ err, node }, "in-process controller threw on gone");
            }
          },
        };
        controller = c;
        this.attachController(c);
      },
      send: async (target: BusTarget, bytes: Uint8Array, contentType: string, id?: string) => {
        if (closed) throw new AgentError("INTERNAL", "this ws hub link is closed");
        this.accept(target, this.formatFor(bytes, contentType), bytes, id);
      },
      close: async () => {
        closed = true;
        if (controller !== undefined) this.controllers.delete(controller);
        controller = undefined;
      },
    };
  }

  // ---- controllers --------------------------------------------------------------------------

  /** Hands a new controller the retained hello and heartbeat of every node, then gone() for those not connected. */
  private attachController(c: Controller): void {
    for (const n of this.nodes.values()) {
      if (n.hello) c.deliver(n.name, n.hello.kind, n.hello.format, n.hello.bytes);
      if (n.heartbeat) c.deliver(n.name, n.heartbeat.kind, n.heartbeat.format, n.heartbeat.bytes);
      if (n.seen && n.conn === undefined) c.gone(n.name, n.goneReason);
    }
    this.controllers.add(c);
  }

  private formatFor(bytes: Uint8Array, contentType: string): WireFormat {
    const format = formatOf(contentTypeOf(bytes, contentType));
    if (format === undefined) throw new AgentError("UNSUPPORTED_CONTENT_TYPE", `content type ${JSON.stringify(contentType)}`);
    return format;
  }

  /** Queues an envelope for the target's nodes (throws an AgentError when it refuses it). */
  private accept(target: BusTarget, format: WireFormat, bytes: Uint8Array, id: string | undefined): void {
    if (bytes.byteLength > this.limits.maxMessageBytes) {
      throw new AgentError("MESSAGE_TOO_LARGE", `message of ${bytes.byteLength} bytes exceeds the hub's limit of ${this.limits.maxMessageBytes}`);
    }
    if (bytes.byteLength === 0) throw new AgentError("INVALID_ENVELOPE", "empty message");
    // A JSON envelope travels in a text frame; invalid UTF-8 there would make the agent's socket fail on every redelivery.
    if (format === "json" && !isUtf8(bytes)) throw new AgentError("INVALID_ENVELOPE", "a JSON envelope must be UTF-8");
    let nodes: NodeState[];
    let source: InboundSource;
    if ("node" in target) {
      if (!BUS_NAME.test(target.node)) throw new AgentError("INVALID_REQUEST", `invalid node name ${JSON.stringify(target.node)}`);
      nodes = [this.nodeState(target.node)];
      source = "node";
    } else if ("group" in target) {
      if (!BUS_NAME.test(target.group)) throw new AgentError("INVALID_REQUEST", `invalid group name ${JSON.stringify(target.group)}`);
      nodes = [...(this.groups.get(target.group) ?? [])];
      source = "group";
    } else if (target.fleet === true) {
      nodes = [...this.nodes.values()].filter((n) => n.seen);
      source = "fleet";
    } else {
      throw new AgentError("INVALID_REQUEST", "a target names a node, a group or the fleet");
    }
    if (nodes.length === 0) {
      this.log.info({ target, id }, "no known node to deliver to; message dropped");
      return;
    }
    const frame = prefixed(sourceCode(source), bytes);
    const now = Date.now();
    for (const n of nodes) this.push(n, { frame, binary: format === "protobuf", id, at: now, seq: 0 });
  }

  // ---- per-node queues ----------------------------------------------------------------------

  private nodeState(name: string): NodeState {
    let n = this.nodes.get(name);
    if (n === undefined) {
      n = {
        name,
        groups: [],
        seen: false,
        queue: [],
        inflight: 0,
        ids: new Set(),
        conn: undefined,
        hello: undefined,
        heartbeat: undefined,
        goneReason: "not connected",
      };
      this.nodes.set(name, n);
    }
    return n;
  }

  private setGroups(n: NodeState, groups: readonly string[]): void {
    for (const g of n.groups) {
      const members = this.groups.get(g);
      members?.delete(n);
      if (members?.size === 0) this.groups.delete(g);
    }
    n.groups = groups;
    for (const g of groups) {
      let members = this.groups.get(g);
      if (members === undefined) {
        members = new Set();
        this.groups.set(g, members);
      }
      members.add(n);
    }
  }

  private push(n: NodeState, e: Entry): void {
    if (e.id !== undefined && n.ids.has(e.id)) {
      this.log.debug({ node: n.name, id: e.id }, "message already queued for the node; repeat ignored");
      return;
    }
    n.queue.push(e);
    if (e.id !== undefined) n.ids.add(e.id);
    while (n.queue.length > this.limits.queueLimit) this.dropHead(n, `queue limit of ${this.limits.queueLimit} messages`);
    this.pump(n);
  }

  private dropHead(n: NodeState, why: string): void {
    const e = n.queue.shift();
    if (e === undefined) return;
    if (e.seq !== 0) n.inflight -= 1;
    if (e.id !== undefined) n.ids.delete(e.id);
    this.log.warn({ node: n.name, id: e.id, why }, "dropped a message the node never acknowledged");
  }

  private expire(n: NodeState, now: number): void {
    for (let e = n.queue[0]; e !== undefined && now - e.at > this.limits.queueMaxAgeMs; e = n.queue[0]) {
      this.dropHead(n, `older than ${this.limits.queueMaxAgeMs} ms`);
    }
  }

  /** Sends what the node's connection has not had yet, in order. */
  private pump(n: NodeState): void {
    const conn = n.conn;
    if (conn === undefined || conn.ws.readyState !== 1) return;
    this.expire(n, Date.now());
    while (n.inflight < n.queue.length && n.inflight < this.limits.maxInFlight) {
      const e = n.queue[n.inflight];
      if (e === undefined) break;
      conn.sent += 1;
      e.seq = conn.sent;
      n.inflight += 1;
      conn.ws.send(e.frame, { binary: e.binary });
    }
  }

  /** Forgets what was in flight on a connection that is gone: all of it is sent again on the next one. */
  private resetInflight(n: NodeState): void {
    for (let i = 0; i < n.inflight; i++) {
      const e = n.queue[i];
      if (e !== undefined) e.seq = 0;
    }
    n.inflight = 0;
  }

  private onAck(conn: AgentConn, count: number): void {
    const n = conn.node;
    if (n.conn !== conn) return;
    for (let e = n.queue[0]; e !== undefined && e.seq !== 0 && e.seq <= count; e = n.queue[0]) {
      n.queue.shift();
      n.inflight -= 1;
      if (e.id !== undefined) n.ids.delete(e.id);
    }
    this.pump(n);
  }

  private sweep(): void {
    const now = Date.now();
    for (const n of this.nodes.values()) {
      this.expire(n, now);
      if (!n.seen && n.queue.length === 0) this.nodes.delete(n.name);
    }
  }

  private pingRound(): void {
    for (const n of this.nodes.values()) {
      const conn = n.conn;
      if (conn === undefined) continue;
      if (!conn.alive) {
        conn.reason = "no pong from the agent";
        this.log.warn({ node: n.name }, "agent did not answer a ping; dropping its connection");
        conn.ws.terminate();
        continue;
      }
      conn.alive = false;
      conn.ws.ping();
    }
    for (const r of this.remotes) {
      if (!r.alive) {
        this.log.warn("remote controller did not answer a ping; dropping its connection");
        r.ws.terminate();
        continue;
      }
      r.alive = false;
      r.ws.ping();
    }
  }

  // ---- sockets ------------------------------------------------------------------------------

  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", (err) => this.log.debug({ err: err.message }, "upgrade socket error"));
    try {
      const url = new URL(req.url ?? "/", "http://hub.invalid");
      const opts = this.options;
      if (url.pathname.startsWith(AGENT_PATH)) {
        let node: string;
        try {
          node = decodeURIComponent(url.pathname.slice(AGENT_PATH.length));
        } catch {
          node = "";
        }
        const groups = parseGroups(url.searchParams.get("groups") ?? "");
        if (!BUS_NAME.test(node) || groups === undefined) {
          this.log.warn({ path: url.pathname, groups: url.searchParams.get("groups") }, "refused an agent: invalid node or group name");
          refuse(socket, 400, "invalid node or group name");
          return;
        }
        if (opts?.authorizeAgent !== undefined && !(await opts.authorizeAgent(node, req.headers))) {
          this.log.warn({ node, remote: req.socket.remoteAddress }, "refused an agent: not authorized");
          refuse(socket, 401, "unauthorized");
          return;
        }
        const wss = this.wss;
        if (wss === undefined) return void socket.destroy();
        wss.handleUpgrade(req, socket, head, (ws) => this.onAgent(ws, node, groups));
      } else if (url.pathname === CONTROLLER_PATH) {
        if (opts?.authorizeController !== undefined && !(await opts.authorizeController(req.headers))) {
          this.log.warn({ remote: req.socket.remoteAddress }, "refused a controller: not authorized");
          refuse(socket, 401, "unauthorized");
          return;
        }
        const wss = this.wss;
        if (wss === undefined) return void socket.destroy();
        wss.handleUpgrade(req, socket, head, (ws) => this.onController(ws));
      } else {
        refuse(socket, 404, "not found");
      }
    } catch (err) {
      this.log.error({ err }, "ws hub upgrade failed");
      refuse(socket, 500, "internal error");
    }
  }

  private onAgent(ws: WebSocket, node: string, groups: readonly string[]): void {
    const n = this.nodeState(node);
    const old = n.conn;
    const conn: AgentConn = { ws, node: n, sent: 0, alive: true, reason: undefined };
    n.conn = conn;
    n.seen = true;
    this.setGroups(n, groups);
    this.resetInflight(n);
    if (old !== undefined) {
      this.log.warn({ node }, "a second connection for the node replaces the first");
      old.ws.close(CLOSE_REPLACED, "replaced by a newer connection for this node");
    }
    this.log.info({ node, groups, queued: n.queue.length }, "agent connected");
    ws.on("message", (data, isBinary) => this.onAgentFrame(conn, toBuffer(data), isBinary));
    ws.on("pong", () => {
      conn.alive = true;
    });
    ws.on("error", (err) => {
      conn.reason ??= err.message;
      this.log.warn({ node, err: err.message }, "agent socket error");
    });
    ws.on("close", (code, reasonBuf) => {
      if (n.conn !== conn) return; // replaced: the node is still connected
      n.conn = undefined;
      this.resetInflight(n);
      const reason = reasonBuf.toString("utf8");
      n.goneReason = conn.reason ?? `socket closed (${code}${reason ? `: ${reason}` : ""})`;
      this.log.info({ node, reason: n.goneReason, queued: n.queue.length }, "agent disconnected");
      for (const c of this.controllers) c.gone(node, n.goneReason);
    });
    this.pump(n);
  }

  private protocolError(ws: WebSocket, node: string, what: string): void {
    this.log.warn({ node, what }, "agent broke the ws framing; closing its connection");
    ws.close(1002, what.slice(0, 120));
  }

  private onAgentFrame(conn: AgentConn, buf: Buffer, isBinary: boolean): void {
    conn.alive = true;
    const n = conn.node;
    const first = buf[0];
    if (!isBinary && isControlByte(first)) {
      const text = buf.toString("utf8");
      const space = text.indexOf(" ");
      const word = space < 0 ? text : text.slice(0, space);
      const arg = space < 0 ? "" : text.slice(space + 1);
      if (word === "ack") {
        const count = /^\d{1,15}$/.test(arg) ? Number(arg) : Number.NaN;
        if (!(count <= conn.sent)) return this.protocolError(conn.ws, n.name, `bad ack ${JSON.stringify(arg.slice(0, 32))}`);
        this.onAck(conn, count);
      } else if (word === "groups") {
        const groups = parseGroups(arg);
        if (groups === undefined) {
          this.log.warn({ node: n.name, groups: arg.slice(0, 200) }, "agent sent invalid group names; closing its connection");
          conn.ws.close(CLOSE_GROUPS_INVALID, "invalid group name");
          return;
        }
        if (n.conn === conn) {
          this.setGroups(n, groups);
          this.log.info({ node: n.name, groups }, "agent changed its groups");
        }
        // The echo tells the agent the change is in effect (its setGroups() resolves on it).
        conn.ws.send(`groups ${groups.join(",")}`, { binary: false });
      } else {
        this.protocolError(conn.ws, n.name, `unknown control frame ${JSON.stringify(word.slice(0, 32))}`);
      }
      return;
    }
    const kind = kindOfCode(first);
    if (kind === undefined) return this.protocolError(conn.ws, n.name, "unknown kind code");
    const bytes = buf.subarray(1);
    if (bytes.byteLength > this.limits.maxMessageBytes) {
      this.log.warn({ node: n.name, bytes: bytes.byteLength }, "agent sent a message over the size limit; closing its connection");
      conn.ws.close(1009, "message too big");
      return;
    }
    const format: WireFormat = isBinary ? "protobuf" : "json";
    if (kind === "hello" || kind === "heartbeat") {
      // A copy: `bytes` may share the socket's read buffer, which must not be pinned for the node's lifetime.
      const kept: Retained = { kind, format, bytes: Buffer.from(bytes) };
      if (kind === "hello") n.hello = kept;
      else n.heartbeat = kept;
    }
    for (const c of this.controllers) c.deliver(n.name, kind, format, bytes);
  }

  private onController(ws: WebSocket): void {
    const r: RemoteController = {
      ws,
      alive: true,
      deliver: (node, kind, format, bytes) => {
        if (ws.readyState !== 1) return;
        if (ws.bufferedAmount > this.limits.controllerBufferLimit) {
          this.log.warn({ buffered: ws.bufferedAmount }, "remote controller too slow; dropping its connection");
          ws.close(CLOSE_TOO_SLOW, "too slow");
          return;
        }
        ws.send(encodeMessage(node, kind, format, bytes), { binary: true });
      },
      gone: (node, reason) => {
        if (ws.readyState === 1) ws.send(encodeGone(node, reason), { binary: true });
      },
    };
    this.log.info("remote controller connected");
    this.attachController(r);
    this.remotes.add(r);
    ws.send(Buffer.from([C_READY]), { binary: true });
    ws.on("pong", () => {
      r.alive = true;
    });
    ws.on("error", (err) => this.log.warn({ err: err.message }, "remote controller socket error"));
    ws.on("close", (code) => {
      this.controllers.delete(r);
      this.remotes.delete(r);
      this.log.info({ code }, "remote controller disconnected");
    });
    ws.on("message", (data, isBinary) => {
      r.alive = true;
      const buf = toBuffer(data);
      const frame = isBinary ? decodeSend(buf) : undefined;
      if (frame === undefined) {
        this.log.warn("remote controller broke the ws framing; closing its connection");
        ws.close(1002, "bad frame");
        return;
      }
      try {
        this.accept(frame.target, frame.format, frame.bytes, frame.id);
        ws.send(encodeAck(frame.seq), { binary: true });
      } catch (err) {
        const e = AgentError.from(err);
        this.log.warn({ err: e.message, target: frame.target, id: frame.id }, "refused a controller's message");
        ws.send(encodeNack(frame.seq, e.code, e.details), { binary: true });
      }
    });
  }
}
