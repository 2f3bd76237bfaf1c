/**
 * The agent core: resolves `<extension>.<command>`, enforces the one-hardware-command-at-a-time rule,
 * deadlines, cancellation and idempotency, stores results (bounded), and tells listeners about
 * progress and finished commands. It never knows which transport carried a command.
 */
import { randomUUID } from "node:crypto";
import type { CommandContext, CommandDefinition, Extension, ProgressUpdate } from "../core/command.js";
import type { Json, JsonObject, ProgressBody } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { SubmitRequest } from "../core/transport.js";
import { controlExtension } from "./control.js";
import { CommandRecord } from "./record.js";

export { CommandRecord };
export type { SubmitRequest };

export interface RouterOptions {
  readonly extensions: readonly Extension[];
  readonly log: Logger;
  readonly allowDestructive: boolean;
  readonly resultHistory: number;
  readonly idHistory: number;
  readonly defaultTimeoutMs: number;
  readonly now?: () => number;
}

export interface RouterEvents {
  progress: (record: CommandRecord, progress: ProgressBody) => void;
  finished: (record: CommandRecord) => void;
}

interface Resolved {
  readonly extension: string;
  readonly command: string;
  readonly def: CommandDefinition;
}

/** `repr()` of a flat string map, as IPA prints them in error details. */
export function pyRepr(value: Readonly<Record<string, string>>): string {
  return `{${Object.entries(value)
    .map(([k, v]) => `'${k}': '${v}'`)
    .join(", ")}}`;
}

export class Router {
  private readonly extensions = new Map<string, Extension>();
  private readonly records = new Map<string, CommandRecord>();
  /** Ids of every command accepted, bounded; outlives the records themselves. */
  private readonly seenIds = new Set<string>();
  /** The same ids in arrival order, as a ring, so the oldest is evicted in O(1). */
  private readonly seenRing: string[] = [];
  private seenHead = 0;
  /** Record ids in arrival order (from recordHead on), so the oldest finished result is evicted in O(1). */
  private recordOrder: string[] = [];
  private recordHead = 0;
  private readonly running = new Map<string, AbortController>();
  private readonly listeners: { [K in keyof RouterEvents]: Set<RouterEvents[K]> } = { progress: new Set(), finished: new Set() };
  private holder: CommandRecord | undefined;
  private closing = false;
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(private readonly opts: RouterOptions) {
    for (const ext of [controlExtension(this), ...opts.extensions]) {
      if (this.extensions.has(ext.name)) throw new AgentError("PLUGIN_INVALID", `extension ${ext.name} registered twice`);
      this.extensions.set(ext.name, ext);
    }
    this.now = opts.now ?? Date.now;
    this.log = opts.log.child({ component: "router" });
  }

  on<K extends keyof RouterEvents>(event: K, listener: RouterEvents[K]): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  /** The command holding the hardware lock, if any. */
  busyWith(): CommandRecord | undefined {
    return this.holder;
  }

  get(id: string): CommandRecord | undefined {
    return this.records.get(id);
  }

  /**
   * Every stored result, oldest first, without the control commands (agent.*): Ironic reads the last
   * listed command as the state of its step, so a status query must never become "the last command".
   */
  list(): CommandRecord[] {
    const out: CommandRecord[] = [];
    for (const rec of this.records.values()) if (rec.listed) out.push(rec);
    return out;
  }

  extensionNames(): string[] {
    return [...this.extensions.keys()];
  }

  cancel(id: string, reason = "cancelled on request"): boolean {
    const ac = this.running.get(id);
    if (ac === undefined) return false;
    ac.abort(new AgentError("COMMAND_CANCELLED", reason));
    return true;
  }

  /** What the agent knows of a command before running it (for authorisation); undefined when unknown. */
  describe(name: string): { readonly name: string; readonly destructive: boolean; readonly exclusive: boolean } | undefined {
    const resolved = this.tryResolve(name);
    if (resolved === undefined) return undefined;
    return { name: `${resolved.extension}.${resolved.command}`, destructive: resolved.def.destructive === true, exclusive: resolved.def.exclusive === true };
  }

  private tryResolve(name: string): Resolved | undefined {
    try {
      return this.resolve(name);
    } catch {
      return undefined;
    }
  }

  private resolve(name: string): Resolved {
    const dot = name.indexOf(".");
    if (dot < 0) throw new AgentError("INVALID_COMMAND_NAME", "Command name must be of the form <extension>.<name>");
    const extension = name.slice(0, dot);
    const command = name.slice(dot + 1);
    const ext = this.extensions.get(extension);
    if (ext === undefined) throw new AgentError("UNKNOWN_EXTENSION", `Extension with id ${extension} not found.`);
    const def = Object.hasOwn(ext.commands, command) ? ext.commands[command] : undefined;
    if (def === undefined) throw new AgentError("UNKNOWN_COMMAND", `Unknown command: ${command}`);
    return { extension, command, def };
  }

  /**
   * Accepts a command. Throws AgentError for everything refused before it is recorded (busy, unknown,
   * invalid, expired, not allowed); after that every outcome is in the record, never thrown.
   */
  async submit(req: SubmitRequest): Promise<CommandRecord> {
    if (this.closing) throw new AgentError("SHUTTING_DOWN", "not accepting commands");
    if (req.id !== undefined) {
      const known = this.records.get(req.id);
      if (known !== undefined) {
        if (req.wait === true) await known.done;
        return known;
      }
      if (this.seenIds.has(req.id)) {
        throw new AgentError("DUPLICATE_COMMAND", `command ${req.id} already ran and its result has left the history`);
      }
    }
    // IPA checks busy first: while a hardware command runs, every new command is refused, valid or
    // not; only commands made to run meanwhile (cancelling the running one) get through.
    if (this.holder !== undefined && this.tryResolve(req.name)?.def.whileBusy !== true) {
      throw new AgentError("AGENT_BUSY", `executing command ${this.holder.shortName}`);
    }
    const { extension, command, def } = this.resolve(req.name);
    if (req.expiresAt !== undefined && req.expiresAt <= this.now()) {
      throw new AgentError("COMMAND_EXPIRED", `command expired at ${new Date(req.expiresAt).toISOString()}`);
    }
    def.validate?.(req.params);
    if (def.destructive && !this.opts.allowDestructive) {
      throw new AgentError("DESTRUCTIVE_NOT_ALLOWED", `${req.name} is destructive and allow_destructive is off`);
    }

    const id = req.id ?? randomUUID();
    const record = new CommandRecord(id, `${extension}.${command}`, command, def.mode, this.now(), !def.whileBusy);
    this.store(record, req.id !== undefined);
    if (def.exclusive) this.holder = record;

    const execution = this.execute(record, def, req);
    if (execution !== undefined && (def.mode === "sync" || req.wait === true)) await execution;
    return record;
  }

  private store(record: CommandRecord, clientId: boolean): void {
    this.records.set(record.id, record);
    // Only an id the client chose can come again; one the agent made up cannot.
    if (clientId) this.remember(record.id);
    this.recordOrder.push(record.id);
    // Each queued id is looked at once at most per call; a running command is never dropped but
    // goes to the back of the queue, so it cannot hold up the eviction of finished ones.
    let budget = this.recordOrder.length - this.recordHead;
    while (this.records.size > this.opts.resultHistory && budget-- > 0) {
      const oldest = this.recordOrder[this.recordHead++] as string;
      const rec = this.records.get(oldest);
      if (rec === undefined) continue;
      if (rec.finished) this.records.delete(oldest);
      else this.recordOrder.push(oldest);
    }
    if (this.recordHead > 1024 && this.recordHead * 2 > this.recordOrder.length) {
      this.recordOrder = this.recordOrder.slice(this.recordHead);
      this.recordHead = 0;
    }
  }

  private remember(id: string): void {
    this.seenIds.add(id);
    if (this.seenRing.length < this.opts.idHistory) {
      this.seenRing.push(id);
      return;
    }
    this.seenIds.delete(this.seenRing[this.seenHead] as string);
    this.seenRing[this.seenHead] = id;
    this.seenHead = (this.seenHead + 1) % this.opts.idHistory;
  }

  /** @internal RunContext.progress */
  emitProgress(record: CommandRecord, update: ProgressUpdate): void {
    if (record.finished) return;
    const body: ProgressBody = { command_id: record.id, command_name: record.fullName, ...update };
    record.lastProgress = body;
    for (const l of this.listeners.progress) this.safely(() => l(record, body));
  }

  /** @internal RunContext.invoke: another command inline, under the running one's lock and signal. */
  async invokeInner(parent: RunContext, name: string, params: JsonObject): Promise<Json> {
    const { def } = this.resolve(name);
    def.validate?.(params);
    if (def.destructive && !this.opts.allowDestructive) {
      throw new AgentError("DESTRUCTIVE_NOT_ALLOWED", `${name} is destructive and allow_destructive is off`);
    }
    parent.signal.throwIfAborted();
    const inner = new RunContext(this, parent.record, name, parent.log, { invoked: name }, parent);
    return toJson(await def.execute(params, inner), def.mode, name.slice(name.indexOf(".") + 1));
  }


  /**
   * Runs a recorded command. A command that is done at once (a plain value, or a throw) finishes
   * here with no timer, signal or child logger made for it; one that returns a promise gets its
   * deadline and abort handling. Resolves (or returns undefined) once the record is final.
   */
  private execute(record: CommandRecord, def: CommandDefinition, req: SubmitRequest): Promise<void> | undefined {
    const ctx = new RunContext(this, record, record.fullName, this.log, { command: record.fullName, commandId: record.id });
    const logger = (): Logger => ctx.log;
    let pending: unknown;
    try {
      pending = def.execute(req.params, ctx);
    } catch (err) {
      this.fail(record, err, logger);
      this.settled(record);
      return undefined;
    }
    if (!isPromiseLike(pending)) {
      this.succeed(record, pending, def, logger);
      this.settled(record);
      return undefined;
    }
    return this.await(record, def, req, ctx.controller(), Promise.resolve(pending), logger);
  }

  private async await(record: CommandRecord, def: CommandDefinition, req: SubmitRequest, ac: AbortController, handler: Promise<unknown>, logger: () => Logger): Promise<void> {
    this.running.set(record.id, ac);
    const timeoutMs = req.timeoutMs ?? def.timeoutMs ?? this.opts.defaultTimeoutMs;
    const timer = setTimeout(() => ac.abort(new AgentError("COMMAND_TIMEOUT", `${record.fullName} ran longer than ${timeoutMs} ms`)), timeoutMs);
    const aborted = new Promise<never>((_, reject) => {
      ac.signal.addEventListener("abort", () => reject(ac.signal.reason), { once: true });
    });
    try {
      this.succeed(record, await Promise.race([handler, aborted]), def, logger);
    } catch (err) {
      this.fail(record, err, logger);
    } finally {
      clearTimeout(timer);
      this.running.delete(record.id);
    }
    // The hardware lock outlives a deadline: it is released only once the handler has really stopped.
    if (this.holder === record) {
      await handler.then(
        () => undefined,
        () => undefined,
      );
    }
    this.settled(record);
  }

  private succeed(record: CommandRecord, value: unknown, def: CommandDefinition, logger: () => Logger): void {
    let result: Json;
    try {
      result = toJson(value, def.mode, record.shortName);
    } catch (err) {
      this.fail(record, err, logger);
      return;
    }
    record.finish("SUCCEEDED", result, null, this.now());
    if (this.log.isLevelEnabled("info")) logger().info({ status: record.status, ms: this.now() - record.createdAt }, "command finished");
  }

  private fail(record: CommandRecord, err: unknown, logger: () => Logger): void {
    const error = AgentError.from(err, "COMMAND_FAILED");
    const status = error.code === "VERSION_MISMATCH" ? "CLEAN_VERSION_MISMATCH" : "FAILED";
    record.finish(status, null, error.toCommandError(), this.now());
    logger().warn({ status, code: error.code, err: error.cause ?? error }, "command failed");
  }

  /** The record is final: release the lock and tell the listeners. */
  private settled(record: CommandRecord): void {
    if (this.holder === record) this.holder = undefined;
    for (const l of this.listeners.finished) this.safely(() => l(record));
  }

  private safely(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err }, "router listener threw");
    }
  }

  /** Stops accepting commands, aborts the running ones and waits for them to settle. */
  async close(): Promise<void> {
    this.closing = true;
    const pending = [...this.running.keys()].map((id) => this.records.get(id)?.done);
    for (const ac of this.running.values()) ac.abort(new AgentError("SHUTTING_DOWN", "agent is stopping"));
    await Promise.all(pending);
  }
}

/**
 * What a running command sees. Its AbortController and child logger are made on first use: a command
 * done at once never pays for them. An invoked command shares its parent's controller.
 */
class RunContext implements CommandContext {
  private ac: AbortController | undefined;
  private logger: Logger | undefined;

  constructor(
    private readonly router: Router,
    readonly record: CommandRecord,
    readonly name: string,
    private readonly parentLog: Logger,
    private readonly bindings: Record<string, string>,
    private readonly parent?: RunContext,
  ) {}

  get id(): string {
    return this.record.id;
  }

  controller(): AbortController {
    if (this.parent !== undefined) return this.parent.controller();
    return (this.ac ??= new AbortController());
  }

  get signal(): AbortSignal {
    return this.controller().signal;
  }

  get log(): Logger {
    return (this.logger ??= this.parentLog.child(this.bindings));
  }

  progress(update: ProgressUpdate): void {
    this.router.emitProgress(this.record, update);
  }

  invoke(name: string, params: JsonObject): Promise<Json> {
    return this.router.invokeInner(this, name, params);
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}

/** IPA's result conventions: undefined is null, strings are wrapped, anything else must be JSON. */
export function toJson(value: unknown, mode: "sync" | "async", shortName: string): Json {
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return { result: mode === "async" ? `${shortName}: ${value}` : value };
  try {
    return JSON.parse(JSON.stringify(value)) as Json;
  } catch (err) {
    throw new AgentError("COMMAND_FAILED", `result is not JSON-serialisable: ${(err as Error).message}`, { cause: err });
  }
}
