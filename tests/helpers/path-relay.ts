/**
 * A party on the path, for the handshake-integrity tests: a TCP relay on loopback between a dialer and
 * its acceptor that records every byte each way (as forwarded) and may rewrite the first HELLO of
 * either direction — decoded, changed, re-encoded (a well-formed frame, as a man in the middle would
 * make it), the rest passed through untouched. Frame boundaries come from the 5-byte headers, so
 * whatever follows is forwarded byte for byte. Built on node:net: the same under every transport.
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import { concatBytes, encodeFrame, type Frame, FrameDecoder, FrameType, HEADER_SIZE, PREFACE } from "@mcudpt/protocol";
import { LOOPBACK } from "./tunnel.js";

export type HelloFrame = Extract<Frame, { type: typeof FrameType.Hello }>;
export type HelloRewrite = (hello: HelloFrame) => HelloFrame;

export interface PathRelay {
  port: number;
  /** Per relayed connection, in order: the bytes forwarded dialer → acceptor and acceptor → dialer. */
  recorded(): Array<{ fromDialer: Uint8Array; fromAcceptor: Uint8Array }>;
  /** HELLOs rewritten so far (both directions). */
  readonly rewritten: number;
  /** Resets every relayed connection (the relay keeps listening: the dialer may come back). */
  cut(): void;
  close(): Promise<void>;
}

/**
 * Relays connections to `targetPort` on loopback. `rewrite.fromDialer` / `rewrite.fromAcceptor` change
 * the first HELLO the dialer / the acceptor sends on each connection.
 */
export async function pathRelay(
  targetPort: number,
  rewrite: { fromDialer?: HelloRewrite; fromAcceptor?: HelloRewrite } = {},
): Promise<PathRelay> {
  const connections: Array<{ fromDialer: Buffer[]; fromAcceptor: Buffer[] }> = [];
  const sockets = new Set<Socket>();
  let rewritten = 0;

  /** Forwards `from` to `to`, recording into `record`, rewriting the first HELLO with `change`. */
  const pipe = (from: Socket, to: Socket, record: Buffer[], change: HelloRewrite | undefined) => {
    let pending = Buffer.alloc(0);
    let done = change === undefined; // nothing to rewrite: pass everything through as it comes
    const forward = (bytes: Buffer) => {
      if (bytes.length === 0) return;
      record.push(Buffer.from(bytes));
      if (!to.destroyed) to.write(bytes);
    };
    from.on("data", (chunk: Buffer) => {
      if (done) return forward(chunk);
      pending = Buffer.concat([pending, chunk]);
      const helloAt = PREFACE.length;
      if (pending.length < helloAt + HEADER_SIZE) return;
      if (pending[helloAt] !== FrameType.Hello) {
        // Not the protocol we expected: stop interfering.
        done = true;
        return forward(pending);
      }
      const helloEnd = helloAt + HEADER_SIZE + pending.readUInt32BE(helloAt + 1);
      if (pending.length < helloEnd) return;
      const decoder = new FrameDecoder({ preface: false });
      decoder.push(new Uint8Array(pending.subarray(helloAt, helloEnd)));
      const hello = decoder.read() as HelloFrame;
      const changed = encodeFrame((change as HelloRewrite)(hello));
      rewritten++;
      done = true;
      forward(Buffer.from(concatBytes(new Uint8Array(pending.subarray(0, helloAt)), changed)));
      forward(pending.subarray(helloEnd));
    });
    from.on("close", () => to.destroy());
    from.on("error", () => to.destroy());
  };

  const server: Server = createServer((dialer) => {
    const record = { fromDialer: [] as Buffer[], fromAcceptor: [] as Buffer[] };
    connections.push(record);
    const acceptor = connect({ host: LOOPBACK, port: targetPort });
    for (const socket of [dialer, acceptor]) {
      socket.setNoDelay(true);
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
    }
    pipe(dialer, acceptor, record.fromDialer, rewrite.fromDialer);
    pipe(acceptor, dialer, record.fromAcceptor, rewrite.fromAcceptor);
  });
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  return {
    port: (server.address() as { port: number }).port,
    recorded: () =>
      connections.map(({ fromDialer, fromAcceptor }) => ({
        fromDialer: new Uint8Array(Buffer.concat(fromDialer)),
        fromAcceptor: new Uint8Array(Buffer.concat(fromAcceptor)),
      })),
    get rewritten() {
      return rewritten;
    },
    cut: () => {
      for (const socket of sockets) socket.resetAndDestroy();
    },
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** The frames in a recorded direction (preface checked and skipped); stops quietly at a torn end. */
export function framesIn(bytes: Uint8Array): Frame[] {
  const decoder = new FrameDecoder({ preface: true });
  const out: Frame[] = [];
  try {
    decoder.push(bytes);
    for (let frame = decoder.read(); frame !== undefined; frame = decoder.read()) out.push(frame);
  } catch {
    // what follows a CLOSE may be cut anywhere
  }
  return out;
}
