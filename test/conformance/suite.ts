/**
 * The transport conformance suite: the same tests, unchanged, for every transport (REST, WebSocket,
 * MQTT, NATS), in both encodings. Each test file under test/conformance/ gives it a Harness.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { CONTENT_TYPES, encodeEnvelope, type WireFormat } from "../../core/codec.js";
import type { CommandErrorBody, EnvelopeOf, JsonObject, ProgressBody } from "../../core/envelope.js";
import type { ControllerEvent } from "../../controller/controller.js";
import { gate } from "../helpers/gate.js";
import { until, type Harness, type Rig } from "./rig.js";

const DEADLINE = 10_000;

function nextError(rig: Rig, match: (e: CommandErrorBody, correlationId: string | undefined) => boolean): Promise<{ error: CommandErrorBody; correlationId: string | undefined }> {
  return new Promise((resolve) => {
    const off = rig.controller.on((ev: ControllerEvent) => {
      if (ev.type === "error" && ev.node === rig.node && match(ev.error, ev.correlationId)) {
        off();
        resolve({ error: ev.error, correlationId: ev.correlationId });
      }
    });
  });
}

function rawCommand(rig: Rig, name: string, params: JsonObject, extra: { token?: string; expires_at?: number } = {}): EnvelopeOf<"command"> {
  const env: EnvelopeOf<"command"> = { v: 1, id: randomUUID(), kind: "command", node: rig.node, issued_at: Date.now(), body: { name, params } };
  const token = extra.token ?? rig.controller.tokenFor(rig.node);
  if (token !== undefined) env.token = token;
  if (extra.expires_at !== undefined) env.expires_at = extra.expires_at;
  return env;
}

export function conformance(harness: Harness): void {
  for (const format of ["json", "protobuf"] as const satisfies readonly WireFormat[]) {
    describe(`${harness.name} conformance (${format})`, () => {
      let rig: Rig;
      before(async () => {
        rig = await harness.start({ format, config: { maxMessageBytes: 64 * 1024 } });
      });
      after(async () => {
        await rig?.close();
      });

      it("announces the node: hello with the agent's version, then heartbeats", async () => {
        await until(() => rig.controller.node(rig.node)?.heartbeat !== undefined, DEADLINE, "a heartbeat");
        const view = rig.controller.node(rig.node);
        assert.equal(view?.hello?.version, rig.agent.version);
        assert.equal(view?.state, "alive");
      });

      it("answers a sync command with its result", async () => {
        const result = await rig.controller.run(rig.node, "conf.echo", { value: { a: [1, "two", null] } }, { deadlineMs: DEADLINE });
        assert.equal(result.command_status, "SUCCEEDED");
        assert.deepEqual(result.command_result, { echoed: { a: [1, "two", null] } });
      });

      it("answers an async command RUNNING at once, then sends progress and the final result", async () => {
        const firstId = randomUUID();
        const finished = new Promise<string>((resolve) => {
          const off = rig.controller.on((ev) => {
            if (ev.type === "result" && ev.result.id === firstId && ev.result.command_status !== "RUNNING") {
              off();
              resolve(ev.result.command_status);
            }
          });
        });
        const first = await rig.controller.command({ node: rig.node }, "conf.work", { steps: 3, ms: 20 }, { wait: false, deadlineMs: DEADLINE, id: firstId });
        const a = first.answers.get(rig.node);
        assert.equal(a?.kind, "result");
        assert.equal(a?.kind === "result" ? a.result.command_status : undefined, "RUNNING");
        assert.equal(await finished, "SUCCEEDED", "the final result follows on its own");

        const progress: ProgressBody[] = [];
        const done = await rig.controller.command({ node: rig.node }, "conf.work", { steps: 3, ms: 30 }, { deadlineMs: DEADLINE, onProgress: (_n, p) => progress.push(p) });
        const final = done.answers.get(rig.node);
        assert.equal(final?.kind === "result" ? final.result.command_status : final?.kind, "SUCCEEDED");
        assert.deepEqual(final?.kind === "result" ? final.result.command_result : undefined, { steps: 3 });
        assert.ok(progress.length >= 1, "at least one progress message");
        assert.ok(progress.every((p) => p.command_id === done.id && p.command_name === "conf.work"));
        assert.deepEqual(done.silent, []);
      });

      it("reports a failing command as FAILED with its error", async () => {
        const result = await rig.controller.run(rig.node, "conf.fail", {}, { deadlineMs: DEADLINE });
        assert.equal(result.command_status, "FAILED");
        assert.equal(result.command_error?.type, "CommandExecutionError");
        assert.match(result.command_error?.details ?? "", /failing on purpose/);
      });

      it("answers an unknown command with a structured error correlated to it", async () => {
        const answer = await rig.controller.command({ node: rig.node }, "nosuch.command", {}, { deadlineMs: DEADLINE });
        const a = answer.answers.get(rig.node);
        assert.equal(a?.kind, "error");
        assert.equal(a?.kind === "error" ? a.error.type : undefined, "RequestedObjectNotFoundError");
        assert.equal(a?.kind === "error" ? a.error.code : undefined, 404);
      });

      it("answers bad parameters with an error naming the parameter, never a crash", async () => {
        const answer = await rig.controller.command({ node: rig.node }, "conf.work", { steps: "many" }, { deadlineMs: DEADLINE });
        const a = answer.answers.get(rig.node);
        assert.ok(a !== undefined, "answered");
        const error = a.kind === "error" ? a.error : a.result.command_error;
        assert.ok(error !== null && ["InvalidCommandParamsError", "TypeError", "CommandExecutionError"].includes(error.type), `got ${JSON.stringify(error)}`);
        assert.match(error.details, /steps/);
      });

      it("answers a malformed envelope with a structured error, and keeps working", async () => {
        const errored = nextError(rig, (e) => e.type === "InvalidContentError");
        const garbage = format === "json" ? Buffer.from('{"v":1,"id":"x","kind":"command","body":') : Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12]);
        await rig.controller.sendRaw({ node: rig.node }, garbage, CONTENT_TYPES[format]);
        const { error } = await errored;
        assert.equal(error.code, 400);
        const result = await rig.controller.run(rig.node, "conf.echo", { value: 1 }, { deadlineMs: DEADLINE });
        assert.equal(result.command_status, "SUCCEEDED");
      });

      it("refuses an oversized envelope with MESSAGE_TOO_LARGE", async () => {
        const errored = nextError(rig, (e) => e.code === 413);
        const big = rawCommand(rig, "conf.echo", { value: "x".repeat(80 * 1024) });
        await rig.controller.sendRaw({ node: rig.node }, encodeEnvelope(big, format), CONTENT_TYPES[format]);
        const { error } = await errored;
        assert.equal(error.type, "RequestEntityTooLarge");
      });

      it("runs a redelivered command id once and answers both deliveries with the same result", async () => {
        const id = randomUUID();
        const tag = randomUUID();
        const one = await rig.controller.run(rig.node, "conf.count", { tag }, { deadlineMs: DEADLINE, id });
        const two = await rig.controller.run(rig.node, "conf.count", { tag }, { deadlineMs: DEADLINE, id });
        assert.deepEqual(one.command_result, { tag, runs: 1 });
        assert.deepEqual(two.command_result, { tag, runs: 1 });
        assert.equal(rig.state.runs.get(tag), 1);
      });

      it("refuses a destructive command when the configuration does not allow it", async () => {
        const answer = await rig.controller.command({ node: rig.node }, "conf.wipe", {}, { deadlineMs: DEADLINE });
        const a = answer.answers.get(rig.node);
        assert.equal(a?.kind === "error" ? a.error.type : a?.kind, "DestructiveCommandRefused");
      });

      it("refuses a command carrying a wrong token", async () => {
        const env = rawCommand(rig, "conf.echo", { value: 1 }, { token: "wrong-token-wrong-token" });
        const errored = nextError(rig, (_e, c) => c === env.id);
        await rig.controller.sendRaw({ node: rig.node }, encodeEnvelope(env, format), CONTENT_TYPES[format]);
        const { error } = await errored;
        assert.equal(error.type, "Unauthorized");
        assert.equal(error.code, 401);
      });

      it("refuses a command past its expiry", async () => {
        const env = rawCommand(rig, "conf.echo", { value: 1 }, { expires_at: Date.now() - 1000 });
        const errored = nextError(rig, (_e, c) => c === env.id);
        await rig.controller.sendRaw({ node: rig.node }, encodeEnvelope(env, format), CONTENT_TYPES[format]);
        const { error } = await errored;
        assert.equal(error.type, "CommandExpired");
      });

      it(harness.queuesWhileBusy ? "queues a command that arrives while the lock is held, and runs it after" : "refuses a command that arrives while the lock is held (AGENT_BUSY, as IPA)", async () => {
        rig.state.hold = gate();
        const tagA = randomUUID();
        const tagB = randomUUID();
        const holdId = randomUUID();
        const holding = rig.controller.command({ node: rig.node }, "conf.hold", { tag: tagA }, { deadlineMs: DEADLINE, id: holdId });
        await rig.state.hold.entered;
        const second = rig.controller.command({ node: rig.node }, "conf.hold", { tag: tagB }, { deadlineMs: DEADLINE });
        // Commands made to run meanwhile still do.
        const peek = await rig.controller.run(rig.node, "agent.get_command", { command_id: holdId }, { deadlineMs: DEADLINE });
        assert.equal(peek.command_status, "SUCCEEDED");
        if (harness.queuesWhileBusy) {
          const firstGate = rig.state.hold;
          firstGate.open();
          // B takes the lock after A: hold it open too.
          await until(() => rig.state.runs.get(tagA) === 1, DEADLINE, "A to finish");
          rig.state.hold.open();
          const [a, b] = await Promise.all([holding, second]);
          assert.equal(a.answers.get(rig.node)?.kind === "result" ? "ok" : "no", "ok");
          const bAnswer = b.answers.get(rig.node);
          assert.equal(bAnswer?.kind === "result" ? bAnswer.result.command_status : bAnswer?.kind, "SUCCEEDED");
          assert.equal(rig.state.runs.get(tagB), 1);
        } else {
          const b = await second;
          const bAnswer = b.answers.get(rig.node);
          assert.equal(bAnswer?.kind === "error" ? bAnswer.error.type : bAnswer?.kind, "AgentIsBusy");
          rig.state.hold.open();
          await holding;
        }
      });

      it("cancels a running command from another command while it holds the lock", async () => {
        rig.state.hold = gate();
        const running = rig.controller.command({ node: rig.node }, "conf.hold", { tag: randomUUID() }, { deadlineMs: DEADLINE });
        await rig.state.hold.entered;
        const id = [...rig.agent.list()].find((h) => !h.finished)?.id;
        assert.ok(id !== undefined);
        const cancel = await rig.controller.run(rig.node, "agent.cancel_command", { command_id: id }, { deadlineMs: DEADLINE });
        assert.deepEqual(cancel.command_result, { cancelled: true });
        // The handler ignores its signal; let it return so the lock is released.
        rig.state.hold.open();
        const done = await running;
        const a = done.answers.get(rig.node);
        assert.equal(a?.kind === "result" ? a.result.command_error?.type : a?.kind, "CommandCancelled");
      });
    });
  }
}
