/**
 * Root device hints and the default choice: every operator, table-driven, on a device list shaped like
 * a real server's; the skip list; the default policy with its explanation; and one run on real loop
 * devices through the generic manager's get_os_install_device (hint by name, by size, no hint).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { JsonObject } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { findDevicesByHints, HintError, parseHints, pyQuote } from "../utilities/disk/hints.js";
import { chooseRootDevice, type RootChoice, type RootFacts } from "../utilities/disk/root.js";
import { createLoopDevice } from "./helpers/loop.js";
import { diskAgent, foreignDisks } from "./fixtures/disk/harness.js";

const GiB = 2 ** 30;

function dev(name: string, over: Partial<RootFacts>): RootFacts {
  return {
    name,
    size: 0,
    rotational: false,
    model: null,
    vendor: null,
    serial: null,
    wwn: null,
    wwn_with_extension: null,
    wwn_vendor_extension: null,
    hctl: null,
    by_path: null,
    tran: null,
    read_only: false,
    removable: false,
    virtualMedia: null,
    raidMember: null,
    ...over,
  };
}

/** A server: two SATA disks, an NVMe, a USB stick, the BMC's virtual disk, a SATADOM, a VM-style disk. */
const DEVICES: readonly RootFacts[] = [
  dev("/dev/sda", {
    size: 500107862016,
    model: "Samsung SSD 860 EVO 500GB",
    vendor: "ATA",
    serial: ["S3Z2NB0K412345A", "Samsung_SSD_860_EVO_500GB_S3Z2NB0K412345A"],
    wwn: ["0x5002538e4091a2b3"],
    wwn_with_extension: "0x5002538e4091a2b3",
    hctl: "0:0:0:0",
    by_path: "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
    tran: "sata",
  }),
  dev("/dev/sdb", {
    size: 4000787030016,
    rotational: true,
    model: "ST4000NM0035-1V4107",
    vendor: "ATA",
    serial: "ZC1ABCDE",
    wwn: "0x5000c500a1b2c3d4",
    wwn_with_extension: "0x5000c500a1b2c3d4a1b2c3d4e5f60718",
    wwn_vendor_extension: "0xa1b2c3d4e5f60718",
    hctl: "1:0:0:0",
    by_path: "/dev/disk/by-path/pci-0000:00:1f.2-ata-2",
    tran: "sata",
  }),
  dev("/dev/nvme0n1", { size: 1000204886016, model: "Samsung SSD 970 EVO Plus 1TB", serial: "S4EWNX0R412345M", wwn: "eui.0025385b91234567", tran: "nvme" }),
  dev("/dev/sdc", { size: 16 * GiB, model: "Ultra Fit", vendor: "SanDisk", serial: "4C530001230918115171", tran: "usb", removable: true, rotational: true, hctl: "6:0:0:0" }),
  dev("/dev/sdd", { size: 8 * GiB, model: "Virtual HDisk0", vendor: "AMI", tran: "usb", rotational: true, hctl: "7:0:0:0" }),
  dev("/dev/sde", { size: 2 * GiB, model: "SATADOM-SL 3ME", vendor: "ATA", tran: "sata", hctl: "2:0:0:0" }),
  dev("/dev/sdf", { size: 10 * GiB, model: "QEMU HARDDISK", vendor: "QEMU", serial: "QM00005", rotational: true, hctl: "3:0:0:0", tran: "sata" }),
];

const names = (hints: JsonObject): string[] => findDevicesByHints(DEVICES, hints).map((d) => d.name);

/** [hints, devices that match, in listing order] */
const TABLE: readonly (readonly [JsonObject, readonly string[]])[] = [
  // size: integer GiB; default ==; `=` means ≥
  [{ size: 10 }, ["/dev/sdf"]],
  [{ size: "10" }, ["/dev/sdf"]],
  [{ size: "== 10" }, ["/dev/sdf"]],
  [{ size: "= 900" }, ["/dev/sdb", "/dev/nvme0n1"]],
  [{ size: ">= 931" }, ["/dev/sdb", "/dev/nvme0n1"]],
  [{ size: "> 931" }, ["/dev/sdb", "/dev/nvme0n1"]],
  [{ size: "> 932" }, ["/dev/sdb"]],
  [{ size: "< 10" }, ["/dev/sdd", "/dev/sde"]],
  [{ size: "<= 10" }, ["/dev/sdd", "/dev/sde", "/dev/sdf"]],
  [{ size: "!= 10" }, ["/dev/sda", "/dev/sdb", "/dev/nvme0n1", "/dev/sdc", "/dev/sdd", "/dev/sde"]],
  [{ size: "<or> 10 <or> 16" }, ["/dev/sdc", "/dev/sdf"]],
  // strings: lower-cased and URL-quoted on both sides; default s==
  [{ model: "Samsung SSD 860 EVO 500GB" }, ["/dev/sda"]],
  [{ model: "samsung ssd 860 evo 500gb" }, ["/dev/sda"]],
  [{ model: "s== SAMSUNG SSD 860 EVO 500GB" }, ["/dev/sda"]],
  [{ model: "s!= Samsung SSD 860 EVO 500GB" }, ["/dev/sdb", "/dev/nvme0n1", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdf"]],
  [{ model: "s< r" }, ["/dev/sdf"]],
  [{ model: "s<= qemu harddisk" }, ["/dev/sdf"]],
  [{ model: "s> satadom-sl 3me" }, ["/dev/sdb", "/dev/sdc", "/dev/sdd"]],
  [{ model: "s>= ultra" }, ["/dev/sdc", "/dev/sdd"]],
  [{ model: "<in> samsung" }, ["/dev/sda", "/dev/nvme0n1"]],
  [{ model: "<in> EVO Plus" }, ["/dev/nvme0n1"]],
  [{ model: "<all-in> samsung 970" }, ["/dev/nvme0n1"]],
  [{ model: "<all-in> samsung evo" }, ["/dev/sda", "/dev/nvme0n1"]],
  [{ model: "<or> ultra fit <or> virtual hdisk0" }, ["/dev/sdc", "/dev/sdd"]],
  [{ vendor: "sandisk" }, ["/dev/sdc"]],
  [{ vendor: "<or> ami <or> qemu" }, ["/dev/sdd", "/dev/sdf"]],
  // list-valued serial and wwn: any element matches
  [{ serial: "S3Z2NB0K412345A" }, ["/dev/sda"]],
  [{ serial: "samsung_ssd_860_evo_500gb_s3z2nb0k412345a" }, ["/dev/sda"]],
  [{ serial: "<in> 12345" }, ["/dev/sda", "/dev/nvme0n1"]],
  [{ wwn: "0x5002538e4091a2b3" }, ["/dev/sda"]],
  [{ wwn: "0x5000C500A1B2C3D4" }, ["/dev/sdb"]],
  [{ wwn_with_extension: "0x5000c500a1b2c3d4a1b2c3d4e5f60718" }, ["/dev/sdb"]],
  [{ wwn_vendor_extension: "0xa1b2c3d4e5f60718" }, ["/dev/sdb"]],
  [{ name: "/dev/nvme0n1" }, ["/dev/nvme0n1"]],
  [{ name: "s== /dev/sda" }, ["/dev/sda"]],
  [{ name: "<in> /dev/sd" }, ["/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdf"]],
  [{ hctl: "1:0:0:0" }, ["/dev/sdb"]],
  [{ by_path: "/dev/disk/by-path/pci-0000:00:1f.2-ata-2" }, ["/dev/sdb"]],
  [{ tran: "usb" }, ["/dev/sdc", "/dev/sdd"]],
  [{ tran: "<or> nvme <or> usb" }, ["/dev/nvme0n1", "/dev/sdc", "/dev/sdd"]],
  // rotational: oslo's strict booleans
  [{ rotational: true }, ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sdf"]],
  [{ rotational: "yes" }, ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sdf"]],
  [{ rotational: "1" }, ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sdf"]],
  [{ rotational: false }, ["/dev/sda", "/dev/nvme0n1", "/dev/sde"]],
  [{ rotational: "off" }, ["/dev/sda", "/dev/nvme0n1", "/dev/sde"]],
  // every hint must match
  [{ rotational: false, size: ">= 400" }, ["/dev/sda", "/dev/nvme0n1"]],
  [{ rotational: false, size: ">= 400", tran: "nvme" }, ["/dev/nvme0n1"]],
  [{ model: "<in> samsung", serial: "ZC1ABCDE" }, []],
  // fields a device does not have never match
  [{ wwn: "<in> 0x" }, ["/dev/sda", "/dev/sdb"]],
];

describe("root device hints (table)", () => {
  for (const [hints, expected] of TABLE) {
    it(`${JSON.stringify(hints)} → ${expected.length === 0 ? "nothing" : expected.join(", ")}`, () => {
      assert.deepEqual(names(hints), expected);
    });
  }

  it("values are URL-quoted like Python's urllib.parse.quote", () => {
    assert.equal(pyQuote("pci-0000:00:1f.2 ata/1~é"), "pci-0000%3A00%3A1f.2%20ata/1~%C3%A9");
    assert.deepEqual(parseHints({ model: "<or> Big Disk <or> small" }), [{ key: "model", kind: "str", op: "<or>", values: ["big%20disk", "small"] }]);
  });

  const INVALID: readonly (readonly [JsonObject, RegExp])[] = [
    [{ colour: "red" }, /The hints "colour" are invalid/],
    [{ size: 0 }, /should be a positive integer/],
    [{ size: "-3" }, /should be a positive integer/],
    [{ size: "1.5" }, /not an integer/],
    [{ size: "big" }, /not an integer/],
    [{ size: "s== 10" }, /numeric operator/],
    [{ size: "<in> 1" }, /numeric operator/],
    [{ rotational: "maybe" }, /not a Boolean/],
    [{ model: 5 }, /not a string value/],
    [{ model: "" }, /expression is empty/],
    [{ model: "s==" }, /is not valid/],
    [{ model: "== <in> x" }, /is not valid/],
  ];
  for (const [hints, why] of INVALID) {
    it(`refuses ${JSON.stringify(hints)}`, () => assert.throws(() => parseHints(hints), (e: unknown) => e instanceof HintError && why.test(e.message)));
  }
});

function choose(node: JsonObject | null, devices: readonly RootFacts[] = DEVICES): RootChoice {
  return chooseRootDevice(devices, node);
}

function verdicts(choice: RootChoice): Record<string, string> {
  return Object.fromEntries(choice.candidates.map((c) => [c.name, `${c.verdict}: ${c.reasons.join("; ")}`]));
}

describe("root device choice", () => {
  it("hints: instance_info.root_device wins over properties.root_device; the first matching disk wins", () => {
    const node = { instance_info: { root_device: { rotational: false, size: ">= 400" } }, properties: { root_device: { name: "/dev/sdb" } } };
    const choice = choose(node);
    assert.equal(choice.device, "/dev/sda");
    assert.equal(choice.source, "hints");
    const v = verdicts(choice);
    assert.match(v["/dev/nvme0n1"] ?? "", /^eligible: also matches; the first matching disk \(\/dev\/sda\) wins/);
    assert.match(v["/dev/sdb"] ?? "", /^rejected: does not match hint rotational=false \(device rotational: true\)/);
    assert.match(v["/dev/sdf"] ?? "", /does not match hint rotational=false.*does not match hint size=">= 400" \(device size: 10\.0 GiB\)/);
    // An empty instance_info.root_device falls back to properties.root_device.
    assert.equal(choose({ instance_info: { root_device: {} }, properties: { root_device: { name: "/dev/sdb" } } }).device, "/dev/sdb");
  });

  it("hints that match nothing, or do not validate, are IPA's DeviceNotFound with every disk's reason", () => {
    assert.throws(
      () => choose({ properties: { root_device: { serial: "nope" } } }),
      (e: unknown) => AgentError.is(e, "NOT_FOUND") && e.ipaType === "DeviceNotFound" && /using these hints .*\/dev\/sda: does not match hint serial="nope"/.test(e.details),
    );
    assert.throws(
      () => choose({ properties: { root_device: { size: "huge" } } }),
      (e: unknown) => AgentError.is(e) && e.ipaType === "DeviceNotFound" && /failed to validate/.test(e.details),
    );
  });

  it("a hint may pick a disk the default would not; the explanation says what it is", () => {
    const choice = choose({ properties: { root_device: { name: "/dev/sdd" } } });
    assert.equal(choice.device, "/dev/sdd");
    assert.match(choice.reason, /note: it is virtual media \(model "Virtual HDisk0"\)/);
  });

  it("skip_block_devices: matching disks are never candidates (volume_name entries are RAID's)", () => {
    const node = { properties: { root_device: { size: ">= 400" }, skip_block_devices: [{ name: "/dev/sda" }, { tran: "nvme" }, { volume_name: "data" }] } };
    const choice = choose(node);
    assert.equal(choice.device, "/dev/sdb");
    const v = verdicts(choice);
    assert.match(v["/dev/sda"] ?? "", /^skipped: in skip_block_devices \(\{"name":"\/dev\/sda"\}\)/);
    assert.match(v["/dev/nvme0n1"] ?? "", /^skipped: in skip_block_devices \(\{"tran":"nvme"\}\)/);
    assert.throws(() => choose({ properties: { skip_block_devices: [{ size: "x" }] } }), (e: unknown) => AgentError.is(e) && /skip_block_devices does not validate/.test(e.details));
  });

  it("default: rejects virtual media, small, read-only and RAID-member disks, demotes USB/removable, then takes the smallest", () => {
    const choice = choose({ uuid: "n1" });
    // IPA would take /dev/sdd: the BMC's 8 GiB virtual disk, the smallest of at least 4 GiB.
    assert.equal(choice.device, "/dev/sdf");
    assert.equal(choice.source, "default");
    assert.match(choice.reason, /smallest fixed \(not removable, not USB\), writable disk of at least 4 GiB.*: \/dev\/sdf \(10\.0 GiB\)/);
    assert.deepEqual(verdicts(choice), {
      "/dev/sdf": `chosen: ${choice.reason}`,
      "/dev/sda": "eligible: larger than /dev/sdf (465.8 GiB)",
      "/dev/nvme0n1": "eligible: larger than /dev/sdf (931.5 GiB)",
      "/dev/sdb": "eligible: larger than /dev/sdf (3726.0 GiB)",
      "/dev/sdc": "eligible: removable, on USB: used only when no fixed disk qualifies",
      "/dev/sdd": 'rejected: virtual media (model "Virtual HDisk0")',
      "/dev/sde": "rejected: smaller than 4 GiB (2.0 GiB)",
    });
    assert.equal(choice.candidates[0]?.name, "/dev/sdf", "the chosen disk comes first");

    const more = DEVICES.map((d) =>
      d.name === "/dev/sdf" ? { ...d, read_only: true } : d.name === "/dev/sda" ? { ...d, raidMember: "member of the software RAID /dev/md127" } : d,
    );
    const second = choose(null, more);
    assert.equal(second.device, "/dev/nvme0n1");
    assert.match(verdicts(second)["/dev/sdf"] ?? "", /^rejected: read-only/);
    assert.match(verdicts(second)["/dev/sda"] ?? "", /^rejected: member of the software RAID/);
  });

  it("default: a probed virtual-media label is rejected too", () => {
    const list = [dev("/dev/sdx", { size: 5 * GiB, virtualMedia: "virtual media (label ir-vfd-dev on /dev/sdx)" }), dev("/dev/sdy", { size: 50 * GiB })];
    assert.equal(choose(null, list).device, "/dev/sdy");
  });

  it("default: USB or removable disks only when no fixed disk qualifies; equal sizes sort by name, numbers as numbers", () => {
    const usbOnly = choose(null, DEVICES.filter((d) => d.name === "/dev/sdc" || d.name === "/dev/sde"));
    assert.equal(usbOnly.device, "/dev/sdc");
    assert.match(usbOnly.reason, /no fixed disk qualifies: smallest removable, on USB writable disk/);
    const twins = [dev("/dev/nvme10n1", { size: 100 * GiB }), dev("/dev/nvme2n1", { size: 100 * GiB })];
    const tie = choose(null, twins);
    assert.equal(tie.device, "/dev/nvme2n1");
    assert.equal(verdicts(tie)["/dev/nvme10n1"], "eligible: same size as /dev/nvme2n1, which sorts first by name");
  });

  it("default: no qualifying disk is DeviceNotFound listing every disk's reason", () => {
    assert.throws(
      () => choose(null, DEVICES.filter((d) => d.name === "/dev/sde" || d.name === "/dev/sdd")),
      (e: unknown) =>
        AgentError.is(e) &&
        e.ipaType === "DeviceNotFound" &&
        /no disk qualifies \[\/dev\/sdd: virtual media \(model "Virtual HDisk0"\) \| \/dev\/sde: smaller than 4 GiB \(2\.0 GiB\)\]/.test(e.details),
    );
  });
});

describe("get_os_install_device on real loop devices", () => {
  it("hint by name, by size, and the default choice, through the generic manager", async (t) => {
    // Sparse files: 5 GiB and 6 GiB cost no space; 8 MiB is below the default's minimum.
    const five = createLoopDevice(5 * 1024, t);
    const six = createLoopDevice(6 * 1024, t);
    const tiny = createLoopDevice(8, t);
    const agent = await diskAgent({ allowedDevices: [five.path, six.path, tiny.path] });
    const skip = await foreignDisks();
    const ask = async (method: string, root: JsonObject | null): Promise<unknown> => {
      const node = { uuid: "n", instance_info: {}, properties: { skip_block_devices: skip, ...(root === null ? {} : { root_device: root }) } };
      const ctx = { id: "x", name: "t.x", signal: new AbortController().signal, log: silentLogger(), progress: () => undefined, invoke: async () => null };
      return agent.registry.dispatch(method, { node: null, ports: [], args: { node }, ctx });
    };
    assert.equal(await ask("get_os_install_device", { name: six.path }), six.path);
    assert.equal(await ask("get_os_install_device", { size: 6 }), six.path);
    assert.equal(await ask("get_os_install_device", { size: "< 6" }), five.path);
    assert.equal(await ask("get_os_install_device", { size: "<= 1" }), tiny.path);
    assert.equal(await ask("get_os_install_device", null), five.path);
    const choice = (await ask("explain_os_install_device", null)) as RootChoice;
    assert.equal(choice.device, five.path);
    const v = verdicts(choice);
    assert.equal(v[six.path], `eligible: larger than ${five.path} (6.0 GiB)`);
    assert.equal(v[tiny.path], "rejected: smaller than 4 GiB (8.0 MiB)");
    for (const s of skip) assert.match(v[String(s["name"])] ?? "", /^skipped: in skip_block_devices/);
    await assert.rejects(ask("get_os_install_device", { size: 7 }), (e: unknown) => AgentError.is(e) && e.ipaType === "DeviceNotFound");
  });
});
