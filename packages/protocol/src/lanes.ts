/**
 * Which of a session's connections (lanes) each datagram goes out on: a flow keeps its lane while it
 * is open and not backed up (its order kept), else takes the next, round robin; with redundancy (§17)
 * a second open lane that speaks SDATA carries a copy. Runs once per datagram: no allocation.
 */
import type { Settings } from "./config.js";
import type { DuplicateWindow } from "./dedupe.js";
import { Capability } from "./frames.js";
import type { Link } from "./link.js";
import type { LaneTotals } from "./stats.js";

/** One lane of the session, for status lines and metrics. */
export interface LaneInfo {
  readonly conn: number;
  readonly peer: string;
  readonly open: boolean;
  /** The transport is backed up: new datagrams go to another lane while one is free. */
  readonly stalled: boolean;
  readonly rttMs: number | undefined;
  readonly datagramsSent: number;
  readonly datagramsReceived: number;
  readonly nudgesSent: number;
}

/** What a flow keeps of its lanes: the connection its datagrams go out on, and redundancy (§17). */
export interface Laned {
  lane?: Link;
  /** Sequence number of the last SDATA sent (u32, wraps). */
  txSeq?: number;
  /** Duplicate window for the SDATA received. */
  rx?: DuplicateWindow;
  /** The peer sends this flow redundantly: answer it the same way. */
  mirror?: boolean;
  /** Receiver: lanes this flow was announced on (FLOW_OPEN) besides its own. */
  announcedOn?: Link[];
}

export class LanePicker {
  /** Round-robin position for the next flow's lane. */
  private nextLane = 0;

  constructor(
    /** The session's connections, open or closing, in the order they opened. */
    private readonly links: () => readonly Link[],
    private readonly settings: Settings,
    private readonly totals: LaneTotals,
  ) {}

  /** The session's open connections (lanes), in the order they opened. */
  openLanes(): Link[] {
    return this.links().filter((link) => link.state === "open");
  }

  /** Every connection of the session, for status lines and metrics. */
  info(): LaneInfo[] {
    return this.links().map((link) => ({
      conn: link.id,
      peer: link.peer,
      open: link.state === "open",
      stalled: link.blocked,
      rttMs: link.rttMs,
      datagramsSent: link.counters.datagramsSent,
      datagramsReceived: link.counters.datagramsReceived,
      nudgesSent: link.counters.nudgesSent,
    }));
  }

  /**
   * What the last laneFor() or sendLanes() decided besides the lane it returned (fields, not a fresh
   * object: this runs once per datagram): `moved`, the flow had another lane before (the receiver
   * re-announces FLOW_OPEN); `second`, the lane of the redundant copy, if any.
   */
  moved = false;
  second: Link | undefined;
  /** Some open lane's peer set Redundant in its HELLO (recomputed when lanes open or close). */
  private peerAsksRedundancy = false;

  /**
   * The lane a datagram of `flow` (mapping `mappingId`, `size` bytes) goes out on, and in `second`,
   * when redundancy applies (§17) and another open lane speaks SDATA, the lane of its copy. Undefined
   * when no lane is open.
   */
  sendLanes(flow: Laned, mappingId: number, size: number): Link | undefined {
    this.second = undefined;
    const link = this.laneFor(flow);
    if (link === undefined || !this.redundancyFor(flow, mappingId, size)) return link;
    if ((link.sharedCapabilities & Capability.Sequenced) === 0) return link;
    const lanes = this.links();
    const start = lanes.indexOf(link);
    for (let i = 1; i < lanes.length; i++) {
      const other = lanes[(start + i) % lanes.length];
      if (other.state !== "open" || other.blocked || (other.sharedCapabilities & Capability.Sequenced) === 0) continue;
      this.totals.redundantCopies++;
      this.second = other;
      break;
    }
    return link;
  }

  private redundancyFor(flow: Laned, mappingId: number, size: number): boolean {
    const s = this.settings;
    if (size > s.redundantMaxBytes) return false;
    return s.redundant || this.peerAsksRedundancy || flow.mirror === true || s.mappings[mappingId]?.redundant === true;
  }

  /** Lanes opened or closed: whether some open lane's peer asks for redundancy. */
  lanesChanged(): void {
    this.peerAsksRedundancy = this.links().some(
      (link) => link.state === "open" && ((link.peerHello?.capabilities ?? 0) & Capability.Redundant) !== 0,
    );
  }

  /** The lane for a flow about to open (round robin over the open lanes); undefined when none is open. */
  newFlowLane(): Link | undefined {
    const scratch: Laned = {};
    return this.laneFor(scratch);
  }

  /**
   * The lane `flow`'s datagrams go out on (§16.3): the one it has while that is open and not backed
   * up, so its order is kept; else the next open lane, round robin (a backed-up lane only when every
   * lane is). Sets `moved`. Undefined when no lane is open.
   */
  laneFor(flow: Laned): Link | undefined {
    this.moved = false;
    const current = flow.lane;
    if (current !== undefined && current.state === "open") {
      // Backed up, and the only connection: nowhere else to go (no allocation, once per datagram).
      if (!current.blocked || this.links().length === 1) return current;
    }
    const lanes = this.openLanes();
    if (lanes.length === 0) return undefined;
    if (current !== undefined && current.state === "open" && lanes.every((lane) => lane.blocked)) return current;
    const free = lanes.filter((lane) => !lane.blocked);
    const pool = free.length > 0 ? free : lanes;
    const link = pool[this.nextLane++ % pool.length];
    this.moved = current !== undefined && current !== link;
    if (this.moved) this.totals.flowsMoved++;
    flow.lane = link;
    return link;
  }
}
