/**
 * The image area's pieces on their own: image_info validation, checksums files, the HTTP client
 * (chunked bodies, redirects, TLS, proxies, timeouts, backpressure), the device writer on a file,
 * layouts, boot modes, configdrive decoding, format inspection, the install-device resolver.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { connect as netConnect, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, it, type TestContext } from "node:test";
import { gzipSync } from "node:zlib";
import { AgentError } from "../core/errors.js";
import { silentLogger } from "../core/log.js";
import { generateSelfSignedCertificate } from "../transports/rest/autotls.js";
import { parseChecksumsFile, resolveChecksum } from "../utilities/image/checksum.js";
import { httpGet, type GetOptions } from "../utilities/image/client.js";
import { loadConfigdrive } from "../utilities/image/configdrive.js";
import { bypassesProxy, ImageHttp } from "../utilities/image/http.js";
import { readImageInfo, validateImageInfo } from "../utilities/image/info.js";
import { inspectImage } from "../utilities/image/inspect.js";
import { bootModeOf, diskLabelOf, planLayout } from "../utilities/image/layout.js";
import { resolveImageOptions } from "../utilities/image/options.js";
import { ProgressReporter } from "../utilities/image/progress.js";
import { resolveTargetDevice } from "../utilities/image/target.js";
import { DeviceWriter } from "../utilities/image/writer.js";
import type { ProgressUpdate } from "../core/command.js";
import type { JsonObject } from "../core/envelope.js";

const MIB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const SHA = sha256(Buffer.from("x"));

function refusal(fn: () => void): string {
  try {
    fn();
  } catch (err) {
    assert.ok(AgentError.is(err, "INVALID_PARAMS"), String(err));
    return err.details;
  }
  assert.fail("expected INVALID_PARAMS");
}

describe("image_info validation (IPA's validator and our shape checks)", () => {
  const v = (info: JsonObject, md5Allowed = false): void => validateImageInfo(info, { md5Allowed });

  it("accepts what Ironic sends", () => {
    v({ id: "disk.img", urls: ["http://127.0.0.1:18080/disk.img"], disk_format: "raw", container_format: null, stream_raw_images: true, os_hash_algo: "sha256", os_hash_value: SHA, node_uuid: "u" });
    v({ id: "x", urls: ["https://h/x"], checksum: "https://h/SHA256SUMS" });
    v({ id: "x", urls: ["https://h/x"], checksum: SHA });
    v({ id: "x", urls: ["https://h/x"], checksum: "d41d8cd98f00b204e9800998ecf8427e" }, true);
    // an algorithm node:crypto lacks, with a usable checksum to fall back on
    v({ id: "x", urls: ["https://h/x"], os_hash_algo: "whirlpool-9", os_hash_value: "ab", checksum: SHA });
    v({ id: "x", urls: ["https://h/x"], os_hash_algo: "sha512", os_hash_value: createHash("sha512").update("x").digest("hex") });
    v({ id: "x", urls: ["https://h/x"], checksum: SHA, image_type: "partition", root_gb: 10 });
  });

  it("refuses with IPA's messages, and ours for bad shapes", () => {
    assert.equal(refusal(() => validateImageInfo(undefined, { md5Allowed: false })), "Image is missing 'id' field.");
    assert.equal(refusal(() => v({ id: "x", urls: "http://h/x", checksum: SHA })), "Image 'urls' must be a list with at least one element.");
    assert.match(refusal(() => v({ id: "x", urls: ["file:///etc/passwd"], checksum: SHA })), /must hold http:\/\/ or https:\/\/ URLs/);
    assert.equal(refusal(() => v({ id: "x", urls: ["http://h/x"], checksum: "" })), "Image 'checksum' must be a non-empty string.");
    assert.equal(refusal(() => v({ id: "x", urls: ["http://h/x"], os_hash_algo: "sha256" })), "Image 'os_hash_value' must be a non-empty string.");
    assert.equal(refusal(() => v({ id: "x", urls: ["http://h/x"], os_hash_value: SHA })), "Image 'os_hash_algo' must be a non-empty string.");
    assert.match(refusal(() => v({ id: "x", urls: ["http://h/x"], os_hash_algo: "whirlpool-9", os_hash_value: "ab" })), /not supported by this agent/);
    assert.match(refusal(() => v({ id: "x", urls: ["http://h/x"], checksum: "abcd" })), /md5 \(32\), sha256 \(64\) or sha512 \(128\)/);
    assert.match(refusal(() => v({ id: "x", urls: ["http://h/x"], checksum: SHA, image_type: "partition" })), /'root_mb' must be a positive number/);
    assert.match(refusal(() => v({ id: "x", urls: ["http://h/x"], checksum: SHA, image_server_auth_strategy: "http_basic", image_server_user: "u" })), /missing 'password'/);
    assert.match(refusal(() => v({ id: "x", urls: ["http://h/x"], checksum: SHA, image_request_authorization: "not base64!" })), /must be base64/);
  });

  it("reads the fields, null as absent, credentials as an Authorization header", () => {
    const info = readImageInfo({
      id: "i",
      urls: ["http://h/i"],
      disk_format: "RAW",
      stream_raw_images: null,
      checksum: SHA,
      image_server_auth_strategy: "http_basic",
      image_server_user: "u",
      image_server_password: "p",
      proxies: { http: "http://proxy:3128" },
      image_type: "partition",
      root_gb: 2,
      swap_mb: "512",
      configdrive: "H4sI",
    });
    assert.equal(info.diskFormat, "raw");
    assert.equal(info.streamRawImages, true);
    assert.equal(info.authorization, `Basic ${Buffer.from("u:p").toString("base64")}`);
    assert.deepEqual(info.proxies, { http: "http://proxy:3128" });
    assert.equal(info.rootMb, 2048);
    assert.equal(info.swapMb, 512);
    assert.equal(info.configdrive, "H4sI");
    assert.equal(readImageInfo({ id: "i", urls: [], image_request_authorization: Buffer.from("Bearer t").toString("base64") }).authorization, "Bearer t");
  });
});

describe("checksums files", () => {
  const h64 = sha256(Buffer.from("image"));
  const other = sha256(Buffer.from("other"));

  it("reads every format IPA reads, for the image's file name only", () => {
    assert.deepEqual(parseChecksumsFile(`${other}  other.img\n${h64}  disk.img\n`, "disk.img"), { value: h64 });
    assert.deepEqual(parseChecksumsFile(`${h64} *disk.img\n`, "disk.img"), { value: h64 });
    assert.deepEqual(parseChecksumsFile(`disk.img ${h64.toUpperCase()}\n`, "disk.img"), { value: h64 });
    assert.deepEqual(parseChecksumsFile(`# comment\nSHA256 (other.img) = ${other}\nSHA256 (disk.img) = ${h64}\n`, "disk.img"), { value: h64 });
    assert.deepEqual(parseChecksumsFile(`\n${h64}\n\n`, "anything"), { value: h64 });
    assert.deepEqual(parseChecksumsFile(`${h64}  disk+1.img\n`, "disk+1.img"), { value: h64 }, "a name with regex characters");
    assert.deepEqual(parseChecksumsFile(`${h64}  disk+1.img\n`, "disk11.img"), { error: "Checksum file does not contain name disk11.img" });
    assert.deepEqual(parseChecksumsFile("\n\n", "disk.img"), { error: "Empty checksum file" });
    assert.match(String((parseChecksumsFile("nothex", "disk.img") as { error: string }).error), /Invalid checksum file/);
  });

  it("chooses os_hash first, then a checksums URL (os_hash_algo names its algorithm), then the literal by length", async () => {
    const log = silentLogger();
    const fetchText = async (): Promise<string> => `${createHash("sha512").update("x").digest("hex")}  disk.img\n`;
    const base = { id: "disk", urls: ["http://h/images/disk.img"] };
    assert.deepEqual(await resolveChecksum(readImageInfo({ ...base, os_hash_algo: "sha256", os_hash_value: SHA.toUpperCase(), checksum: "http://h/SUMS" }), { md5Allowed: false, fetchText, log }), {
      algorithm: "sha256",
      value: SHA,
    });
    assert.equal((await resolveChecksum(readImageInfo({ ...base, checksum: "http://h/SUMS" }), { md5Allowed: false, fetchText, log })).algorithm, "sha512");
    assert.equal((await resolveChecksum(readImageInfo({ ...base, checksum: SHA }), { md5Allowed: false, fetchText, log })).algorithm, "sha256");
    await assert.rejects(resolveChecksum(readImageInfo({ ...base, checksum: "d41d8cd98f00b204e9800998ecf8427e" }), { md5Allowed: false, fetchText, log }), /MD5 support is disabled/);
    assert.equal((await resolveChecksum(readImageInfo({ ...base, checksum: "d41d8cd98f00b204e9800998ecf8427e" }), { md5Allowed: true, fetchText, log })).algorithm, "md5");
  });
});

// ---------------------------------------------------------------------------------------------
// HTTP client

async function listen(t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

function getOpts(over: Partial<GetOptions> = {}): GetOptions {
  return { headers: {}, connectTimeoutMs: 2000, idleTimeoutMs: 2000, insecure: false, proxy: undefined, signal: new AbortController().signal, ...over };
}

async function body(url: string, over: Partial<GetOptions> = {}): Promise<{ status: number; data: Buffer }> {
  const res = await httpGet(new URL(url), getOpts(over));
  const parts: Buffer[] = [];
  await res.consume((c) => {
    parts.push(Buffer.from(c));
  });
  return { status: res.status, data: Buffer.concat(parts) };
}

describe("HTTP client", () => {
  const payload = randomBytes(3 * MIB + 123);

  it("Content-Length, chunked and read-until-close bodies", async (t) => {
    const { url } = await listen(t, (req, res) => {
      if (req.url === "/length") res.writeHead(200, { "content-length": payload.length }).end(payload);
      else if (req.url === "/chunked") {
        res.writeHead(200); // no length: node sends chunked
        for (let off = 0; off < payload.length; off += 100_000) res.write(payload.subarray(off, off + 100_000));
        res.end();
      } else {
        res.socket?.end(Buffer.concat([Buffer.from("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"), payload]));
      }
    });
    for (const path of ["/length", "/chunked", "/close"]) {
      const r = await body(`${url}${path}`);
      assert.equal(r.status, 200);
      assert.equal(sha256(r.data), sha256(payload), path);
    }
  });

  it("a consumer that makes the socket wait longer than the idle timeout is not a timeout; the server's silence is", async (t) => {
    const { url } = await listen(t, (req, res) => {
      res.writeHead(200, { "content-length": payload.length });
      if (req.url === "/stall") res.write(payload.subarray(0, 1000));
      else res.end(payload);
    });
    const res = await httpGet(new URL(`${url}/slow-reader`), getOpts({ idleTimeoutMs: 200 }));
    let n = 0;
    let waits = 0;
    await res.consume((c) => {
      n += c.length;
      if (waits < 3) {
        waits++;
        return sleep(300);
      }
      return undefined;
    });
    assert.equal(n, payload.length);
    const stalled = await httpGet(new URL(`${url}/stall`), getOpts({ idleTimeoutMs: 200 }));
    await assert.rejects(stalled.consume(() => undefined), { code: "ETIMEDOUT" });
  });

  it("a consumer that waits on many pieces still gets every byte in order (chunked over http, and over TLS)", async (t) => {
    const { url } = await listen(t, (_req, res) => {
      res.writeHead(200);
      let off = 0;
      const more = (): void => {
        while (off < payload.length) {
          const n = 1 + Math.floor(Math.random() * 70_000);
          const ok = res.write(payload.subarray(off, off + n));
          off += n;
          if (!ok) return void res.once("drain", more);
        }
        res.end();
      };
      more();
    });
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "localhost" });
    const tls = createHttpsServer({ cert: pair.certPem, key: pair.keyPem }, (_req, res) => res.writeHead(200, { "content-length": payload.length }).end(payload));
    await new Promise<void>((resolve) => tls.listen(0, "127.0.0.1", resolve));
    t.after(() => {
      tls.closeAllConnections();
      return new Promise<void>((resolve) => tls.close(() => resolve()));
    });
    for (const target of [`${url}/chunked`, `https://127.0.0.1:${(tls.address() as AddressInfo).port}/`]) {
      const res = await httpGet(new URL(target), getOpts({ insecure: true }));
      const hash = createHash("sha256");
      let n = 0;
      await res.consume((c) => {
        hash.update(c);
        n++;
        return n % 3 === 0 ? sleep(1) : undefined;
      });
      assert.equal(hash.digest("hex"), sha256(payload), target);
    }
  });

  it("a body cut short is an error", async (t) => {
    const { url } = await listen(t, (_req, res) => {
      res.writeHead(200, { "content-length": payload.length });
      res.write(payload.subarray(0, 1000), () => res.destroy());
    });
    const res = await httpGet(new URL(url), getOpts());
    await assert.rejects(res.consume(() => undefined), /closed after 1000 of/);
  });

  it("follows redirects, dropping Authorization when the origin changes", async (t) => {
    const seen: Array<string | undefined> = [];
    const b = await listen(t, (req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200, { "content-length": 2 }).end("ok");
    });
    const a = await listen(t, (req, res) => {
      seen.push(req.headers.authorization);
      if (req.url === "/one") res.writeHead(302, { location: "/two" }).end();
      else res.writeHead(307, { location: `${b.url.replace("127.0.0.1", "localhost")}/three` }).end();
    });
    const r = await body(`${a.url}/one`, { headers: { Authorization: "Bearer t" } });
    assert.equal(r.data.toString(), "ok");
    assert.deepEqual(seen, ["Bearer t", "Bearer t", undefined]);
  });

  it("https: certificates are checked unless insecure; the TLS socket reads into one buffer too", async (t) => {
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "localhost" });
    const server = createHttpsServer({ cert: pair.certPem, key: pair.keyPem }, (_req, res) => res.writeHead(200, { "content-length": payload.length }).end(payload));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.after(() => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/img`;
    await assert.rejects(httpGet(new URL(url), getOpts()), /self.signed|certificate/i);
    const r = await body(url, { insecure: true });
    assert.equal(sha256(r.data), sha256(payload));
  });

  it("https through a CONNECT proxy", async (t) => {
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "localhost" });
    const server = createHttpsServer({ cert: pair.certPem, key: pair.keyPem }, (_req, res) => res.writeHead(200, { "content-length": payload.length }).end(payload));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const connects: string[] = [];
    const proxy = createServer();
    proxy.on("connect", (req: IncomingMessage, client: import("node:net").Socket, head: Buffer) => {
      connects.push(req.url ?? "");
      const [host, port] = (req.url ?? "").split(":");
      const up = netConnect(Number(port), host, () => {
        client.write("HTTP/1.1 200 Connection established\r\n\r\n");
        up.write(head);
        up.pipe(client);
        client.pipe(up);
      });
      up.on("error", () => client.destroy());
      client.on("error", () => up.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    t.after(async () => {
      server.closeAllConnections();
      proxy.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    });
    const port = (server.address() as AddressInfo).port;
    const r = await body(`https://127.0.0.1:${port}/img`, { insecure: true, proxy: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}` });
    assert.equal(sha256(r.data), sha256(payload));
    assert.deepEqual(connects, [`127.0.0.1:${port}`]);
  });

  it("connection refused, and abort", async (t) => {
    const { server, url } = await listen(t, () => undefined);
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await assert.rejects(httpGet(new URL(`http://127.0.0.1:${port}/`), getOpts()), { code: "ECONNREFUSED" });
    void url;
    const hang = await listen(t, () => undefined);
    const ac = new AbortController();
    const p = httpGet(new URL(hang.url), getOpts({ signal: ac.signal }));
    ac.abort(new Error("stop"));
    await assert.rejects(p, /stop/);
  });

  it("ImageHttp: a 5xx retried, a 4xx fatal, every URL tried before giving up", async (t) => {
    let hits = 0;
    const { url } = await listen(t, (req, res) => {
      hits++;
      if (req.url === "/gone") res.writeHead(410).end("gone");
      else res.writeHead(502).end("bad gateway");
    });
    const http = new ImageHttp(resolveImageOptions({ retries: 2, retryDelayMs: 1 }), silentLogger());
    const signal = new AbortController().signal;
    await assert.rejects(http.open([`${url}/gone`], { authorization: undefined, proxies: {}, noProxy: undefined }, "i", signal), (err: unknown) => {
      assert.ok(AgentError.is(err) && err.ipaType === "ImageDownloadFatalError" && /410/.test(err.details));
      return true;
    });
    assert.equal(hits, 1);
    hits = 0;
    await assert.rejects(http.open([`${url}/a`, `${url}/b`], { authorization: undefined, proxies: {}, noProxy: undefined }, "i", signal), (err: unknown) => {
      assert.ok(AgentError.is(err) && err.ipaType === "ImageDownloadError");
      assert.match(err.details, /URL: .*\/a; Error: Received status code 502[\s\S]*URL: .*\/b;/);
      return true;
    });
    assert.equal(hits, 6);
  });

  it("no_proxy matching", () => {
    const u = (s: string): URL => new URL(s);
    assert.equal(bypassesProxy(u("http://10.0.0.1/x"), undefined), false);
    assert.equal(bypassesProxy(u("http://images.example.com/x"), "example.com"), true);
    assert.equal(bypassesProxy(u("http://images.example.com/x"), ".example.com"), true);
    assert.equal(bypassesProxy(u("http://example.org/x"), "example.com,localhost"), false);
    assert.equal(bypassesProxy(u("http://localhost:8080/x"), "localhost:8080"), true);
    assert.equal(bypassesProxy(u("http://localhost:8081/x"), "localhost:8080"), false);
    assert.equal(bypassesProxy(u("http://a.b/x"), "*"), true);
  });
});

// ---------------------------------------------------------------------------------------------

describe("device writer (on a file)", () => {
  it("keeps every byte in order through small blocks, overflow and a partial tail; bytes pushed may be reused at once", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-writer-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const data = randomBytes(5 * MIB + 1234);
    for (const direct of [true, false]) {
      const file = join(dir, `out-${String(direct)}`);
      writeFileSync(file, "");
      const w = await DeviceWriter.open(file, { blockBytes: 64 * 1024, depth: 2, direct });
      const scratch = Buffer.alloc(300_000);
      let off = 0;
      let waits = 0;
      while (off < data.length) {
        const n = Math.min(1 + Math.floor(Math.random() * scratch.length), data.length - off);
        data.copy(scratch, 0, off, off + n);
        const wait = w.push(scratch.subarray(0, n));
        scratch.fill(0xee); // the writer must have taken its copy already
        off += n;
        if (wait !== undefined) {
          waits++;
          await wait;
        }
      }
      assert.equal(await w.finish(), data.length);
      assert.equal(w.direct, false, "O_DIRECT is for block devices only (the loop-device tests use it)");
      assert.equal(sha256(readFileSync(file)), sha256(data), `direct=${String(direct)}`);
      assert.ok(waits > 0, "the writer made the producer wait");
    }
  });
});

describe("partition layouts and boot modes", () => {
  const base = { rootMb: 1024, swapMb: 0, ephemeralMb: 0, configdriveMb: 0, diskBytes: 10 * 1024 * MIB, cpuArch: "x64" };

  it("UEFI: GPT, ESP first, root last", () => {
    const l = planLayout({ ...base, bootMode: "uefi", label: "msdos", swapMb: 512, ephemeralMb: 2048, configdriveMb: 1 });
    assert.equal(l.label, "gpt");
    assert.deepEqual(
      l.partitions.map((p) => [p.role, p.number, p.startMiB, p.sizeMiB]),
      [
        ["efi system partition", 1, 1, 550],
        ["ephemeral", 2, 551, 2048],
        ["swap", 3, 2599, 512],
        ["configdrive", 4, 3111, 1],
        ["root", 5, 3112, 1024],
      ],
    );
  });

  it("BIOS: msdos by default, bios_grub on GPT, PReP on ppc64; limits", () => {
    assert.deepEqual(planLayout({ ...base, bootMode: "bios", label: "msdos" }).partitions.map((p) => p.role), ["root"]);
    assert.deepEqual(planLayout({ ...base, bootMode: "bios", label: "gpt" }).partitions.map((p) => [p.role, p.sizeMiB]), [["BIOS Boot partition", 1], ["root", 1024]]);
    assert.deepEqual(planLayout({ ...base, bootMode: "bios", label: "msdos", cpuArch: "ppc64" }).partitions.map((p) => [p.role, p.sizeMiB]), [["PReP Boot partition", 8], ["root", 1024]]);
    assert.throws(() => planLayout({ ...base, bootMode: "bios", label: "msdos", cpuArch: "ppc64", swapMb: 1, ephemeralMb: 1, configdriveMb: 1 }), /4 primary partitions/);
    assert.throws(() => planLayout({ ...base, bootMode: "bios", label: "msdos", rootMb: 20 * 1024 }), /need/);
  });

  it("boot mode and disk label from image_info, instance_info, capabilities, the ramdisk", () => {
    assert.equal(bootModeOf("uefi", null, false), "uefi");
    assert.equal(bootModeOf(undefined, { instance_info: { deploy_boot_mode: "uefi" } }, false), "uefi");
    assert.equal(bootModeOf(undefined, { properties: { capabilities: "boot_mode:uefi,disk_label:gpt" } }, false), "uefi");
    assert.equal(bootModeOf(undefined, { instance_info: { capabilities: '{"secure_boot": "true"}' } }, false), "uefi");
    assert.equal(bootModeOf(undefined, { properties: { capabilities: { boot_mode: "bios" } } }, true), "bios");
    assert.equal(bootModeOf(undefined, null, true), "uefi");
    assert.equal(bootModeOf(undefined, null, false), "bios");
    assert.equal(diskLabelOf("uefi", "msdos", null), "gpt");
    assert.equal(diskLabelOf("bios", undefined, { properties: { capabilities: "disk_label:gpt" } }), "gpt");
    assert.equal(diskLabelOf("bios", undefined, null), "msdos");
  });
});

describe("configdrive decoding", () => {
  const iso = Buffer.concat([Buffer.alloc(0x8001), Buffer.from("CD001"), randomBytes(1000)]);
  const noFetch = async (): Promise<Buffer> => assert.fail("no fetch expected");

  it("gzip+base64, plain base64, raw bytes from a URL, gzip from a URL", async () => {
    assert.deepEqual(await loadConfigdrive(gzipSync(iso).toString("base64"), noFetch, 64 * MIB), iso);
    assert.deepEqual(await loadConfigdrive(iso.toString("base64"), noFetch, 64 * MIB), iso);
    assert.deepEqual(await loadConfigdrive("http://h/cd", async () => iso, 64 * MIB), iso);
    assert.deepEqual(await loadConfigdrive("https://h/cd", async () => Buffer.from(gzipSync(iso).toString("base64")), 64 * MIB), iso);
  });

  it("refuses what is not base64, and anything over the limit (gzip bombs included)", async () => {
    await assert.rejects(loadConfigdrive("not base64 at all!", noFetch, 64 * MIB), /not base64/);
    const bomb = gzipSync(Buffer.alloc(8 * MIB));
    await assert.rejects(loadConfigdrive(bomb.toString("base64"), noFetch, 4 * MIB), /exceeds maximum limit/);
  });
});

describe("format inspection", () => {
  it("qcow2 (with its virtual size; backing and data files refused), gpt, iso, raw", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "ironbus-image-inspect-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const qcow = Buffer.alloc(4096);
    qcow.write("QFI\xfb", 0, "latin1");
    qcow.writeUInt32BE(3, 4);
    qcow.writeBigUInt64BE(10n * BigInt(MIB), 24);
    writeFileSync(join(dir, "q"), qcow);
    assert.deepEqual(await inspectImage(join(dir, "q")), { format: "qcow2", virtualSize: 10 * MIB, problems: [] });
    qcow.writeBigUInt64BE(512n, 8);
    qcow.writeBigUInt64BE(4n, 72);
    writeFileSync(join(dir, "q2"), qcow);
    assert.deepEqual((await inspectImage(join(dir, "q2"))).problems, ["the qcow2 image names a backing file", "the qcow2 image uses an external data file"]);
    const gpt = Buffer.alloc(8192);
    gpt.write("EFI PART", 512, "latin1");
    writeFileSync(join(dir, "g"), gpt);
    assert.equal((await inspectImage(join(dir, "g"))).format, "gpt");
    writeFileSync(join(dir, "i"), Buffer.concat([Buffer.alloc(0x8001), Buffer.from("CD001"), Buffer.alloc(2000)]));
    assert.equal((await inspectImage(join(dir, "i"))).format, "iso");
    writeFileSync(join(dir, "r"), randomBytes(5000));
    assert.deepEqual(await inspectImage(join(dir, "r")), { format: "raw", virtualSize: 5000, problems: [] });
  });
});

describe("install device", () => {
  const info = { rootDevice: undefined };

  it("a name hint (instance_info over properties), else the one allowed device", async () => {
    assert.equal(await resolveTargetDevice({ properties: { root_device: { name: "/dev/sdb" } } }, info, { allowedDevices: [] }), "/dev/sdb");
    assert.equal(await resolveTargetDevice({ instance_info: { root_device: { name: "sdc" } }, properties: { root_device: { name: "/dev/sdb" } } }, info, { allowedDevices: [] }), "/dev/sdc");
    assert.equal(await resolveTargetDevice({ properties: { root_device: { name: "s== /dev/vda" } } }, info, { allowedDevices: [] }), "/dev/vda");
    assert.equal(await resolveTargetDevice(null, { rootDevice: { name: "/dev/loop9" } }, { allowedDevices: [] }), "/dev/loop9");
    assert.equal(await resolveTargetDevice(null, info, { allowedDevices: ["/dev/loop3", "/dev/nvme*"] }), "/dev/loop3");
  });

  it("refuses hints it cannot match yet, and an ambiguous configuration", async () => {
    await assert.rejects(resolveTargetDevice({ properties: { root_device: { serial: "abc" } } }, info, { allowedDevices: ["/dev/loop3"] }), (err: unknown) => {
      assert.ok(AgentError.is(err) && err.ipaType === "DeviceNotFound" && /only the 'name' hint/.test(err.details));
      return true;
    });
    await assert.rejects(resolveTargetDevice(null, info, { allowedDevices: ["/dev/loop3", "/dev/loop4"] }), /names 2 devices/);
    await assert.rejects(resolveTargetDevice(null, info, { allowedDevices: [] }), /names 0 devices/);
  });
});

describe("progress", () => {
  it("one event per stage change, then at most one per interval, with rate and percent", () => {
    let now = 0;
    const events: ProgressUpdate[] = [];
    const p = new ProgressReporter((u) => events.push(u), 1000, () => now);
    p.stage("write", "writing", 1000);
    now = 100;
    p.bytes(100);
    now = 1000;
    p.bytes(500);
    now = 1500;
    p.bytes(1000, true);
    assert.deepEqual(events, [
      { stage: "write", bytes_done: 0, message: "writing", bytes_total: 1000, percent: 0 },
      { stage: "write", bytes_done: 500, bytes_total: 1000, percent: 50, rate_bps: 500 },
      { stage: "write", bytes_done: 1000, bytes_total: 1000, percent: 100, rate_bps: 667 },
    ]);
  });
});
