/**
 * The sender: turns each flow the receiver opens into one UDP socket toward the target of the flow's
 * mapping (so the target's replies map back to the flow). It never learns an address to write to from
 * the wire: the host decides the target per mapping. Whether it dials the TCP connection (ssh -R, the
 * default) or accepts it (ssh -L) is the session layer's business.
 */
import type { CommonConfig } from "./endpoint.js";
import { type FlowCounters, MappedFlows, zeroCounters } from "./flow-table.js";
import { FlowCloseReason, type Frame, FrameType, HEADER_SIZE, Role, type WireAddress } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import { SessionEndpoint } from "./session.js";

export interface SenderConfig extends CommonConfig {
  /** Older name of `checkPeerKey`, for a sender that dials the receiver. */
  checkReceiverKey?: (publicKey: Uint8Array, peer: string) => string | undefined;
}

export interface TargetFlow extends FlowCounters {
  readonly id: number;
  /** This side's mapping index (paired with the receiver's mapping id at the handshake). */
  readonly mappingId: number;
  readonly client: WireAddress;
  lastActive: number;
}

const DATA_OVERHEAD = HEADER_SIZE + 4;

export class SenderMachine extends SessionEndpoint {
  private readonly flows: MappedFlows<TargetFlow>;

  constructor(config: SenderConfig, crypto: CryptoProvider) {
    super(Role.Sender, { checkPeerKey: config.checkReceiverKey, ...config }, crypto);
    this.flows = new MappedFlows<TargetFlow>(this.mappings.length);
  }

  get connected(): boolean {
    return this.peerConnected;
  }

  get flowCount(): number {
    return this.flows.size;
  }

  /** The usual direction (ssh -R): the sender dials the receiver. Same as dial(). */
  connect(conn: number, peer: string, now: number): void {
    this.dial(conn, peer, now);
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
    this.countMappingIn(flow.mappingId, payload.length);
    this.flows.touch(flow, now);
    const link = this.openLink;
    if (link === undefined) {
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
    let victim: TargetFlow | undefined;
    for (const table of this.flows.tables) {
      for (const flow of table.values()) {
        if (flow.id === except) continue;
        if (victim === undefined || flow.lastActive < victim.lastActive) victim = flow;
        break; // each table is in least-recently-active order
      }
    }
    if (victim === undefined) return false;
    this.noteEviction(now);
    this.closeFlow(victim, FlowCloseReason.Evicted, true);
    return true;
  }

  /** Flows currently open, for status output. */
  flowList(): IterableIterator<TargetFlow> {
    return this.flows.values();
  }

  /** Open flows of this side's mapping `mappingId`. */
  flowCountOf(mappingId: number): number {
    return this.flows.tables[mappingId]?.size ?? 0;
  }

  /** Whether flow `flowId` is open (the host may still be opening its socket). */
  hasFlow(flowId: number): boolean {
    return this.flows.has(flowId);
  }

  /** Says goodbye to the receiver and releases every flow socket. */
  shutdown(reason = "sender shutting down"): void {
    this.closeAll(reason);
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
        const mappingId = link.mappingPairs[frame.mappingId];
        if (mappingId === undefined) {
          this.log(
            "warn",
            `receiver opened a flow for mapping ${frame.mappingId}, which this sender has no target for`,
          );
          link.writer.flowClose(frame.flowId, FlowCloseReason.UnknownMapping);
          return;
        }
        const existing = this.flows.get(frame.flowId);
        if (existing) this.closeFlow(existing, FlowCloseReason.Closed, false);
        this.evictIfFull(this.flows, mappingId, now, (oldest) => this.closeFlow(oldest, FlowCloseReason.Evicted, true));
        const client = { ...frame.client };
        this.flows.add({ id: frame.flowId, mappingId, client, lastActive: now, ...zeroCounters() });
        this.stats.flowsOpened++;
        this.mappingStats[mappingId].flowsOpened++;
        this.log("debug", `flow ${frame.flowId} opened for client ${client.address}:${client.port}`);
        this.emit({ kind: "open-flow-socket", flowId: frame.flowId, mappingId, client });
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
    this.flows.delete(flow);
    this.stats.flowsClosed++;
    this.emit({ kind: "close-flow-socket", flowId: flow.id });
    const link = this.openLink;
    if (tellPeer && link) {
      link.writer.flowClose(flow.id, reason);
      this.notifyTransmit(link);
    }
  }

  protected dropAllFlows(): void {
    for (const flow of this.flows.values()) {
      this.emit({ kind: "close-flow-socket", flowId: flow.id });
      this.stats.flowsClosed++;
    }
    this.flows.clear();
  }

  protected onFlowTick(now: number): void {
    this.expireIdleFlows(this.flows, now, (flow) => this.closeFlow(flow, FlowCloseReason.Idle, true));
  }

  protected flowTimeout(): number | undefined {
    return this.nextIdleExpiry(this.flows);
  }
}
