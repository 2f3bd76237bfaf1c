/**
 * Start-up before lookup: the bounded wait for a network interface, and the advertise address found
 * with `ip route get` (IPA's rules), both in virtual time; and the whole connectToIronic sequence
 * against a fake Ironic with the real `ip` tool when it is there.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import type { NetworkInterfaceInfo } from "node:os";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { ManualClock } from "../core/clock.js";
import { parseConfig } from "../core/config.js";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { callbackUrl, findAdvertiseAddress, ironicAddresses, isLinkLocal, parseRouteSource } from "../ironic/advertise.js";
import type { CollectorDeps } from "../ironic/collectors.js";
import { connectToIronic } from "../ironic/link.js";
import { waitForNic } from "../ironic/nic.js";
import { type CommandRunner, execRunner, hasTool } from "../utilities/exec.js";
import { FakeIronic } from "./helpers/fake-ironic.js";

const log = silentLogger();
const MAC = "52:54:00:12:34:56";

function write(root: string, path: string, content: string): void {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, content);
}

const loopbackOnly = (): NodeJS.Dict<NetworkInterfaceInfo[]> => ({
  lo: [{ address: "127.0.0.1", netmask: "255.0.0.0", family: "IPv4", mac: "00:00:00:00:00:00", internal: true, cidr: "127.0.0.1/8" }],
});

describe("waiting for a network interface (virtual time)", () => {
  it("waits, checking every second, until an interface has a MAC and carrier", async () => {
    const root = mkdtempSync(join(tmpdir(), "ironbus-nic-"));
    write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
    write(root, "sys/class/net/lo/carrier", "1\n");
    write(root, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
    write(root, "sys/class/net/eth0/carrier", "0\n");
    write(root, "sys/class/net/ifb0/address", "6a:72:21:ea:99:ca\n"); // no carrier file: down
    const clock = new ManualClock();
    const t0 = clock.now();
    const work = waitForNic({ clock, log, timeoutS: 60, sysRoot: root, networkInterfaces: loopbackOnly });
    for (let i = 0; i < 3; i++) {
      await clock.waitForSleepers(1);
      await clock.advanceToNext();
    }
    await clock.waitForSleepers(1); // the fourth check (at 3 s) found nothing either
    write(root, "sys/class/net/eth0/carrier", "1\n");
    const nic = await clock.drive(work);
    assert.deepEqual(nic, { name: "eth0", why: "carrier", detail: "52:54:00:12:34:56" });
    assert.equal(clock.now() - t0, 4_000);
    assert.ok(clock.sleeps.every((s) => s.ms === 1000));
  });

  it("takes an interface with an address even without carrier information", async () => {
    const root = mkdtempSync(join(tmpdir(), "ironbus-nic-"));
    const clock = new ManualClock();
    const nic = await waitForNic({
      clock,
      log,
      timeoutS: 60,
      sysRoot: root,
      networkInterfaces: () => ({ ...loopbackOnly(), ens3: [{ address: "192.0.2.7", netmask: "255.255.255.0", family: "IPv4", mac: "52:54:00:00:00:07", internal: false, cidr: "192.0.2.7/24" }] }),
    });
    assert.deepEqual(nic, { name: "ens3", why: "address", detail: "192.0.2.7" });
    assert.equal(clock.sleeps.length, 0);
  });

  it("gives up after the timeout without failing", async () => {
    const root = mkdtempSync(join(tmpdir(), "ironbus-nic-"));
    write(root, "sys/class/net/lo/carrier", "1\n");
    const clock = new ManualClock();
    const t0 = clock.now();
    const nic = await clock.drive(waitForNic({ clock, log, timeoutS: 60, sysRoot: root, networkInterfaces: loopbackOnly }));
    assert.equal(nic, undefined);
    assert.equal(clock.now() - t0, 60_000);
    assert.equal(clock.sleeps.length, 60);
  });

  it("finds this machine's interface at once when it has one", async (t) => {
    const clock = new ManualClock();
    const nic = await waitForNic({ clock, log, timeoutS: 0 });
    if (nic === undefined) t.skip("this machine has no non-loopback interface");
    else assert.notEqual(nic.name, "lo");
  });
});

describe("the advertise address (virtual time)", () => {
  it("parses ip route get, and never takes a link-local source", () => {
    assert.equal(parseRouteSource("10.0.0.1 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \n    cache \n"), "192.0.2.2");
    assert.equal(parseRouteSource("local 127.0.0.1 dev lo src 127.0.0.1 uid 0"), "127.0.0.1");
    assert.equal(parseRouteSource("fd00::1 from :: via fe80::1 dev eth0 proto ra src fd00::2 metric 100 pref medium"), "fd00::2");
    assert.equal(parseRouteSource("RTNETLINK answers: Network is unreachable"), undefined);
    assert.ok(isLinkLocal("169.254.3.4"));
    assert.ok(isLinkLocal("fe80::1"));
    assert.ok(!isLinkLocal("192.0.2.2"));
    assert.ok(!isLinkLocal("fd00::2"));
    assert.equal(callbackUrl("https", "fd00::2", 9999), "https://[fd00::2]:9999");
    assert.equal(callbackUrl("http", "192.0.2.2", 9999), "http://192.0.2.2:9999");
  });

  it("resolves the Ironic hosts, IPs as they are", async () => {
    const resolve = (host: string) => (host === "ironic.example" ? Promise.resolve(["192.0.2.10", "fd00::10"]) : Promise.reject(new Error("NXDOMAIN")));
    assert.deepEqual(await ironicAddresses(["http://ironic.example:6385", "http://[fd00::1]:6385/", "http://gone.example", "http://192.0.2.10:6385"], resolve, log), [
      "192.0.2.10",
      "fd00::10",
      "fd00::1",
    ]);
  });

  it("tries 6 times, 10 s apart, skipping link-local sources, until a route appears", async () => {
    const calls: string[] = [];
    let tries = 0;
    const run: CommandRunner = (cmd, args) => {
      calls.push([cmd, ...args].join(" "));
      const ip = args[2];
      if (ip === "192.0.2.10") tries += 1;
      if (tries < 4) return Promise.resolve({ stdout: "", stderr: "RTNETLINK answers: Network is unreachable", code: 2 });
      if (ip === "192.0.2.10") return Promise.resolve({ stdout: `${ip} dev eth0 src 169.254.7.7 uid 0\n`, stderr: "", code: 0 });
      return Promise.resolve({ stdout: `${ip ?? ""} via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0\n`, stderr: "", code: 0 });
    };
    const clock = new ManualClock();
    const t0 = clock.now();
    const address = await clock.drive(
      findAdvertiseAddress({ apiUrls: ["http://192.0.2.10:6385", "http://192.0.2.11:6385"], run, clock, log, attempts: 6, sleepS: 10 }),
    );
    assert.equal(address, "192.0.2.2");
    assert.equal(clock.now() - t0, 30_000, "three sleeps of 10 s");
    assert.deepEqual(calls.slice(-2), ["ip route get 192.0.2.10", "ip route get 192.0.2.11"]);
  });

  it("fails with ADVERTISE_ADDRESS_NOT_FOUND after its tries", async () => {
    const run: CommandRunner = () => Promise.resolve({ stdout: "", stderr: "RTNETLINK answers: Network is unreachable", code: 2 });
    const clock = new ManualClock();
    await assert.rejects(
      clock.drive(findAdvertiseAddress({ apiUrls: ["http://192.0.2.10:6385"], run, clock, log, attempts: 6, sleepS: 10 })),
      (e: unknown) => AgentError.is(e, "ADVERTISE_ADDRESS_NOT_FOUND") && /after 6 tries/.test(e.message) && /ipa-advertise-host/.test(e.message),
    );
    assert.deepEqual(
      clock.sleeps.map((s) => s.ms),
      [10_000, 10_000, 10_000, 10_000, 10_000],
    );
  });
});

describe("connectToIronic", () => {
  const fakes: FakeIronic[] = [];
  after(async () => {
    await Promise.all(fakes.map((f) => f.close()));
  });
  const noCollectors: CollectorDeps = { inventory: () => Promise.resolve({}), managers: () => [], systemLogs: () => Promise.resolve(""), run: execRunner, log };

  it("finds 127.0.0.1 with the real ip tool when Ironic is on loopback, then looks up", async (t) => {
    if (!(await hasTool("ip"))) {
      t.skip("no ip tool (iproute2)");
      return;
    }
    const f = await FakeIronic.start({ macs: [MAC] });
    fakes.push(f);
    const config = parseConfig({ apiUrls: [f.url], nicWaitTimeoutS: 0, lookupTimeoutS: 5 });
    const session = await connectToIronic({ config, log, run: execRunner, macs: () => Promise.resolve([MAC]), collectors: noCollectors });
    assert.equal(session.advertiseHost, "127.0.0.1");
    assert.equal(session.lookup.nodeUuid, f.nodeUuid);
    assert.deepEqual(session.apiVersion, { major: 1, minor: 82 });
    assert.equal(session.supportsAutoTls, true);
  });

  it("takes tls_min_version from lookup", async () => {
    const f = await FakeIronic.start({ macs: [MAC], tlsMinVersion: "1.3" });
    fakes.push(f);
    const config = parseConfig({ apiUrls: [f.url], advertiseHost: "127.0.0.1", nicWaitTimeoutS: 0 });
    const session = await connectToIronic({ config, log, run: execRunner, macs: () => Promise.resolve([MAC]), collectors: noCollectors });
    assert.equal(session.tlsMinVersion, "TLSv1.3");
  });

  it("refuses to start without an API URL", async () => {
    await assert.rejects(
      connectToIronic({ config: parseConfig({}), log, run: execRunner, macs: () => Promise.resolve([]), collectors: noCollectors }),
      (e: unknown) => AgentError.is(e, "CONFIG_INVALID") && /ipa-api-url/.test(e.message),
    );
  });
});
