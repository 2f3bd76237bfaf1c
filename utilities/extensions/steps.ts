/** clean / deploy / service: IPA's step extensions, one implementation for the three kinds. */
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import { JsonObjectSchema, JsonSchema } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import { pyRepr } from "../../router/router.js";
import type { ManagerRegistry, StepKind } from "../managers.js";

const NodeSchema = JsonObjectSchema.nullable();
const PortsSchema = z.array(JsonSchema);

const StepSchema = z
  .object({
    step: z.string().min(1),
    interface: z.string().optional(),
    priority: z.number().optional(),
    args: JsonObjectSchema.optional(),
  })
  .passthrough();

const Versions = z.record(z.string(), z.string()).nullable().optional();
const STEP_KINDS = ["clean", "deploy", "service"] as const;
const ExecuteSchema = z
  .object({ step: StepSchema, node: NodeSchema, ports: PortsSchema, clean_version: Versions, deploy_version: Versions, service_version: Versions })
  .strict();

/** Raises IPA's VersionMismatch when Ironic's cached versions differ from ours. */
export function checkVersions(current: Record<string, string>, given: Record<string, string> | null | undefined): void {
  if (given === null || given === undefined) return;
  const keys = new Set([...Object.keys(current), ...Object.keys(given)]);
  for (const k of keys) {
    if (current[k] !== given[k]) {
      throw new AgentError("VERSION_MISMATCH", `Current versions: ${pyRepr(current)}, versions used by ironic: ${pyRepr(given)}`);
    }
  }
}

export function stepExtension(kind: StepKind, registry: ManagerRegistry): Extension {
  const versionKey = `${kind}_version`;
  const getSteps = defineCommand({
    mode: "sync",
    params: z.object({ node: NodeSchema, ports: PortsSchema }).strict(),
    run: () => ({ [`${kind}_steps`]: registry.steps(kind), hardware_manager_version: registry.versions() }),
  });
  const executeStep = defineCommand({
    mode: "async",
    params: ExecuteSchema.refine(
      (p) => STEP_KINDS.every((k) => k === kind || p[`${k}_version`] === undefined),
      `only ${versionKey} belongs to execute_${kind}_step`,
    ),
    run: async (p, ctx) => {
      checkVersions(registry.versions(), p[`${kind}_version`]);
      const step = p.step;
      const offered = Object.values(registry.steps(kind)).some((steps) => steps.some((s) => s.step === step.step));
      // Only methods offered as steps of this kind run here, never an arbitrary manager method.
      if (!offered) throw new AgentError("HARDWARE_METHOD_NOT_FOUND", `Could not find method: ${step.step}`);
      const result = await registry.dispatch(step.step, { node: p.node, ports: p.ports, args: step.args ?? {}, ctx });
      return { [`${kind}_result`]: result ?? null, [`${kind}_step`]: step };
    },
  });
  return defineExtension(kind, { [`get_${kind}_steps`]: getSteps, [`execute_${kind}_step`]: executeStep });
}
