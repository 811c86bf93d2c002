import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileAdmission, filePeerPins, fixedPeerPin, generateKeyPair } from "../src/index.ts";

const dir = mkdtempSync(join(tmpdir(), "mcudpt-trust-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const keyOf = (pair: ReturnType<typeof generateKeyPair>) => pair.publicKeyLine;
const rawKey = (pair: ReturnType<typeof generateKeyPair>) =>
  new Uint8Array(Buffer.from(pair.publicKeyLine.split(" ")[1], "base64").subarray(19));

describe("authorized keys with ssh-style options", () => {
  const a = generateKeyPair("a");
  const b = generateKeyPair("b");
  const c = generateKeyPair("c");

  test('from="…" admits the key from those sources only; a plain line from anywhere; pins are skipped', () => {
    const file = join(dir, "authorized_keys");
    writeFileSync(
      file,
      [
        `from="127.0.0.2,::1" ${keyOf(a)}`,
        keyOf(b),
        `127.0.0.1:4000 ${keyOf(c)}`, // a pin of a dialed peer sharing the file: not an approval
        "",
      ].join("\n"),
    );
    const admission = fileAdmission({ authorizedKeys: file, knownSenders: join(dir, "known") });
    expect(admission.check(rawKey(a), "127.0.0.2").verdict).toBe("trusted");
    expect(admission.check(rawKey(a), "::1").verdict).toBe("trusted");
    expect(admission.check(rawKey(a), "::ffff:127.0.0.2").verdict).toBe("trusted");
    const refused = admission.check(rawKey(a), "127.0.0.3");
    expect(refused).toEqual({
      verdict: "refused",
      reason: `key ${a.fingerprint} may not connect from 127.0.0.3 (from= in ${file} line 1)`,
    });
    expect(admission.check(rawKey(b), "203.0.113.9").verdict).toBe("trusted");
    expect(admission.check(rawKey(c), "127.0.0.1").verdict).toBe("refused");
  });

  test("an unknown option, a bad from= list and a broken key line are one-line errors at start", () => {
    const cases: Array<[string, RegExp]> = [
      [`no-pty ${keyOf(a)}`, /line 1: option no-pty is not supported \(only from="ADDRESSES" and mappings="NAMES"\)/],
      [`permitlisten="53" ${keyOf(a)}`, /line 1: option permitlisten=… is not supported/],
      [`mappings="dns",mappings="ntp" ${keyOf(a)}`, /line 1: option mappings=… is given twice/],
      [`mappings="dns,,ntp" ${keyOf(a)}`, /line 1: mappings=: an empty mapping name/],
      [`mappings="dns,dns" ${keyOf(a)}`, /line 1: mappings=: a name is listed twice/],
      [`mappings="dsn" ${keyOf(a)}`, /line 1: mappings=: no mapping named "dsn" here \(named: dns, ntp\)/],
      [`from="example.com" ${keyOf(a)}`, /line 1: from=: "example.com" is not an IP address or CIDR block/],
      [`from="10.0.0.0/8" ssh-ed25519 AAAA`, /line 1: not an "ssh-ed25519 AAAA… comment" public key line/],
    ];
    for (const [line, message] of cases) {
      const file = join(dir, "bad");
      writeFileSync(file, `${line}\n`);
      const files = { authorizedKeys: file, knownSenders: join(dir, "known"), mappingNames: ["dns", "ntp"] };
      expect(() => fileAdmission(files)).toThrow(message);
    }
  });

  test('mappings="…" travels with the verdict (with from=, in either order); a plain line serves every mapping', () => {
    const file = join(dir, "authorized_keys_mappings");
    writeFileSync(
      file,
      [`mappings="dns",from="127.0.0.2" ${keyOf(a)}`, `from="::1",mappings="ntp,dns" ${keyOf(b)}`, keyOf(c)].join("\n"),
    );
    const admission = fileAdmission({
      authorizedKeys: file,
      knownSenders: join(dir, "known"),
      mappingNames: ["dns", "ntp"],
    });
    expect(admission.check(rawKey(a), "127.0.0.2")).toEqual({
      verdict: "trusted",
      why: `listed in ${file}, for mappings dns`,
      mappings: ["dns"],
    });
    expect(admission.check(rawKey(a), "127.0.0.3").verdict).toBe("refused"); // from= first: nothing else matters
    expect(admission.check(rawKey(b), "::1")).toMatchObject({ verdict: "trusted", mappings: ["ntp", "dns"] });
    expect(admission.check(rawKey(c), "192.0.2.1")).toEqual({ verdict: "trusted", why: `listed in ${file}` });
  });

  test("known_senders: an approval remembered for some mappings is read back with them", () => {
    const known = join(dir, "known_senders_mappings");
    const admission = fileAdmission({ knownSenders: known, mappingNames: ["dns", "ntp", "wg"] });
    expect(admission.check(rawKey(a)).verdict).toBe("unknown");
    admission.remember(rawKey(a), "approved today", ["dns", "wg"]);
    admission.remember(rawKey(b), "approved today");
    expect(admission.check(rawKey(a))).toMatchObject({ verdict: "trusted", mappings: ["dns", "wg"] });
    expect(admission.check(rawKey(b))).not.toHaveProperty("mappings");
  });
});

describe("how the dialing side says it checks the peer's key (its start-up line)", () => {
  const a = generateKeyPair("a");

  test("a fixed pin names its flag; a known-keys file names itself and trust on first use", () => {
    expect(fixedPeerPin(a.fingerprint).description).toBe("pinned by --receiver-key");
    expect(fixedPeerPin(a.fingerprint, "--sender-key").description).toBe("pinned by --sender-key");
    const file = join(dir, "known_receivers");
    expect(filePeerPins(file).description).toBe(`checked against ${file}, a new one remembered on first contact`);
  });
});
