/**
 * The dialing TCP side of either role: keep a connection to the peer, with capped exponential backoff
 * and jitter between attempts; check the peer's certificate (TLS) and key (pins). A refusal of the
 * peer's identity is final (retrying would only offer the tunnel to an impostor again), and so is a
 * local failure that would repeat at every attempt (an unwritable known-peers file): both end in
 * `fatal`, never in a process that stays up doing nothing.
 */
import { CloseCode } from "@mcudpt/protocol";
import type { HostPort } from "./address.js";
import { Backoff } from "./backoff.js";
import { type CarrierOptions, dialCarrier } from "./carrier.js";
import { type Clock, systemClock } from "./clock.js";
import { type MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import type { Logger } from "./logger.js";
import { type DialerTlsOptions, DialerTlsPolicy } from "./tls-peer.js";
import type { TcpConnection, Transport } from "./transport.js";
import type { PeerPins } from "./trust.js";

/** CLOSE codes that mean the two sides are configured differently: a person must change one. */
const CONFIG_MISMATCH = new Set<number>([
  CloseCode.AuthMismatch,
  CloseCode.AuthFailed,
  CloseCode.RoleConflict,
  CloseCode.MappingMismatch,
]);

export interface DialerOptions {
  transport: Transport;
  logger: Logger;
  driver: MachineDriver;
  peerName: string;
  remote: HostPort;
  keyCheck: PeerKeyChecker;
  tls?: DialerTlsOptions;
  /** How connections reach the peer (WebSocket, a proxy); default plain TCP through `transport`. */
  carrier?: CarrierOptions;
  /** First retry delay and its cap (ms). */
  reconnect?: { initialMs?: number; maxMs?: number };
  connectTimeoutMs?: number;
  clock?: Clock;
}

export interface Dialer {
  /** Resolves with the reason when dialing stopped for good; else never. */
  readonly fatal: Promise<string>;
  /** Connections made after the first one (for metrics). */
  readonly reconnects: number;
  /** The machine accepted connection `conn`: its lane's backoff starts over, and the other lanes may join. */
  accepted(conn?: number): void;
  /** The machine closed connection `conn` with `code` (sent or received). */
  closed(conn: number, code: number): void;
  stop(): void;
}

/**
 * The machine's checkPeerKey for a dialing side: the pins decide (a claimed key is only compared, a
 * proven one may be remembered), and a refusal is kept in `refused` (the detail, for the local log)
 * so that the dialer stops instead of retrying. The peer is told only a short reason.
 */
export class PeerKeyChecker {
  refused: string | undefined;

  constructor(
    private readonly pins: PeerPins | undefined,
    private readonly logger: Logger,
    private readonly peerName: string,
  ) {}

  readonly check = (publicKey: Uint8Array, peer: string, proven: boolean): string | undefined => {
    if (!this.pins) return undefined;
    let verdict: ReturnType<PeerPins["check"]>;
    try {
      verdict = this.pins.check(peer, publicKey, proven);
    } catch (error) {
      this.refused = messageOf(error);
      return "this side cannot check the key (a local error)";
    }
    if (verdict.verdict === "changed") {
      this.refused = verdict.reason;
      return `key ${fingerprint(publicKey)} is not the one pinned for this address`;
    }
    if (verdict.verdict === "added") {
      this.logger.log(
        "info",
        `${this.peerName} ${peer} key ${fingerprint(publicKey)} is new: remembered in ${verdict.path}`,
      );
    }
    return undefined;
  };
}

export function dial(options: DialerOptions): Dialer {
  const { transport, logger, driver, peerName, keyCheck } = options;
  const clock = options.clock ?? systemClock;
  const session = driver.machine.session;
  const host = options.remote.host === "" ? "127.0.0.1" : options.remote.host;
  const carrier = dialCarrier(transport, options.remote, options.carrier, logger);
  const remoteText = carrier.remote;
  const tls = options.tls && new DialerTlsPolicy(options.tls, host, peerName);
  /**
   * One slot per lane (--lanes): each keeps one connection with its own backoff. Lane 1 always dials;
   * the others only while the session has an open lane (they JOIN it): after every lane was lost,
   * one connection resumes the session first, so two never race to authenticate.
   */
  interface LaneSlot {
    readonly index: number;
    readonly backoff: Backoff;
    retryTimer: unknown;
    /** The CLOSE code that ended the current connection, if one did. */
    lastCode: number | undefined;
    current: number | undefined;
    /** Due to dial, waiting for the session to have an open lane. */
    waiting: boolean;
  }
  const slots: LaneSlot[] = Array.from({ length: Math.max(1, session.lanesWanted) }, (_, index) => ({
    index,
    backoff: new Backoff(options.reconnect),
    retryTimer: undefined,
    lastCode: undefined,
    current: undefined,
    waiting: false,
  }));
  const label = (slot: LaneSlot) => (slots.length > 1 ? `lane ${slot.index + 1}: ` : "");
  let connections = 0;
  let stopping = false;
  let giveUp!: (why: string) => void;
  const fatal = new Promise<string>((resolve) => {
    giveUp = (why) => {
      if (stopping) return;
      stopping = true; // no more attempts: the next one would meet the same certificate, key or error
      for (const slot of slots) if (slot.retryTimer !== undefined) clock.clearTimeout(slot.retryTimer);
      logger.log("error", why);
      resolve(why);
    };
  });

  const scheduleRetry = (slot: LaneSlot, why: string): void => {
    if (stopping || slot.retryTimer !== undefined) return;
    if (keyCheck.refused) return giveUp(keyCheck.refused);
    if (slot.index > 0 && session.peerConnected && !session.peerTakesLanes) {
      if (!slot.waiting)
        logger.log("info", `${label(slot)}the ${peerName} takes one connection per session: not opened`);
      slot.waiting = true; // until the first lane reconnects (the peer may have changed)
      slot.lastCode = undefined;
      return;
    }
    const backoff = slot.backoff;
    // Two sides configured differently stay so until someone changes one: retry at the slowest pace
    // instead of filling the log every backoff step (the reason was logged with the CLOSE). So does
    // an extra lane the peer will not take (BUSY: it takes fewer lanes).
    const mismatch = slot.lastCode !== undefined && CONFIG_MISMATCH.has(slot.lastCode);
    const fewerLanes = slot.index > 0 && slot.lastCode === CloseCode.Busy;
    if (mismatch || fewerLanes) backoff.slowest();
    slot.lastCode = undefined;
    const delay = backoff.next();
    const tail = mismatch
      ? " (a configuration mismatch: change one side; retrying slowly meanwhile)"
      : fewerLanes
        ? " (the peer takes fewer lanes; retrying slowly)"
        : "";
    logger.log(
      backoff.attempts > 1 ? "warn" : "info",
      `${label(slot)}${why}; reconnecting in ${(delay / 1000).toFixed(1)} s${tail}`,
    );
    slot.retryTimer = clock.setTimeout(() => {
      slot.retryTimer = undefined;
      void attempt(slot);
    }, delay);
  };

  /** One connection attempt; whatever it throws ends up as a retry or, if it would repeat, as fatal. */
  const attempt = async (slot: LaneSlot): Promise<void> => {
    if (slot.index > 0 && (!session.peerConnected || !session.peerTakesLanes)) {
      // Dialed once a lane is open (accepted()); a peer that takes no lanes gets one connection.
      slot.waiting = true;
      return;
    }
    slot.waiting = false;
    try {
      await connect(slot);
    } catch (error) {
      if (error instanceof UserError) giveUp(error.message);
      else scheduleRetry(slot, `internal error while connecting to ${peerName} ${remoteText}: ${messageOf(error)}`);
    }
  };

  const connect = async (slot: LaneSlot): Promise<void> => {
    if (stopping) return;
    const conn = driver.reserveId();
    const handlers = driver.handlersFor(conn);
    // Bytes that arrive before the machine knows the connection are replayed once it does.
    let early: Uint8Array[] | undefined = [];
    // The certificate is checked on the TLS connection before anything else is said over it (a
    // WebSocket upgrade request would carry the operator's headers to an impostor).
    const verify =
      tls &&
      (async (secured: TcpConnection): Promise<boolean> => {
        let refused: string | undefined;
        try {
          refused = await tls.check(secured, remoteText);
        } catch (error) {
          // Decided before the carrier destroys it: a transport may report the close (and arm a retry) inside it.
          if (error instanceof UserError) giveUp(error.message);
          else scheduleRetry(slot, `internal error while checking the ${peerName}'s certificate: ${messageOf(error)}`);
          return false;
        }
        if (refused) giveUp(refused);
        return !stopping;
      });
    let connection: TcpConnection;
    try {
      connection = await carrier.connect({
        timeoutMs: options.connectTimeoutMs ?? 10_000,
        tls: tls?.connectOptions,
        verify,
        handlers: {
          onData: (data) => (early ? early.push(data.slice()) : handlers.onData(data)),
          onDrain: handlers.onDrain,
          onClose: (error) => {
            handlers.onClose(error);
            if (slot.current === conn) slot.current = undefined;
            scheduleRetry(
              slot,
              `connection to ${peerName} ${remoteText} closed${error ? `: ${messageOf(error)}` : ""}`,
            );
          },
        },
      });
    } catch (error) {
      if (stopping) return; // refused while checking the certificate, or stopped meanwhile
      const refused = tls?.refusal(error, remoteText);
      if (refused) return giveUp(refused);
      return scheduleRetry(slot, `cannot connect to ${peerName} ${remoteText}: ${messageOf(error)}`);
    }
    if (stopping) return connection.destroy();
    connections++;
    slot.current = conn;
    driver.bind(conn, connection);
    logger.log("info", `${label(slot)}connected to ${peerName} ${remoteText}${carrier.via}`);
    driver.guard(() => session.dial(conn, remoteText, now()));
    const replay = early;
    early = undefined;
    for (const data of replay) handlers.onData(data);
  };

  void attempt(slots[0]);
  for (const slot of slots.slice(1)) slot.waiting = true;
  return {
    fatal,
    get reconnects() {
      return Math.max(0, connections - slots.length);
    },
    accepted(conn) {
      const slot = conn === undefined ? slots[0] : slots.find((s) => s.current === conn);
      slot?.backoff.reset();
      // A lane is open: the other lanes may join it now.
      for (const waiting of slots) if (waiting.waiting && !stopping) void attempt(waiting);
    },
    closed(conn, code) {
      const slot = slots.find((s) => s.current === conn);
      if (slot) slot.lastCode = code;
    },
    stop() {
      stopping = true;
      for (const slot of slots) {
        if (slot.retryTimer !== undefined) clock.clearTimeout(slot.retryTimer);
        slot.retryTimer = undefined;
      }
    },
  };
}
