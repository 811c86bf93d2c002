/**
 * The sender: turns each flow the receiver opens into one UDP socket toward the target of the flow's
 * mapping (so the target's replies map back to the flow). It never learns an address to write to from
 * the wire: the host decides the target per mapping. Whether it dials the TCP connection (ssh -R, the
 * default) or accepts it (ssh -L) is the session's business.
 */
import type { CommonConfig } from "./config.js";
import type { DuplicateWindow } from "./dedupe.js";
import {
  Capability,
  FlowCloseReason,
  type Frame,
  FrameType,
  HEADER_SIZE,
  MAPPING_STATUS_NAMES,
  type MappingStateEntry,
  MappingStatus,
  ProtocolError,
  Role,
  type WireAddress,
} from "./frames.js";
import { MappingIds } from "./mappings.js";
import { peerText, peerWord } from "./text.js";
import type { CryptoProvider, Link } from "./link.js";
import { MachineCore, type RolePolicy } from "./machine-core.js";
import type { SenderOutput } from "./outputs.js";
import { type FlowCounters, zeroCounters } from "./stats.js";

export type SenderConfig = CommonConfig;

export interface TargetFlow extends FlowCounters {
  readonly id: number;
  /** This side's mapping index (paired with the receiver's mapping id at the handshake). */
  readonly mappingId: number;
  /** The port of the mapping's range it was opened on (0 for a single-port mapping): the target port's offset. */
  readonly portOffset: number;
  readonly client: WireAddress;
  lastActive: number;
  /** The connection (lane) its datagrams go out on (§16.3). */
  lane?: Link;
  txSeq?: number;
  rx?: DuplicateWindow;
  mirror?: boolean;
}

const DATA_OVERHEAD = HEADER_SIZE + 4;

export class SenderMachine extends MachineCore<TargetFlow, SenderOutput> {
  /**
   * What the receiver last said of each of this side's mappings (MAPPING_STATE, §18): "serving",
   * "standby", "refused", "removed"; undefined until it says (a receiver without Senders never does).
   */
  readonly servingState: Array<string | undefined> = [];

  constructor(config: SenderConfig, crypto: CryptoProvider) {
    // Filled in below: the role's methods need `this`, which exists only once super() returned.
    const policy = {} as RolePolicy<TargetFlow>;
    super(Role.Sender, config, crypto, policy);
    Object.assign(policy, <RolePolicy<TargetFlow>>{
      frame: (link, frame, now) => this.onFrame(link, frame, now),
      release: (flow) => this.out.push({ kind: "close-flow-socket", flowId: flow.id }),
      describe: (flow) => `client ${flow.client.address}:${flow.client.port}`,
    });
  }

  /** A datagram from the target arrived on the socket of flow `flowId`. */
  targetDatagram(flowId: number, payload: Uint8Array, now: number): void {
    const flow = this.flows.get(flowId);
    if (flow === undefined) {
      this.counters.dropped("unknown-flow", undefined); // no mapping to count it in: kept apart
      return;
    }
    this.counters.received(flow.mappingId, payload.length);
    this.flows.touch(flow, now);
    const picker = this.session.sessionFor(flow.mappingId)?.picker;
    const link = picker?.sendLanes(flow, flow.mappingId, payload.length);
    if (picker === undefined || link === undefined) {
      this.counters.dropped("not-connected", flow.mappingId, flow);
      return;
    }
    const second = picker.second;
    if (!this.hasRoom(link, DATA_OVERHEAD + (second ? 4 : 0) + payload.length, flow.mappingId, flow)) return;
    this.counters.forwarded(flow, payload.length);
    if (second === undefined) {
      link.writer.data(flowId, payload);
    } else {
      // Redundancy (§17): the same datagram, numbered, on two lanes; the receiver keeps the first.
      const seq = (flow.txSeq = ((flow.txSeq ?? -1) + 1) >>> 0);
      link.writer.sdata(flowId, seq, payload);
      if (this.hasRoom(second, DATA_OVERHEAD + 4 + payload.length, flow.mappingId)) {
        second.writer.sdata(flowId, seq, payload);
        second.counters.datagramsSent++;
        this.session.connections.queued(second, now);
      }
    }
    link.counters.datagramsSent++;
    this.session.connections.queued(link, now);
  }

  /**
   * The flow's socket failed. `fatal` (it could not be opened, or the target name did not resolve)
   * closes the flow; otherwise (ICMP port unreachable, a full buffer) the datagram is lost and counted,
   * and the flow stays: the target may come back.
   */
  flowSocketError(flowId: number, fatal: boolean, reason: number = FlowCloseReason.SocketError): void {
    this.flows.droppedOutside("socket-error", { flowId });
    const flow = this.flows.get(flowId);
    if (flow && fatal) this.flows.close(flow, reason, true);
  }

  /**
   * Closes the least recently active flow other than `except`: the host ran out of sockets (EMFILE).
   * Returns whether one was closed.
   */
  evictForSockets(now: number, except?: number): boolean {
    const why = "out of file descriptors for flow sockets (lower --max-flows or raise ulimit -n)";
    return this.flows.evictLeastRecent(now, FlowCloseReason.Evicted, why, except);
  }

  /**
   * MAPPING_STATE (§18): the receiver says, per mapping, whether this sender serves it. A mapping this
   * side has a target for is paired by name (one the receiver added later, too); flows of one it no
   * longer serves are dropped here (their sockets closed): the receiver gave them to another sender.
   */
  private mappingStates(link: Link, entries: readonly MappingStateEntry[]): void {
    if ((link.sharedCapabilities & Capability.Senders) === 0) {
      throw new ProtocolError("unexpected-frame", "MAPPING_STATE from a receiver that did not announce Senders");
    }
    for (const entry of entries) {
      const links = link.session?.links ?? [link];
      let ours = link.mappingPairs[entry.mappingId];
      if (ours === undefined && entry.name !== "" && entry.status !== MappingStatus.Removed) {
        ours = this.pairLater(links, entry.mappingId, entry.name);
      }
      const shown = entry.name ? peerWord(entry.name) : `#${entry.mappingId + 1}`;
      if (ours === undefined) {
        this.out.log("debug", `receiver mapping ${shown}: ${MAPPING_STATUS_NAMES[entry.status]} (no target here)`);
        continue;
      }
      const line = STATUS_LINES[entry.status];
      const reason = entry.reason ? `: ${peerText(entry.reason)}` : "";
      this.out.log(line.level, `mapping ${shown}: ${line.text}${reason}`);
      this.servingState[ours] = MAPPING_STATUS_NAMES[entry.status];
      if (entry.status === MappingStatus.Removed)
        for (const other of links) other.mappingPairs[entry.mappingId] = undefined;
      if (!line.keepsFlows) this.flows.dropMapping(ours);
    }
  }

  /**
   * Pairs receiver mapping `position`, named `name`, with this side's mapping of that name (a mapping
   * the receiver added or brought back while running, §18) on every link of the session; returns its
   * index, or undefined when this side has none free by that name. One the receiver appended is one
   * port (§18), numbered after all of its others; this side's must be one port too.
   */
  private pairLater(links: readonly Link[], position: number, name: string): number | undefined {
    const index = this.settings.mappingNames.indexOf(name);
    if (index < 0 || links[0].mappingPairs.includes(index)) return undefined;
    const known = links[0].receiverIds.ports.length;
    if (position > known || (position === known && (this.settings.mappings[index].ports ?? 1) !== 1)) {
      this.out.log("warn", `receiver mapping ${peerWord(name)} cannot be paired here: its ports are not this side's`);
      return undefined;
    }
    for (const link of links) {
      link.mappingPairs[position] = index;
      if (position === known) link.receiverIds = new MappingIds([...link.receiverIds.ports, 1]);
    }
    return index;
  }

  private onFrame(link: Link, frame: Frame, now: number): void {
    if (frame.type === FrameType.Data || frame.type === FrameType.Sdata) {
      const flow = this.dataFlow(link, frame.flowId, now);
      if (flow === undefined) return;
      if (frame.type === FrameType.Sdata && !this.firstCopy(flow, frame.seq)) return;
      this.counters.sent(flow, frame.payload.length);
      this.out.push({ kind: "send-to-target", flowId: flow.id, payload: frame.payload });
      return;
    }
    if (frame.type === FrameType.MappingState) return this.mappingStates(link, frame.entries);
    if (frame.type !== FrameType.FlowOpen) return;
    // A range of n ports is n consecutive mapping ids: the id names the receiver's mapping and the port.
    const at = link.receiverIds.locate(frame.mappingId);
    const mappingId = at && link.mappingPairs[at.mapping];
    // The sizes were compared at the HELLO; checked again so that no pairing rule can ever make
    // this side write past its own configured range.
    const ports = mappingId === undefined ? 0 : (this.settings.mappings[mappingId]?.ports ?? 1);
    if (at === undefined || mappingId === undefined || mappingId < 0 || at.offset >= ports) {
      this.out.log(
        "warn",
        `receiver opened a flow for mapping ${frame.mappingId}, which this sender has no target for`,
      );
      link.writer.flowClose(frame.flowId, FlowCloseReason.UnknownMapping);
      return;
    }
    const existing = this.flows.get(frame.flowId);
    // The receiver re-announces a flow on the lane it moved to (§16.3): the same flow, kept as it is.
    const portOffset = at.offset;
    if (
      existing &&
      existing.mappingId === mappingId &&
      existing.portOffset === portOffset &&
      sameAddress(existing.client, frame.client)
    )
      return;
    if (existing) this.flows.close(existing, FlowCloseReason.Closed, false);
    this.flows.makeRoom(mappingId, now, FlowCloseReason.Evicted);
    const client = { ...frame.client };
    // Replies go back on the lane the flow was opened on, while it lasts.
    this.flows.add({ id: frame.flowId, mappingId, portOffset, client, lastActive: now, lane: link, ...zeroCounters() });
    this.out.push({ kind: "open-flow-socket", flowId: frame.flowId, mappingId, portOffset, client });
  }
}

/** What this sender does about a receiver's mapping state: log it, and whether its flows stay. */
const STATUS_LINES: Record<MappingStatus, { level: "info" | "warn"; text: string; keepsFlows: boolean }> = {
  [MappingStatus.Serving]: { level: "info", text: "serving", keepsFlows: true },
  [MappingStatus.Standby]: { level: "info", text: "standby (another sender serves it)", keepsFlows: false },
  [MappingStatus.Refused]: { level: "warn", text: "refused by the receiver", keepsFlows: false },
  [MappingStatus.Removed]: { level: "warn", text: "removed by the receiver", keepsFlows: false },
};

function sameAddress(a: WireAddress, b: WireAddress): boolean {
  return a.family === b.family && a.port === b.port && a.address === b.address;
}
