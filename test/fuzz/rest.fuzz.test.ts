/**
 * Fuzz: the real REST server. Two entry points: envelopes posted to /ironbus/v1/envelope (the same
 * plug-in shape a bus transport's entry point has), and random HTTP requests (method, path, query,
 * headers, body), some of them raw bytes on a socket. Every request is answered (an envelope, or
 * IPA's fault body) or, for raw garbage, answered or dropped with a logged reason; nothing throws,
 * hangs or leaks a rejection, and the agent still serves afterwards.
 */
import assert from "node:assert/strict";
import { Agent as HttpAgent, request } from "node:http";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope } from "../../core/codec.js";
import { createGuard } from "../../core/trust.js";
import { startAgent, TOKEN, type TestAgent } from "../helpers/agent.js";
import { answerMatches, PEEK, securityExtension, signedCommand, trustFixture } from "../helpers/keys.js";
import { fuzz, fuzzEntryPoint, fuzzExtension, fuzzSettings, LogProbe, NOTHING_RUNNER, wireInputArb, type EntryPoint, type WireInput } from "./fuzz.js";

const NAMES = ["sectest.peek", "sectest.wipe", "fz.echo", "fz.sleep", "fz.hang", "fz.fail", "fz.crash", "fz.reject", "fz.nonjson", "agent.get_command", "agent.cancel_command", "standby.get_partition_uuids", "clean.get_clean_steps", "poll.set_node_info", "nope.nope"];

interface HttpAnswer {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: Buffer;
}

const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: 4 });

/** One HTTP exchange; an event stream counts as answered once its headers are in. */
function exchange(port: number, method: string, path: string, headers: Record<string, string>, body: Uint8Array | undefined): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers, agent: keepAlive }, (res) => {
      const contentType = res.headers["content-type"];
      // The event stream (GET /ironbus/v1/events) never ends: its headers are the answer.
      if (contentType?.startsWith("application/vnd.ironbus.v1.stream+") === true) {
        resolve({ status: res.statusCode ?? 0, contentType, body: Buffer.alloc(0) });
        req.destroy();
        return;
      }
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, contentType, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body === undefined ? undefined : Buffer.from(body));
  });
}

/** Raw bytes on a fresh socket, then end; resolves with what came back (maybe nothing) once it closes. */
function raw(port: number, bytes: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => socket.end(Buffer.from(bytes)));
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("close", () => resolve(Buffer.concat(chunks)));
    socket.on("error", (err: NodeJS.ErrnoException) => (err.code === "ECONNRESET" || err.code === "EPIPE" ? undefined : reject(err)));
  });
}

const STATUSES = new Set([200, 202, 204, 301, 302, 307, 308, 400, 401, 403, 404, 405, 409, 413, 415, 431, 500, 503]);

function checkAnswer(a: HttpAnswer, method: string): void {
  if (!STATUSES.has(a.status)) throw new Error(`unexpected status ${a.status}`);
  if (a.status >= 500) throw new Error(`server error ${a.status}: ${a.body.toString("utf8").slice(0, 200)}`);
  if (method === "HEAD" || a.body.byteLength === 0) return;
  const ct = a.contentType ?? "";
  if (ct.startsWith("application/json")) JSON.parse(a.body.toString("utf8"));
  else if (ct === CONTENT_TYPES.json || ct === CONTENT_TYPES.protobuf) decodeEnvelope(a.body, ct, Number.MAX_SAFE_INTEGER);
}

interface HttpInput {
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: Uint8Array | undefined;
}

function httpInputArb(wire: fc.Arbitrary<WireInput>): fc.Arbitrary<HttpInput> {
  const id = fc.oneof(fc.uuid(), fc.string({ maxLength: 40 }).map((s) => encodeURIComponent(s)), fc.constantFrom("%", "%zz", "..", "a/b", "%2F"));
  const path = fc.oneof(
    { arbitrary: fc.constantFrom("/", "/v1", "/v1/", "/v1/status", "/v1/commands", "/v1/commands/", "/ironbus/v1/envelope", "/ironbus/v1/events", "//", "/v1//commands/", "/V1/commands/"), weight: 6 },
    { arbitrary: id.map((i) => `/v1/commands/${i}`), weight: 2 },
    { arbitrary: fc.string({ maxLength: 40 }).map((s) => `/${encodeURI(s)}`), weight: 1 },
  );
  const query = fc.constantFrom("", `?agent_token=${TOKEN}`, "?agent_token=wrong", `?wait=true&agent_token=${TOKEN}`, `?agent_token=${TOKEN}&agent_token=x`, "?wait=true", "?%zz=1", "?agent_token=");
  const headerName = fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/).filter((h) => !["content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"].includes(h));
  const headerValue = fc.stringMatching(/^[\x20-\x7e]{0,40}$/).map((v) => v.trim());
  const headers = fc.record({
    ct: fc.option(fc.constantFrom("application/json", CONTENT_TYPES.json, CONTENT_TYPES.protobuf, "text/plain", "application/x-protobuf", "multipart/form-data; boundary=x"), { nil: undefined }),
    token: fc.option(fc.constantFrom(TOKEN, "wrong", ""), { nil: undefined }),
    extra: fc.dictionary(headerName, headerValue, { maxKeys: 3 }),
  });
  const commandBody = fc.record({ name: fc.oneof(fc.constantFrom(...NAMES), fc.string({ maxLength: 20 })), params: fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }) }).map((b) => Buffer.from(JSON.stringify(b)));
  const body = fc.oneof(
    { arbitrary: fc.constant(undefined), weight: 2 },
    { arbitrary: wire.map((w) => w.bytes), weight: 3 },
    { arbitrary: commandBody, weight: 3 },
    { arbitrary: fc.uint8Array({ maxLength: 256 }), weight: 1 },
  );
  return fc.record({ method: fc.constantFrom("GET", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "FOO"), path, query, headers, body }).map((r) => {
    const h: Record<string, string> = { ...r.headers.extra };
    if (r.headers.ct !== undefined) h["content-type"] = r.headers.ct;
    if (r.headers.token !== undefined) h["x-ironbus-token"] = r.headers.token;
    return { method: r.method, path: `${r.path}${r.query}`, headers: h, body: r.method === "GET" || r.method === "HEAD" ? undefined : r.body };
  });
}

const RAW_SAMPLES = ["GET / HTTP/1.1\r\nHost: x\r\n\r\n", `POST /ironbus/v1/envelope?agent_token=${TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: ${CONTENT_TYPES.json}\r\nContent-Length: 5\r\n\r\n{"v":`, "GET /v1/commands/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", `GET /${"a".repeat(20_000)} HTTP/1.1\r\n\r\n`];

function rawInputArb(): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.tuple(fc.constantFrom(...RAW_SAMPLES), fc.array(fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), { maxLength: 4 }), fc.double({ min: 0, max: 1, noNaN: true })).map(([text, flips, cut]) => {
      const bytes = Uint8Array.from(Buffer.from(text));
      for (const f of flips) {
        const bit = Math.floor(f * bytes.byteLength * 8);
        bytes[bit >> 3] = (bytes[bit >> 3] as number) ^ (1 << (bit & 7));
      }
      return cut < 0.3 ? bytes.slice(0, Math.floor((cut / 0.3) * bytes.byteLength)) : bytes;
    }),
  );
}

describe("fuzz: the REST server", () => {
  const fixture = trustFixture();
  const probe = new LogProbe("debug");
  let a: TestAgent;
  let port: number;

  before(async () => {
    a = await startAgent({
      config: { ...fixture.config, allowDestructive: false, requireSignatures: false, commandTimeoutMs: 20, maxMessageBytes: 128 * 1024 },
      extensions: [securityExtension().extension, fuzzExtension()],
      run: NOTHING_RUNNER,
      log: probe.log,
      guard: (config, log) => createGuard(config, log),
    });
    port = a.rest.address().port;
  });
  after(async () => {
    keepAlive.destroy();
    await a.close();
  });

  const settings = fuzzSettings("rest");
  const wire = wireInputArb({ names: NAMES, signers: [fixture.prov.signer, fixture.mon.signer, fixture.stranger.signer], tokens: [TOKEN], plausible: 0.3, trustedSigners: 2, hugeChars: 200_000 });

  it("POST /ironbus/v1/envelope: every input gets an envelope, a fault or 204", async (t) => {
    const entry: EntryPoint = async (bytes, contentType) => {
      const headers: Record<string, string> = { "x-ironbus-token": TOKEN };
      if (contentType !== undefined && /^[\x20-\x7e]*$/.test(contentType)) headers["content-type"] = contentType;
      const answer = await exchange(port, "POST", "/ironbus/v1/envelope", headers, bytes);
      checkAnswer(answer, "POST");
      if (answer.status === 200 && answer.contentType !== CONTENT_TYPES.json && answer.contentType !== CONTENT_TYPES.protobuf) throw new Error(`200 with ${answer.contentType}`);
    };
    await fuzzEntryPoint({ t, name: "REST envelope", settings: { ...settings, runs: Math.ceil(settings.runs / 2) }, input: wire, entry, shrink: false });
  });

  it("random HTTP requests and raw bytes: answered, or dropped with a logged reason", async (t) => {
    const http = httpInputArb(wire);
    const input = fc.oneof(
      { arbitrary: http.map((h) => ({ kind: "http" as const, h })), weight: 9 },
      { arbitrary: rawInputArb().map((bytes) => ({ kind: "raw" as const, bytes })), weight: 1 },
    );
    type Input = { kind: "http"; h: HttpInput } | { kind: "raw"; bytes: Uint8Array };
    const run = async (x: Input): Promise<void> => {
      if (x.kind === "http") {
        checkAnswer(await exchange(port, x.h.method, x.h.path, x.h.headers, x.h.body), x.h.method);
        return;
      }
      const mark = probe.mark();
      const back = await raw(port, x.bytes);
      if (back.byteLength > 0) {
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(back.toString("latin1"))?.[1]);
        if (!STATUSES.has(status) || status >= 500) throw new Error(`raw answer ${back.toString("latin1").slice(0, 80)}`);
        return;
      }
      // Dropped: the server must say why (malformed request, client gone) in its log. Blank lines
      // alone are no request at all (HTTP lets a client send them before one), so nothing to say.
      await new Promise((r) => setImmediate(r));
      const blank = x.bytes.every((b) => b === 0x0d || b === 0x0a);
      if (!blank && probe.since(mark).length === 0) throw new Error("a raw request was dropped without a log line");
    };
    const describeInput = (x: Input): string => (x.kind === "http" ? `${x.h.method} ${x.h.path.slice(0, 80)} ${JSON.stringify(x.h.headers).slice(0, 120)}, body ${x.h.body?.byteLength ?? 0} bytes` : `raw ${JSON.stringify(Buffer.from(x.bytes).toString("latin1").slice(0, 120))}`);
    await fuzz<Input>({ t, name: "REST http", settings: { ...settings, runs: Math.floor(settings.runs / 2) }, input, run, describe: describeInput, shrink: false });
  });

  it("still serves afterwards", async () => {
    const env = signedCommand(fixture.prov, PEEK, {}, Date.now());
    const answer = await exchange(port, "POST", "/ironbus/v1/envelope", { "x-ironbus-token": TOKEN, "content-type": CONTENT_TYPES.protobuf }, encodeEnvelope(env, "protobuf"));
    assert.equal(answer.status, 200);
    assert.ok(answerMatches(decodeEnvelope(answer.body, answer.contentType), "accepted"));
  });
});
