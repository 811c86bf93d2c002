/**
 * The handshake and the session, by TCP side rather than by role: either role may accept TCP or dial
 * it (ssh -R as the original: the receiver accepts; ssh -L as udp-over-tcp: the sender accepts).
 *
 * The acceptor verifies whoever dials in, admits one peer at a time and issues the session token; the
 * dialer proves itself, checks the acceptor's proof (and, in key mode, its pinned key) and offers the
 * token again on reconnect. A session outlives its connection for the resume grace period, so flows
 * (and the target-side UDP sockets) survive a reconnect.
 */
import { bytesEqual } from "./bytes.js";
import { type CommonConfig, DEFAULTS, Endpoint, unexpected } from "./endpoint.js";
import { Capability, CloseCode, type Frame, FrameType, ProtocolError, Role, TOKEN_SIZE } from "./frames.js";
import type { CryptoProvider, Link } from "./link.js";

const CAPABILITIES = Capability.Resume;

interface Session {
  /** Issued by the acceptor; offered back by the dialer to resume. */
  token: Uint8Array;
  /** The peer's key (key mode): only the same key may resume. */
  peerKey: Uint8Array;
  /** The open connection, or undefined while waiting for a resume. */
  link: Link | undefined;
  /** When the connection was lost; flows are kept until lostAt + resumeGraceMs. */
  lostAt: number | undefined;
}

export abstract class SessionEndpoint extends Endpoint {
  private session: Session | undefined;
  /** The dialer's current connection attempt (one at a time). */
  private dialing: Link | undefined;
  private readonly maxPending: number;
  private readonly maxPendingPerSource: number;
  private readonly checkPeerKey: CommonConfig["checkPeerKey"];
  /** "sender" or "receiver": what the other side is, for log lines. */
  protected readonly peerName: string;

  constructor(role: Role, config: CommonConfig, crypto: CryptoProvider) {
    super(role, config, crypto);
    this.maxPending = config.maxPendingConnections ?? DEFAULTS.maxPendingConnections;
    this.maxPendingPerSource = config.maxPendingPerSource ?? DEFAULTS.maxPendingPerSource;
    this.checkPeerKey = config.checkPeerKey;
    this.peerName = role === Role.Receiver ? "sender" : "receiver";
  }

  /** True while an accepted peer is connected. */
  get peerConnected(): boolean {
    return this.session?.link?.state === "open";
  }

  /** The session's connection when it is open: where data goes. */
  protected get openLink(): Link | undefined {
    const link = this.session?.link;
    return link?.state === "open" ? link : undefined;
  }

  /** Drops every flow: a new session started, or the old one could not be resumed. */
  protected abstract dropAllFlows(): void;
  protected abstract get flowCount(): number;
  /** Flow timers (idle expiry). */
  protected abstract onFlowTick(now: number): void;
  protected abstract flowTimeout(): number | undefined;

  // ---- the accepting side ----

  /**
   * A TCP connection was accepted from `peer` (address:port, for log lines); `source` is its IP address,
   * which bounds how many unauthenticated connections one host may hold open.
   */
  accept(conn: number, peer: string, now: number, source = peer): void {
    let pending = 0;
    let fromSource = 0;
    for (const link of this.links.values()) {
      if (link.state === "open" || link.state === "closed") continue;
      pending++;
      if (link.source === source) fromSource++;
    }
    const link = this.newLink(conn, peer, "acceptor", CAPABILITIES, now);
    link.source = source;
    if (pending >= this.maxPending) {
      this.stats.handshakeFailures++;
      this.failLink(link, CloseCode.Busy, `too many unauthenticated connections (${pending})`);
    } else if (fromSource >= this.maxPendingPerSource) {
      this.stats.handshakeFailures++;
      this.failLink(link, CloseCode.Busy, `too many unauthenticated connections from ${source} (${fromSource})`);
    }
  }

  /** Whether connection `conn` still waits for a decision (it may have gone away meanwhile). */
  awaitingApproval(conn: number): boolean {
    return this.links.get(conn)?.state === "approval";
  }

  /**
   * The decision on an `authorize-peer` request. `reason` is told to the peer and logged; without one
   * a refusal is the operator's.
   */
  approve(conn: number, accepted: boolean, now: number, reason?: string): void {
    const link = this.links.get(conn);
    if (!link || link.state !== "approval") return;
    if (accepted) {
      this.admit(link, now);
      this.notifyTransmit(link);
      return;
    }
    this.stats.handshakeFailures++;
    if (reason) {
      this.failLink(link, CloseCode.KeyRejected, reason);
    } else {
      this.closeLink(link, CloseCode.Refused, "");
    }
  }

  private acceptorHandshake(link: Link, frame: Frame, now: number): void {
    if (link.state === "hello") {
      this.checkPeerHello(link, frame);
      link.state = "auth";
      return;
    }
    if (link.state !== "auth") throw unexpected(frame, "nothing until the operator answers");
    if (frame.type !== FrameType.Auth) throw unexpected(frame, "AUTH");
    link.offeredToken = frame.token.slice();
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token)) {
      this.stats.handshakeFailures++;
      const why = this.secret
        ? "wrong shared secret"
        : `the ${this.peerName}'s signature does not match the key it announced`;
      this.failLink(link, CloseCode.AuthFailed, why);
      return;
    }
    if (this.secret || this.canResume(link)) {
      // A resumed session's key was admitted before.
      this.admit(link, now);
      return;
    }
    // "Busy" is only ever told to a peer whose key is admitted (admit() checks): a stranger learns
    // nothing about who is connected, and an unknown key is judged on its own.
    link.state = "approval";
    link.handshakeDeadline = undefined; // the host may ask a human: no deadline
    this.emit({ kind: "authorize-peer", conn: link.id, peer: link.peer, publicKey: link.peerKey });
  }

  private canResume(link: Link): boolean {
    const session = this.session;
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
    const current = this.session?.link;
    if (!current || current === link) return false;
    if (now - current.lastReceived > this.keepaliveMs * 1.5) return false;
    this.stats.handshakeFailures++;
    this.log(
      "warn",
      `refusing ${this.peerName} ${link.peer}: ${current.peer} is connected (one ${this.peerName} at a time)`,
    );
    this.closeLink(link, CloseCode.Busy, `another ${this.peerName} is connected; only one at a time`);
    return true;
  }

  /** Authenticated: resume the session, replace a stale connection of the same peer, or start afresh. */
  private admit(link: Link, now: number): void {
    const resumed = this.canResume(link);
    if (!resumed && this.refuseIfBusy(link, now)) return;
    const session = this.session;
    if (session?.link && session.link !== link) {
      this.log("info", `${this.peerName} ${link.peer} takes over from the earlier connection ${session.link.peer}`);
      this.closeLink(session.link, CloseCode.Replaced, "replaced by a newer connection");
      session.link = undefined;
    }
    if (resumed && session) {
      session.link = link;
      session.lostAt = undefined;
    } else {
      if (this.flowCount > 0) this.log("info", `dropping ${flows(this.flowCount)} of the previous ${this.peerName}`);
      this.dropAllFlows();
      this.session = { token: this.crypto.randomBytes(TOKEN_SIZE), peerKey: link.peerKey, link, lostAt: undefined };
    }
    const token = (this.session as Session).token;
    link.writer.accept(link.prove(this.crypto, token, resumed), token, resumed);
    this.opened(link, now, resumed);
  }

  // ---- the dialing side ----

  /** The TCP connection to the peer is up (one at a time). */
  dial(conn: number, peer: string, now: number): void {
    if (this.dialing && this.dialing.state !== "closed") {
      throw new Error("dial: the previous connection was not reported disconnected");
    }
    this.dialing = this.newLink(conn, peer, "dialer", CAPABILITIES, now);
  }

  private dialerHandshake(link: Link, frame: Frame, now: number): void {
    if (link.state === "hello") {
      this.checkPeerHello(link, frame);
      const session = this.session;
      const resume = (link.sharedCapabilities & Capability.Resume) !== 0 && session !== undefined;
      link.offeredToken = resume ? session.token : new Uint8Array(0);
      link.writer.auth(link.prove(this.crypto, link.offeredToken), link.offeredToken);
      link.state = "auth";
      // In key mode the acceptor's operator may be asked about this key: wait as long as that takes.
      if (!this.secret) link.handshakeDeadline = undefined;
      return;
    }
    if (frame.type !== FrameType.Accept) throw unexpected(frame, "ACCEPT");
    if (!link.verifyPeer(this.crypto, frame.proof, frame.token, frame.resumed)) {
      this.stats.handshakeFailures++;
      const why = this.secret
        ? `the ${this.peerName} could not prove the shared secret (wrong secret, or an impostor)`
        : `the ${this.peerName}'s signature does not match the key it announced (an impostor?)`;
      this.failLink(link, CloseCode.AuthFailed, why);
      return;
    }
    const distrust = this.secret ? undefined : this.checkPeerKey?.(link.peerKey, link.peer);
    if (distrust !== undefined) {
      this.stats.handshakeFailures++;
      // The host that refused the key logs why (once); the peer is told.
      this.closeLink(link, CloseCode.KeyRejected, distrust);
      return;
    }
    if (frame.resumed && link.offeredToken.length === 0) {
      throw new ProtocolError("bad-resume", "ACCEPT claims a resumed session that was never offered");
    }
    if (!frame.resumed) {
      if (this.flowCount > 0)
        this.log("info", `the ${this.peerName} started a new session: closing ${flows(this.flowCount)} of the old one`);
      this.dropAllFlows();
    }
    this.session = { token: frame.token.slice(), peerKey: link.peerKey, link, lostAt: undefined };
    this.opened(link, now, frame.resumed);
  }

  // ---- both ----

  private opened(link: Link, now: number, resumed: boolean): void {
    link.markOpen(now, this.keepaliveMs);
    this.stats.accepted++;
    const what =
      link.side === "acceptor" ? `${this.peerName} ${link.peer} accepted` : `accepted by ${this.peerName} ${link.peer}`;
    this.log("info", `${what}${resumed ? ` (resumed ${flows(this.flowCount)})` : ""}`);
    this.emit({ kind: "accepted", conn: link.id, peer: link.peer, resumed });
    this.notifyTransmit(link);
  }

  protected onHandshakeFrame(link: Link, frame: Frame, now: number): void {
    if (link.side === "acceptor") this.acceptorHandshake(link, frame, now);
    else this.dialerHandshake(link, frame, now);
  }

  protected onLinkGone(link: Link, _wasOpen: boolean, now: number): void {
    if (this.dialing === link) this.dialing = undefined;
    const session = this.session;
    // Only the session's own connection starts the grace period, including one already "closed"
    // (CLOSE received, keepalive timeout) before the host reported it. A failed attempt to reconnect
    // (never the session's link) does not restart it.
    if (!session || session.link !== link) return;
    session.link = undefined;
    session.lostAt = now;
    if (this.flowCount > 0 && this.resumeGraceMs > 0) {
      this.log(
        "info",
        `keeping ${flows(this.flowCount)} for ${this.resumeGraceMs / 1000} s in case the connection resumes`,
      );
    }
  }

  /** Says goodbye on every connection and forgets the session. */
  protected closeAll(reason: string): void {
    for (const link of this.links.values()) this.closeLink(link, CloseCode.Normal, reason);
    this.dropAllFlows();
    this.session = undefined;
  }

  protected onTick(now: number): void {
    const session = this.session;
    if (
      session &&
      session.link === undefined &&
      session.lostAt !== undefined &&
      now >= session.lostAt + this.resumeGraceMs
    ) {
      if (this.flowCount > 0) this.log("info", `no resume in time: dropping ${flows(this.flowCount)}`);
      this.dropAllFlows();
      this.session = undefined;
    }
    this.onFlowTick(now);
  }

  protected roleTimeout(): number | undefined {
    let next = this.flowTimeout();
    const session = this.session;
    if (session && session.link === undefined && session.lostAt !== undefined) {
      const expiry = session.lostAt + this.resumeGraceMs;
      if (next === undefined || expiry < next) next = expiry;
    }
    return next;
  }
}

function flows(count: number): string {
  return count === 1 ? "1 flow" : `${count} flows`;
}
