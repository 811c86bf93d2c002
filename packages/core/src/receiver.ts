/**
 * The receiver at run time: a public UDP port whose clients become flows, a TCP port where the sender
 * connects. Wires a ReceiverMachine to a transport.
 */
import { type ClientFlow, type Output, type ReceiverConfig, ReceiverMachine } from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { nodeCrypto } from "./crypto.js";
import { MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { Resolver } from "./resolve.js";
import { type ReceiverTlsOptions, receiverListenTls } from "./tls-peer.js";
import type { TcpServer, Transport, UdpSocket } from "./transport.js";
import type { SenderTrust } from "./trust.js";

export interface ReceiverOptions {
  transport: Transport;
  /** Where UDP clients send; host "" means all interfaces. */
  udp: HostPort;
  /** Where the sender connects; host "" means all interfaces. */
  tcp: HostPort;
  config: ReceiverConfig;
  logger: Logger;
  /** Key mode: which sender keys are admitted (authorized keys, known senders). */
  trust?: SenderTrust;
  /**
   * Key mode: asks the operator about a key `trust` does not know; unknown keys are refused when
   * absent. `cancelled` aborts when the sender goes away before the answer. A yes is remembered.
   */
  askOperator?: (request: OperatorQuestion, cancelled: AbortSignal) => Promise<boolean>;
  /** Serve TLS with this certificate. */
  tls?: ReceiverTlsOptions;
}

export interface OperatorQuestion {
  /** The sender's address:port. */
  peer: string;
  /** Its key's fingerprint, "SHA256:…". */
  fingerprint: string;
}

export interface ReceiverHandle {
  readonly machine: ReceiverMachine;
  readonly udpPort: number;
  readonly tcpPort: number;
  /** Says goodbye to the sender, closes both ports. */
  close(): Promise<void>;
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

export async function startReceiver(options: ReceiverOptions): Promise<ReceiverHandle> {
  const { transport, logger } = options;
  const machine = new ReceiverMachine(options.config, nodeCrypto);
  const resolver = new Resolver();
  const rateLimited = new RateLimitedLog(logger);
  const approvals: Array<{ conn: number; peer: string; publicKey: Uint8Array }> = [];
  let asking = false;
  let udp: UdpSocket | undefined;

  /** One question at a time (there is one operator); a sender that left meanwhile is skipped. */
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
    const ask = options.askOperator as NonNullable<ReceiverOptions["askOperator"]>;
    ask({ peer, fingerprint: print }, cancel.signal)
      .catch((error) => {
        if (!cancel.signal.aborted) logger.log("warn", `operator approval failed: ${messageOf(error)}`);
        return false;
      })
      .then((accepted) => {
        clearInterval(watch);
        asking = false;
        if (accepted && machine.awaitingApproval(conn)) {
          try {
            options.trust?.remember(publicKey, `approved ${new Date().toISOString().slice(0, 10)} from ${peer}`);
            logger.log("info", `sender key ${print} remembered: it will be accepted without asking`);
          } catch (error) {
            logger.log("warn", `could not remember sender key ${print}: ${messageOf(error)}`);
          }
        }
        driver.guard(() => machine.approve(conn, accepted, now()));
        askNext();
      });
  };

  const onOutput = (output: Output): void => {
    switch (output.kind) {
      case "send-to-client": {
        const flow: ClientFlow = output.flow;
        if (!udp?.send(output.payload, flow.port, flow.address)) {
          machine.stats.drops["socket-error"]++;
          rateLimited.log(
            "udp-send",
            "warn",
            `could not send to client ${formatHostPort(flow.address, flow.port)} (datagram too large for it, or socket buffer full)`,
          );
        }
        return;
      }
      case "authorize-sender":
        authorize(output.conn, output.peer, output.publicKey);
        return;
      default:
        return;
    }
  };
  /** Known and authorized keys are decided at once; only unknown keys wait for the (one) operator. */
  const authorize = (conn: number, peer: string, publicKey: Uint8Array): void => {
    const print = fingerprint(publicKey);
    let verdict: ReturnType<NonNullable<ReceiverOptions["trust"]>["check"]>;
    try {
      verdict = options.trust?.check(publicKey) ?? { verdict: "unknown" };
    } catch (error) {
      logger.log("error", `cannot check sender key ${print}: ${messageOf(error)}`);
      verdict = { verdict: "refused", reason: "the receiver could not read its list of trusted keys" };
    }
    if (verdict.verdict === "trusted") {
      logger.log("info", `sender ${peer} key ${print}: ${verdict.why}`);
      queueMicrotask(() => driver.guard(() => machine.approve(conn, true, now())));
    } else if (verdict.verdict === "refused") {
      queueMicrotask(() => driver.guard(() => machine.approve(conn, false, now(), verdict.reason)));
    } else if (!options.askOperator) {
      const reason = `unknown key ${print}: add it to the receiver's --authorized-keys file, or accept it once at an interactive receiver`;
      queueMicrotask(() => driver.guard(() => machine.approve(conn, false, now(), reason)));
    } else {
      approvals.push({ conn, peer, publicKey });
      askNext();
    }
  };
  const driver = new MachineDriver(machine, logger, onOutput);

  const udpHost = await bindAddress(resolver, options.udp.host, "--udp");
  const tcpHost = await bindAddress(resolver, options.tcp.host, "--tcp");
  let udpBound = udpHost;
  try {
    udp = await withIPv4Fallback(udpHost, (host) => {
      udpBound = host;
      return transport.bindUdp({
        host,
        port: options.udp.port,
        onDatagram: (data, address, port) => driver.guard(() => machine.clientDatagram(address, port, data, now())),
        onError: (error) => {
          // A send that failed after send() returned true (node:dgram reports EMSGSIZE later).
          machine.stats.drops["socket-error"]++;
          rateLimited.log("udp-error", "warn", `UDP socket error: ${messageOf(error)}`);
        },
      });
    });
  } catch (error) {
    throw new UserError(`cannot listen on UDP ${formatHostPort(udpHost, options.udp.port)}: ${messageOf(error)}`);
  }
  let server: TcpServer;
  let tcpBound = tcpHost;
  try {
    server = await withIPv4Fallback(tcpHost, (host) => {
      tcpBound = host;
      return transport.listenTcp({
        host,
        port: options.tcp.port,
        tls: options.tls && receiverListenTls(options.tls, options.config.handshakeTimeoutMs, rateLimited),
        onConnection: (connection) =>
          driver.attach(connection, (conn) => {
            const peer = formatHostPort(connection.remoteAddress, connection.remotePort);
            logger.log("debug", `connection from ${peer}`);
            machine.connect(conn, peer, now(), connection.remoteAddress);
          }),
      });
    });
  } catch (error) {
    udp.close();
    throw new UserError(`cannot listen on TCP ${formatHostPort(tcpHost, options.tcp.port)}: ${messageOf(error)}`);
  }
  const udpSocket = udp;
  logger.log(
    "info",
    `receiver listening: UDP ${formatHostPort(udpBound, udpSocket.port)}, TCP ${formatHostPort(tcpBound, server.port)} ` +
      `(transport: ${transport.name}, auth: ${authDescription(options)})`,
  );

  // Datagrams dropped for want of a sender are counted per datagram but reported at most every 30 s.
  let reportedNoSender = 0;
  const report = setInterval(() => {
    const dropped = machine.stats.drops["no-sender"];
    if (dropped > reportedNoSender) {
      logger.log("warn", `dropped ${dropped - reportedNoSender} datagrams from clients: no sender connected`);
      reportedNoSender = dropped;
    }
  }, 30_000);
  report.unref?.();

  let closed: Promise<void> | undefined;
  return {
    machine,
    udpPort: udpSocket.port,
    tcpPort: server.port,
    close() {
      closed ??= (async () => {
        clearInterval(report);
        server.close();
        driver.guard(() => machine.shutdown());
        driver.stop();
        udpSocket.close();
        await waitFor(() => driver.openConnections === 0, 1000);
        driver.destroyAll();
      })();
      return closed;
    },
  };
}

function authDescription(options: ReceiverOptions): string {
  if (options.config.secret) return "shared secret";
  const key = options.config.identity ? `key ${fingerprint(options.config.identity.publicKey)}` : "key";
  return `${key}; senders: ${options.askOperator ? "known keys or the operator's approval" : "known keys only"}`;
}

/**
 * Binds the IPv6 wildcard (dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d), or the IPv4 wildcard
 * on a host without IPv6.
 */
async function withIPv4Fallback<T>(host: string, bind: (host: string) => Promise<T>): Promise<T> {
  if (host !== "::") return bind(host);
  try {
    return await bind("::");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException)?.code;
    if (code !== "EAFNOSUPPORT" && code !== "EADDRNOTAVAIL" && code !== "EPROTONOSUPPORT") throw error;
    return bind("0.0.0.0");
  }
}

/** Polls `done` until it holds or `ms` pass (bounded). */
export async function waitFor(done: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!done() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
}
