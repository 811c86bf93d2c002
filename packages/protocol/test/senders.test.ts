/**
 * Several senders on one receiver (PROTOCOL.md §18): a session per sender key, each serving the
 * mappings its HELLO names and its key may serve; one active sender per mapping, the others standby
 * until it has no open connection; MAPPING_STATE tells each sender where it stands. Hostile senders:
 * one naming (DATA, SDATA, FLOW_CLOSE) flows of a mapping another sender serves gets nothing through.
 */
import { describe, expect, test } from "bun:test";
import {
  Capability,
  CloseCode,
  concatBytes,
  encodeFrame,
  PREFACE,
  FlowCloseReason,
  type Frame,
  FrameWriter,
  FrameType,
  type MappingStateEntry,
  MappingStatus,
  ReceiverMachine,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import {
  closeCodes,
  framesOfType,
  Net,
  RawPeer,
  RECEIVER_KEY,
  rawDialerHandshake,
  testCrypto,
  testIdentity,
  type Wire,
} from "./harness.ts";

const named = (...names: string[]) => names.map((name) => ({ name }));
const text = (b: Uint8Array) => new TextDecoder().decode(b);

function receiverOf(net: Net, names: string[]) {
  return net.add(
    new ReceiverMachine({ identity: RECEIVER_KEY, amplificationLimit: 0, mappings: named(...names) }, testCrypto(1)),
  );
}

/** A sender with its own key (seed) serving `names`, connected as conn `conn` and admitted with `allowed`. */
function senderOf(
  net: Net,
  receiver: ReceiverMachine,
  seed: number,
  names: string[],
  conn: number,
  allowed?: string[],
) {
  const sender = net.add(
    new SenderMachine({ identity: testIdentity(seed), mappings: named(...names) }, testCrypto(seed)),
  );
  const wire = net.connect(receiver, conn, sender, 1);
  if (receiver.session.awaitingApproval(conn)) {
    receiver.session.approve(conn, true, net.now, undefined, allowed);
    net.pump();
  }
  return { sender, wire };
}

const statesTo = (wire: Wire, receiver: ReceiverMachine): MappingStateEntry[] =>
  framesOfType(wire.sentBy(receiver), FrameType.MappingState).flatMap((f) => f.entries);
const brief = (entries: MappingStateEntry[]) =>
  entries.map((e) => `${e.name}:${e.status}${e.reason ? `:${e.reason}` : ""}`);

describe("several senders, one receiver", () => {
  test("three senders with different keys serve three mappings at once, 50 clients each, nothing crosses", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp", "wg"]);
    const senders = ["dns", "ntp", "wg"].map((name, i) => senderOf(net, receiver, 0x60 + i, [name], 10 + i));
    for (const [i, { sender, wire }] of senders.entries()) {
      expect(sender.session.peerConnected).toBe(true);
      expect(brief(statesTo(wire, receiver))).toEqual([`${["dns", "ntp", "wg"][i]}:${MappingStatus.Serving}`]);
      expect(sender.servingState).toEqual(["serving"]);
    }
    for (let client = 0; client < 50; client++) {
      for (let m = 0; m < 3; m++) {
        receiver.clientDatagram("192.0.2.7", 10_000 + client, utf8(`${m}|${client}`), net.now, m);
      }
    }
    net.pump();
    for (const [m, { sender }] of senders.entries()) {
      const got = net.of(sender, "send-to-target").map((o) => text(o.payload));
      expect(got.length).toBe(50);
      expect(got.every((payload) => payload.startsWith(`${m}|`))).toBe(true);
      expect(net.of(sender, "open-flow-socket").every((o) => o.mappingId === 0)).toBe(true);
      for (const flow of sender.flows.values()) sender.targetDatagram(flow.id, utf8(`reply ${m}`), net.now);
    }
    net.pump();
    const replies = net.of(receiver, "send-to-client");
    expect(replies.length).toBe(150);
    for (const { flow, payload } of replies) expect(text(payload)).toBe(`reply ${flow.mappingId}`);
    expect(receiver.stats.drops["unknown-flow"]).toBe(0);
    // Each sender's traffic, as status lines and metrics show it.
    expect(receiver.session.peers().map((s) => s.traffic)).toEqual(
      [0, 1, 2].map(() => ({ datagramsSent: 50, datagramsReceived: 50 })),
    );
  });

  test("a mapping the key may not serve is refused with a reason the sender logs; its clients reach nobody", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    const { sender, wire } = senderOf(net, receiver, 0x61, ["dns", "ntp"], 10, ["dns"]);
    expect(brief(statesTo(wire, receiver))).toEqual([
      `dns:${MappingStatus.Serving}`,
      `ntp:${MappingStatus.Refused}:this key may not serve mapping ntp`,
    ]);
    expect(sender.servingState).toEqual(["serving", "refused"]);
    expect(net.logs(sender)).toContain(
      'warn: mapping ntp: refused by the receiver: "this key may not serve mapping ntp"',
    );
    receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now, 1);
    net.pump();
    expect(net.of(sender, "open-flow-socket")).toEqual([]);
    expect(receiver.mappingStats[1].drops["no-sender"]).toBe(1);
  });

  test("a key that may serve none of the mappings it asks for is refused at once (CLOSE 11)", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    const { sender, wire } = senderOf(net, receiver, 0x62, ["ntp"], 10, ["dns"]);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.KeyRejected]);
    expect(framesOfType(wire.sentBy(receiver), FrameType.Close)[0].message).toContain("may not serve mapping(s) ntp");
    expect(sender.session.peerConnected).toBe(false);
  });

  test("the authorize-peer request names the mappings the sender asks for (what an operator approves)", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp", "wg"]);
    const sender = net.add(
      new SenderMachine({ identity: testIdentity(0x63), mappings: named("wg", "dns") }, testCrypto(3)),
    );
    net.connect(receiver, 10, sender, 1);
    expect(net.of(receiver, "authorize-peer").map((o) => o.mappings)).toEqual([["dns", "wg"]]);
  });

  test("the same key twice while its session is live: the second is busy, not a second session", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns"]);
    senderOf(net, receiver, 0x64, ["dns"], 10);
    const { wire } = senderOf(net, receiver, 0x64, ["dns"], 11);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.Busy]);
    expect(framesOfType(wire.sentBy(receiver), FrameType.Close)[0].message).toContain("only one session per key");
    expect(receiver.session.peers().length).toBe(1);
  });
});

describe("standby", () => {
  function standbyPair() {
    const net = new Net();
    const receiver = receiverOf(net, ["dns"]);
    const a = senderOf(net, receiver, 0x70, ["dns"], 10);
    const b = senderOf(net, receiver, 0x71, ["dns"], 11);
    return { net, receiver, a, b };
  }

  test("the second sender for a mapping waits as standby: told so, connected, keepalive running, no flows", () => {
    const { net, receiver, a, b } = standbyPair();
    expect(brief(statesTo(b.wire, receiver))).toEqual([`dns:${MappingStatus.Standby}`]);
    expect(b.sender.servingState).toEqual(["standby"]);
    expect(b.sender.session.peerConnected).toBe(true);
    for (let i = 0; i < 5; i++) receiver.clientDatagram("192.0.2.1", 100 + i, utf8("q"), net.now, 0);
    net.pump();
    expect(net.of(a.sender, "send-to-target").length).toBe(5);
    expect(net.of(b.sender, "open-flow-socket")).toEqual([]);
    net.advance(60_000); // pings and pongs: b stays
    expect(b.sender.session.peerConnected).toBe(true);
    expect(framesOfType(b.wire.sentBy(b.sender), FrameType.Pong).length).toBeGreaterThan(0);
  });

  test("the active sender goes silent: after the keepalive timeout the standby takes over, flows and all", () => {
    const { net, receiver, a, b } = standbyPair();
    for (let i = 0; i < 5; i++) receiver.clientDatagram("192.0.2.1", 100 + i, utf8(`q${i}`), net.now, 0);
    net.pump();
    const ids = [...receiver.flows.values()].map((f) => f.id);
    a.wire.drop.add(a.sender); // its host vanished: nothing more from it
    net.advance(45_000); // three keepalive intervals
    expect(statesTo(b.wire, receiver).at(-1)).toMatchObject({ name: "dns", status: MappingStatus.Serving });
    // Announced on b's connection before any datagram: b opens its own sockets (new source ports).
    const opened = framesOfType(b.wire.sentBy(receiver), FrameType.FlowOpen).map((f) => f.flowId);
    expect(opened.sort()).toEqual(ids.sort());
    expect(net.of(b.sender, "open-flow-socket").length).toBe(5);
    expect(
      net
        .logs(receiver)
        .some((l) => l.includes("mapping dns: sender peer-of-11 takes over from peer-of-10 (5 flows moved)")),
    ).toBe(true);
    receiver.clientDatagram("192.0.2.1", 100, utf8("after"), net.now, 0);
    net.pump();
    expect(net.of(b.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["after"]);
    const flow = [...b.sender.flows.values()][0];
    b.sender.targetDatagram(flow.id, utf8("answer"), net.now);
    net.pump();
    expect(net.of(receiver, "send-to-client").map((o) => text(o.payload))).toEqual(["answer"]);
  });

  test("a lost connection hands over at once (no 30 s grace wait); the old sender resumes as standby, no flapping", () => {
    const { net, receiver, a, b } = standbyPair();
    receiver.clientDatagram("192.0.2.1", 100, utf8("q"), net.now, 0);
    net.pump();
    net.cut(a.wire);
    expect(b.sender.servingState).toEqual(["serving"]);
    expect(net.of(b.sender, "open-flow-socket").length).toBe(1);
    // a comes back within the grace period and resumes its session: it is standby now.
    expect(a.sender.flows.size).toBe(1);
    const again = net.connect(receiver, 12, a.sender, 2);
    expect(framesOfType(again.sentBy(receiver), FrameType.Accept)[0]).toMatchObject({ resumed: true });
    expect(brief(statesTo(again, receiver))).toEqual([`dns:${MappingStatus.Standby}`]);
    expect(a.sender.flows.size).toBe(0); // b has them: a closed its sockets
    expect(net.of(a.sender, "close-flow-socket").length).toBe(1);
    receiver.clientDatagram("192.0.2.1", 100, utf8("still b"), net.now, 0);
    net.pump();
    expect(net.of(b.sender, "send-to-target").map((o) => text(o.payload))).toContain("still b");
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).not.toContain("still b");
  });

  test("a goodbye from the active sender ends its session; the standby serves, new clients reach it", () => {
    const { net, receiver, a, b } = standbyPair();
    a.sender.shutdown();
    net.pump();
    expect(b.sender.servingState).toEqual(["serving"]);
    expect(receiver.session.peers().length).toBe(1);
    receiver.clientDatagram("192.0.2.9", 9, utf8("new"), net.now, 0);
    net.pump();
    expect(net.of(b.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["new"]);
  });
});

describe("hostile senders", () => {
  function twoMappings() {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    const a = senderOf(net, receiver, 0x80, ["dns"], 10);
    const b = senderOf(net, receiver, 0x81, ["ntp"], 11);
    receiver.clientDatagram("192.0.2.1", 53, utf8("dns query"), net.now, 0);
    net.pump();
    const dnsFlow = [...receiver.flows.values()][0];
    return { net, receiver, a, b, dnsFlow };
  }
  const inject = (net: Net, receiver: ReceiverMachine, conn: number, ...frames: Frame[]) => {
    // Written by hand on b's connection: b is hostile, its machine would never send these.
    const bytes = frames.map((f) => {
      const w = new FrameWriter();
      w.frame(f);
      return w.take() as Uint8Array;
    });
    for (const chunk of bytes) receiver.session.receive(conn, chunk, net.now);
    net.pump();
  };

  test("DATA and SDATA naming another sender's flow are never delivered: counted, answered as unknown", () => {
    const { net, receiver, b, dnsFlow } = twoMappings();
    inject(
      net,
      receiver,
      11,
      { type: FrameType.Data, flowId: dnsFlow.id, payload: utf8("forged") },
      { type: FrameType.Sdata, flowId: dnsFlow.id, seq: 0, payload: utf8("forged too") },
    );
    expect(net.of(receiver, "send-to-client")).toEqual([]);
    expect(receiver.stats.drops["unknown-flow"]).toBe(2);
    const answers = framesOfType(b.wire.sentBy(receiver), FrameType.FlowClose);
    expect(answers.map((f) => [f.flowId, f.reason])).toEqual([
      [dnsFlow.id, FlowCloseReason.UnknownFlow],
      [dnsFlow.id, FlowCloseReason.UnknownFlow],
    ]);
    expect(receiver.flows.get(dnsFlow.id)).toBe(dnsFlow);
  });

  test("FLOW_CLOSE naming another sender's flow is ignored: the flow stays, its sender is not told", () => {
    const { net, receiver, a, dnsFlow } = twoMappings();
    inject(net, receiver, 11, { type: FrameType.FlowClose, flowId: dnsFlow.id, reason: 0 });
    expect(receiver.flows.get(dnsFlow.id)).toBe(dnsFlow);
    expect(framesOfType(a.wire.sentBy(receiver), FrameType.FlowClose)).toEqual([]);
    receiver.clientDatagram("192.0.2.1", 53, utf8("second"), net.now, 0);
    net.pump();
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["dns query", "second"]);
  });

  test("a sender's FLOW_OPEN or MAPPING_STATE is a protocol error (CLOSE 1); the other sender is unaffected", () => {
    const { net, receiver, a, b } = twoMappings();
    inject(net, receiver, 11, {
      type: FrameType.MappingState,
      entries: [{ mappingId: 0, name: "dns", status: MappingStatus.Serving, reason: "" }],
    });
    expect(closeCodes(b.wire.sentBy(receiver))).toEqual([CloseCode.ProtocolError]);
    expect(a.sender.session.peerConnected).toBe(true);
    receiver.clientDatagram("192.0.2.1", 53, utf8("still"), net.now, 0);
    net.pump();
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toContain("still");
  });

  test("a sender asking for another sender's mapping only gets standby for it, never its datagrams", () => {
    const { net, receiver, a } = twoMappings();
    const c = senderOf(net, receiver, 0x82, ["dns"], 12);
    expect(c.sender.servingState).toEqual(["standby"]);
    receiver.clientDatagram("192.0.2.1", 53, utf8("private"), net.now, 0);
    net.pump();
    expect(net.of(c.sender, "send-to-target")).toEqual([]);
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toContain("private");
  });
});

describe("peers without the Senders capability keep §7 (one sender at a time)", () => {
  const receiver = () =>
    new ReceiverMachine(
      { identity: RECEIVER_KEY, amplificationLimit: 0, mappings: named("dns", "ntp") },
      testCrypto(1),
    );
  /** A raw sender: `senders` sets the Senders bit (with Resume), else Resume only (an earlier version). */
  const rawSender = (machine: ReceiverMachine, conn: number, seed: number, senders: boolean, allowed?: string[]) => {
    const raw = new RawPeer(machine, conn).connect();
    rawDialerHandshake(raw, {
      identity: testIdentity(seed),
      capabilities: senders ? Capability.Resume | Capability.Senders : Capability.Resume,
      mappings: ["dns", "ntp"],
    });
    machine.session.approve(conn, true, 0, undefined, allowed);
    raw.read();
    return raw;
  };
  const states = (raw: RawPeer) => brief(framesOfType(raw.received, FrameType.MappingState).flatMap((f) => f.entries));

  test("one without it while a sender with it is connected: busy, as before", () => {
    const machine = receiver();
    const a = rawSender(machine, 1, 0x90, true);
    expect(states(a)).toEqual([`dns:${MappingStatus.Serving}`, `ntp:${MappingStatus.Serving}`]);
    const old = rawSender(machine, 2, 0x91, false);
    expect(old.closeCode()).toBe(CloseCode.Busy);
    expect(old.closeMessage()).toContain("another sender is connected; only one at a time");
  });

  test("one without it is served alone; a sender with it that arrives meanwhile waits as standby", () => {
    const machine = receiver();
    const old = rawSender(machine, 1, 0x92, false);
    expect(framesOfType(old.received, FrameType.Accept).length).toBe(1);
    expect(framesOfType(old.received, FrameType.MappingState)).toEqual([]); // it would not understand
    const b = rawSender(machine, 2, 0x93, true);
    expect(states(b)).toEqual([`dns:${MappingStatus.Standby}`, `ntp:${MappingStatus.Standby}`]);
    machine.clientDatagram("192.0.2.1", 53, utf8("q"), 0, 0);
    expect(framesOfType(old.read(), FrameType.FlowOpen).length).toBe(1);
    expect(framesOfType(b.read(), FrameType.FlowOpen)).toEqual([]);
  });

  test("one without it must serve every mapping: a key allowed only some is refused (CLOSE 11)", () => {
    const old = rawSender(receiver(), 1, 0x94, false, ["dns"]);
    expect(old.closeCode()).toBe(CloseCode.KeyRejected);
    expect(old.closeMessage()).toContain("may not serve mapping(s) ntp");
  });

  test("a sender with it that names a mapping twice, or none the receiver has, is a mapping mismatch", () => {
    for (const mappings of [["dns", "dns"], ["syslog"]]) {
      const raw = new RawPeer(receiver(), 1).connect();
      rawDialerHandshake(raw, { capabilities: Capability.Resume | Capability.Senders, mappings });
      expect(raw.closeCode()).toBe(CloseCode.MappingMismatch);
    }
  });
});

describe("a mapping removed while the receiver runs", () => {
  test("its flows close, every sender that asked is told, its clients reach nobody; the others go on", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    const a = senderOf(net, receiver, 0xa0, ["dns"], 10);
    const b = senderOf(net, receiver, 0xa1, ["ntp"], 11);
    const c = senderOf(net, receiver, 0xa2, ["dns", "ntp"], 12);
    for (let i = 0; i < 3; i++) receiver.clientDatagram("192.0.2.1", 100 + i, utf8("t"), net.now, 1);
    receiver.clientDatagram("192.0.2.1", 53, utf8("d"), net.now, 0);
    net.pump();
    expect(b.sender.flows.size).toBe(3);
    receiver.removeMapping(1, net.now, "ntp moved elsewhere");
    net.pump();
    expect(framesOfType(b.wire.sentBy(receiver), FrameType.FlowClose).length).toBe(3);
    expect(b.sender.flows.size).toBe(0);
    expect(statesTo(b.wire, receiver).at(-1)).toEqual({
      mappingId: 1,
      name: "ntp",
      status: MappingStatus.Removed,
      reason: "ntp moved elsewhere",
    });
    expect(b.sender.servingState).toEqual(["removed"]);
    expect(c.sender.servingState).toEqual(["standby", "removed"]);
    expect(net.logs(b.sender)).toContain('warn: mapping ntp: removed by the receiver: "ntp moved elsewhere"');
    receiver.clientDatagram("192.0.2.1", 100, utf8("t"), net.now, 1);
    net.pump();
    expect(framesOfType(b.wire.sentBy(receiver), FrameType.FlowOpen).length).toBe(3); // none since
    expect(receiver.mappingStats[1].drops["no-sender"]).toBe(1);
    receiver.clientDatagram("192.0.2.1", 53, utf8("d2"), net.now, 0);
    net.pump();
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["d", "d2"]);
  });

  test("a sender asking for it later is told it is removed; one asking for nothing else is refused", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    receiver.removeMapping(1, net.now);
    const both = senderOf(net, receiver, 0xa3, ["dns", "ntp"], 10);
    expect(brief(statesTo(both.wire, receiver))).toEqual([
      `dns:${MappingStatus.Serving}`,
      `ntp:${MappingStatus.Removed}:removed from the receiver's configuration`,
    ]);
    const only = senderOf(net, receiver, 0xa4, ["ntp"], 11);
    expect(closeCodes(only.wire.sentBy(receiver))).toEqual([CloseCode.KeyRejected]);
    expect(() => receiver.removeMapping(2, net.now)).toThrow(RangeError);
  });
});

describe("a mapping added while the receiver runs", () => {
  test("senders whose HELLO named it serve it (or are refused it) as their keys allow, paired by name", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns"]);
    const a = senderOf(net, receiver, 0xb0, ["ntp", "dns"], 10);
    const c = senderOf(net, receiver, 0xb1, ["dns", "ntp"], 11, ["dns"]);
    expect(net.logs(a.sender)).toContain("warn: the receiver has no mapping ntp: not served through it");
    const id = receiver.addMapping({ name: "ntp" }, net.now);
    net.pump();
    expect(id).toBe(1);
    expect(statesTo(a.wire, receiver).at(-1)).toEqual({
      mappingId: 1,
      name: "ntp",
      status: MappingStatus.Serving,
      reason: "",
    });
    expect(a.sender.servingState).toEqual(["serving", "serving"]); // its own order: ntp, dns
    expect(c.sender.servingState).toEqual(["standby", "refused"]);
    receiver.clientDatagram("192.0.2.1", 123, utf8("time?"), net.now, id);
    net.pump();
    expect(net.of(a.sender, "open-flow-socket").map((o) => o.mappingId)).toEqual([0]); // a's index of ntp
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["time?"]);
    expect(receiver.mappingStats.map((m) => m.name)).toEqual(["dns", "ntp"]);
    // Connections from now on list it in HELLO: a new sender pairs with it at once.
    const late = senderOf(net, receiver, 0xb2, ["ntp"], 12);
    expect(late.sender.servingState).toEqual(["standby"]);
  });

  test("a removed mapping added back keeps its id; its sender serves it again", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns", "ntp"]);
    const a = senderOf(net, receiver, 0xb3, ["ntp"], 10);
    receiver.removeMapping(1, net.now);
    net.pump();
    expect(a.sender.servingState).toEqual(["removed"]);
    expect(receiver.addMapping({ name: "ntp", maxFlows: 2 }, net.now)).toBe(1);
    net.pump();
    expect(a.sender.servingState).toEqual(["serving"]);
    receiver.clientDatagram("192.0.2.1", 123, utf8("back"), net.now, 1);
    net.pump();
    expect(net.of(a.sender, "send-to-target").map((o) => text(o.payload))).toEqual(["back"]);
  });

  test("one without a name, a name in use, or a 33rd mapping is a host bug (RangeError)", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns"]);
    expect(() => receiver.addMapping({}, net.now)).toThrow(/needs a name/);
    expect(() => receiver.addMapping({ name: "dns" }, net.now)).toThrow(/used already/);
    for (let i = 1; i < 32; i++) receiver.addMapping({ name: `m${i}` }, net.now);
    expect(() => receiver.addMapping({ name: "m32" }, net.now)).toThrow(RangeError);
    expect(receiver.mappingStats.length).toBe(32);
  });
});

describe("lanes, per sender", () => {
  test("each sender's session holds its own lanes; another admitted sender cannot JOIN it", () => {
    const net = new Net();
    const receiver = net.add(
      new ReceiverMachine(
        { identity: RECEIVER_KEY, amplificationLimit: 0, maxLanes: 2, mappings: named("dns", "ntp") },
        testCrypto(1),
      ),
    );
    const laned = (seed: number, name: string, first: number) => {
      const sender = net.add(
        new SenderMachine({ identity: testIdentity(seed), lanes: 2, mappings: named(name) }, testCrypto(seed)),
      );
      const wire = net.connect(receiver, first, sender, 1);
      receiver.session.approve(first, true, net.now);
      net.pump();
      const lane = net.connect(receiver, first + 1, sender, 2); // JOIN, no approval needed
      return { sender, wire, lane };
    };
    const a = laned(0xc0, "dns", 10);
    const b = laned(0xc1, "ntp", 20);
    expect(receiver.session.peers().map((peer) => peer.openLanes)).toEqual([2, 2]);
    for (let i = 0; i < 20; i++) receiver.clientDatagram("192.0.2.1", 1000 + i, utf8(`d${i}`), net.now, 0);
    net.pump();
    const onB = [
      ...framesOfType(b.wire.sentBy(receiver), FrameType.Data),
      ...framesOfType(b.lane.sentBy(receiver), FrameType.Data),
    ];
    expect(onB).toEqual([]);
    const onA = [
      ...framesOfType(a.wire.sentBy(receiver), FrameType.Data),
      ...framesOfType(a.lane.sentBy(receiver), FrameType.Data),
    ];
    expect(onA.length).toBe(20);
    expect(framesOfType(a.lane.sentBy(receiver), FrameType.Data).length).toBeGreaterThan(0); // both lanes used

    // b's key (admitted, for ntp) signs a JOIN naming a's session, with a's token and binding.
    const accept = framesOfType(a.wire.sentBy(receiver), FrameType.Accept)[0];
    const raw = new RawPeer(receiver, 30).accepted();
    const intruderKey = testIdentity(0xc1);
    const hello: Frame = {
      type: FrameType.Hello,
      role: 2,
      auth: 1,
      capabilities: Capability.Resume | Capability.Lanes | Capability.Sequenced | Capability.Senders,
      nonce: new Uint8Array(32).fill(0x44),
      publicKey: intruderKey.publicKey,
      mappings: ["dns"],
      agent: "intruder",
    };
    raw.send(PREFACE, hello);
    const transcript = concatBytes(
      utf8("mcudpt/1 lane join"),
      encodeFrame(raw.peerHello()),
      encodeFrame(hello),
      accept.token,
      accept.proof,
    );
    raw.send({ type: FrameType.Join, proof: intruderKey.sign(transcript), token: accept.token });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(receiver.session.peers().map((peer) => peer.openLanes)).toEqual([2, 2]);
    // The control: the same JOIN signed by a's own key is found and verified, and only refused for
    // being a third lane (maxLanes 2).
    const control = new RawPeer(receiver, 31).accepted();
    const ownKey = testIdentity(0xc0);
    const own: Frame = { ...hello, publicKey: ownKey.publicKey };
    control.send(PREFACE, own);
    const signed = concatBytes(
      utf8("mcudpt/1 lane join"),
      encodeFrame(control.peerHello()),
      encodeFrame(own),
      accept.token,
      accept.proof,
    );
    control.send({ type: FrameType.Join, proof: ownKey.sign(signed), token: accept.token });
    expect(control.closeCode()).toBe(CloseCode.Busy);
    expect(control.closeMessage()).toContain("the session has 2 lanes");
  });
});

describe("several senders and port ranges", () => {
  test("a sender serving only a range mapping gets its ports' offsets; a standby taking over keeps them", () => {
    const net = new Net();
    const receiver = net.add(
      new ReceiverMachine(
        { identity: RECEIVER_KEY, amplificationLimit: 0, mappings: [{ name: "dns" }, { name: "game", ports: 4 }] },
        testCrypto(1),
      ),
    );
    const withGame = (seed: number, conn: number) => {
      const sender = net.add(
        new SenderMachine({ identity: testIdentity(seed), mappings: [{ name: "game", ports: 4 }] }, testCrypto(seed)),
      );
      const wire = net.connect(receiver, conn, sender, 1);
      receiver.session.approve(conn, true, net.now);
      net.pump();
      return { sender, wire };
    };
    const b = withGame(0xd0, 10);
    const c = withGame(0xd1, 11);
    expect([b.sender.servingState, c.sender.servingState]).toEqual([["serving"], ["standby"]]);
    receiver.clientDatagram("192.0.2.1", 5000, utf8("p2"), net.now, 1, 2);
    net.pump();
    // Wire id 3: dns is id 0, game's ports are ids 1 to 4.
    expect(framesOfType(b.wire.sentBy(receiver), FrameType.FlowOpen).map((f) => f.mappingId)).toEqual([3]);
    expect(net.of(b.sender, "open-flow-socket").map((o) => [o.mappingId, o.portOffset])).toEqual([[0, 2]]);
    net.cut(b.wire);
    expect(framesOfType(c.wire.sentBy(receiver), FrameType.FlowOpen).map((f) => f.mappingId)).toEqual([3]);
    expect(net.of(c.sender, "open-flow-socket").map((o) => [o.mappingId, o.portOffset])).toEqual([[0, 2]]);
  });

  test("a range the sender has with another size is still a mismatch when it pairs", () => {
    const net = new Net();
    const receiver = net.add(
      new ReceiverMachine(
        { identity: RECEIVER_KEY, mappings: [{ name: "dns" }, { name: "game", ports: 4 }] },
        testCrypto(1),
      ),
    );
    const sender = net.add(
      new SenderMachine({ identity: testIdentity(0xd2), mappings: [{ name: "game", ports: 8 }] }, testCrypto(2)),
    );
    const wire = net.connect(receiver, 10, sender, 1);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.MappingMismatch]);
  });

  test("a port range cannot be added while running", () => {
    const net = new Net();
    const receiver = receiverOf(net, ["dns"]);
    expect(() => receiver.addMapping({ name: "game", ports: 4 }, net.now)).toThrow(/port range/);
  });
});
