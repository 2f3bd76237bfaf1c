import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { z } from "zod";
import { defineCommand, defineExtension, type CommandContext } from "../core/command.js";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { Router, type RouterOptions } from "../router/router.js";
import { gate } from "./helpers/gate.js";

function makeRouter(overrides: Partial<RouterOptions> = {}) {
  let runs = 0;
  const hold = gate();
  const seen: CommandContext[] = [];
  const ext = defineExtension("t", {
    echo: defineCommand({ mode: "sync", params: z.object({ value: z.string() }).strict(), run: (p) => ({ echoed: p.value }) }),
    text: defineCommand({ mode: "sync", params: z.object({}).strict(), run: () => "plain" }),
    count: defineCommand({
      mode: "sync",
      params: z.object({}).strict(),
      run: () => {
        runs += 1;
        return runs;
      },
    }),
    slow: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: async (_p, ctx) => {
        seen.push(ctx);
        ctx.progress({ percent: 50, message: "half" });
        await hold.promise;
        return "done";
      },
    }),
    background: defineCommand({
      mode: "async",
      exclusive: false,
      params: z.object({}).strict(),
      run: async () => {
        await hold.promise;
        return null;
      },
    }),
    stubborn: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      timeoutMs: 20,
      // Ignores its signal: the lock must stay held until it really stops.
      run: async () => {
        await hold.promise;
        return null;
      },
    }),
    polite: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: (_p, ctx) =>
        new Promise((_, reject) => {
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true });
        }),
    }),
    boom: defineCommand({
      mode: "sync",
      params: z.object({}).strict(),
      run: () => {
        throw new TypeError("kaboom");
      },
    }),
    cyclic: defineCommand({
      mode: "sync",
      params: z.object({}).strict(),
      run: () => {
        const o: Record<string, unknown> = {};
        o["self"] = o;
        return o;
      },
    }),
    validated: defineCommand({
      mode: "async",
      params: z.object({ image_info: z.object({ id: z.string() }).passthrough() }).strict(),
      validate: (p) => {
        const info = p["image_info"];
        if (typeof info !== "object" || info === null || Array.isArray(info) || !("id" in info)) {
          throw new AgentError("INVALID_PARAMS", "Image is missing 'id' field.");
        }
      },
      run: () => null,
    }),
    wipe: defineCommand({ mode: "async", destructive: true, params: z.object({}).strict(), run: () => "wiped" }),
    mismatch: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: () => {
        throw new AgentError("VERSION_MISMATCH", "Current versions: {}, versions used by ironic: {'x': '1'}");
      },
    }),
  });
  const router = new Router({
    extensions: [ext],
    log: silentLogger(),
    allowDestructive: false,
    resultHistory: 100,
    idHistory: 1000,
    defaultTimeoutMs: 60_000,
    ...overrides,
  });
  return { router, hold, seen, runs: () => runs };
}

const refused = (code: string) => (err: unknown) => err instanceof AgentError && err.code === code;

describe("router", () => {
  it("runs a sync command and returns IPA's result shape", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.echo", params: { value: "hi" } });
    assert.deepEqual(rec.toJSON(), { id: rec.id, command_name: "echo", command_status: "SUCCEEDED", command_error: null, command_result: { echoed: "hi" } });
  });

  it("wraps string results as IPA does (sync plain, async prefixed)", async () => {
    const { router, hold } = makeRouter();
    assert.deepEqual((await router.submit({ name: "t.text", params: {} })).result, { result: "plain" });
    hold.open();
    const rec = await router.submit({ name: "t.slow", params: {}, wait: true });
    assert.deepEqual(rec.result, { result: "slow: done" });
  });

  it("refuses names without a dot, unknown extensions and unknown commands with IPA's messages", async () => {
    const { router } = makeRouter();
    await assert.rejects(router.submit({ name: "nodot", params: {} }), (e: unknown) => refused("INVALID_COMMAND_NAME")(e) && (e as AgentError).message === "Invalid command: Command name must be of the form <extension>.<name>");
    await assert.rejects(router.submit({ name: "nosuchext.do_it", params: {} }), (e: unknown) => refused("UNKNOWN_EXTENSION")(e) && (e as AgentError).message === "Not found: Extension with id nosuchext not found.");
    await assert.rejects(router.submit({ name: "t.nope", params: {} }), (e: unknown) => refused("UNKNOWN_COMMAND")(e) && (e as AgentError).message === "Invalid command: Unknown command: nope");
    await assert.rejects(router.submit({ name: "t.__proto__", params: {} }), refused("UNKNOWN_COMMAND"));
    assert.equal(router.list().length, 0, "nothing refused is recorded");
  });

  it("turns wrong arguments into a stored FAILED result, not a broken history (IPA's 500 bug)", async () => {
    const { router } = makeRouter();
    const bad = await router.submit({ name: "t.echo", params: { value: "x", bogus: 1 } });
    assert.equal(bad.status, "FAILED");
    assert.equal(bad.toJSON().command_name, "t.echo", "IPA quirk: failed sync keeps the dotted name");
    assert.equal(bad.error?.type, "TypeError");
    assert.match(bad.error?.details ?? "", /unexpected argument\(s\) 'bogus'/);
    const missing = await router.submit({ name: "t.echo", params: {} });
    assert.equal(missing.status, "FAILED");
    // The history still serialises afterwards.
    const listed = JSON.parse(JSON.stringify(router.list().map((r) => r.toJSON()))) as unknown[];
    assert.equal(listed.length, 2);
  });

  it("turns a handler's exception into CommandExecutionError and unserialisable results into a failure", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.boom", params: {} });
    assert.deepEqual(rec.error, { type: "CommandExecutionError", code: 500, message: "Command execution failed", details: "kaboom" });
    const cyc = await router.submit({ name: "t.cyclic", params: {} });
    assert.equal(cyc.status, "FAILED");
    assert.match(cyc.error?.details ?? "", /not JSON-serialisable/);
  });

  it("runs validators before recording anything (IPA's 400 Invalid command parameters)", async () => {
    const { router } = makeRouter();
    await assert.rejects(
      router.submit({ name: "t.validated", params: { image_info: {} } }),
      (e: unknown) => refused("INVALID_PARAMS")(e) && (e as AgentError).message === "Invalid command parameters: Image is missing 'id' field.",
    );
    assert.equal(router.list().length, 0);
  });

  it("holds one hardware command at a time and answers 409 busy meanwhile, even to invalid commands", async () => {
    const { router, hold, seen } = makeRouter();
    const rec = await router.submit({ name: "t.slow", params: {} });
    assert.equal(rec.status, "RUNNING");
    assert.equal(router.busyWith(), rec);
    await assert.rejects(router.submit({ name: "t.echo", params: { value: "x" } }), (e: unknown) => refused("AGENT_BUSY")(e) && (e as AgentError).message === "Agent is busy: executing command slow");
    await assert.rejects(router.submit({ name: "nodot", params: {} }), refused("AGENT_BUSY"));
    assert.equal(seen[0]?.name, "t.slow");
    assert.equal(rec.lastProgress?.percent, 50);
    hold.open();
    await rec.done;
    // The lock is released once the finished event has been delivered.
    await new Promise((r) => setImmediate(r));
    assert.equal(router.busyWith(), undefined);
    assert.equal((await router.submit({ name: "t.echo", params: { value: "x" } })).status, "SUCCEEDED");
  });

  it("lets read-only sync commands run side by side", async () => {
    const { router } = makeRouter();
    const all = await Promise.all(Array.from({ length: 32 }, (_, i) => router.submit({ name: "t.echo", params: { value: String(i) } })));
    assert.ok(all.every((r) => r.status === "SUCCEEDED"));
  });

  it("never runs a command id twice and returns the stored result", async () => {
    const { router, runs } = makeRouter();
    const first = await router.submit({ id: "cmd-1", name: "t.count", params: {} });
    const again = await router.submit({ id: "cmd-1", name: "t.count", params: {} });
    assert.equal(again, first);
    assert.equal(runs(), 1);
  });

  it("refuses a redelivered id whose result has left the bounded history", async () => {
    const { router, runs } = makeRouter({ resultHistory: 2 });
    await router.submit({ id: "a", name: "t.count", params: {} });
    await router.submit({ id: "b", name: "t.count", params: {} });
    await router.submit({ id: "c", name: "t.count", params: {} });
    assert.equal(router.get("a"), undefined, "oldest result dropped");
    assert.deepEqual(router.list().map((r) => r.id), ["b", "c"]);
    await assert.rejects(router.submit({ id: "a", name: "t.count", params: {} }), refused("DUPLICATE_COMMAND"));
    assert.equal(runs(), 3);
  });

  it("keeps running commands in the history however many finish after them, and still bounds it", async () => {
    const { router, hold } = makeRouter({ resultHistory: 3 });
    const running = await router.submit({ name: "t.background", params: {} });
    for (let i = 0; i < 50; i++) await router.submit({ id: `e${i}`, name: "t.echo", params: { value: String(i) } });
    assert.deepEqual(router.list().map((r) => r.id), [running.id, "e48", "e49"]);
    hold.open();
    await running.done;
    for (let i = 50; i < 53; i++) await router.submit({ id: `e${i}`, name: "t.echo", params: { value: String(i) } });
    assert.deepEqual(router.list().map((r) => r.id), ["e50", "e51", "e52"]);
  });

  it("remembers ids beyond the result history, up to idHistory, oldest forgotten first", async () => {
    const { router, runs } = makeRouter({ resultHistory: 2, idHistory: 5 });
    for (let i = 0; i < 8; i++) await router.submit({ id: `i${i}`, name: "t.count", params: {} });
    await assert.rejects(router.submit({ id: "i4", name: "t.count", params: {} }), refused("DUPLICATE_COMMAND"));
    // i0..i2 are forgotten: ids are bounded too (a redelivery that late is no longer recognised).
    assert.equal((await router.submit({ id: "i0", name: "t.count", params: {} })).status, "SUCCEEDED");
    assert.equal(runs(), 9);
  });

  it("fails a command at its deadline and keeps the lock until the handler really stops", async () => {
    const { router, hold } = makeRouter();
    const rec = await router.submit({ name: "t.stubborn", params: {} });
    await rec.done;
    assert.equal(rec.status, "FAILED");
    assert.equal(rec.error?.type, "CommandTimeout");
    assert.equal(router.busyWith(), rec, "handler still running: lock held");
    hold.open();
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(router.busyWith(), undefined);
  });

  it("cancels a running command through its signal", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.polite", params: {} });
    assert.equal(router.cancel(rec.id), true);
    await rec.done;
    assert.equal(rec.error?.type, "CommandCancelled");
    assert.equal(router.cancel("unknown"), false);
  });

  it("cancels the running hardware command with agent.cancel_command, which gets through while busy", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.polite", params: {} });
    await assert.rejects(router.submit({ name: "t.echo", params: { value: "x" } }), refused("AGENT_BUSY"));
    const seen = await router.submit({ name: "agent.get_command", params: { command_id: rec.id } });
    assert.equal((seen.result as { command_status: string }).command_status, "RUNNING");
    const cancel = await router.submit({ name: "agent.cancel_command", params: { command_id: rec.id } });
    assert.deepEqual(cancel.result, { cancelled: true });
    await rec.done;
    assert.equal(rec.error?.type, "CommandCancelled");
    const again = await router.submit({ name: "agent.cancel_command", params: { command_id: rec.id } });
    assert.deepEqual(again.result, { cancelled: false }, "a finished command cannot be cancelled");
    const unknown = await router.submit({ name: "agent.cancel_command", params: { command_id: "nope" } });
    assert.equal(unknown.error?.type, "RequestedObjectNotFoundError");
    // Ironic reads the last listed command as its step's state: control commands are never listed.
    assert.deepEqual(router.list().map((r) => r.shortName), ["polite"]);
    assert.equal(router.get(cancel.id), cancel, "but they can be fetched by id");
  });

  it("refuses destructive commands unless the configuration allows them", async () => {
    const { router } = makeRouter();
    await assert.rejects(router.submit({ name: "t.wipe", params: {} }), refused("DESTRUCTIVE_NOT_ALLOWED"));
    const allowed = makeRouter({ allowDestructive: true }).router;
    assert.equal((await allowed.submit({ name: "t.wipe", params: {}, wait: true })).status, "SUCCEEDED");
  });

  it("refuses expired commands", async () => {
    const { router } = makeRouter({ now: () => 1_000_000 });
    await assert.rejects(router.submit({ name: "t.echo", params: { value: "x" }, expiresAt: 999_999 }), refused("COMMAND_EXPIRED"));
    assert.equal((await router.submit({ name: "t.echo", params: { value: "x" }, expiresAt: 1_000_001 })).status, "SUCCEEDED");
  });

  it("reports a version mismatch as CLEAN_VERSION_MISMATCH", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.mismatch", params: {}, wait: true });
    assert.equal(rec.status, "CLEAN_VERSION_MISMATCH");
    assert.equal(rec.error?.type, "VersionMismatch");
    assert.equal(rec.error?.code, 409);
  });

  it("tells listeners about progress and finished commands; a throwing listener harms nothing", async () => {
    const { router, hold } = makeRouter();
    const events: string[] = [];
    router.on("progress", (_r, p) => events.push(`progress ${p.percent}`));
    router.on("finished", (r) => events.push(`finished ${r.shortName} ${r.status}`));
    router.on("finished", () => {
      throw new Error("listener bug");
    });
    hold.open();
    await router.submit({ name: "t.slow", params: {}, wait: true });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(events, ["progress 50", "finished slow SUCCEEDED"]);
  });

  it("aborts running commands on close and refuses new ones", async () => {
    const { router } = makeRouter();
    const rec = await router.submit({ name: "t.polite", params: {} });
    await router.close();
    assert.equal(rec.error?.type, "ServiceUnavailable");
    await assert.rejects(router.submit({ name: "t.echo", params: { value: "x" } }), refused("SHUTTING_DOWN"));
  });
});
