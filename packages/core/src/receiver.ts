/**
 * The receiver at run time: a public UDP port whose clients become flows, a TCP port where the sender
 * connects. Wires a ReceiverMachine to a transport.
 */
import { type ClientFlow, type Output, ReceiverMachine, type ReceiverConfig } from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { nodeCrypto } from "./crypto.js";
import { MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { Resolver } from "./resolve.js";
import type { TcpServer, Transport, UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

export interface ReceiverOptions {
  transport: Transport;
  /** Where UDP clients send; host "" means all interfaces. */
  udp: HostPort;
  /** Where the sender connects; host "" means all interfaces. */
  tcp: HostPort;
  config: ReceiverConfig;
  logger: Logger;
  /**
   * Operator approval for senders when no secret is set; refuses when absent. `cancelled` aborts when
   * the sender goes away before the answer.
   */
  approve?: (peer: string, cancelled: AbortSignal) => Promise<boolean>;
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

/**
 * Kernel buffers of the public UDP socket: every client shares it, and the default (~208 KiB, about
 * 300 small datagrams counting the kernel's per-datagram overhead) overflows in a burst while the
 * process is busy writing to TCP. A limit, not an allocation; the kernel caps it at rmem_max.
 */
const CLIENT_SOCKET_BUFFER = 2 * 1024 * 1024;

export async function startReceiver(options: ReceiverOptions): Promise<ReceiverHandle> {
  const { transport, logger } = options;
  const machine = new ReceiverMachine(options.config, nodeCrypto);
  const resolver = new Resolver();
  const rateLimited = new RateLimitedLog(logger);
  const approvals: Array<{ conn: number; peer: string }> = [];
  let asking = false;
  let udp: UdpSocket | undefined;

  /** One question at a time (there is one operator); a sender that left meanwhile is skipped. */
  const askNext = (): void => {
    if (asking) return;
    let next = approvals.shift();
    while (next && !machine.awaitingApproval(next.conn)) next = approvals.shift();
    if (!next) return;
    const { conn, peer } = next;
    asking = true;
    const cancel = new AbortController();
    const watch = setInterval(() => {
      if (!machine.awaitingApproval(conn)) cancel.abort();
    }, 200);
    const decide = options.approve ? options.approve(peer, cancel.signal) : Promise.resolve(false);
    decide
      .catch((error) => {
        if (!cancel.signal.aborted) logger.log("warn", `operator approval failed: ${messageOf(error)}`);
        return false;
      })
      .then((accepted) => {
        clearInterval(watch);
        asking = false;
        driver.guard(() => machine.approve(conn, accepted, now()));
        askNext();
      });
  };

  const onOutput = (output: Output): void => {
    switch (output.kind) {
      case "send-to-client": {
        const flow: ClientFlow = output.flow;
        // The payload is a view into the TCP chunk being decoded: sent before this drain returns.
        replies.add(output.payload, flow.port, flow.address);
        return;
      }
      case "ask-operator":
        if (!options.approve) {
          logger.log(
            "warn",
            `sender ${output.peer} refused: no shared secret is configured and no operator can answer`,
          );
        }
        approvals.push({ conn: output.conn, peer: output.peer });
        askNext();
        return;
      default:
        return;
    }
  };
  /** Replies to clients produced by one drain go out together (one sendmmsg on Bun). */
  const replies = new UdpBatcher(false);
  const sendReplies = (): void => {
    const dropped = replies.flush(udp);
    if (dropped === 0) return;
    machine.stats.drops["socket-error"] += dropped;
    const what = dropped === 1 ? "a datagram" : `${dropped} datagrams`;
    rateLimited.log("udp-send", "warn", `could not send ${what} to clients (too large, or socket buffer full)`);
  };
  const driver = new MachineDriver(machine, logger, onOutput, sendReplies);

  const udpHost = await bindAddress(resolver, options.udp.host, "--udp");
  const tcpHost = await bindAddress(resolver, options.tcp.host, "--tcp");
  let udpBound = udpHost;
  try {
    udp = await withIPv4Fallback(udpHost, (host) => {
      udpBound = host;
      return transport.bindUdp({
        host,
        port: options.udp.port,
        bufferBytes: CLIENT_SOCKET_BUFFER,
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
        onConnection: (connection) =>
          driver.attach(connection, (conn) => {
            const peer = formatHostPort(connection.remoteAddress, connection.remotePort);
            logger.log("debug", `connection from ${peer}`);
            machine.connect(conn, peer, now());
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
      `(transport: ${transport.name}, auth: ${options.config.secret ? "shared secret" : "operator approval"})`,
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
