/**
 * Frame types, their fields and their size limits. The byte layout is specified in PROTOCOL.md;
 * the encoder lives in writer.ts and the decoder in decoder.ts.
 */

/** Each side's first eight bytes: "MCUDPT", a zero byte, the wire version. */
export const WIRE_VERSION = 1;
export const PREFACE = Uint8Array.of(0x4d, 0x43, 0x55, 0x44, 0x50, 0x54, 0x00, WIRE_VERSION);

/** type (u8) + body length (u32, big-endian). */
export const HEADER_SIZE = 5;

/** Largest UDP payload a frame carries: any datagram IPv4 or IPv6 can hold fits. */
export const MAX_DATAGRAM = 65_535;

export const FrameType = {
  Hello: 0x01,
  Auth: 0x02,
  Accept: 0x03,
  Close: 0x04,
  Ping: 0x05,
  Pong: 0x06,
  /** Dialer → acceptor instead of AUTH: this connection joins an open session as another lane (§16). */
  Join: 0x08,
  FlowOpen: 0x10,
  FlowClose: 0x11,
  Data: 0x12,
  /** DATA with a per-flow sequence number, for redundancy: the receiving side drops duplicates (§17). */
  Sdata: 0x14,
  /** Receiver → sender, with the Senders capability: which mappings this sender serves (§18). */
  MappingState: 0x15,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Types 0x80..0xFF are extensions: a peer that does not know one skips it (room to grow). */
export const FIRST_EXTENSION_TYPE = 0x80;

/**
 * PAD: the first extension type, defined as "ignore me" (any body, usually empty). Sent as the
 * tail-loss nudge (PROTOCOL.md §10.1). Every conforming peer skips extension frames, so it needs no
 * capability: a peer of an earlier version skips it too.
 */
export const PAD_TYPE = 0x80;

/** Which side listens for UDP clients. Independent of who dials TCP. */
export const Role = { Receiver: 1, Sender: 2 } as const;
export type Role = (typeof Role)[keyof typeof Role];

/**
 * How the two sides prove who they are. Key: each side signs the handshake transcript with its Ed25519
 * key; the acceptor admits keys it knows (authorized/known keys) or that its operator approves, and the
 * dialer pins the acceptor's key (trust on first use). Secret: both prove a shared secret by HMAC.
 */
export const AuthMode = { Key: 1, Secret: 2 } as const;
export type AuthMode = (typeof AuthMode)[keyof typeof AuthMode];

/** Capability bits in HELLO. A feature is used only when both sides set its bit. */
export const Capability = {
  /** Flows survive a reconnect that presents the previous session's token. */
  Resume: 1 << 0,
  /** A session may hold several connections (lanes): later ones JOIN the session of the first (§16). */
  Lanes: 1 << 1,
  /** Understands SDATA (sequenced DATA) and drops duplicate copies (§17). */
  Sequenced: 1 << 2,
  /** A request: send every datagram on two lanes, as this side does (§17). */
  Redundant: 1 << 3,
  /**
   * Several senders per receiver (§18): the sender may serve a subset of the receiver's named
   * mappings, and the receiver reports each mapping's state to it in MAPPING_STATE.
   */
  Senders: 1 << 4,
} as const;

/** What a receiver says about one of its mappings to one sender (MAPPING_STATE, §18). */
export const MappingStatus = {
  /** This sender serves the mapping: the receiver's flows of it go to this sender. */
  Serving: 0,
  /** Another sender serves it; this one takes over when that one is gone. */
  Standby: 1,
  /** This sender may not serve it (the reason says why). */
  Refused: 2,
  /** The receiver no longer has the mapping; its flows are closed. */
  Removed: 3,
} as const;
export type MappingStatus = (typeof MappingStatus)[keyof typeof MappingStatus];

export const MAPPING_STATUS_NAMES: Record<number, string> = {
  0: "serving",
  1: "standby",
  2: "refused",
  3: "removed",
};

/** One mapping's entry in MAPPING_STATE: the receiver's mapping id, its name, the state and why. */
export interface MappingStateEntry {
  mappingId: number;
  /** The receiver's name for it ("" when unnamed): a mapping added later pairs by it. */
  name: string;
  status: MappingStatus;
  /** Why (refused, removed); "" when there is nothing to say. At most MAX_MAPPING_REASON bytes. */
  reason: string;
}

/** Why a connection ends (CLOSE frame). */
export const CloseCode = {
  Normal: 0,
  ProtocolError: 1,
  AuthFailed: 2,
  AuthMismatch: 3,
  Refused: 4,
  Busy: 5,
  HandshakeTimeout: 6,
  KeepaliveTimeout: 7,
  RoleConflict: 8,
  Replaced: 9,
  InternalError: 10,
  /** The peer's key is not one this side accepts (unknown sender, changed receiver key). */
  KeyRejected: 11,
  /** The two sides' mappings do not pair up (different names or counts). */
  MappingMismatch: 12,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** Why a flow ends (FLOW_CLOSE frame). */
export const FlowCloseReason = {
  Closed: 0,
  Idle: 1,
  Evicted: 2,
  SocketError: 3,
  TargetUnreachable: 4,
  UnknownFlow: 5,
  ResolveFailed: 6,
  UnknownMapping: 7,
} as const;
export type FlowCloseReason = (typeof FlowCloseReason)[keyof typeof FlowCloseReason];

export const NONCE_SIZE = 32;
/** HMAC-SHA256 proof (secret mode). */
export const MAC_SIZE = 32;
/** Ed25519 public key and signature (key mode). */
export const PUBLIC_KEY_SIZE = 32;
export const SIGNATURE_SIZE = 64;
/** Largest body any frame may declare before the handshake completes: nothing big is buffered for a stranger. */
export const MAX_HANDSHAKE_BODY = 2048;
export const TOKEN_SIZE = 16;
export const MAX_AGENT_LENGTH = 64;
/** Mappings one connection carries, and the longest mapping name (UTF-8 bytes). */
export const MAX_MAPPINGS = 32;
export const MAX_MAPPING_NAME = 32;
/**
 * Ports one side's mappings cover in all (a port range of n ports is n mapping ids on the wire,
 * §8.6): one UDP socket each on the receiver, so a few thousand at most.
 */
export const MAX_MAPPING_PORTS = 4096;
/** A mapping entry's length byte with this bit set is a port range: a u16 port count follows the name. */
export const RANGE_FLAG = 0x80;
export const MAX_CLOSE_MESSAGE = 1024;
/** Entries in one MAPPING_STATE frame, and the longest reason of one entry (UTF-8 bytes). */
export const MAX_MAPPING_STATES = 32;
export const MAX_MAPPING_REASON = 255;

/** Client address in FLOW_OPEN: IPv4 (4 bytes) or IPv6 (16 bytes), plus port. */
export interface WireAddress {
  family: 4 | 6;
  /** Dotted quad or RFC 5952 text. */
  address: string;
  port: number;
}

export type Frame =
  | {
      type: typeof FrameType.Hello;
      role: Role;
      auth: AuthMode;
      capabilities: number;
      nonce: Uint8Array;
      /** The side's Ed25519 public key in key mode; empty in secret mode. */
      publicKey: Uint8Array;
      /**
       * The side's mappings in order, by name ("" when unnamed). The receiver's position is the mapping
       * id in FLOW_OPEN; the sender pairs its targets with them by name, or by position when unnamed.
       */
      mappings: string[];
      /**
       * Ports each mapping covers, in the same order (a range `:27015-27030` is 16); absent when every
       * mapping is a single port, which is also how such a HELLO is written (no range entries).
       */
      mappingPorts?: number[];
      agent: string;
    }
  /** `proof`: HMAC (secret mode) or Ed25519 signature (key mode) over the handshake transcript. */
  | { type: typeof FrameType.Auth; proof: Uint8Array; token: Uint8Array }
  /** `proof`: over the join transcript (PROTOCOL.md §16.1); `token`: the session joined. */
  | { type: typeof FrameType.Join; proof: Uint8Array; token: Uint8Array }
  | { type: typeof FrameType.Accept; proof: Uint8Array; token: Uint8Array; resumed: boolean }
  | { type: typeof FrameType.Close; code: number; message: string }
  | { type: typeof FrameType.Ping; payload: Uint8Array }
  | { type: typeof FrameType.Pong; payload: Uint8Array }
  | { type: typeof FrameType.FlowOpen; flowId: number; mappingId: number; client: WireAddress }
  | { type: typeof FrameType.FlowClose; flowId: number; reason: number }
  | { type: typeof FrameType.Data; flowId: number; payload: Uint8Array }
  | { type: typeof FrameType.Sdata; flowId: number; seq: number; payload: Uint8Array }
  | { type: typeof FrameType.MappingState; entries: MappingStateEntry[] }
  /** An extension frame (type 0x80..0xFF) this version does not interpret. */
  | { type: "extension"; extensionType: number; body: Uint8Array };

/**
 * Largest body accepted per type, checked on the header alone so that an oversized length is refused
 * before a byte of its body is buffered. `undefined` means an unknown, non-extension type.
 */
export function maxBodyLength(type: number): number | undefined {
  switch (type) {
    case FrameType.Hello:
      return (
        1 +
        1 +
        4 +
        NONCE_SIZE +
        1 +
        PUBLIC_KEY_SIZE +
        1 +
        MAX_MAPPINGS * (1 + MAX_MAPPING_NAME + 2) +
        1 +
        MAX_AGENT_LENGTH
      );
    case FrameType.Auth:
    case FrameType.Join:
      return 1 + SIGNATURE_SIZE + 1 + TOKEN_SIZE;
    case FrameType.Accept:
      return 1 + SIGNATURE_SIZE + 1 + TOKEN_SIZE + 1;
    case FrameType.Close:
      return 2 + MAX_CLOSE_MESSAGE;
    case FrameType.Ping:
    case FrameType.Pong:
      return 8;
    case FrameType.FlowOpen:
      return 4 + 2 + 1 + 2 + 16;
    case FrameType.FlowClose:
      return 5;
    case FrameType.Data:
      return 4 + MAX_DATAGRAM;
    case FrameType.Sdata:
      return 8 + MAX_DATAGRAM;
    case FrameType.MappingState:
      return 1 + MAX_MAPPING_STATES * (2 + 1 + 1 + MAX_MAPPING_NAME + 1 + MAX_MAPPING_REASON);
    default:
      return type >= FIRST_EXTENSION_TYPE ? MAX_DATAGRAM : undefined;
  }
}

export const FRAME_TYPE_NAMES: Record<number, string> = {
  [FrameType.Hello]: "HELLO",
  [FrameType.Auth]: "AUTH",
  [FrameType.Accept]: "ACCEPT",
  [FrameType.Close]: "CLOSE",
  [FrameType.Ping]: "PING",
  [FrameType.Pong]: "PONG",
  [FrameType.Join]: "JOIN",
  [FrameType.FlowOpen]: "FLOW_OPEN",
  [FrameType.FlowClose]: "FLOW_CLOSE",
  [FrameType.Data]: "DATA",
  [FrameType.Sdata]: "SDATA",
  [FrameType.MappingState]: "MAPPING_STATE",
};

export const CLOSE_CODE_NAMES: Record<number, string> = {
  0: "normal",
  1: "protocol error",
  2: "authentication failed",
  3: "authentication mode mismatch",
  4: "refused by operator",
  5: "busy",
  6: "handshake timeout",
  7: "keepalive timeout",
  8: "role conflict",
  9: "replaced by a newer connection",
  10: "internal error",
  11: "key not accepted",
  12: "mappings differ",
};

export const FLOW_CLOSE_REASON_NAMES: Record<number, string> = {
  0: "closed",
  1: "idle",
  2: "evicted",
  3: "socket error",
  4: "target unreachable",
  5: "unknown flow",
  6: "target name did not resolve",
  7: "unknown mapping",
};

/** A malformed or unexpected input. `code` is stable (test vectors name it); `message` is for humans. */
export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ProtocolError";
  }
}
