/**
 * Auto-TLS certificates: parsed by node:crypto, cross-checked with the openssl CLI and (when present)
 * python-cryptography, and used for real TLS handshakes with verification on, the way Ironic uses
 * `agent_verify_ca`.
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { type Server, createServer, request } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, describe, test } from "node:test";
import type { TLSSocket } from "node:tls";
import {
  type CertificatePair,
  type TlsCurve,
  generateSelfSignedCertificate,
  parseIpAddress,
  writeAutoTlsFiles,
} from "../transports/rest/autotls.js";

const CURVES: readonly TlsCurve[] = ["prime256v1", "secp384r1", "secp521r1"];
/** IP as given → how OpenSSL (and so node's subjectAltName) prints it. */
const IPS: ReadonlyArray<readonly [string, string]> = [
  ["10.0.0.5", "10.0.0.5"],
  ["fd00::2", "FD00:0:0:0:0:0:0:2"],
  ["::1", "0:0:0:0:0:0:0:1"],
];
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

function hasOpenssl(): boolean {
  return spawnSync("openssl", ["version"], { encoding: "utf8" }).status === 0;
}

function hasPythonModule(module: string): boolean {
  return spawnSync("python3", ["-c", `import ${module}`], { encoding: "utf8" }).status === 0;
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ironbus-autotls-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function startServer(t: TestContext, pair: CertificatePair): Promise<number> {
  const server: Server = createServer({ cert: pair.certPem, key: pair.keyPem, minVersion: "TLSv1.2" }, (_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return (server.address() as AddressInfo).port;
}

interface Answer {
  readonly status: number;
  readonly body: string;
  readonly authorized: boolean;
  readonly protocol: string | null;
}

/** GET https://127.0.0.1:<port>/ trusting only `ca`; no servername, default checkServerIdentity. */
function get(port: number, ca: string, maxVersion: "TLSv1.2" | "TLSv1.3" = "TLSv1.3"): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/", method: "GET", ca, maxVersion, agent: false, rejectUnauthorized: true }, (res) => {
      const socket = res.socket as TLSSocket;
      const authorized = socket.authorized;
      const protocol = socket.getProtocol();
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, authorized, protocol }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

function openssl(args: readonly string[]): { status: number | null; out: string } {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe("generateSelfSignedCertificate", () => {
  for (const curve of CURVES) {
    for (const [ip, printed] of IPS) {
      test(`${curve}, ${ip}: CN, critical IP SAN, validity, self-signature, key`, () => {
        const before = Date.now();
        const pair = generateSelfSignedCertificate({ ip, hostname: "node-1.example", curve });
        const x509 = new X509Certificate(pair.certPem);

        assert.equal(x509.subject, "CN=node-1.example");
        assert.equal(x509.issuer, "CN=node-1.example");
        assert.equal(x509.subjectAltName, `IP Address:${printed}`);
        assert.equal(x509.checkIP(ip), ip);
        assert.equal(x509.checkIP("192.0.2.99"), undefined);
        assert.equal(x509.ca, false);

        const from = Date.parse(x509.validFrom);
        const to = Date.parse(x509.validTo);
        assert.ok(Math.abs(from - (before - HOUR_MS)) <= 2000, `validFrom ${x509.validFrom}`);
        assert.ok(Math.abs(to - (before + 30 * DAY_MS)) <= 2000, `validTo ${x509.validTo}`);

        assert.equal(x509.verify(x509.publicKey), true);
        assert.equal(x509.publicKey.asymmetricKeyType, "ec");
        assert.equal(x509.publicKey.asymmetricKeyDetails?.namedCurve, curve);

        assert.match(pair.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
        const key = createPrivateKey(pair.keyPem);
        assert.equal(key.asymmetricKeyType, "ec");
        assert.equal(key.asymmetricKeyDetails?.namedCurve, curve);
        assert.equal(x509.checkPrivateKey(key), true);
      });
    }
  }

  test("defaults to P-384", () => {
    const x509 = new X509Certificate(generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h" }).certPem);
    assert.equal(x509.publicKey.asymmetricKeyDetails?.namedCurve, "secp384r1");
  });

  test("validity follows now, backdateSeconds and validDays exactly (whole seconds)", () => {
    const now = new Date("2030-06-15T12:00:00.750Z");
    const x = new X509Certificate(generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", now }).certPem);
    assert.equal(new Date(x.validFrom).toISOString(), "2030-06-15T11:00:00.000Z");
    assert.equal(new Date(x.validTo).toISOString(), "2030-07-15T12:00:00.000Z");

    const y = new X509Certificate(
      generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", now, validDays: 90, backdateSeconds: 0 }).certPem,
    );
    assert.equal(new Date(y.validFrom).toISOString(), "2030-06-15T12:00:00.000Z");
    assert.equal(new Date(y.validTo).toISOString(), "2030-09-13T12:00:00.000Z");
  });

  test("switches from UTCTime to GeneralizedTime in 2050", (t) => {
    const pair = generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", now: new Date("2049-12-20T00:00:00Z") });
    const x = new X509Certificate(pair.certPem);
    assert.equal(new Date(x.validFrom).toISOString(), "2049-12-19T23:00:00.000Z");
    assert.equal(new Date(x.validTo).toISOString(), "2050-01-19T00:00:00.000Z");
    // Raw DER: notBefore as UTCTime (tag 0x17, 13 chars), notAfter as GeneralizedTime (tag 0x18, 15 chars).
    const der = x.raw;
    assert.ok(der.includes(Buffer.concat([Buffer.of(0x17, 13), Buffer.from("491219230000Z")])));
    assert.ok(der.includes(Buffer.concat([Buffer.of(0x18, 15), Buffer.from("20500119000000Z")])));
    if (!hasOpenssl()) return t.skip("openssl CLI not installed");
    const r = spawnSync("openssl", ["x509", "-noout", "-dates"], { input: pair.certPem, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /notAfter=Jan 19 00:00:00 2050 GMT/);
  });

  test("serials are random, positive and 20 octets", () => {
    const serials = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const serial = new X509Certificate(generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", curve: "prime256v1" }).certPem).serialNumber;
      assert.match(serial, /^[4-7][0-9A-F]{39}$/);
      serials.add(serial);
    }
    assert.equal(serials.size, 5);
  });

  test("a non-ASCII hostname is kept as UTF-8", () => {
    const x = new X509Certificate(generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "nœud-1" }).certPem);
    assert.equal(x.subject, "CN=nœud-1");
  });

  test("rejects invalid IPs, saying why", () => {
    for (const ip of ["999.1.1.1", "not-an-ip", "10.0.0", "10.0.0.5:9999", "[fd00::2]", "fd00::2::1", "example.com", "01.2.3.4", "10.0.0.1%x"]) {
      assert.throws(() => generateSelfSignedCertificate({ ip, hostname: "h" }), /not a valid IPv4 or IPv6 address/, ip);
    }
    assert.throws(() => generateSelfSignedCertificate({ ip: "", hostname: "h" }), /advertised IP address is empty/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "fe80::1%eth0", hostname: "h" }), /zone index/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "0.0.0.0", hostname: "h" }), /unspecified address/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "::", hostname: "h" }), /unspecified address/);
  });

  test("rejects bad hostnames, curves and validity", () => {
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "" }), /hostname \(certificate CN\) is empty/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "a".repeat(65) }), /longer than the 64 characters/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "a\nb" }), /control characters/);
    const bogus = "secp256k1" as unknown as TlsCurve;
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", curve: bogus }), /unsupported curve "secp256k1"/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", validDays: 0 }), /validDays must be a positive number/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", backdateSeconds: -1 }), /backdateSeconds must be a non-negative/);
    assert.throws(() => generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "h", now: new Date(Number.NaN) }), /invalid Date/);
  });
});

describe("parseIpAddress", () => {
  const cases: ReadonlyArray<readonly [string, string]> = [
    ["10.0.0.5", "0a000005"],
    ["255.255.255.255", "ffffffff"],
    ["::1", "00000000000000000000000000000001"],
    ["fd00::2", "fd000000000000000000000000000002"],
    ["1::", "00010000000000000000000000000000"],
    ["2001:DB8::8:800:200C:417A", "20010db80000000000080800200c417a"],
    ["2001:db8:0:0:1:0:0:1", "20010db8000000000001000000000001"],
    ["1:2:3:4:5:6:7::", "00010002000300040005000600070000"],
    ["::ffff:192.0.2.1", "00000000000000000000ffffc0000201"],
    ["64:ff9b::192.0.2.33", "0064ff9b0000000000000000c0000221"],
  ];
  for (const [ip, hex] of cases) {
    test(`${ip} → ${hex}`, () => {
      assert.equal(parseIpAddress(ip).toString("hex"), hex);
    });
  }
});

describe("openssl CLI cross-check", () => {
  for (const curve of CURVES) {
    test(`${curve}: x509 -text, verify, checkip`, async (t) => {
      if (!hasOpenssl()) return t.skip("openssl CLI not installed");
      const dir = await tempDir(t);
      const pair = generateSelfSignedCertificate({ ip: "fd00::2", hostname: "node-1", curve });
      const cert = join(dir, "agent.crt");
      await writeFile(cert, pair.certPem);

      const text = openssl(["x509", "-noout", "-text", "-in", cert]);
      assert.equal(text.status, 0, text.out);
      assert.match(text.out, /Version: 3 \(0x2\)/);
      assert.match(text.out, /X509v3 Subject Alternative Name: critical\s+IP Address:FD00:0:0:0:0:0:0:2\s/);
      assert.match(text.out, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
      assert.match(text.out, /X509v3 Extended Key Usage:\s*\n\s+TLS Web Server Authentication/);
      assert.doesNotMatch(text.out, /X509v3 Key Usage/);
      assert.equal(text.out.match(/Signature Algorithm: ecdsa-with-SHA512/g)?.length, 2, "TBS and outer signature algorithm");
      assert.match(text.out, /Subject: CN = node-1/);
      assert.match(text.out, new RegExp(`ASN1 OID: ${curve}`));

      // Plain verify: the certificate is its own trust anchor. No -partial_chain needed, because with no
      // keyUsage extension OpenSSL recognises it as self-signed (see docs/tls.md).
      const plain = openssl(["verify", "-CAfile", cert, cert]);
      assert.equal(plain.status, 0, plain.out);
      assert.match(plain.out, /: OK/);

      // Stricter: also check the self-signature, RFC 5280 strict mode (what Python >= 3.13 turns on), server purpose.
      const strict = openssl(["verify", "-x509_strict", "-check_ss_sig", "-purpose", "sslserver", "-CAfile", cert, cert]);
      assert.equal(strict.status, 0, strict.out);

      const ipOk = openssl(["x509", "-noout", "-in", cert, "-checkip", "fd00::2"]);
      assert.match(ipOk.out, /IP fd00::2 does match certificate/);
    });
  }

  test("CA:FALSE: a certificate issued with the agent key does not verify against the agent certificate", async (t) => {
    if (!hasOpenssl()) return t.skip("openssl CLI not installed");
    const dir = await tempDir(t);
    const agent = await writeAutoTlsFiles(dir, generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "node-1" }));
    const csr = join(dir, "other.csr");
    const other = join(dir, "other.crt");
    const req = openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, "other.key"), "-out", csr, "-subj", "/CN=other"]);
    assert.equal(req.status, 0, req.out);
    const issue = openssl(["x509", "-req", "-in", csr, "-CA", agent.certFile, "-CAkey", agent.keyFile, "-set_serial", "2", "-days", "1", "-out", other]);
    assert.equal(issue.status, 0, issue.out);
    const r = openssl(["verify", "-CAfile", agent.certFile, other]);
    assert.notEqual(r.status, 0, r.out);
    assert.match(r.out, /invalid CA certificate/);
  });
});

describe("python-cryptography cross-check (the library IPA builds its certificate with)", () => {
  test("parses with its strict DER parser and reads the same fields", async (t) => {
    if (!hasPythonModule("cryptography")) return t.skip("python3 with cryptography not installed");
    const dir = await tempDir(t);
    const cert = join(dir, "agent.crt");
    await writeFile(cert, generateSelfSignedCertificate({ ip: "fd00::2", hostname: "node-1" }).certPem);
    const script = [
      "import sys",
      "from cryptography import x509",
      "c = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())",
      "san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName)",
      "c.verify_directly_issued_by(c)",
      "print(c.version.name, c.signature_algorithm_oid._name, c.subject.rfc4514_string(), san.critical,",
      "      [str(i) for i in san.value.get_values_for_type(x509.IPAddress)], c.public_key().curve.name,",
      "      c.serial_number > 0, int((c.not_valid_after_utc - c.not_valid_before_utc).total_seconds()))",
    ].join("\n");
    const r = spawnSync("python3", ["-c", script, cert], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), `v3 ecdsa-with-SHA512 CN=node-1 True ['fd00::2'] secp384r1 True ${30 * 86_400 + 3600}`);
  });
});

describe("TLS handshake with verification on", () => {
  for (const curve of CURVES) {
    for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
      test(`${curve}, ${version}: a client trusting only the certificate connects to 127.0.0.1`, async (t) => {
        const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "node-1", curve });
        const port = await startServer(t, pair);
        const answer = await get(port, pair.certPem, version);
        assert.deepEqual(answer, { status: 200, body: "ok", authorized: true, protocol: version });
      });
    }
  }

  test("IPv6 loopback (::1)", async (t) => {
    const pair = generateSelfSignedCertificate({ ip: "::1", hostname: "node-1" });
    const server: Server = createServer({ cert: pair.certPem, key: pair.keyPem, minVersion: "TLSv1.2" }, (_req, res) => res.end("ok"));
    const listening = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(0, "::1", () => resolve(true));
    });
    if (!listening) return t.skip("no IPv6 loopback on this machine");
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as AddressInfo).port;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: "::1", port, path: "/", ca: pair.certPem, agent: false }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      });
      req.on("error", reject);
      req.end();
    });
    assert.equal(status, 200);
  });

  test("a client trusting a different certificate refuses the connection", async (t) => {
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "node-1" });
    const other = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "node-1" });
    const port = await startServer(t, pair);
    await assert.rejects(get(port, other.certPem), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, "DEPTH_ZERO_SELF_SIGNED_CERT");
      return true;
    });
  });

  test("the right certificate for the wrong IP is refused (the SAN is checked)", async (t) => {
    const pair = generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "node-1" });
    const port = await startServer(t, pair);
    await assert.rejects(get(port, pair.certPem), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, "ERR_TLS_CERT_ALTNAME_INVALID");
      return true;
    });
  });

  test("Python's ssl (what Ironic's requests uses), strict X.509 checks on, verifies it as its CA", async (t) => {
    if (!hasPythonModule("ssl")) return t.skip("python3 not installed");
    const dir = await tempDir(t);
    const pair = generateSelfSignedCertificate({ ip: "127.0.0.1", hostname: "node-1" });
    const ca = join(dir, "agent_verify_ca.pem");
    await writeFile(ca, pair.certPem);
    const port = await startServer(t, pair);
    const script = [
      "import socket, ssl, sys",
      "ctx = ssl.create_default_context(cafile=sys.argv[1])",
      "ctx.verify_flags |= ssl.VERIFY_X509_STRICT",
      "ctx.verify_flags &= ~getattr(ssl, 'VERIFY_X509_PARTIAL_CHAIN', 0)",
      "with socket.create_connection(('127.0.0.1', int(sys.argv[2]))) as raw:",
      "    with ctx.wrap_socket(raw, server_hostname='127.0.0.1') as s:",
      "        print(s.version())",
    ].join("\n");
    // Asynchronous: the server answering lives on this event loop.
    const out = await new Promise<string>((resolve, reject) => {
      execFile("python3", ["-c", script, ca, String(port)], { timeout: 20_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`python3 failed: ${stderr}`, { cause: err }));
        else resolve(stdout.trim());
      });
    });
    assert.match(out, /^TLSv1\.[23]$/);
  });
});

describe("writeAutoTlsFiles", () => {
  test("writes agent.crt (0644) and agent.key (0600) into a new directory (0700)", async (t) => {
    const root = await tempDir(t);
    const dir = join(root, "run", "ironbus");
    const pair = generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "node-1" });
    const files = await writeAutoTlsFiles(dir, pair);
    assert.deepEqual(files, { certFile: join(dir, "agent.crt"), keyFile: join(dir, "agent.key") });
    assert.equal(await readFile(files.certFile, "utf8"), pair.certPem);
    assert.equal(await readFile(files.keyFile, "utf8"), pair.keyPem);
    assert.equal((await stat(files.keyFile)).mode & 0o777, 0o600);
    assert.equal((await stat(files.certFile)).mode & 0o777, 0o644);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.deepEqual((await readdir(dir)).sort(), ["agent.crt", "agent.key"]);
  });

  test("replaces earlier files and tightens a loose key mode", async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, "agent.key"), "old", { mode: 0o644 });
    await writeFile(join(dir, "agent.crt"), "old");
    const pair = generateSelfSignedCertificate({ ip: "fd00::2", hostname: "node-1" });
    const files = await writeAutoTlsFiles(dir, pair);
    assert.equal(await readFile(files.keyFile, "utf8"), pair.keyPem);
    assert.equal(await readFile(files.certFile, "utf8"), pair.certPem);
    assert.equal((await stat(files.keyFile)).mode & 0o777, 0o600);
    assert.deepEqual((await readdir(dir)).sort(), ["agent.crt", "agent.key"], "no temporary files left");
  });

  test("refuses a key that does not match the certificate and writes nothing", async (t) => {
    const dir = join(await tempDir(t), "tls");
    const a = generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "node-1" });
    const b = generateSelfSignedCertificate({ ip: "10.0.0.5", hostname: "node-1" });
    await assert.rejects(writeAutoTlsFiles(dir, { certPem: a.certPem, keyPem: b.keyPem }), /does not match the certificate/);
    await assert.rejects(stat(dir), { code: "ENOENT" });
  });
});
