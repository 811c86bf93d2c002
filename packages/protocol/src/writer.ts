/**
 * Encodes frames into one growing output region per connection. Everything written between two
 * `take()` calls comes out as a single Uint8Array, so the frames of one event-loop turn become one TCP
 * write. Taken bytes are never written again (later frames go after them, or into a fresh buffer), so
 * a transport may hold on to what it was given until the socket has sent it.
 */
import { addressBytes } from "./address.js";
import { utf8, utf8Truncated } from "./bytes.js";
import {
  FIRST_EXTENSION_TYPE,
  type Frame,
  FrameType,
  HEADER_SIZE,
  MAC_SIZE,
  MAX_AGENT_LENGTH,
  MAX_CLOSE_MESSAGE,
  MAX_DATAGRAM,
  MAX_MAPPING_NAME,
  MAX_MAPPING_REASON,
  MAX_MAPPING_STATES,
  MAX_MAPPINGS,
  type MappingStateEntry,
  NONCE_SIZE,
  PAD_TYPE,
  PREFACE,
  ProtocolError,
  PUBLIC_KEY_SIZE,
  RANGE_FLAG,
  SIGNATURE_SIZE,
  TOKEN_SIZE,
  type WireAddress,
} from "./frames.js";
import { mappingPortsChecked } from "./mappings.js";

/**
 * A connection's first buffer is small (a handshake, or a stranger, needs little); each time one fills
 * up the next is twice as large, up to MAX_CHUNK, so a busy connection allocates rarely (the profile
 * of 65,507-byte datagrams showed a fresh buffer per datagram with fixed 64 KiB chunks).
 */
const DEFAULT_CHUNK = 4 * 1024;
const MAX_CHUNK = 1024 * 1024;
/** Proof lengths: none (key mode never sends none, but a dialer in a failed state may), HMAC, Ed25519 signature. */
const PROOF_LENGTHS = [0, MAC_SIZE, SIGNATURE_SIZE];

export class FrameWriter {
  private buf: Uint8Array;
  private view: DataView;
  private start = 0;
  private end = 0;
  /** The untaken bytes begin with the preface (not a frame): compaction must not parse them. */
  private prefaceUntaken = false;

  constructor(private readonly chunkSize = DEFAULT_CHUNK) {
    this.buf = new Uint8Array(chunkSize);
    this.view = new DataView(this.buf.buffer);
  }

  /** Bytes written and not yet taken. */
  get length(): number {
    return this.end - this.start;
  }

  /** Everything written since the last take, or undefined when nothing was. */
  take(): Uint8Array | undefined {
    if (this.end === this.start) return undefined;
    const out = this.buf.subarray(this.start, this.end);
    this.start = this.end;
    this.prefaceUntaken = false;
    return out;
  }

  /**
   * The caller is done with everything take() returned (the host copied it out): the next frames are
   * written over it, from the start of the same buffer. Without this, a busy connection fills a
   * fresh buffer every megabyte (allocation, page faults, garbage). Does nothing while untaken bytes
   * remain: they sit where they are.
   */
  reuseTaken(): void {
    if (this.end === this.start) this.start = this.end = 0;
  }

  /** Forgets what was written and not taken (a dead connection's backlog). */
  discard(): void {
    this.start = this.end;
  }

  /**
   * Frees at least `bytes` of untaken output by dropping the oldest DATA frames; every other frame is
   * kept, in order (flow state must stay consistent). Used when the connection is backed up: an old
   * datagram (a stale DNS answer, a late voice packet) is worth less than a new one.
   * Returns how many DATA frames were dropped, and tells `dropped` the flow id and payload size of
   * each. O(untaken bytes): callers free a good share at once.
   */
  dropOldestData(bytes: number, dropped?: (flowId: number, size: number) => void, within = Infinity): number {
    if (this.prefaceUntaken) return 0;
    /** Only frames that start in the first `within` untaken bytes are candidates (--max-delay). */
    const limit = this.start + within;
    const buf = this.buf;
    let read = this.start;
    let write = this.start;
    let freed = 0;
    let count = 0;
    while (read < this.end) {
      const size = HEADER_SIZE + this.view.getUint32(read + 1);
      const type = buf[read];
      if ((type === FrameType.Data || type === FrameType.Sdata) && freed < bytes && read < limit) {
        freed += size;
        count++;
        dropped?.(this.view.getUint32(read + HEADER_SIZE), size - HEADER_SIZE - (type === FrameType.Data ? 4 : 8));
      } else {
        if (write !== read) buf.copyWithin(write, read, read + size);
        write += size;
      }
      read += size;
    }
    this.end = write;
    return count;
  }

  /** Room for `n` more bytes; moves the untaken bytes into a fresh buffer when the current one is full. */
  private reserve(n: number): void {
    if (this.end + n <= this.buf.length) return;
    const pending = this.end - this.start;
    const grown = Math.min(MAX_CHUNK, Math.max(this.chunkSize, this.buf.length * 2));
    const next = new Uint8Array(Math.max(grown, (pending + n) * 2));
    next.set(this.buf.subarray(this.start, this.end));
    this.buf = next;
    this.view = new DataView(next.buffer);
    this.start = 0;
    this.end = pending;
  }

  private header(type: number, bodyLength: number): number {
    this.reserve(HEADER_SIZE + bodyLength);
    const at = this.end;
    this.buf[at] = type;
    this.view.setUint32(at + 1, bodyLength);
    this.end = at + HEADER_SIZE + bodyLength;
    return at + HEADER_SIZE;
  }

  preface(): void {
    if (this.end === this.start) this.prefaceUntaken = true;
    this.reserve(PREFACE.length);
    this.buf.set(PREFACE, this.end);
    this.end += PREFACE.length;
  }

  /** The hot path: one datagram, one copy of its bytes. */
  data(flowId: number, payload: Uint8Array): void {
    if (payload.length > MAX_DATAGRAM) {
      throw new ProtocolError("datagram-too-large", `datagram of ${payload.length} bytes exceeds ${MAX_DATAGRAM}`);
    }
    const at = this.header(FrameType.Data, 4 + payload.length);
    this.view.setUint32(at, flowId);
    this.buf.set(payload, at + 4);
  }

  /** DATA with the flow's sequence number (redundancy, §17). */
  sdata(flowId: number, seq: number, payload: Uint8Array): void {
    if (payload.length > MAX_DATAGRAM) {
      throw new ProtocolError("datagram-too-large", `datagram of ${payload.length} bytes exceeds ${MAX_DATAGRAM}`);
    }
    const at = this.header(FrameType.Sdata, 8 + payload.length);
    this.view.setUint32(at, flowId);
    this.view.setUint32(at + 4, seq >>> 0);
    this.buf.set(payload, at + 8);
  }

  hello(
    role: number,
    auth: number,
    capabilities: number,
    nonce: Uint8Array,
    publicKey: Uint8Array,
    mappings: readonly string[],
    agent: string,
    mappingPorts?: readonly number[],
  ): void {
    if (nonce.length !== NONCE_SIZE) throw new ProtocolError("bad-nonce", `nonce must be ${NONCE_SIZE} bytes`);
    checkLength("public key", publicKey, [0, PUBLIC_KEY_SIZE]);
    if (mappings.length === 0 || mappings.length > MAX_MAPPINGS) {
      throw new ProtocolError("bad-mappings", `1 to ${MAX_MAPPINGS} mappings, not ${mappings.length}`);
    }
    const names = mappings.map((name) => {
      const bytes = utf8(name);
      if (bytes.length > MAX_MAPPING_NAME) {
        throw new ProtocolError("bad-mappings", `mapping name "${name}" is over ${MAX_MAPPING_NAME} bytes`);
      }
      return bytes;
    });
    const ports = mappingPortsChecked(mappings.length, mappingPorts);
    // A single-port mapping is a plain entry; a range adds its u16 port count (§8.6).
    const mappingBytes = names.reduce((sum, name, i) => sum + 1 + name.length + (ports[i] > 1 ? 2 : 0), 1);
    const agentBytes = utf8Truncated(agent, MAX_AGENT_LENGTH);
    const keyAt = 6 + NONCE_SIZE;
    const at = this.header(FrameType.Hello, keyAt + 1 + publicKey.length + mappingBytes + 1 + agentBytes.length);
    this.buf[at] = role;
    this.buf[at + 1] = auth;
    this.view.setUint32(at + 2, capabilities >>> 0);
    this.buf.set(nonce, at + 6);
    this.buf[at + keyAt] = publicKey.length;
    this.buf.set(publicKey, at + keyAt + 1);
    let agentAt = at + keyAt + 1 + publicKey.length;
    this.buf[agentAt++] = names.length;
    names.forEach((name, i) => {
      this.buf[agentAt++] = ports[i] > 1 ? RANGE_FLAG | name.length : name.length;
      this.buf.set(name, agentAt);
      agentAt += name.length;
      if (ports[i] > 1) {
        this.view.setUint16(agentAt, ports[i]);
        agentAt += 2;
      }
    });
    this.buf[agentAt] = agentBytes.length;
    this.buf.set(agentBytes, agentAt + 1);
  }

  auth(proof: Uint8Array, token: Uint8Array): void {
    checkLength("proof", proof, PROOF_LENGTHS);
    checkLength("token", token, [0, TOKEN_SIZE]);
    const at = this.header(FrameType.Auth, 2 + proof.length + token.length);
    this.proofAndToken(at, proof, token);
  }

  join(proof: Uint8Array, token: Uint8Array): void {
    checkLength("proof", proof, PROOF_LENGTHS);
    checkLength("token", token, [0, TOKEN_SIZE]);
    const at = this.header(FrameType.Join, 2 + proof.length + token.length);
    this.proofAndToken(at, proof, token);
  }

  accept(proof: Uint8Array, token: Uint8Array, resumed: boolean): void {
    checkLength("proof", proof, PROOF_LENGTHS);
    checkLength("token", token, [0, TOKEN_SIZE]);
    const at = this.header(FrameType.Accept, 3 + proof.length + token.length);
    const after = this.proofAndToken(at, proof, token);
    this.buf[after] = resumed ? 1 : 0;
  }

  private proofAndToken(at: number, mac: Uint8Array, token: Uint8Array): number {
    this.buf[at] = mac.length;
    this.buf.set(mac, at + 1);
    this.buf[at + 1 + mac.length] = token.length;
    this.buf.set(token, at + 2 + mac.length);
    return at + 2 + mac.length + token.length;
  }

  close(code: number, message: string): void {
    const text = utf8Truncated(message, MAX_CLOSE_MESSAGE);
    const at = this.header(FrameType.Close, 2 + text.length);
    this.view.setUint16(at, code);
    this.buf.set(text, at + 2);
  }

  ping(payload: Uint8Array): void {
    checkLength("ping payload", payload, [8]);
    // header() first: it may move to a fresh buffer, and `this.buf` must be read after that.
    const at = this.header(FrameType.Ping, 8);
    this.buf.set(payload, at);
  }

  pong(payload: Uint8Array): void {
    checkLength("pong payload", payload, [8]);
    // header() first: it may move to a fresh buffer, and `this.buf` must be read after that.
    const at = this.header(FrameType.Pong, 8);
    this.buf.set(payload, at);
  }

  flowOpen(flowId: number, mappingId: number, client: WireAddress): void {
    const addr = addressBytes(client);
    const at = this.header(FrameType.FlowOpen, 4 + 2 + 1 + 2 + addr.length);
    this.view.setUint32(at, flowId);
    this.view.setUint16(at + 4, mappingId);
    this.buf[at + 6] = client.family;
    this.view.setUint16(at + 7, client.port);
    this.buf.set(addr, at + 9);
  }

  flowClose(flowId: number, reason: number): void {
    const at = this.header(FrameType.FlowClose, 5);
    this.view.setUint32(at, flowId);
    this.buf[at + 4] = reason;
  }

  /**
   * MAPPING_STATE (§18): 1 to 32 entries. A reason longer than 255 bytes is cut at a character
   * boundary (it is for a log line); a name over 32 bytes or an unknown state is a bug of the caller.
   */
  mappingState(entries: readonly MappingStateEntry[]): void {
    if (entries.length === 0 || entries.length > MAX_MAPPING_STATES) {
      throw new ProtocolError(
        "bad-field",
        `MAPPING_STATE takes 1 to ${MAX_MAPPING_STATES} entries, not ${entries.length}`,
      );
    }
    const encoded = entries.map((entry) => {
      const name = utf8(entry.name);
      if (name.length > MAX_MAPPING_NAME || !(entry.status >= 0 && entry.status <= 3) || entry.mappingId > 0xffff) {
        throw new ProtocolError("bad-field", `MAPPING_STATE entry for mapping ${entry.mappingId} is not encodable`);
      }
      return { entry, name, reason: utf8Truncated(entry.reason, MAX_MAPPING_REASON) };
    });
    const size = encoded.reduce((sum, { name, reason }) => sum + 4 + name.length + 1 + reason.length, 1);
    let at = this.header(FrameType.MappingState, size);
    this.buf[at++] = entries.length;
    for (const { entry, name, reason } of encoded) {
      this.view.setUint16(at, entry.mappingId);
      this.buf[at + 2] = entry.status;
      this.buf[at + 3] = name.length;
      this.buf.set(name, at + 4);
      at += 4 + name.length;
      this.buf[at++] = reason.length;
      this.buf.set(reason, at);
      at += reason.length;
    }
  }

  /** PAD (extension 0x80) with an empty body: 5 bytes, ignored by the peer (the tail-loss nudge). */
  pad(): void {
    this.header(PAD_TYPE, 0);
  }

  extension(type: number, body: Uint8Array): void {
    if (!(type >= FIRST_EXTENSION_TYPE && type <= 0xff) || body.length > MAX_DATAGRAM) {
      const what = `extension type 0x${type.toString(16)} with ${body.length} bytes`;
      throw new ProtocolError("bad-field", `${what}: type must be 0x80..0xff, body at most ${MAX_DATAGRAM}`);
    }
    // header() first: it may move to a fresh buffer, and `this.buf` must be read after that.
    const at = this.header(type, body.length);
    this.buf.set(body, at);
  }

  /** Any frame from its fields (test vectors, tools); the machines call the typed methods directly. */
  frame(frame: Frame): void {
    if (frame.type === "extension") return this.extension(frame.extensionType, frame.body);
    switch (frame.type) {
      case FrameType.Hello:
        return this.hello(
          frame.role,
          frame.auth,
          frame.capabilities,
          frame.nonce,
          frame.publicKey,
          frame.mappings,
          frame.agent,
          frame.mappingPorts,
        );
      case FrameType.Auth:
        return this.auth(frame.proof, frame.token);
      case FrameType.Join:
        return this.join(frame.proof, frame.token);
      case FrameType.Accept:
        return this.accept(frame.proof, frame.token, frame.resumed);
      case FrameType.Close:
        return this.close(frame.code, frame.message);
      case FrameType.Ping:
        return this.ping(frame.payload);
      case FrameType.Pong:
        return this.pong(frame.payload);
      case FrameType.FlowOpen:
        return this.flowOpen(frame.flowId, frame.mappingId, frame.client);
      case FrameType.FlowClose:
        return this.flowClose(frame.flowId, frame.reason);
      case FrameType.Data:
        return this.data(frame.flowId, frame.payload);
      case FrameType.Sdata:
        return this.sdata(frame.flowId, frame.seq, frame.payload);
      case FrameType.MappingState:
        return this.mappingState(frame.entries);
    }
  }
}

/** One frame as a standalone byte string. */
export function encodeFrame(frame: Frame): Uint8Array {
  const writer = new FrameWriter(256);
  writer.frame(frame);
  return writer.take() ?? new Uint8Array(0);
}

function checkLength(what: string, bytes: Uint8Array, allowed: number[]): void {
  if (!allowed.includes(bytes.length)) {
    throw new ProtocolError("bad-field", `${what} must be ${allowed.join(" or ")} bytes, got ${bytes.length}`);
  }
}
