/**
 * image.install_bootloader, after IPA's: under UEFI, register the loader the EFI system partition
 * offers with efibootmgr (replacing entries of the same label); otherwise, or when the ESP holds no
 * loader, install GRUB from the image's chroot, but only when `enableBiosBootloaderInstall` allows
 * it (IPA disables this by default as a CVE mitigation) and never for a whole-disk image.
 */
import { existsSync } from "node:fs";
import { lstat, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { defineCommand, type CommandDefinition } from "../../core/command.js";
import { AgentError } from "../../core/errors.js";
import { hasErrorCode } from "../exec.js";
import type { UtilityDeps } from "../part.js";
import {
  allowedDisks,
  type BlockEnv,
  findPartitionByUuid,
  isEsp,
  listPartitions,
  type PartitionInfo,
  probe,
  rescan,
  runChecked,
  runLogged,
  unmount,
  withMount,
} from "./blockdev.js";
import { chooseEfiLoaders, type EfiLoaderChoice, findEfiLoaders, parseBootRecords, planEfibootmgr } from "./efi.js";
import { deviceNotFound, invalidImage } from "./errors.js";

const Params = z
  .object({
    root_uuid: z.string().nullable(),
    efi_system_part_uuid: z.string().nullable().optional(),
    prep_boot_part_uuid: z.string().nullable().optional(),
    target_boot_mode: z.string().nullable().optional(),
    ignore_bootloader_failure: z.boolean().nullable().optional(),
    /** Sent by old Ironic releases; the layout is found on the disks instead. */
    software_raid: z.boolean().nullable().optional(),
  })
  .strict();
type Params = z.infer<typeof Params>;

export interface UefiResult {
  readonly disk: string;
  readonly partition: number;
  readonly esp: string;
  readonly loaders: readonly EfiLoaderChoice[];
  readonly removed: readonly string[];
}

/** Finds the EFI system partition: by UUID, else the ESP of the root partition's disk or of the one allowed disk that has one. */
export async function findEsp(env: BlockEnv, efiUuid: string | null | undefined, rootUuid: string | null | undefined): Promise<PartitionInfo> {
  const disks = await allowedDisks(env);
  for (const disk of disks) await rescan(env, disk);
  if (efiUuid) {
    const part = await findPartitionByUuid(env, efiUuid, disks);
    if (part === undefined) throw deviceNotFound(`no partition with UUID ${efiUuid} on the allowed devices [${disks.join(", ")}]`);
    return part;
  }
  let candidates = disks;
  if (rootUuid && rootUuid !== "0x00000000") {
    const root = await findPartitionByUuid(env, rootUuid, disks);
    if (root !== undefined) candidates = [root.disk];
  }
  const found: PartitionInfo[] = [];
  for (const disk of candidates) {
    for (const part of await listPartitions(env, disk)) {
      await env.guard.check(part.path, "install_bootloader");
      if (isEsp(await probe(env, part.path))) {
        found.push(part);
        break;
      }
    }
  }
  if (found.length === 1 && found[0] !== undefined) return found[0];
  if (found.length > 1) {
    throw deviceNotFound(`EFI system partitions on several disks (${found.map((p) => p.path).join(", ")}): pass efi_system_part_uuid`);
  }
  throw deviceNotFound(
    `No EFI partition could be detected on [${candidates.join(", ")}] and no EFI partition UUID was given (often the case for whole disk images). Are you using a UEFI-compatible image?`,
  );
}

/**
 * Registers the ESP's loader in the NVRAM. Returns undefined when that cannot be done here (no
 * efibootmgr, or an ESP without loaders): the caller then falls back as IPA does.
 */
export async function setupUefi(env: BlockEnv, efiUuid: string | null | undefined, rootUuid: string | null | undefined): Promise<UefiResult | undefined> {
  try {
    await env.run("efibootmgr", ["--version"], env.signal === undefined ? {} : { signal: env.signal });
  } catch (err) {
    if (hasErrorCode(err, "ENOENT")) {
      env.log.warn("efibootmgr is not available in the ramdisk");
      return undefined;
    }
    throw err;
  }
  const esp = await findEsp(env, efiUuid, rootUuid);
  await env.guard.check(esp.disk, "install_bootloader");
  const loaders = await withMount(env, esp.path, async (dir) => chooseEfiLoaders(dir, await findEfiLoaders(dir)), { readOnly: true, fsType: "vfat" });
  if (loaders.length === 0) {
    env.log.warn({ esp: esp.path }, "Empty EFI partition detected");
    return undefined;
  }
  const listing = await runChecked(env, "efibootmgr", ["-v"]);
  const plan = planEfibootmgr(loaders, parseBootRecords(listing.stdout), esp.disk, esp.number);
  for (const num of plan.remove) await runChecked(env, "efibootmgr", ["-b", num, "-B"]);
  for (const args of plan.add) {
    env.log.info({ disk: esp.disk, partition: esp.number, args }, "adding UEFI boot entry");
    await runChecked(env, "efibootmgr", args);
  }
  await runLogged(env, "sync", []);
  return { disk: esp.disk, partition: esp.number, esp: esp.path, loaders, removed: plan.remove };
}

const GRUB_DIRS = ["usr/sbin", "usr/bin", "sbin", "bin"];
const CHROOT_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };

/** `grub2` or `grub`, whichever the image ships. */
function grubFlavour(root: string): "grub2" | "grub" | undefined {
  for (const flavour of ["grub2", "grub"] as const) {
    if (GRUB_DIRS.some((d) => existsSync(join(root, d, `${flavour}-install`)))) return flavour;
  }
  return undefined;
}

/** BIOS: grub(2)-install onto the root partition's disk, from a chroot into the image. */
export async function installGrub(env: BlockEnv, rootUuid: string): Promise<{ disk: string; flavour: string }> {
  const disks = await allowedDisks(env);
  for (const disk of disks) await rescan(env, disk);
  const root = await findPartitionByUuid(env, rootUuid, disks);
  if (root === undefined) throw deviceNotFound(`no root partition with UUID ${rootUuid} on the allowed devices [${disks.join(", ")}]`);
  const disk = await env.guard.check(root.disk, "install_bootloader");
  return withMount(env, root.path, async (dir) => {
    const flavour = grubFlavour(dir);
    if (flavour === undefined) throw new AgentError("TOOL_FAILED", "the image has neither grub2-install nor grub-install");
    const bound: string[] = [];
    try {
      for (const src of ["/dev", "/proc", "/sys", "/run"]) {
        const target = join(dir, src);
        // A symlink here would make the bind mount land outside the image: skip it.
        const st = await lstat(target).catch(() => undefined);
        if (st !== undefined && !st.isDirectory()) {
          env.log.warn({ target }, "not a directory in the image; not bind-mounted");
          continue;
        }
        if (st === undefined) await mkdir(target);
        await runChecked(env, "mount", ["--bind", src, target]);
        bound.push(target);
      }
      await runChecked(env, "chroot", [dir, `${flavour}-install`, disk], { env: CHROOT_ENV });
      await runChecked(env, "chroot", [dir, `${flavour}-mkconfig`, "-o", `/boot/${flavour}/grub.cfg`], { env: CHROOT_ENV });
    } finally {
      for (const target of bound.reverse()) await unmount(env, target);
    }
    await runLogged(env, "sync", []);
    return { disk, flavour };
  });
}

function firmwareIsUefi(sysRoot = "/sys"): boolean {
  return existsSync(join(sysRoot, "firmware", "efi"));
}

export async function installBootloader(deps: UtilityDeps, p: Params, signal: AbortSignal): Promise<null> {
  const log = deps.log.child({ command: "install_bootloader" });
  const env: BlockEnv = { config: deps.config, run: deps.run, guard: deps.guard, log, signal };
  const ignore = p.ignore_bootloader_failure ?? deps.config.ignoreBootloaderFailure;
  // Ironic says which mode the instance boots in; old releases do not, then the ramdisk's own mode counts.
  const mode = p.target_boot_mode ?? (firmwareIsUefi() ? "uefi" : "bios");
  if (p.target_boot_mode !== undefined && p.target_boot_mode !== null && (p.target_boot_mode === "uefi") !== firmwareIsUefi()) {
    log.warn({ target: p.target_boot_mode }, "boot mode mismatch between the target and the ramdisk; installing the boot loader may fail");
  }
  if (p.prep_boot_part_uuid) log.warn("PReP boot partitions are not supported; ignoring prep_boot_part_uuid");

  if (mode === "uefi") {
    try {
      if ((await setupUefi(env, p.efi_system_part_uuid, p.root_uuid)) !== undefined) return null;
    } catch (err) {
      if (!ignore) throw err;
      // As IPA: an ignored UEFI failure still goes on to the BIOS path below.
      log.error({ err }, "setting up the UEFI boot loader failed; ignored as asked");
    }
  }
  if (p.root_uuid === null || p.root_uuid === "0x00000000") {
    log.info("no root UUID: a whole disk image brings its own boot loader");
    return null;
  }
  if (deps.config.enableBiosBootloaderInstall) {
    try {
      await installGrub(env, p.root_uuid);
    } catch (err) {
      if (!ignore) throw err;
      log.error({ err }, "installing GRUB failed; ignored as asked");
    }
    return null;
  }
  const msg =
    "Install of legacy BIOS bootloaders is disabled (enableBiosBootloaderInstall, IPA's enable_bios_bootloader_install) as part of a CVE mitigation";
  if (!ignore) throw invalidImage(msg);
  log.error(msg);
  return null;
}

/** The image extension's one command. */
export function imageCommands(deps: UtilityDeps): Record<string, CommandDefinition> {
  return {
    install_bootloader: defineCommand({
      mode: "async",
      destructive: true,
      params: Params,
      timeoutMs: 600_000,
      run: (p, ctx) => installBootloader(deps, p, ctx.signal),
    }),
  };
}
