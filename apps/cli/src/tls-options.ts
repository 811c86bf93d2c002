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
  type ListenerTlsOptions,
  type DialerTlsOptions,
  UserError,
} from "@mcudpt/core";
import type { ArgsDef } from "citty";
import { type RawArgs, stringArg } from "./options.js";

const tlsFlag = {
  type: "boolean",
  description: "Encrypt the TCP connection with TLS (both sides must use it)",
} as const;

export const tlsArgs = {
  tls: tlsFlag,
  "tls-cert": {
    type: "string",
    description:
      "Listening side: PEM certificate (chain) to serve (default: a self-signed one generated and kept in the config dir)",
    valueHint: "FILE",
  },
  "tls-key": { type: "string", description: "Listening side: PEM private key of --tls-cert", valueHint: "FILE" },
  "tls-ca": {
    type: "string",
    description: "Dialing side: verify the peer's certificate against this PEM CA (and its name) instead of pinning",
    valueHint: "FILE",
  },
  "tls-fingerprint": {
    type: "string",
    description: "Dialing side: the peer's certificate fingerprint, as it logs it (default: trust the first one seen)",
    valueHint: "SHA256:…",
  },
} satisfies ArgsDef;

const LISTEN_FLAGS = ["tls-cert", "tls-key"];
const DIAL_FLAGS = ["tls-ca", "tls-fingerprint"];

function requireTls(args: RawArgs, names: string[], wrongSide: string[], side: string): void {
  const given = names.find((name) => args[name] !== undefined);
  if (given && !args.tls) throw new UserError(`--${given} needs --tls`);
  const misplaced = wrongSide.find((name) => args[name] !== undefined);
  if (misplaced) throw new UserError(`--${misplaced} is for the other side: this end ${side}`);
}

/** The certificate to serve (generated in the config dir by default); logs its fingerprint. */
export function listenTls(args: RawArgs, logger: Logger, peer: string): ListenerTlsOptions | undefined {
  requireTls(args, LISTEN_FLAGS, DIAL_FLAGS, `listens for the ${peer}`);
  if (!args.tls) return undefined;
  const cert = stringArg(args, "tls-cert");
  const key = stringArg(args, "tls-key");
  if ((cert === undefined) !== (key === undefined))
    throw new UserError("give both --tls-cert and --tls-key, or neither");
  const dir = configDir();
  const files = loadOrCreateCertificate(cert ?? join(dir, "tls-cert.pem"), key ?? join(dir, "tls-key.pem"), logger);
  logger.log(
    "info",
    `TLS certificate ${files.fingerprint} (the ${peer} pins it with --tls-fingerprint ${files.fingerprint})`,
  );
  return { cert: files.cert, key: files.key };
}

/** Trust in the certificate of the peer this end dials: a CA, a pinned fingerprint, or the first one seen. */
export function dialTls(args: RawArgs, logger: Logger, peer: "sender" | "receiver"): DialerTlsOptions | undefined {
  requireTls(args, DIAL_FLAGS, LISTEN_FLAGS, `dials the ${peer}`);
  if (!args.tls) return undefined;
  const caFile = stringArg(args, "tls-ca");
  const fingerprintText = stringArg(args, "tls-fingerprint");
  if (caFile !== undefined && fingerprintText !== undefined)
    throw new UserError("give --tls-ca or --tls-fingerprint, not both");
  if (fingerprintText !== undefined) return { fingerprint: parseFingerprint(fingerprintText) };
  if (caFile !== undefined) return { ca: readCa(caFile) };
  const pins = fileCertificatePins(stringArg(args, `known-${peer}s`) ?? configPath(`known_${peer}s`));
  return {
    onNewCertificate: (fingerprint, remote) => {
      const verdict = pins(remote, fingerprint);
      // The reason (which line of which file, what to do) is the one line the sender exits with.
      if (verdict.verdict === "changed") return verdict.reason;
      if (verdict.verdict === "added") {
        logger.log(
          "info",
          `${peer} ${remote} TLS certificate ${fingerprint} is new: remembered in ${verdict.path} (trust on first use)`,
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
