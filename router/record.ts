import type { CommandErrorJson } from "../core/errors.js";
import type { CommandStatus, Json, ProgressBody, ResultBody } from "../core/envelope.js";
import type { CommandMode } from "../core/command.js";

/** One command's life: created RUNNING, finished exactly once. */
export class CommandRecord {
  status: CommandStatus = "RUNNING";
  error: CommandErrorJson | null = null;
  result: Json = null;
  lastProgress: ProgressBody | undefined;
  finishedAt: number | undefined;
  private donePromise: Promise<void> | undefined;
  private resolveDone: (() => void) | undefined;

  constructor(
    readonly id: string,
    /** `<extension>.<command>` */
    readonly fullName: string,
    readonly shortName: string,
    readonly mode: CommandMode,
    readonly createdAt: number,
    /** Shown in list() (GET /v1/commands); control commands are not. */
    readonly listed: boolean = true,
  ) {}

  /** Settles when the command has finished; made on first use (most commands finish before anyone asks). */
  get done(): Promise<void> {
    if (this.donePromise === undefined) {
      this.donePromise = this.finished
        ? Promise.resolve()
        : new Promise((resolve) => {
            this.resolveDone = resolve;
          });
    }
    return this.donePromise;
  }

  get finished(): boolean {
    return this.status !== "RUNNING";
  }

  finish(status: Exclude<CommandStatus, "RUNNING">, result: Json, error: CommandErrorJson | null, now: number): boolean {
    if (this.finished) return false;
    this.status = status;
    this.result = result;
    this.error = error;
    this.finishedAt = now;
    this.resolveDone?.();
    return true;
  }

  /** IPA's result object. Quirk kept from IPA: a failed sync command keeps its dotted name. */
  toJSON(): ResultBody {
    return {
      id: this.id,
      command_name: this.mode === "sync" && this.status === "FAILED" ? this.fullName : this.shortName,
      command_status: this.status,
      command_error: this.error,
      command_result: this.result,
    };
  }
}
