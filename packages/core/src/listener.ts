/** The listening TCP side of either role: accept connections and hand them to the machine. */
import { formatHostPort, type HostPort } from "./address.js";
import { type MachineDriver, now } from "./driver.js";
import { bindFailure, UserError } from "./errors.js";
import type { Logger } from "./logger.js";
import { RateLimitedLog } from "./logger.js";
import { bindAddress, withIPv4Fallback } from "./bind.js";
import { type CarrierOptions, listenCarrier } from "./carrier.js";
import { Resolver } from "./resolve.js";
import { type ListenerTlsOptions, listenerTls } from "./tls-peer.js";
import type { TcpServer, Transport } from "./transport.js";

export interface ListenerOptions {
  transport: Transport;
  logger: Logger;
  driver: MachineDriver;
  peerName: string;
  listen: HostPort;
  /** The flag naming the listening address, for error messages. */
  flag: string;
  handshakeTimeoutMs?: number;
  tls?: ListenerTlsOptions;
  /** What accepted connections carry (WebSocket); default plain TCP. */
  carrier?: CarrierOptions;
}

export interface Listener {
  readonly address: string;
  readonly port: number;
  /** Serves `tls` to connections accepted from now on (a renewed certificate); see TcpServer. */
  replaceCertificate(tls: ListenerTlsOptions): Promise<void>;
  close(): void;
}

export async function listen(options: ListenerOptions): Promise<Listener> {
  const { transport, logger, driver } = options;
  const session = driver.machine.session;
  const resolver = new Resolver();
  const host = await bindAddress(resolver, options.listen.host, options.flag);
  const tls =
    options.tls && listenerTls(options.tls, options.handshakeTimeoutMs, new RateLimitedLog(logger), options.peerName);
  const carrier = listenCarrier(transport, options.carrier, logger, options.handshakeTimeoutMs);
  let bound = host;
  let server: TcpServer;
  try {
    server = await withIPv4Fallback(host, (tryHost) => {
      bound = tryHost;
      return carrier.listen({
        host: tryHost,
        port: options.listen.port,
        tls,
        onConnection: (connection) =>
          driver.attach(connection, (conn) => {
            const peer = connection.via
              ? `${connection.remoteAddress} (via ${connection.via})`
              : formatHostPort(connection.remoteAddress, connection.remotePort);
            logger.log("debug", `connection from ${peer}`);
            session.accept(conn, peer, now(), connection.remoteAddress);
          }),
      });
    });
  } catch (error) {
    throw new UserError(
      `cannot listen on TCP ${formatHostPort(host, options.listen.port)}: ${bindFailure(error, options.listen.port)}`,
    );
  }
  if (options.carrier?.webSocket) {
    logger.log("info", `WebSocket carrier: upgrading ${carrier.describe(bound, server.port)} (any other request: 404)`);
  }
  return {
    address: bound,
    port: server.port,
    async replaceCertificate(next) {
      if (!server.replaceCertificate)
        throw new UserError("this listener serves no TLS: turning TLS on needs a restart");
      await server.replaceCertificate({ cert: next.cert, key: next.key });
    },
    close: () => server.close(),
  };
}
