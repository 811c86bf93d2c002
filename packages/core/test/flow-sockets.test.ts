/**
 * FlowSockets (src/flow-sockets.ts): the sender's per-flow UDP sockets, over a fake Transport whose
 * binds complete when the test says, and a manual clock for lingering. No sockets, no real timers.
 */
import { describe, expect, test } from "bun:test";
import { FlowCloseReason, PROXY_V2_IPV4_LENGTH, PROXY_V2_SIGNATURE, type WireAddress } from "@mcudpt/protocol";
import {
  type FlowSocketEvents,
  FlowSockets,
  LINGER_MS,
  MAX_PENDING_BYTES,
  PENDING_DATAGRAM_OVERHEAD,
  MAX_PENDING_PER_FLOW,
  type Target,
} from "../src/flow-sockets.ts";
import type { ResolvedAddress } from "../src/resolve.ts";
import type { Transport, UdpBatch, UdpSocket, UdpSocketOptions } from "../src/transport.ts";
import { type Deferred, deferred, errno, FakeClock, settle } from "./fakes.ts";

const CLIENT: WireAddress = { family: 4, address: "192.0.2.10", port: 40_000 };
const TARGETS: Target[] = [
  { host: "127.0.0.1", port: 5353, text: "127.0.0.1:5353" },
  { host: "target.example", port: 9000, text: "target.example:9000" },
];

class FakeSocket implements UdpSocket {
  readonly address = "0.0.0.0";
  readonly port: number;
  /** Every datagram handed over, in order (send and sendMany alike). */
  readonly sent: Uint8Array[] = [];
  /** Each sendMany call's datagrams. */
  readonly batches: Uint8Array[][] = [];
  sends = 0;
  closed = false;
  /** Indices (within a sendMany call) the fake kernel refuses. */
  refuse = new Set<number>();
  sendMany?: (batch: UdpBatch, failed?: number[]) => number;

  constructor(
    readonly options: UdpSocketOptions,
    port: number,
    withSendMany: boolean,
  ) {
    this.port = port;
    if (withSendMany) {
      this.sendMany = (batch, failed) => {
        const datagrams = batch as Uint8Array[];
        this.batches.push(datagrams.slice());
        let ok = 0;
        datagrams.forEach((d, i) => {
          if (this.refuse.has(i)) failed?.push(i);
          else {
            this.sent.push(d);
            ok++;
          }
        });
        return ok;
      };
    }
  }

  send(data: Uint8Array): boolean {
    this.sends++;
    this.sent.push(data);
    return true;
  }

  close(): void {
    if (this.closed) throw new Error("closed twice");
    this.closed = true;
  }

  /** The target sends this socket a datagram. */
  deliver(data: Uint8Array): void {
    this.options.onDatagram(data, this.options.connect?.host ?? "", this.options.connect?.port ?? 0);
  }
}

interface Bind {
  options: UdpSocketOptions;
  result: Deferred<UdpSocket>;
  /** Completes the bind with a new FakeSocket. */
  open(): FakeSocket;
  fail(error: unknown): void;
}

class FakeTransport implements Transport {
  readonly name = "bun" as const;
  readonly setsTcpBuffers = false;
  readonly binds: Bind[] = [];
  readonly sockets: FakeSocket[] = [];
  withSendMany = true;
  private nextPort = 50_000;

  bindUdp(options: UdpSocketOptions): Promise<UdpSocket> {
    const result = deferred<UdpSocket>();
    const bind: Bind = {
      options,
      result,
      open: () => {
        const socket = new FakeSocket(options, this.nextPort++, this.withSendMany);
        this.sockets.push(socket);
        result.resolve(socket);
        return socket;
      },
      fail: (error) => result.reject(error),
    };
    this.binds.push(bind);
    return result.promise;
  }

  listenTcp(): never {
    throw new Error("not used");
  }

  connectTcp(): never {
    throw new Error("not used");
  }
}

interface Recorded {
  datagrams: Array<{ flowId: number; data: Uint8Array }>;
  socketErrors: Array<{ flowId: number; error: unknown; target: Target }>;
  failed: Array<{ flowId: number; reason: number; what: string; error: unknown }>;
  evictions: number[];
  unsent: Array<{ id: number; mappingId: number; size: number; reason: string }>;
  warnings: Array<{ key: string; message: string }>;
}

function setup(
  options: {
    proxyProtocol?: boolean;
    maxLingering?: number;
    evict?: (flowId: number) => boolean;
    resolve?: (host: string) => Promise<ResolvedAddress>;
  } = {},
) {
  const transport = new FakeTransport();
  const clock = new FakeClock();
  const recorded: Recorded = { datagrams: [], socketErrors: [], failed: [], evictions: [], unsent: [], warnings: [] };
  const events: FlowSocketEvents = {
    datagram: (flowId, data) => recorded.datagrams.push({ flowId, data }),
    socketError: (flowId, error, target) => recorded.socketErrors.push({ flowId, error, target }),
    failed: (flowId, reason, what, error) => recorded.failed.push({ flowId, reason, what, error }),
    evictForSockets: (flowId) => {
      recorded.evictions.push(flowId);
      return options.evict ? options.evict(flowId) : true;
    },
    unsent: (flow, size, reason) => recorded.unsent.push({ id: flow.id, mappingId: flow.mappingId, size, reason }),
    warn: (key, message) => recorded.warnings.push({ key, message }),
  };
  const resolves: string[] = [];
  const sockets = new FlowSockets({
    transport,
    resolve: (host) => {
      resolves.push(host);
      if (options.resolve) return options.resolve(host);
      return Promise.resolve({ address: host === "target.example" ? "203.0.113.5" : host, family: 4 });
    },
    targets: TARGETS,
    proxyProtocol: options.proxyProtocol,
    maxLingering: options.maxLingering ?? 16,
    clock,
    events,
  });
  return { sockets, transport, clock, recorded, resolves };
}

const datagram = (n: number, length = 4) => new Uint8Array(length).fill(n);

/** Opens flow `id` (mapping `mappingId`) and completes its bind; returns its socket. */
async function openFlow(ctx: ReturnType<typeof setup>, id: number, mappingId = 0): Promise<FakeSocket> {
  const before = ctx.transport.binds.length;
  ctx.sockets.open(id, mappingId, CLIENT);
  await settle();
  expect(ctx.transport.binds.length).toBe(before + 1);
  const socket = ctx.transport.binds[before].open();
  await settle();
  return socket;
}

describe("FlowSockets: opening", () => {
  test("binds an ephemeral port connected to the mapping's resolved target", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 1, CLIENT);
    await settle();
    expect(ctx.resolves).toEqual(["target.example"]);
    expect(ctx.transport.binds).toHaveLength(1);
    const { options } = ctx.transport.binds[0];
    expect(options.host).toBe("0.0.0.0");
    expect(options.port).toBe(0);
    expect(options.connect).toEqual({ host: "203.0.113.5", port: 9000 });
    expect(ctx.sockets.size).toBe(1);
  });

  test("a flow on port offset 7 of a range connects to the target port 7 after the mapping's", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 1, CLIENT, 7);
    ctx.sockets.open(2, 0, CLIENT, 0);
    await settle();
    expect(ctx.transport.binds.map((bind) => bind.options.connect)).toEqual([
      { host: "203.0.113.5", port: 9007 },
      { host: "127.0.0.1", port: 5353 },
    ]);
    // Errors name the port the flow's socket is connected to.
    ctx.transport.binds[0].open().options.onError(new Error("ECONNREFUSED"));
    await settle();
    expect(ctx.recorded.socketErrors.map((e) => e.target.text)).toEqual(["target.example:9007"]);
  });

  test("an IPv6 target gets an IPv6 socket", async () => {
    const ctx = setup({ resolve: () => Promise.resolve({ address: "2001:db8::5", family: 6 }) });
    ctx.sockets.open(1, 0, CLIENT);
    await settle();
    expect(ctx.transport.binds[0].options.host).toBe("::");
    expect(ctx.transport.binds[0].options.connect).toEqual({ host: "2001:db8::5", port: 5353 });
  });

  test("a target that does not resolve: failed with ResolveFailed, no socket, pending datagrams let go", async () => {
    const lookupError = errno("ENOTFOUND", "getaddrinfo ENOTFOUND target.example");
    const ctx = setup({ resolve: () => Promise.reject(lookupError) });
    ctx.sockets.open(4, 1, CLIENT);
    ctx.sockets.send(4, datagram(1, 100));
    expect(ctx.sockets.pendingTotal).toBe(100 + PENDING_DATAGRAM_OVERHEAD);
    await settle();
    expect(ctx.transport.binds).toHaveLength(0);
    expect(ctx.recorded.failed).toEqual([
      {
        flowId: 4,
        reason: FlowCloseReason.ResolveFailed,
        what: 'cannot resolve target "target.example"',
        error: lookupError,
      },
    ]);
    expect(ctx.sockets.size).toBe(0);
    expect(ctx.sockets.pendingTotal).toBe(0);
  });

  test("a bind that fails (not for descriptors): failed with SocketError at once, nobody evicted", async () => {
    const ctx = setup();
    ctx.sockets.open(2, 0, CLIENT);
    await settle();
    const error = errno("EADDRNOTAVAIL");
    ctx.transport.binds[0].fail(error);
    await settle();
    expect(ctx.recorded.evictions).toEqual([]);
    expect(ctx.transport.binds).toHaveLength(1);
    expect(ctx.recorded.failed).toEqual([
      { flowId: 2, reason: FlowCloseReason.SocketError, what: "cannot open a UDP socket toward 127.0.0.1:5353", error },
    ]);
    expect(ctx.sockets.size).toBe(0);
  });

  test("after a failure the flow is unknown: a datagram for it is unsent as unknown-flow", async () => {
    const ctx = setup({ resolve: () => Promise.reject(new Error("no")) });
    ctx.sockets.open(4, 0, CLIENT);
    await settle();
    ctx.sockets.send(4, datagram(1, 9));
    expect(ctx.recorded.unsent).toEqual([{ id: 4, mappingId: -1, size: 9, reason: "unknown-flow" }]);
  });
});

describe("FlowSockets: datagrams waiting for the socket", () => {
  test("are held (copied) while the socket opens, then sent in order in one batch", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    const chunk = new Uint8Array([1, 1, 2, 2, 2, 3]); // the TCP chunk the payloads are views into
    ctx.sockets.send(1, chunk.subarray(0, 2));
    ctx.sockets.send(1, chunk.subarray(2, 5));
    ctx.sockets.send(1, chunk.subarray(5, 6));
    ctx.sockets.flush(); // the drain ends: nothing to send yet
    expect(ctx.sockets.pendingTotal).toBe(6 + 3 * PENDING_DATAGRAM_OVERHEAD); // memory held, not payload only
    chunk.fill(0xee); // the runtime reuses the chunk
    await settle();
    const socket = ctx.transport.binds[0].open();
    expect(socket.sent).toHaveLength(0);
    await settle();
    expect(socket.sent.map((d) => [...d])).toEqual([[1, 1], [2, 2, 2], [3]]);
    expect(socket.batches).toHaveLength(1);
    expect(ctx.sockets.pendingTotal).toBe(0);
    expect(ctx.recorded.unsent).toEqual([]);
  });

  test(`at most MAX_PENDING_PER_FLOW (${MAX_PENDING_PER_FLOW}) per flow: the rest are unsent as backpressure, with a warning`, async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    ctx.sockets.open(2, 1, CLIENT);
    for (let i = 0; i < MAX_PENDING_PER_FLOW; i++) ctx.sockets.send(1, datagram(i & 0xff, 1));
    expect(ctx.recorded.unsent).toEqual([]);
    expect(ctx.recorded.warnings).toEqual([]);
    ctx.sockets.send(1, datagram(0, 3));
    expect(ctx.recorded.unsent).toEqual([{ id: 1, mappingId: 0, size: 3, reason: "backpressure" }]);
    expect(ctx.recorded.warnings).toHaveLength(1);
    expect(ctx.recorded.warnings[0].key).toBe("flow-opening");
    // The bound is per flow: another opening flow still holds its datagrams.
    ctx.sockets.send(2, datagram(7, 5));
    expect(ctx.recorded.unsent).toHaveLength(1);
    expect(ctx.sockets.pendingTotal).toBe(
      MAX_PENDING_PER_FLOW * (1 + PENDING_DATAGRAM_OVERHEAD) + 5 + PENDING_DATAGRAM_OVERHEAD,
    );
    await settle();
    const socket = ctx.transport.binds[0].open();
    await settle();
    expect(socket.sent).toHaveLength(MAX_PENDING_PER_FLOW);
    expect(socket.sent[MAX_PENDING_PER_FLOW - 1][0]).toBe((MAX_PENDING_PER_FLOW - 1) & 0xff);
  });

  test("at most MAX_PENDING_BYTES in all flows: past it, backpressure", async () => {
    const ctx = setup();
    const size = 64 * 1024 - PENDING_DATAGRAM_OVERHEAD; // each held datagram costs its payload and its overhead
    const fits = MAX_PENDING_BYTES / (size + PENDING_DATAGRAM_OVERHEAD); // 256 such datagrams fill the budget exactly
    ctx.sockets.open(1, 0, CLIENT);
    ctx.sockets.open(2, 0, CLIENT);
    const payload = new Uint8Array(size);
    for (let i = 0; i < fits; i++) ctx.sockets.send(i % 2 === 0 ? 1 : 2, payload);
    expect(ctx.sockets.pendingTotal).toBe(MAX_PENDING_BYTES);
    expect(ctx.recorded.unsent).toEqual([]);
    ctx.sockets.send(2, new Uint8Array(1));
    expect(ctx.recorded.unsent).toEqual([{ id: 2, mappingId: 0, size: 1, reason: "backpressure" }]);
    expect(ctx.recorded.warnings.map((w) => w.key)).toEqual(["flow-opening"]);
    // Closing one flow gives its bytes back: the other may hold more again.
    ctx.sockets.close(1);
    expect(ctx.sockets.pendingTotal).toBe(MAX_PENDING_BYTES / 2);
    ctx.sockets.send(2, new Uint8Array(1));
    expect(ctx.recorded.unsent).toHaveLength(1);
    expect(ctx.sockets.pendingTotal).toBe(MAX_PENDING_BYTES / 2 + 1 + PENDING_DATAGRAM_OVERHEAD);
  });

  test("empty datagrams are not free: the budget counts each one's overhead", async () => {
    const ctx = setup();
    const flows = Math.ceil(MAX_PENDING_BYTES / PENDING_DATAGRAM_OVERHEAD / MAX_PENDING_PER_FLOW) + 1;
    let unsent = 0;
    for (let flow = 1; flow <= flows; flow++) {
      ctx.sockets.open(flow, 0, CLIENT);
      for (let i = 0; i < MAX_PENDING_PER_FLOW; i++) ctx.sockets.send(flow, new Uint8Array(0));
    }
    unsent = ctx.recorded.unsent.length;
    expect(unsent).toBeGreaterThan(0);
    expect(ctx.sockets.pendingTotal).toBeLessThanOrEqual(MAX_PENDING_BYTES);
  });

  test("the pending budget is given back when the socket opens", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    ctx.sockets.send(1, datagram(1, 1000));
    expect(ctx.sockets.pendingTotal).toBe(1000 + PENDING_DATAGRAM_OVERHEAD);
    await settle();
    ctx.transport.binds[0].open();
    await settle();
    expect(ctx.sockets.pendingTotal).toBe(0);
  });
});

describe("FlowSockets: batching per drain", () => {
  test("send() during a drain goes out only at flush(): one sendMany per flow, each on its own socket", async () => {
    const ctx = setup();
    const a = await openFlow(ctx, 1);
    const b = await openFlow(ctx, 2, 1);
    const a1 = datagram(1);
    const a2 = datagram(2);
    const b1 = datagram(3);
    ctx.sockets.send(1, a1);
    ctx.sockets.send(2, b1);
    ctx.sockets.send(1, a2);
    expect(a.sent).toHaveLength(0);
    expect(b.sent).toHaveLength(0);
    ctx.sockets.flush();
    expect(a.batches).toEqual([[a1, a2]]);
    expect(b.batches).toEqual([[b1]]);
    expect(a.sent[0]).toBe(a1); // no copy without a PROXY header
    expect(a.sends + b.sends).toBe(0);
    ctx.sockets.flush(); // nothing new: nothing resent
    expect(a.batches).toHaveLength(1);
    expect(b.batches).toHaveLength(1);
  });

  test("a socket without sendMany gets one send() per datagram", async () => {
    const ctx = setup();
    ctx.transport.withSendMany = false;
    const socket = await openFlow(ctx, 1);
    ctx.sockets.send(1, datagram(1));
    ctx.sockets.send(1, datagram(2));
    ctx.sockets.flush();
    expect(socket.sends).toBe(2);
    expect(socket.sent.map((d) => d[0])).toEqual([1, 2]);
  });

  test("datagrams the socket refused are reported through unsent as socket-error, with their own size", async () => {
    const ctx = setup();
    const socket = await openFlow(ctx, 1, 1);
    socket.refuse = new Set([1]);
    ctx.sockets.send(1, datagram(1, 10));
    ctx.sockets.send(1, datagram(2, 20));
    ctx.sockets.send(1, datagram(3, 30));
    ctx.sockets.flush();
    expect(socket.sent.map((d) => d[0])).toEqual([1, 3]);
    expect(ctx.recorded.unsent).toEqual([{ id: 1, mappingId: 1, size: 20, reason: "socket-error" }]);
  });

  test("a flow closed later in the same drain still sends its earlier datagrams (its socket lingers)", async () => {
    const ctx = setup();
    const socket = await openFlow(ctx, 1);
    ctx.sockets.send(1, datagram(9));
    ctx.sockets.close(1);
    ctx.sockets.flush();
    expect(socket.sent.map((d) => d[0])).toEqual([9]);
    expect(socket.closed).toBe(false);
  });
});

describe("FlowSockets: datagrams and errors from the target", () => {
  test("a datagram from the target goes to its flow; a socket error too, with the target", async () => {
    const ctx = setup();
    const socket = await openFlow(ctx, 3, 1);
    const reply = datagram(5);
    socket.deliver(reply);
    expect(ctx.recorded.datagrams).toEqual([{ flowId: 3, data: reply }]);
    const icmp = errno("ECONNREFUSED");
    socket.options.onError(icmp);
    expect(ctx.recorded.socketErrors).toEqual([{ flowId: 3, error: icmp, target: TARGETS[1] }]);
  });
});

describe("FlowSockets: lingering", () => {
  test(`a closed flow's socket stays bound LINGER_MS (${LINGER_MS} ms), discarding what arrives, then closes`, async () => {
    const ctx = setup();
    const socket = await openFlow(ctx, 1);
    ctx.sockets.close(1);
    expect(ctx.sockets.size).toBe(0);
    expect(ctx.sockets.lingeringCount).toBe(1);
    expect(socket.closed).toBe(false);
    socket.deliver(datagram(1)); // the target's late reply to the old client
    socket.options.onError(errno("ECONNREFUSED"));
    expect(ctx.recorded.datagrams).toEqual([]);
    expect(ctx.recorded.socketErrors).toEqual([]);
    ctx.clock.advance(LINGER_MS - 1);
    expect(socket.closed).toBe(false);
    ctx.clock.advance(1);
    expect(socket.closed).toBe(true);
    expect(ctx.sockets.lingeringCount).toBe(0);
    expect(ctx.clock.pending).toBe(0); // no timer left armed
  });

  test("sockets closed at different times are each released LINGER_MS after their own close", async () => {
    const ctx = setup();
    const first = await openFlow(ctx, 1);
    const second = await openFlow(ctx, 2);
    ctx.sockets.close(1);
    ctx.clock.advance(1_000);
    ctx.sockets.close(2);
    ctx.clock.advance(LINGER_MS - 1_000);
    expect(first.closed).toBe(true);
    expect(second.closed).toBe(false);
    ctx.clock.advance(999);
    expect(second.closed).toBe(false);
    ctx.clock.advance(1);
    expect(second.closed).toBe(true);
  });

  test("at most maxLingering linger: the oldest is closed at once", async () => {
    const ctx = setup({ maxLingering: 2 });
    const s1 = await openFlow(ctx, 1);
    const s2 = await openFlow(ctx, 2);
    const s3 = await openFlow(ctx, 3);
    ctx.sockets.close(1);
    ctx.sockets.close(2);
    expect([s1.closed, s2.closed]).toEqual([false, false]);
    ctx.sockets.close(3);
    expect([s1.closed, s2.closed, s3.closed]).toEqual([true, false, false]);
    expect(ctx.sockets.lingeringCount).toBe(2);
    ctx.clock.advance(LINGER_MS);
    expect([s2.closed, s3.closed]).toEqual([true, true]);
  });

  test("a flow closed while its socket was opening: pending dropped, the socket lingers when it comes, no failure", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    ctx.sockets.send(1, datagram(1, 50));
    ctx.sockets.close(1);
    expect(ctx.sockets.pendingTotal).toBe(0);
    await settle();
    const socket = ctx.transport.binds[0].open();
    await settle();
    expect(socket.sent).toHaveLength(0);
    expect(socket.closed).toBe(false);
    expect(ctx.sockets.lingeringCount).toBe(1);
    socket.deliver(datagram(2));
    expect(ctx.recorded.datagrams).toEqual([]);
    ctx.clock.advance(LINGER_MS);
    expect(socket.closed).toBe(true);
    expect(ctx.recorded.failed).toEqual([]);
  });

  test("a flow closed while its bind fails: no failure reported (the flow is already gone)", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    await settle();
    ctx.sockets.close(1);
    ctx.transport.binds[0].fail(errno("EMFILE"));
    await settle();
    expect(ctx.recorded.failed).toEqual([]);
    expect(ctx.recorded.evictions).toEqual([]); // nobody is evicted for a flow that is gone
    expect(ctx.transport.binds).toHaveLength(1);
  });
});

describe("FlowSockets: out of descriptors", () => {
  for (const code of ["EMFILE", "ENFILE"]) {
    test(`${code}: evicts a flow, releases the lingering sockets, binds again`, async () => {
      const ctx = setup();
      const old = await openFlow(ctx, 1);
      ctx.sockets.close(1); // lingering
      ctx.sockets.open(2, 0, CLIENT);
      ctx.sockets.send(2, datagram(4));
      await settle();
      ctx.transport.binds[1].fail(errno(code));
      await settle();
      expect(ctx.recorded.evictions).toEqual([2]); // "close another flow than this one"
      expect(old.closed).toBe(true);
      expect(ctx.sockets.lingeringCount).toBe(0);
      expect(ctx.clock.pending).toBe(0); // the linger timer went with them
      expect(ctx.transport.binds).toHaveLength(3);
      expect(ctx.transport.binds[2].options.connect).toEqual(ctx.transport.binds[1].options.connect);
      const socket = ctx.transport.binds[2].open();
      await settle();
      expect(socket.sent.map((d) => d[0])).toEqual([4]);
      expect(ctx.recorded.failed).toEqual([]);
    });
  }

  test("the evicted flow's socket (closed by the machine during evictForSockets) is released before the retry", async () => {
    let ctx!: ReturnType<typeof setup>;
    ctx = setup({
      evict: () => {
        ctx.sockets.close(1); // the machine closes the least recently active flow: close-flow-socket
        return true;
      },
    });
    const victim = await openFlow(ctx, 1);
    ctx.sockets.open(2, 0, CLIENT);
    await settle();
    ctx.transport.binds[1].fail(errno("EMFILE"));
    await settle();
    expect(victim.closed).toBe(true); // not left lingering while the new flow needs its descriptor
    expect(ctx.sockets.lingeringCount).toBe(0);
    expect(ctx.sockets.size).toBe(1);
    expect(ctx.transport.binds).toHaveLength(3);
  });

  test("EMFILE again after the eviction: the flow fails with SocketError and the retry's error", async () => {
    const ctx = setup();
    ctx.sockets.open(2, 0, CLIENT);
    await settle();
    ctx.transport.binds[0].fail(errno("EMFILE", "first"));
    await settle();
    const again = errno("EMFILE", "second");
    ctx.transport.binds[1].fail(again);
    await settle();
    expect(ctx.transport.binds).toHaveLength(2);
    expect(ctx.recorded.failed).toEqual([
      {
        flowId: 2,
        reason: FlowCloseReason.SocketError,
        what: "cannot open a UDP socket toward 127.0.0.1:5353",
        error: again,
      },
    ]);
    expect(ctx.sockets.size).toBe(0);
  });

  test("EMFILE with no flow to evict: fails without a retry, lingering sockets kept", async () => {
    const ctx = setup({ evict: () => false });
    const old = await openFlow(ctx, 1);
    ctx.sockets.close(1);
    ctx.sockets.open(2, 0, CLIENT);
    await settle();
    ctx.transport.binds[1].fail(errno("EMFILE"));
    await settle();
    expect(ctx.recorded.evictions).toEqual([2]);
    expect(ctx.transport.binds).toHaveLength(2);
    expect(ctx.recorded.failed.map((f) => [f.flowId, f.reason])).toEqual([[2, FlowCloseReason.SocketError]]);
    expect(old.closed).toBe(false);
  });
});

describe("FlowSockets: PROXY protocol v2", () => {
  test("each datagram is prefixed with a header naming the client and the resolved target", async () => {
    const ctx = setup({ proxyProtocol: true });
    ctx.sockets.open(1, 1, CLIENT);
    ctx.sockets.send(1, new Uint8Array([0xaa])); // pending: gets the header too
    await settle();
    const socket = ctx.transport.binds[0].open();
    await settle();
    ctx.sockets.send(1, new Uint8Array([0xbb, 0xcc]));
    ctx.sockets.flush();
    expect(socket.sent).toHaveLength(2);
    const [first, second] = socket.sent;
    expect(first.length).toBe(PROXY_V2_IPV4_LENGTH + 1);
    expect(second.length).toBe(PROXY_V2_IPV4_LENGTH + 2);
    const header = first.subarray(0, PROXY_V2_IPV4_LENGTH);
    expect([...header.subarray(0, 12)]).toEqual([...PROXY_V2_SIGNATURE]);
    expect(header[12]).toBe(0x21); // v2, PROXY
    expect(header[13]).toBe(0x12); // IPv4, DGRAM
    expect((header[14] << 8) | header[15]).toBe(12);
    expect([...header.subarray(16, 20)]).toEqual([192, 0, 2, 10]); // source: the client
    expect([...header.subarray(20, 24)]).toEqual([203, 0, 113, 5]); // destination: the target's address
    expect((header[24] << 8) | header[25]).toBe(40_000);
    expect((header[26] << 8) | header[27]).toBe(9000);
    expect(first[PROXY_V2_IPV4_LENGTH]).toBe(0xaa);
    expect([...second.subarray(0, PROXY_V2_IPV4_LENGTH)]).toEqual([...header]);
    expect([...second.subarray(PROXY_V2_IPV4_LENGTH)]).toEqual([0xbb, 0xcc]);
  });

  test("a datagram too large with the header is unsent as too-large; one that fits still goes", async () => {
    const ctx = setup({ proxyProtocol: true });
    const socket = await openFlow(ctx, 1);
    const limit = 65_507 - PROXY_V2_IPV4_LENGTH;
    ctx.sockets.send(1, new Uint8Array(limit + 1));
    ctx.sockets.send(1, new Uint8Array(limit));
    ctx.sockets.flush();
    expect(ctx.recorded.unsent).toEqual([{ id: 1, mappingId: 0, size: limit + 1, reason: "too-large" }]);
    expect(socket.sent.map((d) => d.length)).toEqual([65_507]);
  });

  test("a refused datagram is reported with the payload's size, not counting the header", async () => {
    const ctx = setup({ proxyProtocol: true });
    const socket = await openFlow(ctx, 1);
    socket.refuse = new Set([0]);
    ctx.sockets.send(1, new Uint8Array(100));
    ctx.sockets.flush();
    expect(ctx.recorded.unsent).toEqual([{ id: 1, mappingId: 0, size: 100, reason: "socket-error" }]);
  });

  test("without proxyProtocol the datagram goes out as it came", async () => {
    const ctx = setup();
    const socket = await openFlow(ctx, 1);
    ctx.sockets.send(1, new Uint8Array([1, 2, 3]));
    ctx.sockets.flush();
    expect([...socket.sent[0]]).toEqual([1, 2, 3]);
  });
});

describe("FlowSockets: closeAll", () => {
  test("closes open and lingering sockets now, forgets pending datagrams and leaves no timer", async () => {
    const ctx = setup();
    const open = await openFlow(ctx, 1);
    const lingering = await openFlow(ctx, 2);
    ctx.sockets.close(2);
    ctx.sockets.open(3, 0, CLIENT);
    ctx.sockets.send(3, datagram(1, 10));
    ctx.sockets.closeAll();
    expect(open.closed).toBe(true);
    expect(lingering.closed).toBe(true);
    expect(ctx.sockets.size).toBe(0);
    expect(ctx.sockets.lingeringCount).toBe(0);
    expect(ctx.sockets.pendingTotal).toBe(0);
    expect(ctx.clock.pending).toBe(0);
    open.deliver(datagram(1));
    expect(ctx.recorded.datagrams).toEqual([]);
  });

  test("a socket whose bind completes after closeAll is not used, and not leaked", async () => {
    const ctx = setup();
    ctx.sockets.open(1, 0, CLIENT);
    await settle();
    ctx.sockets.closeAll();
    const late = ctx.transport.binds[0].open();
    await settle();
    expect(late.sent).toHaveLength(0);
    ctx.clock.advance(LINGER_MS);
    expect(late.closed).toBe(true);
    expect(ctx.recorded.failed).toEqual([]);
  });
});
