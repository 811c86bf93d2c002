/**
 * Who trusts whom, in files an ssh user already understands, by TCP side (either role may take either):
 * - the listening side admits peers whose keys are in --authorized-keys (an allowlist; nothing else is
 *   admitted then), or else in its known-peers file (keys the operator approved once, like a remembered
 *   "yes");
 * - the dialing side pins each peer's key per address, `HOST:PORT ssh-ed25519 AAAA…` per line (like
 *   known_hosts): the first key seen is remembered, a different one later is refused.
 * Files are re-read at each decision, so editing them takes effect without a restart. Reasons here are
 * for the local log (they name files); what the peer is told is decided where it is told.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileFailure, messageOf, UserError } from "./errors.js";
import { fingerprint, parsePublicKeyLine, publicKeyLine } from "./keys.js";
import { sourceMatcher } from "./source-match.js";
import { parseFingerprint } from "./tls.js";

export type AdmissionVerdict =
  /** `mappings`: the only mappings (by name) the key may serve (`mappings="…"`); all when absent. */
  | { verdict: "trusted"; why: string; mappings?: string[] }
  | { verdict: "refused"; reason: string }
  /** Not known: only an operator can decide. */
  | { verdict: "unknown" };

export interface PeerAdmission {
  /** `source`: the IP address the peer connected from (for `from="…"` options). */
  check(publicKey: Uint8Array, source?: string): AdmissionVerdict;
  /**
   * The operator said yes: remember the key so the peer reconnects without asking, restricted to
   * `mappings` (by name) when given.
   */
  remember(publicKey: Uint8Array, comment: string, mappings?: readonly string[]): void;
}

export interface AdmissionFiles {
  /** Allowlist: when set, only these keys are admitted and nobody is asked. */
  authorizedKeys?: string;
  knownSenders: string;
  /** What the peers are ("sender" by default), for the reasons logged. */
  peerName?: string;
  /** This side's mapping names: a `mappings=` option naming another is an error (a typo). */
  mappingNames?: readonly string[];
}

export function fileAdmission(files: AdmissionFiles): PeerAdmission {
  // Fail at start-up, not at the first peer.
  const names = files.mappingNames;
  if (files.authorizedKeys !== undefined) {
    const path = files.authorizedKeys;
    try {
      readKeyFile(path, true, names);
    } catch (error) {
      // Name the flag: the path alone may not say which setting (or config file key) it came from.
      throw error instanceof UserError && !existsSync(path)
        ? new UserError(`--authorized-keys: ${error.message}`)
        : error;
    }
  } else readKeyFile(files.knownSenders, false, names);
  return {
    check(publicKey, source) {
      const print = fingerprint(publicKey);
      if (files.authorizedKeys !== undefined) {
        const entry = readKeyFile(files.authorizedKeys, true, names).get(print);
        if (entry === undefined)
          return { verdict: "refused", reason: `key ${print} is not in ${files.authorizedKeys}` };
        return judge(entry, print, source, files.authorizedKeys, `listed in ${files.authorizedKeys}`);
      }
      const known = readKeyFile(files.knownSenders, false, names).get(print);
      if (known)
        return judge(
          known,
          print,
          source,
          files.knownSenders,
          `known ${files.peerName ?? "sender"} (${files.knownSenders})`,
        );
      return { verdict: "unknown" };
    },
    remember(publicKey, comment, mappings) {
      const options = mappings && mappings.length > 0 ? `mappings="${mappings.join(",")}" ` : "";
      appendLine(files.knownSenders, options + publicKeyLine(publicKey, comment));
    },
  };
}

/** A listed key's verdict: refused outside its `from=`, else trusted for its `mappings=`. */
function judge(
  entry: KeyEntry,
  print: string,
  source: string | undefined,
  path: string,
  why: string,
): AdmissionVerdict {
  if (entry.from && (source === undefined || !entry.from(source))) {
    return {
      verdict: "refused",
      reason: `key ${print} may not connect from ${source ?? "an unknown address"} (from= in ${path} line ${entry.line})`,
    };
  }
  if (entry.mappings === undefined) return { verdict: "trusted", why };
  return { verdict: "trusted", why: `${why}, for mappings ${entry.mappings.join(", ")}`, mappings: entry.mappings };
}

interface KeyEntry {
  /** 1-based line number, for messages. */
  line: number;
  /** The `from="…"` option: which source addresses may use the key. */
  from?: (address: string) => boolean;
  /** The `mappings="…"` option: which of this side's mappings (by name) the key may serve. */
  mappings?: string[];
}

/**
 * The keys of an authorized_keys-style file, by fingerprint, with their options. ssh's syntax: an
 * optional comma-separated option list before the key (`from="198.51.100.0/24,!198.51.100.9"`,
 * `mappings="dns,ntp"`).
 * Unparseable lines and unknown options are errors, never silently skipped or ignored.
 */
function readKeyFile(path: string, mustExist: boolean, mappingNames?: readonly string[]): Map<string, KeyEntry> {
  const keys = new Map<string, KeyEntry>();
  if (!mustExist && !existsSync(path)) return keys;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new UserError(`cannot read ${path}: ${fileFailure(error)}`);
  }
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const at = `${path} line ${index + 1}`;
    const split = splitOptions(line);
    // A pinned key of a peer this side dials (`HOST:PORT ssh-ed25519 …`, `HOST:PORT tls …`) shares
    // the file of that peer role; it is not an approval.
    if (split === undefined) return;
    const parsed = parsePublicKeyLine(split.key);
    if (!parsed) throw new UserError(`${at}: not an "ssh-ed25519 AAAA… comment" public key line`);
    const entry: KeyEntry = { line: index + 1 };
    for (const { name, value } of split.options) {
      if ((name !== "from" && name !== "mappings") || value === undefined || name in entry) {
        const what = name in entry ? "is given twice" : "is not supported";
        throw new UserError(
          `${at}: option ${name}${value === undefined ? "" : "=…"} ${what} (only from="ADDRESSES" and mappings="NAMES")`,
        );
      }
      if (name === "mappings") {
        entry.mappings = mappingList(value, at, mappingNames);
        continue;
      }
      try {
        entry.from = sourceMatcher(value);
      } catch (error) {
        throw new UserError(`${at}: from=: ${messageOf(error)}`);
      }
    }
    keys.set(fingerprint(parsed.publicKey), entry);
  });
  return keys;
}

/** `mappings="dns,ntp"`: names of this side's mappings, each listed once; checked against `known`. */
function mappingList(value: string, at: string, known: readonly string[] | undefined): string[] {
  const names = value.split(",").map((name) => name.trim());
  if (names.some((name) => name === "")) throw new UserError(`${at}: mappings=: an empty mapping name in "${value}"`);
  if (new Set(names).size !== names.length)
    throw new UserError(`${at}: mappings=: a name is listed twice in "${value}"`);
  const unknown = known === undefined ? [] : names.filter((name) => !known.includes(name));
  if (unknown.length > 0) {
    const have = known?.filter((name) => name !== "") ?? [];
    throw new UserError(
      `${at}: mappings=: no mapping named ${unknown.map((n) => `"${n}"`).join(", ")} here (${have.length > 0 ? `named: ${have.join(", ")}` : "no mapping has a name"})`,
    );
  }
  return names;
}

const OPTION = /^([A-Za-z][A-Za-z0-9-]*)(?:="((?:[^"\\]|\\.)*)")?/;

/**
 * Splits `[options ]ssh-ed25519 AAAA… comment` into its options and the key part, or undefined for a
 * line that is a pin (`HOST:PORT ssh-ed25519 …`, `HOST:PORT tls …`) rather than an approval.
 */
function splitOptions(line: string): { options: Array<{ name: string; value?: string }>; key: string } | undefined {
  if (line.startsWith("ssh-ed25519")) return { options: [], key: line };
  if (/^\S+\s+(ssh-ed25519|tls)\s/.test(line) && !/^[A-Za-z][A-Za-z0-9-]*(="|,|\s)/.test(line)) return undefined;
  const options: Array<{ name: string; value?: string }> = [];
  let rest = line;
  for (;;) {
    const match = OPTION.exec(rest);
    if (!match) return { options, key: rest };
    options.push({ name: match[1], value: match[2]?.replace(/\\(.)/g, "$1") });
    rest = rest.slice(match[0].length);
    if (rest.startsWith(",")) {
      rest = rest.slice(1);
      continue;
    }
    return { options, key: rest.trimStart() };
  }
}

export type PinVerdict =
  | { verdict: "trusted" }
  /** First contact, now remembered (trust on first use). */
  | { verdict: "added"; path: string }
  /** First contact, asked not to remember yet (the key is only claimed, not proven). */
  | { verdict: "new" }
  | { verdict: "changed"; reason: string };

/**
 * The dialing side's: is this the peer we talked to before at this address? With `record` false a
 * first key is not remembered (it is only claimed, at the peer's HELLO): the verdict is "new".
 */
export interface PeerPins {
  check(peer: string, publicKey: Uint8Array, record?: boolean): PinVerdict;
  /** How the peer's key is checked, for the start-up line ("pinned by --receiver-key"). */
  readonly description?: string;
}

/**
 * TLS certificates pinned on first use, in the same known_receivers file: `HOST:PORT tls SHA256:…`.
 * (The key check runs inside the TLS stream; pinning the certificate too keeps an on-path party from
 * terminating TLS and relaying the handshake.)
 */
export function fileCertificatePins(path: string): (peer: string, certificateFingerprint: string) => PinVerdict {
  return (peer, print) =>
    pinOnFirstUse(path, peer, "tls", print, `${peer} tls ${print}`, (fields) => fields[2], "TLS certificate", true);
}

/**
 * Looks up `peer`'s pin of `type` in a known_receivers-style file: trusted when it is `print`,
 * refused when it differs (naming the line), added when there is none and `record` (trust on first
 * use), else new. `pinned` reads the pinned fingerprint from a matching line's fields.
 */
function pinOnFirstUse(
  path: string,
  peer: string,
  type: string,
  print: string,
  newLine: string,
  pinned: (fields: string[], lineNumber: number) => string,
  what: string,
  record: boolean,
): PinVerdict {
  const lines = existsSync(path) ? readLines(path) : [];
  for (const [index, line] of lines.entries()) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 3 || fields[0] !== peer || fields[1] !== type) continue;
    const pinnedPrint = pinned(fields, index + 1);
    if (pinnedPrint === print) return { verdict: "trusted" };
    return {
      verdict: "changed",
      reason:
        `${what.toUpperCase()} CHANGED: ${peer} now presents ${print}, but ${path} line ${index + 1} pins ${pinnedPrint}. ` +
        `Refusing (someone may be impersonating it); if its ${what.replace(/^TLS /, "")} was replaced on purpose, delete that line`,
    };
  }
  if (!record) return { verdict: "new" };
  appendLine(path, newLine);
  return { verdict: "added", path };
}

/** An explicit pin (--receiver-key): no file involved. */
export function fixedPeerPin(expected: string, flag = "--receiver-key"): PeerPins {
  const pin = parseFingerprint(expected, flag);
  return {
    description: `pinned by ${flag}`,
    check(peer, publicKey) {
      const print = fingerprint(publicKey);
      if (print === pin) return { verdict: "trusted" };
      return {
        verdict: "changed",
        reason: `${peer} presents key ${print}, not the ${pin} given by ${flag}: refusing (an impostor, or the wrong pin)`,
      };
    },
  };
}

export function filePeerPins(path: string): PeerPins {
  return {
    description: `checked against ${path}, a new one remembered on first contact`,
    check(peer, publicKey, record = true) {
      const readPin = (fields: string[], lineNumber: number): string => {
        const parsed = parsePublicKeyLine(fields.slice(1).join(" "));
        if (!parsed) throw new UserError(`${path} line ${lineNumber}: not a "HOST:PORT ssh-ed25519 AAAA…" line`);
        return fingerprint(parsed.publicKey);
      };
      const line = `${peer} ${publicKeyLine(publicKey)}`;
      return pinOnFirstUse(path, peer, "ssh-ed25519", fingerprint(publicKey), line, readPin, "key", record);
    },
  };
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, "utf8").split(/\r?\n/);
  } catch (error) {
    throw new UserError(`cannot read ${path}: ${fileFailure(error)}`);
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
