/**
 * Who trusts whom, in files an ssh user already understands:
 * - the receiver admits senders whose keys are in --authorized-keys (an allowlist; nothing else is
 *   admitted then), or else in known_senders (keys the operator approved once, like a remembered "yes");
 * - the sender pins each receiver's key in known_receivers, `HOST:PORT ssh-ed25519 AAAA…` per line (like
 *   known_hosts): the first key seen is remembered, a different one later is refused.
 * Files are re-read at each decision, so editing them takes effect without a restart.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { messageOf, UserError } from "./errors.js";
import { fingerprint, parsePublicKeyLine, publicKeyLine } from "./keys.js";
import { parseFingerprint } from "./tls.js";

export type SenderVerdict =
  | { verdict: "trusted"; why: string }
  | { verdict: "refused"; reason: string }
  /** Not known: only an operator can decide. */
  | { verdict: "unknown" };

export interface SenderTrust {
  check(publicKey: Uint8Array): SenderVerdict;
  /** The operator said yes: remember the key so the sender reconnects without asking. */
  remember(publicKey: Uint8Array, comment: string): void;
}

export interface SenderTrustFiles {
  /** Allowlist: when set, only these keys are admitted and nobody is asked. */
  authorizedKeys?: string;
  knownSenders: string;
}

export function fileSenderTrust(files: SenderTrustFiles): SenderTrust {
  // Fail at start-up, not at the first peer.
  if (files.authorizedKeys !== undefined) readKeyFile(files.authorizedKeys, true);
  else readKeyFile(files.knownSenders, false);
  return {
    check(publicKey) {
      const print = fingerprint(publicKey);
      if (files.authorizedKeys !== undefined) {
        if (readKeyFile(files.authorizedKeys, true).has(print))
          return { verdict: "trusted", why: `listed in ${files.authorizedKeys}` };
        return { verdict: "refused", reason: `key ${print} is not in the receiver's authorized keys` };
      }
      if (readKeyFile(files.knownSenders, false).has(print))
        return { verdict: "trusted", why: `known sender (${files.knownSenders})` };
      return { verdict: "unknown" };
    },
    remember(publicKey, comment) {
      appendLine(files.knownSenders, publicKeyLine(publicKey, comment));
    },
  };
}

/** Fingerprints of the keys in an authorized_keys-style file. Unparseable lines are errors, not silently skipped. */
function readKeyFile(path: string, mustExist: boolean): Set<string> {
  const prints = new Set<string>();
  if (!mustExist && !existsSync(path)) return prints;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new UserError(`cannot read ${path}: ${messageOf(error)}`);
  }
  text.split(/\r?\n/).forEach((line, index) => {
    if (line.trim() === "" || line.trimStart().startsWith("#")) return;
    // A pinned key of a peer this side dials (`HOST:PORT ssh-ed25519 …`, `HOST:PORT tls …`) shares
    // the file of that peer role; it is not an approval.
    if (/^\s*\S+\s+(ssh-ed25519|tls)\s/.test(line) && !line.trimStart().startsWith("ssh-ed25519")) return;
    const parsed = parsePublicKeyLine(line);
    if (!parsed) throw new UserError(`${path} line ${index + 1}: not an "ssh-ed25519 AAAA… comment" public key line`);
    prints.add(fingerprint(parsed.publicKey));
  });
  return prints;
}

export type ReceiverVerdict =
  | { verdict: "trusted" }
  /** First contact, now remembered (trust on first use). */
  | { verdict: "added"; path: string }
  | { verdict: "changed"; reason: string };

/** The sender's side: is this the receiver we talked to before? */
export interface ReceiverPins {
  check(receiver: string, publicKey: Uint8Array): ReceiverVerdict;
}

/**
 * TLS certificates pinned on first use, in the same known_receivers file: `HOST:PORT tls SHA256:…`.
 * (The key check runs inside the TLS stream; pinning the certificate too keeps an on-path party from
 * terminating TLS and relaying the handshake.)
 */
export function fileCertificatePins(
  path: string,
): (receiver: string, certificateFingerprint: string) => ReceiverVerdict {
  return (receiver, print) =>
    pinOnFirstUse(path, receiver, "tls", print, `${receiver} tls ${print}`, (fields) => fields[2], "TLS certificate");
}

/**
 * Looks up `receiver`'s pin of `type` in a known_receivers-style file: trusted when it is `print`,
 * refused when it differs (naming the line), added when there is none (trust on first use).
 * `pinned` reads the pinned fingerprint from a matching line's fields.
 */
function pinOnFirstUse(
  path: string,
  receiver: string,
  type: string,
  print: string,
  newLine: string,
  pinned: (fields: string[], lineNumber: number) => string,
  what: string,
): ReceiverVerdict {
  const lines = existsSync(path) ? readLines(path) : [];
  for (const [index, line] of lines.entries()) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 3 || fields[0] !== receiver || fields[1] !== type) continue;
    const pinnedPrint = pinned(fields, index + 1);
    if (pinnedPrint === print) return { verdict: "trusted" };
    return {
      verdict: "changed",
      reason:
        `${what.toUpperCase()} CHANGED: ${receiver} now presents ${print}, but ${path} line ${index + 1} pins ${pinnedPrint}. ` +
        `Refusing (someone may be impersonating it); if its ${what.replace(/^TLS /, "")} was replaced on purpose, delete that line`,
    };
  }
  appendLine(path, newLine);
  return { verdict: "added", path };
}

/** An explicit pin (--receiver-key): no file involved. */
export function fixedReceiverPin(expected: string, flag = "--receiver-key"): ReceiverPins {
  const pin = parseFingerprint(expected, flag);
  return {
    check(receiver, publicKey) {
      const print = fingerprint(publicKey);
      if (print === pin) return { verdict: "trusted" };
      return {
        verdict: "changed",
        reason: `${receiver} presents key ${print}, not the ${pin} given by ${flag}: refusing (an impostor, or the wrong pin)`,
      };
    },
  };
}

export function fileReceiverPins(path: string): ReceiverPins {
  return {
    check(receiver, publicKey) {
      const readPin = (fields: string[], lineNumber: number): string => {
        const parsed = parsePublicKeyLine(fields.slice(1).join(" "));
        if (!parsed) throw new UserError(`${path} line ${lineNumber}: not a "HOST:PORT ssh-ed25519 AAAA…" line`);
        return fingerprint(parsed.publicKey);
      };
      const line = `${receiver} ${publicKeyLine(publicKey)}`;
      return pinOnFirstUse(path, receiver, "ssh-ed25519", fingerprint(publicKey), line, readPin, "key");
    },
  };
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, "utf8").split(/\r?\n/);
  } catch (error) {
    throw new UserError(`cannot read ${path}: ${messageOf(error)}`);
  }
}

function appendLine(path: string, line: string): void {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    appendFileSync(path, `${line}\n`, { mode: 0o600 });
  } catch (error) {
    throw new UserError(`cannot write ${path}: ${messageOf(error)}`);
  }
}
