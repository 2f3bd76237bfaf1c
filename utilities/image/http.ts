/**
 * Image downloads, IPA's rules: the URLs are tried in order; only a 200 is accepted; any other status
 * below 500 is fatal at once; a 5xx or a connection error is retried `retries` times, `retryDelayMs`
 * apart, before the next URL is tried. Timeouts: connect, and silence while waiting for the headers
 * or for the next piece of the body. Authentication (image_request_authorization or http_basic) and
 * proxies (proxies/no_proxy) come from image_info. The transport is client.ts.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../core/log.js";
import { AgentError } from "../../core/errors.js";
import { type HttpResponse, httpGet } from "./client.js";
import { downloadError } from "./errors.js";
import type { ImageInfo } from "./info.js";
import type { ImageOptions } from "./options.js";

export type Access = Pick<ImageInfo, "authorization" | "proxies" | "noProxy">;

export interface OpenedDownload {
  readonly url: string;
  readonly response: HttpResponse;
  /** Content-Length, when the server sent one. */
  readonly length: number | undefined;
}

/** True when `url`'s host (and port) matches the no_proxy list. */
export function bypassesProxy(url: URL, noProxy: string | undefined): boolean {
  if (noProxy === undefined) return false;
  const host = url.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  for (const raw of noProxy.split(/[\s,]+/)) {
    const entry = raw.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") return true;
    const [entryHost = "", entryPort] = entry.startsWith("[") ? [entry.slice(1, entry.indexOf("]")), entry.split("]:")[1]] : entry.split(":");
    if (entryPort !== undefined && entryPort !== port) continue;
    const bare = entryHost.replace(/^\*?\./, "");
    if (host === bare || host.endsWith(`.${bare}`)) return true;
  }
  return false;
}

/** The proxy for a URL under image_info's proxies/no_proxy. */
export function proxyFor(url: URL, access: Access): string | undefined {
  if (bypassesProxy(url, access.noProxy)) return undefined;
  return url.protocol === "https:" ? access.proxies.https : access.proxies.http;
}

export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

export class ImageHttp {
  constructor(
    private readonly opts: ImageOptions,
    private readonly log: Logger,
  ) {}

  private headers(access: Access): Record<string, string> {
    const headers: Record<string, string> = { "User-Agent": this.opts.userAgent, "Accept-Encoding": "identity" };
    if (access.authorization !== undefined) headers["Authorization"] = access.authorization;
    return headers;
  }

  private get(url: URL, access: Access, signal: AbortSignal): Promise<HttpResponse> {
    return httpGet(url, {
      headers: this.headers(access),
      connectTimeoutMs: this.opts.connectTimeoutMs,
      idleTimeoutMs: this.opts.chunkTimeoutMs,
      insecure: this.opts.insecure,
      proxy: undefined,
      proxyFor: (u) => proxyFor(u, access),
      signal,
    });
  }

  /**
   * Opens the first URL that answers 200, with IPA's retries. Throws ImageDownloadFatalError on a
   * status below 500, ImageDownloadError naming every URL's last failure when none worked, or the
   * signal's reason when aborted.
   */
  async open(urls: readonly string[], access: Access, imageId: string, signal: AbortSignal): Promise<OpenedDownload> {
    const details: string[] = [];
    for (const url of urls) {
      const parsed = new URL(url);
      let last = "";
      for (let attempt = 0; attempt <= this.opts.retries; attempt++) {
        signal.throwIfAborted();
        try {
          const res = await this.get(parsed, access, signal);
          if (res.status === 200) return { url: res.url, response: res, length: res.length };
          const text = await res.text(512);
          last = `Received status code ${res.status} from ${url}, expected 200. Response body: ${text.trim()}`;
          // IPA: only a 5xx may go better next time.
          if (res.status < 500) throw downloadError(imageId, last, "fatal");
        } catch (err) {
          if (err instanceof AgentError) throw err;
          if (signal.aborted) throw signal.reason;
          last = `Unable to connect to ${url}: ${describeError(err)}`;
        }
        if (attempt < this.opts.retries) {
          this.log.warn({ url, attempt: attempt + 1, of: this.opts.retries, error: last }, "image download failed, retrying");
          await sleep(this.opts.retryDelayMs, undefined, { signal });
        }
      }
      this.log.warn({ url, error: last }, "giving up on this image URL");
      details.push(`URL: ${url}; Error: ${last}`);
    }
    throw downloadError(imageId, details.join("\n "), "final");
  }

  /** A small document (checksums file, configdrive) in memory, at most `maxBytes`. */
  async fetchBytes(url: string, access: Access, what: string, maxBytes: number, signal: AbortSignal): Promise<Buffer> {
    const opened = await this.open([url], access, what, signal);
    const parts: Buffer[] = [];
    let size = 0;
    try {
      await opened.response.consume((chunk) => {
        size += chunk.length;
        if (size > maxBytes) throw downloadError(what, `${url} is larger than ${maxBytes} bytes`, "fatal");
        parts.push(Buffer.from(chunk));
      });
    } catch (err) {
      opened.response.discard();
      if (err instanceof AgentError) throw err;
      if (signal.aborted) throw signal.reason;
      throw downloadError(what, `reading ${url}: ${describeError(err)}`, "final", err);
    }
    return Buffer.concat(parts);
  }

  /** Nothing to release: every request has its own connection. */
  async close(): Promise<void> {
    // connections are closed as each response ends
  }
}
