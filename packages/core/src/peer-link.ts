/**
 * The TCP side of a role, whichever way round: listen for the peer (and judge the keys of those who
 * dial in) or dial it (and check the acceptor's). ssh -R is a receiver that listens and a sender that
 * dials; ssh -L swaps the two. What the roles need from either is the PeerLink below.
 */
import type { ConnectionOutput } from "@mcudpt/protocol";
import type { HostPort } from "./address.js";
import { Approvals, type AskOperator } from "./approvals.js";
import { systemClock } from "./clock.js";
import { dial, type PeerKeyChecker } from "./dialer.js";
import { type MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { listen } from "./listener.js";
import type { Logger } from "./logger.js";
import type { CarrierOptions } from "./carrier.js";
import type { DialerTlsOptions, ListenerTlsOptions } from "./tls-peer.js";
import type { Transport } from "./transport.js";
import type { PeerAdmission, PeerPins } from "./trust.js";

export type { AskOperator, OperatorQuestion } from "./approvals.js";

/** How the listening side decides about the keys of peers that dial in. */
export interface ListenTrust {
  /** Key mode: which peer keys are admitted (authorized keys, known keys). */
  admission?: PeerAdmission;
  /** Key mode: asks the operator about a key `admission` does not know; unknown keys are refused when absent. */
  askOperator?: AskOperator;
}

/** How the dialing side checks the peer it reaches. */
export interface DialTrust {
  /** Key mode: the peer keys this side trusts (pinned, or remembered on first use). */
  pins?: PeerPins;
  /** First retry delay and its cap (ms); each failure doubles the delay, with jitter. */
  reconnect?: { initialMs?: number; maxMs?: number };
  connectTimeoutMs?: number;
}

/** The TCP side of a role, whichever way round. */
export interface PeerLink {
  /** The listening address and port ("" and 0 when dialing). */
  readonly address: string;
  readonly tcpPort: number;
  /** Resolves with the reason when dialing stopped for good; never while listening. */
  readonly fatal: Promise<string>;
  /** Connections made after the first one (dialing; 0 when listening). */
  readonly reconnects: number;
  /** The machine's connection outputs: authorize-peer, authorization-withdrawn, accepted, close-connection. */
  onOutput(output: ConnectionOutput): void;
  /**
   * A reload's new trust and certificate (listening side; the dialing side re-reads its pins at each
   * check and takes neither). The certificate first: if it cannot be served, nothing changed. Then
   * the admission: the next decision uses it, and a session whose key it no longer admits ends now.
   * Returns what was done, for the reload's log line.
   */
  reload(update: { admission?: PeerAdmission; tls?: ListenerTlsOptions }): Promise<string[]>;
  close(): void;
}

export interface PeerLinkOptions extends ListenTrust, DialTrust {
  transport: Transport;
  logger: Logger;
  driver: MachineDriver;
  /** "sender" or "receiver": what the peer is. */
  peerName: string;
  mode: "listen" | "dial";
  address: HostPort;
  /** The flag naming the TCP address, for error messages. */
  flag: string;
  handshakeTimeoutMs?: number;
  tls?: ListenerTlsOptions | DialerTlsOptions;
  /** WebSocket, a proxy: how connections reach the peer (default plain TCP). */
  carrier?: CarrierOptions;
  keyCheck: PeerKeyChecker;
  /** This side's mapping names as they are now (what an operator's approval may restrict a key to). */
  mappingNames?: () => readonly string[];
}

export async function startPeerLink(options: PeerLinkOptions): Promise<PeerLink> {
  const { transport, logger, driver, peerName } = options;
  const session = driver.machine.session;
  if (options.mode === "dial") {
    const dialer = dial({
      transport,
      logger,
      driver,
      peerName,
      remote: options.address,
      keyCheck: options.keyCheck,
      tls: tlsFor(options.tls, false),
      carrier: options.carrier,
      reconnect: options.reconnect,
      connectTimeoutMs: options.connectTimeoutMs,
    });
    return {
      address: "",
      tcpPort: 0,
      fatal: dialer.fatal,
      get reconnects() {
        return dialer.reconnects;
      },
      onOutput: (output) => {
        if (output.kind === "accepted") dialer.accepted(output.conn);
        else if (output.kind === "close-connection") dialer.closed(output.conn, output.code);
      },
      reload: async (update) => {
        if (update.tls) throw new UserError("a certificate to serve was given to the side that dials");
        return [];
      },
      close: () => dialer.stop(),
    };
  }
  const approvals = new Approvals({
    admission: options.admission,
    askOperator: options.askOperator,
    logger,
    clock: systemClock,
    peerName,
    decide: (conn, accepted, reason, mappings) =>
      driver.guard(() => session.approve(conn, accepted, now(), reason, mappings)),
    busy: () => session.anyPeerLive(now()),
    mappingNames: options.mappingNames,
  });
  const listener = await listen({
    transport,
    logger,
    driver,
    peerName,
    listen: options.address,
    flag: options.flag,
    handshakeTimeoutMs: options.handshakeTimeoutMs,
    tls: tlsFor(options.tls, true),
    carrier: options.carrier,
  });
  return {
    address: listener.address,
    tcpPort: listener.port,
    fatal: new Promise<string>(() => {}),
    reconnects: 0,
    onOutput: (output) => {
      if (output.kind === "authorize-peer")
        approvals.authorize(output.conn, output.peer, output.publicKey, output.source, output.mappings);
      else if (output.kind === "authorization-withdrawn") approvals.withdraw(output.conn, output.why);
    },
    async reload(update) {
      const done: string[] = [];
      if (update.tls) {
        await listener.replaceCertificate(update.tls);
        done.push("new connections get the new certificate");
      }
      if (update.admission) {
        const admission = update.admission;
        approvals.setAdmission(admission);
        const ended = withdrawRefused(driver, admission, logger, peerName);
        if (ended > 0)
          done.push(`${ended} ${peerName} session${ended === 1 ? "" : "s"} ended (key no longer admitted)`);
      }
      return done;
    },
    close: () => listener.close(),
  };
}

/**
 * Ends each session whose key `admission` no longer trusts (removed from the authorized keys or the
 * known keys), with CLOSE(11) and a reason that names no file; the log line gives the details. A
 * trust file that cannot be read now keeps the session: the reload checked it a moment ago, and a
 * passing hiccup must not throw a peer out.
 */
function withdrawRefused(driver: MachineDriver, admission: PeerAdmission, logger: Logger, peerName: string): number {
  let ended = 0;
  driver.guard(() => {
    ended = driver.machine.withdrawPeers((publicKey, source) => {
      const print = fingerprint(publicKey);
      let verdict: ReturnType<PeerAdmission["check"]>;
      try {
        verdict = admission.check(publicKey, source);
      } catch (error) {
        logger.log("warn", `cannot re-check ${peerName} key ${print}: ${messageOf(error)}; its session stays`);
        return undefined;
      }
      if (verdict.verdict === "trusted") return undefined;
      const why = verdict.verdict === "refused" ? verdict.reason : `key ${print} is no longer a known ${peerName}`;
      logger.log("warn", `ending the ${peerName}'s session (key ${print}) after the reload: ${why}`);
      return `key ${print} is no longer authorized here`;
    }, now());
  });
  return ended;
}

/** TLS options given for either side, checked against the side this end actually takes. */
export function tlsFor(
  tls: ListenerTlsOptions | DialerTlsOptions | undefined,
  listening: true,
): ListenerTlsOptions | undefined;
export function tlsFor(
  tls: ListenerTlsOptions | DialerTlsOptions | undefined,
  listening: false,
): DialerTlsOptions | undefined;
export function tlsFor(tls: ListenerTlsOptions | DialerTlsOptions | undefined, listening: boolean) {
  if (!tls) return undefined;
  const serving = "cert" in tls;
  if (serving !== listening) {
    throw new UserError(
      listening
        ? "TLS on the listening side needs a certificate and key"
        : "the dialing side got a certificate to serve",
    );
  }
  return tls;
}
