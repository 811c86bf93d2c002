/**
 * Ed25519 identities, ssh style. The private key is a PKCS#8 PEM file (mode 0600), or an unencrypted
 * OpenSSH one (`ssh-keygen -t ed25519 -N ''`, "-----BEGIN OPENSSH PRIVATE KEY-----"); the public key
 * is one line in OpenSSH's format (`ssh-ed25519 AAAA… comment`), and its fingerprint is the one
 * `ssh-keygen -lf` prints for that line: "SHA256:" + unpadded base64 of SHA-256 over the key blob.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { Identity } from "@mcudpt/protocol";
import { fileFailure, messageOf, UserError } from "./errors.js";

const KEY_TYPE = "ssh-ed25519";
/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows. */
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
/** DER prefix of an Ed25519 PKCS#8 PrivateKeyInfo; the 32-byte seed follows. */
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----";
const OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----";
const OPENSSH_MAGIC = Buffer.from("openssh-key-v1\0", "latin1");

export interface KeyPairFiles {
  /** PKCS#8 PEM private key. */
  privateKeyPem: string;
  /** `ssh-ed25519 AAAA… comment` */
  publicKeyLine: string;
  publicKey: Uint8Array;
  fingerprint: string;
}

export interface LoadedIdentity extends Identity {
  readonly fingerprint: string;
  readonly path: string;
}

export function generateKeyPair(comment: string): KeyPairFiles {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = rawPublicKey(publicKey);
  return {
    privateKeyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    publicKeyLine: publicKeyLine(raw, comment),
    publicKey: raw,
    fingerprint: fingerprint(raw),
  };
}

/**
 * Writes FILE (0600) and FILE.pub; refuses to overwrite an existing key. Missing directories are
 * created with mode 0700 (the state directory of a service before its first start, the config dir);
 * returns the top one it created, if any, so the caller can say so.
 */
export function writeKeyPair(path: string, pair: KeyPairFiles): string | undefined {
  if (existsSync(path))
    throw new UserError(`${path} already exists: not overwriting a key (delete it first, or pick --out)`);
  try {
    const created = mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(path, pair.privateKeyPem, { mode: 0o600, flag: "wx" });
    writeFileSync(`${path}.pub`, `${pair.publicKeyLine}\n`, { mode: 0o644 });
    return created;
  } catch (error) {
    throw new UserError(`cannot write key ${path}: ${messageOf(error)}`);
  }
}

export function loadIdentity(path: string): LoadedIdentity {
  let pem: string;
  try {
    pem = readFileSync(path, "utf8");
  } catch (error) {
    throw new UserError(`cannot read key ${path}: ${fileFailure(error)}`);
  }
  return identityFromPem(pem, path);
}

/** An identity from a PKCS#8 PEM or unencrypted OpenSSH private key; `path` names it in messages. */
export function identityFromPem(pem: string, path = "(key)"): LoadedIdentity {
  let privateKey: KeyObject;
  if (pem.includes(OPENSSH_BEGIN)) {
    privateKey = openSshPrivateKey(pem, path);
  } else {
    try {
      privateKey = createPrivateKey(pem);
    } catch {
      if (parsePublicKeyLine(pem.trim()) !== undefined) {
        throw new UserError(`${path} is a public key: give the private key (the file without .pub)`);
      }
      throw new UserError(
        `${path} is not a private key mcudpt can read: it takes an Ed25519 key in PKCS#8 PEM (\`mcudpt keygen\`) or in OpenSSH form (\`ssh-keygen -t ed25519 -N ''\`)`,
      );
    }
  }
  if (privateKey.asymmetricKeyType !== "ed25519") {
    throw new UserError(
      `${path} holds a ${privateKey.asymmetricKeyType} key; mcudpt uses Ed25519 keys (make one with \`mcudpt keygen\`)`,
    );
  }
  const publicKey = rawPublicKey(createPublicKey(privateKey));
  return {
    publicKey,
    fingerprint: fingerprint(publicKey),
    path,
    sign: (data) => new Uint8Array(sign(null, data, privateKey)),
  };
}

/** Reads the u32-length-prefixed strings of OpenSSH's wire format, failing with `bad` past the end. */
class SshReader {
  private at = 0;
  constructor(
    private readonly data: Buffer,
    private readonly bad: () => never,
  ) {}
  u32(): number {
    if (this.at + 4 > this.data.length) this.bad();
    const value = this.data.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }
  bytes(): Buffer {
    const length = this.u32();
    if (this.at + length > this.data.length) this.bad();
    const value = this.data.subarray(this.at, this.at + length);
    this.at += length;
    return value;
  }
  text(): string {
    return this.bytes().toString("latin1");
  }
}

/**
 * The Ed25519 key of an OpenSSH private key file (PROTOCOL.key, "openssh-key-v1"): unencrypted, one
 * key. Its 32-byte seed becomes a PKCS#8 key; the public half stored beside it must match.
 */
function openSshPrivateKey(pem: string, path: string): KeyObject {
  const bad = (): never => {
    throw new UserError(`${path} is not a valid OpenSSH private key (damaged or truncated?)`);
  };
  const begin = pem.indexOf(OPENSSH_BEGIN);
  const end = pem.indexOf(OPENSSH_END, begin);
  if (end < 0) bad();
  const data = Buffer.from(pem.slice(begin + OPENSSH_BEGIN.length, end).replace(/\s+/g, ""), "base64");
  if (!data.subarray(0, OPENSSH_MAGIC.length).equals(OPENSSH_MAGIC)) bad();
  const reader = new SshReader(data.subarray(OPENSSH_MAGIC.length), bad);
  const cipher = reader.text();
  reader.text(); // kdf name
  reader.bytes(); // kdf options
  if (cipher !== "none") {
    throw new UserError(
      `${path} is protected by a passphrase, which mcudpt cannot ask for: remove it from a copy with \`ssh-keygen -p -N '' -f COPY\`, or make a key with \`mcudpt keygen\``,
    );
  }
  if (reader.u32() !== 1) throw new UserError(`${path} holds several keys; mcudpt takes one Ed25519 key per file`);
  const publicBlob = new SshReader(reader.bytes(), bad);
  const type = publicBlob.text();
  if (type !== KEY_TYPE) {
    throw new UserError(
      `${path} holds a key of type ${type}; mcudpt uses Ed25519 keys (ssh-keygen -t ed25519, or \`mcudpt keygen\`)`,
    );
  }
  const section = new SshReader(reader.bytes(), bad);
  const check = section.u32();
  if (section.u32() !== check) bad(); // the two check integers: equal unless mangled
  if (section.text() !== KEY_TYPE) bad();
  const publicKey = section.bytes();
  const secret = section.bytes(); // seed (32) then the public key (32)
  if (publicKey.length !== 32 || secret.length !== 64 || !secret.subarray(32).equals(publicKey)) bad();
  const privateKey = createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, secret.subarray(0, 32)]),
    format: "der",
    type: "pkcs8",
  });
  if (!Buffer.from(rawPublicKey(createPublicKey(privateKey))).equals(publicKey)) bad();
  return privateKey;
}

/**
 * The key at `path`, generated on first use (as sshd makes its host keys): a tunnel should not need a
 * set-up step before its first run. `onCreated` is told so the operator can see the new fingerprint.
 */
export function loadOrCreateIdentity(
  path: string,
  comment: string,
  onCreated: (identity: LoadedIdentity) => void,
): LoadedIdentity {
  if (!existsSync(path)) {
    writeKeyPair(path, generateKeyPair(comment));
    const identity = loadIdentity(path);
    onCreated(identity);
    return identity;
  }
  return loadIdentity(path);
}

/** Whether the private key file can be read by others than its owner (ssh refuses such keys). */
export function isKeyFileExposed(path: string): boolean {
  try {
    return process.platform !== "win32" && (statSync(path).mode & 0o077) !== 0;
  } catch {
    return false;
  }
}

export function fixKeyFileMode(path: string): void {
  chmodSync(path, 0o600);
}

export function verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return verify(null, data, key, signature);
  } catch {
    return false; // not a valid point: no key signs for it
  }
}

/** OpenSSH's wire blob: string "ssh-ed25519", string key (each with a u32 length). */
function keyBlob(raw: Uint8Array): Buffer {
  const type = Buffer.from(KEY_TYPE);
  const blob = Buffer.alloc(4 + type.length + 4 + raw.length);
  blob.writeUInt32BE(type.length, 0);
  type.copy(blob, 4);
  blob.writeUInt32BE(raw.length, 4 + type.length);
  blob.set(raw, 8 + type.length);
  return blob;
}

export function fingerprint(raw: Uint8Array): string {
  return `SHA256:${createHash("sha256").update(keyBlob(raw)).digest("base64").replace(/=+$/, "")}`;
}

export function publicKeyLine(raw: Uint8Array, comment = ""): string {
  const line = `${KEY_TYPE} ${keyBlob(raw).toString("base64")}`;
  const clean = comment.replace(/[\r\n]/g, " ").trim();
  return clean ? `${line} ${clean}` : line;
}

/** Parses `ssh-ed25519 AAAA… [comment]` (the format of .pub files and authorized keys); undefined if not one. */
export function parsePublicKeyLine(line: string): { publicKey: Uint8Array; comment: string } | undefined {
  const match = /^\s*ssh-ed25519\s+([A-Za-z0-9+/]+={0,2})(?:\s+(.*))?$/.exec(line);
  if (!match) return undefined;
  const blob = Buffer.from(match[1], "base64");
  const type = Buffer.from(KEY_TYPE);
  if (blob.length !== 4 + type.length + 4 + 32) return undefined;
  if (blob.readUInt32BE(0) !== type.length || !blob.subarray(4, 4 + type.length).equals(type)) return undefined;
  if (blob.readUInt32BE(4 + type.length) !== 32) return undefined;
  return { publicKey: new Uint8Array(blob.subarray(8 + type.length)), comment: (match[2] ?? "").trim() };
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const der = key.export({ type: "spki", format: "der" });
  return new Uint8Array(der.subarray(der.length - 32));
}
