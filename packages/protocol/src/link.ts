/**
 * One TCP connection's protocol state: preface and HELLO exchange, proof of the shared secret,
 * keepalive, and the frame writer that coalesces its output. Role logic (flows) lives in the machines.
 */
import { bytesEqual, concatBytes, utf8 } from "./bytes.js";
import { FrameDecoder } from "./decoder.js";
import { AuthMode, type Frame, FrameType, NONCE_SIZE, type Role } from "./frames.js";
import { encodeFrame, FrameWriter } from "./writer.js";

/** Randomness and HMAC come from the host runtime: the protocol imports no crypto of its own. */
export interface CryptoProvider {
  randomBytes(length: number): Uint8Array;
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
}

export type HelloFrame = Extract<Frame, { type: typeof FrameType.Hello }>;

/** Who opened the TCP connection. The acceptor verifies the dialer. */
export type Side = "acceptor" | "dialer";

export type LinkState =
  /** Waiting for the peer's preface and HELLO. */
  | "hello"
  /** Acceptor: waiting for AUTH. Dialer: AUTH sent, waiting for ACCEPT. */
  | "auth"
  /** Acceptor: AUTH checked, waiting for the operator's yes or no. */
  | "approval"
  | "open"
  | "closed";

const DIALER_LABEL = utf8("mcudpt/1 dialer proof");
const ACCEPTOR_LABEL = utf8("mcudpt/1 acceptor proof");

export class Link {
  state: LinkState = "hello";
  readonly writer: FrameWriter;
  readonly decoder = new FrameDecoder({ preface: true });
  readonly localHello: HelloFrame;
  peerHello: HelloFrame | undefined;
  /** The session token the dialer offered (acceptor) or will offer (dialer); empty when none. */
  offeredToken: Uint8Array = new Uint8Array(0);
  /** Handshake must finish by then; undefined while a human is deciding or once open. */
  handshakeDeadline: number | undefined;
  lastReceived: number;
  nextPingAt = Number.POSITIVE_INFINITY;
  rttMs: number | undefined;
  /** The transport reported backpressure: keep bytes here (bounded) until it drains. */
  blocked = false;
  /** A "transmit" output was emitted and the host has not taken the bytes yet. */
  transmitPending = false;

  constructor(
    readonly id: number,
    readonly peer: string,
    readonly side: Side,
    role: Role,
    auth: AuthMode,
    capabilities: number,
    agent: string,
    crypto: CryptoProvider,
    now: number,
    handshakeTimeoutMs: number,
  ) {
    this.writer = new FrameWriter();
    this.localHello = {
      type: FrameType.Hello,
      role,
      auth,
      capabilities,
      nonce: crypto.randomBytes(NONCE_SIZE),
      agent,
    };
    this.writer.preface();
    this.writer.frame(this.localHello);
    this.lastReceived = now;
    this.handshakeDeadline = now + handshakeTimeoutMs;
  }

  /** Capabilities both sides announced. */
  get sharedCapabilities(): number {
    return this.localHello.capabilities & (this.peerHello?.capabilities ?? 0);
  }

  /**
   * HMAC over the whole handshake transcript (both HELLOs with their fresh nonces, the token and, for
   * the acceptor, the resumed flag). A recorded proof is useless against a new nonce, and the labels
   * keep one side's proof from being reflected back as the other's.
   */
  proof(crypto: CryptoProvider, secret: Uint8Array, of: Side, token: Uint8Array, resumed = false): Uint8Array {
    const peerHello = this.peerHello as HelloFrame;
    const acceptorHello = this.side === "acceptor" ? this.localHello : peerHello;
    const dialerHello = this.side === "dialer" ? this.localHello : peerHello;
    const transcript = concatBytes(
      of === "dialer" ? DIALER_LABEL : ACCEPTOR_LABEL,
      encodeFrame(acceptorHello),
      encodeFrame(dialerHello),
      token,
      of === "acceptor" ? Uint8Array.of(resumed ? 1 : 0) : new Uint8Array(0),
    );
    return crypto.hmacSha256(secret, transcript);
  }

  verifyProof(crypto: CryptoProvider, secret: Uint8Array, of: Side, mac: Uint8Array, token: Uint8Array, resumed = false): boolean {
    return bytesEqual(this.proof(crypto, secret, of, token, resumed), mac);
  }

  markOpen(now: number, keepaliveMs: number): void {
    this.state = "open";
    this.handshakeDeadline = undefined;
    this.nextPingAt = now + keepaliveMs;
  }

  /** Describes the peer's auth mode for mismatch messages. */
  static authName(mode: number): string {
    return mode === AuthMode.Secret ? "a shared secret" : "operator approval";
  }
}
