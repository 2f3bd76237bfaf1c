/**
 * NVMe format and ATA security erase cannot run here: loop devices have neither, and this machine has
 * no NVMe controller or ATA drive. Their decision logic runs instead on captured tool output
 * (test/fixtures/disk: `nvme id-ctrl -o json`, `hdparm -I`, `smartctl -g security`) through a
 * scripted CommandRunner that answers like the tools would, emulates the drive's security state
 * (set-pass enables it, erase disables it, unlock unlocks it) and records every command the logic
 * would run. Nothing is executed.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import type { BlockDevice } from "../utilities/disk/devices.js";
import {
  ataErase,
  destroyDiskMetadata,
  eraseBlockDevice,
  type EraseOptions,
  eraseOptionsOf,
  expressEraseDisk,
  nvmeErase,
  nvmeFormatMode,
  parseAtaSecurity,
} from "../utilities/disk/erase.js";
import type { DiskIo } from "../utilities/disk/tools.js";
import { fixture, type Reply, scriptedRunner } from "./fixtures/disk/harness.js";

const DEFAULTS: EraseOptions = eraseOptionsOf({});

function ioFor(run: DiskIo["run"]): DiskIo {
  return { run, signal: new AbortController().signal, log: silentLogger() };
}

function isEraseError(pattern: RegExp) {
  return (e: unknown): boolean => AgentError.is(e) && e.ipaType === "BlockDeviceEraseError" && pattern.test(e.details);
}

interface DriveOptions {
  readonly supported?: boolean;
  readonly enabled?: boolean;
  readonly locked?: boolean;
  readonly frozen?: boolean;
  readonly enhanced?: boolean;
  readonly smartctl?: "sec1" | "unavailable" | "missing" | "fails";
  /** The password the locked drive accepts; null: none. */
  readonly unlockWith?: "NULL" | "" | null;
  readonly eraseFails?: boolean;
  /** The drive still reports "enabled" after a successful erase. */
  readonly stuckEnabled?: boolean;
}

/** An ATA drive behind hdparm/smartctl, answering from the captured outputs. */
function ataDrive(dev: string, o: DriveOptions = {}) {
  const s = { enabled: o.enabled ?? false, locked: o.locked ?? false };
  const hdparmI = (): string => {
    if (o.supported === false) return fixture("hdparm-I-security-not-supported.txt");
    if (o.frozen === true) return fixture("hdparm-I-sec2-frozen.txt");
    if (s.locked) return fixture("hdparm-I-sec4-locked.txt");
    const enhanced = o.enhanced ?? true;
    if (s.enabled) return fixture(enhanced ? "hdparm-I-sec5-enabled.txt" : "hdparm-I-sec5-enabled-no-enhanced.txt");
    return fixture(enhanced ? "hdparm-I-sec1-not-enabled.txt" : "hdparm-I-sec1-no-enhanced.txt");
  };
  return scriptedRunner((line): Reply => {
    if (line === `hdparm -I ${dev}`) return { stdout: `\n${dev}:\n${hdparmI().replace(/^\n\/dev\/sda:\n/, "")}` };
    if (line === `smartctl -d ata ${dev} -g security`) {
      switch (o.smartctl ?? "sec1") {
        case "sec1":
          return { stdout: fixture("smartctl-g-security-sec1.txt") };
        case "unavailable":
          return { stdout: fixture("smartctl-g-security-unavailable.txt") };
        case "missing":
          return "ENOENT";
        case "fails":
          return { code: 2, stdout: "Read Device Identity failed: Invalid argument\n" };
      }
    }
    const unlock = /^hdparm --user-master u --security-unlock (NULL|"") /.exec(line);
    if (unlock !== null) {
      const password = unlock[1] === "NULL" ? "NULL" : "";
      if (s.locked && o.unlockWith === password) {
        s.locked = false;
        return {};
      }
      return { code: 5, stderr: "SECURITY_UNLOCK: Input/output error\n" };
    }
    if (line === `hdparm --user-master u --security-set-pass NULL ${dev}`) {
      s.enabled = true;
      return { stdout: `security_password: ""\n\n${dev}:\n Issuing SECURITY_SET_PASS command, password="", user=user, mode=high\n` };
    }
    if (/^hdparm --user-master u --security-erase(-enhanced)? NULL /.test(line)) {
      if (o.eraseFails === true) return { code: 5, stderr: "SECURITY_ERASE: Input/output error\n" };
      if (o.stuckEnabled !== true) s.enabled = false;
      return { stdout: `security_password: ""\n\n${dev}:\n Issuing SECURITY_ERASE command, password="", user=user\n` };
    }
    if (line.startsWith("shred ")) return {};
    throw new Error(`unexpected command: ${line}`);
  });
}

/** An NVMe namespace behind nvme-cli answering from a captured id-ctrl. */
function nvmeDrive(dev: string, idCtrl: string | { code: number; stderr: string }, formatFails = false) {
  return scriptedRunner((line): Reply => {
    if (line === `nvme id-ctrl ${dev} -o json`) return typeof idCtrl === "string" ? { stdout: fixture(idCtrl) } : idCtrl;
    if (line.startsWith(`nvme format ${dev} `)) return formatFails ? { code: 1, stderr: "NVMe status: Invalid Format: The LBA Format specified is not supported(0x410a)\n" } : { stdout: "Success formatting namespace:1\n" };
    if (line.startsWith("shred ") || line.startsWith("wipefs ") || line.startsWith("dd ") || line.startsWith("sgdisk ")) return {};
    throw new Error(`unexpected command: ${line}`);
  });
}

const SDA = "/dev/sda";
const NVME = "/dev/nvme0n1";

describe("ATA security erase (decision logic on captured output)", () => {
  it("decision logic on captured output: hdparm -I Security section parses into IPA's lines", () => {
    assert.deepEqual(parseAtaSecurity(fixture("hdparm-I-sec1-not-enabled.txt")), [
      "Master password revision code = 65534",
      "supported",
      "not enabled",
      "not locked",
      "not frozen",
      "not expired: security count",
      "supported: enhanced erase",
      "2min for SECURITY ERASE UNIT. 2min for ENHANCED SECURITY ERASE UNIT.",
    ]);
    assert.deepEqual(parseAtaSecurity("no security here\n"), []);
  });

  it("decision logic on captured output: SEC1 drive: set the NULL password, enhanced erase, verify not enabled", async () => {
    const drive = ataDrive(SDA);
    const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS);
    assert.deepEqual(outcome, { action: "erased", method: "ata_secure_erase", enhanced: true });
    assert.deepEqual(drive.calls, [
      "hdparm -I /dev/sda",
      "smartctl -d ata /dev/sda -g security",
      "hdparm --user-master u --security-set-pass NULL /dev/sda",
      "hdparm --user-master u --security-erase-enhanced NULL /dev/sda",
      "hdparm -I /dev/sda",
    ]);
  });

  it("decision logic on captured output: without enhanced erase support, --security-erase", async () => {
    const drive = ataDrive(SDA, { enhanced: false });
    const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS);
    assert.equal(outcome["enhanced"], false);
    assert.ok(drive.calls.includes("hdparm --user-master u --security-erase NULL /dev/sda"));
  });

  it("decision logic on captured output: a frozen drive is an error, never set-pass or erase; shred only with agent_continue_if_secure_erase_failed", async () => {
    const drive = ataDrive(SDA, { frozen: true });
    await assert.rejects(eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS), isEraseError(/agent_continue_if_secure_erase_failed is not set: Block device \/dev\/sda is frozen and cannot be erased/));
    assert.deepEqual(drive.calls, ["hdparm -I /dev/sda", "smartctl -d ata /dev/sda -g security"]);

    const again = ataDrive(SDA, { frozen: true });
    const outcome = await eraseBlockDevice(ioFor(again.run), SDA, { ...DEFAULTS, continueIfSecureEraseFailed: true });
    assert.equal(outcome.method, "shred");
    assert.match(String(outcome["fallback_reason"]), /frozen/);
    assert.equal(again.calls.at(-1), "shred --force --zero --verbose --iterations 1 /dev/sda");
  });

  it("decision logic on captured output: the legacy agent_continue_if_ata_erase_failed also allows the fallback", () => {
    assert.equal(eraseOptionsOf({ driver_internal_info: { agent_continue_if_ata_erase_failed: true } }).continueIfSecureEraseFailed, true);
    assert.equal(eraseOptionsOf({ driver_internal_info: { agent_continue_if_ata_erase_failed: true, agent_continue_if_secure_erase_failed: false } }).continueIfSecureEraseFailed, false);
  });

  it("decision logic on captured output: a drive locked by an interrupted erase is unlocked with NULL, then erased", async () => {
    const drive = ataDrive(SDA, { enabled: true, locked: true, unlockWith: "NULL" });
    const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS);
    assert.equal(outcome.method, "ata_secure_erase");
    assert.deepEqual(drive.calls, [
      "hdparm -I /dev/sda",
      "smartctl -d ata /dev/sda -g security",
      "hdparm --user-master u --security-unlock NULL /dev/sda",
      "hdparm -I /dev/sda",
      // Already enabled (SEC5): no set-pass.
      "hdparm --user-master u --security-erase-enhanced NULL /dev/sda",
      "hdparm -I /dev/sda",
    ]);
  });

  it('decision logic on captured output: the empty password is tried after NULL (hdparm < 9.51 sent "NULL" literally)', async () => {
    const drive = ataDrive(SDA, { enabled: true, locked: true, unlockWith: "" });
    await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS);
    assert.deepEqual(drive.calls.slice(2, 6), [
      "hdparm --user-master u --security-unlock NULL /dev/sda",
      "hdparm -I /dev/sda",
      'hdparm --user-master u --security-unlock "" /dev/sda',
      "hdparm -I /dev/sda",
    ]);
  });

  it("decision logic on captured output: a drive with an unknown password stays locked: error", async () => {
    const drive = ataDrive(SDA, { enabled: true, locked: true, unlockWith: null });
    await assert.rejects(ataErase(ioFor(drive.run), SDA), isEraseError(/already has a security password set/));
    assert.ok(!drive.calls.some((c) => c.includes("--security-erase")));
  });

  it("decision logic on captured output: smartctl cannot talk ATA (SAT bridge, Unavailable): not supported, shred", async () => {
    for (const smartctl of ["unavailable", "fails"] as const) {
      const drive = ataDrive(SDA, { smartctl });
      const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, { ...DEFAULTS, iterations: 3, zeroize: false });
      assert.equal(outcome.method, "shred", smartctl);
      assert.deepEqual(drive.calls, ["hdparm -I /dev/sda", "smartctl -d ata /dev/sda -g security", "shred --force --verbose --iterations 3 /dev/sda"]);
    }
  });

  it("decision logic on captured output: without smartctl installed the ATA erase still runs (IPA tolerates its absence)", async () => {
    const drive = ataDrive(SDA, { smartctl: "missing" });
    assert.equal((await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS)).method, "ata_secure_erase");
  });

  it("decision logic on captured output: a drive without the Security feature set falls back to shred", async () => {
    const drive = ataDrive(SDA, { supported: false });
    const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS);
    assert.equal(outcome.method, "shred");
    assert.match(String(outcome["fallback_reason"]), /ATA security is not supported/);
  });

  it("decision logic on captured output: a failed erase unlocks the drive again and is an error (or shred when allowed)", async () => {
    const drive = ataDrive(SDA, { eraseFails: true });
    await assert.rejects(eraseBlockDevice(ioFor(drive.run), SDA, DEFAULTS), isEraseError(/Erase failed for device \/dev\/sda/));
    const after = drive.calls.slice(drive.calls.indexOf("hdparm --user-master u --security-erase-enhanced NULL /dev/sda") + 1);
    assert.deepEqual(after, ["hdparm -I /dev/sda"], "security state re-read for the unlock attempt (not locked: nothing to unlock)");

    const fallback = ataDrive(SDA, { eraseFails: true });
    assert.equal((await eraseBlockDevice(ioFor(fallback.run), SDA, { ...DEFAULTS, continueIfSecureEraseFailed: true })).method, "shred");
  });

  it("decision logic on captured output: security still enabled after the erase is an error", async () => {
    const drive = ataDrive(SDA, { stuckEnabled: true });
    await assert.rejects(ataErase(ioFor(drive.run), SDA), isEraseError(/still enabled/));
  });

  it("decision logic on captured output: agent_enable_ata_secure_erase false goes straight to shred", async () => {
    const drive = ataDrive(SDA);
    const outcome = await eraseBlockDevice(ioFor(drive.run), SDA, eraseOptionsOf({ driver_internal_info: { agent_enable_ata_secure_erase: false, agent_erase_devices_iterations: 2 } }));
    assert.equal(outcome.method, "shred");
    assert.deepEqual(drive.calls, ["shred --force --zero --verbose --iterations 2 /dev/sda"]);
  });
});

describe("NVMe format (decision logic on captured output)", () => {
  it("decision logic on captured output: oacs/fna bits pick the Secure Erase Setting", () => {
    assert.deepEqual(nvmeFormatMode(JSON.parse(fixture("nvme-id-ctrl-crypto-erase.json"))), { mode: 2 });
    assert.deepEqual(nvmeFormatMode(JSON.parse(fixture("nvme-id-ctrl-format-only.json"))), { mode: 1 });
    assert.match(JSON.stringify(nvmeFormatMode(JSON.parse(fixture("nvme-id-ctrl-no-format.json")))), /does not support Format NVM \(oacs=0x4\)/);
    assert.deepEqual(nvmeFormatMode({ oacs: "0x2", fna: "0x4" }), { mode: 2 }, "hex strings (older nvme-cli) are read too");
  });

  it("decision logic on captured output: crypto erase supported: nvme format -s 2 -f", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-crypto-erase.json");
    assert.deepEqual(await eraseBlockDevice(ioFor(drive.run), NVME, DEFAULTS), { action: "erased", method: "nvme_format", ses: 2 });
    assert.deepEqual(drive.calls, ["nvme id-ctrl /dev/nvme0n1 -o json", "nvme format /dev/nvme0n1 -s 2 -f"]);
  });

  it("decision logic on captured output: format without crypto erase: nvme format -s 1 -f", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-format-only.json");
    assert.deepEqual(await nvmeErase(ioFor(drive.run), NVME), { action: "erased", method: "nvme_format", ses: 1 });
    assert.deepEqual(drive.calls, ["nvme id-ctrl /dev/nvme0n1 -o json", "nvme format /dev/nvme0n1 -s 1 -f"]);
  });

  it("decision logic on captured output: no Format NVM is an error, shred only when allowed", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-no-format.json");
    await assert.rejects(eraseBlockDevice(ioFor(drive.run), NVME, DEFAULTS), isEraseError(/agent_continue_if_secure_erase_failed is not set.*Format NVM/));
    assert.deepEqual(drive.calls, ["nvme id-ctrl /dev/nvme0n1 -o json"]);
    const allowed = nvmeDrive(NVME, "nvme-id-ctrl-no-format.json");
    const outcome = await eraseBlockDevice(ioFor(allowed.run), NVME, { ...DEFAULTS, continueIfSecureEraseFailed: true });
    assert.equal(outcome.method, "shred");
    assert.equal(allowed.calls.at(-1), "shred --force --zero --verbose --iterations 1 /dev/nvme0n1");
  });

  it("decision logic on captured output: id-ctrl or format failing is a BlockDeviceEraseError", async () => {
    const noCtrl = nvmeDrive(NVME, { code: 1, stderr: "identify controller: Invalid argument\n" });
    await assert.rejects(nvmeErase(ioFor(noCtrl.run), NVME), isEraseError(/Failed to fetch NVMe capabilities/));
    const badFormat = nvmeDrive(NVME, "nvme-id-ctrl-crypto-erase.json", true);
    await assert.rejects(nvmeErase(ioFor(badFormat.run), NVME), isEraseError(/nvme format \/dev\/nvme0n1 -s 2 failed: NVMe status: Invalid Format/));
  });

  it("decision logic on captured output: agent_enable_nvme_secure_erase false goes straight to shred", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-crypto-erase.json");
    const outcome = await eraseBlockDevice(ioFor(drive.run), NVME, { ...DEFAULTS, enableNvmeSecureErase: false });
    assert.equal(outcome.method, "shred");
    assert.deepEqual(drive.calls, ["shred --force --zero --verbose --iterations 1 /dev/nvme0n1"]);
  });
});

function fakeDisk(name: string, over: Partial<BlockDevice> = {}): BlockDevice {
  return {
    name,
    model: null,
    size: 8 * 2 ** 30,
    rotational: false,
    wwn: null,
    serial: null,
    vendor: null,
    wwn_with_extension: null,
    wwn_vendor_extension: null,
    hctl: null,
    by_path: null,
    logical_sectors: 512,
    physical_sectors: 512,
    tran: null,
    read_only: false,
    removable: false,
    holders: [],
    partitions: [],
    serials: [],
    wwns: [],
    ...over,
  };
}

describe("erase_devices_express and metadata commands (decision logic on captured output)", () => {
  it("decision logic on captured output: express formats an NVMe namespace that supports it", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-format-only.json");
    const outcome = await expressEraseDisk(ioFor(drive.run), fakeDisk(NVME), DEFAULTS);
    assert.deepEqual(outcome, { action: "erased", method: "nvme_format", ses: 1 });
  });

  it("decision logic on captured output: express falls back to the metadata erase when NVMe format is not supported", async () => {
    const drive = nvmeDrive(NVME, "nvme-id-ctrl-no-format.json");
    const disk = fakeDisk(NVME, { partitions: [{ name: "/dev/nvme0n1p1", number: 1, size: 2 ** 20 }] });
    const outcome = await expressEraseDisk(ioFor(drive.run), disk, DEFAULTS);
    assert.equal(outcome.method, "metadata");
    assert.match(String(outcome["fallback_reason"]), /NVMe format failed/);
    assert.deepEqual(drive.calls.slice(1), [
      "wipefs --force --all /dev/nvme0n1p1",
      "dd bs=512 if=/dev/zero of=/dev/nvme0n1p1 count=33 oflag=direct",
      "dd bs=512 if=/dev/zero of=/dev/nvme0n1p1 count=33 oflag=direct seek=2015",
      "wipefs --force --all /dev/nvme0n1",
      "dd bs=512 if=/dev/zero of=/dev/nvme0n1 count=33 oflag=direct",
      "dd bs=512 if=/dev/zero of=/dev/nvme0n1 count=33 oflag=direct seek=16777183",
      "sgdisk -Z /dev/nvme0n1",
    ]);
  });

  it("decision logic on captured output: a 4 KiB-sector disk has 5 sectors zeroed at each end, partitions first (last partition first)", async () => {
    const drive = nvmeDrive("/dev/sdb", "nvme-id-ctrl-no-format.json");
    const disk = fakeDisk("/dev/sdb", {
      size: 4096 * 1000,
      logical_sectors: 4096,
      partitions: [
        { name: "/dev/sdb1", number: 1, size: 4096 * 100 },
        { name: "/dev/sdb2", number: 2, size: 4096 * 3 },
      ],
    });
    await destroyDiskMetadata(ioFor(drive.run), disk);
    assert.deepEqual(drive.calls, [
      "wipefs --force --all /dev/sdb2",
      // Smaller than the area: only what is there.
      "dd bs=4096 if=/dev/zero of=/dev/sdb2 count=3 oflag=direct",
      "wipefs --force --all /dev/sdb1",
      "dd bs=4096 if=/dev/zero of=/dev/sdb1 count=5 oflag=direct",
      "dd bs=4096 if=/dev/zero of=/dev/sdb1 count=5 oflag=direct seek=95",
      "wipefs --force --all /dev/sdb",
      "dd bs=4096 if=/dev/zero of=/dev/sdb count=5 oflag=direct",
      "dd bs=4096 if=/dev/zero of=/dev/sdb count=5 oflag=direct seek=995",
      "sgdisk -Z /dev/sdb",
    ]);
  });

  it("decision logic on captured output: node options are read with IPA's defaults and refused when malformed", () => {
    assert.deepEqual(eraseOptionsOf(null), {
      iterations: 1,
      zeroize: true,
      continueIfSecureEraseFailed: false,
      enableAtaSecureErase: true,
      enableNvmeSecureErase: true,
      concurrency: 1,
      skipReadOnly: false,
      wipeSpecialFilesystems: false,
    });
    assert.equal(eraseOptionsOf({ driver_info: { wipe_special_filesystems: "True" } }).wipeSpecialFilesystems, true);
    assert.equal(eraseOptionsOf({ driver_internal_info: { disk_erasure_concurrency: "4" } }).concurrency, 4);
    assert.throws(() => eraseOptionsOf({ driver_internal_info: { disk_erasure_concurrency: 0 } }), /disk_erasure_concurrency must be an integer ≥ 1/);
    assert.throws(() => eraseOptionsOf({ driver_internal_info: { agent_erase_devices_zeroize: "maybe" } }), /must be a boolean/);
  });
});
