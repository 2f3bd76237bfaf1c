/**
 * BMC addresses through `ipmitool` on the in-band IPMI device, as IPA does:
 * LAN channels 1-11 are asked in turn; "0.0.0.0" / "::/0" when IPMI exists
 * but no channel has an address; null when there is no IPMI device or
 * ipmitool cannot run.
 */
import net from "node:net";

import type { CollectContext } from "./context.js";
import { tryRun } from "./context.js";

export interface BmcInfo {
  bmc_address: string | null;
  bmc_v6address: string | null;
  /** Undefined when no channel reports a usable MAC (then the key is left out). */
  bmc_mac: string | undefined;
}

const CHANNELS = Array.from({ length: 11 }, (_, i) => i + 1);
const IPMITOOL_TIMEOUT_MS = 15_000;

/** Any IPMI character device (/dev/ipmi0, /dev/ipmi/0, /dev/ipmidev/0). */
export async function ipmiDeviceExists(ctx: CollectContext): Promise<boolean> {
  const candidates: string[] = [];
  for (const entry of await ctx.fs.list("/dev")) {
    if (entry.startsWith("ipmi")) candidates.push(`/dev/${entry}`);
  }
  for (const dir of ["/dev/ipmi", "/dev/ipmidev"]) {
    for (const entry of await ctx.fs.list(dir)) candidates.push(`${dir}/${entry}`);
  }
  for (const c of candidates) {
    if ((await ctx.fs.stat(c))?.isCharacterDevice() === true) return true;
  }
  return false;
}

/** Value of a "Key   : value" line in `ipmitool lan print` output (exact key). */
export function lanPrintValue(text: string, key: string): string | null {
  for (const line of text.split("\n")) {
    const idx = line.indexOf(":");
    if (idx < 0) continue;
    if (line.slice(0, idx).trim() === key) return line.slice(idx + 1).trim();
  }
  return null;
}

interface Lan6Address {
  address: string;
  status: string;
  enabled: string;
  source: string;
}

/** `ipmitool lan6 print N {static,dynamic}_addr`: blocks of indented "Key: value" lines. */
export function parseLan6Addresses(text: string): Lan6Address[] {
  const out: Lan6Address[] = [];
  let cur: Partial<Lan6Address> | null = null;
  const flush = (): void => {
    if (cur?.address !== undefined) {
      out.push({
        address: cur.address,
        status: cur.status ?? "",
        enabled: cur.enabled ?? "",
        source: cur.source ?? "",
      });
    }
  };
  for (const line of text.split("\n")) {
    if (/^IPv6 (Static|Dynamic) Address \d+:/.test(line)) {
      flush();
      cur = {};
      continue;
    }
    if (cur === null) continue;
    const idx = line.indexOf(":");
    if (idx < 0) continue;
    const key = line.slice(0, idx).trim();
    const value = line.slice(idx + 1).trim();
    if (key === "Address") cur.address = value;
    else if (key === "Status") cur.status = value;
    else if (key === "Enabled") cur.enabled = value;
    else if (key === "Source/Type") cur.source = value;
  }
  flush();
  return out;
}

const NULL_V6 = /^::(\/\d{1,3})*$/;

function pickV6(list: readonly Lan6Address[], dynamic: boolean): string | null {
  for (const a of list) {
    const enabled = dynamic ? a.source === "DHCPv6" || a.source === "SLAAC" : a.enabled === "yes";
    if (a.status === "active" && enabled && !NULL_V6.test(a.address)) {
      const ip = a.address.split("/")[0] ?? "";
      if (net.isIPv6(ip)) return ip;
    }
  }
  return null;
}

/**
 * One ipmitool call: its output, null for an invalid channel, "missing"
 * when ipmitool cannot run at all.
 */
async function ipmitool(
  ctx: CollectContext,
  args: readonly string[],
): Promise<{ stdout: string; stderr: string } | "missing" | null> {
  const res = await tryRun(ctx, "ipmitool", args, IPMITOOL_TIMEOUT_MS);
  if (res === null) return "missing";
  if (res.stderr.startsWith("Invalid channel")) return null;
  return res;
}

export async function collectBmc(ctx: CollectContext): Promise<BmcInfo> {
  const none: BmcInfo = { bmc_address: null, bmc_v6address: null, bmc_mac: undefined };
  if (!(await ipmiDeviceExists(ctx))) return none;

  let v4: string | null = null;
  let mac: string | undefined;
  for (const ch of CHANNELS) {
    const res = await ipmitool(ctx, ["lan", "print", String(ch)]);
    if (res === "missing") return none;
    if (res === null) continue;
    const ip = lanPrintValue(res.stdout, "IP Address");
    const chMac = lanPrintValue(res.stdout, "MAC Address")?.toLowerCase() ?? null;
    const validIp = ip !== null && net.isIPv4(ip);
    if (v4 === null && validIp && ip !== "0.0.0.0") v4 = ip;
    if (
      mac === undefined &&
      chMac !== null &&
      /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(chMac) &&
      chMac !== "00:00:00:00:00:00" &&
      validIp &&
      (ip !== "0.0.0.0" || (await channelHasV6(ctx, ch)))
    ) {
      mac = chMac;
    }
    if (v4 !== null && mac !== undefined) break;
  }

  let v6: string | null = null;
  for (const ch of CHANNELS) {
    v6 = await channelV6(ctx, ch);
    if (v6 !== null) break;
  }

  return { bmc_address: v4 ?? "0.0.0.0", bmc_v6address: v6 ?? "::/0", bmc_mac: mac };
}

async function channelV6(ctx: CollectContext, ch: number): Promise<string | null> {
  const enables = await ipmitool(ctx, ["lan6", "print", String(ch), "enables"]);
  if (enables === "missing" || enables === null) return null;
  const mode = lanPrintValue(enables.stdout, "IPv6/IPv4 Addressing Enables");
  if (mode !== "ipv6" && mode !== "both") return null;
  for (const dynamic of [true, false]) {
    const res = await ipmitool(ctx, ["lan6", "print", String(ch), dynamic ? "dynamic_addr" : "static_addr"]);
    if (res === "missing" || res === null) continue;
    const ip = pickV6(parseLan6Addresses(res.stdout), dynamic);
    if (ip !== null) return ip;
  }
  return null;
}

/** A channel whose IPv4 is 0.0.0.0 still counts for the MAC when it has a routable IPv6. */
async function channelHasV6(ctx: CollectContext, ch: number): Promise<boolean> {
  const res = await ipmitool(ctx, ["lan6", "print", String(ch)]);
  if (res === "missing" || res === null) return false;
  let inSection = false;
  for (const line of res.stdout.split("\n")) {
    if (/^IPv6 (Dynamic|Static) Address \d+:/.test(line)) {
      inSection = true;
      continue;
    }
    if (line.startsWith("IPv6 ")) {
      inSection = false;
      continue;
    }
    if (!inSection) continue;
    const m = /Address:\s*(\S+)/.exec(line);
    const addr = m?.[1];
    if (addr !== undefined && !addr.startsWith("::") && !addr.toLowerCase().startsWith("fe80")) return true;
  }
  return false;
}
