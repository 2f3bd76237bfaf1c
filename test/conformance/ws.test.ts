/** The conformance suite over WebSocket: a real hub on a loopback port, the controller in-process with it or dialing it. */
import { silentLogger } from "../../core/log.js";
import { WsAgentLink } from "../../transports/ws/agent-link.js";
import { WsControllerLink } from "../../transports/ws/controller-link.js";
import { WsHub } from "../../transports/ws/hub.js";
import { busRig, type Harness } from "./rig.js";
import { securityConformance } from "./security.js";
import { conformance } from "./suite.js";

function wsHarness(remote: boolean): Harness {
  return {
    name: remote ? "ws (remote controller)" : "ws",
    queuesWhileBusy: true,
    async start(opts) {
      const log = opts.log ?? silentLogger();
      const hub = new WsHub();
      await hub.start({ host: "127.0.0.1", port: 0, log });
      const url = hub.url();
      return busRig(
        "ws",
        {
          agentLink: (node) => new WsAgentLink({ url, node, log, reconnectMinMs: 50, reconnectMaxMs: 500 }),
          controllerLink: () => (remote ? new WsControllerLink({ url, log }) : hub.link()),
          close: () => hub.stop(),
        },
        opts,
      );
    },
  };
}

conformance(wsHarness(false));
conformance(wsHarness(true));
securityConformance(wsHarness(false));
