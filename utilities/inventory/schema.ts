/**
 * The hardware inventory exchanged with Ironic (`poll.get_hardware_info`,
 * lookup, inspection). Field names, nesting and null conventions follow
 * ironic-python-agent; see docs/inventory.md for the source of every field.
 *
 * Objects are strict: an inventory with an unknown key fails validation, so
 * a typo in the collector cannot silently reach the wire.
 */
import { z } from "zod";

/** `[[tlv_type, hex_value], ...]` as IPA reports raw LLDP TLVs. */
export const LldpTlvSchema = z.tuple([z.number().int(), z.string()]);

export const InterfaceSchema = z.strictObject({
  name: z.string(),
  mac_address: z.string(),
  ipv4_address: z.string().nullable(),
  ipv6_address: z.string().nullable(),
  has_carrier: z.boolean(),
  /** Only filled when LLDP collection is enabled; otherwise null. */
  lldp: z.array(LldpTlvSchema).nullable(),
  /** PCI vendor id, e.g. "0x8086". */
  vendor: z.string().nullable(),
  /** PCI device id, e.g. "0x1572". */
  product: z.string().nullable(),
  /** DHCP client identifier, InfiniBand only. */
  client_id: z.string().nullable(),
  biosdevname: z.string().nullable(),
  speed_mbps: z.number().int().nullable(),
  /** Basename of /sys/class/net/<if>/device (a PCI address on PCI NICs). */
  pci_address: z.string().nullable(),
  driver: z.string().nullable(),
});

export const CpuSchema = z.strictObject({
  model_name: z.string(),
  /** Max MHz when lscpu knows it, else current MHz, as a string; null when unknown. */
  frequency: z.string().nullable(),
  /** Logical CPUs (hyper-threads included). */
  count: z.number().int().nonnegative(),
  architecture: z.string(),
  flags: z.array(z.string()),
  socket_count: z.number().int().nonnegative(),
});

export const DiskSchema = z.strictObject({
  /** "/dev/sda" */
  name: z.string(),
  model: z.string().nullable(),
  /** Bytes. */
  size: z.number().int().nonnegative(),
  rotational: z.boolean(),
  wwn: z.string().nullable(),
  serial: z.string().nullable(),
  vendor: z.string().nullable(),
  wwn_with_extension: z.string().nullable(),
  wwn_vendor_extension: z.string().nullable(),
  /** SCSI host:channel:target:lun, e.g. "0:0:0:0". */
  hctl: z.string().nullable(),
  /** "/dev/disk/by-path/..." link pointing at the device. */
  by_path: z.string().nullable(),
  logical_sectors: z.number().int().positive().nullable(),
  physical_sectors: z.number().int().positive().nullable(),
  /** Transport: "sata", "sas", "nvme", "usb"... */
  tran: z.string().nullable(),
});

export const MemorySchema = z.strictObject({
  /** Bytes usable by the kernel (MemTotal). */
  total: z.number().int().nonnegative().nullable(),
  /** Installed RAM in MiB (sum of DIMMs). */
  physical_mb: z.number().int().nonnegative().nullable(),
});

export const FirmwareSchema = z.strictObject({
  vendor: z.string(),
  version: z.string(),
  build_date: z.string(),
});

export const SystemVendorSchema = z.strictObject({
  product_name: z.string(),
  serial_number: z.string(),
  manufacturer: z.string(),
  firmware: FirmwareSchema,
});

export const BootSchema = z.strictObject({
  current_boot_mode: z.enum(["uefi", "bios"]),
  /** The BOOTIF kernel parameter as given, e.g. "01-52-54-00-12-34-56". */
  pxe_interface: z.string().nullable(),
});

export const InventorySchema = z.strictObject({
  interfaces: z.array(InterfaceSchema),
  cpu: CpuSchema,
  disks: z.array(DiskSchema),
  memory: MemorySchema,
  /** IPv4 of the BMC; "0.0.0.0" when IPMI exists but no channel has an address; null without IPMI. */
  bmc_address: z.string().nullable(),
  /** IPv6 of the BMC; "::/0" when IPMI exists but none is configured; null without IPMI. */
  bmc_v6address: z.string().nullable(),
  /** Present only when a BMC MAC address was found. */
  bmc_mac: z.string().optional(),
  system_vendor: SystemVendorSchema,
  boot: BootSchema,
  hostname: z.string(),
});

export type Interface = z.infer<typeof InterfaceSchema>;
export type Cpu = z.infer<typeof CpuSchema>;
export type Disk = z.infer<typeof DiskSchema>;
export type Memory = z.infer<typeof MemorySchema>;
export type Firmware = z.infer<typeof FirmwareSchema>;
export type SystemVendor = z.infer<typeof SystemVendorSchema>;
export type Boot = z.infer<typeof BootSchema>;
export type Inventory = z.infer<typeof InventorySchema>;
