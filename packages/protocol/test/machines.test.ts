/**
 * A ReceiverMachine and a SenderMachine driven against each other in memory (harness.ts), plus hostile
 * counterparts played frame by frame. Time is a plain number moved by hand.
 */
import { describe, expect, test } from "bun:test";
import {
  AuthMode,
  type ClientFlow,
  CloseCode,
  FlowCloseReason,
  type Frame,
  FrameType,
  PREFACE,
  type ReceiverConfig,
  ReceiverMachine,
  Role,
  type SenderConfig,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import {
  closeCodes,
  framesOfType,
  Net,
  RawPeer,
  RECEIVER_KEY,
  rawSenderHandshake,
  SENDER_KEY,
  testCrypto,
  testIdentity,
  type Wire,
} from "./harness.ts";

const SECRET = "s3cret";
const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** Secret mode by default; `secret: null` is key mode (each side has its identity either way). */
function setup(
  opts: { secret?: string | null; receiver?: ReceiverConfig; sender?: SenderConfig; connect?: boolean } = {},
) {
  const secret = opts.secret === null ? undefined : (opts.secret ?? SECRET);
  const net = new Net();
  const receiver = net.add(new ReceiverMachine({ secret, identity: RECEIVER_KEY, ...opts.receiver }, testCrypto(1)));
  const sender = net.add(new SenderMachine({ secret, identity: SENDER_KEY, ...opts.sender }, testCrypto(2)));
  const wire = opts.connect === false ? (undefined as unknown as Wire) : net.connect(receiver, 1, sender, 1);
  return { net, receiver, sender, wire };
}

describe("handshake", () => {
  test("shared secret: both sides accepted, nothing else", () => {
    const { net, receiver, sender, wire } = setup();
    expect(sender.connected).toBe(true);
    expect(receiver.senderConnected).toBe(true);
    expect(net.of(receiver, "accepted")).toEqual([{ kind: "accepted", conn: 1, peer: "peer-of-1", resumed: false }]);
    expect(net.of(sender, "accepted").length).toBe(1);
    expect(wire.sentBy(sender).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Auth]);
    expect(wire.sentBy(receiver).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Accept]);
    expect(receiver.stats.accepted).toBe(1);
    expect(sender.stats.handshakeFailures).toBe(0);
    expect(net.of(receiver, "authorize-sender")).toEqual([]);
  });

  test("wrong secret: the receiver logs and refuses, the sender gets CLOSE(auth failed)", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ secret: "hunter2-right" }, testCrypto(1)));
    const sender = net.add(new SenderMachine({ secret: "hunter2-wrong" }, testCrypto(2)));
    const wire = net.connect(receiver, 1, sender, 1);
    expect(receiver.senderConnected).toBe(false);
    expect(sender.connected).toBe(false);
    expect(net.logs(receiver).some((l) => l.startsWith("warn") && l.includes("wrong shared secret"))).toBe(true);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.AuthFailed]);
    expect(net.logs(sender).some((l) => l.includes("authentication failed"))).toBe(true);
    expect(net.of(sender, "close-connection").length).toBe(1);
    expect(net.of(sender, "accepted")).toEqual([]);
    expect(receiver.stats.handshakeFailures).toBe(1);
    expect(sender.stats.handshakeFailures).toBe(1);
    // The secret itself never crossed the wire.
    const all = [...wire.sentBy(sender), ...wire.sentBy(receiver)].map((f) => JSON.stringify(f));
    expect(all.some((s) => s.includes("hunter2"))).toBe(false);
  });

  test("an impostor receiver that cannot prove the secret is refused by the sender", () => {
    const sender = new SenderMachine({ secret: SECRET }, testCrypto(2));
    const raw = new RawPeer(sender, 1).connect();
    raw.send(PREFACE, {
      type: FrameType.Hello,
      role: Role.Receiver,
      auth: AuthMode.Secret,
      capabilities: 1,
      nonce: new Uint8Array(32),
      publicKey: new Uint8Array(0),
      agent: "evil",
    });
    expect(raw.received.map((f) => f.type)).toContain(FrameType.Auth);
    raw.send({ type: FrameType.Accept, proof: new Uint8Array(32).fill(9), token: new Uint8Array(16), resumed: false });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(sender.connected).toBe(false);
  });

  test("auth-mode mismatch: both sides close with AUTH_MISMATCH and say how to fix it", () => {
    const { net, receiver, sender, wire } = setup({ secret: null, receiver: { secret: SECRET } });
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.AuthMismatch]);
    expect(closeCodes(wire.sentBy(sender))).toEqual([CloseCode.AuthMismatch]);
    expect(net.logs(receiver).some((l) => l.includes("same --secret"))).toBe(true);
    expect(net.of(receiver, "authorize-sender")).toEqual([]);
    expect(receiver.stats.handshakeFailures).toBe(1);
  });

  test("role conflict: two senders (or two receivers) close with ROLE_CONFLICT", () => {
    const net = new Net();
    const s1 = net.add(new SenderMachine({ secret: SECRET }, testCrypto(1)));
    const s2 = net.add(new SenderMachine({ secret: SECRET }, testCrypto(2)));
    const wire = net.connect(s1, 1, s2, 1);
    expect(closeCodes(wire.sentBy(s1))).toEqual([CloseCode.RoleConflict]);
    expect(closeCodes(wire.sentBy(s2))).toEqual([CloseCode.RoleConflict]);
    expect(net.logs(s1).some((l) => l.includes("both sides are senders"))).toBe(true);
    const r1 = net.add(new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(3)));
    const r2 = net.add(new ReceiverMachine({ identity: testIdentity(0x53) }, testCrypto(4)));
    const w2 = net.connect(r1, 5, r2, 5);
    expect(closeCodes(w2.sentBy(r1))).toEqual([CloseCode.RoleConflict]);
  });

  test("key mode: authorize-sender with the sender's key, then yes (no deadline while deciding)", () => {
    const { net, receiver, sender } = setup({ secret: null });
    const asks = net.of(receiver, "authorize-sender");
    expect(asks).toEqual([{ kind: "authorize-sender", conn: 1, peer: "peer-of-1", publicKey: SENDER_KEY.publicKey }]);
    expect(sender.connected).toBe(false);
    net.advance(3_600_000); // a human may take their time: no handshake deadline while asking
    expect(net.of(receiver, "close-connection")).toEqual([]);
    receiver.approve(1, true, net.now);
    net.pump();
    expect(sender.connected).toBe(true);
    expect(receiver.senderConnected).toBe(true);
    receiver.approve(1, true, net.now); // a second answer is ignored
    net.pump();
    expect(receiver.stats.accepted).toBe(1);
  });

  test("key mode: the operator says no (no reason): CLOSE(refused)", () => {
    const { net, receiver, sender, wire } = setup({ secret: null });
    receiver.approve(1, false, net.now);
    net.pump();
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.Refused]);
    expect(sender.connected).toBe(false);
    expect(net.logs(sender).some((l) => l.includes("refused by operator"))).toBe(true);
  });

  test("handshake deadline: a silent or half-speaking peer is dropped, naming what it sent", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY, handshakeTimeoutMs: 10_000 }, testCrypto(1));
    const silent = new RawPeer(receiver, 1).connect();
    const partial = new RawPeer(receiver, 2).connect();
    partial.send(PREFACE.subarray(0, 3));
    expect(receiver.nextTimeout()).toBe(10_000);
    receiver.tick(9_999);
    silent.read();
    expect(silent.closed()).toBe(false);
    receiver.tick(10_000);
    silent.read();
    partial.read();
    expect(silent.closeCode()).toBe(CloseCode.HandshakeTimeout);
    expect(partial.closeCode()).toBe(CloseCode.HandshakeTimeout);
    const logs = silent.outputs.concat(partial.outputs).flatMap((o) => (o.kind === "log" ? [o.message] : []));
    expect(logs.some((l) => l.includes("(peer sent nothing)"))).toBe(true);
    expect(logs.some((l) => l.includes("(peer sent part of a preface or frame)"))).toBe(true);
  });

  test("the sender also gives up on a receiver that never finishes the handshake", () => {
    const sender = new SenderMachine({ secret: SECRET, handshakeTimeoutMs: 5_000 }, testCrypto(2));
    const raw = new RawPeer(sender, 1).connect();
    sender.tick(5_000);
    raw.read();
    expect(raw.closeCode()).toBe(CloseCode.HandshakeTimeout);
  });

  test("too many unauthenticated connections are refused as busy", () => {
    const receiver = new ReceiverMachine({ secret: SECRET, maxPendingConnections: 2 }, testCrypto(1));
    const peers = [1, 2, 3].map((c) => new RawPeer(receiver, c).connect());
    expect(peers.map((p) => p.closeCode())).toEqual([undefined, undefined, CloseCode.Busy]);
  });
});

describe("nothing before acceptance", () => {
  test("client datagrams before a sender is accepted are dropped as no-sender, nothing is sent", () => {
    const { net, receiver, wire } = setup({ secret: null });
    receiver.clientDatagram("192.0.2.1", 5000, utf8("early"), net.now);
    net.pump();
    expect(receiver.stats.drops["no-sender"]).toBe(1);
    expect(receiver.flowCount).toBe(0);
    expect(wire.sentBy(receiver).map((f) => f.type)).toEqual([FrameType.Hello]);
    receiver.approve(1, true, net.now);
    net.pump();
    receiver.clientDatagram("192.0.2.1", 5000, utf8("now"), net.now);
    net.pump();
    expect(receiver.flowCount).toBe(1);
  });

  const senderHello: Frame = {
    type: FrameType.Hello,
    role: Role.Sender,
    auth: AuthMode.Key,
    capabilities: 0,
    nonce: new Uint8Array(32),
    publicKey: SENDER_KEY.publicKey,
    agent: "evil",
  };
  const keyReceiver = () => new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));

  test("DATA from a peer before acceptance closes the connection (right after HELLO)", () => {
    const receiver = keyReceiver();
    const raw = new RawPeer(receiver, 1).connect();
    receiver.clientDatagram("192.0.2.1", 5000, utf8("x"), 0);
    raw.send(PREFACE, senderHello, { type: FrameType.Data, flowId: 1, payload: utf8("reflect me") });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.outputs.some((o) => o.kind === "send-to-client" || o.kind === "authorize-sender")).toBe(false);
  });

  test("DATA while waiting for the operator closes the connection; a late yes changes nothing", () => {
    const receiver = keyReceiver();
    const raw = new RawPeer(receiver, 1).connect();
    rawSenderHandshake(raw, { identity: SENDER_KEY });
    expect(raw.outputs.some((o) => o.kind === "authorize-sender")).toBe(true);
    raw.send({ type: FrameType.Data, flowId: 1, payload: utf8("x") });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    receiver.approve(1, true, 0);
    raw.read();
    expect(raw.outputs.some((o) => o.kind === "accepted")).toBe(false);
    expect(receiver.senderConnected).toBe(false);
  });

  test("a frame before HELLO, or a key-mode HELLO without a key, closes the connection", () => {
    for (const frame of [
      { type: FrameType.Ping, payload: new Uint8Array(8) },
      { type: FrameType.FlowClose, flowId: 1, reason: 0 },
      { ...senderHello, publicKey: new Uint8Array(0) },
    ] as Frame[]) {
      const raw = new RawPeer(keyReceiver(), 1).connect();
      raw.send(PREFACE, frame);
      expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
      expect(raw.outputs.some((o) => o.kind === "log" && o.level === "error")).toBe(false);
    }
  });

  test("an AUTH whose proof is not the announced key's signature is AUTH_FAILED, nobody is asked", () => {
    for (const proof of [new Uint8Array(0), new Uint8Array(32).fill(1), new Uint8Array(64).fill(1)]) {
      const raw = new RawPeer(keyReceiver(), 1).connect();
      raw.send(PREFACE, senderHello, { type: FrameType.Auth, proof, token: new Uint8Array(0) });
      expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
      expect(raw.outputs.some((o) => o.kind === "authorize-sender" || o.kind === "accepted")).toBe(false);
    }
  });

  test("the sender acts on no FLOW_OPEN before ACCEPT", () => {
    const sender = new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
    const raw = new RawPeer(sender, 1).connect();
    raw.send(
      PREFACE,
      {
        type: FrameType.Hello,
        role: Role.Receiver,
        auth: AuthMode.Key,
        capabilities: 0,
        nonce: new Uint8Array(32),
        publicKey: RECEIVER_KEY.publicKey,
        agent: "evil",
      },
      { type: FrameType.FlowOpen, flowId: 1, mappingId: 0, client: { family: 4, address: "192.0.2.9", port: 53 } },
    );
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.outputs.some((o) => o.kind === "open-flow-socket")).toBe(false);
  });
});

/** Opens one flow per client and returns the sender's open-flow-socket outputs by client key. */
function openClients(net: Net, receiver: ReceiverMachine, sender: SenderMachine, clients: Array<[string, number]>) {
  for (const [address, port] of clients)
    receiver.clientDatagram(address, port, utf8(`hello from ${address}|${port}`), net.now);
  net.pump();
  const opened = new Map<string, number>();
  for (const o of net.of(sender, "open-flow-socket")) opened.set(`${o.client.address}|${o.client.port}`, o.flowId);
  return opened;
}

describe("flows", () => {
  test("many clients: each gets its own flow id; replies reach exactly their client", () => {
    // Amplification cap off: replies here are far larger than the clients' single datagram.
    const { net, receiver, sender } = setup({ receiver: { amplificationLimit: 0 } });
    const clients: Array<[string, number]> = [];
    for (let i = 0; i < 30; i++) clients.push([`198.51.100.${i % 5}`, 40_000 + i]);
    for (let i = 1; i <= 10; i++) clients.push([`2001:db8::${i.toString(16)}`, 53]);
    clients.push(["::ffff:203.0.113.5", 53]);
    const opened = openClients(net, receiver, sender, clients);
    expect(opened.size).toBe(clients.length);
    expect(new Set(opened.values()).size).toBe(clients.length);
    expect(receiver.flowCount).toBe(clients.length);
    // Each first datagram reached the target on its client's flow, intact.
    for (const o of net.of(sender, "send-to-target")) {
      const key = [...opened].find(([, id]) => id === o.flowId)?.[0];
      expect(text(o.payload)).toBe(`hello from ${key}`);
    }
    // Replies, in a scrambled order, including an empty datagram and a maximal one.
    const entries = [...opened].reverse();
    for (const [key, flowId] of entries) sender.targetDatagram(flowId, utf8(`reply to ${key}`), net.now);
    const [, big] = entries[3];
    sender.targetDatagram(big, new Uint8Array(65_535).fill(0x5a), net.now);
    sender.targetDatagram(big, new Uint8Array(0), net.now);
    net.pump();
    const sent = net.of(receiver, "send-to-client");
    expect(sent.length).toBe(clients.length + 2);
    for (const o of sent.slice(0, clients.length))
      expect(text(o.payload)).toBe(`reply to ${o.flow.address}|${o.flow.port}`);
    expect(sent[clients.length].payload.length).toBe(65_535);
    expect(sent[clients.length].flow.id).toBe(big);
    expect(sent[clients.length + 1].payload.length).toBe(0);
    expect(receiver.stats.udpOut).toBe(clients.length + 2);
  });

  test("flows close on both sides when the receiver's idle timer fires first", () => {
    const { net, receiver, sender, wire } = setup({
      receiver: { idleTimeoutMs: 60_000 },
      sender: { idleTimeoutMs: 120_000 },
    });
    const opened = openClients(net, receiver, sender, [
      ["192.0.2.1", 1000],
      ["192.0.2.2", 1000],
    ]);
    net.advance(30_000);
    receiver.clientDatagram("192.0.2.1", 1000, utf8("still here"), net.now);
    net.advance(30_000); // t = 60 s: the second flow has been idle for 60 s
    const idle = opened.get("192.0.2.2|1000");
    expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([
      { type: FrameType.FlowClose, flowId: idle as number, reason: FlowCloseReason.Idle },
    ]);
    expect(net.of(sender, "close-flow-socket")).toEqual([{ kind: "close-flow-socket", flowId: idle as number }]);
    expect(receiver.flowCount).toBe(1);
    expect(sender.flowCount).toBe(1);
    net.advance(30_000); // the first one now too
    expect(receiver.flowCount).toBe(0);
    expect(sender.flowCount).toBe(0);
    expect(net.of(sender, "close-flow-socket").length).toBe(2);
    expect(wire.up).toBe(true); // keepalive kept the connection up meanwhile
  });

  test("flows close on both sides when the sender's idle timer fires first", () => {
    const { net, receiver, sender, wire } = setup({
      receiver: { idleTimeoutMs: 120_000 },
      sender: { idleTimeoutMs: 60_000 },
    });
    openClients(net, receiver, sender, [["192.0.2.1", 1000]]);
    net.advance(60_000);
    expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([FlowCloseReason.Idle]);
    expect(net.of(sender, "close-flow-socket").length).toBe(1);
    expect(receiver.flowCount).toBe(0);
    expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([]); // no echo
  });

  test("max-flows evicts the least recently active flow, on both sides", () => {
    const { net, receiver, sender, wire } = setup({ receiver: { maxFlows: 3 } });
    const opened = openClients(net, receiver, sender, [
      ["192.0.2.1", 1],
      ["192.0.2.2", 2],
      ["192.0.2.3", 3],
    ]);
    net.advance(1_000);
    receiver.clientDatagram("192.0.2.1", 1, utf8("busy"), net.now); // 1 is now the most recent; 2 the least
    net.advance(1_000);
    receiver.clientDatagram("192.0.2.4", 4, utf8("new"), net.now);
    net.pump();
    const evicted = opened.get("192.0.2.2|2") as number;
    expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([
      { type: FrameType.FlowClose, flowId: evicted, reason: FlowCloseReason.Evicted },
    ]);
    expect(net.of(sender, "close-flow-socket")).toEqual([{ kind: "close-flow-socket", flowId: evicted }]);
    expect(receiver.flowCount).toBe(3);
    expect(sender.flowCount).toBe(3);
    expect([...receiver.flowList()].map((f) => f.port).sort()).toEqual([1, 3, 4]);
  });

  test("the sender's own max-flows evicts too, and tells the receiver", () => {
    const { net, receiver, sender, wire } = setup({ sender: { maxFlows: 2 } });
    openClients(net, receiver, sender, [
      ["192.0.2.1", 1],
      ["192.0.2.2", 2],
      ["192.0.2.3", 3],
    ]);
    expect(sender.flowCount).toBe(2);
    expect(receiver.flowCount).toBe(2);
    expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
      FlowCloseReason.Evicted,
    ]);
  });

  test("FLOW_OPEN for a mapping the sender has no target for is refused with UNKNOWN_MAPPING", () => {
    const { net, receiver, sender, wire } = setup({ receiver: { mappingId: 7 }, sender: { mappingIds: [0] } });
    receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now);
    net.pump();
    expect(net.of(sender, "open-flow-socket")).toEqual([]);
    // Refused, and the DATA that followed the FLOW_OPEN is answered as an unknown flow.
    expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
      FlowCloseReason.UnknownMapping,
      FlowCloseReason.UnknownFlow,
    ]);
    expect(receiver.flowCount).toBe(0);
  });

  test("a fatal socket error closes the flow on both sides; a transient one only counts", () => {
    const { net, receiver, sender, wire } = setup();
    const opened = openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    const id = opened.get("192.0.2.1|1") as number;
    sender.flowSocketError(id, false);
    net.pump();
    expect(receiver.flowCount).toBe(1);
    sender.flowSocketError(id, true, FlowCloseReason.TargetUnreachable);
    net.pump();
    expect(receiver.flowCount).toBe(0);
    expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
      FlowCloseReason.TargetUnreachable,
    ]);
    expect(sender.stats.drops["socket-error"]).toBe(2);
  });

  test("DATA for an unknown flow: FLOW_CLOSE(unknown flow) back, no datagram out (both sides)", () => {
    const { net, receiver, sender, wire } = setup();
    openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    receiver.receive(1, encodeData(999, "to nowhere"), net.now);
    net.pump();
    expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([
      { type: FrameType.FlowClose, flowId: 999, reason: FlowCloseReason.UnknownFlow },
    ]);
    expect(net.of(receiver, "send-to-client")).toEqual([]);
    expect(receiver.stats.drops["unknown-flow"]).toBe(1);
    sender.receive(1, encodeData(777, "nope"), net.now);
    net.pump();
    expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose)).toEqual([
      { type: FrameType.FlowClose, flowId: 777, reason: FlowCloseReason.UnknownFlow },
    ]);
    expect(net.of(sender, "send-to-target").length).toBe(1); // only the client's first datagram
    expect(wire.up).toBe(true);
    expect(sender.flowCount).toBe(1); // a FLOW_CLOSE for an unknown flow is ignored, not answered
  });
});

function encodeData(flowId: number, payload: string): Uint8Array {
  const body = utf8(payload);
  const out = new Uint8Array(9 + body.length);
  const view = new DataView(out.buffer);
  out[0] = FrameType.Data;
  view.setUint32(1, 4 + body.length);
  view.setUint32(5, flowId);
  out.set(body, 9);
  return out;
}

describe("keepalive", () => {
  test("ping/pong gives rttMs on both sides", () => {
    const { net, receiver, sender, wire } = setup({
      receiver: { keepaliveMs: 15_000 },
      sender: { keepaliveMs: 15_000 },
    });
    expect(receiver.stats.rttMs).toBeUndefined();
    wire.paused = true;
    net.advance(15_000); // both ping now; the bytes wait on the wire
    expect(wire.queued.length).toBe(2);
    net.advance(20);
    net.flush(wire); // pings arrive at 15 020 and are answered at once
    expect(receiver.stats.rttMs).toBe(20);
    expect(sender.stats.rttMs).toBe(20);
    expect(framesOfType(wire.sentBy(receiver), FrameType.Pong).length).toBe(1);
  });

  test("a silent peer is declared dead after 3 keepalive intervals, not before", () => {
    const { net, receiver, sender, wire } = setup({
      receiver: { keepaliveMs: 10_000 },
      sender: { keepaliveMs: 10_000 },
    });
    wire.drop.add(receiver);
    wire.drop.add(sender);
    net.advance(29_999);
    expect(wire.up).toBe(true);
    net.advance(1);
    expect(wire.up).toBe(false);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.KeepaliveTimeout]);
    expect(closeCodes(wire.sentBy(sender))).toEqual([CloseCode.KeepaliveTimeout]);
    expect(net.logs(receiver).some((l) => l.includes("nothing received for 30 s"))).toBe(true);
  });

  test("regular pings keep an otherwise idle connection alive", () => {
    const { net, wire } = setup();
    net.advance(10 * 60_000);
    expect(wire.up).toBe(true);
  });
});

describe("one sender at a time", () => {
  test("a second sender is refused as busy while the first is live", () => {
    const { net, receiver, sender } = setup();
    openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    net.advance(5_000);
    const second = net.add(new SenderMachine({ secret: SECRET }, testCrypto(9)));
    const w2 = net.connect(receiver, 2, second, 1);
    expect(closeCodes(w2.sentBy(receiver))).toEqual([CloseCode.Busy]);
    expect(net.logs(second).some((l) => l.includes("busy"))).toBe(true);
    expect(sender.connected).toBe(true);
    expect(receiver.flowCount).toBe(1);
  });

  test("a stale connection (silent > 1.5 keepalive) is replaced by a newly authenticated sender", () => {
    const { net, receiver, sender, wire } = setup({ receiver: { keepaliveMs: 15_000 } });
    openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    wire.drop.add(sender); // the sender's host vanished: nothing more arrives from it
    net.advance(20_000); // 20 s < 22.5 s: not stale yet
    const second = net.add(new SenderMachine({ secret: SECRET }, testCrypto(9)));
    const early = net.connect(receiver, 2, second, 2);
    expect(closeCodes(early.sentBy(receiver))).toEqual([CloseCode.Busy]);
    net.advance(3_000); // 23 s
    const late = net.connect(receiver, 3, second, 3);
    expect(net.of(receiver, "accepted").map((a) => a.conn)).toEqual([1, 3]);
    expect(second.connected).toBe(true);
    expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.Replaced]);
    expect(wire.up).toBe(false);
    expect(receiver.flowCount).toBe(0); // a different sender starts a new session
    expect(late.up).toBe(true);
  });
});

describe("resume", () => {
  function withFlows(config: { resumeGraceMs?: number; idleTimeoutMs?: number } = {}) {
    const s = setup({ receiver: config, sender: config });
    const opened = openClients(s.net, s.receiver, s.sender, [
      ["192.0.2.1", 1],
      ["192.0.2.2", 2],
      ["2001:db8::3", 3],
    ]);
    return { ...s, opened };
  }

  test("within the grace period: flow ids and sender sockets are kept", () => {
    const { net, receiver, sender, wire, opened } = withFlows({ resumeGraceMs: 30_000 });
    net.clear();
    net.cut(wire);
    receiver.clientDatagram("192.0.2.1", 1, utf8("lost"), net.now); // nobody to send it to
    expect(receiver.stats.drops["no-sender"]).toBe(1);
    net.advance(10_000);
    expect(receiver.flowCount).toBe(3);
    const w2 = net.connect(receiver, 2, sender, 2);
    expect(net.of(receiver, "accepted")).toEqual([{ kind: "accepted", conn: 2, peer: "peer-of-2", resumed: true }]);
    expect(net.of(sender, "accepted")[0].resumed).toBe(true);
    expect(framesOfType(w2.sentBy(sender), FrameType.Auth)[0].token.length).toBe(16);
    expect(net.of(sender, "close-flow-socket")).toEqual([]);
    receiver.clientDatagram("192.0.2.2", 2, utf8("after"), net.now);
    net.pump();
    expect(net.of(sender, "open-flow-socket")).toEqual([]);
    expect(net.of(sender, "send-to-target")).toEqual([
      { kind: "send-to-target", flowId: opened.get("192.0.2.2|2") as number, payload: utf8("after") },
    ]);
    sender.targetDatagram(opened.get("2001:db8::3|3") as number, utf8("back"), net.now);
    net.pump();
    const out = net.of(receiver, "send-to-client");
    expect(out.map((o) => [o.flow.address, o.flow.port, text(o.payload)])).toEqual([["2001:db8::3", 3, "back"]]);
  });

  test("after the grace period: flows are dropped on both sides and the next session is new", () => {
    const { net, receiver, sender, wire } = withFlows({ resumeGraceMs: 30_000, idleTimeoutMs: 600_000 });
    net.clear();
    net.cut(wire);
    net.advance(29_999);
    expect(receiver.flowCount).toBe(3);
    expect(net.of(sender, "close-flow-socket")).toEqual([]);
    net.advance(1);
    expect(receiver.flowCount).toBe(0);
    expect(sender.flowCount).toBe(0);
    expect(net.of(sender, "close-flow-socket").length).toBe(3);
    net.connect(receiver, 2, sender, 2);
    expect(net.of(receiver, "accepted")[0].resumed).toBe(false);
    expect(net.of(sender, "accepted")[0].resumed).toBe(false);
  });

  test("the grace period also starts when the connection ended by keepalive timeout", () => {
    const { net, receiver, sender, wire } = withFlows({ resumeGraceMs: 30_000, idleTimeoutMs: 600_000 });
    net.clear();
    wire.drop.add(receiver);
    wire.drop.add(sender);
    net.advance(45_000); // 3 x 15 s: both sides give up on the connection
    expect(wire.up).toBe(false);
    expect(sender.flowCount).toBe(3);
    net.advance(30_000);
    expect(net.of(sender, "close-flow-socket").length).toBe(3);
    expect(receiver.flowCount).toBe(0);
  });

  test("when the receiver restarted, a resuming sender is told the session is new and closes its sockets", () => {
    const { net, sender, wire } = withFlows();
    net.cut(wire);
    net.clear();
    const fresh = net.add(new ReceiverMachine({ secret: SECRET }, testCrypto(7)));
    net.connect(fresh, 1, sender, 2);
    expect(net.of(sender, "accepted")[0].resumed).toBe(false);
    expect(net.of(sender, "close-flow-socket").length).toBe(3);
  });
});

describe("backpressure", () => {
  test("receiver: while blocked, the oldest DATA is dropped to stay within maxBufferBytes", () => {
    const { net, receiver, sender } = setup({ receiver: { maxBufferBytes: 2_000 } });
    openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    receiver.setBlocked(1, true);
    for (let i = 0; i < 20; i++) receiver.clientDatagram("192.0.2.1", 1, new Uint8Array(200).fill(i), net.now);
    // New clients while blocked: their FLOW_OPENs are never dropped (flow state stays consistent).
    for (let i = 0; i < 100; i++) receiver.clientDatagram("203.0.113.1", 10_000 + i, new Uint8Array(10), net.now);
    net.pump();
    const dropped = receiver.stats.drops.backpressure;
    expect(dropped).toBeGreaterThan(0);
    expect(net.of(sender, "send-to-target").length).toBe(1); // nothing delivered while blocked
    receiver.setBlocked(1, false);
    net.pump();
    const delivered = net.of(sender, "send-to-target").slice(1);
    expect(delivered.length + dropped).toBe(120);
    // The oldest went first: the first burst's early datagrams are gone, the newest clients got through.
    const firstBurst = delivered.filter((o) => o.payload.length === 200).map((o) => o.payload[0]);
    expect(firstBurst.includes(0)).toBe(false);
    expect(delivered.some((o) => o.payload.length === 10)).toBe(true);
    expect(sender.stats.drops["unknown-flow"]).toBe(0); // every delivered DATA names a flow the sender knows
  });

  test("sender: the same bound on the way back", () => {
    const { net, receiver, sender } = setup({ sender: { maxBufferBytes: 1_000 }, receiver: { amplificationLimit: 0 } });
    const opened = openClients(net, receiver, sender, [["192.0.2.1", 1]]);
    const id = opened.get("192.0.2.1|1") as number;
    sender.setBlocked(1, true);
    for (let i = 0; i < 10; i++) sender.targetDatagram(id, new Uint8Array(300), net.now);
    expect(sender.stats.drops.backpressure).toBe(7);
    sender.setBlocked(1, false);
    net.pump();
    expect(net.of(receiver, "send-to-client").length).toBe(3);
  });
});

describe("no reflection", () => {
  /** A hostile sender with a valid key that the receiver admitted (authorized, or the operator said yes). */
  function hostile() {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const raw = new RawPeer(receiver, 1).connect();
    rawSenderHandshake(raw, { identity: testIdentity(0x66) });
    receiver.approve(1, true, 0);
    raw.read();
    expect(receiver.senderConnected).toBe(true);
    return { receiver, raw };
  }

  test("DATA for any flow id reaches only clients that opened flows", () => {
    const { receiver, raw } = hostile();
    for (let id = 1; id <= 300; id++) raw.send({ type: FrameType.Data, flowId: id, payload: utf8(`spoof ${id}`) });
    raw.send({ type: FrameType.Data, flowId: 0xffffffff, payload: utf8("x") });
    expect(raw.outputs.filter((o) => o.kind === "send-to-client")).toEqual([]);
    receiver.clientDatagram("192.0.2.50", 5353, utf8("real client"), 0);
    const open = framesOfType(raw.read(), FrameType.FlowOpen)[0];
    for (let id = 1; id <= 300; id++) raw.send({ type: FrameType.Data, flowId: id, payload: utf8(`spoof ${id}`) });
    const sent = raw.outputs.filter(
      (o): o is { kind: "send-to-client"; flow: ClientFlow; payload: Uint8Array } => o.kind === "send-to-client",
    );
    expect(sent.length).toBe(1);
    expect([sent[0].flow.address, sent[0].flow.port, sent[0].flow.id]).toEqual(["192.0.2.50", 5353, open.flowId]);
    expect(raw.closed()).toBe(false);
  });

  test("a sender that tries to name an address (FLOW_OPEN) is disconnected", () => {
    const { raw } = hostile();
    raw.send({
      type: FrameType.FlowOpen,
      flowId: 5,
      mappingId: 0,
      client: { family: 4, address: "198.51.100.99", port: 53 },
    });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    raw.send({ type: FrameType.Data, flowId: 5, payload: utf8("x") }); // after CLOSE: ignored
    expect(raw.outputs.some((o) => o.kind === "send-to-client")).toBe(false);
  });

  test("frames after a CLOSE in the same chunk are ignored", () => {
    const { receiver, raw } = hostile();
    receiver.clientDatagram("192.0.2.50", 5353, utf8("real client"), 0);
    const open = framesOfType(raw.read(), FrameType.FlowOpen)[0];
    const close = { type: FrameType.Close, code: 0, message: "bye" } as Frame;
    raw.send(close, encodeData(open.flowId, "late"));
    expect(raw.outputs.some((o) => o.kind === "send-to-client")).toBe(false);
    // And the closed link takes no more client traffic while the host has not reported it gone.
    receiver.clientDatagram("192.0.2.50", 5353, utf8("more"), 0);
    expect(framesOfType(raw.read(), FrameType.Data)).toEqual([]);
  });
});
