/** The protocol's CryptoProvider from node:crypto, which both Node and Bun implement natively. */
import { createHmac, randomBytes } from "node:crypto";
import type { CryptoProvider } from "@mcudpt/protocol";
import { verifyEd25519 } from "./keys.js";

export const nodeCrypto: CryptoProvider = {
  randomBytes: (length) => new Uint8Array(randomBytes(length)),
  hmacSha256: (key, data) => new Uint8Array(createHmac("sha256", key).update(data).digest()),
  verifyEd25519,
};
