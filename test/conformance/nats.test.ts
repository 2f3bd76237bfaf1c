/** The conformance suite over NATS: a private nats-server on a loopback port, started by the test. */
import { silentLogger } from "../../core/log.js";
import { natsKit } from "../bus/kits.js";
import { busRig, type Harness } from "./rig.js";
import { securityConformance } from "./security.js";
import { conformance } from "./suite.js";

const harness: Harness = {
  name: "nats",
  queuesWhileBusy: true,
  async start(opts) {
    const log = opts.log ?? silentLogger();
    const broker = await natsKit.start(undefined, log);
    return busRig("nats", { agentLink: (node) => broker.agentLink(node, log), controllerLink: () => broker.controllerLink(log), close: () => broker.dispose() }, opts);
  },
};

conformance(harness);
securityConformance(harness);
