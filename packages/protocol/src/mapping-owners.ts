/**
 * Which session serves each of the acceptor's mappings (§18): one active session per mapping; the
 * others that asked for it wait as standby. A mapping changes hands only when its session has no open
 * connection (lost, keepalive timeout, gone), never because another peer arrived: no flapping. The
 * successor is the longest-admitted session that wants the mapping and has an open connection.
 */
import { type MappingStateEntry, MappingStatus } from "./frames.js";
import type { PeerSession } from "./peer-session.js";

/** A mapping that changed hands: `from` (undefined: it was unserved) to `to`. */
export interface Handover {
  mappingId: number;
  from: PeerSession | undefined;
  to: PeerSession;
}

export class MappingOwners {
  private readonly active: Array<PeerSession | undefined>;

  constructor(
    count: number,
    /** This side's mapping names, by index (what MAPPING_STATE names them). */
    private readonly names: readonly string[],
  ) {
    this.active = Array.from({ length: count }, () => undefined);
  }

  /** How many mappings there are (removed ones included: ids are positions). */
  get size(): number {
    return this.active.length;
  }

  /** The session serving mapping `mappingId`, if any. */
  owner(mappingId: number): PeerSession | undefined {
    return this.active[mappingId];
  }

  /** The mappings `session` serves, by index. */
  servedBy(session: PeerSession): number[] {
    const out: number[] = [];
    this.active.forEach((owner, mappingId) => {
      if (owner === session) out.push(mappingId);
    });
    return out;
  }

  /**
   * Gives each mapping whose session has no open connection to the first of `sessions` (in
   * admission order) that wants it and has one. Returns the hand-overs.
   */
  assign(sessions: readonly PeerSession[]): Handover[] {
    const handovers: Handover[] = [];
    this.active.forEach((current, mappingId) => {
      if (current?.openLink !== undefined) return;
      const next = sessions.find((session) => session.wants.has(mappingId) && session.openLink !== undefined);
      if (next === undefined) return; // kept by a session in its grace period, or unserved
      this.active[mappingId] = next;
      handovers.push({ mappingId, from: current, to: next });
    });
    return handovers;
  }

  /** A mapping added while running (the next id): served by nobody until assign() finds a session. */
  addMapping(): void {
    this.active.push(undefined);
  }

  /** Mapping `mappingId` is served by nobody from now on (it was removed). */
  vacate(mappingId: number): void {
    this.active[mappingId] = undefined;
  }

  /** `session` ended: the mappings it served are unserved until assign() finds a successor. */
  release(session: PeerSession): number[] {
    const released = this.servedBy(session);
    for (const mappingId of released) this.active[mappingId] = undefined;
    return released;
  }

  /**
   * What `session` should be told (MAPPING_STATE) and was not yet: each mapping it asked for, as
   * serving, standby, refused or removed. Records it as told.
   */
  news(session: PeerSession): MappingStateEntry[] {
    const entries: MappingStateEntry[] = [];
    const tell = (mappingId: number, status: MappingStatus, reason: string) => {
      if (session.told.get(mappingId) === status) return;
      session.told.set(mappingId, status);
      entries.push({ mappingId, name: this.names[mappingId] ?? "", status, reason });
    };
    for (const [mappingId, reason] of session.refused) tell(mappingId, MappingStatus.Refused, reason);
    for (const [mappingId, reason] of session.removed) tell(mappingId, MappingStatus.Removed, reason);
    for (const mappingId of session.wants) {
      const status = this.active[mappingId] === session ? MappingStatus.Serving : MappingStatus.Standby;
      tell(mappingId, status, "");
    }
    return entries.sort((a, b) => a.mappingId - b.mappingId);
  }
}
