/**
 * Key-mode set-up for the commands: which key this side uses, which files say whom it trusts, and the
 * `keygen` command. Paths default to the config dir (~/.config/mcudpt, or $MCUDPT_CONFIG_DIR).
 */
import { hostname } from "node:os";
import {
  configPath,
  fileReceiverPins,
  fileSenderTrust,
  fixedReceiverPin,
  generateKeyPair,
  isKeyFileExposed,
  type LoadedIdentity,
  type Logger,
  loadIdentity,
  loadOrCreateIdentity,
  type ReceiverPins,
  type SenderTrust,
  UserError,
  writeKeyPair,
} from "@mcudpt/core";
import { type ArgsDef, defineCommand } from "citty";
import { type RawArgs, stringArg } from "./options.js";

export const DEFAULT_KEY_NAME = "id_ed25519";

export const keyArgs = {
  key: {
    type: "string",
    description: "This side's Ed25519 private key (default: ~/.config/mcudpt/id_ed25519, created on first run)",
    valueHint: "FILE",
  },
} satisfies ArgsDef;

export const receiverTrustArgs = {
  "authorized-keys": {
    type: "string",
    description: "Admit only senders whose public keys are in this file (one ssh-ed25519 line each); nobody is asked",
    valueHint: "FILE",
  },
  "known-senders": {
    type: "string",
    description:
      "Sender keys the operator approved, accepted again without asking (default: ~/.config/mcudpt/known_senders)",
    valueHint: "FILE",
  },
} satisfies ArgsDef;

export const senderTrustArgs = {
  "known-receivers": {
    type: "string",
    description:
      "Receiver keys seen before, per HOST:PORT; a changed key is refused (default: ~/.config/mcudpt/known_receivers)",
    valueHint: "FILE",
  },
  "receiver-key": {
    type: "string",
    description: "Expect exactly this receiver key fingerprint instead of trusting the first one seen",
    valueHint: "SHA256:…",
  },
} satisfies ArgsDef;

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

export function senderTrustFor(args: RawArgs): SenderTrust {
  return fileSenderTrust({
    authorizedKeys: stringArg(args, "authorized-keys"),
    knownSenders: stringArg(args, "known-senders") ?? configPath("known_senders"),
  });
}

export function receiverPinsFor(args: RawArgs): ReceiverPins {
  const pin = stringArg(args, "receiver-key");
  const file = stringArg(args, "known-receivers");
  if (pin !== undefined && file !== undefined)
    throw new UserError("give --receiver-key or --known-receivers, not both");
  return pin !== undefined ? fixedReceiverPin(pin) : fileReceiverPins(file ?? configPath("known_receivers"));
}

/** Key-mode flags make no sense with a shared secret: say so rather than silently ignore them. */
export function rejectKeyFlagsWithSecret(args: RawArgs): void {
  for (const name of ["key", "authorized-keys", "known-senders", "receiver-key"]) {
    if (args[name] !== undefined)
      throw new UserError(`--${name} is for key authentication; it cannot be combined with a shared secret`);
  }
}

export const keygenCommand = defineCommand({
  meta: { name: "keygen", description: "Make an Ed25519 key pair (FILE and FILE.pub) and print its fingerprint" },
  args: {
    out: {
      type: "string",
      description: "Where to write the private key (default: ~/.config/mcudpt/id_ed25519)",
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
    writeKeyPair(out, pair);
    process.stdout.write(
      `Wrote ${out} (private, mode 600) and ${out}.pub\n` +
        `Fingerprint: ${pair.fingerprint}\n` +
        `Public key (for the receiver's --authorized-keys file):\n${pair.publicKeyLine}\n`,
    );
  },
});
