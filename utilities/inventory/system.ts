/**
 * System vendor and firmware from SMBIOS: `dmidecode -s <keyword>`, falling
 * back to /sys/class/dmi/id. Unknown values are "" as in IPA.
 *
 * IPA reads these from lshw, which appends the SKU to the product name as
 * "Product (SKU)"; we do the same so inspection rules keep matching.
 */
import type { CollectContext } from "./context.js";
import { runOk } from "./context.js";
import type { SystemVendor } from "./schema.js";

interface DmiField {
  keyword: string;
  sysfs: string;
}

const FIELDS = {
  product: { keyword: "system-product-name", sysfs: "product_name" },
  serial: { keyword: "system-serial-number", sysfs: "product_serial" },
  manufacturer: { keyword: "system-manufacturer", sysfs: "sys_vendor" },
  sku: { keyword: "system-sku-number", sysfs: "product_sku" },
  biosVendor: { keyword: "bios-vendor", sysfs: "bios_vendor" },
  biosVersion: { keyword: "bios-version", sysfs: "bios_version" },
  biosDate: { keyword: "bios-release-date", sysfs: "bios_date" },
} as const satisfies Record<string, DmiField>;

type FieldName = keyof typeof FIELDS;

/** dmidecode -s output: comment lines dropped; "Not Specified" (no string in the table) is "". */
export function cleanDmidecodeValue(stdout: string): string {
  const value = stdout
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .join("\n")
    .trim();
  return value === "Not Specified" ? "" : value;
}

async function readField(ctx: CollectContext, f: DmiField, dmidecodeWorks: boolean): Promise<string> {
  if (dmidecodeWorks) {
    const out = await runOk(ctx, "dmidecode", ["-s", f.keyword]);
    if (out !== null) return cleanDmidecodeValue(out);
  }
  return (await ctx.fs.readTrim(`/sys/class/dmi/id/${f.sysfs}`)) ?? "";
}

export async function collectSystemVendor(ctx: CollectContext): Promise<SystemVendor> {
  // One probe decides whether asking dmidecode for every field is worth it.
  const probe = await runOk(ctx, "dmidecode", ["-s", FIELDS.manufacturer.keyword]);
  const dmidecodeWorks = probe !== null;

  const entries = await Promise.all(
    (Object.keys(FIELDS) as FieldName[]).map(
      async (name) =>
        [
          name,
          name === "manufacturer" && probe !== null
            ? cleanDmidecodeValue(probe)
            : await readField(ctx, FIELDS[name], dmidecodeWorks),
        ] as const,
    ),
  );
  const v = new Map<FieldName, string>(entries);
  const get = (k: FieldName): string => v.get(k) ?? "";

  const product = get("product");
  const sku = get("sku");
  return {
    product_name: sku !== "" && product !== "" ? `${product} (${sku})` : product,
    serial_number: get("serial"),
    manufacturer: get("manufacturer"),
    firmware: {
      vendor: get("biosVendor"),
      version: get("biosVersion"),
      build_date: get("biosDate"),
    },
  };
}
