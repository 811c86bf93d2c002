/**
 * TLS material for the optional encrypted link: the receiver's certificate (kept on disk, generated
 * self-signed on first use) and the SHA-256 fingerprints the sender pins it by.
 */
import { createHash, createPrivateKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileFailure, messageOf, UserError } from "./errors.js";
import type { Logger } from "./logger.js";
import { createCertificate } from "./x509.js";

export interface CertificateFiles {
  /** PEM certificate (chain) and private key, as given to the transport. */
  cert: string;
  key: string;
  /** The leaf certificate's fingerprint, "SHA256:<base64>". */
  fingerprint: string;
}

const VALIDITY_MS = 10 * 365 * 24 * 60 * 60 * 1000;

/**
 * Reads the receiver's certificate and key, or, when neither file exists, generates a self-signed
 * ECDSA P-256 certificate for them (key 0600 in a 0700 directory). One file without the other is an
 * error rather than a reason to overwrite anything.
 */
export function loadOrCreateCertificate(certPath: string, keyPath: string, logger: Logger): CertificateFiles {
  const haveCert = existsSync(certPath);
  const haveKey = existsSync(keyPath);
  if (!haveCert && !haveKey) {
    generate(certPath, keyPath);
    logger.log("info", `generated a self-signed TLS certificate: ${certPath} (key ${keyPath})`);
  } else if (!haveCert || !haveKey) {
    throw new UserError(
      `TLS: ${haveCert ? keyPath : certPath} is missing but ${haveCert ? certPath : keyPath} exists; give both files, or remove the other to generate a new pair`,
    );
  }
  const cert = readText(certPath, "certificate");
  const key = readText(keyPath, "key");
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (error) {
    throw new UserError(`TLS: ${certPath} is not a PEM certificate: ${messageOf(error)}`);
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch (error) {
    throw new UserError(`TLS: ${keyPath} is not a usable PEM private key: ${messageOf(error)}`);
  }
  if (!matches) throw new UserError(`TLS: the key in ${keyPath} does not belong to the certificate in ${certPath}`);
  return { cert, key, fingerprint: certificateFingerprint(x509.raw) };
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new UserError(`TLS: cannot read the ${what} ${path}: ${fileFailure(error)}`);
  }
}

function generate(certPath: string, keyPath: string): void {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: "mcudpt receiver",
    publicKey,
    issuerKey: privateKey,
    altNames: ["localhost", "127.0.0.1", "::1"],
    notAfter: new Date(Date.now() + VALIDITY_MS),
  });
  try {
    for (const dir of new Set([dirname(certPath), dirname(keyPath)])) {
      if (!existsSync(dir)) {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        chmodSync(dir, 0o700); // mkdir's mode is filtered by the umask
      }
    }
    // "wx": never overwrite a file another process created meanwhile.
    writeFileSync(keyPath, privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600, flag: "wx" });
    writeFileSync(certPath, cert, { mode: 0o644, flag: "wx" });
  } catch (error) {
    throw new UserError(`TLS: cannot store the generated certificate: ${messageOf(error)}`);
  }
}

/** "SHA256:" and the unpadded base64 of the SHA-256 of a certificate's DER (the ssh style). */
export function certificateFingerprint(der: Uint8Array): string {
  return `SHA256:${createHash("sha256").update(der).digest("base64").replace(/=+$/, "")}`;
}

/** The fingerprint of the first certificate in a PEM text. */
export function pemFingerprint(pem: string): string {
  return certificateFingerprint(new X509Certificate(pem).raw);
}

/**
 * Accepts "SHA256:<base64>" (as the receiver logs it) or 64 hex digits with or without colons (as
 * `openssl x509 -fingerprint -sha256` prints them); returns the "SHA256:<base64>" form.
 */
export function parseFingerprint(text: string, what = "--tls-fingerprint"): string {
  const trimmed = text.trim();
  let digest: Buffer | undefined;
  const base64 = /^sha256:([A-Za-z0-9+/]{43})=?$/i.exec(trimmed);
  if (base64) {
    digest = Buffer.from(base64[1], "base64");
  } else {
    const hex = trimmed.replace(/^sha256:/i, "");
    if (/^[0-9a-f]{64}$/i.test(hex) || /^[0-9a-f]{2}(:[0-9a-f]{2}){31}$/i.test(hex)) {
      digest = Buffer.from(hex.replace(/:/g, ""), "hex");
    }
  }
  if (digest?.length !== 32) {
    throw new UserError(`${what}: "${text}" is not a SHA-256 fingerprint (SHA256:<base64>, or 64 hex digits)`);
  }
  return `SHA256:${digest.toString("base64").replace(/=+$/, "")}`;
}
