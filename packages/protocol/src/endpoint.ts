/**
 * What the receiver and sender machines share: the connection table, the frame loop, the handshake
 * checks both sides make, keepalive, backpressure bookkeeping, the output queue and the counters.
 *
 * Sans-I/O contract: the host feeds inputs (bytes, datagrams, the current time in ms) and then drains
 * `poll()` for outputs, takes coalesced bytes with `takeTransmit()`, and calls `tick(now)` no later
 * than `nextTimeout()`. Nothing here reads a clock, opens a socket or sets a timer.
 */
import { utf8 } from "./bytes.js";
import type { FlowBase, FlowCounters, MappedFlows } from "./flow-table.js";
import {
  AuthMode,
  CLOSE_CODE_NAMES,
  CloseCode,
  FLOW_CLOSE_REASON_NAMES,
  FlowCloseReason,
  FRAME_TYPE_NAMES,
  type Frame,
  FrameType,
  MAX_MAPPINGS,
  ProtocolError,
  Role,
  type WireAddress,
} from "./frames.js";
import {
  type Credentials,
  type CryptoProvider,
  type HelloFrame,
  type Identity,
  Link,
  type LinkState,
  type Side,
} from "./link.js";
import { checkMappings, type MappingConfig, pairMappings } from "./mappings.js";

export type LogLevel = "debug" | "info" | "warn" | "error";

/** A receiver-side flow: one client address. The host sends its replies to `address`:`port`. */
export interface ClientFlow extends FlowCounters {
  readonly id: number;
  readonly mappingId: number;
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  readonly key: string;
  lastActive: number;
  /**
   * Bytes of replies the client may still get before it is confirmed (sends a second datagram):
   * Infinity once confirmed. Caps what a spoofed source address can make the tunnel emit.
   */
  replyBudget: number;
}

export type Output =
  /** Connection `conn` has bytes waiting: call takeTransmit(conn) (once per event-loop turn is enough). */
  | { kind: "transmit"; conn: number }
  /** Flush what takeTransmit(conn) still returns, then close the TCP connection. */
  | { kind: "close-connection"; conn: number }
  /**
   * The peer that dialed in on `conn` proved it holds `publicKey` (key mode). Decide whether to admit
   * it (authorized keys, known keys, the operator) and call approve(), now or later.
   */
  | { kind: "authorize-peer"; conn: number; peer: string; publicKey: Uint8Array }
  /** The peer on `conn` passed the handshake. */
  | { kind: "accepted"; conn: number; peer: string; resumed: boolean }
  /** Receiver: send `payload` to the client of `flow`. */
  | { kind: "send-to-client"; flow: ClientFlow; payload: Uint8Array }
  /** Sender: open a UDP socket toward the target of mapping `mappingId` for this flow. */
  | { kind: "open-flow-socket"; flowId: number; mappingId: number; client: WireAddress }
  /** Sender: close the flow's UDP socket. */
  | { kind: "close-flow-socket"; flowId: number }
  /** Sender: send `payload` to the target through the flow's socket. */
  | { kind: "send-to-target"; flowId: number; payload: Uint8Array }
  | { kind: "log"; level: LogLevel; message: string };

export type DropReason =
  | "no-sender"
  | "backpressure"
  | "unknown-flow"
  | "not-connected"
  | "socket-error"
  | "too-large"
  /** Receiver: a source opened new flows faster than --new-flow-rate. */
  | "rate-limited"
  /** Receiver: a reply to an unconfirmed client over --amplification-limit. */
  | "amplification";

export interface Stats {
  /** Datagrams and bytes taken in from UDP (clients on the receiver, the target on the sender). */
  udpIn: number;
  udpInBytes: number;
  /** Datagrams and bytes handed out to UDP. */
  udpOut: number;
  udpOutBytes: number;
  flowsOpened: number;
  flowsClosed: number;
  /** Flows closed to make room under --max-flows (included in flowsClosed). */
  flowsEvicted: number;
  /** Connections that completed the handshake. */
  accepted: number;
  handshakeFailures: number;
  drops: Record<DropReason, number>;
  rttMs: number | undefined;
}

/** Traffic of one mapping (its flows' counters, kept after they close). */
export interface MappingStats {
  /** The mapping's name, or "" when unnamed. */
  readonly name: string;
  flowsOpened: number;
  udpIn: number;
  udpInBytes: number;
  udpOut: number;
  udpOutBytes: number;
}

export interface CommonConfig {
  /** Shared secret (secret mode). Without one, key mode: `identity` is required. */
  secret?: Uint8Array | string;
  /** This side's Ed25519 key (key mode). */
  identity?: Identity;
  idleTimeoutMs?: number;
  maxFlows?: number;
  keepaliveMs?: number;
  handshakeTimeoutMs?: number;
  /** Bound on bytes held for a connection whose transport is not draining; DATA past it is dropped. */
  maxBufferBytes?: number;
  /** How long flows are kept after the connection drops, waiting for the same sender to resume. */
  resumeGraceMs?: number;
  /** Free text identifying the software in HELLO. */
  agent?: string;
  /** This side's mappings, in order (default: one unnamed mapping). */
  mappings?: readonly MappingConfig[];
  /** When this side accepts TCP: unauthenticated connections allowed at once, in all and per source. */
  maxPendingConnections?: number;
  maxPendingPerSource?: number;
  /**
   * When this side dials, in key mode: decides whether the acceptor's key (already proven by its
   * signature) is the one expected — pinned, or first seen. Returns undefined to trust it, or why not.
   * Without it any key that proves itself is accepted.
   */
  checkPeerKey?: (publicKey: Uint8Array, peer: string) => string | undefined;
}

export const DEFAULTS = {
  idleTimeoutMs: 60_000,
  maxFlows: 4096,
  keepaliveMs: 15_000,
  handshakeTimeoutMs: 10_000,
  maxBufferBytes: 4 * 1024 * 1024,
  resumeGraceMs: 30_000,
  agent: "mcudpt-ts",
  maxPendingConnections: 16,
  maxPendingPerSource: 4,
} as const;

/** Missed keepalive intervals after which a silent connection is declared dead. */
const DEAD_AFTER_INTERVALS = 3;

export abstract class Endpoint {
  protected readonly links = new Map<number, Link>();
  private readonly outputs: Output[] = [];
  private outputHead = 0;
  private evictionsUnlogged = 0;
  private lastEvictionLog = Number.NEGATIVE_INFINITY;
  private readonly limitLogs = new Map<string, { at: number; unlogged: number }>();
  /**
   * The CLOSE code of the last connection that ended with one (sent or received): the host's dialer
   * retries a configuration mismatch (roles, auth modes, mappings) slowly rather than every backoff.
   */
  lastCloseCode: number | undefined;
  protected readonly secret: Uint8Array | undefined;
  private readonly credentials: Credentials;
  protected readonly idleTimeoutMs: number;
  protected readonly maxFlows: number;
  protected readonly keepaliveMs: number;
  protected readonly handshakeTimeoutMs: number;
  protected readonly maxBufferBytes: number;
  protected readonly resumeGraceMs: number;
  protected readonly agent: string;
  protected readonly mappings: readonly MappingConfig[];
  private readonly mappingNames: readonly string[];
  /** Per-mapping totals, by this side's mapping index. */
  readonly mappingStats: readonly MappingStats[];
  readonly stats: Stats = {
    udpIn: 0,
    udpInBytes: 0,
    udpOut: 0,
    udpOutBytes: 0,
    flowsOpened: 0,
    flowsClosed: 0,
    flowsEvicted: 0,
    accepted: 0,
    handshakeFailures: 0,
    drops: {
      "no-sender": 0,
      backpressure: 0,
      "unknown-flow": 0,
      "not-connected": 0,
      "socket-error": 0,
      "too-large": 0,
      "rate-limited": 0,
      amplification: 0,
    },
    rttMs: undefined,
  };

  constructor(
    protected readonly role: Role,
    config: CommonConfig,
    protected readonly crypto: CryptoProvider,
  ) {
    this.secret = typeof config.secret === "string" ? utf8(config.secret) : config.secret;
    if (this.secret && this.secret.length === 0) this.secret = undefined;
    if (this.secret) this.credentials = { secret: this.secret };
    else if (config.identity) this.credentials = { identity: config.identity };
    else throw new RangeError("either a secret or an identity (key) is required");
    this.idleTimeoutMs = positive("idleTimeoutMs", config.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs);
    this.maxFlows = positive("maxFlows", config.maxFlows ?? DEFAULTS.maxFlows);
    this.keepaliveMs = positive("keepaliveMs", config.keepaliveMs ?? DEFAULTS.keepaliveMs);
    this.handshakeTimeoutMs = positive("handshakeTimeoutMs", config.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutMs);
    this.maxBufferBytes = positive("maxBufferBytes", config.maxBufferBytes ?? DEFAULTS.maxBufferBytes);
    this.resumeGraceMs = Math.max(0, config.resumeGraceMs ?? DEFAULTS.resumeGraceMs);
    this.agent = config.agent ?? DEFAULTS.agent;
    this.mappings = config.mappings ?? [{}];
    checkMappings(this.mappings, MAX_MAPPINGS);
    this.mappingNames = this.mappings.map((mapping) => mapping.name ?? "");
    this.mappingStats = this.mappingNames.map((name) => ({
      name,
      flowsOpened: 0,
      udpIn: 0,
      udpInBytes: 0,
      udpOut: 0,
      udpOutBytes: 0,
    }));
  }

  /** Idle timeout of mapping `index` (its own, or the endpoint's). */
  protected idleTimeoutOf(index: number): number {
    return this.mappings[index]?.idleTimeoutMs ?? this.idleTimeoutMs;
  }

  protected maxFlowsOf(index: number): number {
    return this.mappings[index]?.maxFlows ?? this.maxFlows;
  }

  /** Closes, with `close`, every flow idle past its mapping's timeout (oldest first in each mapping). */
  protected expireIdleFlows<F extends FlowBase & { readonly mappingId: number }>(
    flows: MappedFlows<F>,
    now: number,
    close: (flow: F) => void,
  ): void {
    flows.tables.forEach((table, mappingId) => {
      const idle = this.idleTimeoutOf(mappingId);
      for (let flow = table.oldest(); flow !== undefined && now - flow.lastActive >= idle; flow = table.oldest())
        close(flow);
    });
  }

  /** Makes room for one more flow in mapping `mappingId` under its flow limit: evicts the least recently active. */
  protected evictIfFull<F extends FlowBase & { readonly mappingId: number }>(
    flows: MappedFlows<F>,
    mappingId: number,
    now: number,
    close: (flow: F) => void,
  ): void {
    const table = flows.tables[mappingId];
    const limit = this.maxFlowsOf(mappingId);
    if (table.size < limit) return;
    const oldest = table.oldest();
    if (oldest === undefined) return;
    this.noteEviction(now, limit);
    close(oldest);
  }

  /** When the next flow goes idle, over all mappings; undefined without flows. */
  protected nextIdleExpiry<F extends FlowBase & { readonly mappingId: number }>(
    flows: MappedFlows<F>,
  ): number | undefined {
    let next: number | undefined;
    flows.tables.forEach((table, mappingId) => {
      const oldest = table.oldest();
      if (oldest === undefined) return;
      const due = oldest.lastActive + this.idleTimeoutOf(mappingId);
      if (next === undefined || due < next) next = due;
    });
    return next;
  }

  get authMode(): AuthMode {
    return this.secret ? AuthMode.Secret : AuthMode.Key;
  }

  /** Next output, or undefined when the queue is empty. */
  poll(): Output | undefined {
    if (this.outputHead === this.outputs.length) {
      if (this.outputHead > 0) {
        this.outputs.length = 0;
        this.outputHead = 0;
      }
      return undefined;
    }
    return this.outputs[this.outputHead++];
  }

  protected emit(output: Output): void {
    this.outputs.push(output);
  }

  protected log(level: LogLevel, message: string): void {
    this.outputs.push({ kind: "log", level, message });
  }

  /** Bytes to write to connection `conn` (all frames since the last take, as one buffer). */
  takeTransmit(conn: number): Uint8Array | undefined {
    const link = this.links.get(conn);
    if (!link) return undefined;
    link.transmitPending = false;
    return link.writer.take();
  }

  /** The transport's write buffer for `conn` is full (true) or drained (false). */
  setBlocked(conn: number, blocked: boolean): void {
    const link = this.links.get(conn);
    if (!link) return;
    link.blocked = blocked;
    if (!blocked) this.notifyTransmit(link);
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
        this.onFrame(link, frame, now);
        if ((link.state as LinkState) === "closed") break; // anything after a CLOSE is ignored
      }
    } catch (error) {
      if (error instanceof ProtocolError) {
        const state = link.state as LinkState;
        if (state !== "open" && state !== "closed") this.stats.handshakeFailures++;
        this.failLink(link, closeCodeFor(error), error.message);
      } else {
        // A bug of ours: never let it escape into the host's event loop.
        this.log(
          "error",
          `internal error on connection from ${link.peer}: ${String((error as Error)?.stack ?? error)}`,
        );
        this.closeLink(link, CloseCode.InternalError, "internal error");
      }
    }
    this.notifyTransmit(link);
  }

  /** The TCP connection `conn` is gone (closed by either side or failed). */
  disconnected(conn: number, now: number): void {
    const link = this.links.get(conn);
    if (!link) return;
    this.links.delete(conn);
    const wasOpen = link.state === "open";
    if (link.state !== "closed") {
      link.state = "closed";
      this.log(wasOpen ? "warn" : "info", `connection ${wasOpen ? "to" : "from"} ${link.peer} lost`);
    }
    this.onLinkGone(link, wasOpen, now);
  }

  /** Runs the timers that are due. */
  tick(now: number): void {
    for (const link of this.links.values()) {
      if (link.state === "closed") continue;
      if (link.handshakeDeadline !== undefined && now >= link.handshakeDeadline) {
        this.stats.handshakeFailures++;
        this.failLink(
          link,
          CloseCode.HandshakeTimeout,
          `no complete handshake within ${this.handshakeTimeoutMs / 1000} s${describeHandshakeProgress(link)}`,
        );
        continue;
      }
      if (link.state !== "open") continue;
      if (now - link.lastReceived >= this.keepaliveMs * DEAD_AFTER_INTERVALS) {
        this.failLink(
          link,
          CloseCode.KeepaliveTimeout,
          `nothing received for ${Math.round((now - link.lastReceived) / 1000)} s`,
        );
        continue;
      }
      if (now >= link.nextPingAt) {
        link.writer.ping(timestampBytes(now));
        link.nextPingAt = now + this.keepaliveMs;
        this.notifyTransmit(link);
      }
    }
    this.onTick(now);
  }

  /** Earliest time at which tick() has work, or undefined when nothing is scheduled. */
  nextTimeout(): number | undefined {
    let next = this.roleTimeout();
    for (const link of this.links.values()) {
      if (link.state === "closed") continue;
      if (link.handshakeDeadline !== undefined) next = earliest(next, link.handshakeDeadline);
      if (link.state === "open") {
        next = earliest(next, link.nextPingAt);
        next = earliest(next, link.lastReceived + this.keepaliveMs * DEAD_AFTER_INTERVALS);
      }
    }
    return next;
  }

  /** Connections currently known, for status displays. */
  connectionCount(): number {
    return this.links.size;
  }

  protected abstract onOpenFrame(link: Link, frame: Frame, now: number): void;
  protected abstract onHandshakeFrame(link: Link, frame: Frame, now: number): void;
  protected abstract onLinkGone(link: Link, wasOpen: boolean, now: number): void;
  protected abstract onTick(now: number): void;
  protected abstract roleTimeout(): number | undefined;

  private onFrame(link: Link, frame: Frame, now: number): void {
    if (frame.type === FrameType.Close) {
      const why = CLOSE_CODE_NAMES[frame.code] ?? `code ${frame.code}`;
      const level = frame.code === CloseCode.Normal ? "info" : "warn";
      this.log(level, `${link.peer} closed the connection: ${why}${frame.message ? ` (${frame.message})` : ""}`);
      if (link.state !== "open") this.stats.handshakeFailures++;
      link.state = "closed";
      this.lastCloseCode = frame.code;
      this.emit({ kind: "close-connection", conn: link.id });
      return;
    }
    if (frame.type === "extension") return; // unknown extensions are skipped by design
    if (link.state !== "open") return this.onHandshakeFrame(link, frame, now);
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
        return this.onOpenFrame(link, frame, now);
    }
  }

  /** Checks the peer's HELLO against ours; throws ProtocolError with an operator-readable reason. */
  protected checkPeerHello(link: Link, frame: Frame): HelloFrame {
    if (frame.type !== FrameType.Hello) throw unexpected(frame, "HELLO");
    if (frame.role === link.localHello.role) {
      const both = frame.role === Role.Receiver ? "receivers" : "senders";
      throw new ProtocolError(
        "role-conflict",
        `both sides are ${both}: one side must be a receiver and the other a sender`,
      );
    }
    if (frame.auth !== link.localHello.auth) {
      throw new ProtocolError(
        "auth-mismatch",
        `peer uses ${Link.authName(frame.auth)} but this side uses ${Link.authName(link.localHello.auth)}: give both sides the same --secret, or neither`,
      );
    }
    if (frame.auth === AuthMode.Key && frame.publicKey.length === 0) {
      throw new ProtocolError("bad-field", "HELLO in key mode carries no public key");
    }
    const ours = this.mappingNames;
    link.mappingPairs =
      this.role === Role.Receiver ? pairMappings(ours, frame.mappings) : pairMappings(frame.mappings, ours);
    link.peerHello = {
      ...frame,
      nonce: frame.nonce.slice(),
      publicKey: frame.publicKey.slice(),
      mappings: [...frame.mappings],
    };
    return link.peerHello;
  }

  protected newLink(conn: number, peer: string, side: Side, capabilities: number, now: number): Link {
    const link = new Link(
      conn,
      peer,
      side,
      this.role,
      this.credentials,
      capabilities,
      this.mappingNames,
      this.agent,
      this.crypto,
      now,
      this.handshakeTimeoutMs,
    );
    this.links.set(conn, link);
    this.notifyTransmit(link);
    return link;
  }

  /** Sends CLOSE and asks the host to close the connection. */
  protected closeLink(link: Link, code: CloseCode, message: string): void {
    if (link.state === "closed") return;
    link.state = "closed";
    this.lastCloseCode = code;
    link.writer.close(code, message);
    this.notifyTransmit(link);
    this.emit({ kind: "close-connection", conn: link.id });
  }

  /** closeLink for a failure, with a log line naming the peer and the reason. */
  protected failLink(link: Link, code: CloseCode, message: string): void {
    if (link.state === "closed") return;
    this.log("warn", `closing connection with ${link.peer}: ${message}`);
    this.closeLink(link, code, message);
  }

  protected notifyTransmit(link: Link): void {
    if (link.transmitPending || link.blocked || link.writer.length === 0) return;
    link.transmitPending = true;
    this.emit({ kind: "transmit", conn: link.id });
  }

  /**
   * Whether a DATA frame of `size` bytes may be queued on `link`. Past the buffer bound, while the
   * transport is backed up, the oldest queued datagrams are dropped to make room (a quarter of the
   * bound at a time, so the compaction is amortised); UDP is dropped and counted, never hoarded.
   */
  protected hasRoom(link: Link, size: number): boolean {
    const writer = link.writer;
    if (writer.length + size <= this.maxBufferBytes) return true;
    if (link.blocked) {
      this.stats.drops.backpressure += writer.dropOldestData(Math.max(size, this.maxBufferBytes / 4));
      if (writer.length + size <= this.maxBufferBytes) return true;
    }
    this.stats.drops.backpressure++;
    return false;
  }

  /**
   * Whether to answer a peer's frame (PONG, FLOW_CLOSE for an unknown flow). A peer that keeps sending
   * but never reads must not make us hoard answers: past the buffer bound they are skipped.
   */
  protected canAnswer(link: Link): boolean {
    return link.writer.length < this.maxBufferBytes;
  }

  /**
   * Counts an eviction under maxFlows and logs at most one line per 10 s: a flood of new source
   * addresses evicts once per datagram, and must not become a flood of log lines.
   */
  protected noteEviction(now: number, limit: number = this.maxFlows): void {
    this.stats.flowsEvicted++;
    this.evictionsUnlogged++;
    if (now - this.lastEvictionLog < 10_000) return;
    this.lastEvictionLog = now;
    this.log("warn", `flow limit (${limit}) reached: evicted ${this.evictionsUnlogged} least recently active flow(s)`);
    this.evictionsUnlogged = 0;
  }

  /**
   * Logs a limit that dropped something at most once per 10 s per kind, with the count since the last
   * line: a flood must not become a flood of log lines.
   */
  protected noteLimit(kind: string, now: number, message: string): void {
    let entry = this.limitLogs.get(kind);
    if (entry === undefined) {
      entry = { at: Number.NEGATIVE_INFINITY, unlogged: 0 };
      this.limitLogs.set(kind, entry);
    }
    entry.unlogged++;
    if (now - entry.at < 10_000) return;
    this.log("warn", `${message}: dropped ${entry.unlogged} datagram(s)`);
    entry.at = now;
    entry.unlogged = 0;
  }

  /** Counts a datagram taken in from UDP for mapping `mappingId` (the totals are the caller's). */
  protected countMappingIn(mappingId: number, size: number): void {
    const mapping = this.mappingStats[mappingId];
    if (mapping === undefined) return;
    mapping.udpIn++;
    mapping.udpInBytes += size;
  }

  /** Counts a datagram handed out to UDP, in the totals and on its flow. */
  protected countOut(flow: FlowCounters & { readonly mappingId: number }, size: number): void {
    this.stats.udpOut++;
    this.stats.udpOutBytes += size;
    const mapping = this.mappingStats[flow.mappingId];
    mapping.udpOut++;
    mapping.udpOutBytes += size;
    flow.datagramsOut++;
    flow.bytesOut += size;
  }

  /**
   * The open flow a DATA frame names (the caller counts it with countOut once it is sent); or undefined for a flow this side does
   * not have (closed here while the frame was in flight, or never opened), which is counted and
   * answered with FLOW_CLOSE(unknown flow) so the peer frees it too. Nothing is emitted for it.
   */
  protected dataFlow<F extends FlowBase & { readonly mappingId: number }>(
    flows: MappedFlows<F>,
    link: Link,
    flowId: number,
    now: number,
  ): F | undefined {
    const flow = flows.get(flowId);
    if (flow === undefined) {
      this.stats.drops["unknown-flow"]++;
      if (this.canAnswer(link)) link.writer.flowClose(flowId, FlowCloseReason.UnknownFlow);
      return undefined;
    }
    flows.touch(flow, now);
    return flow;
  }

  protected flowCloseName(reason: number): string {
    return FLOW_CLOSE_REASON_NAMES[reason] ?? `reason ${reason}`;
  }
}

/** The CLOSE code for a ProtocolError: the handshake's two configuration errors have codes of their own. */
function closeCodeFor(error: ProtocolError): CloseCode {
  if (error.code === "role-conflict") return CloseCode.RoleConflict;
  if (error.code === "auth-mismatch") return CloseCode.AuthMismatch;
  if (error.code === "mapping-mismatch") return CloseCode.MappingMismatch;
  return CloseCode.ProtocolError;
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}

function earliest(a: number | undefined, b: number): number {
  return a === undefined || b < a ? b : a;
}

export function unexpected(frame: Frame, expected: string): ProtocolError {
  const name =
    frame.type === "extension" ? `extension 0x${frame.extensionType.toString(16)}` : FRAME_TYPE_NAMES[frame.type];
  return new ProtocolError("unexpected-frame", `unexpected ${name} during the handshake (expected ${expected})`);
}

function describeHandshakeProgress(link: Link): string {
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
