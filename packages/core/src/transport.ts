/**
 * The contract a runtime adapter fulfils: sockets that move bytes, nothing about frames or flows.
 * Adapters (transport-bun, transport-node) are deliberately thin; everything they would otherwise
 * share (queues, timers, resolution, the protocol) lives in the core that drives them.
 *
 * Addresses given to a transport are IP literals (the core resolves host names first).
 * No method throws for network conditions: failures after creation arrive through `onError`/`onClose`.
 */

export interface UdpSocketOptions {
  /** Local IP literal to bind ("0.0.0.0", "::", "127.0.0.1"). */
  host: string;
  /** Local port; 0 picks an ephemeral one. */
  port: number;
  /** Connect the socket to one peer: sends go there and only its datagrams are delivered. */
  connect?: { host: string; port: number };
  /**
   * A datagram arrived. `data` may be a view into a buffer the runtime reuses after this call
   * returns: copy what must outlive it.
   */
  onDatagram(data: Uint8Array, address: string, port: number): void;
  /**
   * Something went wrong that no return value reported, each thing once:
   * - a send failed after send() had returned true (an asynchronous failure: node:dgram);
   * - an ICMP error arrived for a datagram sent earlier (port unreachable: ECONNREFUSED, host
   *   unreachable...): on a connected socket, and on any socket where the runtime asks the kernel
   *   for them (Bun sets IP_RECVERR). It concerns that earlier datagram's destination, and is
   *   reported once whether the kernel handed it to a receive or to a later send (see send()).
   * A send() that returned false, or a datagram sendMany did not count, is not reported again here.
   * The socket stays open and usable.
   */
  onError(error: Error): void;
  /**
   * Requested size in bytes of the kernel's receive and send buffers (SO_RCVBUF/SO_SNDBUF), for
   * bursts. Best effort: the kernel caps it (net.core.rmem_max/wmem_max), and a runtime that cannot
   * set it keeps the system default. UdpSocket.bufferBytes tells what the socket got.
   */
  bufferBytes?: number;
}

/**
 * Datagrams for UdpSocket.sendMany, flat (no object per datagram): on an unconnected socket
 * `data, port, address, data, port, address, ...`; on a connected one `data, data, ...`.
 */
export type UdpBatch = Array<Uint8Array | number | string>;

export interface UdpSocket {
  /** Local address and port actually bound. */
  readonly address: string;
  readonly port: number;
  /**
   * Optional: the kernel's receive and send buffer sizes for this socket, as getsockopt
   * (SO_RCVBUF/SO_SNDBUF) reports them, read when accessed; undefined when the runtime cannot tell
   * (or the socket is closed). This is what a burst can fill: Linux doubles the size set (half is
   * accounted as bookkeeping) and caps the request at net.core.rmem_max/wmem_max first, so a 2 MiB
   * request reads 4 MiB where rmem_max allows it, and 425,984 (2 x 212,992) on a host left at the
   * usual default; an untouched socket reads net.core.rmem_default/wmem_default. Compare with the
   * requested `bufferBytes` to warn that the kernel did not grant it (receive < requested).
   */
  readonly bufferBytes?: { receive: number; send: number };
  /**
   * Sends one datagram, to `address`:`port`, or to the connected peer when both are omitted.
   * Returns false when this datagram was dropped on its own account: too large, an address of the
   * wrong family or invalid, kernel buffer full, socket closed; never throws.
   * A socket's pending error that the kernel returns from this send (an ICMP error an earlier
   * datagram drew, possibly to another destination: see udp-errors.ts) is not this datagram's
   * failure: the transport sends it again (a bounded number of times) and the error goes to
   * onError once, as the earlier datagram's, never as a false return.
   * The caller must not modify `data` afterwards: a transport may send it later (Node's dgram does),
   * and copying every datagram to allow reuse would cost the hot path an allocation.
   */
  send(data: Uint8Array, port?: number, address?: string): boolean;
  /**
   * Optional: sends a batch of datagrams with as few system calls as the runtime allows (Bun: one
   * sendmmsg). Returns how many were sent and, when `failed` is given, appends the index (0-based,
   * in datagrams) of each one that was not; never throws; same ownership rule as send(). Each datagram
   * not sent was dropped on its own account, exactly as if send() had returned false for it: when the
   * kernel refuses datagram i, only i is concerned (the ones after it are still sent), and if the
   * refusal was a pending socket error, not even i (it is sent again, as send() does). So a batch's
   * count never hides an error elsewhere, and an error never costs other datagrams.
   * Callers without it loop over send().
   */
  sendMany?(batch: UdpBatch, failed?: number[]): number;
  /**
   * Optional: how many datagrams sendMany has handed to the kernel in segmented runs so far (UDP
   * generic segmentation offload: equal-sized datagrams to one destination in one call; Bun on
   * Linux). Absent where the transport never segments.
   */
  readonly segmented?: number;
  close(): void;
}

export interface TcpHandlers {
  /** Bytes arrived. `data` is valid only during the call (copy what must outlive it). */
  onData(data: Uint8Array): void;
  /** The write buffer drained after write() returned false. */
  onDrain(): void;
  /** The connection is gone, cleanly (`error` undefined) or not. Called exactly once. */
  onClose(error?: Error): void;
}

export interface TcpConnection {
  readonly remoteAddress: string;
  readonly remotePort: number;
  /**
   * Set when remoteAddress is the client a trusted reverse proxy named, not the TCP peer: the proxy's
   * address:port (remotePort is then 0: the client's port is not known).
   */
  readonly via?: string;
  /** On a TLS connection made by connectTcp: the peer's leaf certificate (DER), for pinning. */
  readonly peerCertificate?: Uint8Array;
  /**
   * Optional: the kernel's receive and send buffer sizes of this connection's socket, as getsockopt
   * (SO_RCVBUF/SO_SNDBUF) reports them when read (Linux doubles a size set, see UdpSocket.bufferBytes;
   * an untouched TCP socket reads what autotuning has made of net.ipv4.tcp_rmem/tcp_wmem so far);
   * undefined where the runtime cannot tell.
   */
  readonly bufferBytes?: { receive: number; send: number };
  /**
   * Takes all of `data` (queuing what the kernel did not accept) and returns false when the caller
   * should stop writing until onDrain. The caller must not modify `data` afterwards, unless
   * `copiesWrites` says a write that returned true kept no reference to it.
   */
  write(data: Uint8Array): boolean;
  /**
   * A write() that returns true has copied all of `data` out (into the kernel, or a TLS engine) and
   * keeps no reference: the caller may write over that memory (its frame buffer is reused instead of
   * a fresh one allocated per megabyte). Absent or false: a write may hold `data` until it is sent.
   */
  readonly copiesWrites?: boolean;
  /** Closes after everything queued has been sent. */
  end(): void;
  /** Closes now; queued bytes are dropped. */
  destroy(): void;
}

export interface TcpServer {
  readonly address: string;
  readonly port: number;
  /** Stops accepting; existing connections are not touched. */
  close(): void;
  /**
   * Serves another certificate and key (a renewed certificate) to connections accepted from now on;
   * established ones keep theirs. Only on a server listening with `tls`. Rejects (a certificate and
   * key the runtime will not take, the port lost meanwhile) with the old ones still served.
   */
  replaceCertificate?(tls: { cert: string; key: string }): Promise<void>;
}

export interface ListenOptions {
  host: string;
  port: number;
  /**
   * A connection was accepted; return its handlers. TCP_NODELAY is already set. With `tls`, only once
   * its TLS handshake completed.
   */
  onConnection(connection: TcpConnection): TcpHandlers;
  /** Serve TLS instead of plain TCP. */
  tls?: ServerTlsOptions;
  /**
   * SO_RCVBUF/SO_SNDBUF requested for each accepted connection, where the runtime can set them
   * (Transport.setsTcpBuffers); best effort, the kernel caps them at net.core.rmem_max/wmem_max.
   */
  bufferBytes?: number;
}

export interface ServerTlsOptions {
  /** PEM certificate (chain) and private key. */
  cert: string;
  key: string;
  /** A client that has not completed its TLS handshake by then is dropped (default 10 s; Bun rounds up to its 4 s timer tick). */
  handshakeTimeoutMs?: number;
  /** A client's TLS handshake failed (a plaintext client, a client that refused the certificate, a timeout). */
  onHandshakeError?(error: Error, remoteAddress: string, remotePort: number): void;
}

export interface ClientTlsOptions {
  /**
   * PEM CA certificate(s) the peer's chain and name must verify against; a failure rejects with code
   * TLS_CERT_REFUSED. Without it any certificate is accepted: the caller pins `peerCertificate`.
   */
  ca?: string;
  /** The name the certificate must be valid for, also sent as SNI; default: the IP address dialed. */
  serverName?: string;
}

/**
 * The `code` of connectTcp's rejection when the handshake completed but the peer's certificate did
 * not verify against `tls.ca` (a refusal, not a network failure). Any other handshake failure rejects
 * with a message starting "TLS handshake failed".
 */
export const TLS_CERT_REFUSED = "ERR_MCUDPT_TLS_CERT_REFUSED";

/**
 * A proxy's handshake, run by connectTcp on the plain TCP connection before TLS and before the
 * connection is handed over (an HTTP CONNECT or SOCKS5 exchange: see core's proxy.ts). Sans-I/O:
 * the transport only moves the bytes.
 */
export interface TunnelHandshake {
  /** Sent as soon as TCP is connected. */
  readonly request: Uint8Array;
  /**
   * Bytes from the proxy, in order. Returns undefined while its reply is incomplete; once the tunnel
   * stands, the bytes that followed the reply (the peer's first bytes, often empty), which the
   * transport delivers as the connection's first data (plain) or rejects (before TLS, where the
   * peer cannot have spoken). Throws an Error (one line) when the proxy refused or spoke nonsense:
   * connectTcp rejects with it.
   */
  receive(data: Uint8Array): Uint8Array | undefined;
}

export interface ConnectOptions {
  /** The address to connect to: the peer's, or the proxy's when `tunnel` is given. */
  host: string;
  port: number;
  /** Give up connecting after this long (the promise rejects). */
  timeoutMs?: number;
  /** Handlers for the connection, installed before any data can arrive. */
  handlers: TcpHandlers;
  /** Speak TLS; the promise resolves only once the handshake completed (the timeout covers it). */
  tls?: ClientTlsOptions;
  /** Reach the peer through a proxy at host:port: this exchange runs first (the timeout covers it), TLS after it. */
  tunnel?: TunnelHandshake;
  /** SO_RCVBUF/SO_SNDBUF requested for the connection, as ListenOptions.bufferBytes. */
  bufferBytes?: number;
}

export interface Transport {
  readonly name: "bun" | "node";
  /**
   * Whether ListenOptions/ConnectOptions.bufferBytes take effect here. Node's net.Socket has no
   * SO_SNDBUF/SO_RCVBUF setter (nodejs/node#49418), so the Node adapter cannot size TCP buffers.
   */
  readonly setsTcpBuffers: boolean;
  /** Binds a UDP socket. Rejects (e.g. EADDRINUSE) when it cannot. */
  bindUdp(options: UdpSocketOptions): Promise<UdpSocket>;
  /** Listens for TCP connections. Rejects (e.g. EADDRINUSE) when it cannot. */
  listenTcp(options: ListenOptions): Promise<TcpServer>;
  /** Connects with TCP_NODELAY set. Rejects (e.g. ECONNREFUSED, timeout) when it cannot. */
  connectTcp(options: ConnectOptions): Promise<TcpConnection>;
}
