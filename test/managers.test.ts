import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { Router } from "../router/router.js";
import { execRunner } from "../utilities/exec.js";
import { flowExtension } from "../utilities/extensions/flow.js";
import { stepExtension } from "../utilities/extensions/steps.js";
import { genericHardwareManager } from "../utilities/generic.js";
import { type HardwareManager, incompatible, loadVendorManagers, ManagerRegistry, SupportLevel } from "../utilities/managers.js";

const log = silentLogger();
const fixtures = new URL("./fixtures/", import.meta.url).href;

function manager(name: string, support: number, extra: Partial<HardwareManager> = {}): HardwareManager {
  return { name, version: "1.0", evaluateHardwareSupport: () => support, methods: {}, ...extra };
}

function routerFor(registry: ManagerRegistry): Router {
  return new Router({
    extensions: [stepExtension("clean", registry), stepExtension("deploy", registry), stepExtension("service", registry), flowExtension()],
    log,
    allowDestructive: false,
    resultHistory: 100,
    idHistory: 100,
    defaultTimeoutMs: 10_000,
  });
}

describe("hardware managers", () => {
  it("drops NONE, orders by support then name, and initialises each once", async () => {
    const initialised: string[] = [];
    const registry = await ManagerRegistry.create(
      [
        manager("b_generic", SupportLevel.GENERIC, { initialize: () => void initialised.push("b") }),
        manager("none", SupportLevel.NONE, { initialize: () => void initialised.push("none") }),
        manager("a_generic", SupportLevel.GENERIC),
        manager("vendor", SupportLevel.SERVICE_PROVIDER, { initialize: async () => void initialised.push("vendor") }),
      ],
      { log, allowDestructive: false },
    );
    assert.deepEqual(registry.managers().map((m) => m.name), ["vendor", "a_generic", "b_generic"]);
    assert.deepEqual(initialised, ["vendor", "b"]);
    assert.deepEqual(registry.versions(), { vendor: "1.0", a_generic: "1.0", b_generic: "1.0" });
  });

  it("dispatches to the best manager that handles the method; incompatible passes it on", async () => {
    const calls: string[] = [];
    const registry = await ManagerRegistry.create(
      [
        manager("generic", 1, { methods: { m: { run: () => (calls.push("generic"), "g") } } }),
        manager("mainline", 2, {
          methods: {
            m: {
              run: () => {
                calls.push("mainline");
                throw incompatible("not this NIC");
              },
            },
          },
        }),
        manager("vendor", 3, { methods: { other: { run: () => "o" } } }),
      ],
      { log, allowDestructive: false },
    );
    const ctx = { id: "x", name: "t.x", signal: new AbortController().signal, log, progress: () => undefined, invoke: async () => null };
    assert.equal(await registry.dispatch("m", { node: null, ports: [], args: {}, ctx }), "g");
    assert.deepEqual(calls, ["mainline", "generic"]);
    await assert.rejects(registry.dispatch("absent", { node: null, ports: [], args: {}, ctx }), (e: unknown) => AgentError.is(e, "HARDWARE_METHOD_NOT_FOUND"));
    assert.deepEqual(await registry.dispatchAll("m", { node: null, ports: [], args: {}, ctx }), { generic: "g" });
    await assert.rejects(registry.dispatchAll("absent", { node: null, ports: [], args: {}, ctx }), (e: unknown) => AgentError.is(e, "HARDWARE_METHOD_NOT_FOUND"));
  });

  it("propagates real failures instead of trying the next manager", async () => {
    const registry = await ManagerRegistry.create(
      [
        manager("generic", 1, { methods: { m: { run: () => "g" } } }),
        manager("vendor", 3, {
          methods: {
            m: {
              run: () => {
                throw new Error("firmware flash failed");
              },
            },
          },
        }),
      ],
      { log, allowDestructive: false },
    );
    const ctx = { id: "x", name: "t.x", signal: new AbortController().signal, log, progress: () => undefined, invoke: async () => null };
    await assert.rejects(registry.dispatch("m", { node: null, ports: [], args: {}, ctx }), /firmware flash failed/);
  });

  it("refuses destructive manager methods unless the configuration allows them", async () => {
    const make = (allow: boolean) =>
      ManagerRegistry.create([manager("g", 1, { methods: { wipe: { destructive: true, run: () => "wiped" } } })], { log, allowDestructive: allow });
    const ctx = { id: "x", name: "t.x", signal: new AbortController().signal, log, progress: () => undefined, invoke: async () => null };
    await assert.rejects((await make(false)).dispatch("wipe", { node: null, ports: [], args: {}, ctx }), (e: unknown) => AgentError.is(e, "DESTRUCTIVE_NOT_ALLOWED"));
    assert.equal(await (await make(true)).dispatch("wipe", { node: null, ports: [], args: {}, ctx }), "wiped");
  });

  it("deduplicates steps of the same name: support, then priority, then name", async () => {
    const step = (name: string, priority: number) => ({ step: name, priority, interface: "deploy", reboot_requested: false });
    const registry = await ManagerRegistry.create(
      [
        manager("aaa", 1, { steps: { clean: [step("s1", 50), step("s2", 10), step("s3", 5)] } }),
        manager("bbb", 1, { steps: { clean: [step("s2", 20), step("s3", 5)] } }),
        manager("vendor", 3, { className: "Vendor", steps: { clean: [step("s1", 1)] } }),
      ],
      { log, allowDestructive: false },
    );
    assert.deepEqual(registry.steps("clean"), { Vendor: [step("s1", 1)], aaa: [step("s3", 5)], bbb: [step("s2", 20)] });
    assert.deepEqual(registry.steps("deploy"), { Vendor: [], aaa: [], bbb: [] });
  });

  it("loads vendor managers from an npm package by name, and refuses broken or missing ones", async () => {
    const found = await loadVendorManagers(["ironbus-hwm-example"], log, fixtures);
    assert.equal(found[0]?.name, "example_vendor_manager");
    await assert.rejects(loadVendorManagers(["ironbus-hwm-broken"], log, fixtures), (e: unknown) => AgentError.is(e, "PLUGIN_INVALID") && /evaluateHardwareSupport/.test((e as Error).message));
    await assert.rejects(loadVendorManagers(["ironbus-no-such-package"], log, fixtures), (e: unknown) => AgentError.is(e, "PLUGIN_INVALID") && /cannot load/.test((e as Error).message));
  });

  it("runs a vendor package's step through clean.execute_clean_step, and the vendor wins a shared method", async () => {
    const pstore = mkdtempSync(join(tmpdir(), "ironbus-pstore-"));
    const vendor = await loadVendorManagers(["ironbus-hwm-example"], log, fixtures);
    const registry = await ManagerRegistry.create([genericHardwareManager({ run: execRunner, pstoreDir: pstore }), ...vendor], { log, allowDestructive: false });
    const router = routerFor(registry);
    const steps = await router.submit({ name: "clean.get_clean_steps", params: { node: {}, ports: [] } });
    assert.deepEqual(Object.keys((steps.result as { clean_steps: object }).clean_steps), ["ExampleVendorManager", "GenericHardwareManager"]);
    const versions = registry.versions();
    assert.deepEqual(versions, { example_vendor_manager: "3.1", generic_hardware_manager: "1.2" });
    const rec = await router.submit({
      name: "clean.execute_clean_step",
      params: { step: { step: "vendor_firmware_check", interface: "deploy", priority: 5, args: { level: 2 } }, node: {}, ports: [], clean_version: versions },
      wait: true,
    });
    assert.deepEqual(rec.result, {
      clean_result: { checked: true, args: { level: 2 } },
      clean_step: { step: "vendor_firmware_check", interface: "deploy", priority: 5, args: { level: 2 } },
    });
    // erase_pstore: the vendor (support 3) implements it too, so dispatch goes there first.
    writeFileSync(join(pstore, "dmesg-ramoops-0"), "oops");
    const erase = await router.submit({ name: "clean.execute_clean_step", params: { step: { step: "erase_pstore" }, node: {}, ports: [] }, wait: true });
    assert.deepEqual(erase.result, { clean_result: "vendor pstore", clean_step: { step: "erase_pstore" } });
    assert.ok(existsSync(join(pstore, "dmesg-ramoops-0")));
  });

  it("erase_pstore removes the pstore records (generic manager, real files)", async () => {
    const pstore = mkdtempSync(join(tmpdir(), "ironbus-pstore-"));
    for (const f of ["dmesg-ramoops-0", "dmesg-ramoops-1", "console-ramoops-0"]) writeFileSync(join(pstore, f), "crash");
    const registry = await ManagerRegistry.create([genericHardwareManager({ run: execRunner, pstoreDir: pstore })], { log, allowDestructive: false });
    const rec = await routerFor(registry).submit({ name: "clean.execute_clean_step", params: { step: { step: "erase_pstore", interface: "deploy", priority: 0 }, node: {}, ports: [], clean_version: null }, wait: true });
    assert.equal(rec.status, "SUCCEEDED", JSON.stringify(rec.error));
    assert.deepEqual(readdirSync(pstore), []);
  });

  it("checks step versions for every step kind and refuses steps that are not of that kind", async () => {
    const registry = await ManagerRegistry.create([genericHardwareManager({ run: execRunner, pstoreDir: mkdtempSync(join(tmpdir(), "p-")) })], { log, allowDestructive: false });
    const router = routerFor(registry);
    for (const kind of ["clean", "deploy", "service"]) {
      const rec = await router.submit({
        name: `${kind}.execute_${kind}_step`,
        params: { step: { step: "erase_pstore" }, node: {}, ports: [], [`${kind}_version`]: { generic_hardware_manager: "0.9" } },
        wait: true,
      });
      assert.equal(rec.status, "CLEAN_VERSION_MISMATCH", kind);
      assert.equal(rec.error?.details, "Current versions: {'generic_hardware_manager': '1.2'}, versions used by ironic: {'generic_hardware_manager': '0.9'}");
    }
    // erase_pstore is a clean step only: deploy refuses it as an unknown method, not runs it.
    const deploy = await router.submit({ name: "deploy.execute_deploy_step", params: { step: { step: "erase_pstore" }, node: {}, ports: [] }, wait: true });
    assert.equal(deploy.error?.type, "HardwareManagerMethodNotFound");
    // A version key of another kind is a wrong argument.
    const wrongKey = await router.submit({ name: "deploy.execute_deploy_step", params: { step: { step: "x" }, node: {}, ports: [], clean_version: {} }, wait: true });
    assert.equal(wrongKey.status, "FAILED");
    assert.equal(wrongKey.error?.type, "CommandExecutionError");
  });

  it("runs a flow in order and stops at the first failure", async () => {
    const pstore = mkdtempSync(join(tmpdir(), "ironbus-pstore-"));
    writeFileSync(join(pstore, "a"), "x");
    const registry = await ManagerRegistry.create([genericHardwareManager({ run: execRunner, pstoreDir: pstore })], { log, allowDestructive: false });
    const router = routerFor(registry);
    const ok = await router.submit({
      name: "flow.start_flow",
      params: { flow: [{ "clean.get_clean_steps": { node: {}, ports: [] } }, { "clean.execute_clean_step": { step: { step: "erase_pstore" }, node: {}, ports: [] } }] },
      wait: true,
    });
    assert.equal(ok.status, "SUCCEEDED");
    assert.equal(ok.result, null);
    assert.deepEqual(readdirSync(pstore), []);
    const bad = await router.submit({ name: "flow.start_flow", params: { flow: [{ "clean.get_clean_steps": {} }, { "nosuch.cmd": {} }] }, wait: true });
    assert.equal(bad.status, "FAILED");
    // The first item's own failure (a sync command's wrong arguments) is the flow's failure.
    assert.equal(bad.error?.type, "TypeError", JSON.stringify(bad.error));
    assert.match(bad.error?.details ?? "", /^clean\.get_clean_steps\(\)/);
    const unknown = await router.submit({ name: "flow.start_flow", params: { flow: [{ "nosuch.cmd": {} }] }, wait: true });
    assert.equal(unknown.error?.type, "RequestedObjectNotFoundError");
  });
});
