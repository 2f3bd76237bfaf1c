/**
 * Hardware inventory in ironic-python-agent's format (the result of
 * `poll.get_hardware_info`, the inventory sent on lookup and inspection).
 *
 * Every source is optional: a missing tool or unreadable file degrades only
 * its field to IPA's empty value ("" / null / [] / false). The function
 * rejects only when `signal` is aborted.
 *
 * Field-by-field sources, fallbacks and differences from IPA:
 * docs/inventory.md.
 */
import os from "node:os";

import type { CommandRunner } from "../exec.js";
import { collectBmc } from "./bmc.js";
import type { CollectContext } from "./context.js";
import { collectCpu } from "./cpu.js";
import { collectDisks } from "./disks.js";
import { collectMemory } from "./memory.js";
import { collectInterfaces } from "./net.js";
import type { Boot, Inventory } from "./schema.js";
import { HostFs } from "./sysfs.js";
import { collectSystemVendor } from "./system.js";

export * from "./schema.js";
export type { CommandRunner } from "../exec.js";
export { LSBLK_COLUMNS, parseLsblk } from "./disks.js";
export { parseCpuinfo, parseLscpuJson } from "./cpu.js";
export { parseDmidecodeMemory, parseMemTotal, roundInstalledMib } from "./memory.js";

export interface InventoryOptions {
  run: CommandRunner;
  /** Root for /sys, /proc, /dev and /run reads. Default "/"; tests point it at a fixture tree. */
  sysRoot?: string;
  /**
   * The BOOTIF value (boot.pxe_interface). Undefined: read `BOOTIF=` from
   * <sysRoot>/proc/cmdline. Null: no PXE interface.
   */
  bootInterfaceMac?: string | null;
  /** Ironic's skip_bmc_detect (out-of-band management): bmc_* are null and bmc_mac is left out. */
  skipBmcDetect?: boolean;
  signal?: AbortSignal;
  /** Report loop devices among the disks (IPA never does). Default false. */
  includeLoop?: boolean;
  /**
   * When DMI cannot tell the installed RAM, estimate memory.physical_mb from
   * the firmware memory map or MemTotal instead of reporting null as IPA
   * does. Default true.
   */
  estimatePhysicalMemory?: boolean;
  /** Time limit per external command. Default 30 s. */
  commandTimeoutMs?: number;
}

/** `BOOTIF=` from a kernel command line, as given; null when absent. */
export function bootifFromCmdline(cmdline: string | null): string | null {
  if (cmdline === null) return null;
  for (const token of cmdline.trim().split(/\s+/)) {
    if (token.startsWith("BOOTIF=")) {
      const value = token.slice("BOOTIF=".length);
      return value === "" ? null : value;
    }
  }
  return null;
}

async function collectBoot(ctx: CollectContext, bootif: string | null | undefined): Promise<Boot> {
  const uefi = await ctx.fs.isDir("/sys/firmware/efi");
  const pxe = bootif !== undefined ? bootif : bootifFromCmdline(await ctx.fs.read("/proc/cmdline"));
  return { current_boot_mode: uefi ? "uefi" : "bios", pxe_interface: pxe };
}

export async function collectInventory(opts: InventoryOptions): Promise<Inventory> {
  const ctx: CollectContext = {
    run: opts.run,
    fs: new HostFs(opts.sysRoot ?? "/"),
    signal: opts.signal,
    timeoutMs: opts.commandTimeoutMs ?? 30_000,
  };
  ctx.signal?.throwIfAborted();

  const [interfaces, cpu, disks, memory, bmc, systemVendor, boot] = await Promise.all([
    collectInterfaces(ctx),
    collectCpu(ctx),
    collectDisks(ctx, { includeLoop: opts.includeLoop === true }),
    collectMemory(ctx, opts.estimatePhysicalMemory !== false),
    opts.skipBmcDetect === true ? Promise.resolve(null) : collectBmc(ctx),
    collectSystemVendor(ctx),
    collectBoot(ctx, opts.bootInterfaceMac),
  ]);

  const inventory: Inventory = {
    interfaces,
    cpu,
    disks,
    memory: memory.memory,
    bmc_address: bmc?.bmc_address ?? null,
    bmc_v6address: bmc?.bmc_v6address ?? null,
    system_vendor: systemVendor,
    boot,
    hostname: os.hostname(),
  };
  if (bmc?.bmc_mac !== undefined) inventory.bmc_mac = bmc.bmc_mac;
  return inventory;
}
