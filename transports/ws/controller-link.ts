/**
 * A remote controller's end of the WebSocket bus (a CLI or a controller in another process than the
 * hub): dials /ironbus/v1/controller and behaves like the hub's in-process link (WsHub.link()).
 * Reconnects with backoff until close(); the hub then hands over its retained frames again.
 * `ws` is loaded on open() only.
 */
import { type BusTarget, type ControllerLink, type ControllerLinkEvents } from "../../core/bus.js";
import { contentTypeOf, formatOf } from "../../core/codec.js";
import { AgentError } from "../../core/errors.js";
import {
  CONTROLLER_PATH,
  ReconnectingClient,
  type WsClientOptions,
  contentTypeOfFormat,
  decodeHubToController,
  encodeSend,
  joinUrl,
} from "./frames.js";

export type { WsTlsOptions } from "./frames.js";
export type WsControllerLinkOptions = WsClientOptions;

interface Pending {
  resolve(): void;
  reject(err: Error): void;
}

export class WsControllerLink implements ControllerLink {
  readonly kind = "ws";
  private readonly client: ReconnectingClient;
  private events: ControllerLinkEvents | undefined;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private ready: Pending | undefined;

  constructor(private readonly options: WsControllerLinkOptions) {
    const log = options.log.child({ transport: "ws", role: "controller" });
    this.client = new ReconnectingClient(
      { ...options, log },
      {
        url: () => joinUrl(options.url, CONTROLLER_PATH),
        onOpen: () => log.info("connected to the ws hub"),
        onMessage: (data) => this.onMessage(data),
        onClose: (code, _reason, description) => {
          log.warn({ code, reason: description }, "ws hub connection lost");
          this.failPending(`the hub connection ${description} before the hub confirmed the message`);
          return undefined;
        },
      },
      "ws controller link",
    );
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** Resolves once connected and the hub has handed over the retained hello and heartbeat of every node. */
  async open(events: ControllerLinkEvents): Promise<void> {
    joinUrl(this.options.url, CONTROLLER_PATH);
    this.events = events;
    const ready = new Promise<void>((resolve, reject) => {
      this.ready = { resolve, reject };
    });
    ready.catch(() => undefined);
    const timeoutMs = this.options.connectTimeoutMs ?? 10_000;
    const started = Date.now();
    try {
      await this.client.open();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new AgentError("BUS_UNAVAILABLE", `ws controller link: the hub did not hand over its retained frames within ${timeoutMs} ms`)),
          Math.max(0, timeoutMs - (Date.now() - started)),
        );
      });
      try {
        await Promise.race([ready, timeout]);
      } finally {
        clearTimeout(timer);
      }
    } catch (err) {
      this.ready = undefined;
      await this.client.close();
      this.events = undefined;
      throw err;
    }
  }

  /** Resolves when the hub has queued the envelope for the target's nodes; rejects when it refused it or the socket went down first. */
  send(target: BusTarget, bytes: Uint8Array, contentType: string, id?: string): Promise<void> {
    if (bytes.byteLength > this.client.maxMessageBytes) {
      return Promise.reject(new AgentError("MESSAGE_TOO_LARGE", `message of ${bytes.byteLength} bytes exceeds the limit of ${this.client.maxMessageBytes}`));
    }
    const format = formatOf(contentTypeOf(bytes, contentType));
    if (format === undefined) return Promise.reject(new AgentError("UNSUPPORTED_CONTENT_TYPE", `content type ${JSON.stringify(contentType)}`));
    if (!this.client.connected) return Promise.reject(new AgentError("BUS_UNAVAILABLE", "ws controller link is not connected to the hub"));
    this.seq = this.seq >= 0xffffffff ? 1 : this.seq + 1;
    const seq = this.seq;
    let frame: Buffer;
    try {
      frame = encodeSend(seq, target, format, bytes, id);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.client.send(frame, true).catch((err: unknown) => {
        if (this.pending.delete(seq)) reject(AgentError.from(err));
      });
    });
  }

  async close(): Promise<void> {
    await this.client.close();
    this.failPending("the link was closed before the hub confirmed the message");
    this.events = undefined;
  }

  private failPending(why: string): void {
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const p of waiting) p.reject(new AgentError("BUS_UNAVAILABLE", why));
  }

  private onMessage(data: Buffer): void {
    const f = decodeHubToController(data);
    if (f === undefined) {
      this.options.log.warn({ byte: data[0] }, "ws controller link: malformed frame from the hub; ignored");
      return;
    }
    switch (f.type) {
      case "message":
        this.events?.message({ node: f.node, kind: f.kind, bytes: f.bytes, contentType: contentTypeOfFormat(f.format) });
        break;
      case "gone":
        this.events?.gone?.(f.node, f.reason);
        break;
      case "ready":
        this.ready?.resolve();
        this.ready = undefined;
        break;
      case "ack": {
        const p = this.pending.get(f.seq);
        this.pending.delete(f.seq);
        p?.resolve();
        break;
      }
      case "nack": {
        const p = this.pending.get(f.seq);
        this.pending.delete(f.seq);
        p?.reject(new AgentError(f.code, `hub refused the message: ${f.reason}`));
        break;
      }
    }
  }
}
