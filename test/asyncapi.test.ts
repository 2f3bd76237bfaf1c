/** docs/asyncapi.yaml says what the layout code does: every channel, its NATS subject, retained kinds. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { AGENT_SENDS } from "../core/bus.js";
import * as mqtt from "../transports/mqtt/layout.js";
import * as nats from "../transports/nats/layout.js";

const doc = readFileSync(new URL("../docs/asyncapi.yaml", import.meta.url), "utf8");

/** Channel name → its x-nats-subject and whether the MQTT binding says retain: true. */
function channels(): Map<string, { subject: string | undefined; retained: boolean }> {
  const out = new Map<string, { subject: string | undefined; retained: boolean }>();
  const section = doc.slice(doc.indexOf("\nchannels:"), doc.indexOf("\ncomponents:"));
  for (const block of section.split(/\n  (?=ironbus\/)/).slice(1)) {
    const name = block.slice(0, block.indexOf(":\n"));
    out.set(name, { subject: /x-nats-subject: (\S+)/.exec(block)?.[1], retained: /retain: true/.test(block) });
  }
  return out;
}

describe("docs/asyncapi.yaml", () => {
  const ch = channels();
  const layout = nats.natsLayout();
  it("names the inbound channels the links use, on MQTT and NATS", () => {
    assert.equal(ch.get(mqtt.nodeInTopic(mqtt.DEFAULT_PREFIX, "{node}"))?.subject, nats.nodeSubject(layout, "node").replace(/node$/, "{node}"));
    assert.equal(ch.get(mqtt.groupInTopic(mqtt.DEFAULT_PREFIX, "{group}"))?.subject, nats.groupSubject(layout, "g").replace(/g$/, "{group}"));
    assert.equal(ch.get(mqtt.fleetInTopic(mqtt.DEFAULT_PREFIX))?.subject, nats.fleetSubject(layout));
  });
  it("names an outbound channel for each kind an agent sends retained exactly where MQTT retains", () => {
    for (const kind of [...AGENT_SENDS, "status"] as const) {
      const topic = mqtt.outTopic(mqtt.DEFAULT_PREFIX, "{node}", kind);
      const c = ch.get(topic);
      assert.ok(c !== undefined, `channel ${topic}`);
      assert.equal(c.subject, nats.outSubject(layout, "n0de", kind).replace("n0de", "{node}"));
      assert.equal(c.retained, mqtt.RETAINED_KINDS.has(kind), `${kind} retained`);
    }
  });
});
