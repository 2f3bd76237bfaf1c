import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CONFIG_KEYS, envName, flagName, KERNEL_KEYS, loadConfig, parseConfig, parseKernelCmdline } from "../core/config.js";
import { AgentError } from "../core/errors.js";

const invalid = (err: unknown) => err instanceof AgentError && err.code === "CONFIG_INVALID";

describe("config", () => {
  it("has defaults that match IPA's", () => {
    const c = parseConfig({});
    assert.equal(c.listenPort, 9999);
    assert.equal(c.allowDestructive, false);
    assert.equal(c.lookupTimeoutS, 600);
    assert.ok(Object.isFrozen(c));
  });

  it("reads IPA's kernel command line keys, quotes and BOOTIF", () => {
    const c = loadConfig({
      kernelCmdline:
        'BOOT_IMAGE=/vmlinuz ipa-api-url=http://10.0.0.1:6385,http://10.0.0.2:6385 ipa-agent-token="tok en" ipa-listen-port=9998 ipa-insecure=1 ipa-debug=1 BOOTIF=01-52-54-00-AB-CD-EF quiet\n',
    });
    assert.deepEqual(c.apiUrls, ["http://10.0.0.1:6385", "http://10.0.0.2:6385"]);
    assert.equal(c.agentToken, "tok en");
    assert.equal(c.listenPort, 9998);
    assert.equal(c.insecure, true);
    assert.equal(c.logLevel, "debug");
    assert.equal(c.bootInterface, "52:54:00:ab:cd:ef");
    assert.equal(parseKernelCmdline("a b=1").get("a"), "");
  });

  it("applies precedence: file < kernel < environment < flags", () => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-config-"));
    const file = join(dir, "c.json");
    writeFileSync(file, JSON.stringify({ listenPort: 1001, listenHost: "127.0.0.2", resultHistory: 5, version: "file" }));
    const c = loadConfig({
      file,
      kernelCmdline: "ipa-listen-port=1002 ipa-listen-host=127.0.0.3",
      env: { IRONBUS_LISTEN_PORT: "1003", IRONBUS_VERSION: "env" },
      flags: { "listen-port": "1004" },
    });
    assert.equal(c.listenPort, 1004);
    assert.equal(c.version, "env");
    assert.equal(c.listenHost, "127.0.0.3");
    assert.equal(c.resultHistory, 5);
  });

  it("names the bad key when a value does not parse", () => {
    assert.throws(() => loadConfig({ env: { IRONBUS_LISTEN_PORT: "ninety" } }), (e: unknown) => invalid(e) && /listenPort must be a number/.test((e as Error).message));
    assert.throws(() => loadConfig({ flags: { "allow-destructive": "maybe" } }), invalid);
    assert.throws(() => loadConfig({ env: { IRONBUS_LISTEN_PORT: "70000" } }), (e: unknown) => invalid(e) && /listenPort/.test((e as Error).message));
    assert.throws(() => parseConfig({ noSuchKey: 1 }), invalid);
    const dir = mkdtempSync(join(tmpdir(), "ironbus-config-"));
    writeFileSync(join(dir, "bad.json"), "{nope");
    assert.throws(() => loadConfig({ file: join(dir, "bad.json") }), invalid);
    writeFileSync(join(dir, "arr.json"), "[]");
    assert.throws(() => loadConfig({ file: join(dir, "arr.json") }), invalid);
    assert.throws(() => loadConfig({ file: join(dir, "missing.json") }), invalid);
  });

  it("is documented key by key in docs/configuration.md", () => {
    const doc = readFileSync(new URL("../docs/configuration.md", import.meta.url), "utf8");
    for (const key of CONFIG_KEYS) {
      assert.ok(doc.includes(`| \`${key}\` | \`--${flagName(key)}\` | \`${envName(key)}\` |`), `docs/configuration.md lacks ${key}`);
    }
    for (const k of Object.keys(KERNEL_KEYS)) assert.ok(doc.includes(`\`${k}\``), `docs/configuration.md lacks kernel key ${k}`);
  });
});
