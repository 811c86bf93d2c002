/** Property-based tests (fast-check) for the codec and the machines. Seeded: every run is the same. */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  AuthMode,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  formatIPv4,
  formatIPv6,
  PREFACE,
  ProtocolError,
  ReceiverMachine,
  Role,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import { DIRECTIONS, Net, RawPeer, rawDialerHandshake, testCrypto, testIdentity, type Wire } from "./harness.ts";
import { normalize } from "./vector-format.ts";

const SEED = 20_240_601;
const params = (numRuns: number) => ({ seed: SEED, numRuns });

const bytes = (min: number, max: number) => fc.uint8Array({ minLength: min, maxLength: max });
const fixed = (n: number) => bytes(n, n);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const flowId = fc.integer({ min: 1, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
/** Any valid Unicode text (no lone surrogates), sometimes with a leading BOM, within `maxBytes` of UTF-8. */
const text = (maxBytes: number) =>
  fc
    .tuple(fc.boolean(), fc.string({ unit: "binary", maxLength: maxBytes / 2 }))
    .map(([bom, s]) => (bom ? "\ufeff" : "") + s)
    .filter((s) => utf8(s).length <= maxBytes);

const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    type: fc.constant(FrameType.Hello),
    role: fc.constantFrom(Role.Receiver, Role.Sender),
    auth: fc.constantFrom(AuthMode.Key, AuthMode.Secret),
    capabilities: u32,
    nonce: fixed(32),
    publicKey: fc.oneof(fixed(0), fixed(32)),
    mappings: fc.array(fc.oneof(fc.constant(""), text(32)), { minLength: 1, maxLength: 32 }),
    agent: text(64),
  }),
  fc.record({
    type: fc.constant(FrameType.Auth),
    proof: fc.oneof(fixed(0), fixed(32), fixed(64)),
    token: fc.oneof(fixed(0), fixed(16)),
  }),
  fc.record({
    type: fc.constant(FrameType.Accept),
    proof: fc.oneof(fixed(0), fixed(32), fixed(64)),
    token: fc.oneof(fixed(0), fixed(16)),
    resumed: fc.boolean(),
  }),
  fc.record({ type: fc.constant(FrameType.Close), code: u16, message: text(1024) }),
  fc.record({ type: fc.constant(FrameType.Ping), payload: fixed(8) }),
  fc.record({ type: fc.constant(FrameType.Pong), payload: fixed(8) }),
  fc.record({
    type: fc.constant(FrameType.FlowOpen),
    flowId,
    mappingId: u16,
    client: fc.oneof(
      fc.record({ family: fc.constant(4 as const), address: fixed(4).map(formatIPv4), port: u16 }),
      fc.record({ family: fc.constant(6 as const), address: fixed(16).map(formatIPv6), port: u16 }),
    ),
  }),
  fc.record({ type: fc.constant(FrameType.FlowClose), flowId, reason: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ type: fc.constant(FrameType.Data), flowId, payload: fc.oneof(bytes(0, 64), bytes(0, 3000)) }),
  fc.record({
    type: fc.constant("extension" as const),
    extensionType: fc.integer({ min: 0x80, max: 0xff }),
    body: bytes(0, 300),
  }),
) as fc.Arbitrary<Frame>;

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function decodeChunks(chunks: Uint8Array[], preface: boolean): Frame[] {
  const d = new FrameDecoder({ preface });
  const out: Frame[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let f = d.read(); f !== undefined; f = d.read()) out.push(f);
  }
  expect(d.midFrame).toBe(false);
  return out;
}

/** Cuts `b` at the given (unsorted, possibly repeated) positions. */
function cutAt(b: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Uint8Array[] = [];
  let last = 0;
  for (const p of [...points, b.length]) {
    out.push(b.subarray(last, p));
    last = p;
  }
  return out;
}

describe("codec", () => {
  test("encode -> decode round trip for any valid frame", () => {
    fc.assert(
      fc.property(frameArb, (frame) => {
        const decoded = decodeChunks([encodeFrame(frame)], false);
        expect(decoded.map(normalize)).toEqual([normalize(frame)]);
        // and decoding then re-encoding gives the same bytes (the HMAC transcript relies on it)
        expect(encodeFrame(decoded[0])).toEqual(encodeFrame(frame));
      }),
      params(1500),
    );
  });

  test("any chunking of a concatenated stream gives the same frames", () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), (frames, cuts) => {
        const stream = concat([PREFACE, ...frames.map(encodeFrame)]);
        expect(decodeChunks(cutAt(stream, cuts), true).map(normalize)).toEqual(frames.map(normalize));
      }),
      params(400),
    );
  });

  const garbage = fc.oneof(
    bytes(0, 200),
    bytes(0, 200).map((b) => concat([PREFACE, b])),
    // valid frames with a few bytes flipped, after the preface
    fc
      .tuple(
        fc.array(frameArb, { maxLength: 4 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
      )
      .map(([frames, flips]) => {
        const b = concat([PREFACE, ...frames.map(encodeFrame)]);
        for (const [at, v] of flips) if (b.length > 8) b[8 + (at % (b.length - 8))] = v;
        return b;
      }),
  );

  test("arbitrary bytes: the decoder throws nothing but ProtocolError", () => {
    fc.assert(
      fc.property(garbage, fc.boolean(), fc.array(fc.nat(), { maxLength: 8 }), (input, preface, cuts) => {
        const d = new FrameDecoder({ preface });
        try {
          for (const c of cutAt(input, cuts)) {
            d.push(c);
            while (d.read() !== undefined);
          }
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
          expect(typeof e.code).toBe("string");
        }
      }),
      params(1500),
    );
  });

  test("arbitrary bytes on a connection: the machines never throw and report no internal error", () => {
    fc.assert(
      fc.property(
        garbage,
        fc.array(fc.nat(), { maxLength: 8 }),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        (input, cuts, asSender, keys, accepts) => {
          // Nothing random can pass the handshake: MACs and signatures cannot be guessed.
          const config = keys ? { identity: testIdentity(3) } : { secret: "x" };
          const machine = asSender
            ? new SenderMachine(config, testCrypto(3))
            : new ReceiverMachine(config, testCrypto(3));
          // Either role on either TCP side: the acceptor's and the dialer's handshakes both see garbage.
          const raw = accepts ? new RawPeer(machine, 1).accepted() : new RawPeer(machine, 1).dialed();
          for (const c of cutAt(input, cuts)) raw.send(c);
          machine.tick(1_000_000);
          raw.read();
          expect(raw.outputs.filter((o) => o.kind === "log" && o.level === "error")).toEqual([]);
          expect(
            raw.outputs.filter(
              (o) =>
                o.kind === "send-to-client" ||
                o.kind === "open-flow-socket" ||
                o.kind === "accepted" ||
                o.kind === "authorize-peer",
            ),
          ).toEqual([]);
        },
      ),
      params(800),
    );
  });

  test("an accepted hostile sender sending any frames: no throw, and replies only to clients that opened flows", () => {
    const clients = ["192.0.2.1|1000", "2001:db8::1|53"];
    fc.assert(
      fc.property(fc.array(fc.oneof(frameArb, bytes(1, 40)), { maxLength: 30 }), fc.nat(3), (items, clientCount) => {
        // Amplification cap off: this property is about where replies go, not how much.
        const receiver = new ReceiverMachine({ identity: testIdentity(4), amplificationLimit: 0 }, testCrypto(4));
        const raw = new RawPeer(receiver, 1).connect();
        rawDialerHandshake(raw);
        receiver.session.approve(1, true, 0);
        expect(receiver.session.peerConnected).toBe(true);
        const opened = clients.slice(0, clientCount);
        for (const key of opened) {
          const [address, port] = key.split("|");
          receiver.clientDatagram(address, Number(port), utf8("q"), 0);
        }
        for (const item of items) raw.send(item);
        raw.read();
        expect(raw.outputs.filter((o) => o.kind === "log" && o.level === "error")).toEqual([]);
        for (const o of raw.outputs) {
          if (o.kind === "send-to-client") expect(opened).toContain(`${o.flow.address}|${o.flow.port}`);
        }
      }),
      params(600),
    );
  });
});

// ---- random event sequences against a receiver/sender pair -------------------------------------

const CLIENTS: Array<[string, number]> = [
  ["192.0.2.1", 1000],
  ["192.0.2.1", 1001],
  ["192.0.2.2", 1000],
  ["198.51.100.7", 53],
  ["2001:db8::1", 53],
  ["2001:db8::2", 4444],
  ["::ffff:203.0.113.9", 123],
];

type Event =
  | { e: "client"; i: number; size: number }
  | { e: "target"; pick: number; size: number; known: boolean }
  | { e: "advance"; ms: number }
  | { e: "cut" }
  | { e: "reconnect" }
  | { e: "block"; receiver: boolean; on: boolean }
  | { e: "socket-error"; pick: number; fatal: boolean }
  | { e: "blackhole"; receiver: boolean };

const eventArb: fc.Arbitrary<Event> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ e: fc.constant("client" as const), i: fc.nat(CLIENTS.length - 1), size: fc.nat(400) }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      e: fc.constant("target" as const),
      pick: fc.nat(),
      size: fc.nat(400),
      known: fc.nat(3).map((n) => n > 0),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({ e: fc.constant("advance" as const), ms: fc.oneof(fc.nat(3_000), fc.nat(40_000)) }),
  },
  { weight: 1, arbitrary: fc.record({ e: fc.constant("cut" as const) }) },
  { weight: 2, arbitrary: fc.record({ e: fc.constant("reconnect" as const) }) },
  { weight: 1, arbitrary: fc.record({ e: fc.constant("block" as const), receiver: fc.boolean(), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ e: fc.constant("socket-error" as const), pick: fc.nat(), fatal: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ e: fc.constant("blackhole" as const), receiver: fc.boolean() }) },
);

/** A datagram whose bytes say who sent it: [tag (4 bytes BE)] then filler. */
function tagged(tag: number, size: number): Uint8Array {
  const b = new Uint8Array(4 + size);
  new DataView(b.buffer).setUint32(0, tag);
  return b;
}
const tagOf = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0);

test.each(DIRECTIONS.map((d) => [d.name, d] as const))(
  "random event sequences keep the invariants %s",
  (_, direction) => {
    const R_MAX = 3;
    const S_MAX = 4;
    fc.assert(
      fc.property(fc.array(eventArb, { minLength: 1, maxLength: 60 }), (events) => {
        const net = new Net();
        const secret = "prop";
        const receiver = net.add(
          new ReceiverMachine(
            {
              secret,
              maxFlows: R_MAX,
              idleTimeoutMs: 20_000,
              keepaliveMs: 5_000,
              resumeGraceMs: 15_000,
              maxBufferBytes: 1_500,
            },
            testCrypto(11),
          ),
        );
        const sender = net.add(
          new SenderMachine(
            {
              secret,
              maxFlows: S_MAX,
              idleTimeoutMs: 25_000,
              keepaliveMs: 7_000,
              resumeGraceMs: 10_000,
              maxBufferBytes: 1_500,
            },
            testCrypto(12),
          ),
        );
        let conn = 1;
        let wire: Wire = net.link(direction, receiver, sender, conn);
        const clientsSeen = new Set<string>();

        for (const ev of events) {
          switch (ev.e) {
            case "client": {
              const [address, port] = CLIENTS[ev.i];
              clientsSeen.add(`${address}|${port}`);
              receiver.clientDatagram(address, port, tagged(ev.i, ev.size), net.now);
              break;
            }
            case "target": {
              const open = openSenderFlows(net, sender);
              const id = ev.known && open.size > 0 ? [...open.keys()][ev.pick % open.size] : 1 + (ev.pick % 50);
              sender.targetDatagram(id, tagged(id, ev.size), net.now);
              break;
            }
            case "advance":
              net.advance(ev.ms);
              break;
            case "cut":
              net.cut(wire);
              break;
            case "reconnect":
              if (wire.up) break;
              if (sender.session.connectionCount > 0 || receiver.session.connectionCount > 0) break;
              conn++;
              wire = net.link(direction, receiver, sender, conn);
              break;
            case "block":
              if (ev.receiver) receiver.session.setBlocked(conn, ev.on);
              else sender.session.setBlocked(conn, ev.on);
              break;
            case "socket-error": {
              const open = [...openSenderFlows(net, sender).keys()];
              if (open.length > 0) sender.flowSocketError(open[ev.pick % open.length], ev.fatal);
              break;
            }
            case "blackhole":
              wire.drop.add(ev.receiver ? receiver : sender);
              break;
          }
          net.pump();

          // Invariants.
          expect(receiver.flows.size).toBeLessThanOrEqual(R_MAX);
          expect(sender.flows.size).toBeLessThanOrEqual(S_MAX);
          for (const m of [receiver, sender]) {
            const t = m.nextTimeout();
            if (t !== undefined) expect(t).toBeGreaterThanOrEqual(net.now);
          }
        }

        // Every datagram to a client goes to a flow a client opened, and carries what the target sent on
        // that very flow id; every datagram to the target goes through an open flow socket, and came from
        // the client that flow belongs to.
        for (const o of net.of(receiver, "send-to-client")) {
          const key = `${o.flow.address}|${o.flow.port}`;
          expect(clientsSeen.has(key)).toBe(true);
          expect(tagOf(o.payload)).toBe(o.flow.id);
        }
        const open = new Map<number, string>();
        for (const o of net.outputs(sender)) {
          if (o.kind === "open-flow-socket") open.set(o.flowId, `${o.client.address}|${o.client.port}`);
          if (o.kind === "close-flow-socket") {
            expect(open.has(o.flowId)).toBe(true);
            open.delete(o.flowId);
          }
          if (o.kind === "send-to-target") {
            expect(open.has(o.flowId)).toBe(true);
            const [address, port] = CLIENTS[tagOf(o.payload)];
            expect(open.get(o.flowId)).toBe(`${address}|${port}`);
          }
        }
        expect(open.size).toBe(sender.flows.size);
        expect(
          net
            .outputs(receiver)
            .concat(net.outputs(sender))
            .filter((o) => o.kind === "log" && o.level === "error"),
        ).toEqual([]);
      }),
      params(400),
    );
  },
);

/** Sender flows open right now, from its outputs: flow id -> client key. */
function openSenderFlows(net: Net, sender: SenderMachine): Map<number, string> {
  const open = new Map<number, string>();
  for (const o of net.outputs(sender)) {
    if (o.kind === "open-flow-socket") open.set(o.flowId, `${o.client.address}|${o.client.port}`);
    if (o.kind === "close-flow-socket") open.delete(o.flowId);
  }
  return open;
}

// ---- anti-amplification ------------------------------------------------------------------------

const AMP_CLIENTS: Array<[string, number]> = [
  ["192.0.2.1", 1000],
  ["192.0.2.1", 1001],
  ["198.51.100.7", 53],
  ["2001:db8::1", 53],
];

type AmpEvent =
  | { e: "client"; i: number; size: number }
  | { e: "reply"; pick: number; size: number; known: boolean }
  | { e: "advance"; ms: number };

const ampEventArb: fc.Arbitrary<AmpEvent> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ e: fc.constant("client" as const), i: fc.nat(AMP_CLIENTS.length - 1), size: fc.nat(300) }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      e: fc.constant("reply" as const),
      pick: fc.nat(),
      size: fc.oneof(fc.nat(100), fc.nat(3000)),
      known: fc.nat(4).map((n) => n > 0),
    }),
  },
  { weight: 1, arbitrary: fc.record({ e: fc.constant("advance" as const), ms: fc.nat(15_000) }) },
);

test("anti-amplification: replies to a client that sent one datagram never exceed limit x its wire bytes, nor limit datagrams", () => {
  let cappedSends = 0;
  let cappedDrops = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 20 }),
      fc.array(ampEventArb, { minLength: 1, maxLength: 80 }),
      (limit, events) => {
        const receiver = new ReceiverMachine(
          { identity: testIdentity(6), amplificationLimit: limit, maxFlows: 3, idleTimeoutMs: 20_000 },
          testCrypto(6),
        );
        const raw = new RawPeer(receiver, 1).connect();
        rawDialerHandshake(raw);
        receiver.session.approve(1, true, 0);
        expect(receiver.session.peerConnected).toBe(true);
        // Per flow id (ids are not reused here): client datagrams seen, the first one's size, and the
        // bytes sent to the client while it had sent only that one.
        const flows = new Map<number, { datagrams: number; first: number; unconfirmedBytes: number; sends: number }>();
        // Bytes on the wire, as the network carries them: the payload and the IP and UDP headers.
        const onWire = (size: number, address: string) => size + (address.includes(":") ? 48 : 28);
        let framesSeen = 0;
        let outputsSeen = 0;
        const sync = () => {
          raw.read();
          for (; framesSeen < raw.received.length; framesSeen++) {
            const f = raw.received[framesSeen];
            if (f.type === FrameType.FlowOpen)
              flows.set(f.flowId, { datagrams: 0, first: 0, unconfirmedBytes: 0, sends: 0 });
            if (f.type === FrameType.Data) {
              const state = flows.get(f.flowId);
              if (state === undefined) throw new Error(`DATA for flow ${f.flowId} before its FLOW_OPEN`);
              if (state.datagrams === 0) state.first = f.payload.length;
              state.datagrams++;
            }
          }
          for (; outputsSeen < raw.outputs.length; outputsSeen++) {
            const o = raw.outputs[outputsSeen];
            if (o.kind !== "send-to-client") continue;
            const state = flows.get(o.flow.id);
            if (state === undefined) throw new Error(`reply on flow ${o.flow.id}, which was never opened`);
            if (state.datagrams !== 1) continue;
            cappedSends++;
            state.unconfirmedBytes += onWire(o.payload.length, o.flow.address);
            state.sends++;
            expect(state.unconfirmedBytes).toBeLessThanOrEqual(limit * onWire(state.first, o.flow.address));
            expect(state.sends).toBeLessThanOrEqual(limit);
          }
        };
        let now = 0;
        for (const ev of events) {
          switch (ev.e) {
            case "client": {
              const [address, port] = AMP_CLIENTS[ev.i];
              receiver.clientDatagram(address, port, new Uint8Array(ev.size), now);
              break;
            }
            case "reply": {
              const open = [...receiver.flows.values()].map((f) => f.id);
              const id = ev.known && open.length > 0 ? open[ev.pick % open.length] : 1 + (ev.pick % 20);
              raw.send({ type: FrameType.Data, flowId: id, payload: new Uint8Array(ev.size) });
              break;
            }
            case "advance":
              now += ev.ms;
              raw.now = now;
              receiver.tick(now);
              raw.send({ type: FrameType.Ping, payload: new Uint8Array(8) }); // keeps the connection alive
              break;
          }
          sync();
        }
        cappedDrops += receiver.stats.drops.amplification;
        expect(raw.outputs.filter((o) => o.kind === "log" && o.level === "error")).toEqual([]);
      },
    ),
    params(300),
  );
  // Not vacuous: replies were both sent and dropped under the cap.
  expect(cappedSends).toBeGreaterThan(0);
  expect(cappedDrops).toBeGreaterThan(0);
});
