/**
 * Transport over Node's node:dgram and node:net (also runs on Bun's Node compatibility layer).
 * Bytes in, bytes out: no frames, no timers beyond the connect timeout.
 *
 * Node behaviours this adapter relies on (verified on Node 20):
 * - 'message' and 'data' deliver a fresh Buffer per event (no reuse across calls).
 * - dgram send() on an unconnected socket resolves the address with the socket's `lookup` first
 *   (dns.lookup, which answers IP literals on the next tick); ours answers literals synchronously,
 *   so the send happens inside send(). It may still queue (EAGAIN) and keeps a reference to the
 *   buffer until then: the contract forbids callers to modify it, so no copy is made (the bytes are
 *   a view into a TCP chunk nobody reuses); errors go to the send callback.
 * - An ICMP error on a connected dgram socket arrives as an 'error' event (ECONNREFUSED, recvmsg);
 *   the socket stays usable. Without an 'error' listener that event would crash the process.
 * - A udp6 socket cannot send to an IPv4 literal (EINVAL): it needs the "::ffff:a.b.c.d" form.
 * - net write() queues everything and returns false past the high-water mark; 'drain' follows.
 * - tls.TLSSocket is a net.Socket: the same wrapper serves both. A tls.Server reports a client's
 *   failed handshake as 'tlsClientError' (never 'secureConnection'), and after a handshake timeout
 *   leaves the socket open; with `rejectUnauthorized: false` a client still learns the chain-and-name
 *   verdict from `authorized`/`authorizationError`.
 */
import dgram from "node:dgram";
import dns from "node:dns";
import net from "node:net";
import tls from "node:tls";
import {
  type ConnectOptions,
  DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
  isPendingSocketError,
  isPlaintextPeerError,
  type ListenOptions,
  MAX_UDP_SEND_ATTEMPTS,
  type TcpConnection,
  type TcpHandlers,
  type TcpServer,
  type Transport,
  tlsCertificateRefused,
  tlsHandshakeFailed,
  type UdpSocket,
  type UdpSocketOptions,
  udpPayloadLimit,
} from "@mcudpt/core";

/**
 * dgram never drops on a full kernel buffer: libuv queues without bound. Past this many pending
 * sends, send() drops and returns false, as a full kernel buffer would.
 */
const MAX_PENDING_DATAGRAMS = 1024;

/** Running on Bun's Node compatibility layer (its node:dgram is built on Bun.udpSocket). */
const ON_BUN = typeof process.versions.bun === "string";

/**
 * Runs `start` and settles on its callback or the emitter's first 'error', whichever comes first;
 * the temporary 'error' listener is what keeps a bind/listen failure from being unhandled.
 */
function settle(emitter: NodeJS.EventEmitter, start: (done: (error?: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    emitter.once("error", reject);
    start((error) => {
      emitter.off("error", reject);
      if (error) reject(error);
      else resolve();
    });
  });
}

/** dgram's address lookup: IP literals (all the contract passes) at once, anything else via DNS. */
function literalLookup(
  hostname: string,
  options: dns.LookupOneOptions,
  callback: (error: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const family = net.isIP(hostname);
  if (family === 0) dns.lookup(hostname, options, callback);
  else callback(null, hostname, family);
}

async function bindUdp(options: UdpSocketOptions): Promise<UdpSocket> {
  const v6 = net.isIPv6(options.host);
  // ipv6Only false: a socket bound to "::" also serves IPv4 (as ::ffff:a.b.c.d peers).
  const socket = dgram.createSocket({ type: v6 ? "udp6" : "udp4", ipv6Only: false, lookup: literalLookup });
  // A udp6 socket only talks to IPv6 addresses: map IPv4 literals onto it.
  const peer = (address: string) => (v6 && net.isIPv4(address) ? `::ffff:${address}` : address);
  try {
    // A bind error (EADDRINUSE) is an 'error' event: the temporary listener turns it into a rejection.
    await settle(socket, (done) => socket.bind({ address: options.host, port: options.port }, done));
    if (options.connect) {
      // Resolving only once connected means no send can happen before connect completes (a send
      // without port before then throws ERR_SOCKET_BAD_PORT), so nothing needs queuing. Connect
      // errors come as the callback's argument, not as an 'error' event.
      const { host, port } = options.connect;
      await settle(socket, (done) => socket.connect(port, peer(host), done));
    }
  } catch (error) {
    socket.close();
    throw error;
  }
  if (options.bufferBytes) {
    try {
      // The kernel caps these at rmem_max/wmem_max rather than failing; a runtime whose dgram lacks
      // them (or refuses) keeps the defaults, as the contract allows.
      socket.setRecvBufferSize(options.bufferBytes);
      socket.setSendBufferSize(options.bufferBytes);
    } catch {}
  }
  const connected = options.connect !== undefined;
  const peerLimit = connected ? udpPayloadLimit(options.connect?.host ?? "") : 0;
  /**
   * Who else reports a send failure (see core's udp-errors.ts). Node (libuv) sets no IP_RECVERR: an
   * unconnected socket never learns of ICMP errors, a connected one learns of each from a receive
   * (an 'error' event) or from the next send (its callback), never both. Bun's dgram sets IP_RECVERR
   * and, on a connected socket only, also emits everything the error queue holds as 'error': each
   * ICMP error, and a second report of each local EMSGSIZE.
   */
  const errorQueueReports = ON_BUN && connected;
  /** Oversized datagrams sent while errorQueueReports: their error-queue echo is not reported. */
  let owedLocalErrors = 0;
  // From here on every error (ICMP, asynchronous send failures) is reported, never thrown.
  socket.on("error", (error) => {
    const queued = (error as { errqueue?: unknown }).errqueue === true;
    if (queued && owedLocalErrors > 0 && (error as { code?: unknown }).code === "EMSGSIZE") {
      owedLocalErrors--;
      return;
    }
    options.onError(error);
  });
  socket.on("message", (data, remote) => options.onDatagram(data, remote.address, remote.port));
  let closed = false;
  socket.once("close", () => (closed = true));
  const local = socket.address();

  /** One datagram, attempt `attempt`; false when it could not even be queued. */
  const transmit = (data: Uint8Array, port: number | undefined, address: string | undefined, attempt: number) => {
    if (closed || socket.getSendQueueCount() >= MAX_PENDING_DATAGRAMS) return false;
    const own = data.byteLength > (connected ? peerLimit : udpPayloadLimit(address ?? ""));
    // Counted before sending: the echo may come before or after the send callback.
    if (own && errorQueueReports && attempt === 1) owedLocalErrors++;
    // A closure per datagram, since the retry needs the datagram (dgram's callback does not say
    // which one it is for); node:dgram allocates more than this per send anyway.
    const onSent = (error: Error | null) => {
      if (!error) return;
      // A pending socket error, i.e. an ICMP error some earlier datagram drew, is not this
      // datagram's failure: send it again, and report the error once (unless the runtime does).
      if (!own && attempt < MAX_UDP_SEND_ATTEMPTS && isPendingSocketError(error)) {
        if (transmit(data, port, address, attempt + 1)) {
          if (!errorQueueReports) options.onError(error);
          return;
        }
      }
      options.onError(error);
    };
    try {
      // A connected socket always sends to its peer (Node would throw if given an address).
      if (connected || port === undefined) socket.send(data, onSent);
      else socket.send(data, port, peer(address ?? ""), onSent);
      return true;
    } catch (error) {
      // Synchronous argument errors (bad port, socket not running): never throw. The false return
      // is the report (onError is for failures learned later), so a lost datagram counts once.
      void error;
      return false;
    }
  };

  return {
    address: local.address,
    port: local.port,
    get bufferBytes() {
      if (closed) return undefined;
      try {
        return { receive: socket.getRecvBufferSize(), send: socket.getSendBufferSize() };
      } catch {
        return undefined; // a runtime whose dgram cannot tell
      }
    },
    send: (data, port, address) => transmit(data, port, address, 1),
    close() {
      if (closed) return;
      closed = true;
      socket.close();
    },
  };
}

/** Wraps one net.Socket; Node already queues writes, so this only maps events to the contract. */
class NodeTcpConnection implements TcpConnection {
  readonly remoteAddress: string;
  readonly remotePort: number;

  constructor(
    private readonly socket: net.Socket,
    handlers: TcpHandlers,
    readonly peerCertificate?: Uint8Array,
  ) {
    this.remoteAddress = socket.remoteAddress ?? "";
    this.remotePort = socket.remotePort ?? 0;
    let failure: Error | undefined;
    socket.on("data", (data: Buffer) => handlers.onData(data));
    socket.on("drain", () => handlers.onDrain());
    // 'error' is always followed by 'close': remember it and report both as one onClose.
    socket.on("error", (error) => (failure ??= error));
    socket.once("close", () => handlers.onClose(failure));
  }

  write(data: Uint8Array): boolean {
    // Writing after end() would raise ERR_STREAM_WRITE_AFTER_END; the bytes are moot anyway.
    if (!this.socket.writable) return false;
    return this.socket.write(data);
  }

  end(): void {
    if (!this.socket.writable) return;
    // 'finish' fires once everything queued reached the kernel and the FIN went out. Destroying then
    // matches Bun, whose end() closes fully instead of leaving the socket half-open until the peer
    // closes its side; the kernel still delivers the bytes it holds.
    this.socket.once("finish", () => this.socket.destroy());
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A TLS record: alert (21), version 3.1, length 2, level fatal (2), protocol_version (70). */
const PROTOCOL_VERSION_ALERT = Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46]);

async function listenTcp(options: ListenOptions): Promise<TcpServer> {
  const onSocket = (socket: net.Socket) => {
    socket.setNoDelay(true);
    // The connection object must exist before its handlers; wire them right after, synchronously,
    // so no 'data' can be emitted in between.
    let handlers: TcpHandlers | undefined;
    const connection = new NodeTcpConnection(socket, {
      onData: (data) => handlers?.onData(data),
      onDrain: () => handlers?.onDrain(),
      onClose: (error) => handlers?.onClose(error),
    });
    handlers = options.onConnection(connection);
  };
  const secure = options.tls;
  // With TLS, onSocket runs on 'secureConnection', i.e. once the handshake completed.
  const server = secure
    ? tls.createServer(
        {
          cert: secure.cert,
          key: secure.key,
          handshakeTimeout: secure.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
        },
        onSocket,
      )
    : net.createServer(onSocket);
  if (secure) {
    // A handshake timeout only emits this (the socket would stay open), so destroy here.
    // The peer's address as accepted: once a handshake failed the TLS socket may no longer know it.
    const peers = new WeakMap<net.Socket, { address: string; port: number }>();
    server.on("connection", (raw: net.Socket) =>
      peers.set(raw, { address: raw.remoteAddress ?? "", port: raw.remotePort ?? 0 }),
    );
    server.on("tlsClientError", (error, socket) => {
      const raw = (socket as unknown as { _parent?: net.Socket | null })._parent;
      const peer = (raw && peers.get(raw)) ?? { address: socket.remoteAddress ?? "", port: socket.remotePort ?? 0 };
      secure.onHandshakeError?.(tlsHandshakeFailed(error), peer.address, peer.port);
      // OpenSSL hangs up on a client that speaks no TLS without a word; BoringSSL (the Bun transport)
      // answers with a fatal protocol_version alert. Send that alert too, on the TCP socket under the
      // TLS one, so a plaintext mcudpt sees a TLS record and can say "TLS on one side only" itself.
      if (raw && !raw.destroyed && isPlaintextPeerError(error))
        raw.write(PROTOCOL_VERSION_ALERT, () => socket.destroy());
      else socket.destroy();
    });
  }
  await settle(server, (done) => server.listen({ host: options.host, port: options.port }, done));
  // Accept failures (EMFILE...) are emitted on the server; the contract has no channel for them and
  // the listener keeps accepting, so they are ignored rather than left to crash the process.
  server.on("error", () => {});
  const bound = server.address() as net.AddressInfo;
  return {
    address: bound.address,
    port: bound.port,
    close() {
      server.close(); // stops accepting; established sockets are untouched
    },
  };
}

function connectTcp(options: ConnectOptions): Promise<TcpConnection> {
  return new Promise((resolve, reject) => {
    const secure = options.tls;
    const tunnel = options.tunnel;
    // rejectUnauthorized is off so that a pinned self-signed certificate can pass; with a CA the
    // verdict is checked below. servername: SNI and the name the certificate must match.
    const tlsOptions = { ca: secure?.ca, servername: secure?.serverName, rejectUnauthorized: false };
    // Through a proxy: plain TCP to the proxy, its handshake, then TLS over that same socket.
    const raw =
      secure && !tunnel
        ? tls.connect({ host: options.host, port: options.port, ...tlsOptions })
        : net.connect({ host: options.host, port: options.port });
    /** The socket the connection will be: `raw`, or the TLS socket over it. */
    let socket: net.Socket = raw;
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      raw.destroy();
      reject(error);
    };
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(
            () =>
              fail(
                Object.assign(new Error(`connect ETIMEDOUT ${options.host}:${options.port}`), { code: "ETIMEDOUT" }),
              ),
            options.timeoutMs,
          );
    // A TCP-level error (ECONNREFUSED) is reported as is; one after TLS started is the handshake's.
    let tlsStarted = secure !== undefined && !tunnel;
    let tcpConnected = false;
    raw.once("connect", () => (tcpConnected = true));
    const onError = (error: Error) => fail(tlsStarted && tcpConnected ? tlsHandshakeFailed(error) : error);
    // A plaintext peer may just hang up: no 'error', only 'close'.
    const onClose = () =>
      fail(tlsStarted ? tlsHandshakeFailed(undefined) : new Error("the proxy closed the connection"));
    raw.on("error", onError);
    raw.on("close", onClose);
    const done = (rest?: Uint8Array) => {
      if (settled) return;
      let peerCertificate: Uint8Array | undefined;
      if (secure) {
        const tlsSocket = socket as tls.TLSSocket;
        if (secure.ca !== undefined && !tlsSocket.authorized) {
          return fail(tlsCertificateRefused(tlsSocket.authorizationError));
        }
        peerCertificate = tlsSocket.getPeerCertificate().raw;
      }
      settled = true;
      clearTimeout(timer);
      for (const s of new Set([raw, socket])) {
        s.off("error", onError);
        s.off("close", onClose);
      }
      // Under TLS the TLS socket reports what happens to the one below it.
      if (socket !== raw) raw.on("error", () => {});
      raw.setNoDelay(true);
      // The bytes that followed the proxy's reply come first, once 'data' has a listener.
      if (rest && rest.length > 0) socket.unshift(rest);
      // Handlers go in before this tick ends; 'data' cannot fire earlier (no listener, paused).
      resolve(new NodeTcpConnection(socket, options.handlers, peerCertificate));
    };
    const startTls = () => {
      tlsStarted = true;
      socket = tls.connect({ socket: raw, ...tlsOptions });
      socket.on("error", onError);
      socket.on("close", onClose);
      socket.once("secureConnect", () => done());
    };
    if (!tunnel) {
      raw.once(secure ? "secureConnect" : "connect", () => done());
      return;
    }
    raw.once("connect", () => raw.write(tunnel.request));
    const onData = (data: Buffer) => {
      let rest: Uint8Array | undefined;
      try {
        rest = tunnel.receive(data);
      } catch (error) {
        return fail(error as Error);
      }
      if (rest === undefined) return;
      // The connection's own 'data' listener goes in synchronously, in done(): nothing is missed.
      raw.off("data", onData);
      if (!secure) return done(rest);
      if (rest.length > 0) return fail(new Error("the proxy sent bytes of the peer's before TLS started"));
      startTls();
    };
    raw.on("data", onData);
  });
}

/** No TCP buffer sizes: net.Socket has no SO_SNDBUF/SO_RCVBUF setter nor getter (nodejs/node#49418). */
export const nodeTransport: Transport = { name: "node", setsTcpBuffers: false, bindUdp, listenTcp, connectTcp };
