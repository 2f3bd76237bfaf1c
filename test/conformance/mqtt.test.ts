/** The conformance suite over MQTT: a private mosquitto on a loopback port, started by the test. */
import { silentLogger } from "../../core/log.js";
import { mqttKit } from "../bus/kits.js";
import { busRig, type Harness } from "./rig.js";
import { securityConformance } from "./security.js";
import { conformance } from "./suite.js";

const harness: Harness = {
  name: "mqtt",
  queuesWhileBusy: true,
  async start(opts) {
    const log = opts.log ?? silentLogger();
    const broker = await mqttKit.start(undefined, log);
    return busRig("mqtt", { agentLink: (node) => broker.agentLink(node, log), controllerLink: () => broker.controllerLink(log), close: () => broker.dispose() }, opts);
  },
};

conformance(harness);
securityConformance(harness);
