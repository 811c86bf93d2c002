/**
 * The accepting side's sessions: it verifies whoever dials in, admits peers (the host, perhaps its
 * operator, decides about a key), issues session tokens, takes lanes (JOIN) and resumes.
 *
 * It holds a session per admitted peer. A peer whose HELLO sets Senders (§18; senders dialing a
 * receiver in key mode) may serve a subset of the mappings, as its key allows; each mapping has one
 * active session, and others that want it wait as standby until it has no open connection. A peer
 * without it (secret mode, older versions, the ssh -L direction) keeps §7's rules: it serves every
 * mapping, and only while no other peer is connected.
 */
import { bytesEqual } from "./bytes.js";
import type { Settings } from "./config.js";
import type { LinkTable } from "./connections.js";
import { Capability, CloseCode, type Frame, FrameType, type Role, TOKEN_SIZE } from "./frames.js";
import { acceptorHelloStep, flows, unexpected } from "./handshake.js";
import type { CryptoProvider, Link } from "./link.js";
import { MappingOwners } from "./mapping-owners.js";
import type { OutputSink } from "./outputs.js";
import { PeerSession } from "./peer-session.js";
import type { LaneTotals, Stats } from "./stats.js";
import { peerWord } from "./text.js";

/** What the session side needs from the machine that owns it: its flows. */
export interface SessionOwner {
  /** A frame on an open connection that the session does not handle itself (DATA, FLOW_*). */
  frame(link: Link, frame: Frame, now: number): void;
  /** The flows of mapping `mappingId` (every flow when undefined) go, without telling the peer. */
  dropFlows(mappingId?: number): void;
  /** Open flows of mapping `mappingId`, or in all. */
  flowCount(mappingId?: number): number;
  /** A queued datagram of flow `flowId` was dropped for waiting too long (--max-delay). */
  stale(flowId: number): void;
  /** Mapping `mappingId` moved to session `to` (§18): its flows are announced there (FLOW_OPEN). */
  mappingMoved(mappingId: number, to: PeerSession, now: number): void;
}

/** What the acceptor shares with the rest of the session side. */
export interface AcceptorParts {
  readonly role: Role;
  readonly settings: Settings;
  readonly crypto: CryptoProvider;
  readonly stats: Stats;
  readonly out: OutputSink;
  readonly owner: SessionOwner;
  readonly totals: LaneTotals;
  readonly connections: LinkTable;
  readonly peerName: string;
  /** A connection passed its handshake (or joined): marks it open and says so. */
  opened(link: Link, now: number, resumed: boolean, lane?: boolean): void;
}

export class Acceptor {
  /** Admitted sessions, in admission order (the order standby sessions take over in). */
  private sessions: PeerSession[] = [];
  readonly owners: MappingOwners;
  /** Mappings this side no longer has (removed while running), with the reason peers are told. */
  private readonly removed = new Map<number, string>();

  constructor(private readonly parts: AcceptorParts) {
    this.owners = new MappingOwners(parts.settings.mappings.length, parts.settings.mappingNames);
  }

  /** Every admitted session (for status lines and metrics). */
  get all(): readonly PeerSession[] {
    return this.sessions;
  }

  /** The session whose connections carry mapping `mappingId`'s flows. */
  sessionFor(mappingId: number): PeerSession | undefined {
    return this.owners.owner(mappingId);
  }

  /**
   * Whether a flow of mapping `mappingId` may be named on `link`: only by the session serving the
   * mapping. A frame of another session naming it is treated as naming an unknown flow (§18).
   */
  serves(link: Link, mappingId: number): boolean {
    const session = this.owners.owner(mappingId);
    return session !== undefined && link.session === session;
  }

  /** Whether some admitted peer is connected and heard from lately (the operator is not asked then). */
  anyLive(now: number): boolean {
    return this.sessions.some((session) => session.live(now, this.parts.settings.keepaliveMs));
  }

  /** An AUTH or JOIN (or HELLO) of a connection still in its handshake. */
  handshake(link: Link, frame: Frame, now: number): void {
    const { settings, role, crypto, stats, connections, out, peerName } = this.parts;
    if (acceptorHelloStep(link, frame, settings, role)) return;
    if (frame.type === FrameType.Join && (link.sharedCapabilities & Capability.Lanes) !== 0) {
      return this.join(link, frame.proof, frame.token, now);
    }
    if (frame.type !== FrameType.Auth) throw unexpected(frame, "AUTH");
    link.offeredToken = frame.token.slice();
    if (!link.verifyPeer(crypto, frame.proof, frame.token)) {
      stats.handshakeFailures++;
      const why = settings.secretMode
        ? "wrong shared secret"
        : `the ${peerName}'s signature does not match the key it announced`;
      connections.fail(link, CloseCode.AuthFailed, why);
      return;
    }
    const resumed = this.resumable(link);
    if (settings.secretMode || resumed) {
      // A resumed session's key was admitted before, with what it may serve.
      this.admit(link, now, resumed === undefined ? undefined : this.stillPermitted(resumed));
      return;
    }
    // "Busy" is only ever told to a peer whose key is admitted (admit() checks): a stranger learns
    // nothing about who is connected, and an unknown key is judged on its own.
    link.enter("ask-host");
    link.handshakeDeadline = undefined; // the host may ask a human: no deadline
    const { id: conn, peer, source, peerKey: publicKey } = link;
    const mappings = this.asked(link).map((mappingId) => settings.mappingNames[mappingId]);
    out.push({ kind: "authorize-peer", conn, peer, source, publicKey, mappings });
  }

  /**
   * The host's decision on an `authorize-peer` request. A refusal with a `reason` (a key not allowed)
   * tells the peer that reason; without one it is the operator's no. An admission may name the
   * mappings the key may serve (`allowed`, by name; all when undefined).
   */
  approve(link: Link, accepted: boolean, now: number, reason?: string, allowed?: readonly string[]): void {
    const { stats, connections } = this.parts;
    if (!accepted) {
      stats.handshakeFailures++;
      if (reason) connections.close(link, CloseCode.KeyRejected, reason);
      else connections.close(link, CloseCode.Refused, "");
      return;
    }
    this.admit(link, now, this.permitted(link, allowed), allowed);
  }

  /** This side's mappings the peer on `link` pairs with: those it asks to serve. */
  private asked(link: Link): number[] {
    const { settings } = this.parts;
    const partial = (link.sharedCapabilities & Capability.Senders) !== 0;
    return settings.mappingNames
      .map((_, index) => index)
      .filter((index) => !partial || link.mappingPairs[index] !== undefined);
  }

  /** What the peer on `link` asks for, split by `allowed` (mapping names; undefined: all). */
  private permitted(link: Link, allowed: readonly string[] | undefined): Permission {
    const names = this.parts.settings.mappingNames;
    const wants = new Set<number>();
    const refused = new Map<number, string>();
    const removed = new Map<number, string>();
    for (const mappingId of this.asked(link)) {
      const name = names[mappingId];
      const gone = this.removed.get(mappingId);
      if (gone !== undefined) removed.set(mappingId, gone);
      else if (allowed === undefined || (name !== "" && allowed.includes(name))) wants.add(mappingId);
      else refused.set(mappingId, `this key may not serve mapping ${label(name, mappingId)}`);
    }
    return { wants, refused, removed };
  }

  /** A resumed session's permission as it was admitted with (its mappings removed since are removed). */
  private stillPermitted(session: PeerSession): Permission {
    return { wants: session.wants, refused: session.refused, removed: session.removed };
  }

  /**
   * Mapping `mappingId` is new on this side (added while running, or a removed one back): each
   * session with Senders whose HELLO named it is paired with it, and serves it, waits as standby, or
   * is refused it as its key allows; a peer without Senders never serves it (it pairs at its
   * handshake only). New connections' HELLOs list it.
   */
  addMapping(mappingId: number, now: number): void {
    const name = this.parts.settings.mappingNames[mappingId];
    if (mappingId === this.owners.size) this.owners.addMapping();
    this.removed.delete(mappingId);
    for (const session of this.sessions) {
      const removed = new Map(session.removed);
      removed.delete(mappingId);
      session.removed = removed;
      if (!session.partial || name === "") continue;
      let asked = false;
      for (const link of session.links) {
        const index = link.peerHello?.mappings.indexOf(name) ?? -1;
        if (index < 0) continue;
        link.mappingPairs[mappingId] = index;
        asked = true;
      }
      if (!asked) continue;
      if (session.allowed === undefined || session.allowed.includes(name)) {
        session.wants = new Set([...session.wants, mappingId]);
      } else {
        session.refused = new Map([
          ...session.refused,
          [mappingId, `this key may not serve mapping ${label(name, mappingId)}`],
        ]);
      }
    }
    this.reassign(now);
  }

  /**
   * This side no longer has mapping `mappingId` (its flows were closed by the caller): nobody serves
   * it, the peers that asked for it are told (MAPPING_STATE removed, `reason`), and a peer asking for
   * it later is told the same. A peer without Senders that pairs with it is refused (it must serve
   * every mapping).
   */
  removeMapping(mappingId: number, reason: string, now: number): void {
    this.removed.set(mappingId, reason);
    this.owners.vacate(mappingId);
    for (const session of this.sessions) {
      if (!session.wants.has(mappingId) && !session.refused.has(mappingId)) continue;
      session.wants = new Set([...session.wants].filter((id) => id !== mappingId));
      session.refused = new Map([...session.refused].filter(([id]) => id !== mappingId));
      session.removed = new Map([...session.removed, [mappingId, reason]]);
    }
    this.reassign(now);
  }

  /**
   * JOIN (§16.1): another lane for an open session. It must name the session (token), prove the
   * credentials over this connection's fresh HELLOs and the session's binding (in key mode, with the
   * key the session was admitted with), and fit under maxLanes. Every refusal says the same to the
   * peer as to a stranger: nothing about which sessions exist.
   */
  private join(link: Link, proof: Uint8Array, token: Uint8Array, now: number): void {
    const { settings, crypto, stats, totals, connections } = this.parts;
    const session =
      token.length === TOKEN_SIZE ? this.sessions.find((other) => bytesEqual(other.token, token)) : undefined;
    if (!session || !link.verifyJoin(crypto, proof, token, session.binding, session.peerKey)) {
      stats.handshakeFailures++;
      totals.joinsRefused++;
      connections.fail(link, CloseCode.AuthFailed, "cannot join: unknown session, or a proof that does not verify");
      return;
    }
    const open = session.openLanes;
    if (open >= settings.maxLanes) {
      stats.handshakeFailures++;
      totals.joinsRefused++;
      connections.fail(link, CloseCode.Busy, `the session has ${open} lanes, the most this side takes`);
      return;
    }
    link.offeredToken = token.slice();
    session.add(link);
    totals.lanesJoined++;
    link.writer.accept(link.prove(crypto, session.token, true), session.token, true);
    this.parts.opened(link, now, true, true);
    this.reassign(now);
  }

  /** The session `link`'s AUTH may resume: its token, the Resume capability, and (key mode) the same key. */
  private resumable(link: Link): PeerSession | undefined {
    if (link.offeredToken.length !== TOKEN_SIZE || (link.sharedCapabilities & Capability.Resume) === 0) return;
    return this.sessions.find(
      (session) => bytesEqual(session.token, link.offeredToken) && bytesEqual(session.peerKey, link.peerKey),
    );
  }

  /**
   * Whether `link`'s peer must wait: §7's one peer at a time for a peer without Senders (and for any
   * peer while one without it is connected), and one session per key. A session silent for longer
   * than 1.5 keepalive intervals is presumed half-open and does not count (it is replaced instead).
   */
  private refuseIfBusy(link: Link, session: PeerSession | undefined, partial: boolean, now: number): boolean {
    const { settings, stats, connections, out, peerName } = this.parts;
    const others = this.sessions.filter((other) => other !== session && other.live(now, settings.keepaliveMs));
    const sameKey = others.find((other) => !settings.secretMode && bytesEqual(other.peerKey, link.peerKey));
    // One without Senders waits for every live peer; one with it only for its own key (it may
    // arrive while one without Senders serves: it waits as standby).
    const blocking = sameKey ?? (partial ? undefined : others[0]);
    if (blocking === undefined) return false;
    stats.handshakeFailures++;
    const current = (blocking.openLink as Link).peer;
    out.log("warn", `refusing ${peerName} ${link.peer}: ${current} is connected (one ${peerName} at a time)`);
    const why = sameKey
      ? `this ${peerName}'s key is already connected (from ${current}); only one session per key`
      : `another ${peerName} is connected; only one at a time`;
    connections.close(link, CloseCode.Busy, why);
    return true;
  }

  /** Authenticated and admitted: resume the session, replace a stale one, or start afresh. */
  private admit(link: Link, now: number, permission: Permission | undefined, allowed?: readonly string[]): void {
    const { settings, crypto, connections, out, peerName } = this.parts;
    const partial = (link.sharedCapabilities & Capability.Senders) !== 0;
    const what = permission ?? this.permitted(link, undefined);
    if (what.wants.size === 0 || (!partial && what.refused.size + what.removed.size > 0)) {
      this.parts.stats.handshakeFailures++;
      const ids = [...what.refused.keys(), ...what.removed.keys()].sort((a, b) => a - b);
      const refused = ids.map((id) => label(settings.mappingNames[id], id)).join(", ");
      out.log("warn", `refusing ${peerName} ${link.peer}: its key may not serve ${refused}`);
      connections.close(link, CloseCode.KeyRejected, `this key may not serve mapping(s) ${refused}`);
      return;
    }
    let session = this.resumable(link);
    if (this.refuseIfBusy(link, session, partial, now)) return;
    // Sessions this one replaces, all found stale above: §7's peer (whichever key) for a peer
    // without Senders; else an earlier session of the same key (a restarted peer), or a stale one
    // without Senders (as §7 would have it replaced).
    for (const other of [...this.sessions]) {
      if (other === session) continue;
      const sameKey = !settings.secretMode && bytesEqual(other.peerKey, link.peerKey);
      const stale = !other.live(now, settings.keepaliveMs);
      if (!partial || sameKey || (!other.partial && stale)) this.replace(other, link);
    }
    const resumed = session !== undefined;
    for (const earlier of session?.links ?? []) {
      if (earlier === link || earlier.state === "closed") continue;
      out.log("info", `${peerName} ${link.peer} takes over from the earlier connection ${earlier.peer}`);
      connections.close(earlier, CloseCode.Replaced, "replaced by a newer connection");
    }
    if (session === undefined) {
      session = new PeerSession(crypto.randomBytes(TOKEN_SIZE), link.peerKey, partial, settings, this.parts.totals);
      this.sessions.push(session);
    }
    session.source = link.source;
    session.wants = what.wants;
    session.refused = what.refused;
    session.removed = what.removed;
    if (!resumed) session.allowed = allowed;
    session.told.clear(); // a new connection: the peer is told everything again
    session.add(link);
    const proof = link.prove(crypto, session.token, resumed);
    if (!resumed) session.binding = proof;
    link.writer.accept(proof, session.token, resumed);
    this.parts.opened(link, now, resumed);
    this.reassign(now);
  }

  /** `other`'s connections are closed and it ends: a newer session of its peer (or §7) takes its place. */
  private replace(other: PeerSession, by: Link): void {
    const { connections, out, peerName } = this.parts;
    for (const earlier of other.links) {
      if (earlier.state === "closed") continue;
      out.log("info", `${peerName} ${by.peer} takes over from the earlier connection ${earlier.peer}`);
      connections.close(earlier, CloseCode.Replaced, "replaced by a newer connection");
    }
    this.end(other, (count) => `dropping ${count} of the previous ${peerName}`);
  }

  /**
   * Mappings whose session has no open connection go to a standby session that has one; every
   * partial session hears what changed for it (MAPPING_STATE), before the flows that move follow.
   */
  reassign(now: number): void {
    const { out, peerName, owner, connections } = this.parts;
    const handovers = this.owners.assign(this.sessions);
    for (const { mappingId, from, to } of handovers) {
      if (from === undefined) continue;
      const name = label(this.parts.settings.mappingNames[mappingId], mappingId);
      const count = owner.flowCount(mappingId);
      out.log(
        "info",
        `mapping ${name}: ${peerName} ${(to.openLink as Link).peer} takes over from ${from.peer} (${flows(count)} moved)`,
      );
    }
    for (const session of this.sessions) {
      const link = session.openLink;
      if (!session.partial || link === undefined) continue;
      const entries = this.owners.news(session);
      if (entries.length === 0) continue;
      link.writer.mappingState(entries);
      connections.notify(link);
    }
    for (const { mappingId, from, to } of handovers) if (from !== undefined) owner.mappingMoved(mappingId, to, now);
  }

  /** The session's last connection is gone: kept for the grace period, or ended on a goodbye. */
  lost(session: PeerSession, link: Link, now: number): void {
    const { settings, out, owner, peerName } = this.parts;
    if (link.peerCloseCode === CloseCode.Normal) {
      // A deliberate goodbye (the peer shut down): nobody will resume this session.
      this.end(session, (count) => `the ${peerName} said goodbye: closing ${count}`);
      this.reassign(now);
      return;
    }
    session.lostAt = now;
    this.reassign(now);
    const count = this.owners.servedBy(session).reduce((sum, mappingId) => sum + owner.flowCount(mappingId), 0);
    if (count > 0 && settings.resumeGraceMs > 0) {
      out.log("info", `keeping ${flows(count)} for ${settings.resumeGraceMs / 1000} s in case the connection resumes`);
    }
  }

  /**
   * Forgets `session`: the flows of the mappings it served are dropped (no FLOW_CLOSE: its peer is
   * gone), and a standby with an open connection takes those mappings.
   */
  private end(session: PeerSession, line: (count: string) => string): void {
    const { owner, out } = this.parts;
    const released = this.owners.release(session);
    const count = released.reduce((sum, mappingId) => sum + owner.flowCount(mappingId), 0);
    if (count > 0) out.log("info", line(flows(count)));
    for (const mappingId of released) owner.dropFlows(mappingId);
    this.sessions = this.sessions.filter((other) => other !== session);
    for (const link of session.links) link.session = undefined;
  }

  /** Ends sessions whose peer did not come back in time; hands over mappings of closed connections. */
  tick(now: number): void {
    for (const session of [...this.sessions]) {
      if (session.links.length > 0 || session.lostAt === undefined || now < this.expiry(session)) continue;
      this.end(session, (count) => `no resume in time: dropping ${count}`);
    }
    this.reassign(now);
  }

  nextTimeout(): number | undefined {
    let next: number | undefined;
    for (const session of this.sessions) {
      if (session.links.length > 0 || session.lostAt === undefined) continue;
      const expiry = this.expiry(session);
      if (next === undefined || expiry < next) next = expiry;
    }
    return next;
  }

  /**
   * The host no longer admits some keys (they left its authorized keys at a reload). Each session whose
   * key `refusal` gives a reason for (told to the peer) ends at once: CLOSE(11) on its connections, its
   * flows dropped, nothing left to resume — a key admitted once must not stay in by resuming — and a
   * standby takes its mappings. A session in its grace period goes the same way. Key mode only.
   * Returns how many sessions ended; the host, which knows why, logs it.
   */
  withdraw(refusal: (publicKey: Uint8Array, source: string) => string | undefined, now: number): number {
    const { settings, connections, peerName } = this.parts;
    if (settings.secretMode) return 0;
    let ended = 0;
    for (const session of [...this.sessions]) {
      if (session.source === undefined) continue;
      const reason = refusal(session.peerKey, session.source);
      if (reason === undefined) continue;
      for (const link of session.links) {
        if (link.state !== "closed") connections.close(link, CloseCode.KeyRejected, reason);
      }
      this.end(session, (count) => `dropping ${count} of a ${peerName} whose key is no longer admitted`);
      ended++;
    }
    if (ended > 0) this.reassign(now);
    return ended;
  }

  /** Every session ends (shutdown): flows are dropped. */
  endAll(): void {
    this.parts.owner.dropFlows();
    for (const session of this.sessions) this.owners.release(session);
    this.sessions = [];
  }

  private expiry(session: PeerSession): number {
    return (session.lostAt as number) + this.parts.settings.resumeGraceMs;
  }
}

interface Permission {
  wants: ReadonlySet<number>;
  refused: ReadonlyMap<number, string>;
  removed: ReadonlyMap<number, string>;
}

/** A mapping as a log line or a reason names it: its name quoted, or its position. */
export function label(name: string | undefined, mappingId: number): string {
  return name ? peerWord(name) : `#${mappingId + 1}`;
}
