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
import { UserError } from "./errors.js";
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
  /** This side's mapping names (what an operator's approval may restrict a key to). */
  mappingNames?: readonly string[];
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
    close: () => listener.close(),
  };
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
