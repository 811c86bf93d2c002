/**
 * Transport over Bun's native sockets (Bun.udpSocket, Bun.listen, Bun.connect).
 * Bytes in, bytes out: no frames, no timers beyond the connect timeout.
 *
 * Bun 1.4.5 behaviours this adapter relies on (verified empirically):
 * - UDP and TCP `data` handlers get a fresh ArrayBuffer per call (no reuse across calls), which is
 *   more than the contract promises; callers must still copy what outlives the call.
 * - UDP `error` handlers are called as `error.call(socket, err)` (one argument), not `(socket, err)`
 *   as bun-types declares; without any handler, an ICMP error on a connected socket (ECONNREFUSED,
 *   reported from the error queue) is thrown as an uncaught error and ends the process.
 * - UDP sockets get IP_RECVERR (and IPV6_RECVERR on IPv6 ones); Bun reads the error queue and calls
 *   `error` once per queued error, with `errqueue: true` and `syscall: "recv"` but no origin.
 *   Consequence: an ICMP error (port unreachable from a client that left) also becomes the socket's
 *   pending error, which the kernel returns from the NEXT send whatever its destination, even on an
 *   unconnected socket (see core's udp-errors.ts). The adapter retries such a datagram.
 * - UDP `send` throws synchronously: TypeError ERR_INVALID_ARG_TYPE (invalid address, port 0), a
 *   plain "Socket is closed", or a syscall error (code, errno, `syscall: "send"`): EMSGSIZE,
 *   EAFNOSUPPORT, or a pending ICMP error (ECONNREFUSED...). A local EMSGSIZE is also queued on the
 *   error queue and so reported again through `error` (swallowed here: counted once).
 * - UDP `sendMany` sends the whole batch with one sendmmsg (more than ~200 datagrams: several, same
 *   semantics). It throws, having sent nothing, when an argument is invalid (TypeError) or when the
 *   kernel refuses the first datagram (a syscall error); when the kernel refuses datagram i > 0
 *   (EMSGSIZE, EAFNOSUPPORT, EAGAIN, a pending ICMP error) it returns i, without saying why: the
 *   ones before were sent, the rest were not tried.
 * - Bun.udpSocket has no buffer-size option, but exposes its descriptor as `fd` (undeclared in
 *   bun-types); libc's setsockopt(SO_RCVBUF/SO_SNDBUF) through bun:ffi on it works (`ss -uam`:
 *   rb212992 before, rb4194304 after asking for 2 MiB). Bun's node:dgram sets them natively.
 *   Bun's TCP sockets (Bun.listen, Bun.connect) expose `fd` too, from `open` on: the same calls
 *   size a connection's buffers there (after the handshake: the window scale was already chosen
 *   from net.ipv4.tcp_rmem's maximum, which still leaves room for megabytes).
 * - TCP `socket.write` is unbuffered: it returns how many bytes the kernel took and drops the rest.
 * - TCP `socket.end()` shuts down and closes the socket at once, firing `close` synchronously inside
 *   the call; bytes already accepted by the kernel are still delivered.
 * - TLS: with a `handshake` handler, `open` fires at TCP connect/accept (writes then return 0) and
 *   Bun.connect resolves there too; `handshake(socket, success, error)` follows, and on failure the
 *   socket closes by itself. A client's `success` is also false when only the certificate did not
 *   verify (self-signed, or not for the serverName asked), rejectUnauthorized off or not; then the
 *   socket stays open and works. With `rejectUnauthorized: false`, `socket.authorized` still tells whether
 *   the chain and name verified against `ca`. `socket.timeout(s)` fires on a 4 s tick.
 */
import { readFileSync } from "node:fs";
import {
  type ConnectOptions,
  DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
  isPendingSocketError,
  type ListenOptions,
  MAX_UDP_SEND_ATTEMPTS,
  type TcpConnection,
  type TcpHandlers,
  type TcpServer,
  type Transport,
  type TunnelHandshake,
  tlsCertificateRefused,
  tlsHandshakeFailed,
  type UdpBatch,
  type UdpSocket,
  type UdpSocketOptions,
  udpPayloadLimit,
} from "@mcudpt/core";
import { loadGso, MIN_RUN } from "./gso.js";
import { openLibc } from "./libc.js";

type BunTcpSocket = import("bun").Socket<BunTcpConnection | undefined>;

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

/** Kernel buffer sizes as getsockopt reports them (see UdpSocket.bufferBytes). */
interface BufferSizes {
  receive: number;
  send: number;
}

/**
 * SO_RCVBUF/SO_SNDBUF through bun:ffi: Bun.udpSocket has no buffer option (Bun 1.4.5), but it
 * exposes its descriptor (`fd`), and setsockopt/getsockopt on it from libc do the rest.
 */
interface SocketBuffers {
  set(fd: number, bytes: number): void;
  get(fd: number): BufferSizes | undefined;
}

/** SOL_SOCKET, SO_SNDBUF, SO_RCVBUF per platform. */
const SOCKOPT: Partial<Record<NodeJS.Platform, { level: number; snd: number; rcv: number }>> = {
  linux: { level: 1, snd: 7, rcv: 8 },
  darwin: { level: 0xffff, snd: 0x1001, rcv: 0x1002 },
  freebsd: { level: 0xffff, snd: 0x1001, rcv: 0x1002 },
};

let socketBuffers: Promise<SocketBuffers | undefined> | undefined;
/** The same once loaded, for sockets that asked for nothing (read synchronously). */
let loadedSocketBuffers: SocketBuffers | undefined;

/** Loads libc's setsockopt/getsockopt once; undefined where that is impossible (then: defaults). */
function loadSocketBuffers(): Promise<SocketBuffers | undefined> {
  socketBuffers ??= (async () => {
    const opt = SOCKOPT[process.platform];
    if (!opt) return undefined;
    try {
      const { FFIType } = await import("bun:ffi");
      const lib = await openLibc({
        setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
        getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      } as const);
      if (!lib) return undefined;
      const { setsockopt, getsockopt } = lib.symbols;
      const value = new Int32Array(1);
      const length = new Uint32Array(1);
      const read = (fd: number, name: number): number | undefined => {
        length[0] = 4;
        return getsockopt(fd, opt.level, name, value, length) === 0 ? value[0] : undefined;
      };
      return (loadedSocketBuffers = {
        set(fd, bytes) {
          // The kernel caps these at net.core.rmem_max/wmem_max rather than failing.
          value[0] = Math.min(bytes, 0x7fffffff);
          setsockopt(fd, opt.level, opt.rcv, value, 4);
          value[0] = Math.min(bytes, 0x7fffffff);
          setsockopt(fd, opt.level, opt.snd, value, 4);
        },
        get(fd) {
          const receive = read(fd, opt.rcv);
          const send = read(fd, opt.snd);
          return receive === undefined || send === undefined ? undefined : { receive, send };
        },
      });
    } catch {
      return undefined; // no bun:ffi in this build
    }
  })();
  return socketBuffers;
}

/** What a socket nobody resized has on Linux: the system defaults (net.core.rmem_default/wmem_default). */
function defaultBufferSizes(): BufferSizes | undefined {
  try {
    const read = (name: string) => Number(readFileSync(`/proc/sys/net/core/${name}`, "latin1").trim());
    const sizes = { receive: read("rmem_default"), send: read("wmem_default") };
    return sizes.receive > 0 && sizes.send > 0 ? sizes : undefined;
  } catch {
    return undefined;
  }
}

/** A syscall's failure as Bun throws it (code, errno, syscall), as opposed to an argument error. */
function isSyscallError(error: unknown): error is Error & { code: string } {
  const e = error as { code?: unknown; syscall?: unknown } | null;
  return typeof e?.code === "string" && typeof e.syscall === "string";
}

async function bindUdp(options: UdpSocketOptions): Promise<UdpSocket> {
  /**
   * Local EMSGSIZE failures (a datagram larger than UDP allows) already reported as a failed send:
   * the kernel also queues each one on the error queue (IP_RECVERR), which Bun reports again through
   * `error` as an EMSGSIZE with `errqueue: true`. That echo is swallowed, so one lost datagram counts
   * once. An EMSGSIZE from the network (ICMP fragmentation needed) is not owed and is reported.
   */
  let owedLocalErrors = 0;
  const handler = {
    data(_socket: unknown, data: Uint8Array, port: number, address: string) {
      options.onDatagram(data, address, port);
    },
    // Mandatory: without it an ICMP error kills the process. Bun passes the error as the only
    // argument (see header), so take whichever argument is an Error.
    error(...args: unknown[]) {
      const error = asError(args.find((a) => a instanceof Error) ?? args[args.length - 1]);
      const queued = (error as { errqueue?: unknown }).errqueue === true;
      if (queued && owedLocalErrors > 0 && (error as { code?: unknown }).code === "EMSGSIZE") {
        owedLocalErrors--;
        return;
      }
      options.onError(error);
    },
  };
  const common = { hostname: options.host, port: options.port, binaryType: "uint8array" as const };
  // Rejects with EADDRINUSE etc.: exactly what the contract asks for.
  const socket = options.connect
    ? await Bun.udpSocket({
        ...common,
        connect: { hostname: options.connect.host, port: options.connect.port },
        socket: handler,
      })
    : await Bun.udpSocket({ ...common, socket: handler });
  // Resized before any datagram can arrive: the data handler runs on a later turn of the loop.
  const buffers = options.bufferBytes ? await loadSocketBuffers() : undefined;
  /** Bun.udpSocket exposes its descriptor (bun-types does not declare it). */
  const fd = fdOf(socket);
  if (options.bufferBytes) buffers?.set(fd, options.bufferBytes);
  const connected = options.connect !== undefined;
  const peerLimit = connected ? udpPayloadLimit(options.connect?.host ?? "") : 0;
  const gso = (await loadGso())?.forSocket(fd, connected, socket.address.family);
  /** Batch entries per datagram: data, or data, port, address. */
  const stride = connected ? 1 : 3;
  let closed = false;

  /** Larger than UDP allows toward its destination: refused on its own account, never retried. */
  const tooLarge = (data: Uint8Array, address?: string): boolean =>
    data.byteLength > (connected ? peerLimit : udpPayloadLimit(address ?? ""));

  const send = (data: Uint8Array, port?: number, address?: string): boolean => {
    if (closed) return false;
    for (let attempt = 1; ; attempt++) {
      try {
        // Bun sends exactly the view's bytes (byteOffset/byteLength honoured) and synchronously,
        // so no reference to `data` outlives the call. A connected socket always sends to its peer.
        return connected
          ? (socket as import("bun").udp.ConnectedSocket<"uint8array">).send(data)
          : (socket as import("bun").udp.Socket<"uint8array">).send(data, port as number, address as string);
      } catch (error) {
        // The contract: never throw; a false return is this datagram's failure report (onError is
        // for failures learned later), so a lost datagram is counted once.
        if (!isSyscallError(error)) return false;
        if (tooLarge(data, address)) {
          if (error.code === "EMSGSIZE") owedLocalErrors++;
          return false;
        }
        // A pending socket error (an ICMP error some earlier datagram drew) is nobody's fault: the
        // failed attempt cleared it, so go again. It is reported once, by Bun, from the error queue.
        if (attempt < MAX_UDP_SEND_ATTEMPTS && isPendingSocketError(error)) continue;
        return false;
      }
    }
  };

  /** Sends datagrams from..end of `batch` one by one (after sendMany refused the batch). */
  const sendEach = (batch: UdpBatch, from: number, end: number, failed: number[] | undefined): number => {
    let sent = 0;
    for (let i = from; i < end; i += stride) {
      if (send(batch[i] as Uint8Array, batch[i + 1] as number, batch[i + 2] as string)) sent++;
      else failed?.push(i / stride);
    }
    return sent;
  };

  /** Sends batch entries from..end through sendmmsg, each refused datagram on its own account. */
  const sendRange = (batch: UdpBatch, start: number, end: number, failed: number[] | undefined): number => {
    let sent = 0;
    let from = start; // index into `batch` of the first datagram not yet tried
    while (from < end) {
      let n: number;
      try {
        // Slicing only for a part or after a failure: a whole batch goes to Bun as the caller made it.
        n = socket.sendMany((from === 0 && end === batch.length ? batch : batch.slice(from, end)) as never);
      } catch (error) {
        // An invalid argument somewhere, nothing sent: one by one, each failure on its own.
        if (!isSyscallError(error)) return sent + sendEach(batch, from, end, failed);
        n = 0; // the kernel refused the first datagram
      }
      sent += n;
      from += n * stride;
      if (from >= end) break;
      // Datagram `from` was refused, for a reason sendmmsg does not tell: too large, wrong family,
      // buffer full, or a pending socket error that is not its fault at all (see udp-errors.ts).
      // It decides alone: once more through send(), which retries pending errors and counts the
      // rest as its own failure. Then the batch goes on after it.
      const data = batch[from] as Uint8Array;
      const address = batch[from + 2] as string;
      if (tooLarge(data, address)) {
        owedLocalErrors++; // refused already, and queued for `error`
        failed?.push(from / stride);
      } else if (send(data, batch[from + 1] as number, address)) sent++;
      else failed?.push(from / stride);
      from += stride;
    }
    return sent;
  };

  return {
    address: socket.address.address,
    port: socket.port,
    get bufferBytes() {
      if (closed) return undefined;
      // Read when asked (never on the hot path). Without libc access a socket is at the defaults,
      // unless it asked for more, which then could not be set: the defaults are the honest answer.
      const reader = buffers ?? loadedSocketBuffers;
      return reader ? reader.get(fd) : defaultBufferSizes();
    },
    send,
    get segmented() {
      return gso?.sent ?? 0;
    },
    sendMany(batch, failed) {
      if (closed) {
        if (failed) for (let i = 0; i < batch.length / stride; i++) failed.push(i);
        return 0;
      }
      if (!gso) return sendRange(batch, 0, batch.length, failed);
      // Runs of equal-sized datagrams to one destination go as one segmented send each; what lies
      // between them, and a run the kernel would not segment, through sendmmsg. Order is kept.
      let sent = 0;
      let plainFrom = 0;
      for (let i = 0; i < batch.length; ) {
        const count = gso.runAt(batch, i, stride);
        if (count < MIN_RUN) {
          i += stride;
          continue;
        }
        if (plainFrom < i) sent += sendRange(batch, plainFrom, i, failed);
        const end = i + count * stride;
        sent += gso.send({ batch, from: i, count, stride }) ? count : sendRange(batch, i, end, failed);
        i = plainFrom = end;
      }
      if (plainFrom < batch.length) sent += sendRange(batch, plainFrom, batch.length, failed);
      return sent;
    },
    close() {
      if (closed) return;
      closed = true;
      socket.close();
    },
  };
}

/** A Bun socket's descriptor (undeclared in bun-types). */
function fdOf(socket: unknown): number {
  return (socket as { fd: number }).fd;
}

/**
 * --tcp-buffer for one kind of TCP socket (listenTcp's accepted ones, or connectTcp's): libc loaded
 * first when a size is asked for, then applied in `open`, where the descriptor exists.
 */
async function tcpBuffers(bytes: number | undefined): Promise<(socket: BunTcpSocket) => void> {
  const buffers = bytes ? await loadSocketBuffers() : undefined;
  return (socket) => {
    if (bytes && buffers) buffers.set(fdOf(socket), bytes);
  };
}

/** Wraps one Bun TCP socket, adding the write queue that Bun's unbuffered write() lacks. */
class BunTcpConnection implements TcpConnection {
  handlers: TcpHandlers | undefined;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** Unsent remainders, oldest first from `head` (views into the caller's buffers, never copies). */
  private queue: Uint8Array[] = [];
  private head = 0;
  /** write() returned false: owe the caller an onDrain. */
  private needDrain = false;
  /** Bun's write() copies into the kernel (or the TLS engine) or returns short: a true write kept nothing. */
  readonly copiesWrites = true;
  private ending = false;
  private closed = false;

  constructor(
    private readonly socket: BunTcpSocket,
    readonly peerCertificate?: Uint8Array,
  ) {
    this.remoteAddress = socket.remoteAddress;
    this.remotePort = socket.remotePort;
  }

  /** What getsockopt says (libc is loaded once any socket asked for a size); undefined without it. */
  get bufferBytes(): BufferSizes | undefined {
    if (this.closed || !loadedSocketBuffers) return undefined;
    return loadedSocketBuffers.get(fdOf(this.socket));
  }

  write(data: Uint8Array): boolean {
    if (this.closed || this.ending) return false;
    if (this.head === this.queue.length) {
      const written = this.socket.write(data);
      if (written >= data.length) return true;
      // -1 means the socket is closing: queue anyway, the close event clears everything.
      this.queue.push(written > 0 ? data.subarray(written) : data);
    } else {
      this.queue.push(data);
    }
    this.needDrain = true;
    return false;
  }

  end(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    // Bun's end() closes the socket immediately, so only call it once our queue is empty;
    // otherwise flush() calls it from the drain handler.
    if (this.head === this.queue.length) this.socket.end();
  }

  destroy(): void {
    if (this.closed) return;
    this.dropQueue();
    this.ending = true;
    // end() rather than terminate(): like Node's destroy(), close the fd without an RST.
    this.socket.end();
  }

  /** Called from Bun's drain handler: push queued bytes until the kernel pushes back. */
  flush(): void {
    while (this.head < this.queue.length) {
      const chunk = this.queue[this.head];
      const written = this.socket.write(chunk);
      if (written < chunk.length) {
        if (written > 0) this.queue[this.head] = chunk.subarray(written);
        return;
      }
      this.queue[this.head++] = EMPTY; // release the reference early
    }
    this.dropQueue();
    if (this.ending) {
      this.socket.end();
    } else if (this.needDrain) {
      this.needDrain = false;
      this.handlers?.onDrain();
    }
  }

  /** Called from Bun's close handler (sometimes synchronously inside socket.end()). */
  onSocketClose(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.dropQueue();
    const handlers = this.handlers;
    // Deferred so that onClose never runs inside the caller's own end()/destroy()/write().
    queueMicrotask(() => handlers?.onClose(error));
  }

  /** A handler threw (Bun routes that to `error`): close the connection with that error. */
  fail(error: Error): void {
    if (this.closed) return;
    this.dropQueue();
    this.onSocketClose(error);
    this.socket.end();
  }

  private dropQueue(): void {
    this.queue = [];
    this.head = 0;
  }
}

const EMPTY = new Uint8Array(0);

/** Socket handlers shared by accepted and outgoing connections; the wrapper lives in socket.data. */
const tcpHandlers = {
  binaryType: "uint8array" as const,
  data(socket: BunTcpSocket, data: Uint8Array) {
    socket.data?.handlers?.onData(data);
  },
  drain(socket: BunTcpSocket) {
    socket.data?.flush();
  },
  close(socket: BunTcpSocket, error?: Error) {
    socket.data?.onSocketClose(error);
  },
  error(socket: BunTcpSocket, error: Error) {
    socket.data?.fail(asError(error));
  },
};

async function listenTcp(options: ListenOptions): Promise<TcpServer> {
  const tls = options.tls;
  const sizeBuffers = await tcpBuffers(options.bufferBytes);
  const accept = (socket: BunTcpSocket) => {
    const connection = new BunTcpConnection(socket);
    socket.data = connection;
    // Handlers are in place before the first data event can be dispatched.
    connection.handlers = options.onConnection(connection);
  };
  /** Sockets whose handshake failure was already reported (the timeout reports before Bun does). */
  const reported = new WeakSet<BunTcpSocket>();
  const reportFailure = (socket: BunTcpSocket, error: Error) => {
    if (reported.has(socket)) return;
    reported.add(socket);
    tls?.onHandshakeError?.(error, socket.remoteAddress, socket.remotePort);
  };
  const tlsHandlers = tls && {
    handshake(socket: BunTcpSocket, success: boolean, error: Error | null) {
      // On the server `error` is also set for a client without a certificate: only `success` counts.
      if (!success) return reportFailure(socket, tlsHandshakeFailed(error));
      socket.timeout(0);
      accept(socket);
    },
    timeout(socket: BunTcpSocket) {
      if (socket.data) return;
      const seconds = (tls.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS) / 1000;
      reportFailure(socket, tlsHandshakeFailed(`not completed within ${seconds} s`));
      socket.end();
    },
  };
  const handlers = {
    ...tcpHandlers,
    ...tlsHandlers,
    open(socket: BunTcpSocket) {
      socket.setNoDelay(true);
      sizeBuffers(socket);
      if (!tls) return accept(socket);
      // The core sees a TLS connection only once its handshake completed (handshake() above).
      socket.timeout(Math.ceil((tls.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS) / 1000));
    },
  };
  // Bun.listen throws synchronously (EADDRINUSE, a bad certificate...); turn that into a rejection.
  const listenWith = (port: number, certificate: { cert: string; key: string } | undefined) => {
    try {
      return Bun.listen<BunTcpConnection | undefined>({
        hostname: options.host,
        port,
        data: undefined,
        tls: certificate && { cert: certificate.cert, key: certificate.key },
        socket: handlers,
      });
    } catch (error) {
      throw asError(error);
    }
  };
  let certificate = tls && { cert: tls.cert, key: tls.key };
  let listener = listenWith(options.port, certificate);
  return {
    address: listener.hostname,
    port: listener.port,
    close() {
      listener.stop(false); // false: keep established connections
    },
    ...(tls && {
      async replaceCertificate(next: { cert: string; key: string }) {
        // Bun keeps a listener's TLS context for its life (reload() swaps handlers only): listen
        // anew on the same port. A trial listener on an ephemeral port first, so a certificate
        // BoringSSL refuses changes nothing; then the swap, synchronous, so the port is without a
        // listener for no event-loop turn (established connections are not the listener's).
        listenWith(0, next).stop(true);
        const port = listener.port;
        listener.stop(false);
        try {
          listener = listenWith(port, next);
        } catch (error) {
          listener = listenWith(port, certificate); // the old certificate, on the port just freed
          throw error;
        }
        certificate = { cert: next.cert, key: next.key };
      },
    }),
  };
}

/**
 * One connect attempt's settlement: the first result wins, the connect timeout (if any) is armed and
 * cleared here, and `timedOut` tells late callbacks to close what they got.
 */
function connectAttempt(
  options: ConnectOptions,
  resolve: (connection: TcpConnection) => void,
  reject: (error: Error) => void,
  onTimeout?: () => void,
) {
  const attempt = {
    timedOut: false,
    settled: false,
    settle(result: BunTcpConnection | Error) {
      if (attempt.settled) return;
      attempt.settled = true;
      clearTimeout(timer);
      if (result instanceof Error) reject(result);
      else resolve(result);
    },
  };
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          attempt.timedOut = true;
          const error = new Error(`connect ETIMEDOUT ${options.host}:${options.port}`);
          attempt.settle(Object.assign(error, { code: "ETIMEDOUT" }));
          onTimeout?.();
        }, options.timeoutMs);
  return attempt;
}

/** Wraps a connected Bun socket for the contract and installs the caller's handlers. */
function attachConnection(socket: BunTcpSocket, handlers: TcpHandlers, peerCertificate?: Uint8Array) {
  const connection = new BunTcpConnection(socket, peerCertificate);
  connection.handlers = handlers;
  socket.data = connection;
  return connection;
}

async function connectTcp(options: ConnectOptions): Promise<TcpConnection> {
  const sizeBuffers = await tcpBuffers(options.bufferBytes);
  if (options.tunnel) return connectThroughTunnel(options, options.tunnel, sizeBuffers);
  return new Promise((resolve, reject) => {
    const tls = options.tls;
    // Bun.connect cannot be cancelled: a late success is closed where it shows up, a late failure ignored.
    const attempt = connectAttempt(options, resolve, reject);
    const settle = attempt.settle;
    const attach = (socket: BunTcpSocket, peerCertificate?: Uint8Array) =>
      attachConnection(socket, options.handlers, peerCertificate);
    const tlsHandlers = tls && {
      handshake(socket: BunTcpSocket, success: boolean, error: Error | null) {
        if (attempt.timedOut) return socket.end();
        // rejectUnauthorized is off (so that a pinned self-signed certificate can pass): with a CA,
        // `authorized` is the verdict on chain and name.
        if (tls.ca !== undefined && !socket.authorized) {
          settle(tlsCertificateRefused(error ?? socket.getAuthorizationError()));
          return socket.end();
        }
        // Without a CA the core pins the certificate: a failed verification (self-signed, another
        // name) is no failure here, as long as the handshake produced the peer's certificate.
        if (!success && !verificationOnly(tls, socket)) return settle(tlsHandshakeFailed(error)); // Bun closes the socket itself
        const raw = socket.getPeerCertificate()?.raw;
        settle(attach(socket, raw ? new Uint8Array(raw) : undefined));
      },
      close(socket: BunTcpSocket, error?: Error) {
        if (socket.data) return socket.data.onSocketClose(error);
        // Closed before the handshake completed (e.g. a plaintext peer that hung up).
        settle(tlsHandshakeFailed(error));
      },
    };
    Bun.connect<BunTcpConnection | undefined>({
      hostname: options.host,
      port: options.port,
      data: undefined,
      tls: tls && { ca: tls.ca, serverName: tls.serverName, rejectUnauthorized: false },
      socket: {
        ...tcpHandlers,
        ...tlsHandlers,
        open(socket) {
          if (attempt.timedOut) {
            socket.end();
            return;
          }
          socket.setNoDelay(true);
          sizeBuffers(socket);
          // With TLS, the connection exists once the handshake completed (handshake() above).
          if (!tls) attach(socket);
        },
        // Declaring connectError keeps Bun from also reporting the rejection as unhandled.
        connectError() {},
      },
    }).then(
      (socket) => {
        if (!tls && !attempt.timedOut && socket.data) settle(socket.data);
      },
      (error) => settle(asError(error)),
    );
  });
}

/**
 * Whether a client handshake that Bun reports as unsuccessful failed only the certificate's
 * verification, which is not this side's test without a CA (the core pins the certificate): Bun
 * reports `success` false for a certificate whose chain or name does not verify even with
 * rejectUnauthorized off (then the connection works, and the certificate is there).
 */
function verificationOnly(tls: NonNullable<ConnectOptions["tls"]>, socket: BunTcpSocket): boolean {
  return (
    tls.ca === undefined && socket.getAuthorizationError() !== null && socket.getPeerCertificate()?.raw !== undefined
  );
}

/**
 * connectTcp through a proxy: plain TCP to the proxy, its handshake (`tunnel`), then, with TLS,
 * upgradeTLS on the same socket. After upgradeTLS Bun still calls the raw socket's handlers (with
 * the TLS records, and its close): past the tunnel phase they leave everything to the TLS socket's.
 */
function connectThroughTunnel(
  options: ConnectOptions,
  tunnel: TunnelHandshake,
  sizeBuffers: (socket: BunTcpSocket) => void,
): Promise<TcpConnection> {
  return new Promise((resolve, reject) => {
    const tls = options.tls;
    let phase: "tunnel" | "tls" | "open" = "tunnel";
    // Bun.connect cannot be cancelled: a late success is closed where it shows up, a late failure ignored.
    const attempt = connectAttempt(options, resolve, reject, () => raw?.end());
    const settle = attempt.settle;
    let raw: BunTcpSocket | undefined;
    const attach = (socket: BunTcpSocket, peerCertificate?: Uint8Array) =>
      attachConnection(socket, options.handlers, peerCertificate);
    const upgrade = (socket: BunTcpSocket, clientTls: NonNullable<ConnectOptions["tls"]>) => {
      phase = "tls";
      socket.upgradeTLS<BunTcpConnection | undefined>({
        data: undefined,
        tls: { ca: clientTls.ca, serverName: clientTls.serverName, rejectUnauthorized: false },
        socket: {
          ...tcpHandlers,
          open() {},
          handshake(tlsSocket: BunTcpSocket, success: boolean, error: Error | null) {
            if (attempt.timedOut) return tlsSocket.end();
            if (clientTls.ca !== undefined && !tlsSocket.authorized) {
              settle(tlsCertificateRefused(error ?? tlsSocket.getAuthorizationError()));
              return tlsSocket.end();
            }
            if (!success && !verificationOnly(clientTls, tlsSocket)) {
              settle(tlsHandshakeFailed(error));
              return tlsSocket.end();
            }
            const der = tlsSocket.getPeerCertificate()?.raw;
            phase = "open";
            settle(attach(tlsSocket, der ? new Uint8Array(der) : undefined));
          },
          close(tlsSocket: BunTcpSocket, error?: Error) {
            if (tlsSocket.data) return tlsSocket.data.onSocketClose(error);
            settle(tlsHandshakeFailed(error));
          },
        },
      });
    };
    Bun.connect<BunTcpConnection | undefined>({
      hostname: options.host,
      port: options.port,
      data: undefined,
      socket: {
        binaryType: "uint8array",
        open(socket) {
          raw = socket;
          if (attempt.timedOut) {
            socket.end();
            return;
          }
          socket.setNoDelay(true);
          sizeBuffers(socket);
          // A few hundred bytes into an empty socket buffer: the kernel takes them whole.
          if (socket.write(tunnel.request) < tunnel.request.length) {
            settle(new Error("could not send the proxy request"));
            socket.end();
          }
        },
        data(socket, data) {
          if (phase === "open") {
            socket.data?.handlers?.onData(data);
            return;
          }
          if (phase !== "tunnel" || attempt.settled) return; // TLS records: the TLS socket's
          let rest: Uint8Array | undefined;
          try {
            rest = tunnel.receive(data);
          } catch (error) {
            settle(asError(error));
            socket.end();
            return;
          }
          if (rest === undefined) return;
          if (tls) {
            if (rest.length > 0) {
              settle(new Error("the proxy sent bytes of the peer's before TLS started"));
              socket.end();
              return;
            }
            upgrade(socket, tls);
            return;
          }
          phase = "open";
          const connection = attach(socket);
          settle(connection);
          // After the promise settled: a dialer keeps data that comes before it saw the connection.
          if (rest.length > 0) connection.handlers?.onData(rest);
        },
        drain(socket) {
          if (phase === "open") socket.data?.flush();
        },
        close(socket, error) {
          if (phase === "open") return socket.data?.onSocketClose(error);
          if (phase === "tunnel") settle(error ?? new Error("the proxy closed the connection"));
        },
        error(socket, error) {
          if (phase === "open") return socket.data?.fail(asError(error));
          if (phase === "tunnel") settle(asError(error));
        },
        connectError() {},
      },
    }).then(
      () => {},
      (error) => settle(asError(error)),
    );
  });
}

export const bunTransport: Transport = { name: "bun", setsTcpBuffers: true, bindUdp, listenTcp, connectTcp };
