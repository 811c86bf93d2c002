/**
 * Key-mode authentication, replay, hostile senders and the receiver's limits on strangers: pre-auth
 * frame size, pending connections per source, the new-flow rate and the anti-amplification cap.
 */
import { describe, expect, test } from "bun:test";
import {
  CloseCode,
  type CommonConfig,
  DEFAULTS,
  encodeFrame,
  FrameType,
  type Output,
  PREFACE,
  IPV4_UDP_OVERHEAD,
  IPV6_UDP_OVERHEAD,
  RECEIVER_DEFAULTS,
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
  forgedIdentity,
  framesOfType,
  Net,
  R,
  RawPeer,
  RECEIVER_KEY,
  rawDialerHandshake,
  SENDER_KEY,
  sides,
  testCrypto,
  testIdentity,
  transcript,
  verifyEd25519,
} from "./harness.ts";

const SECRET = "s3cret";

/**
 * A receiver and a sender on one wire, connected in `direction` (-R by default); key mode unless
 * `secret`. The acceptor's host says yes at once unless `approve: false`. `acceptor`/`dialer` config is
 * merged into whichever role takes that side.
 */
function pair(
  opts: {
    secret?: string;
    receiver?: ReceiverConfig;
    sender?: SenderConfig;
    acceptor?: CommonConfig;
    dialer?: CommonConfig;
    approve?: boolean;
    direction?: Direction;
  } = {},
) {
  const direction = opts.direction ?? R;
  const byRole = (role: "receiver" | "sender") => (direction.acceptor === role ? opts.acceptor : opts.dialer);
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine(
      { secret: opts.secret, identity: RECEIVER_KEY, ...byRole("receiver"), ...opts.receiver },
      testCrypto(1),
    ),
  );
  const sender = net.add(
    new SenderMachine(
      { secret: opts.secret, identity: SENDER_KEY, ...byRole("sender"), ...opts.sender },
      testCrypto(2),
    ),
  );
  const wire = net.link(direction, receiver, sender, 1);
  const { acceptor, dialer } = sides(direction, receiver, sender);
  if (opts.approve !== false && acceptor.session.awaitingApproval(1)) {
    acceptor.session.approve(1, true, net.now);
    net.pump();
  }
  return { net, receiver, sender, wire, acceptor, dialer };
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
/** The role that dials in `dir`, its key, and the acceptor's. */
const dialerRole = (dir: Direction) => (dir.acceptor === "receiver" ? "sender" : "receiver");
const keysOf = (dir: Direction) =>
  dir.acceptor === "receiver"
    ? { acceptorKey: RECEIVER_KEY, dialerKey: SENDER_KEY }
    : { acceptorKey: SENDER_KEY, dialerKey: RECEIVER_KEY };

for (const dir of DIRECTIONS) {
  const { acceptorKey, dialerKey } = keysOf(dir);

  describe(`key mode ${dir.name}`, () => {
    test("each side signs the transcript with the key its HELLO announced; the dialer checks the acceptor's key", () => {
      const seen: Array<[string, string, boolean]> = [];
      const { net, receiver, sender, wire, acceptor, dialer } = pair({
        direction: dir,
        dialer: { checkPeerKey: (key, peer, proven) => void seen.push([hex(key), peer, proven]) },
      });
      expect(sender.session.peerConnected).toBe(true);
      expect(receiver.session.peerConnected).toBe(true);
      // Compared with the pin at the acceptor's HELLO (claimed), remembered only once ACCEPT proved it.
      expect(seen).toEqual([
        [hex(acceptorKey.publicKey), "peer-of-1", false],
        [hex(acceptorKey.publicKey), "peer-of-1", true],
      ]);
      expect(net.of(acceptor, "authorize-peer").map((o) => hex(o.publicKey))).toEqual([hex(dialerKey.publicKey)]);
      expect(net.of(dialer, "authorize-peer")).toEqual([]);
      const [aHello, accept] = wire.sentBy(acceptor);
      const [dHello, auth] = wire.sentBy(dialer);
      if (aHello.type !== FrameType.Hello || dHello.type !== FrameType.Hello) throw new Error("no HELLO");
      if (auth.type !== FrameType.Auth || accept.type !== FrameType.Accept) throw new Error("no AUTH/ACCEPT");
      expect(hex(aHello.publicKey)).toBe(hex(acceptorKey.publicKey));
      expect(hex(dHello.publicKey)).toBe(hex(dialerKey.publicKey));
      expect([auth.proof.length, accept.proof.length]).toEqual([64, 64]);
      // Checked independently: each proof is its side's signature of its transcript, and nothing else's.
      const dialerT = transcript("dialer", aHello, dHello, auth.token);
      const acceptorT = transcript("acceptor", aHello, dHello, accept.token, accept.resumed);
      expect(verifyEd25519(dialerKey.publicKey, dialerT, auth.proof)).toBe(true);
      expect(verifyEd25519(acceptorKey.publicKey, acceptorT, accept.proof)).toBe(true);
      expect(verifyEd25519(acceptorKey.publicKey, dialerT, auth.proof)).toBe(false);
      expect(verifyEd25519(dialerKey.publicKey, acceptorT, auth.proof)).toBe(false);
    });

    test(`a ${dialerRole(dir)} (dialer) that announces key A but signs with B: AUTH_FAILED, the host is never asked`, () => {
      const { net, receiver, sender, wire, acceptor, dialer } = pair({
        direction: dir,
        dialer: { identity: forgedIdentity(dialerKey, testIdentity(0x77)) },
      });
      expect(closeCodes(wire.sentBy(acceptor))).toEqual([CloseCode.AuthFailed]);
      expect(net.of(acceptor, "authorize-peer")).toEqual([]);
      expect(net.logs(acceptor)).toContain(
        `warn: closing connection with peer-of-1: the ${dialerRole(dir)}'s signature does not match the key it announced`,
      );
      expect(sender.session.peerConnected).toBe(false);
      expect(receiver.session.peerConnected).toBe(false);
      expect(acceptor.stats.handshakeFailures).toBe(1);
      expect(dialer.stats.handshakeFailures).toBe(1);
    });

    test(`a ${dir.acceptor} (acceptor) that announces key A but signs with B: the dialer refuses with AUTH_FAILED`, () => {
      const checked: boolean[] = [];
      const { net, wire, acceptor, dialer } = pair({
        direction: dir,
        acceptor: { identity: forgedIdentity(acceptorKey, testIdentity(0x78)) },
        dialer: { checkPeerKey: (_key, _peer, proven) => void checked.push(proven) },
      });
      expect(closeCodes(wire.sentBy(dialer))).toEqual([CloseCode.AuthFailed]);
      expect(net.of(dialer, "accepted")).toEqual([]);
      expect(checked).toEqual([false]); // compared at HELLO; never remembered, as it never proved itself
      expect(
        net.logs(dialer).some((l) => l.includes(`the ${dir.acceptor}'s signature`) && l.includes("impostor")),
      ).toBe(true);
      expect(dialer.stats.handshakeFailures).toBe(1);
      expect(wire.up).toBe(false);
      expect(acceptor.session.peerConnected).toBe(false);
    });

    test("the acceptor refuses the key with a reason: CLOSE(KEY_REJECTED) carries it to the dialer", () => {
      const { net, wire, acceptor, dialer } = pair({ direction: dir, approve: false });
      expect(acceptor.session.awaitingApproval(1)).toBe(true);
      const reason = `${dialerRole(dir)} key SHA256:abc is not in authorized_keys`;
      acceptor.session.approve(1, false, net.now, reason);
      net.pump();
      const [close] = framesOfType(wire.sentBy(acceptor), FrameType.Close);
      expect(close).toEqual({ type: FrameType.Close, code: CloseCode.KeyRejected, message: reason });
      expect(dialer.session.peerConnected).toBe(false);
      expect(net.logs(dialer)).toContain(
        `warn: the ${dir.acceptor} at peer-of-1 refused this side: key not accepted ("${reason}")`,
      );
      expect(acceptor.stats.handshakeFailures).toBe(1);
      expect(acceptor.session.awaitingApproval(1)).toBe(false);
    });

    test("checkPeerKey refuses at the acceptor's HELLO: KEY_REJECTED before any AUTH, the acceptor's host never asked", () => {
      const why = `the ${dir.acceptor}'s key changed since the last connection`;
      const { net, receiver, wire, acceptor, dialer } = pair({ direction: dir, dialer: { checkPeerKey: () => why } });
      expect(closeCodes(wire.sentBy(dialer))).toEqual([CloseCode.KeyRejected]);
      expect(framesOfType(wire.sentBy(dialer), FrameType.Auth)).toEqual([]);
      expect(net.of(acceptor, "authorize-peer")).toEqual([]);
      expect(framesOfType(wire.sentBy(dialer), FrameType.Close)[0].message).toBe(why);
      expect(net.of(dialer, "accepted")).toEqual([]);
      expect(dialer.session.peerConnected).toBe(false);
      expect(dialer.stats.handshakeFailures).toBe(1);
      expect(net.logs(acceptor).some((l) => l.includes(`refused this side: key not accepted ("${why}")`))).toBe(true);
      expect(wire.up).toBe(false);
      receiver.clientDatagram("192.0.2.1", 1, utf8("x"), net.now);
      expect(receiver.flows.size).toBe(0);
    });

    test("resume with the same key and token: flows kept, nobody asked", () => {
      const { net, receiver, sender, wire, acceptor } = pair({ direction: dir });
      receiver.clientDatagram("192.0.2.1", 1, utf8("q"), net.now);
      net.pump();
      net.cut(wire);
      net.clear();
      net.link(dir, receiver, sender, 2);
      expect(net.of(acceptor, "authorize-peer")).toEqual([]);
      expect(net.of(acceptor, "accepted")).toEqual([{ kind: "accepted", conn: 2, peer: "peer-of-2", resumed: true }]);
      expect(receiver.flows.size).toBe(1);
      expect(sender.flows.size).toBe(1);
    });

    test("the right token with a different key is not a resume: the host is asked, and a yes starts afresh", () => {
      const { net, wire, acceptor, dialer } = pair({ direction: dir });
      const receiver = acceptor instanceof ReceiverMachine ? acceptor : (dialer as ReceiverMachine);
      receiver.clientDatagram("192.0.2.1", 1, utf8("q"), net.now);
      net.pump();
      const token = framesOfType(wire.sentBy(acceptor), FrameType.Accept)[0].token;
      net.cut(wire);
      expect(acceptor.flows.size).toBe(1);
      // Someone else, holding the token (it crosses the wire in clear), with a key of its own.
      const thief = new RawPeer(acceptor, 2, net.now).accepted();
      rawDialerHandshake(thief, { identity: testIdentity(0x99), token });
      expect(thief.outputs.filter((o) => o.kind === "accepted")).toEqual([]);
      const asks = thief.outputs.filter((o) => o.kind === "authorize-peer");
      expect(asks.map((o) => hex(o.publicKey))).toEqual([hex(testIdentity(0x99).publicKey)]);
      expect(acceptor.flows.size).toBe(1); // nothing dropped while the host decides
      acceptor.session.approve(2, true, net.now);
      thief.read();
      expect(framesOfType(thief.received, FrameType.Accept).map((f) => f.resumed)).toEqual([false]);
      expect(hex(framesOfType(thief.received, FrameType.Accept)[0].token)).not.toBe(hex(token));
      expect(thief.outputs.filter((o) => o.kind === "accepted")).toEqual([
        { kind: "accepted", conn: 2, peer: "raw-peer", resumed: false },
      ]);
      expect(acceptor.flows.size).toBe(0); // the previous peer's flows are gone, not handed over
      if (acceptor instanceof SenderMachine) {
        expect(thief.outputs.filter((o) => o.kind === "close-flow-socket").length).toBe(1);
      }
      expect(dialer.session.peerConnected).toBe(false);
    });

    test(`one ${dialerRole(dir)} at a time: an unknown second key is judged first, and never told who is connected`, () => {
      const { net, acceptor } = pair({ direction: dir });
      expect(acceptor.session.peerConnected).toBe(true);
      const intruder = new RawPeer(acceptor, 2, net.now).accepted();
      rawDialerHandshake(intruder, { identity: testIdentity(0x99) });
      // Not "busy" before its key is decided on: that would tell a stranger a peer is connected.
      expect(intruder.closeCode()).toBeUndefined();
      expect(intruder.outputs.filter((o) => o.kind === "authorize-peer").length).toBe(1);
      acceptor.session.approve(2, false, net.now, "key SHA256:x is not authorized");
      intruder.read();
      expect(intruder.closeCode()).toBe(CloseCode.KeyRejected);
      expect(intruder.closeMessage()).toBe("key SHA256:x is not authorized");
      expect(acceptor.session.peerConnected).toBe(true);
      // An admitted second key hears "busy", without the first peer's address.
      const second = new RawPeer(acceptor, 3, net.now).accepted();
      rawDialerHandshake(second, { identity: testIdentity(0x98) });
      acceptor.session.approve(3, true, net.now);
      second.read();
      expect(second.closeCode()).toBe(CloseCode.Busy);
      expect(second.closeMessage()).toBe(`another ${dialerRole(dir)} is connected; only one at a time`);
      expect(acceptor.session.peerConnected).toBe(true);
    });
  });

  describe(`replayed handshakes ${dir.name}`, () => {
    for (const secret of [undefined, SECRET]) {
      const mode = secret ? "secret mode" : "key mode";

      test(`${mode}: a recorded AUTH (here one resuming a session) replayed on a new connection is refused`, () => {
        const { net, receiver, sender, wire, acceptor, dialer } = pair({ secret, direction: dir });
        receiver.clientDatagram("192.0.2.1", 1, utf8("q"), net.now);
        net.pump();
        net.cut(wire);
        const w2 = net.link(dir, receiver, sender, 2);
        const [hello, auth] = w2.sentBy(dialer);
        expect(auth.type === FrameType.Auth && auth.token.length).toBe(16);
        net.cut(w2);
        const replayer = new RawPeer(acceptor, 3, net.now).accepted();
        replayer.send(PREFACE, encodeFrame(hello), encodeFrame(auth));
        expect(replayer.closeCode()).toBe(CloseCode.AuthFailed);
        expect(replayer.outputs.some((o) => o.kind === "accepted" || o.kind === "authorize-peer")).toBe(false);
        expect(acceptor.session.peerConnected).toBe(false);
        expect(acceptor.flows.size).toBe(1); // the session is intact, for its real owner
      });

      test(`${mode}: a recorded ACCEPT replayed to the dialer on a new connection is refused`, () => {
        const { net, wire, acceptor, dialer } = pair({ secret, direction: dir });
        const [hello, accept] = wire.sentBy(acceptor);
        net.cut(wire);
        const impostor = new RawPeer(dialer, 2, net.now).dialed();
        impostor.send(PREFACE, encodeFrame(hello));
        expect(framesOfType(impostor.received, FrameType.Auth).length).toBe(1);
        impostor.send(encodeFrame(accept));
        expect(impostor.closeCode()).toBe(CloseCode.AuthFailed);
        expect(impostor.outputs.some((o) => o.kind === "accepted")).toBe(false);
        expect(dialer.session.peerConnected).toBe(false);
      });
    }
  });
}

describe("new-flow rate limit defaults", () => {});

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

describe("pre-authentication limits", () => {
  function header(type: number, length: number): Uint8Array {
    const h = new Uint8Array(5);
    h[0] = type;
    new DataView(h.buffer).setUint32(1, length);
    return h;
  }

  test("a DATA header declaring 65,000 bytes, before any HELLO, is refused on the header alone", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const raw = new RawPeer(receiver, 1).connect();
    raw.send(PREFACE, header(FrameType.Data, 65_000)); // not one body byte
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    expect(raw.closeMessage()).toBe("DATA frame of 65000 bytes before the handshake completed (at most 2048)");
    expect(receiver.stats.handshakeFailures).toBe(1);
  });

  test("the same after HELLO and AUTH, while the host decides; and at the sender", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const raw = new RawPeer(receiver, 1).connect();
    rawDialerHandshake(raw);
    expect(receiver.session.awaitingApproval(1)).toBe(true);
    raw.send(header(0x80, 4096)); // even an extension, which is otherwise skipped
    expect(raw.closeCode()).toBe(CloseCode.ProtocolError);
    receiver.session.approve(1, true, 0);
    expect(receiver.session.peerConnected).toBe(false);

    const sender = new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
    const fake = new RawPeer(sender, 1).connect();
    fake.send(PREFACE, header(FrameType.Data, 2049));
    expect(fake.closeCode()).toBe(CloseCode.ProtocolError);
  });

  test("once accepted, 65,000-byte frames flow both ways", () => {
    const { net, receiver, sender } = pair({ receiver: { amplificationLimit: 0 } });
    receiver.clientDatagram("192.0.2.1", 1, new Uint8Array(65_000), net.now);
    net.pump();
    const [toTarget] = net.of(sender, "send-to-target");
    expect(toTarget.payload.length).toBe(65_000);
    sender.targetDatagram(toTarget.flowId, new Uint8Array(65_000), net.now);
    net.pump();
    expect(net.of(receiver, "send-to-client").map((o) => o.payload.length)).toEqual([65_000]);
  });

  test("pending connections per source: the 5th from one address is BUSY, another address still gets in", () => {
    expect(RECEIVER_DEFAULTS.maxPendingPerSource).toBe(4);
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1));
    const same = [1, 2, 3, 4, 5].map((c) => new RawPeer(receiver, c).connect("203.0.113.7"));
    expect(same.map((p) => p.closeCode())).toEqual([undefined, undefined, undefined, undefined, CloseCode.Busy]);
    expect(same[4].closeMessage()).toContain("from 203.0.113.7");
    const other = new RawPeer(receiver, 6).connect("198.51.100.1");
    expect(other.closeCode()).toBeUndefined();
    // A slot frees when one of them goes, or completes the handshake.
    receiver.session.disconnected(5, 0);
    receiver.session.disconnected(1, 0);
    expect(new RawPeer(receiver, 7).connect("203.0.113.7").closeCode()).toBeUndefined();
    rawDialerHandshake(same[1]);
    receiver.session.approve(2, true, 0);
    expect(receiver.session.peerConnected).toBe(true);
    expect(new RawPeer(receiver, 8).connect("203.0.113.7").closeCode()).toBeUndefined();
    expect(new RawPeer(receiver, 9).connect("203.0.113.7").closeCode()).toBe(CloseCode.Busy);
  });

  test("a sender that accepts (-L) has the same pending limits, per source and in total", () => {
    expect([DEFAULTS.maxPendingConnections, DEFAULTS.maxPendingPerSource]).toEqual([16, 4]);
    const sender = new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
    const same = [1, 2, 3, 4, 5].map((c) => new RawPeer(sender, c).accepted("203.0.113.7"));
    expect(same.map((p) => p.closeCode())).toEqual([undefined, undefined, undefined, undefined, CloseCode.Busy]);
    expect(same[4].closeMessage()).toContain("from 203.0.113.7");
    // One waiting for its operator still holds its slot; admitted, it frees it.
    rawDialerHandshake(same[0], { identity: RECEIVER_KEY });
    expect(sender.session.awaitingApproval(1)).toBe(true);
    expect(new RawPeer(sender, 6).accepted("203.0.113.7").closeCode()).toBe(CloseCode.Busy);
    sender.session.approve(1, true, 0);
    expect(sender.session.peerConnected).toBe(true);
    expect(new RawPeer(sender, 7).accepted("203.0.113.7").closeCode()).toBeUndefined();
    const total = new SenderMachine({ identity: SENDER_KEY, maxPendingConnections: 2 }, testCrypto(2));
    const peers = [1, 2, 3].map((c) => new RawPeer(total, c).accepted(`192.0.2.${c}`));
    expect(peers.map((p) => p.closeCode())).toEqual([undefined, undefined, CloseCode.Busy]);
  });

  test("pending connections in total: from distinct sources, the one past the limit is BUSY", () => {
    const receiver = new ReceiverMachine({ identity: RECEIVER_KEY, maxPendingConnections: 3 }, testCrypto(1));
    const peers = [1, 2, 3, 4].map((c) => new RawPeer(receiver, c).connect(`192.0.2.${c}`));
    expect(peers.map((p) => p.closeCode())).toEqual([undefined, undefined, undefined, CloseCode.Busy]);
    expect(receiver.stats.handshakeFailures).toBe(1);
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
