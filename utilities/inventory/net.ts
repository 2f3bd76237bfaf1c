/**
 * Network interfaces, listed from /sys/class/net the way IPA lists them:
 * physical devices (those with a `device` link), VLANs (`name.<digits>`) and
 * bonds. Loopback and other purely virtual devices (ifb, veth, bridges...)
 * are skipped. Addresses come from `ip -j addr`, else os.networkInterfaces().
 */
import os from "node:os";
import { z } from "zod";

import type { CollectContext } from "./context.js";
import { parseJson, runOk, tryRun } from "./context.js";
import type { Interface } from "./schema.js";

interface LinkAddresses {
  /** Current MAC. */
  address: string | null;
  /** Permanent MAC, when iproute2 reports it (bond slaves, changed MACs). */
  permaddr: string | null;
  ipv4: string | null;
  ipv6: string | null;
}

const IpAddrSchema = z.array(
  z.looseObject({
    ifname: z.string(),
    address: z.string().optional(),
    permaddr: z.string().optional(),
    addr_info: z
      .array(z.looseObject({ family: z.string().optional(), local: z.string().optional() }))
      .optional(),
  }),
);

/** `ip -j addr show` -> per-interface addresses (first IPv4 and first IPv6, kernel order). */
export function parseIpAddrJson(text: string | null): Map<string, LinkAddresses> | null {
  const parsed = IpAddrSchema.safeParse(parseJson(text));
  if (!parsed.success) return null;
  const map = new Map<string, LinkAddresses>();
  for (const link of parsed.data) {
    const infos = link.addr_info ?? [];
    map.set(link.ifname, {
      address: link.address ?? null,
      permaddr: link.permaddr ?? null,
      ipv4: infos.find((a) => a.family === "inet" && a.local !== undefined)?.local ?? null,
      ipv6: infos.find((a) => a.family === "inet6" && a.local !== undefined)?.local ?? null,
    });
  }
  return map;
}

function fromNodeOs(): Map<string, LinkAddresses> {
  const map = new Map<string, LinkAddresses>();
  for (const [name, infos] of Object.entries(os.networkInterfaces())) {
    const list = infos ?? [];
    map.set(name, {
      address: list[0]?.mac ?? null,
      permaddr: null,
      ipv4: list.find((a) => a.family === "IPv4")?.address ?? null,
      ipv6: list.find((a) => a.family === "IPv6")?.address ?? null,
    });
  }
  return map;
}

function isVlanName(name: string): boolean {
  const dot = name.indexOf(".");
  return dot >= 0 && /^\d+$/.test(name.slice(dot + 1));
}

/** IPA's interface selection. */
export async function listInterfaceNames(ctx: CollectContext): Promise<string[]> {
  const names: string[] = [];
  for (const name of await ctx.fs.list("/sys/class/net")) {
    if (
      isVlanName(name) ||
      (await ctx.fs.exists(`/sys/class/net/${name}/device`)) ||
      (await ctx.fs.exists(`/sys/class/net/${name}/bonding`))
    ) {
      names.push(name);
    }
  }
  return names;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2})+$/i;

function usableMac(mac: string | null): string | null {
  if (mac === null) return null;
  const m = mac.trim().toLowerCase();
  if (!MAC_RE.test(m) || /^(00:)+00$/.test(m)) return null;
  return m;
}

async function biosdevname(ctx: CollectContext, name: string): Promise<string | null> {
  if (isVlanName(name)) return null;
  // Exit code 4 means "virtual machine": no BIOS name, like any other failure.
  const out = await runOk(ctx, "biosdevname", ["-i", name], 5_000);
  const trimmed = out?.trim() ?? "";
  return trimmed === "" ? null : trimmed;
}

async function speedMbps(ctx: CollectContext, name: string): Promise<number | null> {
  // Reading `speed` fails (EINVAL) on a link that is down; -1 means unknown.
  const raw = await ctx.fs.readTrim(`/sys/class/net/${name}/speed`);
  if (raw === null || !/^-?\d+$/.test(raw)) return null;
  const n = Number(raw);
  return n > 0 && n < 0xffffffff ? n : null;
}

export async function collectInterfaces(ctx: CollectContext): Promise<Interface[]> {
  const names = await listInterfaceNames(ctx);
  if (names.length === 0) return [];

  const ipOut = await tryRun(ctx, "ip", ["-j", "addr", "show"]);
  const addrs = (ipOut !== null && ipOut.code === 0 ? parseIpAddrJson(ipOut.stdout) : null) ?? fromNodeOs();

  const result: Interface[] = [];
  for (const name of names) {
    const base = `/sys/class/net/${name}`;
    const a = addrs.get(name);
    // Permanent address first (as IPA's ETHTOOL_GPERMADDR), then the current one.
    const mac =
      usableMac(a?.permaddr ?? null) ??
      usableMac(await ctx.fs.readTrim(`${base}/address`)) ??
      usableMac(a?.address ?? null);
    // IPA skips interfaces without a MAC and ignores locally assigned "fa:" MACs.
    if (mac === null || mac.startsWith("fa:")) continue;

    result.push({
      name,
      mac_address: mac,
      ipv4_address: a?.ipv4 ?? null,
      ipv6_address: a?.ipv6 ?? null,
      has_carrier: (await ctx.fs.readTrim(`${base}/carrier`)) === "1",
      lldp: null,
      vendor: await ctx.fs.readTrim(`${base}/device/vendor`),
      product: await ctx.fs.readTrim(`${base}/device/device`),
      client_id: null,
      biosdevname: await biosdevname(ctx, name),
      speed_mbps: await speedMbps(ctx, name),
      pci_address: await ctx.fs.linkBasename(`${base}/device`),
      driver: await ctx.fs.linkBasename(`${base}/device/driver`),
    });
  }
  return result;
}
