/**
 * A throw-away PKI for TLS tests, made with the `openssl` CLI (node:crypto cannot issue certificates,
 * and transports/rest/autotls.ts only makes self-signed leaf certificates, CA:FALSE):
 *
 * - `ca`: a test CA; it signs `server` (SAN IP:127.0.0.1 and DNS:localhost, serverAuth) and `client`
 *   (CN=ironbus-test-client, clientAuth);
 * - `otherCa`: a second CA that signs nothing the servers present, for "a server the configured CA
 *   did not sign".
 *
 * EC P-256 keys (fast), PKCS#8 PEM, valid from one hour ago for two days. Everything lives in a fresh
 * directory under os.tmpdir(), removed when the test that made it ends (pass `t`) or by dispose().
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

export const OPENSSL_BIN = process.env["OPENSSL"] ?? "openssl";

export interface PemPair {
  readonly cert: string;
  readonly key: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface Pki {
  readonly dir: string;
  /** The CA that signed `server` and `client`: PEM and its file. */
  readonly ca: string;
  readonly caFile: string;
  /** A CA that signed neither. */
  readonly otherCa: string;
  readonly otherCaFile: string;
  readonly server: PemPair;
  readonly client: PemPair;
  dispose(): void;
}

function openssl(dir: string, args: readonly string[]): void {
  try {
    execFileSync(OPENSSL_BIN, args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? "";
    throw new Error(`openssl ${args.join(" ")} failed: ${stderr || String(err)}`);
  }
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

function makeCa(dir: string, name: string, cn: string): void {
  openssl(dir, [
    "req", "-x509", "-new", ...EC, "-keyout", `${name}.key`, "-out", `${name}.pem`, "-days", "2", "-subj", `/CN=${cn}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

function issue(dir: string, ca: string, name: string, cn: string, extensions: string): PemPair {
  openssl(dir, ["req", "-new", ...EC, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
  writeFileSync(join(dir, `${name}.ext`), `${extensions}\n`);
  openssl(dir, [
    "x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.pem`, "-CAkey", `${ca}.key`, "-set_serial", `0x${Date.now().toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`,
    "-days", "2", "-sha256", "-extfile", `${name}.ext`, "-out", `${name}.pem`,
  ]);
  const certFile = join(dir, `${name}.pem`);
  const keyFile = join(dir, `${name}.key`);
  return { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8"), certFile, keyFile };
}

export function makePki(t?: Pick<TestContext, "after">): Pki {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-pki-"));
  const dispose = (): void => rmSync(dir, { recursive: true, force: true });
  try {
    makeCa(dir, "ca", "ironbus test CA");
    makeCa(dir, "other-ca", "ironbus other CA");
    const server = issue(dir, "ca", "server", "127.0.0.1", [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ].join("\n"));
    const client = issue(dir, "ca", "client", "ironbus-test-client", [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=clientAuth",
    ].join("\n"));
    const caFile = join(dir, "ca.pem");
    const otherCaFile = join(dir, "other-ca.pem");
    const pki: Pki = {
      dir,
      ca: readFileSync(caFile, "utf8"),
      caFile,
      otherCa: readFileSync(otherCaFile, "utf8"),
      otherCaFile,
      server,
      client,
      dispose,
    };
    t?.after(dispose);
    return pki;
  } catch (err) {
    dispose();
    throw err;
  }
}
