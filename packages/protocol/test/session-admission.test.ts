/**
 * Who the session lets in (session.ts, with link.ts's proofs and handshake.ts's checks): key-mode
 * authentication in both TCP directions, the host's verdict on a key, resume only with the same key,
 * one peer at a time, replayed handshakes, and the limits on connections that have not authenticated
 * yet (frame size before the handshake completes, pending connections per source and in total).
 */
import { describe, expect, test } from "bun:test";
import {
  CloseCode,
  DEFAULTS,
  encodeFrame,
  FrameType,
  PREFACE,
  RECEIVER_DEFAULTS,
  ReceiverMachine,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import {
  closeCodes,
  DIRECTIONS,
  type Direction,
  forgedIdentity,
  framesOfType,
  pair,
  RawPeer,
  RECEIVER_KEY,
  rawDialerHandshake,
  SENDER_KEY,
  testCrypto,
  testIdentity,
  transcript,
  verifyEd25519,
} from "./harness.ts";

const SECRET = "s3cret";

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
