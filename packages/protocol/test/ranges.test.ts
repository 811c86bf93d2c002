/**
 * Port ranges (§8.6): a mapping of n ports takes n consecutive mapping ids on the wire, so FLOW_OPEN
 * tells the sender which port of the range a client used and the target port is at the same offset;
 * both sides must give paired mappings the same number of ports, else both close with
 * MAPPING_MISMATCH at the HELLO. Flows, limits and counters stay per mapping (one per range).
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  CloseCode,
  checkPairedPorts,
  FlowCloseReason,
  type Frame,
  FrameType,
  MAX_MAPPING_PORTS,
  type MappingConfig,
  MappingIds,
  PREFACE,
  ProtocolError,
  ReceiverMachine,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import {
  closeCodes,
  DIRECTIONS,
  framesOfType,
  Net,
  pair,
  RawPeer,
  rawAcceptorHandshake,
  testCrypto,
} from "./harness.ts";

const SECRET = "s3cret";
const text = (b: Uint8Array) => new TextDecoder().decode(b);

function connect(
  receiverMappings: MappingConfig[],
  senderMappings: MappingConfig[],
  dir = DIRECTIONS[0],
  maxFlows?: number,
) {
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine(
      { secret: SECRET, amplificationLimit: 0, mappings: receiverMappings, ...(maxFlows ? { maxFlows } : {}) },
      testCrypto(1),
    ),
  );
  const sender = net.add(new SenderMachine({ secret: SECRET, mappings: senderMappings }, testCrypto(2)));
  const wire = net.link(dir, receiver, sender, 1);
  return { net, receiver, sender, wire };
}

describe("MappingIds", () => {
  test("a mapping of n ports takes the n ids after the mappings before it", () => {
    const ids = new MappingIds([16, 1, 3]);
    expect(ids.total).toBe(20);
    expect([ids.idOf(0, 0), ids.idOf(0, 15), ids.idOf(1, 0), ids.idOf(2, 0), ids.idOf(2, 2)]).toEqual([
      0, 15, 16, 17, 19,
    ]);
    expect(ids.locate(0)).toEqual({ mapping: 0, offset: 0 });
    expect(ids.locate(15)).toEqual({ mapping: 0, offset: 15 });
    expect(ids.locate(16)).toEqual({ mapping: 1, offset: 0 });
    expect(ids.locate(19)).toEqual({ mapping: 2, offset: 2 });
    expect(ids.locate(20)).toBeUndefined();
    expect(ids.locate(-1)).toBeUndefined();
    expect(new MappingIds([1]).locate(0)).toEqual({ mapping: 0, offset: 0 });
  });

  test("property: locate is the inverse of idOf, for any list of up to 32 mappings", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 32 }), (ports) => {
        const ids = new MappingIds(ports);
        let id = 0;
        ports.forEach((count, mapping) => {
          for (let offset = 0; offset < count; offset++) {
            expect(ids.idOf(mapping, offset)).toBe(id);
            expect(ids.locate(id++)).toEqual({ mapping, offset });
          }
        });
        expect(ids.locate(id)).toBeUndefined();
      }),
      { seed: 16_027, numRuns: 300 },
    );
  });
});

describe("range configuration", () => {
  const make = (mappings: MappingConfig[]) => () => new ReceiverMachine({ secret: SECRET, mappings }, testCrypto(1));

  test(`1 to ${MAX_MAPPING_PORTS} ports per mapping and in all; anything else is refused when constructed`, () => {
    expect(make([{ ports: 0 }])).toThrow(RangeError);
    expect(make([{ ports: 1.5 }])).toThrow(RangeError);
    expect(make([{ ports: MAX_MAPPING_PORTS + 1 }])).toThrow(RangeError);
    expect(make([{ ports: 4000 }, { ports: 97 }])).toThrow(
      `mappings of 4097 ports in all, at most ${MAX_MAPPING_PORTS}`,
    );
    expect(make([{ ports: MAX_MAPPING_PORTS }])).not.toThrow();
    expect(make([{ ports: 4000 }, { ports: 96 }])).not.toThrow();
  });

  test("HELLO lists the port counts only when there is a range", () => {
    const ranged = connect(
      [{ name: "game", ports: 16 }, { name: "dns" }],
      [{ name: "dns" }, { name: "game", ports: 16 }],
    );
    const hellos = [ranged.receiver, ranged.sender].map((m) => framesOfType(ranged.wire.sentBy(m), FrameType.Hello)[0]);
    expect(hellos.map((h) => h.mappingPorts)).toEqual([
      [16, 1],
      [1, 16],
    ]);
    const plain = connect([{ name: "dns" }], [{ name: "dns" }]);
    expect(framesOfType(plain.wire.sentBy(plain.receiver), FrameType.Hello)[0].mappingPorts).toBeUndefined();
    expect(plain.sender.session.peerConnected).toBe(true);
  });
});

describe("checkPairedPorts", () => {
  test("paired mappings of different sizes: mapping-mismatch naming the mapping and both sizes", () => {
    let error: unknown;
    try {
      checkPairedPorts([1, 0], { names: ["dns", "game"], ports: [1, 16] }, { names: ["game", "dns"], ports: [8, 1] });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ProtocolError);
    expect((error as ProtocolError).code).toBe("mapping-mismatch");
    expect((error as ProtocolError).message).toBe(
      "port ranges differ: mapping game has 16 ports on the receiver, 8 ports on the sender; give both sides ranges of the same size",
    );
    expect(() => checkPairedPorts([0], { names: [""], ports: [2] }, { names: [""] })).toThrow(
      "mapping #1 has 2 ports on the receiver, 1 port on the sender",
    );
    expect(() => checkPairedPorts([0, 1], { names: ["", ""] }, { names: ["", ""] })).not.toThrow();
  });
});

for (const dir of DIRECTIONS) {
  describe(`a 16-port range ${dir.name}`, () => {
    const receiverMappings: MappingConfig[] = [{ name: "game", ports: 16 }, { name: "dns" }];
    const senderMappings: MappingConfig[] = [{ name: "dns" }, { name: "game", ports: 16 }];

    test("each port's client gets FLOW_OPEN with the range's id + offset; the sender opens the same offset; replies come back", () => {
      const { net, receiver, sender, wire } = connect(receiverMappings, senderMappings, dir);
      expect(sender.session.peerConnected).toBe(true);
      for (let offset = 0; offset < 16; offset++) {
        receiver.clientDatagram("192.0.2.7", 40_000 + offset, utf8(`port ${offset}`), net.now, 0, offset);
      }
      receiver.clientDatagram("192.0.2.7", 53, utf8("dns"), net.now, 1, 0);
      net.pump();
      const opens = framesOfType(wire.sentBy(receiver), FrameType.FlowOpen);
      expect(opens.map((f) => f.mappingId)).toEqual([...Array.from({ length: 16 }, (_, i) => i), 16]);
      const sockets = net.of(sender, "open-flow-socket");
      expect(sockets.map((o) => [o.mappingId, o.portOffset, o.client.port])).toEqual([
        ...Array.from({ length: 16 }, (_, i) => [1, i, 40_000 + i]),
        [0, 0, 53],
      ]);
      const delivered = net.of(sender, "send-to-target");
      const byFlow = new Map(sockets.map((o) => [o.flowId, o.portOffset]));
      for (const d of delivered.slice(0, 16)) expect(text(d.payload)).toBe(`port ${byFlow.get(d.flowId)}`);
      // Replies: each through its flow; the receiver's host learns the port they leave from.
      for (const o of sockets) sender.targetDatagram(o.flowId, utf8(`reply ${o.portOffset}`), net.now);
      net.pump();
      const replies = net.of(receiver, "send-to-client");
      expect(replies.map((r) => [r.flow.mappingId, r.flow.portOffset, r.flow.port, text(r.payload)])).toEqual([
        ...Array.from({ length: 16 }, (_, i) => [0, i, 40_000 + i, `reply ${i}`]),
        [1, 0, 53, "reply 0"],
      ]);
      // Counters: one set per mapping, the range's 16 ports together.
      expect(receiver.mappingStats.map((m) => [m.name, m.flowsOpened])).toEqual([
        ["game", 16],
        ["dns", 1],
      ]);
    });

    test("one client on two ports of the range is two flows; the range's flow limit spans its ports", () => {
      const { net, receiver, wire } = connect(receiverMappings, senderMappings, dir, 3);
      for (const offset of [0, 5, 9, 12]) receiver.clientDatagram("192.0.2.7", 40_000, utf8("x"), net.now++, 0, offset);
      net.pump();
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowOpen).map((f) => f.mappingId)).toEqual([0, 5, 9, 12]);
      // The fourth flow evicted the least recently active one of the range (--max-flows 3 per mapping).
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([
        expect.objectContaining({ reason: FlowCloseReason.Evicted }),
      ]);
      expect([...receiver.flows.values()].map((f) => f.portOffset).sort((a, b) => a - b)).toEqual([5, 9, 12]);
    });

    test("a port past the range is a host bug: RangeError, nothing sent", () => {
      const { net, receiver, wire } = connect(receiverMappings, senderMappings, dir);
      expect(() => receiver.clientDatagram("192.0.2.7", 1, utf8("x"), net.now, 0, 16)).toThrow(RangeError);
      expect(() => receiver.clientDatagram("192.0.2.7", 1, utf8("x"), net.now, 1, 1)).toThrow(RangeError);
      net.pump();
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowOpen)).toEqual([]);
    });

    const mismatches: Array<[string, MappingConfig[], string]> = [
      [
        "a range of another size",
        [{ name: "dns" }, { name: "game", ports: 8 }],
        "mapping game has 16 ports on the receiver, 8 ports on the sender",
      ],
      [
        "a single port for the range",
        [{ name: "dns" }, { name: "game" }],
        "mapping game has 16 ports on the receiver, 1 port on the sender",
      ],
      [
        "a range for the single port",
        [
          { name: "dns", ports: 2 },
          { name: "game", ports: 16 },
        ],
        "mapping dns has 1 port on the receiver, 2 ports on the sender",
      ],
    ];
    for (const [what, senderList, message] of mismatches) {
      test(`${what}: both sides close with MAPPING_MISMATCH at the HELLO, saying which mapping and both sizes`, () => {
        const { net, receiver, sender, wire } = connect(receiverMappings, senderList, dir);
        for (const m of [receiver, sender]) {
          expect(closeCodes(wire.sentBy(m))).toEqual([CloseCode.MappingMismatch]);
          expect(framesOfType(wire.sentBy(m), FrameType.Close)[0].message).toContain(message);
          expect(net.logs(m).some((l) => l.startsWith("warn") && l.includes(message))).toBe(true);
          expect(net.of(m, "accepted")).toEqual([]);
        }
        expect(wire.up).toBe(false);
      });
    }
  });
}

test("by position: unnamed ranges pair in order, sizes compared position by position", () => {
  const ok = connect([{ ports: 4 }, {}], [{ ports: 4 }, {}]);
  expect(ok.sender.session.peerConnected).toBe(true);
  const bad = connect([{ ports: 4 }, {}], [{}, { ports: 4 }]);
  expect(bad.sender.session.peerConnected).toBe(false);
  expect(framesOfType(bad.wire.sentBy(bad.sender), FrameType.Close)[0].message).toContain(
    "mapping #1 has 4 ports on the receiver, 1 port on the sender",
  );
});

test("key mode, both directions: the ranges are in the signed transcript and the handshake completes", () => {
  for (const direction of DIRECTIONS) {
    const { sender, receiver } = pair({
      direction,
      receiver: { mappings: [{ ports: 3 }] },
      sender: { mappings: [{ ports: 3 }] },
    });
    expect(sender.session.peerConnected).toBe(true);
    expect(receiver.session.peerConnected).toBe(true);
  }
});

test("FLOW_OPEN with an id past the receiver's last port is refused with UNKNOWN_MAPPING; ids inside map to (mapping, offset)", () => {
  // A broken receiver (played by hand) that announced a 4-port range and a single port (ids 0 to 4).
  const sender = new SenderMachine({ secret: SECRET, mappings: [{ ports: 4 }, {}] }, testCrypto(2));
  const raw = new RawPeer(sender, 1).dialed();
  rawAcceptorHandshake(raw, { secret: SECRET, mappings: ["", ""], mappingPorts: [4, 1] });
  expect(sender.session.peerConnected).toBe(true);
  const flowOpen = (flowId: number, mappingId: number): Frame => ({
    type: FrameType.FlowOpen,
    flowId,
    mappingId,
    client: { family: 4, address: "192.0.2.1", port: 53 },
  });
  raw.send(flowOpen(1, 3), flowOpen(2, 4), flowOpen(3, 5));
  expect(
    raw.outputs.filter((o) => o.kind === "open-flow-socket").map((o) => [o.flowId, o.mappingId, o.portOffset]),
  ).toEqual([
    [1, 0, 3],
    [2, 1, 0],
  ]);
  expect(framesOfType(raw.received, FrameType.FlowClose)).toEqual([
    expect.objectContaining({ flowId: 3, reason: FlowCloseReason.UnknownMapping }),
  ]);
});

test("a peer from before port ranges refuses the range entry as a long name: the log line says what that means", () => {
  // What such a receiver's decoder says of the entry 0x80 (an empty name, then the count): 128 bytes.
  const refusal = "HELLO mapping name of 128 bytes, at most 32";
  const logsOf = (mappings: MappingConfig[]) => {
    const raw = new RawPeer(new SenderMachine({ secret: SECRET, mappings }, testCrypto(2)), 1).dialed();
    raw.send(PREFACE, { type: FrameType.Close, code: CloseCode.ProtocolError, message: refusal });
    return raw.outputs.flatMap((o) => (o.kind === "log" ? [o.message] : [])).filter((l) => l.includes(refusal));
  };
  expect(logsOf([{ ports: 4 }]).map((l) => l.includes("upgrade the peer"))).toEqual([true]);
  // Without ranges of its own, nothing is added: the peer's words stand alone.
  expect(logsOf([{}]).map((l) => l.includes("upgrade the peer"))).toEqual([false]);
});
