/**
 * The bin against a fake Ironic, end to end: `node --import tsx bin/ironbus-agent.ts --api-url ...`
 * looks its node up, serves HTTPS with auto-TLS, heartbeats with agent_verify_ca, runs a command that
 * carries the token (and heartbeats right after it), refuses one that does not, and stops on SIGTERM.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { FakeIronic } from "./helpers/fake-ironic.js";

const BIN = fileURLToPath(new URL("../bin/ironbus-agent.ts", import.meta.url));

const children: ChildProcess[] = [];
const fakes: FakeIronic[] = [];
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await Promise.all(fakes.map((f) => f.close()));
});

function launch(args: string[]): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", BIN, "--no-kernel-cmdline", ...args], {
    env: { ...process.env, IRONBUS_LOG_LEVEL: "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  return child;
}

interface Exit {
  readonly code: number | null;
  readonly stderr: string;
  readonly lines: Record<string, unknown>[];
}

function exited(child: ChildProcess): Promise<Exit> {
  let stderr = "";
  const lines: Record<string, unknown>[] = [];
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not a log line
    }
  });
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, stderr, lines })));
}

/** The "agent ready" log line. */
function ready(child: ChildProcess): Promise<{ url: string; callbackUrl: string }> {
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      try {
        const rec = JSON.parse(line) as { msg?: string; url?: string; callbackUrl?: string };
        if (rec.msg === "agent ready" && typeof rec.url === "string" && typeof rec.callbackUrl === "string") resolve({ url: rec.url, callbackUrl: rec.callbackUrl });
      } catch {
        // not a log line
      }
    });
    child.once("exit", (code) => reject(new Error(`agent exited with ${code} before it was ready`)));
  });
}

function https(url: string, method: string, ca: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(url, { method, ca, headers: payload === undefined ? {} : { "Content-Type": "application/json" } }, (res) => {
      let text = "";
      res.on("data", (d: Buffer) => (text += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text === "" ? undefined : (JSON.parse(text) as unknown) }));
    });
    req.on("error", reject);
    req.end(payload);
  });
}

describe("ironbus-agent with Ironic", () => {
  it("looks up, heartbeats with auto-TLS, runs a command that carries the token, and stops on SIGTERM", async () => {
    const fake = await FakeIronic.start({ anyMac: true, version: "1.82", heartbeatTimeout: 300 });
    fakes.push(fake);
    const tlsDir = mkdtempSync(join(tmpdir(), "ironbus-bin-tls-"));
    const child = launch(["--api-url", fake.url, "--listen", "127.0.0.1:0", "--advertise-host", "127.0.0.1", "--tls-dir", tlsDir, "--nic-wait-timeout-s", "1", "--lookup-timeout-s", "30"]);
    const done = exited(child);
    const { url, callbackUrl } = await ready(child);
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(callbackUrl, url);

    const [lookup] = fake.lookups();
    assert.equal(lookup?.status, 200);
    assert.ok((lookup?.query["addresses"] ?? "").length > 0, "the machine's MACs were sent");
    assert.equal(lookup?.headers["x-openstack-ironic-api-version"], "1.62");

    const first = await fake.waitForAccepted(1);
    const body = first.body as Record<string, string>;
    assert.deepEqual(Object.keys(body).sort(), ["agent_token", "agent_verify_ca", "agent_version", "callback_url"]);
    assert.equal(body["callback_url"], url);
    assert.equal(body["agent_token"], fake.token);
    assert.equal(body["agent_version"], "0.1.0");
    assert.equal(first.headers["x-openstack-ironic-api-version"], "1.68");
    const ca = body["agent_verify_ca"] ?? "";
    assert.match(ca, /^-----BEGIN CERTIFICATE-----/);

    // Ironic's side of the conversation, with the CA it was given.
    const refused = await https(`${callbackUrl}/v1/commands/?wait=true`, "POST", ca, { name: "standby.get_partition_uuids", params: {} });
    assert.equal(refused.status, 401);
    const sent = Date.now();
    const ran = await https(`${callbackUrl}/v1/commands/?wait=true&agent_token=${fake.token ?? ""}`, "POST", ca, { name: "standby.get_partition_uuids", params: {} });
    assert.equal(ran.status, 200);
    assert.equal((ran.body as { command_status: string }).command_status, "SUCCEEDED");
    const forced = await fake.waitForAccepted(2, 5_000);
    assert.ok(forced.at - sent < 2_000, `heartbeat ${forced.at - sent} ms after the command`);

    child.kill("SIGTERM");
    const exit = await done;
    assert.equal(exit.code, 0, exit.stderr);
    assert.ok(exit.lines.some((l) => l["msg"] === "stopping"));
    const count = fake.heartbeats().length;
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(fake.heartbeats().length, count, "no heartbeat after the agent stopped");
  });

  it("exits non-zero with a clear message when lookup times out", async () => {
    const fake = await FakeIronic.start({ anyMac: true, lookupAllowed: false });
    fakes.push(fake);
    const exit = await exited(launch(["--api-url", fake.url, "--listen", "127.0.0.1:0", "--advertise-host", "127.0.0.1", "--nic-wait-timeout-s", "0", "--lookup-timeout-s", "2"]));
    assert.equal(exit.code, 2);
    assert.match(exit.stderr, /^ironbus-agent: Error getting configuration from Ironic: no node found for MAC addresses .* within 2 s/);
    assert.ok(fake.lookups().length >= 2);
    assert.equal(fake.heartbeats().length, 0);
  });

  it("says what is missing when it has no Ironic URL and is not standalone", async () => {
    const exit = await exited(launch(["--listen", "127.0.0.1:0"]));
    assert.equal(exit.code, 2);
    assert.match(exit.stderr, /no Ironic API URL: set ipa-api-url .* or start with --standalone/);
  });

  it("stops at once on SIGTERM during a long lookup", async () => {
    const fake = await FakeIronic.start({ anyMac: true, lookupAllowed: false });
    fakes.push(fake);
    const child = launch(["--api-url", fake.url, "--listen", "127.0.0.1:0", "--advertise-host", "127.0.0.1", "--nic-wait-timeout-s", "0", "--lookup-timeout-s", "600"]);
    const done = exited(child);
    await fake.waitFor((r) => r.path === "/v1/lookup", 15_000, "lookup");
    const killed = Date.now();
    child.kill("SIGTERM");
    const exit = await done;
    assert.equal(exit.code, 0, exit.stderr);
    assert.ok(Date.now() - killed < 3_000);
  });
});
