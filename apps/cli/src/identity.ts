/**
 * Key-mode set-up for the commands: which key this side uses, which files say whom it trusts, and the
 * `keygen` command. Paths default to the config dir (~/.config/mcudpt, or $MCUDPT_CONFIG_DIR).
 */
import { hostname } from "node:os";
import {
  configPath,
  filePeerPins,
  fileAdmission,
  fixedPeerPin,
  generateKeyPair,
  isKeyFileExposed,
  type LoadedIdentity,
  type Logger,
  loadIdentity,
  loadOrCreateIdentity,
  type PeerPins,
  type PeerAdmission,
  UserError,
  writeKeyPair,
} from "@mcudpt/core";
import { type ArgsDef, defineCommand } from "citty";
import { type RawArgs, stringArg } from "./options.js";

export const DEFAULT_KEY_NAME = "id_ed25519";

export const keyArgs = {
  key: {
    type: "string",
    description:
      "This side's Ed25519 private key: PKCS#8 PEM (mcudpt keygen) or unencrypted OpenSSH (ssh-keygen -t ed25519 -N '') (default: ~/.config/mcudpt/id_ed25519, created on first run)",
    valueHint: "FILE",
  },
} satisfies ArgsDef;

export type PeerRole = "sender" | "receiver";

/**
 * Trust flags for a role whose peer is `peer`. Which apply depends on the side this end takes: the
 * side that listens admits keys (--authorized-keys, or known keys the operator approved), the side
 * that dials pins the key it reaches (known keys per HOST:PORT, or --<peer>-key).
 */
export function trustArgs(peer: PeerRole) {
  return {
    "authorized-keys": {
      type: "string",
      description: `Listening side: admit only ${peer}s whose public keys are in this file (one ssh-ed25519 line each, optionally after from="ADDRESSES" and mappings="NAMES"); nobody is asked`,
      valueHint: "FILE",
    },
    [`known-${peer}s`]: {
      type: "string",
      description: `${cap(peer)} keys seen before: approved ones when listening, pinned ones per HOST:PORT when dialing (default: ~/.config/mcudpt/known_${peer}s)`,
      valueHint: "FILE",
    },
    [`${peer}-key`]: {
      type: "string",
      description: `Dialing side: expect exactly this ${peer} key fingerprint instead of trusting the first one seen`,
      valueHint: "SHA256:…",
    },
  } as ArgsDef;
}

function cap(text: string): string {
  return text[0].toUpperCase() + text.slice(1);
}

/** The key to prove this side with: --key, or the default one (created when missing, with a log line). */
export function identityFor(args: RawArgs, logger: Logger): LoadedIdentity {
  const explicit = stringArg(args, "key");
  const identity = explicit
    ? loadIdentity(explicit)
    : loadOrCreateIdentity(configPath(DEFAULT_KEY_NAME), `mcudpt@${hostname()}`, (created) =>
        logger.log(
          "info",
          `created key ${created.path} (${created.fingerprint}); its public half is in ${created.path}.pub`,
        ),
      );
  if (isKeyFileExposed(identity.path)) {
    logger.log("warn", `key ${identity.path} is readable by other users: chmod 600 it`);
  }
  return identity;
}

/** The listening side: which peer keys are admitted. */
export function listenTrustFor(args: RawArgs, peer: PeerRole, mappingNames?: readonly string[]): PeerAdmission {
  if (args[`${peer}-key`] !== undefined) {
    throw new UserError(`--${peer}-key is for the side that dials; this end listens (use --authorized-keys)`);
  }
  return fileAdmission({
    authorizedKeys: stringArg(args, "authorized-keys"),
    knownSenders: stringArg(args, `known-${peer}s`) ?? configPath(`known_${peer}s`),
    peerName: peer,
    mappingNames,
  });
}

/** The dialing side: which key the peer must have. */
export function dialPinsFor(args: RawArgs, peer: PeerRole): PeerPins {
  if (args["authorized-keys"] !== undefined) {
    throw new UserError(`--authorized-keys is for the side that listens; this end dials (use --${peer}-key)`);
  }
  const pin = stringArg(args, `${peer}-key`);
  const file = stringArg(args, `known-${peer}s`);
  if (pin !== undefined && file !== undefined) throw new UserError(`give --${peer}-key or --known-${peer}s, not both`);
  return pin !== undefined ? fixedPeerPin(pin, `--${peer}-key`) : filePeerPins(file ?? configPath(`known_${peer}s`));
}

/** Key-mode flags make no sense with a shared secret: say so rather than silently ignore them. */
export function rejectKeyFlagsWithSecret(args: RawArgs, peer: PeerRole): void {
  for (const name of ["key", "authorized-keys", `${peer}-key`]) {
    if (args[name] !== undefined)
      throw new UserError(`--${name} is for key authentication; it cannot be combined with a shared secret`);
  }
}

export const keygenCommand = defineCommand({
  meta: { name: "keygen", description: "Make an Ed25519 key pair (FILE and FILE.pub) and print its fingerprint" },
  args: {
    out: {
      type: "string",
      description:
        "Where to write the private key, creating missing directories (mode 700) (default: ~/.config/mcudpt/id_ed25519)",
      valueHint: "FILE",
    },
    comment: {
      type: "string",
      description: "Comment in the public key line (default: mcudpt@HOSTNAME)",
      valueHint: "TEXT",
    },
  },
  run({ args }) {
    const out = stringArg(args, "out") ?? configPath(DEFAULT_KEY_NAME);
    const pair = generateKeyPair(stringArg(args, "comment") ?? `mcudpt@${hostname()}`);
    const created = writeKeyPair(out, pair);
    process.stdout.write(
      (created ? `Created directory ${created} (mode 700)\n` : "") +
        `Wrote ${out} (private, mode 600) and ${out}.pub\n` +
        `Fingerprint: ${pair.fingerprint}\n` +
        `Public key (for the --authorized-keys file of the side that listens for this one):\n${pair.publicKeyLine}\n`,
    );
  },
});
