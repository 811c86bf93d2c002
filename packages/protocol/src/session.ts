/**
 * The connection side of a machine, by TCP side rather than by role: either role may accept TCP or dial
 * it (ssh -R as the original: the receiver accepts; ssh -L as udp-over-tcp: the sender accepts).
 *
 * The acceptor (acceptor.ts) verifies whoever dials in, admits peers — several senders on one
 * receiver, each serving its mappings (§18) — and issues session tokens; the dialer (here) proves
 * itself, checks the acceptor's key (at its HELLO, as ssh checks the host key first) and proof, and
 * offers the token again on reconnect. A session (peer-session.ts) belongs to one authenticated peer
 * and outlives its connections for the resume grace period, so flows (and the target-side UDP
 * sockets) survive a reconnect.
 *
 * Sans-I/O: the host feeds bytes and the time, drains outputs, takes coalesced bytes with
 * takeTransmit(). Nothing here reads a clock, opens a socket or sets a timer.
 */
import { Acceptor, type SessionOwner } from "./acceptor.js";
import { bytesEqual } from "./bytes.js";
import type { Settings } from "./config.js";
import { type LinkIo, LinkTable } from "./connections.js";
import { checkPeerHello, flows, unexpected } from "./handshake.js";
import { unpairedNames } from "./mappings.js";
import { Capability, CloseCode, type Frame, FrameType, ProtocolError, Role } from "./frames.js";
import type { LaneInfo } from "./lanes.js";
import type { CryptoProvider, Link } from "./link.js";
import type { OutputSink } from "./outputs.js";
import { PeerSession } from "./peer-session.js";
import type { LaneTotals, Stats } from "./stats.js";

export type { SessionOwner } from "./acceptor.js";

/** What this side announces: Resume always; Lanes when it would use them (dialing several, or accepting several). */
function capabilitiesOf(settings: Settings, role: Role, side: "acceptor" | "dialer"): number {
  const lanes = side === "dialer" ? settings.lanes > 1 : settings.maxLanes > 1;
  // Sequenced (SDATA) and Redundant only matter with lanes: a side without them announces Resume alone.
  // Senders (§18): a receiver that accepts senders, and a sender that dials one, in key mode (a
  // shared secret does not tell senders apart).
  const receiverAccepts = side === "acceptor" && role === Role.Receiver;
  const senderDials = side === "dialer" && role === Role.Sender;
  const senders = !settings.secretMode && (receiverAccepts || senderDials) ? Capability.Senders : 0;
  if (!lanes) return Capability.Resume | senders;
  return (
    Capability.Resume |
    Capability.Lanes |
    Capability.Sequenced |
    (settings.redundant ? Capability.Redundant : 0) |
    senders
  );
}

export class Session implements LinkIo {
  readonly connections: LinkTable;
  /** The accepting side's sessions (empty on a dialer). */
  readonly acceptor: Acceptor;
  /** The dialer's session, once accepted. */
  private dialed: PeerSession | undefined;
  /** The dialer's connection attempts still in their handshake. */
  private readonly dialing = new Set<Link>();
  /** What the other side is ("sender" or "receiver"), for log lines and reasons. */
  readonly peerName: string;

  constructor(
    readonly role: Role,
    private readonly settings: Settings,
    private readonly crypto: CryptoProvider,
    private readonly stats: Stats,
    private readonly out: OutputSink,
    private readonly owner: SessionOwner,
    private readonly totals: LaneTotals,
  ) {
    this.peerName = role === Role.Receiver ? "sender" : "receiver";
    this.connections = new LinkTable(settings, stats, out, this, totals);
    this.acceptor = new Acceptor({
      role,
      settings,
      crypto,
      stats,
      out,
      owner,
      totals,
      connections: this.connections,
      peerName: this.peerName,
      opened: (link, now, resumed, lane) => this.opened(link, now, resumed, lane),
    });
  }

  /** Every session: the acceptor's, or the dialer's one. */
  private get sessions(): readonly PeerSession[] {
    return this.dialed ? [this.dialed] : this.acceptor.all;
  }

  /** True while an admitted peer is connected. */
  get peerConnected(): boolean {
    return this.openLink !== undefined;
  }

  /** Whether some admitted peer is connected and was heard from lately. */
  anyPeerLive(now: number): boolean {
    return this.dialed ? this.dialed.live(now, this.settings.keepaliveMs) : this.acceptor.anyLive(now);
  }

  /** The session that carries mapping `mappingId`'s flows: the dialer's, or the one serving it. */
  sessionFor(mappingId: number): PeerSession | undefined {
    return this.dialed ?? this.acceptor.sessionFor(mappingId);
  }

  /**
   * Whether a frame on `link` may name a flow of mapping `mappingId`: always on a dialer (one
   * session); on the acceptor only for the session serving the mapping (§18).
   */
  serves(link: Link, mappingId: number): boolean {
    return link.side === "dialer" || this.acceptor.serves(link, mappingId);
  }

  /** Every admitted session, for status lines and metrics. */
  peers(): readonly PeerSession[] {
    return this.sessions;
  }

  /**
   * Mapping `mappingId` is gone from this side (§18: MAPPING_STATE removed to the peers that asked for
   * it); the caller closed its flows first.
   */
  removeMapping(mappingId: number, reason: string, now: number): void {
    this.acceptor.removeMapping(mappingId, reason, now);
  }

  /** Mapping `mappingId` is new on this side (added, or back): the sessions that can serve it are told (§18). */
  addMapping(mappingId: number, now: number): void {
    this.acceptor.addMapping(mappingId, now);
  }

  /** The mappings `peer` serves (by this side's index); every mapping for the dialer's session. */
  servedBy(peer: PeerSession): number[] {
    if (peer === this.dialed) return this.settings.mappingNames.map((_, index) => index);
    return this.acceptor.owners.servedBy(peer);
  }

  // ---- the host's connection inputs (the connection table does the work) ----

  /** Bytes arrived on connection `conn`. */
  receive(conn: number, bytes: Uint8Array, now: number): void {
    this.connections.receive(conn, bytes, now);
  }

  /** The TCP connection `conn` is gone (closed by either side or failed). */
  disconnected(conn: number, now: number): void {
    this.connections.disconnected(conn, now);
  }

  /** The transport's write buffer for `conn` is full (true) or drained (false). */
  setBlocked(conn: number, blocked: boolean): void {
    this.connections.setBlocked(conn, blocked);
  }

  /** Bytes to write to connection `conn` (all frames since the last take, as one buffer). */
  takeTransmit(conn: number): Uint8Array | undefined {
    return this.connections.takeTransmit(conn);
  }

  /** The bytes takeTransmit(conn) returned were copied out and are not referenced: reuse their memory. */
  transmitCopied(conn: number): void {
    this.connections.transmitCopied(conn);
  }

  /** Connections currently known, for status displays. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Tells the peer serving mapping `mappingId` that its flow `flowId` closed, if it is connected. */
  tellFlowClosed(flowId: number, mappingId: number, reason: number): void {
    const link = this.sessionFor(mappingId)?.openLink;
    if (!link) return;
    link.writer.flowClose(flowId, reason);
    this.connections.notify(link);
  }

  /**
   * Where the connection side stands, for status displays: "open" (a peer is admitted), "waiting"
   * (this dialer proved itself and waits for the acceptor's decision, perhaps its operator's),
   * "connecting" (a handshake is under way), or "down".
   */
  get phase(): "open" | "waiting" | "connecting" | "down" {
    if (this.openLink) return "open";
    for (const link of this.dialing) {
      if (link.state === "auth" && link.handshakeDeadline === undefined) return "waiting";
    }
    return this.connections.pendingCount("").pending > 0 ? "connecting" : "down";
  }

  /** The first open connection of any session. */
  get openLink(): Link | undefined {
    for (const session of this.sessions) {
      const link = session.openLink;
      if (link) return link;
    }
    return undefined;
  }

  /**
   * False when the session's open lane is to a peer that takes no lanes (its HELLO lacks Lanes): a
   * dialer then keeps one connection. True while unknown (no lane open).
   */
  get peerTakesLanes(): boolean {
    const link = this.openLink;
    return link === undefined || (link.sharedCapabilities & Capability.Lanes) !== 0;
  }

  /** Lanes the dialer keeps (settings.lanes); the acceptor takes up to settings.maxLanes. */
  get lanesWanted(): number {
    return this.settings.lanes;
  }

  /** Every connection of every session, for status lines and metrics. */
  lanes(): LaneInfo[] {
    return this.sessions.flatMap((session) => session.picker.info());
  }

  // ---- the accepting side (acceptor.ts does the work) ----

  /**
   * A TCP connection was accepted from `peer` (address:port, for log lines); `source` is its IP address,
   * which bounds how many unauthenticated connections one host may hold open.
   */
  accept(conn: number, peer: string, now: number, source = peer): void {
    const { pending, fromSource } = this.connections.pendingCount(source);
    const link = this.connections.open(
      conn,
      peer,
      "acceptor",
      this.role,
      capabilitiesOf(this.settings, this.role, "acceptor"),
      now,
      this.crypto,
    );
    link.source = source;
    if (pending >= this.settings.maxPending) {
      this.stats.handshakeFailures++;
      this.connections.fail(link, CloseCode.Busy, `too many unauthenticated connections (${pending})`);
    } else if (fromSource >= this.settings.maxPendingPerSource) {
      this.stats.handshakeFailures++;
      this.connections.fail(
        link,
        CloseCode.Busy,
        `too many unauthenticated connections from ${source} (${fromSource})`,
      );
    }
  }

  /** Whether connection `conn` still waits for a decision (it may have gone away meanwhile). */
  awaitingApproval(conn: number): boolean {
    return this.connections.get(conn)?.state === "approval";
  }

  /**
   * The decision on an `authorize-peer` request. A refusal with a `reason` (a key not allowed) tells
   * the peer that reason (the host logs its details); without one it is the operator's no. An
   * admission may restrict the mappings the key may serve (`mappings`, by name; all when undefined):
   * the others it asks for are refused (§18).
   */
  approve(conn: number, accepted: boolean, now: number, reason?: string, mappings?: readonly string[]): void {
    const link = this.connections.get(conn);
    if (!link || link.state !== "approval") return;
    this.acceptor.approve(link, accepted, now, reason, mappings);
    this.connections.notify(link);
  }

  // ---- the dialing side ----

  /**
   * The TCP connection to the peer is up. Several may be (lanes): while the session has an open
   * lane, a new connection joins it (JOIN); otherwise it authenticates (AUTH, offering the token).
   */
  dial(conn: number, peer: string, now: number): void {
    if (this.connections.get(conn) !== undefined) throw new Error(`dial: connection ${conn} is already known`);
    if (this.connections.count((link) => link.side === "dialer") >= this.settings.lanes) {
      const lanes = this.settings.lanes;
      throw new Error(
        `dial: ${lanes === 1 ? "the previous connection was" : `${lanes} connections were`} not reported disconnected`,
      );
    }
    const capabilities = capabilitiesOf(this.settings, this.role, "dialer");
    this.dialing.add(this.connections.open(conn, peer, "dialer", this.role, capabilities, now, this.crypto));
  }

  private dialerHandshake(link: Link, frame: Frame, now: number): void {
    if (link.state === "hello") return this.dialerHello(link, frame);
    if (frame.type !== FrameType.Accept) throw unexpected(frame, "ACCEPT");
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token, frame.resumed)) {
      this.stats.handshakeFailures++;
      const why = this.settings.secretMode
        ? `the ${this.peerName} could not prove the shared secret (wrong secret, or an impostor)`
        : `the ${this.peerName}'s signature does not match the key it announced (an impostor?)`;
      this.connections.fail(link, CloseCode.AuthFailed, why);
      return;
    }
    if (this.refuseKey(link, true)) return;
    if (frame.resumed && link.offeredToken.length === 0) {
      throw new ProtocolError("bad-resume", "ACCEPT claims a resumed session that was never offered");
    }
    this.dialing.delete(link);
    if (link.joining) return this.joined(link, frame.token, frame.resumed, now);
    if (!frame.resumed) {
      const count = this.owner.flowCount();
      if (count > 0)
        this.out.log("info", `the ${this.peerName} started a new session: closing ${flows(count)} of the old one`);
      this.owner.dropFlows();
    }
    const previous = this.dialed;
    // The acceptor replaced every other lane of ours (§7); they are closing.
    for (const other of previous?.links ?? [])
      if (other !== link) this.connections.close(other, CloseCode.Replaced, "");
    const partial = (link.sharedCapabilities & Capability.Senders) !== 0;
    const session = new PeerSession(frame.token.slice(), link.peerKey, partial, this.settings, this.totals);
    // A resumed session keeps its binding; a new one is bound to this ACCEPT's proof.
    session.binding = frame.resumed && previous ? previous.binding : frame.proof.slice();
    this.dialed = session;
    session.add(link);
    this.opened(link, now, frame.resumed);
  }

  /** Dialer: the acceptor took this connection as another lane of the session. */
  private joined(link: Link, token: Uint8Array, resumed: boolean, now: number): void {
    const session = this.dialed;
    if (!resumed || !session || !bytesEqual(session.token, token)) {
      throw new ProtocolError("bad-join", "ACCEPT of a JOIN names another session, or a new one");
    }
    session.add(link);
    this.totals.lanesJoined++;
    this.opened(link, now, true, true);
  }

  /** The acceptor's HELLO: its key is checked against the pin before this side proves anything. */
  private dialerHello(link: Link, frame: Frame): void {
    checkPeerHello(link, frame, this.settings, this.role);
    link.enter("peer-hello");
    if (this.refuseKey(link, false)) return;
    const unserved = this.role === Role.Sender ? unpairedNames(this.settings.mappingNames, link.mappingPairs) : [];
    if (unserved.length > 0 && !link.joining && this.dialed === undefined) {
      const names = unserved.map((name) => (name ? name : "#?")).join(", ");
      this.out.log("warn", `the receiver has no mapping ${names}: not served through it`);
    }
    const session = this.dialed;
    const lanes = (link.sharedCapabilities & Capability.Lanes) !== 0;
    const live = session !== undefined && session.links.some((other) => other.state === "open");
    if (live && !lanes) {
      // An acceptor that takes one connection per session: AUTH would replace the open lane.
      this.connections.close(link, CloseCode.Busy, "this side keeps one connection: the peer takes no lanes");
      return;
    }
    if (live && session !== undefined) {
      link.joining = true;
      link.offeredToken = session.token;
      link.writer.join(link.proveJoin(this.crypto, session.token, session.binding), session.token);
    } else {
      const resume = (link.sharedCapabilities & Capability.Resume) !== 0 && session !== undefined;
      link.offeredToken = resume ? session.token : new Uint8Array(0);
      link.writer.auth(link.prove(this.crypto, link.offeredToken), link.offeredToken);
    }
    // In key mode the acceptor's operator may be asked about this key: wait as long as that takes.
    if (!this.settings.secretMode) link.handshakeDeadline = undefined;
  }

  /** Key mode: asks the host whether the acceptor's key is the one expected; closes if not. */
  private refuseKey(link: Link, proven: boolean): boolean {
    const check = this.settings.checkPeerKey;
    const refusal = this.settings.secretMode || !check ? undefined : check(link.peerKey, link.peer, proven);
    if (refusal === undefined) return false;
    this.stats.handshakeFailures++;
    this.connections.close(link, CloseCode.KeyRejected, refusal); // the host logs why, once
    return true;
  }

  // ---- both ----

  private opened(link: Link, now: number, resumed: boolean, lane = false): void {
    link.markOpen(now, this.settings.keepaliveMs);
    link.session?.picker.lanesChanged();
    this.stats.accepted++;
    const name = this.peerName;
    const what = link.side === "acceptor" ? `${name} ${link.peer} accepted` : `accepted by ${name} ${link.peer}`;
    const lanes = link.session?.openLanes ?? 1;
    const how = lane ? ` (lane ${lanes} of the session)` : resumed ? ` (resumed ${flows(this.owner.flowCount())})` : "";
    this.out.log("info", `${what}${how}`);
    this.out.push({ kind: "accepted", conn: link.id, peer: link.peer, resumed });
    this.connections.notify(link);
  }

  /** LinkIo: a frame of a connection still in its handshake. */
  handshakeFrame(link: Link, frame: Frame, now: number): void {
    if (link.side === "acceptor") this.acceptor.handshake(link, frame, now);
    else this.dialerHandshake(link, frame, now);
  }

  /** LinkIo: a frame of an open connection. */
  openFrame(link: Link, frame: Frame, now: number): void {
    this.owner.frame(link, frame, now);
  }

  /** LinkIo: a queued datagram waited too long. */
  stale(flowId: number): void {
    this.owner.stale(flowId);
  }

  /** LinkIo: the connection is gone (reported by the host). */
  gone(link: Link, now: number): void {
    this.dialing.delete(link);
    const session = link.session;
    // Only a connection of a session starts its grace period, including one already "closed"
    // (CLOSE received, keepalive timeout) before the host reported it. A failed attempt to reconnect
    // (never the session's) does not restart it.
    if (!session || !session.links.includes(link)) return;
    session.remove(link);
    if (session.links.length > 0) return;
    if (this.openLink === undefined) this.stats.rttMs = undefined; // no connection: a stale figure would mislead
    if (link.side === "acceptor") return this.acceptor.lost(session, link, now);
    if (link.peerCloseCode === CloseCode.Normal) {
      // A deliberate goodbye (the peer shut down): nobody will resume this session.
      const count = this.owner.flowCount();
      if (count > 0) this.out.log("info", `the ${this.peerName} said goodbye: closing ${flows(count)}`);
      this.owner.dropFlows();
      this.dialed = undefined;
      return;
    }
    session.lostAt = now;
    const count = this.owner.flowCount();
    if (count > 0 && this.settings.resumeGraceMs > 0) {
      this.out.log(
        "info",
        `keeping ${flows(count)} for ${this.settings.resumeGraceMs / 1000} s in case the connection resumes`,
      );
    }
  }

  /** Ends the sessions of keys this side no longer admits (a reload); see Acceptor.withdraw. */
  withdraw(refusal: (publicKey: Uint8Array, source: string) => string | undefined, now: number): number {
    return this.acceptor.withdraw(refusal, now);
  }

  /** Says goodbye on every connection and forgets the sessions (their flows are dropped). */
  closeAll(reason: string): void {
    this.connections.closeAll(reason);
    this.owner.dropFlows();
    this.acceptor.endAll();
    this.dialed = undefined;
  }

  /** Runs the connections' timers, ends sessions whose peer did not come back in time. */
  tick(now: number): void {
    this.connections.tick(now);
    this.acceptor.tick(now);
    const session = this.dialed;
    if (session && session.links.length === 0 && session.lostAt !== undefined && now >= this.resumeExpiry(session)) {
      const count = this.owner.flowCount();
      if (count > 0) this.out.log("info", `no resume in time: dropping ${flows(count)}`);
      this.owner.dropFlows();
      this.dialed = undefined;
    }
  }

  nextTimeout(): number | undefined {
    let next = this.connections.nextTimeout();
    const accepted = this.acceptor.nextTimeout();
    if (accepted !== undefined && (next === undefined || accepted < next)) next = accepted;
    const session = this.dialed;
    if (!session || session.links.length > 0 || session.lostAt === undefined) return next;
    const expiry = this.resumeExpiry(session);
    return next === undefined || expiry < next ? expiry : next;
  }

  private resumeExpiry(session: PeerSession): number {
    return (session.lostAt as number) + this.settings.resumeGraceMs;
  }
}
