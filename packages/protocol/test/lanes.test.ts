/**
 * Lanes (PROTOCOL.md §16): several TCP connections in one session. Later connections JOIN the session
 * of the first with a proof bound to it; flows stay on their lane; a lane that closes moves its flows
 * to the others and the session goes on. Hostile joins: wrong session, replayed proof, a foreign key,
 * a proof without the session's binding, more than maxLanes, JOIN where lanes were not announced.
 */
import { describe, expect, test } from "bun:test";
import {
  AuthMode,
  Capability,
  CloseCode,
  concatBytes,
  encodeFrame,
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
  hmac,
  Net,
  R,
  RawPeer,
  RECEIVER_KEY,
  SENDER_KEY,
  sides,
  testCrypto,
  testIdentity,
  type Wire,
} from "./harness.ts";

const SECRET = "lanes-secret";
const JOIN_LABEL = utf8("mcudpt/1 lane join");

function setup(
  dir: Direction,
  opts: { lanes?: number; secret?: string | null; receiver?: ReceiverConfig; sender?: SenderConfig } = {},
) {
  const secret = opts.secret === null ? undefined : (opts.secret ?? SECRET);
  const lanes = opts.lanes ?? 3;
  const dialerLanes = { lanes };
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine(
      {
        secret,
        identity: RECEIVER_KEY,
        ...(dir.acceptor === "sender" ? dialerLanes : {}),
        ...opts.receiver,
      },
      testCrypto(1),
    ),
  );
  const sender = net.add(
    new SenderMachine(
      {
        secret,
        identity: SENDER_KEY,
        ...(dir.acceptor === "receiver" ? dialerLanes : {}),
        ...opts.sender,
      },
      testCrypto(2),
    ),
  );
  const wires: Wire[] = [];
  const open = (conn: number) => {
    const wire = net.link(dir, receiver, sender, conn);
    wires.push(wire);
    return wire;
  };
  return { net, receiver, sender, wires, open, ...sides(dir, receiver, sender) };
}

const dataOn = (wire: Wire, m: ReceiverMachine | SenderMachine) => framesOfType(wire.sentBy(m), FrameType.Data);

for (const dir of DIRECTIONS) {
  describe(`lanes ${dir.name}`, () => {
    test("the second and third connections JOIN the session of the first; ACCEPT says resumed", () => {
      const { receiver, sender, open, acceptor, dialer } = setup(dir);
      const [w1, w2, w3] = [open(1), open(2), open(3)];
      expect(w1.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Auth]);
      for (const w of [w2, w3]) {
        expect(w.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Join]);
        const accept = framesOfType(w.sentBy(acceptor), FrameType.Accept)[0];
        expect(accept.resumed).toBe(true);
      }
      const tokens = [w1, w2, w3].map((w) => framesOfType(w.sentBy(acceptor), FrameType.Accept)[0].token);
      expect(tokens[1]).toEqual(tokens[0]);
      expect(tokens[2]).toEqual(tokens[0]);
      for (const m of [receiver, sender]) {
        expect(m.session.lanes().map((l) => l.open)).toEqual([true, true, true]);
        expect(m.laneTotals.lanesJoined).toBe(2);
      }
      const hello = framesOfType(w2.sentBy(acceptor), FrameType.Hello)[0];
      expect(hello.capabilities & Capability.Lanes).toBe(Capability.Lanes);
    });

    test("flows are spread over the lanes and each stays on one (both directions)", () => {
      const { net, receiver, sender, wires, open } = setup(dir);
      open(1);
      open(2);
      open(3);
      for (let round = 0; round < 5; round++) {
        for (let c = 0; c < 12; c++) receiver.clientDatagram("192.0.2.1", 2000 + c, utf8(`r${round}c${c}`), net.now);
        net.pump();
        for (const o of net.of(sender, "open-flow-socket")) sender.targetDatagram(o.flowId, utf8(`a${round}`), net.now);
        net.pump();
      }
      for (const m of [receiver, sender]) {
        const laneOf = new Map<number, number>();
        wires.forEach((w, i) => {
          for (const f of dataOn(w, m)) {
            expect(laneOf.get(f.flowId) ?? i).toBe(i);
            laneOf.set(f.flowId, i);
          }
        });
        expect(laneOf.size).toBe(12);
        expect(new Set(laneOf.values()).size).toBe(3);
      }
      expect(net.of(receiver, "send-to-client").length).toBe(60);
      expect(net.of(sender, "send-to-target").length).toBe(60);
    });

    test("a lane that dies: its flows move to the others at once, the session and the flow sockets stay", () => {
      const { net, receiver, sender, wires, open, dialer } = setup(dir);
      open(1);
      open(2);
      open(3);
      for (let c = 0; c < 9; c++) receiver.clientDatagram("192.0.2.1", 3000 + c, utf8(`q${c}`), net.now);
      net.pump();
      const onLane2 = new Set(dataOn(wires[1], receiver).map((f) => f.flowId));
      expect(onLane2.size).toBeGreaterThan(0);
      const opened = net.of(sender, "open-flow-socket").length;
      net.cut(wires[1]);
      for (const m of [receiver, sender]) expect(m.session.lanes().length).toBe(2);
      expect(net.logs(dialer).some((l) => l.includes("in case the connection resumes"))).toBe(false);
      // Both directions: every flow still gets through, the moved ones re-announced on their new lane.
      for (let c = 0; c < 9; c++) receiver.clientDatagram("192.0.2.1", 3000 + c, utf8(`again${c}`), net.now);
      net.pump();
      for (const o of net.of(sender, "open-flow-socket")) sender.targetDatagram(o.flowId, utf8("reply"), net.now);
      net.pump();
      expect(net.of(sender, "send-to-target").length).toBe(18);
      expect(net.of(receiver, "send-to-client").length).toBe(9);
      expect(net.of(sender, "open-flow-socket").length).toBe(opened); // no flow was opened anew
      expect(net.of(sender, "close-flow-socket").length).toBe(0);
      const reannounced = [wires[0], wires[2]].flatMap((w) =>
        framesOfType(w.sentBy(receiver), FrameType.FlowOpen).map((f) => f.flowId),
      );
      for (const id of onLane2) expect(reannounced).toContain(id);
      expect(receiver.laneTotals.flowsMoved).toBe(onLane2.size);
      // The dialer opens the lane again: it JOINs, and new flows use it.
      const w4 = open(4);
      expect(w4.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Join]);
      for (const m of [receiver, sender]) expect(m.session.lanes().filter((l) => l.open).length).toBe(3);
    });

    test("every lane lost: the next connection resumes the session with AUTH (flows kept)", () => {
      const { net, receiver, sender, wires, open, dialer, acceptor } = setup(dir);
      open(1);
      open(2);
      receiver.clientDatagram("192.0.2.1", 4000, utf8("q"), net.now);
      net.pump();
      net.cut(wires[0]);
      net.cut(wires[1]);
      expect(receiver.flows.size).toBe(1);
      const w3 = open(3);
      expect(w3.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Auth]);
      expect(framesOfType(w3.sentBy(acceptor), FrameType.Accept)[0].resumed).toBe(true);
      expect([receiver.flows.size, sender.flows.size]).toEqual([1, 1]);
      const w4 = open(4);
      expect(w4.sentBy(dialer).map((f) => f.type)).toEqual([FrameType.Hello, FrameType.Join]);
    });

    test("more lanes than the acceptor takes: the extra JOIN is refused BUSY, the others carry on", () => {
      const acceptorLimit = { maxLanes: 2 };
      const { open, acceptor, dialer, receiver, sender } = setup(dir, {
        lanes: 3,
        ...(dir.acceptor === "receiver" ? { receiver: acceptorLimit } : { sender: acceptorLimit }),
      });
      open(1);
      open(2);
      const w3 = open(3);
      expect(closeCodes(w3.sentBy(acceptor))).toEqual([CloseCode.Busy]);
      expect(acceptor.laneTotals.joinsRefused).toBe(1);
      for (const m of [receiver, sender]) expect(m.session.lanes().filter((l) => l.open).length).toBe(2);
      expect(dialer.session.peerConnected).toBe(true);
    });

    test("an acceptor without lanes (maxLanes 1): the dialer's second connection does not disturb the first", () => {
      const one = { maxLanes: 1 };
      const { open, acceptor, dialer, wires } = setup(dir, {
        lanes: 2,
        ...(dir.acceptor === "receiver" ? { receiver: one } : { sender: one }),
      });
      open(1);
      const w2 = open(2);
      expect(framesOfType(w2.sentBy(dialer), FrameType.Join).length).toBe(0);
      expect(framesOfType(w2.sentBy(dialer), FrameType.Auth).length).toBe(0);
      expect(closeCodes(w2.sentBy(dialer))).toEqual([CloseCode.Busy]);
      expect(wires[0].up).toBe(true);
      expect(acceptor.session.lanes().filter((l) => l.open).length).toBe(1);
    });
  });
}

// ---- hostile joins, against a receiver that accepts (the acceptor judges every JOIN) ----------------

/** A session between a receiver (acceptor) and a sender with lanes; returns what a JOIN must be bound to. */
function liveSession(keyMode = false) {
  const secret = keyMode ? undefined : SECRET;
  const net = new Net();
  const receiver = net.add(new ReceiverMachine({ secret, identity: RECEIVER_KEY }, testCrypto(1)));
  const sender = net.add(new SenderMachine({ secret, identity: SENDER_KEY, lanes: 2 }, testCrypto(2)));
  const wire = net.link(R, receiver, sender, 1);
  const accept = framesOfType(wire.sentBy(receiver), FrameType.Accept)[0];
  // key mode: admit the sender's key (as its operator would)
  if (keyMode) {
    const ask = net.of(receiver, "authorize-peer")[0];
    if (ask) {
      receiver.session.approve(ask.conn, true, net.now);
      net.pump();
    }
  }
  const accepted = framesOfType(wire.sentBy(receiver), FrameType.Accept)[0] ?? accept;
  return { net, receiver, sender, wire, token: accepted.token, binding: accepted.proof };
}

function joinHello(keyMode: boolean, nonceByte: number, identity = SENDER_KEY): Extract<Frame, { type: 1 }> {
  return {
    type: FrameType.Hello,
    role: Role.Sender,
    auth: keyMode ? AuthMode.Key : AuthMode.Secret,
    capabilities: Capability.Resume | Capability.Lanes,
    nonce: new Uint8Array(32).fill(nonceByte),
    publicKey: keyMode ? identity.publicKey : new Uint8Array(0),
    mappings: [""],
    agent: "raw",
  };
}

function joinTranscript(acceptorHello: Frame, dialerHello: Frame, token: Uint8Array, binding: Uint8Array) {
  return concatBytes(JOIN_LABEL, encodeFrame(acceptorHello), encodeFrame(dialerHello), token, binding);
}

describe("hostile joins", () => {
  test("a JOIN made by the rules is taken (the reference the refusals below differ from)", () => {
    const { receiver, token, binding } = liveSession();
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x31);
    raw.send(PREFACE, hello);
    const proof = hmac(SECRET, joinTranscript(raw.peerHello(), hello, token, binding));
    raw.send({ type: FrameType.Join, proof, token });
    const accept = framesOfType(raw.received, FrameType.Accept)[0];
    expect(accept.resumed).toBe(true);
    expect(accept.token).toEqual(token);
    expect(receiver.session.lanes().length).toBe(2);
  });

  test("wrong session: a token that is not the session's is refused (AUTH_FAILED), nothing said about sessions", () => {
    const { receiver, binding } = liveSession();
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x32);
    raw.send(PREFACE, hello);
    const token = new Uint8Array(16).fill(0x99);
    raw.send({
      type: FrameType.Join,
      proof: hmac(SECRET, joinTranscript(raw.peerHello(), hello, token, binding)),
      token,
    });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(raw.closeMessage()).toBe("cannot join: unknown session, or a proof that does not verify");
    expect(receiver.laneTotals.joinsRefused).toBe(1);
    expect(receiver.session.lanes().length).toBe(1);
  });

  test("no session at all: the same refusal", () => {
    const receiver = new ReceiverMachine({ secret: SECRET }, testCrypto(1));
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x33);
    raw.send(PREFACE, hello);
    const token = new Uint8Array(16).fill(0x70);
    raw.send({
      type: FrameType.Join,
      proof: hmac(SECRET, joinTranscript(raw.peerHello(), hello, token, token)),
      token,
    });
    expect(raw.closeMessage()).toBe("cannot join: unknown session, or a proof that does not verify");
  });

  test("a replayed JOIN (recorded from a real lane) is useless on a new connection: fresh nonces", () => {
    const { net, receiver, sender, token } = liveSession();
    const w2 = net.link(R, receiver, sender, 2);
    const recordedHello = framesOfType(w2.sentBy(sender), FrameType.Hello)[0];
    const recordedJoin = framesOfType(w2.sentBy(sender), FrameType.Join)[0];
    expect(recordedJoin.token).toEqual(token);
    const raw = new RawPeer(receiver, 9).accepted();
    raw.send(PREFACE, recordedHello, recordedJoin);
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(receiver.session.lanes().filter((l) => l.open).length).toBe(2);
  });

  test("the right token and secret but no binding (a proof made without the session's first handshake)", () => {
    const { receiver, token } = liveSession();
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x34);
    raw.send(PREFACE, hello);
    const proof = hmac(SECRET, joinTranscript(raw.peerHello(), hello, token, new Uint8Array(0)));
    raw.send({ type: FrameType.Join, proof, token });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
  });

  test("key mode: another key (valid signature, right token and binding) cannot join a session it did not authenticate", () => {
    const { receiver, token, binding } = liveSession(true);
    expect(receiver.session.peerConnected).toBe(true);
    const intruder = testIdentity(0x66);
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(true, 0x35, intruder);
    raw.send(PREFACE, hello);
    const proof = intruder.sign(joinTranscript(raw.peerHello(), hello, token, binding));
    raw.send({ type: FrameType.Join, proof, token });
    expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
    expect(receiver.session.lanes().length).toBe(1);
    // The session's own key may.
    const raw2 = new RawPeer(receiver, 8).accepted();
    const hello2 = joinHello(true, 0x36);
    raw2.send(PREFACE, hello2);
    raw2.send({
      type: FrameType.Join,
      proof: SENDER_KEY.sign(joinTranscript(raw2.peerHello(), hello2, token, binding)),
      token,
    });
    expect(framesOfType(raw2.received, FrameType.Accept)[0]?.resumed).toBe(true);
  });

  test("JOIN where the acceptor did not announce lanes (maxLanes 1) is a protocol error", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ secret: SECRET, maxLanes: 1 }, testCrypto(1)));
    const sender = net.add(new SenderMachine({ secret: SECRET }, testCrypto(2)));
    const wire = net.link(R, receiver, sender, 1);
    const accept = framesOfType(wire.sentBy(receiver), FrameType.Accept)[0];
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x37);
    raw.send(PREFACE, hello);
    expect(raw.peerHello().capabilities & Capability.Lanes).toBe(0);
    const proof = hmac(SECRET, joinTranscript(raw.peerHello(), hello, accept.token, accept.proof));
    raw.send({ type: FrameType.Join, proof, token: accept.token });
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(receiver.session.lanes().length).toBe(1);
  });

  test("more than maxLanes by hand: the JOIN past the limit is BUSY", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ secret: SECRET, maxLanes: 2 }, testCrypto(1)));
    const sender = net.add(new SenderMachine({ secret: SECRET, lanes: 2 }, testCrypto(2)));
    const wire = net.link(R, receiver, sender, 1);
    net.link(R, receiver, sender, 2);
    const accept = framesOfType(wire.sentBy(receiver), FrameType.Accept)[0];
    const raw = new RawPeer(receiver, 7).accepted();
    const hello = joinHello(false, 0x38);
    raw.send(PREFACE, hello);
    raw.send({
      type: FrameType.Join,
      proof: hmac(SECRET, joinTranscript(raw.peerHello(), hello, accept.token, accept.proof)),
      token: accept.token,
    });
    expect(raw.closeCode()).toBe(CloseCode.Busy);
    expect(receiver.session.lanes().filter((l) => l.open).length).toBe(2);
  });
});
