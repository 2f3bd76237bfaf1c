/**
 * Ironic's own agent client (Debian's python3-ironic, ironic.drivers.modules.agent_client) drives the
 * real agent over real HTTP. test/ironic/agent_client_driver.py makes the calls and prints one JSON
 * line per check; this file starts the agent, plays its part in the busy check and asserts each line.
 * docs/ironic-compat.md says what is checked and how to rerun it by hand.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { defineCommand, defineExtension } from "../core/command.js";
import { AgentError } from "../core/errors.js";
import type { CommandResult, CommandRunner } from "../utilities/exec.js";
import { type HardwareManager, SupportLevel } from "../utilities/managers.js";
import { startAgent, type TestAgent, TOKEN } from "./helpers/agent.js";

/** Debian's interpreter, which sees python3-ironic; IRONBUS_IRONIC_PYTHON overrides it (e.g. a venv with ironic). */
const PYTHON = process.env["IRONBUS_IRONIC_PYTHON"] ?? "/usr/bin/python3";
const DRIVER = fileURLToPath(new URL("./ironic/agent_client_driver.py", import.meta.url));
const INSTALL_HINT =
  `Ironic's agent client is not importable with ${PYTHON}: install Debian's python3-ironic ` +
  "(apt-get install python3-ironic; the CI script installs it). Use /usr/bin/python3, not a pyenv python3.";
const RUN_LIMIT_MS = 25_000;

/** Every check the driver must report, with what it proves. */
const EXPECTED: Readonly<Record<string, string>> = {
  import: "ironic.drivers.modules.agent_client imports",
  "get_commands_status-empty": "GET /v1/commands (no token, as Ironic 21.4 sends it) lists no commands on a fresh agent",
  get_clean_steps: "clean.get_clean_steps answers SUCCEEDED with clean_steps and hardware_manager_version in the shape agent_base.refresh_steps accepts",
  get_deploy_steps: "deploy.get_deploy_steps answers SUCCEEDED with deploy_steps and hardware_manager_version",
  get_partition_uuids: "standby.get_partition_uuids answers SUCCEEDED with {}",
  sync: "standby.sync answers SUCCEEDED with a null result",
  collect_system_logs: "log.collect_system_logs answers a base64 .tar.gz that Python's tarfile opens",
  "execute_clean_step-succeeded": "an async clean step runs, _wait_for_command polls it to SUCCEEDED and agent_base sees it completed",
  "execute_clean_step-not-found": "an unknown clean step becomes FAILED with HardwareManagerMethodNotFound (get_last_command_status)",
  "execute_clean_step-version-mismatch": "a stale clean_version becomes CLEAN_VERSION_MISMATCH",
  "bad-arguments-typeerror": "a bad argument makes the client raise AgentAPIError through _raise_if_typeerror (stored FAILED TypeError)",
  "wrong-token": "a wrong agent_token on POST gives AgentAPIError with status 401",
  "missing-token": "a POST without agent_token gives AgentAPIError with status 401",
  "unknown-extension": "an unknown extension gives AgentAPIError with status 404",
  "busy-start-block": "the test-only async command test.block starts RUNNING",
  "busy-sync": "while it holds the lock, client.sync raises AgentInProgress",
  "busy-get_clean_steps": "while it holds the lock, client.get_clean_steps raises AgentInProgress",
  "busy-execute_clean_step": "while it holds the lock, client.execute_clean_step raises AgentInProgress",
  "busy-get_commands_status": "while it holds the lock, GET still answers and shows block RUNNING",
  "busy-released": "once released, _wait_for_command sees block SUCCEEDED and the agent takes commands again",
  "control-command-during-step":
    "an agent.get_command sent while a clean step runs does not hide the finished step from agent_base._get_completed_command",
};

/**
 * Checks that fail because of a known production bug, reported and not yet fixed: shown as TODO (they do
 * not fail the run). Remove the entry once the bug is fixed; the check then guards it.
 */
const KNOWN_BUGS: Readonly<Record<string, string>> = {
};

interface CheckLine {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: unknown;
}

const LineSchema = z.union([
  z.object({ check: z.string(), ok: z.boolean(), detail: z.unknown() }),
  z.object({ control: z.literal("release"), what: z.enum(["block", "hold"]) }),
]);

type Held = "block" | "hold";

interface DriverRun {
  readonly checks: ReadonlyMap<string, CheckLine>;
  readonly order: readonly string[];
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly junk: readonly string[];
  readonly released: readonly Held[];
}

/** A gate the test opens to let test.block finish. */
function gate(): { readonly promise: Promise<void>; readonly open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Stands in for the OS tools only (sync, blockdev, journalctl, ...): fast, harmless, recorded. */
function fakeRunner(calls: string[]): CommandRunner {
  return (cmd, args) => {
    calls.push([cmd, ...args].join(" "));
    const result: CommandResult = { stdout: `${cmd} output\n`, stderr: "", code: 0 };
    return Promise.resolve(result);
  };
}

/** Resolves when the gate opens; rejects when the command is aborted first. */
function heldUntil(gatePromise: Promise<void>, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason instanceof Error ? signal.reason : new AgentError("COMMAND_CANCELLED", "aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    void gatePromise.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
}

/** A manager with two harmless clean steps: one returns at once, one waits until the test releases it. */
function testManager(hold: Promise<void>): HardwareManager {
  return {
    name: "ironbus_test_manager",
    version: "1.0",
    className: "IronbusTestManager",
    evaluateHardwareSupport: () => SupportLevel.MAINLINE,
    methods: {
      ironbus_test_noop: { run: ({ args }) => ({ noop: true, args }) },
      ironbus_test_hold: {
        run: async ({ ctx }) => {
          await heldUntil(hold, ctx.signal);
          return { held: true };
        },
      },
    },
    steps: {
      clean: [
        { step: "ironbus_test_noop", priority: 0, interface: "deploy", reboot_requested: false, abortable: true },
        { step: "ironbus_test_hold", priority: 0, interface: "deploy", reboot_requested: false, abortable: true },
      ],
    },
  };
}

function pythonIronicAvailable(): { readonly ok: boolean; readonly why: string } {
  const probe = spawnSync(PYTHON, ["-c", "import ironic.drivers.modules.agent_client"], { encoding: "utf8", timeout: 15_000 });
  if (probe.error !== undefined) return { ok: false, why: probe.error.message };
  return { ok: probe.status === 0, why: probe.stderr.trim().split("\n").slice(-1).join("") };
}

function describeRun(run: DriverRun): string {
  const tail = run.stderr.trim().split("\n").slice(-20).join("\n");
  return `driver exit code ${String(run.code)}, signal ${String(run.signal)}; checks seen: ${run.order.join(", ") || "none"}` +
    (run.junk.length > 0 ? `\nnon-JSON stdout: ${run.junk.join(" | ")}` : "") +
    (tail ? `\nstderr tail:\n${tail}` : "");
}

describe("Ironic's agent client (python3-ironic) against the real agent", () => {
  let agent: TestAgent | undefined;
  const toolCalls: string[] = [];
  const gates: Readonly<Record<Held, ReturnType<typeof gate>>> = { block: gate(), hold: gate() };
  let blockRuns = 0;
  let driver: Promise<DriverRun> | undefined;

  const blockExtension = defineExtension("test", {
    block: defineCommand({
      mode: "async",
      params: z.object({}).strict(),
      run: async (_p, ctx) => {
        blockRuns += 1;
        await heldUntil(gates.block.promise, ctx.signal);
        return "released";
      },
    }),
  });

  before(async () => {
    agent = await startAgent({ extensions: [blockExtension], managers: [testManager(gates.hold.promise)], run: fakeRunner(toolCalls) });
  });

  after(async () => {
    gates.block.open();
    gates.hold.open();
    await agent?.close();
  });

  function runDriver(): Promise<DriverRun> {
    driver ??= (async (): Promise<DriverRun> => {
      const available = pythonIronicAvailable();
      if (!available.ok) throw new Error(`${INSTALL_HINT} (${available.why})`);
      if (agent === undefined) throw new Error("agent did not start");
      const child = spawn(PYTHON, [DRIVER, agent.url, TOKEN], { stdio: ["pipe", "pipe", "pipe"] });
      const checks = new Map<string, CheckLine>();
      const order: string[] = [];
      const junk: string[] = [];
      let stderr = "";
      const released: Held[] = [];
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk: string) => {
        stderr += chunk;
      });
      // The driver may die before it reads the release line: a broken pipe is its failure to report, not ours.
      child.stdin.on("error", () => undefined);
      const killer = setTimeout(() => child.kill("SIGKILL"), RUN_LIMIT_MS);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
        child.once("error", reject);
        child.once("close", (code, signal) => resolve({ code, signal }));
      });
      // Awaited below, after stdout is drained; this keeps an early spawn error from counting as unhandled.
      exited.catch(() => undefined);
      const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
      for await (const text of lines) {
        if (text.trim() === "") continue;
        let raw: unknown;
        try {
          raw = JSON.parse(text);
        } catch {
          junk.push(text);
          continue;
        }
        const parsed = LineSchema.safeParse(raw);
        if (!parsed.success) {
          junk.push(text);
          continue;
        }
        const line = parsed.data;
        if ("control" in line) {
          // The driver is done with the held command: let it finish, then tell the driver.
          gates[line.what].open();
          released.push(line.what);
          child.stdin.write("released\n");
          continue;
        }
        checks.set(line.check, line);
        order.push(line.check);
      }
      const { code, signal } = await exited;
      clearTimeout(killer);
      return { checks, order, code, signal, stderr, junk, released };
    })();
    return driver;
  }

  it("python3-ironic's agent client is importable with /usr/bin/python3", () => {
    const available = pythonIronicAvailable();
    assert.ok(available.ok, `${INSTALL_HINT} (${available.why})`);
  });

  for (const [name, meaning] of Object.entries(EXPECTED)) {
    const bug = KNOWN_BUGS[name];
    it(`${name}: ${meaning}`, bug === undefined ? {} : { todo: `known bug: ${bug}` }, async (t) => {
      const run = await runDriver();
      const line = run.checks.get(name);
      assert.ok(line !== undefined, `the driver never reported check ${name}\n${describeRun(run)}`);
      if (name === "import") t.diagnostic(`ironic client: ${JSON.stringify(line.detail)}`);
      assert.equal(line.ok, true, `check ${name} failed: ${meaning}\ndetail: ${JSON.stringify(line.detail, null, 2)}\n${describeRun(run)}`);
    });
  }

  it("the driver finished every check, exited 0 and reported nothing unexpected", async () => {
    const run = await runDriver();
    const done = run.checks.get("done");
    assert.ok(done !== undefined, `the driver did not finish\n${describeRun(run)}`);
    const failed = run.order.filter((c) => c !== "done" && run.checks.get(c)?.ok !== true);
    const unexplained = failed.filter((c) => !Object.hasOwn(KNOWN_BUGS, c));
    assert.deepEqual(unexplained, [], `the driver reports failures: ${JSON.stringify(done.detail)}`);
    // The driver exits 1 when any check failed, known bugs included.
    assert.equal(run.code, failed.length === 0 ? 0 : 1, describeRun(run));
    const unexpected = run.order.filter((c) => c !== "done" && !Object.hasOwn(EXPECTED, c));
    assert.deepEqual(unexpected, [], "checks reported by the driver but not asserted here");
    assert.deepEqual(run.junk, [], "stdout carries only JSON lines");
  });

  it("the agent side saw what the client asked for", async () => {
    const run = await runDriver();
    assert.deepEqual(run.released, ["block", "hold"], "the driver asked for test.block, then the held clean step, to be released");
    assert.equal(blockRuns, 1, "test.block ran exactly once (the busy refusals never reached it)");
    assert.ok(toolCalls.includes("sync"), `standby.sync ran the sync tool; tool calls: ${toolCalls.join("; ")}`);
    assert.equal(agent?.agent.busyWith(), undefined, "no command holds the hardware lock afterwards");
  });
});
