/**
 * `ironbus demo`: the whole loop on this machine with no external service. An embedded WebSocket hub
 * on a loopback port, a real agent (real utilities, read-only: destructive commands stay off) that
 * dials it, joins and heartbeats, and a controller that lists the node and asks it for its hardware
 * inventory over the bus. What it prints is this machine's real inventory.
 */
import { parseConfig } from "../core/config.js";
import type { Json } from "../core/envelope.js";
import type { Logger } from "../core/log.js";
import { Controller } from "../controller/controller.js";
import { Agent } from "../router/agent.js";
import { busTransport } from "../transports/bus/session.js";
import { WsAgentLink } from "../transports/ws/agent-link.js";
import { WsHub } from "../transports/ws/hub.js";
import { createUtilities } from "../utilities/index.js";
import { helloSource, summarize } from "./bus.js";
import { nodeTable } from "../controller/format.js";
import type { Inventory } from "../utilities/inventory/schema.js";

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export async function demo(log: Logger): Promise<number> {
  const hub = new WsHub();
  await hub.start({ host: "127.0.0.1", port: 0, log });
  out(`hub        listening on ${hub.url()} (embedded, loopback only)`);
  const controller = new Controller({ link: hub.link(), log, heartbeatIntervalS: 1 });
  await controller.start();

  const config = parseConfig({ standalone: true, transports: ["ws"], wsUrl: hub.url(), node: "demo-node", heartbeatIntervalS: 1, logLevel: "warn" });
  const utilities = await createUtilities({ config, log });
  const link = new WsAgentLink({ url: hub.url(), node: "demo-node", log });
  const bus = busTransport(link, config, log);
  const agent = new Agent({ config, log, extensions: utilities.extensions, transports: [bus], node: "demo-node", hello: helloSource(utilities, log) });
  try {
    await agent.start();
    out("agent      demo-node dialled the hub");
    const deadline = Date.now() + 30_000;
    while ((agent.joinData() === undefined || controller.node("demo-node")?.heartbeat === undefined) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (agent.joinData() === undefined) throw new Error("the agent did not join within 30 s");
    out("controller demo-node said hello and joined (per-node token issued); nodes:");
    process.stdout.write(nodeTable(controller.nodes()));

    const started = Date.now();
    const answer = await controller.command({ fleet: true }, "poll.get_hardware_info", {}, { deadlineMs: 60_000 });
    const a = answer.answers.get("demo-node");
    if (a === undefined || a.kind === "error" || a.result.command_status !== "SUCCEEDED") {
      out(`poll.get_hardware_info failed: ${JSON.stringify(a ?? "no answer")}`);
      return 1;
    }
    const inv = a.result.command_result as unknown as Inventory;
    const s = summarize(inv) as { [k: string]: Json };
    out(`command    poll.get_hardware_info sent to the whole fleet over the bus, answered in ${Date.now() - started} ms:`);
    out(`  host     ${inv.hostname}`);
    out(`  cpu      ${inv.cpu.count} x ${inv.cpu.model_name} (${inv.cpu.architecture})`);
    out(`  memory   ${inv.memory.total === null ? "?" : gib(inv.memory.total)}`);
    for (const d of inv.disks) out(`  disk     ${d.name} ${gib(d.size)}${d.model ? ` ${d.model}` : ""}`);
    for (const i of inv.interfaces) out(`  nic      ${i.name} ${i.mac_address ?? ""} ${i.ipv4_address ?? ""}`);
    out(`  vendor   ${JSON.stringify(s["system_vendor"])}`);
    out(`fleet      ${answer.answers.size} answered, ${answer.silent.length} silent`);
    return 0;
  } finally {
    await agent.stop();
    await controller.stop();
    await hub.stop();
  }
}
