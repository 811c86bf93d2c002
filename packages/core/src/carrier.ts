/**
 * The carrier: how the tunnel's byte stream reaches the peer. Plain TCP (the default), WebSocket
 * messages (for reverse proxies, CDNs and networks that only let HTTP(S) out), either one with TLS,
 * and, when dialing, through an HTTP CONNECT or SOCKS5 proxy. The dialer and the listener ask the
 * carrier for connections instead of asking the transport; what they get is a TcpConnection either
 * way, so the protocol and everything above it are the same over every carrier.
 */
import { formatHostPort, type HostPort } from "./address.js";
import { messageOf } from "./errors.js";
import type { Logger } from "./logger.js";
import { RateLimitedLog } from "./logger.js";
import { type ProxySpec, proxyFromEnvironment, proxyHandshake } from "./proxy.js";
import { Resolver } from "./resolve.js";
import { sourceMatcher } from "./source-match.js";
import { TcpBufferReport } from "./tcp-buffer.js";
import type { ClientTlsOptions, ListenOptions, TcpConnection, TcpHandlers, TcpServer, Transport } from "./transport.js";
import { acceptWebSocket, connectWebSocket } from "./websocket.js";

export interface WebSocketCarrier {
  /** The request path (dialing: with its query) the listener upgrades; "/" at least. */
  path: string;
  /** Dialing: wss:// (TLS under the WebSocket), for the Host header's default port and the log text. */
  secure?: boolean;
  /** Dialing: the Host header and TLS server name (SNI) instead of the address's host, for CDNs. */
  host?: string;
  /** Dialing: extra request headers. */
  headers?: ReadonlyArray<readonly [string, string]>;
  /**
   * Listening: addresses and CIDR blocks of reverse proxies whose Forwarded / X-Forwarded-For header
   * names the client (`10.0.0.0/8,::1`, as from= on authorized_keys lines).
   */
  trustedProxies?: string;
}

export interface CarrierOptions {
  /** Carry the stream in WebSocket messages instead of plain TCP. */
  webSocket?: WebSocketCarrier;
  /**
   * Dialing: through this proxy; "none" never. Absent: the environment's (HTTPS_PROXY, ALL_PROXY,
   * NO_PROXY) for a WebSocket carrier, none for plain TCP.
   */
  proxy?: ProxySpec | "none";
  /** The environment read for the proxy (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** SO_RCVBUF/SO_SNDBUF asked for every TCP connection (--tcp-buffer); default: the kernel's (autotuned). */
  tcpBufferBytes?: number;
}

export interface DialCarrier {
  /** The peer as log lines and pins name it: "host:port", or the WebSocket URL. */
  readonly remote: string;
  /** " through proxy URL" or "": appended to the connection's log line. */
  readonly via: string;
  /**
   * One connection (resolving names first: the peer's, or the proxy's when there is one, which then
   * resolves the peer's itself). Rejects with one line; a TLS refusal keeps its TLS_CERT_REFUSED code.
   */
  connect(options: {
    timeoutMs: number;
    handlers: TcpHandlers;
    tls?: ClientTlsOptions;
    /**
     * Called on the (TLS) connection before anything is sent over it: false ends the attempt (the
     * connection is destroyed and connect rejects). Where the dialer checks a pinned certificate.
     */
    verify?: (connection: TcpConnection) => Promise<boolean>;
  }): Promise<TcpConnection>;
}

export interface ListenCarrier {
  /** listenTcp, with the carrier's layers on each accepted connection. */
  listen(options: ListenOptions): Promise<TcpServer>;
  /** How the listening address reads in log lines, given the bound host and port. */
  describe(host: string, port: number): string;
}

/** The default port of a ws:// or wss:// URL. */
function defaultPort(secure: boolean): number {
  return secure ? 443 : 80;
}

/** The carrier that dials `remote` (whose empty host means this machine). */
export function dialCarrier(
  transport: Transport,
  remote: HostPort,
  options: CarrierOptions = {},
  logger?: Logger,
): DialCarrier {
  const buffers = new TcpBufferReport(options.tcpBufferBytes, transport, logger);
  const host = remote.host === "" ? "127.0.0.1" : remote.host;
  const target = { host, port: remote.port };
  const ws = options.webSocket;
  const proxy =
    options.proxy === "none"
      ? undefined
      : (options.proxy ?? (ws ? proxyFromEnvironment(target, options.env ?? process.env) : undefined));
  const resolver = new Resolver();
  const secure = ws?.secure === true;
  const remoteText = ws
    ? `${secure ? "wss" : "ws"}://${formatHostPort(host, remote.port)}${ws.path}`
    : formatHostPort(host, remote.port);

  const open = async (handlers: TcpHandlers, timeoutMs: number, tls: ClientTlsOptions | undefined) => {
    const first = proxy ?? target;
    let address: string;
    try {
      address = (await resolver.resolve(first.host)).address;
    } catch (error) {
      throw new Error(`cannot resolve ${proxy ? "the proxy's host " : ""}"${first.host}": ${messageOf(error)}`);
    }
    const tunnel = proxy && proxyHandshake(proxy, target);
    try {
      const connection = await transport.connectTcp({
        host: address,
        port: first.port,
        timeoutMs,
        tls,
        tunnel,
        handlers,
        bufferBytes: buffers.bytes,
      });
      buffers.connected(connection);
      return connection;
    } catch (error) {
      // A failure before the tunnel stood is the proxy's: say so (its own refusals already do).
      if (proxy && tunnel && !tunnel.done && !messageOf(error).startsWith(`proxy ${proxy.text}`)) {
        throw new Error(`proxy ${proxy.text}: ${messageOf(error)}`);
      }
      throw error;
    }
  };

  return {
    remote: remoteText,
    via: proxy ? ` through proxy ${proxy.text}` : "",
    async connect({ timeoutMs, handlers, tls, verify }) {
      const started = Date.now();
      const serverName = ws?.host ? hostName(ws.host) : undefined;
      const tlsOptions = tls && serverName ? { ...tls, serverName } : tls;
      const checked = async (inner: TcpHandlers) => {
        const connection = await open(inner, timeoutMs, tlsOptions);
        if (verify && !(await verify(connection))) {
          connection.destroy();
          throw new Error("the peer's certificate was refused");
        }
        return connection;
      };
      if (!ws) return checked(handlers);
      const hostHeader =
        ws.host ?? (remote.port === defaultPort(secure) ? bracketed(host) : formatHostPort(host, remote.port));
      return connectWebSocket(
        checked,
        { host: hostHeader, path: ws.path, secure, headers: ws.headers },
        handlers,
        Math.max(1, timeoutMs - (Date.now() - started)),
      );
    },
  };
}

/** The carrier that listens; `handshakeTimeoutMs` bounds a WebSocket client's upgrade. */
export function listenCarrier(
  transport: Transport,
  options: CarrierOptions = {},
  logger?: Logger,
  handshakeTimeoutMs = 10_000,
): ListenCarrier {
  const ws = options.webSocket;
  const buffers = new TcpBufferReport(options.tcpBufferBytes, transport, logger);
  const bufferBytes = buffers.bytes;
  if (!ws) {
    return {
      listen: (listenOptions) =>
        transport.listenTcp({
          ...listenOptions,
          bufferBytes,
          onConnection: (connection) => {
            buffers.connected(connection);
            return listenOptions.onConnection(connection);
          },
        }),
      describe: (host, port) => `TCP ${formatHostPort(host, port)}`,
    };
  }
  const log = logger && new RateLimitedLog(logger);
  const trustedProxy = ws.trustedProxies === undefined ? undefined : sourceMatcher(ws.trustedProxies);
  return {
    describe: (host, port) => `${ws.secure ? "wss" : "ws"}://${formatHostPort(host, port)}${ws.path}`,
    listen: (listenOptions) =>
      transport.listenTcp({
        ...listenOptions,
        bufferBytes,
        onConnection: (raw) => {
          buffers.connected(raw);
          return acceptWebSocket(raw, {
            path: ws.path,
            trustedProxy,
            timeoutMs: handshakeTimeoutMs,
            onUpgrade: (connection) => listenOptions.onConnection(connection),
            onRefused: (request, connection) => {
              const peer = formatHostPort(connection.remoteAddress, connection.remotePort);
              if (request.rightPath) {
                log?.log(
                  "ws-no-upgrade",
                  "warn",
                  `HTTP ${request.method} ${request.target} from ${peer} without a WebSocket upgrade: answered 404 (a reverse proxy that does not pass the Upgrade and Connection headers?)`,
                );
              } else {
                log?.log(
                  "ws-other-path",
                  "debug",
                  `HTTP ${request.method} ${request.target} from ${peer}: answered 404`,
                );
              }
            },
          });
        },
      }),
  };
}

/** The host part of a Host header value ("name", "name:443", "[::1]:443"). */
function hostName(hostHeader: string): string {
  const bracket = /^\[([^\]]+)\]/.exec(hostHeader);
  if (bracket) return bracket[1];
  const colon = hostHeader.lastIndexOf(":");
  return colon > 0 && /^\d+$/.test(hostHeader.slice(colon + 1)) ? hostHeader.slice(0, colon) : hostHeader;
}

function bracketed(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
