/**
 * The receiver: owns the public UDP port. Every client address becomes a flow with an id chosen here;
 * the sender only ever answers with flow ids, so the only addresses this side writes to are clients
 * that opened flows (no reflection). It accepts TCP connections, verifies each before acting on
 * anything it sends, and keeps one sender at a time.
 */
import { ipFamily } from "./address.js";
import { bytesEqual } from "./bytes.js";
import { type ClientFlow, type CommonConfig, Endpoint, unexpected } from "./endpoint.js";
import { FlowTable, zeroCounters } from "./flow-table.js";
import {
  Capability,
  CloseCode,
  FlowCloseReason,
  type Frame,
  FrameType,
  HEADER_SIZE,
  MAX_DATAGRAM,
  ProtocolError,
  Role,
  TOKEN_SIZE,
} from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import { SourceRateLimiter } from "./rate-limit.js";

export interface ReceiverConfig extends CommonConfig {
  /** Unauthenticated connections allowed at once; more are refused straight away. */
  maxPendingConnections?: number;
  /** Unauthenticated connections allowed at once from one source address. */
  maxPendingPerSource?: number;
  /** Mapping id put in FLOW_OPEN (one mapping per receiver for now). */
  mappingId?: number;
  /**
   * New flows one source address may open per second (bursts of twice that); datagrams past it are
   * dropped and counted. 0 disables the limit.
   */
  newFlowsPerSecond?: number;
  /**
   * While a flow is unconfirmed (its client has sent one datagram only, so its address may be
   * spoofed), replies to it may total at most this many times the bytes it sent. 0 disables the cap.
   */
  amplificationLimit?: number;
}

export const RECEIVER_DEFAULTS = {
  maxPendingConnections: 16,
  maxPendingPerSource: 4,
  newFlowsPerSecond: 100,
  amplificationLimit: 10,
} as const;

/** The accepted sender and the flows that belong to it; survives a short outage for resumption. */
interface Session {
  token: Uint8Array;
  /** The sender's key (key mode): only the same key may resume the session. */
  publicKey: Uint8Array;
  link: Link | undefined;
  peer: string;
  /** When the link was lost; flows are kept until lostAt + resumeGraceMs. */
  lostAt: number | undefined;
}

const CAPABILITIES = Capability.Resume;
const DATA_OVERHEAD = HEADER_SIZE + 4;
/** Largest FLOW_OPEN (IPv6) plus a FLOW_CLOSE for an evicted flow. */
const NEW_FLOW_OVERHEAD = HEADER_SIZE + 25 + HEADER_SIZE + 5;

export class ReceiverMachine extends Endpoint {
  private readonly flows = new FlowTable<ClientFlow>();
  private readonly flowsByKey = new Map<string, ClientFlow>();
  private session: Session | undefined;
  private nextFlowId = 1;
  private readonly maxPending: number;
  private readonly maxPendingPerSource: number;
  private readonly mappingId: number;
  private readonly newFlowLimiter: SourceRateLimiter | undefined;
  private readonly amplificationLimit: number;

  constructor(config: ReceiverConfig, crypto: CryptoProvider) {
    super(Role.Receiver, config, crypto);
    this.maxPending = config.maxPendingConnections ?? RECEIVER_DEFAULTS.maxPendingConnections;
    this.maxPendingPerSource = config.maxPendingPerSource ?? RECEIVER_DEFAULTS.maxPendingPerSource;
    this.mappingId = config.mappingId ?? 0;
    const rate = config.newFlowsPerSecond ?? RECEIVER_DEFAULTS.newFlowsPerSecond;
    this.newFlowLimiter =
      rate > 0 ? new SourceRateLimiter({ perSecond: rate, burst: Math.max(1, rate * 2) }) : undefined;
    this.amplificationLimit = Math.max(0, config.amplificationLimit ?? RECEIVER_DEFAULTS.amplificationLimit);
  }

  /** True while an accepted sender is connected. */
  get senderConnected(): boolean {
    return this.session?.link !== undefined;
  }

  get flowCount(): number {
    return this.flows.size;
  }

  /**
   * A TCP connection was accepted from `peer` (address:port, for log lines); `source` is its IP address,
   * which bounds how many unauthenticated connections one host may hold open.
   */
  connect(conn: number, peer: string, now: number, source = peer): void {
    let pending = 0;
    let fromSource = 0;
    for (const link of this.links.values()) {
      if (link.state === "open" || link.state === "closed") continue;
      pending++;
      if (link.source === source) fromSource++;
    }
    const link = this.newLink(conn, peer, "acceptor", CAPABILITIES, now);
    link.source = source;
    if (pending >= this.maxPending) {
      this.stats.handshakeFailures++;
      this.failLink(link, CloseCode.Busy, `too many unauthenticated connections (${pending})`);
    } else if (fromSource >= this.maxPendingPerSource) {
      this.stats.handshakeFailures++;
      this.failLink(link, CloseCode.Busy, `too many unauthenticated connections from ${source} (${fromSource})`);
    }
  }

  /** Whether connection `conn` still waits for a decision (it may have gone away meanwhile). */
  awaitingApproval(conn: number): boolean {
    return this.links.get(conn)?.state === "approval";
  }

  /**
   * The decision on an `authorize-sender` request. `reason` is told to the sender and logged; without
   * one a refusal is the operator's.
   */
  approve(conn: number, accepted: boolean, now: number, reason?: string): void {
    const link = this.links.get(conn);
    if (!link || link.state !== "approval") return;
    if (!accepted) {
      this.stats.handshakeFailures++;
      if (reason) {
        this.failLink(link, CloseCode.KeyRejected, reason);
      } else {
        this.log("info", `sender ${link.peer} refused by the operator`);
        this.closeLink(link, CloseCode.Refused, "refused by the receiver's operator");
      }
      return;
    }
    this.admit(link, now);
    this.notifyTransmit(link);
  }

  /** A datagram from a UDP client. */
  clientDatagram(address: string, port: number, payload: Uint8Array, now: number): void {
    const stats = this.stats;
    stats.udpIn++;
    stats.udpInBytes += payload.length;
    const link = this.session?.link;
    // A link already closed (CLOSE sent or received, keepalive timeout) but not yet reported
    // disconnected takes nothing more: frames after a CLOSE are never read.
    if (link === undefined || link.state !== "open") {
      stats.drops["no-sender"]++;
      return;
    }
    if (payload.length > MAX_DATAGRAM) {
      stats.drops["too-large"]++;
      return;
    }
    const key = address + "|" + port;
    let flow = this.flowsByKey.get(key);
    if (flow === undefined) {
      if (this.newFlowLimiter !== undefined && !this.newFlowLimiter.allow(address, now)) {
        stats.drops["rate-limited"]++;
        this.noteLimit("rate-limited", now, `new-flow rate limit reached for some sources (raise --new-flow-rate)`);
        return;
      }
      // FLOW_OPEN (and an eviction's FLOW_CLOSE) count against the buffer bound too, so a flood of new
      // source addresses cannot grow the buffer of a blocked connection.
      if (!this.hasRoom(link, NEW_FLOW_OVERHEAD + DATA_OVERHEAD + payload.length)) return;
      flow = this.openFlow(link, key, address, port, payload.length, now);
      if (flow === undefined) return;
    } else {
      // A second datagram from the same address and port: whoever it is also sends from there, so
      // replies are no longer capped (a spoofer rarely keeps up a conversation it cannot see).
      flow.replyBudget = Number.POSITIVE_INFINITY;
      this.flows.touch(flow, now);
      if (!this.hasRoom(link, DATA_OVERHEAD + payload.length)) return;
    }
    flow.datagramsIn++;
    flow.bytesIn += payload.length;
    link.writer.data(flow.id, payload);
    this.notifyTransmit(link);
  }

  /** Says goodbye to every connection. Flows are dropped. */
  shutdown(reason = "receiver shutting down"): void {
    for (const link of this.links.values()) this.closeLink(link, CloseCode.Normal, reason);
    this.dropAllFlows();
    this.session = undefined;
  }

  /** Flows currently open, for status output. */
  flowList(): IterableIterator<ClientFlow> {
    return this.flows.values();
  }

  private openFlow(
    link: Link,
    key: string,
    address: string,
    port: number,
    firstSize: number,
    now: number,
  ): ClientFlow | undefined {
    const family = ipFamily(address);
    if (family === undefined) {
      this.log("warn", `ignoring datagram from unparseable address ${address}`);
      return undefined;
    }
    if (this.flows.size >= this.maxFlows) {
      const oldest = this.flows.oldest();
      if (oldest) {
        this.noteEviction(now);
        this.closeFlow(oldest, FlowCloseReason.Evicted, true);
      }
    }
    const limit = this.amplificationLimit;
    const flow: ClientFlow = {
      id: this.allocateFlowId(),
      mappingId: this.mappingId,
      address,
      port,
      family,
      key,
      lastActive: now,
      replyBudget: limit > 0 ? limit * firstSize : Number.POSITIVE_INFINITY,
      ...zeroCounters(),
    };
    this.flows.add(flow);
    this.flowsByKey.set(key, flow);
    this.stats.flowsOpened++;
    link.writer.flowOpen(flow.id, flow.mappingId, flow);
    return flow;
  }

  private allocateFlowId(): number {
    // 32-bit ids, never 0, never one still in use: wrap-around after 4 billion flows stays correct.
    for (;;) {
      const id = this.nextFlowId;
      this.nextFlowId = id === 0xffffffff ? 1 : id + 1;
      if (!this.flows.has(id)) return id;
    }
  }

  private closeFlow(flow: ClientFlow, reason: number, tellPeer: boolean): void {
    this.flows.delete(flow.id);
    this.flowsByKey.delete(flow.key);
    this.stats.flowsClosed++;
    const link = this.session?.link;
    if (tellPeer && link && link.state === "open") {
      link.writer.flowClose(flow.id, reason);
      this.notifyTransmit(link);
    }
  }

  private dropAllFlows(): void {
    this.stats.flowsClosed += this.flows.size;
    this.flows.clear();
    this.flowsByKey.clear();
  }

  protected onHandshakeFrame(link: Link, frame: Frame, now: number): void {
    if (link.state === "hello") {
      this.checkPeerHello(link, frame);
      link.state = "auth";
      return;
    }
    if (link.state !== "auth") throw unexpected(frame, "nothing until the operator answers");
    if (frame.type !== FrameType.Auth) throw unexpected(frame, "AUTH");
    link.offeredToken = frame.token.slice();
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token)) {
      this.stats.handshakeFailures++;
      const why = this.secret ? "wrong shared secret" : "the sender's signature does not match the key it announced";
      this.failLink(link, CloseCode.AuthFailed, why);
      return;
    }
    if (this.secret || this.canResume(link)) {
      // A resumed session's key was admitted before.
      this.admit(link, now);
      return;
    }
    if (this.refuseIfBusy(link, now)) return;
    link.state = "approval";
    link.handshakeDeadline = undefined; // the host may ask a human: no deadline
    this.emit({ kind: "authorize-sender", conn: link.id, peer: link.peer, publicKey: link.peerKey });
  }

  private canResume(link: Link): boolean {
    const session = this.session;
    if (!session || link.offeredToken.length !== TOKEN_SIZE) return false;
    if ((link.sharedCapabilities & Capability.Resume) === 0) return false;
    return bytesEqual(session.token, link.offeredToken) && bytesEqual(session.publicKey, link.peerKey);
  }

  /**
   * One sender at a time. A connected sender that has been silent for longer than its keepalive
   * interval is presumed half-open (its host vanished), so a newly authenticated sender may replace it
   * instead of being locked out until the keepalive timeout.
   */
  private refuseIfBusy(link: Link, now: number): boolean {
    const current = this.session?.link;
    if (!current || current === link) return false;
    if (now - current.lastReceived > this.keepaliveMs * 1.5) return false;
    this.stats.handshakeFailures++;
    this.failLink(link, CloseCode.Busy, `another sender (${current.peer}) is connected; only one sender at a time`);
    return true;
  }

  /** Authenticated: resume the session, replace a stale connection of the same sender, or start afresh. */
  private admit(link: Link, now: number): void {
    const resumed = this.canResume(link);
    if (!resumed && this.refuseIfBusy(link, now)) return;
    const session = this.session;
    if (session?.link && session.link !== link) {
      this.log("info", `sender ${link.peer} takes over from the earlier connection ${session.link.peer}`);
      this.closeLink(session.link, CloseCode.Replaced, "replaced by a newer connection of the sender");
      session.link = undefined;
    }
    if (resumed && session) {
      session.link = link;
      session.lostAt = undefined;
      session.peer = link.peer;
    } else {
      if (this.flows.size > 0) this.log("info", `dropping ${this.flows.size} flows of the previous sender`);
      this.dropAllFlows();
      this.session = {
        token: this.crypto.randomBytes(TOKEN_SIZE),
        publicKey: link.peerKey,
        link,
        peer: link.peer,
        lostAt: undefined,
      };
    }
    const token = (this.session as Session).token;
    link.writer.accept(link.prove(this.crypto, token, resumed), token, resumed);
    link.markOpen(now, this.keepaliveMs);
    this.stats.accepted++;
    this.log("info", `sender ${link.peer} accepted${resumed ? ` (resumed ${this.flows.size} flows)` : ""}`);
    this.emit({ kind: "accepted", conn: link.id, peer: link.peer, resumed });
    this.notifyTransmit(link);
  }

  protected onOpenFrame(link: Link, frame: Frame, now: number): void {
    switch (frame.type) {
      case FrameType.Data: {
        // Only ever to a client that opened the flow: a forged id reaches no one (no reflection).
        const flow = this.dataFlow(this.flows, link, frame.flowId, now);
        if (flow === undefined) return;
        const size = frame.payload.length;
        if (flow.replyBudget !== Number.POSITIVE_INFINITY) {
          if (size > flow.replyBudget) {
            this.stats.drops.amplification++;
            this.noteLimit(
              "amplification",
              now,
              `replies to unconfirmed clients exceeded ${this.amplificationLimit}× their request (raise --amplification-limit)`,
            );
            return;
          }
          flow.replyBudget -= size;
        }
        this.countOut(flow, size);
        this.emit({ kind: "send-to-client", flow, payload: frame.payload });
        return;
      }
      case FrameType.FlowClose: {
        const flow = this.flows.get(frame.flowId);
        if (flow) {
          this.log(
            "debug",
            `flow ${flow.id} (${flow.address}:${flow.port}) closed by the sender: ${this.flowCloseName(frame.reason)}`,
          );
          this.closeFlow(flow, frame.reason, false);
        }
        return;
      }
      case FrameType.FlowOpen:
        throw new ProtocolError("unexpected-frame", "the sender may not open flows (FLOW_OPEN is receiver-only)");
      default:
        return; // PING/PONG/CLOSE are handled by the endpoint
    }
  }

  protected onLinkGone(link: Link, wasOpen: boolean, now: number): void {
    const session = this.session;
    if (!session || session.link !== link) return;
    session.link = undefined;
    session.lostAt = now;
    if (!wasOpen) return;
    if (this.flows.size > 0) {
      this.log(
        "info",
        `keeping ${this.flows.size} flows for ${this.resumeGraceMs / 1000} s in case the sender resumes`,
      );
    }
  }

  protected onTick(now: number): void {
    const session = this.session;
    if (
      session &&
      session.link === undefined &&
      session.lostAt !== undefined &&
      now >= session.lostAt + this.resumeGraceMs
    ) {
      if (this.flows.size > 0) this.log("info", `sender did not resume: dropping ${this.flows.size} flows`);
      this.dropAllFlows();
      this.session = undefined;
    }
    for (
      let flow = this.flows.oldest();
      flow !== undefined && now - flow.lastActive >= this.idleTimeoutMs;
      flow = this.flows.oldest()
    ) {
      this.closeFlow(flow, FlowCloseReason.Idle, true);
    }
  }

  protected roleTimeout(): number | undefined {
    let next: number | undefined;
    const oldest = this.flows.oldest();
    if (oldest) next = oldest.lastActive + this.idleTimeoutMs;
    const session = this.session;
    if (session && session.link === undefined && session.lostAt !== undefined) {
      const expiry = session.lostAt + this.resumeGraceMs;
      if (next === undefined || expiry < next) next = expiry;
    }
    return next;
  }
}
