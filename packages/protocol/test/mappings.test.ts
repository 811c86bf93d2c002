/**
 * Several mappings over one connection: pairing the two sides' lists (pairMappings, by name or by
 * position), mismatches reported at the handshake by both sides, and flows kept apart per mapping
 * (translation of mapping ids, idle timeouts and flow limits), in both TCP directions.
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  CloseCode,
  FlowCloseReason,
  type Frame,
  FrameType,
  MAX_MAPPINGS,
  type MappingConfig,
  ProtocolError,
  pairMappings,
  type ReceiverConfig,
  ReceiverMachine,
  type SenderConfig,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import {
  closeCodes,
  DIRECTIONS,
  type Direction,
  framesOfType,
  Net,
  RawPeer,
  RECEIVER_KEY,
  rawAcceptorHandshake,
  SENDER_KEY,
  sides,
  testCrypto,
} from "./harness.ts";

const SECRET = "s3cret";
const named = (...names: string[]): MappingConfig[] => names.map((name) => ({ name }));
const unnamed = (n: number): MappingConfig[] => Array.from({ length: n }, () => ({}));

function thrown(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ProtocolError);
    return e as ProtocolError;
  }
  throw new Error("expected a ProtocolError");
}

describe("pairMappings", () => {
  test("by name when every mapping on both sides is named: the order may differ", () => {
    expect(pairMappings(["ntp", "dns"], ["dns", "ntp"])).toEqual([1, 0]);
    expect(pairMappings(["a", "b", "c"], ["c", "a", "b"])).toEqual([1, 2, 0]);
    expect(pairMappings(["dns"], ["dns"])).toEqual([0]);
    expect(pairMappings(["é", "🔑"], ["🔑", "é"])).toEqual([1, 0]);
  });

  test("by position when any mapping is unnamed; names given on both sides at a position must agree", () => {
    expect(pairMappings([""], [""])).toEqual([0]);
    expect(pairMappings(["", "", ""], ["", "", ""])).toEqual([0, 1, 2]);
    expect(pairMappings(["dns", ""], ["dns", "ntp"])).toEqual([0, 1]);
    expect(pairMappings(["", "ntp"], ["dns", ""])).toEqual([0, 1]);
  });

  test("different names: mapping-mismatch, the message lists both sides", () => {
    const e = thrown(() => pairMappings(["dns", "ntp"], ["dns", "syslog"]));
    expect(e.code).toBe("mapping-mismatch");
    expect(e.message).toContain("the receiver has 2 (dns, ntp), the sender 2 (dns, syslog)");
  });

  test("different counts: mapping-mismatch, by name or by position", () => {
    expect(thrown(() => pairMappings(["dns"], ["dns", "ntp"])).message).toContain(
      "the receiver has 1 (dns), the sender 2 (dns, ntp)",
    );
    expect(thrown(() => pairMappings(["", ""], [""])).message).toContain(
      "the receiver has 2 (#1, #2), the sender 1 (#1)",
    );
  });

  test("a named/unnamed conflict: by position, and the names at a position differ", () => {
    const e = thrown(() => pairMappings(["ntp", "dns"], ["dns", ""]));
    expect(e.code).toBe("mapping-mismatch");
    expect(e.message).toContain("the receiver has 2 (ntp, dns), the sender 2 (dns, #2)");
  });

  test("a name repeated by the peer never pairs two mappings with one (the result stays a bijection)", () => {
    expect(thrown(() => pairMappings(["a", "a"], ["a", "b"])).code).toBe("mapping-mismatch");
    expect(thrown(() => pairMappings(["a", "b"], ["a", "a"])).code).toBe("mapping-mismatch");
  });

  test("property: either mapping-mismatch, or a bijection that follows the rules", () => {
    // Names from a small alphabet so that equal names, sets and orders come up often.
    const name: fc.Arbitrary<string> = fc.constantFrom(
      "",
      "",
      "dns",
      "ntp",
      "web",
      "é",
      "🔑",
      "a-much-longer-mapping-name",
    );
    const list = fc.array(name, { minLength: 1, maxLength: 6 });
    // Often the same list (or a permutation of it) on both sides: the interesting, non-throwing case.
    const pair = fc.oneof(
      fc.tuple(list, list),
      list.chain((r) => fc.tuple(fc.constant(r), fc.shuffledSubarray(r, { minLength: r.length }))),
      list.map((r) => [r, r.map((n, i) => (i % 2 === 0 ? n : ""))] as [string[], string[]]),
    );
    let paired = 0;
    fc.assert(
      fc.property(pair, ([receiver, sender]) => {
        let pairs: number[];
        try {
          pairs = pairMappings(receiver, sender);
        } catch (e) {
          expect(e).toBeInstanceOf(ProtocolError);
          expect((e as ProtocolError).code).toBe("mapping-mismatch");
          expect((e as ProtocolError).message).toContain(`the receiver has ${receiver.length} (`);
          expect((e as ProtocolError).message).toContain(`the sender ${sender.length} (`);
          // It refused for a reason the rules give.
          const allNamed = [...receiver, ...sender].every((n) => n !== "");
          const sameSet =
            new Set(receiver).size === receiver.length &&
            new Set(sender).size === sender.length &&
            receiver.every((n) => sender.includes(n));
          const positional =
            receiver.every((n, i) => n === "" || sender[i] === "" || n === sender[i]) &&
            // A name both sides use must sit at the same position.
            receiver.every((n, i) => n === "" || !sender.includes(n) || sender[i] === n);
          expect(receiver.length !== sender.length || (allNamed ? !sameSet : !positional)).toBe(true);
          return;
        }
        paired++;
        // A bijection between the receiver's ids and the sender's indexes.
        expect(pairs.length).toBe(receiver.length);
        expect(receiver.length).toBe(sender.length);
        expect([...pairs].sort((a, b) => a - b)).toEqual(sender.map((_, i) => i));
        if ([...receiver, ...sender].every((n) => n !== "")) {
          // By name: each receiver mapping pairs with the sender's of the same name.
          for (const [r, s] of pairs.entries()) expect(sender[s]).toBe(receiver[r]);
        } else {
          // By position, and no two names given at one position differ.
          for (const [r, s] of pairs.entries()) expect(s).toBe(r);
          for (const [i, n] of receiver.entries()) if (n !== "" && sender[i] !== "") expect(sender[i]).toBe(n);
        }
      }),
      { seed: 20_240_601, numRuns: 2000 },
    );
    expect(paired).toBeGreaterThan(100); // not vacuous
  });
});

describe("mapping configuration", () => {
  test("1 to 32 mappings, unique names of at most 32 bytes: anything else is refused when constructed", () => {
    const make = (mappings: MappingConfig[]) => () => new ReceiverMachine({ secret: SECRET, mappings }, testCrypto(1));
    expect(make([])).toThrow(RangeError);
    expect(make(unnamed(MAX_MAPPINGS + 1))).toThrow(RangeError);
    expect(make(named("dns", "dns"))).toThrow("used twice");
    expect(make(named("🔑".repeat(8) + "x"))).toThrow(RangeError); // 33 bytes
    expect(make(unnamed(MAX_MAPPINGS))).not.toThrow();
    expect(make(named("🔑".repeat(8), "", ""))).not.toThrow(); // several unnamed are fine
    expect(() => new SenderMachine({ secret: SECRET, mappings: named("a", "a") }, testCrypto(2))).toThrow(RangeError);
  });

  test('each side\'s HELLO lists its mapping names in order ("" for an unnamed one)', () => {
    const { wire, receiver, sender } = setup({ receiver: named("dns", "ntp"), sender: named("ntp", "dns") });
    const hellos = [receiver, sender].map((m) => framesOfType(wire.sentBy(m), FrameType.Hello)[0].mappings);
    expect(hellos).toEqual([
      ["dns", "ntp"],
      ["ntp", "dns"],
    ]);
    const plain = setup({});
    expect(framesOfType(plain.wire.sentBy(plain.receiver), FrameType.Hello)[0].mappings).toEqual([""]);
  });
});

/** A receiver and a sender with the given mappings, connected in `direction`; secret mode unless `key`. */
function setup(opts: {
  receiver?: MappingConfig[];
  sender?: MappingConfig[];
  receiverConfig?: ReceiverConfig;
  senderConfig?: SenderConfig;
  direction?: Direction;
  key?: boolean;
}) {
  const direction = opts.direction ?? DIRECTIONS[0];
  const secret = opts.key ? undefined : SECRET;
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine(
      { secret, identity: RECEIVER_KEY, amplificationLimit: 0, mappings: opts.receiver, ...opts.receiverConfig },
      testCrypto(1),
    ),
  );
  const sender = net.add(
    new SenderMachine({ secret, identity: SENDER_KEY, mappings: opts.sender, ...opts.senderConfig }, testCrypto(2)),
  );
  const wire = net.link(direction, receiver, sender, 1);
  return { net, receiver, sender, wire, ...sides(direction, receiver, sender) };
}

/** A datagram that says which mapping and client it belongs to. */
const tag = (mapping: number, address: string, port: number) => utf8(`${mapping}|${address}|${port}`);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

for (const dir of DIRECTIONS) {
  describe(`mismatched mappings ${dir.name}`, () => {
    const cases: Array<[string, MappingConfig[], MappingConfig[], string]> = [
      [
        // No name in common (a subset would be served, §18, in the -R direction in key mode).
        "different names",
        named("dns", "ntp"),
        named("wg", "syslog"),
        "the receiver has 2 (dns, ntp), the sender 2 (wg, syslog)",
      ],
      ["different counts", unnamed(2), unnamed(3), "the receiver has 2 (#1, #2), the sender 3 (#1, #2, #3)"],
      [
        "a named/unnamed conflict",
        named("ntp", "dns"),
        [{ name: "dns" }, {}],
        "the receiver has 2 (ntp, dns), the sender 2 (dns, #2)",
      ],
    ];
    for (const [what, receiverMappings, senderMappings, lists] of cases) {
      test(`${what}: both sides close with MAPPING_MISMATCH, naming both lists; nobody is asked`, () => {
        const { net, receiver, sender, wire, acceptor } = setup({
          receiver: receiverMappings,
          sender: senderMappings,
          direction: dir,
          key: true,
        });
        expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.MappingMismatch]);
        expect(closeCodes(wire.sentBy(sender))).toEqual([CloseCode.MappingMismatch]);
        for (const m of [receiver, sender]) {
          expect(framesOfType(wire.sentBy(m), FrameType.Close)[0].message).toContain(lists);
          expect(net.logs(m).some((l) => l.startsWith("warn") && l.includes(lists))).toBe(true);
          expect(net.logs(m).some((l) => l.includes("mappings differ"))).toBe(true); // the peer's CLOSE, named
          expect(m.stats.handshakeFailures).toBe(1);
          expect(net.of(m, "accepted")).toEqual([]);
        }
        expect(net.of(acceptor, "authorize-peer")).toEqual([]);
        expect(wire.up).toBe(false);
      });
    }
  });

  describe(`several mappings ${dir.name}`, () => {
    test("paired by name in a different order: a flow on the receiver's ntp opens the sender's ntp", () => {
      const { net, receiver, sender, wire } = setup({
        receiver: named("ntp", "dns"),
        sender: named("dns", "ntp"),
        direction: dir,
      });
      expect(sender.session.peerConnected).toBe(true);
      receiver.clientDatagram("192.0.2.1", 123, tag(0, "192.0.2.1", 123), net.now, 0); // ntp
      receiver.clientDatagram("192.0.2.1", 53, tag(1, "192.0.2.1", 53), net.now, 1); // dns
      net.pump();
      // FLOW_OPEN carries the receiver's mapping id; the sender translates it to its own index.
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowOpen).map((f) => f.mappingId)).toEqual([0, 1]);
      const opened = net.of(sender, "open-flow-socket");
      expect(opened.map((o) => [o.client.port, o.mappingId])).toEqual([
        [123, 1],
        [53, 0],
      ]);
      expect([...sender.flows.values()].map((f) => [f.client.port, f.mappingId])).toEqual([
        [123, 1],
        [53, 0],
      ]);
      expect([...receiver.flows.values()].map((f) => [f.port, f.mappingId])).toEqual([
        [123, 0],
        [53, 1],
      ]);
    });

    test("paired by position when unnamed", () => {
      const { net, receiver, sender } = setup({
        receiver: unnamed(3),
        sender: [{}, { name: "b" }, {}],
        direction: dir,
      });
      for (const m of [0, 1, 2]) receiver.clientDatagram("192.0.2.1", 1000 + m, utf8("x"), net.now, m);
      net.pump();
      expect(net.of(sender, "open-flow-socket").map((o) => [o.client.port, o.mappingId])).toEqual([
        [1000, 0],
        [1001, 1],
        [1002, 2],
      ]);
    });

    test("two mappings, many clients each: no cross-talk, one flow per (mapping, client)", () => {
      const { net, receiver, sender } = setup({
        receiver: named("dns", "ntp"),
        sender: named("ntp", "dns"),
        direction: dir,
      });
      const toSender = [1, 0]; // receiver mapping id -> sender index
      const clients: Array<[number, string, number]> = [];
      for (let i = 0; i < 25; i++) {
        // The same addresses and ports on both mappings: they are still different flows.
        clients.push([0, `198.51.100.${i % 5}`, 40_000 + i]);
        clients.push([1, `198.51.100.${i % 5}`, 40_000 + i]);
        clients.push([i % 2, `2001:db8::${(i + 1).toString(16)}`, 53]);
      }
      for (const [m, address, port] of clients)
        receiver.clientDatagram(address, port, tag(m, address, port), net.now, m);
      net.pump();
      expect(receiver.flows.size).toBe(clients.length);
      expect(receiver.flows.countOf(0) + receiver.flows.countOf(1)).toBe(clients.length);
      expect(receiver.flows.countOf(0)).toBe(clients.filter(([m]) => m === 0).length);
      expect(receiver.flows.countOf(2)).toBe(0); // no such mapping
      // Each flow's socket is opened toward the sender's mapping paired with the client's.
      const opened = net.of(sender, "open-flow-socket");
      expect(opened.length).toBe(clients.length);
      expect(new Set(opened.map((o) => o.flowId)).size).toBe(clients.length);
      const sendTargets = net.of(sender, "send-to-target");
      for (const o of sendTargets) {
        const [m, address, port] = text(o.payload).split("|");
        const socket = opened.find((s) => s.flowId === o.flowId);
        expect(socket?.mappingId).toBe(toSender[Number(m)]);
        expect([socket?.client.address, socket?.client.port]).toEqual([address, Number(port)]);
      }
      // Every target answers on its flow (in reverse order): each reply reaches the client of that flow,
      // on the mapping it came in on.
      for (const o of [...opened].reverse()) {
        sender.targetDatagram(o.flowId, utf8(`reply ${o.flowId}`), net.now);
      }
      net.pump();
      const sent = net.of(receiver, "send-to-client");
      expect(sent.length).toBe(clients.length);
      for (const o of sent) {
        expect(text(o.payload)).toBe(`reply ${o.flow.id}`);
        const socket = opened.find((s) => s.flowId === o.flow.id);
        if (socket === undefined) throw new Error(`a reply on flow ${o.flow.id}, which the sender never opened`);
        expect(toSender[o.flow.mappingId]).toBe(socket.mappingId);
        expect([o.flow.address, o.flow.port]).toEqual([socket.client.address, socket.client.port]);
      }
      const keys = sent.map((o) => `${o.flow.mappingId}|${o.flow.address}|${o.flow.port}`);
      expect(new Set(keys)).toEqual(new Set(clients.map(([m, a, p]) => `${m}|${a}|${p}`)));
    });

    test("per-mapping idle timeouts on the receiver: A after 1 s, B after 10 s", () => {
      const { net, receiver, sender, wire } = setup({
        receiver: [
          { name: "a", idleTimeoutMs: 1_000 },
          { name: "b", idleTimeoutMs: 10_000 },
        ],
        sender: named("b", "a"),
        direction: dir,
      });
      for (const m of [0, 1]) {
        for (let i = 0; i < 3; i++) receiver.clientDatagram("192.0.2.1", 100 * m + i, utf8("x"), net.now, m);
      }
      net.pump();
      // The tail-loss nudge is due 1 ms after the datagrams; then the first idle expiry.
      expect(receiver.nextTimeout()).toBe(1);
      net.advance(1);
      expect(receiver.nextTimeout()).toBe(1_000);
      net.advance(998);
      expect([receiver.flows.countOf(0), receiver.flows.countOf(1)]).toEqual([3, 3]);
      net.advance(1);
      expect([receiver.flows.countOf(0), receiver.flows.countOf(1)]).toEqual([0, 3]);
      const idle = framesOfType(wire.sentBy(receiver), FrameType.FlowClose);
      expect(idle.map((f) => f.reason)).toEqual([FlowCloseReason.Idle, FlowCloseReason.Idle, FlowCloseReason.Idle]);
      // The sender freed the same three (its mapping "a" is index 1).
      const aFlows = net
        .of(sender, "open-flow-socket")
        .filter((o) => o.mappingId === 1)
        .map((o) => o.flowId);
      expect(net.of(sender, "close-flow-socket").map((o) => o.flowId)).toEqual(aFlows);
      expect(sender.flows.size).toBe(3);
      net.advance(8_999);
      expect(receiver.flows.countOf(1)).toBe(3);
      net.advance(1);
      expect(receiver.flows.size).toBe(0);
      expect(sender.flows.size).toBe(0);
    });

    test("per-mapping idle timeouts on the sender (its own index), the receiver follows", () => {
      const { net, receiver, sender } = setup({
        receiver: named("a", "b"),
        sender: [
          { name: "b", idleTimeoutMs: 10_000 },
          { name: "a", idleTimeoutMs: 1_000 },
        ],
        direction: dir,
      });
      receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now, 0); // a
      receiver.clientDatagram("192.0.2.1", 2, utf8("x"), net.now, 1); // b
      net.pump();
      net.advance(1_000);
      expect([receiver.flows.countOf(0), receiver.flows.countOf(1)]).toEqual([0, 1]);
      expect([...sender.flows.values()].map((f) => f.mappingId)).toEqual([0]); // "b"
      net.advance(9_000);
      expect(receiver.flows.size).toBe(0);
    });

    test("per-mapping maxFlows: eviction takes the oldest flow of the same mapping only", () => {
      const { net, receiver, sender, wire } = setup({
        receiver: [{ name: "a", maxFlows: 2 }, { name: "b" }],
        sender: named("b", "a"),
        direction: dir,
      });
      const open = (m: number, port: number) => {
        receiver.clientDatagram("192.0.2.1", port, utf8("x"), net.now, m);
        net.pump();
        net.advance(10);
      };
      open(1, 1); // b's oldest, older than anything on a
      open(0, 2);
      open(0, 3);
      open(1, 4);
      open(0, 5); // a is full: a's oldest (port 2) goes, not b's port 1
      expect([receiver.flows.countOf(0), receiver.flows.countOf(1)]).toEqual([2, 2]);
      const evicted = framesOfType(wire.sentBy(receiver), FrameType.FlowClose);
      expect(evicted.map((f) => f.reason)).toEqual([FlowCloseReason.Evicted]);
      const flowOf = (port: number) => [...receiver.flows.values()].find((f) => f.port === port);
      expect(flowOf(2)).toBeUndefined();
      expect([1, 3, 4, 5].map((p) => flowOf(p)?.mappingId)).toEqual([1, 0, 1, 0]);
      expect(sender.flows.size).toBe(4);
      expect(receiver.stats.flowsEvicted).toBe(1);
    });

    test("per-mapping maxFlows on the sender: it evicts within its mapping and tells the receiver", () => {
      const { net, receiver, sender, wire } = setup({
        receiver: named("a", "b"),
        sender: [{ name: "b" }, { name: "a", maxFlows: 1 }],
        direction: dir,
      });
      receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now, 1); // b
      receiver.clientDatagram("192.0.2.1", 2, utf8("x"), net.now, 0); // a
      receiver.clientDatagram("192.0.2.1", 3, utf8("x"), net.now, 0); // a: evicts port 2
      net.pump();
      expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
        FlowCloseReason.Evicted,
      ]);
      expect([...receiver.flows.values()].map((f) => f.port).sort()).toEqual([1, 3]);
      expect([...sender.flows.values()].map((f) => [f.client.port, f.mappingId])).toEqual([
        [1, 0],
        [3, 1],
      ]);
    });

    test("resume keeps every mapping's flows and their translation", () => {
      const { net, receiver, sender, wire } = setup({
        receiver: named("dns", "ntp"),
        sender: named("ntp", "dns"),
        direction: dir,
      });
      receiver.clientDatagram("192.0.2.1", 53, utf8("q"), net.now, 0);
      receiver.clientDatagram("192.0.2.1", 123, utf8("q"), net.now, 1);
      net.pump();
      net.cut(wire);
      net.advance(1_000);
      net.link(dir, receiver, sender, 2);
      expect(sender.session.peerConnected).toBe(true);
      expect([receiver.flows.countOf(0), receiver.flows.countOf(1)]).toEqual([1, 1]);
      receiver.clientDatagram("192.0.2.9", 123, utf8("new"), net.now, 1);
      net.pump();
      expect(net.of(sender, "open-flow-socket").map((o) => [o.client.port, o.mappingId])).toEqual([
        [53, 1],
        [123, 0],
        [123, 0],
      ]);
    });
  });
}

describe("several mappings: hosts and hostile peers", () => {
  test("a datagram for a mapping the receiver does not have is a host bug: RangeError, nothing sent", () => {
    const { net, receiver, wire } = setup({ receiver: unnamed(2), sender: unnamed(2) });
    expect(() => receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now, 2)).toThrow(RangeError);
    net.pump();
    expect(framesOfType(wire.sentBy(receiver), FrameType.FlowOpen)).toEqual([]);
    expect(receiver.flows.size).toBe(0);
  });

  test("FLOW_OPEN naming a mapping id past the receiver's list is refused with UNKNOWN_MAPPING", () => {
    // A broken receiver (played by hand) that announced two mappings but opens a flow on a third.
    const sender = new SenderMachine({ secret: SECRET, mappings: unnamed(2) }, testCrypto(2));
    const raw = new RawPeer(sender, 1).dialed();
    rawAcceptorHandshake(raw, { secret: SECRET, mappings: ["", ""] });
    expect(sender.session.peerConnected).toBe(true);
    const flowOpen = (flowId: number, mappingId: number): Frame => ({
      type: FrameType.FlowOpen,
      flowId,
      mappingId,
      client: { family: 4, address: "192.0.2.1", port: 53 },
    });
    raw.send(flowOpen(1, 2), { type: FrameType.Data, flowId: 1, payload: utf8("x") }, flowOpen(2, 1));
    expect(raw.outputs.filter((o) => o.kind === "open-flow-socket")).toEqual([
      {
        kind: "open-flow-socket",
        flowId: 2,
        mappingId: 1,
        portOffset: 0,
        client: { family: 4, address: "192.0.2.1", port: 53 },
      },
    ]);
    // Refused, and the DATA that followed the FLOW_OPEN is answered as an unknown flow.
    expect(framesOfType(raw.received, FrameType.FlowClose)).toEqual([
      { type: FrameType.FlowClose, flowId: 1, reason: FlowCloseReason.UnknownMapping },
      { type: FrameType.FlowClose, flowId: 1, reason: FlowCloseReason.UnknownFlow },
    ]);
    expect(raw.outputs.some((o) => o.kind === "send-to-target")).toBe(false);
    expect(raw.closed()).toBe(false);
  });

  test("a peer whose HELLO repeats a mapping name is refused as a mismatch", () => {
    const sender = new SenderMachine({ secret: SECRET, mappings: named("a", "b") }, testCrypto(2));
    const raw = new RawPeer(sender, 1).dialed();
    raw.send(new Uint8Array([0x4d, 0x43, 0x55, 0x44, 0x50, 0x54, 0x00, 0x01]), {
      type: FrameType.Hello,
      role: 1,
      auth: 2,
      capabilities: 1,
      nonce: new Uint8Array(32),
      publicKey: new Uint8Array(0),
      mappings: ["a", "a"],
      agent: "dup",
    });
    expect(raw.closeCode()).toBe(CloseCode.MappingMismatch);
    expect(framesOfType(raw.received, FrameType.Auth)).toEqual([]);
  });
});

describe("hostile mapping names", () => {
  test("a peer's mapping names reach the mismatch message escaped and quoted, never as raw lines", () => {
    const hostile = "x\n2026-01-01T00:00:00.000Z mcudpt receiver: sender 203.0.113.9:4444 accepted\u001b[31m";
    const e = thrown(() => pairMappings(["dns"], [hostile]));
    expect(e.message).not.toMatch(/[\n\r\u001b]/);
    expect(e.message).toContain('the sender 1 ("x\\n2026-01-01T00:00:00.000Z mcudpt receiv"… (41 more characters))');
  });
});
