/**
 * Writes a byte stream onto a block device the way `dd bs=4M oflag=direct` does: straight to the
 * device (O_DIRECT, no page cache, no copy of the image in RAM or tmpfs), in large blocks, one block
 * being filled while the previous ones are written, then a final fsync.
 *
 * push() copies the caller's bytes at once (the caller may reuse its buffer as soon as it returns)
 * and answers `undefined` when there is room for more, or a promise to wait for when every block is
 * busy: the bytes that did not fit were kept in an overflow buffer, drained as blocks free up.
 *
 * O_DIRECT wants the memory of each write aligned too (to the device's DMA alignment, 512 bytes on
 * most disks). Node cannot ask for an aligned allocation, so the writer allocates a little more and
 * finds the aligned offset inside its buffer by trying harmless O_DIRECT reads at successive
 * offsets. Regular files, and devices that refuse O_DIRECT, get buffered writes with a periodic
 * fdatasync. A tail shorter than 4 KiB goes through a buffered
 * descriptor and is fsync'd.
 */
import { constants } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";

const ALIGN = 4096;
const PROBE = 4096;
/** Buffered fallback: flush every this many bytes so dirty pages do not pile up. */
const SYNC_EVERY = 256 * 1024 * 1024;

export interface DeviceWriterOptions {
  /** Bytes per write, a multiple of 4096. */
  readonly blockBytes: number;
  /** Blocks: one is filled while the others are written. */
  readonly depth: number;
  /** Try O_DIRECT (default true). */
  readonly direct?: boolean;
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

interface Waiter {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

function waiter(): Waiter {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A waiter nobody awaits must not become an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

export class DeviceWriter {
  private fill = 0;
  private slot = 0;
  private position = 0;
  private readonly inflight: Array<Promise<void> | undefined>;
  private failure: unknown;
  private sinceSync = 0;
  private syncing: Promise<void> | undefined;
  private closed = false;
  private overflow: Buffer;
  private overflowStart = 0;
  private overflowEnd = 0;
  private ready: Waiter | undefined;
  private accepted = 0;

  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
    /** True when fh is O_DIRECT. */
    readonly direct: boolean,
    private readonly pool: Buffer,
    /** Offset of block 0 inside pool. */
    private readonly base: number,
    private readonly blockBytes: number,
    depth: number,
  ) {
    this.inflight = new Array<Promise<void> | undefined>(depth).fill(undefined);
    this.overflow = Buffer.allocUnsafeSlow(Math.min(blockBytes, 1024 * 1024));
  }

  /** Opens the device (or an existing file) for writing from offset 0. */
  static async open(path: string, opts: DeviceWriterOptions): Promise<DeviceWriter> {
    const size = opts.blockBytes * opts.depth;
    // O_DIRECT only for block devices: a file system may accept a misaligned probe (reading a hole
    // does no I/O) and refuse the writes.
    if (opts.direct !== false && (await stat(path)).isBlockDevice()) {
      let fh: FileHandle | undefined;
      try {
        fh = await open(path, constants.O_RDWR | constants.O_DIRECT);
      } catch (err) {
        if (errno(err) !== "EINVAL") throw err;
      }
      if (fh !== undefined) {
        const pool = Buffer.allocUnsafeSlow(size + ALIGN);
        const base = await findAlignedOffset(fh, pool).catch(async (err: unknown) => {
          await fh.close();
          throw err;
        });
        if (base !== undefined) return new DeviceWriter(path, fh, true, pool, base, opts.blockBytes, opts.depth);
        await fh.close();
      }
    }
    const fh = await open(path, constants.O_WRONLY);
    return new DeviceWriter(path, fh, false, Buffer.allocUnsafeSlow(size), 0, opts.blockBytes, opts.depth);
  }

  /** Bytes accepted so far. */
  get bytesAccepted(): number {
    return this.accepted;
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Takes a copy of `chunk`. Returns undefined when more may come at once, or a promise that settles
   * when the writer has room again (it rejects if a write failed).
   */
  push(chunk: Uint8Array): Promise<void> | undefined {
    this.check();
    this.accepted += chunk.length;
    if (this.overflowEnd > this.overflowStart) {
      this.keep(chunk, 0);
      return this.waitReady();
    }
    const off = this.copyIn(chunk, 0);
    if (off < chunk.length) {
      this.keep(chunk, off);
      return this.waitReady();
    }
    return undefined;
  }

  /** push(), a block at a time, waiting when it says so (a large buffer never lands in the overflow). */
  async write(chunk: Uint8Array): Promise<void> {
    for (let off = 0; off < chunk.length; off += this.blockBytes) {
      const wait = this.push(chunk.subarray(off, Math.min(chunk.length, off + this.blockBytes)));
      if (wait !== undefined) await wait;
    }
  }

  private waitReady(): Promise<void> {
    this.ready ??= waiter();
    return this.ready.promise;
  }

  /** Copies from `src` into free blocks, starting writes as blocks fill; returns where it stopped. */
  private copyIn(src: Uint8Array, from: number): number {
    let off = from;
    while (off < src.length && this.inflight[this.slot] === undefined && this.syncing === undefined) {
      const n = Math.min(this.blockBytes - this.fill, src.length - off);
      this.pool.set(src.subarray(off, off + n), this.base + this.slot * this.blockBytes + this.fill);
      this.fill += n;
      off += n;
      if (this.fill === this.blockBytes) this.submit();
    }
    return off;
  }

  /** Keeps the bytes that did not fit. */
  private keep(src: Uint8Array, from: number): void {
    const n = src.length - from;
    if (this.overflowEnd + n > this.overflow.length) {
      const live = this.overflowEnd - this.overflowStart;
      const bigger = live + n > this.overflow.length ? Buffer.allocUnsafeSlow(Math.max(2 * this.overflow.length, live + n)) : this.overflow;
      this.overflow.copy(bigger, 0, this.overflowStart, this.overflowEnd);
      this.overflow = bigger;
      this.overflowStart = 0;
      this.overflowEnd = live;
    }
    this.overflow.set(src.subarray(from), this.overflowEnd);
    this.overflowEnd += n;
  }

  /** Starts writing the current block and moves on to the next. */
  private submit(): void {
    const slot = this.slot;
    const length = this.fill;
    const position = this.position;
    this.inflight[slot] = this.writeFully(this.fh, this.base + slot * this.blockBytes, length, position).then(
      () => {
        this.inflight[slot] = undefined;
        this.afterWrite(length);
      },
      (err: unknown) => {
        this.inflight[slot] = undefined;
        this.fail(err);
      },
    );
    this.position += length;
    this.fill = 0;
    this.slot = (slot + 1) % this.inflight.length;
  }

  private afterWrite(length: number): void {
    if (this.failure !== undefined) return;
    if (!this.direct) {
      this.sinceSync += length;
      if (this.sinceSync >= SYNC_EVERY && this.syncing === undefined) {
        this.sinceSync = 0;
        // Pause filling until every write so far is on disk.
        this.syncing = Promise.all(this.inflight.filter((p): p is Promise<void> => p !== undefined))
          .then(() => this.fh.datasync())
          .then(
            () => {
              this.syncing = undefined;
              this.drainOverflow();
            },
            (err: unknown) => {
              this.syncing = undefined;
              this.fail(err);
            },
          );
        return;
      }
    }
    this.drainOverflow();
  }

  private drainOverflow(): void {
    if (this.overflowEnd > this.overflowStart) {
      const view = this.overflow.subarray(0, this.overflowEnd);
      this.overflowStart = this.copyIn(view, this.overflowStart);
      if (this.overflowStart === this.overflowEnd) {
        this.overflowStart = 0;
        this.overflowEnd = 0;
      }
    }
    if (this.overflowEnd === this.overflowStart && this.ready !== undefined) {
      const r = this.ready;
      this.ready = undefined;
      r.resolve();
    }
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    const r = this.ready;
    this.ready = undefined;
    r?.reject(this.failure);
  }

  private async writeFully(fh: FileHandle, offset: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await fh.write(this.pool, offset + done, length - done, position + done);
      if (bytesWritten <= 0) throw Object.assign(new Error(`short write to ${this.path} at ${position + done}`), { code: "EIO" });
      done += bytesWritten;
    }
  }

  private async drain(): Promise<void> {
    for (;;) {
      if (this.ready !== undefined) await this.ready.promise;
      await Promise.all(this.inflight.filter((p): p is Promise<void> => p !== undefined));
      if (this.syncing !== undefined) await this.syncing;
      this.check();
      if (this.ready === undefined && this.overflowEnd === this.overflowStart && this.inflight.every((p) => p === undefined)) return;
    }
  }

  /** Writes what is left, flushes the device and closes it; returns the bytes written. */
  async finish(): Promise<number> {
    try {
      await this.drain();
      const offset = this.base + this.slot * this.blockBytes;
      let rest = this.fill;
      if (rest > 0) {
        const aligned = this.direct ? rest - (rest % ALIGN) : rest;
        if (aligned > 0) await this.writeFully(this.fh, offset, aligned, this.position);
        this.position += aligned;
        rest -= aligned;
        if (rest > 0) {
          // O_DIRECT cannot write a partial block: the tail goes through the page cache.
          const tail = await open(this.path, constants.O_WRONLY);
          try {
            let done = 0;
            while (done < rest) {
              const { bytesWritten } = await tail.write(this.pool, offset + aligned + done, rest - done, this.position + done);
              done += bytesWritten;
            }
            await tail.sync();
          } finally {
            await tail.close();
          }
          this.position += rest;
        }
        this.fill = 0;
      }
      await this.fh.sync();
      return this.position;
    } finally {
      await this.close();
    }
  }

  /** Stops: waits for the writes in flight, closes; nothing is flushed. */
  async abort(): Promise<void> {
    this.fail(new Error("writer aborted"));
    await Promise.allSettled(this.inflight.filter((p): p is Promise<void> => p !== undefined));
    if (this.syncing !== undefined) await this.syncing.catch(() => undefined);
    await this.close();
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

/**
 * The offset inside `pool` at which O_DIRECT transfers work, found with reads of the device's first
 * 4 KiB (they change nothing); undefined when none works.
 */
async function findAlignedOffset(fh: FileHandle, pool: Buffer): Promise<number | undefined> {
  for (let k = 0; k < ALIGN; k += 8) {
    try {
      // An empty file answers any read with EOF, aligned or not: that proves nothing.
      const { bytesRead } = await fh.read(pool, k, PROBE, 0);
      return bytesRead === PROBE ? k : undefined;
    } catch (err) {
      if (errno(err) !== "EINVAL") throw err;
    }
  }
  return undefined;
}
