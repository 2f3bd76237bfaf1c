/**
 * A safety check of a downloaded (not streamed) image before qemu-img touches it, after IPA's deep
 * format inspection: the format is read from the file's own header, must be the one Ironic declared
 * and must be permitted; a qcow2 naming a backing file or an external data file is refused (qemu-img
 * would open files of the ramdisk). Raw images are never inspected (IPA).
 */
import { open, stat } from "node:fs/promises";

export type DetectedFormat = "raw" | "gpt" | "iso" | "qcow2" | "qed" | "vmdk" | "vhd" | "vhdx" | "vdi" | "luks";

export interface Inspection {
  readonly format: DetectedFormat;
  /** Size of the disk the image describes, in bytes. */
  readonly virtualSize: number;
  /** Reasons not to use it. */
  readonly problems: readonly string[];
}

async function readHead(path: string, length: number): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function at(buf: Buffer, offset: number, text: string): boolean {
  return buf.length >= offset + text.length && buf.toString("latin1", offset, offset + text.length) === text;
}

export async function inspectImage(path: string): Promise<Inspection> {
  const fileSize = (await stat(path)).size;
  const head = await readHead(path, 0x8006);
  if (at(head, 0, "QFI\xfb")) {
    const problems: string[] = [];
    const version = head.readUInt32BE(4);
    if (head.readBigUInt64BE(8) !== 0n) problems.push("the qcow2 image names a backing file");
    if (version >= 3 && head.length >= 80 && (head.readBigUInt64BE(72) & 0x4n) !== 0n) problems.push("the qcow2 image uses an external data file");
    return { format: "qcow2", virtualSize: Number(head.readBigUInt64BE(24)), problems };
  }
  if (at(head, 0, "QED\0")) return { format: "qed", virtualSize: head.length >= 48 ? Number(head.readBigUInt64LE(40)) : 0, problems: ["QED images are not supported"] };
  if (at(head, 0, "KDMV") || at(head, 0, "# Disk DescriptorFile")) return { format: "vmdk", virtualSize: 0, problems: [] };
  if (at(head, 0, "vhdxfile")) return { format: "vhdx", virtualSize: 0, problems: [] };
  if (at(head, 0, "conectix")) return { format: "vhd", virtualSize: 0, problems: [] };
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return { format: "vdi", virtualSize: 0, problems: [] };
  if (at(head, 0, "LUKS\xba\xbe")) return { format: "luks", virtualSize: fileSize, problems: [] };
  if (at(head, 0x8001, "CD001")) return { format: "iso", virtualSize: fileSize, problems: [] };
  if (at(head, 512, "EFI PART") || at(head, 4096, "EFI PART")) return { format: "gpt", virtualSize: fileSize, problems: [] };
  return { format: "raw", virtualSize: fileSize, problems: [] };
}

/** Formats written byte for byte (no conversion). */
export function isRawLike(format: string): boolean {
  return format === "raw" || format === "gpt" || format === "iso";
}
