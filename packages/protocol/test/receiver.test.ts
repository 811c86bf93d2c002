/**
 * The receiver's policy toward what the sender and the clients send (receiver.ts): a hostile sender
 * can answer only clients that opened flows, new flows per source address are rate-limited, and
 * replies to an unconfirmed client are capped (anti-amplification, in wire bytes and datagrams).
 */
import { describe, expect, test } from "bun:test";
import {
  CloseCode,
  encodeFrame,
  FrameType,
  IPV4_UDP_OVERHEAD,
  IPV6_UDP_OVERHEAD,
  type Output,
  PREFACE,
  RECEIVER_DEFAULTS,
  type ReceiverConfig,
  ReceiverMachine,
  utf8,
} from "../src/index.ts";
import { looksLikeWireGuard } from "../src/wireguard-hint.ts";
import { framesOfType, pair, RawPeer, RECEIVER_KEY, rawDialerHandshake, testCrypto, testIdentity } from "./harness.ts";

describe("hostile sender", () => {
  const ALLOWED: Array<Output["kind"]> = [
    "transmit",
    "close-connection",
    "log",
    "authorize-peer",
    "accepted",
    "send-to-client",
  ];

  test("forged and unknown flow ids, FLOW_CLOSE games, FLOW_OPEN: replies only to clients that opened flows", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const all: Output[] = [];
    // Before acceptance: DATA right after HELLO is refused (another connection, same receiver).
    const early = new RawPeer(receiver, 9).connect();
    early.send(PREFACE, encodeFrame({ type: FrameType.Data, flowId: 1, payload: utf8("early") }));
    expect(early.closeCode()).toBe(CloseCode.ProtocolError);
    all.push(...early.outputs);
    receiver.session.disconnected(9, 0);

    const raw = new RawPeer(receiver, 1).connect();
    rawDialerHandshake(raw, { identity: testIdentity(0x66) });
    receiver.session.approve(1, true, 0);
    raw.read();
    const clients = new Set(["192.0.2.50|5353", "2001:db8::7|53"]);
    for (const key of clients) {
      const [address, port] = key.split("|");
      receiver.clientDatagram(address, Number(port), utf8("a question"), 0);
    }
    const opened = framesOfType(raw.read(), FrameType.FlowOpen).map((f) => f.flowId);
    expect(opened.length).toBe(2);
    const real = new Set(opened);
    const forged = [0xffffffff, 0x7fffffff, 0x80000000, 3, 4, 1000, ...Array.from({ length: 50 }, (_, i) => i + 1)];
    const spoof = (flowId: number) => raw.send({ type: FrameType.Data, flowId, payload: utf8("spoof") });
    for (const id of forged) if (!real.has(id)) spoof(id);
    for (const id of forged) if (!real.has(id)) raw.send({ type: FrameType.FlowClose, flowId: id, reason: 0 });
    for (const id of forged) if (!real.has(id)) spoof(id);
    // One genuine reply each, then the sender closes the first flow and keeps writing to it.
    for (const id of opened) raw.send({ type: FrameType.Data, flowId: id, payload: utf8("answer") });
    raw.send({ type: FrameType.FlowClose, flowId: opened[0], reason: 0 });
    spoof(opened[0]);
    expect(raw.closed()).toBe(false);
    // Naming an address is a protocol error, and nothing after it is read.
    raw.send(
      { type: FrameType.FlowOpen, flowId: 77, mappingId: 0, client: { family: 4, address: "198.51.100.99", port: 53 } },
      { type: FrameType.Data, flowId: 77, payload: utf8("reflect") },
    );
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    spoof(opened[1]);
    all.push(...raw.outputs);

    for (const o of all) expect(ALLOWED).toContain(o.kind);
    const sent = all.filter((o): o is Extract<Output, { kind: "send-to-client" }> => o.kind === "send-to-client");
    expect(sent.map((o) => [`${o.flow.address}|${o.flow.port}`, new TextDecoder().decode(o.payload)])).toEqual([
      ["192.0.2.50|5353", "answer"],
      ["2001:db8::7|53", "answer"],
    ]);
    for (const o of sent) expect(clients.has(`${o.flow.address}|${o.flow.port}`)).toBe(true);
    expect(receiver.stats.udpOut).toBe(2);
    expect(receiver.stats.drops["unknown-flow"]).toBeGreaterThan(100);
  });
});

describe("new-flow rate limit per source", () => {
  test("a burst of twice the rate, then the rate; drops counted; other sources and known flows unaffected", () => {
    const { net, receiver, sender } = pair({ receiver: { newFlowsPerSecond: 2 } });
    const burst = (address: string, from: number, n: number) => {
      for (let i = 0; i < n; i++) receiver.clientDatagram(address, from + i, utf8("hi"), net.now);
      net.pump();
    };
    burst("203.0.113.1", 1000, 6);
    expect(receiver.flows.size).toBe(4);
    expect(receiver.stats.drops["rate-limited"]).toBe(2);
    expect(net.of(sender, "open-flow-socket").map((o) => o.client.port)).toEqual([1000, 1001, 1002, 1003]);
    // A flow that exists is not a new flow; another source has its own bucket.
    receiver.clientDatagram("203.0.113.1", 1000, utf8("again"), net.now);
    burst("198.51.100.2", 1, 4);
    expect(receiver.flows.size).toBe(8);
    expect(receiver.stats.drops["rate-limited"]).toBe(2);
    // Half a second later: one more token (2/s).
    net.advance(500);
    burst("203.0.113.1", 2000, 3);
    expect(receiver.flows.size).toBe(9);
    expect(receiver.stats.drops["rate-limited"]).toBe(4);
    // After a long quiet spell the bucket holds the burst (4), no more.
    net.advance(30_000);
    burst("203.0.113.1", 3000, 6);
    expect(net.of(sender, "open-flow-socket").filter((o) => o.client.port >= 3000).length).toBe(4);
    expect(receiver.stats.drops["rate-limited"]).toBe(6);
    // A flood is a few log lines, not one per datagram.
    expect(net.logs(receiver).filter((l) => l.includes("new-flow rate limit")).length).toBeLessThanOrEqual(2);
  });

  test("the default (1000/s, burst 2000) and 0 (off)", () => {
    expect(RECEIVER_DEFAULTS.newFlowsPerSecond).toBe(1000);
    const limited = pair();
    for (let i = 0; i < 2050; i++) limited.receiver.clientDatagram("203.0.113.1", 10_000 + i, utf8("x"), 0);
    expect(limited.receiver.flows.size).toBe(2000);
    expect(limited.receiver.stats.drops["rate-limited"]).toBe(50);
    const off = pair({ receiver: { newFlowsPerSecond: 0 } });
    for (let i = 0; i < 2050; i++) off.receiver.clientDatagram("203.0.113.1", 10_000 + i, utf8("x"), 0);
    expect(off.receiver.flows.size).toBe(2050);
    expect(off.receiver.stats.drops["rate-limited"]).toBe(0);
  });
});

describe("anti-amplification (budget in wire bytes and datagrams)", () => {
  function oneFlow(receiver: ReceiverConfig = {}, firstSize = 10, address = "192.0.2.1") {
    const p = pair({ receiver });
    p.receiver.clientDatagram(address, 53, new Uint8Array(firstSize), p.net.now);
    p.net.pump();
    const flowId = p.net.of(p.sender, "open-flow-socket")[0].flowId;
    const reply = (size: number, times = 1) => {
      for (let i = 0; i < times; i++) p.sender.targetDatagram(flowId, new Uint8Array(size), p.net.now);
      p.net.pump();
    };
    const delivered = () => p.net.of(p.receiver, "send-to-client").map((o) => o.payload.length);
    return { ...p, reply, delivered };
  }
  const wire4 = (sizes: number[]) => sizes.reduce((sum, size) => sum + size + IPV4_UDP_OVERHEAD, 0);

  test("a 10-byte first datagram (38 bytes on the wire over IPv4) allows 380 wire bytes of replies; more is dropped and counted", () => {
    expect(RECEIVER_DEFAULTS.amplificationLimit).toBe(10);
    expect([IPV4_UDP_OVERHEAD, IPV6_UDP_OVERHEAD]).toEqual([28, 48]);
    const { receiver, reply, delivered, net } = oneFlow();
    reply(353); // 381 on the wire, alone over the budget: dropped, and it costs nothing
    reply(324); // 352
    reply(0); // 28: the budget is spent exactly
    reply(0);
    reply(1);
    expect(delivered()).toEqual([324, 0]);
    expect(wire4(delivered())).toBe(380);
    expect(receiver.stats.drops.amplification).toBe(3);
    expect(receiver.stats.udpOut).toBe(2);
    expect(receiver.stats.udpOutBytes).toBe(324);
    expect(net.logs(receiver).filter((l) => l.includes("amplification")).length).toBe(1);
  });

  test("empty and one-byte replies are charged their headers, and at most 10 datagrams go to an unconfirmed client", () => {
    // One spoofed 40-byte datagram: 68 bytes on the wire, so 680 bytes and 10 datagrams at most.
    const { receiver, reply, delivered } = oneFlow({}, 40);
    reply(0, 2000);
    reply(1, 400);
    expect(delivered()).toEqual(new Array(10).fill(0));
    expect(wire4(delivered())).toBeLessThanOrEqual(10 * (40 + IPV4_UDP_OVERHEAD));
    expect(receiver.stats.drops.amplification).toBe(2390);
    const ones = oneFlow({}, 40);
    ones.reply(1, 400);
    expect(ones.delivered()).toEqual(new Array(10).fill(1));
  });

  test("maximum-size replies: ten 65,507-byte replies to one 65,507-byte request, not eleven", () => {
    const { receiver, reply, delivered } = oneFlow({}, 65_507);
    reply(65_507, 11);
    expect(delivered().length).toBe(10);
    expect(receiver.stats.drops.amplification).toBe(1);
  });

  test("IPv6 clients are charged 48 bytes of headers per datagram; IPv4-mapped ones 28", () => {
    const v6 = oneFlow({}, 10, "2001:db8::1"); // 58 on the wire: 580 bytes
    v6.reply(532); // 580
    v6.reply(0);
    expect(v6.delivered()).toEqual([532]);
    const mapped = oneFlow({}, 10, "::ffff:192.0.2.1"); // travels as IPv4: 38, so 380 bytes
    mapped.reply(352);
    mapped.reply(0);
    expect(mapped.delivered()).toEqual([352]);
  });

  test("after the client's second datagram, replies are uncapped", () => {
    const { receiver, reply, delivered, net } = oneFlow();
    reply(352);
    reply(1);
    receiver.clientDatagram("192.0.2.1", 53, new Uint8Array(1), net.now);
    reply(5000);
    reply(65_000);
    reply(0, 50);
    expect(delivered().slice(0, 3)).toEqual([352, 5000, 65_000]);
    expect(delivered().length).toBe(53);
    expect(receiver.stats.drops.amplification).toBe(1);
  });

  test("an empty first datagram (28 bytes on the wire) allows 280 wire bytes; amplificationLimit 0 disables the cap", () => {
    const empty = oneFlow({}, 0);
    empty.reply(252); // 280
    empty.reply(0);
    expect(empty.delivered()).toEqual([252]);
    const off = oneFlow({ amplificationLimit: 0 });
    off.reply(1000);
    off.reply(65_000);
    off.reply(0, 20);
    expect(off.delivered().length).toBe(22);
    expect(off.receiver.stats.drops.amplification).toBe(0);
  });

  test("the budget is per flow: a new flow of the same address (after idling out) starts over", () => {
    const { receiver, reply, delivered, net, sender } = oneFlow({ idleTimeoutMs: 1_000 });
    reply(100);
    net.advance(1_000);
    expect(receiver.flows.size).toBe(0);
    receiver.clientDatagram("192.0.2.1", 53, new Uint8Array(20), net.now); // 48 on the wire: 480
    net.pump();
    const second = net.of(sender, "open-flow-socket")[1].flowId;
    sender.targetDatagram(second, new Uint8Array(452), net.now);
    sender.targetDatagram(second, new Uint8Array(0), net.now);
    net.pump();
    expect(delivered()).toEqual([100, 452]);
  });
});

describe("advice for WireGuard flows that idle out", () => {
  const wireguard = (type: number, size: number) => {
    const payload = new Uint8Array(size);
    payload[0] = type;
    return payload;
  };

  test("recognises WireGuard's four message kinds by type and size, nothing else", () => {
    expect(looksLikeWireGuard(wireguard(1, 148))).toBe(true);
    expect(looksLikeWireGuard(wireguard(2, 92))).toBe(true);
    expect(looksLikeWireGuard(wireguard(3, 64))).toBe(true);
    expect(looksLikeWireGuard(wireguard(4, 32))).toBe(true);
    expect(looksLikeWireGuard(wireguard(4, 1440))).toBe(true);
    expect(looksLikeWireGuard(wireguard(4, 1441))).toBe(false);
    expect(looksLikeWireGuard(wireguard(1, 149))).toBe(false);
    expect(looksLikeWireGuard(wireguard(5, 148))).toBe(false);
    const reserved = wireguard(1, 148);
    reserved[2] = 1;
    expect(looksLikeWireGuard(reserved)).toBe(false);
    expect(looksLikeWireGuard(new Uint8Array(12))).toBe(false); // a DNS header
  });

  test("a flow whose first datagram looked like WireGuard idling out says what to set; a DNS flow does not", () => {
    const p = pair({ receiver: { idleTimeoutMs: 60_000 } });
    p.receiver.clientDatagram("192.0.2.1", 51820, wireguard(1, 148), p.net.now);
    p.receiver.clientDatagram("192.0.2.2", 53, new Uint8Array(30), p.net.now);
    p.net.pump();
    p.net.advance(60_000);
    expect(p.receiver.flows.size).toBe(0);
    const advice = p.net.logs(p.receiver).filter((line) => line.includes("WireGuard"));
    expect(advice.length).toBe(1);
    expect(advice[0]).toContain("1 flow(s) that look like WireGuard went idle (--idle-timeout 60 s)");
    expect(advice[0]).toContain("PersistentKeepalive = 25");
  });
});

describe("advice for WireGuard flows the sender idles out", () => {
  test("a FLOW_CLOSE(idle) from the sender counts too, and the interval suggested fits a short --idle-timeout", () => {
    const p = pair({ receiver: { idleTimeoutMs: 10_000 }, sender: { idleTimeoutMs: 3_000 } });
    const handshake = new Uint8Array(148);
    handshake[0] = 1;
    p.receiver.clientDatagram("192.0.2.1", 51820, handshake, p.net.now);
    p.net.pump();
    p.net.advance(3_000); // the sender's timer runs out first and tells the receiver
    expect(p.receiver.flows.size).toBe(0);
    const advice = p.net.logs(p.receiver).filter((line) => line.includes("WireGuard"));
    expect(advice.length).toBe(1);
    expect(advice[0]).toContain("(--idle-timeout 10 s)");
    expect(advice[0]).toContain("PersistentKeepalive = 5");
  });
});
