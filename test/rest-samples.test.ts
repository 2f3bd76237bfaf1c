/**
 * Replays the request/response pairs captured from a real ironic-python-agent 9.4.3
 * (/work/shared/reference/ipa-samples, or $IRONBUS_IPA_SAMPLES) against the real agent with the real
 * REST transport, over real HTTP, and compares status, Content-Type and body.
 *
 * What cannot be equal is compared for format: ids (uuid4), `started_at`, `version`, hrefs (built from
 * our own host:port). Bodies that come from IPA's hardware managers or from this machine (step lists,
 * inventory, logs) are compared for shape only. Where IPA 9.4.3 had a bug we deliberately do not copy,
 * the test asserts our documented behaviour and says so in its name.
 *
 * The last test fails when a sample file is neither in COVERED nor in SHAPE_ONLY, or when a listed
 * file was never replayed.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../core/command.js";
import { AgentError } from "../core/errors.js";
import { pyRepr } from "../router/router.js";
import { execRunner, type CommandRunner } from "../utilities/exec.js";
import { parseTar } from "../utilities/logs/index.js";
import type { HardwareManager } from "../utilities/managers.js";
import { startAgent, TOKEN, type TestAgent } from "./helpers/agent.js";
import { requireSamples } from "./helpers/samples.js";

const SAMPLE_DIR = requireSamples();
/** The host the samples were captured on; replaced by our own in expected hrefs. */
const SAMPLE_ORIGIN = "http://127.0.0.1:19999";
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const RESULT_KEYS = ["command_error", "command_name", "command_result", "command_status", "id"];

/** Samples reproduced value for value (modulo ids, timestamps, our version and our host), or
 * deliberately differing from IPA 9.4.3 with our documented behaviour asserted instead. */
const COVERED = [
  "cmd-async-execute_clean_step-unknown-step-accepted.json",
  "cmd-async-flow-start_flow-accepted.json",
  "cmd-standby-get_partition_uuids-notoken.json",
  "cmd-standby-get_partition_uuids-waitfalse.json",
  "cmd-standby-get_partition_uuids.json",
  "cmd-standby-sync.json",
  "error-agent-busy-409.json",
  "error-async-bad-params-failed.json",
  "error-bad-params-missing-kwarg-failed.json",
  "error-bad-params-unexpected-kwarg-failed.json",
  "error-clean-version-mismatch.json",
  "error-command-name-without-dot-400.json",
  "error-get-unknown-command-id-404.json",
  "error-get-unknown-path-404.json",
  "error-get_partition_uuids-bad-kwarg-failed.json",
  "error-invalid-json-body-400.json",
  "error-missing-params-400.json",
  "error-params-not-object-400.json",
  "error-put-commands-405.json",
  "error-unknown-command-400.json",
  "error-unknown-extension-404.json",
  "error-validator-invalid-params-400.json",
  "error-wrong-token-401.json",
  "get-root.json",
  "get-status-unversioned.json",
  "get-v1-commands-after-typeerror-500.json",
  "get-v1-commands-empty.json",
  "get-v1-commands-flow-id-wait.json",
  "get-v1-commands-id-wait.json",
  "get-v1-commands-id.json",
  "get-v1-commands-noslash-redirect.json",
  "get-v1-commands-populated.json",
  "get-v1-noslash-redirect.json",
  "get-v1-status.json",
  "get-v1.json",
] as const;

/** Samples whose values come from IPA's hardware managers or the capture machine: shape only. */
const SHAPE_ONLY: Readonly<Record<string, string>> = {
  "cmd-clean-get_clean_steps.json": "the step list and hardware_manager_version come from IPA's GenericHardwareManager, not ours",
  "cmd-deploy-get_deploy_steps.json": "the step list and hardware_manager_version come from IPA's GenericHardwareManager, not ours",
  "cmd-log-collect_system_logs.json": "the tarball holds the capture machine's logs",
  "cmd-poll-get_hardware_info-inventory.json": "the inventory describes the capture machine",
  "inventory.json": "not an exchange: the capture machine's inventory, used as the key reference for get_hardware_info",
  "introspection-data-posted.json":
    "not a REST exchange: what IPA posts to the inspection callback; only its inventory maps onto the REST API (poll.get_hardware_info), compared for keys",
};

// ---- samples ------------------------------------------------------------------------------------

const SampleSchema = z.object({
  request: z.object({ method: z.string(), path: z.string(), body: z.unknown() }),
  status: z.number().int(),
  headers: z.record(z.string(), z.string()),
  body: z.unknown(),
});
type Sample = z.infer<typeof SampleSchema>;

const loaded = new Set<string>();

function readJson(file: string): unknown {
  loaded.add(file);
  return JSON.parse(readFileSync(join(SAMPLE_DIR, file), "utf8")) as unknown;
}

function sample(file: string): Sample {
  return SampleSchema.parse(readJson(file));
}

/** The sample's body with its host replaced by ours. */
function withOurHost(value: unknown, url: string): unknown {
  return JSON.parse(JSON.stringify(value).replaceAll(SAMPLE_ORIGIN, url)) as unknown;
}

// ---- narrowing ----------------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function obj(v: unknown, what = "value"): Obj {
  assert.ok(isObj(v), `${what} is not a JSON object: ${JSON.stringify(v)}`);
  return v;
}

function arr(v: unknown, what = "value"): unknown[] {
  assert.ok(Array.isArray(v), `${what} is not a JSON array: ${JSON.stringify(v)}`);
  return v;
}

function str(v: unknown, what = "value"): string {
  assert.equal(typeof v, "string", `${what} is not a string: ${JSON.stringify(v)}`);
  return v as string;
}

function sortedKeys(v: unknown): string[] {
  return Object.keys(obj(v)).sort();
}

// ---- HTTP ---------------------------------------------------------------------------------------

interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  readonly body: unknown;
}

async function http(base: string, method: string, path: string, body?: unknown): Promise<Reply> {
  const init: RequestInit = { method, redirect: "manual" };
  if (body !== undefined && body !== null) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const res = await fetch(`${base}${path}`, init);
  const text = await res.text();
  assert.equal(res.headers.get("content-length"), String(Buffer.byteLength(text)), "Content-Length matches the body");
  const json = (res.headers.get("content-type") ?? "").startsWith("application/json");
  return { status: res.status, headers: res.headers, text, body: json ? (JSON.parse(text) as unknown) : text };
}

/** Sends the sample's request as captured (same method, path, query and body), or with overrides. */
function replay(a: TestAgent, s: Sample, over: { path?: string; body?: unknown } = {}): Promise<Reply> {
  return http(a.url, s.request.method, over.path ?? s.request.path, "body" in over ? over.body : s.request.body);
}

function assertStatusAndType(r: Reply, s: Sample): void {
  assert.equal(r.status, s.status, `status (body: ${r.text.slice(0, 300)})`);
  assert.equal(r.headers.get("content-type"), s.headers["Content-Type"]);
}

/** A result object equal to IPA's but for its id, which must be a fresh uuid4. Returns our id. */
function assertResult(actual: unknown, expected: unknown): string {
  const a = obj(actual, "result");
  const e = obj(expected, "sample result");
  assert.deepEqual(Object.keys(a).sort(), RESULT_KEYS);
  const id = str(a["id"], "id");
  assert.match(id, UUID4);
  assert.deepEqual({ ...a, id: e["id"] }, e);
  return id;
}

/** Replays a sample and compares status, content type and the exact body (modulo result id / host). */
/**
 * Replays a sample whose answer is a result carrying an error: same status and content type, IPA's
 * result keys, a fresh uuid4, IPA's command name, the given status, no result. Returns both errors.
 */
async function replayErrorResult(a: TestAgent, file: string, status: string): Promise<{ err: Record<string, unknown>; ipaErr: Record<string, unknown> }> {
  const s = sample(file);
  const r = await replay(a, s);
  assertStatusAndType(r, s);
  const b = obj(r.body);
  const expected = obj(s.body);
  assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
  assert.match(str(b["id"]), UUID4);
  assert.equal(b["command_name"], expected["command_name"]);
  assert.equal(b["command_status"], status);
  assert.equal(b["command_result"], null);
  return { err: obj(b["command_error"]), ipaErr: obj(expected["command_error"]) };
}

async function assertReplayExact(a: TestAgent, file: string): Promise<Reply> {
  const s = sample(file);
  const r = await replay(a, s);
  assertStatusAndType(r, s);
  if (isObj(s.body) && "command_status" in s.body) assertResult(r.body, s.body);
  else assert.deepEqual(r.body, withOurHost(s.body, a.url));
  return r;
}

// ---- test extensions and managers ---------------------------------------------------------------

interface Gate {
  readonly promise: Promise<void>;
  open(): void;
}

function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

/** `test.block`: holds until the gate opens (or the agent stops). */
function blockExtension(g: Gate): Extension {
  return defineExtension("test", {
    block: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: async (_p, ctx) => {
        await Promise.race([g.promise, untilAborted(ctx.signal)]);
        return null;
      },
    }),
  });
}

/** Stands in for IPA's removed `standby.cache_image`: the same validator message. */
const imageExtension = defineExtension("imagetest", {
  cache_image: defineCommand({
    mode: "async",
    params: z.object({ image_info: z.record(z.string(), z.unknown()) }).strict(),
    validate: (params) => {
      const info = params["image_info"];
      if (!isObj(info) || typeof info["id"] !== "string") throw new AgentError("INVALID_PARAMS", "Image is missing 'id' field.");
    },
    run: () => null,
  }),
});

/** Real tools for the read-only inventory and log collection; `sync`/`blockdev` are recorded, not run. */
function recordingRunner(calls: string[]): CommandRunner {
  return async (cmd, args, opts) => {
    if (cmd === "sync" || cmd === "blockdev") {
      calls.push([cmd, ...args].join(" "));
      return { stdout: "", stderr: "", code: 0 };
    }
    return execRunner(cmd, args, opts);
  };
}

/** A vendor manager with a deploy step carrying argsinfo, so the deploy-step shape is checked on a non-empty list. */
const vendorManager: HardwareManager = {
  name: "conformance_hardware_manager",
  version: "3.0",
  className: "ConformanceHardwareManager",
  evaluateHardwareSupport: () => 2,
  methods: { write_something: { run: () => null } },
  steps: {
    deploy: [
      {
        step: "write_something",
        priority: 0,
        interface: "deploy",
        reboot_requested: false,
        argsinfo: { target: { description: "Where to write.", required: true } },
      },
    ],
    clean: [{ step: "write_something", priority: 5, interface: "deploy", reboot_requested: false, abortable: true }],
  },
};

// ---- shape checks -------------------------------------------------------------------------------

const StepShape = z
  .object({
    step: z.string().min(1),
    priority: z.number().int(),
    interface: z.string().min(1),
    reboot_requested: z.boolean(),
    abortable: z.boolean().optional(),
    argsinfo: z.record(z.string(), z.strictObject({ description: z.string(), required: z.boolean() })).optional(),
  })
  .strict();

/** get_{clean,deploy}_steps result: `{<kind>_steps: {<class>: [step]}, hardware_manager_version: {<name>: <ver>}}`. */
function assertStepsShape(result: unknown, kind: "clean" | "deploy", sampleResult: unknown): void {
  assert.deepEqual(sortedKeys(result), sortedKeys(sampleResult), "same result keys as IPA");
  const r = obj(result);
  const byManager = obj(r[`${kind}_steps`], `${kind}_steps`);
  for (const steps of Object.values(byManager)) {
    for (const step of arr(steps)) StepShape.parse(step);
  }
  // The sample's steps must pass the same check: the shape asserted is IPA's.
  for (const steps of Object.values(obj(obj(sampleResult)[`${kind}_steps`]))) for (const step of arr(steps)) StepShape.parse(step);
  z.record(z.string(), z.string()).parse(r["hardware_manager_version"]);
}

/** Every key IPA's inventory has, ours has too, at every level it has objects of. */
function assertInventoryKeys(ours: unknown, ipa: unknown): void {
  const o = obj(ours, "inventory");
  const i = obj(ipa, "IPA inventory");
  for (const key of Object.keys(i)) assert.ok(key in o, `inventory lacks ${key}`);
  for (const key of ["cpu", "memory", "system_vendor", "boot"]) {
    for (const k of Object.keys(obj(i[key]))) assert.ok(k in obj(o[key], key), `inventory.${key} lacks ${k}`);
  }
  for (const key of ["interfaces", "disks"]) {
    const ipaKeys = Object.keys(obj(arr(i[key])[0]));
    for (const item of arr(o[key], key)) for (const k of ipaKeys) assert.ok(k in obj(item), `inventory.${key}[] lacks ${k}`);
  }
}

// ---- tests --------------------------------------------------------------------------------------

describe("IPA 9.4.3 samples replayed against the real agent over HTTP", () => {
  let a: TestAgent;
  const toolCalls: string[] = [];

  before(async () => {
    a = await startAgent({ run: recordingRunner(toolCalls), extensions: [imageExtension] });
  });
  after(() => a.close());

  describe("discovery and status", () => {
    it("get-root.json: versions document, hrefs on our host", async () => {
      await assertReplayExact(a, "get-root.json");
    });

    it("get-v1.json: v1 document, hrefs on our host", async () => {
      await assertReplayExact(a, "get-v1.json");
    });

    for (const file of ["get-v1-status.json", "get-status-unversioned.json"]) {
      it(`${file}: started_at is an epoch float, version is ours`, async () => {
        const s = sample(file);
        const r = await replay(a, s);
        assertStatusAndType(r, s);
        assert.deepEqual(sortedKeys(r.body), sortedKeys(s.body));
        const b = obj(r.body);
        assert.equal(typeof b["started_at"], "number");
        assert.equal(b["started_at"], a.agent.startedAt);
        assert.ok(Math.abs(Number(b["started_at"]) - Date.now() / 1000) < 600, "started_at is seconds since the epoch, not ms");
        assert.equal(b["version"], a.agent.version);
      });
    }

    for (const file of ["get-v1-noslash-redirect.json", "get-v1-commands-noslash-redirect.json"]) {
      it(`${file}: 308 to the slashed path on our host`, async () => {
        const s = sample(file);
        const r = await replay(a, s);
        assertStatusAndType(r, s);
        assert.equal(r.headers.get("location"), str(s.headers["Location"]).replace(SAMPLE_ORIGIN, a.url));
        assert.equal(r.text, str(s.body).replaceAll(SAMPLE_ORIGIN, a.url));
      });
    }

    it("get-v1-commands-noslash-redirect.json without /v1: /commands is redirected to /commands/, query kept", async () => {
      const r = await http(a.url, "GET", "/commands?wait=true");
      assert.equal(r.status, 308);
      assert.equal(r.headers.get("location"), `${a.url}/commands/?wait=true`);
    });
  });

  describe("faults", () => {
    for (const file of [
      "error-command-name-without-dot-400.json",
      "error-get-unknown-command-id-404.json",
      "error-get-unknown-path-404.json",
      "error-missing-params-400.json",
      "error-params-not-object-400.json",
      "error-put-commands-405.json",
      "error-unknown-command-400.json",
      "error-unknown-extension-404.json",
      "error-wrong-token-401.json",
    ]) {
      it(`${file}: same status and fault`, async () => {
      await assertReplayExact(a, file);
    });
    }

    it("error-invalid-json-body-400.json: IPA's prefix, then the parser's own (non-Python) message", async () => {
      const s = sample("error-invalid-json-body-400.json");
      const r = await replay(a, s);
      assertStatusAndType(r, s);
      const prefix = "400 Bad Request: Failed to decode JSON object: ";
      assert.ok(str(obj(s.body)["faultstring"]).startsWith(prefix));
      assert.deepEqual(sortedKeys(r.body), ["faultcode", "faultstring"]);
      const b = obj(r.body);
      assert.equal(b["faultcode"], "Client");
      const fs = str(b["faultstring"]);
      assert.ok(fs.startsWith(prefix), fs);
      assert.ok(fs.slice(prefix.length).trim().length > 0, "a reason follows the prefix");
    });

    it("error-validator-invalid-params-400.json: same status and fault from a validator (test extension stands in for the removed standby.cache_image)", async () => {
      const s = sample("error-validator-invalid-params-400.json");
      const body = obj(s.request.body);
      assert.equal(body["name"], "standby.cache_image");
      const r = await replay(a, s, { body: { ...body, name: "imagetest.cache_image" } });
      assertStatusAndType(r, s);
      assert.deepEqual(r.body, s.body);
      // Without the stand-in, IPA's own name is an unknown command here (image commands come later).
      const own = await replay(a, s);
      assert.equal(own.status, 400);
      assert.deepEqual(own.body, { faultcode: "Client", faultstring: "Invalid command: Unknown command: cache_image" });
    });

    it("cmd-standby-get_partition_uuids-notoken.json: DIFFERS from IPA 9.4.3 (accepted without token): we answer 401", async () => {
      const s = sample("cmd-standby-get_partition_uuids-notoken.json");
      assert.ok(!s.request.path.includes("agent_token"));
      const before = a.agent.list().length;
      const r = await replay(a, s);
      assert.equal(r.status, 401);
      assert.equal(r.headers.get("content-type"), "application/json");
      assert.deepEqual(r.body, { faultcode: "Client", faultstring: "401 Unauthorized: Token invalid." });
      assert.equal(a.agent.list().length, before, "nothing recorded");
    });
  });

  describe("commands", () => {
    it("cmd-standby-get_partition_uuids.json: same result", async () => {
      await assertReplayExact(a, "cmd-standby-get_partition_uuids.json");
    });

    it("cmd-standby-get_partition_uuids-waitfalse.json: same result (sync commands answer done even without wait)", async () => {
      await assertReplayExact(a, "cmd-standby-get_partition_uuids-waitfalse.json");
    });

    it("cmd-standby-sync.json: same result, and sync really ran", async () => {
      toolCalls.length = 0;
      await assertReplayExact(a, "cmd-standby-sync.json");
      assert.equal(toolCalls[0], "sync");
      assert.ok(toolCalls.slice(1).every((c) => c.startsWith("blockdev --flushbufs /dev/")), toolCalls.join("; "));
    });

    it("error-clean-version-mismatch.json: same status, error type, code and message; details carry our versions and Ironic's", async () => {
      const { err, ipaErr } = await replayErrorResult(a, "error-clean-version-mismatch.json", "CLEAN_VERSION_MISMATCH");
      assert.deepEqual(Object.keys(err).sort(), Object.keys(ipaErr).sort());
      assert.equal(err["type"], ipaErr["type"]);
      assert.equal(err["code"], ipaErr["code"]);
      assert.equal(err["message"], ipaErr["message"]);
      const details = str(err["details"]);
      assert.ok(details.startsWith("Current versions: {'generic_hardware_manager': '"), details);
      assert.ok(details.includes("versions used by ironic: {'generic_hardware_manager': '0.0'}"), details);
      assert.equal(details, `Current versions: ${pyRepr(a.utilities.registry.versions())}, versions used by ironic: {'generic_hardware_manager': '0.0'}`);
    });

    it("error-async-bad-params-failed.json: same status and error type/code/message; details are ours (not Python's TypeError text)", async () => {
      const { err, ipaErr } = await replayErrorResult(a, "error-async-bad-params-failed.json", "FAILED");
      assert.deepEqual({ ...err, details: "" }, { ...ipaErr, details: "" });
      const details = str(err["details"]);
      assert.ok(details.includes("execute_deploy_step()"), details);
      for (const arg of ["step", "node", "ports", "bogus"]) assert.ok(details.includes(`'${arg}'`), `details name ${arg}: ${details}`);
    });

    it("cmd-async-execute_clean_step-unknown-step-accepted.json + get-v1-commands-id.json + get-v1-commands-id-wait.json: RUNNING, then the same FAILED result", async () => {
      const accepted = sample("cmd-async-execute_clean_step-unknown-step-accepted.json");
      const r = await replay(a, accepted);
      assertStatusAndType(r, accepted);
      const id = assertResult(r.body, accepted.body);

      const waitSample = sample("get-v1-commands-id-wait.json");
      const sampleId = str(obj(waitSample.body)["id"]);
      assert.ok(waitSample.request.path.includes(`${sampleId}?wait=true`));
      const waited = await replay(a, waitSample, { path: waitSample.request.path.replace(sampleId, id) });
      assertStatusAndType(waited, waitSample);
      assert.deepEqual(waited.body, { ...obj(waitSample.body), id });

      const idSample = sample("get-v1-commands-id.json");
      const got = await replay(a, idSample, { path: idSample.request.path.replace(sampleId, id) });
      assertStatusAndType(got, idSample);
      assert.deepEqual(got.body, { ...obj(idSample.body), id });
      assert.deepEqual(obj(got.body)["command_error"], {
        type: "HardwareManagerMethodNotFound",
        code: 500,
        message: "No HardwareManager found to handle method",
        details: "Could not find method: no_such_step_conformance",
      });

      // The unversioned route answers the same.
      const unversioned = await http(a.url, "GET", `/commands/${id}`);
      assert.equal(unversioned.status, 200);
      assert.deepEqual(unversioned.body, got.body);
    });

    it("cmd-async-flow-start_flow-accepted.json + get-v1-commands-flow-id-wait.json: RUNNING, then SUCCEEDED with a null result", async () => {
      const accepted = sample("cmd-async-flow-start_flow-accepted.json");
      const r = await replay(a, accepted);
      assertStatusAndType(r, accepted);
      const id = assertResult(r.body, accepted.body);
      const waitSample = sample("get-v1-commands-flow-id-wait.json");
      const sampleId = str(obj(waitSample.body)["id"]);
      const waited = await replay(a, waitSample, { path: waitSample.request.path.replace(sampleId, id) });
      assertStatusAndType(waited, waitSample);
      assert.deepEqual(waited.body, { ...obj(waitSample.body), id });
    });

    describe("IPA 9.4.3's TypeError bug: DIFFERS (IPA answers 500 'Object of type TypeError is not JSON serializable'); ours: 200 FAILED TypeError/400, and GET /v1/commands/ keeps working", () => {
      const ids: string[] = [];
      const answers: unknown[] = [];
      for (const file of [
        "error-bad-params-missing-kwarg-failed.json",
        "error-bad-params-unexpected-kwarg-failed.json",
        "error-get_partition_uuids-bad-kwarg-failed.json",
      ]) {
        it(`${file}: DIFFERS from IPA's 500: 200 with a FAILED result, command_error {type: TypeError, code: 400}`, async () => {
          const s = sample(file);
          assert.equal(s.status, 500);
          assert.deepEqual(s.body, { faultcode: "Server", faultstring: "Object of type TypeError is not JSON serializable" });
          const name = str(obj(s.request.body)["name"]);
          const r = await replay(a, s);
          assert.equal(r.status, 200);
          assert.equal(r.headers.get("content-type"), "application/json");
          const b = obj(r.body);
          assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
          assert.match(str(b["id"]), UUID4);
          // IPA's quirk, kept: a failed sync command keeps its dotted name.
          assert.equal(b["command_name"], name);
          assert.equal(b["command_status"], "FAILED");
          assert.equal(b["command_result"], null);
          const err = obj(b["command_error"]);
          assert.deepEqual(Object.keys(err).sort(), ["code", "details", "message", "type"]);
          assert.equal(err["type"], "TypeError");
          assert.equal(err["code"], 400);
          assert.equal(err["message"], "Invalid command arguments");
          assert.ok(str(err["details"]).startsWith(`${name}() `), str(err["details"]));
          ids.push(str(b["id"]));
          answers.push(r.body);
        });
      }

      it("get-v1-commands-after-typeerror-500.json: DIFFERS from IPA's 500: 200 with every result, the failed ones included", async () => {
        const s = sample("get-v1-commands-after-typeerror-500.json");
        assert.equal(s.status, 500);
        assert.equal(ids.length, 3, "the three TypeError samples ran first");
        const r = await replay(a, s);
        assert.equal(r.status, 200);
        assert.equal(r.headers.get("content-type"), "application/json");
        const commands = arr(obj(r.body)["commands"]);
        for (const [i, id] of ids.entries()) {
          assert.deepEqual(
            commands.find((c) => isObj(c) && c["id"] === id),
            answers[i],
          );
        }
        // And again: nothing stays broken.
        const again = await replay(a, s);
        assert.equal(again.status, 200);
      });
    });
  });

  describe("hardware-dependent samples (shape only: IPA's values describe IPA's managers and the capture machine)", () => {
    it("cmd-clean-get_clean_steps.json (shape only: IPA's GenericHardwareManager steps): keys, step fields, versions", async () => {
      const s = sample("cmd-clean-get_clean_steps.json");
      const r = await replay(a, s);
      assertStatusAndType(r, s);
      const b = obj(r.body);
      const e = obj(s.body);
      assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
      assert.match(str(b["id"]), UUID4);
      assert.deepEqual([b["command_name"], b["command_status"], b["command_error"]], [e["command_name"], e["command_status"], e["command_error"]]);
      assertStepsShape(b["command_result"], "clean", e["command_result"]);
      const result = obj(b["command_result"]);
      assert.ok(arr(obj(result["clean_steps"])["GenericHardwareManager"]).length > 0, "our generic manager offers clean steps");
      assert.deepEqual(result["hardware_manager_version"], a.utilities.registry.versions());
    });

    it("cmd-deploy-get_deploy_steps.json (shape only: IPA's GenericHardwareManager steps): keys, step fields incl. argsinfo, versions", async () => {
      const s = sample("cmd-deploy-get_deploy_steps.json");
      const e = obj(s.body);
      const check = (r: Reply, managers: Record<string, string>): Obj => {
        assertStatusAndType(r, s);
        const b = obj(r.body);
        assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
        assert.deepEqual([b["command_name"], b["command_status"], b["command_error"]], [e["command_name"], e["command_status"], e["command_error"]]);
        assertStepsShape(b["command_result"], "deploy", e["command_result"]);
        const result = obj(b["command_result"]);
        assert.deepEqual(result["hardware_manager_version"], managers);
        return obj(result["deploy_steps"]);
      };
      const ours = check(await replay(a, s), a.utilities.registry.versions());
      assert.ok(Array.isArray(ours["GenericHardwareManager"]));
      // A non-empty list, with argsinfo, from a vendor manager.
      const b = await startAgent({ managers: [vendorManager] });
      try {
        const steps = check(await replay(b, s), { generic_hardware_manager: b.utilities.registry.versions()["generic_hardware_manager"] ?? "", conformance_hardware_manager: "3.0" });
        assert.deepEqual(steps["ConformanceHardwareManager"], vendorManager.steps?.deploy);
      } finally {
        await b.close();
      }
    });

    it("cmd-log-collect_system_logs.json (shape only: the capture machine's logs): system_logs is a base64 gzipped tar", async () => {
      const s = sample("cmd-log-collect_system_logs.json");
      const r = await replay(a, s);
      assertStatusAndType(r, s);
      const b = obj(r.body);
      const e = obj(s.body);
      assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
      assert.deepEqual([b["command_name"], b["command_status"], b["command_error"]], [e["command_name"], e["command_status"], e["command_error"]]);
      assert.deepEqual(sortedKeys(b["command_result"]), sortedKeys(e["command_result"]));
      const logs = str(obj(b["command_result"])["system_logs"]);
      assert.match(logs, /^[A-Za-z0-9+/]+={0,2}$/);
      assert.ok(str(obj(e["command_result"])["system_logs"]).startsWith("H4sI"), "IPA's is gzip too");
      const gz = Buffer.from(logs, "base64");
      assert.deepEqual([...gz.subarray(0, 2)], [0x1f, 0x8b]);
      const members = parseTar(gunzipSync(gz));
      assert.ok(members.length > 0, "the tar has members");
    });

    it("cmd-poll-get_hardware_info-inventory.json + inventory.json + introspection-data-posted.json (shape only: this machine's inventory): IPA's keys are all there", async () => {
      const s = sample("cmd-poll-get_hardware_info-inventory.json");
      const r = await replay(a, s);
      assertStatusAndType(r, s);
      const b = obj(r.body);
      const e = obj(s.body);
      assert.deepEqual(Object.keys(b).sort(), RESULT_KEYS);
      assert.deepEqual([b["command_name"], b["command_status"], b["command_error"]], [e["command_name"], e["command_status"], e["command_error"]]);
      assertInventoryKeys(b["command_result"], e["command_result"]);
      assertInventoryKeys(b["command_result"], readJson("inventory.json"));
      assertInventoryKeys(b["command_result"], obj(obj(readJson("introspection-data-posted.json"))["body"])["inventory"]);
    });
  });

  describe("unversioned routes (every path also exists without /v1)", () => {
    it("/commands/ lists what /v1/commands/ lists; POST /commands/ runs a command", async () => {
      const posted = await http(a.url, "POST", `/commands/?wait=true&agent_token=${TOKEN}`, { name: "standby.get_partition_uuids", params: {} });
      assert.equal(posted.status, 200);
      const id = str(obj(posted.body)["id"]);
      const v1 = await http(a.url, "GET", "/v1/commands/");
      const bare = await http(a.url, "GET", "/commands/");
      assert.equal(bare.status, 200);
      assert.equal(bare.headers.get("content-type"), "application/json");
      assert.deepEqual(bare.body, v1.body);
      const one = await http(a.url, "GET", `/commands/${id}?wait=true`);
      assert.deepEqual(one.body, posted.body);
      const missing = await http(a.url, "GET", "/commands/00000000-0000-0000-0000-000000000000");
      assert.equal(missing.status, 404);
      assert.deepEqual(missing.body, { faultcode: "Client", faultstring: "Not found: Command Result with id 00000000-0000-0000-0000-000000000000 not found." });
    });
  });
});

describe("samples needing an agent of their own", () => {
  it("get-v1-commands-empty.json: a fresh agent has no commands", async (t) => {
    const a = await startAgent();
    t.after(() => a.close());
    await assertReplayExact(a, "get-v1-commands-empty.json");
  });

  it("error-agent-busy-409.json (+ get-v1-commands-flow-id-wait.json): 409 while start_flow runs a blocking step, then SUCCEEDED", async (t) => {
    const g = gate();
    const a = await startAgent({ extensions: [blockExtension(g)] });
    t.after(() => a.close());
    t.after(() => g.open());
    const started = await http(a.url, "POST", `/v1/commands/?agent_token=${TOKEN}`, { name: "flow.start_flow", params: { flow: [{ "test.block": {} }] } });
    assert.equal(started.status, 200);
    const accepted = sample("cmd-async-flow-start_flow-accepted.json");
    const id = assertResult(started.body, accepted.body);

    const busy = await assertReplayExact(a, "error-agent-busy-409.json");
    assert.deepEqual(busy.body, { faultcode: "Client", faultstring: "Agent is busy: executing command start_flow" });
    assert.equal(obj((await http(a.url, "GET", `/v1/commands/${id}`)).body)["command_status"], "RUNNING");

    g.open();
    const waitSample = sample("get-v1-commands-flow-id-wait.json");
    const sampleId = str(obj(waitSample.body)["id"]);
    const done = await replay(a, waitSample, { path: waitSample.request.path.replace(sampleId, id) });
    assertStatusAndType(done, waitSample);
    assert.deepEqual(done.body, { ...obj(waitSample.body), id });
    // Free again.
    await assertReplayExact(a, "cmd-standby-get_partition_uuids.json");
  });

  it("get-v1-commands-populated.json: the same commands, replayed in the captured order, are listed oldest first in IPA's shape (the token-less POST is refused here, so its entry is absent)", async (t) => {
    const a = await startAgent({ run: recordingRunner([]) });
    t.after(() => a.close());
    const populated = sample("get-v1-commands-populated.json");
    const ipaList = arr(obj(populated.body)["commands"]).map((c) => obj(c));

    // Each listed result is the answer of one captured POST: find it by id.
    const byId = new Map<string, string>();
    for (const file of readdirSync(SAMPLE_DIR).filter((f) => f.startsWith("cmd-") || f.startsWith("error-"))) {
      const s = SampleSchema.safeParse(JSON.parse(readFileSync(join(SAMPLE_DIR, file), "utf8")));
      if (s.success && s.data.request.method === "POST" && isObj(s.data.body) && typeof s.data.body["id"] === "string") byId.set(s.data.body["id"], file);
    }
    const expected: Obj[] = [];
    const ourIds: string[] = [];
    for (const ipa of ipaList) {
      const file = byId.get(str(ipa["id"]));
      assert.ok(file !== undefined, `no sample answered ${String(ipa["id"])}`);
      const s = sample(file);
      const r = await replay(a, s);
      if (file === "cmd-standby-get_partition_uuids-notoken.json") {
        assert.equal(r.status, 401);
        continue;
      }
      assert.equal(r.status, 200, `${file}: ${r.text}`);
      const id = str(obj(r.body)["id"]);
      if (obj(r.body)["command_status"] === "RUNNING") await http(a.url, "GET", `/v1/commands/${id}?wait=true`);
      expected.push(ipa);
      ourIds.push(id);
    }
    assert.equal(expected.length, ipaList.length - 1);

    const r = await replay(a, populated);
    assertStatusAndType(r, populated);
    assert.deepEqual(sortedKeys(r.body), ["commands"]);
    const ours = arr(obj(r.body)["commands"]).map((c) => obj(c));
    assert.deepEqual(
      ours.map((c) => c["id"]),
      ourIds,
      "oldest first",
    );
    const HARDWARE = new Set(["get_clean_steps", "get_deploy_steps", "collect_system_logs", "get_hardware_info"]);
    for (const [i, our] of ours.entries()) {
      const ipa = expected[i] ?? {};
      assert.deepEqual(Object.keys(our).sort(), RESULT_KEYS);
      assert.match(str(our["id"]), UUID4);
      assert.equal(our["command_name"], ipa["command_name"]);
      assert.equal(our["command_status"], ipa["command_status"]);
      if (HARDWARE.has(str(ipa["command_name"]))) {
        assert.deepEqual(sortedKeys(our["command_result"]), sortedKeys(ipa["command_result"]), `${String(ipa["command_name"])} result keys`);
      } else {
        assert.deepEqual(our["command_result"], ipa["command_result"]);
      }
      if (ipa["command_error"] === null) {
        assert.equal(our["command_error"], null);
      } else {
        const oe = obj(our["command_error"]);
        const ie = obj(ipa["command_error"]);
        assert.deepEqual([oe["type"], oe["code"], oe["message"]], [ie["type"], ie["code"], ie["message"]]);
        // Details name our versions / our argument checker where IPA's name Python's.
        if (ie["type"] === "HardwareManagerMethodNotFound") assert.equal(oe["details"], ie["details"]);
        else assert.ok(str(oe["details"]).length > 0);
      }
    }
  });
});

describe("token on GET (optional by default for old Ironic; not in the samples, which never send one on GET)", () => {
  it("GET /v1/commands/ without agent_token is allowed, with a wrong one refused, and no latch (IPA latches)", async (t) => {
    const a = await startAgent();
    t.after(() => a.close());
    const posted = await http(a.url, "POST", `/v1/commands/?wait=true&agent_token=${TOKEN}`, { name: "standby.get_partition_uuids", params: {} });
    const id = str(obj(posted.body)["id"]);
    const unauthorized = { faultcode: "Client", faultstring: "401 Unauthorized: Token invalid." };

    // A POST carrying the token does not switch GETs to token-required (old Ironic sends it on POST only).
    assert.equal((await http(a.url, "GET", "/v1/commands/")).status, 200);
    assert.equal((await http(a.url, "GET", `/v1/commands/${id}`)).status, 200);
    assert.equal((await http(a.url, "GET", "/v1/commands/?agent_token=")).status, 200, "an empty token is no token");
    const wrong = await http(a.url, "GET", "/v1/commands/?agent_token=wrong-token");
    assert.equal(wrong.status, 401, "a wrong token is refused even before");
    assert.deepEqual(wrong.body, unauthorized);

    // No latch (IPA latches here and locks an old Ironic out): a GET with the right token changes nothing.
    const valid = await http(a.url, "GET", `/v1/commands/?agent_token=${TOKEN}`);
    assert.equal(valid.status, 200);
    for (const path of ["/v1/commands/", `/v1/commands/${id}`, "/commands/", `/commands/${id}`, "/v1/commands/?agent_token="]) {
      assert.equal((await http(a.url, "GET", path)).status, 200, path);
    }
    const wrongAfter = await http(a.url, "GET", `/v1/commands/${id}?agent_token=wrong-token`);
    assert.equal(wrongAfter.status, 401);
    assert.equal(wrongAfter.headers.get("content-type"), "application/json");
    assert.deepEqual(wrongAfter.body, unauthorized);
    // Status and discovery never need it.
    for (const path of ["/", "/v1/", "/v1/status", "/status"]) assert.equal((await http(a.url, "GET", path)).status, 200, path);
  });

  it("with requireTokenOnGet: true, GET /v1/commands/ needs agent_token from the start (IPA ≥ 12)", async (t) => {
    const a = await startAgent({ requireTokenOnGet: true });
    t.after(() => a.close());
    for (const path of ["/v1/commands/", "/commands/", "/v1/commands/x", "/v1/commands/?agent_token="]) {
      const r = await http(a.url, "GET", path);
      assert.equal(r.status, 401, path);
      assert.deepEqual(r.body, { faultcode: "Client", faultstring: "401 Unauthorized: Token invalid." });
    }
    const ok = await http(a.url, "GET", `/v1/commands/?agent_token=${TOKEN}`);
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { commands: [] });
    assert.equal((await http(a.url, "GET", "/v1/status")).status, 200);
  });
});

describe("sample coverage", () => {
  it("every file in the sample directory is COVERED or SHAPE_ONLY, and every listed file was replayed", () => {
    const files = readdirSync(SAMPLE_DIR)
      .filter((f) => f.endsWith(".json"))
      .sort();
    const listed = [...COVERED, ...Object.keys(SHAPE_ONLY)];
    assert.equal(new Set(listed).size, listed.length, "no file is in both lists");
    assert.deepEqual(
      files.filter((f) => !listed.includes(f)),
      [],
      "sample files not covered by any test",
    );
    assert.deepEqual(
      listed.filter((f) => !files.includes(f)),
      [],
      "listed files that are not in the sample directory",
    );
    assert.deepEqual(
      listed.filter((f) => !loaded.has(f)),
      [],
      "listed files no test replayed (run the whole file)",
    );
  });
});
