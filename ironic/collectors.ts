/**
 * Inspection collectors: each adds its part of the data posted to Ironic (or ironic-inspector), under
 * the keys and in the shapes IPA posts (test/ironic-inspection.test.ts compares them field by field
 * with a payload captured from IPA).
 *
 * | collector      | key(s)                                                  | source |
 * |----------------|---------------------------------------------------------|--------|
 * | default        | inventory, root_disk, boot_interface, configuration    | the managers' list_hardware_info |
 * | logs           | logs (base64 tar.gz)                                    | log.collect_system_logs' bundle |
 * | pci-devices    | pci_devices [{vendor_id, product_id, class, revision, bus}] | /sys/bus/pci/devices |
 * | numa-topology  | numa_topology {ram, cpus, nics}                         | /sys/devices/system/node, /sys/class/net |
 * | dmi-decode     | dmi {bios, cpu, memory}                                 | dmidecode -t bios -t processor -t memory |
 * | lldp           | not collected (needs raw sockets); logged               | |
 *
 * A collector that fails adds a line to `failures` (sent as `error`), except where IPA is lenient
 * (logs) and where ironbus is more lenient than IPA (dmidecode missing or failing, LLDP): those are
 * logged only, so an optional collector never fails an inspection.
 */
import { z } from "zod";
import type { Logger } from "../core/log.js";
import type { CommandRunner } from "../utilities/exec.js";
import { HostFs } from "../utilities/inventory/sysfs.js";

export const DEFAULT_COLLECTORS: readonly string[] = ["default"];
export const KNOWN_COLLECTORS: readonly string[] = ["default", "logs", "pci-devices", "numa-topology", "dmi-decode", "lldp"];
/** IPA's guess of the root disk: the smallest disk of at least this size. */
export const ROOT_DISK_MIN_BYTES = 4 * 1024 ** 3;

export interface ManagerVersion {
  readonly name: string;
  readonly version: string;
}

/**
 * What the default collector reads from the inventory. Managers may add fields (vendor managers do),
 * so only these are checked and everything is posted as given.
 */
const InventoryViewSchema = z.looseObject({
  disks: z.array(z.looseObject({ name: z.string(), size: z.number() })),
  boot: z.looseObject({ pxe_interface: z.string().nullable() }),
});

export interface DiskView {
  readonly name: string;
  readonly size: number;
}

export interface CollectorDeps {
  /** The managers' list_hardware_info (the inventory in IPA's schema). */
  readonly inventory: (signal?: AbortSignal) => Promise<unknown>;
  readonly managers: () => readonly ManagerVersion[];
  readonly systemLogs: (signal?: AbortSignal) => Promise<string>;
  readonly run: CommandRunner;
  readonly log: Logger;
  /** Root of /sys reads; default "/". */
  readonly sysRoot?: string;
}

export interface Collected {
  /** The data to post, keys in collector order; `error` is added by the caller. */
  readonly data: Record<string, unknown>;
  readonly failures: string[];
}

/** The smallest disk of at least 4 GiB (IPA's guess_root_disk), or undefined. */
export function guessRootDisk<D extends DiskView>(disks: readonly D[]): D | undefined {
  return [...disks].sort((a, b) => a.size - b.size).find((d) => d.size >= ROOT_DISK_MIN_BYTES);
}

/** "0x1af4" → "1af4"; undefined when the text has no "0x" prefix. */
function hexPart(text: string | null): string | undefined {
  if (text === null) return undefined;
  const i = text.indexOf("x");
  return i < 0 ? undefined : text.slice(i + 1);
}

export interface PciDevice {
  vendor_id: string;
  product_id: string;
  class: string;
  revision: string | null;
  bus: string;
}

export async function collectPciDevices(fs: HostFs, log: Logger): Promise<PciDevice[] | { error: string }> {
  const base = "/sys/bus/pci/devices";
  if (!(await fs.isDir(base))) return { error: `failed to get the list of PCI devices: ${base} is not readable` };
  const out: PciDevice[] = [];
  for (const bus of await fs.list(base)) {
    const dir = `${base}/${bus}`;
    if (!(await fs.isDir(dir))) continue;
    const vendor = hexPart(await fs.readTrim(`${dir}/vendor`));
    const device = hexPart(await fs.readTrim(`${dir}/device`));
    const cls = hexPart(await fs.readTrim(`${dir}/class`));
    if (vendor === undefined || device === undefined || cls === undefined) {
      log.warn({ bus }, "PCI device without readable vendor, device or class; skipped");
      continue;
    }
    const revision = hexPart(await fs.readTrim(`${dir}/revision`)) ?? null;
    out.push({ vendor_id: vendor, product_id: device, class: cls, revision, bus });
  }
  return out;
}

export interface NumaTopology {
  ram: { numa_node: number; size_kb: number }[];
  cpus: { cpu: number; numa_node: number; thread_siblings: number[] }[];
  nics: { name: string; numa_node: number }[];
}

const UNIT_KB: Readonly<Record<string, number>> = { kb: 1, mb: 1024, gb: 1024 * 1024 };

/** "Node 0 MemTotal:  6645964 kB" → 6645964. */
export function parseNodeMemTotal(meminfo: string): number | undefined {
  const m = /MemTotal:\s*(\d+)\s*([kKmMgG][bB])?/.exec(meminfo);
  if (m === null) return undefined;
  return Number(m[1]) * (UNIT_KB[(m[2] ?? "kB").toLowerCase()] ?? 1);
}

const byNumber = (prefix: string) => (a: string, b: string) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length));

export async function collectNumaTopology(fs: HostFs, log: Logger): Promise<NumaTopology | undefined> {
  const base = "/sys/devices/system/node";
  const nodes = (await fs.list(base)).filter((n) => /^node\d+$/.test(n)).sort(byNumber("node"));
  if (nodes.length === 0) {
    log.warn({ path: base }, "no NUMA nodes to report");
    return undefined;
  }
  const topology: NumaTopology = { ram: [], cpus: [], nics: [] };
  for (const node of nodes) {
    const id = Number(node.slice(4));
    const total = parseNodeMemTotal((await fs.read(`${base}/${node}/meminfo`)) ?? "");
    if (total === undefined) log.warn({ node }, "NUMA node without MemTotal");
    else topology.ram.push({ numa_node: id, size_kb: total });
    const cores = new Map<number, { cpu: number; numa_node: number; thread_siblings: number[] }>();
    for (const entry of (await fs.list(`${base}/${node}`)).filter((n) => /^cpu\d+$/.test(n)).sort(byNumber("cpu"))) {
      const thread = Number(entry.slice(3));
      const core = Number(await fs.readTrim(`${base}/${node}/${entry}/topology/core_id`));
      if (!Number.isInteger(core)) {
        log.warn({ node, cpu: entry }, "CPU without a readable core_id");
        continue;
      }
      const known = cores.get(core);
      if (known === undefined) cores.set(core, { cpu: core, numa_node: id, thread_siblings: [thread] });
      else if (!known.thread_siblings.includes(thread)) known.thread_siblings.push(thread);
    }
    topology.cpus.push(...cores.values());
  }
  for (const nic of await fs.list("/sys/class/net")) {
    if (!(await fs.isDir(`/sys/class/net/${nic}/device`))) continue;
    const raw = await fs.readTrim(`/sys/class/net/${nic}/device/numa_node`);
    if (raw === null || !/^-?\d+$/.test(raw)) continue;
    topology.nics.push({ name: nic, numa_node: Number(raw) });
  }
  return topology;
}

type DmiRows = Record<string, string | string[] | number>;

export interface DmiData {
  bios: DmiRows;
  cpu: DmiRows[];
  memory: DmiRows & { devices?: DmiRows[] };
}

/** One dmidecode block: "Key: value" rows; a "Key:" row starts a list filled by the indented lines after it. */
function parseDmiBlock(block: string): DmiRows {
  const rows: DmiRows = {};
  let listKey: string | undefined;
  for (const rawLine of block.split("\n")) {
    const line = rawLine.trim();
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon >= 0) {
      const key = line.slice(0, colon).trim();
      const value = line.slice(colon + 1).trim();
      if (value === "") {
        rows[key] = [];
        listKey = key;
      } else {
        rows[key] = value;
        listKey = undefined;
      }
    } else if (line.startsWith("Handle 0x")) {
      rows["Handle"] = line;
    } else if (listKey !== undefined) {
      const list = rows[listKey];
      if (Array.isArray(list)) list.push(line);
    }
  }
  return rows;
}

/** dmidecode's text → IPA's `dmi` object (types 0 bios, 4 cpu, 16 memory arrays, 17 memory devices). */
export function parseDmidecode(text: string): DmiData {
  const out: DmiData = { bios: {}, cpu: [], memory: { devices: [] } };
  const arrays: DmiRows[] = [];
  const devices: DmiRows[] = [];
  for (const block of text.split("\n\n")) {
    if (!block.startsWith("Handle 0x")) continue;
    const m = /DMI type (\d+)/.exec(block.split("\n", 1)[0] ?? "");
    if (m === null) continue;
    const type = Number(m[1]);
    if (type === 0) out.bios = parseDmiBlock(block);
    else if (type === 4) out.cpu.push(parseDmiBlock(block));
    else if (type === 16) arrays.push(parseDmiBlock(block));
    else if (type === 17) devices.push(parseDmiBlock(block));
  }
  const first = arrays[0];
  if (first !== undefined) {
    const count = arrays.reduce((sum, a) => sum + (Number(a["Number Of Devices"]) || 0), 0);
    const { Handle: _handle, ...rest } = first;
    out.memory = { ...rest, "Number Of Devices": count };
  }
  if (devices.length > 0) out.memory.devices = devices;
  return out;
}

/** Runs the collectors in the given order. Never throws but for an abort. */
export async function runCollectors(names: readonly string[], deps: CollectorDeps, signal?: AbortSignal): Promise<Collected> {
  const data: Record<string, unknown> = {};
  const failures: string[] = [];
  const fs = new HostFs(deps.sysRoot ?? "/");
  const log = deps.log;
  for (const name of names) {
    signal?.throwIfAborted();
    try {
      switch (name) {
        case "default": {
          const inventory = await deps.inventory(signal);
          data["inventory"] = inventory;
          const view = InventoryViewSchema.safeParse(inventory);
          if (!view.success) {
            failures.push(`the inventory lacks disks or boot: ${view.error.issues[0]?.message ?? "invalid"}`);
            data["boot_interface"] = null;
          } else {
            const root = guessRootDisk(view.data.disks);
            if (root === undefined) log.warn("no disk of 4 GiB or more: no root_disk in the inspection data");
            else data["root_disk"] = root;
            data["boot_interface"] = view.data.boot.pxe_interface;
          }
          data["configuration"] = { collectors: [...names], managers: deps.managers().map((m) => ({ name: m.name, version: m.version })) };
          break;
        }
        case "logs":
          try {
            data["logs"] = await deps.systemLogs(signal);
          } catch (err) {
            signal?.throwIfAborted();
            log.warn({ err: (err as Error).message }, "cannot collect the system logs for inspection");
          }
          break;
        case "pci-devices": {
          const pci = await collectPciDevices(fs, log);
          if (Array.isArray(pci)) data["pci_devices"] = pci;
          else failures.push(pci.error);
          break;
        }
        case "numa-topology": {
          const numa = await collectNumaTopology(fs, log);
          if (numa !== undefined) data["numa_topology"] = numa;
          break;
        }
        case "dmi-decode": {
          let res;
          try {
            res = await deps.run("dmidecode", ["-t", "bios", "-t", "processor", "-t", "memory"], { timeoutMs: 30_000, ...(signal === undefined ? {} : { signal }) });
          } catch (err) {
            signal?.throwIfAborted();
            log.warn({ err: (err as Error).message }, "dmidecode cannot run: no dmi in the inspection data");
            break;
          }
          if (res.code !== 0) {
            log.warn({ code: res.code, stderr: res.stderr.trim().slice(0, 500) }, "dmidecode failed: no dmi in the inspection data");
            break;
          }
          data["dmi"] = parseDmidecode(res.stdout);
          break;
        }
        case "lldp":
          log.warn("the lldp collector is not available in ironbus (it needs raw sockets); no lldp_raw in the inspection data");
          break;
        default:
          failures.push(`collector ${name} is not available (known: ${KNOWN_COLLECTORS.join(", ")})`);
      }
    } catch (err) {
      signal?.throwIfAborted();
      failures.push(`collector ${name} failed: ${(err as Error).message}`);
    }
  }
  return { data, failures };
}

/** The `error` field: null, or every failure on its own line. */
export function failureText(failures: readonly string[]): string | null {
  if (failures.length === 0) return null;
  return ["The following errors were encountered:", ...failures.map((f) => `* ${f}`)].join("\n");
}
