/**
 * A fake Ironic API for tests: a real HTTP(S) server on 127.0.0.1, port 0, that answers the ramdisk
 * endpoints the way Ironic 21.4+ does (facts from ironic/api/controllers/v1/ramdisk.py and the
 * conductor), and records every request it gets.
 *
 * - GET /                        version document; default_version.version = `version`
 * - GET /v1/lookup               406 above the max version, 404 below 1.22; 400 with neither addresses
 *                                nor node_uuid; 404 for an unknown node or while lookup is not
 *                                allowed (allowLookup()); 409 while locked (lockFor(n)); at 1.62+ the
 *                                token on the first lookup, then "******"
 * - POST /v1/heartbeat/<uuid>    202 empty; 404 unknown node; 400 for agent_version below 1.36 or
 *                                agent_verify_ca below 1.68, a callback_url other than the recorded
 *                                one, a missing or wrong token, http under requireTls, a changed
 *                                agent_verify_ca
 * - POST /v1/continue_inspection stores the data; at 1.84+ answers in lookup's shape (token issued)
 * - POST /inspector/v1/continue  stores the data; answers {"uuid"} (ironic-inspector's answer)
 *
 * `script(path, statuses)` makes the next requests to a path answer those statuses first.
 */
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { after } from "node:test";

export const FAKE_NODE_UUID = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

export interface FakeIronicOptions {
  /** Max API version, as GET / reports it. Default "1.82" (Ironic 21.4). */
  readonly version?: string;
  readonly nodeUuid?: string;
  /** The node's port MACs. */
  readonly macs?: readonly string[];
  /** Any MAC finds the node (the bin test cannot know the machine's MACs). */
  readonly anyMac?: boolean;
  /** Whether the node's provision state allows lookup; default true. */
  readonly lookupAllowed?: boolean;
  /** heartbeat_timeout in the lookup config; default 300. */
  readonly heartbeatTimeout?: number;
  /** A token set on the node before boot (vmedia/kernel): lookups answer "******". */
  readonly pregeneratedToken?: string;
  /** [agent]require_tls: refuse http:// callbacks. */
  readonly requireTls?: boolean;
  readonly tlsMinVersion?: string;
  /** Serve HTTPS with this pair. */
  readonly tls?: { readonly cert: string; readonly key: string };
}

/** A status (answered with an Ironic error body), or a status with a raw body. */
export type ScriptedAnswer = number | { readonly status: number; readonly body: string };

export interface Received {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly headers: IncomingHttpHeaders;
  readonly body: unknown;
  readonly rawBody: string;
  /** Date.now() when it arrived. */
  readonly at: number;
  status: number;
}

function parseVersion(text: string | undefined): { major: number; minor: number } | undefined {
  const m = /^(\d+)\.(\d+)$/.exec(text ?? "");
  return m === null ? undefined : { major: Number(m[1]), minor: Number(m[2]) };
}

export class FakeIronic extends EventEmitter {
  readonly received: Received[] = [];
  readonly version: string;
  readonly nodeUuid: string;
  /** The token Ironic knows for the node (issued on first lookup, or pregenerated). */
  token: string | undefined;
  agentUrl: string | undefined;
  agentVersion: string | undefined;
  agentVerifyCa: string | undefined;
  lookupAllowed: boolean;
  /** Stored inspection payloads. */
  readonly inspections: unknown[] = [];
  private conflicts = 0;
  private readonly scripted = new Map<string, ScriptedAnswer[]>();
  private server: Server | undefined;
  url = "";
  port = 0;

  private constructor(private readonly opts: FakeIronicOptions) {
    super();
    this.version = opts.version ?? "1.82";
    this.nodeUuid = opts.nodeUuid ?? FAKE_NODE_UUID;
    this.lookupAllowed = opts.lookupAllowed ?? true;
    this.token = opts.pregeneratedToken;
  }

  static async start(opts: FakeIronicOptions = {}): Promise<FakeIronic> {
    const fake = new FakeIronic(opts);
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      fake.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) fake.error(res, 500, `fake Ironic crashed: ${(err as Error).message}`);
      });
    };
    const server = opts.tls === undefined ? createHttpServer(handler) : createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handler);
    fake.server = server;
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    fake.port = (server.address() as AddressInfo).port;
    fake.url = `${opts.tls === undefined ? "http" : "https"}://127.0.0.1:${fake.port}`;
    return fake;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  allowLookup(allowed = true): void {
    this.lookupAllowed = allowed;
  }

  /** The next `n` lookups find the node locked (409). */
  lockFor(n: number): void {
    this.conflicts = n;
  }

  /** The next requests to `path` get these answers before normal handling. */
  script(path: string, answers: readonly ScriptedAnswer[]): void {
    this.scripted.set(path, [...answers]);
  }

  /** Ironic drops the token when the node finishes (active) or reboots. */
  forgetToken(): void {
    this.token = undefined;
  }

  lookups(): Received[] {
    return this.received.filter((r) => r.path === "/v1/lookup");
  }

  heartbeats(): Received[] {
    return this.received.filter((r) => r.path.startsWith("/v1/heartbeat/"));
  }

  accepted(): Received[] {
    return this.heartbeats().filter((r) => r.status === 202);
  }

  /** Resolves with the first request (already received or to come) that matches. */
  waitFor(match: (r: Received) => boolean, timeoutMs = 10_000, what = "request"): Promise<Received> {
    const found = this.received.find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off("request", onRequest);
        reject(new Error(`fake Ironic: no ${what} within ${timeoutMs} ms; got ${this.received.map((r) => `${r.method} ${r.path} ${r.status}`).join(", ")}`));
      }, timeoutMs);
      const onRequest = (r: Received): void => {
        if (!match(r)) return;
        clearTimeout(timer);
        this.off("request", onRequest);
        resolve(r);
      };
      this.on("request", onRequest);
    });
  }

  /** Resolves once `n` heartbeats were answered 202. */
  waitForAccepted(n: number, timeoutMs = 10_000): Promise<Received> {
    let seen = 0;
    return this.waitFor(
      (r) => r.path.startsWith("/v1/heartbeat/") && r.status === 202 && ++seen >= n,
      timeoutMs,
      `${n} accepted heartbeats`,
    );
  }

  private error(res: ServerResponse, status: number, faultstring: string): void {
    const body = JSON.stringify({ error_message: JSON.stringify({ faultcode: status >= 500 ? "Server" : "Client", faultstring, debuginfo: null }) });
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  }

  private json(res: ServerResponse, status: number, value: unknown): void {
    const body = JSON.stringify(value);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  }

  /** Lookup's answer; at 1.62 and later with the token (issued now, or "******"). */
  private lookupShape(withToken: boolean): unknown {
    return {
      node: {
        uuid: this.nodeUuid,
        properties: { cpu_arch: "x86_64", root_device: { name: "/dev/loop0" } },
        instance_info: {},
        driver_internal_info: {},
        links: [{ href: `${this.url}/v1/nodes/${this.nodeUuid}`, rel: "self" }],
      },
      config: {
        metrics: { backend: "noop", prepend_host: false, prepend_uuid: false, prepend_host_reverse: true, global_prefix: null },
        metrics_statsd: { statsd_host: "localhost", statsd_port: 8125 },
        heartbeat_timeout: this.opts.heartbeatTimeout ?? 300,
        agent_token: withToken ? this.issueToken() : null,
        agent_token_required: true,
        disable_deep_image_inspection: false,
        permitted_image_formats: ["raw", "gpt", "qcow2", "iso"],
        enable_bios_bootloader_install: false,
        ...(this.opts.tlsMinVersion === undefined ? {} : { tls_min_version: this.opts.tlsMinVersion }),
      },
    };
  }

  /** A new token on the first call, "******" once the node has one (Ironic's get_node_with_token). */
  private issueToken(): string {
    if (this.token !== undefined) return "******";
    this.token = randomBytes(32).toString("base64url");
    return this.token;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://fake");
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const rawBody = Buffer.concat(chunks).toString("utf8");
    let body: unknown;
    try {
      body = rawBody === "" ? undefined : (JSON.parse(rawBody) as unknown);
    } catch {
      body = rawBody;
    }
    const record: Received = {
      method: req.method ?? "GET",
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body,
      rawBody,
      at: Date.now(),
      status: 0,
    };
    this.received.push(record);
    res.on("finish", () => {
      record.status = res.statusCode;
      this.emit("request", record);
    });
    const scripted = this.scripted.get(url.pathname);
    const forced = scripted?.shift();
    if (typeof forced === "number") {
      this.error(res, forced, `scripted ${forced}`);
      return;
    }
    if (forced !== undefined) {
      res.writeHead(forced.status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(forced.body) });
      res.end(forced.body);
      return;
    }
    this.route(record, res);
  }

  private route(r: Received, res: ServerResponse): void {
    const max = parseVersion(this.version);
    if (max === undefined) throw new Error(`bad fake version ${this.version}`);
    const asked = r.headers["x-openstack-ironic-api-version"];
    const requested = typeof asked === "string" ? parseVersion(asked) : { major: 1, minor: 1 };
    if (requested === undefined) return this.error(res, 400, `Invalid value for X-OpenStack-Ironic-API-Version header: ${String(asked)}`);
    if (requested.major !== 1 || requested.minor > max.minor) {
      return this.error(res, 406, `Version ${String(asked)} was requested but the minor version is not supported by this service. The supported version range is: [1.1, ${this.version}].`);
    }
    const v = requested.minor;

    if (r.method === "GET" && r.path === "/") {
      const version = { id: "v1", links: [{ href: `${this.url}/v1/`, rel: "self" }], status: "CURRENT", min_version: "1.1", version: this.version };
      return this.json(res, 200, { name: "OpenStack Ironic API", description: "fake", default_version: version, versions: [version] });
    }
    if (r.method === "GET" && r.path === "/v1/lookup") {
      if (v < 22) return this.error(res, 404, "Not Found");
      const addresses = (r.query["addresses"] ?? "").split(",").map((a) => a.trim().toLowerCase()).filter((a) => a !== "");
      const uuid = r.query["node_uuid"];
      if (addresses.length === 0 && uuid === undefined) return this.error(res, 400, "Incomplete lookup request: no MAC address and no node UUID");
      const macs = (this.opts.macs ?? []).map((m) => m.toLowerCase());
      const found = uuid !== undefined ? uuid === this.nodeUuid : this.opts.anyMac === true || addresses.some((a) => macs.includes(a));
      if (!found || !this.lookupAllowed) return this.error(res, 404, "Not found");
      if (this.conflicts > 0) {
        this.conflicts -= 1;
        return this.error(res, 409, `Node ${this.nodeUuid} is locked by host conductor, please retry after the current operation is completed.`);
      }
      return this.json(res, 200, this.lookupShape(v >= 62));
    }
    const hb = /^\/v1\/heartbeat\/([^/]+)$/.exec(r.path);
    if (r.method === "POST" && hb !== null) {
      if (v < 22) return this.error(res, 404, "Not Found");
      if (hb[1] !== this.nodeUuid) return this.error(res, 404, `Node ${hb[1]} could not be found.`);
      if (r.headers["content-type"] !== "application/json") return this.error(res, 415, "Unsupported Media Type");
      const b = (typeof r.body === "object" && r.body !== null ? r.body : {}) as Record<string, unknown>;
      const callback = b["callback_url"];
      if (typeof callback !== "string") return this.error(res, 400, "Missing argument: \"callback_url\"");
      if (b["agent_version"] !== undefined && v < 36) return this.error(res, 400, "Field \"agent_version\" not recognised");
      if (b["agent_verify_ca"] !== undefined && v < 68) return this.error(res, 400, "Field \"agent_verify_ca\" not recognised in this version");
      if (this.agentUrl !== undefined && this.agentUrl !== callback) return this.error(res, 400, "Detected change in ramdisk provided \"callback_url\"");
      if (b["agent_token"] === undefined) return this.error(res, 400, "Agent token is required for heartbeat processing.");
      if (this.token === undefined || b["agent_token"] !== this.token) return this.error(res, 400, "Invalid or missing agent token received.");
      if (this.opts.requireTls === true && !callback.startsWith("https://")) return this.error(res, 400, "TLS is required by configuration");
      const ca = b["agent_verify_ca"];
      if (typeof ca === "string" && this.agentVerifyCa !== undefined && this.agentVerifyCa.trim() !== ca.trim()) {
        return this.error(res, 400, "Detected change in ramdisk provided \"agent_verify_ca\"");
      }
      this.agentUrl = callback;
      this.agentVersion = typeof b["agent_version"] === "string" ? b["agent_version"] : undefined;
      if (typeof ca === "string") this.agentVerifyCa = ca;
      res.writeHead(202, { "Content-Length": 0 });
      res.end();
      return;
    }
    if (r.method === "POST" && r.path === "/v1/continue_inspection") {
      this.inspections.push(r.body);
      if (v >= 84) return this.json(res, 200, this.lookupShape(true));
      return this.json(res, 200, { uuid: this.nodeUuid });
    }
    if (r.method === "POST" && r.path === "/inspector/v1/continue") {
      this.inspections.push(r.body);
      return this.json(res, 200, { uuid: this.nodeUuid });
    }
    return this.error(res, 404, "The resource could not be found.");
  }
}

/**
 * Fake Ironics for one test file, closed when the file ends: `const fake = fakeIronics([MAC])`, then
 * `await fake({...})` in each test.
 */
export function fakeIronics(macs: readonly string[]): (opts?: FakeIronicOptions) => Promise<FakeIronic> {
  const started: FakeIronic[] = [];
  after(async () => {
    await Promise.all(started.map((f) => f.close()));
  });
  return async (opts = {}) => {
    const f = await FakeIronic.start({ macs: [...macs], ...opts });
    started.push(f);
    return f;
  };
}

/** A loopback URL nothing listens on: connections are refused. */
export async function refusedUrl(): Promise<string> {
  const srv = createHttpServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}
