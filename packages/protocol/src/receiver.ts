/**
 * The receiver: owns the public UDP ports (one per mapping). Every client address becomes a flow with
 * an id chosen here; the sender only ever answers with flow ids, so the only addresses this side writes
 * to are clients that opened flows (no reflection). Whether it accepts the TCP connection (ssh -R, the
 * default) or dials it (ssh -L) is the session's business; either way it verifies the peer before
 * acting on anything the peer sends. Several senders may serve its mappings, one active sender per
 * mapping (§18): a client's datagrams go to that sender only, and only it may name the mapping's flows.
 */
import { ipFamily } from "./address.js";
import { addMappingTo, type CommonConfig } from "./config.js";
import type { MappingConfig } from "./mappings.js";
import { MachineCore, type RolePolicy } from "./machine-core.js";
import { FlowCloseReason, type Frame, FrameType, HEADER_SIZE, MAX_DATAGRAM, ProtocolError, Role } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";
import type { ClientFlow, ReceiverOutput } from "./outputs.js";
import type { PeerSession } from "./peer-session.js";
import { SourceRateLimiter } from "./rate-limit.js";
import { looksLikeWireGuard } from "./wireguard-hint.js";
import { zeroCounters } from "./stats.js";

export interface ReceiverConfig extends CommonConfig {
  /**
   * New flows one source address may open per second (bursts of twice that); datagrams past it are
   * dropped and counted. 0 disables the limit.
   */
  newFlowsPerSecond?: number;
  /**
   * While a flow is unconfirmed (its client has sent one datagram only, so its address may be
   * spoofed), replies to it may total at most this many times what it sent, counted in bytes on the
   * wire (payload plus IP and UDP headers) and in datagrams. 0 disables the cap.
   */
  amplificationLimit?: number;
}

export const RECEIVER_DEFAULTS = {
  maxPendingConnections: 16,
  maxPendingPerSource: 4,
  newFlowsPerSecond: 1000,
  amplificationLimit: 10,
} as const;

/** IP and UDP headers of one datagram: what an empty reply still costs the network. */
export const IPV4_UDP_OVERHEAD = 20 + 8;
export const IPV6_UDP_OVERHEAD = 40 + 8;

const DATA_OVERHEAD = HEADER_SIZE + 4;
/** Largest FLOW_OPEN (IPv6) plus a FLOW_CLOSE for an evicted flow. */
const NEW_FLOW_OVERHEAD = HEADER_SIZE + 25 + HEADER_SIZE + 5;

export class ReceiverMachine extends MachineCore<ClientFlow, ReceiverOutput> {
  private readonly flowsByKey = new Map<string, ClientFlow>();
  private nextFlowId = 1;
  private newFlowLimiter: SourceRateLimiter | undefined;
  private amplificationLimit: number;
  /** Mappings removed while running (removeMapping): their ids stay taken, their datagrams go nowhere. */
  private readonly removed = new Set<number>();

  constructor(config: ReceiverConfig, crypto: CryptoProvider) {
    // Filled in below: the role's methods need `this`, which exists only once super() returned.
    const policy = {} as RolePolicy<ClientFlow>;
    super(Role.Receiver, config, crypto, policy);
    Object.assign(policy, <RolePolicy<ClientFlow>>{
      frame: (link, frame, now) => this.onFrame(link, frame, now),
      release: (flow) => this.flowsByKey.delete(flow.key),
      describe: (flow) => `client ${flow.address}:${flow.port}`,
      mappingMoved: (mappingId, to, now) => this.moveFlows(mappingId, to, now),
      idled: (flow, now) => {
        if (!flow.wireguard) return;
        const idle = Math.round(this.settings.idleTimeoutMs / 1000);
        // WireGuard's own default interval, or less when --idle-timeout is short.
        const keepalive = Math.max(1, Math.min(25, Math.floor(idle / 2)));
        this.throttle.note(
          "wireguard-idle",
          now,
          (n) =>
            `${n} flow(s) that look like WireGuard went idle (--idle-timeout ${idle} s): the peer behind the tunnel cannot reach them until they send again; set PersistentKeepalive = ${keepalive} (below --idle-timeout) on the WireGuard peer in front, or raise --idle-timeout`,
          "info",
        );
      },
    });
    const rate = config.newFlowsPerSecond ?? RECEIVER_DEFAULTS.newFlowsPerSecond;
    this.newFlowLimiter =
      rate > 0 ? new SourceRateLimiter({ perSecond: rate, burst: Math.max(1, rate * 2) }) : undefined;
    this.amplificationLimit = Math.max(0, config.amplificationLimit ?? RECEIVER_DEFAULTS.amplificationLimit);
  }

  /**
   * New client limits while running (a reload). The rate applies at once, each source keeping its
   * bucket; the amplification cap applies to flows opened from now on (an open unconfirmed flow
   * keeps the budget it was given).
   */
  updateClientLimits(limits: { newFlowsPerSecond: number; amplificationLimit: number }): void {
    const rate = limits.newFlowsPerSecond;
    if (!(rate >= 0) || !(limits.amplificationLimit >= 0)) throw new RangeError("client limits must be 0 or more");
    if (rate === 0) this.newFlowLimiter = undefined;
    else if (this.newFlowLimiter) this.newFlowLimiter.setRate(rate, Math.max(1, rate * 2));
    else this.newFlowLimiter = new SourceRateLimiter({ perSecond: rate, burst: Math.max(1, rate * 2) });
    this.amplificationLimit = limits.amplificationLimit;
  }

  /**
   * Mapping `mappingId` is gone from this receiver while it runs (a configuration reload): its flows
   * close (FLOW_CLOSE to the sender serving it), the senders that asked for it are told
   * (MAPPING_STATE removed, with `reason`, §18), and its datagrams are dropped from now on (counted
   * `no-sender`; the host closes its public port). Mapping ids of the others do not change.
   */
  removeMapping(mappingId: number, now: number, reason = "removed from the receiver's configuration"): void {
    if (!(mappingId >= 0 && mappingId < this.settings.mappings.length)) throw new RangeError(`no mapping ${mappingId}`);
    if (this.removed.has(mappingId)) return;
    this.removed.add(mappingId);
    const flows = this.flows.ofMapping(mappingId);
    const name = this.settings.mappingNames[mappingId] || `#${mappingId + 1}`;
    this.out.log(
      "info",
      `mapping ${name} removed: closing its ${flows.length === 1 ? "flow" : `${flows.length} flows`}`,
    );
    for (const flow of flows) this.flows.close(flow, FlowCloseReason.Closed, true);
    this.session.removeMapping(mappingId, reason, now);
  }

  /** Whether mapping `mappingId` was removed while running (and not added again). */
  isRemoved(mappingId: number): boolean {
    return this.removed.has(mappingId);
  }

  /**
   * A mapping added while the receiver runs (a configuration reload). Its id is the next position, or
   * the id it had when a mapping of that name was removed (ids follow names: senders told it was
   * removed pair with it again). It must be named: senders that named it in their HELLO serve it (or
   * wait as standby, or are refused it) as their keys allow, and are told (MAPPING_STATE, §18);
   * connections made from now on list it in HELLO. Returns its id. RangeError: no name, a port range,
   * a name in use (or one a removed mapping had, with another port count), or more than 32 mappings.
   */
  addMapping(mapping: MappingConfig, now: number): number {
    const name = mapping.name ?? "";
    if (name === "") throw new RangeError("a mapping added while running needs a name (senders pair with it by name)");
    // Its wire ids follow every other mapping's, which connected senders can work out only for one port.
    if ((mapping.ports ?? 1) !== 1) throw new RangeError("a port range cannot be added while running");
    const previous = this.settings.mappingNames.indexOf(name);
    if (previous >= 0 && !this.removed.has(previous)) throw new RangeError(`mapping name "${name}" is used already`);
    let mappingId = previous;
    if (previous >= 0) {
      if ((this.settings.mappings[previous].ports ?? 1) !== 1) throw new RangeError(`mapping "${name}" had a port range`);
      (this.settings.mappings as MappingConfig[])[previous] = mapping;
      this.removed.delete(previous);
    } else {
      mappingId = addMappingTo(this.settings, mapping);
      this.counters.addMapping(name);
      this.flows.addMapping();
    }
    this.out.log("info", `mapping ${name} added`);
    this.session.addMapping(mappingId, now);
    return mappingId;
  }

  /**
   * A datagram from a UDP client, on the public port of mapping `mappingId` (port `portOffset` of
   * its range: the flow's target port is at the same offset on the sender).
   */
  clientDatagram(address: string, port: number, payload: Uint8Array, now: number, mappingId = 0, portOffset = 0): void {
    const counters = this.counters;
    if (mappingId >= this.settings.mappings.length || mappingId < 0) throw new RangeError(`no mapping ${mappingId}`);
    const ports = this.settings.mappings[mappingId].ports ?? 1;
    if (!(portOffset >= 0 && portOffset < ports)) throw new RangeError(`no port ${portOffset} in mapping ${mappingId}`);
    counters.received(mappingId, payload.length);
    if (this.removed.has(mappingId)) {
      counters.dropped("no-sender", mappingId); // in flight while the host closed the port
      return;
    }
    // A link already closed (CLOSE sent or received, keepalive timeout) but not yet reported
    // disconnected takes nothing more: frames after a CLOSE are never read.
    // Only the session serving this mapping hears of its clients (§18): never another sender.
    const peer = this.session.sessionFor(mappingId);
    if (peer?.openLink === undefined) {
      counters.dropped("no-sender", mappingId);
      this.throttle.note("no-sender", now, (n) => `dropped ${n} datagram(s) from clients: no sender connected`);
      return;
    }
    if (payload.length > MAX_DATAGRAM) {
      counters.dropped("too-large", mappingId);
      return;
    }
    // One flow per client address and public port: the wire's mapping id names both.
    const wireId = this.settings.mappingIds.idOf(mappingId, portOffset);
    const key = wireId === 0 ? address + "|" + port : wireId + "|" + address + "|" + port;
    let flow = this.flowsByKey.get(key);
    if (flow === undefined) {
      if (this.newFlowLimiter !== undefined && !this.newFlowLimiter.allow(address, now)) {
        counters.dropped("rate-limited", mappingId);
        this.throttle.note(
          "rate-limited",
          now,
          (n) => `new-flow rate limit reached for some sources (raise --new-flow-rate): dropped ${n} datagram(s)`,
        );
        return;
      }
      const link = peer.picker.newFlowLane() as Link;
      // FLOW_OPEN (and an eviction's FLOW_CLOSE) count against the buffer bound too, so a flood of new
      // source addresses cannot grow the buffer of a blocked connection.
      if (!this.hasRoom(link, NEW_FLOW_OVERHEAD + DATA_OVERHEAD + payload.length, mappingId)) return;
      flow = this.openFlow(link, mappingId, portOffset, key, address, port, payload.length, now);
      if (flow === undefined) return;
      if (looksLikeWireGuard(payload)) flow.wireguard = true;
    } else {
      // A second datagram from the same address and port: whoever it is also sends from there, so
      // replies are no longer capped (a spoofer rarely keeps up a conversation it cannot see).
      flow.replyBudget = Number.POSITIVE_INFINITY;
      flow.replyDatagrams = Number.POSITIVE_INFINITY;
      this.flows.touch(flow, now);
    }
    const picker = peer.picker;
    const primary = picker.sendLanes(flow, mappingId, payload.length) as Link;
    const second = picker.second;
    const moved = picker.moved;
    // Its lane closed or stalled: announce the flow on the new lane before its data (the FLOW_OPEN
    // on the old one may never have arrived); the sender keeps a flow it already has (§16.3). A
    // second copy's lane must know the flow too.
    const extra = (second ? 4 : 0) + (moved ? NEW_FLOW_OVERHEAD : 0);
    if (!this.hasRoom(primary, DATA_OVERHEAD + extra + payload.length, mappingId, flow)) return;
    if (moved) primary.writer.flowOpen(flow.id, this.wireId(flow), flow);
    counters.forwarded(flow, payload.length);
    if (second === undefined) primary.writer.data(flow.id, payload);
    else this.sendCopies(flow, primary, second, payload, mappingId, now);
    primary.counters.datagramsSent++;
    this.session.connections.queued(primary, now);
  }

  /**
   * Mapping `mappingId` is served by `to` now (its sender took over, §18): each flow is announced on
   * one of its lanes, so that sender opens its own sockets toward its target. The client keeps its
   * flow (id, reply budget); redundancy state starts afresh, as the new sender numbers its own copies.
   */
  private moveFlows(mappingId: number, to: PeerSession, now: number): void {
    for (const flow of this.flows.ofMapping(mappingId)) {
      flow.rx = undefined;
      flow.mirror = undefined;
      flow.announcedOn = undefined;
      const link = to.picker.laneFor(flow);
      if (link === undefined) return;
      if (!this.hasRoom(link, NEW_FLOW_OVERHEAD, mappingId)) continue;
      link.writer.flowOpen(flow.id, this.wireId(flow), flow);
      this.session.connections.queued(link, now);
    }
  }

  /** Redundancy (§17): the datagram, numbered, on its lane and on `second` (announced there first). */
  private sendCopies(
    flow: ClientFlow,
    primary: Link,
    second: Link,
    payload: Uint8Array,
    mappingId: number,
    now: number,
  ): void {
    const seq = (flow.txSeq = ((flow.txSeq ?? -1) + 1) >>> 0);
    primary.writer.sdata(flow.id, seq, payload);
    const unknown = !(flow.announcedOn ?? []).includes(second);
    if (!this.hasRoom(second, DATA_OVERHEAD + 4 + payload.length + (unknown ? NEW_FLOW_OVERHEAD : 0), mappingId)) {
      return;
    }
    if (unknown) {
      second.writer.flowOpen(flow.id, this.wireId(flow), flow);
      flow.announcedOn = [...(flow.announcedOn ?? []).filter((link) => link.state === "open"), second];
    }
    second.writer.sdata(flow.id, seq, payload);
    second.counters.datagramsSent++;
    this.session.connections.queued(second, now);
  }

  private openFlow(
    link: Link,
    mappingId: number,
    portOffset: number,
    key: string,
    address: string,
    port: number,
    firstSize: number,
    now: number,
  ): ClientFlow | undefined {
    const family = ipFamily(address);
    if (family === undefined) {
      this.out.log("warn", `ignoring datagram from unparseable address ${address}`);
      return undefined;
    }
    this.flows.makeRoom(mappingId, now, FlowCloseReason.Evicted);
    const limit = this.amplificationLimit;
    const flow: ClientFlow = {
      id: this.allocateFlowId(),
      mappingId,
      portOffset,
      address,
      port,
      family,
      key,
      lastActive: now,
      replyBudget: limit > 0 ? limit * (firstSize + wireOverhead(address, family)) : Number.POSITIVE_INFINITY,
      replyDatagrams: limit > 0 ? limit : Number.POSITIVE_INFINITY,
      ...zeroCounters(),
    };
    flow.lane = link;
    this.flows.add(flow);
    this.flowsByKey.set(key, flow);
    link.writer.flowOpen(flow.id, this.wireId(flow), flow);
    return flow;
  }

  /** FLOW_OPEN's mapping id: the mapping's first id plus the flow's port offset (§8.6). */
  private wireId(flow: ClientFlow): number {
    return this.settings.mappingIds.idOf(flow.mappingId, flow.portOffset);
  }

  private allocateFlowId(): number {
    // 32-bit ids, never 0, never one still in use: wrap-around after 4 billion flows stays correct.
    for (;;) {
      const id = this.nextFlowId;
      this.nextFlowId = id === 0xffffffff ? 1 : id + 1;
      if (!this.flows.has(id)) return id;
    }
  }

  private onFrame(link: Link, frame: Frame, now: number): void {
    if (frame.type === FrameType.FlowOpen)
      throw new ProtocolError("unexpected-frame", "the sender may not open flows (FLOW_OPEN is receiver-only)");
    if (frame.type === FrameType.MappingState)
      throw new ProtocolError("unexpected-frame", "the sender may not send MAPPING_STATE (it is receiver-only)");
    if (frame.type !== FrameType.Data && frame.type !== FrameType.Sdata) return;
    // Only ever to a client that opened the flow: a forged id reaches no one (no reflection).
    const flow = this.dataFlow(link, frame.flowId, now);
    if (flow === undefined) return;
    if (frame.type === FrameType.Sdata && !this.firstCopy(flow, frame.seq)) return;
    if (!this.withinBudget(flow, frame.payload.length, now)) return;
    this.counters.sent(flow, frame.payload.length);
    this.out.push({ kind: "send-to-client", flow, payload: frame.payload });
  }

  /**
   * An unconfirmed client (its address may be spoofed) is sent at most `amplificationLimit` times what
   * it sent, in wire bytes and in datagrams: an empty reply still costs its IP and UDP headers.
   */
  private withinBudget(flow: ClientFlow, size: number, now: number): boolean {
    if (flow.replyDatagrams === Number.POSITIVE_INFINITY) return true;
    const cost = size + wireOverhead(flow.address, flow.family);
    if (cost <= flow.replyBudget && flow.replyDatagrams >= 1) {
      flow.replyBudget -= cost;
      flow.replyDatagrams--;
      return true;
    }
    this.counters.dropped("amplification", flow.mappingId, flow);
    const limit = this.amplificationLimit;
    this.throttle.note(
      "amplification",
      now,
      (n) =>
        `replies to unconfirmed clients exceeded ${limit}× their request (raise --amplification-limit): dropped ${n} datagram(s)`,
    );
    return false;
  }
}

/** IP/UDP header bytes of a datagram to `address` (an IPv4-mapped IPv6 address travels as IPv4). */
function wireOverhead(address: string, family: 4 | 6): number {
  return family === 4 || address.toLowerCase().startsWith("::ffff:") ? IPV4_UDP_OVERHEAD : IPV6_UDP_OVERHEAD;
}
