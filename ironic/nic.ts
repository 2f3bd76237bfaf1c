/**
 * Waiting at start for a network interface the agent can talk to Ironic through: one that is not
 * loopback and has a MAC address and carrier, or any non-internal IP address. The wait is bounded
 * (IPA waits up to 60 s) and never fatal: after it the agent goes on and lookup retries.
 */
import { networkInterfaces as osNetworkInterfaces, type NetworkInterfaceInfo } from "node:os";
import type { Clock } from "../core/clock.js";
import type { Logger } from "../core/log.js";
import { HostFs } from "../utilities/inventory/sysfs.js";

export interface NicWaitOptions {
  readonly clock: Clock;
  readonly log: Logger;
  readonly timeoutS: number;
  /** Between checks; default 1 s. */
  readonly intervalMs?: number;
  /** Root of /sys reads; tests point it at a fixture tree. */
  readonly sysRoot?: string;
  readonly networkInterfaces?: () => NodeJS.Dict<NetworkInterfaceInfo[]>;
  readonly signal?: AbortSignal | undefined;
}

export interface UsableNic {
  readonly name: string;
  readonly why: "carrier" | "address";
  readonly detail: string;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5,19}$/i;

/** The first usable interface, or undefined. */
export async function findUsableNic(fs: HostFs, interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>): Promise<UsableNic | undefined> {
  for (const name of (await fs.list("/sys/class/net")).sort()) {
    if (name === "lo") continue;
    const mac = (await fs.readTrim(`/sys/class/net/${name}/address`))?.toLowerCase() ?? "";
    if (!MAC_RE.test(mac) || /^(00:)+00$/.test(mac)) continue;
    // Reading carrier fails (EINVAL) while the interface is down: that is "no carrier".
    if ((await fs.readTrim(`/sys/class/net/${name}/carrier`)) === "1") return { name, why: "carrier", detail: mac };
  }
  for (const [name, infos] of Object.entries(interfaces)) {
    const addr = (infos ?? []).find((i) => !i.internal);
    if (addr !== undefined) return { name, why: "address", detail: addr.address };
  }
  return undefined;
}

/** Resolves with the interface found, or undefined when the time ran out (logged, not an error). */
export async function waitForNic(opts: NicWaitOptions): Promise<UsableNic | undefined> {
  const fs = new HostFs(opts.sysRoot ?? "/");
  const list = opts.networkInterfaces ?? osNetworkInterfaces;
  const interval = opts.intervalMs ?? 1000;
  const deadline = opts.clock.now() + opts.timeoutS * 1000;
  let checks = 0;
  for (;;) {
    opts.signal?.throwIfAborted();
    checks += 1;
    const nic = await findUsableNic(fs, list());
    if (nic !== undefined) {
      opts.log.info({ nic: nic.name, why: nic.why, detail: nic.detail, checks }, "network interface ready");
      return nic;
    }
    const left = deadline - opts.clock.now();
    if (left <= 0) {
      opts.log.warn({ timeoutS: opts.timeoutS, checks }, "no network interface with carrier or address; going on anyway");
      return undefined;
    }
    if (checks === 1) opts.log.info({ timeoutS: opts.timeoutS }, "waiting for a network interface");
    await opts.clock.sleep(Math.min(interval, left), opts.signal);
  }
}
