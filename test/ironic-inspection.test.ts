/**
 * Inspection: the payload compared field by field with what IPA posted (ipa-samples/
 * introspection-data-posted.json), the collectors on a fixture /sys and on this machine, the retry
 * policy in virtual time, and how the answer feeds lookup.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { ManualClock } from "../core/clock.js";
import { parseConfig, type ConfigInput } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { IronicClient } from "../ironic/client.js";
import {
  collectNumaTopology,
  collectPciDevices,
  type CollectorDeps,
  failureText,
  guessRootDisk,
  parseDmidecode,
  parseNodeMemTotal,
  runCollectors,
} from "../ironic/collectors.js";
import { inspect, inspectionRetryMs, inspectionTarget, postInspectionData } from "../ironic/inspection.js";
import { connectToIronic } from "../ironic/link.js";
import type { CommandRunner } from "../utilities/exec.js";
import { HostFs } from "../utilities/inventory/sysfs.js";
import { collectSystemLogs, parseTar } from "../utilities/logs/index.js";
import { FAKE_NODE_UUID, FakeIronic, fakeIronics, refusedUrl } from "./helpers/fake-ironic.js";
import { requireSamples } from "./helpers/samples.js";

const MAC = "02:fc:00:00:00:01";
const log = silentLogger();

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => {
  assert.ok(typeof v === "object" && v !== null && !Array.isArray(v), `expected an object, got ${JSON.stringify(v)}`);
  return v as Obj;
};
const arr = (v: unknown): unknown[] => {
  assert.ok(Array.isArray(v), `expected an array, got ${JSON.stringify(v)}`);
  return v;
};

const sample = obj(obj(JSON.parse(readFileSync(join(requireSamples(), "introspection-data-posted.json"), "utf8")))["body"]);

const fake = fakeIronics([MAC]);

function write(root: string, path: string, content: string): void {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, content);
}

/** A /sys with two PCI devices (and a broken one), one NUMA node with three threads on two cores, one NIC. */
function fixtureSys(): string {
  const root = mkdtempSync(join(tmpdir(), "ironbus-inspect-"));
  const pci = (bus: string, vendor: string, device: string, cls: string, revision?: string): void => {
    write(root, `sys/bus/pci/devices/${bus}/vendor`, `${vendor}\n`);
    write(root, `sys/bus/pci/devices/${bus}/device`, `${device}\n`);
    write(root, `sys/bus/pci/devices/${bus}/class`, `${cls}\n`);
    if (revision !== undefined) write(root, `sys/bus/pci/devices/${bus}/revision`, `${revision}\n`);
  };
  pci("0000:00:00.0", "0x8086", "0x0d57", "0x060000", "0x00");
  pci("0000:00:03.0", "0x1af4", "0x1041", "0x020000");
  write(root, "sys/bus/pci/devices/0000:00:09.0/vendor", "0x1234\n"); // no device/class: skipped
  write(root, "sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:        6645964 kB\nNode 0 MemFree:  100 kB\n");
  for (const [cpu, core] of [
    [0, 0],
    [1, 1],
    [2, 0],
  ] as const) {
    write(root, `sys/devices/system/node/node0/cpu${cpu}/topology/core_id`, `${core}\n`);
  }
  mkdirSync(join(root, "sys/devices/system/node/node0/memory0"), { recursive: true });
  write(root, "sys/devices/system/node/possible", "0\n");
  write(root, "sys/class/net/eth0/device/numa_node", "0\n");
  mkdirSync(join(root, "sys/class/net/lo"), { recursive: true });
  write(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz\n");
  return root;
}

/** A runner that knows no tool, so the log bundle stays small and quick. */
const noTools: CommandRunner = (cmd) => Promise.reject(Object.assign(new Error(`${cmd}: command not found`), { code: "ENOENT" }));

function deps(sysRoot: string, extra: Partial<CollectorDeps> = {}): CollectorDeps {
  return {
    inventory: () => Promise.resolve(sample["inventory"]),
    managers: () => [{ name: "generic_hardware_manager", version: "1.1" }],
    systemLogs: (signal) => collectSystemLogs({ run: noTools, sysRoot, ...(signal === undefined ? {} : { signal }) }),
    run: noTools,
    log,
    sysRoot,
    ...extra,
  };
}


describe("inspection payload: IPA's shape", () => {
  it("posts the same keys, in the same order and shapes, as IPA's default,logs,pci-devices,numa-topology", async () => {
    const f = await fake();
    const root = fixtureSys();
    const client = new IronicClient({ apiUrls: [f.url], log });
    const collectors = ["default", "logs", "pci-devices", "numa-topology"];
    assert.deepEqual(obj(sample["configuration"])["collectors"], collectors);
    const answer = await inspect({
      target: { url: `${f.url}/inspector/v1/continue`, headers: {}, kind: "callback" },
      collectors,
      deps: deps(root),
      sender: client,
      clock: new ManualClock(),
      log,
    });
    assert.deepEqual(answer, { kind: "uuid", nodeUuid: FAKE_NODE_UUID });
    const [post] = f.received.filter((r) => r.path === "/inspector/v1/continue");
    assert.equal(post?.headers["content-type"], "application/json");
    const posted = obj(f.inspections[0]);

    assert.deepEqual(Object.keys(posted), Object.keys(sample));
    assert.deepEqual(posted["inventory"], sample["inventory"]);
    assert.deepEqual(posted["root_disk"], sample["root_disk"]);
    assert.equal(posted["boot_interface"], sample["boot_interface"]);
    assert.deepEqual(posted["configuration"], sample["configuration"]);
    assert.equal(posted["error"], null);
    assert.equal(sample["error"], null);

    // logs: base64 of a gzipped tar, as IPA sends it.
    const logs = posted["logs"];
    assert.equal(typeof logs, "string");
    assert.equal(typeof sample["logs"], "string");
    const members = parseTar(gunzipSync(Buffer.from(String(logs), "base64")));
    assert.ok(members.some((m) => m.name === "cmdline"));

    // pci_devices: every entry has IPA's five keys, nothing else.
    const samplePci = arr(sample["pci_devices"]).map(obj);
    const pci = arr(posted["pci_devices"]).map(obj);
    for (const d of pci) assert.deepEqual(Object.keys(d).sort(), Object.keys(samplePci[0] ?? {}).sort());
    assert.deepEqual(pci, [
      { vendor_id: "8086", product_id: "0d57", class: "060000", revision: "00", bus: "0000:00:00.0" },
      { vendor_id: "1af4", product_id: "1041", class: "020000", revision: null, bus: "0000:00:03.0" },
    ]);
    assert.ok(samplePci.some((d) => d["vendor_id"] === "8086" && d["class"] === "060000"));

    // numa_topology: ram, cpus, nics with IPA's keys.
    const sampleNuma = obj(sample["numa_topology"]);
    const numa = obj(posted["numa_topology"]);
    assert.deepEqual(Object.keys(numa).sort(), Object.keys(sampleNuma).sort());
    assert.deepEqual(numa["ram"], [{ numa_node: 0, size_kb: 6645964 }]);
    assert.deepEqual(numa["ram"], sampleNuma["ram"]);
    const cpus = arr(numa["cpus"]).map(obj);
    for (const c of cpus) assert.deepEqual(Object.keys(c).sort(), Object.keys(obj(arr(sampleNuma["cpus"])[0])).sort());
    assert.deepEqual(cpus, [
      { cpu: 0, numa_node: 0, thread_siblings: [0, 2] },
      { cpu: 1, numa_node: 0, thread_siblings: [1] },
    ]);
    assert.deepEqual(numa["nics"], [{ name: "eth0", numa_node: 0 }]);
  });

  it("default alone gives inventory, root_disk, boot_interface, configuration and error", async () => {
    const { data, failures } = await runCollectors(["default"], deps(fixtureSys()));
    assert.deepEqual(Object.keys(data), ["inventory", "root_disk", "boot_interface", "configuration"]);
    assert.deepEqual(failures, []);
    assert.deepEqual(obj(data["configuration"])["collectors"], ["default"]);
  });

  it("guesses the root disk as IPA does: the smallest of at least 4 GiB", () => {
    const gib = 1024 ** 3;
    assert.equal(guessRootDisk([{ name: "/dev/a", size: 100 * gib }, { name: "/dev/b", size: 3 * gib }, { name: "/dev/c", size: 8 * gib }])?.name, "/dev/c");
    assert.equal(guessRootDisk([{ name: "/dev/b", size: 3 * gib }]), undefined);
  });

  it("leaves root_disk out when no disk is big enough, and reports a broken inventory in error", async () => {
    const small = await runCollectors(["default"], deps(fixtureSys(), { inventory: () => Promise.resolve({ ...obj(sample["inventory"]), disks: [] }) }));
    assert.equal("root_disk" in small.data, false);
    assert.equal(small.data["boot_interface"], null);
    const broken = await runCollectors(["default"], deps(fixtureSys(), { inventory: () => Promise.resolve({ nothing: true }) }));
    assert.equal(broken.failures.length, 1);
    assert.match(failureText(broken.failures) ?? "", /^The following errors were encountered:\n\* the inventory lacks disks or boot/);
  });

  it("reports unknown collectors in error, skips lldp with a log line only", async () => {
    const { data, failures } = await runCollectors(["extra-hardware", "lldp"], deps(fixtureSys()));
    assert.deepEqual(data, {});
    assert.equal(failures.length, 1);
    assert.match(failures[0] ?? "", /collector extra-hardware is not available/);
  });

  it("collects dmi with dmidecode when it works, and leaves it out (no error) when it does not", async () => {
    const text = [
      "# dmidecode 3.4",
      "Getting SMBIOS data from sysfs.",
      "SMBIOS 2.8 present.",
      "",
      "Handle 0x0000, DMI type 0, 24 bytes",
      "BIOS Information",
      "\tVendor: SeaBIOS",
      "\tVersion: 1.16.2",
      "\tCharacteristics:",
      "\t\tBIOS characteristics not supported",
      "\t\tTargeted content distribution is supported",
      "\tBIOS Revision: 0.0",
      "",
      "Handle 0x0400, DMI type 4, 42 bytes",
      "Processor Information",
      "\tSocket Designation: CPU 0",
      "\tVersion: pc-q35",
      "",
      "Handle 0x1000, DMI type 16, 23 bytes",
      "Physical Memory Array",
      "\tLocation: Other",
      "\tNumber Of Devices: 1",
      "",
      "Handle 0x1001, DMI type 16, 23 bytes",
      "Physical Memory Array",
      "\tNumber Of Devices: 2",
      "",
      "Handle 0x1100, DMI type 17, 40 bytes",
      "Memory Device",
      "\tSize: 4 GB",
      "",
    ].join("\n");
    const dmi = parseDmidecode(text);
    assert.deepEqual(dmi.bios, {
      Handle: "Handle 0x0000, DMI type 0, 24 bytes",
      Vendor: "SeaBIOS",
      Version: "1.16.2",
      Characteristics: ["BIOS characteristics not supported", "Targeted content distribution is supported"],
      "BIOS Revision": "0.0",
    });
    assert.deepEqual(dmi.cpu, [{ Handle: "Handle 0x0400, DMI type 4, 42 bytes", "Socket Designation": "CPU 0", Version: "pc-q35" }]);
    assert.deepEqual(dmi.memory, { Location: "Other", "Number Of Devices": 3, devices: [{ Handle: "Handle 0x1100, DMI type 17, 40 bytes", Size: "4 GB" }] });

    const calls: string[][] = [];
    const dmidecode: CommandRunner = (cmd, args) => {
      calls.push([cmd, ...args]);
      return Promise.resolve({ stdout: text, stderr: "", code: 0 });
    };
    const ok = await runCollectors(["dmi-decode"], deps(fixtureSys(), { run: dmidecode }));
    assert.deepEqual(calls, [["dmidecode", "-t", "bios", "-t", "processor", "-t", "memory"]]);
    assert.deepEqual(ok.data["dmi"], dmi);
    const missing = await runCollectors(["dmi-decode"], deps(fixtureSys()));
    assert.deepEqual(missing, { data: {}, failures: [] });
    const failing = await runCollectors(["dmi-decode"], deps(fixtureSys(), { run: () => Promise.resolve({ stdout: "", stderr: "/dev/mem: No such file", code: 1 }) }));
    assert.deepEqual(failing, { data: {}, failures: [] });
  });

  it("reads NUMA memory in kB, MB or GB", () => {
    assert.equal(parseNodeMemTotal("Node 0 MemTotal:  6645964 kB"), 6645964);
    assert.equal(parseNodeMemTotal("Node 1 MemTotal: 2 MB"), 2048);
    assert.equal(parseNodeMemTotal("Node 1 MemTotal: 1 GB"), 1048576);
    assert.equal(parseNodeMemTotal("nothing"), undefined);
  });

  it("works on this machine's /sys", async (t) => {
    const fs = new HostFs("/");
    if (!(await fs.isDir("/sys/bus/pci/devices"))) {
      t.skip("no /sys/bus/pci/devices here");
      return;
    }
    const pci = await collectPciDevices(fs, log);
    assert.ok(Array.isArray(pci) && pci.length > 0);
    for (const d of pci) assert.match(`${d.vendor_id}:${d.product_id}:${d.class}`, /^[0-9a-f]{4}:[0-9a-f]{4}:[0-9a-f]{6}$/);
    const numa = await collectNumaTopology(fs, log);
    if (numa !== undefined) {
      assert.ok(numa.ram.length > 0);
      assert.ok(numa.cpus.length > 0);
    }
  });
});

describe("inspection: posting and retries (virtual time)", () => {
  const target = (url: string) => ({ url: `${url}/inspector/v1/continue`, headers: {}, kind: "callback" as const });

  it("waits 5, 6, 12, 24 s between its 5 tries", () => {
    assert.deepEqual([1, 2, 3, 4].map(inspectionRetryMs), [5000, 6000, 12000, 24000]);
    assert.equal(inspectionRetryMs(6), 30000);
  });

  it("retries on 5xx and 409, and every post carries error", async () => {
    const f = await fake();
    f.script("/inspector/v1/continue", [503, 409, 500]);
    const clock = new ManualClock();
    const waits: number[] = [];
    const data = { inventory: {}, error: null };
    const answer = await clock.drive(postInspectionData({ sender: new IronicClient({ apiUrls: [f.url], log }), clock, log, target: target(f.url), data, onRetry: (i) => waits.push(i.waitMs) }));
    assert.deepEqual(answer, { kind: "uuid", nodeUuid: FAKE_NODE_UUID });
    assert.deepEqual(waits, [5000, 6000, 12000]);
    const posts = f.received.filter((r) => r.path === "/inspector/v1/continue");
    assert.deepEqual(
      posts.map((p) => p.status),
      [503, 409, 500, 200],
    );
    for (const p of posts) assert.ok("error" in obj(p.body));
  });

  it("fails with INSPECTION_FAILED after 5 tries; inspect() logs it and goes on", async () => {
    const f = await fake();
    f.script("/inspector/v1/continue", [500, 500, 500, 500, 500, 500, 500, 500, 500, 500]);
    const clock = new ManualClock();
    const sender = new IronicClient({ apiUrls: [f.url], log });
    await assert.rejects(clock.drive(postInspectionData({ sender, clock, log, target: target(f.url), data: { error: null } })), (e: unknown) => AgentError.is(e, "INSPECTION_FAILED") && /5 times/.test(e.message));
    assert.deepEqual(
      clock.sleeps.map((s) => s.ms),
      [5000, 6000, 12000, 24000],
    );
    const answer = await clock.drive(inspect({ target: target(f.url), collectors: ["default"], deps: deps(fixtureSys()), sender, clock, log }));
    assert.equal(answer, undefined);
  });

  it("retries connection errors too, and does not retry another 4xx", async () => {
    const clock = new ManualClock();
    const dead = await refusedUrl();
    const sender = new IronicClient({ apiUrls: [dead], log });
    await assert.rejects(clock.drive(postInspectionData({ sender, clock, log, target: target(dead), data: { error: null } })), /ECONNREFUSED/);
    assert.equal(clock.sleeps.length, 4);
    const f = await fake();
    f.script("/inspector/v1/continue", [400]);
    const answer = await postInspectionData({ sender: new IronicClient({ apiUrls: [f.url], log }), clock, log, target: target(f.url), data: { error: null } });
    assert.equal(answer, undefined);
    assert.equal(f.received.length, 1);
  });
});

describe("inspection: where it goes and what its answer does", () => {
  const base = (f: FakeIronic, extra: Partial<ConfigInput>) =>
    parseConfig({ apiUrls: [f.url], advertiseHost: "127.0.0.1", nicWaitTimeoutS: 0, lookupTimeoutS: 5, ...extra });
  const connect = (f: FakeIronic, extra: Partial<ConfigInput>) =>
    connectToIronic({ config: base(f, extra), log, run: noTools, macs: () => Promise.resolve([MAC]), collectors: deps(fixtureSys()) });

  it("picks the callback URL, else continue_inspection at 1.84+ when collectors are set", () => {
    const v = (minor: number) => ({ major: 1, minor });
    assert.deepEqual(inspectionTarget("http://i:5050/v1/continue", undefined, "http://a", v(82)), { url: "http://i:5050/v1/continue", headers: {}, kind: "callback" });
    assert.deepEqual(inspectionTarget(undefined, ["default"], "http://a:6385/", v(84)), {
      url: "http://a:6385/v1/continue_inspection",
      headers: { "X-OpenStack-Ironic-API-Version": "1.84" },
      kind: "continue_inspection",
    });
    assert.equal(inspectionTarget(undefined, ["default"], "http://a", v(83)), undefined);
    assert.equal(inspectionTarget(undefined, undefined, "http://a", v(90)), undefined);
  });

  it("inspects before lookup, and passes ironic-inspector's uuid on as node_uuid", async () => {
    const f = await fake();
    const session = await connect(f, { inspectionCallbackUrl: `${f.url}/inspector/v1/continue` });
    const paths = f.received.map((r) => r.path).filter((p) => p !== "/");
    assert.deepEqual(paths, ["/inspector/v1/continue", "/v1/lookup"]);
    assert.equal(f.lookups()[0]?.query["node_uuid"], FAKE_NODE_UUID);
    assert.equal(session.lookup.nodeUuid, FAKE_NODE_UUID);
    assert.deepEqual(Object.keys(obj(f.inspections[0])), ["inventory", "root_disk", "boot_interface", "configuration", "error"]);
  });

  it("with only collectors set and Ironic 1.84+, posts to continue_inspection and takes its lookup-shaped answer as the lookup", async () => {
    const f = await fake({ version: "1.90" });
    const session = await connect(f, { inspectionCollectors: ["default", "pci-devices"] });
    const post = f.received.find((r) => r.path === "/v1/continue_inspection");
    assert.equal(post?.headers["x-openstack-ironic-api-version"], "1.84");
    assert.equal(f.lookups().length, 0, "no second lookup: it would get the token masked");
    assert.deepEqual(session.token, { kind: "use", token: f.token, source: "lookup" });
    assert.deepEqual(Object.keys(obj(f.inspections[0])), ["inventory", "root_disk", "boot_interface", "configuration", "pci_devices", "error"]);
  });

  it("does not inspect with collectors alone below 1.84, nor without collectors and callback", async () => {
    const old = await fake({ version: "1.82" });
    await connect(old, { inspectionCollectors: ["default"] });
    assert.equal(old.inspections.length, 0);
    assert.equal(old.lookups().length, 1);
    const none = await fake({ version: "1.90" });
    await connect(none, {});
    assert.equal(none.inspections.length, 0);
  });

  it("goes on with lookup when the inspection post is refused", async () => {
    const f = await fake();
    f.script("/inspector/v1/continue", [404]);
    const session = await connect(f, { inspectionCallbackUrl: `${f.url}/inspector/v1/continue` });
    assert.equal(session.lookup.nodeUuid, FAKE_NODE_UUID);
    assert.equal(f.lookups()[0]?.query["node_uuid"], undefined);
  });
});
