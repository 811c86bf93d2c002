/**
 * Reader for test-vectors.json (format described in PROTOCOL.md, "Test vectors"). Turns the JSON's
 * fields into codec `Frame` objects and its hex specs into bytes. No encoding logic lives here: the
 * tests compare what the codec produces against the committed bytes.
 */
import type { Frame } from "../src/index.ts";

/** Bytes in the JSON: a hex string, or {repeat, length} for a long run of one byte value. */
export type Run = { repeat: number; length: number };
export type BytesSpec = string | Run;
/** A byte string in the JSON: hex, or a list of parts (hex strings and runs) to concatenate. */
export type HexSpec = string | BytesSpec[];

export interface FrameVector {
  name: string;
  description?: string;
  fields: Record<string, unknown>;
  hex: HexSpec;
}

export interface MalformedVector {
  name: string;
  description: string;
  /** Decode with a decoder that expects the 8-byte preface first. */
  preface: boolean;
  /** Decode as a connection before its handshake completed (no frame body over 2048 bytes). */
  beforeHandshake?: boolean;
  hex: HexSpec;
  error: string;
}

export interface HandshakeVector {
  name: string;
  description: string;
  mode: "secret" | "key";
  secret?: string;
  secretText?: string;
  /** Key mode: each side's 32-byte Ed25519 seed (private key) and raw public key. */
  acceptorSeed?: string;
  acceptorPublicKey?: string;
  dialerSeed?: string;
  dialerPublicKey?: string;
  acceptorNonce: string;
  dialerNonce: string;
  acceptorHello: FrameVector;
  dialerHello: FrameVector;
  offeredToken: string;
  sessionToken: string;
  resumed: boolean;
  dialerTranscript: string;
  /** HMAC-SHA256 of the transcript (secret mode) or its Ed25519 signature (key mode). */
  dialerProof: string;
  acceptorTranscript: string;
  acceptorProof: string;
  authFrame: FrameVector;
  acceptFrame: FrameVector;
  dialerToAcceptor: string;
  acceptorToDialer: string;
}

/**
 * A lane joining an open session (PROTOCOL.md §16.1): a new connection's HELLOs (both with the Lanes
 * capability), the dialer's JOIN proof over the join transcript — bound to `binding`, the acceptor's
 * proof in the ACCEPT that started the session — and the acceptor's ACCEPT (resumed).
 */
export interface JoinVector {
  name: string;
  description: string;
  mode: "secret" | "key";
  secret?: string;
  dialerSeed?: string;
  acceptorSeed?: string;
  /** The handshake vector whose session is joined. */
  session: string;
  sessionToken: string;
  binding: string;
  acceptorHello: FrameVector;
  dialerHello: FrameVector;
  joinTranscript: string;
  joinProof: string;
  joinFrame: FrameVector;
  acceptorTranscript: string;
  acceptorProof: string;
  acceptFrame: FrameVector;
}

export interface VectorFile {
  format: number;
  wireVersion: number;
  preface: string;
  frameTypes: Record<string, number>;
  frames: FrameVector[];
  malformed: MalformedVector[];
  handshakes: HandshakeVector[];
  joins?: JoinVector[];
}

export function hexToBytes(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-f]/.test(hex)) throw new Error(`bad hex in vectors: ${hex.slice(0, 40)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export function bytesToHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

export function bytesOf(spec: HexSpec | Run | HexSpec[]): Uint8Array {
  if (typeof spec === "string") return hexToBytes(spec);
  if (!Array.isArray(spec)) return new Uint8Array(spec.length).fill(spec.repeat);
  const parts = spec.map((p) => bytesOf(p));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const TYPE_CODES: Record<string, number> = {
  HELLO: 0x01,
  AUTH: 0x02,
  ACCEPT: 0x03,
  CLOSE: 0x04,
  PING: 0x05,
  PONG: 0x06,
  JOIN: 0x08,
  FLOW_OPEN: 0x10,
  FLOW_CLOSE: 0x11,
  DATA: 0x12,
  SDATA: 0x14,
  MAPPING_STATE: 0x15,
};

/** The codec Frame the JSON fields describe. */
export function frameFromFields(f: Record<string, unknown>): Frame {
  const b = (key: string) => bytesOf(f[key] as HexSpec);
  const n = (key: string) => f[key] as number;
  switch (f.type) {
    case "HELLO":
      return {
        type: 0x01,
        role: n("role") as 1 | 2,
        auth: n("auth") as 1 | 2,
        capabilities: n("capabilities"),
        nonce: b("nonce"),
        publicKey: b("publicKey"),
        mappings: [...(f.mappings as string[])],
        ...(f.mappingPorts ? { mappingPorts: [...(f.mappingPorts as number[])] } : {}),
        agent: f.agent as string,
      };
    case "AUTH":
      return { type: 0x02, proof: b("proof"), token: b("token") };
    case "JOIN":
      return { type: 0x08, proof: b("proof"), token: b("token") };
    case "ACCEPT":
      return { type: 0x03, proof: b("proof"), token: b("token"), resumed: f.resumed as boolean };
    case "CLOSE":
      return { type: 0x04, code: n("code"), message: f.message as string };
    case "PING":
      return { type: 0x05, payload: b("payload") };
    case "PONG":
      return { type: 0x06, payload: b("payload") };
    case "FLOW_OPEN": {
      const c = f.client as { family: 4 | 6; address: string; port: number };
      return {
        type: 0x10,
        flowId: n("flowId"),
        mappingId: n("mappingId"),
        client: { family: c.family, address: c.address, port: c.port },
      };
    }
    case "FLOW_CLOSE":
      return { type: 0x11, flowId: n("flowId"), reason: n("reason") };
    case "DATA":
      return { type: 0x12, flowId: n("flowId"), payload: b("payload") };
    case "SDATA":
      return { type: 0x14, flowId: n("flowId"), seq: n("seq"), payload: b("payload") };
    case "MAPPING_STATE":
      return {
        type: 0x15,
        entries: (f.entries as Array<{ mappingId: number; name: string; status: 0 | 1 | 2 | 3; reason: string }>).map(
          (entry) => ({ ...entry }),
        ),
      };
    case "EXTENSION":
      return { type: "extension", extensionType: n("extensionType"), body: b("body") };
    default:
      throw new Error(`unknown frame type in vectors: ${String(f.type)}`);
  }
}

/** A frame as plain data (bytes as hex) so two frames compare with toEqual regardless of buffer views. */
export function normalize(frame: Frame): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(frame)) out[k] = v instanceof Uint8Array ? bytesToHex(v) : v;
  return out;
}

export function typeCodeOf(name: string): number | undefined {
  return TYPE_CODES[name];
}
