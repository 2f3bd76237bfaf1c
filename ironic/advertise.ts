/**
 * The address put in the callback URL when none is configured, found as IPA finds it: keep the
 * Ironic URLs that answer, resolve their hosts, ask the kernel which source address it would use to
 * reach each (`ip route get <ip>` → `src`), and take the first that is not link-local. The kernel may
 * not have a route yet (DHCP still running), so this is tried `attempts` times, `sleepS` apart.
 */
import { lookup as dnsLookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { Clock } from "../core/clock.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { CommandRunner } from "../utilities/exec.js";

export interface AdvertiseOptions {
  /** Ironic API URLs, those that answered first. */
  readonly apiUrls: readonly string[];
  readonly run: CommandRunner;
  readonly clock: Clock;
  readonly log: Logger;
  readonly attempts: number;
  readonly sleepS: number;
  readonly signal?: AbortSignal | undefined;
  /** Host name → addresses; default node:dns. */
  readonly resolve?: (host: string) => Promise<string[]>;
}

/** Link-local addresses are never advertised: another machine cannot route to them. */
export function isLinkLocal(ip: string): boolean {
  if (isIP(ip) === 4) return ip.startsWith("169.254.");
  if (isIP(ip) === 6) return /^fe[89ab][0-9a-f]:/i.test(ip);
  return false;
}

/** The `src` address in `ip route get` output, or undefined. */
export function parseRouteSource(output: string): string | undefined {
  const m = /\bsrc\s+(\S+)/.exec(output);
  const src = m?.[1];
  return src !== undefined && isIP(src) !== 0 ? src : undefined;
}

async function defaultResolve(host: string): Promise<string[]> {
  const all = await dnsLookup(host, { all: true });
  return all.map((a) => a.address);
}

/** Unique IPs of the URLs' hosts, in URL order; URLs whose host does not resolve are skipped. */
export async function ironicAddresses(urls: readonly string[], resolve: (host: string) => Promise<string[]>, log: Logger): Promise<string[]> {
  const out: string[] = [];
  for (const url of urls) {
    let host: string;
    try {
      host = new URL(url).hostname.replace(/^\[(.*)\]$/, "$1");
    } catch {
      continue;
    }
    let ips: string[];
    if (isIP(host) !== 0) ips = [host];
    else {
      try {
        ips = await resolve(host);
      } catch (err) {
        log.warn({ host, err: (err as Error).message }, "cannot resolve the Ironic host");
        continue;
      }
    }
    for (const ip of ips) if (!out.includes(ip)) out.push(ip);
  }
  return out;
}

export async function findAdvertiseAddress(opts: AdvertiseOptions): Promise<string> {
  const { log } = opts;
  const targets = await ironicAddresses(opts.apiUrls, opts.resolve ?? defaultResolve, log);
  if (targets.length === 0) {
    throw new AgentError("ADVERTISE_ADDRESS_NOT_FOUND", `none of the Ironic hosts resolves (${opts.apiUrls.join(", ")}): set ipa-advertise-host`);
  }
  const seen: string[] = [];
  for (let attempt = 1; attempt <= opts.attempts; attempt++) {
    opts.signal?.throwIfAborted();
    for (const ip of targets) {
      let out: string;
      try {
        const res = await opts.run("ip", ["route", "get", ip], { timeoutMs: 10_000, ...(opts.signal === undefined ? {} : { signal: opts.signal }) });
        if (res.code !== 0) {
          seen.push(`ip route get ${ip}: exit ${res.code} ${res.stderr.trim()}`);
          continue;
        }
        out = res.stdout;
      } catch (err) {
        opts.signal?.throwIfAborted();
        seen.push(`ip route get ${ip}: ${(err as Error).message}`);
        continue;
      }
      const src = parseRouteSource(out);
      if (src === undefined) {
        seen.push(`ip route get ${ip}: no source address`);
        continue;
      }
      if (isLinkLocal(src)) {
        seen.push(`ip route get ${ip}: link-local source ${src} ignored`);
        continue;
      }
      log.info({ address: src, ironic: ip, attempt }, "advertise address found");
      return src;
    }
    if (attempt < opts.attempts) {
      log.info({ attempt, of: opts.attempts, sleepS: opts.sleepS }, "no route to Ironic yet, trying again");
      await opts.clock.sleep(opts.sleepS * 1000, opts.signal);
    }
  }
  opts.signal?.throwIfAborted();
  throw new AgentError(
    "ADVERTISE_ADDRESS_NOT_FOUND",
    `no usable source address towards Ironic (${targets.join(", ")}) after ${opts.attempts} tries: ${seen.slice(-targets.length).join("; ")}; set ipa-advertise-host`,
  );
}

/** `protocol://host:port`, IPv6 hosts in brackets. */
export function callbackUrl(protocol: "http" | "https", host: string, port: number): string {
  const h = isIP(host) === 6 ? `[${host}]` : host;
  return `${protocol}://${h}:${port}`;
}
