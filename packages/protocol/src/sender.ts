/**
 * The sender: turns each flow the receiver opens into one UDP socket toward the target of the flow's
 * mapping (so the target's replies map back to the flow). It never learns an address to write to from
 * the wire: the host decides the target per mapping. Whether it dials the TCP connection (ssh -R, the
 * default) or accepts it (ssh -L) is the session's business.
 */
import type { CommonConfig } from "./config.js";
import { FlowCloseReason, type Frame, FrameType, HEADER_SIZE, Role, type WireAddress } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import { MachineCore } from "./machine-core.js";
import type { SenderOutput } from "./outputs.js";
import { type FlowCounters, zeroCounters } from "./stats.js";

export type SenderConfig = CommonConfig;

export interface TargetFlow extends FlowCounters {
  readonly id: number;
  /** This side's mapping index (paired with the receiver's mapping id at the handshake). */
  readonly mappingId: number;
  readonly client: WireAddress;
  lastActive: number;
}

const DATA_OVERHEAD = HEADER_SIZE + 4;

export class SenderMachine {
  private readonly core: MachineCore<TargetFlow, SenderOutput>;

  constructor(config: SenderConfig, crypto: CryptoProvider) {
    this.core = new MachineCore(Role.Sender, config, crypto, {
      frame: (link, frame, now) => this.onFrame(link, frame, now),
      release: (flow) => this.core.out.push({ kind: "close-flow-socket", flowId: flow.id }),
      describe: (flow) => `client ${flow.client.address}:${flow.client.port}`,
    });
  }

  /** Connections, handshake, resume: accept(), dial(), receive(), approve(), takeTransmit()… */
  get session() {
    return this.core.session;
  }

  /** The receiver's flows, and the outcomes the host reports for them (sendFailed, droppedOutside). */
  get flows() {
    return this.core.flows;
  }

  get stats() {
    return this.core.counters.stats;
  }

  /** Per-mapping counters, by this side's mapping index. */
  get mappingStats() {
    return this.core.counters.mappings;
  }

  poll(): SenderOutput | undefined {
    return this.core.out.poll();
  }

  tick(now: number): void {
    this.core.tick(now);
  }

  nextTimeout(): number | undefined {
    return this.core.nextTimeout();
  }

  /** Says goodbye to the receiver and releases every flow socket. */
  shutdown(reason = "sender shutting down"): void {
    this.core.session.closeAll(reason);
  }

  /** A datagram from the target arrived on the socket of flow `flowId`. */
  targetDatagram(flowId: number, payload: Uint8Array, now: number): void {
    const core = this.core;
    const flow = core.flows.get(flowId);
    if (flow === undefined) {
      core.counters.dropped("unknown-flow", undefined); // no mapping to count it in: kept apart
      return;
    }
    core.counters.received(flow.mappingId, payload.length);
    core.flows.touch(flow, now);
    const link = core.session.openLink;
    if (link === undefined) {
      core.counters.dropped("not-connected", flow.mappingId, flow);
      return;
    }
    if (!core.hasRoom(link, DATA_OVERHEAD + payload.length, flow.mappingId, flow)) return;
    core.counters.forwarded(flow, payload.length);
    link.writer.data(flowId, payload);
    core.session.connections.notify(link);
  }

  /**
   * The flow's socket failed. `fatal` (it could not be opened, or the target name did not resolve)
   * closes the flow; otherwise (ICMP port unreachable, a full buffer) the datagram is lost and counted,
   * and the flow stays: the target may come back.
   */
  flowSocketError(flowId: number, fatal: boolean, reason: number = FlowCloseReason.SocketError): void {
    this.core.flows.droppedOutside("socket-error", { flowId });
    const flow = this.core.flows.get(flowId);
    if (flow && fatal) this.core.flows.close(flow, reason, true);
  }

  /**
   * Closes the least recently active flow other than `except`: the host ran out of sockets (EMFILE).
   * Returns whether one was closed.
   */
  evictForSockets(now: number, except?: number): boolean {
    const why = "out of file descriptors for flow sockets (lower --max-flows or raise ulimit -n)";
    return this.core.flows.evictLeastRecent(now, FlowCloseReason.Evicted, why, except);
  }

  private onFrame(link: Link, frame: Frame, now: number): void {
    const core = this.core;
    if (frame.type === FrameType.Data) {
      const flow = core.dataFlow(link, frame.flowId, now);
      if (flow === undefined) return;
      core.counters.sent(flow, frame.payload.length);
      core.out.push({ kind: "send-to-target", flowId: flow.id, payload: frame.payload });
      return;
    }
    if (frame.type !== FrameType.FlowOpen) return;
    const mappingId = link.mappingPairs[frame.mappingId];
    if (mappingId === undefined) {
      core.out.log(
        "warn",
        `receiver opened a flow for mapping ${frame.mappingId}, which this sender has no target for`,
      );
      link.writer.flowClose(frame.flowId, FlowCloseReason.UnknownMapping);
      return;
    }
    const existing = core.flows.get(frame.flowId);
    if (existing) core.flows.close(existing, FlowCloseReason.Closed, false);
    core.flows.makeRoom(mappingId, now, FlowCloseReason.Evicted);
    const client = { ...frame.client };
    core.flows.add({ id: frame.flowId, mappingId, client, lastActive: now, ...zeroCounters() });
    core.out.log("debug", `flow ${frame.flowId} opened for client ${client.address}:${client.port}`);
    core.out.push({ kind: "open-flow-socket", flowId: frame.flowId, mappingId, client });
  }
}
