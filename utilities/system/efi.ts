/**
 * UEFI boot entries: which loader an EFI system partition offers, and which efibootmgr calls
 * register it. The decisions are pure functions (tested on a real vfat ESP); running efibootmgr is
 * left to the caller's runner.
 */
import { constants } from "node:fs";
import { access, lstat, readdir, readFile } from "node:fs/promises";
import { join, posix } from "node:path";

/**
 * File names (any case) that count as boot loaders, as IPA lists them. The `.csv` ones are shim's
 * pointer files: the first one found wins over every loader.
 */
export const EFI_LOADER_NAMES: readonly string[] = [
  "bootx64.csv",
  "bootaa64.csv",
  "boot.csv",
  "bootia32.efi",
  "bootx64.efi",
  "bootia64.efi",
  "bootarm.efi",
  "bootaa64.efi",
  "bootriscv32.efi",
  "bootriscv64.efi",
  "bootriscv128.efi",
  "grubaa64.efi",
  "winload.efi",
];

const isCsv = (rel: string): boolean => rel.toLowerCase().endsWith(".csv");

/**
 * Walks a mounted ESP (directories in name order) for boot loaders; returns their paths relative
 * to the ESP with `/` separators. A `.csv` pointer file ends the walk and is returned alone;
 * otherwise every executable loader is returned.
 */
export async function findEfiLoaders(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string): Promise<string | undefined> => {
    const names = (await readdir(join(root, rel))).sort();
    // Some FUSE file systems give no d_type: stat each entry instead of trusting readdir's.
    const entries = await Promise.all(
      names.map(async (name) => {
        const st = await lstat(join(root, rel, name)).catch(() => undefined);
        return { name, isFile: () => st?.isFile() === true, isDirectory: () => st?.isDirectory() === true };
      }),
    );
    for (const e of entries) {
      if (!e.isFile() || !EFI_LOADER_NAMES.includes(e.name.toLowerCase())) continue;
      const path = rel === "" ? e.name : posix.join(rel, e.name);
      if (isCsv(path)) return path;
      try {
        await access(join(root, path), constants.X_OK);
        found.push(path);
      } catch {
        // not executable: not a loader
      }
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const csv = await walk(rel === "" ? e.name : posix.join(rel, e.name));
      if (csv !== undefined) return csv;
    }
    return undefined;
  };
  const csv = await walk("");
  return csv === undefined ? found : [csv];
}

/**
 * Decodes a shim CSV (UTF-16 as shim writes it: a BOM says which order, none means little-endian;
 * plain UTF-8/ASCII is accepted too) into its loader file name and label.
 */
export function parseBootCsv(bytes: Buffer): { loader: string; label: string } {
  let text: string;
  if (bytes[0] === 0xff && bytes[1] === 0xfe) text = bytes.subarray(2).toString("utf16le");
  else if (bytes[0] === 0xfe && bytes[1] === 0xff) {
    const swapped = Buffer.from(bytes.subarray(2));
    swapped.swap16();
    text = swapped.toString("utf16le");
  } else if (bytes.length >= 2 && bytes[1] === 0) text = bytes.toString("utf16le");
  else text = bytes.toString("utf8").replace(/^\ufeff/, "");
  const fields = text.replace(/\0/g, "").split(",");
  const loader = (fields[0] ?? "").trim();
  const label = (fields[1] ?? "").trim();
  if (loader === "" || label === "") throw new Error(`boot CSV has no loader or label: ${JSON.stringify(text.slice(0, 200))}`);
  return { loader, label };
}

export interface EfiLoaderChoice {
  /** The loader path as efibootmgr wants it: `\EFI\BOOT\BOOTX64.EFI`. */
  readonly loader: string;
  readonly label: string;
  /** The file it came from, relative to the ESP. */
  readonly source: string;
}

/** Turns what findEfiLoaders found into loaders and labels (`ironic1`, `ironic2`, ... or the CSV's). */
export async function chooseEfiLoaders(root: string, found: readonly string[], labelSuffix?: string): Promise<EfiLoaderChoice[]> {
  const suffix = labelSuffix === undefined ? "" : ` ${labelSuffix}`;
  const out: EfiLoaderChoice[] = [];
  let id = 1;
  for (const rel of found) {
    if (isCsv(rel)) {
      const { loader, label } = parseBootCsv(await readFile(join(root, rel)));
      const target = posix.join(posix.dirname(rel), loader);
      out.push({ loader: `\\${target.replace(/\//g, "\\")}`, label: `${label}${suffix}`, source: rel });
    } else {
      out.push({ loader: `\\${rel.replace(/\//g, "\\")}`, label: `ironic${id}${suffix}`, source: rel });
    }
    id++;
  }
  return out;
}

export interface BootRecord {
  /** Hex boot number, as efibootmgr prints it (`0001`). */
  readonly num: string;
  readonly label: string;
  readonly path: string;
}

/**
 * Parses `efibootmgr -v`. Some efibootmgr builds print UTF-16: read as UTF-8 that shows as NULs
 * between the characters, which are dropped (labels are ASCII in practice).
 */
export function parseBootRecords(output: string): BootRecord[] {
  const text = output.replace(/[\0\ufeff\ufffd]/g, "");
  const out: BootRecord[] = [];
  const re = /^Boot([0-9a-fA-F]+)\*?\s+(.*?)\s+((?:BBS|HD|FvFile|FvVol|PciRoot|VenMsg|VenHw|UsbClass)\(.*)$/;
  for (const line of text.split(/\r?\n/)) {
    const m = re.exec(line);
    if (m !== null && m[1] !== undefined && m[2] !== undefined && m[3] !== undefined) out.push({ num: m[1], label: m[2], path: m[3] });
  }
  return out;
}

export interface EfibootmgrPlan {
  /** Boot numbers to delete first (`efibootmgr -b N -B`): records with a label about to be added. */
  readonly remove: string[];
  /** efibootmgr argument lists that add the entries. */
  readonly add: string[][];
}

/** The efibootmgr calls for one ESP partition: drop entries with the same label, then add ours. */
export function planEfibootmgr(choices: readonly EfiLoaderChoice[], records: readonly BootRecord[], disk: string, partition: number): EfibootmgrPlan {
  const remove: string[] = [];
  const add: string[][] = [];
  for (const c of choices) {
    for (const r of records) if (r.label === c.label && !remove.includes(r.num)) remove.push(r.num);
    add.push(["-v", "-c", "-d", disk, "-p", String(partition), "-w", "-L", c.label, "-l", c.loader]);
  }
  return { remove, add };
}
