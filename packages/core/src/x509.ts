/**
 * A minimal X.509 v3 certificate writer (DER), enough for the receiver's self-signed certificate and
 * for tests that need a small CA. node:crypto parses certificates but cannot create them, and a
 * general ASN.1 library would cost start-up time for the ~100 lines actually needed.
 * Keys are ECDSA P-256; signatures ecdsa-with-SHA256.
 */
import { createHash, createPublicKey, type KeyObject, randomBytes, sign } from "node:crypto";
import { isIP } from "node:net";

/** One DER element: tag, definite length, contents. */
function der(tag: number, ...contents: Uint8Array[]): Buffer {
  const body = Buffer.concat(contents);
  const n = body.length;
  let length: number[];
  if (n < 0x80) length = [n];
  else if (n < 0x100) length = [0x81, n];
  else if (n < 0x10000) length = [0x82, n >> 8, n & 0xff];
  else length = [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), body]);
}

const seq = (...items: Uint8Array[]) => der(0x30, ...items);
const set = (...items: Uint8Array[]) => der(0x31, ...items);
const octets = (bytes: Uint8Array) => der(0x04, bytes);
const utf8 = (text: string) => der(0x0c, Buffer.from(text, "utf8"));
const bool = (value: boolean) => der(0x01, Buffer.from([value ? 0xff : 0]));
/** Context-specific constructed [n] (EXPLICIT tagging). */
const explicit = (n: number, inner: Uint8Array) => der(0xa0 | n, inner);

function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const bytes = [parts[0] * 40 + parts[1]];
  for (const part of parts.slice(2)) {
    const chunk = [part & 0x7f];
    for (let v = part >>> 7; v > 0; v >>>= 7) chunk.unshift((v & 0x7f) | 0x80);
    bytes.push(...chunk);
  }
  return der(0x06, Buffer.from(bytes));
}

/** A non-negative INTEGER from big-endian bytes (a leading 0 keeps the sign bit clear). */
function unsigned(bytes: Uint8Array): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  const trimmed = bytes.subarray(start);
  return der(0x02, trimmed[0] & 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

/** UTCTime until 2049, GeneralizedTime from 2050 on (RFC 5280 §4.1.2.5). */
function time(date: Date): Buffer {
  const iso = date.toISOString().replace(/[-:T]/g, "").slice(0, 14); // YYYYMMDDHHMMSS
  return date.getUTCFullYear() < 2050 ? der(0x17, Buffer.from(`${iso.slice(2)}Z`)) : der(0x18, Buffer.from(`${iso}Z`));
}

const name = (commonName: string) => seq(set(seq(oid("2.5.4.3"), utf8(commonName))));
const ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"));
const extension = (id: string, critical: boolean, value: Uint8Array) =>
  seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));

/** subjectAltName entries: IP literals as iPAddress [7], anything else as dNSName [2]. */
function altNames(names: string[]): Buffer {
  return seq(
    ...names.map((entry) => {
      const family = isIP(entry);
      if (family === 4) return der(0x87, Buffer.from(entry.split(".").map(Number)));
      if (family === 6) return der(0x87, ipv6Bytes(entry));
      return der(0x82, Buffer.from(entry, "ascii"));
    }),
  );
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail = ""] = address.split("::");
  const groups = (text: string) => (text === "" ? [] : text.split(":").map((g) => Number.parseInt(g, 16)));
  const left = groups(head);
  const right = address.includes("::") ? groups(tail) : [];
  const all = [...left, ...Array(8 - left.length - right.length).fill(0), ...right];
  const bytes = Buffer.alloc(16);
  for (const [i, group] of all.entries()) bytes.writeUInt16BE(group, i * 2);
  return bytes;
}

export interface CertificateSpec {
  /** The certificate's subject (CN). */
  commonName: string;
  /** The key the certificate is for. */
  publicKey: KeyObject;
  /** Signs the certificate; the subject's own key for a self-signed one. */
  issuerKey: KeyObject;
  /** The issuer's CN; the subject's for a self-signed one. */
  issuerName?: string;
  /** subjectAltName: host names and IP literals. */
  altNames?: string[];
  /** A CA certificate (may sign others) rather than a server's. */
  ca?: boolean;
  notBefore?: Date;
  notAfter: Date;
}

/** Builds and signs one certificate; returns it as PEM. */
export function createCertificate(spec: CertificateSpec): string {
  const spki = spec.publicKey.export({ type: "spki", format: "der" });
  // SubjectKeyIdentifier/AuthorityKeyIdentifier: method 1 of RFC 5280 (SHA-1 of the key bits);
  // chain building in OpenSSL uses them to match a certificate with its issuer.
  const keyId = (key: KeyObject) => {
    const info = key.export({ type: "spki", format: "der" });
    return createHash("sha1")
      .update(info.subarray(info.length - 65))
      .digest(); // P-256 point: 65 bytes
  };
  const issuerPublic = createPublicKey(spec.issuerKey);
  const extensions = [
    extension("2.5.29.19", true, spec.ca ? seq(bool(true)) : seq()), // basicConstraints
    // keyUsage: digitalSignature (bit 0) for a server; keyCertSign + cRLSign (bits 5, 6) for a CA.
    extension("2.5.29.15", true, spec.ca ? der(0x03, Buffer.from([1, 0x06])) : der(0x03, Buffer.from([7, 0x80]))),
    extension("2.5.29.14", false, octets(keyId(spec.publicKey))),
    extension("2.5.29.35", false, seq(der(0x80, keyId(issuerPublic)))),
  ];
  if (!spec.ca) extensions.push(extension("2.5.29.37", false, seq(oid("1.3.6.1.5.5.7.3.1")))); // serverAuth
  if (spec.altNames?.length) extensions.push(extension("2.5.29.17", false, altNames(spec.altNames)));
  const serial = randomBytes(16);
  serial[0] &= 0x7f; // positive, at most 20 octets (RFC 5280 §4.1.2.2)
  const tbs = seq(
    explicit(0, der(0x02, Buffer.from([2]))), // version v3
    unsigned(serial),
    ECDSA_SHA256,
    name(spec.issuerName ?? spec.commonName),
    seq(time(spec.notBefore ?? new Date(Date.now() - 60 * 60 * 1000)), time(spec.notAfter)),
    name(spec.commonName),
    spki,
    explicit(3, seq(...extensions)),
  );
  const signature = sign("sha256", tbs, spec.issuerKey); // ECDSA: DER-encoded (r, s)
  const certificate = seq(tbs, ECDSA_SHA256, der(0x03, Buffer.from([0]), signature));
  const base64 = certificate.toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN CERTIFICATE-----\n${base64.trimEnd()}\n-----END CERTIFICATE-----\n`;
}
