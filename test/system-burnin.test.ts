/**
 * Burn-in clean steps over real HTTP, with the real tools for a second or two: stress-ng (CPU,
 * memory), fio on a small loop disk, and fio's network engine between two agents on loopback.
 */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { describe, it, type TestContext } from "node:test";
import type { ConfigInput } from "../core/config.js";
import { parseFioJson, parseStressNgMetrics } from "../utilities/system/burnin.js";
import { startAgent, type TestAgent } from "./helpers/agent.js";
import type { LoopDevice } from "./helpers/loop.js";
import { assertFailed, assertSucceeded, executeStep, loopDisks, recordingRunner, sha256 } from "./helpers/system.js";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr !== null ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

async function agentWith(t: TestContext, config: Partial<ConfigInput>): Promise<{ agent: TestAgent; calls: ReturnType<typeof recordingRunner>["calls"] }> {
  const { run, calls } = recordingRunner({});
  const agent = await startAgent({ config, run });
  t.after(() => agent.close());
  return { agent, calls };
}

function cleanResult(rec: Record<string, unknown>): Record<string, unknown> {
  return (rec["command_result"] as Record<string, unknown>)["clean_result"] as Record<string, unknown>;
}

describe("system: burn-in", () => {
  it("burnin_cpu runs stress-ng --cpu with driver_info's count and timeout and reports its metrics", async (t) => {
    const { agent } = await agentWith(t, {});
    const node = { driver_info: { agent_burnin_cpu_cpu: 1, agent_burnin_cpu_timeout: 1 } };
    const result = cleanResult(assertSucceeded(await executeStep(agent, "clean", "burnin_cpu", "deploy", node)));
    assert.deepEqual(result["command"], ["stress-ng", "--cpu", "1", "--timeout", "1", "--metrics-brief"]);
    const [cpu] = result["metrics"] as Array<Record<string, number | string>>;
    assert.equal(cpu?.["stressor"], "cpu");
    assert.ok(Number(cpu?.["bogo_ops"]) > 0 && Number(cpu?.["real_time_s"]) >= 0.9, JSON.stringify(cpu));
  });

  it("burnin_memory runs stress-ng --vm with --vm-bytes from driver_info", async (t) => {
    const { agent } = await agentWith(t, {});
    const node = { driver_info: { agent_burnin_vm_vm: 1, "agent_burnin_vm_vm-bytes": "64M", agent_burnin_vm_timeout: 1 } };
    const result = cleanResult(assertSucceeded(await executeStep(agent, "clean", "burnin_memory", "deploy", node)));
    assert.deepEqual(result["command"], ["stress-ng", "--vm", "1", "--timeout", "1", "--vm-bytes", "64M", "--metrics-brief"]);
    const [vm] = result["metrics"] as Array<Record<string, number | string>>;
    assert.equal(vm?.["stressor"], "vm");
    assert.ok(Number(vm?.["bogo_ops"]) > 0);
  });

  it("burnin_disk runs a verified fio read/write on the allowed disk only and reports fio's JSON figures", async (t) => {
    const [disk, other] = loopDisks(t, [32, 16]) as [LoopDevice, LoopDevice];
    const before = sha256(other.file);
    const { agent, calls } = await agentWith(t, { allowDestructive: true, allowedDevices: [disk.path] });
    const node = { driver_info: { agent_burnin_fio_disk_loops: 1, agent_burnin_fio_disk_runtime: 1 } };
    const result = cleanResult(assertSucceeded(await executeStep(agent, "clean", "burnin_disk", "deploy", node)));
    assert.deepEqual(result["devices"], [disk.path]);
    const [job] = result["jobs"] as Array<Record<string, number | string>>;
    assert.equal(job?.["name"], disk.path);
    assert.equal(job?.["error"], 0);
    assert.ok(Number(job?.["read_bytes"]) > 0 && Number(job?.["write_bytes"]) > 0, JSON.stringify(job));
    const fio = calls.find((c) => c.cmd === "fio");
    assert.deepEqual(fio?.args, [
      "--thread", "--rw", "readwrite", "--bs", "4k", "--direct", "1", "--ioengine", "libaio", "--iodepth", "32", "--verify", "crc32c", "--verify_dump", "1",
      "--continue_on_error", "verify", "--loops", "1", "--verify_state_save", "0", "--runtime", "1", "--time_based", "--name", disk.path, "--output-format", "json",
    ]);
    assert.equal(sha256(other.file), before);
  });

  it("burnin_disk is refused when allowDestructive is off, and fails when no disk is allowed", async (t) => {
    const [disk] = loopDisks(t, [16]) as [LoopDevice];
    const before = sha256(disk.file);
    const off = await agentWith(t, { allowDestructive: false, allowedDevices: [disk.path] });
    assertFailed(await executeStep(off.agent, "clean", "burnin_disk", "deploy", {}), "DestructiveCommandRefused");
    const none = await agentWith(t, { allowDestructive: true, allowedDevices: [] });
    assertFailed(await executeStep(none.agent, "clean", "burnin_disk", "deploy", {}), "DeviceNotFound");
    assert.equal(off.calls.concat(none.calls).filter((c) => c.cmd === "fio").length, 0);
    assert.equal(sha256(disk.file), before);
  });

  it("burnin_network pairs two agents on loopback with fio's net engine, then swaps roles", async (t) => {
    const writer = await agentWith(t, {});
    const reader = await agentWith(t, {});
    // A free port of our own, not IPA's 9000: another run of this suite on the machine must not pair with us.
    const port = await freePort();
    const info = (role: string) => ({
      driver_info: {
        agent_burnin_fio_network_config: { role, partner: "127.0.0.1" },
        agent_burnin_fio_network_runtime: 1,
        agent_burnin_fio_network_port: port,
        agent_burnin_fio_network_retry_interval: 0.2,
        agent_burnin_fio_network_pairing_timeout: 20,
        agent_burnin_fio_network_reader_delay: 1,
      },
    });
    const [w, r] = await Promise.all([
      executeStep(writer.agent, "clean", "burnin_network", "deploy", info("writer")),
      executeStep(reader.agent, "clean", "burnin_network", "deploy", info("reader")),
    ]);
    for (const [reply, first] of [
      [w, "writer"],
      [r, "reader"],
    ] as const) {
      const result = cleanResult(assertSucceeded(reply));
      const directions = result["directions"] as Array<{ role: string; jobs: Array<Record<string, number>> }>;
      assert.deepEqual(directions.map((d) => d.role), first === "writer" ? ["writer", "reader"] : ["reader", "writer"]);
      for (const d of directions) {
        const bytes = d.jobs.reduce((n, j) => n + Number(d.role === "writer" ? j["write_bytes"] : j["read_bytes"]), 0);
        assert.ok(bytes > 0, JSON.stringify(d));
      }
    }
    // A reader whose writer never comes gives up after the pairing timeout.
    const lonely = await executeStep(reader.agent, "clean", "burnin_network", "deploy", {
      driver_info: { ...info("reader").driver_info, agent_burnin_fio_network_port: await freePort(), agent_burnin_fio_network_pairing_timeout: 1 },
    });
    assert.match(String(assertFailed(lonely, "CleaningError")["details"]), /timed out to find partner/);
    const missing = await executeStep(writer.agent, "clean", "burnin_network", "deploy", { driver_info: {} });
    const error = assertFailed(missing, "CleaningError");
    assert.match(String(error["details"]), /agent_burnin_fio_network_config/);
  });
});

describe("system: burn-in output parsing", () => {
  it("reads stress-ng's metrics in both labels it uses", () => {
    const text = [
      "stress-ng: info:  [8042] dispatching hogs: 1 cpu",
      "stress-ng: metrc: [8042] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s",
      "stress-ng: metrc: [8042]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)",
      "stress-ng: metrc: [8042] cpu                1778      1.00      0.97      0.00      1774.35        1824.25",
      "stress-ng: info:  [9] vm                40843      1.00      0.39      0.51     40711.42       45653.05",
    ].join("\n");
    assert.deepEqual(parseStressNgMetrics(text).map((m) => [m.stressor, m.bogo_ops, m.bogo_ops_per_s_cpu]), [
      ["cpu", 1778, 1824.25],
      ["vm", 40843, 45653.05],
    ]);
  });

  it("reads fio's JSON after the notices fio prints first", () => {
    const jobs = parseFioJson('fio: waiting for connection\n{\n "jobs": [{"jobname": "writer", "error": 0, "read": {"io_bytes": 0}, "write": {"io_bytes": 42, "iops": 1.5}}]\n}\n');
    assert.equal(jobs[0]?.write_bytes, 42);
    assert.throws(() => parseFioJson("no json"));
  });
});
