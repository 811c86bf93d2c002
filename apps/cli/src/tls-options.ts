/**
 * The --tls flags of both commands and their conversion into the roles' TLS options. Without --tls
 * the stream is cleartext (see README "Encryption"), so every other TLS flag requires it.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  configDir,
  configPath,
  fileCertificatePins,
  type Logger,
  loadOrCreateCertificate,
  messageOf,
  parseFingerprint,
  type ReceiverTlsOptions,
  type SenderTlsOptions,
  UserError,
} from "@mcudpt/core";
import type { ArgsDef } from "citty";
import { type RawArgs, stringArg } from "./options.js";

const tlsFlag = {
  type: "boolean",
  description: "Encrypt the TCP connection with TLS (both sides must use it)",
} as const;

export const receiverTlsArgs = {
  tls: tlsFlag,
  "tls-cert": {
    type: "string",
    description: "PEM certificate (chain) to serve (default: a self-signed one generated and kept in the config dir)",
    valueHint: "FILE",
  },
  "tls-key": { type: "string", description: "PEM private key of --tls-cert", valueHint: "FILE" },
} satisfies ArgsDef;

export const senderTlsArgs = {
  tls: tlsFlag,
  "tls-ca": {
    type: "string",
    description: "Verify the receiver's certificate against this PEM CA (and its name) instead of pinning",
    valueHint: "FILE",
  },
  "tls-fingerprint": {
    type: "string",
    description: "The receiver's certificate fingerprint, as it logs it (default: trust the first one seen)",
    valueHint: "SHA256:…",
  },
} satisfies ArgsDef;

function requireTls(args: RawArgs, names: string[]): void {
  const given = names.find((name) => args[name] !== undefined);
  if (given && !args.tls) throw new UserError(`--${given} needs --tls`);
}

/** The receiver's certificate (generated in the config dir by default); logs its fingerprint. */
export function receiverTls(args: RawArgs, logger: Logger): ReceiverTlsOptions | undefined {
  requireTls(args, ["tls-cert", "tls-key"]);
  if (!args.tls) return undefined;
  const cert = stringArg(args, "tls-cert");
  const key = stringArg(args, "tls-key");
  if ((cert === undefined) !== (key === undefined))
    throw new UserError("give both --tls-cert and --tls-key, or neither");
  const dir = configDir();
  const files = loadOrCreateCertificate(cert ?? join(dir, "tls-cert.pem"), key ?? join(dir, "tls-key.pem"), logger);
  logger.log(
    "info",
    `TLS certificate ${files.fingerprint} (senders pin it with --tls-fingerprint ${files.fingerprint})`,
  );
  return { cert: files.cert, key: files.key };
}

/** The sender's trust in the receiver's certificate: a CA, a pinned fingerprint, or the first one seen. */
export function senderTls(args: RawArgs, logger: Logger): SenderTlsOptions | undefined {
  requireTls(args, ["tls-ca", "tls-fingerprint"]);
  if (!args.tls) return undefined;
  const caFile = stringArg(args, "tls-ca");
  const fingerprintText = stringArg(args, "tls-fingerprint");
  if (caFile !== undefined && fingerprintText !== undefined)
    throw new UserError("give --tls-ca or --tls-fingerprint, not both");
  if (fingerprintText !== undefined) return { fingerprint: parseFingerprint(fingerprintText) };
  if (caFile !== undefined) return { ca: readCa(caFile) };
  const pins = fileCertificatePins(stringArg(args, "known-receivers") ?? configPath("known_receivers"));
  return {
    onNewCertificate: (fingerprint, receiver) => {
      const verdict = pins(receiver, fingerprint);
      if (verdict.verdict === "changed") {
        logger.log("error", verdict.reason);
        return false;
      }
      if (verdict.verdict === "added") {
        logger.log(
          "info",
          `receiver ${receiver} TLS certificate ${fingerprint} is new: remembered in ${verdict.path} (trust on first use)`,
        );
      }
      return true;
    },
  };
}

function readCa(file: string): string {
  let pem: string;
  try {
    pem = readFileSync(file, "utf8");
  } catch (error) {
    throw new UserError(`--tls-ca: cannot read ${file}: ${messageOf(error)}`);
  }
  try {
    new X509Certificate(pem);
  } catch {
    throw new UserError(`--tls-ca: ${file} is not a PEM certificate`);
  }
  return pem;
}
