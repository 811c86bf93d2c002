/**
 * UdpBatcher (src/udp-batch.ts): one drain's datagrams for one socket, sent together. Fake sockets
 * record what they were given and refuse what the test says.
 */
import { describe, expect, test } from "bun:test";
import type { UdpBatch, UdpSocket } from "../src/transport.ts";
import { UdpBatcher } from "../src/udp-batch.ts";

const bytes = (length: number, fill = length) => new Uint8Array(length).fill(fill);

interface SendCall {
  data: Uint8Array;
  port?: number;
  address?: string;
}

/** A socket with only send(): `refuse(i)` says whether the i-th send (0-based, all time) fails. */
function plainSocket(refuse: (i: number) => boolean = () => false) {
  const sends: SendCall[] = [];
  const socket: UdpSocket = {
    address: "127.0.0.1",
    port: 1,
    send(data, port, address) {
      const i = sends.length;
      sends.push(port === undefined ? { data } : { data, port, address });
      return !refuse(i);
    },
    close() {},
  };
  return { socket, sends };
}

/**
 * A socket with sendMany: `answer` decides what the call returns and which indices it reports. Each
 * batch is copied when received (the batcher reuses its array).
 */
function batchSocket(answer: (batch: UdpBatch, failed?: number[]) => number = datagramsIn) {
  const batches: UdpBatch[] = [];
  const arrays: UdpBatch[] = [];
  let sends = 0;
  const socket: UdpSocket = {
    address: "127.0.0.1",
    port: 1,
    send() {
      sends++;
      return true;
    },
    sendMany(batch, failed) {
      arrays.push(batch);
      batches.push(batch.slice());
      return answer(batch, failed);
    },
    close() {},
  };
  return { socket, batches, arrays, sends: () => sends };
}

/** How many datagrams a flat batch holds (each starts with its data). */
function datagramsIn(batch: UdpBatch): number {
  return batch.filter((entry) => entry instanceof Uint8Array).length;
}

function failures<R>() {
  const list: Array<{ ref: R; size: number }> = [];
  return { list, onFailed: (ref: R, size: number) => list.push({ ref, size }) };
}

describe("UdpBatcher with sendMany", () => {
  test("a connected socket's batch holds the data only, in order, in one call", () => {
    const batcher = new UdpBatcher<string>(true);
    const a = bytes(1);
    const b = bytes(2);
    const c = bytes(3);
    batcher.add(a, undefined, undefined, "a");
    batcher.add(b, undefined, undefined, "b");
    batcher.add(c, undefined, undefined, "c");
    expect(batcher.size).toBe(3);
    const { socket, batches, sends } = batchSocket();
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(socket, onFailed)).toBe(0);
    expect(batches).toHaveLength(1);
    expect(batches[0]).toHaveLength(3);
    expect(batches[0][0]).toBe(a);
    expect(batches[0][1]).toBe(b);
    expect(batches[0][2]).toBe(c);
    expect(sends()).toBe(0);
    expect(list).toEqual([]);
    expect(batcher.size).toBe(0);
  });

  test("an unconnected socket's batch is data, port, address per datagram", () => {
    const batcher = new UdpBatcher<number>(false);
    const a = bytes(5);
    const b = bytes(7);
    batcher.add(a, 1111, "192.0.2.1", 1);
    batcher.add(b, 2222, "2001:db8::1", 2);
    const { socket, batches } = batchSocket();
    expect(batcher.flush(socket)).toBe(0);
    expect(batches).toEqual([[a, 1111, "192.0.2.1", b, 2222, "2001:db8::1"]]);
  });

  test("indices the transport reports as failed are reported with their reference and size", () => {
    const batcher = new UdpBatcher<string>(false);
    batcher.add(bytes(10), 1, "192.0.2.1", "first");
    batcher.add(bytes(20), 2, "192.0.2.2", "second");
    batcher.add(bytes(30), 3, "192.0.2.3", "third");
    batcher.add(bytes(40), 4, "192.0.2.4", "fourth");
    const { socket } = batchSocket((_batch, failed) => {
      failed?.push(1, 2); // the middle ones: not the tail, so the report must come from `failed`
      return 2;
    });
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(socket, onFailed)).toBe(2);
    expect(list).toEqual([
      { ref: "second", size: 20 },
      { ref: "third", size: 30 },
    ]);
  });

  test("a transport that does not say which ones failed: the tail is taken for them", () => {
    const batcher = new UdpBatcher<string>(true);
    for (const [i, ref] of ["a", "b", "c", "d"].entries()) batcher.add(bytes(i + 1), undefined, undefined, ref);
    const { socket } = batchSocket(() => 1); // sent one, said nothing about the other three
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(socket, onFailed)).toBe(3);
    expect(list).toEqual([
      { ref: "b", size: 2 },
      { ref: "c", size: 3 },
      { ref: "d", size: 4 },
    ]);
  });

  test("an incomplete failed list (fewer indices than datagrams missing) is replaced by the tail", () => {
    const batcher = new UdpBatcher<string>(true);
    for (const [i, ref] of ["a", "b", "c"].entries()) batcher.add(bytes(i + 1), undefined, undefined, ref);
    const { socket } = batchSocket((_b, failed) => {
      failed?.push(0); // says one failed, but returns 1 of 3 sent
      return 1;
    });
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(socket, onFailed)).toBe(2);
    expect(list.map((f) => f.ref)).toEqual(["b", "c"]); // each failure reported once, none twice
  });

  test("the failed list of one flush does not leak into the next", () => {
    const batcher = new UdpBatcher<string>(true);
    let round = 0;
    const { socket } = batchSocket((batch, failed) => {
      round++;
      if (round === 1) {
        failed?.push(0);
        return datagramsIn(batch) - 1;
      }
      return datagramsIn(batch) - 1; // round 2: says nothing, so the tail
    });
    const { list, onFailed } = failures<string>();
    batcher.add(bytes(1), undefined, undefined, "r1-a");
    batcher.add(bytes(2), undefined, undefined, "r1-b");
    batcher.flush(socket, onFailed);
    batcher.add(bytes(3), undefined, undefined, "r2-a");
    batcher.add(bytes(4), undefined, undefined, "r2-b");
    batcher.flush(socket, onFailed);
    expect(list.map((f) => f.ref)).toEqual(["r1-a", "r2-b"]);
  });

  test("the batch array is reused across flushes (no allocation per drain), emptied each time", () => {
    const batcher = new UdpBatcher(true);
    const { socket, arrays, batches } = batchSocket();
    const a = bytes(1);
    const b = bytes(2);
    batcher.add(a);
    batcher.flush(socket);
    batcher.add(b);
    batcher.flush(socket);
    expect(arrays[0]).toBe(arrays[1]);
    expect(batches).toEqual([[a], [b]]); // the second flush does not resend the first datagram
    expect(arrays[0]).toHaveLength(0);
  });
});

describe("UdpBatcher without sendMany: one send() each", () => {
  test("connected: send(data) per datagram, in order", () => {
    const batcher = new UdpBatcher(true);
    const a = bytes(1);
    const b = bytes(2);
    batcher.add(a);
    batcher.add(b);
    const { socket, sends } = plainSocket();
    expect(batcher.flush(socket)).toBe(0);
    expect(sends).toEqual([{ data: a }, { data: b }]);
    expect(sends[0].data).toBe(a);
  });

  test("unconnected: send(data, port, address) per datagram", () => {
    const batcher = new UdpBatcher(false);
    const a = bytes(3);
    const b = bytes(4);
    batcher.add(a, 53, "192.0.2.53");
    batcher.add(b, 5353, "::1");
    const { socket, sends } = plainSocket();
    batcher.flush(socket);
    expect(sends).toEqual([
      { data: a, port: 53, address: "192.0.2.53" },
      { data: b, port: 5353, address: "::1" },
    ]);
  });

  test("the ones send() refused are reported exactly (not the tail), and the others still go out", () => {
    const batcher = new UdpBatcher<string>(false);
    batcher.add(bytes(11), 1, "192.0.2.1", "x");
    batcher.add(bytes(22), 2, "192.0.2.2", "y");
    batcher.add(bytes(33), 3, "192.0.2.3", "z");
    const { socket, sends } = plainSocket((i) => i === 0);
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(socket, onFailed)).toBe(1);
    expect(sends).toHaveLength(3);
    expect(list).toEqual([{ ref: "x", size: 11 }]);
  });
});

describe("UdpBatcher edge cases", () => {
  test("no socket (not open yet, or closed): every datagram is reported failed", () => {
    const batcher = new UdpBatcher<string>(true);
    batcher.add(bytes(5), undefined, undefined, "p");
    batcher.add(bytes(6), undefined, undefined, "q");
    const { list, onFailed } = failures<string>();
    expect(batcher.flush(undefined, onFailed)).toBe(2);
    expect(list).toEqual([
      { ref: "p", size: 5 },
      { ref: "q", size: 6 },
    ]);
    expect(batcher.size).toBe(0);
  });

  test("an empty flush touches neither the socket nor onFailed", () => {
    const batcher = new UdpBatcher(true);
    const { socket, batches, sends } = batchSocket();
    let called = 0;
    expect(batcher.flush(socket, () => called++)).toBe(0);
    expect(batches).toHaveLength(0);
    expect(sends()).toBe(0);
    expect(called).toBe(0);
  });

  test("without onFailed the count of unsent datagrams is still returned", () => {
    const batcher = new UdpBatcher(true);
    batcher.add(bytes(1));
    batcher.add(bytes(1));
    batcher.add(bytes(1));
    const { socket } = batchSocket(() => 1);
    expect(batcher.flush(socket)).toBe(2);
  });

  test("a throwing transport (a bug) still empties the batch: nothing stale goes out later", () => {
    const batcher = new UdpBatcher(true);
    const stale = bytes(9);
    batcher.add(stale);
    const broken: UdpSocket = {
      address: "127.0.0.1",
      port: 1,
      send: () => true,
      sendMany() {
        throw new Error("boom");
      },
      close() {},
    };
    expect(() => batcher.flush(broken)).toThrow("boom");
    expect(batcher.size).toBe(0);
    const fresh = bytes(1);
    batcher.add(fresh);
    const { socket, batches } = batchSocket();
    batcher.flush(socket);
    expect(batches).toEqual([[fresh]]);
  });
});
