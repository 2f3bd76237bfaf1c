/**
 * A rig: one real agent, one controller, and whatever carries messages between them (a real broker,
 * a hub, or plain HTTP). The conformance suite sees only this interface, so it runs unchanged on
 * every transport.
 */
import type { WireFormat } from "../../core/codec.js";
import type { AgentLink, ControllerLink } from "../../core/bus.js";
import { parseConfig, type ConfigInput } from "../../core/config.js";
import type { Extension } from "../../core/command.js";
import type { Logger } from "../../core/log.js";
import { silentLogger } from "../../core/log.js";
import { Controller, type ControllerOptions } from "../../controller/controller.js";
import { Agent } from "../../router/agent.js";
import { busTransport } from "../../transports/bus/session.js";
import { conformanceExtension, type ConformanceState } from "./extension.js";
import type { EnvelopeGuard } from "../../core/guard.js";

export interface Rig {
  readonly transport: string;
  readonly node: string;
  readonly agent: Agent;
  readonly controller: Controller;
  readonly state: ConformanceState;
  close(): Promise<void>;
}

export interface RigOptions {
  readonly format: WireFormat;
  readonly config?: Partial<ConfigInput>;
  readonly log?: Logger;
  readonly guard?: EnvelopeGuard;
  readonly controller?: Partial<Pick<ControllerOptions, "sign" | "secret">>;
  /** Extensions the agent serves besides the conformance one. */
  readonly extensions?: readonly Extension[];
}

export interface Harness {
  readonly name: string;
  /** Commands refused as busy wait for the lock (buses); REST answers AGENT_BUSY as IPA does. */
  readonly queuesWhileBusy: boolean;
  start(opts: RigOptions): Promise<Rig>;
}

export const NODE = "conf-node-1";

/** Waits until `check` holds, polling; fails after `ms`. */
export async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface BusPair {
  agentLink(node: string): AgentLink;
  controllerLink(): ControllerLink;
  close(): Promise<void>;
}

/** A bus rig: an agent with a BusTransport over `pair`, and a controller that has joined it. */
export async function busRig(name: string, pair: BusPair, opts: RigOptions): Promise<Rig> {
  const extensions = opts.extensions ?? [];
  const log = opts.log ?? silentLogger();
  const config = parseConfig({ standalone: true, node: NODE, busFormat: opts.format, heartbeatIntervalS: 0.2, ...opts.config });
  const { extension, state } = conformanceExtension();
  const transport = busTransport(pair.agentLink(NODE), config, log);
  const controller = new Controller({ link: pair.controllerLink(), log, format: opts.format, heartbeatIntervalS: 0.2, groupsFor: () => ["conf"], ...opts.controller });
  await controller.start();
  const agent = new Agent({ config, log, extensions: [extension, ...extensions], transports: [transport], node: NODE, ...(opts.guard ? { guard: opts.guard } : {}) });
  await agent.start();
  await until(() => agent.joinData() !== undefined, 10_000, `${name}: the agent to join`);
  return {
    transport: name,
    node: NODE,
    agent,
    controller,
    state,
    close: async () => {
      await agent.stop();
      await controller.stop();
      await pair.close();
    },
  };
}
