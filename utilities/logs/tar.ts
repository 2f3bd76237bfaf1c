/**
 * A minimal POSIX ustar writer (regular files only), enough for log bundles
 * that any `tar`, Python's tarfile or Ironic can read. No dependency and no
 * `tar` binary needed, so it works in minimal ramdisks.
 *
 * Layout: per member a 512-byte header then the content padded to 512
 * bytes; the archive ends with two zero blocks.
 */

export const BLOCK = 512;

export interface TarEntry {
  name: string;
  data: Buffer;
  /** Seconds since the epoch. Default: now. */
  mtime?: number;
  /** Default 0o644. */
  mode?: number;
}

/** Bytes an entry of `dataLength` bytes takes in the archive (header + padded content). */
export function entrySize(dataLength: number): number {
  return BLOCK + Math.ceil(dataLength / BLOCK) * BLOCK;
}

/** Size of the end-of-archive marker. */
export const END_SIZE = 2 * BLOCK;

function writeString(buf: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, "utf8");
  bytes.copy(buf, offset, 0, Math.min(bytes.length, length));
}

/** Octal number, zero padded to `length - 1` digits, NUL terminated. */
function writeOctal(buf: Buffer, offset: number, length: number, value: number): void {
  const digits = length - 1;
  const text = Math.max(0, Math.floor(value)).toString(8);
  if (text.length > digits) throw new RangeError(`tar: value ${value} does not fit in ${digits} octal digits`);
  writeString(buf, offset, length, text.padStart(digits, "0") + "\0");
}

/** Drop bytes from the front of a UTF-8 string until it fits `max` bytes (on a character boundary). */
function tailBytes(s: string, max: number): string {
  let out = s;
  while (Buffer.byteLength(out, "utf8") > max) out = out.slice(1);
  return out;
}

/**
 * Split a member name into ustar's `prefix` (<= 155 bytes) and `name`
 * (<= 100 bytes) at a slash. Names that cannot be split keep their last 100
 * bytes.
 */
export function splitName(full: string): { name: string; prefix: string } {
  const clean = full.replace(/^\/+/, "").replace(/\0/g, "");
  if (Buffer.byteLength(clean, "utf8") <= 100) return { name: clean, prefix: "" };
  for (let i = clean.indexOf("/"); i >= 0; i = clean.indexOf("/", i + 1)) {
    const prefix = clean.slice(0, i);
    const name = clean.slice(i + 1);
    if (Buffer.byteLength(prefix, "utf8") <= 155 && Buffer.byteLength(name, "utf8") <= 100 && name !== "") {
      return { name, prefix };
    }
  }
  return { name: tailBytes(clean, 100), prefix: "" };
}

export function tarHeader(entry: TarEntry): Buffer {
  const h = Buffer.alloc(BLOCK, 0);
  const { name, prefix } = splitName(entry.name);
  writeString(h, 0, 100, name);
  writeOctal(h, 100, 8, entry.mode ?? 0o644);
  writeOctal(h, 108, 8, 0); // uid
  writeOctal(h, 116, 8, 0); // gid
  writeOctal(h, 124, 12, entry.data.length);
  writeOctal(h, 136, 12, entry.mtime ?? Date.now() / 1000);
  h.fill(0x20, 148, 156); // checksum field counts as spaces while summing
  h.write("0", 156, "ascii"); // regular file
  writeString(h, 257, 6, "ustar\0");
  writeString(h, 263, 2, "00");
  writeString(h, 265, 32, "root");
  writeString(h, 297, 32, "root");
  writeString(h, 345, 155, prefix);
  let sum = 0;
  for (const byte of h) sum += byte;
  writeString(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/** Serialize entries into a complete archive. */
export function createTar(entries: readonly TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(tarHeader(e), e.data);
    const pad = (BLOCK - (e.data.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad, 0));
  }
  parts.push(Buffer.alloc(END_SIZE, 0));
  return Buffer.concat(parts);
}

export interface TarMember {
  name: string;
  size: number;
  mode: number;
  mtime: number;
  type: string;
  data: Buffer;
}

/**
 * Read a ustar archive (used by tests and by anyone inspecting a bundle).
 * Stops at the end marker; throws on a bad header checksum.
 */
export function parseTar(buf: Buffer): TarMember[] {
  const out: TarMember[] = [];
  const field = (h: Buffer, off: number, len: number): string => {
    const raw = h.subarray(off, off + len);
    const nul = raw.indexOf(0);
    return raw.subarray(0, nul < 0 ? len : nul).toString("utf8");
  };
  const octal = (h: Buffer, off: number, len: number): number => {
    const t = field(h, off, len).trim();
    return t === "" ? 0 : Number.parseInt(t, 8);
  };
  let off = 0;
  while (off + BLOCK <= buf.length) {
    const h = buf.subarray(off, off + BLOCK);
    if (h.every((b) => b === 0)) break;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0);
    if (sum !== octal(h, 148, 8)) throw new Error(`tar: bad header checksum at offset ${off}`);
    const prefix = field(h, 345, 155);
    const name = field(h, 0, 100);
    const size = octal(h, 124, 12);
    const start = off + BLOCK;
    out.push({
      name: prefix === "" ? name : `${prefix}/${name}`,
      size,
      mode: octal(h, 100, 8),
      mtime: octal(h, 136, 12),
      type: field(h, 156, 1) || "0",
      data: Buffer.from(buf.subarray(start, start + size)),
    });
    off = start + Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}
