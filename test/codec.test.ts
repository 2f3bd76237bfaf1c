import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CONTENT_TYPES, decodeEnvelope, encodeEnvelope, formatOf } from "../core/codec.js";
import type { Envelope } from "../core/envelope.js";
import { AgentError } from "../core/errors.js";

const samples: Envelope[] = [
  {
    v: 1,
    id: "c1",
    kind: "command",
    node: "node-1",
    reply_to: "ironbus/v1/ctl/replies",
    issued_at: 1_795_311_316_456,
    expires_at: 1_795_311_376_456,
    sig: { key_id: "prov-1", alg: "ed25519", value: Buffer.from("sig-bytes").toString("base64") },
    body: { name: "clean.get_clean_steps", params: { node: { uuid: "u", nested: [1, "x", null, { a: true }] }, ports: [] }, wait: true, timeout_ms: 5000 },
  },
  {
    v: 1,
    id: "r1",
    kind: "result",
    correlation_id: "c1",
    body: { id: "c1", command_name: "get_clean_steps", command_status: "SUCCEEDED", command_error: null, command_result: { clean_steps: {} } },
  },
  {
    v: 1,
    id: "r2",
    kind: "result",
    body: {
      id: "c2",
      command_name: "execute_clean_step",
      command_status: "FAILED",
      command_error: { type: "HardwareManagerMethodNotFound", code: 500, message: "No HardwareManager found to handle method", details: "Could not find method: x" },
      command_result: null,
    },
  },
  { v: 1, id: "p1", kind: "progress", body: { command_id: "c3", command_name: "standby.prepare_image", percent: 42.5, bytes_done: 1024, bytes_total: 4096, rate_bps: 1e6, stage: "write" } },
  { v: 1, id: "h1", kind: "heartbeat", node: "n", body: { seq: 7, status: "busy", current_command: "erase_devices", uptime_s: 12.5, version: "0.1.0" } },
  { v: 1, id: "j1", kind: "hello", body: { version: "0.1.0", macs: ["52:54:00:12:34:56"], hostname: "h", summary: { cpus: 2 }, transports: ["mqtt"] } },
  { v: 1, id: "e1", kind: "error", correlation_id: "c9", body: { type: "AgentIsBusy", code: 409, message: "Agent is busy", details: "executing command x" } },
  { v: 1, id: "ev1", kind: "event", body: { name: "node.joined", data: [1, { two: 2 }] } },
];

describe("codec", () => {
  for (const format of ["json", "protobuf"] as const) {
    for (const env of samples) {
      it(`round-trips a ${env.kind} envelope as ${format}`, () => {
        const bytes = encodeEnvelope(env, format);
        assert.deepEqual(decodeEnvelope(bytes, CONTENT_TYPES[format]), env);
      });
    }
  }

  it("maps content types to formats, ignoring parameters and case", () => {
    assert.equal(formatOf("Application/JSON; charset=utf-8"), "json");
    assert.equal(formatOf(CONTENT_TYPES.protobuf), "protobuf");
    assert.equal(formatOf("application/x-protobuf"), "protobuf");
    assert.equal(formatOf("text/plain"), undefined);
    assert.equal(formatOf(undefined), undefined);
  });

  const rejects = (bytes: Uint8Array, ct: string | undefined, code: string, max?: number): void => {
    assert.throws(
      () => decodeEnvelope(bytes, ct, max),
      (err: unknown) => err instanceof AgentError && err.code === code,
    );
  };

  it("refuses malformed JSON, wrong shapes and unknown kinds", () => {
    rejects(Buffer.from("{not json"), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from("[]"), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from(JSON.stringify({ v: 1, id: "x", kind: "teleport", body: {} })), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from(JSON.stringify({ v: 2, id: "x", kind: "command", body: { name: "a.b", params: {} } })), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from(JSON.stringify({ v: 1, id: "", kind: "command", body: { name: "a.b", params: {} } })), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from(JSON.stringify({ v: 1, id: "x", kind: "command", body: { name: "a.b", params: [] } })), "application/json", "INVALID_ENVELOPE");
    rejects(Buffer.from(JSON.stringify({ v: 1, id: "x", kind: "command", extra: 1, body: { name: "a.b", params: {} } })), "application/json", "INVALID_ENVELOPE");
  });

  it("refuses garbage protobuf bytes and protobuf without a body", () => {
    rejects(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]), CONTENT_TYPES.protobuf, "INVALID_ENVELOPE");
    rejects(Buffer.from([]), CONTENT_TYPES.protobuf, "INVALID_ENVELOPE");
  });

  it("refuses params_json that is not JSON inside a protobuf envelope", () => {
    // v=1, id="c", command{name="a", params_json="{"}, written field by field.
    const bytes = Buffer.from([0x08, 0x01, 0x12, 0x01, 0x63, 0x52, 0x06, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x7b]);
    rejects(bytes, CONTENT_TYPES.protobuf, "INVALID_ENVELOPE");
    // The same with params_json="{}" is a valid command: the failure above is the JSON, not the framing.
    const ok = Buffer.from([0x08, 0x01, 0x12, 0x01, 0x63, 0x52, 0x07, 0x0a, 0x01, 0x61, 0x12, 0x02, 0x7b, 0x7d]);
    assert.deepEqual(decodeEnvelope(ok, CONTENT_TYPES.protobuf), { v: 1, id: "c", kind: "command", body: { name: "a", params: {} } });
  });

  it("refuses oversized messages before parsing them", () => {
    rejects(Buffer.alloc(2048, 0x20), "application/json", "MESSAGE_TOO_LARGE", 1024);
  });

  it("refuses unknown content types", () => {
    rejects(Buffer.from("{}"), "text/plain", "UNSUPPORTED_CONTENT_TYPE");
    rejects(Buffer.from("{}"), undefined, "UNSUPPORTED_CONTENT_TYPE");
  });
});
