/**
 * DialerTlsPolicy: which certificate the dialing side takes. A fixed fingerprint is a pin for the
 * process; without one, the hook (known_receivers, trust on first use) is asked at every connection,
 * so its file stays the pin and an edit to it takes effect without a restart (SECURITY.md).
 */
import { describe, expect, test } from "bun:test";
import { certificateFingerprint, type TcpConnection } from "../src/index.ts";
import { DialerTlsPolicy } from "../src/tls-peer.ts";

const CERT_A = new Uint8Array([0x30, 0x82, 1, 2, 3, 4]);
const CERT_B = new Uint8Array([0x30, 0x82, 5, 6, 7, 8]);
const showing = (cert: Uint8Array) => ({ peerCertificate: cert }) as unknown as TcpConnection;
const PEER = "127.0.0.1:1937";

describe("DialerTlsPolicy", () => {
  test("with a hook, the hook decides at every connection: nothing is pinned in memory", async () => {
    const asked: string[] = [];
    let pinned = certificateFingerprint(CERT_A); // what the hook's file says
    const policy = new DialerTlsPolicy(
      {
        onNewCertificate: (print) => {
          asked.push(print);
          return print === pinned ? true : `CHANGED: ${print}, the file pins ${pinned}`;
        },
      },
      "127.0.0.1",
      "receiver",
    );
    expect(await policy.check(showing(CERT_A), PEER)).toBeUndefined();
    expect(await policy.check(showing(CERT_B), PEER)).toBe(
      `CHANGED: ${certificateFingerprint(CERT_B)}, the file pins ${certificateFingerprint(CERT_A)}`,
    );
    pinned = certificateFingerprint(CERT_B); // the operator edited the file: B from now on
    expect(await policy.check(showing(CERT_B), PEER)).toBeUndefined();
    expect(asked.length).toBe(3);
  });

  test("a hook that says false refuses with a generic reason naming the certificate", async () => {
    const policy = new DialerTlsPolicy({ onNewCertificate: async () => false }, "127.0.0.1", "receiver");
    expect(await policy.check(showing(CERT_A), PEER)).toBe(
      `receiver's TLS certificate ${certificateFingerprint(CERT_A)} at ${PEER} was not accepted — refusing`,
    );
  });

  test("no hook, no fingerprint: the first certificate is pinned for the process", async () => {
    const policy = new DialerTlsPolicy({}, "127.0.0.1", "receiver");
    expect(await policy.check(showing(CERT_A), PEER)).toBeUndefined();
    expect(await policy.check(showing(CERT_A), PEER)).toBeUndefined();
    expect(await policy.check(showing(CERT_B), PEER)).toContain("does not match the pinned");
  });

  test("a fixed fingerprint is the pin, whatever is shown", async () => {
    const policy = new DialerTlsPolicy({ fingerprint: certificateFingerprint(CERT_B) }, "127.0.0.1", "receiver");
    expect(await policy.check(showing(CERT_A), PEER)).toContain("does not match the pinned");
    expect(await policy.check(showing(CERT_B), PEER)).toBeUndefined();
  });
});
