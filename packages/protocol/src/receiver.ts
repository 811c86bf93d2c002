/**
 * The receiver: owns the public UDP ports (one per mapping). Every client address becomes a flow with
 * an id chosen here; the sender only ever answers with flow ids, so the only addresses this side writes
 * to are clients that opened flows (no reflection). Whether it accepts the TCP connection (ssh -R, the
 * default) or dials it (ssh -L) is the session layer's business; either way it verifies the peer
 * before acting on anything the peer sends, and keeps one sender at a time.
 */
import { ipFamily } from "./address.js";
import type { ClientFlow, CommonConfig } from "./endpoint.js";
import { MappedFlows, zeroCounters } from "./flow-table.js";
import { FlowCloseReason, type Frame, FrameType, HEADER_SIZE, MAX_DATAGRAM, ProtocolError, Role } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import { SourceRateLimiter } from "./rate-limit.js";
import { SessionEndpoint } from "./session.js";

export interface ReceiverConfig extends CommonConfig {
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
  newFlowsPerSecond: 1000,
  amplificationLimit: 10,
} as const;

const DATA_OVERHEAD = HEADER_SIZE + 4;
/** Largest FLOW_OPEN (IPv6) plus a FLOW_CLOSE for an evicted flow. */
const NEW_FLOW_OVERHEAD = HEADER_SIZE + 25 + HEADER_SIZE + 5;

export class ReceiverMachine extends SessionEndpoint {
  private readonly flows: MappedFlows<ClientFlow>;
  private readonly flowsByKey = new Map<string, ClientFlow>();
  private nextFlowId = 1;
  private readonly newFlowLimiter: SourceRateLimiter | undefined;
  private readonly amplificationLimit: number;

  constructor(config: ReceiverConfig, crypto: CryptoProvider) {
    super(Role.Receiver, config, crypto);
    this.flows = new MappedFlows<ClientFlow>(this.mappings.length);
    const rate = config.newFlowsPerSecond ?? RECEIVER_DEFAULTS.newFlowsPerSecond;
    this.newFlowLimiter =
      rate > 0 ? new SourceRateLimiter({ perSecond: rate, burst: Math.max(1, rate * 2) }) : undefined;
    this.amplificationLimit = Math.max(0, config.amplificationLimit ?? RECEIVER_DEFAULTS.amplificationLimit);
  }

  /** True while an accepted sender is connected. */
  get senderConnected(): boolean {
    return this.peerConnected;
  }

  get flowCount(): number {
    return this.flows.size;
  }

  /** Open flows of mapping `mappingId`. */
  flowCountOf(mappingId: number): number {
    return this.flows.tables[mappingId]?.size ?? 0;
  }

  /** The usual direction (ssh -R): the sender dialed in. Same as accept(). */
  connect(conn: number, peer: string, now: number, source = peer): void {
    this.accept(conn, peer, now, source);
  }

  /** A datagram from a UDP client, on the public port of mapping `mappingId`. */
  clientDatagram(address: string, port: number, payload: Uint8Array, now: number, mappingId = 0): void {
    const stats = this.stats;
    stats.udpIn++;
    stats.udpInBytes += payload.length;
    this.countMappingIn(mappingId, payload.length);
    // A link already closed (CLOSE sent or received, keepalive timeout) but not yet reported
    // disconnected takes nothing more: frames after a CLOSE are never read.
    const link = this.openLink;
    if (link === undefined) {
      stats.drops["no-sender"]++;
      return;
    }
    if (payload.length > MAX_DATAGRAM) {
      stats.drops["too-large"]++;
      return;
    }
    const key = mappingId === 0 ? address + "|" + port : mappingId + "|" + address + "|" + port;
    let flow = this.flowsByKey.get(key);
    if (flow === undefined) {
      if (mappingId >= this.mappings.length || mappingId < 0) throw new RangeError(`no mapping ${mappingId}`);
      if (this.newFlowLimiter !== undefined && !this.newFlowLimiter.allow(address, now)) {
        stats.drops["rate-limited"]++;
        this.noteLimit("rate-limited", now, "new-flow rate limit reached for some sources (raise --new-flow-rate)");
        return;
      }
      // FLOW_OPEN (and an eviction's FLOW_CLOSE) count against the buffer bound too, so a flood of new
      // source addresses cannot grow the buffer of a blocked connection.
      if (!this.hasRoom(link, NEW_FLOW_OVERHEAD + DATA_OVERHEAD + payload.length)) return;
      flow = this.openFlow(link, mappingId, key, address, port, payload.length, now);
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
    this.closeAll(reason);
  }

  /** Flows currently open, for status output. */
  flowList(): IterableIterator<ClientFlow> {
    return this.flows.values();
  }

  private openFlow(
    link: Link,
    mappingId: number,
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
    this.evictIfFull(this.flows, mappingId, now, (oldest) => this.closeFlow(oldest, FlowCloseReason.Evicted, true));
    const limit = this.amplificationLimit;
    const flow: ClientFlow = {
      id: this.allocateFlowId(),
      mappingId,
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
    this.mappingStats[mappingId].flowsOpened++;
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
    this.flows.delete(flow);
    this.flowsByKey.delete(flow.key);
    this.stats.flowsClosed++;
    const link = this.openLink;
    if (tellPeer && link) {
      link.writer.flowClose(flow.id, reason);
      this.notifyTransmit(link);
    }
  }

  protected dropAllFlows(): void {
    this.stats.flowsClosed += this.flows.size;
    this.flows.clear();
    this.flowsByKey.clear();
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

  protected onFlowTick(now: number): void {
    this.expireIdleFlows(this.flows, now, (flow) => this.closeFlow(flow, FlowCloseReason.Idle, true));
  }

  protected flowTimeout(): number | undefined {
    return this.nextIdleExpiry(this.flows);
  }
}
