/**
 * One read-only view of a running receiver or sender, whatever the role: what the status line, the
 * metrics endpoint and the SIGUSR1 snapshot show. Reads counters the machines keep anyway; nothing
 * here is on the datagram path.
 */
import { fingerprint, formatHostPort, type ReceiverHandle, type SenderHandle } from "@mcudpt/core";
import type { FlowCounters, LaneInfo, LaneTotals, MappingStats, Stats } from "@mcudpt/protocol";
import type { ReloadRecord } from "../reload.js";

export type Role = "receiver" | "sender";

export interface FlowRow extends FlowCounters {
  id: number;
  /** The UDP client this flow belongs to. */
  client: string;
  /** Its mapping's label ("dns", "#2"), with the port's place for a range ("game+3"). */
  mapping: string;
  lastActive: number;
}

export interface Observed {
  role: Role;
  transport: string;
  stats: Stats;
  /** Receiver: an accepted sender is connected. Sender: accepted by the receiver. */
  peerConnected(): boolean;
  /** Lanes (TCP connections of the session): open, and how many this side keeps or takes. */
  lanes?(): { open: number; wanted: number };
  /** Each lane of the session, in the order they opened: RTT, datagrams, nudges (a lane's own counts). */
  laneRows?(): LaneInfo[];
  /** Nudges, redundancy and lane totals (see LaneTotals). */
  laneTotals?(): LaneTotals;
  /** Where the connection side stands (open, waiting for the peer's decision, connecting, down). */
  phase?(): "open" | "waiting" | "connecting" | "down";
  flowCount(): number;
  /** Connections to the peer after the first one. */
  reconnects(): number;
  flows(): Iterable<FlowRow>;
  /** Per mapping (by this side's index): its label, open flows and totals. */
  mappings(): MappingRow[];
  /** Configuration reloads (SIGHUP) so far, and the last one. */
  reloads?(): ReloadRecord;
  /** Receiver: each admitted sender, what it serves and its traffic (several senders, §18). */
  senders?(): SenderRow[];
  /** Sender: what the receiver said of each mapping ("serving", "standby", …), by label. */
  serving?(): Array<{ label: string; state: string | undefined }>;
}

export interface SenderRow {
  /** The sender's key fingerprint ("SHA256:…"), or "secret" in shared-secret mode. */
  sender: string;
  /** Its connection's address, while it has one. */
  peer: string | undefined;
  connected: boolean;
  /** Labels of the mappings it serves, and of those it waits for as standby. */
  serving: string[];
  standby: string[];
  /** Datagrams sent to it (clients' datagrams) and received from it (replies). */
  toSender: number;
  fromSender: number;
}

export interface MappingRow extends MappingStats {
  /** The mapping's name, or "#1", "#2"… when unnamed. */
  label: string;
  flows: number;
}

function mappingRows(machine: {
  mappingStats: readonly MappingStats[];
  flows: { countOf(mappingId: number): number };
}): MappingRow[] {
  return machine.mappingStats.map((stats, i) => ({
    ...stats,
    label: stats.name || `#${i + 1}`,
    flows: machine.flows.countOf(i),
  }));
}

export function observeReceiver(handle: ReceiverHandle, transport: string): Observed {
  const machine = handle.machine;
  return {
    role: "receiver",
    transport,
    stats: machine.stats,
    peerConnected: () => machine.session.peerConnected,
    phase: () => machine.session.phase,
    lanes: () => lanesOf(machine.session),
    laneRows: () => machine.session.lanes(),
    laneTotals: () => machine.laneTotals,
    flowCount: () => machine.flows.size,
    // Connections after each sender's first, lanes not counted (a lane that joins is no reconnection).
    reconnects: () =>
      Math.max(
        0,
        machine.stats.accepted - machine.laneTotals.lanesJoined - Math.max(1, machine.session.acceptor.all.length),
      ),
    // A mapping a reload removed is gone from the metrics and the status (its id stays taken, §18).
    mappings: () => mappingRows(machine).filter((_, mappingId) => !machine.isRemoved(mappingId)),
    senders: () => senderRows(machine),
    *flows() {
      for (const flow of machine.flows.values())
        yield {
          ...counters(flow),
          id: flow.id,
          client: formatHostPort(flow.address, flow.port),
          mapping: flowMapping(machine.mappingStats, flow),
          lastActive: flow.lastActive,
        };
    },
  };
}

export function observeSender(handle: SenderHandle, transport: string): Observed {
  const machine = handle.machine;
  return {
    role: "sender",
    transport,
    stats: machine.stats,
    peerConnected: () => machine.session.peerConnected,
    phase: () => machine.session.phase,
    lanes: () => lanesOf(machine.session),
    laneRows: () => machine.session.lanes(),
    laneTotals: () => machine.laneTotals,
    flowCount: () => machine.flows.size,
    reconnects: () => handle.reconnects,
    mappings: () => mappingRows(machine),
    serving: () => mappingRows(machine).map(({ label }, i) => ({ label, state: machine.servingState[i] })),
    *flows() {
      for (const flow of machine.flows.values()) {
        yield {
          ...counters(flow),
          id: flow.id,
          client: formatHostPort(flow.client.address, flow.client.port),
          mapping: flowMapping(machine.mappingStats, flow),
          lastActive: flow.lastActive,
        };
      }
    },
  };
}

function senderRows(machine: ReceiverHandle["machine"]): SenderRow[] {
  const labels = machine.mappingStats.map((stats, i) => stats.name || `#${i + 1}`);
  const session = machine.session;
  return session.peers().map((peer) => {
    const served = session.servedBy(peer);
    const traffic = peer.traffic;
    return {
      sender: peer.peerKey.length > 0 ? fingerprint(peer.peerKey) : "secret",
      peer: peer.links[0]?.peer,
      connected: peer.openLink !== undefined,
      serving: served.map((i) => labels[i]),
      standby: [...peer.wants].filter((i) => !served.includes(i)).map((i) => labels[i]),
      toSender: traffic.datagramsSent,
      fromSender: traffic.datagramsReceived,
    };
  });
}

/** A flow's mapping label, and for a port range the port's offset in it. */
function flowMapping(stats: readonly MappingStats[], flow: { mappingId: number; portOffset: number }): string {
  const label = stats[flow.mappingId]?.name || `#${flow.mappingId + 1}`;
  return flow.portOffset > 0 ? `${label}+${flow.portOffset}` : label;
}

function counters(flow: FlowCounters): FlowCounters {
  return {
    datagramsIn: flow.datagramsIn,
    bytesIn: flow.bytesIn,
    datagramsOut: flow.datagramsOut,
    bytesOut: flow.bytesOut,
    dropped: flow.dropped,
  };
}

/** Drop reasons with a non-zero count, as "reason=N" words. */
export function nonZeroDrops(stats: Stats): string[] {
  return Object.entries(stats.drops)
    .filter(([, n]) => n > 0)
    .map(([reason, n]) => `${reason}=${n}`);
}

/** 1234567 → "1.2M": compact figures for a one-line display. */
export function compact(value: number): string {
  if (value < 1000) return String(Math.round(value));
  const units = ["k", "M", "G", "T"];
  let v = value;
  let unit = "";
  for (const u of units) {
    if (v < 1000) break;
    v /= 1000;
    unit = u;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)}${unit}`;
}

function lanesOf(session: { lanes(): Array<{ open: boolean }>; lanesWanted: number }) {
  const lanes = session.lanes();
  return { open: lanes.filter((lane) => lane.open).length, wanted: Math.max(session.lanesWanted, lanes.length) };
}
