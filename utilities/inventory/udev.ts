/**
 * Reading udev's device database directly from /run/udev/data, so no
 * udevadm or libudev is needed. Each block device's record lives in
 * `b<major>:<minor>`; its properties are the `E:KEY=VALUE` lines.
 */
import type { HostFs } from "./sysfs.js";

export type UdevProperties = Readonly<Record<string, string>>;

export function parseUdevRecord(text: string): Record<string, string> {
  const props: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith("E:")) continue;
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    props[line.slice(2, eq)] = line.slice(eq + 1);
  }
  return props;
}

/** udev properties of a block device by kernel name; empty when udev has no record. */
export async function blockUdevProperties(fs: HostFs, kname: string): Promise<UdevProperties> {
  const devnum = await fs.readTrim(`/sys/class/block/${kname}/dev`);
  if (devnum === null || !/^\d+:\d+$/.test(devnum)) return {};
  const record = await fs.read(`/run/udev/data/b${devnum}`);
  return record === null ? {} : parseUdevRecord(record);
}
