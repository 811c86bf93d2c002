/**
 * The WebSocket carrier: the tunnel's byte stream as the payloads of binary WebSocket messages, over
 * any TcpConnection a transport made (plain TCP or TLS, directly or through a proxy). A frame of the
 * protocol may straddle messages and a message may hold many frames: the receiving side concatenates
 * payloads into the same stream the decoder reads from TCP, so nothing above this file changes.
 *
 * Framing, masking and the upgrade handshake are websocket-driver's (faye's sans-I/O protocol
 * handler, the same code on Bun and Node). The `ws` package cannot serve here: Bun substitutes its own
 * `ws`, whose frame parser throws "Not supported yet in Bun"; Bun's native client cannot run over a
 * proxy tunnel of ours, does not show a self-signed certificate for pinning, and has no drain event.
 *
 * Bounds: at most WEBSOCKET_HEAD_LIMIT bytes are read before the upgrade is settled, a message is at
 * most WEBSOCKET_MAX_MESSAGE bytes (checked at the frame header, before anything is buffered for it),
 * and one write becomes one message (several past WEBSOCKET_SEND_CHUNK), so the driver's one coalesced
 * write per event-loop turn is one message.
 */
import websocket from "websocket-driver";
import { formatHostPort } from "./address.js";
import { forwardedClient } from "./forwarded.js";
import { peerText } from "./proxy.js";
import type { TcpConnection, TcpHandlers } from "./transport.js";

/** The most bytes read before the upgrade is settled (request or response head, and anything after it). */
export const WEBSOCKET_HEAD_LIMIT = 16 * 1024;
/** The largest message accepted. */
export const WEBSOCKET_MAX_MESSAGE = 1024 * 1024;
/** Writes larger than this go out as several messages. */
export const WEBSOCKET_SEND_CHUNK = 256 * 1024;

type Driver = ReturnType<typeof websocket.client>;

const NOT_FOUND = new TextEncoder().encode(
  "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nNot Found\n",
);

function view(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** A TcpConnection whose bytes travel as WebSocket messages over `inner`. */
class WebSocketConnection implements TcpConnection {
  handlers: TcpHandlers | undefined;
  inner: TcpConnection | undefined;
  /** The upgrade completed. */
  private opened = false;
  private ending = false;
  private closed = false;
  /** What went wrong at the WebSocket level (a protocol error, a close code), for onClose. */
  private failure: Error | undefined;
  private writeOk = true;
  private headBytes = 0;
  onOpen: (() => void) | undefined;
  /** The connection closed before the upgrade completed. */
  onFailedUpgrade: ((error: Error) => void) | undefined;

  constructor(readonly driver: Driver) {
    driver.io.on("data", (chunk: Buffer) => {
      if (this.inner && !this.inner.write(chunk)) this.writeOk = false;
    });
    driver.messages.on("data", (message: Buffer | string) => {
      if (!this.opened || this.closed) return;
      if (typeof message === "string") {
        this.failure ??= new Error("WebSocket: the peer sent a text message");
        this.inner?.destroy();
        return;
      }
      this.handlers?.onData(message);
    });
    driver.on("open", () => {
      this.opened = true;
      this.onOpen?.();
    });
    driver.on("error", (error: Error) => {
      this.failure ??= new Error(`WebSocket: ${peerText(error.message, 120)}`);
    });
    driver.on("close", (event: { code?: number; reason?: string }) => {
      // The driver answered a peer's close (or sent one after a protocol error): the stream is over.
      const code = event.code ?? 1000;
      if (code !== 1000 && code !== 1001) {
        const reason = event.reason ? ` (${peerText(event.reason, 60)})` : "";
        this.failure ??= new Error(`WebSocket closed with code ${code}${reason}`);
      }
      this.inner?.end();
    });
  }

  /** The client a trusted reverse proxy named (its Forwarded / X-Forwarded-For header), if any. */
  forwardedFor: string | undefined;

  get remoteAddress(): string {
    return this.forwardedFor ?? this.inner?.remoteAddress ?? "";
  }
  get remotePort(): number {
    return this.forwardedFor !== undefined ? 0 : (this.inner?.remotePort ?? 0);
  }
  get via(): string | undefined {
    const inner = this.inner;
    return this.forwardedFor === undefined || !inner
      ? undefined
      : formatHostPort(inner.remoteAddress, inner.remotePort);
  }
  get peerCertificate(): Uint8Array | undefined {
    return this.inner?.peerCertificate;
  }

  /** The handlers to install on `inner`. */
  readonly innerHandlers: TcpHandlers = {
    onData: (data) => {
      if (this.closed) return;
      if (!this.opened) {
        this.headBytes += data.length;
        if (this.headBytes > WEBSOCKET_HEAD_LIMIT) {
          this.failure ??= new Error(`over ${WEBSOCKET_HEAD_LIMIT / 1024} KiB before the WebSocket upgrade completed`);
          this.inner?.destroy();
          return;
        }
      }
      this.driver.parse(view(data));
    },
    onDrain: () => {
      if (this.opened && !this.closed) this.handlers?.onDrain();
    },
    onClose: (error) => {
      if (this.closed) return;
      this.closed = true;
      if (!this.opened) {
        this.onFailedUpgrade?.(
          error ?? this.failure ?? new Error("the connection closed before the WebSocket upgrade"),
        );
        return;
      }
      this.handlers?.onClose(error ?? this.failure);
    },
  };

  write(data: Uint8Array): boolean {
    if (!this.opened || this.ending || this.closed) return false;
    if (data.length === 0) return true;
    this.writeOk = true;
    if (data.length <= WEBSOCKET_SEND_CHUNK) {
      this.driver.binary(view(data));
    } else {
      for (let at = 0; at < data.length; at += WEBSOCKET_SEND_CHUNK) {
        this.driver.binary(view(data.subarray(at, Math.min(data.length, at + WEBSOCKET_SEND_CHUNK))));
      }
    }
    return this.writeOk;
  }

  end(): void {
    if (this.ending || this.closed) return;
    this.ending = true;
    if (this.opened) this.driver.close();
    this.inner?.end();
  }

  destroy(): void {
    if (this.closed) return;
    this.ending = true;
    this.inner?.destroy();
  }
}

export interface WebSocketClientOptions {
  /** The Host header: the server's name (and port, when not the scheme's default). */
  host: string;
  /** The request target: path and query. */
  path: string;
  secure: boolean;
  /** Extra request headers (already checked: printable, no CR or LF). */
  headers?: ReadonlyArray<readonly [string, string]>;
}

/**
 * Opens a WebSocket over the connection `open` makes (handing it the handlers to install): resolves
 * once the server accepted the upgrade, or rejects with one line (the status it answered instead).
 * `timeoutMs` bounds the upgrade, after `open` resolved.
 */
export async function connectWebSocket(
  open: (handlers: TcpHandlers) => Promise<TcpConnection>,
  options: WebSocketClientOptions,
  handlers: TcpHandlers,
  timeoutMs: number,
): Promise<TcpConnection> {
  const url = `${options.secure ? "wss" : "ws"}://${options.host}${options.path}`;
  const driver = websocket.client(url, { maxLength: WEBSOCKET_MAX_MESSAGE });
  for (const [name, value] of options.headers ?? []) driver.setHeader(name, value);
  const connection = new WebSocketConnection(driver);
  // In place before the server's first message can arrive (it may follow the 101 in one chunk).
  connection.handlers = handlers;
  const upgraded = new Promise<void>((resolve, reject) => {
    connection.onOpen = resolve;
    connection.onFailedUpgrade = reject;
  });
  upgraded.catch(() => {}); // awaited below, unless `open` fails first
  const inner = await open(connection.innerHandlers);
  connection.inner = inner;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`no WebSocket upgrade within ${timeoutMs / 1000} s`));
      inner.destroy();
    }, timeoutMs);
  });
  try {
    driver.start();
    await Promise.race([upgraded, deadline]);
  } catch (error) {
    inner.destroy();
    const status = driver.statusCode;
    if (status !== undefined && status !== 101) {
      const hint =
        status === 404
          ? " (is the path right? a listener answers 404 for any other)"
          : status === 400 || status === 426
            ? " (a reverse proxy that does not pass Upgrade and Connection?)"
            : "";
      throw new Error(`WebSocket upgrade refused: HTTP ${status}${hint}`);
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return connection;
}

/** Why a listener did not upgrade a request (for a rate-limited log line). */
export interface RefusedRequest {
  method: string;
  /** The request target, as printable text. */
  target: string;
  /** The right path, but no WebSocket upgrade in the request. */
  rightPath: boolean;
}

export interface AcceptWebSocketOptions {
  /** The one path upgraded (the query is ignored); every other request gets 404 and is closed. */
  path: string;
  /** A client that has not completed its upgrade by then is dropped. */
  timeoutMs: number;
  /** The upgrade completed: the handlers for the WebSocket connection. */
  onUpgrade(connection: TcpConnection): TcpHandlers;
  onRefused?(request: RefusedRequest, connection: TcpConnection): void;
  /**
   * Reverse proxies whose Forwarded / X-Forwarded-For header names the client (--ws-trusted-proxy):
   * a connection from one is attributed to that client (see forwarded.ts).
   */
  trustedProxy?: (address: string) => boolean;
}

/**
 * The listening side of the carrier, for one accepted connection: returns the handlers to install on
 * `raw`. A request for `path` with a WebSocket upgrade is answered 101 and becomes a connection for
 * `onUpgrade`; anything else gets a plain 404 and is closed.
 */
export function acceptWebSocket(raw: TcpConnection, options: AcceptWebSocketOptions): TcpHandlers {
  const driver = websocket.server({ maxLength: WEBSOCKET_MAX_MESSAGE });
  const connection = new WebSocketConnection(driver);
  connection.inner = raw;
  const timer = setTimeout(() => raw.destroy(), options.timeoutMs);
  timer.unref?.();
  connection.onFailedUpgrade = () => clearTimeout(timer);
  connection.onOpen = () => {
    clearTimeout(timer);
    connection.handlers = options.onUpgrade(connection);
  };
  driver.on("connect", () => {
    const headers = driver.headers ?? {};
    const target = driver.url ?? "";
    const path = requestPath(target);
    const upgrade =
      websocket.isWebSocket(driver) &&
      headers["sec-websocket-version"] === "13" &&
      /^[A-Za-z0-9+/]{22}==$/.test(headers["sec-websocket-key"] ?? "");
    if (path === options.path && upgrade) {
      if (options.trustedProxy) {
        const client = forwardedClient(raw.remoteAddress, headers, options.trustedProxy);
        if (client !== raw.remoteAddress) connection.forwardedFor = client;
      }
      driver.start();
      return;
    }
    clearTimeout(timer);
    options.onRefused?.(
      { method: peerText(driver.method ?? "?", 16), target: peerText(target, 80), rightPath: path === options.path },
      raw,
    );
    raw.write(NOT_FOUND);
    raw.end();
  });
  return connection.innerHandlers;
}

/** The path of a request target: "/a/b?q" and "http://host/a/b?q" are both "/a/b". */
function requestPath(target: string): string | undefined {
  if (target.startsWith("/")) return target.split("?")[0].split("#")[0];
  try {
    return new URL(target).pathname;
  } catch {
    return undefined;
  }
}
