/**
 * The controller's end of REST: for agents the controller can reach. Commands are POSTed to each
 * agent's /ironbus/v1/envelope (the in-line answer is delivered like any message from the agent), and
 * GET /ironbus/v1/events brings the rest (hello, heartbeats, progress, results), reconnecting with
 * backoff when the stream breaks. REST has no broker: a command for an agent that cannot be reached
 * fails to send, and the controller library retries it until its deadline.
 */
import { Agent as HttpAgent, request, type IncomingMessage } from "node:http";
import { backoffMs, type BusTarget, type ControllerLink, type ControllerLinkEvents } from "../../core/bus.js";
import { AgentError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { EVENTS_PATH, FrameReader } from "./events.js";

export interface RestAgentAddress {
  /** http://host:port */
  readonly url: string;
  /** The agent's token (sent as X-Ironbus-Token). */
  readonly token?: string;
  readonly groups?: readonly string[];
}

export interface RestControllerLinkOptions {
  /** The agents this controller drives, by node name. */
  readonly agents: Readonly<Record<string, RestAgentAddress>>;
  readonly log: Logger;
  /** Encoding of the event streams. */
  readonly format?: "json" | "protobuf";
  readonly maxMessageBytes?: number;
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
}

export class RestControllerLink implements ControllerLink {
  readonly kind = "rest";
  private readonly http = new HttpAgent({ keepAlive: true, maxSockets: 256 });
  private readonly log: Logger;
  private events: ControllerLinkEvents | undefined;
  private closed = false;
  private readonly streams = new Map<string, IncomingMessage>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly opts: RestControllerLinkOptions) {
    this.log = opts.log.child({ link: "rest-controller" });
  }

  async open(events: ControllerLinkEvents): Promise<void> {
    this.events = events;
    await Promise.all(Object.keys(this.opts.agents).map((node) => this.follow(node, 0)));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    for (const s of this.streams.values()) s.destroy();
    this.streams.clear();
    this.http.destroy();
  }

  async send(target: BusTarget, bytes: Uint8Array, contentType: string): Promise<void> {
    const nodes = this.resolve(target);
    if (nodes.length === 0) throw new AgentError("NOT_FOUND", `no REST agent for ${JSON.stringify(target)}`);
    await Promise.all(nodes.map((node) => this.post(node, bytes, contentType)));
  }

  private resolve(target: BusTarget): string[] {
    const all = Object.entries(this.opts.agents);
    if ("node" in target) return all.some(([n]) => n === target.node) ? [target.node] : [];
    if ("group" in target) return all.filter(([, a]) => a.groups?.includes(target.group) === true).map(([n]) => n);
    return all.map(([n]) => n);
  }

  private headers(node: string, extra: Record<string, string | number>): Record<string, string | number> {
    const token = this.opts.agents[node]?.token;
    return token === undefined ? extra : { ...extra, "X-Ironbus-Token": token };
  }

  private post(node: string, bytes: Uint8Array, contentType: string): Promise<void> {
    const address = this.opts.agents[node];
    if (address === undefined) return Promise.reject(new AgentError("NOT_FOUND", `no REST agent ${node}`));
    return new Promise((resolve, reject) => {
      const req = request(
        `${address.url}/ironbus/v1/envelope`,
        { method: "POST", agent: this.http, headers: this.headers(node, { "Content-Type": contentType, "Content-Length": bytes.byteLength }) },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            if (res.statusCode === 200) {
              this.events?.message({ node, kind: undefined, bytes: Buffer.concat(chunks), contentType: res.headers["content-type"] });
              resolve();
            } else if (res.statusCode === 204) {
              resolve();
            } else {
              reject(new AgentError("INVALID_REQUEST", `agent ${node} answered ${res.statusCode}: ${Buffer.concat(chunks).toString("utf8").slice(0, 200)}`));
            }
          });
        },
      );
      req.on("error", reject);
      req.end(bytes);
    });
  }

  /** Opens the event stream of one agent; resolves once it answered (or failed) the first time. */
  private follow(node: string, attempt: number): Promise<void> {
    const address = this.opts.agents[node];
    if (address === undefined || this.closed) return Promise.resolve();
    const format = this.opts.format ?? "json";
    const ct = format === "json" ? "application/vnd.ironbus.v1+json" : "application/vnd.ironbus.v1+protobuf";
    return new Promise((resolve) => {
      const retry = (reason: string): void => {
        resolve();
        if (this.closed) return;
        this.streams.delete(node);
        this.events?.gone?.(node, reason);
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          void this.follow(node, attempt + 1);
        }, backoffMs(attempt, this.opts.reconnectMinMs ?? 200, this.opts.reconnectMaxMs ?? 10_000));
        this.timers.add(timer);
      };
      const req = request(`${address.url}${EVENTS_PATH}?format=${format}`, { headers: this.headers(node, {}) }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          this.log.warn({ node, status: res.statusCode }, "event stream refused");
          retry(`event stream answered ${res.statusCode}`);
          return;
        }
        this.streams.set(node, res);
        resolve();
        const reader = new FrameReader(this.opts.maxMessageBytes ?? 16 * 1024 * 1024);
        res.on("data", (chunk: Buffer) => {
          let frames: Buffer[];
          try {
            frames = reader.push(chunk);
          } catch (err) {
            this.log.warn({ err, node }, "broken event stream");
            res.destroy();
            return;
          }
          for (const bytes of frames) this.events?.message({ node, kind: undefined, bytes, contentType: ct });
        });
        res.on("close", () => retry("event stream closed"));
        res.on("error", () => undefined);
      });
      req.on("error", (err) => {
        this.log.debug({ err, node }, "event stream failed");
        retry(err.message);
      });
      req.end();
    });
  }
}
