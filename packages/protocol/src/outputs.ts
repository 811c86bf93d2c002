/**
 * What the machines ask of their host, and the queue they ask through. Outputs are typed per role
 * (ReceiverOutput, SenderOutput), so a host's switch is exhaustive without casts.
 */
import type { WireAddress } from "./frames.js";
import type { DuplicateWindow } from "./dedupe.js";
import type { Link } from "./link.js";
import type { FlowCounters } from "./stats.js";

export type LogLevel = "debug" | "info" | "warn" | "error";

/** A receiver-side flow: one client address. The host sends its replies to `address`:`port`. */
export interface ClientFlow extends FlowCounters {
  readonly id: number;
  readonly mappingId: number;
  /** Which port of the mapping's range the client sent to (0 for a single-port mapping): replies leave from it. */
  readonly portOffset: number;
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  readonly key: string;
  lastActive: number;
  /**
   * Wire bytes (payload plus IP/UDP headers) and datagrams the client may still be sent before it is
   * confirmed (sends a second datagram): Infinity once confirmed. Caps what a spoofed source address
   * can make the tunnel emit toward it.
   */
  replyBudget: number;
  replyDatagrams: number;
  /** The connection (lane) its datagrams go out on (§16.3). */
  lane?: Link;
  /** Redundancy (§17): last sequence number sent, the duplicate window, answer in kind, lanes announced on. */
  txSeq?: number;
  rx?: DuplicateWindow;
  mirror?: boolean;
  announcedOn?: Link[];
  /** Its first datagram looked like WireGuard's (wireguard-hint.ts): advice when it idles out. */
  wireguard?: boolean;
}

/** Outputs of the connection side, the same for both roles. */
export type ConnectionOutput =
  /** Connection `conn` has bytes waiting: call takeTransmit(conn) (once per event-loop turn is enough). */
  | { kind: "transmit"; conn: number }
  /**
   * Flush what takeTransmit(conn) still returns, then close the TCP connection. `code` is the CLOSE
   * code that ended it, sent by this side or (`byPeer`) received from the peer.
   */
  | { kind: "close-connection"; conn: number; code: number; byPeer: boolean }
  /**
   * The peer that dialed in on `conn` (from IP address `source`) proved it holds `publicKey` (key
   * mode). Decide whether to admit it (authorized keys, known keys, the operator) and call approve(),
   * now or later, with the mappings the key may serve.
   */
  | {
      kind: "authorize-peer";
      conn: number;
      peer: string;
      source: string;
      publicKey: Uint8Array;
      /** The names of this side's mappings the peer asks to serve ("" for an unnamed one). */
      mappings: string[];
    }
  /** The connection that waited for a decision went away (or the peer refused us): stop asking. */
  | { kind: "authorization-withdrawn"; conn: number; why: string }
  /** The peer on `conn` passed the handshake. */
  | { kind: "accepted"; conn: number; peer: string; resumed: boolean }
  | { kind: "log"; level: LogLevel; message: string };

export type ReceiverOutput =
  | ConnectionOutput
  /** Send `payload` to the client of `flow`. */
  | { kind: "send-to-client"; flow: ClientFlow; payload: Uint8Array };

export type SenderOutput =
  | ConnectionOutput
  /**
   * Open a UDP socket toward the target of mapping `mappingId` for this flow: for a port range, the
   * target port `portOffset` after the mapping's first (0 for a single-port mapping).
   */
  | { kind: "open-flow-socket"; flowId: number; mappingId: number; portOffset: number; client: WireAddress }
  /** Close the flow's UDP socket. */
  | { kind: "close-flow-socket"; flowId: number }
  /** Send `payload` to the target through the flow's socket. */
  | { kind: "send-to-target"; flowId: number; payload: Uint8Array };

export type Output = ReceiverOutput | SenderOutput;

/** Where the connection side and the flows put their outputs (the machine's queue). */
export interface OutputSink {
  push(output: ConnectionOutput): void;
  log(level: LogLevel, message: string): void;
}

/** The outputs a machine produced, in order, drained by the host with poll(). */
export class OutputQueue<O extends { kind: string }> implements OutputSink {
  private readonly items: O[] = [];
  private head = 0;

  push(output: O | ConnectionOutput): void {
    this.items.push(output as O);
  }

  log(level: LogLevel, message: string): void {
    this.push({ kind: "log", level, message });
  }

  poll(): O | undefined {
    if (this.head === this.items.length) {
      if (this.head > 0) {
        this.items.length = 0;
        this.head = 0;
      }
      return undefined;
    }
    return this.items[this.head++];
  }
}

/** How often a repeated warning may be logged (floods must not become floods of log lines). */
export const LOG_INTERVAL_MS = 10_000;

/**
 * The one throttle for repeated log lines in the protocol: per kind, the first occurrence after a quiet
 * period is logged at once, then at most one line per LOG_INTERVAL_MS with the count since the last.
 */
export class LogThrottle {
  private readonly kinds = new Map<string, { at: number; count: number }>();

  constructor(private readonly out: { log(level: LogLevel, message: string): void }) {}

  /** Counts one occurrence of `kind`; when a line is due, logs `line(count)`. */
  note(kind: string, now: number, line: (count: number) => string, level: LogLevel = "warn"): void {
    let entry = this.kinds.get(kind);
    if (entry === undefined) {
      entry = { at: Number.NEGATIVE_INFINITY, count: 0 };
      this.kinds.set(kind, entry);
    }
    entry.count++;
    if (now - entry.at < LOG_INTERVAL_MS) return;
    this.out.log(level, line(entry.count));
    entry.at = now;
    entry.count = 0;
  }
}
