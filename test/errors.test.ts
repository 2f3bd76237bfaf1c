import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { AgentError, ERROR_CODES, type ErrorCode } from "../core/errors.js";

describe("errors", () => {
  const doc = readFileSync(new URL("../docs/errors.md", import.meta.url), "utf8");
  const documented = new Set([...doc.matchAll(/^\| `([A-Z_]+)` \| (\d+) \| `([^`]+)` \|/gm)].map((m) => `${m[1]}|${m[2]}|${m[3]}`));

  it("documents every code with its status and IPA type, and nothing else", () => {
    const actual = new Set(Object.entries(ERROR_CODES).map(([code, info]) => `${code}|${info.status}|${info.ipaType}`));
    assert.deepEqual([...actual].filter((c) => !documented.has(c)), [], "codes missing from docs/errors.md");
    assert.deepEqual([...documented].filter((c) => !actual.has(c)), [], "docs/errors.md names codes that do not exist");
  });

  it("serialises as IPA's command_error and fault", () => {
    const err = new AgentError("AGENT_BUSY", "executing command start_flow");
    assert.deepEqual(err.toFault(), { faultcode: "Client", faultstring: "Agent is busy: executing command start_flow" });
    assert.deepEqual(err.toCommandError(), { type: "AgentIsBusy", code: 409, message: "Agent is busy", details: "executing command start_flow" });
    assert.equal(new AgentError("INTERNAL", "x").toFault().faultcode, "Server");
  });

  it("wraps foreign throws and keeps the cause", () => {
    const cause = new RangeError("nope");
    const err = AgentError.from(cause, "COMMAND_FAILED");
    assert.equal(err.code, "COMMAND_FAILED");
    assert.equal(err.details, "nope");
    assert.equal(err.cause, cause);
    assert.equal(AgentError.from("str").details, "str");
    assert.ok(AgentError.is(err, "COMMAND_FAILED"));
    assert.ok(!AgentError.is(cause));
    const codes: ErrorCode[] = Object.keys(ERROR_CODES) as ErrorCode[];
    for (const code of codes) assert.equal(new AgentError(code, "d").code, code);
  });
});
