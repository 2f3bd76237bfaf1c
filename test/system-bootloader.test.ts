/**
 * image.install_bootloader over real HTTP, on real loop disks holding a real vfat ESP (and an ext4
 * root). This VM has no EFI variables, so efibootmgr is recorded, not run: the test checks which
 * loader, disk, partition and efibootmgr arguments the agent chose, and which duplicate entries of a
 * captured `efibootmgr -v` listing it removed. grub-install is likewise recorded, never run.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import type { ConfigInput } from "../core/config.js";
import { chooseEfiLoaders, findEfiLoaders, parseBootCsv, parseBootRecords, planEfibootmgr } from "../utilities/system/efi.js";
import { startAgent, type TestAgent } from "./helpers/agent.js";
import type { LoopDevice } from "./helpers/loop.js";
import { assertFailed, assertSucceeded, blkid, command, loopDisks, parted, recordingRunner, sha256 } from "./helpers/system.js";

const LISTING = [
  "BootCurrent: 0001",
  "Timeout: 0 seconds",
  "BootOrder: 0001,0003,0000,0004",
  "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)",
  "Boot0001* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.00.0.0.0,0,0)",
  "Boot0003* ironic1\tHD(1,GPT,0e0c6b5a-3e2b-4c55-9a47-6a5e5c1f2d33,0x800,0x100000)/File(\\EFI\\BOOT\\BOOTX64.EFI)",
  "Boot0004* ironic1\tHD(1,GPT,0e0c6b5a-3e2b-4c55-9a47-6a5e5c1f2d33,0x800,0x100000)/File(\\EFI\\BOOT\\BOOTX64.EFI)",
  "Boot0005* Red Hat Enterprise Linux\tHD(1,GPT,11111111-3e2b-4c55-9a47-6a5e5c1f2d33,0x800,0x100000)/File(\\EFI\\redhat\\shimx64.efi)",
  "",
].join("\n");

function efibootmgrFake(listing = LISTING): Parameters<typeof recordingRunner>[0] {
  return {
    efibootmgr: (args) => {
      if (args[0] === "--version") return { stdout: "version 18\n" };
      if (args.length === 1 && args[0] === "-v") return { stdout: listing };
      return {};
    },
    chroot: () => ({}),
  };
}

/** GPT disk: p1 a 32 MiB ESP (vfat) with the given files, p2 an ext4 root. */
function espDisk(disk: LoopDevice, files: Record<string, Buffer | string>, root: Record<string, string | { link: string }> = {}): { esp: string; root: string } {
  parted(disk.path, "mklabel", "gpt", "mkpart", "esp", "fat32", "1MiB", "33MiB", "set", "1", "esp", "on", "mkpart", "root", "ext4", "33MiB", "100%");
  const esp = `${disk.path}p1`;
  const rootPart = `${disk.path}p2`;
  execFileSync("mkfs.vfat", [esp], { stdio: "ignore" });
  execFileSync("mkfs.ext4", ["-q", "-F", rootPart], { stdio: "ignore" });
  // The ESP is filled with mtools: this kernel has no vfat driver (the agent reads it through fusefat).
  const kernelVfat = readFileSync("/proc/filesystems", "utf8").includes("\tvfat");
  for (const tool of ["mmd", "mcopy", ...(kernelVfat ? [] : ["fusefat"])]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is missing: apt-get install mtools fusefat`);
  }
  const staging = mkdtempSync(join(tmpdir(), "ironbus-build-"));
  const mtools = { ...process.env, MTOOLS_SKIP_CHECK: "1" };
  const made = new Set<string>();
  for (const [rel, data] of Object.entries(files)) {
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!made.has(d)) execFileSync("mmd", ["-i", esp, `::/${d}`], { env: mtools, stdio: "ignore" });
      made.add(d);
    }
    const local = join(staging, "file");
    writeFileSync(local, data);
    execFileSync("mcopy", ["-i", esp, local, `::/${rel}`], { env: mtools, stdio: "ignore" });
  }
  rmSync(staging, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), "ironbus-build-"));
  execFileSync("mount", [rootPart, dir]);
  try {
    for (const [rel, data] of Object.entries(root)) {
      const path = join(dir, rel);
      mkdirSync(join(path, ".."), { recursive: true });
      if (typeof data === "object") symlinkSync(data.link, path);
      else writeFileSync(path, data);
    }
  } finally {
    execFileSync("umount", [dir]);
    rmSync(dir, { recursive: true });
  }
  return { esp, root: rootPart };
}

async function agentWith(t: TestContext, allowed: readonly string[], config: Partial<ConfigInput> = {}, listing?: string): Promise<{ agent: TestAgent; calls: ReturnType<typeof recordingRunner>["calls"] }> {
  const { run, calls } = recordingRunner(efibootmgrFake(listing));
  const agent = await startAgent({ config: { allowDestructive: true, allowedDevices: [...allowed], ...config }, run });
  t.after(() => agent.close());
  return { agent, calls };
}

const efiCalls = (calls: ReturnType<typeof recordingRunner>["calls"]): string[][] =>
  calls.filter((c) => c.cmd === "efibootmgr" && c.args[0] !== "--version").map((c) => [...c.args]);

/** A UTF-16LE CSV with a BOM, as shim ships BOOTX64.CSV. */
function shimCsv(text: string): Buffer {
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, "utf16le")]);
}

describe("system: install_bootloader", () => {
  it("UEFI: registers EFI/BOOT/BOOTX64.EFI found by the ESP's partition UUID and drops same-label entries (efibootmgr recorded, not run)", async (t) => {
    const [disk, other] = loopDisks(t, [64, 64]) as [LoopDevice, LoopDevice];
    const { esp } = espDisk(disk, { "EFI/BOOT/BOOTX64.EFI": "MZ loader", "EFI/BOOT/readme.txt": "not a loader" });
    const partuuid = blkid(esp)["PART_ENTRY_UUID"];
    assert.ok(partuuid);
    const before = sha256(other.file);
    const { agent, calls } = await agentWith(t, [disk.path]);
    const rec = assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: null, efi_system_part_uuid: partuuid, target_boot_mode: "uefi" }));
    assert.equal(rec["command_name"], "install_bootloader");
    assert.deepEqual(efiCalls(calls), [
      ["-v"],
      ["-b", "0003", "-B"],
      ["-b", "0004", "-B"],
      ["-v", "-c", "-d", disk.path, "-p", "1", "-w", "-L", "ironic1", "-l", "\\EFI\\BOOT\\BOOTX64.EFI"],
    ]);
    // The ESP was mounted read-only (by the kernel or, without kernel vfat, fusefat) and unmounted again.
    const mounted = calls.find((c) => (c.cmd === "mount" || c.cmd === "fusefat") && c.args.includes("ro") && c.args.includes(esp));
    assert.ok(mounted, JSON.stringify(calls.map((c) => c.cmd)));
    assert.ok(!readFileSync("/proc/self/mounts", "utf8").includes(mounted.args[mounted.args.length - 1] ?? "?"));
    // The other disk was never read.
    assert.ok(!calls.some((c) => c.args.some((a) => a.startsWith(other.path))));
    assert.equal(sha256(other.file), before);
  });

  it("UEFI: a UTF-16 BOOTX64.CSV wins over the loaders and names the label; ESP found beside the root partition (efibootmgr recorded, not run)", async (t) => {
    const [disk] = loopDisks(t, [64]) as [LoopDevice];
    const { root } = espDisk(disk, {
      "EFI/BOOT/BOOTX64.EFI": "MZ fallback",
      "EFI/BOOT/BOOTX64.CSV": shimCsv("shimx64.efi,Red Hat Enterprise Linux,,This is the boot entry for Red Hat Enterprise Linux\r\n"),
      "EFI/BOOT/shimx64.efi": "MZ shim",
    });
    const rootUuid = blkid(root)["UUID"];
    assert.ok(rootUuid);
    const { agent, calls } = await agentWith(t, [disk.path]);
    assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: rootUuid, target_boot_mode: "uefi" }));
    assert.deepEqual(efiCalls(calls), [
      ["-v"],
      ["-b", "0005", "-B"],
      ["-v", "-c", "-d", disk.path, "-p", "1", "-w", "-L", "Red Hat Enterprise Linux", "-l", "\\EFI\\BOOT\\shimx64.efi"],
    ]);
  });

  it("UEFI: an ESP on a disk outside allowedDevices is not found, and that disk is left byte-identical", async (t) => {
    const [mine, other] = loopDisks(t, [64, 64]) as [LoopDevice, LoopDevice];
    espDisk(mine, { "EFI/BOOT/BOOTX64.EFI": "MZ" });
    const { esp } = espDisk(other, { "EFI/BOOT/BOOTX64.EFI": "MZ" });
    const before = sha256(other.file);
    const { agent, calls } = await agentWith(t, [mine.path]);
    const error = assertFailed(
      await command(agent, "image.install_bootloader", { root_uuid: null, efi_system_part_uuid: blkid(esp)["PART_ENTRY_UUID"], target_boot_mode: "uefi" }),
      "DeviceNotFound",
    );
    assert.match(String(error["details"]), /no partition with UUID/);
    assert.deepEqual(efiCalls(calls), []);
    assert.equal(sha256(other.file), before);
  });

  it("UEFI: an ESP without loaders falls back to the BIOS rule: InvalidImage unless ignore_bootloader_failure", async (t) => {
    const [disk] = loopDisks(t, [64]) as [LoopDevice];
    const { root } = espDisk(disk, { "EFI/README": "empty" });
    const { agent, calls } = await agentWith(t, [disk.path]);
    const rootUuid = blkid(root)["UUID"];
    const error = assertFailed(await command(agent, "image.install_bootloader", { root_uuid: rootUuid, target_boot_mode: "uefi" }), "InvalidImage");
    assert.match(String(error["details"]), /CVE mitigation/);
    assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: rootUuid, target_boot_mode: "uefi", ignore_bootloader_failure: true }));
    assert.deepEqual(efiCalls(calls), []);
  });

  it("BIOS: refused (InvalidImage) while enableBiosBootloaderInstall is off; whole-disk images and ignore_bootloader_failure succeed", async (t) => {
    const [disk] = loopDisks(t, [64]) as [LoopDevice];
    const { root } = espDisk(disk, {});
    const before = sha256(disk.file);
    const { agent, calls } = await agentWith(t, [disk.path]);
    const rootUuid = blkid(root)["UUID"];
    const error = assertFailed(await command(agent, "image.install_bootloader", { root_uuid: rootUuid, target_boot_mode: "bios" }), "InvalidImage");
    assert.equal(error["code"], 500);
    assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: rootUuid, target_boot_mode: "bios", ignore_bootloader_failure: true }));
    assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: null, target_boot_mode: "bios" }));
    assert.ok(!calls.some((c) => c.cmd === "chroot" || c.cmd === "efibootmgr"));
    assert.equal(sha256(disk.file), before);
  });

  it("BIOS with enableBiosBootloaderInstall: grub2-install and grub2-mkconfig in the image's chroot (grub recorded, not run), everything unmounted", async (t) => {
    const [disk] = loopDisks(t, [64]) as [LoopDevice];
    const { root } = espDisk(
      disk,
      {},
      { "usr/sbin/grub2-install": "#!/bin/sh\n", "boot/grub2/.keep": "", "dev/.keep": "", "proc/.keep": "", "sys/.keep": "", "run": { link: "/var/run" } },
    );
    const { agent, calls } = await agentWith(t, [disk.path], { enableBiosBootloaderInstall: true });
    assertSucceeded(await command(agent, "image.install_bootloader", { root_uuid: blkid(root)["UUID"], target_boot_mode: "bios" }));
    const chroot = calls.filter((c) => c.cmd === "chroot");
    assert.equal(chroot.length, 2);
    const dir = chroot[0]?.args[0] ?? "";
    assert.match(dir, /ironbus-mnt-/);
    assert.deepEqual(chroot.map((c) => c.args), [
      [dir, "grub2-install", disk.path],
      [dir, "grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
    ]);
    // /dev, /proc and /sys were bound; the image's run -> /var/run symlink was not followed out of it.
    const binds = calls.filter((c) => c.cmd === "mount" && c.args[0] === "--bind").map((c) => c.args[1]);
    assert.deepEqual(binds, ["/dev", "/proc", "/sys"]);
    const mounts = readFileSync("/proc/self/mounts", "utf8");
    assert.ok(!mounts.includes(dir) && !mounts.includes(root), "left mounted");
  });

  it("is refused when allowDestructive is off", async (t) => {
    const { agent } = await agentWith(t, [], { allowDestructive: false });
    const reply = await command(agent, "image.install_bootloader", { root_uuid: null, target_boot_mode: "uefi" });
    assert.equal(reply.status, 403);
  });
});

describe("system: EFI decisions (pure)", () => {
  it("parses shim CSVs in UTF-16 either way round, and plain text", () => {
    const text = "grubx64.efi,debian,,This is the boot entry for debian\n";
    assert.deepEqual(parseBootCsv(shimCsv(text)), { loader: "grubx64.efi", label: "debian" });
    const be = Buffer.from(text, "utf16le");
    be.swap16();
    assert.deepEqual(parseBootCsv(Buffer.concat([Buffer.from([0xfe, 0xff]), be])), { loader: "grubx64.efi", label: "debian" });
    assert.deepEqual(parseBootCsv(Buffer.from(text, "utf16le")), { loader: "grubx64.efi", label: "debian" });
    assert.deepEqual(parseBootCsv(Buffer.from(text)), { loader: "grubx64.efi", label: "debian" });
    assert.throws(() => parseBootCsv(Buffer.from("nothing")));
  });

  it("reads efibootmgr listings printed in UTF-8 or UTF-16", () => {
    const utf8 = parseBootRecords(LISTING);
    assert.deepEqual(utf8.map((r) => [r.num, r.label]), [
      ["0000", "UiApp"],
      ["0001", "UEFI PXEv4 (MAC:525400123456)"],
      ["0003", "ironic1"],
      ["0004", "ironic1"],
      ["0005", "Red Hat Enterprise Linux"],
    ]);
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(LISTING, "utf16le")]).toString("utf8");
    assert.deepEqual(parseBootRecords(utf16), utf8);
  });

  it("walks a directory tree: executables only, a CSV ends the walk, several loaders get ironic1, ironic2", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-esp-"));
    mkdirSync(join(dir, "EFI/BOOT"), { recursive: true });
    mkdirSync(join(dir, "EFI/ubuntu"), { recursive: true });
    writeFileSync(join(dir, "EFI/BOOT/BOOTX64.EFI"), "MZ");
    chmodSync(join(dir, "EFI/BOOT/BOOTX64.EFI"), 0o755);
    writeFileSync(join(dir, "EFI/BOOT/bootia32.efi"), "MZ");
    chmodSync(join(dir, "EFI/BOOT/bootia32.efi"), 0o644);
    writeFileSync(join(dir, "EFI/ubuntu/grubaa64.efi"), "MZ");
    chmodSync(join(dir, "EFI/ubuntu/grubaa64.efi"), 0o755);
    const found = await findEfiLoaders(dir);
    assert.deepEqual(found, ["EFI/BOOT/BOOTX64.EFI", "EFI/ubuntu/grubaa64.efi"]);
    const choices = await chooseEfiLoaders(dir, found, "(RAID, part0)");
    assert.deepEqual(choices.map((c) => [c.loader, c.label]), [
      ["\\EFI\\BOOT\\BOOTX64.EFI", "ironic1 (RAID, part0)"],
      ["\\EFI\\ubuntu\\grubaa64.efi", "ironic2 (RAID, part0)"],
    ]);
    const plan = planEfibootmgr(choices, [{ num: "000A", label: "ironic2 (RAID, part0)", path: "HD(1)" }], "/dev/sda", 1);
    assert.deepEqual(plan.remove, ["000A"]);
    assert.equal(plan.add.length, 2);
    writeFileSync(join(dir, "EFI/ubuntu/BOOTX64.CSV"), shimCsv("shimx64.efi,ubuntu,,x\n"));
    assert.deepEqual(await findEfiLoaders(dir), ["EFI/ubuntu/BOOTX64.CSV"]);
    rmSync(dir, { recursive: true });
  });
});
