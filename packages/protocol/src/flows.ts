/**
 * A machine's flows, by mapping: lookup by id, idle expiry, eviction under each mapping's flow limit,
 * the close sequence (release, count, tell the peer) and the outcomes the host reports for them. The
 * same for both roles; what a flow holds and how it is released is the role's (FlowsHost).
 */
import type { Settings } from "./config.js";
import { MappedFlows } from "./flow-table.js";
import { FLOW_CLOSE_REASON_NAMES, FlowCloseReason } from "./frames.js";
import type { LogThrottle, OutputSink } from "./outputs.js";
import type { Counters, DropReason, FlowCounters } from "./stats.js";

export interface FlowBase extends FlowCounters {
  readonly id: number;
  readonly mappingId: number;
  lastActive: number;
}

/** The role's part in closing a flow. */
export interface FlowsHost<F> {
  /** Frees what the role keeps for the flow (an index by address, a socket). */
  release(flow: F): void;
  /** Tells the peer the flow is closed (FLOW_CLOSE), if a connection is open. */
  tellPeer(flow: F, reason: number): void;
  /** The flow as a log line names it. */
  describe(flow: F): string;
  /** The flow was closed for being idle (after release). */
  idled?(flow: F, now: number): void;
}

export class Flows<F extends FlowBase> {
  private readonly table: MappedFlows<F>;

  constructor(
    private readonly settings: Settings,
    private readonly counters: Counters,
    private readonly out: OutputSink,
    private readonly throttle: LogThrottle,
    private readonly host: FlowsHost<F>,
    /** What the other side is, for log lines. */
    private readonly peerName: string,
  ) {
    this.table = new MappedFlows<F>(settings.mappings.length);
  }

  get size(): number {
    return this.table.size;
  }

  /** Room for the flows of a mapping added while running (the next id). */
  addMapping(): void {
    this.table.addMapping();
  }

  /** Open flows of mapping `mappingId`. */
  countOf(mappingId: number): number {
    return this.table.tables[mappingId]?.size ?? 0;
  }

  get(id: number): F | undefined {
    return this.table.get(id);
  }

  has(id: number): boolean {
    return this.table.has(id);
  }

  /** Flows currently open, for status output. */
  values(): IterableIterator<F> {
    return this.table.values();
  }

  touch(flow: F, now: number): void {
    this.table.touch(flow, now);
  }

  add(flow: F): void {
    this.table.add(flow);
    this.counters.flowOpened(flow.mappingId);
    this.out.log("debug", `flow ${flow.id} opened for ${this.host.describe(flow)}`);
  }

  /** Closes `flow`; `tellPeer` when this side decided it (idle, evicted, socket error). */
  close(flow: F, reason: number, tellPeer: boolean): void {
    this.table.delete(flow);
    this.counters.stats.flowsClosed++;
    this.host.release(flow);
    if (!tellPeer) return;
    this.out.log("debug", `flow ${flow.id} (${this.host.describe(flow)}) closed: ${reasonName(reason)}`);
    this.host.tellPeer(flow, reason);
  }

  /** Every flow goes, without telling the peer (a new session, or the old one ended). */
  dropAll(): void {
    for (const flow of this.table.values()) this.host.release(flow);
    this.counters.stats.flowsClosed += this.table.size;
    this.table.clear();
  }

  /** Every flow of mapping `mappingId` goes, without telling the peer (its session ended, §18). */
  dropMapping(mappingId: number): void {
    const table = this.table.tables[mappingId];
    if (table === undefined) return;
    for (const flow of [...table.values()]) {
      this.table.delete(flow);
      this.counters.stats.flowsClosed++;
      this.host.release(flow);
    }
  }

  /** The open flows of mapping `mappingId`, least recently active first. */
  ofMapping(mappingId: number): F[] {
    return [...(this.table.tables[mappingId]?.values() ?? [])];
  }

  /** The peer closed flow `flowId` (FLOW_CLOSE); a flow this side does not have is ignored, not answered. */
  closedByPeer(flowId: number, reason: number, now: number): void {
    const flow = this.table.get(flowId);
    if (!flow) return;
    this.out.log(
      "debug",
      `flow ${flow.id} (${this.host.describe(flow)}) closed by the ${this.peerName}: ${reasonName(reason)}`,
    );
    this.close(flow, reason, false);
    // The peer's idle timer usually runs out first (it saw the last datagram later): idle all the same.
    if (reason === FlowCloseReason.Idle) this.host.idled?.(flow, now);
  }

  /** Closes, with FLOW_CLOSE(idle), every flow idle past its mapping's timeout (oldest first in each). */
  expire(now: number, idleReason: number): void {
    this.table.tables.forEach((table, mappingId) => {
      const idle = this.idleTimeoutOf(mappingId);
      for (let flow = table.oldest(); flow !== undefined && now - flow.lastActive >= idle; flow = table.oldest()) {
        this.close(flow, idleReason, true);
        this.host.idled?.(flow, now);
      }
    });
  }

  /** When the next flow goes idle, over all mappings; undefined without flows. */
  nextTimeout(): number | undefined {
    let next: number | undefined;
    this.table.tables.forEach((table, mappingId) => {
      const oldest = table.oldest();
      if (oldest === undefined) return;
      const due = oldest.lastActive + this.idleTimeoutOf(mappingId);
      if (next === undefined || due < next) next = due;
    });
    return next;
  }

  /** Makes room for one more flow in mapping `mappingId` under its flow limit: evicts the least recently active. */
  makeRoom(mappingId: number, now: number, evictedReason: number): void {
    const table = this.table.tables[mappingId];
    const limit = this.settings.mappings[mappingId]?.maxFlows ?? this.settings.maxFlows;
    if (table.size < limit) return;
    const oldest = table.oldest();
    if (oldest === undefined) return;
    this.evict(oldest, now, evictedReason, `flow limit (${limit}) of mapping ${this.mappingLabel(mappingId)} reached`);
  }

  /**
   * After the flow limits were lowered (a reload): evicts each mapping's least recently active flows
   * until it is within its limit again, so the limit holds at once rather than at the next new flow.
   */
  enforceLimits(now: number, evictedReason: number): void {
    this.table.tables.forEach((table, mappingId) => {
      const limit = this.settings.mappings[mappingId]?.maxFlows ?? this.settings.maxFlows;
      const why = `flow limit (${limit}) of mapping ${this.mappingLabel(mappingId)} lowered`;
      for (let flow = table.oldest(); flow !== undefined && table.size > limit; flow = table.oldest())
        this.evict(flow, now, evictedReason, why);
    });
  }

  /**
   * Closes the least recently active flow of any mapping other than `except` (the host ran out of
   * sockets, say). `why` says what forced it, for the log. Returns whether one was closed.
   */
  evictLeastRecent(now: number, evictedReason: number, why: string, except?: number): boolean {
    let victim: F | undefined;
    for (const table of this.table.tables) {
      for (const flow of table.values()) {
        if (flow.id === except) continue;
        if (victim === undefined || flow.lastActive < victim.lastActive) victim = flow;
        break; // each table is in least-recently-active order
      }
    }
    if (victim === undefined) return false;
    this.evict(victim, now, evictedReason, why);
    return true;
  }

  private evict(flow: F, now: number, reason: number, why: string): void {
    this.counters.stats.flowsEvicted++;
    this.throttle.note(`evict:${why}`, now, (count) => `${why}: evicted ${count} least recently active flow(s)`);
    this.close(flow, reason, true);
  }

  // ---- outcomes the host reports ----

  /**
   * A send the machine asked for (send-to-client/target) did not happen: taken back from "out" and
   * counted as a drop of its flow and mapping (the flow may have closed since; its mapping is known).
   */
  sendFailed(
    flow: { readonly id: number; readonly mappingId: number },
    size: number,
    reason: DropReason = "socket-error",
  ): void {
    this.counters.unsent(flow.mappingId, this.table.get(flow.id), size, reason);
  }

  /**
   * Datagrams lost outside the machine before it saw them (the kernel's receive queue overflowed, an
   * asynchronous send error), on flow `flowId` or, when no flow is known, on mapping `mappingId`.
   */
  droppedOutside(reason: DropReason, where: { flowId?: number; mappingId?: number }, count = 1): void {
    const flow = where.flowId === undefined ? undefined : this.table.get(where.flowId);
    this.counters.dropped(reason, flow?.mappingId ?? where.mappingId, flow, count);
  }

  private idleTimeoutOf(mappingId: number): number {
    return this.settings.mappings[mappingId]?.idleTimeoutMs ?? this.settings.idleTimeoutMs;
  }

  private mappingLabel(mappingId: number): string {
    const name = this.settings.mappingNames[mappingId];
    return name ? name : `#${mappingId + 1}`;
  }
}

function reasonName(reason: number): string {
  return FLOW_CLOSE_REASON_NAMES[reason as keyof typeof FLOW_CLOSE_REASON_NAMES] ?? `reason ${reason}`;
}
