/**
 * The connection side of a machine, by TCP side rather than by role: either role may accept TCP or dial
 * it (ssh -R as the original: the receiver accepts; ssh -L as udp-over-tcp: the sender accepts).
 *
 * The acceptor verifies whoever dials in, admits one peer at a time and issues the session token; the
 * dialer proves itself, checks the acceptor's key (at its HELLO, as ssh checks the host key first) and
 * proof, and offers the token again on reconnect. A session belongs to one authenticated peer and
 * outlives its connections for the resume grace period, so flows (and the target-side UDP sockets)
 * survive a reconnect. It holds a list of connections so that one peer may later hold several.
 *
 * Sans-I/O: the host feeds bytes and the time, drains outputs, takes coalesced bytes with
 * takeTransmit(). Nothing here reads a clock, opens a socket or sets a timer.
 */
import { bytesEqual } from "./bytes.js";
import type { Settings } from "./config.js";
import { type LinkIo, LinkTable } from "./connections.js";
import { acceptorHelloStep, checkPeerHello, flows, unexpected } from "./handshake.js";
import { Capability, CloseCode, type Frame, FrameType, ProtocolError, Role, TOKEN_SIZE } from "./frames.js";
import { type LaneInfo, LanePicker } from "./lanes.js";
import type { CryptoProvider, Link } from "./link.js";
import type { OutputSink } from "./outputs.js";
import type { LaneTotals, Stats } from "./stats.js";

/** What this side announces: Resume always; Lanes when it would use them (dialing several, or accepting several). */
function capabilitiesOf(settings: Settings, side: "acceptor" | "dialer"): number {
  const lanes = side === "dialer" ? settings.lanes > 1 : settings.maxLanes > 1;
  // Sequenced (SDATA) and Redundant only matter with lanes: a side without them announces Resume alone.
  if (!lanes) return Capability.Resume;
  return Capability.Resume | Capability.Lanes | Capability.Sequenced | (settings.redundant ? Capability.Redundant : 0);
}

/** What the session needs from the machine that owns it: its flows. */
export interface SessionOwner {
  /** A frame on an open connection that the session does not handle itself (DATA, FLOW_*). */
  frame(link: Link, frame: Frame, now: number): void;
  /** The peer's flows are gone: a new session started (not a resume), or the old one ended for good. */
  dropAllFlows(): void;
  readonly flowCount: number;
  /** A queued datagram of flow `flowId` was dropped for waiting too long (--max-delay). */
  stale(flowId: number): void;
}

interface PeerSession {
  /** Issued by the acceptor; offered back by the dialer to resume. */
  token: Uint8Array;
  /** The peer's key (key mode): only the same key may resume. */
  peerKey: Uint8Array;
  /** The peer's connections, open or still closing. */
  links: Link[];
  /** When the last connection was lost; flows are kept until lostAt + resumeGraceMs. */
  lostAt: number | undefined;
  /**
   * The acceptor's proof in the ACCEPT that started the session (not a resumed one): what a JOIN
   * proof is bound to (§16.1).
   */
  binding: Uint8Array;
  /** The IP address the peer connected from, when this side accepted it (it admitted the key). */
  source?: string;
}

export class Session implements LinkIo {
  readonly connections: LinkTable;
  private peer: PeerSession | undefined;
  /** The dialer's connection attempts still in their handshake. */
  private readonly dialing = new Set<Link>();
  /** Which lane each datagram goes out on (§16.3, §17). */
  readonly picker: LanePicker;
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
    this.picker = new LanePicker(() => this.peer?.links ?? [], settings, totals);
  }

  /** True while an admitted peer is connected. */
  get peerConnected(): boolean {
    return this.openLink !== undefined;
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

  /** Connections currently known, for status displays. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Tells the peer that flow `flowId` closed, if a connection is open. */
  tellFlowClosed(flowId: number, reason: number): void {
    const link = this.openLink;
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

  /** The session's first open connection (control frames that belong to no flow go there). */
  get openLink(): Link | undefined {
    for (const link of this.peer?.links ?? []) if (link.state === "open") return link;
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

  /** Every connection of the session, for status lines and metrics. */
  lanes(): LaneInfo[] {
    return this.picker.info();
  }

  // ---- the accepting side ----

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
      capabilitiesOf(this.settings, "acceptor"),
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
   * the peer that reason (the host logs its details); without one it is the operator's no.
   */
  approve(conn: number, accepted: boolean, now: number, reason?: string): void {
    const link = this.connections.get(conn);
    if (!link || link.state !== "approval") return;
    if (accepted) {
      this.admit(link, now);
      this.connections.notify(link);
      return;
    }
    this.stats.handshakeFailures++;
    if (reason) this.connections.close(link, CloseCode.KeyRejected, reason);
    else this.connections.close(link, CloseCode.Refused, "");
  }

  private acceptorHandshake(link: Link, frame: Frame, now: number): void {
    if (acceptorHelloStep(link, frame, this.settings, this.role)) return;
    if (frame.type === FrameType.Join && (link.sharedCapabilities & Capability.Lanes) !== 0) {
      return this.acceptJoin(link, frame.proof, frame.token, now);
    }
    if (frame.type !== FrameType.Auth) throw unexpected(frame, "AUTH");
    link.offeredToken = frame.token.slice();
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token)) {
      this.stats.handshakeFailures++;
      const why = this.settings.secretMode
        ? "wrong shared secret"
        : `the ${this.peerName}'s signature does not match the key it announced`;
      this.connections.fail(link, CloseCode.AuthFailed, why);
      return;
    }
    if (this.settings.secretMode || this.canResume(link)) {
      this.admit(link, now); // a resumed session's key was admitted before
      return;
    }
    // "Busy" is only ever told to a peer whose key is admitted (admit() checks): a stranger learns
    // nothing about who is connected, and an unknown key is judged on its own.
    link.enter("ask-host");
    link.handshakeDeadline = undefined; // the host may ask a human: no deadline
    const { id: conn, peer, source, peerKey: publicKey } = link;
    this.out.push({ kind: "authorize-peer", conn, peer, source, publicKey });
  }

  /**
   * JOIN (§16.1): another lane for the open session. It must name the session (token), prove the
   * credentials over this connection's fresh HELLOs and the session's binding (in key mode, with the
   * key the session was admitted with), and fit under maxLanes. Every refusal says the same to the
   * peer as to a stranger: nothing about which sessions exist.
   */
  private acceptJoin(link: Link, proof: Uint8Array, token: Uint8Array, now: number): void {
    const session = this.peer;
    const named = session !== undefined && token.length === TOKEN_SIZE && bytesEqual(session.token, token);
    if (!session || !named || !link.verifyJoin(this.crypto, proof, token, session.binding, session.peerKey)) {
      this.stats.handshakeFailures++;
      this.totals.joinsRefused++;
      this.connections.fail(
        link,
        CloseCode.AuthFailed,
        "cannot join: unknown session, or a proof that does not verify",
      );
      return;
    }
    const open = session.links.filter((other) => other.state === "open").length;
    if (open >= this.settings.maxLanes) {
      this.stats.handshakeFailures++;
      this.totals.joinsRefused++;
      this.connections.fail(link, CloseCode.Busy, `the session has ${open} lanes, the most this side takes`);
      return;
    }
    link.offeredToken = token.slice();
    session.links.push(link);
    session.lostAt = undefined;
    this.totals.lanesJoined++;
    link.writer.accept(link.prove(this.crypto, session.token, true), session.token, true);
    this.opened(link, now, true, true);
  }

  private canResume(link: Link): boolean {
    const session = this.peer;
    if (!session || link.offeredToken.length !== TOKEN_SIZE) return false;
    if ((link.sharedCapabilities & Capability.Resume) === 0) return false;
    return bytesEqual(session.token, link.offeredToken) && bytesEqual(session.peerKey, link.peerKey);
  }

  /**
   * One peer at a time. A connected peer silent for longer than its keepalive interval is presumed
   * half-open (its host vanished), so a newly authenticated peer may replace it instead of being
   * locked out until the keepalive timeout.
   */
  private refuseIfBusy(link: Link, now: number): boolean {
    const current = this.openLink;
    if (!current || current === link) return false;
    if (now - current.lastReceived > this.settings.keepaliveMs * 1.5) return false;
    this.stats.handshakeFailures++;
    const name = this.peerName;
    this.out.log("warn", `refusing ${name} ${link.peer}: ${current.peer} is connected (one ${name} at a time)`);
    this.connections.close(link, CloseCode.Busy, `another ${name} is connected; only one at a time`);
    return true;
  }

  /** Authenticated: resume the session, replace a stale connection of the same peer, or start afresh. */
  private admit(link: Link, now: number): void {
    const resumed = this.canResume(link);
    if (!resumed && this.refuseIfBusy(link, now)) return;
    for (const earlier of this.peer?.links ?? []) {
      if (earlier === link || earlier.state === "closed") continue;
      this.out.log("info", `${this.peerName} ${link.peer} takes over from the earlier connection ${earlier.peer}`);
      this.connections.close(earlier, CloseCode.Replaced, "replaced by a newer connection");
    }
    if (resumed && this.peer) {
      this.peer.links = [link];
      this.peer.lostAt = undefined;
    } else {
      const count = this.owner.flowCount;
      if (count > 0) this.out.log("info", `dropping ${flows(count)} of the previous ${this.peerName}`);
      this.owner.dropAllFlows();
      this.peer = {
        token: this.crypto.randomBytes(TOKEN_SIZE),
        peerKey: link.peerKey,
        links: [link],
        lostAt: undefined,
        binding: new Uint8Array(0),
        source: link.source,
      };
    }
    const token = this.peer.token;
    const proof = link.prove(this.crypto, token, resumed);
    if (!resumed) this.peer.binding = proof;
    link.writer.accept(proof, token, resumed);
    this.opened(link, now, resumed);
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
    const capabilities = capabilitiesOf(this.settings, "dialer");
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
      const count = this.owner.flowCount;
      if (count > 0)
        this.out.log("info", `the ${this.peerName} started a new session: closing ${flows(count)} of the old one`);
      this.owner.dropAllFlows();
    }
    const previous = this.peer;
    // A resumed session keeps its binding; a new one is bound to this ACCEPT's proof.
    const binding = frame.resumed && previous ? previous.binding : frame.proof.slice();
    // The acceptor replaced every other lane of ours (§7); they are closing.
    for (const other of previous?.links ?? [])
      if (other !== link) this.connections.close(other, CloseCode.Replaced, "");
    this.peer = { token: frame.token.slice(), peerKey: link.peerKey, links: [link], lostAt: undefined, binding };
    this.opened(link, now, frame.resumed);
  }

  /** Dialer: the acceptor took this connection as another lane of the session. */
  private joined(link: Link, token: Uint8Array, resumed: boolean, now: number): void {
    const session = this.peer;
    if (!resumed || !session || !bytesEqual(session.token, token)) {
      throw new ProtocolError("bad-join", "ACCEPT of a JOIN names another session, or a new one");
    }
    session.links.push(link);
    session.lostAt = undefined;
    this.totals.lanesJoined++;
    this.opened(link, now, true, true);
  }

  /** The acceptor's HELLO: its key is checked against the pin before this side proves anything. */
  private dialerHello(link: Link, frame: Frame): void {
    checkPeerHello(link, frame, this.settings, this.role);
    link.enter("peer-hello");
    if (this.refuseKey(link, false)) return;
    const session = this.peer;
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
    this.picker.lanesChanged();
    this.stats.accepted++;
    const name = this.peerName;
    const what = link.side === "acceptor" ? `${name} ${link.peer} accepted` : `accepted by ${name} ${link.peer}`;
    const lanes = this.peer?.links.filter((other) => other.state === "open").length ?? 1;
    const how = lane ? ` (lane ${lanes} of the session)` : resumed ? ` (resumed ${flows(this.owner.flowCount)})` : "";
    this.out.log("info", `${what}${how}`);
    this.out.push({ kind: "accepted", conn: link.id, peer: link.peer, resumed });
    this.connections.notify(link);
  }

  /** LinkIo: a frame of a connection still in its handshake. */
  handshakeFrame(link: Link, frame: Frame, now: number): void {
    if (link.side === "acceptor") this.acceptorHandshake(link, frame, now);
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
    const session = this.peer;
    // Only a connection of the session starts the grace period, including one already "closed"
    // (CLOSE received, keepalive timeout) before the host reported it. A failed attempt to reconnect
    // (never the session's) does not restart it.
    if (!session || !session.links.includes(link)) return;
    session.links = session.links.filter((other) => other !== link);
    this.picker.lanesChanged();
    if (session.links.length > 0) return;
    this.stats.rttMs = undefined; // no connection, no round-trip time: a stale figure would mislead
    if (link.peerCloseCode === CloseCode.Normal) {
      // A deliberate goodbye (the peer shut down): nobody will resume this session.
      const count = this.owner.flowCount;
      if (count > 0) this.out.log("info", `the ${this.peerName} said goodbye: closing ${flows(count)}`);
      this.owner.dropAllFlows();
      this.peer = undefined;
      return;
    }
    session.lostAt = now;
    const count = this.owner.flowCount;
    if (count > 0 && this.settings.resumeGraceMs > 0) {
      this.out.log(
        "info",
        `keeping ${flows(count)} for ${this.settings.resumeGraceMs / 1000} s in case the connection resumes`,
      );
    }
  }

  /**
   * The acceptor's host no longer admits some keys (they left its authorized keys at a reload). A
   * session whose key `refusal` gives a reason for (told to the peer) ends at once: CLOSE(11) on each of its
   * connections, its flows dropped, nothing left to resume — a key that was admitted once must not
   * stay in by resuming. A session in its grace period (no connection) is forgotten the same way.
   * Key mode, acceptor side only (the dialer admits nobody). Returns how many sessions ended; the
   * host, which knows why the key is no longer admitted, logs it.
   */
  withdraw(refusal: (publicKey: Uint8Array, source: string) => string | undefined): number {
    const session = this.peer;
    if (!session || this.settings.secretMode || session.source === undefined) return 0;
    const reason = refusal(session.peerKey, session.source);
    if (reason === undefined) return 0;
    for (const link of session.links) {
      if (link.state !== "closed") this.connections.close(link, CloseCode.KeyRejected, reason);
    }
    this.owner.dropAllFlows();
    this.peer = undefined;
    this.picker.lanesChanged();
    return 1;
  }

  /** Says goodbye on every connection and forgets the session (its flows are dropped). */
  closeAll(reason: string): void {
    this.connections.closeAll(reason);
    this.owner.dropAllFlows();
    this.peer = undefined;
  }

  /** Runs the connections' timers and ends a session whose peer did not come back in time. */
  tick(now: number): void {
    this.connections.tick(now);
    const session = this.peer;
    if (session && session.links.length === 0 && session.lostAt !== undefined && now >= this.resumeExpiry(session)) {
      const count = this.owner.flowCount;
      if (count > 0) this.out.log("info", `no resume in time: dropping ${flows(count)}`);
      this.owner.dropAllFlows();
      this.peer = undefined;
    }
  }

  nextTimeout(): number | undefined {
    const next = this.connections.nextTimeout();
    const session = this.peer;
    if (!session || session.links.length > 0 || session.lostAt === undefined) return next;
    const expiry = this.resumeExpiry(session);
    return next === undefined || expiry < next ? expiry : next;
  }

  private resumeExpiry(session: PeerSession): number {
    return (session.lostAt as number) + this.settings.resumeGraceMs;
  }
}
