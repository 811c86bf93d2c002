/**
 * The TCP connections of a machine: the frame loop, CLOSE/PING/PONG, handshake deadlines, keepalive,
 * backpressure bookkeeping and the close sequence. What a frame means beyond that (the handshake, the
 * flows) is the session's and the machine's business, reached through LinkIo.
 */
import type { Settings } from "./config.js";
import {
  CLOSE_CODE_NAMES,
  CloseCode,
  FRAME_TYPE_NAMES,
  type Frame,
  FrameType,
  ProtocolError,
  type Role,
} from "./frames.js";
import { type CryptoProvider, Link, type LinkState, type Side } from "./link.js";
import type { OutputSink } from "./outputs.js";
import type { LaneTotals, Stats } from "./stats.js";
import { peerText } from "./text.js";

/** Missed keepalive intervals after which a silent connection is declared dead. */
const DEAD_AFTER_INTERVALS = 3;

/** Where frames go once the connection layer has done its part. */
export interface LinkIo {
  readonly peerName: string;
  handshakeFrame(link: Link, frame: Frame, now: number): void;
  openFrame(link: Link, frame: Frame, now: number): void;
  /** The host reported the connection gone. */
  gone(link: Link, now: number): void;
  /** A queued DATA frame of flow `flowId` waited past maxDelayMs and was dropped. */
  stale(flowId: number): void;
}

export class LinkTable {
  private readonly links = new Map<number, Link>();

  constructor(
    private readonly settings: Settings,
    private readonly stats: Stats,
    private readonly out: OutputSink,
    private readonly io: LinkIo,
    private readonly totals: LaneTotals,
  ) {}

  get size(): number {
    return this.links.size;
  }

  /** Connections (not yet reported gone) that satisfy `test`. */
  count(test: (link: Link) => boolean): number {
    let n = 0;
    for (const link of this.links.values()) if (test(link)) n++;
    return n;
  }

  get(conn: number): Link | undefined {
    return this.links.get(conn);
  }

  /** Unauthenticated connections, in all and from `source`. */
  pendingCount(source: string): { pending: number; fromSource: number } {
    let pending = 0;
    let fromSource = 0;
    for (const link of this.links.values()) {
      if (!link.pending) continue;
      pending++;
      if (link.source === source) fromSource++;
    }
    return { pending, fromSource };
  }

  open(
    conn: number,
    peer: string,
    side: Side,
    role: Role,
    capabilities: number,
    now: number,
    crypto: CryptoProvider,
  ): Link {
    const s = this.settings;
    const link = new Link(
      conn,
      peer,
      side,
      role,
      s.credentials,
      capabilities,
      s.mappingNames,
      s.mappingPorts,
      s.agent,
      crypto,
      now,
      s.handshakeTimeoutMs,
    );
    this.links.set(conn, link);
    this.notify(link);
    return link;
  }

  /** Bytes to write to connection `conn` (all frames since the last take, as one buffer). */
  takeTransmit(conn: number): Uint8Array | undefined {
    const link = this.links.get(conn);
    if (!link) return undefined;
    link.transmitPending = false;
    return link.writer.take();
  }

  /** See Session.transmitCopied. */
  transmitCopied(conn: number): void {
    this.links.get(conn)?.writer.reuseTaken();
  }

  /** The transport's write buffer for `conn` is full (true) or drained (false). */
  setBlocked(conn: number, blocked: boolean): void {
    const link = this.links.get(conn);
    if (!link) return;
    link.blocked = blocked;
    if (!blocked) {
      link.queueMarks.length = 0; // everything queued goes out now
      this.notify(link);
    }
  }

  /** Bytes arrived on connection `conn`. */
  receive(conn: number, bytes: Uint8Array, now: number): void {
    const link = this.links.get(conn);
    if (!link || link.state === "closed") return;
    link.lastReceived = now;
    link.decoder.push(bytes);
    try {
      let frame: Frame | undefined;
      while ((frame = link.decoder.read()) !== undefined) {
        this.frame(link, frame, now);
        if ((link.state as LinkState) === "closed") break; // anything after a CLOSE is ignored
      }
    } catch (error) {
      if (error instanceof ProtocolError) {
        if (link.pending) this.stats.handshakeFailures++;
        this.fail(link, closeCodeFor(error), error.message);
      } else {
        // A bug of ours: never let it escape into the host's event loop.
        this.out.log(
          "error",
          `internal error on the connection with ${link.peer}: ${String((error as Error)?.stack ?? error)}`,
        );
        this.close(link, CloseCode.InternalError, "internal error");
      }
    }
    this.notify(link);
  }

  /** The TCP connection `conn` is gone (closed by either side or failed). */
  disconnected(conn: number, now: number): void {
    const link = this.links.get(conn);
    if (!link) return;
    this.links.delete(conn);
    if (link.state !== "closed") {
      const wasOpen = link.state === "open";
      if (link.state === "approval") this.withdraw(link, "the connection was lost");
      link.enter("close");
      const direction = link.side === "acceptor" ? "from" : "to";
      this.out.log(wasOpen ? "warn" : "info", `connection ${direction} ${link.peer} lost`);
    }
    this.io.gone(link, now);
  }

  /** Handshake deadlines, keepalive pings and dead-connection detection. */
  tick(now: number): void {
    const keepalive = this.settings.keepaliveMs;
    for (const link of this.links.values()) {
      if (link.state === "closed") continue;
      if (link.handshakeDeadline !== undefined && now >= link.handshakeDeadline) {
        this.stats.handshakeFailures++;
        const seconds = this.settings.handshakeTimeoutMs / 1000;
        this.fail(link, CloseCode.HandshakeTimeout, `no complete handshake within ${seconds} s${progressOf(link)}`);
        continue;
      }
      if (link.state !== "open") continue;
      if (now - link.lastReceived >= keepalive * DEAD_AFTER_INTERVALS) {
        const silent = Math.round((now - link.lastReceived) / 1000);
        this.fail(link, CloseCode.KeepaliveTimeout, `nothing received for ${silent} s`);
        continue;
      }
      if (now >= link.nextPingAt) {
        link.writer.ping(timestampBytes(now));
        link.nextPingAt = now + keepalive;
        this.notify(link);
      }
      if (now >= link.nudgeAt) this.nudge(link, now);
      if (link.queueMarks.length > 0) this.dropStale(link, now);
    }
  }

  /**
   * --max-delay (§10): DATA that has waited in this side's queue for longer than maxDelayMs (the
   * transport backed up) is dropped and counted `stale`, not delivered late; control frames stay.
   */
  private dropStale(link: Link, now: number): void {
    const marks = link.queueMarks;
    const limit = now - this.settings.maxDelayMs;
    let last = -1;
    while (last + 1 < marks.length && marks[last + 1].at <= limit) last++;
    if (last < 0) return;
    const writer = link.writer;
    const before = writer.length;
    writer.dropOldestData(Number.POSITIVE_INFINITY, (flowId) => this.io.stale(flowId), marks[last].length);
    const freed = before - writer.length;
    link.queueMarks = marks.slice(last + 1).map((mark) => ({ at: mark.at, length: mark.length - freed }));
  }

  /**
   * DATA (or a flow frame) was queued on `link` at `now`: have it written this turn, and arm the
   * tail-loss nudge. Each write pushes the nudge back, so while traffic flows none is sent (the next
   * write is the segment that reveals a loss); one follows the last write of a burst.
   */
  queued(link: Link, now: number): void {
    this.notify(link);
    if (link.blocked && this.settings.maxDelayMs > 0) {
      const marks = link.queueMarks;
      const last = marks[marks.length - 1];
      if (last !== undefined && last.at === now) last.length = link.writer.length;
      else marks.push({ at: now, length: link.writer.length });
    }
    const delay = this.settings.nudgeMs;
    if (delay > 0) link.nudgeAt = now + delay;
  }

  /**
   * The tail-loss nudge (PROTOCOL.md §10.1): a 5-byte PAD behind the last segment, so that if that
   * segment was lost the peer's TCP sees a later one, acknowledges out of order, and ours repairs the
   * loss by fast recovery within about a round trip instead of waiting for its retransmission timeout.
   * While bytes are still queued here (the transport is backed up, or they go out this turn) they
   * are the tail: the nudge waits for them.
   */
  private nudge(link: Link, now: number): void {
    if (link.blocked || link.writer.length > 0) {
      link.nudgeAt = now + this.settings.nudgeMs;
      return;
    }
    link.nudgeAt = Number.POSITIVE_INFINITY;
    link.writer.pad();
    link.counters.nudgesSent++;
    this.totals.nudgesSent++;
    this.notify(link);
  }

  /** Earliest time at which tick() has work, or undefined when nothing is scheduled. */
  nextTimeout(): number | undefined {
    let next: number | undefined;
    const dead = this.settings.keepaliveMs * DEAD_AFTER_INTERVALS;
    for (const link of this.links.values()) {
      if (link.state === "closed") continue;
      if (link.handshakeDeadline !== undefined) next = earliest(next, link.handshakeDeadline);
      if (link.state === "open") {
        next = earliest(earliest(next, link.nextPingAt), link.lastReceived + dead);
        if (link.nudgeAt !== Number.POSITIVE_INFINITY) next = earliest(next, link.nudgeAt);
        const oldest = link.queueMarks[0];
        if (oldest !== undefined) next = earliest(next, oldest.at + this.settings.maxDelayMs);
      }
    }
    return next;
  }

  /** Sends CLOSE and asks the host to close the connection. */
  close(link: Link, code: CloseCode, message: string): void {
    if (link.state === "closed") return;
    link.enter("close");
    link.writer.close(code, message);
    this.notify(link);
    this.out.push({ kind: "close-connection", conn: link.id, code, byPeer: false });
  }

  /** close() for a failure, with a log line naming the peer and the reason. */
  fail(link: Link, code: CloseCode, message: string): void {
    if (link.state === "closed") return;
    this.out.log("warn", `closing connection with ${link.peer}: ${message}`);
    this.close(link, code, message);
  }

  /** Says goodbye on every connection. */
  closeAll(reason: string): void {
    for (const link of this.links.values()) this.close(link, CloseCode.Normal, reason);
  }

  notify(link: Link): void {
    if (link.transmitPending || link.blocked || link.writer.length === 0) return;
    link.transmitPending = true;
    this.out.push({ kind: "transmit", conn: link.id });
  }

  /**
   * Whether `size` more bytes of DATA may be queued on `link`. Past the buffer bound, while the
   * transport is backed up, the oldest queued datagrams are dropped to make room (a quarter of the
   * bound at a time, so the compaction is amortised; `dropped` hears of each); UDP is dropped and
   * counted, never hoarded. A false answer is the caller's to count.
   */
  hasRoom(link: Link, size: number, dropped: (flowId: number, size: number) => void): boolean {
    const writer = link.writer;
    const bound = this.settings.maxBufferBytes;
    if (writer.length + size <= bound) return true;
    if (link.blocked) {
      writer.dropOldestData(Math.max(size, bound / 4), dropped);
      if (writer.length + size <= bound) return true;
    }
    return false;
  }

  /**
   * Whether to answer a peer's frame (PONG, FLOW_CLOSE for an unknown flow). A peer that keeps sending
   * but never reads must not make us hoard answers: past the buffer bound they are skipped.
   */
  canAnswer(link: Link): boolean {
    return link.writer.length < this.settings.maxBufferBytes;
  }

  private frame(link: Link, frame: Frame, now: number): void {
    if (frame.type === FrameType.Close) return this.closedByPeer(link, frame.code, frame.message);
    if (frame.type === "extension") return; // unknown extensions are skipped by design
    if (link.state !== "open") return this.io.handshakeFrame(link, frame, now);
    switch (frame.type) {
      case FrameType.Ping:
        if (this.canAnswer(link)) link.writer.pong(frame.payload);
        return;
      case FrameType.Pong: {
        const rtt = now - readTimestamp(frame.payload);
        if (rtt >= 0 && rtt < 3_600_000) link.rttMs = this.stats.rttMs = rtt;
        return;
      }
      case FrameType.Hello:
      case FrameType.Auth:
      case FrameType.Accept:
        throw new ProtocolError("unexpected-frame", `unexpected ${FRAME_TYPE_NAMES[frame.type]} after the handshake`);
      default:
        return this.io.openFrame(link, frame, now);
    }
  }

  /** The peer sent CLOSE: its reason is its own words, so it is quoted, never taken as ours. */
  private closedByPeer(link: Link, code: number, message: string): void {
    const why = CLOSE_CODE_NAMES[code as CloseCode] ?? `code ${code}`;
    const said = message ? ` (${peerText(message)})` : "";
    const refusedUs = code === CloseCode.KeyRejected || code === CloseCode.Refused;
    const who = link.pending && refusedUs ? `the ${this.io.peerName} at ${link.peer}` : link.peer;
    const line = refusedUs ? `${who} refused this side: ${why}${said}` : `${who} closed the connection: ${why}${said}`;
    this.out.log(code === CloseCode.Normal ? "info" : "warn", line + olderPeerHint(link, code, message));
    if (link.state === "approval") {
      const peerSaid = refusedUs ? `refused this side (${why})` : `closed the connection (${why})`;
      this.withdraw(link, `the ${this.io.peerName} at ${link.peer} ${peerSaid}`);
    }
    if (link.pending) this.stats.handshakeFailures++;
    link.peerCloseCode = code;
    link.enter("close");
    this.out.push({ kind: "close-connection", conn: link.id, code, byPeer: true });
  }

  private withdraw(link: Link, why: string): void {
    this.out.push({ kind: "authorization-withdrawn", conn: link.id, why });
  }
}

/** The CLOSE code for a ProtocolError: the handshake's configuration errors have codes of their own. */
function closeCodeFor(error: ProtocolError): CloseCode {
  if (error.code === "role-conflict") return CloseCode.RoleConflict;
  if (error.code === "auth-mismatch") return CloseCode.AuthMismatch;
  if (error.code === "mapping-mismatch") return CloseCode.MappingMismatch;
  return CloseCode.ProtocolError;
}

function earliest(a: number | undefined, b: number): number {
  return a === undefined || b < a ? b : a;
}

function progressOf(link: Link): string {
  if (link.peerHello) return "";
  return link.decoder.midFrame ? " (peer sent part of a preface or frame)" : " (peer sent nothing)";
}

function timestampBytes(now: number): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, now);
  return bytes;
}

function readTimestamp(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getFloat64(0);
}

/**
 * A peer from before port ranges reads a range entry's length byte (0x80 | l) as a name of over 32
 * bytes and refuses the HELLO: say what that most likely means instead of leaving a riddle.
 */
function olderPeerHint(link: Link, code: number, message: string): string {
  if (code !== CloseCode.ProtocolError || !link.pending || link.localHello.mappingPorts === undefined) return "";
  if (!/mapping name of \d+ bytes/.test(message)) return "";
  return "; this side announces port ranges, which an mcudpt without them refuses so: upgrade the peer, or give both sides single ports";
}
