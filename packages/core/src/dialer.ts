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
  /** The machine accepted the connection: the backoff starts over. */
  accepted(): void;
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
  const carrier = dialCarrier(transport, options.remote, options.carrier);
  const remoteText = carrier.remote;
  const backoff = new Backoff(options.reconnect);
  const tls = options.tls && new DialerTlsPolicy(options.tls, host, peerName);
  let connections = 0;
  let stopping = false;
  let retryTimer: unknown;
  /** The CLOSE code that ended the current connection, if one did. */
  let lastCode: number | undefined;
  let current: number | undefined;
  let giveUp!: (why: string) => void;
  const fatal = new Promise<string>((resolve) => {
    giveUp = (why) => {
      if (stopping) return;
      stopping = true; // no more attempts: the next one would meet the same certificate, key or error
      logger.log("error", why);
      resolve(why);
    };
  });

  const scheduleRetry = (why: string): void => {
    if (stopping || retryTimer !== undefined) return;
    if (keyCheck.refused) return giveUp(keyCheck.refused);
    // Two sides configured differently stay so until someone changes one: retry at the slowest pace
    // instead of filling the log every backoff step (the reason was logged with the CLOSE).
    const mismatch = lastCode !== undefined && CONFIG_MISMATCH.has(lastCode);
    if (mismatch) backoff.slowest();
    lastCode = undefined;
    const delay = backoff.next();
    const tail = mismatch ? " (a configuration mismatch: change one side; retrying slowly meanwhile)" : "";
    logger.log(backoff.attempts > 1 ? "warn" : "info", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s${tail}`);
    retryTimer = clock.setTimeout(() => {
      retryTimer = undefined;
      void attempt();
    }, delay);
  };

  /** One connection attempt; whatever it throws ends up as a retry or, if it would repeat, as fatal. */
  const attempt = async (): Promise<void> => {
    try {
      await connect();
    } catch (error) {
      if (error instanceof UserError) giveUp(error.message);
      else scheduleRetry(`internal error while connecting to ${peerName} ${remoteText}: ${messageOf(error)}`);
    }
  };

  const connect = async (): Promise<void> => {
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
          else scheduleRetry(`internal error while checking the ${peerName}'s certificate: ${messageOf(error)}`);
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
            if (current === conn) current = undefined;
            scheduleRetry(`connection to ${peerName} ${remoteText} closed${error ? `: ${messageOf(error)}` : ""}`);
          },
        },
      });
    } catch (error) {
      if (stopping) return; // refused while checking the certificate, or stopped meanwhile
      const refused = tls?.refusal(error, remoteText);
      if (refused) return giveUp(refused);
      return scheduleRetry(`cannot connect to ${peerName} ${remoteText}: ${messageOf(error)}`);
    }
    if (stopping) return connection.destroy();
    connections++;
    current = conn;
    driver.bind(conn, connection);
    logger.log("info", `connected to ${peerName} ${remoteText}${carrier.via}`);
    driver.guard(() => session.dial(conn, remoteText, now()));
    const replay = early;
    early = undefined;
    for (const data of replay) handlers.onData(data);
  };

  void attempt();
  return {
    fatal,
    get reconnects() {
      return Math.max(0, connections - 1);
    },
    accepted() {
      backoff.reset();
    },
    closed(conn, code) {
      if (conn === current) lastCode = code;
    },
    stop() {
      stopping = true;
      if (retryTimer !== undefined) clock.clearTimeout(retryTimer);
      retryTimer = undefined;
    },
  };
}
