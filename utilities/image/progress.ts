/** Progress events of an image deployment: one at each stage change, then at most one per interval. */
import type { ProgressUpdate } from "../../core/command.js";

export type Stage = "resolve" | "checksum" | "partition" | "download" | "write" | "convert" | "configdrive" | "verify" | "done";

export class ProgressReporter {
  private stageName: Stage = "resolve";
  private started = 0;
  private lastEmit = 0;
  private total: number | undefined;
  private done = 0;

  constructor(
    private readonly emit: (update: ProgressUpdate) => void,
    private readonly intervalMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Enters a stage and says so at once. */
  stage(stage: Stage, message: string, total?: number): void {
    this.stageName = stage;
    this.started = this.now();
    this.total = total;
    this.done = 0;
    this.send(message);
  }

  /** Sets the byte count of the current stage; emits when the interval has passed (or `force`). */
  bytes(done: number, force = false): void {
    this.done = done;
    const t = this.now();
    if (force || t - this.lastEmit >= this.intervalMs) this.send();
  }

  /** Learns the total of the current stage (Content-Length arrives after the stage began). */
  setTotal(total: number | undefined): void {
    this.total = total;
  }

  private send(message?: string): void {
    const t = this.now();
    this.lastEmit = t;
    const elapsed = (t - this.started) / 1000;
    const update: { -readonly [K in keyof ProgressUpdate]: ProgressUpdate[K] } = { stage: this.stageName, bytes_done: this.done };
    if (message !== undefined) update.message = message;
    if (this.total !== undefined && this.total > 0) {
      update.bytes_total = this.total;
      update.percent = Math.min(100, Math.round((this.done / this.total) * 10000) / 100);
    }
    if (elapsed > 0 && this.done > 0) update.rate_bps = Math.round(this.done / elapsed);
    this.emit(update);
  }
}
