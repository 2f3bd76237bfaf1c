/** The generic hardware manager: what every machine supports, with the tools a Linux ramdisk has. */
import { readdir, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { CommandRunner } from "./exec.js";
import { collectInventory } from "./inventory/index.js";
import { type HardwareManager, SupportLevel } from "./managers.js";
import { mergeParts, type UtilityPart } from "./part.js";

export interface GenericManagerOptions {
  readonly run: CommandRunner;
  readonly bootInterface?: string | undefined;
  /** Where pstore lives (a test points it at a directory of its own). */
  readonly pstoreDir?: string;
  /** Methods and steps of the utility areas (disks, images, system): see utilities/part.ts. */
  readonly parts?: readonly UtilityPart[];
}

export function genericHardwareManager(opts: GenericManagerOptions): HardwareManager {
  const pstoreDir = opts.pstoreDir ?? "/sys/fs/pstore";
  const parts = mergeParts(opts.parts ?? []);
  return {
    name: "generic_hardware_manager",
    version: "1.2",
    className: "GenericHardwareManager",
    evaluateHardwareSupport: () => SupportLevel.GENERIC,
    methods: {
      ...parts.methods,
      list_hardware_info: {
        run: ({ ctx }) => collectInventory({ run: opts.run, bootInterfaceMac: opts.bootInterface ?? null, signal: ctx.signal }),
      },
      erase_pstore: {
        run: async ({ ctx }) => {
          let names: string[];
          try {
            names = await readdir(pstoreDir);
          } catch (err) {
            ctx.log.info({ pstoreDir, err }, "no pstore to erase");
            return null;
          }
          for (const name of names) await unlink(join(pstoreDir, name));
          ctx.log.info({ pstoreDir, removed: names.length }, "pstore erased");
          return null;
        },
      },
    },
    steps: {
      clean: [...parts.steps.clean, { step: "erase_pstore", priority: 0, interface: "deploy", reboot_requested: false, abortable: true }],
      service: parts.steps.service,
      deploy: parts.steps.deploy,
    },
  };
}
