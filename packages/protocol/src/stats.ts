/**
 * The machine's counters, in one owner. Every datagram is counted once at each of three levels — its
 * flow, its mapping and the totals — by the same call, so the levels always agree: the per-mapping
 * figures of every counter sum to the totals (drops that name no mapping, a DATA frame for a flow that
 * does not exist, are kept apart in `dropsWithoutMapping`). The host reports what happened outside the
 * machine (a send that failed, a datagram the kernel dropped) as inputs; it never writes a counter.
 */

export type DropReason =
  /** Receiver: a client sent while no sender was connected. */
  | "no-sender"
  /** The TCP side could not keep up (buffer bound), or a flow's socket was still opening. */
  | "backpressure"
  /** A DATA frame (or a target's datagram) for a flow that is not open. */
  | "unknown-flow"
  /** Sender: the target answered while no receiver was connected. */
  | "not-connected"
  /** A UDP send failed (buffer full, too large for the path, ICMP error). */
  | "socket-error"
  /** Larger than a frame or a datagram can carry. */
  | "too-large"
  /** Receiver: a source opened new flows faster than --new-flow-rate. */
  | "rate-limited"
  /** Receiver: a reply to an unconfirmed client over --amplification-limit. */
  | "amplification"
  /** The kernel dropped datagrams at one of our sockets (its receive queue was full). */
  | "kernel-queue"
  /** Waited longer than --max-delay in a connection's send queue: dropped rather than delivered late. */
  | "stale";

export const DROP_REASONS: readonly DropReason[] = [
  "no-sender",
  "backpressure",
  "unknown-flow",
  "not-connected",
  "socket-error",
  "too-large",
  "rate-limited",
  "amplification",
  "kernel-queue",
  "stale",
];

export type Drops = Record<DropReason, number>;

export const zeroDrops = (): Drops => Object.fromEntries(DROP_REASONS.map((reason) => [reason, 0])) as Drops;

/**
 * Per-flow traffic, for status displays and per-flow snapshots. "In" is what the flow's UDP peer sent
 * into the tunnel (the client on the receiver, the target on the sender); "out" is what was handed
 * out to it. Same directions as Stats.udpIn/udpOut.
 */
export interface FlowCounters {
  datagramsIn: number;
  bytesIn: number;
  datagramsOut: number;
  bytesOut: number;
  /** Datagrams of this flow dropped, whatever the reason. */
  dropped: number;
}

export const zeroCounters = (): FlowCounters => ({
  datagramsIn: 0,
  bytesIn: 0,
  datagramsOut: 0,
  bytesOut: 0,
  dropped: 0,
});

/** Traffic of one mapping (its flows' counters, kept after they close). */
export interface MappingStats {
  /** The mapping's name, or "" when unnamed. */
  readonly name: string;
  flowsOpened: number;
  /** Datagrams and bytes taken in from UDP for this mapping (forwarded or dropped). */
  udpIn: number;
  udpInBytes: number;
  /** Datagrams and bytes handed out to UDP (a send the host reports as failed is taken back). */
  udpOut: number;
  udpOutBytes: number;
  drops: Drops;
}

export interface Stats {
  /** Datagrams and bytes taken in from UDP (clients on the receiver, the target on the sender). */
  udpIn: number;
  udpInBytes: number;
  /** Datagrams and bytes handed out to UDP. */
  udpOut: number;
  udpOutBytes: number;
  flowsOpened: number;
  flowsClosed: number;
  /** Flows closed to make room under --max-flows or for want of sockets (included in flowsClosed). */
  flowsEvicted: number;
  /** Connections that completed the handshake. */
  accepted: number;
  handshakeFailures: number;
  /** Totals over every mapping, plus dropsWithoutMapping. */
  drops: Drops;
  /** Drops no mapping can own (a DATA frame naming a flow that is not open). */
  dropsWithoutMapping: Drops;
  rttMs: number | undefined;
}

/**
 * What the connections of a session do about loss and lanes (PROTOCOL.md §10.1, §16, §17), totals
 * over every lane; the per-lane figures are Session.lanes().
 */
export interface LaneTotals {
  /** PAD frames sent as tail-loss nudges. */
  nudgesSent: number;
  /** Second copies of a datagram (redundancy) recognised by their sequence number and dropped. */
  duplicatesSuppressed: number;
  /** Sequenced copies that arrived behind the duplicate window: dropped, never delivered (their twin may have been). */
  lateCopies: number;
  /** Extra copies this side sent (redundancy): one per datagram sent on two lanes. */
  redundantCopies: number;
  /** Flows moved to another lane because theirs closed or stalled. */
  flowsMoved: number;
  /** Lane connections that joined a session (after its first connection). */
  lanesJoined: number;
  /** Join attempts refused (wrong session, bad proof, too many lanes). */
  joinsRefused: number;
}

export const zeroLaneTotals = (): LaneTotals => ({
  nudgesSent: 0,
  duplicatesSuppressed: 0,
  lateCopies: 0,
  redundantCopies: 0,
  flowsMoved: 0,
  lanesJoined: 0,
  joinsRefused: 0,
});

function zeroMapping(name: string): MappingStats {
  return { name, flowsOpened: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0, drops: zeroDrops() };
}

export class Counters {
  readonly lanes: LaneTotals = zeroLaneTotals();
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
    drops: zeroDrops(),
    dropsWithoutMapping: zeroDrops(),
    rttMs: undefined,
  };
  readonly mappings: readonly MappingStats[];

  constructor(mappingNames: readonly string[]) {
    this.mappings = mappingNames.map(zeroMapping);
  }

  /** Counters for a mapping added while running (its id is the next position). */
  addMapping(name: string): void {
    (this.mappings as MappingStats[]).push(zeroMapping(name));
  }

  /** A datagram taken in from UDP for mapping `mappingId` (before it is forwarded or dropped). */
  received(mappingId: number | undefined, size: number): void {
    const stats = this.stats;
    stats.udpIn++;
    stats.udpInBytes += size;
    const mapping = mappingId === undefined ? undefined : this.mappings[mappingId];
    if (mapping === undefined) return;
    mapping.udpIn++;
    mapping.udpInBytes += size;
  }

  /** A datagram of `flow` forwarded into the tunnel. */
  forwarded(flow: FlowCounters, size: number): void {
    flow.datagramsIn++;
    flow.bytesIn += size;
  }

  /** A datagram handed out to UDP for `flow`. */
  sent(flow: FlowCounters & { readonly mappingId: number }, size: number): void {
    this.stats.udpOut++;
    this.stats.udpOutBytes += size;
    const mapping = this.mappings[flow.mappingId];
    mapping.udpOut++;
    mapping.udpOutBytes += size;
    flow.datagramsOut++;
    flow.bytesOut += size;
  }

  /**
   * A send counted by sent() that did not happen: taken back from "out" and counted as a drop, on
   * `flow` too while it is open (a flow closed since keeps the counts it had).
   */
  unsent(mappingId: number, flow: FlowCounters | undefined, size: number, reason: DropReason): void {
    this.stats.udpOut--;
    this.stats.udpOutBytes -= size;
    const mapping = this.mappings[mappingId];
    if (mapping !== undefined) {
      mapping.udpOut--;
      mapping.udpOutBytes -= size;
    }
    if (flow !== undefined) {
      flow.datagramsOut--;
      flow.bytesOut -= size;
    }
    this.dropped(reason, mappingId, flow);
  }

  /** `count` datagrams dropped for `reason`, on `flow` of mapping `mappingId` where known. */
  dropped(reason: DropReason, mappingId: number | undefined, flow?: FlowCounters, count = 1): void {
    this.stats.drops[reason] += count;
    const mapping = mappingId === undefined ? undefined : this.mappings[mappingId];
    if (mapping === undefined) this.stats.dropsWithoutMapping[reason] += count;
    else mapping.drops[reason] += count;
    if (flow !== undefined) flow.dropped += count;
  }

  flowOpened(mappingId: number): void {
    this.stats.flowsOpened++;
    this.mappings[mappingId].flowsOpened++;
  }
}
