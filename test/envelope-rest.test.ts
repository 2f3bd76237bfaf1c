/**
 * POST /ironbus/v1/envelope over real HTTP, in both encodings: command envelopes get a `result`
 * envelope in the encoding they came in, refusals get an `error` envelope (`{type, code, message,
 * details}`), ids are idempotency keys, the token is required, and the agent keeps serving after
 * every refusal.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope, type WireFormat } from "../core/codec.js";
import { defineCommand, defineExtension } from "../core/command.js";
import type { Envelope, EnvelopeOf, JsonObject } from "../core/envelope.js";
import { startAgent, TOKEN, type TestAgent } from "./helpers/agent.js";
import { gate, type Gate } from "./helpers/gate.js";

const PATH = "/ironbus/v1/envelope";
const FORMATS: readonly WireFormat[] = ["json", "protobuf"];
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;


interface Reply {
  readonly status: number;
  readonly contentType: string | null;
  readonly bytes: Uint8Array;
}

type Auth = "query" | "header" | "none" | { query?: string; header?: string };

async function send(a: TestAgent, bytes: Uint8Array | string, contentType: string | undefined, auth: Auth = "query"): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (contentType !== undefined) headers["Content-Type"] = contentType;
  let query = "";
  if (auth === "query") query = `?agent_token=${TOKEN}`;
  else if (auth === "header") headers["X-Ironbus-Token"] = TOKEN;
  else if (auth !== "none") {
    if (auth.query !== undefined) query = `?agent_token=${encodeURIComponent(auth.query)}`;
    if (auth.header !== undefined) headers["X-Ironbus-Token"] = auth.header;
  }
  const res = await fetch(`${a.url}${PATH}${query}`, { method: "POST", headers, body: typeof bytes === "string" ? bytes : Buffer.from(bytes), redirect: "manual" });
  return { status: res.status, contentType: res.headers.get("content-type"), bytes: new Uint8Array(await res.arrayBuffer()) };
}

function command(name: string, params: JsonObject, extra: { id?: string; wait?: boolean; expires_at?: number } = {}): EnvelopeOf<"command"> {
  const env: EnvelopeOf<"command"> = { v: 1, id: extra.id ?? randomUUID(), kind: "command", body: { name, params } };
  if (extra.wait !== undefined) env.body.wait = extra.wait;
  if (extra.expires_at !== undefined) env.expires_at = extra.expires_at;
  return env;
}

async function exchange(a: TestAgent, env: Envelope, format: WireFormat, auth: Auth = "query"): Promise<Envelope> {
  const r = await send(a, encodeEnvelope(env, format), CONTENT_TYPES[format], auth);
  assert.equal(r.status, 200, Buffer.from(r.bytes).toString("utf8").slice(0, 300));
  assert.equal(r.contentType, CONTENT_TYPES[format], "answered in the encoding it came in");
  return decodeEnvelope(r.bytes, r.contentType ?? undefined);
}

function asResult(env: Envelope): EnvelopeOf<"result"> {
  assert.equal(env.kind, "result", `result envelope expected, got ${JSON.stringify(env)}`);
  return env as EnvelopeOf<"result">;
}

function asError(env: Envelope): EnvelopeOf<"error"> {
  assert.equal(env.kind, "error", `error envelope expected, got ${JSON.stringify(env)}`);
  return env as EnvelopeOf<"error">;
}

/** An error envelope: fresh id, body exactly {type, code, message, details} with these values. */
function assertError(env: Envelope, expected: { type: string; code: number; message: string; details?: string | RegExp }, correlationId?: string): EnvelopeOf<"error"> {
  const e = asError(env);
  assert.match(e.id, UUID4);
  assert.deepEqual(Object.keys(e.body).sort(), ["code", "details", "message", "type"]);
  assert.equal(e.body.type, expected.type);
  assert.equal(e.body.code, expected.code);
  assert.equal(e.body.message, expected.message);
  if (expected.details instanceof RegExp) assert.match(e.body.details, expected.details);
  else if (expected.details !== undefined) assert.equal(e.body.details, expected.details);
  else assert.ok(e.body.details.length > 0, "details say what was wrong");
  assert.equal(e.correlation_id, correlationId);
  return e;
}

function assertFault(r: Reply, status: number, faultstring: string): void {
  assert.equal(r.status, status);
  assert.equal(r.contentType, "application/json");
  assert.deepEqual(JSON.parse(Buffer.from(r.bytes).toString("utf8")), { faultcode: status >= 500 ? "Server" : "Client", faultstring });
}

describe("POST /ironbus/v1/envelope", () => {
  let a: TestAgent;
  let runs = 0;
  let current = gate();

  before(async () => {
    const ext = defineExtension("test", {
      count: defineCommand({
        mode: "sync",
        params: z.object({}).strict(),
        run: () => {
          runs += 1;
          return { runs };
        },
      }),
      block: defineCommand({
        mode: "async",
        params: z.object({}).strict(),
        run: async (_p, ctx) => {
          const g = current;
          g.enter();
          await Promise.race([
            g.promise,
            new Promise<never>((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true })),
          ]);
          return { released: true };
        },
      }),
    });
    a = await startAgent({ config: { maxMessageBytes: 4096 }, extensions: [ext] });
  });
  after(async () => {
    current.open();
    await a.close();
  });

  /** A fresh command in each encoding still gets its result: the agent is serving. */
  async function assertServing(): Promise<void> {
    for (const format of FORMATS) {
      const env = command("standby.get_partition_uuids", {}, { wait: true });
      const res = asResult(await exchange(a, env, format));
      assert.equal(res.body.command_status, "SUCCEEDED");
    }
  }

  for (const format of FORMATS) {
    describe(`${format} (${CONTENT_TYPES[format]})`, () => {
      it("a command envelope gets a result envelope: correlation_id and body.id are the command id", async () => {
        const env = command("standby.get_partition_uuids", {}, { wait: true });
        const res = asResult(await exchange(a, env, format));
        assert.match(res.id, UUID4);
        assert.notEqual(res.id, env.id, "the answer is a message of its own");
        assert.equal(res.correlation_id, env.id);
        assert.deepEqual(res.body, { id: env.id, command_name: "get_partition_uuids", command_status: "SUCCEEDED", command_error: null, command_result: {} });
        // The same record on the IPA routes.
        const got = await fetch(`${a.url}/v1/commands/${env.id}?agent_token=${TOKEN}`);
        assert.deepEqual(await got.json(), res.body);
      });

      it("an async command without wait answers RUNNING; its result is then on GET /v1/commands/<id>?wait=true", async () => {
        const g = gate();
        current = g;
        const env = command("test.block", {});
        const res = asResult(await exchange(a, env, format));
        assert.deepEqual(res.body, { id: env.id, command_name: "block", command_status: "RUNNING", command_error: null, command_result: null });
        await g.entered;
        g.open();
        const got = await fetch(`${a.url}/v1/commands/${env.id}?wait=true&agent_token=${TOKEN}`);
        assert.deepEqual(await got.json(), { id: env.id, command_name: "block", command_status: "SUCCEEDED", command_error: null, command_result: { released: true } });
      });

      it("a command failure is a result envelope with IPA's command_error, not an error envelope", async () => {
        const env = command("standby.sync", { bogus: 1 }, { wait: true });
        const res = asResult(await exchange(a, env, format));
        assert.equal(res.correlation_id, env.id);
        assert.equal(res.body.command_status, "FAILED");
        assert.equal(res.body.command_error?.type, "TypeError");
        assert.equal(res.body.command_error?.code, 400);
      });

      it("the same id twice: the same result, and the command runs once", async () => {
        const env = command("test.count", {}, { wait: true });
        const before = runs;
        const first = asResult(await exchange(a, env, format));
        const second = asResult(await exchange(a, env, format));
        assert.equal(runs, before + 1, "ran once");
        assert.equal(first.body.id, env.id);
        assert.equal(second.body.id, env.id);
        assert.deepEqual(second.body, first.body);
        assert.deepEqual(first.body.command_result, { runs: before + 1 });
        assert.equal(second.correlation_id, env.id);
        // Redelivered in the other encoding, too.
        const other = FORMATS.find((f) => f !== format) ?? "json";
        assert.deepEqual(asResult(await exchange(a, env, other)).body, first.body);
        assert.equal(runs, before + 1);
      });

      it("a malformed envelope gets an error envelope (InvalidContentError/400), then the agent keeps serving", async () => {
        const garbage: (string | Uint8Array)[] =
          format === "json"
            ? ["{not json", "", "[]", JSON.stringify({ v: 1, id: "x", kind: "command" }), JSON.stringify({ ...command("standby.sync", {}), extra: 1 })]
            : [Uint8Array.from([0x0a, 0xff, 0x01]), Uint8Array.from([0xff, 0xff, 0xff, 0xff]), Uint8Array.from([0x08, 0x01, 0x12, 0x01, 0x78])];
        // Well-formed bytes of a version-2 envelope.
        const v1 = encodeEnvelope(command("standby.get_partition_uuids", {}), format);
        if (format === "json") garbage.push(Buffer.from(Buffer.from(v1).toString("utf8").replace('"v":1', '"v":2')));
        else {
          assert.deepEqual([v1[0], v1[1]], [0x08, 0x01], "v is the first field");
          const v2 = Uint8Array.from(v1);
          v2[1] = 0x02;
          garbage.push(v2);
        }
        for (const bytes of garbage) {
          const r = await send(a, bytes, CONTENT_TYPES[format]);
          assert.equal(r.status, 200);
          assert.equal(r.contentType, CONTENT_TYPES[format]);
          assertError(decodeEnvelope(r.bytes, CONTENT_TYPES[format]), { type: "InvalidContentError", code: 400, message: "Invalid envelope" });
        }
        await assertServing();
      });

      it("a non-command envelope gets an error envelope (InvalidContentError/400) correlated to it", async () => {
        const heartbeat: Envelope = { v: 1, id: randomUUID(), kind: "heartbeat", body: { seq: 1, status: "idle", uptime_s: 1, version: "0.1.0" } };
        const err = await exchange(a, heartbeat, format);
        assertError(err, { type: "InvalidContentError", code: 400, message: "Invalid envelope", details: "the agent accepts command envelopes and join answers, not heartbeat" }, heartbeat.id);
        const result: Envelope = {
          v: 1,
          id: randomUUID(),
          kind: "result",
          body: { id: "c", command_name: "x", command_status: "SUCCEEDED", command_error: null, command_result: null },
        };
        assertError(await exchange(a, result, format), { type: "InvalidContentError", code: 400, message: "Invalid envelope", details: "the agent accepts command envelopes and join answers, not result" }, result.id);
        await assertServing();
      });

      it("a command while the agent is busy gets an error envelope (AgentIsBusy/409); afterwards it runs", async () => {
        const g = gate();
        current = g;
        const blocking = command("test.block", {});
        assert.equal(asResult(await exchange(a, blocking, format)).body.command_status, "RUNNING");
        await g.entered;
        const refused = command("standby.get_partition_uuids", {}, { wait: true });
        assertError(await exchange(a, refused, format), { type: "AgentIsBusy", code: 409, message: "Agent is busy", details: "executing command block" }, refused.id);
        // Invalid commands are refused as busy too, as on IPA's route.
        const bogus = command("nosuchext.x", {}, { wait: true });
        assertError(await exchange(a, bogus, format), { type: "AgentIsBusy", code: 409, message: "Agent is busy", details: "executing command block" }, bogus.id);
        const missing = await fetch(`${a.url}/v1/commands/${refused.id}?agent_token=${TOKEN}`);
        assert.equal(missing.status, 404, "a refused command is not recorded");
        g.open();
        await fetch(`${a.url}/v1/commands/${blocking.id}?wait=true&agent_token=${TOKEN}`);
        // The refused id was never recorded: sending it again runs it.
        assert.equal(asResult(await exchange(a, refused, format)).body.command_status, "SUCCEEDED");
      });

      it("an expired command (expires_at in the past) gets an error envelope (CommandExpired/410) and never runs", async () => {
        const before = runs;
        const env = command("test.count", {}, { wait: true, expires_at: Date.now() - 60_000 });
        assertError(await exchange(a, env, format), { type: "CommandExpired", code: 410, message: "Command expired before it could run", details: /^command expired at \d{4}-/ }, env.id);
        assert.equal(runs, before);
        const missing = await fetch(`${a.url}/v1/commands/${env.id}?agent_token=${TOKEN}`);
        assert.equal(missing.status, 404);
        // Not expired yet: runs.
        const fresh = command("test.count", {}, { wait: true, expires_at: Date.now() + 60_000 });
        assert.equal(asResult(await exchange(a, fresh, format)).body.command_status, "SUCCEEDED");
        assert.equal(runs, before + 1);
      });

      it("an unknown command or extension gets an error envelope with IPA's type and status", async () => {
        const unknown = command("standby.nope", {}, { wait: true });
        assertError(await exchange(a, unknown, format), { type: "InvalidCommandError", code: 400, message: "Invalid command", details: "Unknown command: nope" }, unknown.id);
        const ext = command("nosuchext.x", {}, { wait: true });
        assertError(await exchange(a, ext, format), { type: "RequestedObjectNotFoundError", code: 404, message: "Not found", details: "Extension with id nosuchext not found." }, ext.id);
      });

      it("the token is required: query agent_token or header X-Ironbus-Token; otherwise 401", async () => {
        const bytes = (): Uint8Array => encodeEnvelope(command("test.count", {}, { wait: true }), format);
        const before = runs;
        for (const auth of ["none", { header: "wrong" }, { header: "" }, { query: "wrong" }, { query: "" }] as const) {
          assertFault(await send(a, bytes(), CONTENT_TYPES[format], auth), 401, "401 Unauthorized: Token invalid.");
        }
        assert.equal(runs, before, "nothing ran");
        for (const auth of ["query", "header"] as const) {
          const r = await send(a, bytes(), CONTENT_TYPES[format], auth);
          assert.equal(r.status, 200);
          assert.equal(asResult(decodeEnvelope(r.bytes, CONTENT_TYPES[format])).body.command_status, "SUCCEEDED");
        }
        assert.equal(runs, before + 2);
      });
    });
  }

  describe("content types and sizes", () => {
    it("an unsupported content type gets a JSON error envelope (UnsupportedMediaType/415)", async () => {
      const json = encodeEnvelope(command("test.count", {}, { wait: true }), "json");
      const before = runs;
      for (const ct of ["text/plain", "application/xml", undefined]) {
        const r = await send(a, json, ct);
        assert.equal(r.status, 200);
        assert.equal(r.contentType, CONTENT_TYPES.json);
        assertError(decodeEnvelope(r.bytes, r.contentType ?? undefined), { type: "UnsupportedMediaType", code: 415, message: "415 Unsupported Media Type" });
      }
      assert.equal(runs, before);
      await assertServing();
    });

    it("application/json is accepted as the JSON envelope encoding (answered as application/vnd.ironbus.v1+json)", async () => {
      const env = command("standby.get_partition_uuids", {}, { wait: true });
      const r = await send(a, encodeEnvelope(env, "json"), "application/json; charset=utf-8");
      assert.equal(r.status, 200);
      assert.equal(r.contentType, CONTENT_TYPES.json);
      assert.equal(asResult(decodeEnvelope(r.bytes, CONTENT_TYPES.json)).correlation_id, env.id);
    });

    it("an oversized envelope is refused, nothing runs, and the agent keeps serving", async () => {
      for (const format of FORMATS) {
        const before = runs;
        const env = command("test.count", { pad: "x".repeat(8192) }, { wait: true });
        const r = await send(a, encodeEnvelope(env, format), CONTENT_TYPES[format]);
        assert.ok(r.status === 413 || r.status === 200, `status ${r.status}`);
        assert.equal(runs, before);
      }
      await assertServing();
    });

    it(
      "an oversized envelope gets an error envelope (RequestEntityTooLarge/413) in its own encoding",
      async () => {
        for (const format of FORMATS) {
          const env = command("test.count", { pad: "x".repeat(8192) }, { wait: true });
          const r = await send(a, encodeEnvelope(env, format), CONTENT_TYPES[format]);
          assert.equal(r.contentType, CONTENT_TYPES[format]);
          assertError(decodeEnvelope(r.bytes, CONTENT_TYPES[format]), { type: "RequestEntityTooLarge", code: 413, message: "413 Request Entity Too Large" });
        }
      },
    );

    it("GET on the envelope endpoint is 405", async () => {
      const r = await fetch(`${a.url}${PATH}?agent_token=${TOKEN}`);
      assert.equal(r.status, 405);
      assert.deepEqual(await r.json(), { faultcode: "Client", faultstring: "405 Method Not Allowed: The method is not allowed for the requested URL." });
    });
  });
});
