/**
 * The REST transport's failure paths, over real HTTP against the real agent: every refusal answers
 * IPA's fault JSON `{faultcode, faultstring}` with the right status, and nothing a client does (bad
 * bodies, lies about sizes, broken HTTP, hanging up) stops the agent from answering the next request.
 */
import assert from "node:assert/strict";
import type { Server } from "node:http";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../core/command.js";
import { AgentError } from "../core/errors.js";
import { startAgent, TOKEN, type TestAgent } from "./helpers/agent.js";
import { gate, type Gate } from "./helpers/gate.js";

const LIMIT = 2048;
const Q = `agent_token=${TOKEN}`;
const NOT_ALLOWED = "405 Method Not Allowed: The method is not allowed for the requested URL.";
const NOT_FOUND =
  "404 Not Found: The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";
const BAD_BODY = "400 Bad Request: Missing or invalid name or params";
const UNAUTHORIZED = "401 Unauthorized: Token invalid.";

// ---- helpers ------------------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function obj(v: unknown, what = "value"): Obj {
  assert.ok(typeof v === "object" && v !== null && !Array.isArray(v), `${what} is not a JSON object: ${JSON.stringify(v)}`);
  return v as Obj;
}

function str(v: unknown, what = "value"): string {
  assert.equal(typeof v, "string", `${what} is not a string: ${JSON.stringify(v)}`);
  return v as string;
}

interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
}

function json(r: Reply): unknown {
  assert.equal(r.headers.get("content-type"), "application/json", `JSON answer expected: ${r.text.slice(0, 200)}`);
  return JSON.parse(r.text) as unknown;
}

async function http(base: string, method: string, path: string, body?: string): Promise<Reply> {
  const init: RequestInit = { method, redirect: "manual" };
  if (body !== undefined) {
    init.body = body;
    init.headers = { "Content-Type": "application/json" };
  }
  const res = await fetch(`${base}${path}`, init);
  return { status: res.status, headers: res.headers, text: await res.text() };
}

function post(a: TestAgent, body: unknown, query = `wait=true&${Q}`): Promise<Reply> {
  return http(a.url, "POST", `/v1/commands/?${query}`, typeof body === "string" ? body : JSON.stringify(body));
}

/** IPA's fault: exactly {faultcode, faultstring}, Server for ≥ 500. `faultstring` exact, or a prefix. */
function assertFault(r: Reply, status: number, faultstring: string | { prefix: string }): string {
  assert.equal(r.status, status, `status (body: ${r.text.slice(0, 300)})`);
  const body = obj(json(r), "fault");
  assert.deepEqual(Object.keys(body).sort(), ["faultcode", "faultstring"]);
  assert.equal(body["faultcode"], status >= 500 ? "Server" : "Client");
  const fs = str(body["faultstring"]);
  if (typeof faultstring === "string") assert.equal(fs, faultstring);
  else {
    assert.ok(fs.startsWith(faultstring.prefix), fs);
    assert.ok(fs.length > faultstring.prefix.length, "a reason follows the prefix");
  }
  return fs;
}

async function assertServing(a: TestAgent): Promise<void> {
  const status = await http(a.url, "GET", "/v1/status");
  assert.equal(status.status, 200);
  assert.equal(obj(json(status))["version"], a.agent.version);
  const r = await post(a, { name: "standby.get_partition_uuids", params: {} });
  assert.equal(r.status, 200, r.text);
  assert.equal(obj(json(r))["command_status"], "SUCCEEDED");
}

interface RawReply {
  readonly statusLine: string;
  readonly headers: Map<string, string>;
  readonly body: string;
  /** The connection closed before the whole answer had arrived. */
  readonly closed: boolean;
}

/**
 * Writes raw bytes on a plain TCP socket and reads the first HTTP response (or what came before the
 * server closed the connection). `end` half-closes after writing.
 */
function raw(port: number, chunks: readonly (string | Buffer)[], opts: { end?: boolean } = {}): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      const text = buf.toString("latin1");
      const head = text.indexOf("\r\n\r\n");
      if (head < 0) {
        if (closed) {
          done = true;
          reject(new Error(`connection closed without a complete response: ${JSON.stringify(text)}`));
        }
        return;
      }
      const [statusLine = "", ...lines] = text.slice(0, head).split("\r\n");
      const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
      const length = Number(headers.get("content-length") ?? "0");
      const body = buf.subarray(Buffer.byteLength(text.slice(0, head + 4), "latin1"));
      if (body.length < length && !closed) return;
      done = true;
      socket.destroy();
      resolve({ statusLine, headers, body: body.subarray(0, length).toString("utf8"), closed });
    };
    socket.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      finish(false);
    });
    socket.on("error", () => finish(true));
    socket.on("close", () => finish(true));
    socket.on("connect", () => {
      for (const c of chunks) socket.write(c);
      if (opts.end === true) socket.end();
    });
  });
}

function portOf(a: TestAgent): number {
  return a.rest.address().port;
}

/** The transport's node server; 'request' listeners run after the transport's own handler has started. */
function serverOf(a: TestAgent): Server {
  const server = a.rest["server"];
  assert.ok(server !== undefined, "REST transport is listening");
  return server;
}

/** Resolves once the server has parsed a request's head and its handler has run up to its first await. */
function nextRequest(a: TestAgent): Promise<void> {
  return new Promise((resolve) => serverOf(a).once("request", () => resolve()));
}


function testExtension(gates: () => Gate): Extension {
  return defineExtension("test", {
    block: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: async (_p, ctx) => {
        const g = gates();
        g.enter();
        await Promise.race([
          g.promise,
          new Promise<never>((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true })),
        ]);
        return "released";
      },
    }),
    validated: defineCommand({
      mode: "sync",
      params: z.object({ image_info: z.record(z.string(), z.unknown()) }).strict(),
      validate: (p) => {
        const info = p["image_info"];
        if (typeof info !== "object" || info === null || Array.isArray(info) || typeof info["id"] !== "string") {
          throw new AgentError("INVALID_PARAMS", "Image is missing 'id' field.");
        }
      },
      run: () => null,
    }),
  });
}

// ---- tests --------------------------------------------------------------------------------------

describe("REST failure paths", () => {
  let a: TestAgent;
  let current = gate();

  before(async () => {
    a = await startAgent({ config: { maxMessageBytes: LIMIT }, extensions: [testExtension(() => current)] });
  });
  after(async () => {
    current.open();
    await a.close();
  });

  /** Starts test.block (async, holds the hardware lock); returns its id. */
  async function startBlocking(): Promise<{ id: string; g: Gate }> {
    const g = gate();
    current = g;
    const r = await post(a, { name: "test.block", params: {} }, Q);
    assert.equal(r.status, 200, r.text);
    const body = obj(json(r));
    assert.equal(body["command_status"], "RUNNING");
    await g.entered;
    return { id: str(body["id"]), g };
  }

  async function release(id: string, g: Gate): Promise<void> {
    g.open();
    const r = await http(a.url, "GET", `/v1/commands/${id}?wait=true&${Q}`);
    assert.equal(obj(json(r))["command_status"], "SUCCEEDED");
  }

  describe("bad bodies: 400", () => {
    it("malformed JSON: IPA's prefix and the parser's reason", async () => {
      for (const body of ["{not json", "", "{\"name\": \"standby.sync\", \"params\": {}", "\u0000"]) {
        assertFault(await post(a, body), 400, { prefix: "400 Bad Request: Failed to decode JSON object: " });
      }
    });

    it("body not an object: array, string, number, null", async () => {
      for (const body of ["[]", '"standby.sync"', "42", "null", "true"]) assertFault(await post(a, body), 400, BAD_BODY);
    });

    it("params missing, array, string, null, number", async () => {
      assertFault(await post(a, { name: "standby.sync" }), 400, BAD_BODY);
      for (const params of [[], "x", null, 1]) assertFault(await post(a, { name: "standby.sync", params }), 400, BAD_BODY);
    });

    it("name missing or not a string", async () => {
      assertFault(await post(a, { params: {} }), 400, BAD_BODY);
      for (const name of [42, null, ["standby.sync"], { x: 1 }, true]) assertFault(await post(a, { name, params: {} }), 400, BAD_BODY);
    });

    it("nothing of the above is recorded", async () => {
      const r = await http(a.url, "GET", `/v1/commands/?${Q}`);
      const before = (obj(json(r))["commands"] as unknown[]).length;
      await post(a, "{not json");
      await post(a, { name: "standby.sync", params: [] });
      const again = await http(a.url, "GET", `/v1/commands/?${Q}`);
      assert.equal((obj(json(again))["commands"] as unknown[]).length, before);
    });
  });

  describe("oversized bodies: 413, connection closed, agent still serving", () => {
    const big = JSON.stringify({ name: "standby.get_partition_uuids", params: { pad: "x".repeat(10 * 1024) } });

    it("10 KB body with an honest Content-Length", async () => {
      const r = await post(a, big);
      assertFault(r, 413, { prefix: "413 Request Entity Too Large: " });
      assert.match(str(obj(json(r))["faultstring"]), new RegExp(`\\b${LIMIT}\\b`), "names the limit");
      await assertServing(a);
    });

    it("10 KB body sent chunked (no Content-Length)", async () => {
      const head = `POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`;
      const body = `${Buffer.byteLength(big).toString(16)}\r\n${big}\r\n0\r\n\r\n`;
      const r = await raw(portOf(a), [head, body]);
      assert.match(r.statusLine, /^HTTP\/1\.1 413 /);
      assert.equal(r.headers.get("content-type"), "application/json");
      assert.equal(r.headers.get("connection"), "close");
      assert.deepEqual(JSON.parse(r.body), { faultcode: "Client", faultstring: `413 Request Entity Too Large: body exceeds the limit of ${LIMIT} bytes` });
      await assertServing(a);
    });

    it("chunked body streamed in pieces past the limit: refused while it is still arriving", async () => {
      const piece = "x".repeat(1000);
      const head = `POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n`;
      const chunks = Array.from({ length: 4 }, () => `${piece.length.toString(16)}\r\n${piece}\r\n`);
      // No terminating chunk: the server must answer without waiting for the end.
      const r = await raw(portOf(a), [head, ...chunks]);
      assert.match(r.statusLine, /^HTTP\/1\.1 413 /);
      assert.equal(JSON.parse(r.body).faultcode, "Client");
      await assertServing(a);
    });

    it("lying Content-Length, larger than the limit, with a small body: 413 from the header alone", async () => {
      const r = await raw(portOf(a), [`POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10240\r\n\r\n{}`]);
      assert.match(r.statusLine, /^HTTP\/1\.1 413 /);
      assert.equal(r.headers.get("connection"), "close");
      assert.deepEqual(JSON.parse(r.body), {
        faultcode: "Client",
        faultstring: `413 Request Entity Too Large: body of 10240 bytes exceeds the limit of ${LIMIT}`,
      });
      await assertServing(a);
    });

    it("lying Content-Length, smaller than the 10 KB sent: the excess is not HTTP, 400 and close; nothing runs", async () => {
      const before = a.agent.list().length;
      const r = await raw(portOf(a), [`POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n${big}`]);
      assert.match(r.statusLine, /^HTTP\/1\.1 400 /);
      assert.equal(r.headers.get("connection"), "close");
      assert.equal(a.agent.list().length, before);
      await assertServing(a);
    });
  });

  describe("token: 401", () => {
    it("wrong, empty, missing, or only nearly right", async () => {
      for (const query of ["agent_token=wrong-token", "agent_token=", "", `agent_token=${TOKEN}x`, `agent_token=${TOKEN.slice(0, -1)}`, `AGENT_TOKEN=${TOKEN}`]) {
        assertFault(await post(a, { name: "standby.get_partition_uuids", params: {} }, `wait=true&${query}`), 401, UNAUTHORIZED);
      }
    });

    it("token is checked before the body is looked at", async () => {
      assertFault(await post(a, "{not json", "agent_token=wrong"), 401, UNAUTHORIZED);
    });
  });

  describe("unknown commands and bad params", () => {
    it("unknown command in a known extension: 400", async () => {
      assertFault(await post(a, { name: "standby.no_such_command", params: {} }), 400, "Invalid command: Unknown command: no_such_command");
      // Object.prototype members are not commands.
      assertFault(await post(a, { name: "standby.constructor", params: {} }), 400, "Invalid command: Unknown command: constructor");
      assertFault(await post(a, { name: "standby.", params: {} }), 400, "Invalid command: Unknown command: ");
    });

    it("unknown extension: 404", async () => {
      assertFault(await post(a, { name: "nosuchext.do_it", params: {} }), 404, "Not found: Extension with id nosuchext not found.");
      assertFault(await post(a, { name: "__proto__.x", params: {} }), 404, "Not found: Extension with id __proto__ not found.");
    });

    it("name without a dot: 400", async () => {
      assertFault(await post(a, { name: "nodot", params: {} }), 400, "Invalid command: Command name must be of the form <extension>.<name>");
      assertFault(await post(a, { name: "", params: {} }), 400, "Invalid command: Command name must be of the form <extension>.<name>");
    });

    it("params refused by the command's validator: 400, nothing recorded", async () => {
      const before = a.agent.list().length;
      assertFault(await post(a, { name: "test.validated", params: { image_info: {} } }), 400, "Invalid command parameters: Image is missing 'id' field.");
      assert.equal(a.agent.list().length, before);
      const ok = await post(a, { name: "test.validated", params: { image_info: { id: "img" } } });
      assert.equal(obj(json(ok))["command_status"], "SUCCEEDED");
    });

    it("wrong arguments: 200 with a FAILED result (TypeError/400 sync, CommandExecutionError/500 async), never a 500", async () => {
      const sync = obj(json(await post(a, { name: "standby.sync", params: { bogus: 1 } })));
      assert.equal(sync["command_status"], "FAILED");
      assert.equal(sync["command_name"], "standby.sync");
      assert.deepEqual({ ...obj(sync["command_error"]), details: "" }, { type: "TypeError", code: 400, message: "Invalid command arguments", details: "" });

      const asyncR = await post(a, { name: "clean.execute_clean_step", params: { nope: true } });
      assert.equal(asyncR.status, 200);
      const async_ = obj(json(asyncR));
      assert.equal(async_["command_status"], "FAILED");
      assert.equal(async_["command_name"], "execute_clean_step");
      assert.deepEqual({ ...obj(async_["command_error"]), details: "" }, { type: "CommandExecutionError", code: 500, message: "Command execution failed", details: "" });

      const list = await http(a.url, "GET", `/v1/commands/?${Q}`);
      assert.equal(list.status, 200);
      const ids = (obj(json(list))["commands"] as unknown[]).map((c) => obj(c)["id"]);
      assert.ok(ids.includes(sync["id"]) && ids.includes(async_["id"]));
    });
  });

  describe("busy agent: 409 for every POST while a hardware command runs", () => {
    it("valid and invalid POSTs alike get 409; GETs still answer; the token is still checked first", async () => {
      const { id, g } = await startBlocking();
      try {
        const busy = "Agent is busy: executing command block";
        const bodies: string[] = [
          JSON.stringify({ name: "standby.get_partition_uuids", params: {} }),
          JSON.stringify({ name: "test.block", params: {} }),
          "{not json",
          "[]",
          JSON.stringify({ name: "standby.sync" }),
          JSON.stringify({ name: "nodot", params: {} }),
          JSON.stringify({ name: "nosuchext.x", params: {} }),
          JSON.stringify({ name: "standby.nope", params: {} }),
          JSON.stringify({ name: "test.validated", params: { image_info: {} } }),
          JSON.stringify({ name: "agent.no_such_control", params: {} }),
        ];
        for (const body of bodies) assertFault(await post(a, body), 409, busy);
        assertFault(await post(a, "{}", "wait=false&" + Q), 409, busy);
        assertFault(await http(a.url, "POST", `/commands/?${Q}`, "{}"), 409, busy);
        assertFault(await post(a, "{}", "agent_token=wrong"), 401, UNAUTHORIZED);

        assert.equal((await http(a.url, "GET", "/v1/status")).status, 200);
        assert.equal(obj(json(await http(a.url, "GET", `/v1/commands/${id}?${Q}`)))["command_status"], "RUNNING");
        assert.equal((await http(a.url, "GET", `/v1/commands/?${Q}`)).status, 200);

        // The one exception: the agent's own control commands, made to run meanwhile.
        const control = await post(a, { name: "agent.get_command", params: { command_id: id } });
        assert.equal(control.status, 200, control.text);
        assert.equal(obj(obj(json(control))["command_result"])["command_status"], "RUNNING");
      } finally {
        await release(id, g);
      }
      await assertServing(a);
    });

    it(
      "an oversized POST while busy gets 409 like any other POST (IPA answers 409 before reading the body)",
      async () => {
        const { id, g } = await startBlocking();
        try {
          assertFault(await post(a, "x".repeat(10 * 1024)), 409, "Agent is busy: executing command block");
        } finally {
          await release(id, g);
        }
      },
    );
  });

  describe("routing", () => {
    const ROUTES = ["/", "/v1/", "/v1/status", "/status", "/v1/commands/", "/commands/", "/v1/commands/ID", "/commands/ID", "/ironbus/v1/envelope"];

    it("405 for PUT, DELETE and PATCH on every route", async () => {
      for (const route of ROUTES) {
        for (const method of ["PUT", "DELETE", "PATCH"]) {
          const r = await http(a.url, method, `${route}?${Q}`, "{}");
          assertFault(r, 405, NOT_ALLOWED);
        }
      }
    });

    it("405 for POST on the GET-only routes, and GET on the envelope endpoint", async () => {
      for (const route of ["/", "/v1/", "/v1/status", "/status", "/v1/commands/ID", "/commands/ID"]) {
        assertFault(await http(a.url, "POST", `${route}?${Q}`, "{}"), 405, NOT_ALLOWED);
      }
      assertFault(await http(a.url, "GET", `/ironbus/v1/envelope?${Q}`), 405, NOT_ALLOWED);
    });

    it("the slash-less paths redirect every method with 308 (method kept); the target then answers 405", async () => {
      for (const [from, to] of [
        ["/v1", "/v1/"],
        ["/v1/commands", "/v1/commands/"],
        ["/commands", "/commands/"],
      ] as const) {
        const r = await http(a.url, "PUT", from, "{}");
        assert.equal(r.status, 308, from);
        assert.equal(r.headers.get("location"), `${a.url}${to}`);
        assertFault(await http(a.url, "PUT", to, "{}"), 405, NOT_ALLOWED);
      }
    });

    it("404 for unknown paths", async () => {
      for (const path of ["/v2/nothing", "/v1/nothing", "/nothing", "/v1/commands/a/b", "/v1/status/", "/ironbus/v1/envelope/x", "/ironbus/v2/envelope", "/v1/v1/status"]) {
        assertFault(await http(a.url, "GET", path), 404, NOT_FOUND);
      }
    });

    it("GET an unknown command id: 404", async () => {
      for (const id of ["00000000-0000-0000-0000-000000000000", "nope", "constructor", "%20"]) {
        const shown = decodeURIComponent(id);
        assertFault(await http(a.url, "GET", `/v1/commands/${id}?${Q}`), 404, `Not found: Command Result with id ${shown} not found.`);
      }
    });

    it(
      "a malformed percent-escape in a command id answers a 4xx fault, not 500",
      async () => {
        const r = await http(a.url, "GET", `/v1/commands/%E0%A4%A?${Q}`);
        assert.ok(r.status >= 400 && r.status < 500, `status ${r.status}`);
        assert.equal(obj(json(r))["faultcode"], "Client");
      },
    );

    it(
      "a request target that is not a valid URL (GET //[) answers a 4xx fault, not 500",
      async () => {
        const r = await raw(portOf(a), ["GET //[ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]);
        assert.match(r.statusLine, /^HTTP\/1\.1 4\d\d /);
      },
    );

    it("whatever the two malformed targets above answer, the agent keeps serving", async () => {
      await http(a.url, "GET", `/v1/commands/%E0%A4%A?${Q}`);
      await raw(portOf(a), ["GET //[ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]);
      await assertServing(a);
    });
  });

  describe("broken clients", () => {
    it("a malformed HTTP request on a raw socket gets 400, and the server keeps serving", async () => {
      for (const junk of ["GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET /v1/status HTTP/1.1\r\nBad Header Line\r\n\r\n", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]) {
        const r = await raw(portOf(a), [junk]);
        assert.match(r.statusLine, /^HTTP\/1\.1 400 /, JSON.stringify(junk));
        assert.equal(r.headers.get("connection"), "close");
      }
      const bad = await raw(portOf(a), ["POST /v1/commands/ HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}"]);
      assert.match(bad.statusLine, /^HTTP\/1\.1 400 /);
      await assertServing(a);
    });

    it("a client that hangs up mid-body: nothing recorded, nothing held, next requests answered", async () => {
      const before = a.agent.list().length;
      const reached = nextRequest(a);
      const socket = connect(portOf(a), "127.0.0.1");
      socket.on("error", () => undefined);
      socket.write(`POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"name": "stand`);
      await reached;
      const closed = new Promise((r) => socket.once("close", r));
      socket.destroy();
      await closed;
      await assertServing(a);
      assert.equal(a.agent.list().length, before + 1, "only assertServing's command was recorded");
    });

    it("a client that hangs up during POST ?wait=true: the command still finishes, the lock is released", async () => {
      const g = gate();
      current = g;
      const socket = connect(portOf(a), "127.0.0.1");
      socket.on("error", () => undefined);
      const body = JSON.stringify({ id: "hangup-post-wait", name: "test.block", params: {} });
      socket.write(`POST /v1/commands/?wait=true&${Q} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      await g.entered;
      socket.destroy();
      g.open();
      const r = await http(a.url, "GET", `/v1/commands/hangup-post-wait?wait=true&${Q}`);
      assert.deepEqual(obj(json(r)), {
        id: "hangup-post-wait",
        command_name: "block",
        command_status: "SUCCEEDED",
        command_error: null,
        command_result: { result: "block: released" },
      });
      await assertServing(a);
    });

    it("a client that hangs up while waiting on GET /v1/commands/<id>?wait=true does not break later requests", async () => {
      const { id, g } = await startBlocking();
      const reached = nextRequest(a);
      const socket = connect(portOf(a), "127.0.0.1");
      socket.on("error", () => undefined);
      socket.write(`GET /v1/commands/${id}?wait=true&${Q} HTTP/1.1\r\nHost: t\r\n\r\n`);
      await reached; // the handler is now awaiting the command
      const closed = new Promise((r) => socket.once("close", r));
      socket.destroy();
      await closed;
      await release(id, g);
      await assertServing(a);
    });

    it("200 concurrent GET /v1/status all succeed", async () => {
      const replies = await Promise.all(Array.from({ length: 200 }, () => http(a.url, "GET", "/v1/status")));
      for (const r of replies) {
        assert.equal(r.status, 200);
        assert.deepEqual(obj(json(r)), { started_at: a.agent.startedAt, version: a.agent.version });
      }
    });
  });
});

describe("an agent without a token", () => {
  it("standalone with no token configured: commands run without one", async (t) => {
    const a = await startAgent({ config: { agentToken: undefined } });
    t.after(() => a.close());
    assert.equal(a.agent.token(), undefined);
    const r = await http(a.url, "POST", "/v1/commands/?wait=true", JSON.stringify({ name: "standby.get_partition_uuids", params: {} }));
    assert.equal(r.status, 200);
  });

  it("not standalone and no token yet (before lookup): every commands request is refused", async (t) => {
    const a = await startAgent({ config: { agentToken: undefined, standalone: false } });
    t.after(() => a.close());
    assertFault(await http(a.url, "POST", "/v1/commands/?wait=true", JSON.stringify({ name: "standby.get_partition_uuids", params: {} })), 401, UNAUTHORIZED);
    assertFault(await http(a.url, "POST", `/v1/commands/?wait=true&${Q}`, JSON.stringify({ name: "standby.get_partition_uuids", params: {} })), 401, UNAUTHORIZED);
    assertFault(await http(a.url, "GET", "/v1/commands/"), 401, UNAUTHORIZED);
    assert.equal((await http(a.url, "GET", "/v1/status")).status, 200);
  });
});
