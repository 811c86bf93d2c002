/**
 * Incremental decoder: bytes arrive in any pieces (one byte at a time, or many frames per chunk) and
 * come out as frames. Work is linear in the bytes received: a frame that lies wholly inside a chunk is
 * decoded in place (its payload is a view into the chunk, no copy); only a frame split across chunks is
 * copied, once, into a buffer of exactly its size — allocated after its length has been checked
 * against the type's maximum, so an oversized length costs nothing.
 */
import { formatIPv4, formatIPv6 } from "./address.js";
import { fromUtf8 } from "./bytes.js";
import {
  FIRST_EXTENSION_TYPE,
  FRAME_TYPE_NAMES,
  type Frame,
  FrameType,
  HEADER_SIZE,
  MAC_SIZE,
  MAX_HANDSHAKE_BODY,
  MAX_MAPPING_NAME,
  MAX_MAPPING_STATES,
  MAX_MAPPING_PORTS,
  MAX_MAPPINGS,
  type MappingStateEntry,
  maxBodyLength,
  NONCE_SIZE,
  PREFACE,
  ProtocolError,
  PUBLIC_KEY_SIZE,
  RANGE_FLAG,
  SIGNATURE_SIZE,
  TOKEN_SIZE,
  WIRE_VERSION,
} from "./frames.js";

const EMPTY = new Uint8Array(0);

export interface DecoderOptions {
  /** Expect the 8-byte preface before the first frame (true for a fresh connection). */
  preface?: boolean;
  /** Start with the pre-authentication size limit (see `handshakeLimit`); a link's decoder does. */
  handshakeLimit?: boolean;
}

export class FrameDecoder {
  private chunk: Uint8Array = EMPTY;
  private offset = 0;
  private prefaceSeen: number;
  private readonly prefaceBytes = new Uint8Array(PREFACE.length);
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private body: Uint8Array | undefined;
  private bodyFill = 0;
  private bodyType = 0;
  /**
   * Until the peer has authenticated, no frame may declare more than MAX_HANDSHAKE_BODY bytes: a
   * stranger cannot make us buffer a 64 KiB DATA frame. The link lifts this once the handshake is done.
   */
  handshakeLimit: boolean;

  constructor(options: DecoderOptions = {}) {
    this.prefaceSeen = options.preface ? 0 : PREFACE.length;
    this.handshakeLimit = options.handshakeLimit ?? false;
  }

  /** Hands the decoder the next chunk. Call `read()` until it returns undefined before pushing again. */
  push(chunk: Uint8Array): void {
    if (this.offset < this.chunk.length) throw new Error("FrameDecoder.push called before the previous chunk was read");
    this.chunk = chunk;
    this.offset = 0;
  }

  /** True while a frame (or the preface) has been started but not finished. */
  get midFrame(): boolean {
    return (
      (this.prefaceSeen > 0 && this.prefaceSeen < PREFACE.length) || this.headerFill > 0 || this.body !== undefined
    );
  }

  /** The next complete frame, or undefined when more bytes are needed. Throws ProtocolError on bad input. */
  read(): Frame | undefined {
    if (this.prefaceSeen < PREFACE.length && !this.readPreface()) return undefined;
    const chunk = this.chunk;
    if (this.body !== undefined) return this.continueBody();

    let type: number;
    let length: number;
    if (this.headerFill === 0 && chunk.length - this.offset >= HEADER_SIZE) {
      type = chunk[this.offset];
      length = readU32(chunk, this.offset + 1);
      this.offset += HEADER_SIZE;
    } else {
      while (this.headerFill < HEADER_SIZE && this.offset < chunk.length) {
        this.header[this.headerFill++] = chunk[this.offset++];
      }
      if (this.headerFill < HEADER_SIZE) return undefined;
      this.headerFill = 0;
      type = this.header[0];
      length = readU32(this.header, 1);
    }
    checkHeader(type, length);
    if (this.handshakeLimit && length > MAX_HANDSHAKE_BODY) {
      const name = FRAME_TYPE_NAMES[type] ?? `extension 0x${type.toString(16)}`;
      throw new ProtocolError(
        "frame-too-large",
        `${name} frame of ${length} bytes before the handshake completed (at most ${MAX_HANDSHAKE_BODY})`,
      );
    }

    if (chunk.length - this.offset >= length) {
      const at = this.offset;
      this.offset += length;
      // The hot path: a DATA frame's payload as one view into the chunk (not a view of a view).
      if (type === FrameType.Data && length >= 4) {
        const flowId = readU32(chunk, at);
        if (flowId !== 0) return { type, flowId, payload: chunk.subarray(at + 4, at + length) };
      }
      return parseBody(type, chunk.subarray(at, at + length));
    }
    this.body = new Uint8Array(length);
    this.bodyType = type;
    this.bodyFill = 0;
    return this.continueBody();
  }

  private continueBody(): Frame | undefined {
    const body = this.body as Uint8Array;
    const n = Math.min(body.length - this.bodyFill, this.chunk.length - this.offset);
    body.set(this.chunk.subarray(this.offset, this.offset + n), this.bodyFill);
    this.bodyFill += n;
    this.offset += n;
    if (this.bodyFill < body.length) return undefined;
    this.body = undefined;
    return parseBody(this.bodyType, body);
  }

  /** Matches the preface byte by byte, failing on the first byte that differs. */
  private readPreface(): boolean {
    const chunk = this.chunk;
    while (this.prefaceSeen < PREFACE.length && this.offset < chunk.length) {
      const byte = chunk[this.offset++];
      this.prefaceBytes[this.prefaceSeen++] = byte;
      if (byte !== PREFACE[this.prefaceSeen - 1]) {
        // Keep what followed for a better description of the stranger (up to 16 bytes).
        const more = chunk.subarray(this.offset, this.offset + 16);
        throw prefaceError(this.prefaceBytes.subarray(0, this.prefaceSeen), more);
      }
    }
    return this.prefaceSeen === PREFACE.length;
  }
}

function readU32(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
}

function readU16(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 8) | bytes[at + 1];
}

function checkHeader(type: number, length: number): void {
  const max = maxBodyLength(type);
  if (max === undefined) {
    throw new ProtocolError("unknown-frame-type", `unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
  }
  if (length > max) {
    const name = FRAME_TYPE_NAMES[type] ?? `extension 0x${type.toString(16)}`;
    throw new ProtocolError("frame-too-large", `${name} frame of ${length} bytes exceeds the maximum of ${max}`);
  }
}

function bad(code: string, message: string): never {
  throw new ProtocolError(code, message);
}

function expectLength(name: string, body: Uint8Array, ...allowed: number[]): void {
  if (!allowed.includes(body.length)) {
    bad("bad-length", `${name} body of ${body.length} bytes, expected ${allowed.join(" or ")}`);
  }
}

function flowIdOf(name: string, body: Uint8Array): number {
  const flowId = readU32(body, 0);
  if (flowId === 0) bad("bad-flow-id", `${name} names flow 0, which is never assigned`);
  return flowId;
}

/** Proof (length-prefixed: 0, 32 or 64 bytes) then token (length-prefixed, 0 or 16 bytes); returns the end. */
function proofAndToken(name: string, body: Uint8Array): { proof: Uint8Array; token: Uint8Array; end: number } {
  if (body.length < 1) bad("bad-length", `${name} body is empty`);
  const macLength = body[0];
  if (macLength !== 0 && macLength !== MAC_SIZE && macLength !== SIGNATURE_SIZE) {
    bad("bad-field", `${name} proof length ${macLength}, expected 0, ${MAC_SIZE} or ${SIGNATURE_SIZE}`);
  }
  if (body.length < 2 + macLength) bad("bad-length", `${name} body of ${body.length} bytes is too short`);
  const tokenLength = body[1 + macLength];
  if (tokenLength !== 0 && tokenLength !== TOKEN_SIZE) {
    bad("bad-field", `${name} token length ${tokenLength}, expected 0 or ${TOKEN_SIZE}`);
  }
  const end = 2 + macLength + tokenLength;
  if (body.length < end) bad("bad-length", `${name} body of ${body.length} bytes is too short`);
  return { proof: body.subarray(1, 1 + macLength), token: body.subarray(2 + macLength, end), end };
}

function parseBody(type: number, body: Uint8Array): Frame {
  switch (type) {
    case FrameType.Data:
      if (body.length < 4) bad("bad-length", `DATA body of ${body.length} bytes has no flow id`);
      return { type, flowId: flowIdOf("DATA", body), payload: body.subarray(4) };
    case FrameType.Sdata:
      if (body.length < 8) bad("bad-length", `SDATA body of ${body.length} bytes has no flow id and sequence number`);
      return { type, flowId: flowIdOf("SDATA", body), seq: readU32(body, 4), payload: body.subarray(8) };
    case FrameType.Ping:
      expectLength("PING", body, 8);
      return { type, payload: body };
    case FrameType.Pong:
      expectLength("PONG", body, 8);
      return { type, payload: body };
    case FrameType.Hello: {
      const keyAt = 1 + 1 + 4 + NONCE_SIZE;
      if (body.length < keyAt + 2) bad("bad-length", `HELLO body of ${body.length} bytes is too short`);
      const role = body[0];
      const auth = body[1];
      if (role !== 1 && role !== 2) bad("bad-field", `HELLO role ${role}, expected 1 (receiver) or 2 (sender)`);
      if (auth !== 1 && auth !== 2) bad("bad-field", `HELLO auth mode ${auth}, expected 1 (key) or 2 (secret)`);
      const keyLength = body[keyAt];
      if (keyLength !== 0 && keyLength !== PUBLIC_KEY_SIZE) {
        bad("bad-field", `HELLO public key length ${keyLength}, expected 0 or ${PUBLIC_KEY_SIZE}`);
      }
      let at = keyAt + 1 + keyLength;
      if (body.length < at + 1) bad("bad-length", `HELLO body of ${body.length} bytes is too short`);
      const mappingCount = body[at++];
      if (mappingCount === 0 || mappingCount > MAX_MAPPINGS) {
        bad("bad-field", `HELLO announces ${mappingCount} mappings, expected 1 to ${MAX_MAPPINGS}`);
      }
      const mappings: string[] = [];
      const ports: number[] = [];
      let range = false;
      for (let i = 0; i < mappingCount; i++) {
        if (body.length < at + 1) bad("bad-length", `HELLO body of ${body.length} bytes is too short`);
        const lengthByte = body[at++];
        // The high bit marks a port range: a u16 port count follows the name (§8.6).
        const isRange = (lengthByte & RANGE_FLAG) !== 0;
        const nameLength = lengthByte & ~RANGE_FLAG;
        if (nameLength > MAX_MAPPING_NAME)
          bad("bad-field", `HELLO mapping name of ${nameLength} bytes, at most ${MAX_MAPPING_NAME}`);
        if (body.length < at + nameLength + (isRange ? 2 : 0))
          bad("bad-length", `HELLO body of ${body.length} bytes is too short`);
        mappings.push(
          fromUtf8(body.subarray(at, at + nameLength)) ?? bad("bad-utf8", "HELLO mapping name is not valid UTF-8"),
        );
        at += nameLength;
        if (!isRange) {
          ports.push(1);
          continue;
        }
        const count = readU16(body, at);
        at += 2;
        if (count < 2 || count > MAX_MAPPING_PORTS)
          bad("bad-field", `HELLO port range of ${count} ports, expected 2 to ${MAX_MAPPING_PORTS}`);
        ports.push(count);
        range = true;
      }
      const portTotal = ports.reduce((sum, count) => sum + count, 0);
      if (portTotal > MAX_MAPPING_PORTS)
        bad("bad-field", `HELLO mappings cover ${portTotal} ports, at most ${MAX_MAPPING_PORTS}`);
      const agentAt = at + 1;
      if (body.length < agentAt) bad("bad-length", `HELLO body of ${body.length} bytes is too short`);
      const agentLength = body[agentAt - 1];
      expectLength("HELLO", body, agentAt + agentLength);
      const agent = fromUtf8(body.subarray(agentAt)) ?? bad("bad-utf8", "HELLO agent is not valid UTF-8");
      return {
        type,
        role,
        auth,
        capabilities: readU32(body, 2),
        nonce: body.subarray(6, 6 + NONCE_SIZE),
        publicKey: body.subarray(keyAt + 1, keyAt + 1 + keyLength),
        mappings,
        ...(range ? { mappingPorts: ports } : {}),
        agent,
      };
    }
    case FrameType.Auth: {
      const { proof, token, end } = proofAndToken("AUTH", body);
      expectLength("AUTH", body, end);
      return { type, proof, token };
    }
    case FrameType.Join: {
      const { proof, token, end } = proofAndToken("JOIN", body);
      expectLength("JOIN", body, end);
      return { type, proof, token };
    }
    case FrameType.Accept: {
      const { proof, token, end } = proofAndToken("ACCEPT", body);
      expectLength("ACCEPT", body, end + 1);
      const resumed = body[end];
      if (resumed > 1) bad("bad-field", `ACCEPT resumed flag ${resumed}, expected 0 or 1`);
      return { type, proof, token, resumed: resumed === 1 };
    }
    case FrameType.Close: {
      if (body.length < 2) bad("bad-length", `CLOSE body of ${body.length} bytes has no code`);
      const message = fromUtf8(body.subarray(2)) ?? bad("bad-utf8", "CLOSE message is not valid UTF-8");
      return { type, code: readU16(body, 0), message };
    }
    case FrameType.FlowOpen: {
      if (body.length < 7) bad("bad-length", `FLOW_OPEN body of ${body.length} bytes is too short`);
      const family = body[6];
      if (family !== 4 && family !== 6) bad("bad-field", `FLOW_OPEN address family ${family}, expected 4 or 6`);
      expectLength("FLOW_OPEN", body, family === 4 ? 13 : 25);
      const addr = body.subarray(9);
      return {
        type,
        flowId: flowIdOf("FLOW_OPEN", body),
        mappingId: readU16(body, 4),
        client: { family, address: family === 4 ? formatIPv4(addr) : formatIPv6(addr), port: readU16(body, 7) },
      };
    }
    case FrameType.FlowClose:
      expectLength("FLOW_CLOSE", body, 5);
      return { type, flowId: flowIdOf("FLOW_CLOSE", body), reason: body[4] };
    case FrameType.MappingState:
      return { type, entries: mappingStates(body) };
    default:
      if (type >= FIRST_EXTENSION_TYPE) return { type: "extension", extensionType: type, body };
      return bad("unknown-frame-type", `unknown frame type 0x${type.toString(16)}`);
  }
}

/** MAPPING_STATE's body: a count (1 to 32), then per entry id, state, name and reason (§18). */
function mappingStates(body: Uint8Array): MappingStateEntry[] {
  const short = () => bad("bad-length", `MAPPING_STATE body of ${body.length} bytes is too short`);
  if (body.length < 1) short();
  const count = body[0];
  if (count === 0 || count > MAX_MAPPING_STATES) {
    bad("bad-field", `MAPPING_STATE has ${count} entries, expected 1 to ${MAX_MAPPING_STATES}`);
  }
  const entries: MappingStateEntry[] = [];
  let at = 1;
  for (let i = 0; i < count; i++) {
    if (body.length < at + 4) short();
    const mappingId = readU16(body, at);
    const status = body[at + 2];
    if (status > 3) bad("bad-field", `MAPPING_STATE state ${status}, expected 0 to 3`);
    const nameLength = body[at + 3];
    if (nameLength > MAX_MAPPING_NAME)
      bad("bad-field", `MAPPING_STATE mapping name of ${nameLength} bytes, at most ${MAX_MAPPING_NAME}`);
    at += 4;
    if (body.length < at + nameLength + 1) short();
    const name =
      fromUtf8(body.subarray(at, at + nameLength)) ?? bad("bad-utf8", "MAPPING_STATE name is not valid UTF-8");
    at += nameLength;
    const reasonLength = body[at++];
    if (body.length < at + reasonLength) short();
    const reason =
      fromUtf8(body.subarray(at, at + reasonLength)) ?? bad("bad-utf8", "MAPPING_STATE reason is not valid UTF-8");
    at += reasonLength;
    entries.push({ mappingId, name, status: status as MappingStateEntry["status"], reason });
  }
  expectLength("MAPPING_STATE", body, at);
  return entries;
}

/** TLS record content types 20-23, as describeStranger names them. */
const TLS_RECORDS = ["a TLS change-cipher-spec record", "a TLS alert", "a TLS handshake", "TLS application data"];

/** Names what a stranger on the TCP port sent instead of the preface, for a log line an operator can act on. */
export function describeStranger(bytes: Uint8Array): string {
  const text = String.fromCharCode(...bytes);
  const printable = /^[\x20-\x7e\r\n\t]*$/.test(text);
  const shown = printable
    ? JSON.stringify(text)
    : `0x${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  if (/^(GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) /.test(text) || text.startsWith("HTTP/")) {
    return `an HTTP request or response (${shown}), not mcudpt`;
  }
  if (text.startsWith("{") || text.startsWith("[")) {
    return `JSON (${shown}): the original Go mcudpt speaks JSON frames; upgrade both sides to this mcudpt`;
  }
  if (text.startsWith("SSH-")) return `an SSH banner (${shown}), not mcudpt`;
  // A TLS record header: content type 20-23, version 3.0-3.4 (SSL 3.0 to TLS 1.3's legacy value).
  if (bytes.length >= 2 && bytes[0] >= 0x14 && bytes[0] <= 0x17 && bytes[1] === 0x03 && (bytes[2] ?? 0) <= 0x04) {
    const record = TLS_RECORDS[bytes[0] - 0x14];
    return `${record} (${shown}); is TLS enabled on one side only?`;
  }
  if (text.startsWith("MCUDPT\0") && bytes.length >= 8) {
    return `mcudpt wire version ${bytes[7]}, but this side speaks version ${WIRE_VERSION}`;
  }
  return `${shown}, which is not the mcudpt preface`;
}

function prefaceError(seen: Uint8Array, following: Uint8Array): ProtocolError {
  const sample = new Uint8Array(seen.length + following.length);
  sample.set(seen);
  sample.set(following, seen.length);
  const versionMismatch = seen.length === PREFACE.length && seen.subarray(0, 7).every((b, i) => b === PREFACE[i]);
  return new ProtocolError(
    versionMismatch ? "unsupported-version" : "bad-preface",
    `peer sent ${describeStranger(sample)}`,
  );
}
