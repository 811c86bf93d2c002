/** Throwaway Ed25519 identities and in-memory trust for tests: nothing is written under ~/.config. */
import { generateKeyPair, identityFromPem, type LoadedIdentity, type PeerAdmission } from "@mcudpt/core";

export function testIdentity(name = "test"): LoadedIdentity {
  return identityFromPem(generateKeyPair(name).privateKeyPem, name);
}

/** Trusts exactly the keys added to it; remembers what the "operator" approved. */
export function memoryTrust(...trusted: LoadedIdentity[]): PeerAdmission & { remembered: string[] } {
  const remembered: string[] = [];
  const print = (key: Uint8Array) => Buffer.from(key).toString("hex");
  const keys = new Set(trusted.map((identity) => print(identity.publicKey)));
  return {
    remembered,
    check: (publicKey) =>
      keys.has(print(publicKey)) ? { verdict: "trusted", why: "known in test" } : { verdict: "unknown" },
    remember(publicKey, comment) {
      keys.add(print(publicKey));
      remembered.push(comment);
    },
  };
}
