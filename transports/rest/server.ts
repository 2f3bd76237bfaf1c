/**
 * The REST transport: IPA's v1 API, route for route and fault for fault, so an unmodified Ironic can
 * drive the agent; plus POST /ironbus/v1/envelope, where the same commands arrive as JSON or protobuf
 * envelopes like on every other transport.
 */
import { timingSafeEqual } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { JsonObject } from "../../core/envelope.js";
import { AgentError, type FaultJson } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import type { AgentPort, Transport } from "../../core/transport.js";
import { EVENTS_PATH, EventStream } from "./events.js";

export interface RestTlsOptions {
  readonly cert: string;
  readonly key: string;
  readonly minVersion?: "TLSv1.2" | "TLSv1.3";
}

export interface RestOptions {
  readonly host: string;
  readonly port: number;
  readonly log: Logger;
  readonly tls?: RestTlsOptions | undefined;
  /** Require the token on GET /v1/commands too (IPA ≥ 12 behaviour); otherwise a GET may omit it. */
  readonly requireTokenOnGet?: boolean;
  /** Heartbeat interval on GET /ironbus/v1/events streams, in ms (default 30 s). */
  readonly heartbeatIntervalMs?: number;
}

const DOCS_URL = "https://docs.openstack.org/ironic-python-agent/";
const ENVELOPE_PATH = "/ironbus/v1/envelope";
/** How much of a POST body is read while busy, to find a command allowed to run meanwhile. */
const BUSY_PEEK_BYTES = 64 * 1024;

const NOT_FOUND =
  "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";
const NOT_ALLOWED = "The method is not allowed for the requested URL.";

class HttpFault extends Error {
  constructor(
    readonly status: number,
    readonly fault: FaultJson,
  ) {
    super(fault.faultstring);
  }
}

function fault(status: number, faultstring: string): HttpFault {
  return new HttpFault(status, { faultcode: status >= 500 ? "Server" : "Client", faultstring });
}

function tokenMatches(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** IPA's POST body: `{"name": "<ext>.<cmd>", "params": {...}}` (an optional `id` is ours). */
function isCommandBody(value: unknown): value is JsonObject & { name: string; params: JsonObject } {
  return isJsonObject(value) && typeof value["name"] === "string" && isJsonObject(value["params"]);
}

export class RestTransport implements Transport {
  readonly kind = "rest";
  private server: Server | undefined;
  private agent: AgentPort | undefined;
  private readonly log: Logger;
  private readonly streams = new Set<EventStream>();

  constructor(private readonly opts: RestOptions) {
    this.log = opts.log.child({ transport: "rest" });
  }

  /** Where the server listens; valid after start(). */
  address(): AddressInfo {
    const addr = this.server?.address();
    if (addr === null || addr === undefined || typeof addr === "string") throw new AgentError("INTERNAL", "REST transport is not listening");
    return addr;
  }

  get scheme(): "http" | "https" {
    return this.opts.tls === undefined ? "http" : "https";
  }

  async start(agent: AgentPort): Promise<void> {
    this.agent = agent;
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      this.handle(req, res, agent).catch((err: unknown) => {
        if (req.destroyed || res.destroyed || (err as NodeJS.ErrnoException).code === "ECONNRESET") {
          this.log.debug({ err: { message: (err as Error).message } }, "client went away mid-request");
          return;
        }
        this.log.error({ err }, "unhandled error in request handler");
        if (!res.headersSent) this.sendJson(res, 500, { faultcode: "Server", faultstring: "500 Internal Server Error" });
        else res.destroy();
      });
    };
    const tls = this.opts.tls;
    const server =
      tls === undefined ? createHttpServer(handler) : createHttpsServer({ cert: tls.cert, key: tls.key, minVersion: tls.minVersion ?? "TLSv1.2" }, handler);
    server.on("clientError", (err, socket) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ECONNRESET" || code === "HPE_INVALID_EOF_STATE") {
        this.log.debug({ code }, "client closed the connection mid-request");
        socket.destroy();
        return;
      }
      this.log.warn({ err: { message: err.message, code } }, "malformed HTTP request");
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      const body = JSON.stringify({ faultcode: "Client", faultstring: "400 Bad Request: The request could not be parsed." });
      socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    server.keepAliveTimeout = 65_000;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => this.log.error({ err }, "REST server error"));
    const { address, port } = this.address();
    this.log.info({ address, port, scheme: this.scheme }, "REST API listening");
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server === undefined) return;
    for (const stream of [...this.streams]) stream.end();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      setTimeout(() => server.closeAllConnections(), 2000).unref();
    });
  }

  private sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...extraHeaders });
    res.end(text);
  }

  private redirect(req: IncomingMessage, res: ServerResponse, path: string, query: string): void {
    const location = `${this.baseUrl(req)}${path}${query}`;
    const html =
      `<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n` +
      `<p>You should be redirected automatically to the target URL: <a href="${location}">${location}</a>. If not, click the link.\n`;
    res.writeHead(308, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(html), Location: location });
    res.end(html);
  }

  private baseUrl(req: IncomingMessage): string {
    const host = req.headers.host ?? `${this.opts.host}:${this.opts.port}`;
    return `${this.scheme}://${host}`;
  }

  private readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
    const declared = Number(req.headers["content-length"] ?? "0");
    if (declared > limit) return Promise.reject(fault(413, `413 Request Entity Too Large: body of ${declared} bytes exceeds the limit of ${limit}`));
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        if (size > limit) {
          cleanup();
          req.resume();
          reject(fault(413, `413 Request Entity Too Large: body exceeds the limit of ${limit} bytes`));
          return;
        }
        chunks.push(chunk);
      };
      const onEnd = (): void => {
        cleanup();
        resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onAborted = (): void => onError(Object.assign(new Error("client closed the request"), { code: "ECONNRESET" }));
      const cleanup = (): void => {
        req.off("data", onData);
        req.off("end", onEnd);
        req.off("error", onError);
        req.off("close", onClose);
      };
      const onClose = (): void => {
        if (!req.complete) onAborted();
      };
      req.on("data", onData);
      req.on("end", onEnd);
      req.on("error", onError);
      req.on("close", onClose);
    });
  }

  private checkToken(agent: AgentPort, query: URLSearchParams, method: string): void {
    const expected = agent.token();
    const given = query.get("agent_token");
    if (expected === undefined) {
      if (agent.standalone) return;
      throw fault(401, "401 Unauthorized: Token invalid.");
    }
    if (given === null || given === "") {
      // Ironic before the 2023 releases (Debian's 21.x) never sends the token on GET.
      if (method === "GET" && this.opts.requireTokenOnGet !== true) return;
      throw fault(401, "401 Unauthorized: Token invalid.");
    }
    if (!tokenMatches(given, expected)) throw fault(401, "401 Unauthorized: Token invalid.");
  }

  private async handle(req: IncomingMessage, res: ServerResponse, agent: AgentPort): Promise<void> {
    const method = req.method ?? "GET";
    // A request target is origin-form here ("/path?query"): split it rather than build a URL object
    // per request; the path is matched literally, as IPA's router does.
    const target = req.url ?? "/";
    const q = target.indexOf("?");
    const pathname = q < 0 ? target : target.slice(0, q);
    const query = q < 0 ? "" : target.slice(q);
    const searchParams = new URLSearchParams(query);
    try {
      if (!pathname.startsWith("/")) throw fault(400, "400 Bad Request: The request URL could not be parsed.");
      let path = pathname;
      if (path === "/") return this.onlyGet(method, () => this.sendJson(res, 200, this.root(req)));
      if (path === "/v1") return this.redirect(req, res, "/v1/", query);
      if (path === "/v1/") return this.onlyGet(method, () => this.sendJson(res, 200, this.v1(req)));
      if (path === ENVELOPE_PATH) return await this.onEnvelope(req, res, agent, method, searchParams);
      if (path === EVENTS_PATH) return this.onEvents(req, res, agent, method, searchParams);
      if (path.startsWith("/v1/")) path = path.slice(3);
      if (path === "/status") {
        return this.onlyGet(method, () => this.sendJson(res, 200, { started_at: agent.startedAt, version: agent.version }));
      }
      if (path === "/commands") return this.redirect(req, res, `${pathname}/`, query);
      if (path === "/commands/") {
        if (method === "GET") {
          this.checkToken(agent, searchParams, method);
          return this.sendJson(res, 200, { commands: agent.list().map((h) => h.toJSON()) });
        }
        if (method === "POST") return await this.onPost(req, res, agent, searchParams);
        throw fault(405, `405 Method Not Allowed: ${NOT_ALLOWED}`);
      }
      if (path.startsWith("/commands/") && path.indexOf("/", "/commands/".length) < 0) {
        if (method !== "GET") throw fault(405, `405 Method Not Allowed: ${NOT_ALLOWED}`);
        this.checkToken(agent, searchParams, method);
        const id = safeDecode(path.slice("/commands/".length));
        const handle = agent.get(id);
        if (handle === undefined) throw fault(404, `Not found: Command Result with id ${id} not found.`);
        if (searchParams.get("wait")?.toLowerCase() === "true") await handle.done;
        return this.sendJson(res, 200, handle.toJSON());
      }
      throw fault(404, `404 Not Found: ${NOT_FOUND}`);
    } catch (err) {
      const f = err instanceof HttpFault ? err : err instanceof AgentError ? new HttpFault(err.status, err.toFault()) : undefined;
      if (f === undefined) throw err;
      this.log.info({ method, path: pathname, status: f.status, fault: f.fault.faultstring }, "request refused");
      // A refused body may still be arriving; do not keep the connection for it.
      const close = f.status === 413 ? { Connection: "close" } : {};
      this.sendJson(res, f.status, f.fault, close);
    }
  }

  private onlyGet(method: string, answer: () => void): void {
    if (method !== "GET" && method !== "HEAD") throw fault(405, `405 Method Not Allowed: ${NOT_ALLOWED}`);
    answer();
  }

  private async onPost(req: IncomingMessage, res: ServerResponse, agent: AgentPort, query: URLSearchParams): Promise<void> {
    this.checkToken(agent, query, "POST");
    // IPA answers 409 to every POST while busy, whatever its body. Only a small, valid command body is
    // read then, so the router can let through the commands made to run meanwhile (agent.cancel_command).
    const busy = agent.busyWith();
    let raw: Buffer;
    try {
      raw = await this.readBody(req, busy === undefined ? agent.maxMessageBytes : BUSY_PEEK_BYTES);
    } catch (err) {
      if (busy !== undefined && err instanceof HttpFault && err.status === 413) throw new AgentError("AGENT_BUSY", `executing command ${busy}`);
      throw err;
    }
    let body: unknown;
    let parseError: string | undefined;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch (err) {
      parseError = (err as Error).message;
    }
    const valid = isCommandBody(body);
    if (busy !== undefined && !valid) throw new AgentError("AGENT_BUSY", `executing command ${busy}`);
    if (parseError !== undefined) throw fault(400, `400 Bad Request: Failed to decode JSON object: ${parseError}`);
    if (!isCommandBody(body)) throw fault(400, "400 Bad Request: Missing or invalid name or params");
    const id = typeof body["id"] === "string" && body["id"] !== "" ? body["id"] : undefined;
    const handle = await agent.submit({ id, name: body["name"], params: body["params"], wait: query.get("wait")?.toLowerCase() === "true" });
    this.sendJson(res, 200, handle.toJSON());
  }

  private async onEnvelope(req: IncomingMessage, res: ServerResponse, agent: AgentPort, method: string, query: URLSearchParams): Promise<void> {
    if (method !== "POST") throw fault(405, `405 Method Not Allowed: ${NOT_ALLOWED}`);
    const header = req.headers["x-ironbus-token"];
    if (typeof header === "string" && !query.has("agent_token")) query.set("agent_token", header);
    this.checkToken(agent, query, "POST");
    let raw: Buffer;
    try {
      raw = await this.readBody(req, agent.maxMessageBytes);
    } catch (err) {
      if (!(err instanceof HttpFault && err.status === 413)) throw err;
      // The envelope path answers in envelopes: let the codec refuse it by size, in the caller's encoding.
      const reply = await agent.handleEnvelope(new Uint8Array(agent.maxMessageBytes + 1), req.headers["content-type"]);
      if (reply === undefined) throw err;
      res.writeHead(200, { "Content-Type": reply.contentType, "Content-Length": reply.bytes.byteLength, Connection: "close" });
      res.end(reply.bytes);
      return;
    }
    const reply = await agent.handleEnvelope(raw, req.headers["content-type"]);
    if (reply === undefined) {
      res.writeHead(204).end();
      return;
    }
    res.writeHead(200, { "Content-Type": reply.contentType, "Content-Length": reply.bytes.byteLength });
    res.end(reply.bytes);
  }

  /** GET /ironbus/v1/events: the pushed messages (hello, heartbeats, progress, results) as a framed stream. */
  private onEvents(req: IncomingMessage, res: ServerResponse, agent: AgentPort, method: string, query: URLSearchParams): void {
    if (method !== "GET") throw fault(405, `405 Method Not Allowed: ${NOT_ALLOWED}`);
    const header = req.headers["x-ironbus-token"];
    if (typeof header === "string" && !query.has("agent_token")) query.set("agent_token", header);
    // The stream carries every result: it needs the token like a POST does.
    this.checkToken(agent, query, "POST");
    const format = query.get("format") ?? "json";
    if (format !== "json" && format !== "protobuf") throw fault(400, "400 Bad Request: format must be json or protobuf");
    const stream = new EventStream(res, agent, format, this.opts.heartbeatIntervalMs ?? 30_000, this.log, () => this.streams.delete(stream));
    this.streams.add(stream);
  }

  private links(req: IncomingMessage): { href: string; rel: string; type?: string }[] {
    return [
      { href: `${this.baseUrl(req)}/v1`, rel: "self" },
      { href: DOCS_URL, rel: "describedby", type: "text/html" },
    ];
  }

  private root(req: IncomingMessage): JsonObject {
    const v1 = { id: "v1", links: this.links(req) };
    return {
      name: "OpenStack Ironic Python Agent API",
      description: "Ironic Python Agent is a provisioning agent for OpenStack Ironic",
      versions: [v1],
      default_version: v1,
    };
  }

  private v1(req: IncomingMessage): JsonObject {
    const base = this.baseUrl(req);
    return {
      commands: [
        { href: `${base}/v1/commands`, rel: "self" },
        { href: `${base}/commands`, rel: "bookmark" },
      ],
      status: [
        { href: `${base}/v1/status`, rel: "self" },
        { href: `${base}/status`, rel: "bookmark" },
      ],
      media_types: [{ base: "application/json", type: "application/vnd.openstack.ironic-python-agent.v1+json" }],
      id: "v1",
      links: this.links(req),
    };
  }
}
