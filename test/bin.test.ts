/** The agent as users start it: the bin, its flags, TLS, and a clean stop. */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { generateSelfSignedCertificate } from "../transports/rest/autotls.js";

const BIN = fileURLToPath(new URL("../bin/ironbus-agent.ts", import.meta.url));

function launch(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", BIN, "--no-kernel-cmdline", ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** Resolves with the URL from the "agent ready" log line. */
function ready(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      try {
        const rec = JSON.parse(line) as { msg?: string; url?: string };
        if (rec.msg === "agent ready" && typeof rec.url === "string") resolve(rec.url);
      } catch {
        // not a log line
      }
    });
    child.once("exit", (code) => reject(new Error(`agent exited with ${code} before it was ready`)));
  });
}

function exited(child: ChildProcess): Promise<{ code: number | null; stderr: string; stdout: string }> {
  let stderr = "";
  let stdout = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, stderr, stdout })));
}

function httpsGet(url: string, ca: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("ironbus-agent bin", () => {
  it("prints its usage with --help", async () => {
    const { code, stdout } = await exited(launch(["--help"]));
    assert.equal(code, 0);
    assert.match(stdout, /--standalone/);
    assert.match(stdout, /--listen HOST:PORT/);
    assert.match(stdout, /--agent-token TOKEN/);
  });

  it("refuses unknown flags and bad values with exit 2 and a message", async () => {
    const unknown = await exited(launch(["--no-such-flag"]));
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /no-such-flag/);
    const badListen = await exited(launch(["--standalone", "--listen", "nowhere"]));
    assert.equal(badListen.code, 2);
    assert.match(badListen.stderr, /--listen must be HOST:PORT/);
    const badEnv = await exited(launch(["--standalone"], { IRONBUS_LISTEN_PORT: "ninety" }));
    assert.equal(badEnv.code, 2);
    assert.match(badEnv.stderr, /listenPort must be a number/);
  });

  it("says what is missing when started without --standalone and without an Ironic URL", async () => {
    const { code, stderr } = await exited(launch(["--listen", "127.0.0.1:0"]));
    assert.equal(code, 2);
    assert.match(stderr, /no Ironic API URL: set ipa-api-url .* or start with --standalone/);
  });

  it("serves HTTPS with auto-TLS for the advertised IP and stops cleanly on SIGTERM", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-tls-"));
    const child = launch(["--standalone", "--listen", "127.0.0.1:0", "--agent-token", "tok", "--auto-tls", "--tls-dir", dir, "--advertise-host", "127.0.0.1"]);
    t.after(() => child.kill("SIGKILL"));
    const done = exited(child);
    const url = await ready(child);
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const ca = readFileSync(join(dir, "agent.crt"), "utf8");
    const res = await httpsGet(`${url}/v1/status`, ca);
    assert.equal(res.status, 200);
    assert.equal((JSON.parse(res.body) as { version: string }).version, "0.1.0");
    child.kill("SIGTERM");
    assert.equal((await done).code, 0);
  });

  it("serves HTTPS from static certificate files, and refuses a certificate without its key", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-tls-"));
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "static" });
    writeFileSync(join(dir, "c.pem"), pair.certPem);
    writeFileSync(join(dir, "k.pem"), pair.keyPem);
    const child = launch(["--standalone", "--listen", "127.0.0.1:0", "--tls-cert-file", join(dir, "c.pem"), "--tls-key-file", join(dir, "k.pem")]);
    t.after(() => child.kill("SIGKILL"));
    const url = await ready(child);
    assert.equal((await httpsGet(`${url}/v1/status`, pair.certPem)).status, 200);
    await assert.rejects(httpsGet(`${url}/v1/status`, generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "other" }).certPem));
    const lone = await exited(launch(["--standalone", "--listen", "127.0.0.1:0", "--tls-cert-file", join(dir, "c.pem")]));
    assert.equal(lone.code, 2);
    assert.match(lone.stderr, /tlsCertFile and tlsKeyFile go together/);
  });

  it("exits 2 with the reason when the port is taken", async (t) => {
    const first = launch(["--standalone", "--listen", "127.0.0.1:0"]);
    t.after(() => first.kill("SIGKILL"));
    const url = await ready(first);
    const port = new URL(url).port;
    const second = await exited(launch(["--standalone", "--listen", `127.0.0.1:${port}`]));
    assert.equal(second.code, 2);
    assert.match(second.stderr, /EADDRINUSE/);
  });
});
