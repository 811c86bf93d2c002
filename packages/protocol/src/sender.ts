/**
 * The sender: dials the receiver, proves itself, then turns each flow the receiver opens into one UDP
 * socket toward its configured target (so the target's replies map back to the flow). It never learns
 * an address to write to from the wire: the host decides the target per mapping id.
 */
import { type CommonConfig, Endpoint, unexpected } from "./endpoint.js";
import { type FlowCounters, FlowTable, zeroCounters } from "./flow-table.js";
import {
  Capability,
  CloseCode,
  FlowCloseReason,
  type Frame,
  FrameType,
  HEADER_SIZE,
  ProtocolError,
  Role,
  type WireAddress,
} from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";

export interface SenderConfig extends CommonConfig {
  /** Mapping ids this sender has targets for; FLOW_OPEN for any other is refused. */
  mappingIds?: readonly number[];
  /**
   * Key mode: decides whether the receiver's key (already proven by its signature) is the one this
   * sender expects — pinned, or first seen. Returns undefined to trust it, or why not. Without it any
   * key that proves itself is accepted.
   */
  checkReceiverKey?: (publicKey: Uint8Array, peer: string) => string | undefined;
}

/** A sender-side flow: one UDP socket toward the target, on behalf of `client` (the receiver's client). */
export interface TargetFlow extends FlowCounters {
  readonly id: number;
  readonly mappingId: number;
  readonly client: WireAddress;
  lastActive: number;
}

const CAPABILITIES = Capability.Resume;
const DATA_OVERHEAD = HEADER_SIZE + 4;

export class SenderMachine extends Endpoint {
  private readonly flows = new FlowTable<TargetFlow>();
  private readonly mappingIds: ReadonlySet<number>;
  private link: Link | undefined;
  /** Token of the session the receiver gave us; offered on reconnect so flows carry on. */
  private sessionToken = new Uint8Array(0);
  /** When the connection was lost; flow sockets are kept until lostAt + resumeGraceMs. */
  private lostAt: number | undefined;
  private readonly checkReceiverKey: SenderConfig["checkReceiverKey"];

  constructor(config: SenderConfig, crypto: CryptoProvider) {
    super(Role.Sender, config, crypto);
    this.mappingIds = new Set(config.mappingIds ?? [0]);
    this.checkReceiverKey = config.checkReceiverKey;
  }

  get connected(): boolean {
    return this.link?.state === "open";
  }

  get flowCount(): number {
    return this.flows.size;
  }

  /** The TCP connection to the receiver is up (one at a time). */
  connect(conn: number, peer: string, now: number): void {
    if (this.link && this.link.state !== "closed") {
      throw new Error("SenderMachine.connect: the previous connection was not reported disconnected");
    }
    this.link = this.newLink(conn, peer, "dialer", CAPABILITIES, now);
  }

  /** A datagram from the target arrived on the socket of flow `flowId`. */
  targetDatagram(flowId: number, payload: Uint8Array, now: number): void {
    const stats = this.stats;
    stats.udpIn++;
    stats.udpInBytes += payload.length;
    const flow = this.flows.get(flowId);
    if (flow === undefined) {
      stats.drops["unknown-flow"]++;
      return;
    }
    this.flows.touch(flow, now);
    const link = this.link;
    if (link === undefined || link.state !== "open") {
      stats.drops["not-connected"]++;
      return;
    }
    if (!this.hasRoom(link, DATA_OVERHEAD + payload.length)) return;
    flow.datagramsIn++;
    flow.bytesIn += payload.length;
    link.writer.data(flowId, payload);
    this.notifyTransmit(link);
  }

  /**
   * The flow's socket failed. `fatal` (it could not be opened, or the target name did not resolve)
   * closes the flow; otherwise (ICMP port unreachable, a full buffer) the datagram is lost and counted,
   * and the flow stays: the target may come back.
   */
  flowSocketError(flowId: number, fatal: boolean, reason: number = FlowCloseReason.SocketError): void {
    this.stats.drops["socket-error"]++;
    const flow = this.flows.get(flowId);
    if (!flow || !fatal) return;
    this.closeFlow(flow, reason, true);
  }

  /**
   * Closes the least recently active flow other than `except` (the host ran out of sockets: EMFILE),
   * as --max-flows would. Returns whether one was closed.
   */
  evictLeastRecent(now: number, except?: number): boolean {
    for (const flow of this.flows.values()) {
      if (flow.id === except) continue;
      this.noteEviction(now);
      this.closeFlow(flow, FlowCloseReason.Evicted, true);
      return true;
    }
    return false;
  }

  /** Flows currently open, for status output. */
  flowList(): IterableIterator<TargetFlow> {
    return this.flows.values();
  }

  /** Whether flow `flowId` is open (the host may still be opening its socket). */
  hasFlow(flowId: number): boolean {
    return this.flows.has(flowId);
  }

  /** Says goodbye to the receiver and releases every flow socket. */
  shutdown(reason = "sender shutting down"): void {
    if (this.link) this.closeLink(this.link, CloseCode.Normal, reason);
    this.closeAllFlows();
    this.sessionToken = new Uint8Array(0);
  }

  protected onHandshakeFrame(link: Link, frame: Frame, now: number): void {
    if (link.state === "hello") {
      this.checkPeerHello(link, frame);
      const resume = (link.sharedCapabilities & Capability.Resume) !== 0 && this.sessionToken.length > 0;
      link.offeredToken = resume ? this.sessionToken : new Uint8Array(0);
      link.writer.auth(link.prove(this.crypto, link.offeredToken), link.offeredToken);
      link.state = "auth";
      // In key mode the receiver's operator may be asked about this key: wait as long as that takes.
      if (!this.secret) link.handshakeDeadline = undefined;
      return;
    }
    if (frame.type !== FrameType.Accept) throw unexpected(frame, "ACCEPT");
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token, frame.resumed)) {
      this.stats.handshakeFailures++;
      const why = this.secret
        ? "the receiver could not prove the shared secret (wrong secret, or an impostor)"
        : "the receiver's signature does not match the key it announced (an impostor?)";
      this.failLink(link, CloseCode.AuthFailed, why);
      return;
    }
    const distrust = this.secret ? undefined : this.checkReceiverKey?.(link.peerKey, link.peer);
    if (distrust !== undefined) {
      this.stats.handshakeFailures++;
      this.failLink(link, CloseCode.KeyRejected, distrust);
      return;
    }
    if (frame.resumed && link.offeredToken.length === 0) {
      throw new ProtocolError("bad-resume", "ACCEPT claims a resumed session that was never offered");
    }
    if (!frame.resumed && this.flows.size > 0) {
      this.log("info", `receiver started a new session: closing ${this.flows.size} flows of the old one`);
      this.closeAllFlows();
    }
    this.sessionToken = frame.token.slice();
    this.lostAt = undefined;
    link.markOpen(now, this.keepaliveMs);
    this.stats.accepted++;
    this.log("info", `accepted by receiver ${link.peer}${frame.resumed ? ` (resumed ${this.flows.size} flows)` : ""}`);
    this.emit({ kind: "accepted", conn: link.id, peer: link.peer, resumed: frame.resumed });
  }

  protected onOpenFrame(link: Link, frame: Frame, now: number): void {
    switch (frame.type) {
      case FrameType.Data: {
        const flow = this.dataFlow(this.flows, link, frame.flowId, now);
        if (flow === undefined) return;
        this.countOut(flow, frame.payload.length);
        this.emit({ kind: "send-to-target", flowId: flow.id, payload: frame.payload });
        return;
      }
      case FrameType.FlowOpen: {
        if (!this.mappingIds.has(frame.mappingId)) {
          this.log(
            "warn",
            `receiver opened a flow for mapping ${frame.mappingId}, which this sender has no target for`,
          );
          link.writer.flowClose(frame.flowId, FlowCloseReason.UnknownMapping);
          return;
        }
        const existing = this.flows.get(frame.flowId);
        if (existing) this.closeFlow(existing, FlowCloseReason.Closed, false);
        if (this.flows.size >= this.maxFlows) {
          const oldest = this.flows.oldest();
          if (oldest) {
            this.noteEviction(now);
            this.closeFlow(oldest, FlowCloseReason.Evicted, true);
          }
        }
        this.flows.add({ id: frame.flowId, mappingId: frame.mappingId, client: frame.client, lastActive: now, ...zeroCounters() });
        this.stats.flowsOpened++;
        this.log("debug", `flow ${frame.flowId} opened for client ${frame.client.address}:${frame.client.port}`);
        this.emit({ kind: "open-flow-socket", flowId: frame.flowId, mappingId: frame.mappingId, client: frame.client });
        return;
      }
      case FrameType.FlowClose: {
        const flow = this.flows.get(frame.flowId);
        if (flow) {
          this.log("debug", `flow ${flow.id} closed by the receiver: ${this.flowCloseName(frame.reason)}`);
          this.closeFlow(flow, frame.reason, false);
        }
        return;
      }
      default:
        return;
    }
  }

  private closeFlow(flow: TargetFlow, reason: number, tellPeer: boolean): void {
    this.flows.delete(flow.id);
    this.stats.flowsClosed++;
    this.emit({ kind: "close-flow-socket", flowId: flow.id });
    const link = this.link;
    if (tellPeer && link && link.state === "open") {
      link.writer.flowClose(flow.id, reason);
      this.notifyTransmit(link);
    }
  }

  private closeAllFlows(): void {
    for (const flow of this.flows.values()) {
      this.emit({ kind: "close-flow-socket", flowId: flow.id });
      this.stats.flowsClosed++;
    }
    this.flows.clear();
  }

  protected onLinkGone(link: Link, _wasOpen: boolean, now: number): void {
    if (this.link !== link) return;
    this.link = undefined;
    // The grace period starts when the session's connection goes, including one that was already
    // "closed" (CLOSE received, keepalive timeout) before the host reported it: `wasOpen` is false then,
    // and the flow sockets would otherwise be kept until they idle out. A failed reconnection attempt
    // (lostAt already set) does not restart it.
    if (this.lostAt !== undefined || (this.flows.size === 0 && this.sessionToken.length === 0)) return;
    this.lostAt = now;
    if (this.flows.size > 0 && this.resumeGraceMs > 0) {
      this.log(
        "info",
        `keeping ${this.flows.size} flow sockets for ${this.resumeGraceMs / 1000} s to resume after reconnecting`,
      );
    }
  }

  protected onTick(now: number): void {
    if (this.link?.state !== "open" && this.lostAt !== undefined && now >= this.lostAt + this.resumeGraceMs) {
      if (this.flows.size > 0) this.log("info", `could not resume in time: closing ${this.flows.size} flow sockets`);
      this.closeAllFlows();
      this.lostAt = undefined;
      this.sessionToken = new Uint8Array(0);
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
    if (this.link?.state !== "open" && this.lostAt !== undefined) {
      const expiry = this.lostAt + this.resumeGraceMs;
      if (next === undefined || expiry < next) next = expiry;
    }
    return next;
  }
}
