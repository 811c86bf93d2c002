/**
 * The TCP side of either role, independent of which role it is: listen for the peer (verify who dials
 * in: authorized keys, known keys, the operator) or dial it (keep dialing with capped exponential
 * backoff and jitter, check the acceptor's certificate and key). ssh -R is a receiver that listens and
 * a sender that dials; ssh -L swaps the two.
 */
import { CloseCode, type Output, type ReceiverMachine, type SenderMachine } from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { type MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { Resolver } from "./resolve.js";
import { type ReceiverTlsOptions, receiverListenTls, type SenderTlsOptions, SenderTlsPolicy } from "./tls-peer.js";
import type { TcpConnection, TcpServer, Transport } from "./transport.js";
import type { ReceiverPins, SenderTrust } from "./trust.js";

type Machine = ReceiverMachine | SenderMachine;

export interface OperatorQuestion {
  /** The peer's address:port. */
  peer: string;
  /** Its key's fingerprint, "SHA256:…". */
  fingerprint: string;
}

/** How the listening side decides about the keys of peers that dial in. */
export interface ListenTrust {
  /** Key mode: which peer keys are admitted (authorized keys, known keys). */
  trust?: SenderTrust;
  /**
   * Key mode: asks the operator about a key `trust` does not know; unknown keys are refused when
   * absent. `cancelled` aborts when the peer goes away before the answer. A yes is remembered; a
   * string is a refusal with that reason (nobody could answer). A no is not asked again for a while.
   */
  askOperator?: (request: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean | string>;
}

/** How the dialing side checks the peer it reaches. */
export interface DialTrust {
  /** Key mode: the peer keys this side trusts (pinned, or remembered on first use). */
  pins?: ReceiverPins;
  /** First retry delay and its cap (ms); each failure doubles the delay, with jitter. */
  reconnect?: { initialMs?: number; maxMs?: number };
  connectTimeoutMs?: number;
}

interface Common {
  transport: Transport;
  logger: Logger;
  driver: MachineDriver;
  /** "sender" or "receiver": what the peer is, for log lines. */
  peerName: string;
}

/** CLOSE codes that mean the two sides are configured differently. */
const CONFIG_MISMATCH = new Set<number>([CloseCode.AuthMismatch, CloseCode.RoleConflict, CloseCode.MappingMismatch]);

/** How long an operator's "no" stands before the same key is asked about again. */
const REFUSAL_MEMORY_MS = 10 * 60_000;

export interface Listener {
  readonly address: string;
  readonly port: number;
  /** Handles the machine's `authorize-peer` output. */
  authorize(conn: number, peer: string, publicKey: Uint8Array): void;
  close(): void;
}

/** "" (as in ":53") binds all interfaces, IPv6 and IPv4, like the original. */
export async function bindAddress(resolver: Resolver, host: string, what: string): Promise<string> {
  if (host === "" || host === "*") return "::";
  try {
    return (await resolver.resolve(host)).address;
  } catch (error) {
    throw new UserError(`${what}: cannot resolve "${host}": ${messageOf(error)}`);
  }
}

/**
 * Binds the IPv6 wildcard (dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d), or the IPv4 wildcard
 * on a host without IPv6. Calls `bind` with the host actually used.
 */
export async function withIPv4Fallback<T>(host: string, bind: (host: string) => Promise<T>): Promise<T> {
  if (host !== "::") return bind(host);
  try {
    return await bind("::");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException)?.code;
    if (code !== "EAFNOSUPPORT" && code !== "EADDRNOTAVAIL" && code !== "EPROTONOSUPPORT") throw error;
    return bind("0.0.0.0");
  }
}

export async function listenForPeer(
  options: Common &
    ListenTrust & { listen: HostPort; flag: string; handshakeTimeoutMs?: number; tls?: ReceiverTlsOptions },
): Promise<Listener> {
  const { transport, logger, driver, peerName } = options;
  const machine = driver.machine as Machine;
  const rateLimited = new RateLimitedLog(logger);
  const approvals: Array<{ conn: number; peer: string; publicKey: Uint8Array }> = [];
  let asking = false;
  /** Keys the operator said no to, and until when: a reconnecting peer must not re-ask every backoff. */
  const refusedUntil = new Map<string, number>();

  /** One question at a time (there is one operator); a peer that left meanwhile is skipped. */
  const askNext = (): void => {
    if (asking) return;
    let next = approvals.shift();
    while (next && !machine.awaitingApproval(next.conn)) next = approvals.shift();
    if (!next) return;
    const { conn, peer, publicKey } = next;
    const print = fingerprint(publicKey);
    asking = true;
    const cancel = new AbortController();
    const watch = setInterval(() => {
      if (!machine.awaitingApproval(conn)) cancel.abort();
    }, 200);
    const ask = options.askOperator as NonNullable<ListenTrust["askOperator"]>;
    ask({ peer, fingerprint: print }, cancel.signal)
      .catch((error) => {
        if (!cancel.signal.aborted) logger.log("warn", `operator approval failed: ${messageOf(error)}`);
        return false;
      })
      .then((answer) => {
        clearInterval(watch);
        asking = false;
        const accepted = answer === true;
        const reason = typeof answer === "string" ? answer : undefined;
        if (answer === false && !cancel.signal.aborted) {
          refusedUntil.set(print, Date.now() + REFUSAL_MEMORY_MS);
          logger.log("info", `${peerName} ${peer} key ${print} refused by the operator (not asked again for 10 min)`);
        }
        if (reason) logger.log("warn", `${peerName} ${peer} key ${print} refused: ${reason}`);
        if (accepted && machine.awaitingApproval(conn)) {
          try {
            options.trust?.remember(publicKey, `approved ${new Date().toISOString().slice(0, 10)} from ${peer}`);
            logger.log("info", `${peerName} key ${print} remembered: it will be accepted without asking`);
          } catch (error) {
            logger.log("warn", `could not remember ${peerName} key ${print}: ${messageOf(error)}`);
          }
        }
        driver.guard(() => machine.approve(conn, accepted, now(), reason));
        askNext();
      });
  };

  /** Known and authorized keys are decided at once; only unknown keys wait for the (one) operator. */
  const authorize = (conn: number, peer: string, publicKey: Uint8Array): void => {
    const print = fingerprint(publicKey);
    let verdict: ReturnType<SenderTrust["check"]>;
    try {
      verdict = options.trust?.check(publicKey) ?? { verdict: "unknown" };
    } catch (error) {
      logger.log("error", `cannot check ${peerName} key ${print}: ${messageOf(error)}`);
      verdict = { verdict: "refused", reason: "could not read the list of trusted keys" };
    }
    // Answered after the current output is drained: the machine is not re-entered from its own poll.
    if (verdict.verdict === "trusted") {
      logger.log("info", `${peerName} ${peer} key ${print}: ${verdict.why}`);
      queueMicrotask(() => driver.guard(() => machine.approve(conn, true, now())));
    } else if (verdict.verdict === "refused") {
      const { reason } = verdict;
      queueMicrotask(() => driver.guard(() => machine.approve(conn, false, now(), reason)));
    } else if ((refusedUntil.get(print) ?? 0) > Date.now()) {
      const reason = `key ${print} was refused by the operator a short while ago`;
      queueMicrotask(() => driver.guard(() => machine.approve(conn, false, now(), reason)));
    } else if (!options.askOperator) {
      const reason = `unknown key ${print}: add it to the --authorized-keys file, or accept it once at an interactive prompt`;
      queueMicrotask(() => driver.guard(() => machine.approve(conn, false, now(), reason)));
    } else {
      approvals.push({ conn, peer, publicKey });
      askNext();
    }
  };

  const resolver = new Resolver();
  const host = await bindAddress(resolver, options.listen.host, options.flag);
  let bound = host;
  let server: TcpServer;
  try {
    server = await withIPv4Fallback(host, (tryHost) => {
      bound = tryHost;
      return transport.listenTcp({
        host: tryHost,
        port: options.listen.port,
        tls: options.tls && receiverListenTls(options.tls, options.handshakeTimeoutMs, rateLimited),
        onConnection: (connection) =>
          driver.attach(connection, (conn) => {
            const peer = formatHostPort(connection.remoteAddress, connection.remotePort);
            logger.log("debug", `connection from ${peer}`);
            machine.accept(conn, peer, now(), connection.remoteAddress);
          }),
      });
    });
  } catch (error) {
    throw new UserError(`cannot listen on TCP ${formatHostPort(host, options.listen.port)}: ${messageOf(error)}`);
  }
  return { address: bound, port: server.port, authorize, close: () => server.close() };
}

export interface Dialer {
  /** Resolves with the reason when dialing stopped for good (a refused key or certificate); else never. */
  readonly fatal: Promise<string>;
  /** Connections made after the first one (for metrics). */
  readonly reconnects: number;
  /** The machine accepted the connection: the backoff starts over. */
  accepted(): void;
  stop(): void;
}

/**
 * The machine's `checkPeerKey` for a dialing side: the pins decide, a new key is remembered, a changed
 * one is refused — and `refused` tells the dialer to stop instead of retrying.
 */
/** TLS options given for either side, checked against the side this end actually takes. */
export function tlsFor(
  tls: ReceiverTlsOptions | SenderTlsOptions | undefined,
  listening: true,
): ReceiverTlsOptions | undefined;
export function tlsFor(
  tls: ReceiverTlsOptions | SenderTlsOptions | undefined,
  listening: false,
): SenderTlsOptions | undefined;
export function tlsFor(tls: ReceiverTlsOptions | SenderTlsOptions | undefined, listening: boolean) {
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

export function peerKeyCheck(pins: ReceiverPins | undefined, logger: Logger, peerName: string) {
  const state = {
    refused: undefined as string | undefined,
    check: (publicKey: Uint8Array, peer: string): string | undefined => {
      if (!pins) return undefined;
      let verdict: ReturnType<ReceiverPins["check"]>;
      try {
        verdict = pins.check(peer, publicKey);
      } catch (error) {
        state.refused = messageOf(error);
        return state.refused;
      }
      if (verdict.verdict === "changed") {
        state.refused = verdict.reason;
        return verdict.reason;
      }
      if (verdict.verdict === "added") {
        logger.log("info", `${peerName} ${peer} key ${fingerprint(publicKey)} is new: remembered in ${verdict.path}`);
      }
      return undefined;
    },
  };
  return state;
}

export function dialPeer(
  options: Common & DialTrust & { remote: HostPort; keyCheck: ReturnType<typeof peerKeyCheck>; tls?: SenderTlsOptions },
): Dialer {
  const { transport, logger, driver, peerName } = options;
  const machine = driver.machine as Machine;
  const resolver = new Resolver();
  const host = options.remote.host === "" ? "127.0.0.1" : options.remote.host;
  const remoteText = formatHostPort(host, options.remote.port);
  const initialDelay = options.reconnect?.initialMs ?? 250;
  const maxDelay = options.reconnect?.maxMs ?? 30_000;
  const tls = options.tls && new SenderTlsPolicy(options.tls, host);
  let failures = 0;
  let connections = 0;
  let stopping = false;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let giveUp!: (why: string) => void;
  const fatal = new Promise<string>((resolve) => {
    giveUp = (why) => {
      stopping = true; // no more attempts: the next one would meet the same certificate or key
      logger.log("error", why);
      resolve(why);
    };
  });

  const scheduleRetry = (why: string): void => {
    if (stopping || retryTimer) return;
    if (options.keyCheck.refused) return giveUp(options.keyCheck.refused);
    // Two sides configured differently stay so until someone restarts one: retry at the slowest
    // pace instead of filling the log every backoff step (the reason was logged with the CLOSE).
    const mismatch = machine.lastCloseCode !== undefined && CONFIG_MISMATCH.has(machine.lastCloseCode);
    if (mismatch) failures = Math.max(failures, 20);
    machine.lastCloseCode = undefined;
    const base = Math.min(maxDelay, initialDelay * 2 ** Math.min(failures, 20));
    const delay = Math.round(base * (0.5 + Math.random() * 0.5));
    failures++;
    logger.log(failures > 1 ? "warn" : "info", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void dial();
    }, delay);
  };

  const dial = async (): Promise<void> => {
    if (stopping) return;
    let address: string;
    try {
      address = (await resolver.resolve(host)).address;
    } catch (error) {
      return scheduleRetry(`cannot resolve ${peerName} "${host}": ${messageOf(error)}`);
    }
    const conn = driver.reserveId();
    const handlers = driver.handlersFor(conn);
    // Bytes that arrive before the machine knows the connection are replayed once it does.
    let early: Uint8Array[] | undefined = [];
    let connection: TcpConnection;
    try {
      connection = await transport.connectTcp({
        host: address,
        port: options.remote.port,
        timeoutMs: options.connectTimeoutMs ?? 10_000,
        tls: tls?.connectOptions,
        handlers: {
          onData: (data) => (early ? early.push(data.slice()) : handlers.onData(data)),
          onDrain: handlers.onDrain,
          onClose: (error) => {
            handlers.onClose(error);
            scheduleRetry(`connection to ${peerName} ${remoteText} closed${error ? `: ${messageOf(error)}` : ""}`);
          },
        },
      });
    } catch (error) {
      const refused = tls?.refusal(error, remoteText);
      if (refused) return giveUp(refused);
      return scheduleRetry(`cannot connect to ${peerName} ${remoteText}: ${messageOf(error)}`);
    }
    const refused = tls && (await tls.check(connection, remoteText));
    if (refused) giveUp(refused);
    if (stopping) return connection.destroy();
    connections++;
    driver.bind(conn, connection);
    logger.log("info", `connected to ${peerName} ${remoteText}`);
    driver.guard(() => machine.dial(conn, remoteText, now()));
    const replay = early;
    early = undefined;
    for (const data of replay) handlers.onData(data);
  };

  void dial();
  return {
    fatal,
    get reconnects() {
      return Math.max(0, connections - 1);
    },
    accepted() {
      failures = 0;
    },
    stop() {
      stopping = true;
      if (retryTimer) clearTimeout(retryTimer);
    },
  };
}

/** The TCP side of a role, whichever way round: what the roles need from listenForPeer or dialPeer. */
export interface PeerLink {
  /** The listening address and port ("" and 0 when dialing). */
  readonly address: string;
  readonly tcpPort: number;
  /** Resolves with the reason when dialing stopped for good; never while listening. */
  readonly fatal: Promise<string>;
  /** Connections made after the first one (dialing; 0 when listening). */
  readonly reconnects: number;
  /** The machine's `authorize-peer` and `accepted` outputs. */
  onOutput(output: Output): void;
  close(): void;
}

export async function startPeerLink(
  options: Common &
    ListenTrust &
    DialTrust & {
      mode: "listen" | "dial";
      address: HostPort;
      /** The flag naming the listening address, for error messages. */
      flag: string;
      handshakeTimeoutMs?: number;
      tls?: ReceiverTlsOptions | SenderTlsOptions;
      keyCheck: ReturnType<typeof peerKeyCheck>;
    },
): Promise<PeerLink> {
  const { transport, logger, driver, peerName } = options;
  if (options.mode === "dial") {
    const dialer = dialPeer({
      transport,
      logger,
      driver,
      peerName,
      remote: options.address,
      keyCheck: options.keyCheck,
      tls: tlsFor(options.tls, false),
      pins: options.pins,
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
        if (output.kind === "accepted") dialer.accepted();
      },
      close: () => dialer.stop(),
    };
  }
  const listener = await listenForPeer({
    transport,
    logger,
    driver,
    peerName,
    listen: options.address,
    flag: options.flag,
    handshakeTimeoutMs: options.handshakeTimeoutMs,
    trust: options.trust,
    askOperator: options.askOperator,
    tls: tlsFor(options.tls, true),
  });
  return {
    address: listener.address,
    tcpPort: listener.port,
    fatal: new Promise<string>(() => {}),
    reconnects: 0,
    onOutput: (output) => {
      if (output.kind === "authorize-peer") listener.authorize(output.conn, output.peer, output.publicKey);
    },
    close: () => listener.close(),
  };
}
