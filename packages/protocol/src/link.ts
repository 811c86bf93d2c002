/**
 * One TCP connection's protocol state: preface and HELLO exchange, proof of the shared secret,
 * keepalive, and the frame writer that coalesces its output. Role logic (flows) lives in the machines.
 */
import { bytesEqual, concatBytes, utf8 } from "./bytes.js";
import { FrameDecoder } from "./decoder.js";
import { AuthMode, type Frame, FrameType, NONCE_SIZE, PUBLIC_KEY_SIZE, type Role, SIGNATURE_SIZE } from "./frames.js";
import type { PeerSession } from "./peer-session.js";
import { MappingIds } from "./mappings.js";
import { encodeFrame, FrameWriter } from "./writer.js";

/** Randomness, HMAC and signature checks come from the host runtime: the protocol imports no crypto. */
export interface CryptoProvider {
  randomBytes(length: number): Uint8Array;
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
  /** Whether `signature` is a valid Ed25519 signature of `data` by the raw 32-byte `publicKey`. */
  verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean;
}

/** This side's Ed25519 key (key mode). The private half stays with the host, behind `sign`. */
export interface Identity {
  /** Raw 32-byte public key, announced in HELLO. */
  readonly publicKey: Uint8Array;
  sign(data: Uint8Array): Uint8Array;
}

/** What this side proves itself with: a shared secret, or its key. */
export type Credentials = { secret: Uint8Array } | { identity: Identity };

export type HelloFrame = Extract<Frame, { type: typeof FrameType.Hello }>;

/** Who opened the TCP connection. Independent of the role (who listens for UDP). */
export type Side = "acceptor" | "dialer";

export type LinkState =
  /** Waiting for the peer's preface and HELLO. */
  | "hello"
  /** Acceptor: waiting for AUTH. Dialer: AUTH sent, waiting for ACCEPT. */
  | "auth"
  /** Acceptor: AUTH checked, waiting for the host's (or the operator's) decision on the key. */
  | "approval"
  | "open"
  | "closed";

export type LinkEvent = "peer-hello" | "ask-host" | "admit" | "close";

/**
 * Every state change of a connection, in one table (as h11 keeps its transitions): the event, the
 * states it may happen in, and the state it leads to. Anything else is a bug, and throws.
 */
const TRANSITIONS: Record<LinkEvent, { from: readonly LinkState[]; to: LinkState }> = {
  /** The peer's HELLO was checked (the dialer has sent its AUTH with it). */
  "peer-hello": { from: ["hello"], to: "auth" },
  /** Acceptor: the dialer proved its key; the host decides whether to admit it. */
  "ask-host": { from: ["auth"], to: "approval" },
  /** Both proofs checked, the peer admitted: data may flow. */
  admit: { from: ["auth", "approval"], to: "open" },
  /** CLOSE sent or received, a protocol error, a timeout: nothing more is read or written. */
  close: { from: ["hello", "auth", "approval", "open"], to: "closed" },
};

const DIALER_LABEL = utf8("mcudpt/1 dialer proof");
const ACCEPTOR_LABEL = utf8("mcudpt/1 acceptor proof");
const JOIN_LABEL = utf8("mcudpt/1 lane join");

export class Link {
  private current: LinkState = "hello";
  readonly writer: FrameWriter;
  readonly decoder = new FrameDecoder({ preface: true, handshakeLimit: true });
  readonly localHello: HelloFrame;
  peerHello: HelloFrame | undefined;
  /** The session token the dialer offered (acceptor) or will offer (dialer); empty when none. */
  offeredToken: Uint8Array = new Uint8Array(0);
  /** Handshake must finish by then; undefined while a human is deciding or once open. */
  handshakeDeadline: number | undefined;
  lastReceived: number;
  nextPingAt = Number.POSITIVE_INFINITY;
  /** When to send the tail-loss nudge (PAD) if nothing else is written first; Infinity when none is due. */
  nudgeAt = Number.POSITIVE_INFINITY;
  /** Traffic of this connection (one lane of the session), for status and metrics. */
  readonly counters = { datagramsSent: 0, datagramsReceived: 0, nudgesSent: 0 };
  rttMs: number | undefined;
  /** The transport reported backpressure: keep bytes here (bounded) until it drains. */
  blocked = false;
  /** A "transmit" output was emitted and the host has not taken the bytes yet. */
  transmitPending = false;
  /** The CLOSE code the peer ended this connection with, if it did. */
  peerCloseCode: number | undefined;
  /** The peer's IP address (acceptor), for per-source limits on unauthenticated connections. */
  source = "";
  /**
   * For each of the receiver's mapping ids, the sender's mapping index it pairs with (worked out from
   * both HELLOs; undefined where the sender serves none of it, §18); set once the peer's HELLO is checked.
   */
  mappingPairs: Array<number | undefined> = [];
  /** The receiver's mapping ids (one per port of its ranges), from the receiver's HELLO; set with mappingPairs. */
  receiverIds: MappingIds = new MappingIds([]);
  /** The peer session this connection belongs to, once admitted (or joined). */
  session: PeerSession | undefined;
  /**
   * While the transport is backed up: when DATA was queued, and how many untaken bytes there were
   * then (oldest first), so that what waited past --max-delay can be dropped (§10).
   */
  queueMarks: Array<{ at: number; length: number }> = [];
  /** Dialer: this connection sent JOIN (another lane of the open session), not AUTH. */
  joining = false;

  constructor(
    readonly id: number,
    readonly peer: string,
    readonly side: Side,
    role: Role,
    private readonly credentials: Credentials,
    capabilities: number,
    mappings: readonly string[],
    mappingPorts: readonly number[] | undefined,
    agent: string,
    crypto: CryptoProvider,
    now: number,
    handshakeTimeoutMs: number,
  ) {
    this.writer = new FrameWriter();
    const keyMode = "identity" in credentials;
    this.localHello = {
      type: FrameType.Hello,
      role,
      auth: keyMode ? AuthMode.Key : AuthMode.Secret,
      capabilities,
      nonce: crypto.randomBytes(NONCE_SIZE),
      publicKey: keyMode ? credentials.identity.publicKey : new Uint8Array(0),
      mappings: [...mappings],
      ...(mappingPorts ? { mappingPorts: [...mappingPorts] } : {}),
      agent,
    };
    this.writer.preface();
    this.writer.frame(this.localHello);
    this.lastReceived = now;
    this.handshakeDeadline = now + handshakeTimeoutMs;
  }

  get state(): LinkState {
    return this.current;
  }

  /** Applies `event` (see TRANSITIONS); returns the state it left. */
  enter(event: LinkEvent): LinkState {
    const from = this.current;
    const transition = TRANSITIONS[event];
    if (!transition.from.includes(from)) throw new Error(`link ${this.id}: ${event} in state ${from}`);
    this.current = transition.to;
    return from;
  }

  /** Whether the handshake is still going on (neither open nor closed). */
  get pending(): boolean {
    return this.current !== "open" && this.current !== "closed";
  }

  /** Capabilities both sides announced. */
  get sharedCapabilities(): number {
    return this.localHello.capabilities & (this.peerHello?.capabilities ?? 0);
  }

  /** The peer's Ed25519 public key (key mode, after its HELLO). */
  get peerKey(): Uint8Array {
    return this.peerHello?.publicKey ?? new Uint8Array(0);
  }

  /**
   * What each proof covers: the whole handshake transcript (both HELLOs with their fresh nonces and,
   * in key mode, both public keys; the token; for the acceptor, the resumed flag). A recorded proof is
   * useless against a new nonce, and the labels keep one side's proof from being reflected back as
   * the other's.
   */
  private transcript(of: Side, token: Uint8Array, resumed: boolean): Uint8Array {
    const peerHello = this.peerHello as HelloFrame;
    const acceptorHello = this.side === "acceptor" ? this.localHello : peerHello;
    const dialerHello = this.side === "dialer" ? this.localHello : peerHello;
    return concatBytes(
      of === "dialer" ? DIALER_LABEL : ACCEPTOR_LABEL,
      encodeFrame(acceptorHello),
      encodeFrame(dialerHello),
      token,
      of === "acceptor" ? Uint8Array.of(resumed ? 1 : 0) : new Uint8Array(0),
    );
  }

  /** This side's proof: HMAC with the shared secret, or a signature with its key. */
  prove(crypto: CryptoProvider, token: Uint8Array, resumed = false): Uint8Array {
    const transcript = this.transcript(this.side, token, resumed);
    const credentials = this.credentials;
    return "secret" in credentials
      ? crypto.hmacSha256(credentials.secret, transcript)
      : credentials.identity.sign(transcript);
  }

  /**
   * The join transcript (PROTOCOL.md §16.1): this connection's two HELLOs (fresh nonces: a recorded
   * JOIN is useless on another connection), the session token, and the session's binding — the
   * acceptor's proof in the ACCEPT that started the session, which only the two ends of that
   * handshake (and whoever watched it) ever saw. A proof for another session, or one made without
   * this session's first handshake, does not verify.
   */
  private joinTranscript(token: Uint8Array, binding: Uint8Array): Uint8Array {
    const peerHello = this.peerHello as HelloFrame;
    const acceptorHello = this.side === "acceptor" ? this.localHello : peerHello;
    const dialerHello = this.side === "dialer" ? this.localHello : peerHello;
    return concatBytes(JOIN_LABEL, encodeFrame(acceptorHello), encodeFrame(dialerHello), token, binding);
  }

  /** The dialer's JOIN proof: HMAC with the shared secret, or a signature with its key. */
  proveJoin(crypto: CryptoProvider, token: Uint8Array, binding: Uint8Array): Uint8Array {
    const transcript = this.joinTranscript(token, binding);
    const credentials = this.credentials;
    return "secret" in credentials
      ? crypto.hmacSha256(credentials.secret, transcript)
      : credentials.identity.sign(transcript);
  }

  /** The acceptor checks a JOIN proof against the secret, or the key the session was admitted with. */
  verifyJoin(
    crypto: CryptoProvider,
    proof: Uint8Array,
    token: Uint8Array,
    binding: Uint8Array,
    sessionKey: Uint8Array,
  ): boolean {
    const transcript = this.joinTranscript(token, binding);
    const credentials = this.credentials;
    if ("secret" in credentials) return bytesEqual(crypto.hmacSha256(credentials.secret, transcript), proof);
    const key = this.peerKey;
    if (key.length !== PUBLIC_KEY_SIZE || proof.length !== SIGNATURE_SIZE || !bytesEqual(key, sessionKey)) return false;
    return crypto.verifyEd25519(key, transcript, proof);
  }

  /** Checks the peer's proof (against the shared secret, or the key its HELLO announced). */
  verifyPeer(crypto: CryptoProvider, proof: Uint8Array, token: Uint8Array, resumed = false): boolean {
    const of: Side = this.side === "acceptor" ? "dialer" : "acceptor";
    const transcript = this.transcript(of, token, resumed);
    const credentials = this.credentials;
    if ("secret" in credentials) return bytesEqual(crypto.hmacSha256(credentials.secret, transcript), proof);
    const key = this.peerKey;
    if (key.length !== PUBLIC_KEY_SIZE || proof.length !== SIGNATURE_SIZE) return false;
    return crypto.verifyEd25519(key, transcript, proof);
  }

  markOpen(now: number, keepaliveMs: number): void {
    this.enter("admit");
    this.decoder.handshakeLimit = false;
    this.handshakeDeadline = undefined;
    this.nextPingAt = now + keepaliveMs;
  }

  /** Describes the peer's auth mode for mismatch messages. */
  static authName(mode: number): string {
    return mode === AuthMode.Secret ? "a shared secret" : "keys";
  }
}
