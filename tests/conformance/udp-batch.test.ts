/**
 * The optional batch send of the transport contract (UdpSocket.sendMany) and the core's UdpBatcher,
 * which uses it when present and falls back to send() otherwise. Every available transport, real
 * sockets on loopback, bounded waits, no timing thresholds.
 */
import assert from "node:assert/strict";
import { release } from "node:os";
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

/**
 * A port nobody listens on: bound, noted, closed. Datagrams sent there draw an ICMP port
 * unreachable, which Bun (IP_RECVERR) turns into a pending socket error.
 */
async function vanishedPort(transport: Transport): Promise<number> {
  const gone = await transport.bindUdp({ host: V4, port: 0, onDatagram: () => {}, onError: () => {} });
  gone.close();
  return gone.port;
}

/** Bun on Linux ≥ 4.18 segments runs (UDP_SEGMENT) unless told not to: there it must have. */
function segmentsOnLinux(transport: Transport): boolean {
  const [major, minor] = release().split(".").map(Number);
  const recent = major > 4 || (major === 4 && minor >= 18);
  return transport.name === "bun" && process.platform === "linux" && recent && process.env.MCUDPT_NO_GSO !== "1";
}

/** A socket connected to V4:`port` that ignores what it receives. */
function connectedTo(transport: Transport, port: number): Promise<UdpSocket> {
  return transport.bindUdp({ host: V4, port: 0, connect: { host: V4, port }, onDatagram: () => {}, onError: () => {} });
}

type Batch = Array<Uint8Array | number | string>;
/** The three ways a batch leaves: sendMany, a loop over send(), UdpBatcher. Each returns how many were sent. */
const sendPaths: Array<{
  name: string;
  send(socket: UdpSocket, batch: Batch, connected: boolean): number | undefined;
}> = [
  { name: "sendMany", send: (socket, batch) => socket.sendMany?.(batch) },
  {
    name: "send()",
    send(socket, batch, connected) {
      let sent = 0;
      const stride = connected ? 1 : 3;
      for (let i = 0; i < batch.length; i += stride) {
        const ok = connected
          ? socket.send(batch[i] as Uint8Array)
          : socket.send(batch[i] as Uint8Array, batch[i + 1] as number, batch[i + 2] as string);
        if (ok) sent++;
      }
      return sent;
    },
  },
  {
    name: "UdpBatcher",
    send(socket, batch, connected) {
      const batcher = new UdpBatcher(connected);
      const stride = connected ? 1 : 3;
      for (let i = 0; i < batch.length; i += stride) {
        batcher.add(batch[i] as Uint8Array, batch[i + 1] as number, batch[i + 2] as string);
      }
      const count = batcher.size;
      return count - batcher.flush(socket);
    },
  },
];

/**
 * Waits (bounded) for `count` datagrams, then returns the first bytes of what arrived, sorted (a
 * retried datagram may overtake others), for one clear assertion.
 */
async function arrivals(received: Uint8Array[], count: number): Promise<number[]> {
  await waitFor(() => received.length >= count, `${count} datagrams`, 2_000).catch(() => {});
  await sleep(20); // a late duplicate, if any, would show
  return received.map((d) => d[0]).sort((a, b) => a - b);
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
      const client = await connectedTo(transport, target.socket.port);
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

    // Bun on Linux sends runs of equal-sized datagrams to one destination as one segmented call
    // (UDP GSO): the kernel cuts them apart again at `size` bytes, so a wrong size, a lost view
    // offset or a run crossing destinations would show here as wrong datagrams.
    it(
      "sendMany keeps every datagram's size, bytes and order across runs, sizes and destinations",
      BOUNDED,
      async (t) => {
        const a = await sink(transport);
        const b = await sink(transport);
        const client = await transport.bindUdp({ host: V4, port: 0, onDatagram: () => {}, onError: () => {} });
        try {
          if (!client.sendMany) return t.skip(`the ${transport.name} transport has no sendMany`);
          // Views at odd offsets into one backing buffer, each datagram's first bytes its number.
          const backing = new Uint8Array(200_000);
          let at = 1;
          let n = 0;
          const datagram = (size: number) => {
            const view = backing.subarray(at, at + size);
            at += size + 3;
            for (let i = 0; i < size; i++) view[i] = (n * 7 + i) & 0xff;
            view[0] = n & 0xff;
            if (size > 1) view[1] = n >> 8;
            n++;
            return view;
          };
          // [destination, size, how many]: a long run, a shorter one ending it, runs of two sizes, a
          // run split by the 64-datagram limit, one split by the 65,507-byte limit, singles between.
          const plan: Array<["a" | "b", number, number]> = [
            ["a", 1200, 10],
            ["a", 40, 1],
            ["a", 1200, 4],
            ["b", 1200, 6],
            ["a", 300, 2],
            ["a", 7, 1],
            ["b", 20, 100],
            ["a", 1400, 50],
            ["b", 5, 3],
            ["b", 6, 1],
            ["a", 1400, 2],
            ["a", 1401, 3],
          ];
          const batch: Batch = [];
          const expected = { a: [] as Uint8Array[], b: [] as Uint8Array[] };
          for (const [to, size, count] of plan) {
            for (let i = 0; i < count; i++) {
              const view = datagram(size);
              batch.push(view, (to === "a" ? a : b).socket.port, V4);
              expected[to].push(view.slice());
            }
          }
          assert.equal(client.sendMany(batch), n);
          await waitFor(
            () => a.received.length === expected.a.length && b.received.length === expected.b.length,
            `${n} datagrams`,
          );
          for (const to of ["a", "b"] as const) {
            const got = (to === "a" ? a : b).received;
            assert.deepEqual(
              got.map((d) => d.length),
              expected[to].map((d) => d.length),
              `sizes at ${to}`,
            );
            for (const [i, d] of got.entries()) assert.deepEqual(d, expected[to][i], `datagram ${i} at ${to}`);
          }
          if (segmentsOnLinux(transport)) {
            assert.ok((client.segmented ?? 0) >= 150, `segmented runs used (${client.segmented} datagrams)`);
          }
        } finally {
          client.close();
          a.socket.close();
          b.socket.close();
        }
      },
    );

    it("sendMany on a connected socket keeps sizes and order across segmented runs", BOUNDED, async (t) => {
      const target = await sink(transport);
      const client = await connectedTo(transport, target.socket.port);
      try {
        if (!client.sendMany) return t.skip(`the ${transport.name} transport has no sendMany`);
        const sizes = [...Array(70).fill(1000), 999, 1000, 1000, ...Array(5).fill(64), 65];
        const batch = sizes.map((size, i) => bytes(i, size));
        assert.equal(client.sendMany(batch), sizes.length);
        await waitFor(() => target.received.length === sizes.length, `${sizes.length} datagrams`);
        assert.deepEqual(
          target.received.map((d) => [d[0], d[d.length - 1], d.length]),
          sizes.map((size, i) => [i, i, size]),
        );
        if (segmentsOnLinux(transport)) {
          assert.ok((client.segmented ?? 0) >= 70, `segmented runs used (${client.segmented} datagrams)`);
        }
      } finally {
        client.close();
        target.socket.close();
      }
    });

    // Issue 12: on Bun (IP_RECVERR) the ICMP port unreachable a vanished client draws becomes a
    // pending socket error, which the kernel returns from the NEXT send whatever its destination.
    // That error is nobody's fault: the datagram it was returned for must still go out.
    for (const path of sendPaths) {
      it(
        `a vanished client's ICMP errors cost a live client none of its datagrams (${path.name}, one interleaved batch)`,
        BOUNDED,
        async (t) => {
          const live = await sink(transport);
          const gone = await vanishedPort(transport);
          const errors: Error[] = [];
          const client = await transport.bindUdp({
            host: V4,
            port: 0,
            onDatagram: () => {},
            onError: (e) => errors.push(e),
          });
          try {
            if (path.name === "sendMany" && !client.sendMany)
              return t.skip(`the ${transport.name} transport has no sendMany`);
            const batch: Batch = [];
            for (let i = 0; i < 10; i++) batch.push(bytes(i), live.socket.port, V4, bytes(100 + i), gone, V4);
            const sent = path.send(client, batch, false);
            const got = await arrivals(live.received, 10);
            assert.deepEqual(
              got,
              [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
              `the live client got ${got.length} of its 10 datagrams`,
            );
            assert.equal(sent, 20, "all 20 datagrams left (an ICMP error is no datagram's failure)");
            await sleep(50);
            // Each ICMP error is reported at most once, and none of them is charged to the live client.
            assert.ok(errors.length <= 10, `${errors.length} errors reported for 10 datagrams to the vanished client`);
          } finally {
            client.close();
            live.socket.close();
          }
        },
      );

      it(`an ICMP error already pending costs the next batch nothing (${path.name})`, BOUNDED, async (t) => {
        const live = await sink(transport);
        const gone = await vanishedPort(transport);
        const errors: Error[] = [];
        const client = await transport.bindUdp({
          host: V4,
          port: 0,
          onDatagram: () => {},
          onError: (e) => errors.push(e),
        });
        try {
          if (path.name === "sendMany" && !client.sendMany)
            return t.skip(`the ${transport.name} transport has no sendMany`);
          assert.equal(client.send(bytes(99), gone, V4), true, "the datagram to the vanished client left");
          // Same tick: on loopback its ICMP error is already pending on the socket.
          const batch: Batch = [];
          for (let i = 0; i < 10; i++) batch.push(bytes(i), live.socket.port, V4);
          const sent = path.send(client, batch, false);
          const got = await arrivals(live.received, 10);
          assert.deepEqual(
            got,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            `the live client got ${got.length} of its 10 datagrams`,
          );
          assert.equal(sent, 10, "all 10 left");
          await sleep(50);
          assert.ok(errors.length <= 1, `${errors.length} errors reported for one datagram to the vanished client`);
        } finally {
          client.close();
          live.socket.close();
        }
      });

      it(
        `a connected socket whose peer came back loses nothing to the ICMP error of a datagram sent while it was away (${path.name})`,
        BOUNDED,
        async (t) => {
          const errors: Error[] = [];
          // The peer's port: free now, bound again below (another process could take it in between:
          // then try another).
          for (let attempt = 0; ; attempt++) {
            const port = await vanishedPort(transport);
            const client = await transport.bindUdp({
              host: V4,
              port: 0,
              connect: { host: V4, port },
              onDatagram: () => {},
              onError: (e) => errors.push(e),
            });
            let back: Awaited<ReturnType<typeof sink>> | undefined;
            try {
              if (path.name === "sendMany" && !client.sendMany)
                return t.skip(`the ${transport.name} transport has no sendMany`);
              assert.equal(client.send(bytes(99)), true, "the datagram to the absent peer left");
              const received: Uint8Array[] = [];
              try {
                const socket = await transport.bindUdp({
                  host: V4,
                  port,
                  onDatagram: (d) => received.push(new Uint8Array(d)),
                  onError: () => {},
                });
                back = { socket, received };
              } catch (error) {
                if (attempt < 5) continue; // the port was taken meanwhile
                throw error;
              }
              const batch: Batch = [];
              for (let i = 0; i < 10; i++) batch.push(bytes(i));
              const sent = path.send(client, batch, true);
              const got = await arrivals(back.received, 10);
              assert.deepEqual(
                got,
                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                `the peer got ${got.length} of the 10 datagrams sent once it was back`,
              );
              assert.equal(sent, 10, "all 10 left");
              await sleep(50);
              assert.ok(errors.length <= 1, `${errors.length} errors reported for one datagram to the absent peer`);
              return;
            } finally {
              client.close();
              back?.socket.close();
            }
          }
        },
      );
    }

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
