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
 * - UDP `send` throws synchronously (EMSGSIZE, EAFNOSUPPORT, invalid address, closed socket); an
 *   EMSGSIZE is also reported again later through the `error` handler.
 * - UDP `sendMany` sends the whole batch with one sendmmsg. It throws, having sent nothing, when an
 *   argument is invalid (address, port, closed socket); when the kernel refuses datagram i (EMSGSIZE,
 *   EAFNOSUPPORT, EAGAIN) it returns i: the ones before were sent, the rest were not tried.
 * - TCP `socket.write` is unbuffered: it returns how many bytes the kernel took and drops the rest.
 * - TCP `socket.end()` shuts down and closes the socket at once, firing `close` synchronously inside
 *   the call; bytes already accepted by the kernel are still delivered.
 * - TLS: with a `handshake` handler, `open` fires at TCP connect/accept (writes then return 0) and
 *   Bun.connect resolves there too; `handshake(socket, success, error)` follows, and on failure the
 *   socket closes by itself. With `rejectUnauthorized: false`, `socket.authorized` still tells whether
 *   the chain and name verified against `ca`. `socket.timeout(s)` fires on a 4 s tick.
 */
import {
  type ConnectOptions,
  DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
  type ListenOptions,
  type TcpConnection,
  type TcpHandlers,
  type TcpServer,
  type Transport,
  tlsCertificateRefused,
  tlsHandshakeFailed,
  type UdpBatch,
  type UdpSocket,
  type UdpSocketOptions,
} from "@mcudpt/core";

type BunTcpSocket = import("bun").Socket<BunTcpConnection | undefined>;

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

async function bindUdp(options: UdpSocketOptions): Promise<UdpSocket> {
  const handler = {
    data(_socket: unknown, data: Uint8Array, port: number, address: string) {
      options.onDatagram(data, address, port);
    },
    // Mandatory: without it an ICMP error kills the process. Bun passes the error as the only
    // argument (see header), so take whichever argument is an Error.
    error(...args: unknown[]) {
      options.onError(asError(args.find((a) => a instanceof Error) ?? args[args.length - 1]));
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
  const connected = options.connect !== undefined;
  /** Batch entries per datagram: data, or data, port, address. */
  const stride = connected ? 1 : 3;
  let closed = false;

  const send = (data: Uint8Array, port?: number, address?: string): boolean => {
    if (closed) return false;
    try {
      // Bun sends exactly the view's bytes (byteOffset/byteLength honoured) and synchronously,
      // so no reference to `data` outlives the call. A connected socket always sends to its peer.
      return connected
        ? (socket as import("bun").udp.ConnectedSocket<"uint8array">).send(data)
        : (socket as import("bun").udp.Socket<"uint8array">).send(data, port as number, address as string);
    } catch (error) {
      // The contract: never throw; a false return is this datagram's failure report (onError is
      // for failures learned later), so a lost datagram is counted once.
      void error;
      return false;
    }
  };

  /** Sends datagrams from..end of `batch` one by one (after sendMany refused the batch). */
  const sendEach = (batch: UdpBatch, from: number): number => {
    let sent = 0;
    for (let i = from; i < batch.length; i += stride) {
      if (send(batch[i] as Uint8Array, batch[i + 1] as number, batch[i + 2] as string)) sent++;
    }
    return sent;
  };

  return {
    address: socket.address.address,
    port: socket.port,
    send,
    sendMany(batch) {
      if (closed) return 0;
      let sent = 0;
      let from = 0; // index into `batch` of the first datagram not yet tried
      while (from < batch.length) {
        let n: number;
        try {
          // Slicing only after a failure: the common case hands Bun the caller's array as is.
          n = socket.sendMany((from === 0 ? batch : batch.slice(from)) as never);
        } catch {
          // An invalid argument somewhere, nothing sent: one by one, each failure on its own.
          return sent + sendEach(batch, from);
        }
        sent += n;
        // Datagram n was refused (too large, wrong family, buffer full): drop it, go on after it.
        from += (n + 1) * stride;
      }
      return sent;
    },
    close() {
      if (closed) return;
      closed = true;
      socket.close();
    },
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
  private ending = false;
  private closed = false;

  constructor(
    private readonly socket: BunTcpSocket,
    readonly peerCertificate?: Uint8Array,
  ) {
    this.remoteAddress = socket.remoteAddress;
    this.remotePort = socket.remotePort;
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
  let listener: import("bun").TCPSocketListener<BunTcpConnection | undefined>;
  try {
    // Bun.listen throws synchronously (EADDRINUSE, a bad certificate...); turn that into a rejection.
    listener = Bun.listen<BunTcpConnection | undefined>({
      hostname: options.host,
      port: options.port,
      data: undefined,
      tls: tls && { cert: tls.cert, key: tls.key },
      socket: {
        ...tcpHandlers,
        ...tlsHandlers,
        open(socket) {
          socket.setNoDelay(true);
          if (!tls) return accept(socket);
          // The core sees a TLS connection only once its handshake completed (handshake() above).
          socket.timeout(Math.ceil((tls.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS) / 1000));
        },
      },
    });
  } catch (error) {
    throw asError(error);
  }
  return {
    address: listener.hostname,
    port: listener.port,
    close() {
      listener.stop(false); // false: keep established connections
    },
  };
}

function connectTcp(options: ConnectOptions): Promise<TcpConnection> {
  return new Promise((resolve, reject) => {
    const tls = options.tls;
    let timedOut = false;
    let settled = false;
    const settle = (result: BunTcpConnection | Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            // Bun.connect cannot be cancelled: a late success is closed in open()/handshake() below,
            // a late failure is ignored.
            timedOut = true;
            settle(
              Object.assign(new Error(`connect ETIMEDOUT ${options.host}:${options.port}`), { code: "ETIMEDOUT" }),
            );
          }, options.timeoutMs);
    const attach = (socket: BunTcpSocket, peerCertificate?: Uint8Array) => {
      const connection = new BunTcpConnection(socket, peerCertificate);
      connection.handlers = options.handlers;
      socket.data = connection;
      return connection;
    };
    const tlsHandlers = tls && {
      handshake(socket: BunTcpSocket, success: boolean, error: Error | null) {
        if (timedOut) return socket.end();
        // rejectUnauthorized is off (so that a pinned self-signed certificate can pass): with a CA,
        // `authorized` is the verdict on chain and name.
        if (tls.ca !== undefined && !socket.authorized) {
          settle(tlsCertificateRefused(error ?? socket.getAuthorizationError()));
          return socket.end();
        }
        if (!success) return settle(tlsHandshakeFailed(error)); // Bun closes the socket itself
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
          if (timedOut) {
            socket.end();
            return;
          }
          socket.setNoDelay(true);
          // With TLS, the connection exists once the handshake completed (handshake() above).
          if (!tls) attach(socket);
        },
        // Declaring connectError keeps Bun from also reporting the rejection as unhandled.
        connectError() {},
      },
    }).then(
      (socket) => {
        if (!tls && !timedOut && socket.data) settle(socket.data);
      },
      (error) => settle(asError(error)),
    );
  });
}

export const bunTransport: Transport = { name: "bun", bindUdp, listenTcp, connectTcp };
