/**
 * Time and chance, injectable. Code that waits (lookup backoff, heartbeat intervals, retries) asks a
 * Clock instead of calling setTimeout and Math.random, so tests can check every computed delay and the
 * order of events without sleeping: `ManualClock` holds each sleep until the test advances time, and
 * its random source can be a scripted sequence.
 */

export interface Clock {
  /**
   * Milliseconds on a clock that never jumps (only differences mean anything). The system clock reads
   * like epoch ms at start but follows the monotonic timer, so a ramdisk setting its time of day does
   * not stretch or skip a wait.
   */
  now(): number;
  /**
   * Resolves `true` after `ms` milliseconds, or `false` as soon as `signal` aborts (at once if it
   * already has). Never rejects: a loop that is woken early looks at its own state to know why.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<boolean>;
  /** A number in [0, 1). */
  random(): number;
}

/** A uniform draw in [lo, hi) from the clock's random source. */
export function uniform(clock: Clock, lo: number, hi: number): number {
  return lo + (hi - lo) * clock.random();
}

/** The real clock: the monotonic timer, setTimeout, Math.random. */
export const systemClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  random: () => Math.random(),
  sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
    if (signal?.aborted === true) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const onAbort = (): void => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve(true);
      }, Math.max(0, ms));
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  },
};

/** A random source that replays `values` in turn (then repeats the last one); each must be in [0, 1). */
export function sequenceRandom(values: readonly number[]): () => number {
  if (values.length === 0) throw new RangeError("sequenceRandom needs at least one value");
  for (const v of values) if (!(v >= 0 && v < 1)) throw new RangeError(`random value ${v} is outside [0, 1)`);
  let i = 0;
  return () => {
    const v = values[Math.min(i, values.length - 1)] as number;
    i += 1;
    return v;
  };
}

interface Sleeper {
  readonly id: number;
  readonly due: number;
  readonly ms: number;
  readonly resolve: (completed: boolean) => void;
  readonly cleanup: () => void;
}

/** One call to ManualClock.sleep, as the test sees it afterwards. */
export interface SleepRecord {
  /** Virtual time when sleep was called. */
  readonly at: number;
  readonly ms: number;
  /** "slept" once it ran its course, "woken" if its signal aborted it, "pending" meanwhile. */
  outcome: "pending" | "slept" | "woken";
}

/**
 * Virtual time for tests. `sleep` waits until `advance`/`runUntil` moves the clock past its end;
 * `now()` only moves when the test says so. Every sleep is logged in `sleeps`.
 */
export class ManualClock implements Clock {
  readonly sleeps: SleepRecord[] = [];
  private current: number;
  private readonly rand: () => number;
  private readonly sleepers = new Map<number, Sleeper>();
  private nextId = 0;
  private readonly waiters: Array<{ count: number; resolve: () => void }> = [];

  constructor(opts: { start?: number; random?: () => number } = {}) {
    this.current = opts.start ?? 1_700_000_000_000;
    this.rand = opts.random ?? (() => 0.5);
  }

  now(): number {
    return this.current;
  }

  random(): number {
    return this.rand();
  }

  sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
    const record: SleepRecord = { at: this.current, ms, outcome: "pending" };
    this.sleeps.push(record);
    if (signal?.aborted === true) {
      record.outcome = "woken";
      return Promise.resolve(false);
    }
    const id = this.nextId++;
    return new Promise<boolean>((resolve) => {
      const onAbort = (): void => {
        this.sleepers.delete(id);
        record.outcome = "woken";
        resolve(false);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.sleepers.set(id, {
        id,
        due: this.current + Math.max(0, ms),
        ms,
        resolve: (completed) => {
          record.outcome = completed ? "slept" : "woken";
          resolve(completed);
        },
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      });
      this.notify();
    });
  }

  /** Milliseconds left on each pending sleep, soonest first. */
  pending(): number[] {
    return [...this.sleepers.values()].map((s) => s.due - this.current).sort((a, b) => a - b);
  }

  /** Resolves once at least `count` sleeps are pending (the code under test has gone idle). */
  waitForSleepers(count = 1): Promise<void> {
    if (this.sleepers.size >= count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ count, resolve }));
  }

  /**
   * Moves time forward by `ms`, waking due sleepers one at a time in order, and letting the woken code
   * run (a macrotask turn) before the next one is considered.
   */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    for (;;) {
      const next = [...this.sleepers.values()].filter((s) => s.due <= target).sort((a, b) => a.due - b.due || a.id - b.id)[0];
      if (next === undefined) break;
      this.current = Math.max(this.current, next.due);
      this.sleepers.delete(next.id);
      next.cleanup();
      next.resolve(true);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.current = target;
  }

  /** Advances exactly to the end of the soonest pending sleep; returns how far it moved (0 if none). */
  async advanceToNext(): Promise<number> {
    const [first] = this.pending();
    if (first === undefined) return 0;
    await this.advance(first);
    return first;
  }

  /**
   * Runs `work` to its end in virtual time: whenever it sleeps, time jumps to the end of that sleep.
   * Real I/O in between (HTTP to a test server) happens at its own pace, at a standstill of the clock.
   */
  async drive<T>(work: Promise<T>): Promise<T> {
    let done = false;
    const settled = work.then(
      () => {
        done = true;
      },
      () => {
        done = true;
      },
    );
    while (!done) {
      await Promise.race([this.waitForSleepers(1), settled]);
      if (done) break;
      await this.advanceToNext();
    }
    return work;
  }

  private notify(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (w !== undefined && this.sleepers.size >= w.count) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }
}
