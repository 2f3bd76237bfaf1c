/**
 * A small HTTP/1.1 GET client for images, on node:net and node:tls.
 *
 * Why not undici or node:http: both hand every socket read to JavaScript as a new 64 KiB Buffer. At
 * 400 MB/s that is thousands of short-lived buffers a second, which V8 only collects when their total
 * passes its external-memory threshold: the agent's RSS grew by ~50 MiB during a 1 GiB write, and the
 * garbage cost throughput. Here the socket reads into one buffer (`onread`), the body is handed to the
 * consumer as views of it, and the consumer copies what it keeps at once; when it asks to wait, the
 * socket is paused (TCP backpressure) and the unread rest is set aside. (Through an https proxy the
 * TLS socket cannot use `onread`; it then falls back to ordinary 'data' events.)
 *
 * Supported: http and https (certificates checked unless `insecure`), Content-Length, chunked and
 * read-until-close bodies, redirects (Authorization dropped when the origin changes), http proxies
 * (absolute-form requests for http targets, CONNECT tunnels for https), a connect timeout, an idle
 * timeout for the headers and for each piece of the body (suspended while the consumer makes the
 * socket wait), and an AbortSignal.
 */
import { connect as netConnect, isIP, type OnReadOpts, type Socket } from "node:net";
import { type ConnectionOptions, connect as tlsConnect, type TLSSocket } from "node:tls";

/** tls.connect takes `onread` as net.connect does (Node >= 12.3); @types/node does not say so. */
function tlsWithOnread(opts: ConnectionOptions & { onread: OnReadOpts }, onSecure: () => void): TLSSocket {
  return tlsConnect(opts, onSecure);
}

const READ_BUFFER = 1024 * 1024;
const MAX_HEADER_BYTES = 64 * 1024;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export class HttpError extends Error {
  override readonly name = "HttpError";
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Receives body bytes: a view valid only during the call. Return a promise to make the socket wait. */
export type ChunkConsumer = (chunk: Buffer) => Promise<void> | undefined | void;

export interface HttpResponse {
  /** The URL that answered (after redirects). */
  readonly url: string;
  readonly status: number;
  /** Header names in lower case; repeated headers joined with ", ". */
  readonly headers: ReadonlyMap<string, string>;
  /** Content-Length, when the server sent one (and no chunked encoding). */
  readonly length: number | undefined;
  /** Delivers the whole body; resolves with its length. Call once. */
  consume(onChunk: ChunkConsumer): Promise<number>;
  /** At most `max` bytes of the body as text, then the connection is closed. */
  text(max: number): Promise<string>;
  /** Closes the connection without reading the body. */
  discard(): void;
}

export interface GetOptions {
  readonly headers: Readonly<Record<string, string>>;
  readonly connectTimeoutMs: number;
  /** Longest silence while waiting for the headers or for more of the body. */
  readonly idleTimeoutMs: number;
  /** Skip certificate checks. */
  readonly insecure: boolean;
  /** Proxy URL for this target (http://[user:pass@]host:port), if any. */
  readonly proxy: string | undefined;
  readonly signal: AbortSignal;
  readonly maxRedirects?: number;
  /** Chooses the proxy for each URL of a redirect chain (default: `proxy` for all). */
  readonly proxyFor?: (url: URL) => string | undefined;
}

/** GET, following redirects. Rejects with HttpError (code ECONNREFUSED, ETIMEDOUT, EPROTO...) or the signal's reason. */
export async function httpGet(url: URL, opts: GetOptions): Promise<HttpResponse> {
  let current = url;
  let headers = { ...opts.headers };
  const max = opts.maxRedirects ?? 5;
  for (let hop = 0; ; hop++) {
    const proxy = opts.proxyFor === undefined ? opts.proxy : opts.proxyFor(current);
    const res = await getOnce(current, headers, { ...opts, proxy });
    const location = res.headers.get("location");
    if (!REDIRECTS.has(res.status) || location === undefined) return res;
    res.discard();
    if (hop >= max) throw new HttpError(`too many redirects (more than ${max}) from ${url.href}`, "EREDIRECT");
    const next = new URL(location, current);
    if (next.protocol !== "http:" && next.protocol !== "https:") throw new HttpError(`redirect to a ${next.protocol} URL refused: ${next.href}`, "EREDIRECT");
    if (next.origin !== current.origin) {
      // Credentials are not sent on to another server.
      headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== "authorization"));
    }
    current = next;
  }
}

function defaultPort(url: URL): number {
  return url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
}

function hostOf(url: URL): string {
  return url.hostname.replace(/^\[|\]$/g, "");
}

function requestHead(target: string, url: URL, headers: Readonly<Record<string, string>>, extra: Readonly<Record<string, string>> = {}): string {
  const lines = [`GET ${target} HTTP/1.1`, `Host: ${url.host}`];
  for (const [k, v] of Object.entries({ ...headers, ...extra })) {
    if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new HttpError(`invalid header ${k}`, "EINVAL");
    lines.push(`${k}: ${v}`);
  }
  lines.push("Connection: close", "", "");
  return lines.join("\r\n");
}

function proxyAuthorization(proxy: URL): Record<string, string> {
  if (proxy.username === "") return {};
  const cred = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
  return { "Proxy-Authorization": `Basic ${Buffer.from(cred).toString("base64")}` };
}

type Phase = "head" | "body" | "done";
type Framing = { kind: "length"; remaining: number } | { kind: "chunked"; state: "size" | "data" | "data-crlf" | "trailer"; remaining: number; line: string } | { kind: "close" };

/** One request on one connection. */
class Exchange implements HttpResponse {
  url: string;
  status = 0;
  readonly headers = new Map<string, string>();
  length: number | undefined;

  private socket: Socket | undefined;
  private phase: Phase = "head";
  private head = Buffer.alloc(0);
  private framing: Framing = { kind: "close" };
  private bodyBytes = 0;
  private consumer: ChunkConsumer | undefined;
  /** Bytes read but not yet handed over (while the consumer makes us wait, or before it exists). */
  private stash: Buffer[] = [];
  private waiting = false;
  private replaying = false;
  private ended = false;
  private headResolve!: (r: HttpResponse) => void;
  private headReject!: (err: unknown) => void;
  private bodyResolve: ((n: number) => void) | undefined;
  private bodyReject: ((err: unknown) => void) | undefined;
  private failure: unknown;
  private connectTimer: NodeJS.Timeout | undefined;
  private readonly onAbort: () => void;

  constructor(
    target: URL,
    private readonly opts: GetOptions & { proxy: string | undefined },
  ) {
    this.url = target.href;
    this.onAbort = () => this.fail(opts.signal.reason);
  }

  start(target: URL, headers: Readonly<Record<string, string>>): Promise<HttpResponse> {
    const promise = new Promise<HttpResponse>((resolve, reject) => {
      this.headResolve = resolve;
      this.headReject = reject;
    });
    if (this.opts.signal.aborted) {
      this.fail(this.opts.signal.reason);
      return promise;
    }
    this.opts.signal.addEventListener("abort", this.onAbort, { once: true });
    this.connectTimer = setTimeout(() => this.fail(new HttpError(`connecting to ${target.host} timed out after ${this.opts.connectTimeoutMs} ms`, "ETIMEDOUT")), this.opts.connectTimeoutMs);
    try {
      this.connect(target, headers);
    } catch (err) {
      this.fail(err);
    }
    return promise;
  }

  private onread(): { buffer: Buffer; callback: (n: number, buf: Buffer) => boolean } {
    return {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n, buf) => {
        this.feed(buf.subarray(0, n), false);
        return true;
      },
    };
  }

  private connect(target: URL, headers: Readonly<Record<string, string>>): void {
    const secure = target.protocol === "https:";
    const tlsOpts = (host: string): { servername?: string; rejectUnauthorized: boolean; ALPNProtocols: string[] } => ({
      ...(isIP(host) === 0 ? { servername: host } : {}),
      rejectUnauthorized: !this.opts.insecure,
      ALPNProtocols: ["http/1.1"],
    });
    if (this.opts.proxy === undefined) {
      const host = hostOf(target);
      const port = defaultPort(target);
      const request = requestHead(`${target.pathname}${target.search}`, target, headers);
      const sock: Socket = secure
        ? tlsWithOnread({ host, port, ...tlsOpts(host), onread: this.onread() }, () => this.connected(sock, request))
        : netConnect({ host, port, onread: this.onread() }, () => this.connected(sock, request));
      this.attach(sock);
      return;
    }
    const proxy = new URL(this.opts.proxy);
    const phost = hostOf(proxy);
    const pport = defaultPort(proxy);
    const viaTls = proxy.protocol === "https:";
    if (!secure) {
      // Plain http through the proxy: the request line carries the absolute URL.
      const request = requestHead(target.href, target, headers, proxyAuthorization(proxy));
      const sock: Socket = viaTls
        ? tlsWithOnread({ host: phost, port: pport, ...tlsOpts(phost), onread: this.onread() }, () => this.connected(sock, request))
        : netConnect({ host: phost, port: pport, onread: this.onread() }, () => this.connected(sock, request));
      this.attach(sock);
      return;
    }
    // https through the proxy: CONNECT, then TLS inside the tunnel.
    const tunnel: Socket = viaTls ? tlsConnect({ host: phost, port: pport, ...tlsOpts(phost) }) : netConnect({ host: phost, port: pport });
    this.attach(tunnel);
    const authority = `${hostOf(target).includes(":") ? `[${hostOf(target)}]` : hostOf(target)}:${defaultPort(target)}`;
    tunnel.once(viaTls ? "secureConnect" : "connect", () => {
      const auth = Object.entries(proxyAuthorization(proxy)).map(([k, v]) => `${k}: ${v}\r\n`).join("");
      tunnel.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth}\r\n`);
    });
    let answer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      answer = Buffer.concat([answer, chunk]);
      const end = answer.indexOf("\r\n\r\n");
      if (end < 0) {
        if (answer.length > MAX_HEADER_BYTES) this.fail(new HttpError("proxy answer too large", "EPROTO"));
        return;
      }
      tunnel.off("data", onData);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(answer.toString("latin1", 0, end));
      if (status?.[1] !== "200") {
        this.fail(new HttpError(`proxy ${proxy.host} refused CONNECT ${authority}: ${answer.toString("latin1", 0, Math.min(end, 200))}`, "EPROXY"));
        return;
      }
      const host = hostOf(target);
      const request = requestHead(`${target.pathname}${target.search}`, target, headers);
      const sock: TLSSocket = tlsConnect({ socket: tunnel, ...tlsOpts(host) }, () => this.connected(sock, request));
      this.attach(sock);
      sock.on("data", (chunk: Buffer) => this.feed(chunk, true));
    };
    tunnel.on("data", onData);
  }

  private attach(sock: Socket): void {
    this.socket = sock;
    sock.on("error", (err: NodeJS.ErrnoException) => this.fail(new HttpError(`${err.message}`, err.code ?? "ECONNRESET", { cause: err })));
    sock.on("end", () => this.onEnd());
    sock.on("close", () => this.onEnd());
    sock.on("timeout", () => this.fail(new HttpError(`no data from ${new URL(this.url).host} for ${this.opts.idleTimeoutMs} ms`, "ETIMEDOUT")));
  }

  private connected(sock: Socket, request: string): void {
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    sock.setNoDelay(true);
    sock.setTimeout(this.opts.idleTimeoutMs);
    sock.write(request);
  }

  /** Every byte read goes through here, synchronously. `owned`: the buffer is ours to keep. */
  private feed(buf: Buffer, owned: boolean): void {
    if (this.phase === "done" || this.failure !== undefined) return;
    if (this.waiting || (this.phase === "body" && this.consumer === undefined)) {
      this.stash.push(owned ? buf : Buffer.from(buf));
      return;
    }
    let rest = buf;
    if (this.phase === "head") {
      const combined = this.head.length === 0 ? rest : Buffer.concat([this.head, rest]);
      const end = combined.indexOf("\r\n\r\n");
      if (end < 0) {
        if (combined.length > MAX_HEADER_BYTES) return this.fail(new HttpError("response headers too large", "EPROTO"));
        this.head = Buffer.from(combined);
        return;
      }
      try {
        this.parseHead(combined.toString("latin1", 0, end));
      } catch (err) {
        return this.fail(err);
      }
      this.head = Buffer.alloc(0);
      rest = combined.subarray(end + 4);
      this.phase = "body";
      if (this.framing.kind === "length" && this.framing.remaining === 0) this.finishBody();
      // Until consume() is called the body waits, and so does the socket.
      if (rest.length > 0) this.stash.push(Buffer.from(rest));
      this.pauseSocket();
      this.headResolve(this);
      return;
    }
    this.body(rest, owned);
  }

  private parseHead(text: string): void {
    const lines = text.split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
    if (m?.[1] === undefined) throw new HttpError(`not an HTTP/1.x answer: ${JSON.stringify((lines[0] ?? "").slice(0, 80))}`, "EPROTO");
    this.status = Number(m[1]);
    for (const line of lines.slice(1)) {
      const i = line.indexOf(":");
      if (i <= 0) continue;
      const name = line.slice(0, i).trim().toLowerCase();
      const value = line.slice(i + 1).trim();
      const prev = this.headers.get(name);
      this.headers.set(name, prev === undefined ? value : `${prev}, ${value}`);
    }
    const te = this.headers.get("transfer-encoding");
    const cl = this.headers.get("content-length");
    if (this.status === 204 || this.status === 304 || (this.status >= 100 && this.status < 200)) {
      this.framing = { kind: "length", remaining: 0 };
    } else if (te !== undefined && /(^|,)\s*chunked\s*$/i.test(te)) {
      this.framing = { kind: "chunked", state: "size", remaining: 0, line: "" };
    } else if (cl !== undefined) {
      if (!/^\d+$/.test(cl)) throw new HttpError(`bad Content-Length ${JSON.stringify(cl)}`, "EPROTO");
      this.length = Number(cl);
      this.framing = { kind: "length", remaining: this.length };
    } else {
      this.framing = { kind: "close" };
    }
  }

  /** Frames and delivers body bytes; stops (and stashes the rest) when the consumer asks to wait. */
  private body(buf: Buffer, owned: boolean): void {
    let pos = 0;
    const f = this.framing;
    while (pos < buf.length && this.phase === "body" && this.failure === undefined) {
      if (this.waiting) {
        const rest = owned && pos === 0 ? buf : Buffer.from(buf.subarray(pos));
        // Replaying the stash: the rest of this piece comes before what is still stashed.
        if (this.replaying) this.stash.unshift(rest);
        else this.stash.push(rest);
        return;
      }
      if (f.kind === "close" || f.kind === "length") {
        const n = f.kind === "length" ? Math.min(f.remaining, buf.length - pos) : buf.length - pos;
        this.deliver(buf.subarray(pos, pos + n));
        pos += n;
        if (f.kind === "length") {
          f.remaining -= n;
          if (f.remaining === 0) this.finishBody();
        }
        continue;
      }
      // chunked
      if (f.state === "data") {
        const n = Math.min(f.remaining, buf.length - pos);
        this.deliver(buf.subarray(pos, pos + n));
        pos += n;
        f.remaining -= n;
        if (f.remaining === 0) f.state = "data-crlf";
        continue;
      }
      const nl = buf.indexOf(0x0a, pos);
      const piece = buf.toString("latin1", pos, nl < 0 ? buf.length : nl + 1);
      pos = nl < 0 ? buf.length : nl + 1;
      f.line += piece;
      if (f.line.length > 8192) return this.fail(new HttpError("chunked framing line too long", "EPROTO"));
      if (nl < 0) continue;
      const line = f.line.replace(/\r?\n$/, "");
      f.line = "";
      if (f.state === "data-crlf") {
        if (line !== "") return this.fail(new HttpError("bad chunked framing", "EPROTO"));
        f.state = "size";
      } else if (f.state === "size") {
        const size = Number.parseInt(line.split(";")[0] ?? "", 16);
        if (!Number.isFinite(size) || size < 0) return this.fail(new HttpError(`bad chunk size ${JSON.stringify(line.slice(0, 40))}`, "EPROTO"));
        if (size === 0) f.state = "trailer";
        else {
          f.state = "data";
          f.remaining = size;
        }
      } else if (line === "") {
        this.finishBody();
      }
    }
  }

  private deliver(view: Buffer): void {
    if (view.length === 0) return;
    const consumer = this.consumer;
    if (consumer === undefined) return;
    this.bodyBytes += view.length;
    let wait: Promise<void> | undefined | void;
    try {
      wait = consumer(view);
    } catch (err) {
      this.fail(err);
      return;
    }
    if (wait === undefined) return;
    this.waiting = true;
    this.pauseSocket();
    wait.then(
      () => {
        this.waiting = false;
        this.flushStash();
        if (!this.waiting && this.phase === "body") this.resumeSocket();
      },
      (err: unknown) => this.fail(err),
    );
  }

  private flushStash(): void {
    this.replaying = true;
    try {
      while (this.stash.length > 0 && !this.waiting && this.phase === "body" && this.failure === undefined) {
        const next = this.stash.shift();
        if (next !== undefined) this.body(next, true);
      }
    } finally {
      this.replaying = false;
    }
    if (this.stash.length === 0 && this.ended && this.phase === "body") this.endOfStream();
  }

  private pauseSocket(): void {
    this.socket?.pause();
    // Our own waiting is not the server's silence.
    this.socket?.setTimeout(0);
  }

  private resumeSocket(): void {
    this.socket?.setTimeout(this.opts.idleTimeoutMs);
    this.socket?.resume();
  }

  private finishBody(): void {
    if (this.phase === "done") return;
    this.phase = "done";
    this.cleanup();
    this.bodyResolve?.(this.bodyBytes);
  }

  private onEnd(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.phase === "head") {
      this.fail(new HttpError(`connection to ${new URL(this.url).host} closed before the response headers`, "ECONNRESET"));
    } else if (this.phase === "body" && !this.waiting && this.consumer !== undefined && this.stash.length === 0) {
      this.endOfStream();
    }
  }

  private endOfStream(): void {
    if (this.framing.kind === "close") this.finishBody();
    else {
      const expected = this.framing.kind === "length" ? ` of ${this.length ?? "?"}` : "";
      this.fail(new HttpError(`connection closed after ${this.bodyBytes}${expected} body bytes`, "ECONNRESET"));
    }
  }

  private fail(err: unknown): void {
    if (this.failure !== undefined || this.phase === "done") return;
    this.failure = err;
    this.phase = "done";
    this.cleanup();
    if (this.status === 0 || this.bodyReject === undefined) this.headReject(err);
    this.bodyReject?.(err);
  }

  private cleanup(): void {
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.opts.signal.removeEventListener("abort", this.onAbort);
    this.stash = [];
    this.socket?.destroy();
  }

  consume(onChunk: ChunkConsumer): Promise<number> {
    if (this.consumer !== undefined) return Promise.reject(new HttpError("body already consumed", "EINVAL"));
    this.consumer = onChunk;
    return new Promise<number>((resolve, reject) => {
      if (this.failure !== undefined) return reject(this.failure);
      if (this.phase === "done") return resolve(this.bodyBytes);
      this.bodyResolve = resolve;
      this.bodyReject = reject;
      this.flushStash();
      if (!this.waiting && this.phase === "body") this.resumeSocket();
    });
  }

  async text(max: number): Promise<string> {
    const parts: Buffer[] = [];
    let size = 0;
    try {
      await this.consume((chunk) => {
        if (size < max) parts.push(Buffer.from(chunk.subarray(0, max - size)));
        size += chunk.length;
        if (size >= max) this.discard();
      });
    } catch {
      // the body of an error answer is only for the message
    }
    return Buffer.concat(parts).toString("utf8");
  }

  discard(): void {
    if (this.phase === "done") return;
    this.phase = "done";
    this.cleanup();
    this.bodyResolve?.(this.bodyBytes);
  }
}

function getOnce(url: URL, headers: Readonly<Record<string, string>>, opts: GetOptions & { proxy: string | undefined }): Promise<HttpResponse> {
  return new Exchange(url, opts).start(url, headers);
}
