/** The conformance suite over REST: POST /ironbus/v1/envelope and GET /ironbus/v1/events on a real port. */
import { parseConfig } from "../../core/config.js";
import { silentLogger } from "../../core/log.js";
import { Controller } from "../../controller/controller.js";
import { Agent } from "../../router/agent.js";
import { RestControllerLink } from "../../transports/rest/controller-link.js";
import { RestTransport } from "../../transports/rest/server.js";
import { TOKEN } from "../helpers/agent.js";
import { conformanceExtension } from "./extension.js";
import { NODE, until, type Harness } from "./rig.js";
import { securityConformance } from "./security.js";
import { conformance } from "./suite.js";

export const restHarness: Harness = {
  name: "rest",
  queuesWhileBusy: false,
  async start(opts) {
    const log = opts.log ?? silentLogger();
    const config = parseConfig({ standalone: true, listenHost: "127.0.0.1", listenPort: 0, agentToken: TOKEN, node: NODE, ...opts.config });
    const { extension, state } = conformanceExtension();
    const rest = new RestTransport({ host: config.listenHost, port: config.listenPort, log, heartbeatIntervalMs: 200 });
    const agent = new Agent({ config, log, extensions: [extension, ...(opts.extensions ?? [])], transports: [rest], node: NODE, ...(opts.guard ? { guard: opts.guard } : {}) });
    await agent.start();
    const link = new RestControllerLink({ agents: { [NODE]: { url: `http://127.0.0.1:${rest.address().port}`, token: TOKEN, groups: ["conf"] } }, log, format: opts.format });
    const controller = new Controller({ link, log, format: opts.format, join: false, heartbeatIntervalS: 0.2, tokenFor: (node) => (node === undefined ? undefined : TOKEN), ...opts.controller });
    await controller.start();
    await until(() => controller.node(NODE)?.hello !== undefined, 10_000, "the hello on the event stream");
    return {
      transport: "rest",
      node: NODE,
      agent,
      controller,
      state,
      close: async () => {
        await controller.stop();
        await agent.stop();
      },
    };
  },
};

conformance(restHarness);
securityConformance(restHarness);
