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
  DIRECTIONS,
  type Direction,
  framesOfType,
  Net,
  R,
  RawPeer,
  RECEIVER_KEY,
  rawAcceptorHandshake,
  rawDialerHandshake,
  rawHello,
  SENDER_KEY,
  sides,
  testCrypto,
  testIdentity,
  type Wire,
} from "./harness.ts";

const SECRET = "s3cret";
const text = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * A receiver and a sender connected in `direction` (-R by default: the receiver accepts). Secret mode
 * by default; `secret: null` is key mode (each side has its identity either way).
 */
function setup(
  opts: {
    secret?: string | null;
    receiver?: ReceiverConfig;
    sender?: SenderConfig;
    connect?: boolean;
    direction?: Direction;
  } = {},
) {
  const secret = opts.secret === null ? undefined : (opts.secret ?? SECRET);
  const direction = opts.direction ?? R;
  const net = new Net();
  const receiver = net.add(new ReceiverMachine({ secret, identity: RECEIVER_KEY, ...opts.receiver }, testCrypto(1)));
  const sender = net.add(new SenderMachine({ secret, identity: SENDER_KEY, ...opts.sender }, testCrypto(2)));
  const wire = opts.connect === false ? (undefined as unknown as Wire) : net.link(direction, receiver, sender, 1);
  return { net, receiver, sender, wire, direction, ...sides(direction, receiver, sender) };
}

/** What the acceptor calls its peer in log lines, and the dialer's key. */
const dialerName = (dir: Direction) => (dir.acceptor === "receiver" ? "sender" : "receiver");
const dialerKey = (dir: Direction) => (dir.acceptor === "receiver" ? SENDER_KEY : RECEIVER_KEY);

for (const dir of DIRECTIONS) {
  describe(`handshake ${dir.name}`, () => {
    test("shared secret: both sides accepted, nothing else", () => {
      const { net, receiver, sender, wire, acceptor, dialer } = setup({ direction: dir });
      expect(sender.session.peerConnected).toBe(true);
      expect(receiver.session.peerConnected).toBe(true);
      expect([sender.session.peerConnected, receiver.session.peerConnected]).toEqual([true, true]);
      expect(net.of(acceptor, "accepted")).toEqual([{ kind: "accepted", conn: 1, peer: "peer-of-1", resumed: false }]);
      expect(net.of(dialer, "accepted").length).toBe(1);
      expect(wire.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Auth]);
      expect(wire.sentBy(acceptor).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Accept]);
      expect(acceptor.stats.accepted).toBe(1);
      expect(dialer.stats.accepted).toBe(1);
      expect(dialer.stats.handshakeFailures).toBe(0);
      expect(net.of(acceptor, "authorize-peer")).toEqual([]);
      expect(net.logs(acceptor)).toContain(`info: ${dialerName(dir)} peer-of-1 accepted`);
    });

    test("wrong secret: the acceptor logs and refuses, the dialer gets CLOSE(auth failed)", () => {
      const net = new Net();
      const receiver = net.add(new ReceiverMachine({ secret: "hunter2-right" }, testCrypto(1)));
      const sender = net.add(new SenderMachine({ secret: "hunter2-wrong" }, testCrypto(2)));
      const wire = net.link(dir, receiver, sender, 1);
      const { acceptor, dialer } = sides(dir, receiver, sender);
      expect(receiver.session.peerConnected).toBe(false);
      expect(sender.session.peerConnected).toBe(false);
      expect(net.logs(acceptor).some((l) => l.startsWith("warn") && l.includes("wrong shared secret"))).toBe(true);
      expect(closeCodes(wire.sentBy(acceptor))).toEqual([CloseCode.AuthFailed]);
      expect(net.logs(dialer).some((l) => l.includes("authentication failed"))).toBe(true);
      expect(net.of(dialer, "close-connection").length).toBe(1);
      expect(net.of(dialer, "accepted")).toEqual([]);
      expect(acceptor.stats.handshakeFailures).toBe(1);
      expect(dialer.stats.handshakeFailures).toBe(1);
      // The secret itself never crossed the wire.
      const all = [...wire.sentBy(sender), ...wire.sentBy(receiver)].map((f) => JSON.stringify(f));
      expect(all.some((s) => s.includes("hunter2"))).toBe(false);
    });

    test("auth-mode mismatch: both sides close with AUTH_MISMATCH and say how to fix it", () => {
      const { net, receiver, sender, wire, acceptor } = setup({
        secret: null,
        receiver: { secret: SECRET },
        direction: dir,
      });
      expect(closeCodes(wire.sentBy(receiver))).toEqual([CloseCode.AuthMismatch]);
      expect(closeCodes(wire.sentBy(sender))).toEqual([CloseCode.AuthMismatch]);
      expect(net.logs(receiver).some((l) => l.includes("same --secret"))).toBe(true);
      expect(net.logs(sender).some((l) => l.includes("same --secret"))).toBe(true);
      expect(net.of(acceptor, "authorize-peer")).toEqual([]);
      expect(receiver.stats.handshakeFailures).toBe(1);
      expect(sender.stats.handshakeFailures).toBe(1);
    });

    test("key mode: the acceptor asks authorize-peer with the dialer's key, then yes (no deadline while deciding)", () => {
      const { net, receiver, sender, acceptor, dialer } = setup({ secret: null, direction: dir });
      const asks = net.of(acceptor, "authorize-peer");
      expect(asks).toEqual([
        {
          kind: "authorize-peer",
          conn: 1,
          peer: "peer-of-1",
          source: "peer-of-1",
          publicKey: dialerKey(dir).publicKey,
          mappings: [""],
        },
      ]);
      expect(net.of(dialer, "authorize-peer")).toEqual([]); // the dialer pins, it does not ask
      expect(acceptor.session.awaitingApproval(1)).toBe(true);
      expect(sender.session.peerConnected).toBe(false);
      net.advance(3_600_000); // a human may take their time: no handshake deadline while asking
      expect(net.of(acceptor, "close-connection")).toEqual([]);
      expect(net.of(dialer, "close-connection")).toEqual([]);
      acceptor.session.approve(1, true, net.now);
      net.pump();
      expect(sender.session.peerConnected).toBe(true);
      expect(receiver.session.peerConnected).toBe(true);
      acceptor.session.approve(1, true, net.now); // a second answer is ignored
      net.pump();
      expect(acceptor.stats.accepted).toBe(1);
    });

    test("key mode: the operator says no (no reason): CLOSE(refused)", () => {
      const { net, sender, receiver, wire, acceptor, dialer } = setup({ secret: null, direction: dir });
      acceptor.session.approve(1, false, net.now);
      net.pump();
      expect(closeCodes(wire.sentBy(acceptor))).toEqual([CloseCode.Refused]);
      expect(sender.session.peerConnected).toBe(false);
      expect(receiver.session.peerConnected).toBe(false);
      expect(net.logs(dialer).some((l) => l.includes("refused by operator"))).toBe(true);
    });

    test("client datagrams before the session is accepted are dropped as no-sender, nothing is sent", () => {
      const { net, receiver, wire, acceptor } = setup({ secret: null, direction: dir });
      receiver.clientDatagram("192.0.2.1", 5000, utf8("early"), net.now);
      net.pump();
      expect(receiver.stats.drops["no-sender"]).toBe(1);
      expect(receiver.flows.size).toBe(0);
      expect(wire.sentBy(receiver).map((f) => f.type)).not.toContain(FrameType.FlowOpen);
      expect(wire.sentBy(receiver).map((f) => f.type)).not.toContain(FrameType.Data);
      acceptor.session.approve(1, true, net.now);
      net.pump();
      receiver.clientDatagram("192.0.2.1", 5000, utf8("now"), net.now);
      net.pump();
      expect(receiver.flows.size).toBe(1);
    });
  });
}

describe("handshake", () => {
  test("an impostor receiver that cannot prove the secret is refused by the sender", () => {
    const sender = new SenderMachine({ secret: SECRET }, testCrypto(2));
    const raw = new RawPeer(sender, 1).connect();
    raw.send(PREFACE, rawHello({ role: Role.Receiver, auth: AuthMode.Secret, capabilities: 1 }));
    expect(raw.received.map((f) => f.type)).toContain(FrameType.Auth);
    raw.send({ type: FrameType.Accept, proof: new Uint8Array(32).fill(9), token: new Uint8Array(16), resumed: false });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(sender.session.peerConnected).toBe(false);
  });

  test("an impostor sender that cannot prove the secret is refused by a dialing receiver (-L)", () => {
    const receiver = new ReceiverMachine({ secret: SECRET }, testCrypto(1));
    const raw = new RawPeer(receiver, 1).dialed();
    rawAcceptorHandshake(raw, { secret: "not-the-secret" });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(raw.outputs.some((o) => o.kind === "accepted")).toBe(false);
    expect(receiver.session.peerConnected).toBe(false);
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
    expect(closeCodes(w2.sentBy(r2))).toEqual([CloseCode.RoleConflict]);
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

  test("the dialer also gives up on an acceptor that never finishes the handshake (either role)", () => {
    const sender = new SenderMachine({ secret: SECRET, handshakeTimeoutMs: 5_000 }, testCrypto(2));
    const raw = new RawPeer(sender, 1).dialed();
    sender.tick(5_000);
    raw.read();
    expect(raw.closeCode()).toBe(CloseCode.HandshakeTimeout);
    const receiver = new ReceiverMachine({ secret: SECRET, handshakeTimeoutMs: 5_000 }, testCrypto(1));
    const raw2 = new RawPeer(receiver, 1).dialed();
    receiver.tick(5_000);
    raw2.read();
    expect(raw2.closeCode()).toBe(CloseCode.HandshakeTimeout);
  });

  test("too many unauthenticated connections are refused as busy (a receiver or a sender that accepts)", () => {
    const receiver = new ReceiverMachine({ secret: SECRET, maxPendingConnections: 2 }, testCrypto(1));
    const peers = [1, 2, 3].map((c) => new RawPeer(receiver, c).accepted());
    expect(peers.map((p) => p.closeCode())).toEqual([undefined, undefined, CloseCode.Busy]);
    const sender = new SenderMachine({ secret: SECRET, maxPendingConnections: 2 }, testCrypto(2));
    const others = [1, 2, 3].map((c) => new RawPeer(sender, c).accepted());
    expect(others.map((p) => p.closeCode())).toEqual([undefined, undefined, CloseCode.Busy]);
  });

  test("dial() twice without a disconnect in between is a host bug, reported at once", () => {
    const receiver = new ReceiverMachine({ secret: SECRET }, testCrypto(1));
    receiver.session.dial(1, "a", 0);
    expect(() => receiver.session.dial(2, "b", 0)).toThrow("not reported disconnected");
    expect(() => receiver.session.dial(1, "a", 0)).toThrow("already known");
    receiver.session.disconnected(1, 0);
    expect(() => receiver.session.dial(2, "b", 0)).not.toThrow();
  });
});

describe("nothing before acceptance", () => {
  const senderHello = rawHello({ role: Role.Sender, auth: AuthMode.Key, publicKey: SENDER_KEY.publicKey });
  const keyReceiver = () => new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));

  test("DATA from a peer before acceptance closes the connection (right after HELLO)", () => {
    const receiver = keyReceiver();
    const raw = new RawPeer(receiver, 1).connect();
    receiver.clientDatagram("192.0.2.1", 5000, utf8("x"), 0);
    raw.send(PREFACE, senderHello, { type: FrameType.Data, flowId: 1, payload: utf8("reflect me") });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.outputs.some((o) => o.kind === "send-to-client" || o.kind === "authorize-peer")).toBe(false);
  });

  test("DATA while waiting for the operator closes the connection; a late yes changes nothing", () => {
    const receiver = keyReceiver();
    const raw = new RawPeer(receiver, 1).connect();
    rawDialerHandshake(raw, { identity: SENDER_KEY });
    expect(raw.outputs.some((o) => o.kind === "authorize-peer")).toBe(true);
    raw.send({ type: FrameType.Data, flowId: 1, payload: utf8("x") });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    receiver.session.approve(1, true, 0);
    raw.read();
    expect(raw.outputs.some((o) => o.kind === "accepted")).toBe(false);
    expect(receiver.session.peerConnected).toBe(false);
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
      expect(raw.outputs.some((o) => o.kind === "authorize-peer" || o.kind === "accepted")).toBe(false);
    }
  });

  test("the sender acts on no FLOW_OPEN before ACCEPT", () => {
    const sender = new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
    const raw = new RawPeer(sender, 1).connect();
    raw.send(PREFACE, rawHello({ role: Role.Receiver, auth: AuthMode.Key, publicKey: RECEIVER_KEY.publicKey }), {
      type: FrameType.FlowOpen,
      flowId: 1,
      mappingId: 0,
      client: { family: 4, address: "192.0.2.9", port: 53 },
    });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.outputs.some((o) => o.kind === "open-flow-socket")).toBe(false);
  });

  const keySender = () => new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
  const receiverHello = rawHello({ role: Role.Receiver, auth: AuthMode.Key, publicKey: RECEIVER_KEY.publicKey });
  const flowOpen: Frame = {
    type: FrameType.FlowOpen,
    flowId: 1,
    mappingId: 0,
    client: { family: 4, address: "192.0.2.9", port: 53 },
  };

  test("-L: a sender that accepts acts on no FLOW_OPEN or DATA before it admitted the receiver", () => {
    for (const early of [flowOpen, { type: FrameType.Data, flowId: 1, payload: utf8("x") } as Frame]) {
      // Right after HELLO.
      const raw = new RawPeer(keySender(), 1).accepted();
      raw.send(PREFACE, receiverHello, early);
      expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
      // While its operator decides about the receiver's key; a late yes changes nothing.
      const sender = keySender();
      const waiting = new RawPeer(sender, 1).accepted();
      rawDialerHandshake(waiting, { identity: RECEIVER_KEY });
      expect(waiting.outputs.filter((o) => o.kind === "authorize-peer").length).toBe(1);
      waiting.send(early);
      expect(waiting.closeCode()).toBe(CloseCode.ProtocolError);
      sender.session.approve(1, true, 0);
      waiting.read();
      for (const out of [raw.outputs, waiting.outputs]) {
        expect(out.some((o) => o.kind === "open-flow-socket" || o.kind === "send-to-target")).toBe(false);
        expect(out.some((o) => o.kind === "accepted")).toBe(false);
      }
      expect(sender.session.peerConnected).toBe(false);
    }
  });

  test("-L: a receiver that dials forwards nothing before ACCEPT", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const raw = new RawPeer(receiver, 1).dialed();
    receiver.clientDatagram("192.0.2.1", 5000, utf8("x"), 0);
    raw.send(PREFACE, rawHello({ role: Role.Sender, auth: AuthMode.Key, publicKey: SENDER_KEY.publicKey }), {
      type: FrameType.Data,
      flowId: 1,
      payload: utf8("reflect me"),
    });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.outputs.some((o) => o.kind === "send-to-client" || o.kind === "accepted")).toBe(false);
    expect(framesOfType(raw.received, FrameType.FlowOpen)).toEqual([]);
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

for (const dir of DIRECTIONS) {
  describe(`flows ${dir.name}`, () => {
    test("many clients: each gets its own flow id; replies reach exactly their client", () => {
      // Amplification cap off: replies here are far larger than the clients' single datagram.
      const { net, receiver, sender } = setup({ direction: dir, receiver: { amplificationLimit: 0 } });
      const clients: Array<[string, number]> = [];
      for (let i = 0; i < 30; i++) clients.push([`198.51.100.${i % 5}`, 40_000 + i]);
      for (let i = 1; i <= 10; i++) clients.push([`2001:db8::${i.toString(16)}`, 53]);
      clients.push(["::ffff:203.0.113.5", 53]);
      const opened = openClients(net, receiver, sender, clients);
      expect(opened.size).toBe(clients.length);
      expect(new Set(opened.values()).size).toBe(clients.length);
      expect(receiver.flows.size).toBe(clients.length);
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
        direction: dir,
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
      expect(receiver.flows.size).toBe(1);
      expect(sender.flows.size).toBe(1);
      net.advance(30_000); // the first one now too
      expect(receiver.flows.size).toBe(0);
      expect(sender.flows.size).toBe(0);
      expect(net.of(sender, "close-flow-socket").length).toBe(2);
      expect(wire.up).toBe(true); // keepalive kept the connection up meanwhile
    });

    test("flows close on both sides when the sender's idle timer fires first", () => {
      const { net, receiver, sender, wire } = setup({
        direction: dir,
        receiver: { idleTimeoutMs: 120_000 },
        sender: { idleTimeoutMs: 60_000 },
      });
      openClients(net, receiver, sender, [["192.0.2.1", 1000]]);
      net.advance(60_000);
      expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
        FlowCloseReason.Idle,
      ]);
      expect(net.of(sender, "close-flow-socket").length).toBe(1);
      expect(receiver.flows.size).toBe(0);
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([]); // no echo
    });

    test("max-flows evicts the least recently active flow, on both sides", () => {
      const { net, receiver, sender, wire } = setup({ direction: dir, receiver: { maxFlows: 3 } });
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
      expect(receiver.flows.size).toBe(3);
      expect(sender.flows.size).toBe(3);
      expect([...receiver.flows.values()].map((f) => f.port).sort()).toEqual([1, 3, 4]);
    });

    test("the sender's own max-flows evicts too, and tells the receiver", () => {
      const { net, receiver, sender, wire } = setup({ direction: dir, sender: { maxFlows: 2 } });
      openClients(net, receiver, sender, [
        ["192.0.2.1", 1],
        ["192.0.2.2", 2],
        ["192.0.2.3", 3],
      ]);
      expect(sender.flows.size).toBe(2);
      expect(receiver.flows.size).toBe(2);
      expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
        FlowCloseReason.Evicted,
      ]);
    });

    test("a fatal socket error closes the flow on both sides; a transient one only counts", () => {
      const { net, receiver, sender, wire } = setup({ direction: dir });
      const opened = openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      const id = opened.get("192.0.2.1|1") as number;
      sender.flowSocketError(id, false);
      net.pump();
      expect(receiver.flows.size).toBe(1);
      sender.flowSocketError(id, true, FlowCloseReason.TargetUnreachable);
      net.pump();
      expect(receiver.flows.size).toBe(0);
      expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose).map((f) => f.reason)).toEqual([
        FlowCloseReason.TargetUnreachable,
      ]);
      expect(sender.stats.drops["socket-error"]).toBe(2);
    });

    test("DATA for an unknown flow: FLOW_CLOSE(unknown flow) back, no datagram out (both sides)", () => {
      const { net, receiver, sender, wire } = setup({ direction: dir });
      openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      receiver.session.receive(1, encodeData(999, "to nowhere"), net.now);
      net.pump();
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowClose)).toEqual([
        { type: FrameType.FlowClose, flowId: 999, reason: FlowCloseReason.UnknownFlow },
      ]);
      expect(net.of(receiver, "send-to-client")).toEqual([]);
      expect(receiver.stats.drops["unknown-flow"]).toBe(1);
      sender.session.receive(1, encodeData(777, "nope"), net.now);
      net.pump();
      expect(framesOfType(wire.sentBy(sender), FrameType.FlowClose)).toEqual([
        { type: FrameType.FlowClose, flowId: 777, reason: FlowCloseReason.UnknownFlow },
      ]);
      expect(net.of(sender, "send-to-target").length).toBe(1); // only the client's first datagram
      expect(wire.up).toBe(true);
      expect(sender.flows.size).toBe(1); // a FLOW_CLOSE for an unknown flow is ignored, not answered
    });
  });
}

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

for (const dir of DIRECTIONS) {
  describe(`keepalive ${dir.name}`, () => {
    test("ping/pong gives rttMs on both sides", () => {
      const { net, receiver, sender, wire } = setup({
        direction: dir,
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
        direction: dir,
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
      const { net, wire } = setup({ direction: dir });
      net.advance(10 * 60_000);
      expect(wire.up).toBe(true);
    });
  });
}

/** A second machine of the dialer's role (a different peer), same secret. */
function another(dir: Direction, seed: number): ReceiverMachine | SenderMachine {
  return dir.acceptor === "receiver"
    ? new SenderMachine({ secret: SECRET }, testCrypto(seed))
    : new ReceiverMachine({ secret: SECRET }, testCrypto(seed));
}

for (const dir of DIRECTIONS) {
  describe(`one peer at a time ${dir.name}`, () => {
    test(`a second ${dialerName(dir)} is refused as busy while the first is live`, () => {
      const { net, receiver, sender, acceptor } = setup({ direction: dir });
      openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      net.advance(5_000);
      const second = net.add(another(dir, 9));
      const w2 = net.connect(acceptor, 2, second, 1);
      expect(closeCodes(w2.sentBy(acceptor))).toEqual([CloseCode.Busy]);
      expect(framesOfType(w2.sentBy(acceptor), FrameType.Close)[0].message).toBe(
        `another ${dialerName(dir)} is connected; only one at a time`,
      );
      expect(net.logs(second).some((l) => l.includes("busy"))).toBe(true);
      expect(sender.session.peerConnected).toBe(true);
      expect(receiver.session.peerConnected).toBe(true);
      expect([receiver.flows.size, sender.flows.size]).toEqual([1, 1]);
    });

    test(`a stale connection (silent > 1.5 keepalive) is replaced by a newly authenticated ${dialerName(dir)}`, () => {
      const { net, receiver, sender, wire, acceptor, dialer } = setup({
        direction: dir,
        receiver: { keepaliveMs: 15_000 },
        sender: { keepaliveMs: 15_000 },
      });
      openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      wire.drop.add(dialer); // the dialer's host vanished: nothing more arrives from it
      net.advance(20_000); // 20 s < 22.5 s: not stale yet
      const second = net.add(another(dir, 9));
      const early = net.connect(acceptor, 2, second, 2);
      expect(closeCodes(early.sentBy(acceptor))).toEqual([CloseCode.Busy]);
      net.advance(3_000); // 23 s
      const late = net.connect(acceptor, 3, second, 3);
      expect(net.of(acceptor, "accepted").map((a) => a.conn)).toEqual([1, 3]);
      expect(second.session.peerConnected).toBe(true);
      expect(closeCodes(wire.sentBy(acceptor))).toEqual([CloseCode.Replaced]);
      expect(wire.up).toBe(false);
      expect(acceptor.flows.size).toBe(0); // a different peer starts a new session
      if (acceptor === sender) expect(net.of(sender, "close-flow-socket").length).toBe(1);
      expect(late.up).toBe(true);
    });
  });

  describe(`resume ${dir.name}`, () => {
    function withFlows(config: { resumeGraceMs?: number; idleTimeoutMs?: number } = {}) {
      const s = setup({ direction: dir, receiver: config, sender: config });
      const opened = openClients(s.net, s.receiver, s.sender, [
        ["192.0.2.1", 1],
        ["192.0.2.2", 2],
        ["2001:db8::3", 3],
      ]);
      return { ...s, opened };
    }

    test("within the grace period: flow ids and sender sockets are kept", () => {
      const { net, receiver, sender, wire, opened, acceptor, dialer } = withFlows({ resumeGraceMs: 30_000 });
      net.clear();
      net.cut(wire);
      receiver.clientDatagram("192.0.2.1", 1, utf8("lost"), net.now); // nobody to send it to
      expect(receiver.stats.drops["no-sender"]).toBe(1);
      net.advance(10_000);
      expect(receiver.flows.size).toBe(3);
      const w2 = net.link(dir, receiver, sender, 2);
      expect(net.of(acceptor, "accepted")).toEqual([{ kind: "accepted", conn: 2, peer: "peer-of-2", resumed: true }]);
      expect(net.of(dialer, "accepted")[0].resumed).toBe(true);
      expect(net.logs(acceptor)).toContain(`info: ${dialerName(dir)} peer-of-2 accepted (resumed 3 flows)`);
      expect(framesOfType(w2.sentBy(dialer), FrameType.Auth)[0].token.length).toBe(16);
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
      expect(receiver.flows.size).toBe(3);
      expect(net.of(sender, "close-flow-socket")).toEqual([]);
      net.advance(1);
      expect(receiver.flows.size).toBe(0);
      expect(sender.flows.size).toBe(0);
      expect(net.of(sender, "close-flow-socket").length).toBe(3);
      const w2 = net.link(dir, receiver, sender, 2);
      expect(net.of(receiver, "accepted")[0].resumed).toBe(false);
      expect(net.of(sender, "accepted")[0].resumed).toBe(false);
      // The dialer forgot the token with the session: nothing to offer.
      const { dialer } = sides(dir, receiver, sender);
      expect(framesOfType(w2.sentBy(dialer), FrameType.Auth)[0].token.length).toBe(0);
    });

    test("the grace period also starts when the connection ended by keepalive timeout", () => {
      const { net, receiver, sender, wire } = withFlows({ resumeGraceMs: 30_000, idleTimeoutMs: 600_000 });
      net.clear();
      wire.drop.add(receiver);
      wire.drop.add(sender);
      net.advance(45_000); // 3 x 15 s: both sides give up on the connection
      expect(wire.up).toBe(false);
      expect(sender.flows.size).toBe(3);
      expect(receiver.flows.size).toBe(3);
      net.advance(30_000);
      expect(net.of(sender, "close-flow-socket").length).toBe(3);
      expect(receiver.flows.size).toBe(0);
    });

    test("when the acceptor restarted, a resuming dialer is told the session is new and drops its flows", () => {
      const { net, receiver, sender, wire, dialer } = withFlows();
      net.cut(wire);
      net.clear();
      const fresh = net.add(
        dir.acceptor === "receiver"
          ? new ReceiverMachine({ secret: SECRET }, testCrypto(7))
          : new SenderMachine({ secret: SECRET }, testCrypto(7)),
      );
      const w2 = net.connect(fresh, 1, dialer, 2);
      expect(framesOfType(w2.sentBy(dialer), FrameType.Auth)[0].token.length).toBe(16); // it tried
      expect(net.of(dialer, "accepted")[0].resumed).toBe(false);
      expect(dialer.flows.size).toBe(0);
      expect(net.logs(dialer)).toContain(
        `info: the ${dir.acceptor} started a new session: closing 3 flows of the old one`,
      );
      if (dialer === sender) expect(net.of(sender, "close-flow-socket").length).toBe(3);
      else expect(receiver.flows.size).toBe(0);
    });

    test("when the dialer restarted (no token), the acceptor drops the old session's flows", () => {
      const { net, receiver, sender, wire, acceptor } = withFlows();
      net.cut(wire);
      net.clear();
      const fresh = net.add(another(dir, 7));
      net.connect(acceptor, 2, fresh, 1);
      expect(net.of(acceptor, "accepted")[0].resumed).toBe(false);
      expect(acceptor.flows.size).toBe(0);
      expect(net.logs(acceptor)).toContain(`info: dropping 3 flows of the previous ${dialerName(dir)}`);
      if (acceptor === sender) expect(net.of(sender, "close-flow-socket").length).toBe(3);
      else expect(receiver.flows.size).toBe(0);
    });
  });
}

for (const dir of DIRECTIONS) {
  describe(`backpressure ${dir.name}`, () => {
    test("receiver: while blocked, the oldest DATA is dropped to stay within maxBufferBytes", () => {
      const { net, receiver, sender } = setup({ direction: dir, receiver: { maxBufferBytes: 2_000 } });
      openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      receiver.session.setBlocked(1, true);
      for (let i = 0; i < 20; i++) receiver.clientDatagram("192.0.2.1", 1, new Uint8Array(200).fill(i), net.now);
      // New clients while blocked: their FLOW_OPENs are never dropped (flow state stays consistent).
      for (let i = 0; i < 100; i++) receiver.clientDatagram("203.0.113.1", 10_000 + i, new Uint8Array(10), net.now);
      net.pump();
      const dropped = receiver.stats.drops.backpressure;
      expect(dropped).toBeGreaterThan(0);
      expect(net.of(sender, "send-to-target").length).toBe(1); // nothing delivered while blocked
      receiver.session.setBlocked(1, false);
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
      const { net, receiver, sender } = setup({
        direction: dir,
        sender: { maxBufferBytes: 1_000 },
        receiver: { amplificationLimit: 0 },
      });
      const opened = openClients(net, receiver, sender, [["192.0.2.1", 1]]);
      const id = opened.get("192.0.2.1|1") as number;
      sender.session.setBlocked(1, true);
      for (let i = 0; i < 10; i++) sender.targetDatagram(id, new Uint8Array(300), net.now);
      expect(sender.stats.drops.backpressure).toBe(7);
      sender.session.setBlocked(1, false);
      net.pump();
      expect(net.of(receiver, "send-to-client").length).toBe(3);
    });
  });
}

for (const dir of DIRECTIONS) {
  describe(`no reflection ${dir.name}`, () => {
    /**
     * A hostile sender with a valid key that the receiver admitted (authorized, or the operator said yes)
     * and dialed in (-R); or (-L) that the receiver dialed and whose key it pinned.
     */
    function hostile() {
      const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
      if (dir.acceptor === "receiver") {
        const raw = new RawPeer(receiver, 1).accepted();
        rawDialerHandshake(raw, { identity: testIdentity(0x66) });
        receiver.session.approve(1, true, 0);
        raw.read();
        expect(receiver.session.peerConnected).toBe(true);
        return { receiver, raw };
      }
      const raw = new RawPeer(receiver, 1).dialed();
      rawAcceptorHandshake(raw, { identity: testIdentity(0x66) });
      expect(receiver.session.peerConnected).toBe(true);
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
}
