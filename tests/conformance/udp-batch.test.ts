/**
 * The optional batch send of the transport contract (UdpSocket.sendMany) and the core's UdpBatcher,
 * which uses it when present and falls back to send() otherwise. Every available transport, real
 * sockets on loopback, bounded waits, no timing thresholds.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Transport, UdpBatcher, type UdpSocket } from "@mcudpt/core";
import { availableTransports } from "../helpers/transports.js";

const V4 = "127.0.0.1";
const BOUNDED = { timeout: 30_000 };
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function waitFor(condition: () => unknown, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** A socket keeping copies of what arrives (first byte identifies a datagram in these tests). */
async function sink(transport: Transport) {
  const received: Uint8Array[] = [];
  const socket = await transport.bindUdp({
    host: V4,
    port: 0,
    onDatagram: (data) => received.push(new Uint8Array(data)),
    onError: () => {},
  });
  return { socket, received };
}

const bytes = (first: number, length = 8) => {
  const b = new Uint8Array(length);
  b[0] = first;
  b[length - 1] = first;
  return b;
};

/** A socket whose transport lacks sendMany: UdpBatcher must fall back to send(). */
function withoutSendMany(socket: UdpSocket): UdpSocket {
  return { address: socket.address, port: socket.port, send: socket.send.bind(socket), close: () => socket.close() };
}

for (const transport of availableTransports()) {
  describe(`${transport.name} transport: batched UDP sends`, () => {
    it("sendMany (when offered) sends every datagram of a batch, in order, views honoured", BOUNDED, async (t) => {
      const target = await sink(transport);
      const client = await transport.bindUdp({ host: V4, port: 0, onDatagram: () => {}, onError: () => {} });
      try {
        if (!client.sendMany) return t.skip(`the ${transport.name} transport has no sendMany`);
        const backing = new Uint8Array(64);
        for (let i = 0; i < 64; i++) backing[i] = i;
        const batch = [];
        for (let i = 0; i < 20; i++) batch.push(backing.subarray(i, i + 5), target.socket.port, V4);
        assert.equal(client.sendMany(batch), 20);
        await waitFor(() => target.received.length === 20, "20 datagrams");
        for (const [i, d] of target.received.entries()) assert.deepEqual(d, backing.slice(i, i + 5));
      } finally {
        client.close();
        target.socket.close();
      }
    });

    it("sendMany drops a refused datagram and still sends the ones after it; never throws", BOUNDED, async (t) => {
      const target = await sink(transport);
      const client = await transport.bindUdp({ host: V4, port: 0, onDatagram: () => {}, onError: () => {} });
      try {
        if (!client.sendMany) return t.skip(`the ${transport.name} transport has no sendMany`);
        const port = target.socket.port;
        // Too large for UDP, an IPv6 address on an IPv4 socket, an invalid address, port 0.
        const tooLarge = new Uint8Array(70_000);
        const batch = [bytes(1), port, V4, tooLarge, port, V4, bytes(2), port, V4, bytes(9), port, "::1"];
        batch.push(bytes(3), port, V4, bytes(9), port, "not an address", bytes(4), port, V4);
        batch.push(bytes(9), 0, V4, bytes(5), port, V4);
        assert.equal(client.sendMany(batch), 5);
        await waitFor(() => target.received.length === 5, "the 5 valid datagrams");
        assert.deepEqual(
          target.received.map((d) => d[0]),
          [1, 2, 3, 4, 5],
        );
        client.close();
        assert.equal(client.sendMany([bytes(6), port, V4]), 0, "after close");
      } finally {
        client.close();
        target.socket.close();
      }
    });

    it("sendMany on a connected socket takes data only", BOUNDED, async (t) => {
      const target = await sink(transport);
      const client = await transport.bindUdp({
        host: V4,
        port: 0,
        connect: { host: V4, port: target.socket.port },
        onDatagram: () => {},
        onError: () => {},
      });
      try {
        if (!client.sendMany) return t.skip(`the ${transport.name} transport has no sendMany`);
        assert.equal(client.sendMany([bytes(1), new Uint8Array(70_000), bytes(2), bytes(3, 1400)]), 3);
        await waitFor(() => target.received.length === 3, "3 datagrams");
        assert.deepEqual(
          target.received.map((d) => [d[0], d.length]),
          [
            [1, 8],
            [2, 8],
            [3, 1400],
          ],
        );
      } finally {
        client.close();
        target.socket.close();
      }
    });

    for (const fallback of [false, true]) {
      it(
        `UdpBatcher sends a drain's datagrams and counts the dropped ones${fallback ? " (send() fallback)" : ""}`,
        BOUNDED,
        async () => {
          const target = await sink(transport);
          const errors: Error[] = [];
          const bound = await transport.bindUdp({
            host: V4,
            port: 0,
            onDatagram: () => {},
            onError: (error) => errors.push(error),
          });
          const socket = fallback ? withoutSendMany(bound) : bound;
          try {
            const batcher = new UdpBatcher(false);
            assert.equal(batcher.flush(socket), 0, "empty batch");
            batcher.add(bytes(1), target.socket.port, V4);
            batcher.add(new Uint8Array(70_000), target.socket.port, V4);
            batcher.add(bytes(2), target.socket.port, V4);
            assert.equal(batcher.size, 3);
            // The oversized one counts once: as dropped now, or (node:dgram) as an error reported later.
            const dropped = batcher.flush(socket);
            assert.equal(batcher.size, 0, "nothing kept after a flush");
            await waitFor(() => target.received.length === 2 && dropped + errors.length === 1, "2 datagrams, 1 drop");
            await sleep(50);
            assert.equal(dropped + errors.length, 1, "counted once");
            assert.deepEqual(
              target.received.map((d) => d[0]),
              [1, 2],
            );
            batcher.add(bytes(3), target.socket.port, V4);
            assert.equal(batcher.flush(undefined), 1, "no socket: all dropped");
            assert.equal(batcher.size, 0);
          } finally {
            bound.close();
            target.socket.close();
          }
        },
      );
    }
  });
}
