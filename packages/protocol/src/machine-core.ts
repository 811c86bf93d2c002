/**
 * What both machines are made of, put together once: the settings, the counters, the output queue,
 * the session (connections, handshake, resume) and the flows, and the surface hosts drive. Each
 * role's machine is this plus its policy — what DATA and FLOW_OPEN mean, what a flow holds — handed
 * in as an object; nothing here is abstract or overridden.
 *
 * Sans-I/O contract of a machine: the host feeds inputs (bytes, datagrams, the current time in ms),
 * drains poll() for outputs, takes coalesced bytes with session.takeTransmit(), and calls tick(now) no
 * later than nextTimeout(). Nothing reads a clock, opens a socket or sets a timer.
 */
import { applyLimits, type CommonConfig, type Limits, type Settings, settingsOf } from "./config.js";
import { type FlowBase, Flows } from "./flows.js";
import { FlowCloseReason, type Frame, FrameType, type Role } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import { LogThrottle, OutputQueue } from "./outputs.js";
import { DuplicateWindow } from "./dedupe.js";
import type { Laned } from "./lanes.js";
import type { PeerSession } from "./peer-session.js";
import { Session, type SessionOwner } from "./session.js";
import { Counters, type LaneTotals, type MappingStats, type Stats } from "./stats.js";

export interface RolePolicy<F> {
  /** A frame of an open connection that only the role understands (DATA, FLOW_OPEN). */
  frame(link: Link, frame: Frame, now: number): void;
  /** Frees what the role keeps for a closed flow. */
  release(flow: F): void;
  /** The flow as a log line names it. */
  describe(flow: F): string;
  /** Receiver: mapping `mappingId` moved to session `to` (§18); its flows are announced there. */
  mappingMoved?(mappingId: number, to: PeerSession, now: number): void;
  /** The flow was closed for being idle. */
  idled?(flow: F, now: number): void;
}

export class MachineCore<F extends FlowBase, O extends { kind: string }> {
  /** Connections, handshake, resume: accept(), dial(), receive(), approve(), takeTransmit()… */
  readonly session: Session;
  /** The flows, and the outcomes the host reports for them (sendFailed, droppedOutside). */
  readonly flows: Flows<F>;
  protected readonly settings: Settings;
  protected readonly counters: Counters;
  protected readonly out = new OutputQueue<O>();
  /** The one throttle for repeated warnings (limits, evictions, drops). */
  protected readonly throttle = new LogThrottle(this.out);

  /**
   * `policy` may be filled in after this constructor returns (the role's methods need the role's
   * fields): it is only called later, from inputs.
   */
  constructor(role: Role, config: CommonConfig, crypto: CryptoProvider, policy: RolePolicy<F>) {
    this.settings = settingsOf(config);
    this.counters = new Counters(this.settings.mappingNames);
    const flows = (): Flows<F> => this.flows;
    const owner: SessionOwner = {
      frame: (link, frame, now) =>
        frame.type === FrameType.FlowClose
          ? this.flowClosedByPeer(link, frame.flowId, frame.reason, now)
          : policy.frame(link, frame, now),
      dropFlows: (mappingId) => (mappingId === undefined ? flows().dropAll() : flows().dropMapping(mappingId)),
      flowCount: (mappingId) => (mappingId === undefined ? flows().size : flows().countOf(mappingId)),
      stale: (flowId) => flows().droppedOutside("stale", { flowId }),
      mappingMoved: (mappingId, to, now) => policy.mappingMoved?.(mappingId, to, now),
    };
    this.session = new Session(role, this.settings, crypto, this.counters.stats, this.out, owner, this.counters.lanes);
    const host = {
      release: (flow: F) => policy.release(flow),
      describe: (flow: F) => policy.describe(flow),
      idled: (flow: F, now: number) => policy.idled?.(flow, now),
      tellPeer: (flow: F, reason: number) => this.session.tellFlowClosed(flow.id, flow.mappingId, reason),
    };
    this.flows = new Flows<F>(this.settings, this.counters, this.out, this.throttle, host, this.session.peerName);
  }

  /**
   * The open flow a DATA frame names; or undefined for a flow this side does not have (closed here
   * while the frame was in flight, or never opened) or that belongs to another peer's session, which
   * is counted and answered with FLOW_CLOSE(unknown flow) so the peer frees it too.
   */
  protected dataFlow(link: Link, flowId: number, now: number): F | undefined {
    const flow = this.flows.get(flowId);
    // A flow of a mapping another session serves is unknown to this one (§18): never delivered.
    if (flow === undefined || !this.session.serves(link, flow.mappingId)) {
      this.counters.dropped("unknown-flow", undefined);
      if (this.session.connections.canAnswer(link)) link.writer.flowClose(flowId, FlowCloseReason.UnknownFlow);
      return undefined;
    }
    this.flows.touch(flow, now);
    link.counters.datagramsReceived++;
    return flow;
  }

  /** FLOW_CLOSE: a flow of a mapping another session serves is not this peer's to close (§18). */
  private flowClosedByPeer(link: Link, flowId: number, reason: number, now: number): void {
    const flow = this.flows.get(flowId);
    if (flow === undefined || !this.session.serves(link, flow.mappingId)) return;
    this.flows.closedByPeer(flowId, reason, now);
  }

  /**
   * Whether an SDATA copy of `flow` with number `seq` is the first to arrive (deliver it) or a
   * duplicate or a copy behind the window (dropped and counted, §17). The flow is answered the same
   * way from now on.
   */
  protected firstCopy(flow: F & Laned, seq: number): boolean {
    flow.mirror = true;
    flow.rx ??= new DuplicateWindow();
    const verdict = flow.rx.check(seq);
    if (verdict === "new") return true;
    if (verdict === "duplicate") this.counters.lanes.duplicatesSuppressed++;
    else this.counters.lanes.lateCopies++;
    return false;
  }

  /**
   * Whether `size` more bytes of DATA fit on `link` (see LinkTable.hasRoom); datagrams dropped to make
   * room, and this one if it does not fit, are counted as backpressure on their flows.
   */
  protected hasRoom(link: Link, size: number, mappingId: number, flow?: F): boolean {
    const room = this.session.connections.hasRoom(link, size, (flowId) =>
      this.flows.droppedOutside("backpressure", { flowId }),
    );
    if (!room) this.counters.dropped("backpressure", mappingId, flow);
    return room;
  }

  get stats(): Stats {
    return this.counters.stats;
  }

  /** Nudges, lanes, redundancy: totals over the session's connections (per lane: session.lanes()). */
  get laneTotals(): LaneTotals {
    return this.counters.lanes;
  }

  /** Per-mapping counters, by this side's mapping index. */
  get mappingStats(): readonly MappingStats[] {
    return this.counters.mappings;
  }

  /** Next output, or undefined when the queue is empty. */
  poll(): O | undefined {
    return this.out.poll();
  }

  /** Runs the timers that are due. */
  tick(now: number): void {
    this.session.tick(now);
    this.flows.expire(now, FlowCloseReason.Idle);
  }

  /** Earliest time at which tick() has work, or undefined when nothing is scheduled. */
  nextTimeout(): number | undefined {
    const a = this.session.nextTimeout();
    const b = this.flows.nextTimeout();
    return a === undefined ? b : b === undefined || a < b ? a : b;
  }

  /**
   * New limits while running (a configuration reload), checked first (RangeError, nothing changed).
   * Flows over a lowered --max-flows are evicted now; a shorter idle timeout closes the flows it
   * makes idle at the next tick (the host re-arms its timer from nextTimeout() after this input).
   */
  updateLimits(limits: Limits, now: number): void {
    applyLimits(this.settings, limits);
    this.flows.enforceLimits(now, FlowCloseReason.Evicted);
  }

  /**
   * Ends the session of a peer whose key this side no longer admits: `refusal` returns the reason
   * told to the peer (CLOSE 11), or undefined to keep it; see Session.withdraw. Returns how many
   * sessions ended.
   */
  withdrawPeers(refusal: (publicKey: Uint8Array, source: string) => string | undefined, now: number): number {
    return this.session.withdraw(refusal, now);
  }

  /** Says goodbye on every connection; flows are dropped (and their sockets released). */
  shutdown(reason = `${this.session.peerName === "sender" ? "receiver" : "sender"} shutting down`): void {
    this.session.closeAll(reason);
  }
}
