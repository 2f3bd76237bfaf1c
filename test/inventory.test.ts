import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { requireSamples } from "./helpers/samples.js";

import type { CommandResult, CommandRunner, RunOptions } from "../utilities/exec.js";
import { CommandError, execRunner, hasTool, whichTool } from "../utilities/exec.js";
import type { Inventory } from "../utilities/inventory/index.js";
import {
  InventorySchema,
  collectInventory,
  parseDmidecodeMemory,
  parseLsblk,
  roundInstalledMib,
} from "../utilities/inventory/index.js";

const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

// ---------------------------------------------------------------------------
// helpers

type Fake = (cmd: string, args: readonly string[]) => CommandResult | "ENOENT" | Promise<CommandResult | "ENOENT">;

/** A runner answering from `fake`; records every call. */
function fakeRunner(fake: Fake): CommandRunner & { calls: string[] } {
  const calls: string[] = [];
  const run = async (cmd: string, args: readonly string[], _opts?: RunOptions): Promise<CommandResult> => {
    calls.push([cmd, ...args].join(" "));
    const r = await fake(cmd, args);
    if (r === "ENOENT") throw new CommandError(`${cmd}: command not found`, "ENOENT", cmd);
    return r;
  };
  return Object.assign(run, { calls });
}

const ok = (stdout: string): CommandResult => ({ stdout, stderr: "", code: 0 });
const enoentEverything = fakeRunner(() => "ENOENT");

type Kind = "null" | "string" | "number" | "boolean" | "array" | "object" | "undefined";
function kind(v: unknown): Kind {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  const t = typeof v;
  if (t === "string" || t === "number" || t === "boolean" || t === "undefined") return t;
  return "object";
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return kind(v) === "object";
}

/** The inventory the ancestor agent (IPA 9.4.3) returned on this machine kind. */
const SAMPLE_PATH = path.join(requireSamples(), "inventory.json");

function loadSample(): Record<string, unknown> {
  const parsed: unknown = JSON.parse(readFileSync(SAMPLE_PATH, "utf8"));
  assert.ok(isRecord(parsed));
  return parsed;
}

/**
 * Fields newer IPA releases report that the 9.4.3 sample predates; the
 * only keys we may add.
 */
const DOCUMENTED_EXTRAS: Readonly<Record<string, readonly string[]>> = {
  "": ["bmc_mac"],
  "interfaces[]": ["speed_mbps", "pci_address", "driver"],
  cpu: ["socket_count"],
  "disks[]": ["logical_sectors", "physical_sectors", "tran"],
  system_vendor: ["firmware"],
};

/**
 * Deliberate type differences (docs/inventory.md): the sampled IPA ran
 * ipmitool without an IPMI device and reported "0.0.0.0"/"::/0"; current
 * IPA, and we, report null when there is no IPMI device.
 */
const NULLABLE_DIFFERENCES = new Set(["bmc_address", "bmc_v6address"]);

function compareShape(sample: unknown, ours: unknown, at: string, problems: string[]): void {
  const sk = kind(sample);
  const ok_ = kind(ours);
  if (sk !== ok_) {
    const tolerated = NULLABLE_DIFFERENCES.has(at) && (ok_ === "null" || ok_ === "string");
    if (!tolerated) problems.push(`${at || "<root>"}: sample is ${sk}, ours is ${ok_}`);
    return;
  }
  if (isRecord(sample) && isRecord(ours)) {
    for (const key of Object.keys(sample)) {
      if (!(key in ours)) problems.push(`${at}.${key}: missing`);
      else compareShape(sample[key], ours[key], at === "" ? key : `${at}.${key}`, problems);
    }
    const allowed = DOCUMENTED_EXTRAS[at] ?? [];
    for (const key of Object.keys(ours)) {
      if (!(key in sample) && !allowed.includes(key)) problems.push(`${at}.${key}: extra key not documented by IPA`);
    }
    return;
  }
  if (Array.isArray(sample) && Array.isArray(ours)) {
    // Arrays of objects: compare each of ours against the sample's first element.
    const proto = sample[0];
    if (!isRecord(proto)) {
      for (const item of ours) if (kind(item) !== kind(proto)) problems.push(`${at}[]: item kind ${kind(item)}`);
      return;
    }
    // Prefer the element describing the same device when there is one.
    for (const item of ours) {
      const name = isRecord(item) ? item["name"] : undefined;
      const match = sample.find((s) => isRecord(s) && s["name"] === name) ?? proto;
      compareShape(match, item, `${at}[]`, problems);
    }
  }
}

// ---------------------------------------------------------------------------

describe("execRunner", () => {
  test("reports exit codes without rejecting", async () => {
    const r = await execRunner("sh", ["-c", "echo out; echo err >&2; exit 3"]);
    assert.deepEqual(r, { stdout: "out\n", stderr: "err\n", code: 3 });
  });

  test("rejects with code ENOENT for a missing tool", async () => {
    await assert.rejects(execRunner("ironbus-no-such-tool", []), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.equal(err.code, "ENOENT");
      return true;
    });
    assert.equal(await hasTool("ironbus-no-such-tool"), false);
    assert.equal(await hasTool("sh"), true);
    assert.match((await whichTool("sh")) ?? "", /\/sh$/);
  });

  test("passes stdin, never uses a shell", async () => {
    const r = await execRunner("cat", [], { input: Buffer.from("$(echo no)") });
    assert.equal(r.stdout, "$(echo no)");
    const echoed = await execRunner("echo", ["a;b", "$HOME"]);
    assert.equal(echoed.stdout, "a;b $HOME\n");
  });

  test("times out, aborts and bounds output with a CommandError", async () => {
    await assert.rejects(execRunner("sleep", ["5"], { timeoutMs: 100 }), { code: "ETIMEDOUT" });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(execRunner("sleep", ["5"], { signal: ac.signal }), { code: "ABORT_ERR" });
    await assert.rejects(execRunner("head", ["-c", "100000", "/dev/zero"], { maxBuffer: 1000 }), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.equal(err.code, "ERR_CHILD_PROCESS_STDIO_MAXBUFFER");
      assert.equal(err.stdout.length, 1000);
      return true;
    });
  });
});

describe("collectInventory on this machine", () => {
  let inventory: Inventory;

  test("collects a schema-valid inventory", async () => {
    const raw: unknown = await collectInventory({ run: execRunner });
    inventory = InventorySchema.parse(raw);
  });

  test("has the keys and value types of the IPA sample at every level", () => {
    const problems: string[] = [];
    compareShape(loadSample(), inventory, "", problems);
    assert.deepEqual(problems, []);
  });

  test("reports sane values", async () => {
    const meminfo = readFileSync("/proc/meminfo", "utf8");
    const kb = /^MemTotal:\s+(\d+) kB/m.exec(meminfo)?.[1];
    assert.ok(kb !== undefined);
    assert.equal(inventory.memory.total, Number(kb) * 1024);
    assert.ok(inventory.memory.physical_mb !== null);
    assert.ok(inventory.memory.physical_mb * 1024 * 1024 >= Number(kb) * 1024, "installed RAM >= MemTotal");

    assert.equal(inventory.cpu.count, os.cpus().length);
    assert.ok(inventory.cpu.flags.length > 0);
    assert.ok(inventory.cpu.socket_count >= 1);
    assert.equal(inventory.hostname, os.hostname());
    assert.equal(inventory.boot.current_boot_mode, existsSync("/sys/firmware/efi") ? "uefi" : "bios");

    for (const disk of inventory.disks) {
      assert.match(disk.name, /^\/dev\//);
      assert.ok(disk.size > 0);
      assert.doesNotMatch(disk.name, /^\/dev\/(loop|ram|zram|fd)/);
    }
    for (const nic of inventory.interfaces) {
      assert.notEqual(nic.name, "lo");
      assert.match(nic.mac_address, /^[0-9a-f]{2}(:[0-9a-f]{2})+$/);
    }
    if (!existsSync("/dev/ipmi0") && !existsSync("/dev/ipmi/0") && !existsSync("/dev/ipmidev/0")) {
      assert.equal(inventory.bmc_address, null);
      assert.equal(inventory.bmc_v6address, null);
      assert.equal("bmc_mac" in inventory, false);
    }
  });

  test("lists /dev/vda with the size blockdev reports", { skip: !existsSync("/dev/vda") }, async (t) => {
    const vda = inventory.disks.find((d) => d.name === "/dev/vda");
    assert.ok(vda, "disks include /dev/vda");
    const res = await execRunner("blockdev", ["--getsize64", "/dev/vda"]);
    if (res.code === 0) {
      assert.equal(vda.size, Number(res.stdout.trim()));
    } else {
      // Sandboxes may refuse to open the device node even to root ("Operation
      // not permitted"); the kernel's own count of 512-byte sectors is the
      // same figure BLKGETSIZE64 returns.
      t.diagnostic(`blockdev failed (${res.stderr.trim()}); comparing with /sys/block/vda/size`);
      const sectors = Number(readFileSync("/sys/block/vda/size", "utf8").trim());
      assert.equal(vda.size, sectors * 512);
    }
  });

  test("skipBmcDetect leaves the BMC fields null", async () => {
    const inv = await collectInventory({ run: execRunner, skipBmcDetect: true, bootInterfaceMac: "01-02-fc-00-00-00-01" });
    assert.equal(inv.bmc_address, null);
    assert.equal(inv.bmc_v6address, null);
    assert.equal(inv.bmc_mac, undefined);
    assert.equal(inv.boot.pxe_interface, "01-02-fc-00-00-00-01");
  });

  test("rejects when aborted", async () => {
    await assert.rejects(collectInventory({ run: execRunner, signal: AbortSignal.abort() }), { name: "AbortError" });
  });
});

describe("loop devices", () => {
  test("appear with includeLoop only", { skip: !isRoot ? "needs root" : false }, async (t) => {
    if (!(await hasTool("losetup"))) {
      t.skip("losetup missing");
      return;
    }
    const dir = await mkdtemp(path.join(os.tmpdir(), "ironbus-loop-"));
    const img = path.join(dir, "disk.img");
    let device: string | null = null;
    t.after(async () => {
      if (device !== null) await execRunner("losetup", ["-d", device]);
      await rm(dir, { recursive: true, force: true });
    });

    const fh = await open(img, "w");
    await fh.truncate(64 * 1024 * 1024); // sparse
    await fh.close();
    const attach = await execRunner("losetup", ["-f", "--show", img]);
    assert.equal(attach.code, 0, attach.stderr);
    device = attach.stdout.trim();
    assert.match(device, /^\/dev\/loop\d+$/);

    const withLoop = await collectInventory({ run: execRunner, includeLoop: true, skipBmcDetect: true });
    InventorySchema.parse(withLoop);
    const loop = withLoop.disks.find((d) => d.name === device);
    assert.ok(loop, `${device} listed with includeLoop`);
    assert.equal(loop.size, 67108864);
    assert.equal(loop.hctl, null);

    const without = await collectInventory({ run: execRunner, skipBmcDetect: true });
    assert.equal(
      without.disks.some((d) => d.name === device),
      false,
    );
  });
});

describe("degraded sources", () => {
  test("no tools and an empty root still give a valid, empty inventory", async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-empty-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    const run = fakeRunner(() => "ENOENT");
    const inv = InventorySchema.parse(await collectInventory({ run, sysRoot: root }));

    assert.ok(run.calls.some((c) => c.startsWith("lsblk")), "lsblk was tried");
    assert.deepEqual(inv.interfaces, []);
    assert.deepEqual(inv.disks, []);
    assert.equal(inv.cpu.model_name, "");
    assert.equal(inv.cpu.frequency, null);
    assert.deepEqual(inv.cpu.flags, []);
    assert.equal(inv.cpu.socket_count, 0);
    assert.deepEqual(inv.system_vendor, {
      product_name: "",
      serial_number: "",
      manufacturer: "",
      firmware: { vendor: "", version: "", build_date: "" },
    });
    assert.equal(inv.bmc_address, null);
    assert.equal(inv.bmc_v6address, null);
    assert.equal("bmc_mac" in inv, false);
    assert.deepEqual(inv.boot, { current_boot_mode: "bios", pxe_interface: null });
    // Process-level fallbacks (os.totalmem, os.cpus, os.machine) still answer.
    assert.equal(inv.memory.total, os.totalmem());
    assert.equal(inv.cpu.count, os.cpus().length);

    const noEstimate = await collectInventory({ run, sysRoot: root, estimatePhysicalMemory: false });
    assert.equal(noEstimate.memory.physical_mb, null, "IPA reports null when it cannot read the DIMMs");
  });

  test("garbage from lsblk gives no disks and no error", async () => {
    for (const garbage of ['{"blockdevices": [', "not json at all", '{"blockdevices": "nope"}', "[]", ""]) {
      const run = fakeRunner((cmd) => (cmd === "lsblk" ? ok(garbage) : "ENOENT"));
      const inv = await collectInventory({ run, skipBmcDetect: true });
      assert.deepEqual(inv.disks, [], `lsblk output ${JSON.stringify(garbage)}`);
      InventorySchema.parse(inv);
    }
    const failing = fakeRunner((cmd) => (cmd === "lsblk" ? { stdout: "", stderr: "boom", code: 1 } : "ENOENT"));
    assert.deepEqual((await collectInventory({ run: failing, skipBmcDetect: true })).disks, []);
    assert.equal(failing.calls.filter((c) => c.startsWith("lsblk")).length, 2, "retried with the base columns");
  });

  test("a runner that hangs is bounded by commandTimeoutMs", async () => {
    const run: CommandRunner = (cmd, args, opts) => execRunner("sleep", ["10"], opts).then(() => ok(`${cmd} ${args.join(" ")}`));
    const started = Date.now();
    const inv = await collectInventory({ run, commandTimeoutMs: 200, skipBmcDetect: true });
    assert.ok(Date.now() - started < 8000);
    assert.deepEqual(inv.disks, []);
  });
});

describe("fixture machine", () => {
  /** Build a fake /sys, /proc, /dev, /run tree. */
  async function buildFixture(root: string): Promise<void> {
    const w = async (p: string, content: string): Promise<void> => {
      const full = path.join(root, p);
      await mkdir(path.dirname(full), { recursive: true });
      await writeFile(full, content);
    };
    const d = (p: string): Promise<string | undefined> => mkdir(path.join(root, p), { recursive: true });
    const l = async (p: string, target: string): Promise<void> => {
      await mkdir(path.dirname(path.join(root, p)), { recursive: true });
      await symlink(target, path.join(root, p));
    };

    // NICs: a PCI NIC, a VLAN on it, a bond, loopback and a virtual ifb.
    const pci = "sys/devices/pci0000:00/0000:00:19.0";
    await w(`${pci}/vendor`, "0x8086\n");
    await w(`${pci}/device`, "0x15b8\n");
    await d("sys/bus/pci/drivers/e1000e");
    await l(`${pci}/driver`, "../../../bus/pci/drivers/e1000e");
    await w("sys/class/net/eno1/address", "3c:ec:ef:00:00:01\n");
    await w("sys/class/net/eno1/carrier", "1\n");
    await w("sys/class/net/eno1/speed", "1000\n");
    await l("sys/class/net/eno1/device", "../../../devices/pci0000:00/0000:00:19.0");
    await w("sys/class/net/eno1.100/address", "3c:ec:ef:00:00:01\n");
    await w("sys/class/net/eno1.100/carrier", "1\n");
    await w("sys/class/net/bond0/address", "3c:ec:ef:00:00:09\n");
    await d("sys/class/net/bond0/bonding");
    await w("sys/class/net/bond0/speed", "-1\n");
    await w("sys/class/net/lo/address", "00:00:00:00:00:00\n");
    await w("sys/class/net/ifb0/address", "6a:72:21:ea:99:ca\n");
    await w("sys/class/net/vf0/address", "fa:16:3e:00:00:01\n");
    await l("sys/class/net/vf0/device", "../../../devices/pci0000:00/0000:00:19.0");

    // Disks: sda (SATA, udev ids, by-path), sdb+sdc multipath members of dm-0.
    await w("sys/class/block/sda/dev", "8:0\n");
    await w("sys/class/block/sda/device/vendor", "ATA     \n");
    await d("sys/block/sda/device/scsi_device/0:0:0:0");
    await w(
      "run/udev/data/b8:0",
      "S:disk/by-id/wwn-0x5000c500a1b2c3d4\nE:ID_SERIAL=ST2000_Z1X2\nE:ID_SERIAL_SHORT=Z1X2\nE:ID_WWN=0x5000c500a1b2c3d4\nE:ID_WWN_WITH_EXTENSION=0x5000c500a1b2c3d4\nE:ID_WWN_VENDOR_EXTENSION=\n",
    );
    await l("dev/disk/by-path/pci-0000:00:17.0-ata-1", "../../sda");
    await l("dev/disk/by-path/pci-0000:00:17.0-ata-1.0", "../../sda");
    await l("dev/disk/by-path/pci-0000:00:17.0-ata-1-part1", "../../sda1");
    await d("sys/block/sdb/holders/dm-0");
    await d("sys/block/sdc/holders/dm-0");
    await w("sys/block/dm-0/dm/uuid", "mpath-3600508b400105e210000900000490000\n");

    // CPU, memory, firmware, boot.
    const core = (n: number): string =>
      `processor\t: ${n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\ncpu MHz\t\t: 2000.000\nphysical id\t: ${n % 2}\nflags\t\t: fpu vme sse2 avx2\n`;
    await w("proc/cpuinfo", [0, 1, 2, 3].map(core).join("\n"));
    await w("proc/meminfo", "MemTotal:       32594420 kB\nMemFree:        1000 kB\n");
    await w("sys/firmware/memmap/0/start", "0x0\n");
    await w("sys/firmware/memmap/0/end", "0x9fbff\n");
    await w("sys/firmware/memmap/0/type", "System RAM\n");
    await w("sys/firmware/memmap/1/start", "0x100000\n");
    await w("sys/firmware/memmap/1/end", "0x7fffffff\n");
    await w("sys/firmware/memmap/1/type", "System RAM\n");
    await w("sys/firmware/memmap/2/start", "0x100000000\n");
    await w("sys/firmware/memmap/2/end", "0x87fffffff\n");
    await w("sys/firmware/memmap/2/type", "System RAM\n");
    await w("sys/firmware/memmap/3/start", "0x80000000\n");
    await w("sys/firmware/memmap/3/end", "0x8fffffff\n");
    await w("sys/firmware/memmap/3/type", "Reserved\n");
    await w("sys/class/dmi/id/product_name", "PowerEdge R650\n");
    await w("sys/class/dmi/id/product_sku", "SKU=0A4C\n");
    await w("sys/class/dmi/id/sys_vendor", "Dell Inc.\n");
    await w("sys/class/dmi/id/product_serial", "ABC1234\n");
    await w("sys/class/dmi/id/bios_vendor", "Dell Inc.\n");
    await w("sys/class/dmi/id/bios_version", "1.9.2\n");
    await w("sys/class/dmi/id/bios_date", "02/20/2023\n");
    await d("sys/firmware/efi/efivars");
    await w("proc/cmdline", "ro console=ttyS0 BOOTIF=01-3c-ec-ef-00-00-01 ipa-debug=1\n");
  }

  const LSBLK = JSON.stringify({
    blockdevices: [
      { kname: "sda", model: "ST2000NM0055", size: 2000398934016, rota: true, type: "disk", serial: "", wwn: null, "log-sec": 512, "phy-sec": 4096, tran: "sata", vendor: "ATA     ", hctl: "0:0:0:0",
        children: [{ kname: "sda1", model: null, size: 1048576, rota: true, type: "part", serial: null, wwn: null, "log-sec": 512, "phy-sec": 4096, tran: null, vendor: null, hctl: null }] },
      { kname: "sdb", model: "MSA", size: "1099511627776", rota: "0", type: "disk", serial: "SB", wwn: "0x600508b4", "log-sec": "512", "phy-sec": "512", tran: "fc", vendor: "HP", hctl: "1:0:0:1" },
      { kname: "sdc", model: "MSA", size: "1099511627776", rota: "0", type: "disk", serial: "SC", wwn: "0x600508b4", "log-sec": "512", "phy-sec": "512", tran: "fc", vendor: "HP", hctl: "2:0:0:1" },
      { kname: "dm-0", model: null, size: "1099511627776", rota: "0", type: "mpath", serial: null, wwn: null, "log-sec": "512", "phy-sec": "512", tran: null, vendor: null, hctl: null },
      { kname: "nvme0n1", model: "Samsung SSD 980 PRO 1TB", size: 1000204886016, rota: false, type: "disk", serial: "S5GXNX0T", wwn: "eui.002538b", "log-sec": 512, "phy-sec": 512, tran: "nvme", vendor: null, hctl: null },
      { kname: "md0", model: null, size: 1000000000, rota: false, type: "raid1", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: null, vendor: null, hctl: null },
      { kname: "md0p1", model: null, size: 900000000, rota: false, type: "md", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: null, vendor: null, hctl: null },
      { kname: "sr0", model: "Virtual CD", size: 1000, rota: true, type: "rom", serial: null, wwn: null, "log-sec": 2048, "phy-sec": 2048, tran: "usb", vendor: null, hctl: null },
      { kname: "fd0", model: null, size: 4096, rota: true, type: "disk", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: null, vendor: null, hctl: null },
      { kname: "ram0", model: null, size: 8388608, rota: false, type: "disk", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: null, vendor: null, hctl: null },
      { kname: "zram0", model: null, size: 8388608, rota: false, type: "disk", serial: null, wwn: null, "log-sec": 4096, "phy-sec": 4096, tran: null, vendor: null, hctl: null },
      { kname: "sdf", model: "virtual floppy", size: 0, rota: true, type: "disk", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: "usb", vendor: null, hctl: null },
      { kname: "loop0", model: null, size: 67108864, rota: false, type: "loop", serial: null, wwn: null, "log-sec": 512, "phy-sec": 512, tran: null, vendor: null, hctl: null },
      { kname: "sda", model: "duplicate", size: 1, rota: true, type: "disk" },
    ],
  });

  const LSCPU_TEXT = [
    "Architecture:            x86_64",
    "CPU(s):                  4",
    "Model name:              Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
    "Socket(s):               2",
    "CPU max MHz:             3200.0000",
    "CPU min MHz:             800.0000",
    "Flags:                   fpu vme de pse tsc msr",
  ].join("\n");

  const IP_ADDR = JSON.stringify([
    { ifname: "lo", address: "00:00:00:00:00:00", addr_info: [{ family: "inet", local: "127.0.0.1" }] },
    {
      ifname: "eno1",
      address: "02:00:00:00:00:aa",
      permaddr: "3c:ec:ef:00:00:01",
      addr_info: [
        { family: "inet6", local: "2001:db8::10" },
        { family: "inet", local: "10.0.0.10" },
        { family: "inet", local: "10.0.0.11" },
        { family: "inet6", local: "fe80::1" },
      ],
    },
    { ifname: "eno1.100", address: "3c:ec:ef:00:00:01", addr_info: [{ family: "inet", local: "192.168.100.5" }] },
    { ifname: "bond0", address: "3c:ec:ef:00:00:09", addr_info: [] },
  ]);

  const LAN_PRINT = (ip: string, mac: string): string =>
    [
      "Set in Progress         : Set Complete",
      "IP Address Source       : Static Address",
      `IP Address              : ${ip}`,
      "Subnet Mask             : 255.255.255.0",
      `MAC Address             : ${mac}`,
      "Default Gateway IP      : 10.1.0.1",
    ].join("\n");

  const LAN6_DYNAMIC = [
    "IPv6 Dynamic Address 0:",
    "    Source/Type:    DHCPv6",
    "    Address:        ::/0",
    "    Status:         active",
    "IPv6 Dynamic Address 1:",
    "    Source/Type:    SLAAC",
    "    Address:        2001:db8:1::42/64",
    "    Status:         active",
  ].join("\n");

  function fixtureRunner(): ReturnType<typeof fakeRunner> {
    return fakeRunner((cmd, args) => {
      const a = args.join(" ");
      switch (cmd) {
        case "lsblk":
          return ok(LSBLK);
        case "lscpu":
          // An old lscpu without --json: exit 1, then plain text.
          return a === "--json" ? { stdout: "", stderr: "lscpu: unrecognized option", code: 1 } : ok(LSCPU_TEXT);
        case "ip":
          return ok(IP_ADDR);
        case "biosdevname":
          return a === "-i eno1" ? ok("em1\n") : { stdout: "", stderr: "", code: 4 };
        case "ipmitool":
          if (a === "lan print 1") return ok(LAN_PRINT("0.0.0.0", "00:00:00:00:00:00"));
          if (a === "lan print 2") return ok(LAN_PRINT("10.1.0.20", "AA:BB:CC:00:11:22"));
          if (a === "lan6 print 1 enables") return ok("IPv6/IPv4 Addressing Enables    : ipv4\n");
          if (a === "lan6 print 2 enables") return ok("IPv6/IPv4 Addressing Enables    : both\n");
          if (a === "lan6 print 2 dynamic_addr") return ok(LAN6_DYNAMIC);
          return { stdout: "", stderr: `Invalid channel: ${args[2] ?? ""}\n`, code: 1 };
        default:
          return "ENOENT"; // dmidecode & co: fall back to sysfs
      }
    });
  }

  test("collects every field from fixture sources", { skip: !isRoot ? "mknod needs root" : false }, async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-fixture-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    await buildFixture(root);
    await mkdir(path.join(root, "dev"), { recursive: true });
    const mknod = await execRunner("mknod", [path.join(root, "dev/ipmi0"), "c", "1", "3"]);
    assert.equal(mknod.code, 0, mknod.stderr);

    const run = fixtureRunner();
    const inv = await collectInventory({ run, sysRoot: root });
    InventorySchema.parse(inv);

    assert.deepEqual(
      inv.interfaces.map((i) => i.name),
      ["bond0", "eno1", "eno1.100"],
      "lo, ifb0 (no device) and vf0 (fa: MAC) are skipped",
    );
    const eno1 = inv.interfaces.find((i) => i.name === "eno1");
    assert.deepEqual(eno1, {
      name: "eno1",
      mac_address: "3c:ec:ef:00:00:01",
      ipv4_address: "10.0.0.10",
      ipv6_address: "2001:db8::10",
      has_carrier: true,
      lldp: null,
      vendor: "0x8086",
      product: "0x15b8",
      client_id: null,
      biosdevname: "em1",
      speed_mbps: 1000,
      pci_address: "0000:00:19.0",
      driver: "e1000e",
    });
    const bond = inv.interfaces.find((i) => i.name === "bond0");
    assert.equal(bond?.speed_mbps, null);
    assert.equal(bond?.pci_address, null);
    assert.equal(bond?.has_carrier, false);
    assert.equal(inv.interfaces.find((i) => i.name === "eno1.100")?.biosdevname, null);
    assert.equal(run.calls.includes("biosdevname -i eno1.100"), false, "no biosdevname for VLANs");

    assert.deepEqual(
      inv.disks.map((d) => d.name),
      ["/dev/sda", "/dev/dm-0", "/dev/nvme0n1", "/dev/md0"],
    );
    assert.deepEqual(inv.disks[0], {
      name: "/dev/sda",
      model: "ST2000NM0055",
      size: 2000398934016,
      rotational: true,
      wwn: "0x5000c500a1b2c3d4",
      serial: "Z1X2",
      vendor: "ATA",
      wwn_with_extension: "0x5000c500a1b2c3d4",
      wwn_vendor_extension: null,
      hctl: "0:0:0:0",
      by_path: "/dev/disk/by-path/pci-0000:00:17.0-ata-1",
      logical_sectors: 512,
      physical_sectors: 4096,
      tran: "sata",
    });
    const dm = inv.disks[1];
    assert.equal(dm?.size, 1099511627776);
    assert.equal(dm?.rotational, false);
    assert.equal(inv.disks[2]?.serial, "S5GXNX0T");
    assert.equal(inv.disks[2]?.wwn, "eui.002538b");
    assert.equal(inv.disks[2]?.tran, "nvme");

    assert.deepEqual(inv.cpu, {
      model_name: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
      frequency: "3200.0000",
      count: 4,
      architecture: "x86_64",
      flags: ["fpu", "vme", "de", "pse", "tsc", "msr"],
      socket_count: 2,
    });

    // 0x9fc00 + 0x7ff00000 + 0x780000000 bytes of System RAM -> 32 GiB installed.
    assert.deepEqual(inv.memory, { total: 32594420 * 1024, physical_mb: 32768 });

    assert.deepEqual(inv.system_vendor, {
      product_name: "PowerEdge R650 (SKU=0A4C)",
      serial_number: "ABC1234",
      manufacturer: "Dell Inc.",
      firmware: { vendor: "Dell Inc.", version: "1.9.2", build_date: "02/20/2023" },
    });
    assert.deepEqual(inv.boot, { current_boot_mode: "uefi", pxe_interface: "01-3c-ec-ef-00-00-01" });

    assert.equal(inv.bmc_address, "10.1.0.20");
    assert.equal(inv.bmc_v6address, "2001:db8:1::42");
    assert.equal(inv.bmc_mac, "aa:bb:cc:00:11:22");
    assert.deepEqual(Object.keys(inv).at(-1), "bmc_mac");
  });

  test("without an IPMI device ipmitool is never run", async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-fixture-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    await buildFixture(root);
    const run = fixtureRunner();
    const inv = await collectInventory({ run, sysRoot: root, bootInterfaceMac: null });
    assert.equal(inv.bmc_address, null);
    assert.equal(inv.bmc_v6address, null);
    assert.equal(run.calls.some((c) => c.startsWith("ipmitool")), false);
    assert.equal(inv.boot.pxe_interface, null, "an explicit null wins over /proc/cmdline");
    const loops = await collectInventory({ run, sysRoot: root, includeLoop: true });
    assert.ok(loops.disks.some((d) => d.name === "/dev/loop0" && d.size === 67108864));
  });

  test("IPMI present but ipmitool missing gives null", { skip: !isRoot ? "mknod needs root" : false }, async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-fixture-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    await mkdir(path.join(root, "dev/ipmi"), { recursive: true });
    const mknod = await execRunner("mknod", [path.join(root, "dev/ipmi/0"), "c", "1", "3"]);
    assert.equal(mknod.code, 0, mknod.stderr);
    const inv = await collectInventory({ run: enoentEverything, sysRoot: root });
    assert.equal(inv.bmc_address, null);
    assert.equal(inv.bmc_v6address, null);

    const noAddress = fakeRunner((cmd, args) =>
      cmd === "ipmitool" && args[0] === "lan" && args[2] === "1"
        ? ok("IP Address              : 0.0.0.0\nMAC Address             : 00:00:00:00:00:00\n")
        : cmd === "ipmitool"
          ? { stdout: "", stderr: "Invalid channel: 9\n", code: 1 }
          : "ENOENT",
    );
    const none = await collectInventory({ run: noAddress, sysRoot: root });
    assert.equal(none.bmc_address, "0.0.0.0");
    assert.equal(none.bmc_v6address, "::/0");
    assert.equal("bmc_mac" in none, false);
  });
});

describe("parsers", () => {
  test("dmidecode memory banks are summed in MiB", () => {
    const out = [
      "# dmidecode 3.4",
      "Handle 0x1000, DMI type 16, 23 bytes",
      "Physical Memory Array",
      "\tMaximum Capacity: 2 TB",
      "",
      "Handle 0x1100, DMI type 17, 84 bytes",
      "Memory Device",
      "\tTotal Width: 72 bits",
      "\tSize: 32 GB",
      "\tVolatile Size: 32 GB",
      "",
      "Handle 0x1101, DMI type 17, 84 bytes",
      "Memory Device",
      "\tSize: No Module Installed",
      "",
      "Handle 0x1102, DMI type 17, 84 bytes",
      "Memory Device",
      "\tSize: 16384 MB",
      "",
      "Handle 0x1103, DMI type 17, 84 bytes",
      "Memory Device",
      "\tSize: 512 kB",
      "",
    ].join("\n");
    assert.equal(parseDmidecodeMemory(out), 32768 + 16384 + 0);
    assert.equal(parseDmidecodeMemory(null), 0);
  });

  test("installed RAM rounding", () => {
    assert.equal(roundInstalledMib(24575.62), 24576);
    assert.equal(roundInstalledMib(24105.5), 24576);
    assert.equal(roundInstalledMib(1535.6), 1536);
    assert.equal(roundInstalledMib(2048), 2048);
    assert.equal(roundInstalledMib(261427), 262144);
    assert.equal(roundInstalledMib(0), 0);
  });

  test("lsblk tree output is flattened", () => {
    const devs = parseLsblk(
      JSON.stringify({
        blockdevices: [{ kname: "sda", type: "disk", size: 1, children: [{ kname: "sda1", type: "part", children: [{ kname: "md0", type: "raid1" }] }] }, { bogus: true }],
      }),
    );
    assert.deepEqual(
      devs.map((x) => x.kname),
      ["sda", "sda1", "md0"],
    );
  });
});
