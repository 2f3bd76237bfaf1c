/**
 * GET /ironbus/v1/events: what the buses push (hello, heartbeats, progress, results), as one long HTTP
 * response, so a controller that can reach the agent gets the same messages over REST as over a bus.
 * Each message is a frame: a 4-byte big-endian length, then one envelope in the encoding asked for
 * (`?format=json|protobuf`, default json). docs/rest-api.md describes it.
 */
import { randomUUID } from "node:crypto";
import type { ServerResponse } from "node:http";
import type { WireFormat } from "../../core/codec.js";
import type { Envelope } from "../../core/envelope.js";
import type { Logger } from "../../core/log.js";
import type { AgentPort } from "../../core/transport.js";

export const EVENTS_PATH = "/ironbus/v1/events";

export const STREAM_TYPES: Readonly<Record<WireFormat, string>> = {
  json: "application/vnd.ironbus.v1.stream+json",
  protobuf: "application/vnd.ironbus.v1.stream+protobuf",
};

/** A frame: length (u32 BE) + bytes. */
export function frame(bytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + bytes.byteLength);
  out.writeUInt32BE(bytes.byteLength, 0);
  out.set(bytes, 4);
  return out;
}

/** Splits a byte stream into frames; keeps the incomplete tail for the next chunk. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.byteLength === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    while (this.buf.byteLength >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > this.maxBytes) throw new RangeError(`frame of ${len} bytes exceeds ${this.maxBytes}`);
      if (this.buf.byteLength < 4 + len) break;
      out.push(this.buf.subarray(4, 4 + len));
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}

/** One open event stream; ended by the client going away or by the transport stopping. */
export class EventStream {
  private readonly unsubscribe: (() => void)[];
  private readonly timer: NodeJS.Timeout;
  private seq = 0;
  private closed = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly agent: AgentPort,
    private readonly format: WireFormat,
    heartbeatMs: number,
    private readonly log: Logger,
    onClose: () => void,
  ) {
    res.writeHead(200, { "Content-Type": STREAM_TYPES[format], "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff" });
    this.unsubscribe = [
      agent.onProgress((p) => this.push({ v: 1, id: randomUUID(), kind: "progress", correlation_id: p.command_id, body: p })),
      agent.onFinished((r) => this.push({ v: 1, id: randomUUID(), kind: "result", correlation_id: r.id, body: r })),
    ];
    this.timer = setInterval(() => this.heartbeat(), heartbeatMs);
    this.timer.unref();
    res.on("close", () => {
      this.close();
      onClose();
    });
    void agent.hello().then(
      (hello) => {
        this.push({ v: 1, id: randomUUID(), kind: "hello", issued_at: Date.now(), body: hello });
        this.heartbeat();
      },
      (err: unknown) => log.warn({ err }, "could not build the hello for an event stream"),
    );
  }

  private heartbeat(): void {
    this.push({ v: 1, id: randomUUID(), kind: "heartbeat", issued_at: Date.now(), body: this.agent.heartbeat(this.seq++) });
  }

  private push(env: Envelope): void {
    if (this.closed) return;
    if (this.agent.node !== undefined) env.node = this.agent.node;
    try {
      this.res.write(frame(this.agent.seal(env, this.format).bytes));
    } catch (err) {
      this.log.warn({ err }, "event stream write failed");
      this.end();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const u of this.unsubscribe) u();
  }

  end(): void {
    this.close();
    this.res.end();
  }
}
