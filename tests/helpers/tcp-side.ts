/**
 * Recorders for the transport contract suites: a connection's side that keeps or verifies what it
 * receives, deterministic byte streams, and a listener with one connection to it (optionally over
 * TLS, optionally with another transport dialing). node:test-free, so it runs under Node too.
 */
import type { ClientTlsOptions, ServerTlsOptions, TcpConnection, TcpHandlers, Transport } from "@mcudpt/core";
import { eventually } from "./tunnel.js";

/** Deterministic bytes: byte i of the stream at `offset` + i (a hash, so reordering shows). */
export const byteAt = (i: number) => Math.imul(i, 2654435761) >>> 24;
export function pattern(length: number, offset = 0): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = byteAt(offset + i);
  return bytes;
}

export interface Side {
  received: number;
  /** Copies of received chunks (only when kept). */
  chunks: Uint8Array[];
  /** Index of the first byte that did not match pattern(), or -1. */
  mismatch: number;
  drains: number;
  closes: Array<Error | undefined>;
  handlers: TcpHandlers;
}

/** Records one side of a connection; checks incoming bytes against pattern() when `verify`. */
export function side(mode: "keep" | "verify" = "keep"): Side {
  const s: Side = {
    received: 0,
    chunks: [],
    mismatch: -1,
    drains: 0,
    closes: [],
    handlers: {
      onData(data) {
        if (mode === "keep") s.chunks.push(new Uint8Array(data));
        else if (s.mismatch < 0) {
          for (let i = 0; i < data.length; i++) {
            if (data[i] !== byteAt(s.received + i)) {
              s.mismatch = s.received + i;
              break;
            }
          }
        }
        s.received += data.length;
      },
      onDrain: () => s.drains++,
      onClose: (error) => s.closes.push(error),
    },
  };
  return s;
}

export const concat = (chunks: Uint8Array[]) => {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
};

/** A listener on `host` and one connection to it, with both sides recorded. */
export async function tcpPair(
  transport: Transport,
  host = "127.0.0.1",
  mode: "keep" | "verify" = "keep",
  options: { connector?: Transport; tls?: { server: ServerTlsOptions; client: ClientTlsOptions } } = {},
) {
  const server = side(mode);
  const client = side(mode);
  let accepted: TcpConnection | undefined;
  const listener = await transport.listenTcp({
    host,
    port: 0,
    tls: options.tls?.server,
    onConnection(connection) {
      accepted = connection;
      return server.handlers;
    },
  });
  const connection = await (options.connector ?? transport).connectTcp({
    host,
    port: listener.port,
    timeoutMs: 5000,
    handlers: client.handlers,
    tls: options.tls?.client,
  });
  await eventually(() => accepted !== undefined, "the server to accept", 10_000);
  return { listener, server, client, serverConn: accepted as TcpConnection, clientConn: connection };
}
