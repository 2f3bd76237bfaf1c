/**
 * IPA-style auto-TLS: a fresh EC key and a self-signed X.509 v3 certificate naming the advertised IP,
 * built with node:crypto alone (no openssl CLI, no npm dependency). The certificate is DER-encoded
 * here by a small ASN.1 writer and signed with ECDSA over SHA-512, as ironic-python-agent does.
 *
 * Certificate contents (docs/tls.md explains each choice):
 *   version 3, random positive 159-bit serial, issuer = subject = CN=<hostname>,
 *   validity [now - backdate, now + validDays], signature ecdsa-with-SHA512 (for every curve),
 *   extensions: subjectAltName (critical) = iPAddress, basicConstraints (critical) = CA:FALSE,
 *   extendedKeyUsage = serverAuth. No keyUsage: see docs/tls.md.
 */
import { X509Certificate, createPrivateKey, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { chmod, mkdir, open, rename, rm } from "node:fs/promises";
import { isIP } from "node:net";
import { join, resolve } from "node:path";

export type TlsCurve = "prime256v1" | "secp384r1" | "secp521r1";

export interface SelfSignedOptions {
  /** The address Ironic connects to (the advertised host); IPv4 or IPv6, no brackets, no zone. */
  readonly ip: string;
  /** Common name of subject and issuer; 1 to 64 characters. */
  readonly hostname: string;
  /** Key curve; IPA's default is P-384. */
  readonly curve?: TlsCurve;
  /** Lifetime after `now`, in days (default 30, as IPA really uses). */
  readonly validDays?: number;
  /** How far before `now` the certificate becomes valid, in seconds (default 3600, for clock skew). */
  readonly backdateSeconds?: number;
  /** The time the certificate is issued at (default: the current time). */
  readonly now?: Date;
}

export interface CertificatePair {
  /** The certificate, PEM. This is also what the agent sends to Ironic as `agent_verify_ca`. */
  readonly certPem: string;
  /** The private key, PKCS#8 PEM, unencrypted. */
  readonly keyPem: string;
}

export const TLS_CURVES: readonly TlsCurve[] = ["prime256v1", "secp384r1", "secp521r1"];
export const DEFAULT_TLS_CURVE: TlsCurve = "secp384r1";
export const DEFAULT_VALID_DAYS = 30;
export const DEFAULT_BACKDATE_SECONDS = 3600;
export const CERT_FILE_NAME = "agent.crt";
export const KEY_FILE_NAME = "agent.key";

const DAY_MS = 86_400_000;
/** RFC 5280 ub-common-name. Linux's HOST_NAME_MAX is 64 too, so a real hostname always fits. */
const MAX_COMMON_NAME = 64;

// ---------------------------------------------------------------------------------------------
// A minimal ASN.1 DER writer: just the types an X.509 certificate needs.
// ---------------------------------------------------------------------------------------------

const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

function derLength(length: number): Buffer {
  if (length < 0x80) return Buffer.of(length);
  const bytes: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) bytes.unshift(n % 256);
  return Buffer.of(0x80 | bytes.length, ...bytes);
}

/** One TLV: identifier octet, definite length, contents. */
function tlv(tag: number, content: Uint8Array): Buffer {
  return Buffer.concat([Buffer.of(tag), derLength(content.length), content]);
}

function derSequence(...items: readonly Uint8Array[]): Buffer {
  return tlv(TAG.SEQUENCE, Buffer.concat(items));
}

/** SET OF, with its elements in DER order (sorted by their encodings, X.690 11.6). */
function derSet(...items: readonly Uint8Array[]): Buffer {
  const sorted = items.map((item) => Buffer.from(item)).sort(Buffer.compare);
  return tlv(TAG.SET, Buffer.concat(sorted));
}

/** A non-negative INTEGER from its big-endian magnitude, minimally encoded. */
function derUnsignedInteger(magnitude: Uint8Array): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  let body = Buffer.from(magnitude.subarray(start));
  if (body.length === 0) body = Buffer.of(0);
  // A set high bit would read as negative: prefix a zero octet.
  if ((body[0] ?? 0) & 0x80) body = Buffer.concat([Buffer.of(0), body]);
  return tlv(TAG.INTEGER, body);
}

function derSmallInteger(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`DER: unsupported integer ${value}`);
  const bytes: number[] = [];
  for (let n = value; n > 0; n = Math.floor(n / 256)) bytes.unshift(n % 256);
  return derUnsignedInteger(Uint8Array.from(bytes));
}

function derBoolean(value: boolean): Buffer {
  return tlv(TAG.BOOLEAN, Buffer.of(value ? 0xff : 0x00));
}

function derOid(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const [first, second, ...rest] = arcs;
  if (first === undefined || second === undefined || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) {
    throw new RangeError(`DER: bad OID ${dotted}`);
  }
  const out: number[] = [];
  for (const arc of [first * 40 + second, ...rest]) {
    const chunk: number[] = [arc % 128];
    for (let n = Math.floor(arc / 128); n > 0; n = Math.floor(n / 128)) chunk.unshift(0x80 | (n % 128));
    out.push(...chunk);
  }
  return tlv(TAG.OID, Uint8Array.from(out));
}

function derOctetString(content: Uint8Array): Buffer {
  return tlv(TAG.OCTET_STRING, content);
}

/** BIT STRING holding whole octets (no unused bits). */
function derBitString(content: Uint8Array): Buffer {
  return tlv(TAG.BIT_STRING, Buffer.concat([Buffer.of(0), content]));
}

function derUtf8String(text: string): Buffer {
  return tlv(TAG.UTF8_STRING, Buffer.from(text, "utf8"));
}

/** [n] EXPLICIT: constructed context-specific tag wrapping one whole encoding. */
function derExplicit(tagNumber: number, inner: Uint8Array): Buffer {
  return tlv(0xa0 | tagNumber, inner);
}

/** [n] IMPLICIT on a primitive type: context-specific primitive tag replacing the universal one. */
function derImplicitPrimitive(tagNumber: number, content: Uint8Array): Buffer {
  return tlv(0x80 | tagNumber, content);
}

/** RFC 5280 4.1.2.5: UTCTime (YYMMDDHHMMSSZ) through 2049, GeneralizedTime (YYYYMMDDHHMMSSZ) from 2050. */
function derTime(date: Date): Buffer {
  const year = date.getUTCFullYear();
  if (year < 0 || year > 9999) throw new RangeError(`certificate time out of range: ${date.toISOString()}`);
  const two = (n: number): string => String(n).padStart(2, "0");
  const rest =
    two(date.getUTCMonth() + 1) +
    two(date.getUTCDate()) +
    two(date.getUTCHours()) +
    two(date.getUTCMinutes()) +
    two(date.getUTCSeconds()) +
    "Z";
  if (year >= 1950 && year <= 2049) return tlv(TAG.UTC_TIME, Buffer.from(two(year % 100) + rest, "latin1"));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(String(year).padStart(4, "0") + rest, "latin1"));
}

// ---------------------------------------------------------------------------------------------
// X.509 pieces
// ---------------------------------------------------------------------------------------------

const OID = {
  commonName: "2.5.4.3",
  ecdsaWithSha512: "1.2.840.10045.4.3.4",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
} as const;

/** Name ::= SEQUENCE OF RelativeDistinguishedName, here the single attribute CN. */
function derName(commonName: string): Buffer {
  // UTF8String, as RFC 5280 asks of new certificates and as IPA (python-cryptography) encodes the CN.
  return derSequence(derSet(derSequence(derOid(OID.commonName), derUtf8String(commonName))));
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }. */
function derExtension(oid: string, critical: boolean, value: Uint8Array): Buffer {
  // DER: a field equal to its DEFAULT is omitted, so `critical` appears only when true.
  return critical ? derSequence(derOid(oid), derBoolean(true), derOctetString(value)) : derSequence(derOid(oid), derOctetString(value));
}

/** A fresh serial: 20 random octets, top bit clear (positive), next bit set (never zero, always 20 octets). */
function randomSerial(): Buffer {
  const serial = randomBytes(20);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  return serial;
}

function toPem(label: string, der: Uint8Array): string {
  const lines = Buffer.from(der).toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

// ---------------------------------------------------------------------------------------------
// IP addresses
// ---------------------------------------------------------------------------------------------

function parseIpv4(text: string): number[] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const octets = parts.map((p) => (/^\d{1,3}$/.test(p) ? Number(p) : Number.NaN));
  return octets.every((o) => Number.isInteger(o) && o >= 0 && o <= 255) ? octets : undefined;
}

/** Expands an IPv6 text form (with `::` and an optional dotted IPv4 tail) into 8 groups. */
function parseIpv6(text: string): number[] | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groupsOf = (part: string, mayEndInIpv4: boolean): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (const [i, piece] of pieces.entries()) {
      if (mayEndInIpv4 && i === pieces.length - 1 && piece.includes(".")) {
        const v4 = parseIpv4(piece);
        if (!v4) return undefined;
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
      } else if (/^[0-9A-Fa-f]{1,4}$/.test(piece)) {
        out.push(Number.parseInt(piece, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  if (halves.length === 1) {
    const all = groupsOf(text, true);
    return all?.length === 8 ? all : undefined;
  }
  const head = groupsOf(halves[0] ?? "", false);
  const tail = groupsOf(halves[1] ?? "", true);
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  // `::` stands for at least one group of zeros.
  if (missing < 1) return undefined;
  return [...head, ...new Array<number>(missing).fill(0), ...tail];
}

/**
 * The octets of an IP address as X.509's iPAddress holds them: 4 for IPv4, 16 for IPv6 (network order).
 * Throws an Error saying why when `ip` is not a usable address.
 */
export function parseIpAddress(ip: string): Buffer {
  if (typeof ip !== "string" || ip.length === 0) throw new Error("auto-TLS: the advertised IP address is empty");
  const shown = JSON.stringify(ip);
  if (ip.includes("%") && isIP(ip) === 6) {
    throw new Error(`auto-TLS: ${shown} carries an IPv6 zone index, which a certificate's iPAddress cannot hold`);
  }
  const family = isIP(ip);
  let bytes: Buffer | undefined;
  if (family === 4) {
    const octets = parseIpv4(ip);
    if (octets) bytes = Buffer.from(octets);
  } else if (family === 6) {
    const groups = parseIpv6(ip);
    if (groups) {
      const v6 = Buffer.alloc(16);
      groups.forEach((group, i) => v6.writeUInt16BE(group, i * 2));
      bytes = v6;
    }
  }
  if (!bytes) {
    throw new Error(`auto-TLS: ${shown} is not a valid IPv4 or IPv6 address (the certificate must name the IP Ironic connects to; no host names, brackets or ports)`);
  }
  if (bytes.every((b) => b === 0)) {
    throw new Error(`auto-TLS: ${shown} is the unspecified address; the certificate must name the address Ironic connects to (advertise host), not a listen wildcard`);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// The certificate
// ---------------------------------------------------------------------------------------------

function checkOptions(opts: SelfSignedOptions): { curve: TlsCurve; validDays: number; backdateSeconds: number; now: Date } {
  const curve = opts.curve ?? DEFAULT_TLS_CURVE;
  if (!TLS_CURVES.includes(curve)) {
    throw new Error(`auto-TLS: unsupported curve ${JSON.stringify(curve)} (use one of ${TLS_CURVES.join(", ")})`);
  }
  const hostname = opts.hostname;
  if (typeof hostname !== "string" || hostname.length === 0) throw new Error("auto-TLS: the hostname (certificate CN) is empty");
  if ([...hostname].length > MAX_COMMON_NAME) {
    throw new Error(`auto-TLS: hostname ${JSON.stringify(hostname)} is longer than the ${MAX_COMMON_NAME} characters a CN may hold`);
  }
  if ([...hostname].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) throw new Error(`auto-TLS: hostname ${JSON.stringify(hostname)} contains control characters`);
  const validDays = opts.validDays ?? DEFAULT_VALID_DAYS;
  if (!Number.isFinite(validDays) || validDays <= 0) throw new Error(`auto-TLS: validDays must be a positive number, got ${validDays}`);
  const backdateSeconds = opts.backdateSeconds ?? DEFAULT_BACKDATE_SECONDS;
  if (!Number.isFinite(backdateSeconds) || backdateSeconds < 0) {
    throw new Error(`auto-TLS: backdateSeconds must be a non-negative number, got ${backdateSeconds}`);
  }
  const now = opts.now ?? new Date();
  if (Number.isNaN(now.getTime())) throw new Error("auto-TLS: `now` is an invalid Date");
  return { curve, validDays, backdateSeconds, now };
}

/**
 * A new EC key and a self-signed certificate for it, as IPA's auto-TLS makes them.
 * Throws an Error (message says why) for an invalid IP, hostname, curve or validity.
 */
export function generateSelfSignedCertificate(opts: SelfSignedOptions): CertificatePair {
  const ipBytes = parseIpAddress(opts.ip);
  const { curve, validDays, backdateSeconds, now } = checkOptions(opts);

  // Times are whole seconds in the certificate; truncate so the math below is exact.
  const issuedAt = Math.floor(now.getTime() / 1000) * 1000;
  const notBefore = new Date(issuedAt - Math.round(backdateSeconds * 1000));
  const notAfter = new Date(issuedAt + Math.round(validDays * DAY_MS));

  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: curve });
  const spki = publicKey.export({ type: "spki", format: "der" });

  // RFC 5758 3.2: ECDSA AlgorithmIdentifiers carry no parameters at all (not even NULL).
  const signatureAlgorithm = derSequence(derOid(OID.ecdsaWithSha512));
  const name = derName(opts.hostname);

  const extensions = derSequence(
    // GeneralNames ::= SEQUENCE OF GeneralName; iPAddress is [7] IMPLICIT OCTET STRING.
    derExtension(OID.subjectAltName, true, derSequence(derImplicitPrimitive(7, ipBytes))),
    // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }: CA:FALSE is the empty SEQUENCE.
    derExtension(OID.basicConstraints, true, derSequence()),
    derExtension(OID.extKeyUsage, false, derSequence(derOid(OID.serverAuth))),
  );

  const tbs = derSequence(
    derExplicit(0, derSmallInteger(2)), // version v3
    derUnsignedInteger(randomSerial()),
    signatureAlgorithm,
    name, // issuer
    derSequence(derTime(notBefore), derTime(notAfter)),
    name, // subject
    spki,
    derExplicit(3, extensions),
  );

  // node:crypto's default dsaEncoding for EC keys is "der": the ECDSA-Sig-Value X.509 wants.
  const signature = sign("sha512", tbs, privateKey);
  const certificate = derSequence(tbs, signatureAlgorithm, derBitString(signature));

  return {
    certPem: toPem("CERTIFICATE", certificate),
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/** Writes `content` to `file` atomically (temp file + rename) with exactly `mode`. */
async function writeAtomic(file: string, content: string, mode: number): Promise<void> {
  const temp = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    const handle = await open(temp, "wx", mode);
    try {
      await handle.writeFile(content, "utf8");
      await handle.sync();
    } finally {
      await handle.close();
    }
    // The umask may have narrowed (or, for a weird umask, failed to narrow) the creation mode.
    await chmod(temp, mode);
    await rename(temp, file);
  } catch (err: unknown) {
    await rm(temp, { force: true });
    throw err;
  }
}

/**
 * Writes `agent.crt` (mode 0644) and `agent.key` (mode 0600) into `dir`, creating it (mode 0700) if
 * needed, and replacing earlier files atomically. Refuses a pair whose key does not match the certificate.
 */
export async function writeAutoTlsFiles(dir: string, pair: CertificatePair): Promise<{ certFile: string; keyFile: string }> {
  const cert = new X509Certificate(pair.certPem);
  if (!cert.checkPrivateKey(createPrivateKey(pair.keyPem))) {
    throw new Error("auto-TLS: the private key does not match the certificate");
  }
  const base = resolve(dir);
  await mkdir(base, { recursive: true, mode: 0o700 });
  const certFile = join(base, CERT_FILE_NAME);
  const keyFile = join(base, KEY_FILE_NAME);
  await writeAtomic(keyFile, pair.keyPem, 0o600);
  await writeAtomic(certFile, pair.certPem, 0o644);
  return { certFile, keyFile };
}
