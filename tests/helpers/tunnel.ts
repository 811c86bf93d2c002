/**
 * Test fixtures shared by the conformance and end-to-end suites: an in-memory logger, a UDP echo
 * target, UDP clients that wait for replies, and bounded polling. Loopback only, ephemeral ports.
 */
import type { Logger, Transport, UdpSocket } from "@mcudpt/core";

export const LOOPBACK = "127.0.0.1";

export interface MemoryLogger extends Logger {
  lines: string[];
  /** True once a line matching `pattern` was logged. */
  saw(pattern: RegExp): boolean;
}

export function memoryLogger(echo = Boolean(process.env.MCUDPT_TEST_LOGS)): MemoryLogger {
  const lines: string[] = [];
  return {
    lines,
    log(level, message) {
      lines.push(`${level}: ${message}`);
      if (echo) process.stderr.write(`[test] ${level}: ${message}\n`);
    },
    saw: (pattern) => lines.some((line) => pattern.test(line)),
  };
}

/** Polls `condition` every 10 ms until it holds; throws after `timeoutMs` with `what`. */
export async function eventually(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A UDP echo server on 127.0.0.1 (the tunnel's target). */
export async function startEcho(transport: Transport, port = 0): Promise<UdpSocket & { received: number }> {
  let received = 0;
  const socket: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port,
    onDatagram: (data, address, fromPort) => {
      received++;
      socket.send(data, fromPort, address);
    },
    onError: () => {},
  });
  // defineProperty, not Object.assign: assign would copy the getter's value once.
  return Object.defineProperty(socket, "received", { get: () => received }) as UdpSocket & { received: number };
}

/** A UDP client that records every datagram it receives (copied). */
export interface TestClient {
  socket: UdpSocket;
  replies: Uint8Array[];
  send(data: Uint8Array | string): void;
  /**
   * Sends `data` until a reply starting with the same bytes arrives (UDP may lose the first while a
   * flow opens; echoes of earlier requests are skipped), bounded.
   */
  request(data: Uint8Array | string, timeoutMs?: number): Promise<Uint8Array>;
  close(): void;
}

export async function startClient(transport: Transport, serverPort: number): Promise<TestClient> {
  const replies: Uint8Array[] = [];
  const socket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data) => replies.push(Uint8Array.from(data)),
    onError: () => {},
  });
  const toBytes = (data: Uint8Array | string) => (typeof data === "string" ? new TextEncoder().encode(data) : data);
  const client: TestClient = {
    socket,
    replies,
    send: (data) => void socket.send(toBytes(data), serverPort, LOOPBACK),
    async request(data, timeoutMs = 5000) {
      const bytes = toBytes(data);
      const before = replies.length;
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        socket.send(bytes, serverPort, LOOPBACK);
        const resendAt = Date.now() + 250;
        // A late echo of an earlier re-sent request is not this request's reply: match the prefix.
        const answer = () => replies.slice(before).find((reply) => startsWith(reply, bytes));
        while (answer() === undefined && Date.now() < Math.min(resendAt, until)) await sleep(5);
        const reply = answer();
        if (reply !== undefined) return reply;
      }
      throw new Error(`no reply within ${timeoutMs} ms`);
    },
    close: () => socket.close(),
  };
  return client;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

export function text(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/** A free UDP port on loopback (bound, then released). */
export async function freeUdpPort(transport: Transport): Promise<number> {
  const socket = await transport.bindUdp({ host: LOOPBACK, port: 0, onDatagram: () => {}, onError: () => {} });
  const port = socket.port;
  socket.close();
  return port;
}
