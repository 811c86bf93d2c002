/**
 * The receiver's certificate (generated, stored, reloaded), the X.509 writer, fingerprints and the
 * config directory. Files go to a fresh temporary directory only.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  certificateFingerprint,
  configDir,
  createCertificate,
  type Logger,
  loadOrCreateCertificate,
  parseFingerprint,
  UserError,
} from "../src/index.ts";

const temp = mkdtempSync(join(tmpdir(), "mcudpt-tls-test-"));
afterAll(() => rmSync(temp, { recursive: true, force: true }));

function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, log: (_level, message) => lines.push(message) };
}

/** The thrown error, asserting it is a one-line UserError. */
function userError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    const message = (error as Error).message;
    expect(message).not.toContain("\n");
    return message;
  }
  throw new Error("expected a UserError");
}

describe("loadOrCreateCertificate", () => {
  const dir = join(temp, "config", "mcudpt");
  const certPath = join(dir, "tls-cert.pem");
  const keyPath = join(dir, "tls-key.pem");

  test("generates a self-signed P-256 certificate for localhost, 127.0.0.1 and ::1, key 0600 in a 0700 directory", () => {
    const log = recorder();
    const files = loadOrCreateCertificate(certPath, keyPath, log);
    expect(log.lines.some((line) => line.includes("generated a self-signed TLS certificate"))).toBe(true);
    expect(statSync(keyPath).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const x509 = new X509Certificate(files.cert);
    expect(x509.subject).toBe("CN=mcudpt receiver");
    expect(x509.issuer).toBe("CN=mcudpt receiver");
    expect(x509.subjectAltName).toBe("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1");
    expect(x509.ca).toBe(false);
    expect(x509.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(x509.verify(x509.publicKey)).toBe(true);
    expect(x509.checkPrivateKey(createPrivateKey(files.key))).toBe(true);
    const years = (Date.parse(x509.validTo) - Date.now()) / (365 * 24 * 3600 * 1000);
    expect(years).toBeGreaterThan(9.9);
    expect(years).toBeLessThan(10.1);
    expect(x509.checkHost("localhost")).toBe("localhost");
    expect(x509.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(files.fingerprint).toBe(certificateFingerprint(x509.raw));
  });

  test("openssl accepts it (when installed)", () => {
    const has = spawnSync("sh", ["-c", "command -v openssl"]).status === 0;
    if (!has) return;
    const result = spawnSync("openssl", ["verify", "-CAfile", certPath, certPath], { encoding: "utf8" });
    expect(result.stdout.trim()).toBe(`${certPath}: OK`);
  });

  test("keeps it: a second start loads the same certificate", () => {
    const first = loadOrCreateCertificate(certPath, keyPath, recorder());
    const log = recorder();
    const second = loadOrCreateCertificate(certPath, keyPath, log);
    expect(second.fingerprint).toBe(first.fingerprint);
    expect(log.lines).toEqual([]);
  });

  test("refuses one file without the other, a key of another certificate, and garbage", () => {
    const lone = join(temp, "lone");
    expect(userError(() => loadOrCreateCertificate(certPath, join(lone, "missing-key.pem"), recorder()))).toMatch(
      /missing-key\.pem is missing but .*tls-cert\.pem exists/,
    );
    const otherKey = join(temp, "other-key.pem");
    writeFileSync(
      otherKey,
      generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }),
    );
    expect(userError(() => loadOrCreateCertificate(certPath, otherKey, recorder()))).toMatch(
      /does not belong to the certificate/,
    );
    const garbage = join(temp, "garbage.pem");
    writeFileSync(garbage, "not a certificate\n");
    expect(userError(() => loadOrCreateCertificate(garbage, keyPath, recorder()))).toMatch(
      /garbage\.pem is not a PEM certificate/,
    );
    expect(userError(() => loadOrCreateCertificate(certPath, garbage, recorder()))).toMatch(
      /garbage\.pem is not a usable PEM private key/,
    );
  });
});

describe("createCertificate", () => {
  test("issues a server certificate from a CA, with dates past 2049 as GeneralizedTime", () => {
    const caKeys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const ca = new X509Certificate(
      createCertificate({
        commonName: "test CA",
        publicKey: caKeys.publicKey,
        issuerKey: caKeys.privateKey,
        ca: true,
        notAfter: new Date("2060-01-02T03:04:05Z"),
      }),
    );
    expect(ca.ca).toBe(true);
    expect(new Date(ca.validTo).toISOString()).toBe("2060-01-02T03:04:05.000Z");
    const leafKeys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const leaf = new X509Certificate(
      createCertificate({
        commonName: "receiver.example",
        publicKey: leafKeys.publicKey,
        issuerKey: caKeys.privateKey,
        issuerName: "test CA",
        altNames: ["receiver.example", "192.0.2.7", "2001:db8::7"],
        notAfter: new Date(Date.now() + 86_400_000),
      }),
    );
    expect(leaf.checkIssued(ca)).toBe(true);
    expect(leaf.verify(createPublicKey(caKeys.privateKey))).toBe(true);
    expect(leaf.subjectAltName).toBe("DNS:receiver.example, IP Address:192.0.2.7, IP Address:2001:DB8:0:0:0:0:0:7");
    expect(leaf.checkHost("other.example")).toBeUndefined();
  });
});

describe("fingerprints", () => {
  const der = new Uint8Array([1, 2, 3]);
  // SHA-256 of 01 02 03.
  const hex = "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81";
  const base64 = `SHA256:${Buffer.from(hex, "hex").toString("base64").replace(/=+$/, "")}`;

  test("are SHA256:<unpadded base64> of the DER", () => {
    expect(certificateFingerprint(der)).toBe(base64);
    expect(base64).not.toContain("=");
  });

  test("parse from the logged form, and from hex with or without colons", () => {
    expect(parseFingerprint(base64)).toBe(base64);
    expect(parseFingerprint(`${base64}=`)).toBe(base64);
    expect(parseFingerprint(` sha256:${base64.slice(7)} `)).toBe(base64);
    expect(parseFingerprint(hex)).toBe(base64);
    expect(parseFingerprint(hex.toUpperCase())).toBe(base64);
    const colons = hex.toUpperCase().match(/../g)?.join(":") ?? "";
    expect(parseFingerprint(colons)).toBe(base64); // openssl x509 -fingerprint -sha256
    expect(parseFingerprint(`SHA256:${colons}`)).toBe(base64);
  });

  test("refuse anything else with one line naming the flag", () => {
    for (const bad of [
      "",
      "garbage",
      "SHA256:",
      `SHA256:${base64.slice(8)}`,
      hex.slice(2),
      `${hex}00`,
      `MD5:${hex}`,
      "zz".repeat(32),
    ]) {
      expect(userError(() => parseFingerprint(bad))).toMatch(/^--tls-fingerprint: ".*" is not a SHA-256 fingerprint/);
    }
  });
});

describe("configDir", () => {
  test("prefers $MCUDPT_CONFIG_DIR, then $XDG_CONFIG_HOME/mcudpt, then ~/.config/mcudpt", () => {
    expect(configDir({ MCUDPT_CONFIG_DIR: "/a", XDG_CONFIG_HOME: "/b" })).toBe("/a");
    expect(configDir({ XDG_CONFIG_HOME: "/b" })).toBe("/b/mcudpt");
    expect(configDir({ XDG_CONFIG_HOME: "relative" })).toMatch(/\/\.config\/mcudpt$/);
    expect(configDir({})).toMatch(/\/\.config\/mcudpt$/);
  });
});
