/** poll, log and the read-only part of standby. */
import { readdir } from "node:fs/promises";
import { z } from "zod";
import { defineCommand, defineExtension, type Extension } from "../../core/command.js";
import { type Json, JsonObjectSchema } from "../../core/envelope.js";
import { AgentError } from "../../core/errors.js";
import type { CommandRunner } from "../exec.js";
import { collectSystemLogs } from "../logs/index.js";
import type { ManagerRegistry } from "../managers.js";

const NoParams = z.object({}).strict();

/** What the agent remembers between commands (IPA keeps it on the standby extension). */
export interface AgentState {
  /** Partition UUIDs of the last image written; `{}` for a whole-disk image or none. */
  partitionUuids: { [key: string]: Json };
  /** node_info given by poll.set_node_info (standalone mode). */
  nodeInfo: { [key: string]: Json } | null;
}

export function newAgentState(): AgentState {
  return { partitionUuids: {}, nodeInfo: null };
}

export function pollExtension(registry: ManagerRegistry, state: AgentState, standalone: boolean): Extension {
  return defineExtension("poll", {
    get_hardware_info: defineCommand({
      mode: "sync",
      params: NoParams,
      run: (_p, ctx) => registry.dispatch("list_hardware_info", { node: state.nodeInfo, ports: [], args: {}, ctx }),
    }),
    set_node_info: defineCommand({
      mode: "sync",
      params: z.object({ node_info: JsonObjectSchema }).strict(),
      run: ({ node_info }) => {
        if (!standalone) throw new AgentError("INVALID_PARAMS", "set_node_info is only available in standalone mode");
        state.nodeInfo = node_info;
        return null;
      },
    }),
  });
}

export function logExtension(run: CommandRunner): Extension {
  return defineExtension("log", {
    collect_system_logs: defineCommand({
      mode: "sync",
      params: NoParams,
      timeoutMs: 120_000,
      run: async (_p, ctx) => ({ system_logs: await collectSystemLogs({ run, signal: ctx.signal }) }),
    }),
  });
}

/** Whole disks the kernel knows, for `blockdev --flushbufs`. */
async function wholeDisks(sysBlock = "/sys/block"): Promise<string[]> {
  try {
    const names = await readdir(sysBlock);
    return names.filter((n) => !/^(loop|ram|zram|fd|sr)\d*/.test(n)).map((n) => `/dev/${n}`);
  } catch {
    return [];
  }
}

export function standbyReadOnly(run: CommandRunner, state: AgentState): Record<string, ReturnType<typeof defineCommand>> {
  return {
    sync: defineCommand({
      mode: "sync",
      params: NoParams,
      timeoutMs: 300_000,
      run: async (_p, ctx) => {
        const synced = await run("sync", [], { signal: ctx.signal });
        if (synced.code !== 0) throw new AgentError("TOOL_FAILED", `sync exited ${synced.code}: ${synced.stderr.trim()}`);
        for (const disk of await wholeDisks()) {
          const flushed = await run("blockdev", ["--flushbufs", disk], { signal: ctx.signal });
          if (flushed.code !== 0) ctx.log.warn({ disk, stderr: flushed.stderr.trim() }, "blockdev --flushbufs failed");
        }
        return null;
      },
    }),
  };
}
