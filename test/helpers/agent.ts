/** Starts a real agent with the real REST transport on a free loopback port. */
import { parseConfig, type AgentConfig, type ConfigInput } from "../../core/config.js";
import { silentLogger, type Logger } from "../../core/log.js";
import { Agent } from "../../router/agent.js";
import { RestTransport } from "../../transports/rest/server.js";
import type { CommandRunner } from "../../utilities/exec.js";
import { createUtilities, type Utilities } from "../../utilities/index.js";
import type { Extension } from "../../core/command.js";
import type { HardwareManager } from "../../utilities/managers.js";
import type { EnvelopeGuard } from "../../core/guard.js";

export const TOKEN = "ipa-conformance-token-0123456789abcdef";

export interface TestAgent {
  readonly agent: Agent;
  readonly rest: RestTransport;
  readonly utilities: Utilities;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  close(): Promise<void>;
}

export interface TestAgentOptions {
  readonly config?: Partial<ConfigInput>;
  readonly managers?: readonly HardwareManager[];
  readonly extensions?: readonly Extension[];
  readonly run?: CommandRunner;
  readonly log?: Logger;
  readonly requireTokenOnGet?: boolean;
  /** Checks and seals envelopes (core/trust.ts), or makes the guard from the agent's parsed config (createGuard); default: the open guard. */
  readonly guard?: EnvelopeGuard | ((config: AgentConfig, log: Logger) => EnvelopeGuard);
}

export async function startAgent(opts: TestAgentOptions = {}): Promise<TestAgent> {
  const config = parseConfig({ standalone: true, listenHost: "127.0.0.1", listenPort: 0, agentToken: TOKEN, ...opts.config });
  const log = opts.log ?? silentLogger();
  const utilities = await createUtilities({ config, log, ...(opts.run ? { run: opts.run } : {}), ...(opts.managers ? { managers: opts.managers } : {}) });
  const rest = new RestTransport({
    host: config.listenHost,
    port: config.listenPort,
    log,
    requireTokenOnGet: opts.requireTokenOnGet ?? config.requireTokenOnGet,
  });
  const guard = typeof opts.guard === "function" ? opts.guard(config, log) : opts.guard;
  const agent = new Agent({ config, log, extensions: [...utilities.extensions, ...(opts.extensions ?? [])], transports: [rest], ...(guard ? { guard } : {}) });
  await agent.start();
  const { port } = rest.address();
  return { agent, rest, utilities, url: `http://127.0.0.1:${port}`, close: () => agent.stop() };
}
